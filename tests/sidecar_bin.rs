//! The proxy-only binary, `svidcar-proxy` (package `svidcar-sidecar`, what injected pods run):
//! two of its processes, configured by flags and PEM files exactly as `svidcar run` would be,
//! carry bytes client → explicit outbound route → mTLS → STRICT explicit inbound → an echo app,
//! and write the same access-log records as `svidcar run` (the same fields, the verified
//! client ID). And its crate graph has none of the control plane, the injector, SQLite or the
//! Kubernetes API types (the point of the binary: docs/memory.md).
//!
//! Cargo sets `CARGO_BIN_EXE_<name>` only for this package's binaries, so the test builds
//! `svidcar-proxy` itself with the cargo running it, in the same target directory and profile
//! as `svidcar` (a no-op when it is fresh). Everything stays on loopback; the proxies are killed
//! when their handles drop; every wait is bounded.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use support::{echo_app, wait_for, Pki, ProxyProcess, CLIENT_ID, SERVER_ID, TD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Crates the sidecar binary must never link (normal dependencies, at any depth).
const NOT_IN_THE_SIDECAR: [&str; 6] = [
    "svidcar-control",
    "svidcar-inject",
    "svidcar-testkit",
    "svidcar-iptables",
    "rusqlite",
    "k8s-openapi",
];

/// `svidcar-proxy`, built (once per test run) next to `svidcar`: same target directory, same
/// profile.
fn sidecar_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let svidcar = Path::new(env!("CARGO_BIN_EXE_svidcar"));
        let dir = svidcar.parent().unwrap();
        let profile = dir.file_name().unwrap().to_str().unwrap();
        let mut cargo = std::process::Command::new(env!("CARGO"));
        cargo.current_dir(env!("CARGO_MANIFEST_DIR")).args([
            "build",
            "--quiet",
            "-p",
            "svidcar-sidecar",
            "--bin",
            "svidcar-proxy",
        ]);
        match profile {
            "debug" => {}
            "release" => {
                cargo.arg("--release");
            }
            other => {
                cargo.args(["--profile", other]);
            }
        }
        let out = cargo.output().expect("cargo runs");
        assert!(
            out.status.success(),
            "cargo build -p svidcar-sidecar: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = dir.join(format!("svidcar-proxy{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.is_file(), "{} was not built", bin.display());
        bin
    })
}

/// The access-log record of the first connection `proxy` logged, once written.
async fn access_record(proxy: &ProxyProcess, what: &str) -> Value {
    wait_for(what, Duration::from_secs(10), || {
        proxy
            .log_lines()
            .into_iter()
            .find(|l| l["target"] == "svidcar::access")
    })
    .await
}

/// A client proxy (`client_bin`) routing to a STRICT server proxy (`server_bin`) in front of an
/// echo app; echoes `payload` through them and returns both proxies' access-log records.
async fn echo_through(
    client_bin: &Path,
    server_bin: &Path,
    payload: &[u8],
    dir: &Path,
) -> (Value, Value) {
    let pki = Pki::new(TD);
    let server_files = pki.write("server", &pki.issue(SERVER_ID));
    let client_files = pki.write("client", &pki.issue(CLIENT_ID));
    let app = echo_app().await;
    let server = ProxyProcess::builder("server", dir)
        .bin(server_bin)
        .svid(&server_files)
        .explicit_inbound(app)
        .start()
        .await;
    let client = ProxyProcess::builder("client", dir)
        .bin(client_bin)
        .svid(&client_files)
        .explicit_routes(&[server.addr("inbound")], SERVER_ID)
        .start()
        .await;

    let mut conn = TcpStream::connect(client.addr("outbound")).await.unwrap();
    conn.write_all(payload).await.unwrap();
    conn.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut echoed))
        .await
        .expect("the echo within 10 s")
        .unwrap();
    assert_eq!(echoed, payload, "the bytes came back through the pair");
    drop(conn);
    (
        access_record(&client, "the client proxy's access record").await,
        access_record(&server, "the server proxy's access record").await,
    )
}

fn keys(record: &Value) -> BTreeSet<String> {
    record
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| !matches!(k.as_str(), "timestamp"))
        .cloned()
        .collect()
}

