//! Authorization end to end with a local policy directory: allowed calls pass, an edit to deny
//! takes effect within a second for new and open connections, bad edits keep the last valid
//! policy; and the `policy check` / `policy explain` commands.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::path::Path;
use std::time::Duration;

use support::*;
use svidcar_proxy::config::{Dur, MtlsMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

fn allow_client(port: u16) -> String {
    format!(
        "kind: AuthorizationPolicy\nname: allow-client\nselector: [{SERVER_ID}]\naction: ALLOW\nrules:\n  - from: [{{ principals: [{CLIENT_ID}] }}]\n    to: [{{ ports: [{port}] }}]\n"
    )
}

fn deny_client() -> String {
    format!("kind: AuthorizationPolicy\nname: deny-client\naction: DENY\nrules:\n  - from: [{{ principals: [{CLIENT_ID}] }}]\n")
}

/// Writes atomically (rename), as a config-management tool would.
fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_edit_takes_effect_within_a_second_for_new_and_open_connections() {
    let app = echo_app().await;
    let pki = Pki::new(TD);
    let policies = tempfile::tempdir().unwrap();
    write(policies.path(), "policy.yaml", &allow_client(app.port()));
    let server = start_server(&pki, app, MtlsMode::Strict, |c| {
        c.policy.dir = Some(policies.path().to_owned());
        c.policy.reload_interval = Dur(Duration::from_millis(100));
    })
    .await;
    let inbound = server.inbound_addr.unwrap();
    let mut log = server.subscribe();
    wait_for("the policy to load", Duration::from_secs(5), || {
        server.authz().version().is_some()
    })
    .await;
    let client = start_client(&pki, inbound, SERVER_ID, |_| {}).await;
    let route = client.outbound_addrs[0];

    // Allowed: an open connection carries bytes.
    let mut open = TcpStream::connect(route).await.unwrap();
    open.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    open.read_exact(&mut buf).await.unwrap();

    // A bad edit is rejected and the last valid policy stays in force.
    let before = server.authz().version();
    write(
        policies.path(),
        "broken.yaml",
        "kind: AuthorizationPolicy\nname: broken\naction: MAYBE\n",
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(server.authz().version(), before);
    assert_eq!(
        round_trip(route, b"still allowed").await.unwrap(),
        b"still allowed"
    );
    assert!(next_record(&mut log).await.outcome.as_str() == "complete");
    std::fs::remove_file(policies.path().join("broken.yaml")).unwrap();

    // Edit to deny: within a second new connections are refused and the open one is closed.
    let edited = Instant::now();
    write(
        policies.path(),
        "policy.yaml",
        &format!("{}---\n{}", allow_client(app.port()), deny_client()),
    );
    let rec = next_record(&mut log).await;
    assert!(
        edited.elapsed() < Duration::from_secs(1),
        "took {:?}",
        edited.elapsed()
    );
    assert_eq!(
        (rec.outcome.as_str(), rec.reason()),
        ("cancelled", "policy_revoked")
    );
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), open.read_to_end(&mut rest))
        .await
        .expect("open connection closed");
    assert!(round_trip(route, b"now denied")
        .await
        .unwrap_or_default()
        .is_empty());
    let rec = next_record(&mut log).await;
    assert_eq!(
        (rec.outcome.as_str(), rec.reason()),
        ("refused", "policy_denied")
    );
    assert!(
        rec.refusal
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
            .contains("deny-client#rule0"),
        "{}",
        rec.refusal
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    );

    let metrics = server
        .metrics()
        .render(&svidcar_identity::CredentialStore::default());
    // Two DENY decisions: the open connection the edit closed, and the new one it refused.
    assert!(metrics.contains(&format!(r#"svidcar_authz_decisions_total{{action="DENY",destination_id="{SERVER_ID}",policy="deny-client",rule="0",source_id="{CLIENT_ID}"}} 2"#)), "{metrics}");
    assert!(metrics.contains("svidcar_policy_revoked_connections_total 1"));
}

#[tokio::test]
async fn startup_default_denies_until_the_first_policy_and_ready_says_so() {
    let app = echo_app().await;
    let pki = Pki::new(TD);
    let policies = tempfile::tempdir().unwrap();
    let missing = policies.path().join("not-yet");
    let server = start_server(&pki, app, MtlsMode::Permissive, |c| {
        c.policy.dir = Some(missing.clone());
        c.policy.reload_interval = Dur(Duration::from_millis(100));
    })
    .await;
    let mut log = server.subscribe();
    assert!(round_trip(server.inbound_addr.unwrap(), b"x")
        .await
        .unwrap_or_default()
        .is_empty());
    let rec = next_record(&mut log).await;
    assert_eq!(rec.reason(), "policy_denied");
    assert!(
        rec.refusal
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
            .contains("no policy received yet"),
        "{}",
        rec.refusal
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    // The directory appears with a policy that allows everything.
    std::fs::create_dir(&missing).unwrap();
    write(
        &missing,
        "all.yaml",
        "kind: AuthorizationPolicy\nname: all\naction: ALLOW\nrules: [{}]\n",
    );
    wait_for("the policy to load", Duration::from_secs(5), || {
        server.authz().version().is_some()
    })
    .await;
    assert_eq!(
        round_trip(server.inbound_addr.unwrap(), b"x")
            .await
            .unwrap(),
        b"x"
    );
}

#[test]
fn policy_check_gives_exact_errors_and_explain_names_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    std::fs::write(dir.path().join("a.yaml"), allow_client(8080)).unwrap();
    let (code, out, _) = svidcar(&["policy", "check", d]);
    assert_eq!(code, 0);
    assert!(out.starts_with("ok: 1 policies"), "{out}");

    std::fs::write(
        dir.path().join("b.yaml"),
        "kind: AuthorizationPolicy\nname: bad\naction: ALLOW\nrules:\n  - from: [{ principals: [\"spiffe://example.org/ns//x\"] }]\n",
    )
    .unwrap();
    let (code, _, err) = svidcar(&["policy", "check", d]);
    assert_ne!(code, 0);
    let b = dir.path().join("b.yaml");
    assert!(
        err.contains(&format!("error: {}: document 1: rules[0].from[0].principals[0]: \"spiffe://example.org/ns//x\" is not a valid SPIFFE ID or ID pattern: path cannot contain empty segments", b.display())),
        "{err}"
    );
    std::fs::remove_file(&b).unwrap();

    let (code, out, _) = svidcar(&[
        "policy", "explain", d, "--from", CLIENT_ID, "--to", SERVER_ID, "--port", "8080",
    ]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("ALLOW: allowed by ALLOW policy allow-client#rule0"),
        "{out}"
    );
    assert!(
        out.contains("decided by policy allow-client rule 0"),
        "{out}"
    );
    let (code, out, _) = svidcar(&["policy", "explain", d, "--to", SERVER_ID, "--port", "8080"]);
    assert!(
        out.starts_with("DENY: ALLOW policies select this workload but no rule matched"),
        "{out}"
    );
    assert_eq!(
        code, 1,
        "explain exits 1 for a DENY, so scripts can test it"
    );
    // Usage errors keep exit status 2.
    let (code, _, err) = svidcar(&["policy", "explain", d, "--to", SERVER_ID]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = svidcar(&[
        "policy",
        "explain",
        d,
        "--to",
        "example.org/x",
        "--port",
        "1",
    ]);
    assert_eq!(code, 2, "{err}");
}

#[tokio::test]
async fn peer_authentication_in_policy_sets_the_port_mode() {
    let app = echo_app().await;
    let pki = Pki::new(TD);
    let policies = tempfile::tempdir().unwrap();
    write(
        policies.path(),
        "policy.yaml",
        &format!("kind: PeerAuthentication\nname: lax\nselector: [{SERVER_ID}]\nmtls: STRICT\nport_mtls: {{ {}: PERMISSIVE }}\n", app.port()),
    );
    // The proxy's own configuration says STRICT; the policy makes the app's port PERMISSIVE.
    let server = start_server(&pki, app, MtlsMode::Strict, |c| {
        c.policy.dir = Some(policies.path().to_owned());
        c.policy.reload_interval = Dur(Duration::from_millis(100));
    })
    .await;
    wait_for("the policy to load", Duration::from_secs(5), || {
        server.authz().version().is_some()
    })
    .await;
    assert_eq!(
        round_trip(server.inbound_addr.unwrap(), b"plain ok")
            .await
            .unwrap(),
        b"plain ok"
    );
    // Back to STRICT for that port: plaintext is refused again.
    let version = server.authz().version();
    write(
        policies.path(),
        "policy.yaml",
        &format!("kind: PeerAuthentication\nname: lax\nselector: [{SERVER_ID}]\nmtls: STRICT\n"),
    );
    wait_for("the policy to reload", Duration::from_secs(5), || {
        server.authz().version() != version
    })
    .await;
    assert!(round_trip(server.inbound_addr.unwrap(), b"plain")
        .await
        .unwrap_or_default()
        .is_empty());
}

#[test]
fn check_and_explain_say_that_method_and_path_rules_match_http_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    std::fs::write(
        dir.path().join("http.yaml"),
        format!("kind: AuthorizationPolicy\nname: readers\nselector: [{SERVER_ID}]\naction: ALLOW\nrules:\n  - from: [{{ principals: [{CLIENT_ID}] }}]\n    to: [{{ ports: [8080] }}]\n  - from: [{{ principals: [{CLIENT_ID}] }}]\n    to: [{{ methods: [GET], paths: [/index.html] }}]\n"),
    )
    .unwrap();
    let (code, out, _) = svidcar(&["policy", "check", d]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("note: rule 1 matches HTTP requests only") && !out.contains("note: rule 0"),
        "{out}"
    );
    let tcp = [
        "policy", "explain", d, "--from", CLIENT_ID, "--to", SERVER_ID, "--port", "9090",
    ];
    let (code, out, _) = svidcar(&tcp);
    assert!(out.starts_with("DENY"), "{out}");
    assert_eq!(code, 1);
    assert!(
        out.contains("note: policy readers rule 1 matches HTTP requests only")
            && out.contains("evaluated as a TCP connection"),
        "{out}"
    );
    let mut http = tcp.to_vec();
    http.extend(["--method", "GET", "--path", "/index.html"]);
    let (code, out, _) = svidcar(&http);
    assert!(out.starts_with("ALLOW") && !out.contains("note:"), "{out}");
    assert_eq!(code, 0);
}
