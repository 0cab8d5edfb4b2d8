//! The control plane end to end: policy streamed to a proxy over mTLS gRPC, an edit to deny
//! takes effect within a second, the proxy keeps enforcing while the control plane is down and
//! resyncs when it returns, rejections are visible on the control plane, and a denied call shows
//! up in `svidcar decisions` with the caller and the rule.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use support::*;
use svidcar_control::server::{start, ControlArgs, ControlHandle};
use svidcar_proxy::config::{Dur, MtlsMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const CONTROL_ID: &str = "spiffe://example.org/ns/svidcar/sa/control";

fn allow(port: u16) -> String {
    format!("kind: AuthorizationPolicy\nname: allow-client\nselector: [{SERVER_ID}]\naction: ALLOW\nrules:\n  - from: [{{ principals: [{CLIENT_ID}] }}]\n    to: [{{ ports: [{port}] }}]\n")
}

fn deny() -> String {
    format!("kind: AuthorizationPolicy\nname: deny-client\nselector: [{SERVER_ID}]\naction: DENY\nrules:\n  - from: [{{ principals: [{CLIENT_ID}] }}]\n")
}

/// A policy for another workload: never sent to our server proxy.
fn unrelated() -> &'static str {
    "kind: AuthorizationPolicy\nname: other\nselector: [spiffe://example.org/ns/x/sa/other]\naction: DENY\nrules: [{}]\n"
}