#[tokio::test]
async fn svidcar_proxy_carries_bytes_over_mtls_and_logs_like_svidcar_run() {
    let bin = sidecar_bin();
    let dir = tempfile::tempdir().unwrap();
    let payload: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let (client, server) = echo_through(bin, bin, &payload, dir.path()).await;
    assert_eq!(server["client.id"], CLIENT_ID, "{server}");
    assert_eq!(server["tls"], "mutual_tls", "{server}");
    assert_eq!(server["outcome"], "complete", "{server}");
    assert_eq!(client["server.id"], SERVER_ID, "{client}");
    assert_eq!(client["bytes_up"], payload.len(), "{client}");
    assert_eq!(client["bytes_down"], payload.len(), "{client}");

    // The same exchange between two `svidcar run` processes logs records with the same fields.
    let cli = Path::new(env!("CARGO_BIN_EXE_svidcar"));
    let dir2 = tempfile::tempdir().unwrap();
    let (cli_client, cli_server) = echo_through(cli, cli, &payload, dir2.path()).await;
    assert_eq!(keys(&client), keys(&cli_client));
    assert_eq!(keys(&server), keys(&cli_server));
    for field in ["direction", "tls", "outcome", "client.id", "server.id"] {
        assert_eq!(client[field], cli_client[field], "client {field}");
        assert_eq!(server[field], cli_server[field], "server {field}");
    }
}

#[test]
fn svidcar_proxy_reports_a_bad_configuration_as_svidcar_run_does() {
    let run = |bin: &Path| {
        let out = std::process::Command::new(bin)
            .args([
                "run",
                "--inbound-mode",
                "explicit",
                "--cert",
                "/nonexistent",
            ])
            .env_remove("SVIDCAR_LOG")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(sidecar_bin());
    assert_eq!(code, Some(2), "{err}");
    let (_, cli_err) = run(Path::new(env!("CARGO_BIN_EXE_svidcar")));
    let last = |s: &str| s.lines().last().unwrap_or_default().to_owned();
    assert_eq!(
        last(&err).strip_prefix("svidcar-proxy: "),
        last(&cli_err).strip_prefix("svidcar: "),
        "svidcar-proxy: {err}\nsvidcar: {cli_err}"
    );
}

/// The platform rustc builds for by default (`rustc -vV`'s `host:`).
fn host_triple() -> String {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = std::process::Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("rustc -vV runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names its host")
        .to_owned()
}

/// `svidcar-sidecar`'s normal dependencies, at any depth, from `cargo metadata` (the lock file,
/// no network, this platform): none of [`NOT_IN_THE_SIDECAR`].
#[test]
fn the_sidecar_links_no_control_plane_sqlite_or_kubernetes_code() {
    let out = std::process::Command::new(env!("CARGO"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        // This platform's dependencies only: other platforms' crates (Windows console
        // support, ...) are never downloaded on a fresh machine, and `--offline` cannot fetch them.
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
        ])
        .arg(host_triple())
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes = meta["resolve"]["nodes"].as_array().unwrap();
    let name_of = |id: &str| -> String {
        meta["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let root = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "svidcar-sidecar")
        .expect("svidcar-sidecar is a workspace member")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut seen = BTreeSet::from([root.clone()]);
    let mut todo = vec![root];
    while let Some(id) = todo.pop() {
        let node = nodes.iter().find(|n| n["id"] == id.as_str()).unwrap();
        for dep in node["deps"].as_array().unwrap() {
            let normal = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null());
            let pkg = dep["pkg"].as_str().unwrap().to_owned();
            if normal && seen.insert(pkg.clone()) {
                todo.push(pkg);
            }
        }
    }
    let names: BTreeSet<String> = seen.iter().map(|id| name_of(id)).collect();
    assert!(names.contains("svidcar-proxy"), "{names:?}");
    assert!(names.contains("svidcar-alloc"), "{names:?}");
    let linked: Vec<&str> = NOT_IN_THE_SIDECAR
        .into_iter()
        .filter(|n| names.contains(*n))
        .collect();
    assert!(
        linked.is_empty(),
        "svidcar-proxy links {linked:?} (through svidcar-sidecar's normal dependencies)"
    );
}
