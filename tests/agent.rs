//! `svidcar agent` end to end: the SPIFFE Workload API served on a Unix socket and used by the
//! third-party `spiffe` crate, a raw gRPC client, real processes under other uids, and svidcar
//! proxies whose SVIDs rotate under open connections. The agent runs as the real binary.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use svidcar_control::agent::proto::client::SpiffeWorkloadAPIClient;
use svidcar_control::agent::proto::{JwtSvidRequest, X509SvidRequest};
use svidcar_control::{Ca, IssuedSvid};
use svidcar_identity::{check_leaf, workload_api, CredentialStore, WorkloadEndpoint};
use svidcar_proxy::config::{Dur, IdentitySource, Mode, MtlsMode, ProxyConfig, Route};
use svidcar_proxy::ProxyHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use support::{
    echo_app, id, localhost, parse_metrics, rogue_client, sample, try_wait_for, wait_for, Wait,
};

const WORKLOAD_ID: &str = "spiffe://example.org/ns/default/sa/workload";

/// A test directory the unprivileged helper uids can reach, with a registration file and a CA
/// directory, and the agent binary copied in.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(registration: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(dir.path().join("ca")).unwrap();
        std::fs::set_permissions(
            dir.path().join("ca"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        let s = Setup { dir };
        s.register(registration);
        std::fs::copy(env!("CARGO_BIN_EXE_svidcar"), s.bin()).unwrap();
        std::fs::set_permissions(s.bin(), std::fs::Permissions::from_mode(0o755)).unwrap();
        s
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn bin(&self) -> PathBuf {
        self.path("svidcar")
    }

    fn socket(&self) -> PathBuf {
        self.path("sock/agent.sock")
    }

    fn endpoint(&self) -> WorkloadEndpoint {
        WorkloadEndpoint::Unix(self.socket())
    }

    fn register(&self, yaml: &str) {
        std::fs::write(self.path("registration.yaml"), yaml).unwrap();
    }

    /// The agent's CA, read from its directory (to issue test peers' certificates).
    fn ca(&self) -> Ca {
        Ca::from_pem(
            &std::fs::read_to_string(self.path("ca/ca.pem")).unwrap(),
            &std::fs::read_to_string(self.path("ca/ca.key")).unwrap(),
        )
        .unwrap()
    }

    /// Starts `svidcar agent` and waits (bounded) until it accepts connections.
    async fn agent(&self, ttl: &str) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("agent.log"))
            .unwrap();
        let mut command = Command::new(self.bin());
        command
            .args(["--log", "info", "agent", "--socket"])
            .arg(self.socket())
            .args(["--socket-mode", "0666", "--ca-dir"])
            .arg(self.path("ca"))
            .args(["--trust-domain", "example.org", "--registration"])
            .arg(self.path("registration.yaml"))
            .args(["--svid-ttl", ttl, "--reload-interval", "100ms"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        let child = spawn_copied(&mut command).await;
        try_wait_for("the agent to serve", Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(self.socket()).is_ok()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}:\n{}", self.agent_log()));
        child
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }
}

/// Spawns a binary this test copied. Tests run in parallel: another test's child, forked but not
/// yet exec'd, can briefly hold the copy's write descriptor, and exec then fails with "text file
/// busy" (ETXTBSY). Retry that, bounded.
async fn spawn_copied(command: &mut Command) -> Child {
    for _ in 0..50 {
        match command.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            r => return r.unwrap(),
        }
    }
    panic!("the copied binary stayed busy for a second");
}

fn root_registration(ids: &[&str]) -> String {
    let mut s = String::from("entries:\n");
    for id in ids {
        s.push_str(&format!(
            "  - spiffe_id: {id}\n    selectors: [\"unix:uid:0\"]\n"
        ));
    }
    s
}

/// Writes a fresh CA of `other.org` as the federated bundle file; returns its DER.
fn write_other_bundle(setup: &Setup) -> Vec<u8> {
    let td = svidcar_identity::TrustDomain::parse("other.org").unwrap();
    let ca = Ca::generate(&td, Duration::from_secs(3600)).unwrap();
    std::fs::write(setup.path("other.org.pem"), ca.bundle_pem()).unwrap();
    ca.bundle_der().to_vec()
}