fn write(dir: &Path, text: &str) {
    let tmp = dir.join(".policy.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("policy.yaml")).unwrap();
}

async fn control(
    pki: &Pki,
    policies: &Path,
    state: &Path,
    listen: SocketAddr,
    admin: SocketAddr,
) -> ControlHandle {
    let files = pki.write("control", &pki.issue(CONTROL_ID));
    start(ControlArgs {
        policy_dir: policies.to_owned(),
        state_dir: state.to_owned(),
        listen,
        admin_listen: admin,
        cert: Some(files.cert),
        key: Some(files.key),
        bundle: Some(files.bundle),
        ca_dir: None,
        trust_domain: None,
        ca_ttl: Dur(Duration::from_secs(3600)),
        svid_ttl: Dur(Duration::from_secs(3600)),
        node_svid_ttl: Dur(Duration::from_secs(3600)),
        nodes: None,
        reload_interval: Dur(Duration::from_millis(100)),
        decisions_max_bytes: 1 << 20,
        decisions_keep: 3,
        ..Default::default()
    })
    .await
    .expect("control plane starts")
}

async fn wait_until(what: &str, secs: u64, f: impl FnMut() -> bool) {
    wait_for(what, Duration::from_secs(secs), f).await
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_is_streamed_enforced_kept_and_resynced() {
    let pki = Pki::new(TD);
    let app = echo_app().await;
    let policies = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    write(
        policies.path(),
        &format!("{}---\n{}", allow(app.port()), unrelated()),
    );
    let cp = control(
        &pki,
        policies.path(),
        state.path(),
        localhost(),
        localhost(),
    )
    .await;
    let (grpc, admin) = (cp.grpc_addr, cp.admin_addr);

    let server = start_server(&pki, app, MtlsMode::Strict, |c| {
        c.policy.control_plane = Some(grpc.into());
        c.policy.control_plane_id = Some(id(CONTROL_ID));
        c.policy.node = Some("server-pod".into());
    })
    .await;
    let authz = server.authz().clone();
    wait_until("first policy", 10, || authz.version().is_some()).await;
    let mut log = server.subscribe();
    let client = start_client(&pki, server.inbound_addr.unwrap(), SERVER_ID, |_| {}).await;
    let route = client.outbound_addrs[0];

    // Only the policies selecting the server's workload were sent.
    let proxies = http_get(admin, "/proxies").await;
    assert!(
        proxies.contains("server-pod") && proxies.contains(SERVER_ID),
        "{proxies}"
    );
    let metrics = server
        .metrics()
        .render(&svidcar_identity::CredentialStore::default());
    assert!(metrics.contains("svidcar_control_plane_connected 1"));

    let mut open = TcpStream::connect(route).await.unwrap();
    open.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    open.read_exact(&mut buf).await.unwrap();

    // An edit that denies: within a second, new connections are refused and the open one closed.
    let edited = Instant::now();
    write(
        policies.path(),
        &format!("{}---\n{}---\n{}", allow(app.port()), deny(), unrelated()),
    );
    let rec = next_record(&mut log).await;
    assert!(
        edited.elapsed() < Duration::from_secs(1),
        "took {:?}",
        edited.elapsed()
    );
    assert_eq!(
        (rec.outcome.as_str(), rec.reason()),
        ("cancelled", "policy_revoked")
    );
    assert!(round_trip(route, b"x").await.unwrap_or_default().is_empty());
    assert_eq!(next_record(&mut log).await.reason(), "policy_denied");

    // The denied call is in the control plane's decision log, found by `svidcar decisions`.
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_svidcar"))
            .args([
                "decisions",
                "--control",
                &admin.to_string(),
                "--action",
                "DENY",
                "--identity",
                CLIENT_ID,
                "--since",
                "5m",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("deny-client#rule0") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        out.contains("DENY") && out.contains(CLIENT_ID) && out.contains("deny-client#rule0"),
        "{out}"
    );
    assert!(!out.contains("ALLOW "), "filtered by action: {out}");

    // A bad edit never reaches the proxy; the control plane reports it.
    let before = authz.version();
    std::fs::write(
        policies.path().join("broken.yaml"),
        "kind: AuthorizationPolicy\nname: broken\naction: SOMETIMES\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let p = http_get(admin, "/policies").await;
        if p.contains("SOMETIMES") && p.contains("is not ALLOW, DENY or AUDIT") {
            break;
        }
        assert!(Instant::now() < deadline, "rejected edit not reported: {p}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(authz.version(), before);
    std::fs::remove_file(policies.path().join("broken.yaml")).unwrap();

    // Control plane gone: the proxy keeps enforcing the last policy.
    let version = authz.version();
    cp.shutdown().await;
    wait_until("stream down", 10, || {
        server
            .metrics()
            .render(&svidcar_identity::CredentialStore::default())
            .contains("svidcar_control_plane_connected 0")
    })
    .await;
    assert!(
        round_trip(route, b"x").await.unwrap_or_default().is_empty(),
        "still denied"
    );
    assert_eq!(next_record(&mut log).await.reason(), "policy_denied");
    assert_eq!(authz.version(), version);

    // Back (same address, policy edited meanwhile): the proxy resyncs and the call is allowed.
    write(policies.path(), &allow(app.port()));
    let cp = control(&pki, policies.path(), state.path(), grpc, admin).await;
    wait_until("resync", 20, || authz.version() != version).await;
    assert_eq!(
        round_trip(route, b"allowed again").await.unwrap(),
        b"allowed again"
    );
    cp.shutdown().await;
}

#[tokio::test]
async fn rejections_are_visible_on_the_control_plane() {
    use svidcar_api::channel::connect;
    use svidcar_api::policy::client::PolicyServiceClient;
    use svidcar_api::policy::WatchRequest;

    let pki = Pki::new(TD);
    let policies = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    write(policies.path(), &allow(8080));
    let cp = control(
        &pki,
        policies.path(),
        state.path(),
        localhost(),
        localhost(),
    )
    .await;
    let (_, store) = pki.identity("raw", SERVER_ID);
    let tls =
        svidcar_identity::tls::TlsContext::new(store, svidcar_identity::tls::provider()).unwrap();
    let (addr, cp_id) = (cp.grpc_addr, id(CONTROL_ID));
    let mut client = PolicyServiceClient::new(connect(&tls, &addr.into(), &cp_id).await.unwrap());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(WatchRequest {
        node: "old-proxy".into(),
        version: String::new(),
        error: String::new(),
    })
    .await
    .unwrap();
    let reqs =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let mut snaps = client.watch(reqs).await.unwrap().into_inner();
    let snap = snaps.message().await.unwrap().unwrap();
    assert_eq!(snap.documents.len(), 1);
    assert!(snap.documents[0].yaml.contains("allow-client"));
    tx.send(WatchRequest {
        node: "old-proxy".into(),
        version: snap.version.clone(),
        error: "unknown field `future`".into(),
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let proxies = http_get(cp.admin_addr, "/proxies").await;
        if proxies.contains("unknown field `future`") {
            assert!(proxies.contains(&snap.version));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rejection not visible: {proxies}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A client without an SVID of ours is refused.
    let other = Pki::new("other.org");
    let (_, alien) = other.identity("alien", "spiffe://other.org/ns/x/sa/y");
    let tls =
        svidcar_identity::tls::TlsContext::new(alien, svidcar_identity::tls::provider()).unwrap();
    assert!(
        connect(&tls, &addr.into(), &cp_id).await.is_err() || {
            let mut c =
                PolicyServiceClient::new(connect(&tls, &addr.into(), &cp_id).await.unwrap());
            let (_tx, rx) = tokio::sync::mpsc::channel::<WatchRequest>(1);
            let reqs = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|r| (r, rx))
            });
            c.watch(reqs).await.is_err()
        }
    );
    cp.shutdown().await;
}

/// A proxy told to expect another control-plane ID says so in words, in `/ready`: what the
/// control plane presented and what was expected (no rustls Debug forms).
#[tokio::test]
async fn a_wrong_control_plane_id_is_explained_in_ready() {
    let pki = Pki::new(TD);
    let policies = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    write(policies.path(), &allow(8080));
    let cp = control(
        &pki,
        policies.path(),
        state.path(),
        localhost(),
        localhost(),
    )
    .await;
    const WRONG: &str = "spiffe://example.org/ns/svidcar/sa/not-control";
    let server = start_server(&pki, echo_app().await, MtlsMode::Strict, |c| {
        c.policy.control_plane = Some(cp.grpc_addr.into());
        c.policy.control_plane_id = Some(id(WRONG));
    })
    .await;
    let admin = server.admin_addr.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let body = http_get(admin, "/ready").await;
        if body.contains("unexpected SPIFFE ID") || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        body.contains("503")
            && body.contains(&format!(
                "unexpected SPIFFE ID {CONTROL_ID}; expected {WRONG}"
            ))
            && body.contains(&format!(
                "control plane {} (expected {WRONG}) unreachable",
                cp.grpc_addr
            )),
        "{body}"
    );
    assert!(
        !body.contains("Other(") && !body.contains("OtherError"),
        "{body}"
    );
    cp.shutdown().await;
}
