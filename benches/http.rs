//! HTTP load benchmark: keep-alive HTTP/1.1 `GET /bench/hello` from `wrk` on loopback, side by
//! side in one run over these paths to a small hyper app in this process:
//!
//! - `direct`: wrk → app;
//! - `svidcar-tcp`: wrk → client proxy route → mTLS → server proxy, both with
//!   `http.enabled = false` (opaque TCP; a connection-level ALLOW policy on the caller's SPIFFE
//!   ID) → app;
//! - `svidcar-http`: the same with HTTP awareness on (the default) on both sides and an ALLOW
//!   policy on `GET /bench/*`, so every request is parsed by both proxies, authorized, given the
//!   caller's identity header and counted;
//! - `haproxy`, when installed: a plain HTTP reverse proxy (one hop, no TLS) as a reference.
//!
//! **Requires `wrk`** (`apt-get install -y wrk`); without it the bench says so and fails.
//! haproxy is optional (`apt-get install -y haproxy`); the bench never installs anything.
//!
//! For each path: requests/s, latency p50/p99 (wrk's `--latency` distribution), their ratios to
//! direct, and CPU time per request: this process's (getrusage, app and proxies) plus haproxy's
//! own when it is the path, over the timed run, divided by the requests wrk completed. The
//! proxy's cost per request is that minus direct's (which is the app's and the runtime's alone).
//!
//! Every response is checked: wrk must report no non-2xx/3xx responses and no socket errors;
//! the app answers 500 to a request that is not `GET /bench/...` or whose `x-svidcar-client-id`
//! header is not what the path should deliver (the client's SPIFFE ID through `svidcar-http`,
//! absent elsewhere), and must have served at least as many requests as wrk completed. Before
//! the run, `svidcar-http` must refuse `GET /other` with 403; after it, the server proxy's
//! metrics must show an ALLOW decision of the bench policy for every request.
//!
//! Settings from the environment: `SVIDCAR_BENCH_HTTP_SECS` (timed seconds per path, default
//! 10), `SVIDCAR_BENCH_HTTP_WARMUP_SECS` (untimed, per path, default 2),
//! `SVIDCAR_BENCH_HTTP_CONNS` (wrk connections, default 32), `SVIDCAR_BENCH_HTTP_THREADS` (wrk
//! threads, default 2) and `SVIDCAR_BENCH_HTTP_ROUNDS` (paths take turns; the table shows
//! medians, default 1). For example `SVIDCAR_BENCH_HTTP_SECS=3 cargo bench --bench http`.
//!
//! wrk, the app and both proxies share the machine's CPUs, so on a small machine the figures
//! are CPU-bound and the ratios and CPU per request matter more than the absolute numbers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use nix::sys::resource::{getrusage, UsageWho};
use svidcar_identity::CredentialStore;
use svidcar_proxy::config::Dur;
use svidcar_testkit::bench::median;
use svidcar_testkit::{try_wait_for, try_wait_until, Pair, PairBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::time::timeout;

const CLIENT_ID: &str = "spiffe://svidcar.bench/ns/bench/sa/client";
const SERVER_ID: &str = "spiffe://svidcar.bench/ns/bench/sa/server";
/// The header through which the server proxy tells the app who called (the config default).
const ID_HEADER: &str = "x-svidcar-client-id";
/// What wrk asks for; the HTTP-mode policy allows `GET /bench/*`.
const PATH: &str = "/bench/hello";
/// The app's answer to every good request.
const BODY: &[u8] = b"hello from the bench app\n";
/// The name of the HTTP-mode ALLOW policy, as its decisions are labelled in the metrics.
const HTTP_POLICY: &str = "bench-readers";

/// Settings of one run.
#[derive(Debug, Clone, Copy)]
struct Settings {
    secs: u64,
    warmup_secs: u64,
    conns: u64,
    threads: u64,
    rounds: usize,
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        fn var(name: &str, default: u64, min: u64) -> anyhow::Result<u64> {
            match std::env::var(name) {
                Ok(v) => v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n >= min)
                    .with_context(|| format!("{name}={v:?}: expected a whole number ≥ {min}")),
                Err(_) => Ok(default),
            }
        }
        let s = Settings {
            secs: var("SVIDCAR_BENCH_HTTP_SECS", 10, 1)?,
            warmup_secs: var("SVIDCAR_BENCH_HTTP_WARMUP_SECS", 2, 0)?,
            conns: var("SVIDCAR_BENCH_HTTP_CONNS", 32, 1)?,
            threads: var("SVIDCAR_BENCH_HTTP_THREADS", 2, 1)?,
            rounds: usize::try_from(var("SVIDCAR_BENCH_HTTP_ROUNDS", 1, 1)?)?,
        };
        // wrk gives each thread at least one connection.
        ensure!(
            s.threads <= s.conns,
            "SVIDCAR_BENCH_HTTP_THREADS ({}) must not exceed SVIDCAR_BENCH_HTTP_CONNS ({})",
            s.threads,
            s.conns
        );
        Ok(s)
    }
}

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// An app listener and what it checks.
#[derive(Debug)]
struct App {
    addr: SocketAddr,
    /// Requests answered 200.
    served: Arc<AtomicU64>,
}

