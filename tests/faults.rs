//! Load and faults (issue 15): a third-party TLS scanner against the inbound, no key material in
//! any log at `trace`, long transfers with random chunk sizes and half-closes, fd exhaustion,
//! slowloris and half-open handshakes, and ClientHellos naming an IP address in SNI.
//!
//! Real processes (`svidcar run`, `svidcar agent`, `testssl.sh`, `openssl`) are killed when
//! their handles drop; every wait is bounded; everything stays on loopback.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest;
use support::{
    echo_app, localhost, payload, round_trip, scrape, start_client, start_server, wait_for, Pki,
    ProxyBuilder, ProxyProcess, SvidFiles, Wait, CLIENT_ID, SERVER_ID, TD,
};
use svidcar_proxy::config::MtlsMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Shared helpers

/// `svidcar run` with PEM files and no admin port: a STRICT explicit inbound in front of `app`,
/// logging to `<dir>/server.log`.
fn server(dir: &Path, files: &SvidFiles, app: SocketAddr) -> ProxyBuilder {
    ProxyProcess::builder("server", dir)
        .no_admin()
        .svid(files)
        .explicit_inbound(app)
}

/// Samples of `name` whose labels contain every `k="v"` of `labels`: (labels text, value).
fn samples(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix('{')?;
            let (lbls, value) = rest.rsplit_once("} ")?;
            labels
                .iter()
                .all(|(k, v)| lbls.contains(&format!("{k}=\"{v}\"")))
                .then(|| (lbls.to_owned(), value.trim().parse().unwrap_or(f64::NAN)))
        })
        .collect()
}

fn label<'a>(labels: &'a str, key: &str) -> &'a str {
    let start = format!("{key}=\"");
    labels
        .split_once(&start)
        .and_then(|(_, r)| r.split_once('"'))
        .map_or("", |(v, _)| v)
}

