//! Transparent mode for real, inside a throwaway network namespace: iptables `REDIRECT` and
//! `SO_ORIGINAL_DST` (and, when ip6tables' nat table works, `IP6T_SO_ORIGINAL_DST`).
//!
//! The namespace holds an app (socat echo on 127.0.0.1:8080), an outside service (socat echo on
//! 10.250.0.1:9090), and two `svidcar run` processes with their own SVIDs and uids:
//!
//! ```text
//! client (root) ─connect 10.250.0.1:8080─▶ OUTPUT REDIRECT (uid ≠ 1337) ─▶ client svidcar :15001
//!   (uid 1337, transparent outbound; table: 10.250.0.1:8080 = server's SPIFFE ID)
//!   ─mTLS to 10.250.0.1:8080─▶ OUTPUT REDIRECT (uid = 1337) ─▶ server svidcar :15006
//!   (uid 1338, transparent inbound, STRICT) ─plaintext─▶ app 127.0.0.1:8080
//! ```
//!
//! The client proxy's own connections are told apart by uid, so they are not redirected back to
//! it. Everything here is locally generated, so only the nat OUTPUT chain is involved; the
//! PREROUTING rule a pod needs for peers on other hosts is not exercised.
//!
//! Needs root, iproute2, iptables, socat, setpriv and ss (`tests/run.sh` installs them). Without
//! them the test prints a notice and passes, unless `CI` is set, in which case it fails.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::Value;
use support::payload;
use svidcar_control::Ca;
use svidcar_identity::{SpiffeId, TrustDomain};

const TD: &str = "svidcar.test";
const CLIENT_ID: &str = "spiffe://svidcar.test/ns/tp/sa/client";
const SERVER_ID: &str = "spiffe://svidcar.test/ns/tp/sa/server";
const CLIENT_UID: u32 = 1337;
const SERVER_UID: u32 = 1338;
/// Ports inside the fresh namespace, where nothing else listens.
const OUTBOUND_PORT: u16 = 15001;
const INBOUND_PORT: u16 = 15006;
const CLIENT_ADMIN_PORT: u16 = 15020;
const SERVER_ADMIN_PORT: u16 = 15021;
const MESH_PORT: u16 = 8080;
const PLAIN_PORT: u16 = 9090;
const ADDR4: &str = "10.250.0.1";
const ADDR6: &str = "fd00:250::1";
/// The whole test, setup and cleanup included, stays within this.
const TEST_LIMIT: Duration = Duration::from_secs(60);
/// Any one short command (ip, iptables, ss).
const CMD_LIMIT: Duration = Duration::from_secs(10);

/// A wall-clock budget shared by every wait in the test.
#[derive(Debug, Clone, Copy)]
struct Deadline(tokio::time::Instant);

impl Deadline {
    fn after(d: Duration) -> Self {
        Deadline(tokio::time::Instant::now() + d)
    }

    /// `limit`, cut short by what is left of the budget.
    fn cap(self, limit: Duration) -> Duration {
        limit.min(
            self.0
                .saturating_duration_since(tokio::time::Instant::now()),
        )
    }

    fn passed(self) -> bool {
        tokio::time::Instant::now() >= self.0
    }
}

/// What a bounded command did.
#[derive(Debug)]
struct Ran {
    /// `None` when it was killed at its time limit.
    status: Option<ExitStatus>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Ran {
    fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

fn reader(mut r: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut out = Vec::new();
        let _ = r.read_to_end(&mut out);
        out
    })
}

/// Runs `argv` with `input` on stdin, killing it after `limit`.
fn run(argv: &[&str], input: &[u8], limit: Duration) -> Ran {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Ran {
                status: None,
                stdout: Vec::new(),
                stderr: format!("cannot run {argv:?}: {e}").into_bytes(),
            }
        }
    };
    let stdin = child.stdin.take();
    let input = input.to_vec();
    let writer = thread::spawn(move || {
        if let Some(mut w) = stdin {
            // The command may exit without reading everything; that is its business.
            let _ = w.write_all(&input);
        }
    });
    let out = child.stdout.take().map(reader);
    let err = child.stderr.take().map(reader);
    let deadline = Deadline::after(limit);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if deadline.passed() => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(_) => break None,
        }
    };
    let _ = writer.join();
    let join = |h: Option<thread::JoinHandle<Vec<u8>>>| {
        h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
    };
    Ran {
        status,
        stdout: join(out),
        stderr: join(err),
    }
}

/// Runs a short command that must succeed.
fn must(argv: &[&str], deadline: Deadline) {
    let r = run(argv, b"", deadline.cap(CMD_LIMIT));
    assert!(
        r.ok(),
        "{argv:?} failed ({:?}): {}",
        r.status,
        String::from_utf8_lossy(&r.stderr)
    );
}

