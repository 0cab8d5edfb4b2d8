//! `svidcar` processes as the end-to-end tests start them: the binary (`svidcar`, or
//! `svidcar-proxy`, which takes the same flags) with JSON logs appended to `<dir>/<name>.log`,
//! PEM SVID files, an admin port on 127.0.0.1:0 and the flags a test adds; then the record it
//! logs once it listens, the addresses in that record, its admin endpoints, its log and its
//! signals. The same handle runs `svidcar agent` and `svidcar control`. A process is killed when
//! its handle drops; every wait is bounded.

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::{try_wait_for, SvidFiles};

/// How long a proxy may take to log that it listens.
const START_LIMIT: Duration = Duration::from_secs(20);
/// How long an admin request may take, connect included.
const ADMIN_LIMIT: Duration = Duration::from_secs(5);
/// How long a process may take to be reaped after SIGKILL.
const KILL_LIMIT: Duration = Duration::from_secs(5);
/// What a proxy logs once its listeners are bound, with their addresses as fields
/// (`inbound`, `outbound`, `admin`).
const LISTENING: &str = "svidcar proxy listening";

impl SvidFiles {
    /// `--cert … --key … --bundle …`: the flags handing these files to a process.
    pub(crate) fn args(&self) -> Vec<String> {
        [
            ("--cert", &self.cert),
            ("--key", &self.key),
            ("--bundle", &self.bundle),
        ]
        .into_iter()
        .flat_map(|(flag, path)| [flag.to_owned(), path.display().to_string()])
        .collect()
    }
}

/// What to start, and how: see [`ProxyProcess::builder`]. The command line is
/// `[wrapper…] bin --log-format json [global…] run [admin flag] [args…]`, the flags in the
/// order they were added.
#[derive(Debug, Clone)]
#[must_use]
pub(crate) struct ProxyBuilder {
    name: String,
    dir: PathBuf,
    bin: PathBuf,
    wrapper: Vec<String>,
    global: Vec<String>,
    command: String,
    admin: bool,
    args: Vec<String>,
}

impl ProxyBuilder {
    /// Runs `bin` instead of `svidcar`.
    pub(crate) fn bin(mut self, bin: &Path) -> Self {
        bin.clone_into(&mut self.bin);
        self
    }

    /// Runs the binary under `wrapper`, a program and its flags that exec it (same pid), e.g.
    /// `["prlimit", "--nofile=64:64"]`.
    pub(crate) fn under(mut self, wrapper: &[&str]) -> Self {
        self.wrapper = wrapper.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// Flags before the subcommand, e.g. `["--log", "trace"]`.
    pub(crate) fn global(mut self, flags: &[&str]) -> Self {
        self.global.extend(flags.iter().map(|s| (*s).to_owned()));
        self
    }

    /// Runs `svidcar <command>` (`agent`, `control`) instead of `svidcar run`; only `run` gets
    /// an admin flag.
    pub(crate) fn command(mut self, command: &str) -> Self {
        command.clone_into(&mut self.command);
        self
    }

    /// `--admin-enabled false` instead of `--admin-listen 127.0.0.1:0`.
    pub(crate) fn no_admin(mut self) -> Self {
        self.admin = false;
        self
    }

    /// The SVID as PEM files.
    pub(crate) fn svid(self, files: &SvidFiles) -> Self {
        self.args(files.args())
    }

    /// More flags after the subcommand.
    pub(crate) fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An explicit inbound on 127.0.0.1:0 in front of `app`, and no outbound.
    pub(crate) fn explicit_inbound(self, app: SocketAddr) -> Self {
        self.args([
            "--outbound-enabled",
            "false",
            "--inbound-mode",
            "explicit",
            "--inbound-listen",
            "127.0.0.1:0",
            "--inbound-app",
            &app.to_string(),
        ])
    }

    /// No inbound, and an explicit outbound route on 127.0.0.1:0 to each of `upstreams` (in
    /// this order), each expecting `server_id`.
    pub(crate) fn explicit_routes(self, upstreams: &[SocketAddr], server_id: &str) -> Self {
        let routes = upstreams
            .iter()
            .flat_map(|u| ["--route".to_owned(), format!("127.0.0.1:0={u},{server_id}")]);
        self.args(["--inbound-enabled", "false", "--outbound-mode", "explicit"])
            .args(routes)
    }

    /// The arguments after the program.
    fn argv(&self) -> Vec<String> {
        let mut argv = vec!["--log-format".to_owned(), "json".to_owned()];
        argv.extend(self.global.iter().cloned());
        argv.push(self.command.clone());
        if self.command == "run" {
            let admin = if self.admin {
                ["--admin-listen", "127.0.0.1:0"]
            } else {
                ["--admin-enabled", "false"]
            };
            argv.extend(admin.map(String::from));
        }
        argv.extend(self.args.iter().cloned());
        argv
    }

    /// Starts the process; waits for nothing (for a proxy, see [`ProxyBuilder::start`]).
    pub(crate) fn spawn(self) -> ProxyProcess {
        let log = self.dir.join(format!("{}.log", self.name));
        // Appended to: a process started again under the same name keeps one log.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let mut cmd = match self.wrapper.split_first() {
            Some((program, flags)) => {
                let mut cmd = Command::new(program);
                cmd.args(flags).arg(&self.bin);
                cmd
            }
            None => Command::new(&self.bin),
        };
        let child = cmd
            .args(self.argv())
            // The log level is the default or the `--log` given here, whatever the environment.
            .env_remove("SVIDCAR_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{} runs: {e}", self.bin.display()));
        ProxyProcess {
            child,
            name: self.name,
            log,
            started: Value::Null,
        }
    }

    /// Starts a proxy and waits (bounded) for it to log where it listens.
    pub(crate) async fn start(self) -> ProxyProcess {
        let what = format!("the {} proxy ({}) to listen", self.name, self.bin.display());
        let mut proxy = self.spawn();
        let started = try_wait_for(&what, START_LIMIT, || {
            proxy.lines(LISTENING).into_iter().next()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log_text()));
        proxy.started = started;
        proxy
    }
}

