//! Decision ingestion benchmark: a real control plane (`svidcar_control::server::start`, in this
//! process, with its store in a temporary state directory) and four tonic clients streaming
//! decision events over mTLS gRPC, as proxies do. Two phases, each measured from the first event
//! sent to the last one written to the store (SQLite: decisions, edges, per-minute counts; plus
//! the JSON-lines export), with how many were dropped (the write queue was full); counts come
//! from the control plane's own `/metrics`:
//!
//! - **paced**: the streams together offer `SVIDCAR_BENCH_RATE` decisions/s (default 40000,
//!   twice the goal): the store must keep up, with no drops;
//! - **flood**: the streams send as fast as gRPC carries them (far faster than any store):
//!   the queue overflows, drops are counted, and the figure is the writer's own rate.
//!
//! `SVIDCAR_BENCH_DECISIONS` sets the events per phase (default 200000), e.g.
//! `SVIDCAR_BENCH_DECISIONS=20000 cargo bench --bench decisions`. The goal on the project's
//! 2-core machine is at least 20 000 decisions/s with no drops.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{ensure, Context};
use svidcar_api::channel::connect;
use svidcar_api::policy::client::PolicyServiceClient;
use svidcar_api::policy::DecisionEventMsg;
use svidcar_api::DecisionEvent;
use svidcar_control::server::{start, ControlConfig};
use svidcar_control::Ca;
use svidcar_identity::{SpiffeId, TrustDomain};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const TD: &str = "svidcar.bench";
const CONTROL_ID: &str = "spiffe://svidcar.bench/svidcar/control";
const REPORTER_ID: &str = "spiffe://svidcar.bench/ns/bench/sa/server";
const STREAMS: u64 = 4;

fn main() -> ExitCode {
    svidcar_testkit::bench::main("decisions", run())
}

/// One metric's value from the control plane's `/metrics`.
async fn metric(admin: SocketAddr, name: &str) -> anyhow::Result<u64> {
    let mut s = tokio::net::TcpStream::connect(admin).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let value = out
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .with_context(|| format!("{name} not in /metrics"))?;
    Ok(value)
}

/// Event `i` of a stream: 40 sources × 8 ports towards 4 destinations, a third of them HTTP.
fn event(i: u64, now_ms: i64) -> anyhow::Result<DecisionEventMsg> {
    let src = SpiffeId::parse(&format!("spiffe://{TD}/ns/a/sa/client-{}", i % 40))?;
    let dst = SpiffeId::parse(&format!("spiffe://{TD}/ns/b/sa/server-{}", i % 4))?;
    let http = i.is_multiple_of(3);
    Ok(DecisionEventMsg::from(DecisionEvent {
        time_ms: now_ms + (i / 1000) as i64,
        action: if i.is_multiple_of(50) {
            svidcar_policy::Action::Deny
        } else {
            svidcar_policy::Action::Allow
        },
        source_id: Some(src),
        destination_id: Some(dst),
        source_addr: "10.0.0.1:40000".parse()?,
        destination_addr: "127.0.0.1:8080".parse()?,
        port: 8080 + (i % 8) as u16,
        rule: None,
        reason: "default allow-all".into(),
        policy_version: "0123456789abcdef".into(),
        method: http.then(|| "GET".to_owned()),
        path: http.then(|| format!("/api/v1/items/{i}")),
        count: 1,
    }))
}

/// What one phase measured.
struct Measured {
    stored: u64,
    dropped: u64,
    /// From the first event sent to the last stored.
    secs: f64,
    /// From the first event sent to the last accepted or dropped.
    offered_secs: f64,
}

/// One phase's setting.
struct Phase<'a> {
    tls: &'a svidcar_identity::tls::TlsContext,
    cp_id: &'a SpiffeId,
    grpc: SocketAddr,
    admin: SocketAddr,
    total: u64,
}

