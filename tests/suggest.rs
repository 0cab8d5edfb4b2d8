//! `svidcar policy suggest` end to end: traffic through a real proxy pair reporting to a real
//! control plane fills its edge table; the suggestion read from `/edges` passes `svidcar policy
//! check`; installed in its AUDIT form it reports zero would-be denials when the same traffic is
//! replayed, and exactly one for a call outside what was observed; in its ALLOW form the replay
//! passes and that call is refused.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use support::*;
use svidcar_control::server::{start, ControlArgs, ControlHandle};
use svidcar_proxy::config::{Dur, MtlsMode};
use svidcar_proxy::ProxyHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONTROL_ID: &str = "spiffe://example.org/ns/svidcar/sa/control";

/// The observed traffic: (method, path).
const TRAFFIC: &[(&str, &str)] = &[
    ("GET", "/api/v1/items/1"),
    ("GET", "/api/v1/items/2"),
    ("POST", "/api/v1/orders"),
    ("GET", "/healthz"),
];

/// The status code of `method path` sent through `route`.
async fn call(route: SocketAddr, method: &str, path: &str) -> u16 {
    let mut s = TcpStream::connect(route).await.unwrap();
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {out:?}"))
}

async fn control(pki: &Pki, policies: &Path, state: &Path) -> ControlHandle {
    let files = pki.write("control", &pki.issue(CONTROL_ID));
    start(ControlArgs {
        policy_dir: policies.to_owned(),
        state_dir: state.to_owned(),
        listen: localhost(),
        admin_listen: localhost(),
        cert: Some(files.cert),
        key: Some(files.key),
        bundle: Some(files.bundle),
        reload_interval: Dur(Duration::from_millis(100)),
        ..Default::default()
    })
    .await
    .expect("control plane starts")
}

/// AUDIT decisions the server proxy counted.
fn audits(server: &ProxyHandle) -> f64 {
    server
        .metrics()
        .render(&svidcar_identity::CredentialStore::default())
        .lines()
        .filter(|l| {
            l.starts_with("svidcar_authz_decisions_total{") && l.contains("action=\"AUDIT\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Replaces the policy directory's content with the files of `from`; waits for the server
/// proxy to install the new set.
async fn install(from: &Path, policies: &Path, server: &ProxyHandle) {
    let before = server.authz().version();
    for f in std::fs::read_dir(policies).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    for f in std::fs::read_dir(from).unwrap() {
        let f = f.unwrap().path();
        let name = f.file_name().unwrap().to_str().unwrap().to_owned();
        let tmp = policies.join(format!(".{name}.tmp"));
        std::fs::copy(&f, &tmp).unwrap();
        std::fs::rename(&tmp, policies.join(name)).unwrap();
    }
    let authz = server.authz().clone();
    wait_for(
        "the new policy on the server proxy",
        Duration::from_secs(10),
        || authz.version() != before,
    )
    .await;
}

fn suggest(admin: SocketAddr, mode: &str, out: &Path) -> String {
    let (code, stdout, stderr) = svidcar(&[
        "policy",
        "suggest",
        "--control",
        &admin.to_string(),
        "--since",
        "1h",
        "--destination",
        SERVER_ID,
        "--mode",
        mode,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, stdout, stderr) = svidcar(&["policy", "check", out.to_str().unwrap()]);
    assert_eq!(
        code, 0,
        "policy check of the {mode} suggestion: {stdout}{stderr}"
    );
    assert!(stdout.contains("ok: 1 policies"), "{stdout}");
    let files: Vec<_> = std::fs::read_dir(out).unwrap().collect();
    assert_eq!(files.len(), 1);
    std::fs::read_to_string(files[0].as_ref().unwrap().path()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suggestion_from_observed_traffic_audits_nothing_of_it_and_refuses_the_rest() {
    let pki = Pki::new(TD);
    let app = http_app().await;
    let policies = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let cp = control(&pki, policies.path(), state.path()).await;
    let server = start_server(&pki, app, MtlsMode::Strict, |c| {
        c.policy.control_plane = Some(cp.grpc_addr.into());
        c.policy.control_plane_id = Some(id(CONTROL_ID));
    })
    .await;
    let authz = server.authz().clone();
    wait_for("the first policy", Duration::from_secs(10), || {
        authz.version().is_some()
    })
    .await;
    let client = start_client(&pki, server.inbound_addr.unwrap(), SERVER_ID, |_| {}).await;
    let route = client.outbound_addrs[0];

    // Observed traffic: no policy, the default allows everything.
    for (m, p) in TRAFFIC {
        assert_eq!(call(route, m, p).await, 200, "{m} {p}");
    }
    // The edge table has them: GET and POST under /api/v1/, GET /healthz.
    let admin = cp.admin_addr;
    wait_until(
        "three edges in the control plane's table",
        Duration::from_secs(15),
        || async move {
            let (code, out, _) = svidcar(&[
                "policy",
                "suggest",
                "--control",
                &admin.to_string(),
                "--since",
                "1h",
            ]);
            (code == 0 && out.matches("methods:").count() == 2 && out.contains("\"/healthz\""))
                .then_some(())
        },
    )
    .await;

    let audit_dir = tempfile::tempdir().unwrap();
    let enforce_dir = tempfile::tempdir().unwrap();
    let audit = suggest(admin, "audit", audit_dir.path());
    assert!(audit.contains("action: AUDIT"), "{audit}");
    let enforce = suggest(admin, "enforce", enforce_dir.path());
    assert!(
        enforce.contains(&format!("principals: [\"{CLIENT_ID}\"]"))
            && enforce.contains("methods: [\"GET\", \"POST\"], paths: [\"/api/v1/*\"]")
            && enforce.contains("methods: [\"GET\"], paths: [\"/healthz\"]"),
        "{enforce}"
    );

    // AUDIT form: the same traffic is let through and audited zero times...
    install(audit_dir.path(), policies.path(), &server).await;
    assert_eq!(audits(&server), 0.0);
    for (m, p) in TRAFFIC {
        assert_eq!(call(route, m, p).await, 200, "{m} {p}");
    }
    assert_eq!(
        audits(&server),
        0.0,
        "would-be denials on the observed traffic"
    );
    // ...a call outside it still passes (AUDIT decides nothing) and is one would-be denial.
    assert_eq!(call(route, "DELETE", "/api/v1/items/1").await, 200);
    assert_eq!(audits(&server), 1.0, "DELETE was never observed");
    assert_eq!(call(route, "GET", "/admin").await, 200);
    assert_eq!(audits(&server), 2.0, "/admin was never observed");

    // ALLOW form: the same traffic passes, the call outside is refused.
    install(enforce_dir.path(), policies.path(), &server).await;
    for (m, p) in TRAFFIC {
        assert_eq!(call(route, m, p).await, 200, "{m} {p}");
    }
    assert_eq!(call(route, "DELETE", "/api/v1/items/1").await, 403);
    assert_eq!(call(route, "GET", "/admin").await, 403);

    client.shutdown().await;
    server.shutdown().await;
    cp.shutdown().await;
}