/// Entries for uid 0, federating with other.org.
fn federated_registration(setup: &Setup, ids: &[&str]) -> String {
    format!(
        "{}federates_with:\n  other.org: {}\n",
        root_registration(ids),
        setup.path("other.org.pem").display()
    )
}

fn serial_of(der: &[u8]) -> String {
    check_leaf(der).unwrap().serial
}

#[tokio::test]
async fn the_spiffe_crate_fetches_and_streams_svids_from_svidcar_agent() {
    let setup = Setup::new("entries: []\n");
    let other_der = write_other_bundle(&setup);
    setup.register(&federated_registration(
        &setup,
        &[WORKLOAD_ID, "spiffe://example.org/second"],
    ));
    let mut agent = setup.agent("4s").await;
    let client = spiffe::WorkloadApiClient::connect_to(setup.endpoint().to_string())
        .await
        .unwrap();

    let ctx = client.fetch_x509_context().await.unwrap();
    let ids: Vec<String> = ctx
        .svids()
        .iter()
        .map(|s| s.spiffe_id().to_string())
        .collect();
    assert_eq!(ids, [WORKLOAD_ID, "spiffe://example.org/second"]);
    assert_eq!(
        ctx.default_svid().unwrap().spiffe_id().to_string(),
        WORKLOAD_ID
    );
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    let bundle = ctx.bundle_set().get(&td).unwrap();
    assert_eq!(
        bundle.authorities()[0].as_bytes(),
        setup.ca().bundle_der().as_ref()
    );
    // The federated bundle arrives as its own trust domain's bundle.
    let other = spiffe::TrustDomain::new("other.org").unwrap();
    assert_eq!(
        ctx.bundle_set().get(&other).unwrap().authorities()[0].as_bytes(),
        other_der.as_slice()
    );
    let bundles = client.fetch_x509_bundles().await.unwrap();
    assert!(bundles.get(&td).is_some() && bundles.get(&other).is_some());

    // The stream sends the full state at once, then again when the SVIDs rotate (4 s TTL:
    // re-issued after about 1.5 s).
    let mut stream = client.stream_x509_contexts().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let first_serial = serial_of(first.default_svid().unwrap().leaf().as_bytes());
    // Each SVID rotates on its own schedule: wait for the default one, checking every update.
    let rotated = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(next) = stream.next().await {
            let next = next.unwrap();
            assert_eq!(next.svids().len(), 2, "every update carries the full state");
            if serial_of(next.default_svid().unwrap().leaf().as_bytes()) != first_serial {
                return;
            }
        }
        panic!("stream ended");
    })
    .await;
    assert!(rotated.is_ok(), "no rotation pushed within 10 s");

    // A new registration entry reaches the open stream; a bad edit is ignored.
    setup.register("entries: [ {");
    tokio::time::sleep(Duration::from_millis(300)).await;
    setup.register(&root_registration(&[
        WORKLOAD_ID,
        "spiffe://example.org/third",
    ]));
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(ctx)) = stream.next().await {
            if ctx
                .svids()
                .iter()
                .any(|s| s.spiffe_id().to_string() == "spiffe://example.org/third")
            {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "{}", setup.agent_log());
    assert!(setup
        .agent_log()
        .contains("ignoring bad registration entries"));
    assert!(!setup.agent_log().contains("PRIVATE KEY"));
    agent.kill().await.unwrap();
}

/// A raw gRPC channel to the agent's socket.
async fn raw_client(socket: &Path) -> SpiffeWorkloadAPIClient<tonic::transport::Channel> {
    let socket = socket.to_owned();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .unwrap();
    SpiffeWorkloadAPIClient::new(channel)
}

fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    req
}

