//! `svidcar agent` with pod attestation, end to end: real processes, all running as the proxy's
//! uid 1337, are moved into cgroups named the way the kubelet and the container runtimes name
//! them (cgroup v2 systemd-style and cgroup v1 cgroupfs-style), and a local HTTPS server plays
//! the kubelet (its certificate from a throwaway CA the agent verifies; the bearer token
//! checked) by serving pod lists in the kubelet's JSON. The agent is the real binary; the
//! callers are `svidcar api fetch`.
//!
//! Needs root (cgroups, setpriv); skipped otherwise.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::time::Instant;

const PROXY_UID: u32 = 1337;

/// A pod as the fake kubelet lists it, and the cgroups its container's processes go to.
struct Pod {
    namespace: &'static str,
    name: &'static str,
    uid: &'static str,
    service_account: &'static str,
    labels: Value,
    container: &'static str,
    container_id: String,
    /// `containerd` or `cri-o`.
    runtime: &'static str,
    /// Listed as a native sidecar (an init container that keeps running).
    init: bool,
}

impl Pod {
    /// The pod in the kubelet's `/pods` JSON (with some of the many fields a real one has).
    fn json(&self) -> Value {
        let status = json!({
            "name": self.container,
            "ready": true,
            "restartCount": 0,
            "image": "registry.example/app:1",
            "imageID": "registry.example/app@sha256:0000",
            "containerID": format!("{}://{}", self.runtime, self.container_id),
            "started": true,
            "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}},
        });
        let (containers, init_containers) = if self.init {
            (
                json!([{"name": "app", "image": "app:1"}]),
                json!([{"name": self.container, "image": "svidcar:1", "restartPolicy": "Always"}]),
            )
        } else {
            (
                json!([{"name": self.container, "image": "app:1"}]),
                json!([]),
            )
        };
        let app_status =
            json!({"name": "app", "ready": false, "restartCount": 0, "containerID": ""});
        json!({
            "metadata": {
                "name": self.name,
                "generateName": "x-",
                "namespace": self.namespace,
                "uid": self.uid,
                "resourceVersion": "1",
                "creationTimestamp": "2025-01-01T00:00:00Z",
                "labels": self.labels,
                "annotations": {"kubernetes.io/config.source": "api"},
            },
            "spec": {
                "containers": containers,
                "initContainers": init_containers,
                "serviceAccountName": self.service_account,
                "serviceAccount": self.service_account,
                "nodeName": "node-1",
                "restartPolicy": "Always",
            },
            "status": {
                "phase": "Running",
                "qosClass": "BestEffort",
                "hostIP": "10.0.0.7",
                "podIP": "10.244.0.12",
                "containerStatuses": if self.init { json!([app_status]) } else { json!([status.clone()]) },
                "initContainerStatuses": if self.init { json!([status]) } else { json!([]) },
            },
        })
    }
}

/// The fake kubelet's state: the pods it lists, the token it accepts, what it saw.
#[derive(Default)]
struct KubeletState {
    pods: Mutex<Vec<Value>>,
    token: Mutex<String>,
    requests: AtomicU64,
    refused: AtomicU64,
}

impl KubeletState {
    fn list(&self) -> String {
        json!({
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {},
            "items": *self.pods.lock().unwrap(),
        })
        .to_string()
    }
}

/// Serves `GET /pods` over TLS with `cert`/`key` until the task is dropped.
async fn fake_kubelet(
    state: Arc<KubeletState>,
    cert: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> (u16, tokio::task::JoinHandle<()>) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, state) = (acceptor.clone(), state.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let state = state.clone();
                    async move {
                        state.requests.fetch_add(1, Ordering::SeqCst);
                        let want = format!("Bearer {}", state.token.lock().unwrap());
                        let auth = req.headers().get("authorization").map(|v| v.as_bytes());
                        let (status, body) = if auth != Some(want.as_bytes()) {
                            state.refused.fetch_add(1, Ordering::SeqCst);
                            (401, "Unauthorized".to_string())
                        } else if req.uri().path() != "/pods" {
                            (404, "404 page not found".to_string())
                        } else {
                            (200, state.list())
                        };
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, task)
}

