//! End-to-end on loopback with real handshakes: app client → outbound (explicit) → mTLS →
//! inbound → app, and every way a peer gets refused.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::time::Duration;

use support::*;
use svidcar_proxy::config::{Dur, MtlsMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_arrive_exactly_both_ways_from_0_bytes_to_64_mib() {
    let pair = Pair::new(echo_app().await).await;
    let mut server_log = pair.server.subscribe();
    for (i, len) in [0usize, 1, 1000, 65_543, (1 << 20) + 3, 64 << 20]
        .into_iter()
        .enumerate()
    {
        let data = payload(len, i as u64 + 7);
        let got = round_trip(pair.route, &data).await.expect("round trip");
        assert_eq!(got.len(), data.len(), "length for {len}");
        assert!(got == data, "content differs for {len} bytes");
        let rec = next_record(&mut server_log).await;
        assert_eq!(rec.outcome.as_str(), "complete");
        assert_eq!((rec.bytes_up, rec.bytes_down), (len as u64, len as u64));
        assert_eq!(rec.tls.mode(), "mutual_tls");
        assert_eq!(rec.client_id().map(|i| i.as_str()), Some(CLIENT_ID));
        assert_eq!(rec.server_id().map(|i| i.as_str()), Some(SERVER_ID));
    }
}

#[tokio::test]
async fn half_close_is_honoured_across_the_mesh() {
    let pair = Pair::new(answer_after_eof_app(b"late answer").await).await;
    let mut client_log = pair.client.subscribe();
    let mut s = TcpStream::connect(pair.route).await.unwrap();
    s.write_all(b"the whole request").await.unwrap();
    // Half-close: the app only answers once it has seen end-of-stream.
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("answer in time")
        .unwrap();
    assert_eq!(got, b"got 17 bytes; late answer");
    let rec = next_record(&mut client_log).await;
    assert_eq!(
        (rec.bytes_up, rec.bytes_down, rec.outcome.as_str()),
        (17, 25, "complete")
    );
    assert_eq!(rec.server_id().map(|i| i.as_str()), Some(SERVER_ID));
}

/// A client presenting a bad SVID to the inbound is refused with the right reason.
#[tokio::test]
async fn inbound_refuses_bad_client_svids_with_reasons() {
    let app = echo_app().await;
    let pki = Pki::new(TD);
    let server = start_server(&pki, app, MtlsMode::Strict, |_| {}).await;
    let inbound = server.inbound_addr.unwrap();
    let mut log = server.subscribe();
    let other_td = Pki::new("other.org");
    let alien_ca = Pki::new(TD); // claims example.org, chains to a different root
    let cases = [
        (
            "wrong_trust_domain",
            other_td.issue("spiffe://other.org/ns/default/sa/client"),
        ),
        ("untrusted_chain", alien_ca.issue(CLIENT_ID)),
        ("expired", pki.issue_with(CLIENT_ID, expired)),
        ("leaf_is_ca", pki.issue_with(CLIENT_ID, make_ca)),
        ("multiple_uri_sans", pki.issue_with(CLIENT_ID, two_uri_sans)),
    ];
    for (reason, svid) in &cases {
        let r = rogue_client(inbound, svid, svidcar_identity::tls::MESH_ALPN).await;
        assert!(r.is_err(), "{reason}: the inbound accepted a bad SVID");
        let rec = next_record(&mut log).await;
        assert_eq!(rec.outcome.as_str(), "refused", "{reason}");
        assert_eq!(
            rec.reason(),
            *reason,
            "detail: {}",
            rec.refusal
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default()
        );
    }
    // And a good one is accepted by the same path.
    let mut ok = rogue_client(
        inbound,
        &pki.issue(CLIENT_ID),
        svidcar_identity::tls::MESH_ALPN,
    )
    .await
    .expect("a valid SVID is accepted");
    ok.shutdown().await.unwrap();
    let rec = next_record(&mut log).await;
    assert_eq!(rec.client_id().map(|i| i.as_str()), Some(CLIENT_ID));
}

/// The outbound refuses a server with a bad SVID or with an identity other than expected.
#[tokio::test]
async fn outbound_refuses_bad_or_unexpected_servers_with_reasons() {
    let pki = Pki::new(TD);
    let other_td = Pki::new("other.org");
    let cases = [
        (
            "wrong_trust_domain",
            other_td.issue("spiffe://other.org/ns/default/sa/server"),
        ),
        ("expired", pki.issue_with(SERVER_ID, expired)),
        ("leaf_is_ca", pki.issue_with(SERVER_ID, make_ca)),
        ("multiple_uri_sans", pki.issue_with(SERVER_ID, two_uri_sans)),
        (
            "unexpected_spiffe_id",
            pki.issue("spiffe://example.org/ns/default/sa/impostor"),
        ),
    ];
    for (reason, svid) in &cases {
        let server = rogue_server(svid).await;
        let client = start_client(&pki, server, SERVER_ID, |_| {}).await;
        let mut log = client.subscribe();
        let got = round_trip(client.outbound_addrs[0], b"secret")
            .await
            .unwrap_or_default();
        assert!(
            got.is_empty(),
            "{reason}: bytes came back from a refused server"
        );
        let rec = next_record(&mut log).await;
        assert_eq!(
            (rec.outcome.as_str(), rec.reason()),
            ("refused", *reason),
            "detail: {}",
            rec.refusal
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default()
        );
        client.shutdown().await;
    }
    // The same path with a proper server works.
    let server = rogue_server(&pki.issue(SERVER_ID)).await;
    let client = start_client(&pki, server, SERVER_ID, |_| {}).await;
    assert_eq!(
        round_trip(client.outbound_addrs[0], b"secret")
            .await
            .unwrap(),
        b"secret"
    );
}

#[tokio::test]
async fn strict_refuses_plaintext_and_permissive_passes_it() {
    let app = echo_app().await;
    let pki = Pki::new(TD);
    let strict = start_server(&pki, app, MtlsMode::Strict, |_| {}).await;
    let mut log = strict.subscribe();
    let got = round_trip(strict.inbound_addr.unwrap(), b"GET / HTTP/1.0\r\n\r\n")
        .await
        .unwrap_or_default();
    assert!(got.is_empty(), "STRICT passed plaintext through");
    assert_eq!(next_record(&mut log).await.reason(), "plaintext_refused");

    let permissive = start_server(&pki, app, MtlsMode::Permissive, |_| {}).await;
    let mut log = permissive.subscribe();
    let inbound = permissive.inbound_addr.unwrap();
    // Plaintext that is not HTTP passes as TCP (HTTP is served per request: tests/http.rs).
    let got = round_trip(inbound, b"PING plaintext\r\n").await.unwrap();
    assert_eq!(got, b"PING plaintext\r\n");
    let rec = next_record(&mut log).await;
    assert_eq!(format!("{:?}", rec.tls), "None(PermissivePlaintext)");

    // The app's own TLS (no mesh ALPN) passes through untouched: the app sees the exact bytes.
    let hello = {
        let provider = svidcar_identity::tls::provider();
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("app.example.org").unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    };
    assert_eq!(round_trip(inbound, &hello).await.unwrap(), hello);
    let rec = next_record(&mut log).await;
    assert_eq!(format!("{:?}", rec.tls), "None(PermissiveOtherTls)");

    // Mesh mTLS on the PERMISSIVE port is still terminated and verified.
    let client = start_client(&pki, inbound, SERVER_ID, |_| {}).await;
    assert_eq!(
        round_trip(client.outbound_addrs[0], b"meshed")
            .await
            .unwrap(),
        b"meshed"
    );
    assert_eq!(next_record(&mut log).await.tls.mode(), "mutual_tls");

    // Per-port override: PERMISSIVE by default, STRICT for the app's port.
    let per_port = start_server(&pki, app, MtlsMode::Permissive, |c| {
        c.inbound.port_mtls.insert(app.port(), MtlsMode::Strict);
    })
    .await;
    let got = round_trip(per_port.inbound_addr.unwrap(), b"plain")
        .await
        .unwrap_or_default();
    assert!(got.is_empty(), "per-port STRICT passed plaintext");
}

#[tokio::test]
async fn rotated_files_are_picked_up_without_dropping_open_connections() {
    use svidcar_identity::pem_source;
    let pki = Pki::new(TD);
    let server = start_server(&pki, echo_app().await, MtlsMode::Strict, |_| {}).await;
    let mut log = server.subscribe();
    // The client proxy's store is fed by the file watcher, as in `svidcar run`.
    let (mut cfg, _) = pki.identity("client", CLIENT_ID);
    let paths = cfg.pem_paths().unwrap();
    let store = svidcar_identity::CredentialStore::new();
    let cancel = tokio_util::sync::CancellationToken::new();
    let watcher = tokio::spawn(pem_source::watch(
        paths.clone(),
        store.clone(),
        svidcar_identity::tls::provider(),
        Duration::from_millis(50),
        cancel.clone(),
    ));
    cfg.inbound.enabled = false;
    cfg.outbound.mode = svidcar_proxy::config::Mode::Explicit;
    cfg.outbound.routes = vec![svidcar_proxy::config::Route {
        listen: localhost(),
        upstream: server.inbound_addr.unwrap(),
        server_id: id(SERVER_ID),
        tunnel: None,
    }];
    let client = svidcar_proxy::start(cfg, store.clone()).await.unwrap();
    let route = client.outbound_addrs[0];
    let serial = |s: &svidcar_identity::CredentialStore| s.latest().map(|c| c.leaf.serial.clone());
    wait_for("the initial load", Duration::from_secs(10), || {
        serial(&store).is_some()
    })
    .await;
    let before = serial(&store);

    let mut open = TcpStream::connect(route).await.unwrap();
    open.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    open.read_exact(&mut buf).await.unwrap();

    let rotated = pki.issue(CLIENT_ID);
    std::fs::write(&paths.key, &rotated.key_pem).unwrap();
    std::fs::write(&paths.cert, &rotated.cert_pem).unwrap();
    let now = wait_for(
        "the rotation to be picked up",
        Duration::from_secs(10),
        || {
            let now = serial(&store);
            (now != before).then_some(now)
        },
    )
    .await;
    assert_eq!(
        now.as_deref(),
        Some(
            svidcar_identity::check_leaf(&rotated.cert_der)
                .unwrap()
                .serial
                .as_str()
        )
    );

    // The connection opened before the rotation still carries bytes…
    open.write_all(b"after!").await.unwrap();
    open.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"after!");
    open.shutdown().await.unwrap();
    assert_eq!(next_record(&mut log).await.bytes_up, 12);
    // …and new connections handshake with the rotated SVID.
    assert_eq!(round_trip(route, b"new").await.unwrap(), b"new");
    assert_eq!(
        next_record(&mut log).await.client_id().map(|i| i.as_str()),
        Some(CLIENT_ID)
    );
    cancel.cancel();
    watcher.await.unwrap();
}