#[tokio::test]
async fn requests_without_the_security_header_are_invalid_and_jwt_is_unimplemented() {
    let setup = Setup::new(&root_registration(&[WORKLOAD_ID]));
    let mut agent = setup.agent("1h").await;
    let mut client = raw_client(&setup.socket()).await;

    let status = client
        .fetch_x509_svid(X509SvidRequest {})
        .await
        .expect_err("no header");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let mut wrong = tonic::Request::new(X509SvidRequest {});
    wrong
        .metadata_mut()
        .insert("workload.spiffe.io", "yes".parse().unwrap());
    assert_eq!(
        client.fetch_x509_svid(wrong).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );

    let mut stream = client
        .fetch_x509_svid(with_header(X509SvidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    assert_eq!(resp.svids.len(), 1);
    assert_eq!(resp.svids[0].spiffe_id, WORKLOAD_ID);

    let status = client
        .fetch_jwt_svid(with_header(JwtSvidRequest {
            audience: vec!["x".into()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    agent.kill().await.unwrap();
}

/// Runs `svidcar api fetch` as `uid`/`gid` (no supplementary groups) against the agent.
async fn fetch_as(setup: &Setup, uid: u32, gid: u32) -> (i32, String, String) {
    let out = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg(setup.bin())
        .args(["api", "fetch", "--workload-api"])
        .arg(setup.endpoint().to_string())
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), out)
        .await
        .expect("helper finished within 20 s")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn attestation_of_real_processes_under_other_uids() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root to run helpers under other uids");
        return;
    }
    let setup = Setup::new("entries: []\n");
    let hash = {
        use std::io::Read;
        let mut f = std::fs::File::open(setup.bin()).unwrap();
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).unwrap();
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let bin = setup.bin();
    setup.register(&format!(
        "entries:
  - {{ spiffe_id: spiffe://example.org/u1001, selectors: [\"unix:uid:1001\"] }}
  - {{ spiffe_id: spiffe://example.org/g2000, selectors: [\"unix:uid:1001\", \"unix:gid:2000\"] }}
  - {{ spiffe_id: spiffe://example.org/exact, selectors: [\"unix:uid:1003\", \"unix:path:{}\", \"unix:sha256:{hash}\"] }}
  - {{ spiffe_id: spiffe://example.org/wrong-hash, selectors: [\"unix:uid:1004\", \"unix:sha256:{}\"] }}
",
        bin.display(),
        "0".repeat(64)
    ));
    let mut agent = setup.agent("1h").await;

    let (code, out, err) = fetch_as(&setup, 1001, 1001).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("spiffe://example.org/u1001") && out.contains("(default)"),
        "{out}"
    );
    assert!(
        !out.contains("g2000"),
        "gid 1001 must not match unix:gid:2000: {out}"
    );

    // The same uid in group 2000 matches both entries; the first in the file is the default.
    let (code, out, _) = fetch_as(&setup, 1001, 2000).await;
    assert_eq!(code, 0);
    let default_line = out.lines().next().unwrap();
    assert!(
        default_line.contains("(default) spiffe://example.org/u1001"),
        "{out}"
    );
    assert!(out.contains("spiffe://example.org/g2000"), "{out}");

    // An unregistered uid gets PermissionDenied ("no identity issued"): exit code 3.
    let (code, out, err) = fetch_as(&setup, 1002, 1002).await;
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        err.contains("PermissionDenied") && err.contains("no identity issued"),
        "{err}"
    );

    // Path and executable hash are attested from /proc.
    let (code, out, err) = fetch_as(&setup, 1003, 1003).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("spiffe://example.org/exact"), "{out}");
    let (code, _, err) = fetch_as(&setup, 1004, 1004).await;
    assert_eq!(code, 3, "a wrong sha256 must not match: {err}");
    agent.kill().await.unwrap();
}

/// A proxy whose credential store is fed by the Workload API client.
struct FedProxy {
    handle: ProxyHandle,
    store: Arc<CredentialStore>,
    stop: CancellationToken,
}

async fn fed_proxy(setup: &Setup, tweak: impl FnOnce(&mut ProxyConfig)) -> FedProxy {
    let mut config = ProxyConfig::default();
    config.admin.listen = localhost();
    config.identity.source = Some(IdentitySource::WorkloadApi);
    config.identity.workload_api = Some(setup.endpoint());
    tweak(&mut config);
    config.validate().unwrap();
    let store = CredentialStore::new();
    let stop = CancellationToken::new();
    tokio::spawn(workload_api::run(
        setup.endpoint(),
        store.clone(),
        svidcar_identity::tls::provider(),
        stop.clone(),
    ));
    let handle = svidcar_proxy::start(config, store.clone()).await.unwrap();
    FedProxy {
        handle,
        store,
        stop,
    }
}

/// Server (inbound → echo app) and client (route → server) proxies fed by the agent.
async fn fed_pair(setup: &Setup) -> (FedProxy, FedProxy) {
    let app = echo_app().await;
    let server = fed_proxy(setup, |c| {
        c.outbound.enabled = false;
        c.inbound.mode = Mode::Explicit;
        c.inbound.listen = localhost();
        c.inbound.app = Some(app);
        c.inbound.mtls = MtlsMode::Strict;
        c.inbound.detect_timeout = Dur(Duration::from_millis(300));
    })
    .await;
    let inbound = server.handle.inbound_addr.unwrap();
    let client = fed_proxy(setup, |c| {
        c.inbound.enabled = false;
        c.outbound.mode = Mode::Explicit;
        c.outbound.routes = vec![Route {
            listen: localhost(),
            upstream: inbound,
            server_id: id(WORKLOAD_ID),
            tunnel: None,
        }];
    })
    .await;
    for p in [&server, &client] {
        wait_for("an SVID from the agent", Duration::from_secs(10), || {
            p.store.current().is_some()
        })
        .await;
    }
    (server, client)
}

/// The serial of the certificate the inbound presents to a new connection.
async fn presented_serial(inbound: std::net::SocketAddr, peer: &IssuedSvid) -> String {
    let tls = rogue_client(inbound, peer, svidcar_identity::tls::MESH_ALPN)
        .await
        .unwrap();
    let certs = tls.get_ref().1.peer_certificates().unwrap();
    serial_of(&certs[0])
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

#[tokio::test]
async fn svids_rotate_under_an_open_connection_and_new_connections_see_new_serials() {
    let setup = Setup::new("entries: []\n");
    write_other_bundle(&setup);
    setup.register(&federated_registration(&setup, &[WORKLOAD_ID]));
    // 10 s SVIDs are re-issued every 4–5 s.
    let mut agent = setup.agent("10s").await;
    let (server, client) = fed_pair(&setup).await;
    // Our bundle and the federated one, each under its own trust domain.
    let tds: Vec<String> = client
        .store
        .latest()
        .unwrap()
        .bundles
        .trust_domains()
        .iter()
        .map(|t| t.as_str().to_owned())
        .collect();
    assert_eq!(tds, ["example.org", "other.org"]);
    let route = client.handle.outbound_addrs[0];
    let inbound = server.handle.inbound_addr.unwrap();
    let peer = setup
        .ca()
        .issue(&id("spiffe://example.org/peer"), Duration::from_secs(300))
        .unwrap();

    // One connection stays open across the rotations, sending and checking chunks throughout.
    let long = tokio::spawn(async move {
        let s = TcpStream::connect(route).await.unwrap();
        let (mut r, mut w) = s.into_split();
        let mut sent = Vec::new();
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(16);
        let mut i = 0u64;
        while tokio::time::Instant::now() < deadline {
            let chunk = support::payload(4096, i);
            w.write_all(&chunk).await.unwrap();
            sent.extend_from_slice(&chunk);
            let mut buf = vec![0u8; chunk.len()];
            tokio::time::timeout(Duration::from_secs(5), r.read_exact(&mut buf))
                .await
                .expect("echo within 5 s")
                .unwrap();
            got.extend_from_slice(&buf);
            i += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        w.shutdown().await.unwrap();
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        got.extend_from_slice(&rest);
        (sent, got)
    });

    let mut serials = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(16);
    while tokio::time::Instant::now() < deadline {
        let serial = presented_serial(inbound, &peer).await;
        if serials.last() != Some(&serial) {
            serials.push(serial);
        }
        // And a fresh connection through the client proxy works every time.
        let data = support::payload(1000, serials.len() as u64);
        assert_eq!(support::round_trip(route, &data).await.unwrap(), data);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (sent, got) = long.await.unwrap();
    assert_eq!(got.len(), sent.len(), "bytes lost on the open connection");
    assert!(got == sent, "bytes changed on the open connection");
    assert!(
        serials.len() >= 3,
        "expected at least two rotations in 16 s, saw serials {serials:?}\n{}",
        setup.agent_log()
    );
    assert!(client.store.installs() >= 3 && server.store.installs() >= 3);

    for p in [server, client] {
        p.stop.cancel();
        p.handle.shutdown().await;
    }
    agent.kill().await.unwrap();
}

#[tokio::test]
async fn agent_restart_is_survived_and_expiry_without_agent_fails_closed() {
    let setup = Setup::new(&root_registration(&[WORKLOAD_ID]));
    let mut agent = setup.agent("10s").await;
    let (server, client) = fed_pair(&setup).await;
    let route = client.handle.outbound_addrs[0];
    let admin = client.handle.admin_addr.unwrap();
    assert_eq!(http_get(admin, "/ready").await.0, 200);

    // Killed: the proxies keep serving with the SVIDs they hold.
    agent.kill().await.unwrap();
    let data = support::payload(2000, 1);
    assert_eq!(support::round_trip(route, &data).await.unwrap(), data);
    wait_for("the source problem to show", Duration::from_secs(5), || {
        client.store.source_problem().is_some()
    })
    .await;
    let metrics = http_get(admin, "/metrics").await.1;
    assert!(
        metrics.contains("svidcar_identity_source_up 0"),
        "{metrics}"
    );
    assert!(metrics.contains("svidcar_svid_valid 1"), "still serving");

    // Restarted (same CA directory and socket): the proxies reconnect and get fresh SVIDs.
    let before = client.store.installs();
    let mut agent = setup.agent("10s").await;
    wait_for(
        "fresh SVIDs after the restart",
        Duration::from_secs(15),
        || client.store.installs() > before && client.store.source_problem().is_none(),
    )
    .await;
    assert_eq!(support::round_trip(route, &data).await.unwrap(), data);
    assert_eq!(http_get(admin, "/ready").await.0, 200);
    let metrics = http_get(admin, "/metrics").await.1;
    assert!(
        metrics.contains("svidcar_identity_source_up 1"),
        "{metrics}"
    );

    // Gone until the SVIDs expire (at most 11 s): fail closed, and /ready says why.
    agent.kill().await.unwrap();
    let not_after = client.store.latest().unwrap().leaf.not_after;
    wait_for("both SVIDs to expire", Duration::from_secs(20), || {
        client.store.current().is_none() && server.store.current().is_none()
    })
    .await;
    assert!(svidcar_identity::unix_now() >= not_after);
    let (status, body) = http_get(admin, "/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("expired at"), "{body}");
    assert!(
        body.contains("Workload API unix://") && body.contains("unreachable since"),
        "{body}"
    );
    assert!(body.contains("fail closed"), "{body}");
    let metrics = http_get(admin, "/metrics").await.1;
    assert!(
        metrics.contains("svidcar_svid_valid 0")
            && metrics.contains("svidcar_identity_source_up 0"),
        "{metrics}"
    );
    let refused = support::round_trip(route, &data).await;
    assert!(
        !matches!(&refused, Ok(b) if b == &data),
        "no mesh connection after expiry: {refused:?}"
    );

    for p in [server, client] {
        p.stop.cancel();
        p.handle.shutdown().await;
    }
}

#[tokio::test]
async fn a_proxy_picks_the_svid_its_hint_names() {
    let setup = Setup::new(
        "entries:\n  - { spiffe_id: spiffe://example.org/main, selectors: ['unix:uid:0'], hint: main }\n  - { spiffe_id: spiffe://example.org/backup, selectors: ['unix:uid:0'], hint: backup }\n",
    );
    let mut agent = setup.agent("1h").await;
    let fed = |hint: &str| {
        let store = CredentialStore::new();
        tokio::spawn(workload_api::run_with_hint(
            setup.endpoint(),
            Some(hint.to_owned()),
            store.clone(),
            svidcar_identity::tls::provider(),
            CancellationToken::new(),
        ));
        store
    };
    let backup = fed("backup");
    wait_for("the hinted SVID", Duration::from_secs(10), || {
        backup.current().is_some()
    })
    .await;
    assert_eq!(
        backup.current().unwrap().id().as_str(),
        "spiffe://example.org/backup"
    );
    // A hint no SVID carries: no SVID (fail closed), and the store says why.
    let none = fed("nope");
    wait_for(
        "the unmatched hint reported",
        Duration::from_secs(10),
        || none.source_problem().is_some(),
    )
    .await;
    assert!(none.current().is_none());
    let problem = none.source_problem().unwrap().to_string();
    assert!(problem.contains("no SVID has hint \"nope\""), "{problem}");
    agent.kill().await.unwrap();
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_get(addr, path).await
}

/// The agent's admin endpoint: readiness with the reason, and metrics read by the official
/// Prometheus parser after real Workload API calls.
#[tokio::test]
async fn the_agent_admin_endpoint_reports_readiness_and_metrics() {
    use svidcar_control::agent::{start, AgentArgs};
    let setup = Setup::new(&root_registration(&[
        WORKLOAD_ID,
        "spiffe://example.org/second",
    ]));
    let args = AgentArgs {
        socket: setup.socket(),
        socket_mode: 0o600,
        socket_group: None,
        ca_dir: Some(setup.path("ca")),
        trust_domain: Some(svidcar_identity::TrustDomain::parse("example.org").unwrap()),
        registration: setup.path("registration.yaml"),
        svid_ttl: Dur(Duration::from_secs(3600)),
        ca_ttl: Dur(Duration::from_secs(24 * 3600)),
        reload_interval: Dur(Duration::from_millis(100)),
        admin_listen: Some(localhost()),
        upstream: Default::default(),
        kubernetes: Default::default(),
    };
    let agent = start(&args).await.unwrap();
    let admin = agent.admin_addr().unwrap();
    assert_eq!(get(admin, "/live").await.0, 200);
    let (status, body) = get(admin, "/ready").await;
    assert_eq!((status, body.as_str()), (200, "ready: 2 SVIDs\n"));

    // Real calls: one stream held open, one without the security header.
    let client = spiffe::WorkloadApiClient::connect_to(setup.endpoint().to_string())
        .await
        .unwrap();
    let mut stream = client.stream_x509_contexts().await.unwrap();
    stream.next().await.unwrap().unwrap();
    let mut raw = raw_client(&setup.socket()).await;
    let e = raw
        .fetch_x509_svid(tonic::Request::new(X509SvidRequest {}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    // A bad edit is counted (and ignored).
    setup.register("entries: [ {");
    tokio::time::sleep(Duration::from_millis(400)).await;

    let scrape = parse_metrics(&get(admin, "/metrics").await.1).await;
    let value = |name: &str, labels: &[(&str, &str)]| {
        sample(&scrape, name, labels).unwrap_or_else(|| panic!("{name} {labels:?} missing"))
    };
    assert_eq!(value("svidcar_agent_svids_issued_total", &[]), 2.0);
    assert_eq!(value("svidcar_agent_svid_issue_failures_total", &[]), 0.0);
    assert_eq!(
        value(
            "svidcar_agent_workload_api_requests_total",
            &[("method", "FetchX509SVID"), ("code", "Ok")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "svidcar_agent_workload_api_requests_total",
            &[("method", "FetchX509SVID"), ("code", "InvalidArgument")]
        ),
        1.0
    );
    assert_eq!(value("svidcar_agent_workload_api_streams", &[]), 1.0);
    assert_eq!(value("svidcar_agent_registration_entries", &[]), 2.0);
    assert_eq!(
        value("svidcar_agent_registration_reload_errors_total", &[]),
        1.0
    );
    assert_eq!(value("svidcar_agent_bundle_roots", &[]), 1.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    let expiry = value(
        "svidcar_agent_svid_expiry_timestamp_seconds",
        &[("spiffe_id", WORKLOAD_ID)],
    );
    assert!(expiry > now + 3000.0 && expiry <= now + 3601.0, "{expiry}");
    assert!(
        value(
            "svidcar_agent_ca_root_expiry_timestamp_seconds",
            &[("role", "active")]
        ) > now
    );

    // The stream closed: the gauge follows.
    drop(stream);
    Wait::new("the open-streams gauge back to 0", Duration::from_secs(10))
        .every(Duration::from_millis(100))
        .until(|| async move {
            let scrape = parse_metrics(&get(admin, "/metrics").await.1).await;
            sample(&scrape, "svidcar_agent_workload_api_streams", &[]) == Some(0.0)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    agent.shutdown().await;
}
