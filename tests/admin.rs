//! The admin endpoint after real traffic: `/metrics` parsed with a Prometheus text-format
//! parser, `/ready` transitions, `/config`, `/shutdown`.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;

const INTRUDER: &str = "spiffe://example.org/ns/default/sa/intruder";
use svidcar_identity::{pem_source, CredentialStore};
use svidcar_policy::MtlsMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A minimal HTTP/1.1 request; returns (status, body).
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("admin reachable");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("admin answered")
        .unwrap();
    let raw = String::from_utf8(raw).expect("utf-8");
    let (head, body) = raw.split_once("\r\n\r\n").expect("header end");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, body.to_owned())
}

#[tokio::test]
async fn metrics_after_real_traffic() {
    // The server denies one caller by policy.
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(
        policies.path().join("deny.yaml"),
        format!("kind: AuthorizationPolicy\nname: deny-intruder\naction: DENY\nrules:\n  - from: [{{ principals: [{INTRUDER}] }}]\n"),
    )
    .unwrap();
    let pki = Pki::new(TD);
    let server = start_server(&pki, echo_app().await, MtlsMode::Strict, |c| {
        c.policy.dir = Some(policies.path().to_owned());
    })
    .await;
    wait_for("the policy to load", Duration::from_secs(10), || {
        server.authz().version().is_some()
    })
    .await;
    let inbound = server.inbound_addr.unwrap();
    let client = start_client(&pki, inbound, SERVER_ID, |_| {}).await;
    let route = client.outbound_addrs[0];
    let admin = server.admin_addr.expect("admin listener");
    let mut log = server.subscribe();

    // One meshed call, one plaintext call refused by STRICT, one call denied by policy, one
    // failed handshake.
    assert_eq!(
        round_trip(route, b"0123456789").await.unwrap(),
        b"0123456789"
    );
    next_record(&mut log).await;
    assert!(round_trip(inbound, b"plain")
        .await
        .unwrap_or_default()
        .is_empty());
    next_record(&mut log).await;
    let intruder = pki.issue(INTRUDER);
    let denied = rogue_client(inbound, &intruder, svidcar_identity::tls::MESH_ALPN).await;
    assert!(denied.is_err(), "denied by policy");
    assert_eq!(next_record(&mut log).await.reason(), "policy_denied");
    let other = Pki::new("other.org");
    let alien = other.issue("spiffe://other.org/ns/x/sa/intruder");
    assert!(
        rogue_client(inbound, &alien, svidcar_identity::tls::MESH_ALPN)
            .await
            .is_err()
    );
    next_record(&mut log).await;

    let (status, body) = http(admin, "GET", "/metrics").await;
    assert_eq!(status, 200);
    let scrape = parse_metrics(&body).await;
    let ids = [
        ("direction", "inbound"),
        ("source_id", CLIENT_ID),
        ("destination_id", SERVER_ID),
        ("tls_mode", "mutual_tls"),
    ];
    assert_eq!(
        sample(&scrape, "svidcar_tcp_connections_opened_total", &ids),
        Some(1.0)
    );
    assert_eq!(
        sample(&scrape, "svidcar_tcp_received_bytes_total", &ids),
        Some(10.0)
    );
    assert_eq!(
        sample(&scrape, "svidcar_tcp_sent_bytes_total", &ids),
        Some(10.0)
    );
    let mut closed = ids.to_vec();
    closed.push(("outcome", "complete"));
    assert_eq!(
        sample(&scrape, "svidcar_tcp_connections_closed_total", &closed),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &scrape,
            "svidcar_tcp_connections_closed_total",
            &[
                ("outcome", "refused"),
                ("reason", "plaintext_refused"),
                ("source_id", "unknown")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &scrape,
            "svidcar_tls_handshake_failures_total",
            &[("direction", "inbound"), ("reason", "wrong_trust_domain")]
        ),
        Some(1.0)
    );
    let count = scrape
        .iter()
        .find(|s| {
            s.name == "svidcar_tcp_connection_duration_seconds_count"
                && s.labels.get("source_id").map(String::as_str) == Some(CLIENT_ID)
        })
        .expect("duration histogram");
    assert_eq!(
        (count.family_type.as_str(), count.value),
        ("histogram", 1.0)
    );
    let inf = sample(
        &scrape,
        "svidcar_tcp_connection_duration_seconds_bucket",
        &[("source_id", CLIENT_ID), ("le", "+Inf")],
    );
    assert_eq!(inf, Some(1.0));
    assert_eq!(
        sample(
            &scrape,
            "svidcar_authz_decisions_total",
            &[
                ("action", "DENY"),
                ("policy", "deny-intruder"),
                ("rule", "0"),
                ("source_id", INTRUDER),
                ("destination_id", SERVER_ID)
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &scrape,
            "svidcar_authz_decisions_total",
            &[
                ("action", "ALLOW"),
                ("policy", ""),
                ("rule", "-1"),
                ("source_id", CLIENT_ID)
            ]
        ),
        Some(1.0),
        "allowed by the default"
    );
    assert_eq!(
        sample(&scrape, "svidcar_policy_last_update_timestamp_seconds", &[]).map(|t| t > 0.0),
        Some(true)
    );
    assert_eq!(sample(&scrape, "svidcar_svid_valid", &[]), Some(1.0));
    let expiry = sample(&scrape, "svidcar_svid_expiry_timestamp_seconds", &[]).expect("expiry");
    assert!(expiry > svidcar_identity::unix_now() as f64);
    assert!(sample(&scrape, "process_resident_memory_bytes", &[]).is_some_and(|v| v > 0.0));
    assert!(sample(&scrape, "process_open_fds", &[]).is_some_and(|v| v > 0.0));

    // Every svidcar metric the Grafana dashboard queries exists (the HTTP ones after HTTP
    // traffic: tests/http.rs checks those).
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/svidcar-identity.json"
    ))
    .unwrap();
    let names: std::collections::HashSet<&str> = scrape.iter().map(|s| s.name.as_str()).collect();
    let used: Vec<&str> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|t| t.starts_with("svidcar_") && *t != "svidcar_identity")
        .filter(|t| !t.starts_with("svidcar_http_"))
        .collect();
    assert!(used.len() > 5);
    for name in used {
        assert!(
            names.contains(name),
            "dashboard queries {name}, which /metrics does not export"
        );
    }
}