#[tokio::test]
async fn limits_idle_timeout_and_drain() {
    let app = echo_app().await;
    let pki = Pki::new(TD);
    let server = start_server(&pki, app, MtlsMode::Permissive, |c| {
        c.limits.max_connections = 1;
        c.limits.idle_timeout = Dur(Duration::from_millis(400));
        c.limits.drain_grace = Dur(Duration::from_millis(300));
    })
    .await;
    let inbound = server.inbound_addr.unwrap();
    let mut log = server.subscribe();

    // One connection is open; the second is over the limit.
    let mut first = TcpStream::connect(inbound).await.unwrap();
    first.write_all(b"hi").await.unwrap();
    let mut buf = [0u8; 2];
    first.read_exact(&mut buf).await.unwrap();
    let second = round_trip(inbound, b"x").await.unwrap_or_default();
    assert!(second.is_empty());
    let refused = next_record(&mut log).await;
    assert_eq!(refused.reason(), "max_connections");
    // The refusal names us on our side (inbound: the destination); the peer is unknown.
    assert_eq!(refused.server_id().map(|i| i.as_str()), Some(SERVER_ID));
    let metrics = || {
        server
            .metrics()
            .render(&svidcar_identity::CredentialStore::default())
    };
    let text = metrics();
    let line = text
        .lines()
        .find(|l| l.contains("reason=\"max_connections\""))
        .unwrap_or_else(|| panic!("no max_connections refusal counted:\n{text}"));
    assert!(
        line.contains(&format!("destination_id=\"{SERVER_ID}\""))
            && line.contains("source_id=\"unknown\"")
            && line.ends_with(" 1"),
        "{line}"
    );
    // The accepted connection is open; the refused one never counted.
    assert!(
        text.contains("svidcar_tcp_connections_open{direction=\"inbound\"} 1"),
        "{text}"
    );
    assert_eq!(server.open_connections(), 1);

    // Left idle, the first one is closed by the idle timeout.
    let rec = next_record(&mut log).await;
    assert_eq!(rec.outcome.as_str(), "idle_timeout");
    wait_for(
        "the open gauge to drop to 0",
        Duration::from_secs(2),
        || metrics().contains("svidcar_tcp_connections_open{direction=\"inbound\"} 0"),
    )
    .await;
    let mut rest = Vec::new();
    first.read_to_end(&mut rest).await.unwrap();

    // Drain: an open connection keeps working during the grace period, new ones are refused,
    // and what is still open when it ends is closed.
    let mut open = TcpStream::connect(inbound).await.unwrap();
    open.write_all(b"yo").await.unwrap();
    open.read_exact(&mut buf).await.unwrap();
    let drain = tokio::spawn(server.shutdown());
    tokio::time::sleep(Duration::from_millis(50)).await;
    open.write_all(b"ok").await.unwrap();
    open.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ok");
    assert!(
        TcpStream::connect(inbound).await.is_err(),
        "listener still accepting while draining"
    );
    tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .expect("drain finishes")
        .unwrap();
    let rec = next_record(&mut log).await;
    assert_eq!(rec.outcome.as_str(), "cancelled");
}

