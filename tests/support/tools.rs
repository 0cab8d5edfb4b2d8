//! Third-party programs as peers of the mesh: the Python servers and clients in `tests/tools`
//! (Python's http.server, Hypercorn, grpcio, websockets) and curl. Every child is killed when
//! its handle drops and every run is bounded in time; proxy variables are cleared so nothing
//! leaves loopback.

use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a tool server may take to print its port.
const START_LIMIT: Duration = Duration::from_secs(20);
/// How long one run of a client program may take.
const RUN_LIMIT: Duration = Duration::from_secs(30);

const PROXY_VARS: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "grpc_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
];

/// The path of a script in `tests/tools`.
pub(crate) fn tool(script: &str) -> String {
    format!("{}/tests/tools/{script}", env!("CARGO_MANIFEST_DIR"))
}

fn command(program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args).kill_on_drop(true).stdin(Stdio::null());
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    cmd
}

/// A server from `tests/tools` on 127.0.0.1, killed on drop. The script prints
/// `LISTENING <port>` first; every later stdout line (e.g. `SEEN GET /path`) is kept.
pub(crate) struct ToolServer {
    _child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl ToolServer {
    /// Starts `python3 tests/tools/<script> <args>` and waits (bounded) for its port.
    pub(crate) async fn start(script: &str, args: &[&str]) -> ToolServer {
        let path = tool(script);
        let mut all = vec![path.as_str()];
        all.extend_from_slice(args);
        let mut child = command("python3", &all)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs");
        let mut out = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let first = tokio::time::timeout(START_LIMIT, out.next_line())
            .await
            .unwrap_or_else(|_| panic!("{script} did not print its port within {START_LIMIT:?}"))
            .expect("read stdout")
            .unwrap_or_else(|| {
                panic!(
                    "{script} exited before listening (missing Python package? see tests/run.sh)"
                )
            });
        let port: u16 = first
            .strip_prefix("LISTENING ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("{script}: unexpected first line {first:?}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let keep = lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                keep.lock().unwrap().push(line);
            }
        });
        ToolServer {
            _child: child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            lines,
        }
    }

    /// The lines printed after `LISTENING` so far.
    pub(crate) fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

/// Runs `program args` to completion (bounded), capturing stdout and stderr.
pub(crate) async fn run(program: &str, args: &[&str]) -> Output {
    let child = command(program, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish within {RUN_LIMIT:?}"))
        .expect("wait for the child")
}

/// Runs `program args`, which must succeed; returns its stdout.
pub(crate) async fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args).await;
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Runs curl quietly (errors still shown), without any proxy, limited to 10 s; returns stdout.
pub(crate) async fn curl(args: &[&str]) -> String {
    let mut all = vec!["-sS", "--noproxy", "*", "--max-time", "10"];
    all.extend_from_slice(args);
    run_ok("curl", &all).await
}
