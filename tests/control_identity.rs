//! `svidcar control`'s own identity and state directory, end to end: its SVID streamed from a
//! real `svidcar agent` over the Workload API and rotated live (proxies keep getting policy, new
//! connections see the new certificate), a bounded wait that fails in words when no SVID comes,
//! and one control plane per state directory (the real binary, twice).

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use support::{echo_app, id, localhost, wait_for, SERVER_ID};
use svidcar_control::server::{start, ControlConfig};
use svidcar_identity::tls::TlsContext;
use svidcar_identity::{check_leaf, workload_api, CredentialStore, Dur, WorkloadEndpoint};
use svidcar_proxy::config::{Mode, MtlsMode, ProxyConfig};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

const CONTROL_ID: &str = "spiffe://example.org/ns/svidcar/sa/control";

fn policy(name: &str) -> String {
    format!(
        "kind: AuthorizationPolicy\nname: {name}\nselector: [{SERVER_ID}]\naction: ALLOW\nrules: [{{}}]\n"
    )
}

fn write_policy(dir: &Path, text: &str) {
    let tmp = dir.join(".policy.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("policy.yaml")).unwrap();
}

/// A 0700 directory (what CA directories must be).
fn private_dir(path: &Path) -> PathBuf {
    std::fs::create_dir_all(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).unwrap();
    path.to_owned()
}

/// Runs the real binary with `args`, stderr to `log`.
fn svidcar(args: &[&str], log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_svidcar"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A real `svidcar agent` serving this test's uid two SVIDs: the control plane's (hint
/// `control`) and a workload's (hint `server`), each living `ttl`.
async fn agent(dir: &Path, ttl: &str) -> (Child, WorkloadEndpoint) {
    let uid = nix::unistd::getuid().as_raw();
    let registration = dir.join("registration.yaml");
    std::fs::write(
        &registration,
        format!(
            "entries:\n  - {{ spiffe_id: {CONTROL_ID}, selectors: ['unix:uid:{uid}'], hint: control }}\n  - {{ spiffe_id: {SERVER_ID}, selectors: ['unix:uid:{uid}'], hint: server }}\n"
        ),
    )
    .unwrap();
    let ca = private_dir(&dir.join("agent-ca"));
    let socket = dir.join("agent.sock");
    let log = dir.join("agent.log");
    let child = svidcar(
        &[
            "--log",
            "info",
            "agent",
            "--socket",
            socket.to_str().unwrap(),
            "--ca-dir",
            ca.to_str().unwrap(),
            "--trust-domain",
            "example.org",
            "--registration",
            registration.to_str().unwrap(),
            "--svid-ttl",
            ttl,
            "--reload-interval",
            "100ms",
        ],
        &log,
    );
    support::try_wait_for("the agent to serve", Duration::from_secs(10), || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}:\n{}", read(&log)));
    (child, WorkloadEndpoint::Unix(socket))
}

/// The serial of the certificate the control plane presents to a new connection, verified as
/// `CONTROL_ID` with the workload's SVID from `store`.
async fn presented_serial(grpc: std::net::SocketAddr, store: &Arc<CredentialStore>) -> String {
    let tls = TlsContext::new(store.clone(), svidcar_identity::tls::provider()).unwrap();
    let config = tls.client_config_with_alpn(&id(CONTROL_ID), b"h2").unwrap();
    let tcp = TcpStream::connect(grpc).await.unwrap();
    let conn = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(config).connect(
            rustls::pki_types::ServerName::IpAddress(grpc.ip().into()),
            tcp,
        ),
    )
    .await
    .expect("handshake within 5 s")
    .expect("the control plane presents its ID");
    let certs = conn.get_ref().1.peer_certificates().unwrap();
    check_leaf(&certs[0]).unwrap().serial
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_takes_its_svid_from_the_workload_api_and_rotates_it_live() {
    let dir = tempfile::tempdir().unwrap();
    // 4 s SVIDs: re-issued every 2 s or so.
    let (mut agent, endpoint) = agent(dir.path(), "4s").await;
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    write_policy(&policies, &policy("first"));

    let cp = start(ControlConfig {
        policy_dir: policies.clone(),
        state_dir: dir.path().join("state"),
        listen: localhost(),
        admin_listen: localhost(),
        workload_api: Some(endpoint.clone()),
        svid_hint: Some("control".into()),
        identity_wait: Dur(Duration::from_secs(10)),
        reload_interval: Dur(Duration::from_millis(100)),
        ..ControlConfig::default()
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "control plane starts: {e}\n{}",
            read(&dir.path().join("agent.log"))
        )
    });

    // A proxy with the workload's SVID from the same agent gets its policy from it.
    let store = CredentialStore::new();
    let stop = CancellationToken::new();
    tokio::spawn(workload_api::run_with_hint(
        endpoint.clone(),
        Some("server".into()),
        store.clone(),
        svidcar_identity::tls::provider(),
        stop.clone(),
    ));
    let app = echo_app().await;
    let mut config = ProxyConfig::default();
    config.admin.listen = localhost();
    config.outbound.enabled = false;
    config.inbound.mode = Mode::Explicit;
    config.inbound.listen = localhost();
    config.inbound.app = Some(app);
    config.inbound.mtls = MtlsMode::Strict;
    config.policy.control_plane = Some(cp.grpc_addr.into());
    config.policy.control_plane_id = Some(id(CONTROL_ID));
    let proxy = svidcar_proxy::start(config, store.clone()).await.unwrap();
    let authz = proxy.authz().clone();
    wait_for(
        "the proxy's first policy from the control plane",
        Duration::from_secs(15),
        || authz.version().is_some(),
    )
    .await;

    // New connections see a new certificate after the agent rotated it.
    let mut serials = vec![presented_serial(cp.grpc_addr, &store).await];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(12);
    while serials.len() < 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let serial = presented_serial(cp.grpc_addr, &store).await;
        if serials.last() != Some(&serial) {
            serials.push(serial);
        }
    }
    assert!(
        serials.len() >= 3,
        "expected two rotations of the control plane's SVID within 12 s, saw {serials:?}\n{}",
        read(&dir.path().join("agent.log"))
    );

    // And after the rotations, policy still flows.
    let before = authz.version();
    write_policy(&policies, &policy("second"));
    wait_for(
        "the edited policy after the rotations",
        Duration::from_secs(10),
        || authz.version() != before,
    )
    .await;

    proxy.shutdown().await;
    stop.cancel();
    cp.shutdown().await;
    agent.kill().await.unwrap();
}