/// The hyper app: `GET /bench/...` with the expected identity header (`None`: no such header)
/// gets 200 and [`BODY`]; anything else 500, which wrk counts and the bench fails on.
async fn app(expected_id: Option<&'static str>) -> anyhow::Result<App> {
    let l = TcpListener::bind(localhost()).await?;
    let addr = l.local_addr()?;
    let served = Arc::new(AtomicU64::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = s.set_nodelay(true);
            let count = count.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let ok = good_request(&req, expected_id);
                    if ok {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    async move { Ok::<_, Infallible>(answer(ok)) }
                });
                // Clients that go away mid-request are wrk stopping; nothing to report.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), service)
                    .await;
            });
        }
    });
    Ok(App { addr, served })
}

fn good_request(req: &Request<Incoming>, expected_id: Option<&str>) -> bool {
    let id = req
        .headers()
        .get_all(ID_HEADER)
        .iter()
        .map(|v| v.to_str().unwrap_or("<not text>"))
        .collect::<Vec<_>>();
    req.method() == hyper::Method::GET
        && req.uri().path().starts_with("/bench/")
        && id == expected_id.into_iter().collect::<Vec<_>>()
}

fn answer(ok: bool) -> Response<Full<Bytes>> {
    let (status, body) = if ok {
        (StatusCode::OK, Bytes::from_static(BODY))
    } else {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Bytes::from_static(b"unexpected request\n"),
        )
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp
}

/// A pair in front of `app` whose server takes `policy` from a fresh directory (kept in the
/// returned guard) and has HTTP awareness `http` on or off; returns once the policy is loaded.
async fn pair(
    app: SocketAddr,
    http: bool,
    policy: &str,
) -> anyhow::Result<(Pair, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("policy.yaml"), policy)?;
    let policy_dir = dir.path().to_owned();
    let pair = PairBuilder::new(app)
        .trust_domain("svidcar.bench")
        .client_id(CLIENT_ID)
        .server_id(SERVER_ID)
        .admin(false)
        // TCP mode: neither proxy looks at HTTP (the client's outbound side is HTTP-aware too).
        .client_config(move |c| c.http.enabled = http)
        .server_config(move |c| {
            c.http.enabled = http;
            c.policy.dir = Some(policy_dir);
            c.policy.reload_interval = Dur(Duration::from_millis(100));
        })
        .start()
        .await?;
    try_wait_for(
        "the server proxy to load its policy",
        Duration::from_secs(10),
        || pair.server.authz().version().is_some(),
    )
    .await?;
    Ok((pair, dir))
}

/// Connection-level: the client's SPIFFE ID may connect (what TCP mode can enforce).
fn tcp_policy() -> String {
    format!(
        "kind: AuthorizationPolicy\nname: bench-callers\nselector: [{SERVER_ID}]\naction: ALLOW\nrules:\n  - from: [{{ principals: [{CLIENT_ID}] }}]\n"
    )
}

/// Per request: the client may `GET /bench/*`, nothing else.
fn http_policy() -> String {
    format!(
        "kind: AuthorizationPolicy\nname: {HTTP_POLICY}\nselector: [{SERVER_ID}]\naction: ALLOW\nrules:\n  - from: [{{ principals: [{CLIENT_ID}] }}]\n    to: [{{ methods: [GET], paths: [/bench/*] }}]\n"
    )
}