/// A long-running process's stderr, line by line, as it arrives.
#[derive(Debug, Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn collect(&self, r: impl Read + Send + 'static) {
        let lines = self.0.clone();
        thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
    }

    fn snapshot(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A network namespace that exists for one test: the processes started in it are killed and the
/// namespace deleted on drop, also when the test panics. Its iptables rules go with it.
#[derive(Debug)]
struct Netns {
    name: String,
    children: Vec<Child>,
}

impl Netns {
    fn create(deadline: Deadline) -> Result<Self, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("svc-tp-{}-{nanos}", std::process::id());
        let r = run(&["ip", "netns", "add", &name], b"", deadline.cap(CMD_LIMIT));
        if !r.ok() {
            return Err(format!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&r.stderr).trim()
            ));
        }
        Ok(Netns {
            name,
            children: Vec::new(),
        })
    }

    /// `ip netns exec NAME` + `argv`.
    fn argv<'a>(&'a self, argv: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["ip", "netns", "exec", self.name.as_str()];
        v.extend_from_slice(argv);
        v
    }

    fn must(&self, argv: &[&str], deadline: Deadline) {
        must(&self.argv(argv), deadline);
    }

    fn run(&self, argv: &[&str], input: &[u8], limit: Duration) -> Ran {
        run(&self.argv(argv), input, limit)
    }

    /// Starts a long-running process in the namespace, optionally as `uid` (with the same gid and
    /// no supplementary groups); its stderr goes to the returned lines.
    fn spawn(&mut self, uid: Option<u32>, argv: &[&str]) -> Lines {
        let ids = uid.map(|u| (format!("--reuid={u}"), format!("--regid={u}")));
        let mut full = vec!["ip", "netns", "exec", self.name.as_str()];
        if let Some((reuid, regid)) = &ids {
            full.extend_from_slice(&["setpriv", reuid, regid, "--clear-groups"]);
        }
        full.extend_from_slice(argv);
        let mut cmd = Command::new(full[0]);
        cmd.args(&full[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // The proxy must see only the flags given here.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SVIDCAR_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {full:?}: {e}"));
        let lines = Lines::default();
        if let Some(err) = child.stderr.take() {
            lines.collect(err);
        }
        self.children.push(child);
        lines
    }

    /// Panics if a process started with `spawn` has exited.
    fn check_children(&mut self) {
        for c in &mut self.children {
            if let Ok(Some(status)) = c.try_wait() {
                panic!("process {} in {} exited early: {status}", c.id(), self.name);
            }
        }
    }

    /// Waits until something listens on TCP `port` in the namespace.
    fn wait_listening(&mut self, port: u16, deadline: Deadline) {
        let filter = format!("sport = :{port}");
        loop {
            let r = self.run(&["ss", "-Hltn", &filter], b"", deadline.cap(CMD_LIMIT));
            if r.ok() && !r.stdout.is_empty() {
                return;
            }
            self.check_children();
            assert!(
                !deadline.passed(),
                "nothing listens on port {port} in {}",
                self.name
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Anything else still in the namespace was started by us (socat's per-connection forks).
        let pids = run(
            &["ip", "netns", "pids", &self.name],
            b"",
            Duration::from_secs(5),
        );
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            let _ = run(&["kill", "-KILL", pid], b"", Duration::from_secs(5));
        }
        let r = run(
            &["ip", "netns", "del", &self.name],
            b"",
            Duration::from_secs(10),
        );
        if !r.ok() {
            eprintln!(
                "warning: could not delete network namespace {}: {}",
                self.name,
                String::from_utf8_lossy(&r.stderr)
            );
        }
    }
}

/// Root and the tools this test drives, or why not.
fn missing_prerequisite() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .map(str::to_owned);
    if euid.as_deref() != Some("0") {
        return Some("not running as root".into());
    }
    for (tool, probe) in [
        ("ip", "-V"),
        ("iptables", "--version"),
        ("socat", "-V"),
        ("setpriv", "--version"),
        ("ss", "-V"),
    ] {
        if !run(&[tool, probe], b"", CMD_LIMIT).ok() {
            return Some(format!("`{tool}` is not available"));
        }
    }
    None
}

/// Skips (prints a notice) or, under CI, fails.
fn skip(why: &str) {
    let msg = format!("transparent_netns needs root, a network namespace and iproute2, iptables, socat, setpriv, ss ({why}); run tests/run.sh as root");
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
}

/// Writes the SVID for `id` and the bundle into a fresh directory owned by `uid`.
fn svid_files(ca: &Ca, id: &str, uid: u32) -> (tempfile::TempDir, [PathBuf; 3]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let svid = ca
        .issue(&SpiffeId::parse(id).expect("id"), Duration::from_secs(3600))
        .expect("issue SVID");
    let paths = [
        dir.path().join("svid.pem"),
        dir.path().join("svid_key.pem"),
        dir.path().join("bundle.pem"),
    ];
    for (path, pem) in paths
        .iter()
        .zip([&svid.cert_pem, &svid.key_pem, ca.bundle_pem()])
    {
        std::fs::write(path, pem).expect("write PEM");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::os::unix::fs::chown(path, Some(uid), Some(uid)).expect("chown PEM");
    }
    std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid)).expect("chown dir");
    (dir, paths)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// Access-log records (target `svidcar::access`) among JSON log lines.
fn access_records(lines: &Lines) -> Vec<Value> {
    lines
        .snapshot()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "svidcar::access")
        .collect()
}