/// A small, fast, deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `1..=max`, with a 1-in-16 chance of a single byte.
    fn size(&mut self, max: usize) -> usize {
        let r = self.next();
        if r.is_multiple_of(16) {
            1
        } else {
            1 + usize::try_from((r >> 8) % max as u64).unwrap()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. A third-party TLS scanner against the inbound

/// Runs `program args` bounded by `limit`; returns (success, stdout, stderr).
async fn run_bounded(program: &str, args: &[&str], limit: Duration) -> (bool, String, String) {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{program} runs (see tests/run.sh for the package): {e}"));
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish within {limit:?}"))
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// testssl.sh (Debian package `testssl.sh`, command `testssl`) scans protocols and server defaults of a STRICT inbound:
/// TLS 1.3 only, a client certificate required, no session resumption by ticket or ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testssl_finds_only_tls13_a_required_client_certificate_and_no_resumption() {
    let pki = Pki::new(TD);
    let server = start_server(&pki, echo_app().await, MtlsMode::Strict, |_| {}).await;
    let inbound = server.inbound_addr.unwrap();
    let json = pki.dir.path().join("testssl.json");
    let target = inbound.to_string();
    // Debian's package `testssl.sh` installs the script as `testssl`.
    let (_, out, err) = run_bounded(
        "testssl",
        &[
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "--ip",
            "one",
            "--protocols",
            "--server-defaults",
            "--jsonfile",
            json.to_str().unwrap(),
            &target,
        ],
        Duration::from_secs(300),
    )
    .await;
    let findings: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap_or_else(|e| {
            panic!("testssl.sh wrote no JSON ({e}):\n{out}\n{err}");
        }))
        .unwrap();
    let finding = |id: &str| -> String {
        findings
            .iter()
            .find(|f| f["id"] == id)
            .and_then(|f| f["finding"].as_str())
            .unwrap_or_else(|| panic!("testssl.sh reported no {id}:\n{out}"))
            .to_owned()
    };
    // The summary, for the closing note.
    eprintln!("testssl.sh summary for the STRICT inbound {target}:");
    for line in out.lines().filter(|l| {
        ["SSLv", "TLS 1", "Session", "SSL Session ID"]
            .iter()
            .any(|k| l.trim_start().starts_with(k))
    }) {
        eprintln!("  {}", line.trim_end());
    }
    for old in ["SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2"] {
        assert!(
            finding(old).starts_with("not offered"),
            "{old}: {}\n{out}",
            finding(old)
        );
    }
    assert!(
        finding("TLS1_3").starts_with("offered"),
        "{}\n{out}",
        finding("TLS1_3")
    );
    let ticket = finding("sessionresumption_ticket");
    assert!(
        ticket.starts_with("not supported"),
        "ticket: {ticket}\n{out}"
    );
    let id = finding("sessionresumption_ID");
    assert!(id.contains("no resumption"), "session ID: {id}\n{out}");

    // testssl.sh 3.0 detects client authentication only before TLS 1.3 (where the
    // CertificateRequest is encrypted): ask openssl, which decrypts it. Without a certificate
    // the server asks for one and then ends the handshake with `certificate_required`.
    let (_, out, err) = run_bounded(
        "openssl",
        &[
            "s_client", "-connect", &target, "-tls1_3", "-msg", "-ign_eof",
        ],
        Duration::from_secs(20),
    )
    .await;
    let all = format!("{out}{err}");
    let asked = all
        .lines()
        .find(|l| l.starts_with("<<<") && l.contains("CertificateRequest"));
    let refused = all
        .lines()
        .find(|l| l.contains("alert certificate required"));
    eprintln!("openssl s_client without a client certificate:");
    eprintln!("  {}", asked.unwrap_or("(no CertificateRequest)"));
    eprintln!("  {}", refused.unwrap_or("(no certificate_required alert)"));
    assert!(asked.is_some(), "no CertificateRequest:\n{all}");
    assert!(refused.is_some(), "no certificate_required alert:\n{all}");
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 2. No key material in any log at any level

/// Strings that would betray `key_pem` (a PEM private key) in a log: the DER as hex (both
/// cases), a middle stretch of it as hex and as a Debug-formatted byte list, and every line of
/// the PEM body (base64 of 48-byte aligned slices, so a base64 dump of the DER contains them).
fn key_traces(key_pem: &str) -> Vec<String> {
    use base64::Engine as _;
    let body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
    let mid = &der[der.len() / 2..der.len() / 2 + 16];
    let mid_hex: String = mid.iter().map(|b| format!("{b:02x}")).collect();
    let mid_list = mid.iter().map(u8::to_string).collect::<Vec<_>>().join(", ");
    let mut traces = vec![
        hex.clone(),
        hex.to_uppercase(),
        mid_hex.clone(),
        mid_hex.to_uppercase(),
        mid_list,
    ];
    traces.extend(
        key_pem
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .map(String::from),
    );
    traces
}

/// `svidcar agent`, a server proxy fed by it and a client proxy on PEM files, all at `trace`;
/// traffic, a rotation of each SVID; then no log holds a private key or a PEM key header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_at_trace_holds_key_material() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    std::fs::create_dir(p("ca")).unwrap();
    // The agent refuses a CA directory others can read.
    std::fs::set_permissions(p("ca"), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::write(
        p("registration.yaml"),
        format!("entries:\n  - spiffe_id: {SERVER_ID}\n    selectors: [\"unix:uid:0\"]\n"),
    )
    .unwrap();
    let socket = p("agent.sock");
    let endpoint = format!("unix://{}", socket.display());
    let agent = ProxyProcess::builder("agent", dir.path())
        .global(&["--log", "trace"])
        .command("agent")
        .args([
            "--socket",
            socket.to_str().unwrap(),
            "--ca-dir",
            p("ca").to_str().unwrap(),
            "--trust-domain",
            TD,
            "--registration",
            p("registration.yaml").to_str().unwrap(),
            // Re-issued every 4–5 s: the server's SVID rotates during the test.
            "--svid-ttl",
            "10s",
        ])
        .spawn();
    support::try_wait_for("the agent to serve", Duration::from_secs(15), || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
            && p("ca/ca.key").exists()
            && p("ca/ca.pem").exists()
    })
    .await
    .unwrap_or_else(|e| {
        let files: Vec<_> = std::fs::read_dir(p("ca"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        panic!("{e}: {files:?}\n{}", agent.log_text())
    });
    let ca_pem = std::fs::read_to_string(p("ca/ca.pem")).unwrap();
    let ca_key = std::fs::read_to_string(p("ca/ca.key")).unwrap();
    let ca = svidcar_control::Ca::from_pem(&ca_pem, &ca_key).unwrap();

    let app = echo_app().await;
    let server = ProxyProcess::builder("server", dir.path())
        .global(&["--log", "trace"])
        .no_admin()
        .args(["--workload-api", &endpoint])
        .explicit_inbound(app)
        .start()
        .await;
    let inbound = server.addr("inbound");

    // The client's SVID files, from the agent's CA; rewritten later with a new key.
    let issue = |n: u32| {
        let svid = ca
            .issue(&support::id(CLIENT_ID), Duration::from_secs(3600))
            .unwrap();
        std::fs::write(p("client.pem"), &svid.cert_pem).unwrap();
        std::fs::write(p("client_key.pem"), &svid.key_pem).unwrap();
        std::fs::write(p("bundle.pem"), &ca_pem).unwrap();
        eprintln!("client SVID {n} written");
        svid.key_pem.clone()
    };
    let mut keys = vec![ca_key.clone(), issue(1)];
    let client = ProxyProcess::builder("client", dir.path())
        .global(&["--log", "trace"])
        .no_admin()
        .svid(&SvidFiles {
            cert: p("client.pem"),
            key: p("client_key.pem"),
            bundle: p("bundle.pem"),
        })
        .args(["--reload-interval", "100ms"])
        .explicit_routes(&[inbound], SERVER_ID)
        .start()
        .await;
    let route = client.addr("outbound");

    // A Workload API client at trace too: the agent's SVID for us, key included.
    let fetched = p("fetched");
    std::fs::create_dir(&fetched).unwrap();
    let (code, _, fetch_err) = support::svidcar(&[
        "--log",
        "trace",
        "api",
        "fetch",
        "--workload-api",
        &endpoint,
        "--write",
        fetched.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{fetch_err}");
    keys.push(std::fs::read_to_string(fetched.join("svid_key.pem")).unwrap());

    let traffic = |round: u64| async move {
        for i in 0..5 {
            let data = payload(10_000, round * 10 + i);
            assert_eq!(round_trip(route, &data).await.unwrap(), data);
        }
    };
    traffic(1).await;
    keys.push(issue(2));
    wait_for(
        "the client to load its new SVID",
        Duration::from_secs(10),
        || !client.lines("loaded SVID from files").is_empty(),
    )
    .await;
    traffic(2).await;
    // The agent renews the server's 10 s SVID after about 5 s: traffic on the rotated one.
    wait_for(
        "the server's SVID to rotate",
        Duration::from_secs(15),
        || server.lines("SVID received from the Workload API").len() >= 2,
    )
    .await;
    traffic(3).await;

    let traces: Vec<(usize, String)> = keys
        .iter()
        .enumerate()
        .flat_map(|(i, k)| key_traces(k).into_iter().map(move |t| (i, t)))
        .collect();
    let mut total = 0;
    for proc in [&agent, &server, &client] {
        let text = proc.log_text();
        total += text.len();
        assert!(!text.is_empty(), "{} is empty", proc.log_path().display());
        assert!(
            !text.contains("PRIVATE KEY"),
            "a PEM key header in {}",
            proc.log_path().display()
        );
        for (key, t) in &traces {
            assert!(
                !text.contains(t.as_str()),
                "key {key} ({t:.20}…) appears in {}",
                proc.log_path().display()
            );
        }
    }
    assert!(!fetch_err.contains("PRIVATE KEY"), "{fetch_err}");
    for (key, t) in &traces {
        assert!(
            !fetch_err.contains(t.as_str()),
            "key {key} in `api fetch` output"
        );
    }
    // The logs really were at trace (otherwise the test proves little).
    assert!(
        server.log_text().contains("\"level\":\"TRACE\""),
        "no TRACE line in the server log"
    );
    eprintln!(
        "{} bytes of trace logs from agent, server and client, {} keys, {} probes: no key material",
        total,
        keys.len(),
        traces.len()
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Long transfers with random chunk sizes and half-closes, byte-exact

/// Bytes each way per connection: `SVIDCAR_FAULTS_TRANSFER_MIB` MiB (default 1024: 1 GiB each
/// way on each of the two connections, ~15 s in a debug build).
fn transfer_bytes() -> u64 {
    std::env::var("SVIDCAR_FAULTS_TRANSFER_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1024)
        << 20
}

/// What one end sent and received.
#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    sent_digest: Vec<u8>,
    received: u64,
    received_digest: Vec<u8>,
    /// Bytes this end sent after it had seen the other direction end.
    sent_after_eof: u64,
}

/// Writes `len` bytes from random offsets of `pool` in random chunk sizes, hashing them.
async fn send_random(
    w: &mut OwnedWriteHalf,
    pool: &[u8],
    len: u64,
    rng: &mut Rng,
    hash: &mut digest::Context,
) {
    let mut left = len;
    while left > 0 {
        let n = rng.size(256 << 10).min(usize::try_from(left).unwrap());
        let off = usize::try_from(rng.next() % (pool.len() - n) as u64).unwrap();
        let chunk = &pool[off..off + n];
        hash.update(chunk);
        w.write_all(chunk).await.unwrap();
        left -= n as u64;
    }
}

/// Reads to EOF with random buffer sizes, hashing; returns the count and digest.
async fn recv_random(r: &mut OwnedReadHalf, seed: u64) -> (u64, Vec<u8>) {
    let mut rng = Rng(seed);
    let mut hash = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; 128 << 10];
    let mut n = 0u64;
    loop {
        let want = rng.size(buf.len());
        let got = r.read(&mut buf[..want]).await.unwrap();
        if got == 0 {
            return (n, hash.finish().as_ref().to_vec());
        }
        hash.update(&buf[..got]);
        n += got as u64;
    }
}

/// Sends everything, half-closes at once, then reads until the other side ends.
async fn closer(s: TcpStream, pool: Arc<Vec<u8>>, len: u64, seed: u64) -> Tally {
    let (mut r, mut w) = s.into_split();
    let reader = tokio::spawn(async move { recv_random(&mut r, seed ^ 1).await });
    let mut rng = Rng(seed);
    let mut hash = digest::Context::new(&digest::SHA256);
    send_random(&mut w, &pool, len, &mut rng, &mut hash).await;
    w.shutdown().await.unwrap();
    let (received, received_digest) = reader.await.unwrap();
    Tally {
        sent: len,
        sent_digest: hash.finish().as_ref().to_vec(),
        received,
        received_digest,
        sent_after_eof: 0,
    }
}

/// Sends half while reading; once the other direction has ended, sends the other half, then
/// half-closes.
async fn late_sender(s: TcpStream, pool: Arc<Vec<u8>>, len: u64, seed: u64) -> Tally {
    let (mut r, mut w) = s.into_split();
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(async move {
        let got = recv_random(&mut r, seed ^ 1).await;
        let _ = eof_tx.send(());
        got
    });
    let mut rng = Rng(seed);
    let mut hash = digest::Context::new(&digest::SHA256);
    let before = len / 2;
    send_random(&mut w, &pool, before, &mut rng, &mut hash).await;
    eof_rx.await.unwrap();
    send_random(&mut w, &pool, len - before, &mut rng, &mut hash).await;
    w.shutdown().await.unwrap();
    let (received, received_digest) = reader.await.unwrap();
    Tally {
        sent: len,
        sent_digest: hash.finish().as_ref().to_vec(),
        received,
        received_digest,
        sent_after_eof: len - before,
    }
}

fn assert_delivered(from: &str, a: &Tally, to: &str, b: &Tally) {
    assert_eq!(a.sent, b.received, "{from} → {to}: byte count");
    assert!(
        a.sent_digest == b.received_digest,
        "{from} → {to}: SHA-256 differs"
    );
}

/// Through a client → server proxy pair, two connections: on the first the client half-closes
/// first and the app keeps sending half of its bytes afterwards; on the second the app
/// half-closes first and the client keeps sending. Every byte arrives, in order, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_transfers_with_random_chunks_and_half_closes_are_byte_exact() {
    let len = transfer_bytes();
    let pool = Arc::new(payload(4 << 20, 15));
    let app = TcpListener::bind(localhost()).await.unwrap();
    let app_addr = app.local_addr().unwrap();
    let app_pool = pool.clone();
    let app_side = tokio::spawn(async move {
        let (s, _) = app.accept().await.unwrap();
        let late = late_sender(s, app_pool.clone(), len, 101).await;
        let (s, _) = app.accept().await.unwrap();
        let close = closer(s, app_pool, len, 202).await;
        (late, close)
    });
    let pair = support::Pair::new(app_addr).await;
    // Bounded: a lost FIN would otherwise hang the test (debug build: ~8 s per GiB each way).
    let limit = Duration::from_secs(120.max(len >> 23));

    let start = Instant::now();
    let s = TcpStream::connect(pair.route).await.unwrap();
    let client_first = tokio::time::timeout(limit, closer(s, pool.clone(), len, 303))
        .await
        .expect("first transfer finished");
    let first = start.elapsed();
    let s = TcpStream::connect(pair.route).await.unwrap();
    let app_first = tokio::time::timeout(limit, late_sender(s, pool.clone(), len, 404))
        .await
        .expect("second transfer finished");
    let elapsed = start.elapsed();
    let (app_late, app_closer) = tokio::time::timeout(limit, app_side)
        .await
        .expect("the app finished")
        .unwrap();

    // Client half-closed first: both directions exact, and the app's second half (sent after
    // it saw the client's FIN) arrived.
    assert_delivered("client", &client_first, "app", &app_late);
    assert_delivered("app", &app_late, "client", &client_first);
    assert_eq!(app_late.sent_after_eof, len - len / 2);
    // App half-closed first: the same the other way round.
    assert_delivered("app", &app_closer, "client", &app_first);
    assert_delivered("client", &app_first, "app", &app_closer);
    assert_eq!(app_first.sent_after_eof, len - len / 2);

    let total = 4 * len;
    eprintln!(
        "moved {} MiB each way on each of 2 connections ({} MiB in all) in {:.1} s \
         (first {:.1} s): {:.0} MiB/s through the pair",
        len >> 20,
        total >> 20,
        elapsed.as_secs_f64(),
        first.as_secs_f64(),
        (total >> 20) as f64 / elapsed.as_secs_f64()
    );
    pair.client.shutdown().await;
    pair.server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 4. fd exhaustion

/// utime + stime of `pid` in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start with the state (field 3).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// A mesh client (mTLS, ALPN `svidcar/1`) sends 64 opaque bytes to `addr` and reads the echo,
/// within 3 s.
async fn mtls_echo(addr: SocketAddr, svid: &svidcar_control::IssuedSvid) -> std::io::Result<()> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(svid)));
    let io = async {
        let tcp = TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let mut tls = connector.connect(name, tcp).await?;
        let data = payload(64, 7);
        tls.write_all(&data).await?;
        let mut got = vec![0u8; 64];
        tls.read_exact(&mut got).await?;
        if got == data {
            Ok(())
        } else {
            Err(std::io::Error::other("echo differs"))
        }
    };
    tokio::time::timeout(Duration::from_secs(3), io)
        .await
        .map_err(|_| std::io::Error::other("timed out"))?
}

/// A STRICT proxy under `ulimit -n 64` is filled with silent connections (each holds one fd
/// for the 20 s detect timeout) until accepting fails with EMFILE; while more connections wait
/// in the accept queue it neither spins nor floods its log, and it serves a real mTLS client
/// again once the connections close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_exhaustion_backs_off_logs_once_per_interval_and_recovers() {
    let pki = Pki::new(TD);
    let files = pki.write("server", &pki.issue(SERVER_ID));
    let client_svid = pki.issue(CLIENT_ID);
    let app = echo_app().await;
    let proxy = server(pki.dir.path(), &files, app)
        .args(["--detect-timeout", "20s"])
        .under(&["prlimit", "--nofile=64:64"])
        .start()
        .await;
    let inbound = proxy.addr("inbound");
    let pid = proxy.pid();
    let baseline_fds = proxy.open_fds();
    mtls_echo(inbound, &client_svid)
        .await
        .expect("served before the flood");

    // More silent connections than the proxy has fds: the rest wait in the accept queue.
    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(TcpStream::connect(inbound).await.unwrap());
    }
    wait_for(
        "the accept failure to be logged",
        Duration::from_secs(5),
        || !proxy.lines("accept failed").is_empty(),
    )
    .await;
    let saturated_fds = proxy.open_fds();

    let lines_before = proxy.lines("accept failed").len();
    let ticks_before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ticks = cpu_ticks(pid) - ticks_before;
    let lines = proxy.lines("accept failed").len() - lines_before;
    let hz = 100.0; // USER_HZ on Linux
    eprintln!(
        "saturated ({baseline_fds} fds at start, {saturated_fds} under the flood): {} CPU ticks \
         ({:.1}% of a core) and {} 'accept failed' lines in 2 s",
        ticks,
        f64::from(u32::try_from(ticks).unwrap()) / hz / 2.0 * 100.0,
        lines
    );
    assert!(ticks <= 20, "{ticks} ticks in 2 s: the accept loop spins");
    assert!(
        lines <= 1,
        "{lines} 'accept failed' lines in 2 s: not rate-limited\n{}",
        proxy.log_text()
    );

    // Free the fds: the proxy serves again.
    drop(held);
    Wait::new(
        "a new mTLS connection to be served",
        Duration::from_secs(10),
    )
    .until(|| async { mtls_echo(inbound, &client_svid).await.is_ok() })
    .await
    .unwrap_or_else(|e| panic!("{e}: {} fds\n{}", proxy.open_fds(), proxy.log_text()));
    wait_for("the fds to be released", Duration::from_secs(5), || {
        proxy.open_fds() <= baseline_fds + 2
    })
    .await;
    let first = &proxy.lines("accept failed")[0];
    eprintln!("first accept failure logged as: {first}");
}

// ---------------------------------------------------------------------------------------------
// 5. Slowloris and half-open handshakes

/// A mesh client's TLS config: `svid` as client certificate, ALPN `svidcar/1`, any server.
fn client_config(svid: &svidcar_control::IssuedSvid) -> rustls::ClientConfig {
    let provider = svidcar_identity::tls::provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(support::AcceptAnyServer::new(provider)))
        .with_client_auth_cert(vec![svid.cert_der.clone()], svid.key_der())
        .unwrap();
    cfg.alpn_protocols = vec![b"svidcar/1".to_vec()];
    cfg
}

