//! Pooled tunnels between sidecars, end to end on loopback with real handshakes: app
//! connections ride HTTP/2 `CONNECT` streams of one pooled mTLS connection, byte-exact with
//! half-close; streams spread over more connections at `tunnel.max_streams` and idle ones
//! close; a peer without a tunnel port is reached directly; secure naming, policy and
//! rotation apply per stream.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;
use svidcar_identity::CredentialStore;
use svidcar_proxy::config::{Dur, MtlsMode, ProxyConfig};
use svidcar_proxy::ProxyHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The value of the sample `series` (name and labels as rendered), 0 when absent.
fn metric(proxy: &ProxyHandle, series: &str) -> f64 {
    let text = proxy.metrics().render(&CredentialStore::new());
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn tunnels(proxy: &ProxyHandle, side: &str) -> f64 {
    metric(
        proxy,
        &format!("svidcar_tunnel_connections{{side=\"{side}\"}}"),
    )
}

/// A pair whose route rides the server's tunnel, with `tweak` applied to both configs.
async fn tunnel_pair(app: std::net::SocketAddr, tweak: fn(&mut ProxyConfig)) -> Pair {
    Pair::build(app, |b| {
        b.tunnel(true).server_config(tweak).client_config(tweak)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connections_ride_one_pooled_connection_byte_exactly() {
    let pair = tunnel_pair(echo_app().await, |_| {}).await;
    let mut server_log = pair.server.subscribe();
    let sizes = [0usize, 1, 1000, 65_543, (1 << 20) + 3, 8 << 20];
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let len = sizes[i % sizes.len()];
            let route = pair.route;
            tokio::spawn(async move {
                let data = payload(len, i as u64 + 11);
                let got = round_trip(route, &data).await.expect("round trip");
                assert!(got == data, "connection {i}: {len} bytes differ");
                len as u64
            })
        })
        .collect();
    let mut expected = Vec::new();
    for t in tasks {
        expected.push(t.await.unwrap());
    }
    let mut seen = Vec::new();
    for _ in 0..40 {
        let rec = next_record(&mut server_log).await;
        assert_eq!(rec.carrier.as_str(), "tunnel");
        assert_eq!(rec.outcome.as_str(), "complete", "{rec:?}");
        assert_eq!(rec.tls.mode(), "mutual_tls");
        assert_eq!(rec.client_id().map(|i| i.as_str()), Some(CLIENT_ID));
        assert_eq!(rec.server_id().map(|i| i.as_str()), Some(SERVER_ID));
        assert_eq!(rec.bytes_up, rec.bytes_down);
        seen.push(rec.bytes_up);
    }
    expected.sort_unstable();
    seen.sort_unstable();
    assert_eq!(seen, expected);
    // 40 connections, one handshake: one pooled connection on each side.
    assert_eq!(tunnels(&pair.client, "client"), 1.0);
    assert_eq!(tunnels(&pair.server, "server"), 1.0);
    assert_eq!(
        metric(
            &pair.client,
            "svidcar_tunnel_streams_total{side=\"client\"}"
        ),
        40.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_is_carried_in_both_orders() {
    // Client first: the app answers only after the client's end of stream.
    let pair = tunnel_pair(answer_after_eof_app(b"late answer").await, |_| {}).await;
    let got = round_trip(pair.route, b"question").await.unwrap();
    assert_eq!(got, b"got 8 bytes; late answer");

    // Server first: the app sends a banner and ends its side, then still reads.
    let l = TcpListener::bind(localhost()).await.unwrap();
    let app = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(b"banner").await.unwrap();
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        let _ = tx.send(rest);
    });
    let pair = tunnel_pair(app, |_| {}).await;
    let mut s = TcpStream::connect(pair.route).await.unwrap();
    let mut banner = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut banner))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(banner, b"banner");
    // Our direction is still open.
    s.write_all(b"after the server's end").await.unwrap();
    s.shutdown().await.unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest, b"after the server's end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_spread_at_max_streams_and_idle_connections_close() {
    let pair = tunnel_pair(echo_app().await, |c| {
        c.tunnel.max_streams = 4;
        c.tunnel.idle_timeout = Dur(Duration::from_millis(300));
    })
    .await;
    let mut open = Vec::new();
    for i in 0..10u8 {
        let mut s = TcpStream::connect(pair.route).await.unwrap();
        s.write_all(&[i]).await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(b[0], i);
        open.push(s);
    }
    assert_eq!(tunnels(&pair.client, "client"), 3.0, "10 streams, 4 each");
    assert_eq!(tunnels(&pair.server, "server"), 3.0);
    drop(open);
    wait_until("idle tunnels to close", Duration::from_secs(10), || async {
        tunnels(&pair.client, "client") == 0.0 && tunnels(&pair.server, "server") == 0.0
    })
    .await;
    // And a new connection opens a new one.
    assert_eq!(round_trip(pair.route, b"again").await.unwrap(), b"again");
    assert_eq!(tunnels(&pair.client, "client"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_a_usable_tunnel_is_reached_directly() {
    let app = echo_app().await;
    let pki = Pki::new(TD);
    let server = start_server(&pki, app, MtlsMode::Strict, |_| {}).await;
    let inbound = server.inbound_addr.unwrap();
    let mut server_log = server.subscribe();
    // Nothing listens on the route's tunnel port: connect refused.
    let closed = TcpListener::bind(localhost())
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    // The server's inbound port speaks mTLS but not HTTP/2: no ALPN h2.
    for (tunnel, reason) in [(closed, "connect"), (inbound, "protocol")] {
        let client = start_client(&pki, inbound, SERVER_ID, |c| {
            c.outbound.routes[0].tunnel = Some(tunnel);
        })
        .await;
        let route = client.outbound_addrs[0];
        for i in 0..3u64 {
            let data = payload(70_000, i);
            assert!(round_trip(route, &data).await.unwrap() == data);
            let rec = loop {
                // The inbound port also records the refused tunnel attempt.
                let rec = next_record(&mut server_log).await;
                if rec.outcome.as_str() == "complete" {
                    break rec;
                }
            };
            assert_eq!(rec.carrier.as_str(), "connection");
            assert_eq!(rec.client_id().map(|i| i.as_str()), Some(CLIENT_ID));
        }
        // Tried once, then remembered for `tunnel.retry_after`.
        assert_eq!(
            metric(
                &client,
                &format!("svidcar_tunnel_fallbacks_total{{reason=\"{reason}\"}}")
            ),
            1.0,
            "{reason}"
        );
        assert_eq!(tunnels(&client, "client"), 0.0);
        client.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_server_with_the_wrong_identity_carries_nothing() {
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let l = TcpListener::bind(localhost()).await.unwrap();
    let app = l.local_addr().unwrap();
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = l.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let pki = Pki::new(TD);
    let server = start_server(&pki, app, MtlsMode::Strict, |c| {
        c.tunnel.listen = Some(localhost());
    })
    .await;
    let tunnel = server.tunnel_addr.unwrap();
    let other = "spiffe://example.org/ns/default/sa/other";
    let client = start_client(&pki, server.inbound_addr.unwrap(), other, |c| {
        c.outbound.routes[0].tunnel = Some(tunnel);
    })
    .await;
    let mut log = client.subscribe();
    let got = round_trip(client.outbound_addrs[0], b"secret").await;
    assert!(got.map(|b| b.is_empty()).unwrap_or(true));
    let rec = next_record(&mut log).await;
    assert_eq!(rec.reason(), "unexpected_spiffe_id", "{rec:?}");
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(tunnels(&client, "client"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_is_decided_per_stream_with_the_pooled_identity() {
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(
        policies.path().join("deny.yaml"),
        format!(
            "kind: AuthorizationPolicy\nname: deny-client\naction: DENY\nrules:\n  - from: [{{ principals: [{CLIENT_ID}] }}]\n    to: [{{ ports: [9] }}]\n"
        ),
    )
    .unwrap();
    let app = echo_app().await;
    let dir = policies.path().to_owned();
    let pki = Pki::new(TD);
    let server = start_server(&pki, app, MtlsMode::Strict, |c| {
        c.tunnel.listen = Some(localhost());
        c.policy.dir = Some(dir);
    })
    .await;
    wait_for("the policy to load", Duration::from_secs(5), || {
        server.authz().version().is_some()
    })
    .await;
    let mut log = server.subscribe();
    let tunnel = server.tunnel_addr.unwrap();
    // Port 9 is denied; the app's own port is not.
    let client = start_client(&pki, server.inbound_addr.unwrap(), SERVER_ID, |c| {
        c.outbound.routes[0].tunnel = Some(tunnel);
    })
    .await;
    let route = client.outbound_addrs[0];
    assert_eq!(round_trip(route, b"allowed").await.unwrap(), b"allowed");
    let rec = next_record(&mut log).await;
    assert_eq!(
        (rec.carrier.as_str(), rec.outcome.as_str()),
        ("tunnel", "complete")
    );
    // A policy edit denies the client on the app's port: the next stream is refused with the
    // pooled connection's identity, while the pooled connection stays.
    std::fs::write(
        policies.path().join("deny.yaml"),
        format!(
            "kind: AuthorizationPolicy\nname: deny-client\naction: DENY\nrules:\n  - from: [{{ principals: [{CLIENT_ID}] }}]\n    to: [{{ ports: [{}] }}]\n",
            app.port()
        ),
    )
    .unwrap();
    let v0 = server.authz().version();
    wait_for("the edit to load", Duration::from_secs(5), || {
        server.authz().version() != v0
    })
    .await;
    let got = round_trip(route, b"denied").await.unwrap_or_default();
    assert!(got.is_empty(), "{got:?}");
    let rec = next_record(&mut log).await;
    assert_eq!(rec.carrier.as_str(), "tunnel");
    assert_eq!(rec.reason(), "policy_denied", "{rec:?}");
    assert_eq!(rec.client_id().map(|i| i.as_str()), Some(CLIENT_ID));
    assert_eq!(tunnels(&client, "client"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rotation_new_streams_use_a_new_connection_and_the_old_one_drains() {
    let app = echo_app().await;
    let pki = Pki::new(TD);
    let server = start_server(&pki, app, MtlsMode::Strict, |c| {
        c.tunnel.listen = Some(localhost());
    })
    .await;
    let mut log = server.subscribe();
    let mut cfg = svidcar_testkit::client_config(server.inbound_addr.unwrap(), id(SERVER_ID), true);
    cfg.outbound.routes[0].tunnel = server.tunnel_addr;
    // The sweeper (every half idle timeout) closes a drained connection.
    cfg.tunnel.idle_timeout = Dur(Duration::from_secs(1));
    let client_id = id(CLIENT_ID);
    let store = svidcar_testkit::store(&pki.ca, &client_id).unwrap();
    let client = svidcar_proxy::start(cfg, store.clone()).await.unwrap();
    let route = client.outbound_addrs[0];

    let mut old = TcpStream::connect(route).await.unwrap();
    old.write_all(b"old").await.unwrap();
    let mut b = [0u8; 3];
    old.read_exact(&mut b).await.unwrap();
    let first_serial = store.current().unwrap().leaf.serial.clone();

    let rotated = pki.issue(CLIENT_ID);
    store.set(svidcar_testkit::credentials(&pki.ca, &rotated).unwrap());
    let new_serial = store.current().unwrap().leaf.serial.clone();
    assert_ne!(first_serial, new_serial);
    assert_eq!(round_trip(route, b"new").await.unwrap(), b"new");
    let rec = next_record(&mut log).await;
    let new_serial = svidcar_identity::tls::CertSerial::parse(&new_serial).unwrap();
    assert_eq!(rec.tls.peer_serial(), Some(&new_serial));
    assert_eq!(
        tunnels(&client, "client"),
        2.0,
        "the old one still carries a stream"
    );
    // The old stream still works, then ends; its connection closes.
    old.write_all(b"still").await.unwrap();
    let mut b = [0u8; 5];
    old.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"still");
    drop(old);
    wait_until(
        "the old connection to drain",
        Duration::from_secs(10),
        || async { tunnels(&client, "client") == 1.0 && tunnels(&server, "server") == 1.0 },
    )
    .await;
}

/// A keep-alive HTTP/1.1 app that keeps every request it received (head and body, as bytes)
/// and answers each `200 ok`.
async fn recording_app() -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    let l = TcpListener::bind(localhost()).await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let keep = keep.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < end + 4 + len {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    keep.lock()
                        .unwrap()
                        .push(buf.drain(..end + 4 + len).collect());
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if s.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Sends `raw` (one or more requests) on a new connection and reads until the server closes.
async fn exchange(route: std::net::SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(route).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut resp))
        .await
        .expect("the responses within 10 s")
        .unwrap();
    String::from_utf8_lossy(&resp).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_requests_ride_the_pooled_connection_as_requests_and_arrive_as_sent() {
    let (app, seen) = recording_app().await;
    let pair = tunnel_pair(app, |_| {}).await;
    let mut client_log = pair.client.subscribe();
    // Two requests on one client connection; the first names a destination of its own in the
    // tunnel's header, which must neither steer it nor reach the app.
    let resp = exchange(
        pair.route,
        b"POST /echo?q=%2e1 HTTP/1.1\r\nHost: app.example:8080\r\nX-Trace: abc\r\n\
          svidcar-dst: 6.6.6.6:1\r\nsvidcar-orig-proto: HTTP/2\r\ncontent-length: 5\r\n\r\nhello\
          GET /two HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.matches("HTTP/1.1 200 OK").count(), 2, "{resp}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let first = String::from_utf8_lossy(&seen[0]).into_owned();
    let lines: Vec<&str> = first.split("\r\n").collect();
    assert_eq!(lines[0], "POST /echo?q=%2e1 HTTP/1.1", "{first}");
    assert!(lines.contains(&"host: app.example:8080"), "{first}");
    assert!(lines.contains(&"x-trace: abc"), "{first}");
    assert!(
        lines.contains(&format!("x-svidcar-client-id: {CLIENT_ID}").as_str()),
        "{first}"
    );
    assert!(
        !first.contains("svidcar-dst") && !first.contains("svidcar-orig-proto"),
        "{first}"
    );
    assert!(first.ends_with("\r\n\r\nhello"), "{first}");
    let second = String::from_utf8_lossy(&seen[1]).into_owned();
    assert!(second.starts_with("GET /two HTTP/1.1\r\n"), "{second}");
    assert!(second.contains("\r\nhost: app\r\n"), "{second}");
    // Two requests, two HTTP/2 streams of one pooled connection; no `CONNECT` stream.
    let rec = next_record(&mut client_log).await;
    assert_eq!(rec.carrier.as_str(), "tunnel", "{rec:?}");
    assert_eq!(tunnels(&pair.client, "client"), 1.0);
    let streams = |p: &ProxyHandle, side: &str| {
        metric(
            p,
            &format!("svidcar_tunnel_streams_total{{side=\"{side}\"}}"),
        )
    };
    assert_eq!(streams(&pair.client, "client"), 2.0);
    assert_eq!(streams(&pair.server, "server"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_be_rewritten_exactly_rides_a_stream_as_bytes() {
    let (app, seen) = recording_app().await;
    let pair = tunnel_pair(app, |_| {}).await;
    // HTTP/1.0 and the absolute form are carried as the client's bytes in a CONNECT stream.
    let resp = exchange(pair.route, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert!(
        resp.starts_with("HTTP/1.1 200 OK") || resp.starts_with("HTTP/1.0 200 OK"),
        "{resp}"
    );
    let resp = exchange(
        pair.route,
        b"GET http://app.example/abs HTTP/1.1\r\nhost: app.example\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
    let seen = seen.lock().unwrap().clone();
    let lines: Vec<String> = seen
        .iter()
        .map(|r| {
            String::from_utf8_lossy(r)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(
        lines,
        ["GET /old HTTP/1.0", "GET http://app.example/abs HTTP/1.1"],
        "{seen:?}"
    );
    assert_eq!(tunnels(&pair.client, "client"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_ride_the_pooled_connection_with_their_trailers() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, StreamBody};
    use hyper::body::Frame;
    // An HTTP/2 app answering with its request's path and version, then a trailer.
    let l = TcpListener::bind(localhost()).await.unwrap();
    let app = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let said = format!("{} {:?}", req.uri().path(), req.version());
                        let mut trailers = hyper::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        let frames = vec![
                            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(said))),
                            Ok(Frame::trailers(trailers)),
                        ];
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(StreamBody::new(
                            futures_util::stream::iter(frames),
                        )))
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), service)
                        .await;
            });
        }
    });
    let pair = tunnel_pair(app, |_| {}).await;
    let tcp = TcpStream::connect(pair.route).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let mut sender = sender.clone();
            tokio::spawn(async move {
                let req = hyper::Request::post(format!("http://app/svc/Call{i}"))
                    .header("content-type", "application/grpc")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let resp = sender.send_request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                let body = resp.into_body().collect().await.unwrap();
                let trailers = body.trailers().cloned().expect("trailers");
                assert_eq!(trailers["grpc-status"], "0");
                (i, String::from_utf8_lossy(&body.to_bytes()).into_owned())
            })
        })
        .collect();
    for call in calls {
        let (i, said) = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert_eq!(said, format!("/svc/Call{i} HTTP/2.0"));
    }
    assert_eq!(tunnels(&pair.client, "client"), 1.0);
    assert_eq!(
        metric(
            &pair.server,
            "svidcar_tunnel_streams_total{side=\"server\"}"
        ),
        3.0
    );
}

/// A keep-alive HTTP/1.1 app answering `200 ok`; counts the TCP connections it accepted.
async fn keep_alive_app() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use hyper::{Request, Response};
    let l = TcpListener::bind(localhost()).await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
                        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                            bytes::Bytes::from_static(b"ok"),
                        )))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), service)
                    .await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_per_request_client_costs_no_handshake_and_no_app_connection() {
    let (app, accepted) = keep_alive_app().await;
    let pair = tunnel_pair(app, |_| {}).await;
    // 8 clients, 1 200 connections in all (past the 1 024 resets HTTP/2 tolerates per
    // connection by default, should short-lived streams be reset rather than ended).
    let route = pair.route;
    let workers: Vec<_> = (0..8)
        .map(|w| {
            tokio::spawn(async move {
                for i in 0..150 {
                    let mut s = TcpStream::connect(route).await.unwrap();
                    s.write_all(b"GET /n HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n")
                        .await
                        .unwrap();
                    let mut resp = Vec::new();
                    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut resp))
                        .await
                        .unwrap()
                        .unwrap();
                    let resp = String::from_utf8_lossy(&resp);
                    assert!(
                        resp.starts_with("HTTP/1.1 200") && resp.ends_with("ok"),
                        "worker {w}, request {i}: {resp}"
                    );
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    // 1 200 client connections: one pooled mTLS connection between the sidecars, and the app
    // saw at most one keep-alive connection per concurrent client from the inbound side.
    assert_eq!(tunnels(&pair.client, "client"), 1.0);
    assert_eq!(
        metric(
            &pair.client,
            "svidcar_tunnel_streams_total{side=\"client\"}"
        ),
        1200.0
    );
    let app_conns = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=8).contains(&app_conns), "{app_conns} app connections");
}
