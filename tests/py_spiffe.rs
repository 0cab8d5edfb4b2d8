//! py-spiffe (PyPI `spiffe`, on gRPC C-core), unmodified, against a real `svidcar agent`. gRPC
//! C-core sends the socket path percent-encoded as `:authority` (`tmp%2F…%2Fagent.sock`),
//! which h2 alone refuses; the agent must serve it as SPIRE does. Also: a stream the agent
//! resets is logged and counted. Needs `python3 -m pip install spiffe` (tests/run.sh does it).

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::Value;
use tokio::process::{Child, Command};

use support::{parse_metrics, sample, try_wait_for};

const FIRST: &str = "spiffe://example.org/py/first";
const SECOND: &str = "spiffe://example.org/py/second";

/// Every Workload API call py-spiffe makes, each result as one JSON object.
const CLIENT: &str = r#"
import json, sys
from cryptography.hazmat.primitives.serialization import Encoding
from spiffe import WorkloadApiClient
from spiffe.spiffe_id.spiffe_id import TrustDomain

def der(cert):
    return cert.public_bytes(Encoding.DER).hex()

def error(call):
    try:
        call()
        return "no error"
    except Exception as e:
        return f"{type(e).__name__}: {e}"

with WorkloadApiClient(sys.argv[1]) as client:
    svids = client.fetch_x509_svids(timeout=10)
    default = client.fetch_x509_svid(timeout=10)
    context = client.fetch_x509_context(timeout=10)
    bundles = client.fetch_x509_bundles(timeout=10)
    ours = bundles.get_bundle_for_trust_domain(TrustDomain("example.org"))
    print(json.dumps({
        "svids": [{"id": str(s.spiffe_id), "leaf": der(s.leaf), "chain": len(s.cert_chain)} for s in svids],
        "default": str(default.spiffe_id),
        "context_default": str(context.default_svid.spiffe_id),
        "trust_domains": sorted(str(b.trust_domain) for b in bundles.bundles),
        "authorities": sorted(der(c) for c in ours.x509_authorities),
        "fetch_jwt_svid": error(lambda: client.fetch_jwt_svid(audience={"svidcar"})),
        "fetch_jwt_bundles": error(lambda: client.fetch_jwt_bundles(timeout=10)),
        "validate_jwt_svid": error(lambda: client.validate_jwt_svid("a.b.c", "svidcar")),
    }))
"#;

struct Agent {
    dir: tempfile::TempDir,
    child: Child,
    admin: String,
}

impl Agent {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn socket(&self) -> PathBuf {
        self.path("sock/agent.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }

    /// Starts `svidcar agent` with two entries for this process's uid, and waits until it serves.
    async fn start() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        std::fs::create_dir(&ca).unwrap();
        std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o700)).unwrap();
        // The owner of /proc/self is this process's effective uid: what attestation sees.
        let uid = std::fs::metadata("/proc/self").unwrap().uid();
        std::fs::write(
            dir.path().join("registration.yaml"),
            format!(
                "entries:\n  - {{ spiffe_id: {FIRST}, selectors: [\"unix:uid:{uid}\"] }}\n  - {{ spiffe_id: {SECOND}, selectors: [\"unix:uid:{uid}\"] }}\n"
            ),
        )
        .unwrap();
        let admin = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_svidcar"))
            .args(["--log", "info", "agent", "--socket"])
            .arg(dir.path().join("sock/agent.sock"))
            .arg("--ca-dir")
            .arg(&ca)
            .args(["--trust-domain", "example.org", "--registration"])
            .arg(dir.path().join("registration.yaml"))
            .args(["--admin-listen", &admin])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let agent = Agent { dir, child, admin };
        try_wait_for("the agent to serve", Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(agent.socket()).is_ok()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}:\n{}", agent.log()));
        agent
    }

    /// `/metrics` from the admin endpoint.
    fn metrics(&self) -> String {
        let mut s = std::net::TcpStream::connect(&self.admin).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body.split_once("\r\n\r\n").unwrap().1.to_owned()
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        sample(&parse_metrics(&self.metrics()).await, name, labels)
    }
}

