//! Load benchmark: bulk throughput, 64-byte request/response round trips and connection setup,
//! measured directly on loopback, through a svidcar pair (explicit outbound route → mTLS → STRICT
//! explicit inbound, both proxies in this process, built by `svidcar-testkit`) and, when `socat` is installed, through a plain
//! socat TCP relay (no TLS) as a reference proxy. Every byte moved is checked (the sink compares
//! the stream against a known pattern and acknowledges the count; echoes are compared); any
//! mismatch exits non-zero.
//!
//! Sizes come from the environment so CI can run it small:
//! `SVIDCAR_BENCH_MB` (bulk MiB per path, default 512), `SVIDCAR_BENCH_RTT` (round trips, default
//! 20000), `SVIDCAR_BENCH_CONNS` (new connections, one after another, default 2000) and
//! `SVIDCAR_BENCH_ROUNDS` (rounds; paths take turns and the table shows medians, default 3). For
//! example `SVIDCAR_BENCH_MB=8 SVIDCAR_BENCH_RTT=500 SVIDCAR_BENCH_CONNS=50 SVIDCAR_BENCH_ROUNDS=1
//! cargo bench --bench throughput`.
//!
//! Everything (client, app, both proxies) shares one multi-thread tokio runtime, so on a small
//! machine the figures are CPU-bound and the ratios matter more than the absolute numbers. The
//! direct round-trip figure is bimodal: about 20 µs when the client and echo tasks share a worker
//! thread, about 120 µs when every message needs a cross-thread wake-up; proxied paths always
//! cross threads (or processes, for socat).

use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context};
use svidcar_testkit::bench::median;
use svidcar_testkit::{try_wait_until, Pair, PairBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};

const CLIENT_ID: &str = "spiffe://svidcar.bench/ns/bench/sa/client";
const SERVER_ID: &str = "spiffe://svidcar.bench/ns/bench/sa/server";
/// The bulk stream repeats a pseudo-random block of this (prime) length, so a lost, repeated or
/// reordered chunk misaligns everything after it and the sink notices.
const PERIOD: usize = 65_521;
/// Bytes per bulk write (a whole number of periods, about 1 MiB).
const SEND_CHUNK: usize = PERIOD * 16;
/// Size of a ping-pong message.
const MSG: usize = 64;
/// Upper bound for any one measurement.
const STEP_LIMIT: Duration = Duration::from_secs(600);

/// Sizes of one run.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    bulk_bytes: u64,
    round_trips: usize,
    conns: usize,
    /// Each path is measured this many times, paths interleaved; the table shows medians.
    rounds: usize,
}

impl Sizes {
    fn from_env() -> anyhow::Result<Self> {
        fn var(name: &str, default: u64) -> anyhow::Result<u64> {
            match std::env::var(name) {
                Ok(v) => v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| format!("{name}={v:?}: expected a positive whole number")),
                Err(_) => Ok(default),
            }
        }
        Ok(Sizes {
            bulk_bytes: var("SVIDCAR_BENCH_MB", 512)? << 20,
            round_trips: usize::try_from(var("SVIDCAR_BENCH_RTT", 20_000)?)?,
            conns: usize::try_from(var("SVIDCAR_BENCH_CONNS", 2_000)?)?,
            rounds: usize::try_from(var("SVIDCAR_BENCH_ROUNDS", 3)?)?,
        })
    }

    /// A short untimed run first, so caches, allocators and TLS session state are warm.
    fn warmup(self) -> Self {
        Sizes {
            bulk_bytes: self.bulk_bytes.min(32 << 20),
            round_trips: self.round_trips.min(1_000),
            conns: self.conns.min(100),
            rounds: 1,
        }
    }
}

/// `PERIOD` pseudo-random bytes repeated to fill `SEND_CHUNK + PERIOD` bytes, so any window of up
/// to `SEND_CHUNK` bytes at any stream position is one slice.
#[derive(Debug)]
struct Pattern(Vec<u8>);

