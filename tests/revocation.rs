//! Mesh-wide revocation end to end: a real control plane and 20 proxies streaming policy from
//! it. A revocation refuses new connections and closes open ones through every proxy within
//! the measured time (printed: run with `--nocapture`), each a DENY decision event on the
//! control plane; `svidcar unrevoke` restores service; a serial revocation refuses only that
//! SVID; `--until` lapses; HTTP gets 403 with the reason; the set survives a restart of the
//! control plane, and proxies keep enforcing it while the control plane is away.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use support::*;
use svidcar_control::server::{start, ControlArgs, ControlHandle};
use svidcar_proxy::config::{Dur, ProxyConfig, Route};
use svidcar_proxy::ProxyHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const CONTROL_ID: &str = "spiffe://example.org/ns/svidcar/sa/control";
const PROXIES: usize = 20;

async fn control(
    pki: &Pki,
    policies: &Path,
    state: &Path,
    grpc: SocketAddr,
    admin: SocketAddr,
) -> ControlHandle {
    let files = pki.write("control", &pki.issue(CONTROL_ID));
    start(ControlArgs {
        policy_dir: policies.to_owned(),
        state_dir: state.to_owned(),
        listen: grpc,
        admin_listen: admin,
        cert: Some(files.cert),
        key: Some(files.key),
        bundle: Some(files.bundle),
        ca_dir: None,
        reload_interval: Dur(Duration::from_millis(100)),
        ..Default::default()
    })
    .await
    .expect("control plane starts")
}

/// A server proxy for `id` in front of `app`, streaming policy from the control plane.
async fn server(pki: &Pki, id_str: &str, app: SocketAddr, cp: &ControlHandle) -> ProxyHandle {
    let mut cfg = svidcar_testkit::server_config(app, false);
    cfg.policy.control_plane = Some(cp.grpc_addr.into());
    cfg.policy.control_plane_id = Some(id(CONTROL_ID));
    cfg.policy.node = Some(id_str.rsplit('/').next().unwrap().to_owned());
    svidcar_testkit::start_proxy(&pki.ca, &id(id_str), cfg)
        .await
        .unwrap()
}