#[tokio::test]
async fn no_valid_svid_fails_closed() {
    let pki = Pki::new(TD);
    let app = echo_app().await;
    let server = start_server(&pki, app, MtlsMode::Strict, |_| {}).await;
    // A client whose store is empty refuses to originate mesh connections.
    let (mut cfg, _) = pki.identity("client", CLIENT_ID);
    cfg.inbound.enabled = false;
    cfg.outbound.mode = svidcar_proxy::config::Mode::Explicit;
    cfg.outbound.routes = vec![svidcar_proxy::config::Route {
        listen: localhost(),
        upstream: server.inbound_addr.unwrap(),
        server_id: id(SERVER_ID),
        tunnel: None,
    }];
    let empty = svidcar_identity::CredentialStore::new();
    let client = svidcar_proxy::start(cfg, empty).await.unwrap();
    let mut log = client.subscribe();
    assert!(round_trip(client.outbound_addrs[0], b"x")
        .await
        .unwrap_or_default()
        .is_empty());
    assert_eq!(next_record(&mut log).await.reason(), "no_local_svid");
}

/// Dialling the transparent listeners directly (no iptables redirect) must not loop back into
/// the proxy.
#[tokio::test]
async fn direct_connections_to_transparent_listeners_do_not_loop() {
    let pki = Pki::new(TD);
    let (mut cfg, store) = pki.identity("server", SERVER_ID);
    cfg.inbound.listen = localhost();
    cfg.inbound.mtls = MtlsMode::Permissive;
    cfg.outbound.listen = localhost();
    // A transparent inbound side serves tunnels too (by default on 0.0.0.0:15008).
    cfg.tunnel.listen = Some(localhost());
    let proxy = svidcar_proxy::start(cfg, store).await.unwrap();
    let mut log = proxy.subscribe();
    for addr in [proxy.inbound_addr.unwrap(), proxy.outbound_addrs[0]] {
        assert!(round_trip(addr, b"hello")
            .await
            .unwrap_or_default()
            .is_empty());
        let rec = next_record(&mut log).await;
        assert!(
            matches!(rec.reason(), "loop" | "no_original_dst"),
            "{addr}: {} {}",
            rec.reason(),
            rec.refusal
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default()
        );
    }
    assert_eq!(
        proxy.open_tasks(),
        3,
        "only the three accept loops are left"
    );
}

