//! The edge table end to end: decisions streamed by real proxies land in the control plane's
//! store, `/edges` and `svidcar decisions` show them and a restart keeps them; a never-seen edge
//! after the learning period raises exactly one alert with both SPIFFE IDs, POSTed to a webhook,
//! and with `--on-new-edge deny` the proxies refuse that edge until it is allow-listed; a burst
//! beyond the write queue is dropped and counted while the stream keeps flowing.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use support::*;
use svidcar_control::edge::EdgeRecord;
use svidcar_control::edges::{NewEdgeAlert, OnNewEdge};
use svidcar_control::server::{start, ControlArgs, ControlHandle};
use svidcar_proxy::config::{Dur, MtlsMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

const CONTROL_ID: &str = "spiffe://example.org/ns/svidcar/sa/control";
const INTRUDER_ID: &str = "spiffe://example.org/ns/default/sa/intruder";

/// A policy for another workload: the server proxy gets none (its default allows).
const UNRELATED: &str = "kind: AuthorizationPolicy\nname: other\nselector: [spiffe://example.org/ns/x/sa/other]\naction: DENY\nrules: [{}]\n";

async fn control(
    pki: &Pki,
    policies: &Path,
    state: &Path,
    addrs: (SocketAddr, SocketAddr),
    tweak: impl FnOnce(&mut ControlArgs),
) -> ControlHandle {
    let files = pki.write("control", &pki.issue(CONTROL_ID));
    let mut args = ControlArgs {
        policy_dir: policies.to_owned(),
        state_dir: state.to_owned(),
        listen: addrs.0,
        admin_listen: addrs.1,
        cert: Some(files.cert),
        key: Some(files.key),
        bundle: Some(files.bundle),
        reload_interval: Dur(Duration::from_millis(100)),
        ..Default::default()
    };
    tweak(&mut args);
    start(args).await.expect("control plane starts")
}

async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

async fn edges(admin: SocketAddr, query: &str) -> Vec<EdgeRecord> {
    let (status, body) = http(admin, "GET", &format!("/edges{query}")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

async fn alerts(admin: SocketAddr) -> Vec<NewEdgeAlert> {
    let (status, body) = http(admin, "GET", "/new-edges").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// A webhook receiver: answers 200 and hands on every request body.
async fn webhook_receiver() -> (SocketAddr, mpsc::UnboundedReceiver<serde_json::Value>) {
    let listener = TcpListener::bind(localhost()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        continue;
                    };
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if body.len() < len {
                        continue;
                    }
                    let _ = tx.send(serde_json::from_str(&body[..len]).unwrap());
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                    return;
                }
            });
        }
    });
    (addr, rx)
}