impl Pattern {
    fn new() -> Self {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let block: Vec<u8> = (0..PERIOD)
            .map(|_| {
                // xorshift64
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        Pattern(
            block
                .iter()
                .copied()
                .cycle()
                .take(SEND_CHUNK + PERIOD)
                .collect(),
        )
    }

    /// The `len` bytes expected at stream position `pos` (`len <= SEND_CHUNK`).
    fn at(&self, pos: u64, len: usize) -> &[u8] {
        let off = (pos % PERIOD as u64) as usize;
        &self.0[off..off + len]
    }
}

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// The app behind every path. The first byte picks the behaviour: `S` is a sink that checks the
/// stream against the pattern, and at end-of-stream answers the byte count (8 bytes, big endian)
/// and 1 if every byte matched; `E` echoes.
async fn app_server(pattern: Arc<Pattern>) -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind(localhost()).await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let pattern = pattern.clone();
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                // Clients that only probe the port close without a mode byte; nothing to do.
                let _ = serve(s, &pattern).await;
            });
        }
    });
    Ok(addr)
}

async fn serve(mut s: TcpStream, pattern: &Pattern) -> std::io::Result<()> {
    let mut mode = [0u8; 1];
    s.read_exact(&mut mode).await?;
    match mode[0] {
        b'S' => {
            let mut buf = vec![0u8; 256 << 10];
            let (mut pos, mut ok) = (0u64, true);
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                ok = ok && buf[..n] == *pattern.at(pos, n);
                pos += n as u64;
            }
            let mut ack = [0u8; 9];
            ack[..8].copy_from_slice(&pos.to_be_bytes());
            ack[8] = u8::from(ok);
            s.write_all(&ack).await?;
            s.shutdown().await
        }
        b'E' => {
            let mut buf = vec![0u8; 16 << 10];
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    return s.shutdown().await;
                }
                s.write_all(&buf[..n]).await?;
            }
        }
        _ => Ok(()),
    }
}

async fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Sends `bytes` of the pattern one way; returns the time until the sink's acknowledgement.
async fn bulk(addr: SocketAddr, bytes: u64, pattern: &Pattern) -> anyhow::Result<Duration> {
    let mut s = connect(addr).await?;
    let start = Instant::now();
    s.write_all(b"S").await?;
    let mut pos = 0u64;
    while pos < bytes {
        let n = (bytes - pos).min(SEND_CHUNK as u64) as usize;
        s.write_all(pattern.at(pos, n)).await?;
        pos += n as u64;
    }
    s.shutdown().await?;
    let mut ack = [0u8; 9];
    s.read_exact(&mut ack)
        .await
        .context("reading the sink's acknowledgement")?;
    let elapsed = start.elapsed();
    let mut count = [0u8; 8];
    count.copy_from_slice(&ack[..8]);
    let got = u64::from_be_bytes(count);
    ensure!(got == bytes, "sink received {got} bytes, {bytes} were sent");
    ensure!(ack[8] == 1, "sink received different bytes than were sent");
    Ok(elapsed)
}

/// The message of round trip `i`: its number, then pattern bytes.
fn message(i: u64, pattern: &Pattern) -> [u8; MSG] {
    let mut m = [0u8; MSG];
    m[..8].copy_from_slice(&i.to_be_bytes());
    m[8..].copy_from_slice(pattern.at(i * 7, MSG - 8));
    m
}

/// `n` round trips of `MSG` bytes over one connection; returns total time and each latency.
async fn ping_pong(
    addr: SocketAddr,
    n: usize,
    pattern: &Pattern,
) -> anyhow::Result<(Duration, Vec<Duration>)> {
    let mut s = connect(addr).await?;
    s.write_all(b"E").await?;
    let mut back = [0u8; MSG];
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n as u64 {
        let m = message(i, pattern);
        let t = Instant::now();
        s.write_all(&m).await?;
        s.read_exact(&mut back)
            .await
            .with_context(|| format!("reading echo {i}"))?;
        lat.push(t.elapsed());
        ensure!(back == m, "echo {i} differs from what was sent");
    }
    Ok((start.elapsed(), lat))
}

