//! Identity governance end to end, with the real binaries only: `svidcar control` holding the
//! CA (nodes file, query port on loopback), one `svidcar agent` joined to it with a token, and
//! three workloads — three `svidcar run` proxies under three uids (`setpriv`), their SVIDs from
//! the agent's Workload API through `unix:uid:` entries, in explicit mode (routes A→B to a TCP
//! echo app, B→C to an HTTP app, C→A to a TCP echo app), streaming decisions to the control
//! plane. One scenario:
//!
//! - (a) traffic A→B and B→C; `svidcar identities` lists the three IDs with the agent's node,
//!   the entries' selectors and their last-seen times as source and destination;
//! - (b) `svidcar policy suggest` passes `svidcar policy check`; installed in its AUDIT form the
//!   same traffic makes no would-be denial (and a call outside it exactly one);
//! - (c) after the learning period, a call along a never-seen edge (C→A) raises exactly one
//!   alert naming both SPIFFE IDs (`svidcar decisions --new-edges`);
//! - (d) `svidcar revoke` of B: within 1 s new connections to B are refused by A's proxy and by
//!   B's, and an open A→B connection is closed (the times are measured and printed); `svidcar
//!   revoke --list` shows it; `svidcar unrevoke` restores service.
//!
//! Needs root (three uids); skipped with a message otherwise, failed under `CI`. Run with
//! `--nocapture` to see the measured times and the commands' outputs. Every wait is bounded;
//! the processes and the temporary directory are removed on drop, even when the test fails.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rustls::pki_types::ServerName;
use svidcar_control::decisions::StoredDecision;
use svidcar_control::inventory::IdentityRow;
use svidcar_identity::pem_source::{self, PemPaths};
use svidcar_identity::tls::{provider, TlsContext};
use svidcar_identity::{CredentialStore, SpiffeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use support::{echo_app, http_app, parse_metrics, round_trip, total, try_wait_until};

const CONTROL_ID: &str = "spiffe://example.org/svidcar/control";
const NODE: &str = "node-a";
const TOKEN: &str = "governance-join-token-0123456789";
/// The test itself (uid 0), as a mesh client reaching B's proxy directly.
const PROBE: &str = "spiffe://example.org/ns/gov/sa/probe";
/// The workloads A, B and C: SPIFFE ID and uid.
const WORKLOADS: [(&str, u32); 3] = [
    ("spiffe://example.org/ns/gov/sa/a", 41001),
    ("spiffe://example.org/ns/gov/sa/b", 41002),
    ("spiffe://example.org/ns/gov/sa/c", 41003),
];
const A: usize = 0;
const B: usize = 1;
const C: usize = 2;
/// The new-edge learning period from the control plane's first start: (a) and (b) happen in it.
const LEARNING: Duration = Duration::from_secs(25);
/// Revocation must take effect within this.
const REVOCATION_GOAL: Duration = Duration::from_secs(1);
/// The HTTP traffic B→C: (method, path).
const HTTP_TRAFFIC: &[(&str, &str)] = &[
    ("GET", "/api/v1/items/1"),
    ("POST", "/api/v1/orders"),
    ("GET", "/healthz"),
];

/// Whether the test can run: three uids need root. Under CI it must run.
fn root_or_skip() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "tests/governance.rs needs root (three workloads under three uids)"
    );
    eprintln!("SKIPPED governance: needs root (three workloads under three uids, setpriv)");
    false
}

