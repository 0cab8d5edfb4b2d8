//! Drain under load (issue 15): `wrk` drives keep-alive HTTP/1.1 through a pair of `svidcar run`
//! processes (explicit mode, PEM identities) in front of nginx, and one proxy of the pair gets
//! SIGTERM mid-run. What must hold: every request wrk sent got its whole response (no socket
//! read/write errors, no timeouts, no non-2xx), the proxy logs that it drains (how many
//! connections, until when), a new connection to it is refused cleanly (refused, or closed
//! without a byte), it exits 0 within the drain grace, as soon as the last connection ends.
//!
//! Real processes (`svidcar`, `nginx`, `wrk`) are killed when their handles drop; every wait
//! is bounded; everything stays on loopback.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use support::{payload, wait_for, Pki, ProxyBuilder, ProxyProcess, Wait, CLIENT_ID, SERVER_ID, TD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// wrk's connections and threads.
const CONNS: usize = 16;
const THREADS: usize = 2;
/// The size of the body nginx serves: big enough that a cut mid-body is likely to be seen.
const BODY: usize = 64 << 10;

// ---------------------------------------------------------------------------------------------
// Processes

/// `svidcar run` as `name` (log `<name>.log` beside its PEM identity, issued by `pki` for
/// `id`): JSON logs at `info`, no admin port, the drain grace.
fn run_with_pem(pki: &Pki, name: &str, id: &str, grace: Duration) -> ProxyBuilder {
    let files = pki.write(name, &pki.issue(id));
    ProxyProcess::builder(name, pki.dir.path())
        .global(&["--log", "info"])
        .no_admin()
        .svid(&files)
        .args([
            "--drain-grace".to_owned(),
            format!("{}ms", grace.as_millis()),
        ])
}