fn is(id: &Option<svidcar_identity::SpiffeId>, want: &str) -> bool {
    id.as_ref().is_some_and(|i| i.as_str() == want)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_new_edge_alerts_deny_allow_and_restart() {
    let pki = Pki::new(TD);
    let app = echo_app().await;
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(policies.path().join("policy.yaml"), UNRELATED).unwrap();
    let state = tempfile::tempdir().unwrap();
    let (hook, mut posted) = webhook_receiver().await;
    let learning = Duration::from_secs(4);
    let started = Instant::now();
    let settings = move |a: &mut ControlArgs| {
        a.new_edge_learning = Dur(learning);
        a.new_edge_webhook = Some(format!("http://{hook}/hook").parse().unwrap());
        a.on_new_edge = OnNewEdge::Deny;
    };
    let cp = control(
        &pki,
        policies.path(),
        state.path(),
        (localhost(), localhost()),
        settings,
    )
    .await;
    let (grpc, admin) = (cp.grpc_addr, cp.admin_addr);

    let server = start_server(&pki, app, MtlsMode::Strict, |c| {
        c.policy.control_plane = Some(grpc.into());
        c.policy.control_plane_id = Some(id(CONTROL_ID));
    })
    .await;
    let authz = server.authz().clone();
    wait_for("first policy", Duration::from_secs(10), || {
        authz.version().is_some()
    })
    .await;
    let inbound = server.inbound_addr.unwrap();
    let client = start_client(&pki, inbound, SERVER_ID, |_| {}).await;
    let route = client.outbound_addrs[0];

    // Learning: the client's edge joins the baseline silently.
    assert_eq!(round_trip(route, b"hello").await.unwrap(), b"hello");
    let deadline = Instant::now() + Duration::from_secs(10);
    let learned = loop {
        let found = edges(admin, &format!("?since=5m&source={CLIENT_ID}")).await;
        if !found.is_empty() || Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(learned.len(), 1, "{learned:?}");
    assert!(is(&learned[0].key.destination, SERVER_ID) && learned[0].count >= 1);
    assert!(
        started.elapsed() < learning,
        "the test was too slow to learn"
    );
    tokio::time::sleep(learning.saturating_sub(started.elapsed())).await;
    assert!(alerts(admin).await.is_empty(), "nothing new while learning");

    // After learning: a caller never seen before.
    let mut intruder_cfg = svidcar_testkit::client_config(inbound, id(SERVER_ID), false);
    intruder_cfg.admin.listen = localhost();
    let intruder = svidcar_testkit::start_proxy(&pki.ca, &id(INTRUDER_ID), intruder_cfg)
        .await
        .unwrap();
    let intruder_route = intruder.outbound_addrs[0];
    let _ = round_trip(intruder_route, b"first").await;
    let alert = Wait::new("one new-edge alert", Duration::from_secs(10))
        .until(|| async {
            let a = alerts(admin).await;
            (a.len() == 1).then(|| a[0].clone())
        })
        .await
        .unwrap();
    assert!(is(&alert.key.source, INTRUDER_ID) && is(&alert.key.destination, SERVER_ID));
    assert!(alert.denied);
    let body = tokio::time::timeout(Duration::from_secs(10), posted.recv())
        .await
        .expect("webhook POST within 10 s")
        .unwrap();
    assert_eq!(body["source"], INTRUDER_ID);
    assert_eq!(body["destination"], SERVER_ID);
    assert_eq!(body["id"], alert.id);

    // Deny: the proxy refuses that edge, and only that one.
    wait_until("the intruder refused", Duration::from_secs(10), || async {
        round_trip(intruder_route, b"x")
            .await
            .unwrap_or_default()
            .is_empty()
    })
    .await;
    assert_eq!(round_trip(route, b"still").await.unwrap(), b"still");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        alerts(admin).await.len(),
        1,
        "the same edge again is no second alert"
    );
    let (_, metrics) = http(admin, "GET", "/metrics").await;
    assert!(
        metrics.contains(&format!(
            "svidcar_control_new_edges_total{{destination=\"{SERVER_ID}\",source=\"{INTRUDER_ID}\"}} 1"
        )),
        "{metrics}"
    );
    assert!(posted.try_recv().is_err(), "one POST");

    // The real binary: decisions (table and JSON) and the alert.
    let control_flag = admin.to_string();
    let (code, out, err) = svidcar(&[
        "decisions",
        "--control",
        &control_flag,
        "--identity",
        INTRUDER_ID,
        "--since",
        "5m",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("TIME") && out.contains(INTRUDER_ID) && out.contains("DENY"),
        "{out}"
    );
    let (code, out, err) = svidcar(&[
        "decisions",
        "--control",
        &control_flag,
        "--new-edges",
        "--output",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let listed: NewEdgeAlert = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(listed, alert);

    // Allow-listed with one command: the DENY is lifted.
    let (code, out, err) = svidcar(&[
        "decisions",
        "--control",
        &control_flag,
        "--allow-edge",
        &alert.id.to_string(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("allowed"), "{out}");
    wait_until(
        "the intruder allowed again",
        Duration::from_secs(10),
        || async { round_trip(intruder_route, b"ok").await.unwrap_or_default() == b"ok" },
    )
    .await;

    // A restart keeps the edges and the alert (allowed, raised once).
    let before = edges(admin, "").await;
    assert_eq!(
        before
            .iter()
            .filter(|e| is(&e.key.source, INTRUDER_ID))
            .map(|e| e.key.action)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        2,
        "allowed and denied: {before:?}"
    );
    cp.shutdown().await;
    let cp = control(&pki, policies.path(), state.path(), (grpc, admin), settings).await;
    let after = edges(admin, "").await;
    assert!(
        before
            .iter()
            .all(|e| after.iter().any(|a| a.key == e.key && a.count >= e.count)),
        "{before:?} / {after:?}"
    );
    let kept = alerts(admin).await;
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].status, svidcar_control::edges::AlertStatus::Allowed);
    cp.shutdown().await;
    intruder.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_the_queue_is_dropped_and_counted_while_the_stream_flows() {
    use svidcar_api::channel::connect;
    use svidcar_api::policy::client::PolicyServiceClient;
    use svidcar_api::policy::DecisionEventMsg;
    use svidcar_api::DecisionEvent;

    let pki = Pki::new(TD);
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(policies.path().join("policy.yaml"), UNRELATED).unwrap();
    let state = tempfile::tempdir().unwrap();
    let cp = control(
        &pki,
        policies.path(),
        state.path(),
        (localhost(), localhost()),
        |a| {
            a.decision_queue = 8;
        },
    )
    .await;
    // The store is held busy from outside: the writer waits, its queue fills.
    let blocker =
        rusqlite::Connection::open(state.path().join(svidcar_control::edges::DB_FILE)).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();

    let (_, store) = pki.identity("reporter", SERVER_ID);
    let tls =
        svidcar_identity::tls::TlsContext::new(store, svidcar_identity::tls::provider()).unwrap();
    let mut client = PolicyServiceClient::new(
        connect(&tls, &cp.grpc_addr.into(), &id(CONTROL_ID))
            .await
            .unwrap(),
    );
    const BURST: u64 = 5_000;
    let now = svidcar_identity::unix_now() * 1000;
    let event = move |i: u64| {
        DecisionEventMsg::from(DecisionEvent {
            time_ms: now + i as i64,
            action: svidcar_policy::Action::Allow,
            source_id: Some(id(CLIENT_ID)),
            destination_id: Some(id(SERVER_ID)),
            source_addr: "10.0.0.1:40000".parse().unwrap(),
            destination_addr: "127.0.0.1:8080".parse().unwrap(),
            port: 8080,
            rule: None,
            reason: "default".into(),
            policy_version: "v1".into(),
            method: None,
            path: None,
            count: 1,
        })
    };
    // The writer takes a first decision and waits for the lock with it.
    let first = client
        .report_decisions(futures_util::stream::iter([event(0)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.received, first.dropped), (1, 0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = (1..=BURST).map(event);
    let sent = Instant::now();
    let summary = tokio::time::timeout(
        Duration::from_secs(10),
        client.report_decisions(futures_util::stream::iter(events)),
    )
    .await
    .expect("the stream is never held up by the store")
    .unwrap()
    .into_inner();
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "took {:?}",
        sent.elapsed()
    );
    assert_eq!(summary.received + summary.dropped, BURST);
    assert_eq!(
        (summary.received, summary.dropped),
        (8, BURST - 8),
        "the queue holds 8"
    );
    let (_, metrics) = http(cp.admin_addr, "GET", "/metrics").await;
    assert!(
        metrics.contains(&format!(
            "svidcar_control_decisions_dropped_total {}",
            summary.dropped
        )),
        "{metrics}"
    );

    // Released: what was accepted is stored.
    blocker.execute_batch("COMMIT").unwrap();
    let admin = cp.admin_addr;
    let received = 1 + summary.received as usize;
    wait_until(
        "accepted decisions stored",
        Duration::from_secs(20),
        || async move { http(admin, "GET", "/decisions").await.1.lines().count() == received },
    )
    .await;
    cp.shutdown().await;
}