/// A loopback address with a port free right now (for a child process to listen on).
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Every process and file of the scenario. Dropping it kills the processes (then the directory
/// goes); after a failure it prints the end of every log first.
struct World {
    children: Vec<(String, Child)>,
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // The workloads' uids must reach the agent's socket below it.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        World {
            children: Vec::new(),
            dir,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn spawn(&mut self, name: &str, mut cmd: Command) {
        let log = std::fs::File::create(self.path(&format!("{name}.log"))).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.children.push((name.to_owned(), child));
    }

    /// Panics (with the logs) if a process exited.
    fn check_alive(&mut self) {
        let exited: Vec<String> = self
            .children
            .iter_mut()
            .filter_map(|(name, c)| match c.try_wait() {
                Ok(Some(status)) => Some(format!("{name} exited with {status}")),
                _ => None,
            })
            .collect();
        assert!(exited.is_empty(), "{}", exited.join("; "));
    }

    /// The last lines of every log.
    fn logs(&self) -> String {
        let mut out = String::new();
        for (name, _) in &self.children {
            let log =
                std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            out.push_str(&format!("----- {name}.log (last 40 lines)\n"));
            for l in &lines[lines.len().saturating_sub(40)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// One `svidcar` command run to completion (bounded: it talks to loopback only).
async fn cli(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_svidcar"))
            .args(&args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("svidcar {args:?} did not finish in 30 s"))
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`cli`] that must succeed; its stdout.
async fn cli_ok(args: &[&str]) -> String {
    let (code, out, err) = cli(args).await;
    assert_eq!(code, 0, "svidcar {args:?}: {out}{err}");
    out
}

/// `GET path` on an HTTP/1.1 port: status and body (`None` if it does not answer).
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .ok()?
        .ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// The status code of `method path` sent through `route` (0: no HTTP answer).
async fn call(route: SocketAddr, method: &str, path: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect(route).await else {
        return 0;
    };
    let req = format!("{method} {path} HTTP/1.1\r\nhost: c\r\nconnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return 0;
    }
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out)).await;
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Whether a new connection through an echo `route` is served. The first byte is no HTTP
/// method's, so the proxy does not wait its detect timeout for a request line.
async fn served(route: SocketAddr) -> bool {
    round_trip(route, b"\0x").await.unwrap_or_default() == b"\0x"
}

/// An open connection through `route` that echoed a first message.
async fn open(route: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(route).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .expect("echo within 10 s")
        .unwrap();
    s
}

/// Whether B's proxy serves the probe (uid 0's SVID from the agent) connecting to it directly,
/// as a mesh peer does.
async fn probe_served(tls: &TlsContext, inbound: SocketAddr, server: &SpiffeId) -> bool {
    let attempt = async {
        let config = tls.client_config(server).ok()?;
        let tcp = TcpStream::connect(inbound).await.ok()?;
        let mut s = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::IpAddress(inbound.ip().into()), tcp)
            .await
            .ok()?;
        s.write_all(b"\0p").await.ok()?;
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).await.ok()?;
        Some(buf == *b"\0p")
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Polls `probe` until it answers `want`; how long after `start` it did (`None`: not within
/// `limit`).
async fn until<F: std::future::Future<Output = bool>>(
    start: Instant,
    limit: Duration,
    want: bool,
    mut probe: impl FnMut() -> F,
) -> Option<Duration> {
    while start.elapsed() < limit {
        if probe().await == want {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// `svidcar_authz_decisions_total{action="AUDIT"}` of a proxy.
async fn audits(admin: SocketAddr) -> f64 {
    let (_, body) = get(admin, "/metrics").await.expect("proxy metrics");
    total(
        &parse_metrics(&body).await,
        "svidcar_authz_decisions_total",
        &[("action", "AUDIT")],
    )
}

/// One workload: its app, its proxy's listeners and its route to the next workload.
struct Workload {
    id: SpiffeId,
    uid: u32,
    inbound: SocketAddr,
    admin: SocketAddr,
    route: SocketAddr,
}

/// The scenario's processes, started.
struct Mesh {
    world: World,
    query: SocketAddr,
    workloads: Vec<Workload>,
    control_started: Instant,
}

impl Mesh {
    fn query(&self) -> String {
        self.query.to_string()
    }
}

/// Starts the control plane, the agent and the three proxies (each waited for, bounded).
async fn start_mesh() -> Mesh {
    let mut world = World::new();
    let bin = env!("CARGO_BIN_EXE_svidcar");
    for d in ["ca", "policies", "agent", "suggested"] {
        std::fs::create_dir_all(world.path(d)).unwrap();
    }
    std::fs::set_permissions(world.path("ca"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(world.path("agent"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        world.path("nodes.yaml"),
        format!(
            "nodes:\n  - name: {NODE}\n    join_token: {TOKEN}\n    allow: ['spiffe://example.org/ns/gov/*']\n"
        ),
    )
    .unwrap();
    let (grpc, query) = (free_port(), free_port());
    let control_started = Instant::now();
    let mut cmd = Command::new(bin);
    cmd.args(["--log", "info", "control", "--policy-dir"])
        .arg(world.path("policies"))
        .arg("--state-dir")
        .arg(world.path("state"))
        .args([
            "--listen",
            &grpc.to_string(),
            "--admin-listen",
            &query.to_string(),
        ])
        .arg("--ca-dir")
        .arg(world.path("ca"))
        .args(["--trust-domain", "example.org", "--nodes"])
        .arg(world.path("nodes.yaml"))
        .args(["--reload-interval", "100ms", "--new-edge-learning"])
        .arg(format!("{}s", LEARNING.as_secs()));
    world.spawn("control", cmd);
    let bundle = try_wait_until(
        "the control plane's /bundle",
        Duration::from_secs(20),
        || async { get(query, "/bundle").await.filter(|(s, _)| *s == 200) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
    .1;
    std::fs::write(world.path("bundle.pem"), bundle).unwrap();

    // The agent: one entry per workload uid, and uid 0 for the probe.
    let mut reg = String::from("entries:\n");
    for (id, uid) in WORKLOADS {
        reg.push_str(&format!(
            "  - {{ spiffe_id: {id}, selectors: ['unix:uid:{uid}'] }}\n"
        ));
    }
    reg.push_str(&format!(
        "  - {{ spiffe_id: {PROBE}, selectors: ['unix:uid:0'] }}\n"
    ));
    std::fs::write(world.path("agent/registration.yaml"), reg).unwrap();
    std::fs::write(world.path("agent/token"), TOKEN).unwrap();
    let socket = world.path("agent/agent.sock");
    let mut cmd = Command::new(bin);
    cmd.args(["--log", "info", "agent", "--socket"])
        .arg(&socket)
        .args(["--socket-mode", "0666", "--server", &grpc.to_string()])
        .args(["--trust-domain", "example.org", "--server-bundle"])
        .arg(world.path("bundle.pem"))
        .arg("--data-dir")
        .arg(world.path("agent/data"))
        .arg("--registration")
        .arg(world.path("agent/registration.yaml"))
        .arg("--join-token-file")
        .arg(world.path("agent/token"))
        .args(["--reload-interval", "100ms"]);
    world.spawn("agent", cmd);
    let ready = try_wait_until("the agent's socket", Duration::from_secs(20), || async {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    })
    .await;
    world.check_alive();
    ready.unwrap_or_else(|e| panic!("{e}"));

    // The apps: A and B echo, C speaks HTTP.
    let apps = [echo_app().await, echo_app().await, http_app().await];
    let workloads: Vec<Workload> = WORKLOADS
        .iter()
        .map(|(id, uid)| Workload {
            id: SpiffeId::parse(id).unwrap(),
            uid: *uid,
            inbound: free_port(),
            admin: free_port(),
            route: free_port(),
        })
        .collect();
    for (i, w) in workloads.iter().enumerate() {
        // A routes to B, B to C, C to A.
        let next = &workloads[(i + 1) % workloads.len()];
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={}", w.uid))
            .arg(format!("--regid={}", w.uid))
            .args(["--clear-groups", "--", bin, "--log", "info", "run"])
            .arg(format!("--workload-api=unix://{}", socket.display()))
            .args(["--outbound-mode", "explicit", "--inbound-mode", "explicit"])
            .args(["--inbound-listen", &w.inbound.to_string()])
            .args(["--inbound-app", &apps[i].to_string(), "--mtls", "strict"])
            .arg("--route")
            .arg(format!("{}={},{}", w.route, next.inbound, next.id))
            .args(["--admin-listen", &w.admin.to_string()])
            .args(["--control-plane", &grpc.to_string()])
            .args(["--control-plane-id", CONTROL_ID, "--node", NODE]);
        world.spawn(&format!("proxy-{}", (b'a' + i as u8) as char), cmd);
    }
    for w in &workloads {
        let ready = try_wait_until(
            &format!("the proxy of {} to be ready", w.id),
            Duration::from_secs(30),
            || async { get(w.admin, "/ready").await.is_some_and(|(s, _)| s == 200) },
        )
        .await;
        world.check_alive();
        ready.unwrap_or_else(|e| panic!("{e}"));
    }
    Mesh {
        world,
        query,
        workloads,
        control_started,
    }
}

/// Unix milliseconds now.
fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

/// The traffic the suggestion is learned from: A→B over TCP, B→C over HTTP.
async fn observed_traffic(m: &Mesh) {
    for _ in 0..3 {
        assert!(served(m.workloads[A].route).await, "A→B");
    }
    for (method, path) in HTTP_TRAFFIC {
        assert_eq!(
            call(m.workloads[B].route, method, path).await,
            200,
            "B→C {method} {path}"
        );
    }
}

/// The inventory as JSON, by `svidcar identities --output json`.
async fn identities(m: &Mesh) -> Vec<IdentityRow> {
    let out = cli_ok(&[
        "identities",
        "--control",
        &m.query(),
        "--output",
        "json",
        "--unused-days",
        "0",
    ])
    .await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// JSON lines printed by a command.
fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// (a) The inventory shows A, B and C issued to the agent's node for their entries'
/// selectors, last seen as they were in `[from_ms, to_ms]`.
async fn check_inventory(m: &Mesh, from_ms: i64, to_ms: i64) {
    let within = |t: Option<i64>| t.is_some_and(|t| (from_ms - 1000..=to_ms + 1000).contains(&t));
    let expected = |rows: &[IdentityRow]| -> Result<(), String> {
        for (i, w) in m.workloads.iter().enumerate() {
            let row = rows
                .iter()
                .find(|r| r.id == w.id)
                .ok_or(format!("{} missing", w.id))?;
            let issued = row.issued.as_ref().ok_or(format!("{} not issued", w.id))?;
            if issued.node.as_deref() != Some(NODE)
                || issued.selectors != [format!("unix:uid:{}", w.uid)]
            {
                return Err(format!("{}: issued {issued:?}", w.id));
            }
            let t = &row.traffic;
            let (source, destination) = (i != C, i != A);
            let ok_source = if source {
                within(t.last_seen_as_source_ms)
            } else {
                t.last_seen_as_source_ms.is_none()
            };
            let ok_destination = if destination {
                within(t.last_seen_as_destination_ms)
            } else {
                t.last_seen_as_destination_ms.is_none()
            };
            if !(ok_source && ok_destination && t.peers == 1 + usize::from(i == B)) {
                return Err(format!("{}: traffic {t:?}", w.id));
            }
        }
        Ok(())
    };
    let last = std::sync::Mutex::new(String::new());
    let found = try_wait_until(
        "the inventory to show the traffic",
        Duration::from_secs(15),
        || async {
            let r = expected(&identities(m).await);
            if let Err(e) = &r {
                *last.lock().unwrap() = e.clone();
            }
            r.is_ok()
        },
    )
    .await;
    found.unwrap_or_else(|e| panic!("{e}: {}", last.lock().unwrap()));
    let table = cli_ok(&["identities", "--control", &m.query(), "--unused-days", "0"]).await;
    println!("$ svidcar identities --unused-days 0\n{table}");
    let rows = identities(m).await;
    let b = rows.iter().find(|r| r.id == m.workloads[B].id).unwrap();
    println!(
        "$ svidcar identities --output json   # B's row\n{}",
        serde_json::to_string_pretty(b).unwrap()
    );
}

/// Per proxy ID: the policy version it was sent and acknowledged (`/proxies`).
async fn proxy_versions(query: SocketAddr) -> Vec<(String, String, String)> {
    let (_, body) = get(query, "/proxies").await.expect("/proxies");
    let subs: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    subs.iter()
        .map(|s| {
            let f = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
            (f("spiffe_id"), f("sent_version"), f("acked_version"))
        })
        .collect()
}

/// (b) The AUDIT suggestion passes `policy check` and, installed, audits none of the same
/// traffic (and exactly the one call outside it).
async fn check_suggestion(m: &Mesh) {
    let out = m.world.path("suggested");
    let out_s = out.to_str().unwrap();
    let q = m.query();
    let suggested = cli_ok(&[
        "policy",
        "suggest",
        "--control",
        &q,
        "--since",
        "1h",
        "--mode",
        "audit",
        "--out",
        out_s,
    ])
    .await;
    println!("$ svidcar policy suggest --since 1h --mode audit --out suggested/\n{suggested}");
    let checked = cli_ok(&["policy", "check", out_s]).await;
    println!("$ svidcar policy check suggested/\n{checked}");
    let files: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|f| f.unwrap().path())
        .collect();
    assert_eq!(
        files.len(),
        2,
        "one policy per destination (B, C): {files:?}"
    );
    for f in &files {
        println!(
            "--- {}\n{}",
            f.display(),
            std::fs::read_to_string(f).unwrap()
        );
    }

    // Installed: B's and C's proxies acknowledge a new version.
    let before = proxy_versions(m.query).await;
    let policies = m.world.path("policies");
    for f in &files {
        let name = f.file_name().unwrap().to_str().unwrap();
        let tmp = policies.join(format!(".{name}.tmp"));
        std::fs::copy(f, &tmp).unwrap();
        std::fs::rename(&tmp, policies.join(name)).unwrap();
    }
    let targets: Vec<String> = [B, C]
        .iter()
        .map(|i| m.workloads[*i].id.to_string())
        .collect();
    try_wait_until(
        "B's and C's proxies to acknowledge the AUDIT policies",
        Duration::from_secs(15),
        || {
            let (before, targets) = (&before, &targets);
            async move {
                let now = proxy_versions(m.query).await;
                targets.iter().all(|t| {
                    now.iter().any(|(id, sent, acked)| {
                        id == t
                            && sent == acked
                            && !before
                                .iter()
                                .any(|(bid, bsent, _)| bid == t && bsent == sent)
                    })
                })
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", before));

    // The same traffic again: not one would-be denial on any proxy.
    observed_traffic(m).await;
    for w in &m.workloads {
        assert_eq!(
            audits(w.admin).await,
            0.0,
            "would-be denials of observed traffic at {}",
            w.id
        );
    }
    // A call outside it (a path B never called on C) is let through and is one.
    assert_eq!(call(m.workloads[B].route, "GET", "/admin").await, 200);
    assert_eq!(audits(m.workloads[C].admin).await, 1.0, "GET /admin");
    // The control plane's decision log says the same.
    let audited = try_wait_until(
        "the AUDIT decision at the control plane",
        Duration::from_secs(10),
        || async {
            let out = cli_ok(&[
                "decisions",
                "--control",
                &q,
                "--action",
                "AUDIT",
                "--output",
                "json",
            ])
            .await;
            let lines = json_lines(&out);
            (!lines.is_empty()).then_some(lines)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(audited[0]["path"], "/admin", "{audited:?}");
}

/// The alerts `svidcar decisions --new-edges --output json` lists.
async fn alerts(q: &str) -> Vec<serde_json::Value> {
    json_lines(
        &cli_ok(&[
            "decisions",
            "--control",
            q,
            "--new-edges",
            "--output",
            "json",
        ])
        .await,
    )
}

/// Decisions on the edge `from` → `to` in the control plane's log.
async fn decisions_between(q: &str, from: &SpiffeId, to: &SpiffeId) -> Vec<StoredDecision> {
    let out = cli_ok(&[
        "decisions",
        "--control",
        q,
        "--identity",
        from.as_str(),
        "--output",
        "json",
    ])
    .await;
    json_lines(&out)
        .into_iter()
        .map(|v| serde_json::from_value::<StoredDecision>(v).unwrap())
        .filter(|d| {
            d.event.source_id.as_ref() == Some(from) && d.event.destination_id.as_ref() == Some(to)
        })
        .collect()
}

/// (c) After learning, C→A (never seen) raises exactly one alert naming both IDs.
async fn check_new_edge(m: &Mesh) {
    let q = m.query();
    let (a, c) = (&m.workloads[A].id, &m.workloads[C].id);
    let learned = m.control_started + LEARNING + Duration::from_secs(2);
    tokio::time::sleep_until(learned).await;
    assert!(alerts(&q).await.is_empty(), "nothing raised yet");
    assert!(served(m.workloads[C].route).await, "C→A");
    let raised = try_wait_until("the new-edge alert", Duration::from_secs(10), || async {
        let a = alerts(&q).await;
        (!a.is_empty()).then_some(a)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // The same edge again, and the learned ones: nothing more.
    let again_ms = now_ms();
    assert!(served(m.workloads[C].route).await, "C→A again");
    observed_traffic(m).await;
    try_wait_until(
        "the second C→A call in the decision log",
        Duration::from_secs(10),
        || async {
            decisions_between(&q, c, a)
                .await
                .iter()
                .any(|d| d.event.time_ms >= again_ms)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let all = alerts(&q).await;
    assert_eq!(all, raised, "one alert, not more");
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["source"], c.as_str(), "{all:?}");
    assert_eq!(all[0]["destination"], a.as_str(), "{all:?}");
    let table = cli_ok(&["decisions", "--control", &q, "--new-edges"]).await;
    println!("$ svidcar decisions --new-edges\n{table}");
    // Allow-listed with one command (from the control plane's host: loopback).
    let id = all[0]["id"].to_string();
    let allowed = cli_ok(&["decisions", "--control", &q, "--allow-edge", &id]).await;
    println!("$ svidcar decisions --allow-edge {id}\n{allowed}");
    let all = alerts(&q).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["status"], "allowed", "{all:?}");
}

/// (d) Revoking B refuses new connections to it at A's proxy and at B's, and closes an open
/// A→B connection, within [`REVOCATION_GOAL`]; unrevoking restores service.
async fn check_revocation(m: &Mesh) {
    let q = m.query();
    let (a, b) = (&m.workloads[A], &m.workloads[B]);
    // The probe: uid 0's SVID from the agent, written by `svidcar api fetch`.
    let socket = format!("unix://{}", m.world.path("agent/agent.sock").display());
    let probe_dir = m.world.path("probe");
    std::fs::create_dir_all(&probe_dir).unwrap();
    cli_ok(&[
        "api",
        "fetch",
        "--workload-api",
        &socket,
        "--write",
        probe_dir.to_str().unwrap(),
    ])
    .await;
    let paths = PemPaths {
        cert: probe_dir.join("svid.pem"),
        key: probe_dir.join("svid_key.pem"),
        bundle: probe_dir.join("svid_bundle.pem"),
    };
    let store = CredentialStore::new();
    store.set(pem_source::load(&paths, &provider()).unwrap());
    assert_eq!(store.current().unwrap().id().as_str(), PROBE);
    let probe = TlsContext::new(store, provider()).unwrap();
    assert!(served(a.route).await, "A→B before revoking");
    assert!(
        probe_served(&probe, b.inbound, &b.id).await,
        "the probe → B before revoking"
    );
    let mut long_lived = open(a.route).await;

    let start = Instant::now();
    let revoke = tokio::spawn({
        let (q, id) = (q.clone(), b.id.to_string());
        async move { cli(&["revoke", &id, "--reason", "test", "--control", &q]).await }
    });
    let limit = Duration::from_secs(5);
    let (by_a, by_b, closed) = tokio::join!(
        until(start, limit, false, || served(a.route)),
        until(start, limit, false, || probe_served(
            &probe, b.inbound, &b.id
        )),
        async {
            let mut buf = [0u8; 16];
            match tokio::time::timeout(limit, long_lived.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => Some(start.elapsed()),
                _ => None,
            }
        },
    );
    let (code, out, err) = revoke.await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    println!("$ svidcar revoke {} --reason test\n{out}", b.id);
    let ms = |d: Option<Duration>| {
        d.map_or("never (5 s)".to_owned(), |d| {
            format!("{} ms", d.as_millis())
        })
    };
    println!(
        "revocation of B, from the command's start: A's proxy refuses new connections to B after {}, B's proxy refuses them after {}, the open A→B connection closed after {}",
        ms(by_a),
        ms(by_b),
        ms(closed)
    );
    for (what, t) in [
        ("A's proxy refusing", by_a),
        ("B's proxy refusing", by_b),
        ("the open connection closed", closed),
    ] {
        assert!(
            t.is_some_and(|t| t <= REVOCATION_GOAL),
            "{what}: {} (goal {REVOCATION_GOAL:?})",
            ms(t)
        );
    }
    let list = cli_ok(&["revoke", "--list", "--control", &q]).await;
    println!("$ svidcar revoke --list\n{list}");
    let line = list
        .lines()
        .find(|l| l.starts_with(b.id.as_str()))
        .unwrap_or_else(|| panic!("{} not listed: {list}", b.id));
    assert!(line.trim_end().ends_with("test"), "{line}");
    let listed = cli_ok(&["revoke", "--list", "--control", &q, "--output", "json"]).await;
    let listed: serde_json::Value =
        serde_json::from_str(&listed).unwrap_or_else(|e| panic!("{e}: {listed}"));
    assert!(listed.to_string().contains(b.id.as_str()), "{listed}");

    let start = Instant::now();
    let out = cli_ok(&["unrevoke", b.id.as_str(), "--control", &q]).await;
    println!("$ svidcar unrevoke {}\n{out}", b.id);
    let limit = Duration::from_secs(10);
    let (by_a, by_b) = tokio::join!(
        until(start, limit, true, || served(a.route)),
        until(start, limit, true, || probe_served(
            &probe, b.inbound, &b.id
        )),
    );
    println!(
        "unrevoke of B, from the command's start: A→B served again after {}, the probe → B after {}",
        ms(by_a),
        ms(by_b)
    );
    assert!(by_a.is_some() && by_b.is_some(), "service not restored");
    assert!(!cli_ok(&["revoke", "--list", "--control", &q])
        .await
        .contains(b.id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_least_privilege_new_edges_and_revocation_with_the_real_binaries() {
    if !root_or_skip() {
        return;
    }
    let mut m = start_mesh().await;

    // (a) Traffic A→B and B→C, within the learning period; the inventory shows it.
    let from_ms = now_ms();
    observed_traffic(&m).await;
    let to_ms = now_ms();
    check_inventory(&m, from_ms, to_ms).await;
    assert!(
        alerts(&m.query()).await.is_empty() && m.control_started.elapsed() < LEARNING,
        "the traffic must be learned: the set-up took {:?} of the {LEARNING:?} learning period",
        m.control_started.elapsed()
    );

    // (b) Least privilege: the suggestion, checked, installed as AUDIT.
    check_suggestion(&m).await;

    // (c) New-edge alert after learning.
    check_new_edge(&m).await;

    // (d) Revocation.
    check_revocation(&m).await;

    m.world.check_alive();
}