/// A real ClientHello offering the mesh ALPN (a rustls client's first flight).
fn client_hello() -> Vec<u8> {
    let pki = Pki::new(TD);
    let mut conn = rustls::ClientConnection::new(
        Arc::new(client_config(&pki.issue(CLIENT_ID))),
        rustls::pki_types::ServerName::try_from("server.test").unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

/// How long until the proxy ends `s` (EOF or reset), bounded by 10 s.
async fn held_for(mut s: TcpStream, since: Instant) -> Duration {
    let mut b = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await {
            Ok(Ok(0) | Err(_)) => return since.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => return Duration::from_secs(10),
        }
    }
}

/// 3 × 40 connections to a STRICT inbound that send nothing, half a ClientHello, or a whole
/// ClientHello and then nothing: each is closed within the configured 1 s (detect and
/// handshake timeouts) plus slack, each is counted as a refusal with its reason, and a real
/// mTLS client gets through meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_half_open_handshakes_are_cut_at_the_timeout_and_counted() {
    const EACH: usize = 40;
    let timeout = Duration::from_secs(1);
    let pki = Pki::new(TD);
    let server = start_server(&pki, echo_app().await, MtlsMode::Strict, |c| {
        c.inbound.detect_timeout = svidcar_identity::Dur(timeout);
        c.limits.handshake_timeout = svidcar_identity::Dur(timeout);
    })
    .await;
    let inbound = server.inbound_addr.unwrap();
    let admin = server.admin_addr.unwrap();
    let client = start_client(&pki, inbound, SERVER_ID, |_| {}).await;
    let route = client.outbound_addrs[0];
    let hello = client_hello();
    let partial = hello[..hello.len() / 2].to_vec();

    let start = Instant::now();
    let mut held = Vec::new();
    for kind in 0..3 {
        for _ in 0..EACH {
            let mut s = TcpStream::connect(inbound).await.unwrap();
            match kind {
                0 => {}
                1 => s.write_all(&partial).await.unwrap(),
                _ => s.write_all(&hello).await.unwrap(),
            }
            held.push((kind, tokio::spawn(held_for(s, Instant::now()))));
        }
    }
    // Meanwhile a real client through the mesh is served at once.
    let t = Instant::now();
    let data = payload(50_000, 5);
    assert_eq!(round_trip(route, &data).await.unwrap(), data);
    let real = t.elapsed();
    assert!(
        real < timeout,
        "the real client took {real:?} while the slow ones were held"
    );

    let mut max = [Duration::ZERO; 3];
    for (kind, h) in held {
        let d = h.await.unwrap();
        max[kind] = max[kind].max(d);
    }
    let names = [
        "nothing",
        "half a ClientHello",
        "a whole ClientHello, then nothing",
    ];
    for (k, name) in names.iter().enumerate() {
        eprintln!(
            "{EACH} connections sending {name}: held at most {:?}",
            max[k]
        );
        assert!(
            max[k] < timeout + Duration::from_millis(900),
            "{name}: held {:?}, longer than the {timeout:?} timeout",
            max[k]
        );
    }
    eprintln!(
        "all {} slow connections closed {:?} after the first was opened; the real client took {real:?}",
        3 * EACH,
        start.elapsed()
    );

    let text = Wait::new("the refusals to be counted", Duration::from_secs(5))
        .until(|| async {
            let t = scrape(admin).await;
            let refused: f64 = samples(
                &t,
                "svidcar_tcp_connections_closed_total",
                &[("direction", "inbound"), ("outcome", "refused")],
            )
            .iter()
            .map(|(_, v)| v)
            .sum();
            (refused >= (3 * EACH) as f64).then_some(t)
        })
        .await
        .unwrap();
    let refused = samples(
        &text,
        "svidcar_tcp_connections_closed_total",
        &[("direction", "inbound"), ("outcome", "refused")],
    );
    let by_reason = |reason: &str| -> f64 {
        refused
            .iter()
            .filter(|(l, _)| label(l, "reason") == reason)
            .map(|(_, v)| v)
            .sum()
    };
    for (l, v) in &refused {
        eprintln!(
            "  svidcar_tcp_connections_closed_total{{reason=\"{}\"}} {v}",
            label(l, "reason")
        );
    }
    assert_eq!(by_reason("no_client_hello"), EACH as f64, "nothing sent");
    assert_eq!(
        by_reason("handshake_timeout"),
        EACH as f64,
        "stalled handshakes"
    );
    let total: f64 = refused.iter().map(|(_, v)| v).sum();
    assert_eq!(
        total,
        (3 * EACH) as f64,
        "every slow connection counted once"
    );
    assert_eq!(
        samples(
            &text,
            "svidcar_tcp_connections_open",
            &[("direction", "inbound")]
        )
        .first()
        .map(|(_, v)| *v),
        Some(0.0),
        "nothing left open"
    );
    client.shutdown().await;
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 6. An IP address in SNI

/// openssl s_client naming an IP address as SNI, 20 times: rustls's per-connection "Illegal
/// SNI extension" WARN does not reach the log; the connections are counted in one summary line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ip_address_in_sni_is_counted_not_logged_per_connection() {
    const N: usize = 20;
    let pki = Pki::new(TD);
    let files = pki.write("server", &pki.issue(SERVER_ID));
    let app = echo_app().await;
    let proxy = server(pki.dir.path(), &files, app).start().await;
    let inbound = proxy.addr("inbound").to_string();
    for _ in 0..N {
        // No client certificate: the handshake fails after the ClientHello was read.
        run_bounded(
            "openssl",
            &[
                "s_client",
                "-connect",
                &inbound,
                "-servername",
                "10.0.0.1",
                "-tls1_3",
            ],
            Duration::from_secs(10),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let per_connection = proxy
        .log_text()
        .lines()
        .filter(|l| l.contains("Illegal SNI"))
        .count();
    eprintln!("{per_connection} 'Illegal SNI' lines for {N} connections");
    assert_eq!(per_connection, 0, "{}", proxy.log_text());
    // One summary line per 10 s at most: the connections may straddle two.
    let counted = |p: &ProxyProcess| -> u64 {
        p.lines("ignored an IP address")
            .iter()
            .filter_map(|l| l["count"].as_u64())
            .sum()
    };
    wait_for("the SNI summary line", Duration::from_secs(25), || {
        counted(&proxy) >= N as u64
    })
    .await;
    eprintln!("summary: {:?}", proxy.lines("ignored an IP address"));
    assert_eq!(counted(&proxy), N as u64);
}