/// A process started by a [`ProxyBuilder`], logging JSON to a file; killed on drop.
#[derive(Debug)]
pub(crate) struct ProxyProcess {
    child: Child,
    name: String,
    log: PathBuf,
    /// What it logged once it listened (`Null` if it was not waited for).
    started: Value,
}

impl ProxyProcess {
    /// `svidcar run` named `name`, logging to `<dir>/<name>.log`, its admin port on
    /// 127.0.0.1:0.
    pub(crate) fn builder(name: &str, dir: &Path) -> ProxyBuilder {
        ProxyBuilder {
            name: name.to_owned(),
            dir: dir.to_owned(),
            bin: PathBuf::from(env!("CARGO_BIN_EXE_svidcar")),
            wrapper: Vec::new(),
            global: Vec::new(),
            command: "run".to_owned(),
            admin: true,
            args: Vec::new(),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id().expect("still running")
    }

    pub(crate) fn log_path(&self) -> &Path {
        &self.log
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every JSON line of the log.
    pub(crate) fn log_lines(&self) -> Vec<Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The JSON log lines whose message starts with `start`.
    pub(crate) fn lines(&self, start: &str) -> Vec<Value> {
        self.log_lines()
            .into_iter()
            .filter(|l| l["message"].as_str().is_some_and(|m| m.starts_with(start)))
            .collect()
    }

    /// The record it logged once it listened.
    pub(crate) fn started(&self) -> &Value {
        &self.started
    }

    /// The addresses logged under `field`: `127.0.0.1:1` or, for a list, `[127.0.0.1:1, …]`.
    pub(crate) fn addrs(&self, field: &str) -> Vec<SocketAddr> {
        self.started[field]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split(',')
            .filter_map(|a| a.trim().parse().ok())
            .collect()
    }

    /// The (first) address logged under `field`.
    pub(crate) fn addr(&self, field: &str) -> SocketAddr {
        self.addrs(field).first().copied().unwrap_or_else(|| {
            panic!(
                "no {field} address in the {} proxy's {}\n{}",
                self.name,
                self.started,
                self.log_text()
            )
        })
    }

    pub(crate) fn admin(&self) -> SocketAddr {
        self.addr("admin")
    }

    /// `GET /metrics` on its admin port.
    pub(crate) async fn metrics(&self) -> String {
        scrape(self.admin()).await
    }

    /// Its open file descriptors; 0 once it is gone.
    pub(crate) fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |d| d.count())
    }

    pub(crate) fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.pid()).unwrap());
        kill(pid, signal).unwrap();
    }

    /// Waits (bounded) for it to exit; its status.
    pub(crate) async fn exited(&mut self, limit: Duration) -> ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "the {} process had not exited within {limit:?}\n{}",
                self.name,
                self.log_text()
            ),
        }
    }

    /// SIGKILL, and the exit reaped (bounded).
    pub(crate) async fn kill9(&mut self) {
        self.signal(Signal::SIGKILL);
        let status = self.exited(KILL_LIMIT).await;
        assert_eq!(status.signal(), Some(9), "the {} process", self.name);
    }
}

/// `GET path` from an admin address (HTTP/1.0, read to the end, bounded): (status line, body).
pub(crate) async fn admin_get(addr: SocketAddr, path: &str) -> (String, String) {
    let io = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nhost: x\r\n\r\n").as_bytes())
            .await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        std::io::Result::Ok(text)
    };
    let text = tokio::time::timeout(ADMIN_LIMIT, io)
        .await
        .expect("admin answered")
        .unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

/// `GET /metrics` from an admin address: the exposition.
pub(crate) async fn scrape(admin: SocketAddr) -> String {
    admin_get(admin, "/metrics").await.1
}
