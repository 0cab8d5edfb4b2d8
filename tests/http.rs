//! The HTTP-aware inbound end to end, with clients and servers we did not write: curl (HTTP/1.1
//! and HTTP/2 with prior knowledge), Python's http.server and Hypercorn, grpcio, websockets.
//! Each test runs app client → client proxy route → mTLS → server proxy (STRICT) → app on
//! loopback: per-request policy on method and path (403 with `svidcar-proxy-error`, gRPC
//! PERMISSION_DENIED), the verified caller ID in `x-svidcar-client-id` whatever the caller sent,
//! WebSocket upgrades, server-first protocols on opaque ports, and the per-request metrics.
//!
//! The Python packages are installed by `tests/run.sh` (grpcio, websockets, hypercorn,
//! prometheus_client).

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;
use svidcar_proxy::config::{Dur, MtlsMode, ProxyConfig};
use svidcar_testkit::{Pair, PairBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Allows the client `GET /api/*` only, and denies it `POST /admin` outright.
fn api_policy() -> String {
    format!(
        "kind: AuthorizationPolicy\nname: api-readers\nselector: [{SERVER_ID}]\naction: ALLOW\nrules:\n  - from: [{{ principals: [{CLIENT_ID}] }}]\n    to: [{{ methods: [GET], paths: [/api/*] }}]\n---\nkind: AuthorizationPolicy\nname: no-admin-posts\naction: DENY\nrules:\n  - from: [{{ principals: [{CLIENT_ID}] }}]\n    to: [{{ methods: [POST], paths: [/admin] }}]\n"
    )
}

/// Allows the client every method of `echo.Echo` but denies `/echo.Echo/Forbidden`.
fn grpc_policy() -> String {
    format!(
        "kind: AuthorizationPolicy\nname: echo-callers\nselector: [{SERVER_ID}]\naction: ALLOW\nrules:\n  - from: [{{ principals: [{CLIENT_ID}] }}]\n    to: [{{ methods: [POST], paths: [/echo.Echo/*] }}]\n---\nkind: AuthorizationPolicy\nname: no-forbidden\naction: DENY\nrules:\n  - to: [{{ paths: [/echo.Echo/Forbidden] }}]\n"
    )
}

/// Sets the server's `http` config section from YAML-equivalent JSON (e.g. `{"xfcc": true}`).
/// Through serde, as a config file would, so this file compiles before the typed section exists.
fn http_section(cfg: &mut ProxyConfig, section: Value) {
    let mut whole = serde_json::to_value(&*cfg).expect("config serializes");
    whole["http"] = section;
    *cfg = serde_json::from_value(whole)
        .unwrap_or_else(|e| panic!("the `http` config section (HTTP-aware mesh): {e}"));
}

/// A pair in front of `app` whose server takes its policy from a directory holding `policy`;
/// returns once the policy is loaded. The directory must outlive the pair.
async fn pair_with_policy(app: std::net::SocketAddr, policy: &str, dir: &Path) -> Pair {
    std::fs::write(dir.join("policy.yaml"), policy).unwrap();
    let dir = dir.to_owned();
    let pair = PairBuilder::new(app)
        .admin(true)
        .server_config(move |c| {
            c.policy.dir = Some(dir);
            c.policy.reload_interval = Dur(Duration::from_millis(100));
        })
        .start()
        .await
        .expect("proxy pair");
    wait_for("the policy to load", Duration::from_secs(10), || {
        pair.server.authz().version().is_some()
    })
    .await;
    pair
}

/// http.server behind a pair whose server enforces [`api_policy`] (the directory must outlive
/// the pair).
async fn api_pair() -> (ToolServer, tempfile::TempDir, Pair) {
    let app = ToolServer::start("http_echo.py", &[]).await;
    let policies = tempfile::tempdir().unwrap();
    let pair = pair_with_policy(app.addr, &api_policy(), policies.path()).await;
    (app, policies, pair)
}

fn url(addr: std::net::SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// curl's `-w` line after the body: status, HTTP version, new connections made.
const WRITE_OUT: &str = "\n--curl-- %{http_code} %{http_version} %{num_connects}\n";

/// Splits curl output made with [`WRITE_OUT`] into the JSON body the echo app sent and
/// (status, HTTP version, connections made).
fn echo_reply(out: &str) -> (Value, (String, String, String)) {
    let (body, info) = out.rsplit_once("\n--curl-- ").expect("curl write-out");
    let mut f = info.split_whitespace().map(str::to_owned);
    let info = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    (body, info)
}

/// The values of header `name` the app received, in order.
fn header(body: &Value, name: &str) -> Vec<String> {
    body["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .filter(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
        .map(|h| h[1].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until the app has printed `line` (bounded), then returns all its lines.
async fn app_saw(app: &ToolServer, line: &str) -> Vec<String> {
    wait_for(
        &format!("the app to print {line:?}"),
        Duration::from_secs(10),
        || app.lines().iter().any(|l| l == line),
    )
    .await;
    app.lines()
}

/// The server proxy's `/metrics`, parsed by the official Prometheus client.
async fn scrape(pair: &Pair) -> Vec<Sample> {
    let admin = pair.server.admin_addr.expect("admin listener");
    parse_metrics(&curl(&[&url(admin, "/metrics")]).await).await
}

/// Scrapes the server proxy (bounded) until the samples of `name` with `labels` add up to at
/// least `at_least`; returns that scrape.
async fn scrape_until(
    pair: &Pair,
    name: &str,
    labels: &[(&str, &str)],
    at_least: f64,
) -> Vec<Sample> {
    wait_until(
        &format!("{name}{labels:?} to reach {at_least}"),
        Duration::from_secs(10),
        || async move {
            let s = scrape(pair).await;
            (total(&s, name, labels) >= at_least).then_some(s)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http1_and_http2_prior_knowledge_reach_third_party_servers_through_the_mesh() {
    // HTTP/1.1: curl → mesh → Python's http.server; HTTP/2 with prior knowledge (h2c):
    // curl → mesh → Hypercorn.
    let cases: [(&[&str], &str, &str, &str); 2] = [
        (&[], "--http1.1", "/hello?x=1", "1.1"),
        (&["--h2"], "--http2-prior-knowledge", "/over/h2", "2"),
    ];
    for (server_args, curl_flag, path, version) in cases {
        let app = ToolServer::start("http_echo.py", server_args).await;
        let pair = PairBuilder::new(app.addr).start().await.unwrap();
        let target = url(pair.route, path);
        let out = curl(&[curl_flag, "-H", "x-test: one", &target, "-w", WRITE_OUT]).await;
        let (body, (status, got_version, _)) = echo_reply(&out);
        assert_eq!(
            (status.as_str(), got_version.as_str()),
            ("200", version),
            "{out}"
        );
        assert_eq!(body["method"], "GET");
        assert_eq!(body["path"], path);
        assert_eq!(header(&body, "x-test"), ["one"]);
        assert_eq!(header(&body, "x-svidcar-client-id"), [CLIENT_ID], "{body}");
        pair.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_allows_get_and_denies_post_per_request_on_one_connection() {
    let (app, _policies, pair) = api_pair().await;
    let files = tempfile::tempdir().unwrap();
    let file = |name: &str| files.path().join(name).to_str().unwrap().to_owned();
    let line = "%{http_code} %{num_connects}\n";

    // One curl, three requests: an allowed GET, a denied POST on the same connection, then a
    // GET that must still work (on whatever connection).
    let out = curl(&[
        &url(pair.route, "/api/items"),
        "-D",
        &file("h1"),
        "-o",
        &file("b1"),
        "-w",
        line,
        "--next",
        "-X",
        "POST",
        "-d",
        "secret=1",
        &url(pair.route, "/admin"),
        "-D",
        &file("h2"),
        "-o",
        &file("b2"),
        "-w",
        line,
        "--next",
        &url(pair.route, "/api/after"),
        "-o",
        &file("b3"),
        "-w",
        line,
    ])
    .await;
    let results: Vec<&str> = out.lines().collect();
    assert_eq!(results.len(), 3, "{out}");
    assert_eq!(results[0], "200 1", "the GET is allowed: {out}");
    assert_eq!(
        results[1], "403 0",
        "the POST is denied on the reused connection: {out}"
    );
    assert!(
        results[2].starts_with("200 "),
        "a GET after the denial: {out}"
    );

    let head = std::fs::read_to_string(file("h2")).unwrap();
    let error = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("svidcar-proxy-error")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no svidcar-proxy-error header: {head}"));
    assert!(error.starts_with("policy denied: "), "{error}");
    let denied = std::fs::read_to_string(file("b2")).unwrap();
    assert!(
        !denied.trim().is_empty() && denied.trim_end().lines().count() == 1,
        "a one-line body: {denied:?}"
    );
    let allowed: Value =
        serde_json::from_str(&std::fs::read_to_string(file("b1")).unwrap()).unwrap();
    assert_eq!(header(&allowed, "x-svidcar-client-id"), [CLIENT_ID]);

    let seen = app_saw(&app, "SEEN GET /api/after").await;
    assert_eq!(
        seen,
        ["SEEN GET /api/items", "SEEN GET /api/after"],
        "the app never sees the POST"
    );
    pair.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofed_client_id_is_replaced_by_the_verified_one_and_xfcc_is_dropped() {
    let app = ToolServer::start("http_echo.py", &[]).await;
    let spoof = [
        "-H",
        "x-svidcar-client-id: spiffe://example.org/evil",
        "-H",
        "X-Svidcar-Client-Id: spiffe://example.org/evil2",
        "-H",
        "x-forwarded-client-cert: URI=spiffe://evil",
    ];

    // Over the mesh: exactly the verified caller, no XFCC (off by default).
    let pair = PairBuilder::new(app.addr).start().await.unwrap();
    let mut args = spoof.to_vec();
    let target = url(pair.route, "/whoami");
    args.extend(["--http1.1", &target, "-w", WRITE_OUT]);
    let (body, (status, ..)) = echo_reply(&curl(&args).await);
    assert_eq!(status, "200");
    assert_eq!(header(&body, "x-svidcar-client-id"), [CLIENT_ID], "{body}");
    assert!(
        header(&body, "x-forwarded-client-cert").is_empty(),
        "{body}"
    );
    pair.shutdown().await;

    // Plaintext on a PERMISSIVE port: the spoofed copies are removed and nothing is set.
    let pair = PairBuilder::new(app.addr)
        .server_config(|c| c.inbound.mtls = MtlsMode::Permissive)
        .start()
        .await
        .unwrap();
    let mut args = spoof.to_vec();
    let target = url(pair.inbound, "/plain");
    args.extend(["--http1.1", &target, "-w", WRITE_OUT]);
    let (body, (status, ..)) = echo_reply(&curl(&args).await);
    assert_eq!(status, "200");
    assert!(header(&body, "x-svidcar-client-id").is_empty(), "{body}");
    assert!(
        header(&body, "x-forwarded-client-cert").is_empty(),
        "{body}"
    );
    pair.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfcc_and_a_custom_client_id_header_carry_the_verified_id_when_configured() {
    let app = ToolServer::start("http_echo.py", &[]).await;
    let pair = PairBuilder::new(app.addr)
        .server_config(|c| {
            http_section(c, json!({ "xfcc": true, "client_id_header": "x-caller" }));
        })
        .start()
        .await
        .unwrap();
    let target = url(pair.route, "/whoami");
    let out = curl(&[
        "-H",
        "x-caller: spiffe://example.org/evil",
        "-H",
        "x-forwarded-client-cert: URI=spiffe://evil",
        &target,
        "-w",
        WRITE_OUT,
    ])
    .await;
    let (body, (status, ..)) = echo_reply(&out);
    assert_eq!(status, "200");
    assert_eq!(header(&body, "x-caller"), [CLIENT_ID], "{body}");
    assert_eq!(
        header(&body, "x-forwarded-client-cert"),
        [format!("URI={CLIENT_ID}")],
        "{body}"
    );
    pair.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_are_authorized_per_method_and_keep_their_trailers() {
    let app = ToolServer::start("grpc_echo.py", &["server"]).await;
    let policies = tempfile::tempdir().unwrap();
    let pair = pair_with_policy(app.addr, &grpc_policy(), policies.path()).await;

    let out = run_ok(
        "python3",
        &[&tool("grpc_echo.py"), "client", &pair.route.to_string()],
    )
    .await;
    let calls: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let call = |name: &str| {
        calls
            .iter()
            .find(|c| c["call"] == name)
            .unwrap_or_else(|| panic!("no {name} call in {out}"))
    };
    let unary = call("Unary");
    assert_eq!(unary["code"], "OK", "{unary}");
    assert_eq!(unary["replies"], json!(["ping"]));
    assert_eq!(unary["trailers"]["x-echo-trailer"], "kept", "{unary}");
    let stream = call("Stream");
    assert_eq!(stream["code"], "OK", "{stream}");
    assert_eq!(stream["replies"], json!(["a", "b", "c"]));
    assert_eq!(stream["trailers"]["x-echo-trailer"], "kept", "{stream}");
    let denied = call("Forbidden");
    assert_eq!(denied["code"], "PERMISSION_DENIED", "{denied}");
    assert!(
        !denied["details"].as_str().unwrap_or_default().is_empty(),
        "a grpc-message: {denied}"
    );

    let seen = app_saw(&app, "SEEN /echo.Echo/Stream").await;
    assert!(
        !seen.iter().any(|l| l.contains("Forbidden")),
        "the app never sees the denied call: {seen:?}"
    );

    // The gRPC status is in the request metrics.
    let inbound = [("direction", "inbound"), ("source_id", CLIENT_ID)];
    let samples = scrape_until(&pair, "svidcar_http_requests_total", &inbound, 3.0).await;
    let grpc = |code: &str| {
        total(
            &samples,
            "svidcar_http_requests_total",
            &[inbound[0], inbound[1], ("grpc_status", code)],
        )
    };
    assert_eq!((grpc("0"), grpc("7")), (2.0, 1.0));
    pair.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_passes_through_and_carries_messages() {
    let app = ToolServer::start("ws_echo.py", &["server"]).await;
    let pair = PairBuilder::new(app.addr).start().await.unwrap();
    let out = run_ok(
        "python3",
        &[
            &tool("ws_echo.py"),
            "client",
            &format!("ws://{}/chat", pair.route),
            "hello through the mesh",
        ],
    )
    .await;
    let reply: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(reply["echo"], "hello through the mesh");
    assert_eq!(
        reply["client_id"], CLIENT_ID,
        "the upgrade request carries the verified ID"
    );
    pair.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_first_protocol_on_an_opaque_port_gets_its_banner_without_delay() {
    let app = ToolServer::start("banner.py", &[]).await;
    let mut ports = serde_json::Map::new();
    ports.insert(app.addr.port().to_string(), json!("opaque"));
    // The client's route is marked opaque too (by its listen port): its outbound side must
    // not wait for the client either.
    let route_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut client_ports = serde_json::Map::new();
    client_ports.insert(route_port.to_string(), json!("opaque"));
    // The detect timeout stays at its default (1 s): a banner held back by detection shows.
    let pair = PairBuilder::new(app.addr)
        .server_config(move |c| http_section(c, json!({ "port_protocol": ports })))
        .client_config(move |c| {
            c.outbound.routes[0].listen.set_port(route_port);
            http_section(c, json!({ "port_protocol": client_ports }));
        })
        .start()
        .await
        .unwrap();

    let start = Instant::now();
    let mut s = TcpStream::connect(pair.route).await.unwrap();
    let mut banner = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut banner))
        .await
        .expect("the banner within 5 s")
        .unwrap();
    let took = start.elapsed();
    assert_eq!(&banner, b"220 ready\r\n");
    assert!(
        took < Duration::from_millis(500),
        "the banner took {took:?}: the opaque port waited for detection"
    );
    // And the connection is plain TCP both ways afterwards.
    s.write_all(b"EHLO mesh\r\n").await.unwrap();
    let mut echo = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
        .await
        .expect("the echo within 5 s")
        .unwrap();
    assert_eq!(&echo, b"EHLO mesh\r\n");
    drop(s);
    pair.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_metrics_count_allowed_and_denied_requests() {
    let (_app, _policies, pair) = api_pair().await;
    let line = "%{http_code}\n";
    let out = curl(&[
        &url(pair.route, "/api/one"),
        "-o",
        "/dev/null",
        "-w",
        line,
        "--next",
        &url(pair.route, "/api/two"),
        "-o",
        "/dev/null",
        "-w",
        line,
        "--next",
        "-X",
        "POST",
        &url(pair.route, "/admin"),
        "-o",
        "/dev/null",
        "-w",
        line,
    ])
    .await;
    assert_eq!(out, "200\n200\n403\n");

    let ids = [
        ("direction", "inbound"),
        ("source_id", CLIENT_ID),
        ("destination_id", SERVER_ID),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut l = ids.to_vec();
        l.extend_from_slice(extra);
        l
    };
    let denied = with(&[("status", "403")]);
    let samples = scrape_until(&pair, "svidcar_http_requests_total", &denied, 1.0).await;
    assert_eq!(
        total(
            &samples,
            "svidcar_http_requests_total",
            &with(&[
                ("method", "GET"),
                ("status", "200"),
                ("classification", "success")
            ])
        ),
        2.0
    );
    assert_eq!(
        total(
            &samples,
            "svidcar_http_requests_total",
            &with(&[("method", "POST"), ("status", "403")])
        ),
        1.0
    );
    assert!(
        samples
            .iter()
            .any(|s| s.name == "svidcar_http_requests_total"
                && s.labels.contains_key("grpc_status")
                && s.labels.contains_key("classification")),
        "every label of the interface"
    );
    assert!(
        total(
            &samples,
            "svidcar_http_response_latency_seconds_count",
            &[("direction", "inbound")]
        ) >= 2.0,
        "the latency histogram counts the answered requests"
    );
    assert!(
        total(
            &samples,
            "svidcar_authz_decisions_total",
            &[("action", "DENY"), ("policy", "no-admin-posts")]
        ) >= 1.0,
        "the per-request denial is an authz decision"
    );
    // The client's proxy counts the same requests on its outbound side, to the server's ID.
    let admin = pair.client.admin_addr.expect("client admin listener");
    let client = parse_metrics(&curl(&[&url(admin, "/metrics")]).await).await;
    let outbound = |method: &str, status: &str| {
        total(
            &client,
            "svidcar_http_requests_total",
            &[
                ("direction", "outbound"),
                ("source_id", CLIENT_ID),
                ("destination_id", SERVER_ID),
                ("method", method),
                ("status", status),
            ],
        )
    };
    assert_eq!(
        (outbound("GET", "200"), outbound("POST", "403")),
        (2.0, 1.0)
    );

    // Every HTTP metric the Grafana dashboard queries is exported (the histogram by its series).
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/svidcar-identity.json"
    ))
    .unwrap();
    let used: Vec<&str> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|t| t.starts_with("svidcar_http_"))
        .collect();
    assert!(used.len() >= 2, "the dashboard has HTTP panels");
    for name in used {
        assert!(
            samples.iter().any(|s| s.name == name),
            "dashboard queries {name}, which /metrics does not export"
        );
    }
    pair.shutdown().await;
}

/// When the client's proxy cannot reach the destination, an HTTP caller gets a response that
/// says why (the status fits the cause, `svidcar-proxy-error` and the body name it), not an
/// empty reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_proxy_answers_refused_http_calls_with_the_reason() {
    let app = ToolServer::start("http_echo.py", &[]).await;
    // The server is not who the route expects.
    let impostor = PairBuilder::new(app.addr)
        .client_config(|c| {
            c.outbound.routes[0].server_id =
                svidcar_identity::SpiffeId::parse("spiffe://example.org/ns/shop/sa/expected")
                    .unwrap();
        })
        .start()
        .await
        .unwrap();
    let head = curl(&["-si", &url(impostor.route, "/api/x")]).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    let error = head
        .lines()
        .find_map(|l| l.strip_prefix("svidcar-proxy-error: "))
        .unwrap_or_else(|| panic!("no svidcar-proxy-error header: {head}"));
    assert!(
        error.starts_with("unexpected spiffe id: ") && error.contains("ns/shop/sa/expected"),
        "{error}"
    );
    impostor.shutdown().await;

    // Nothing listens where the route points.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let nowhere = PairBuilder::new(app.addr)
        .client_config(move |c| c.outbound.routes[0].upstream = closed)
        .start()
        .await
        .unwrap();
    let head = curl(&["-si", &url(nowhere.route, "/")]).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(
        head.lines()
            .any(|l| l.starts_with("svidcar-proxy-error: connect failed: ")),
        "{head}"
    );
    nowhere.shutdown().await;
}

/// Request bodies stream to the app exactly, with `Content-Length`, chunked, and after
/// `Expect: 100-continue`; a request head over `http.max_header_bytes` gets 431.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_arrive_exactly_and_oversized_heads_get_431() {
    use sha2_free::sha256_hex;
    let (_app, _policies, pair) = api_pair_allowing_posts().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.bin");
    let body: Vec<u8> = (0..(3 << 20) + 17)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&file, &body).unwrap();
    let data = format!("@{}", file.display());
    let want = sha256_hex(&file).await;
    for extra in [
        &[][..],
        &["-H", "Transfer-Encoding: chunked"][..],
        &["-H", "Expect: 100-continue"][..],
    ] {
        let mut args = vec!["--data-binary", data.as_str(), "-X", "POST"];
        args.extend_from_slice(extra);
        let u = url(pair.route, "/api/upload");
        args.push(&u);
        let out: Value = serde_json::from_str(&curl(&args).await).unwrap();
        assert_eq!(out["body_len"], body.len(), "{extra:?}");
        assert_eq!(out["body_sha256"], want.as_str(), "{extra:?}");
    }
    let big = format!("x-big: {}", "a".repeat(70 * 1024));
    let code = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        &big,
        &url(pair.route, "/api/x"),
    ])
    .await;
    assert_eq!(code, "431");
    pair.shutdown().await;
}

/// The SHA-256 of a file, by `sha256sum` (coreutils), to compare with what the app saw.
mod sha2_free {
    pub(super) async fn sha256_hex(path: &std::path::Path) -> String {
        let out = super::run_ok("sha256sum", &[path.to_str().unwrap()]).await;
        out.split_whitespace().next().unwrap_or_default().to_owned()
    }
}

/// http.server behind a pair that allows the client everything under `/api/`.
async fn api_pair_allowing_posts() -> (ToolServer, tempfile::TempDir, Pair) {
    let app = ToolServer::start("http_echo.py", &[]).await;
    let policies = tempfile::tempdir().unwrap();
    let policy = format!(
        "kind: AuthorizationPolicy\nname: api-writers\nselector: [{SERVER_ID}]\naction: ALLOW\nrules:\n  - from: [{{ principals: [{CLIENT_ID}] }}]\n    to: [{{ paths: [/api/*] }}]\n"
    );
    let pair = pair_with_policy(app.addr, &policy, policies.path()).await;
    (app, policies, pair)
}

/// A DENY on `/admin` holds whatever spelling the caller uses, and the app receives the path
/// exactly as it was authorized.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_spellings_of_a_denied_path_are_denied_too() {
    let (app, _policies, pair) = api_pair().await;
    for path in [
        "/admin",
        "//admin",
        "/%61dmin",
        "/api/../admin",
        "/admin/.",
        "/./admin",
    ] {
        let code = curl(&[
            "--path-as-is",
            "-X",
            "POST",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url(pair.route, path),
        ])
        .await;
        assert_eq!(code, "403", "POST {path}");
    }
    let code = curl(&[
        "--path-as-is",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &url(pair.route, "/api/x%zz"),
    ])
    .await;
    assert_eq!(code, "400", "a broken escape");
    let out: Value = serde_json::from_str(
        &curl(&[
            "--path-as-is",
            &url(pair.route, "/api//v1/./items/%7Eme?x=1"),
        ])
        .await,
    )
    .unwrap();
    assert_eq!(out["path"], "/api/v1/items/~me?x=1");
    let seen = app_saw(&app, "SEEN GET /api/v1/items/~me?x=1").await;
    assert!(!seen.iter().any(|l| l.contains("admin")), "{seen:?}");
    pair.shutdown().await;
}

/// `hosts` and `request.headers[...]` conditions are evaluated per request with real clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_and_request_headers_decide_per_request() {
    let app = ToolServer::start("http_echo.py", &[]).await;
    let policies = tempfile::tempdir().unwrap();
    let policy = format!(
        "kind: AuthorizationPolicy\nname: api-host\nselector: [{SERVER_ID}]\naction: ALLOW\nrules:\n  - from: [{{ principals: [{CLIENT_ID}] }}]\n    to: [{{ hosts: [api.example.org] }}]\n---\nkind: AuthorizationPolicy\nname: no-debug\nselector: [{SERVER_ID}]\naction: DENY\nrules:\n  - when: [{{ key: \"request.headers[x-debug]\", values: [\"*\"] }}]\n"
    );
    let pair = pair_with_policy(app.addr, &policy, policies.path()).await;
    let code = |extra: &'static [&'static str]| {
        let u = url(pair.route, "/x");
        async move {
            let mut args = vec!["-o", "/dev/null", "-w", "%{http_code}"];
            args.extend_from_slice(extra);
            args.push(&u);
            curl(&args).await
        }
    };
    assert_eq!(code(&["-H", "Host: api.example.org"]).await, "200");
    assert_eq!(code(&["-H", "Host: API.example.org:8080"]).await, "200");
    assert_eq!(code(&["-H", "Host: other.example.org"]).await, "403");
    assert_eq!(
        code(&["-H", "Host: api.example.org", "-H", "X-Debug: 1"]).await,
        "403"
    );
    pair.shutdown().await;
}