/// A client proxy for CLIENT_ID with one route per server (no control plane: the revoked
/// workload's own proxy is not the one that has to enforce). Returns it with its SVID's serial.
async fn client(pki: &Pki, servers: &[(SocketAddr, String)]) -> (ProxyHandle, String) {
    let mut cfg: ProxyConfig =
        svidcar_testkit::client_config(servers[0].0, id(&servers[0].1), false);
    cfg.outbound.routes = servers
        .iter()
        .map(|(upstream, sid)| Route {
            listen: localhost(),
            upstream: *upstream,
            server_id: id(sid),
            tunnel: None,
        })
        .collect();
    let store = svidcar_testkit::store(&pki.ca, &id(CLIENT_ID)).unwrap();
    let serial = store.latest().unwrap().leaf.serial.clone();
    (svidcar_proxy::start(cfg, store).await.unwrap(), serial)
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

/// Whether a new connection through `route` is served (echoed). The first byte is no HTTP
/// method's, so the client proxy does not wait its detect timeout for a request line.
async fn served(route: SocketAddr) -> bool {
    round_trip(route, b"\0x").await.unwrap_or_default() == b"\0x"
}

/// Polls `route` until a new connection is served (`want`) or not; returns when.
async fn until_served(route: SocketAddr, want: bool, limit: Duration) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if served(route).await == want {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// One HTTP/1.1 request to the control plane's query port; returns the raw response.
async fn http(admin: SocketAddr, method: &str, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}", body.len())
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

fn stats(label: &str, mut t: Vec<Duration>) -> Duration {
    t.sort();
    let max = *t.last().unwrap();
    println!(
        "{label}: {} proxies, median {:?}, max {:?}",
        t.len(),
        t[t.len() / 2],
        max
    );
    max
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_twenty_proxies_within_a_second() {
    let pki = Pki::new(TD);
    let app = echo_app().await;
    let (policies, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cp = control(
        &pki,
        policies.path(),
        state.path(),
        localhost(),
        localhost(),
    )
    .await;
    let mut servers = Vec::new();
    let mut handles = Vec::new();
    for i in 0..PROXIES {
        let sid = format!("spiffe://example.org/ns/default/sa/server-{i}");
        let h = server(&pki, &sid, app, &cp).await;
        servers.push((h.inbound_addr.unwrap(), sid));
        handles.push(h);
    }
    for h in &handles {
        let authz = h.authz().clone();
        wait_for("first policy", Duration::from_secs(10), || {
            authz.version().is_some()
        })
        .await;
    }
    let (client, _) = client(&pki, &servers).await;
    let routes = client.outbound_addrs.clone();
    assert_eq!(routes.len(), PROXIES);
    let mut conns = Vec::new();
    for r in &routes {
        conns.push(open(*r).await);
    }

    // Revoke; then through every proxy, the open connection closes and a new one is refused.
    let revoked = Instant::now();
    let body =
        format!(r#"{{"spiffe_id":"{CLIENT_ID}","reason":"key leaked","revoked_by":"test"}}"#);
    let resp = http(cp.admin_addr, "POST", "/revocations", &body).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (mut conn, route)) in conns.into_iter().zip(routes.clone()).enumerate() {
        tasks.spawn(async move {
            let mut buf = [0u8; 16];
            let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await;
            assert!(
                matches!(read, Ok(Ok(0)) | Ok(Err(_))),
                "open connection {i} not closed: {read:?}"
            );
            let closed = revoked.elapsed();
            let refused = until_served(route, false, Duration::from_secs(5))
                .await
                .unwrap_or_else(|| panic!("proxy {i} still serves a revoked client"));
            (closed, refused.duration_since(revoked))
        });
    }
    let (mut closed, mut refused) = (Vec::new(), Vec::new());
    while let Some(r) = tasks.join_next().await {
        let (c, n) = r.unwrap();
        closed.push(c);
        refused.push(n);
    }
    let max_closed = stats("revoke -> open connection closed", closed);
    let max_refused = stats("revoke -> new connection refused", refused);
    assert!(max_closed < Duration::from_secs(1), "{max_closed:?}");
    assert!(max_refused < Duration::from_secs(1), "{max_refused:?}");

    // `svidcar revoke --list` shows it; the control plane holds a DENY for closures and refusals.
    let admin = cp.admin_addr.to_string();
    let (code, out, err) = svidcar(&["revoke", "--list", "--output", "json", "--control", &admin]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(CLIENT_ID) && out.contains("key leaked"),
        "{out}"
    );
    let (code, table, _) = svidcar(&["revoke", "--list", "--control", &admin]);
    assert!(
        code == 0 && table.contains("REVOKED") && table.contains(CLIENT_ID),
        "{table}"
    );
    let q = "/decisions?action=DENY&limit=1000";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = http(cp.admin_addr, "GET", q, "").await;
        let closures = d
            .matches("open connection closed: identity revoked")
            .count();
        let refusals = d.matches("\"reason\":\"identity revoked: ").count();
        if closures >= PROXIES && refusals >= PROXIES {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "DENY events: {closures} closures, {refusals} refusals"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Lifted with the real binary: every proxy serves the client again.
    let lifted = Instant::now();
    let (code, out, err) = svidcar(&["unrevoke", CLIENT_ID, "--control", &admin]);
    assert_eq!(code, 0, "{out}{err}");
    let mut back = Vec::new();
    for r in &routes {
        let t = until_served(*r, true, Duration::from_secs(5))
            .await
            .expect("served again");
        back.push(t.duration_since(lifted));
    }
    stats("unrevoke (binary) -> served again", back);
    let (code, _, err) = svidcar(&["unrevoke", CLIENT_ID, "--control", &admin]);
    assert!(code != 0 && err.contains("is not revoked"), "{err}");
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serials_until_http_and_restarts() {
    let pki = Pki::new(TD);
    let app = echo_app().await;
    let (policies, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cp = control(
        &pki,
        policies.path(),
        state.path(),
        localhost(),
        localhost(),
    )
    .await;
    let (grpc, admin) = (cp.grpc_addr, cp.admin_addr);
    let admin_s = admin.to_string();
    let srv = server(&pki, SERVER_ID, app, &cp).await;
    let authz = srv.authz().clone();
    wait_for("first policy", Duration::from_secs(10), || {
        authz.version().is_some()
    })
    .await;
    let servers = [(srv.inbound_addr.unwrap(), SERVER_ID.to_owned())];
    // Two SVIDs of the same ID: `leaked` and a fresh one.
    let (leaked, serial) = client(&pki, &servers).await;
    let (fresh, fresh_serial) = client(&pki, &servers).await;
    assert_ne!(serial, fresh_serial);
    let (a, b) = (leaked.outbound_addrs[0], fresh.outbound_addrs[0]);
    assert!(served(a).await && served(b).await);

    // By serial (as the certificate parser spells it, with colons): only that SVID.
    let (code, out, err) = svidcar(&[
        "revoke",
        "--serial",
        &serial,
        "--reason",
        "laptop stolen",
        "--control",
        &admin_s,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    until_served(a, false, Duration::from_secs(2))
        .await
        .expect("leaked SVID refused");
    assert!(served(b).await, "a fresh SVID of the same ID is served");

    // HTTP through the leaked SVID: 403 with the reason in the body.
    let mut s = TcpStream::connect(a).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut resp))
        .await
        .unwrap()
        .unwrap();
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(
        resp.contains("identity revoked: serial") && resp.contains("laptop stolen"),
        "{resp}"
    );

    // The whole ID, for two seconds: both refused, then it lapses (the serial stays).
    let (code, out, err) = svidcar(&["revoke", CLIENT_ID, "--until", "2s", "--control", &admin_s]);
    assert_eq!(code, 0, "{out}{err}");
    until_served(b, false, Duration::from_secs(2))
        .await
        .expect("ID revoked");
    until_served(b, true, Duration::from_secs(5))
        .await
        .expect("the ID revocation lapsed");
    assert!(!served(a).await, "the serial revocation stays");
    // The control plane drops it from the set within its lapse interval (a second).
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (_, list, _) = svidcar(&[
            "revoke",
            "--list",
            "--output",
            "json",
            "--control",
            &admin_s,
        ]);
        if !list.contains(CLIENT_ID) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lapsed entries leave the list: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Errors name what to fix.
    let (code, _, err) = svidcar(&["revoke", "example.org/x", "--control", &admin_s]);
    assert!(code != 0 && err.contains("is not a SPIFFE ID"), "{err}");
    let (code, _, err) = svidcar(&[
        "revoke",
        CLIENT_ID,
        "--until",
        "soon",
        "--control",
        &admin_s,
    ]);
    assert!(code != 0 && err.contains("give an RFC 3339 time"), "{err}");

    // The control plane goes away: the proxy keeps the last set. It comes back on the same
    // addresses with the set from its state directory.
    cp.shutdown().await;
    assert!(
        !served(a).await && served(b).await,
        "kept while the control plane is away"
    );
    let cp = control(&pki, policies.path(), state.path(), grpc, admin).await;
    let listed = http(admin, "GET", "/revocations", "").await;
    let normal = svidcar_identity::tls::CertSerial::parse(&serial).unwrap();
    assert!(
        listed.contains(normal.as_str()),
        "kept across the restart: {listed}"
    );
    assert!(!served(a).await && served(b).await);

    let (code, out, err) = svidcar(&["unrevoke", "--serial", &serial, "--control", &admin_s]);
    assert_eq!(code, 0, "{out}{err}");
    until_served(a, true, Duration::from_secs(10))
        .await
        .expect("lifted after the restart");
    cp.shutdown().await;
}