/// `n` times, one after another: connect, one `MSG`-byte exchange, close.
async fn conn_setup(
    addr: SocketAddr,
    n: usize,
    pattern: &Pattern,
) -> anyhow::Result<(Duration, Vec<Duration>)> {
    let mut lat = Vec::with_capacity(n);
    let mut back = [0u8; MSG];
    let start = Instant::now();
    for i in 0..n as u64 {
        let t = Instant::now();
        let mut s = connect(addr).await?;
        let m = message(i, pattern);
        let mut out = [0u8; MSG + 1];
        out[0] = b'E';
        out[1..].copy_from_slice(&m);
        s.write_all(&out).await?;
        s.read_exact(&mut back)
            .await
            .with_context(|| format!("reading the echo on connection {i}"))?;
        ensure!(
            back == m,
            "echo on connection {i} differs from what was sent"
        );
        lat.push(t.elapsed());
    }
    Ok((start.elapsed(), lat))
}

/// Figures of one path.
#[derive(Debug, Clone, Copy)]
struct Figures {
    mib_s: f64,
    rt_s: f64,
    rtt_p50_us: f64,
    rtt_p99_us: f64,
    conn_s: f64,
    conn_p50_us: f64,
    conn_p99_us: f64,
}

fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

async fn step<T>(
    what: &str,
    path: &str,
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    timeout(STEP_LIMIT, f)
        .await
        .with_context(|| format!("{path}: {what} took longer than {STEP_LIMIT:?}"))?
        .with_context(|| format!("{path}: {what}"))
}

async fn warm_up(
    path: &str,
    addr: SocketAddr,
    sizes: Sizes,
    pattern: &Pattern,
) -> anyhow::Result<()> {
    let warm = sizes.warmup();
    step("warm-up bulk", path, bulk(addr, warm.bulk_bytes, pattern)).await?;
    step(
        "warm-up round trips",
        path,
        ping_pong(addr, warm.round_trips, pattern),
    )
    .await?;
    step(
        "warm-up connections",
        path,
        conn_setup(addr, warm.conns, pattern),
    )
    .await?;
    Ok(())
}

async fn measure(
    path: &str,
    addr: SocketAddr,
    sizes: Sizes,
    pattern: &Pattern,
) -> anyhow::Result<Figures> {
    let t = step("bulk", path, bulk(addr, sizes.bulk_bytes, pattern)).await?;
    let mib_s = (sizes.bulk_bytes as f64 / (1 << 20) as f64) / t.as_secs_f64();
    let (total, mut rtt) = step(
        "round trips",
        path,
        ping_pong(addr, sizes.round_trips, pattern),
    )
    .await?;
    rtt.sort_unstable();
    let rt_s = sizes.round_trips as f64 / total.as_secs_f64();
    let (total, mut setup) =
        step("connections", path, conn_setup(addr, sizes.conns, pattern)).await?;
    setup.sort_unstable();
    let conn_s = sizes.conns as f64 / total.as_secs_f64();
    Ok(Figures {
        mib_s,
        rt_s,
        rtt_p50_us: percentile_us(&rtt, 0.50),
        rtt_p99_us: percentile_us(&rtt, 0.99),
        conn_s,
        conn_p50_us: percentile_us(&setup, 0.50),
        conn_p99_us: percentile_us(&setup, 0.99),
    })
}

/// The per-field median of several rounds.
fn medians(rounds: &[Figures]) -> Figures {
    let m = |f: fn(&Figures) -> f64| median(rounds.iter().map(f));
    Figures {
        mib_s: m(|f| f.mib_s),
        rt_s: m(|f| f.rt_s),
        rtt_p50_us: m(|f| f.rtt_p50_us),
        rtt_p99_us: m(|f| f.rtt_p99_us),
        conn_s: m(|f| f.conn_s),
        conn_p50_us: m(|f| f.conn_p50_us),
        conn_p99_us: m(|f| f.conn_p99_us),
    }
}

/// The svidcar pair in front of `app` (SVIDs in memory, no admin servers: two proxies share
/// this process and neither needs one).
async fn svidcar_pair(app: SocketAddr) -> anyhow::Result<Pair> {
    Ok(PairBuilder::new(app)
        .trust_domain("svidcar.bench")
        .client_id(CLIENT_ID)
        .server_id(SERVER_ID)
        .admin(false)
        .start()
        .await?)
}

/// A `socat` relay process, killed on drop.
#[derive(Debug)]
struct SocatRelay {
    child: Child,
    addr: SocketAddr,
}