/// Waits until `n` access records have these field values, and returns them. Records are
/// written when a connection has closed on both sides, which may be just after the client saw
/// end-of-stream.
fn wait_records(
    lines: &Lines,
    fields: &[(&str, &str)],
    n: usize,
    deadline: Deadline,
) -> Vec<Value> {
    loop {
        let found: Vec<Value> = access_records(lines)
            .into_iter()
            .filter(|r| fields.iter().all(|(k, v)| r[*k] == *v))
            .collect();
        if found.len() >= n {
            return found;
        }
        assert!(
            !deadline.passed(),
            "fewer than {n} access records with {fields:?}; log:\n{}",
            lines.snapshot().join("\n")
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the first access record with these field values.
fn wait_record(lines: &Lines, fields: &[(&str, &str)], deadline: Deadline) -> Value {
    let mut found = wait_records(lines, fields, 1, deadline);
    found.swap_remove(0)
}

/// Sends `data` to `target` (a socat address) from inside the namespace, half-closes, and
/// returns everything that came back.
fn call(ns: &Netns, uid: Option<u32>, target: &str, data: &[u8], deadline: Deadline) -> Ran {
    let ids = uid.map(|u| (format!("--reuid={u}"), format!("--regid={u}")));
    let mut argv = Vec::new();
    if let Some((reuid, regid)) = &ids {
        argv.extend_from_slice(&["setpriv", reuid.as_str(), regid.as_str(), "--clear-groups"]);
    }
    // -t: after our half-close, wait this long for the other side to finish.
    argv.extend_from_slice(&["socat", "-t", "10", "-T", "15", "-", target]);
    ns.run(&argv, data, deadline.cap(Duration::from_secs(20)))
}

/// Checks the echo; on failure shows the client's errors and both proxies' logs.
fn assert_echoed(ran: &Ran, data: &[u8], what: &str, logs: [&Lines; 2]) {
    if ran.ok() && ran.stdout == data {
        return;
    }
    panic!(
        "{what}: client exit {:?}, {} of {} bytes echoed{}\nclient stderr: {}\nclient proxy log:\n{}\nserver proxy log:\n{}",
        ran.status,
        ran.stdout.len(),
        data.len(),
        if ran.stdout.len() == data.len() { " but different" } else { "" },
        String::from_utf8_lossy(&ran.stderr),
        logs[0].snapshot().join("\n"),
        logs[1].snapshot().join("\n"),
    );
}

/// Adds addresses on a dummy interface (or, where the dummy driver is missing, one end of a veth
/// pair kept inside the namespace). Returns whether IPv6 is usable.
fn add_addresses(ns: &Netns, deadline: Deadline) -> bool {
    ns.must(&["ip", "link", "set", "lo", "up"], deadline);
    let dummy = ns.run(
        &["ip", "link", "add", "d0", "type", "dummy"],
        b"",
        deadline.cap(CMD_LIMIT),
    );
    if !dummy.ok() {
        ns.must(
            &[
                "ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1",
            ],
            deadline,
        );
        ns.must(&["ip", "link", "set", "d1", "up"], deadline);
    }
    ns.must(
        &["ip", "addr", "add", "10.250.0.1/24", "dev", "d0"],
        deadline,
    );
    let v6 = ns
        .run(
            &[
                "ip",
                "-6",
                "addr",
                "add",
                "fd00:250::1/64",
                "dev",
                "d0",
                "nodad",
            ],
            b"",
            deadline.cap(CMD_LIMIT),
        )
        .ok();
    ns.must(&["ip", "link", "set", "d0", "up"], deadline);
    v6
}

/// The nat rules: app traffic to the mesh and plain ports goes to the client proxy; the client
/// proxy's own traffic to the mesh port goes to the server proxy's inbound. False when `iptables`
/// refuses them (e.g. no ip6tables nat table).
fn redirect_rules(ns: &Netns, iptables: &str, addr: &str, plain: bool, deadline: Deadline) -> bool {
    let rule = |port: u16, owner: &str, to: u16| {
        format!("-p tcp -d {addr} --dport {port} -m owner {owner} --uid-owner {CLIENT_UID} -j REDIRECT --to-ports {to}")
    };
    let mut rules = vec![
        rule(MESH_PORT, "!", OUTBOUND_PORT),
        rule(MESH_PORT, "", INBOUND_PORT),
    ];
    if plain {
        rules.push(rule(PLAIN_PORT, "!", OUTBOUND_PORT));
    }
    for rule in &rules {
        let mut argv = vec![iptables, "-w", "5", "-t", "nat", "-A", "OUTPUT"];
        argv.extend(rule.split_whitespace());
        let r = ns.run(&argv, b"", deadline.cap(CMD_LIMIT));
        if !r.ok() {
            eprintln!(
                "{iptables} {rule}: {}",
                String::from_utf8_lossy(&r.stderr).trim()
            );
            return false;
        }
    }
    true
}

#[test]
fn redirected_connections_are_meshed_or_passed_through() {
    if let Some(why) = missing_prerequisite() {
        return skip(&why);
    }
    let deadline = Deadline::after(TEST_LIMIT);
    let mut ns = match Netns::create(deadline) {
        Ok(ns) => ns,
        Err(e) => return skip(&e),
    };
    let v6 = add_addresses(&ns, deadline);
    assert!(
        redirect_rules(&ns, "iptables", ADDR4, true, deadline),
        "installing the iptables nat rules failed"
    );
    let v6 = v6 && redirect_rules(&ns, "ip6tables", ADDR6, false, deadline);

    // The app and a service outside the mesh.
    let app = format!("TCP4-LISTEN:{MESH_PORT},bind=127.0.0.1,fork,reuseaddr");
    ns.spawn(None, &["socat", &app, "EXEC:cat"]);
    let outside = format!("TCP4-LISTEN:{PLAIN_PORT},bind={ADDR4},fork,reuseaddr");
    ns.spawn(None, &["socat", &outside, "EXEC:cat"]);

    let ca = Ca::generate(
        &TrustDomain::parse(TD).expect("td"),
        Duration::from_secs(86400),
    )
    .expect("CA");
    let (_client_dir, [c_cert, c_key, c_bundle]) = svid_files(&ca, CLIENT_ID, CLIENT_UID);
    let (_server_dir, [s_cert, s_key, s_bundle]) = svid_files(&ca, SERVER_ID, SERVER_UID);
    let bin = env!("CARGO_BIN_EXE_svidcar");

    let outbound_listen = format!("[::]:{OUTBOUND_PORT}");
    let dest4 = format!("{ADDR4}:{MESH_PORT}={SERVER_ID}");
    let dest6 = format!("[{ADDR6}]:{MESH_PORT}={SERVER_ID}");
    let client_admin = format!("127.0.0.1:{CLIENT_ADMIN_PORT}");
    let client_log = ns.spawn(
        Some(CLIENT_UID),
        &[
            bin,
            "--log-format",
            "json",
            "run",
            "--cert",
            path_str(&c_cert),
            "--key",
            path_str(&c_key),
            "--bundle",
            path_str(&c_bundle),
            "--inbound-enabled",
            "false",
            "--outbound-mode",
            "transparent",
            "--outbound-listen",
            &outbound_listen,
            "--destination",
            &dest4,
            "--destination",
            &dest6,
            "--admin-listen",
            &client_admin,
        ],
    );
    let inbound_listen = format!("[::]:{INBOUND_PORT}");
    let server_admin = format!("127.0.0.1:{SERVER_ADMIN_PORT}");
    let server_log = ns.spawn(
        Some(SERVER_UID),
        &[
            bin,
            "--log-format",
            "json",
            "run",
            "--cert",
            path_str(&s_cert),
            "--key",
            path_str(&s_key),
            "--bundle",
            path_str(&s_bundle),
            "--outbound-enabled",
            "false",
            "--inbound-mode",
            "transparent",
            "--inbound-listen",
            &inbound_listen,
            "--mtls",
            "strict",
            "--admin-listen",
            &server_admin,
        ],
    );
    let logs = [&client_log, &server_log];
    for port in [MESH_PORT, PLAIN_PORT, OUTBOUND_PORT, INBOUND_PORT] {
        ns.wait_listening(port, deadline);
    }

    // 1. Mesh: the app's plaintext is redirected, carried over mTLS and redirected again.
    let data = payload(200_000, 1);
    let got = call(
        &ns,
        None,
        &format!("TCP4:{ADDR4}:{MESH_PORT}"),
        &data,
        deadline,
    );
    assert_echoed(&got, &data, "meshed call over IPv4", logs);
    let len = data.len().to_string();
    let out = wait_record(
        &client_log,
        &[("direction", "outbound"), ("dst.addr", "10.250.0.1:8080")],
        deadline,
    );
    assert_eq!(out["tls"], "mutual_tls", "{out}");
    assert_eq!(out["client.id"], CLIENT_ID, "{out}");
    assert_eq!(out["server.id"], SERVER_ID, "{out}");
    assert_eq!(out["outcome"], "complete", "{out}");
    assert_eq!(out["bytes_up"].to_string(), len, "{out}");
    assert_eq!(out["bytes_down"].to_string(), len, "{out}");
    let inb = wait_record(
        &server_log,
        &[("direction", "inbound"), ("client.id", CLIENT_ID)],
        deadline,
    );
    assert_eq!(inb["tls"], "mutual_tls", "{inb}");
    assert_eq!(inb["server.id"], SERVER_ID, "{inb}");
    // SO_ORIGINAL_DST gave port 8080; the app is reached on app_host at that port.
    assert_eq!(inb["dst.addr"], "127.0.0.1:8080", "{inb}");
    assert_eq!(inb["bytes_up"].to_string(), len, "{inb}");

    // 2. Passthrough: a destination not in the table goes out as plain TCP.
    let data = payload(50_000, 2);
    let got = call(
        &ns,
        None,
        &format!("TCP4:{ADDR4}:{PLAIN_PORT}"),
        &data,
        deadline,
    );
    assert_echoed(&got, &data, "passthrough call", logs);
    let pass = wait_record(
        &client_log,
        &[("direction", "outbound"), ("dst.addr", "10.250.0.1:9090")],
        deadline,
    );
    assert_eq!(pass["tls"], "none", "{pass}");
    assert_eq!(pass["no_tls_reason"], "passthrough_destination", "{pass}");
    assert_eq!(pass["outcome"], "complete", "{pass}");
    assert_eq!(
        pass["bytes_down"].to_string(),
        data.len().to_string(),
        "{pass}"
    );

    // 3. Plaintext that skips the outbound (sent as the proxy's uid, so it lands straight on the
    //    STRICT inbound) is refused.
    let got = call(
        &ns,
        Some(CLIENT_UID),
        &format!("TCP4:{ADDR4}:{MESH_PORT}"),
        b"GET / HTTP/1.1\r\n\r\n",
        deadline,
    );
    assert!(got.stdout.is_empty(), "STRICT inbound answered plaintext");
    let refused = wait_record(
        &server_log,
        &[("direction", "inbound"), ("reason", "plaintext_refused")],
        deadline,
    );
    assert_eq!(refused["outcome"], "refused", "{refused}");

    // 4. IPv6: ip6tables REDIRECT, IP6T_SO_ORIGINAL_DST on both sides.
    if v6 {
        let data = payload(100_000, 3);
        let got = call(
            &ns,
            None,
            &format!("TCP6:[{ADDR6}]:{MESH_PORT}"),
            &data,
            deadline,
        );
        assert_echoed(&got, &data, "meshed call over IPv6", logs);
        let out6 = wait_record(
            &client_log,
            &[
                ("direction", "outbound"),
                ("dst.addr", "[fd00:250::1]:8080"),
            ],
            deadline,
        );
        assert_eq!(out6["tls"], "mutual_tls", "{out6}");
        assert_eq!(out6["server.id"], SERVER_ID, "{out6}");
        // The second meshed inbound connection, this time with an IPv6 original destination.
        let meshed = [
            ("direction", "inbound"),
            ("client.id", CLIENT_ID),
            ("tls", "mutual_tls"),
        ];
        let inbound = wait_records(&server_log, &meshed, 2, deadline);
        assert_eq!(
            inbound.len(),
            2,
            "one meshed inbound record per call: {inbound:?}"
        );
        let in6 = &inbound[1];
        assert_eq!(in6["dst.addr"], "127.0.0.1:8080", "{in6}");
        assert_eq!(in6["bytes_up"].to_string(), data.len().to_string(), "{in6}");
    } else {
        eprintln!(
            "note: IPv6 part skipped (no IPv6 address or ip6tables nat table in the namespace)"
        );
    }
    ns.check_children();
}