/// Every connection verifies a current SVID: the inbound never resumes a TLS session.
#[tokio::test]
async fn sessions_are_never_resumed() {
    use std::sync::Arc;
    let pki = Pki::new(TD);
    let server = start_server(&pki, echo_app().await, MtlsMode::Strict, |_| {}).await;
    let inbound = server.inbound_addr.unwrap();
    let svid = pki.issue(CLIENT_ID);
    let provider = svidcar_identity::tls::provider();
    // A client that would happily resume (rustls' default session cache), used twice. It skips
    // server verification: only the server's resumption behaviour is under test.
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer::new(provider)))
        .with_client_auth_cert(vec![svid.cert_der.clone()], svid.key_der())
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    for round in 0..2 {
        let tcp = TcpStream::connect(inbound).await.unwrap();
        let name = rustls::pki_types::ServerName::IpAddress(inbound.ip().into());
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(b"hi").await.unwrap();
        let mut b = [0u8; 2];
        tls.read_exact(&mut b).await.unwrap();
        assert_eq!(
            tls.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Full),
            "round {round}"
        );
        tls.shutdown().await.unwrap();
    }
}

/// The log lines (JSON) of a `svidcar` process written so far.
fn json_log(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn log_line(path: &std::path::Path, message_start: &str) -> Option<serde_json::Value> {
    json_log(path).into_iter().find(|l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(message_start))
    })
}