impl Drop for SocatRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn socat_installed() -> bool {
    Command::new("socat")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn socat_relay(app: SocketAddr) -> anyhow::Result<SocatRelay> {
    // Ask the OS for a free port, then hand it to socat (a small race; fine for a benchmark).
    let port = std::net::TcpListener::bind(localhost())?
        .local_addr()?
        .port();
    let child = Command::new("socat")
        .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"))
        .arg(format!("TCP:{app}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting socat")?;
    let relay = SocatRelay {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    let addr = relay.addr;
    try_wait_until(
        &format!("socat to listen on {addr}"),
        Duration::from_secs(5),
        || async move { TcpStream::connect(addr).await.is_ok() },
    )
    .await?;
    Ok(relay)
}

fn print_table(sizes: Sizes, rows: &[(&str, Figures)]) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "svidcar throughput ({} CPUs, one process; median of {} rounds): bulk {} MiB, {} round trips of {MSG} B, {} connections",
        cpus,
        sizes.rounds,
        sizes.bulk_bytes >> 20,
        sizes.round_trips,
        sizes.conns
    );
    println!(
        "{:<10} {:>11} {:>10} {:>11} {:>11} {:>9} {:>12} {:>12}",
        "path",
        "bulk MiB/s",
        "rt/s",
        "rtt p50 µs",
        "rtt p99 µs",
        "conn/s",
        "conn p50 µs",
        "conn p99 µs"
    );
    for (name, f) in rows {
        println!(
            "{:<10} {:>11.0} {:>10.0} {:>11.1} {:>11.1} {:>9.0} {:>12.1} {:>12.1}",
            name,
            f.mib_s,
            f.rt_s,
            f.rtt_p50_us,
            f.rtt_p99_us,
            f.conn_s,
            f.conn_p50_us,
            f.conn_p99_us
        );
    }
    let Some((_, direct)) = rows.first() else {
        return;
    };
    println!();
    println!("ratios proxied / direct (throughput: higher is better; latency: lower is better)");
    for (name, f) in &rows[1..] {
        println!(
            "{:<10} {:>11.3} {:>10.3} {:>11.2} {:>11.2} {:>9.3} {:>12.2} {:>12.2}",
            name,
            f.mib_s / direct.mib_s,
            f.rt_s / direct.rt_s,
            f.rtt_p50_us / direct.rtt_p50_us,
            f.rtt_p99_us / direct.rtt_p99_us,
            f.conn_s / direct.conn_s,
            f.conn_p50_us / direct.conn_p50_us,
            f.conn_p99_us / direct.conn_p99_us
        );
    }
}

async fn run() -> anyhow::Result<()> {
    let sizes = Sizes::from_env()?;
    let pattern = Arc::new(Pattern::new());
    let app = app_server(pattern.clone()).await?;
    let pair = svidcar_pair(app).await?;
    let route = pair.route;

    let relay = if socat_installed() {
        Some(socat_relay(app).await?)
    } else {
        eprintln!("note: socat is not installed; skipping the socat reference relay");
        None
    };
    let mut paths = vec![("direct", app), ("svidcar", route)];
    if let Some(r) = &relay {
        paths.push(("socat", r.addr));
    }
    for (name, addr) in &paths {
        warm_up(name, *addr, sizes, &pattern).await?;
    }
    // Paths take turns, so a noisy moment on the machine hits all of them alike.
    let mut figures = vec![Vec::new(); paths.len()];
    for round in 1..=sizes.rounds {
        for ((name, addr), figs) in paths.iter().zip(&mut figures) {
            let f = measure(name, *addr, sizes, &pattern).await?;
            eprintln!(
                "round {round} {name:<8} {:>6.0} MiB/s {:>7.0} rt/s {:>6.0} conn/s",
                f.mib_s, f.rt_s, f.conn_s
            );
            figs.push(f);
        }
    }
    let rows: Vec<(&str, Figures)> = paths
        .iter()
        .zip(&figures)
        .map(|((name, _), figs)| (*name, medians(figs)))
        .collect();
    print_table(sizes, &rows);

    pair.shutdown().await;
    Ok(())
}

fn main() -> ExitCode {
    svidcar_testkit::bench::main("throughput", run())
}
