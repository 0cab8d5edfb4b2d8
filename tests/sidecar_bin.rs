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
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use support::{echo_app, wait_for, Pki, SvidFiles, CLIENT_ID, SERVER_ID, TD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

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

/// A proxy process logging JSON to a file; killed on drop.
struct Proxy {
    _child: Child,
    log: PathBuf,
    started: Value,
}

impl Proxy {
    async fn spawn(bin: &Path, name: &str, files: &SvidFiles, extra: &[&str], dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let mut args: Vec<String> = vec!["--log-format".into(), "json".into(), "run".into()];
        for (flag, path) in [
            ("--cert", &files.cert),
            ("--key", &files.key),
            ("--bundle", &files.bundle),
        ] {
            args.push(flag.into());
            args.push(path.display().to_string());
        }
        args.extend(["--admin-listen", "127.0.0.1:0"].map(String::from));
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let child = Command::new(bin)
            .args(&args)
            .env_remove("SVIDCAR_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let started = wait_for(
            &format!("the {name} proxy ({}) to listen", bin.display()),
            Duration::from_secs(20),
            || {
                log_lines(&log).into_iter().find(|l| {
                    l["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("svidcar proxy listening"))
                })
            },
        )
        .await;
        Proxy {
            _child: child,
            log,
            started,
        }
    }

    /// A listener's address as logged: `127.0.0.1:1` or, for a list, `[127.0.0.1:1]`.
    fn addr(&self, field: &str) -> SocketAddr {
        let s = self.started[field].as_str().unwrap();
        let s = s.trim_start_matches('[').trim_end_matches(']');
        s.split(',').next().unwrap().trim().parse().unwrap()
    }

    /// The access-log record of the first connection, once written.
    async fn access_record(&self, what: &str) -> Value {
        wait_for(what, Duration::from_secs(10), || {
            log_lines(&self.log)
                .into_iter()
                .find(|l| l["target"] == "svidcar::access")
        })
        .await
    }
}

fn log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
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
    let app = echo_app().await.to_string();
    let server = Proxy::spawn(
        server_bin,
        "server",
        &server_files,
        &[
            "--outbound-enabled",
            "false",
            "--inbound-mode",
            "explicit",
            "--inbound-listen",
            "127.0.0.1:0",
            "--inbound-app",
            &app,
        ],
        dir,
    )
    .await;
    let route = format!("127.0.0.1:0={},{SERVER_ID}", server.addr("inbound"));
    let client = Proxy::spawn(
        client_bin,
        "client",
        &client_files,
        &[
            "--inbound-enabled",
            "false",
            "--outbound-mode",
            "explicit",
            "--route",
            &route,
        ],
        dir,
    )
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
        client
            .access_record("the client proxy's access record")
            .await,
        server
            .access_record("the server proxy's access record")
            .await,
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
    let out = std::process::Command::new(sidecar_bin())
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
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let (_, cli_err) = {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_svidcar"))
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
        (o.status, String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let last = |s: &str| s.lines().last().unwrap_or_default().to_owned();
    assert_eq!(
        last(&err).strip_prefix("svidcar-proxy: "),
        last(&cli_err).strip_prefix("svidcar: "),
        "svidcar-proxy: {err}\nsvidcar: {cli_err}"
    );
}

/// `svidcar-sidecar`'s normal dependencies, at any depth, from `cargo metadata` (the lock file,
/// no network): none of [`NOT_IN_THE_SIDECAR`].
#[test]
fn the_sidecar_links_no_control_plane_sqlite_or_kubernetes_code() {
    let out = std::process::Command::new(env!("CARGO"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["metadata", "--format-version", "1", "--offline"])
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