/// One `GET path` on a fresh connection; returns the status line.
async fn probe(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let go = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).await?;
        let reply = String::from_utf8_lossy(&reply);
        anyhow::Ok(reply.lines().next().unwrap_or("").to_owned())
    };
    timeout(Duration::from_secs(10), go)
        .await
        .with_context(|| format!("GET {path} via {addr}: no answer within 10 s"))?
}

/// A haproxy process in front of `app`, killed on drop.
#[derive(Debug)]
struct Haproxy {
    child: Child,
    pid: i32,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Whether `program` can be started at all (`--version`/`-v` may still exit non-zero).
async fn installed(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok()
}

async fn haproxy(app: SocketAddr) -> anyhow::Result<Haproxy> {
    // Ask the OS for a free port, then hand it to haproxy (a small race; fine for a benchmark).
    let port = std::net::TcpListener::bind(localhost())?
        .local_addr()?
        .port();
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("haproxy.cfg");
    // Keep-alive on both sides, server connections reused across client connections.
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 4096\ndefaults\n  mode http\n  option http-keep-alive\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\nfrontend bench\n  bind 127.0.0.1:{port}\n  default_backend app\nbackend app\n  http-reuse always\n  server app {app}\n"
        ),
    )?;
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting haproxy")?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .context("haproxy exited at once")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    try_wait_until(
        &format!("haproxy to listen on {addr}"),
        Duration::from_secs(10),
        || async move { TcpStream::connect(addr).await.is_ok() },
    )
    .await?;
    Ok(Haproxy {
        child,
        pid,
        addr,
        _dir: dir,
    })
}

/// CPU time (user + system) of this process.
fn self_cpu() -> anyhow::Result<Duration> {
    let u = getrusage(UsageWho::RUSAGE_SELF).context("getrusage")?;
    let us = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Ok(Duration::from_secs_f64(
        us(u.user_time()) + us(u.system_time()),
    ))
}

/// CPU time (user + system) of process `pid`, from `/proc/<pid>/stat`.
fn process_cpu(pid: i32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; fields after its closing ')' are plain.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("/proc/<pid>/stat without ')'")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based), so 11 and 12 after the ')'.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .context("/proc/<pid>/stat: no utime/stime")
    };
    // Linux reports these in USER_HZ, 100 per second on every architecture we run on.
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

/// What one wrk run reported.
#[derive(Debug, Clone, Copy, PartialEq)]
struct WrkReport {
    requests: u64,
    req_s: f64,
    p50_us: f64,
    p99_us: f64,
    bad_status: u64,
    socket_errors: u64,
}

/// A wrk duration such as `812.00us`, `1.23ms` or `2.00s`, in µs.
fn wrk_time_us(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => return None,
    };
    Some(n * scale)
}

