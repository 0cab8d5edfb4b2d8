//! `svidcar identities` end to end: a control plane holding the CA, agents on three nodes getting
//! their workloads' SVIDs from it, proxies fed by two of them streaming decisions back. The
//! inventory lists every issued identity with its node, expiry and serial, the last-seen times
//! traffic shows, and the flags: an identity issued but never used, and — once its agent is gone
//! and its SVID expired — expired and gone.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use svidcar_control::node::control_id;
use svidcar_control::server::{start, ControlArgs, ControlHandle};
use svidcar_identity::{workload_api, CredentialStore, TrustDomain, WorkloadEndpoint};
use svidcar_proxy::config::{Dur, IdentitySource, Mode, MtlsMode, ProxyConfig, Route};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use support::{echo_app, id, localhost, svidcar, try_wait_for, wait_for, wait_until};

const WEB: &str = "spiffe://example.org/ns/shop/sa/web";
const CLIENT: &str = "spiffe://example.org/ns/shop/sa/client";
const IDLE: &str = "spiffe://example.org/ns/shop/sa/idle";

fn td() -> TrustDomain {
    TrustDomain::parse("example.org").unwrap()
}

fn token(node: &str) -> String {
    format!("token-{node}-0123456789abcdef")
}

async fn control(dir: &Path) -> ControlHandle {
    for d in ["ca", "policies"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::set_permissions(dir.join("ca"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut nodes = String::from("nodes:\n");
    for n in ["a", "b", "c"] {
        nodes.push_str(&format!(
            "  - name: node-{n}\n    join_token: {}\n    allow: ['spiffe://example.org/ns/shop/*']\n",
            token(n)
        ));
    }
    std::fs::write(dir.join("nodes.yaml"), nodes).unwrap();
    start(ControlArgs {
        policy_dir: dir.join("policies"),
        state_dir: dir.join("state"),
        listen: localhost(),
        admin_listen: localhost(),
        ca_dir: Some(dir.join("ca")),
        trust_domain: Some(td()),
        ca_ttl: Dur(Duration::from_secs(24 * 3600)),
        svid_ttl: Dur(Duration::from_secs(3)),
        node_svid_ttl: Dur(Duration::from_secs(3600)),
        nodes: Some(dir.join("nodes.yaml")),
        reload_interval: Dur(Duration::from_millis(100)),
        ..Default::default()
    })
    .await
    .expect("control plane starts")
}

async fn bundle(admin: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(b"GET /bundle HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split_once("\r\n\r\n").unwrap().1.to_owned()
}

/// `svidcar agent` on node `name`, serving `ids` to uid 0, SVIDs from the control plane.
async fn agent(dir: &Path, name: &str, ids: &[&str], cp: &ControlHandle) -> (Child, PathBuf) {
    let home = dir.join(name);
    std::fs::create_dir_all(&home).unwrap();
    let mut yaml = String::from("entries:\n");
    for id in ids {
        yaml.push_str(&format!(
            "  - {{ spiffe_id: {id}, selectors: ['unix:uid:0'] }}\n"
        ));
    }
    std::fs::write(home.join("registration.yaml"), yaml).unwrap();
    std::fs::write(home.join("token"), token(name)).unwrap();
    let bundle_path = dir.join("bundle.pem");
    std::fs::write(&bundle_path, bundle(cp.admin_addr).await).unwrap();
    let log = std::fs::File::create(home.join("agent.log")).unwrap();
    let sock = home.join("agent.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_svidcar"))
        .args(["--log", "info", "agent", "--socket"])
        .arg(&sock)
        .args(["--socket-mode", "0600", "--server"])
        .arg(cp.grpc_addr.to_string())
        .args(["--trust-domain", "example.org", "--server-bundle"])
        .arg(&bundle_path)
        .arg("--data-dir")
        .arg(home.join("data"))
        .arg("--registration")
        .arg(home.join("registration.yaml"))
        .arg("--join-token-file")
        .arg(home.join("token"))
        .args(["--reload-interval", "100ms", "--bundle-refresh", "1s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let log = home.join("agent.log");
    try_wait_for("the agent to serve", Duration::from_secs(10), || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "agent exited with {status}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    })
    .await
    .unwrap();
    (child, sock)
}

/// A proxy fed by the agent at `sock`, streaming its decisions to the control plane.
async fn proxy(
    sock: &Path,
    cp: &ControlHandle,
    tweak: impl FnOnce(&mut ProxyConfig),
) -> svidcar_proxy::ProxyHandle {
    let endpoint = WorkloadEndpoint::Unix(sock.to_owned());
    let mut config = ProxyConfig::default();
    config.admin.listen = localhost();
    config.identity.source = Some(IdentitySource::WorkloadApi);
    config.identity.workload_api = Some(endpoint.clone());
    config.policy.control_plane = Some(cp.grpc_addr.into());
    config.policy.control_plane_id = Some(control_id(&td()));
    tweak(&mut config);
    config.validate().unwrap();
    let store: Arc<CredentialStore> = CredentialStore::new();
    tokio::spawn(workload_api::run(
        endpoint,
        store.clone(),
        svidcar_identity::tls::provider(),
        tokio_util::sync::CancellationToken::new(),
    ));
    let handle = svidcar_proxy::start(config, store.clone()).await.unwrap();
    wait_for("an SVID from the agent", Duration::from_secs(10), || {
        store.current().is_some()
    })
    .await;
    handle
}

/// `svidcar identities --output json`, by SPIFFE ID.
fn identities(admin: SocketAddr, unused_days: &str) -> Vec<Value> {
    let (code, out, err) = svidcar(&[
        "identities",
        "--control",
        &admin.to_string(),
        "--output",
        "json",
        "--unused-days",
        unused_days,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn row<'a>(rows: &'a [Value], id: &str) -> Option<&'a Value> {
    rows.iter().find(|r| r["id"] == id)
}

fn flags(r: &Value) -> Vec<String> {
    r["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inventory_lists_issued_identities_with_last_seen_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control(dir.path()).await;
    let (mut a, a_sock) = agent(dir.path(), "a", &[WEB], &cp).await;
    let (mut b, b_sock) = agent(dir.path(), "b", &[CLIENT], &cp).await;
    let (mut c, c_sock) = agent(dir.path(), "c", &[IDLE], &cp).await;

    let app = echo_app().await;
    let server = proxy(&a_sock, &cp, |c| {
        c.outbound.enabled = false;
        c.inbound.mode = Mode::Explicit;
        c.inbound.listen = localhost();
        c.inbound.app = Some(app);
        c.inbound.mtls = MtlsMode::Strict;
    })
    .await;
    let inbound = server.inbound_addr.unwrap();
    let client = proxy(&b_sock, &cp, |c| {
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
    // IDLE's workload fetches its SVID and never calls anyone.
    let idle_client = spiffe::WorkloadApiClient::connect_to(format!("unix://{}", c_sock.display()))
        .await
        .unwrap();
    let ctx = idle_client.fetch_x509_context().await.unwrap();
    assert_eq!(ctx.default_svid().unwrap().spiffe_id().to_string(), IDLE);

    let before_call = svidcar_identity::unix_now() * 1000;
    let mut conn = tokio::net::TcpStream::connect(client.outbound_addrs[0])
        .await
        .unwrap();
    conn.write_all(b"ping").await.unwrap();
    conn.shutdown().await.unwrap();
    let mut back = Vec::new();
    conn.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"ping");

    // The call shows up: CLIENT last seen as caller, WEB as callee, one peer each.
    let admin = cp.admin_addr;
    let rows = wait_until(
        "the call in the inventory",
        Duration::from_secs(15),
        || async move {
            let rows = identities(admin, "0");
            let seen = row(&rows, CLIENT)
                .is_some_and(|r| r["last_seen_as_source_ms"].as_i64() >= Some(before_call - 1000));
            seen.then_some(rows)
        },
    )
    .await;
    let web = row(&rows, WEB).unwrap();
    let client_row = row(&rows, CLIENT).unwrap();
    let idle = row(&rows, IDLE).unwrap();
    assert!(
        web["last_seen_as_destination_ms"].as_i64() >= Some(before_call - 1000),
        "{web}"
    );
    assert!(web["last_seen_as_source_ms"].is_null(), "{web}");
    assert_eq!(
        (web["peers"].as_u64(), client_row["peers"].as_u64()),
        (Some(1), Some(1))
    );
    for (r, node) in [(web, "node-a"), (client_row, "node-b"), (idle, "node-c")] {
        assert_eq!(r["issued"]["node"], node, "{r}");
        assert!(
            r["issued"]["serial"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{r}"
        );
        assert!(
            r["issued"]["not_after"].as_i64() > Some(svidcar_identity::unix_now()),
            "{r}"
        );
    }
    assert!(
        flags(web).is_empty() && flags(client_row).is_empty(),
        "{rows:?}"
    );
    assert_eq!(
        flags(idle),
        ["unused-issued"],
        "issued, never seen in traffic"
    );
    assert!(
        idle["last_seen_as_source_ms"].is_null() && idle["last_seen_as_destination_ms"].is_null()
    );
    // Identities issued today are not yet "unused for 30 days".
    assert!(flags(row(&identities(admin, "30"), IDLE).unwrap()).is_empty());

    // IDLE's node goes away: nobody renews its SVID, which expires within 3 s.
    c.kill().await.unwrap();
    wait_until(
        "IDLE to be expired and gone",
        Duration::from_secs(15),
        || async move {
            let rows = identities(admin, "0");
            row(&rows, IDLE)
                .is_some_and(|r| flags(r).contains(&"expired-and-gone".to_owned()))
                .then_some(())
        },
    )
    .await;
    // Still served and renewed: WEB and CLIENT are not expired.
    let rows = identities(admin, "0");
    assert!(!flags(row(&rows, WEB).unwrap()).contains(&"expired-and-gone".to_owned()));

    // The table names the same.
    let (code, table, err) = svidcar(&[
        "identities",
        "--control",
        &admin.to_string(),
        "--unused-days",
        "0",
    ]);
    assert_eq!(code, 0, "{err}");
    let line = table
        .lines()
        .find(|l| l.starts_with(IDLE))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        line.contains("node-c") && line.contains("expired-and-gone"),
        "{table}"
    );
    assert!(
        table.lines().next().unwrap().starts_with("SPIFFE ID"),
        "{table}"
    );

    for agent in [&mut a, &mut b] {
        agent.kill().await.unwrap();
    }
    cp.shutdown().await;
}