#[tokio::test]
async fn ready_follows_the_svid() {
    let pki = Pki::new(TD);
    let (mut cfg, _) = pki.identity("server", SERVER_ID);
    cfg.outbound.enabled = false;
    cfg.inbound.listen = localhost();
    cfg.tunnel.listen = Some(localhost());
    let store = CredentialStore::new();
    let proxy = svidcar_proxy::start(cfg.clone(), store.clone())
        .await
        .unwrap();
    let admin = proxy.admin_addr.unwrap();

    let (status, body) = http(admin, "GET", "/ready").await;
    assert_eq!(
        (status, body.as_str()),
        (503, "not ready: no SVID loaded yet\n")
    );
    assert_eq!(http(admin, "GET", "/live").await.0, 200);

    let paths = cfg.pem_paths().unwrap();
    store.set(pem_source::load(&paths, &svidcar_identity::tls::provider()).unwrap());
    assert_eq!(
        http(admin, "GET", "/ready").await,
        (200, "ready\n".to_owned())
    );

    let old = pki.issue_with(SERVER_ID, expired);
    std::fs::write(&paths.cert, &old.cert_pem).unwrap();
    std::fs::write(&paths.key, &old.key_pem).unwrap();
    store.set(pem_source::load(&paths, &svidcar_identity::tls::provider()).unwrap());
    let (status, body) = http(admin, "GET", "/ready").await;
    assert_eq!(status, 503);
    assert!(body.contains("outside its validity window"), "{body}");
    let (_, metrics) = http(admin, "GET", "/metrics").await;
    assert!(metrics.contains("svidcar_svid_valid 0"));
    assert!(
        metrics.contains("svidcar_svid_rotations_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn config_and_shutdown() {
    let pki = Pki::new(TD);
    let server = start_server(&pki, echo_app().await, MtlsMode::Strict, |_| {}).await;
    let admin = server.admin_addr.unwrap();
    let (status, body) = http(admin, "GET", "/config").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["identity"]["spiffe_id"], SERVER_ID);
    assert_eq!(json["config"]["inbound"]["mtls"], "strict");
    assert!(!body.contains("PRIVATE KEY") && !body.contains("BEGIN"));
    assert_eq!(http(admin, "GET", "/nope").await.0, 404);
    assert_eq!(http(admin, "GET", "/shutdown").await.0, 405);

    let (status, _) = http(admin, "POST", "/shutdown").await;
    assert_eq!(status, 202);
    tokio::time::timeout(Duration::from_secs(5), server.shutdown_requested())
        .await
        .expect("shutdown requested");
}

#[tokio::test]
async fn bytes_are_counted_while_a_connection_is_open() {
    let pair = Pair::new(echo_app().await).await;
    let admin = pair.server.admin_addr.unwrap();
    let mut open = TcpStream::connect(pair.route).await.unwrap();
    open.write_all(b"12345").await.unwrap();
    let mut buf = [0u8; 5];
    open.read_exact(&mut buf).await.unwrap();
    let labels = [
        ("direction", "inbound"),
        ("source_id", CLIENT_ID),
        ("tls_mode", "mutual_tls"),
    ];
    let scrape = parse_metrics(&http(admin, "GET", "/metrics").await.1).await;
    assert_eq!(
        sample(&scrape, "svidcar_tcp_received_bytes_total", &labels),
        Some(5.0)
    );
    assert_eq!(
        sample(&scrape, "svidcar_tcp_sent_bytes_total", &labels),
        Some(5.0)
    );
    assert_eq!(
        sample(&scrape, "svidcar_tcp_connections_closed_total", &labels),
        None,
        "still open"
    );
    open.write_all(b"678").await.unwrap();
    open.read_exact(&mut buf[..3]).await.unwrap();
    let scrape = parse_metrics(&http(admin, "GET", "/metrics").await.1).await;
    assert_eq!(
        sample(&scrape, "svidcar_tcp_received_bytes_total", &labels),
        Some(8.0)
    );
}

/// A third-party gRPC health server (grpcio's reference implementation) on loopback; the
/// service `shop.Cart` is NOT_SERVING, the server as a whole SERVING. Returns its port and the
/// process.
fn grpc_health_server() -> (u16, std::process::Child) {
    use std::io::BufRead;
    const SERVER: &str = r#"
import grpc, sys
from concurrent import futures
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
s = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
h = health.HealthServicer()
h.set("", health_pb2.HealthCheckResponse.SERVING)
h.set("shop.Cart", health_pb2.HealthCheckResponse.NOT_SERVING)
health_pb2_grpc.add_HealthServicer_to_server(h, s)
port = s.add_insecure_port("127.0.0.1:0")
s.start()
print(port, flush=True)
s.wait_for_termination()
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", SERVER])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with grpcio-health-checking (tests/run.sh installs it)");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (line.trim().parse().expect("the server's port"), child)
}