/// Parses wrk's `--latency` output.
fn parse_wrk(out: &str) -> anyhow::Result<WrkReport> {
    let (mut requests, mut req_s, mut p50, mut p99) = (None, None, None, None);
    let (mut bad_status, mut socket_errors) = (0, 0);
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", t] => p50 = wrk_time_us(t),
            ["99%", t] => p99 = wrk_time_us(t),
            [n, "requests", "in", ..] => requests = n.parse().ok(),
            ["Requests/sec:", n] => req_s = n.parse().ok(),
            ["Non-2xx", "or", "3xx", "responses:", n] => {
                bad_status = n.parse().context("wrk's non-2xx/3xx count")?;
            }
            ["Socket", "errors:", rest @ ..] => {
                // "connect 0, read 0, write 0, timeout 0"
                socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    let missing = |what: &str| format!("wrk's output has no {what}:\n{out}");
    Ok(WrkReport {
        requests: requests.with_context(|| missing("request count"))?,
        req_s: req_s.with_context(|| missing("Requests/sec"))?,
        p50_us: p50.with_context(|| missing("50% latency"))?,
        p99_us: p99.with_context(|| missing("99% latency"))?,
        bad_status,
        socket_errors,
    })
}

/// Runs wrk against `addr` for `secs`.
async fn wrk(addr: SocketAddr, secs: u64, s: Settings) -> anyhow::Result<WrkReport> {
    let out = Command::new("wrk")
        .arg(format!("-t{}", s.threads))
        .arg(format!("-c{}", s.conns))
        .arg(format!("-d{secs}s"))
        .arg("--latency")
        .arg(format!("http://{addr}{PATH}"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = timeout(Duration::from_secs(secs + 60), out)
        .await
        .context("wrk did not finish")?
        .context("running wrk")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "wrk failed ({}): {}{}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_wrk(&stdout)
}

/// Figures of one path in one round.
#[derive(Debug, Clone, Copy)]
struct Figures {
    req_s: f64,
    p50_us: f64,
    p99_us: f64,
    /// CPU µs per request: this process, plus the external proxy's when there is one.
    cpu_us: f64,
}

/// One benchmarked path.
#[derive(Debug)]
struct BenchPath {
    name: &'static str,
    addr: SocketAddr,
    app: Arc<AtomicU64>,
    /// An external proxy process whose CPU time counts too.
    external_pid: Option<i32>,
}

async fn measure(p: &BenchPath, s: Settings) -> anyhow::Result<(Figures, u64)> {
    let served_before = p.app.load(Ordering::Relaxed);
    let external = || p.external_pid.map_or(Ok(Duration::ZERO), process_cpu);
    let (cpu0, ext0) = (self_cpu()?, external()?);
    let r = wrk(p.addr, s.secs, s).await?;
    let (cpu1, ext1) = (self_cpu()?, external()?);
    let served = p.app.load(Ordering::Relaxed) - served_before;
    ensure!(
        r.bad_status == 0,
        "{}: {} of {} responses were not 2xx/3xx",
        p.name,
        r.bad_status,
        r.requests
    );
    ensure!(
        r.socket_errors == 0,
        "{}: wrk reported {} socket errors",
        p.name,
        r.socket_errors
    );
    ensure!(r.requests > 0, "{}: wrk completed no request", p.name);
    ensure!(
        served >= r.requests,
        "{}: wrk counted {} good responses but the app served {served}",
        p.name,
        r.requests
    );
    let cpu = (cpu1 - cpu0) + (ext1 - ext0);
    Ok((
        Figures {
            req_s: r.req_s,
            p50_us: r.p50_us,
            p99_us: r.p99_us,
            cpu_us: cpu.as_secs_f64() * 1e6 / r.requests as f64,
        },
        r.requests,
    ))
}

/// The per-field median of several rounds.
fn medians(rounds: &[Figures]) -> Figures {
    let m = |f: fn(&Figures) -> f64| median(rounds.iter().map(f));
    Figures {
        req_s: m(|f| f.req_s),
        p50_us: m(|f| f.p50_us),
        p99_us: m(|f| f.p99_us),
        cpu_us: m(|f| f.cpu_us),
    }
}

/// ALLOW decisions of the HTTP-mode policy counted by `pair`'s server proxy.
fn http_policy_allows(pair: &Pair) -> u64 {
    pair.server
        .metrics()
        .render(&CredentialStore::new())
        .lines()
        .filter(|l| {
            l.starts_with("svidcar_authz_decisions_total{")
                && l.contains("action=\"ALLOW\"")
                && l.contains(&format!("policy=\"{HTTP_POLICY}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn print_table(s: Settings, rows: &[(&str, Figures)]) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "svidcar HTTP/1.1 keep-alive ({cpus} CPUs; wrk -t{} -c{} --latency, {} s per path, median of {} round(s); GET {PATH}, {} B body)",
        s.threads,
        s.conns,
        s.secs,
        s.rounds,
        BODY.len()
    );
    println!(
        "{:<13} {:>9} {:>8} {:>9} {:>9} {:>8} {:>8} {:>11} {:>13}",
        "path",
        "req/s",
        "×direct",
        "p50 µs",
        "p99 µs",
        "p50 ×",
        "p99 ×",
        "CPU µs/req",
        "proxy µs/req"
    );
    let Some((_, direct)) = rows.first() else {
        return;
    };
    for (i, (name, f)) in rows.iter().enumerate() {
        let proxy = if i == 0 {
            "-".to_owned()
        } else {
            format!("{:.1}", f.cpu_us - direct.cpu_us)
        };
        println!(
            "{:<13} {:>9.0} {:>8.3} {:>9.0} {:>9.0} {:>8.2} {:>8.2} {:>11.1} {:>13}",
            name,
            f.req_s,
            f.req_s / direct.req_s,
            f.p50_us,
            f.p99_us,
            f.p50_us / direct.p50_us,
            f.p99_us / direct.p99_us,
            f.cpu_us,
            proxy
        );
    }
    println!();
    println!("CPU µs/req: this process (app, runtime and svidcar proxies) plus haproxy's own, per request wrk completed; proxy µs/req: that minus direct's.");
}

async fn run() -> anyhow::Result<()> {
    let s = Settings::from_env()?;
    if !installed("wrk", "--version").await {
        bail!(
            "wrk is not installed; it generates the load of this bench. Install it (Debian/Ubuntu: `apt-get install -y wrk`) and run again."
        );
    }
    let plain_app = app(None).await?;
    let id_app = app(Some(CLIENT_ID)).await?;
    let (tcp_pair, _tcp_policy) = pair(plain_app.addr, false, &tcp_policy()).await?;
    let (http_pair, _http_policy) = pair(id_app.addr, true, &http_policy()).await?;

    let reference = if installed("haproxy", "-v").await {
        Some(haproxy(plain_app.addr).await?)
    } else {
        eprintln!(
            "note: haproxy is not installed (`apt-get install -y haproxy`); skipping the reference proxy"
        );
        None
    };

    let mut paths = vec![
        BenchPath {
            name: "direct",
            addr: plain_app.addr,
            app: plain_app.served.clone(),
            external_pid: None,
        },
        BenchPath {
            name: "svidcar-tcp",
            addr: tcp_pair.route,
            app: plain_app.served.clone(),
            external_pid: None,
        },
        BenchPath {
            name: "svidcar-http",
            addr: http_pair.route,
            app: id_app.served.clone(),
            external_pid: None,
        },
    ];
    if let Some(h) = &reference {
        paths.push(BenchPath {
            name: "haproxy",
            addr: h.addr,
            app: plain_app.served.clone(),
            external_pid: Some(h.pid),
        });
    }

    // Every path answers a good request; HTTP mode refuses one its policy does not allow.
    for p in &paths {
        let status = probe(p.addr, PATH).await?;
        ensure!(
            status.starts_with("HTTP/1.1 200"),
            "{}: GET {PATH} answered {status:?}",
            p.name
        );
    }
    let refused = probe(http_pair.route, "/other").await?;
    ensure!(
        refused.starts_with("HTTP/1.1 403"),
        "svidcar-http: GET /other (not allowed by the policy) answered {refused:?}, expected 403"
    );

    if s.warmup_secs > 0 {
        for p in &paths {
            wrk(p.addr, s.warmup_secs, s)
                .await
                .with_context(|| format!("{}: warm-up", p.name))?;
        }
    }

    // Paths take turns, so a noisy moment on the machine hits all of them alike.
    let allows_before = http_policy_allows(&http_pair);
    let mut http_requests = 0;
    let mut figures = vec![Vec::new(); paths.len()];
    for round in 1..=s.rounds {
        for (p, figs) in paths.iter().zip(&mut figures) {
            let (f, requests) = measure(p, s).await?;
            if p.name == "svidcar-http" {
                http_requests += requests;
            }
            eprintln!(
                "round {round} {:<13} {:>8.0} req/s  p50 {:>6.0} µs  p99 {:>6.0} µs  {:>6.1} CPU µs/req",
                p.name, f.req_s, f.p50_us, f.p99_us, f.cpu_us
            );
            figs.push(f);
        }
    }
    let allows = http_policy_allows(&http_pair) - allows_before;
    ensure!(
        allows >= http_requests,
        "svidcar-http: wrk completed {http_requests} requests but the server proxy counted {allows} ALLOW decisions of {HTTP_POLICY}"
    );

    let rows: Vec<(&str, Figures)> = paths
        .iter()
        .zip(&figures)
        .map(|(p, figs)| (p.name, medians(figs)))
        .collect();
    print_table(s, &rows);

    if let Some(mut h) = reference {
        let _ = h.child.kill().await;
    }
    tcp_pair.shutdown().await;
    http_pair.shutdown().await;
    Ok(())
}

fn main() -> ExitCode {
    svidcar_testkit::bench::main("http", run())
}
