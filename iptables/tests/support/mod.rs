//! Helpers for the privileged tests: bounded commands, namespaces that delete themselves, a
//! privilege check, and TCP dials from other users or namespaces.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt};

/// Bound for one setup command (`ip ...`, `iptables ...`).
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound for one whole scenario run inside a namespace.
pub(crate) const SCENARIO_TIMEOUT: Duration = Duration::from_secs(120);
/// Environment variable naming the scenario for the re-executed test binary.
pub(crate) const SCENARIO: &str = "SVIDCAR_IPT_TEST_SCENARIO";
/// Environment variable naming the namespace the scenario must find itself in.
pub(crate) const NETNS: &str = "SVIDCAR_IPT_TEST_NETNS";
/// Environment variable naming the peer namespace (traffic source for inbound checks).
pub(crate) const PEER: &str = "SVIDCAR_IPT_TEST_PEER";

/// The pod's address on the link to the peer, and the peer's.
pub(crate) const POD_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub(crate) const PEER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);
pub(crate) const POD_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
pub(crate) const PEER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 3);

const POLL: Duration = Duration::from_millis(10);

/// Runs `cmd` to completion or kills it at `timeout`; Err says which and why.
pub(crate) fn try_run(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = wait_bounded(&mut child, timeout)
        .ok_or_else(|| format!("{what}: timed out after {timeout:?}"))?;
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Waits for `child` up to `timeout`, killing it after that (then `None`).
pub(crate) fn wait_bounded(
    child: &mut Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let mut waited = Duration::ZERO;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if waited >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(POLL);
        waited += POLL;
    }
}

/// Runs `cmd` (bounded), panics unless it succeeds, returns its stdout.
pub(crate) fn must(cmd: &mut Command) -> String {
    let out = try_run(cmd, COMMAND_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether the privileged tests can run here. Without root (or without `ip`), they fail
/// loudly under CI and are skipped with a notice otherwise.
pub(crate) fn privileged() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_string));
    let problem = if euid.as_deref() != Some("0") {
        Some("not running as root".to_string())
    } else {
        try_run(Command::new("ip").arg("-V"), COMMAND_TIMEOUT)
            .err()
            .map(|e| format!("iproute2 is unusable: {e}"))
    };
    let Some(problem) = problem else {
        return true;
    };
    let need = "they need root with CAP_NET_ADMIN and CAP_SYS_ADMIN (to create network \
                namespaces) and the iptables and iproute2 packages";
    if std::env::var_os("CI").is_some() {
        panic!("privileged iptables tests cannot run under CI: {problem}; {need}");
    }
    // Straight to stderr, past the test harness's output capture, so the skip is visible.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED privileged iptables test: {problem}; {need} (with CI set this fails)"
    );
    false
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace of our own, deleted on drop (also when the test panics).
#[derive(Debug)]
pub(crate) struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `svc-ipt-<pid>-<n>` with `lo` up.
    pub(crate) fn create() -> Netns {
        let name = format!(
            "svc-ipt-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        must(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// A pod namespace linked by a veth pair to a peer namespace: pod 192.0.2.2/24 and
    /// 2001:db8::2/64, peer .3 and ::3. Nothing else is reachable from either.
    pub(crate) fn pod_and_peer() -> (Netns, Netns) {
        let (pod, peer) = (Netns::create(), Netns::create());
        must(Command::new("ip").args([
            "link", "add", "svc-pod", "netns", &pod.name, "type", "veth", "peer", "name",
            "svc-peer", "netns", &peer.name,
        ]));
        for (ns, dev, v4, v6) in [
            (&pod, "svc-pod", POD_V4, POD_V6),
            (&peer, "svc-peer", PEER_V4, PEER_V6),
        ] {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev]);
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            ns.ip(&["link", "set", dev, "up"]);
        }
        (pod, peer)
    }

    /// `ip -n <ns> args...`, which must succeed.
    pub(crate) fn ip(&self, args: &[&str]) -> String {
        must(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Re-runs this test binary's `in_namespace` test inside the namespace with `scenario`
    /// and `env`; panics with its output unless it passed.
    pub(crate) fn run_scenario(&self, scenario: &str, env: &[(&str, &str)]) {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(exe)
            .args([
                "in_namespace",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(SCENARIO, scenario)
            .env(NETNS, &self.name)
            .envs(env.iter().copied());
        let out = try_run(&mut cmd, SCENARIO_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("1 passed"),
            "scenario {scenario} failed in namespace {}:\n{text}",
            self.name
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Never panic here: this may run while a failed test is already unwinding.
        match try_run(
            Command::new("ip").args(["netns", "delete", &self.name]),
            COMMAND_TIMEOUT,
        ) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "could not delete netns {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("could not delete netns {}: {e}", self.name),
        }
    }
}

/// Starts a TCP connection to `to` that stays open for a second, from namespace `ns` (or the
/// current one) and as `uid`/`gid` (or ourselves). Bounded by `timeout 5`.
pub(crate) fn dial(ns: Option<&str>, uid: Option<u32>, to: SocketAddr) -> Child {
    let mut argv: Vec<String> = Vec::new();
    if let Some(ns) = ns {
        argv.extend(["ip", "netns", "exec", ns].map(String::from));
    }
    if let Some(uid) = uid {
        argv.extend(
            [
                "setpriv",
                "--reuid",
                &uid.to_string(),
                "--regid",
                &uid.to_string(),
                "--clear-groups",
            ]
            .map(String::from),
        );
    }
    let host = match to.ip() {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => ip.to_string(),
    };
    let script = format!("exec 3<>/dev/tcp/{host}/{} && sleep 1", to.port());
    argv.extend(["timeout", "5", "bash", "-c", &script].map(String::from));
    Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Whether a dial child connected (bash exits 0), bounded.
pub(crate) fn connected(mut child: Child) -> bool {
    wait_bounded(&mut child, Duration::from_secs(10)).is_some_and(|s| s.success())
}

/// A listener polled without blocking.
pub(crate) fn listen(addr: SocketAddr) -> TcpListener {
    let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    l.set_nonblocking(true).unwrap();
    l
}

/// The original destination (SO_ORIGINAL_DST) of the first connection accepted within
/// `within`, or `None` if none arrived.
pub(crate) fn arrival(listener: &TcpListener, within: Duration) -> Option<SocketAddr> {
    let mut waited = Duration::ZERO;
    loop {
        match listener.accept() {
            Ok((stream, _)) => return Some(original_dst(&stream)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && waited < within => {
                thread::sleep(POLL);
                waited += POLL;
            }
            Err(_) => return None,
        }
    }
}

fn original_dst(stream: &TcpStream) -> SocketAddr {
    match stream.local_addr().unwrap() {
        SocketAddr::V4(_) => {
            let sa = getsockopt(stream, sockopt::OriginalDst).unwrap();
            SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr))),
                u16::from_be(sa.sin_port),
            )
        }
        SocketAddr::V6(_) => {
            let sa = getsockopt(stream, sockopt::Ip6tOriginalDst).unwrap();
            SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(sa.sin6_addr.s6_addr)),
                u16::from_be(sa.sin6_port),
            )
        }
    }
}