/// A CA and the kubelet's serving certificate (for `node-1` and 127.0.0.1) signed by it; the
/// CA's PEM is written to `ca_file`.
fn kubelet_pki(
    ca_file: &Path,
) -> (
    rustls::pki_types::CertificateDer<'static>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kubelet test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    std::fs::write(ca_file, ca.pem()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["node-1".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    (
        cert.der().clone(),
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
}

/// The cgroups a test creates; on drop (pass or fail) any process left in them is killed and
/// moved out, and they are removed, deepest first.
struct Cgroups {
    /// Hierarchy root and every directory created under it, in creation order.
    created: Vec<(PathBuf, PathBuf)>,
}

impl Cgroups {
    /// Creates `root/rel` (and its parents); returns it.
    fn create(&mut self, root: &Path, rel: &str) -> PathBuf {
        let mut dir = root.to_path_buf();
        for part in rel.split('/') {
            dir.push(part);
            if !dir.exists() {
                std::fs::create_dir(&dir)
                    .unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                self.created.push((root.to_path_buf(), dir.clone()));
            }
        }
        dir
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for (root, dir) in self.created.iter().rev() {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = std::fs::write(root.join("cgroup.procs"), pid.to_string());
            }
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The cgroup v2 hierarchy (the `unified` one on hybrid systems) and the v1 `pids` one, if any.
fn hierarchies() -> (PathBuf, Option<PathBuf>) {
    let unified = Path::new("/sys/fs/cgroup/unified");
    let v2 = if unified.join("cgroup.procs").exists() {
        unified.to_path_buf()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    };
    let pids = Path::new("/sys/fs/cgroup/pids");
    let v1 = pids
        .join("cgroup.procs")
        .exists()
        .then(|| pids.to_path_buf());
    (v2, v1)
}

/// The test directory, the agent and its files.
struct Setup {
    dir: tempfile::TempDir,
    cgroups: Cgroups,
    /// A directory under each hierarchy's root, unique to this run.
    prefix: String,
    v2: PathBuf,
    v1: Option<PathBuf>,
}

impl Setup {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn bin(&self) -> PathBuf {
        self.path("svidcar")
    }

    fn socket(&self) -> PathBuf {
        self.path("sock/agent.sock")
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }

    /// Creates the pod's container cgroups: systemd-style under cgroup v2, cgroupfs-style under
    /// the v1 `pids` hierarchy. Returns the directories a process must join.
    fn pod_cgroups(&mut self, pod: &Pod) -> Vec<PathBuf> {
        let systemd_uid = pod.uid.replace('-', "_");
        let scope = match pod.runtime {
            "cri-o" => format!("crio-{}.scope", pod.container_id),
            _ => format!("cri-containerd-{}.scope", pod.container_id),
        };
        let v2 = format!(
            "{}/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{systemd_uid}.slice/{scope}",
            self.prefix
        );
        let mut dirs = vec![self.cgroups.create(&self.v2.clone(), &v2)];
        if let Some(v1) = self.v1.clone() {
            let container = match pod.runtime {
                "cri-o" => format!("crio-{}", pod.container_id),
                _ => pod.container_id.clone(),
            };
            let rel = format!(
                "{}/kubepods/besteffort/pod{}/{container}",
                self.prefix, pod.uid
            );
            dirs.push(self.cgroups.create(&v1, &rel));
        }
        dirs
    }

    /// Starts the agent with `config` (YAML) and waits (bounded) until it serves.
    async fn agent(&self, config: &str) -> Child {
        std::fs::write(self.path("agent.yaml"), config).unwrap();
        let log = std::fs::File::create(self.path("agent.log")).unwrap();
        let mut command = Command::new(self.bin());
        command
            .args(["--log", "debug", "agent", "--config"])
            .arg(self.path("agent.yaml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        let child = spawn_copied(&mut command).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(
                Instant::now() < deadline,
                "the agent did not serve within 10 s:\n{}",
                self.agent_log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        child
    }

    /// Runs `svidcar api fetch` as uid/gid 1337 from a process first moved into `cgroups` (none:
    /// left where the test runs). Returns the exit code, stdout, and stderr (which starts with
    /// the caller's `/proc/self/cgroup`).
    async fn fetch_from(&self, cgroups: &[PathBuf]) -> (i32, String, String) {
        let mut script = String::new();
        for (i, _) in cgroups.iter().enumerate() {
            script.push_str(&format!("echo $$ > \"$CG{i}/cgroup.procs\" && "));
        }
        script.push_str(&format!(
            "cat /proc/self/cgroup >&2 && exec setpriv --reuid={PROXY_UID} --regid={PROXY_UID} \
             --clear-groups \"$BIN\" api fetch --timeout 20s --workload-api \"unix://$SOCK\""
        ));
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(script)
            .env("BIN", self.bin())
            .env("SOCK", self.socket())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for (i, dir) in cgroups.iter().enumerate() {
            command.env(format!("CG{i}"), dir);
        }
        let out = tokio::time::timeout(Duration::from_secs(30), command.output())
            .await
            .expect("the caller finished within 30 s")
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// Spawns the copied binary, retrying while another test's fork still holds it open for writing
/// (ETXTBSY), bounded.
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

fn hex64(c: char) -> String {
    c.to_string().repeat(64)
}

/// The default SVID a successful fetch printed.
fn default_id(out: &str) -> Option<&str> {
    out.lines()
        .find(|l| l.starts_with("svid 0 (default) "))
        .and_then(|l| l.split_whitespace().nth(3))
}

fn ids(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| l.starts_with("svid "))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("spiffe://")))
        .collect()
}

#[tokio::test]
async fn pods_sharing_uid_1337_get_their_own_identities() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root to create cgroups and run callers as uid 1337");
        return;
    }
    let (v2, v1) = hierarchies();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut s = Setup {
        dir,
        cgroups: Cgroups {
            created: Vec::new(),
        },
        prefix: format!("svidcar-k8s-test-{}", std::process::id()),
        v2,
        v1,
    };
    std::fs::create_dir(s.path("ca")).unwrap();
    std::fs::set_permissions(s.path("ca"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_svidcar"), s.bin()).unwrap();
    std::fs::set_permissions(s.bin(), std::fs::Permissions::from_mode(0o755)).unwrap();

    // Two pods, both of whose processes run as uid 1337: one gets the default identity only,
    // the other (a native sidecar under CRI-O) an entry's by k8s: selectors, then its default.
    let shop = Pod {
        namespace: "shop",
        name: "shop-7d9f",
        uid: "9a0c7e0e-5d3b-4f7a-8c1d-2b6e4f8a1c3d",
        service_account: "backend",
        labels: json!({"app": "shop"}),
        container: "app",
        container_id: hex64('a'),
        runtime: "containerd",
        init: false,
    };
    let pay = Pod {
        namespace: "pay",
        name: "payments-5c4b",
        uid: "1f2e3d4c-5b6a-4978-8a9b-0c1d2e3f4a5b",
        service_account: "default",
        labels: json!({"app": "payments", "app.kubernetes.io/part-of": "checkout"}),
        container: "svidcar",
        container_id: hex64('b'),
        runtime: "cri-o",
        init: true,
    };
    let late = Pod {
        namespace: "late",
        name: "worker-0",
        uid: "0c0c0c0c-1111-4222-8333-444444444444",
        service_account: "worker",
        labels: json!({}),
        container: "worker",
        container_id: hex64('c'),
        runtime: "containerd",
        init: false,
    };
    std::fs::write(
        s.path("registration.yaml"),
        "entries:\n  - spiffe_id: spiffe://example.org/payments\n    selectors: [\"k8s:ns:pay\", \"k8s:pod-label:app:payments\", \"k8s:container-name:svidcar\"]\n",
    )
    .unwrap();

    let token = "test-token-0123456789abcdef";
    std::fs::write(s.path("token"), format!("{token}\n")).unwrap();
    let (cert, key) = kubelet_pki(&s.path("kubelet-ca.pem"));
    let kubelet = Arc::new(KubeletState::default());
    *kubelet.token.lock().unwrap() = token.into();
    *kubelet.pods.lock().unwrap() = vec![shop.json(), pay.json()];
    let (port, server) = fake_kubelet(kubelet.clone(), cert, key).await;

    let config = format!(
        "socket: {sock}\nsocket_mode: \"0666\"\nca_dir: {ca}\ntrust_domain: example.org\n\
         registration: {reg}\nkubernetes:\n  enabled: true\n  kubelet_url: https://127.0.0.1:{port}\n  \
         kubelet_ca: {kca}\n  node_name: node-1\n  token_file: {token}\n  attest_wait: 2s\n  \
         refresh_interval: 1m\n",
        sock = s.socket().display(),
        ca = s.path("ca").display(),
        reg = s.path("registration.yaml").display(),
        kca = s.path("kubelet-ca.pem").display(),
        token = s.path("token").display(),
    );
    let mut agent = s.agent(&config).await;

    let shop_cgroups = s.pod_cgroups(&shop);
    let (code, out, err) = s.fetch_from(&shop_cgroups).await;
    eprintln!("/proc/<pid>/cgroup of the shop pod's caller:\n{err}");
    assert_eq!(code, 0, "{out}{err}\n{}", s.agent_log());
    assert!(
        err.contains(&format!(
            "/kubepods-besteffort-pod{}.slice/cri-containerd-{}.scope",
            shop.uid.replace('-', "_"),
            shop.container_id
        )),
        "{err}"
    );
    assert_eq!(
        default_id(&out),
        Some("spiffe://example.org/ns/shop/sa/backend"),
        "{out}"
    );
    assert_eq!(ids(&out).len(), 1, "{out}");

    let pay_cgroups = s.pod_cgroups(&pay);
    let (code, out, err) = s.fetch_from(&pay_cgroups).await;
    assert_eq!(code, 0, "{out}{err}\n{}", s.agent_log());
    assert_eq!(
        ids(&out),
        [
            "spiffe://example.org/payments",
            "spiffe://example.org/ns/pay/sa/default"
        ],
        "the entry's identity first, then the pod's default: {out}"
    );

    // The same uid outside any pod gets nothing.
    let (code, out, err) = s.fetch_from(&[]).await;
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("no identity issued"), "{err}");

    // A pod the kubelet does not list: refreshed with backoff for attest_wait, then refused.
    let before = kubelet.requests.load(Ordering::SeqCst);
    let late_cgroups = s.pod_cgroups(&late);
    let started = Instant::now();
    let (code, out, err) = s.fetch_from(&late_cgroups).await;
    let took = started.elapsed();
    assert_eq!(code, 3, "{out}{err}\n{}", s.agent_log());
    let reason = format!("pod {} not in the kubelet's pod list after 2s", late.uid);
    assert!(err.contains(&reason), "{err}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "{took:?}"
    );
    let asked = kubelet.requests.load(Ordering::SeqCst) - before;
    eprintln!("refused after {took:?} and {asked} pod-list requests: {err}");
    assert!(
        (2..=20).contains(&asked),
        "refreshes while waiting: {asked} (some, rate-limited)"
    );

    // The token is re-read: rotate it (the kubelet now accepts only the new one), then the pod
    // appears while its caller waits, and is served.
    let rotated = "rotated-token-fedcba9876543210";
    std::fs::write(s.path("token"), rotated).unwrap();
    *kubelet.token.lock().unwrap() = rotated.into();
    let refused_before = kubelet.refused.load(Ordering::SeqCst);
    let caller = s.fetch_from(&late_cgroups);
    let add_pod = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        kubelet.pods.lock().unwrap().push(late.json());
    };
    let ((code, out, err), ()) = tokio::join!(caller, add_pod);
    assert_eq!(code, 0, "{out}{err}\n{}", s.agent_log());
    assert_eq!(
        default_id(&out),
        Some("spiffe://example.org/ns/late/sa/worker"),
        "{out}"
    );
    assert_eq!(
        kubelet.refused.load(Ordering::SeqCst),
        refused_before,
        "the rotated token was used"
    );

    let log = s.agent_log();
    assert!(log.contains(&reason), "the refusal is logged:\n{log}");
    assert!(
        !log.contains(token) && !log.contains(rotated),
        "the token leaked into the log"
    );
    agent.kill().await.unwrap();
    server.abort();
}
