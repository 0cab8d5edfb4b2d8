//! `svidcar control` holding the CA and serving agents on other nodes: a node joins once with a
//! one-time token (verifying the control plane with a bootstrap bundle), renews its node SVID,
//! and gets its workloads' SVIDs by CSR for the IDs its node entry allows. The agent runs as the
//! real binary; the node API is also driven directly to check every refusal.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use svidcar_api::channel::lazy as lazy_channel;
use svidcar_api::node::client::NodeServiceClient;
use svidcar_api::node::{GetBundleRequest, JoinRequest, RenewNodeRequest, SignWorkloadRequest};
use svidcar_control::node::{control_id, key_and_csr};
use svidcar_control::server::{start, ControlArgs, ControlHandle};
use svidcar_control::Ca;
use svidcar_identity::tls::{bootstrap_client_config, provider, TlsContext};
use svidcar_identity::{
    check_leaf, verify_chain, workload_api, CredentialStore, Credentials, Purpose, TrustBundles,
    TrustDomain, WorkloadEndpoint,
};
use svidcar_proxy::config::{Dur, IdentitySource, Mode, MtlsMode, ProxyConfig, Route};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use tonic::Code;

use support::{echo_app, id, localhost, parse_metrics, payload, sample, try_wait_for, wait_for};

const WEB: &str = "spiffe://example.org/ns/shop/sa/web";
const OTHER: &str = "spiffe://example.org/ns/other/sa/x";
const TOKEN_A: &str = "token-a-0123456789abcdef";
const TOKEN_B: &str = "token-b-0123456789abcdef";
const TOKEN_C: &str = "token-c-0123456789abcdef";

fn td() -> TrustDomain {
    TrustDomain::parse("example.org").unwrap()
}

fn nodes_yaml(with_a: bool) -> String {
    let mut s = String::from("nodes:\n");
    if with_a {
        s.push_str(&format!(
            "  - name: node-a\n    join_token: {TOKEN_A}\n    allow: ['spiffe://example.org/ns/shop/*']\n"
        ));
    }
    s.push_str(&format!(
        "  - name: node-b\n    join_token: {TOKEN_B}\n    allow: ['spiffe://example.org/*']\n"
    ));
    s.push_str(&format!(
        "  - name: node-c\n    join_token: {TOKEN_C}\n    expires: 2020-01-01T00:00:00Z\n"
    ));
    s
}

/// A control plane holding a new CA in `dir/ca`, nodes from `dir/nodes.yaml`.
async fn control(dir: &Path, node_svid_ttl: Duration) -> ControlHandle {
    control_with_ca_ttl(dir, Duration::from_secs(24 * 3600), node_svid_ttl).await
}

/// [`control`] with roots that live `ca_ttl` (and rotate within it).
async fn control_with_ca_ttl(
    dir: &Path,
    ca_ttl: Duration,
    node_svid_ttl: Duration,
) -> ControlHandle {
    control_at(dir, "127.0.0.1:0".parse().unwrap(), ca_ttl, node_svid_ttl).await
}

