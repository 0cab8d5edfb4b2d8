//! The admission webhook of `svidcar control`, as the Kubernetes API server would use it: HTTPS
//! checked against the trust bundle (the `caBundle`) and the Service's DNS name, an
//! `admission.k8s.io/v1` AdmissionReview posted by curl, and the answer's JSON patch applied by
//! a third-party RFC 6902 implementation (Python's `jsonpatch`). The patched pod must equal what
//! `svidcar inject` writes for the same pod: one code path, two front doors.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure
#![allow(clippy::disallowed_types)] // a synchronous test: there is no tokio clock to pause

use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const DNS: &str = "svidcar-control.svidcar-system.svc";

struct Control(Child);

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `svidcar control` holding a CA, with the webhook on; returns it with the webhook's port once
/// it answers, and writes `bundle.pem`: the caBundle an operator puts into the
/// MutatingWebhookConfiguration, fetched from the query port's `/bundle`.
fn start_control(dir: &Path) -> (Control, u16) {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    // The CA directory is the trust domain's key: private to its owner.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir.join("ca"))
        .unwrap();
    let (webhook, query, grpc) = (free_port(), free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_svidcar"))
        .args([
            "--log",
            "warn",
            "control",
            "--trust-domain",
            "cluster.local",
        ])
        .arg("--ca-dir")
        .arg(dir.join("ca"))
        .arg("--policy-dir")
        .arg(&policies)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--listen", &format!("127.0.0.1:{grpc}")])
        .args(["--admin-listen", &format!("127.0.0.1:{query}")])
        .args(["--webhook-listen", &format!("127.0.0.1:{webhook}")])
        .args(["--inject-image", "registry.example/svidcar:test"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("control.log")).unwrap())
        .spawn()
        .unwrap();
    let control = Control(child);
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", webhook)).is_err()
        || std::net::TcpStream::connect(("127.0.0.1", query)).is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "control plane did not start: {}",
            std::fs::read_to_string(dir.join("control.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = Command::new("curl")
        .args(["-sSf", "--max-time", "10"])
        .arg(format!("http://127.0.0.1:{query}/bundle"))
        .output()
        .unwrap();
    assert!(out.status.success(), "GET /bundle");
    std::fs::write(dir.join("bundle.pem"), &out.stdout).unwrap();
    (control, webhook)
}

/// curl, as the API server: TLS verified against `cacert` for the Service name.
fn post_review(dir: &Path, webhook: u16, body: &Value) -> (u16, String) {
    let file = dir.join("review.json");
    std::fs::write(&file, serde_json::to_vec(body).unwrap()).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(dir.join("bundle.pem"))
        .args(["--resolve", &format!("{DNS}:{webhook}:127.0.0.1")])
        .args(["-H", "content-type: application/json"])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("https://{DNS}:{webhook}/inject"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_owned())
}

fn review(uid: &str, operation: &str, pod: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "shop",
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "dryRun": false,
        }
    })
}

/// Applies an RFC 6902 patch with Python's `jsonpatch`.
fn apply_with_jsonpatch(doc: &Value, patch: &Value) -> Value {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import json, sys, jsonpatch\n\
             d = json.load(sys.stdin)\n\
             print(json.dumps(jsonpatch.apply_patch(d['doc'], d['patch'])))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with jsonpatch (tests/run.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(&json!({"doc": doc, "patch": patch})).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "jsonpatch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `svidcar inject` on `pod` (as YAML), with the settings the webhook injects with; the result
/// as JSON.
fn inject_cli(dir: &Path, pod: &Value, control_plane: &str, control_plane_id: &str) -> Value {
    let file = dir.join("pod.yaml");
    std::fs::write(&file, serde_yaml_ng::to_string(pod).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_svidcar"))
        .args(["inject", "--image", "registry.example/svidcar:test"])
        .args(["--control-plane", control_plane])
        .args(["--control-plane-id", control_plane_id])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "svidcar inject: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&out.stdout).unwrap();
    serde_json::to_value(yaml).unwrap()
}

#[test]
fn the_webhook_patches_pods_like_svidcar_inject() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let (_control, webhook) = start_control(dir);

    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-7d4b9c-",
            "labels": {"app": "web"},
            "annotations": {"svidcar.io/opaque-ports": "5432"},
        },
        "spec": {
            "serviceAccountName": "web",
            "containers": [{
                "name": "web",
                "image": "nginx:1.27",
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 20},
            }],
        },
    });
    let (code, body) = post_review(dir, webhook, &review("uid-1", "CREATE", &pod));
    assert_eq!(code, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    assert_eq!(response["uid"], "uid-1");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let patch = {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(response["patch"].as_str().unwrap())
            .unwrap();
        serde_json::from_slice::<Value>(&raw).unwrap()
    };
    let patched = apply_with_jsonpatch(&pod, &patch);
    let cli = inject_cli(
        dir,
        &pod,
        &format!("{DNS}:15012"),
        "spiffe://cluster.local/svidcar/control",
    );
    assert_eq!(patched, cli, "webhook patch vs svidcar inject");
    let spec = &patched["spec"];
    assert!(
        spec["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "svidcar-proxy"),
        "{spec}"
    );

    // Opted out: allowed, unchanged, and the user is told.
    let mut opted_out = pod.clone();
    opted_out["metadata"]["labels"]["svidcar.io/inject"] = json!("false");
    let (code, body) = post_review(dir, webhook, &review("uid-2", "CREATE", &opted_out));
    assert_eq!(code, 200);
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["response"]["allowed"], true);
    assert!(r["response"].get("patch").is_none(), "{r}");
    assert!(
        r["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .starts_with("svidcar: pod shop/web-7d4b9c-… not injected"),
        "{r}"
    );

    // A bad annotation: refused, naming it.
    let mut bad = pod.clone();
    bad["metadata"]["annotations"]["svidcar.io/mtls"] = json!("sometimes");
    let (code, body) = post_review(dir, webhook, &review("uid-3", "CREATE", &bad));
    assert_eq!(code, 200);
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["response"]["allowed"], false, "{r}");
    assert_eq!(r["response"]["status"]["code"], 400);
    assert!(
        r["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("svidcar.io/mtls"),
        "{r}"
    );

    // Not a review at all: HTTP 400 with the reason.
    let (code, body) = post_review(dir, webhook, &json!({"hello": "world"}));
    assert_eq!(code, 400);
    assert!(body.contains("AdmissionReview"), "{body}");
}

#[test]
fn the_serving_certificate_is_for_the_service_name_only() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let (_control, webhook) = start_control(dir);
    // The API server calls the Service name; any other name fails verification.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "/dev/null"])
        .arg("--cacert")
        .arg(dir.join("bundle.pem"))
        .args(["--resolve", &format!("other.example:{webhook}:127.0.0.1")])
        .arg(format!("https://other.example:{webhook}/inject"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("other.example"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And the webhook's certificate names the control plane's SPIFFE ID, as an X.509-SVID.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo | openssl s_client -connect 127.0.0.1:{webhook} -servername {DNS} 2>/dev/null \
             | openssl x509 -noout -ext subjectAltName"
        ))
        .output()
        .unwrap();
    let sans = String::from_utf8_lossy(&out.stdout);
    assert!(
        sans.contains(&format!("DNS:{DNS}"))
            && sans.contains("URI:spiffe://cluster.local/svidcar/control"),
        "{sans}"
    );
}