#[tokio::test]
async fn without_an_svid_within_identity_wait_start_up_fails_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    write_policy(&policies, &policy("first"));
    let socket = dir.path().join("nobody.sock");
    let started = tokio::time::Instant::now();
    let e = start(ControlConfig {
        policy_dir: policies,
        state_dir: dir.path().join("state"),
        listen: localhost(),
        admin_listen: localhost(),
        workload_api: Some(WorkloadEndpoint::Unix(socket.clone())),
        identity_wait: Dur(Duration::from_millis(800)),
        ..ControlConfig::default()
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(started.elapsed() >= Duration::from_millis(800));
    assert!(started.elapsed() < Duration::from_secs(5), "bounded");
    let expected = format!(
        "workload_api: no SVID from the Workload API at unix://{} within 800ms (identity_wait)",
        socket.display()
    );
    assert!(e.starts_with(&expected), "{e}");
}

/// Starts `svidcar control` on `state` (with its own CA directory `ca`); the log at `log`.
fn control(dir: &Path, state: &Path, ca: &str, log: &Path) -> Child {
    let ca = private_dir(&dir.join(ca));
    svidcar(
        &[
            "--log",
            "info",
            "control",
            "--policy-dir",
            dir.join("policies").to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--ca-dir",
            ca.to_str().unwrap(),
            "--trust-domain",
            "example.org",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        log,
    )
}

#[tokio::test]
async fn a_second_control_plane_on_the_same_state_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    write_policy(&policies, &policy("first"));
    let state = dir.path().join("state");
    let (log1, log2) = (dir.path().join("one.log"), dir.path().join("two.log"));

    let mut first = control(dir.path(), &state, "ca1", &log1);
    wait_for(
        "the first control plane to listen",
        Duration::from_secs(20),
        || read(&log1).contains("svidcar control listening"),
    )
    .await;

    let mut second = control(dir.path(), &state, "ca2", &log2);
    let status = tokio::time::timeout(Duration::from_secs(20), second.wait())
        .await
        .expect("the second one exits at once")
        .unwrap();
    assert!(!status.success());
    let expected = format!(
        "state directory {} is in use by another svidcar control (pid {})",
        state.display(),
        first.id().unwrap()
    );
    let text = read(&log2);
    assert!(text.contains(&expected), "{text}");
    assert!(
        !dir.path().join("ca2/ca.pem").exists(),
        "refused before creating a CA"
    );

    // Once the first is gone, the directory is free again.
    first.kill().await.unwrap();
    let mut third = control(dir.path(), &state, "ca1", &log2);
    wait_for(
        "a control plane on the freed directory",
        Duration::from_secs(20),
        || read(&log2).contains("svidcar control listening"),
    )
    .await;
    third.kill().await.unwrap();
}