/// nginx serving `GET /body.bin` (`BODY` bytes) with keep-alive that never ends a connection
/// by itself within a test; one process (`master_process off`), logs in its directory. Killed
/// on drop.
struct Nginx {
    _child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    async fn start(dir: &Path) -> Nginx {
        std::fs::create_dir_all(dir.join("www")).unwrap();
        std::fs::write(dir.join("www/body.bin"), payload(BODY, 42)).unwrap();
        // nginx cannot report a port it chose: take a free one, retried if it was taken since.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let d = dir.display();
            let conf = format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
                 error_log {d}/error.log warn;\nevents {{ worker_connections 1024; }}\n\
                 http {{\n  log_format done '$msec $status $bytes_sent $request_completion';\n\
                 access_log {d}/access.log done buffer=64k flush=200ms;\n\
                 client_body_temp_path {d}/tmp_body; proxy_temp_path {d}/tmp_proxy;\n\
                 fastcgi_temp_path {d}/tmp_fcgi; uwsgi_temp_path {d}/tmp_uwsgi; scgi_temp_path {d}/tmp_scgi;\n\
                 keepalive_requests 10000000; keepalive_timeout 300s;\n\
                 server {{ listen 127.0.0.1:{port}; location / {{ root {d}/www; }} }}\n}}\n"
            );
            std::fs::write(dir.join("nginx.conf"), conf).unwrap();
            let mut child = Command::new("nginx")
                .arg("-p")
                .arg(dir)
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                .arg("-e")
                .arg(dir.join("error.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("nginx runs (Debian package nginx)");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + Duration::from_secs(10);
            let up = loop {
                if TcpStream::connect(addr).await.is_ok() {
                    break true;
                }
                if matches!(child.try_wait(), Ok(Some(_))) || Instant::now() > deadline {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            if up {
                return Nginx {
                    _child: child,
                    addr,
                    dir: dir.to_owned(),
                };
            }
        }
        panic!(
            "nginx did not start:\n{}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
    }

    /// (`$msec`, status, bytes sent, completed) of every request nginx logged.
    fn requests(&self) -> Vec<(f64, u16, u64, bool)> {
        std::fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((
                    f.first()?.parse().ok()?,
                    f.get(1)?.parse().ok()?,
                    f.get(2)?.parse().ok()?,
                    f.get(3) == Some(&"OK"),
                ))
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// wrk

/// What wrk reported.
#[derive(Debug, Default)]
struct WrkReport {
    requests: u64,
    connect: u64,
    read: u64,
    write: u64,
    timeout: u64,
    non_2xx: u64,
    /// The output, for messages.
    text: String,
}

/// Parses wrk's summary: `N requests in …`, the optional `Socket errors: connect A, read B,
/// write C, timeout D` and `Non-2xx or 3xx responses: N` lines.
fn parse_wrk(text: &str) -> WrkReport {
    let mut r = WrkReport {
        text: text.to_owned(),
        ..WrkReport::default()
    };
    let mut saw_requests = false;
    for line in text.lines().map(str::trim) {
        if let Some((n, _)) = line.split_once(" requests in ") {
            r.requests = n.trim().parse().unwrap();
            saw_requests = true;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            for part in rest.split(',') {
                let mut kv = part.split_whitespace();
                let (k, v) = (kv.next().unwrap(), kv.next().unwrap().parse().unwrap());
                match k {
                    "connect" => r.connect = v,
                    "read" => r.read = v,
                    "write" => r.write = v,
                    "timeout" => r.timeout = v,
                    other => panic!("unknown wrk socket error kind {other}: {text}"),
                }
            }
        } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx = n.trim().parse().unwrap();
        }
    }
    assert!(saw_requests, "not wrk's summary:\n{text}");
    r
}

/// Starts `wrk -t2 -c16 -d<secs>s` against `GET http://addr/body.bin`; killed on drop.
fn start_wrk(addr: SocketAddr, secs: u64) -> Child {
    Command::new("wrk")
        .args([
            &format!("-t{THREADS}"),
            &format!("-c{CONNS}"),
            &format!("-d{secs}s"),
            "--timeout",
            "5s",
            &format!("http://{addr}/body.bin"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("wrk runs (Debian package wrk)")
}

async fn wrk_report(wrk: Child, limit: Duration) -> WrkReport {
    let out = tokio::time::timeout(limit, wrk.wait_with_output())
        .await
        .expect("wrk finished")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "wrk failed: {text}");
    parse_wrk(&text)
}

// ---------------------------------------------------------------------------------------------
// Probes

/// What a new connection to a draining listener met.
#[derive(Debug, PartialEq, Eq)]
enum Probe {
    /// connect(2) failed with ECONNREFUSED.
    Refused,
    /// Accepted by the kernel (the backlog) and then closed or reset without a byte.
    ClosedEmpty,
    /// Bytes came back: a partial or complete answer from a listener that should be closed.
    Answered(usize),
    /// Neither closed nor answered within 3 s.
    Hung,
}

async fn probe(addr: SocketAddr) -> Probe {
    let mut s = match TcpStream::connect(addr).await {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Probe::Refused,
        Err(e) => panic!("connect {addr}: {e}"),
        Ok(s) => s,
    };
    let _ = s
        .write_all(b"GET /body.bin HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let mut buf = vec![0u8; 4096];
    let mut got = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) if got == 0 => return Probe::ClosedEmpty,
            Ok(Ok(0) | Err(_)) => return Probe::Answered(got),
            Ok(Ok(n)) => got += n,
            Err(_) if got == 0 => return Probe::Hung,
            Err(_) => return Probe::Answered(got),
        }
    }
}

/// The whole answer to `GET /body.bin` (`connection: close`) through `route`, within 10 s.
async fn get_through(route: SocketAddr) -> Vec<u8> {
    let io = async {
        let mut s = TcpStream::connect(route).await?;
        s.write_all(b"GET /body.bin HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await?;
        let mut got = Vec::new();
        s.read_to_end(&mut got).await?;
        std::io::Result::Ok(got)
    };
    tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .expect("an answer within 10 s")
        .unwrap()
}

/// The status line and headers of the answer to `GET /body.bin` through `route`.
async fn head_through(route: SocketAddr) -> String {
    let got = get_through(route).await;
    let text = String::from_utf8_lossy(&got);
    text.split("\r\n\r\n").next().unwrap_or_default().to_owned()
}

/// `until` as logged when draining, for a SIGTERM at `unix` seconds with `grace`: the strings
/// a correct proxy may log (rounding and a second boundary crossed).
fn acceptable_until(unix: i64, grace: Duration) -> Vec<String> {
    let g = i64::try_from(grace.as_secs()).unwrap();
    (g - 1..=g + 2)
        .map(|d| svidcar_identity::format_unix(unix + d))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The pair

/// Fields drop in order: the processes first, the directory they write in last.
struct Setup {
    nginx: Nginx,
    server: ProxyProcess,
    client: ProxyProcess,
    inbound: SocketAddr,
    route: SocketAddr,
    _pki: Pki,
}

impl Setup {
    async fn start(grace: Duration) -> Setup {
        let pki = Pki::new(TD);
        let nginx = Nginx::start(&pki.dir.path().join("nginx")).await;
        let server = run_with_pem(&pki, "server", SERVER_ID, grace)
            .explicit_inbound(nginx.addr)
            .start()
            .await;
        let inbound = server.addr("inbound");
        let client = run_with_pem(&pki, "client", CLIENT_ID, grace)
            .explicit_routes(&[inbound], SERVER_ID)
            .start()
            .await;
        let route = client.addr("outbound");
        // One request end to end before the load.
        let got = get_through(route).await;
        assert!(
            got.starts_with(b"HTTP/1.1 200") && got.ends_with(&payload(BODY, 42)),
            "{}",
            String::from_utf8_lossy(&got[..got.len().min(300)])
        );
        Setup {
            nginx,
            server,
            client,
            inbound,
            route,
            _pki: pki,
        }
    }
}

/// Which proxy of the pair gets SIGTERM.
#[derive(Debug, Clone, Copy)]
enum Side {
    Client,
    Server,
}

/// What one drain under load showed.
struct Drained {
    wrk: WrkReport,
    /// The drain line the proxy logged.
    line: serde_json::Value,
    /// SIGTERM → exit.
    exit_after: Duration,
    /// wrk's end → the proxy's exit (negative: before wrk ended).
    exit_after_wrk: f64,
    probe: Probe,
    /// Requests nginx served after the SIGTERM, and of them not completed.
    served_after: usize,
    incomplete: usize,
    /// The terminated proxy's log.
    log: String,
    /// Server side: the head of the client proxy's answer once the server proxy is gone.
    explained: Option<String>,
}

/// wrk for `run_secs`; SIGTERM to `side` after `term_after`; everything measured.
async fn drain_under_load(
    side: Side,
    grace: Duration,
    run_secs: u64,
    term_after: Duration,
) -> Drained {
    let mut setup = Setup::start(grace).await;
    let wrk = start_wrk(setup.route, run_secs);
    tokio::time::sleep(term_after).await;
    let (proxy, addr) = match side {
        Side::Client => (&mut setup.client, setup.route),
        Side::Server => (&mut setup.server, setup.inbound),
    };
    let termed = Instant::now();
    let termed_unix = svidcar_identity::unix_now();
    let termed_wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    let line = wait_for("the drain to be logged", Duration::from_secs(5), || {
        proxy.lines("draining").into_iter().next()
    })
    .await;
    // The accept loops stop right after the line: a new connection meets a closed listener.
    let new_conn = Wait::new("the listener to close", Duration::from_secs(3))
        .until(|| async {
            match probe(addr).await {
                Probe::Answered(n) => panic!("a new connection got {n} bytes while draining"),
                Probe::Hung => None,
                p => Some(p),
            }
        })
        .await
        .unwrap();
    let exit = async {
        let status = proxy.exited(grace + Duration::from_secs(5)).await;
        (status, Instant::now())
    };
    let wrk_done = async {
        let r = wrk_report(wrk, Duration::from_secs(run_secs + 30)).await;
        (r, Instant::now())
    };
    let ((status, exit_at), (wrk, wrk_at)) = tokio::join!(exit, wrk_done);
    let log = proxy.log_text();
    assert!(status.success(), "exit {status}\n{log}");
    let explained = match side {
        Side::Server => Some(head_through(setup.route).await),
        Side::Client => None,
    };
    let exit_after = exit_at - termed;
    let exit_after_wrk = if exit_at >= wrk_at {
        (exit_at - wrk_at).as_secs_f64()
    } else {
        -(wrk_at - exit_at).as_secs_f64()
    };
    tokio::time::sleep(Duration::from_millis(500)).await; // nginx's log buffer is flushed
    let after: Vec<_> = setup
        .nginx
        .requests()
        .into_iter()
        .filter(|r| r.0 >= termed_wall)
        .collect();
    let incomplete = after.iter().filter(|r| !r.3).count();
    let d = Drained {
        wrk,
        line,
        exit_after,
        exit_after_wrk,
        probe: new_conn,
        served_after: after.len(),
        incomplete,
        log,
        explained,
    };
    eprintln!(
        "{side:?} proxy SIGTERM at {term_after:?} of a {run_secs} s wrk run (grace {grace:?}):\n  \
         drain line: open={} until={} (SIGTERM at {})\n  new connection while draining: {:?}\n  \
         exit 0 after {:.2} s ({:+.2} s from wrk's end)\n  nginx served {} requests after \
         SIGTERM, {} not completed\n  wrk: {} requests; socket errors connect {}, read {}, \
         write {}, timeout {}; non-2xx {}",
        d.line["open"],
        d.line["until"],
        svidcar_identity::format_unix(termed_unix),
        d.probe,
        d.exit_after.as_secs_f64(),
        d.exit_after_wrk,
        d.served_after,
        d.incomplete,
        d.wrk.requests,
        d.wrk.connect,
        d.wrk.read,
        d.wrk.write,
        d.wrk.timeout,
        d.wrk.non_2xx
    );
    for l in d.wrk.text.lines().filter(|l| {
        let l = l.trim_start();
        l.contains("requests in") || l.starts_with("Socket errors") || l.starts_with("Non-2xx")
    }) {
        eprintln!("  wrk> {}", l.trim());
    }
    let until = d.line["until"].as_str().unwrap_or_default().to_owned();
    assert!(
        acceptable_until(termed_unix, grace).contains(&until),
        "until {until:?} is not SIGTERM + {grace:?}\n{}",
        d.log
    );
    d
}

/// What must hold whatever the drain does with keep-alive connections (serve them until they
/// end, or end each at a response boundary): new connections are refused, the exit (0) comes
/// within the grace (plus slack), no request timed out, nginx completed every request it got;
/// a drain that took the whole grace says so, with the connections it then closed. wrk's write
/// errors, when any, are its reconnects to the closed listener (wrk 4.1 counts a refused
/// non-blocking connect as a write error; `probe` shows the refusal).
fn assert_drained(d: &Drained, grace: Duration) {
    assert_eq!(d.probe, Probe::Refused, "{}", d.log);
    assert!(
        d.exit_after < grace + Duration::from_secs(2),
        "exit {:?} after SIGTERM, grace {grace:?}",
        d.exit_after
    );
    assert_eq!(d.wrk.timeout, 0, "{}", d.wrk.text);
    assert_eq!(d.incomplete, 0, "nginx saw requests not completed");
    let over: Vec<_> = d
        .log
        .lines()
        .filter(|l| l.contains("drain grace period over; closing connections"))
        .collect();
    if d.exit_after + Duration::from_millis(100) >= grace {
        assert_eq!(over.len(), 1, "{}", d.log);
        eprintln!("  logged: {}", over[0]);
    } else {
        assert!(over.is_empty(), "{}", d.log);
    }
    assert!(d.wrk.requests > 0, "{}", d.wrk.text);
}

/// Client side: no response was cut (no read error) and none was an error status.
fn assert_nothing_cut(d: &Drained) {
    assert_eq!(
        (d.wrk.read, d.wrk.non_2xx),
        (0, 0),
        "requests lost while draining:\n{}\n{}",
        d.wrk.text,
        d.log
    );
}

/// Server side: no response was cut, and any non-2xx is the client proxy's `502` explaining
/// that the server proxy refuses connections (it is draining or gone), not a lost request.
fn assert_server_side_explained(d: &Drained) {
    assert_eq!(d.wrk.read, 0, "{}", d.wrk.text);
    if d.wrk.non_2xx > 0 {
        let why = d.explained.as_deref().unwrap_or_default();
        assert!(
            why.starts_with("HTTP/1.1 502") && why.contains("svidcar-proxy-error: connect failed"),
            "{} non-2xx; the client proxy's answer once the server proxy is gone: {why}",
            d.wrk.non_2xx
        );
        eprintln!(
            "  non-2xx explained: {}",
            why.lines()
                .find(|l| l.starts_with("svidcar-proxy-error"))
                .unwrap_or_default()
        );
    }
}

/// SIGTERM to the client-side proxy 2 s into a 6 s run with a 15 s grace: wrk's 16 keep-alive
/// connections are counted in the drain line, nothing in flight is lost, new connections are
/// refused, and the proxy exits 0 once its connections are done (at the latest when wrk ends
/// them), long before the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_proxy_drains_keep_alive_load_without_a_cut() {
    let grace = Duration::from_secs(15);
    let d = drain_under_load(Side::Client, grace, 6, Duration::from_secs(2)).await;
    assert_drained(&d, grace);
    assert_nothing_cut(&d);
    assert_eq!(d.line["open"], CONNS, "the drain counts wrk's connections");
    assert!(
        d.exit_after_wrk < 2.0,
        "exited {:.2} s after wrk's connections ended: the drain waited for nothing",
        d.exit_after_wrk
    );
}

/// The same with SIGTERM to the server-side proxy: the client proxy's mTLS connections are
/// counted, nothing in flight is lost, and the server proxy exits once they are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_proxy_drains_keep_alive_load_without_a_cut() {
    let grace = Duration::from_secs(15);
    let d = drain_under_load(Side::Server, grace, 6, Duration::from_secs(2)).await;
    assert_drained(&d, grace);
    assert_server_side_explained(&d);
    // One mesh connection per wrk connection, or fewer when the client proxy pools them.
    let open = d.line["open"].as_u64().unwrap_or(0);
    assert!(
        (1..=CONNS as u64).contains(&open),
        "the drain counts the mesh connections: {}",
        d.line
    );
    assert!(d.exit_after_wrk < 2.0, "{:.2}", d.exit_after_wrk);
}

/// A grace (2 s) that ends before wrk does (6 s, SIGTERM at 1.5 s).
const SHORT_GRACE: Duration = Duration::from_secs(2);

/// SIGTERM to the client-side proxy with a grace shorter than the load. Today the proxy keeps
/// serving wrk's keep-alive connections until the grace ends and then closes them, losing at
/// most the one request in flight on each (wrk: `read` errors, at most one per connection);
/// see `..._at_a_response_boundary` below for what it should do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_proxy_whose_grace_ends_before_the_load() {
    let d = drain_under_load(Side::Client, SHORT_GRACE, 6, Duration::from_millis(1500)).await;
    assert_drained(&d, SHORT_GRACE);
    assert!(d.wrk.read <= CONNS as u64, "{}", d.wrk.text);
    assert_eq!(d.wrk.non_2xx, 0, "{}", d.wrk.text);
}

/// The same with the server-side proxy: once it no longer serves, the client proxy answers every
/// request `502` and says why (wrk's non-2xx responses); a request in flight when the server
/// proxy closed its connection gets that answer too rather than a broken connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_proxy_whose_grace_ends_before_the_load() {
    let d = drain_under_load(Side::Server, SHORT_GRACE, 6, Duration::from_millis(1500)).await;
    assert_drained(&d, SHORT_GRACE);
    assert_server_side_explained(&d);
}

/// What a drain should do to keep-alive HTTP: end each connection at a response boundary
/// (`connection: close` on HTTP/1, `GOAWAY` on HTTP/2) as soon as it starts, so no request is
/// in flight when the grace ends and clients reconnect elsewhere at once. Today the proxy keeps
/// serving them until the grace is over and then cuts them: 16 read errors in wrk here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_proxy_drain_ends_keep_alive_at_a_response_boundary() {
    let d = drain_under_load(Side::Client, SHORT_GRACE, 6, Duration::from_millis(1500)).await;
    assert_drained(&d, SHORT_GRACE);
    assert_nothing_cut(&d);
    assert!(
        d.exit_after < SHORT_GRACE,
        "the drain waited out the grace ({:?}) instead of closing idle keep-alive connections",
        d.exit_after
    );
}