/// The app's kubelet probes, handed to the proxy as `svidcar inject` does, answer on the admin
/// port: HTTP (with the app's status and our headers), TCP and gRPC health against real
/// servers, and a clear 503 when the app is down.
#[tokio::test]
async fn app_probes_are_run_for_the_kubelet() {
    use svidcar_api::app_probe::{parse, probe_path, ProbeKind};

    let http_app = echo_app().await; // answers anything it reads, but is not HTTP
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_port = plain.local_addr().unwrap().port();
    // A real HTTP server: Python's, serving an empty directory (`/` lists it: 200; `/missing`:
    // 404).
    let www = tempfile::tempdir().unwrap();
    let web_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut web = std::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            &web_port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .arg("--directory")
        .arg(www.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (grpc_port, mut grpc) = grpc_health_server();
    let free_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let probes = parse(&format!(
        r#"{{
          "{web_ready}": {{"httpGet": {{"path": "/", "port": {web_port}}}}},
          "{web_live}": {{"httpGet": {{"path": "/missing", "port": {web_port}}}}},
          "{tcp}": {{"tcpSocket": {{"port": {plain_port}}}}},
          "{down}": {{"tcpSocket": {{"port": {free_port}}}}},
          "{grpc_ok}": {{"grpc": {{"port": {grpc_port}}}}},
          "{grpc_bad}": {{"grpc": {{"port": {grpc_port}, "service": "shop.Cart"}}}}
        }}"#,
        web_ready = probe_path("web", ProbeKind::Readiness),
        web_live = probe_path("web", ProbeKind::Liveness),
        tcp = probe_path("db", ProbeKind::Startup),
        down = probe_path("db", ProbeKind::Liveness),
        grpc_ok = probe_path("api", ProbeKind::Readiness),
        grpc_bad = probe_path("cart", ProbeKind::Readiness),
    ))
    .unwrap();
    let pki = Pki::new(TD);
    let server = start_server(&pki, http_app, MtlsMode::Strict, |c| {
        c.admin.app_probes = probes;
    })
    .await;
    let admin = server.admin_addr.unwrap();
    wait_for_port(web_port).await;

    assert_eq!(
        http(admin, "GET", "/app-health/web/readyz").await,
        (200, "ok\n".into())
    );
    let (status, body) = http(admin, "GET", "/app-health/web/livez").await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        format!("GET /missing on 127.0.0.1:{web_port} answered 404 Not Found\n")
    );
    assert_eq!(http(admin, "GET", "/app-health/db/startupz").await.0, 200);
    let (status, body) = http(admin, "GET", "/app-health/db/livez").await;
    assert_eq!(status, 503);
    assert!(
        body.starts_with(&format!("cannot connect to 127.0.0.1:{free_port}: ")),
        "{body}"
    );
    assert_eq!(
        http(admin, "GET", "/app-health/api/readyz").await,
        (200, "ok\n".into())
    );
    let (status, body) = http(admin, "GET", "/app-health/cart/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        format!("gRPC health check on 127.0.0.1:{grpc_port} answered status 2 (not SERVING)\n")
    );
    let (status, body) = http(admin, "GET", "/app-health/nope/readyz").await;
    assert_eq!(
        (status, body.as_str()),
        (
            404,
            "no app probe is configured at /app-health/nope/readyz\n"
        )
    );
    drop(plain);
    let _ = web.kill();
    let _ = grpc.kill();
    let _ = (web.wait(), grpc.wait());
}

/// Waits until something accepts on `127.0.0.1:port` (a server started as a process).
async fn wait_for_port(port: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing listening on port {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