#[tokio::test]
async fn sigterm_says_what_the_drain_waits_for_and_a_second_one_ends_it() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    let app = echo_app().await;
    let pki = Pki::new(TD);
    let files = pki.write("server", &pki.issue(SERVER_ID));
    let log = pki.dir.path().join("svidcar.log");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_svidcar"))
        .args(["--log", "info", "--log-format", "json", "run"])
        .arg("--cert")
        .arg(&files.cert)
        .arg("--key")
        .arg(&files.key)
        .arg("--bundle")
        .arg(&files.bundle)
        .args(["--outbound-enabled", "false", "--admin-enabled", "false"])
        .args([
            "--inbound-mode",
            "explicit",
            "--inbound-listen",
            "127.0.0.1:0",
        ])
        .args(["--inbound-app", &app.to_string(), "--mtls", "permissive"])
        .args(["--detect-timeout", "100ms", "--drain-grace", "20s"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    let started = wait_for("the proxy to listen", Duration::from_secs(10), || {
        log_line(&log, "svidcar proxy listening")
    })
    .await;
    // `inbound` is logged as the address itself (`none` when off), never Rust's `Some(…)`.
    assert_eq!(started["admin"], "none", "{started}");
    let inbound: std::net::SocketAddr = started["inbound"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no inbound address in {started}"));

    // One idle connection, established through to the app.
    let mut idle = TcpStream::connect(inbound).await.unwrap();
    idle.write_all(b"hi").await.unwrap();
    let mut buf = [0u8; 2];
    idle.read_exact(&mut buf).await.unwrap();

    kill(pid, Signal::SIGTERM).unwrap();
    let sent = svidcar_identity::unix_now();
    let drain = wait_for("the drain to be logged", Duration::from_secs(5), || {
        log_line(&log, "draining")
    })
    .await;
    assert_eq!(drain["open"], 1, "{drain}");
    // The deadline is the grace period from now, as RFC 3339 UTC.
    let until = drain["until"].as_str().unwrap_or_default();
    let expected: Vec<String> = (sent + 18..=sent + 22)
        .map(svidcar_identity::format_unix)
        .collect();
    assert!(
        expected.iter().any(|e| e == until),
        "until {until}, expected one of {expected:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited before the grace period"
    );

    // A second SIGTERM ends the drain at once.
    let second = tokio::time::Instant::now();
    kill(pid, Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("the second SIGTERM ends the process well before the 20 s grace period")
        .unwrap();
    assert!(status.success(), "{status}");
    eprintln!("exited {:?} after the second SIGTERM", second.elapsed());
    assert!(second.elapsed() < Duration::from_secs(5));
    assert!(
        log_line(&log, "second shutdown signal").is_some(),
        "{:#?}",
        json_log(&log)
    );
    // The idle connection was closed, not left behind (EOF or reset, either is fine).
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(1), idle.read_to_end(&mut rest))
        .await
        .expect("the idle connection is closed")
        .ok();
}

/// The first bytes of a real ClientHello (rustls, mesh ALPN offered).
fn client_hello() -> Vec<u8> {
    let provider = svidcar_identity::tls::provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    cfg.alpn_protocols = vec![svidcar_identity::tls::MESH_ALPN.to_vec()];
    let name = rustls::pki_types::ServerName::try_from("server.example.org").unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

/// Half a ClientHello is TLS cut short, not plaintext: its own reason, whether the client
/// closes or goes silent; plaintext on the same STRICT port is still `plaintext_refused`.
#[tokio::test]
async fn a_cut_short_client_hello_is_not_called_plaintext() {
    let pki = Pki::new(TD);
    let server = start_server(&pki, echo_app().await, MtlsMode::Strict, |_| {}).await;
    let inbound = server.inbound_addr.unwrap();
    let mut log = server.subscribe();
    let hello = client_hello();
    let half = &hello[..hello.len() / 2];

    // Half, then close.
    let got = round_trip(inbound, half).await.unwrap_or_default();
    assert!(got.is_empty(), "bytes came back from a refused connection");
    let rec = next_record(&mut log).await;
    assert_eq!(
        (rec.outcome.as_str(), rec.reason()),
        ("refused", "truncated_client_hello")
    );

    // Half, then silence until the detect timeout.
    let mut silent = TcpStream::connect(inbound).await.unwrap();
    silent.write_all(half).await.unwrap();
    assert_eq!(
        next_record(&mut log).await.reason(),
        "truncated_client_hello"
    );
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut rest)).await;
    assert!(rest.is_empty());

    // Plaintext HTTP is still plaintext.
    let got = round_trip(inbound, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap_or_default();
    assert!(got.is_empty(), "STRICT passed plaintext through");
    assert_eq!(next_record(&mut log).await.reason(), "plaintext_refused");

    let text = server
        .metrics()
        .render(&svidcar_identity::CredentialStore::default());
    let closed = |reason: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("svidcar_tcp_connections_closed_total")
                    && l.contains(&format!("reason=\"{reason}\""))
            })
            .unwrap_or_else(|| panic!("no {reason} counted:\n{text}"))
            .to_owned()
    };
    assert!(closed("truncated_client_hello").ends_with(" 2"), "{text}");
    assert!(closed("plaintext_refused").ends_with(" 1"), "{text}");
}