/// [`control`] listening for gRPC on `listen`.
async fn control_at(
    dir: &Path,
    listen: SocketAddr,
    ca_ttl: Duration,
    node_svid_ttl: Duration,
) -> ControlHandle {
    for d in ["ca", "policies"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::set_permissions(dir.join("ca"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(dir.join("nodes.yaml"), nodes_yaml(true)).unwrap();
    let localhost: SocketAddr = "127.0.0.1:0".parse().unwrap();
    start(ControlArgs {
        policy_dir: dir.join("policies"),
        state_dir: dir.join("state"),
        listen,
        admin_listen: localhost,
        cert: None,
        key: None,
        bundle: None,
        ca_dir: Some(dir.join("ca")),
        trust_domain: Some(td()),
        ca_ttl: Dur(ca_ttl),
        svid_ttl: Dur(Duration::from_secs(4)),
        node_svid_ttl: Dur(node_svid_ttl),
        nodes: Some(dir.join("nodes.yaml")),
        reload_interval: Dur(Duration::from_millis(100)),
        decisions_max_bytes: 1 << 20,
        decisions_keep: 2,
        ..Default::default()
    })
    .await
    .expect("control plane starts")
}

async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

fn bundle_of(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn trust(bundle: Vec<CertificateDer<'static>>) -> Arc<TrustBundles> {
    let mut b = TrustBundles::new();
    b.insert(td(), bundle).unwrap();
    Arc::new(b)
}

/// A node API client presenting no certificate, verifying the control plane with `bundle`.
fn anonymous(addr: SocketAddr, bundle: Vec<CertificateDer<'static>>) -> NodeServiceClient<Channel> {
    let config =
        bootstrap_client_config(trust(bundle), &control_id(&td()), b"h2", provider()).unwrap();
    NodeServiceClient::new(lazy_channel(&addr.to_string(), config).unwrap())
}

/// A node API client presenting `cert` (with `key`).
fn presenting(
    addr: SocketAddr,
    cert: Vec<u8>,
    key: Vec<u8>,
    bundle: Vec<CertificateDer<'static>>,
) -> NodeServiceClient<Channel> {
    let store = CredentialStore::new();
    let mut b = TrustBundles::new();
    b.insert(td(), bundle).unwrap();
    store.set(
        Credentials::new(
            vec![CertificateDer::from(cert)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
            b,
            &provider(),
        )
        .unwrap(),
    );
    let tls = TlsContext::new(store, provider()).unwrap();
    let config = tls
        .client_config_with_alpn(&control_id(&td()), b"h2")
        .unwrap();
    NodeServiceClient::new(lazy_channel(&addr.to_string(), config).unwrap())
}

#[tokio::test]
async fn the_node_api_hands_out_only_what_each_caller_may_have() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control(dir.path(), Duration::from_secs(3600)).await;
    let (status, pem) = http_get(cp.admin_addr, "/bundle").await;
    assert!(status.contains("200"), "{status}");
    let bundle = bundle_of(&pem);
    assert_eq!(bundle.len(), 1);

    // Joining: a bad CSR does not burn the token; the token works once.
    let mut anon = anonymous(cp.grpc_addr, bundle.clone());
    let e = anon
        .join(JoinRequest {
            token: TOKEN_A.into(),
            csr: b"not a csr".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let (node_key, csr) = key_and_csr().unwrap();
    let joined = anon
        .join(JoinRequest {
            token: TOKEN_A.into(),
            csr: csr.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(joined.node, "node-a");
    let leaf = check_leaf(&joined.svid).unwrap();
    assert_eq!(leaf.id.as_str(), "spiffe://example.org/svidcar/node/node-a");
    let now = rustls::pki_types::UnixTime::now();
    let chain = [CertificateDer::from(joined.svid.clone())];
    verify_chain(&chain, &trust(bundle.clone()), now, Purpose::Client).unwrap();
    for token in [TOKEN_A, "never-issued-token-xyz"] {
        let e = anon
            .join(JoinRequest {
                token: token.into(),
                csr: csr.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("unknown or already used join token"));
    }
    // Without a node SVID nothing else is served.
    let e = anon
        .sign_workload(SignWorkloadRequest {
            spiffe_id: WEB.into(),
            csr: csr.clone(),
            selectors: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = anon.get_bundle(GetBundleRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    // With its node SVID, node-a gets SVIDs for its allowed IDs only.
    let mut node_a = presenting(cp.grpc_addr, joined.svid.clone(), node_key, bundle.clone());
    let (wl_key, wl_csr) = key_and_csr().unwrap();
    let signed = node_a
        .sign_workload(SignWorkloadRequest {
            spiffe_id: WEB.into(),
            csr: wl_csr.clone(),
            selectors: vec!["unix:uid:1000".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let wl = check_leaf(&signed.svid).unwrap();
    assert_eq!(wl.id.as_str(), WEB);
    assert!(
        wl.not_after - wl.not_before <= 5,
        "the control plane's SVID TTL applies"
    );
    let (_, x) = x509_parser::parse_x509_certificate(&signed.svid).unwrap();
    let (_, req) =
        <x509_parser::certification_request::X509CertificationRequest as x509_parser::prelude::FromDer<_>>::from_der(&wl_csr).unwrap();
    assert_eq!(
        x.public_key().raw,
        req.certification_request_info.subject_pki.raw,
        "the SVID certifies the key of the CSR"
    );
    // The inventory records the node and the selectors the agent sent.
    let (status, body) = http_get(cp.admin_addr, "/identities").await;
    assert!(status.contains("200"), "{status}: {body}");
    let rows: Vec<svidcar_control::inventory::IdentityRow> = serde_json::from_str(&body).unwrap();
    let issued = rows
        .iter()
        .find(|r| r.id.as_str() == WEB)
        .and_then(|r| r.issued.clone())
        .unwrap_or_else(|| panic!("{WEB} not in the inventory: {body}"));
    assert_eq!(issued.node.as_deref(), Some("node-a"));
    assert_eq!(issued.selectors, ["unix:uid:1000"]);
    for (id, code, why) in [
        (
            OTHER,
            Code::PermissionDenied,
            "not in the node's allow list",
        ),
        (
            "spiffe://other.org/x",
            Code::PermissionDenied,
            "not in the node's allow list",
        ),
        ("not an id", Code::InvalidArgument, "spiffe_id"),
    ] {
        let e = node_a
            .sign_workload(SignWorkloadRequest {
                spiffe_id: id.into(),
                csr: wl_csr.clone(),
                selectors: Vec::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "{id}: {e:?}");
        assert!(e.message().contains(why), "{id}: {}", e.message());
    }
    let renewed = node_a
        .renew_node(RenewNodeRequest {
            csr: wl_csr.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(check_leaf(&renewed.svid).unwrap().serial, leaf.serial);
    assert_eq!(
        node_a
            .get_bundle(GetBundleRequest {})
            .await
            .unwrap()
            .into_inner()
            .bundle,
        vec![bundle[0].to_vec()]
    );

    // A node allowed everything still never gets the control plane's or another node's ID.
    let (b_key, b_csr) = key_and_csr().unwrap();
    let b = anon
        .join(JoinRequest {
            token: TOKEN_B.into(),
            csr: b_csr,
        })
        .await
        .unwrap()
        .into_inner();
    let mut node_b = presenting(cp.grpc_addr, b.svid, b_key, bundle.clone());
    for reserved in [
        "spiffe://example.org/svidcar/control",
        "spiffe://example.org/svidcar/node/node-a",
    ] {
        let e = node_b
            .sign_workload(SignWorkloadRequest {
                spiffe_id: reserved.into(),
                csr: wl_csr.clone(),
                selectors: Vec::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        assert!(
            e.message().contains("never issued to workloads"),
            "{}",
            e.message()
        );
    }

    // A workload SVID is not a node SVID.
    let mut workload = presenting(cp.grpc_addr, signed.svid.clone(), wl_key, bundle.clone());
    let e = workload
        .renew_node(RenewNodeRequest {
            csr: wl_csr.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("is not a node SVID"),
        "{}",
        e.message()
    );

    // Removing a node from the file stops it at its next call.
    std::fs::write(dir.path().join("nodes.yaml"), nodes_yaml(false)).unwrap();
    let e = node_a
        .renew_node(RenewNodeRequest { csr: wl_csr })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("node-a is no longer registered"));

    // Every outcome above is counted, read back by the official Prometheus parser.
    let scrape = parse_metrics(&http_get(cp.admin_addr, "/metrics").await.1).await;
    let count = |name: &str, label: (&str, &str)| sample(&scrape, name, &[label]).unwrap_or(0.0);
    let joins = "svidcar_control_node_joins_total";
    assert_eq!(count(joins, ("outcome", "ok")), 2.0);
    assert_eq!(count(joins, ("outcome", "bad_request")), 1.0);
    assert_eq!(count(joins, ("outcome", "used_token")), 1.0);
    assert_eq!(count(joins, ("outcome", "unknown_token")), 1.0);
    let signed = "svidcar_control_svids_signed_total";
    assert_eq!(count(signed, ("kind", "node")), 3.0);
    assert_eq!(count(signed, ("kind", "workload")), 1.0);
    let refusals = "svidcar_control_node_refusals_total";
    assert_eq!(count(refusals, ("reason", "not_allowed")), 2.0);
    assert_eq!(count(refusals, ("reason", "reserved")), 2.0);
    assert_eq!(count(refusals, ("reason", "no_certificate")), 2.0);
    assert_eq!(count(refusals, ("reason", "not_a_node")), 1.0);
    assert_eq!(count(refusals, ("reason", "unregistered_node")), 1.0);
    assert_eq!(
        sample(&scrape, "svidcar_control_bundle_roots", &[]),
        Some(1.0)
    );
    assert_eq!(sample(&scrape, "svidcar_control_proxies", &[]), Some(0.0));
    assert!(
        count(
            "svidcar_control_ca_root_expiry_timestamp_seconds",
            ("role", "active")
        ) > svidcar_identity::unix_now() as f64
    );

    // What the control plane saw of each node.
    let (_, body) = http_get(cp.admin_addr, "/nodes").await;
    let nodes: serde_json::Value = serde_json::from_str(&body).unwrap();
    let a = &nodes["node-a"];
    assert!(a["joined_at"].as_i64().is_some(), "{body}");
    assert_eq!(a["workload_svids_signed"], 1, "{body}");
    assert_eq!(a["workload_svids_refused"], 2, "{body}");
    assert_eq!(a["last_call"], "GetBundle", "{body}");
    assert!(a["node_svid_not_after"].as_i64().unwrap() > svidcar_identity::unix_now());
    assert!(a["addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(nodes["node-b"]["workload_svids_refused"], 2, "{body}");
    assert!(nodes.get("node-c").is_none(), "{body}");

    // The token ledger survives a restart: node-a's token stays used.
    let addr = cp.grpc_addr;
    cp.shutdown().await;
    std::fs::write(dir.path().join("nodes.yaml"), nodes_yaml(true)).unwrap();
    let cp = control(dir.path(), Duration::from_secs(3600)).await;
    assert_ne!(cp.grpc_addr, addr);
    let e = anonymous(cp.grpc_addr, bundle.clone())
        .join(JoinRequest {
            token: TOKEN_A.into(),
            csr,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    cp.shutdown().await;
}

#[tokio::test]
async fn expired_tokens_are_refused_and_token_guessing_is_throttled() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control(dir.path(), Duration::from_secs(3600)).await;
    let bundle = bundle_of(&http_get(cp.admin_addr, "/bundle").await.1);
    let mut anon = anonymous(cp.grpc_addr, bundle);
    let (_, csr) = key_and_csr().unwrap();
    let join = |token: &str| JoinRequest {
        token: token.into(),
        csr: csr.clone(),
    };
    let e = anon.join(join(TOKEN_C)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message()
            .contains("the join token expired at 2020-01-01T00:00:00Z"),
        "{}",
        e.message()
    );
    // Ten failures a minute per address (the expired token was the first), then no more tries,
    // not even with a good token.
    for i in 1..10 {
        let e = anon
            .join(join(&format!("guess-{i:02}-0123456789")))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "guess {i}");
    }
    let e = anon.join(join(TOKEN_A)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    cp.shutdown().await;
}

#[tokio::test]
async fn an_agent_started_before_the_control_plane_joins_once_it_is_up() {
    let dir = tempfile::tempdir().unwrap();
    // The CA exists before the control plane runs, so the bootstrap bundle can be handed out.
    let ca_dir = dir.path().join("ca");
    std::fs::create_dir_all(&ca_dir).unwrap();
    std::fs::set_permissions(&ca_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let (authority, _) = svidcar_control::authority::Authority::open(
        &ca_dir,
        Some(&td()),
        Duration::from_secs(24 * 3600),
        Duration::from_secs(3600),
    )
    .unwrap();
    let bundle_path = dir.path().join("bundle.pem");
    std::fs::write(&bundle_path, authority.active().bundle_pem()).unwrap();
    drop(authority); // releases the directory for the control plane

    let listen = free_port();
    let a = RemoteAgent {
        dir: dir.path().to_owned(),
        name: "a",
        admin: None,
    };
    a.register(&[WEB]);
    let mut child = a
        .command(listen, &bundle_path, Some(TOKEN_A))
        .spawn()
        .unwrap();
    try_wait_for("the agent to retry", Duration::from_secs(10), || {
        a.log().contains("control plane not reachable yet")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}:\n{}", a.log()));
    let cp = control_at(
        dir.path(),
        listen,
        Duration::from_secs(24 * 3600),
        Duration::from_secs(3600),
    )
    .await;
    try_wait_for(
        "the agent to join and serve",
        Duration::from_secs(20),
        || std::os::unix::net::UnixStream::connect(a.path("agent.sock")).is_ok(),
    )
    .await
    .unwrap_or_else(|e| panic!("no join: {e}:\n{}", a.log()));
    assert_eq!(
        fetch(&a)
            .await
            .default_svid()
            .unwrap()
            .spiffe_id()
            .to_string(),
        WEB
    );
    child.kill().await.unwrap();
    cp.shutdown().await;
}

/// The agent binary in remote mode.
/// A loopback address with a port free right now (for a child process to listen on).
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct RemoteAgent {
    dir: PathBuf,
    name: &'static str,
    /// `--admin-listen`, if on.
    admin: Option<SocketAddr>,
}

impl RemoteAgent {
    fn path(&self, f: &str) -> PathBuf {
        self.dir.join(self.name).join(f)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }

    fn register(&self, ids: &[&str]) {
        std::fs::create_dir_all(self.path("")).unwrap();
        let mut yaml = String::from("entries:\n");
        for id in ids {
            yaml.push_str(&format!(
                "  - {{ spiffe_id: {id}, selectors: ['unix:uid:0'] }}\n"
            ));
        }
        std::fs::write(self.path("registration.yaml"), yaml).unwrap();
    }

    fn command(&self, server: SocketAddr, bundle: &Path, token: Option<&str>) -> Command {
        std::fs::create_dir_all(self.path("")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_svidcar"));
        cmd.args(["--log", "info", "agent", "--socket"])
            .arg(self.path("agent.sock"))
            .args(["--socket-mode", "0600", "--server"])
            .arg(server.to_string())
            .args(["--trust-domain", "example.org", "--server-bundle"])
            .arg(bundle)
            .arg("--data-dir")
            .arg(self.path("data"))
            .arg("--registration")
            .arg(self.path("registration.yaml"))
            .args(["--reload-interval", "100ms", "--bundle-refresh", "1s"]);
        if let Some(admin) = self.admin {
            cmd.arg("--admin-listen").arg(admin.to_string());
        }
        if let Some(t) = token {
            std::fs::write(self.path("token"), t).unwrap();
            cmd.arg("--join-token-file").arg(self.path("token"));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("agent.log"))
            .unwrap();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        cmd
    }

    /// Starts the agent and waits (bounded) until it serves.
    async fn serve(&self, server: SocketAddr, bundle: &Path, token: Option<&str>) -> Child {
        let mut child = self.command(server, bundle, token).spawn().unwrap();
        try_wait_for("the agent to serve", Duration::from_secs(10), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("agent exited with {status}:\n{}", self.log());
            }
            std::os::unix::net::UnixStream::connect(self.path("agent.sock")).is_ok()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}:\n{}", self.log()));
        child
    }

    /// Runs the agent expecting it to stop at start-up; returns its log.
    async fn refused(&self, server: SocketAddr, bundle: &Path, token: Option<&str>) -> String {
        let status = tokio::time::timeout(
            Duration::from_secs(20),
            self.command(server, bundle, token).status(),
        )
        .await
        .expect("the agent gives up within 20 s")
        .unwrap();
        assert!(!status.success());
        self.log()
    }

    fn node_serial(&self) -> String {
        let state = svidcar_control::agent::node_state::load(&self.path("data")).unwrap();
        check_leaf(&state.cert).unwrap().serial
    }
}

async fn fetch(agent: &RemoteAgent) -> spiffe::X509Context {
    let client = spiffe::WorkloadApiClient::connect_to(format!(
        "unix://{}",
        agent.path("agent.sock").display()
    ))
    .await
    .unwrap();
    client.fetch_x509_context().await.unwrap()
}

#[tokio::test]
async fn an_agent_on_another_node_joins_renews_and_serves_svids_from_the_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control(dir.path(), Duration::from_secs(6)).await;
    let bundle_path = dir.path().join("bundle.pem");
    let (_, pem) = http_get(cp.admin_addr, "/bundle").await;
    std::fs::write(&bundle_path, &pem).unwrap();
    let bundle = bundle_of(&pem);

    // A wrong bootstrap bundle: the control plane is not trusted, and the token is not spent.
    let a = RemoteAgent {
        dir: dir.path().to_owned(),
        name: "a",
        admin: Some(free_port()),
    };
    a.register(&[WEB, OTHER]);
    let wrong = dir.path().join("wrong.pem");
    std::fs::write(
        &wrong,
        Ca::generate(&td(), Duration::from_secs(600))
            .unwrap()
            .bundle_pem(),
    )
    .unwrap();
    let log = a.refused(cp.grpc_addr, &wrong, Some(TOKEN_A)).await;
    assert!(log.contains("joining via"), "{log}");
    // No token and no kept node SVID: a clear error.
    let c = RemoteAgent {
        dir: dir.path().to_owned(),
        name: "c",
        admin: None,
    };
    c.register(&[WEB]);
    let log = c.refused(cp.grpc_addr, &bundle_path, None).await;
    assert!(log.contains("--join-token-file"), "{log}");

    // Joined: the workload gets the SVID the node may have, signed by the control plane's CA;
    // the ID node-a may not have is refused and reported.
    let mut agent = a.serve(cp.grpc_addr, &bundle_path, Some(TOKEN_A)).await;
    let ctx = fetch(&a).await;
    let ids: Vec<String> = ctx
        .svids()
        .iter()
        .map(|s| s.spiffe_id().to_string())
        .collect();
    assert_eq!(ids, [WEB]);
    // The agent told the control plane which entry's selectors it issued for: the inventory shows
    // them with the node.
    let (_, body) = http_get(cp.admin_addr, "/identities").await;
    let rows: Vec<svidcar_control::inventory::IdentityRow> = serde_json::from_str(&body).unwrap();
    let issued = rows
        .iter()
        .find(|r| r.id.as_str() == WEB)
        .and_then(|r| r.issued.clone())
        .unwrap_or_else(|| panic!("{WEB} not in the inventory: {body}"));
    assert_eq!(
        (issued.node.as_deref(), issued.selectors.as_slice()),
        (Some("node-a"), ["unix:uid:0".to_owned()].as_slice()),
    );
    let leaf = CertificateDer::from(ctx.default_svid().unwrap().leaf().as_bytes().to_vec());
    let now = rustls::pki_types::UnixTime::now();
    verify_chain(&[leaf], &trust(bundle.clone()), now, Purpose::Server).unwrap();
    let served = ctx
        .bundle_set()
        .get(&spiffe::TrustDomain::new("example.org").unwrap())
        .unwrap();
    assert_eq!(served.authorities()[0].as_bytes(), bundle[0].as_ref());
    assert!(
        a.log().contains("not in the node's allow list"),
        "{}",
        a.log()
    );
    let mode = std::fs::metadata(a.path("data/node.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // The same token again (another node claiming to be node-a): refused.
    let b = RemoteAgent {
        dir: dir.path().to_owned(),
        name: "b",
        admin: None,
    };
    b.register(&[WEB]);
    let log = b.refused(cp.grpc_addr, &bundle_path, Some(TOKEN_A)).await;
    assert!(log.contains("unknown or already used join token"), "{log}");

    // The node SVID (6 s) is renewed at about half its lifetime; workload SVIDs keep coming.
    let first = a.node_serial();
    let renewed = tokio::time::timeout(Duration::from_secs(10), async {
        while a.node_serial() == first {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(renewed.is_ok(), "node SVID not renewed:\n{}", a.log());
    // Workload SVIDs (4 s) keep rotating through the control plane, node renewal or not.
    let before = check_leaf(ctx.default_svid().unwrap().leaf().as_bytes())
        .unwrap()
        .serial;
    let rotated = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let later = fetch(&a).await;
            let serial = check_leaf(later.default_svid().unwrap().leaf().as_bytes())
                .unwrap()
                .serial;
            if serial != before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(rotated.is_ok(), "workload SVID not rotated:\n{}", a.log());

    // Restarted without a token: the kept node SVID is used.
    agent.kill().await.unwrap();
    let _ = agent.wait().await;
    let mut agent = a.serve(cp.grpc_addr, &bundle_path, None).await;
    assert_eq!(
        fetch(&a)
            .await
            .default_svid()
            .unwrap()
            .spiffe_id()
            .to_string(),
        WEB
    );
    assert!(a
        .log()
        .contains("using the node SVID kept from an earlier run"));
    assert!(!a.log().contains("PRIVATE KEY") && !a.log().contains(TOKEN_A));
    agent.kill().await.unwrap();
    cp.shutdown().await;
}

/// A proxy fed by a remote-mode agent's Workload API socket.
async fn fed_proxy(
    agent: &RemoteAgent,
    tweak: impl FnOnce(&mut ProxyConfig),
) -> (svidcar_proxy::ProxyHandle, Arc<CredentialStore>) {
    let endpoint = WorkloadEndpoint::Unix(agent.path("agent.sock"));
    let mut config = ProxyConfig::default();
    config.admin.listen = localhost();
    config.identity.source = Some(IdentitySource::WorkloadApi);
    config.identity.workload_api = Some(endpoint.clone());
    tweak(&mut config);
    config.validate().unwrap();
    let store = CredentialStore::new();
    tokio::spawn(workload_api::run(
        endpoint,
        store.clone(),
        provider(),
        tokio_util::sync::CancellationToken::new(),
    ));
    let handle = svidcar_proxy::start(config, store.clone()).await.unwrap();
    (handle, store)
}

const CLIENT: &str = "spiffe://example.org/ns/shop/sa/client";

/// Two nodes (agents `a` serving WEB, `b` serving CLIENT) and their proxies: `b`'s outbound route
/// leads to `a`'s inbound (STRICT), which forwards to an echo app.
struct Mesh {
    a: RemoteAgent,
    agents: Vec<Child>,
    client: svidcar_proxy::ProxyHandle,
    client_store: Arc<CredentialStore>,
    server_store: Arc<CredentialStore>,
    _server: svidcar_proxy::ProxyHandle,
}

async fn mesh(dir: &Path, cp: &ControlHandle) -> Mesh {
    let bundle_path = dir.join("bundle.pem");
    std::fs::write(&bundle_path, http_get(cp.admin_addr, "/bundle").await.1).unwrap();
    let node = |name| RemoteAgent {
        dir: dir.to_owned(),
        name,
        admin: None,
    };
    let (a, b) = (node("a"), node("b"));
    a.register(&[WEB]);
    b.register(&[CLIENT]);
    let agents = vec![
        a.serve(cp.grpc_addr, &bundle_path, Some(TOKEN_A)).await,
        b.serve(cp.grpc_addr, &bundle_path, Some(TOKEN_B)).await,
    ];
    let app = echo_app().await;
    let (server, server_store) = fed_proxy(&a, |c| {
        c.outbound.enabled = false;
        c.inbound.mode = Mode::Explicit;
        c.inbound.listen = localhost();
        c.inbound.app = Some(app);
        c.inbound.mtls = MtlsMode::Strict;
    })
    .await;
    let inbound = server.inbound_addr.unwrap();
    let (client, client_store) = fed_proxy(&b, |c| {
        c.inbound.enabled = false;
        c.outbound.mode = Mode::Explicit;
        c.outbound.routes = vec![Route {
            listen: localhost(),
            upstream: inbound,
            server_id: id(WEB),
            tunnel: None,
        }];
    })
    .await;
    for store in [&server_store, &client_store] {
        wait_for("an SVID from the agent", Duration::from_secs(10), || {
            store.current().is_some()
        })
        .await;
    }
    Mesh {
        a,
        agents,
        client,
        client_store,
        server_store,
        _server: server,
    }
}

/// One call through the mesh: `data` out, the same bytes back.
async fn echo_call(m: &Mesh, data: &[u8]) -> Result<(), String> {
    let mut conn = tokio::net::TcpStream::connect(m.client.outbound_addrs[0])
        .await
        .map_err(|e| e.to_string())?;
    conn.write_all(data).await.map_err(|e| e.to_string())?;
    conn.shutdown().await.map_err(|e| e.to_string())?;
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut back))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    if back != data {
        return Err(format!(
            "{} bytes sent, {} different bytes back",
            data.len(),
            back.len()
        ));
    }
    Ok(())
}

#[tokio::test]
async fn proxies_on_two_nodes_mesh_with_identities_from_the_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control(dir.path(), Duration::from_secs(3600)).await;
    let mut m = mesh(dir.path(), &cp).await;
    assert_eq!(m.client_store.current().unwrap().id().as_str(), CLIENT);
    assert_eq!(m.server_store.current().unwrap().id().as_str(), WEB);
    echo_call(&m, &payload(256 * 1024, 7)).await.unwrap();
    for agent in &mut m.agents {
        agent.kill().await.unwrap();
    }
    cp.shutdown().await;
}

/// Which of `roots` `leaf` chains to at `at`.
fn root_of(
    leaf: &[u8],
    roots: &[CertificateDer<'static>],
    at: rustls::pki_types::UnixTime,
) -> Option<usize> {
    let now = at;
    let chain = [CertificateDer::from(leaf.to_vec())];
    roots
        .iter()
        .position(|r| verify_chain(&chain, &trust(vec![r.clone()]), now, Purpose::Server).is_ok())
}

/// The control plane's CA rotates (18 s roots): the new root reaches the remote nodes' workloads
/// before any SVID chains to it, the mesh between the nodes keeps working throughout — an open
/// connection and a new connection every 300 ms — until the first root has left the bundle.
#[tokio::test]
async fn a_ca_rotation_reaches_remote_nodes_before_it_signs_and_the_mesh_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_with_ca_ttl(dir.path(), Duration::from_secs(18), Duration::from_secs(6)).await;
    let first_root = bundle_of(&http_get(cp.admin_addr, "/bundle").await.1);
    assert_eq!(first_root.len(), 1);
    let mut m = mesh(dir.path(), &cp).await;

    // What node a's workloads see, in order: (roots in the bundle, root index the SVID chains to).
    let client = spiffe::WorkloadApiClient::connect_to(format!(
        "unix://{}",
        m.a.path("agent.sock").display()
    ))
    .await
    .unwrap();
    let mut updates = client.stream_x509_contexts().await.unwrap();
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    type Update = (
        Vec<CertificateDer<'static>>,
        Vec<u8>,
        rustls::pki_types::UnixTime,
    );
    let seen = Arc::new(std::sync::Mutex::new(Vec::<Update>::new()));
    let recorder = {
        let seen = seen.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt;
            while let Some(Ok(ctx)) = updates.next().await {
                let roots: Vec<CertificateDer<'static>> = ctx
                    .bundle_set()
                    .get(&td)
                    .unwrap()
                    .authorities()
                    .iter()
                    .map(|a| CertificateDer::from(a.as_bytes().to_vec()))
                    .collect();
                let leaf = ctx.default_svid().unwrap().leaf().as_bytes().to_vec();
                let at = rustls::pki_types::UnixTime::now();
                seen.lock().unwrap().push((roots, leaf, at));
            }
        })
    };

    // An open connection through the mesh, used all along.
    let mut open = tokio::net::TcpStream::connect(m.client.outbound_addrs[0])
        .await
        .unwrap();
    let mut sent = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut calls = 0;
    let final_bundle = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old root did not leave the bundle within 40 s:\n{}",
            m.a.log()
        );
        let chunk = payload(1024, sent as u64);
        open.write_all(&chunk).await.unwrap();
        let mut back = vec![0u8; chunk.len()];
        tokio::time::timeout(Duration::from_secs(5), open.read_exact(&mut back))
            .await
            .expect("the open connection stalled")
            .unwrap();
        assert!(back == chunk, "the open connection changed bytes");
        sent += chunk.len();
        echo_call(&m, &payload(4096, calls))
            .await
            .unwrap_or_else(|e| panic!("new connection {calls} failed: {e}\n{}", m.a.log()));
        calls += 1;
        let bundle = bundle_of(&http_get(cp.admin_addr, "/bundle").await.1);
        // With roots this short-lived, the next successor is already published by then.
        if !bundle.contains(&first_root[0]) {
            break bundle;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // Let the last bundle change reach the workloads.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    recorder.abort();
    open.shutdown().await.unwrap();

    let seen = seen.lock().unwrap().clone();
    let (last_roots, last_leaf, last_at) = seen.last().unwrap();
    assert_eq!(
        last_roots, &final_bundle,
        "the old root left the workloads' bundle"
    );
    let new_root = &final_bundle
        [root_of(last_leaf, &final_bundle, *last_at).expect("the last SVID chains to the bundle")];
    let published = seen
        .iter()
        .position(|(roots, _, _)| roots.contains(new_root))
        .expect("the new root reached node a's workloads");
    let signing = seen
        .iter()
        .position(|(_, leaf, at)| root_of(leaf, std::slice::from_ref(new_root), *at).is_some())
        .expect("an SVID signed by the new root reached node a's workloads");
    assert!(
        published < signing,
        "the new root was published (update {published}) before it signed (update {signing})"
    );
    for (i, (roots, leaf, at)) in seen.iter().enumerate() {
        assert!(
            root_of(leaf, roots, *at).is_some(),
            "update {i}: the SVID chains to a root of its bundle"
        );
    }
    assert!(calls > 20, "only {calls} calls");
    for agent in &mut m.agents {
        agent.kill().await.unwrap();
    }
    cp.shutdown().await;
}