fn python_has_py_spiffe() {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import spiffe"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 cannot import spiffe: python3 -m pip install spiffe (tests/run.sh installs it)"
    );
}

fn der_of_pem(path: &Path) -> String {
    let pem = std::fs::read(path).unwrap();
    let der = CertificateDer::from_pem_slice(&pem).unwrap();
    der.iter().map(|b| format!("{b:02x}")).collect()
}

fn uri_sans(leaf_hex: &str) -> Vec<String> {
    let der: Vec<u8> = (0..leaf_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&leaf_hex[i..i + 2], 16).unwrap())
        .collect();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_spiffe_fetches_svids_and_bundles_and_gets_unimplemented_for_jwt() {
    python_has_py_spiffe();
    let agent = Agent::start().await;
    let endpoint = format!("unix://{}", agent.socket().display());
    let out = Command::new("python3")
        .args(["-c", CLIENT, &endpoint])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("py-spiffe answers within a minute")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "py-spiffe failed:\n{}\n{stdout}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    let got: Value = serde_json::from_str(stdout.trim()).unwrap();

    let svids = got["svids"].as_array().unwrap();
    let ids: Vec<&str> = svids.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [FIRST, SECOND], "both SVIDs, in entry order");
    for s in svids {
        assert_eq!(
            uri_sans(s["leaf"].as_str().unwrap()),
            [s["id"].as_str().unwrap()]
        );
        assert_eq!(s["chain"], 1);
    }
    assert_eq!(got["default"], FIRST);
    assert_eq!(got["context_default"], FIRST);
    assert_eq!(got["trust_domains"], serde_json::json!(["example.org"]));
    assert_eq!(
        got["authorities"],
        serde_json::json!([der_of_pem(&agent.path("ca/ca.pem"))]),
        "the bundle is the agent's CA"
    );
    for call in ["fetch_jwt_svid", "fetch_jwt_bundles", "validate_jwt_svid"] {
        let e = got[call].as_str().unwrap();
        assert!(e.contains("StatusCode.UNIMPLEMENTED"), "{call}: {e}");
    }

    // It worked because the authority was mended, and nothing was reset.
    let rewrites = agent
        .metric("svidcar_agent_workload_api_authority_rewrites_total", &[])
        .await
        .unwrap_or(0.0);
    assert!(rewrites >= 1.0, "{}", agent.metrics());
    assert!(
        !agent
            .metrics()
            .contains("svidcar_agent_workload_api_resets_total{"),
        "{}",
        agent.metrics()
    );
    assert!(!agent.log().contains("WARN"), "{}", agent.log());
    drop(agent.child);
}

/// One frame: 9-byte head and payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_agent_resets_is_logged_and_counted() {
    let agent = Agent::start().await;
    // A request without :method: h2 resets the stream (PROTOCOL_ERROR).
    let mut s = std::os::unix::net::UnixStream::connect(agent.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend(frame(0x4, 0, 0, &[]));
    // :scheme http, :path /, :authority localhost (literal, no indexing).
    let mut block = vec![0x86, 0x84, 0x01, 0x09];
    block.extend_from_slice(b"localhost");
    bytes.extend(frame(0x1, 0x4 | 0x1, 1, &block));
    s.write_all(&bytes).unwrap();
    let counted = try_wait_for("the reset to be counted", Duration::from_secs(10), || {
        agent.metrics().contains(
            "svidcar_agent_workload_api_resets_total{code=\"PROTOCOL_ERROR\",what=\"stream\"} 1",
        )
    })
    .await;
    assert!(counted.is_ok(), "{}", agent.metrics());
    let log = agent.log();
    assert!(
        log.contains("WARN") && log.contains("reset a stream") && log.contains("PROTOCOL_ERROR"),
        "{log}"
    );
    drop(s);
    drop(agent.child);
}