/// A server proxy at `limits.max_connections` closes the excess connection before the
/// handshake; the client proxy says the peer refused it (not `io`) and answers an HTTP client
/// 503, while the server counts `max_connections`.
#[tokio::test]
async fn the_client_sees_a_capacity_refusal_as_peer_refused() {
    let pki = Pki::new(TD);
    let server = start_server(&pki, echo_app().await, MtlsMode::Strict, |c| {
        c.limits.max_connections = 1;
    })
    .await;
    let client = start_client(&pki, server.inbound_addr.unwrap(), SERVER_ID, |_| {}).await;
    let route = client.outbound_addrs[0];
    let mut client_log = client.subscribe();
    let mut server_log = server.subscribe();

    // One mesh connection holds the server's only slot.
    let mut held = TcpStream::connect(route).await.unwrap();
    held.write_all(b"hold").await.unwrap();
    let mut buf = [0u8; 4];
    held.read_exact(&mut buf).await.unwrap();

    let got = round_trip(route, b"over the limit")
        .await
        .unwrap_or_default();
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(
        next_record(&mut server_log).await.reason(),
        "max_connections"
    );
    let rec = next_record(&mut client_log).await;
    assert_eq!(
        (rec.outcome.as_str(), rec.reason()),
        ("refused", "peer_refused"),
        "detail: {}",
        rec.refusal
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    let detail = rec
        .refusal
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    assert!(detail.contains("connection limit"), "{detail}");

    // An HTTP client gets a response that says so.
    let answer = round_trip(
        route,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap_or_default();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("svidcar-proxy-error: peer refused") && answer.contains("connection limit"),
        "{answer}"
    );

    let text = client
        .metrics()
        .render(&svidcar_identity::CredentialStore::default());
    assert!(
        text.lines()
            .any(|l| l.starts_with("svidcar_tls_handshake_failures_total")
                && l.contains("reason=\"peer_refused\"")),
        "{text}"
    );
    assert!(!text.lines().any(|l| l.contains("reason=\"io\"")), "{text}");
    drop(held);
}