impl Phase<'_> {
    /// Streams `total` events, at `rate` per second in all when given; `before` counts what
    /// earlier phases stored or dropped.
    async fn run(&self, rate: Option<u64>, before: u64) -> anyhow::Result<Measured> {
        let now_ms = svidcar_identity::unix_now() * 1000;
        let per_stream = self.total / STREAMS;
        let mut streams = Vec::new();
        for s in 0..STREAMS {
            let client =
                PolicyServiceClient::new(connect(self.tls, &self.grpc.into(), self.cp_id).await?);
            let events = (s * per_stream..(s + 1) * per_stream)
                .map(|i| event(i, now_ms))
                .collect::<anyhow::Result<Vec<_>>>()?;
            streams.push((client, events));
        }
        let sent_total = per_stream * STREAMS;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (mut client, events) in streams {
            let per_stream_rate = rate.map(|r| (r / STREAMS).max(1));
            tasks.push(tokio::spawn(async move {
                let (tx, rx) = tokio::sync::mpsc::channel(1024);
                tokio::spawn(async move {
                    for (n, e) in events.into_iter().enumerate() {
                        if let Some(r) = per_stream_rate {
                            if n % 100 == 0 {
                                let due = started + Duration::from_secs_f64(n as f64 / r as f64);
                                tokio::time::sleep_until(due).await;
                            }
                        }
                        if tx.send(e).await.is_err() {
                            return;
                        }
                    }
                });
                let mut rx = rx;
                let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
                client
                    .report_decisions(stream)
                    .await
                    .map(|r| r.into_inner())
            }));
        }
        let (mut received, mut dropped) = (0, 0);
        for t in tasks {
            let summary = t.await??;
            received += summary.received;
            dropped += summary.dropped;
        }
        let offered_secs = started.elapsed().as_secs_f64();
        ensure!(
            received + dropped == sent_total,
            "{received} + {dropped} != {sent_total}"
        );
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let stored = metric(self.admin, "svidcar_control_decisions_stored_total").await?;
            let all_dropped = metric(self.admin, "svidcar_control_decisions_dropped_total").await?;
            if stored + all_dropped >= before + sent_total {
                ensure!(
                    stored + all_dropped == before + sent_total,
                    "metrics: {stored} stored + {all_dropped} dropped != {} sent",
                    before + sent_total
                );
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "only {stored} stored after 10 min"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Measured {
            stored: received,
            dropped,
            secs: started.elapsed().as_secs_f64(),
            offered_secs,
        })
    }
}

async fn run() -> anyhow::Result<()> {
    let total: u64 = std::env::var("SVIDCAR_BENCH_DECISIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let dir = tempfile::tempdir()?;
    let ca = Ca::generate(&TrustDomain::parse(TD)?, Duration::from_secs(86_400))?;
    let control = ca.issue(&SpiffeId::parse(CONTROL_ID)?, Duration::from_secs(3600))?;
    let write = |name: &str, text: &str| -> anyhow::Result<std::path::PathBuf> {
        let p = dir.path().join(name);
        std::fs::write(&p, text)?;
        Ok(p)
    };
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies)?;
    let cp = start(ControlConfig {
        policy_dir: policies,
        state_dir: dir.path().join("state"),
        listen: "127.0.0.1:0".parse()?,
        admin_listen: "127.0.0.1:0".parse()?,
        cert: Some(write("control.pem", &control.cert_pem)?),
        key: Some(write("control_key.pem", &control.key_pem)?),
        bundle: Some(write("bundle.pem", ca.bundle_pem())?),
        ..ControlConfig::default()
    })
    .await?;
    let store = svidcar_testkit::store(&ca, &SpiffeId::parse(REPORTER_ID)?)?;
    let tls = svidcar_identity::tls::TlsContext::new(store, svidcar_identity::tls::provider())?;
    let cp_id = SpiffeId::parse(CONTROL_ID)?;
    let rate: u64 = std::env::var("SVIDCAR_BENCH_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40_000);
    let phase = Phase {
        tls: &tls,
        cp_id: &cp_id,
        grpc: cp.grpc_addr,
        admin: cp.admin_addr,
        total,
    };
    println!(
        "decisions: {total} events per phase over {STREAMS} gRPC streams into svidcar control"
    );
    let paced = phase.run(Some(rate), 0).await?;
    println!(
        "  paced at {rate}/s: stored {} in {:.2} s: {:.0} decisions/s; dropped {}",
        paced.stored,
        paced.secs,
        paced.stored as f64 / paced.secs,
        paced.dropped
    );
    let flood = phase.run(None, paced.stored + paced.dropped).await?;
    println!(
        "  flood (offered {:.0}/s): stored {} in {:.2} s: {:.0} decisions/s; dropped {}",
        total as f64 / flood.offered_secs,
        flood.stored,
        flood.secs,
        flood.stored as f64 / flood.secs,
        flood.dropped
    );
    ensure!(
        paced.dropped == 0,
        "the store did not keep up with {rate} decisions/s: {} dropped",
        paced.dropped
    );
    cp.shutdown().await;
    Ok(())
}
