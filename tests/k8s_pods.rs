//! The Kubernetes path end to end, without a cluster: two pod manifests go through
//! `svidcar inject`, and two network namespaces act as the two pods, each configured **only** by
//! what the injected pod spec says — the `svidcar-init` container's command and args, the
//! `svidcar-proxy` container's command, args, env (downward-API fields resolved as the kubelet
//! would), user and Workload API volume mount. `svidcar agent` runs on the "node" with pod
//! attestation: each proxy process sits in a cgroup with a kubelet-style name, and a stand-in
//! kubelet (Python's HTTPS server, serving the pod list in the kubelet's JSON format) tells the
//! agent which pod and service account that is. Both proxies run as uid 1337, yet each gets its
//! own `spiffe://cluster.local/ns/<ns>/sa/<sa>`.
//!
//! Then: curl in the client pod calls the server pod's IP as if there were no mesh, and the app
//! sees the client's SPIFFE ID; the server pod is STRICT, so a plaintext call from the "node"
//! is refused, while the kubelet's readiness probe — rewritten by the injector to the proxy's
//! admin port — passes, so the pod would become Ready.
//!
//! Needs root. Namespaces, processes and cgroups are removed on drop, even when the test fails;
//! every wait is bounded.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure
#![allow(clippy::disallowed_types)] // a synchronous test: there is no tokio clock to pause

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_yaml_ng::Value;
use support::netns::{
    curl_in as curl, listening, root_or_skip, sh as run, wait_until as wait_for, World,
};

const TD: &str = "cluster.local";
const POD_A: &str = "10.253.0.1";
const POD_B: &str = "10.253.0.2";
const NODE: &str = "10.254.0.1";
const POD_B_NODE: &str = "10.254.0.2";

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_sequence)
        .map(|s| s.iter().map(|x| x.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// The container called `name` among the pod spec's init containers and containers.
fn container<'a>(spec: &'a Value, name: &str) -> &'a Value {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|k| spec.get(*k).and_then(Value::as_sequence))
        .flatten()
        .find(|c| str_of(c, "name") == Some(name))
        .unwrap_or_else(|| panic!("no container {name} in {spec:?}"))
}

/// A container's command line, with the image's `svidcar` replaced by the binary under test.
/// The image's `svidcar-proxy` is replaced by it too: `svidcar-proxy run` is `svidcar run`
/// (the same flags, the same `svidcar_proxy::process` code; tests/sidecar_bin.rs runs that
/// binary itself).
fn command_line(c: &Value, svidcar: &str) -> Vec<String> {
    let mut argv = strings(c.get("command"));
    argv.extend(strings(c.get("args")));
    assert!(!argv.is_empty(), "the container has a command: {c:?}");
    if ["svidcar", "svidcar-proxy"].contains(&argv[0].rsplit('/').next().unwrap_or_default()) {
        argv[0] = svidcar.to_owned();
    } else {
        argv.insert(0, svidcar.to_owned());
    }
    argv
}

/// A container's environment as the kubelet would set it: values, and the downward-API fields
/// this pod has.
fn env_of(c: &Value, pod: &BTreeMap<&str, String>) -> Vec<(String, String)> {
    let mut out = vec![];
    for e in c
        .get("env")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let name = str_of(e, "name").unwrap().to_owned();
        let value = if let Some(v) = str_of(e, "value") {
            v.to_owned()
        } else if let Some(field) = e
            .get("valueFrom")
            .and_then(|v| v.get("fieldRef"))
            .and_then(|f| str_of(f, "fieldPath"))
        {
            pod.get(field)
                .unwrap_or_else(|| panic!("the test knows no downward-API field {field}"))
                .clone()
        } else {
            panic!("env {name}: only value and fieldRef are expected: {e:?}")
        };
        out.push((name, value));
    }
    out
}

/// One pod of the test: its injected spec and the facts the kubelet would know.
struct Pod {
    name: &'static str,
    sa: &'static str,
    uid: String,
    proxy_cid: String,
    spec: Value,
    ip: &'static str,
}

impl Pod {
    fn downward(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("metadata.name", self.name.to_owned()),
            ("metadata.namespace", "shop".to_owned()),
            ("metadata.uid", self.uid.clone()),
            ("spec.serviceAccountName", self.sa.to_owned()),
            ("spec.nodeName", "node-1".to_owned()),
            ("status.podIP", self.ip.to_owned()),
            ("status.hostIP", NODE.to_owned()),
        ])
    }

    /// The pod as the kubelet's `/pods` lists it.
    fn kubelet_json(&self) -> serde_json::Value {
        serde_json::json!({
            "metadata": {"name": self.name, "namespace": "shop", "uid": self.uid,
                         "labels": {"app": self.name}},
            "spec": {"serviceAccountName": self.sa, "nodeName": "node-1",
                     "containers": [{"name": "app", "image": "app:1"}]},
            "status": {
                "phase": "Running",
                "podIP": self.ip,
                "initContainerStatuses": [{
                    "name": "svidcar-proxy", "image": "svidcar:0.1.0", "imageID": "",
                    "ready": true, "restartCount": 0, "started": true,
                    "containerID": format!("containerd://{}", self.proxy_cid),
                    "state": {"running": {"startedAt": "2026-12-02T00:00:00Z"}},
                }],
                "containerStatuses": [{
                    "name": "app", "image": "app:1", "imageID": "", "ready": true,
                    "restartCount": 0,
                    "containerID": format!("containerd://{}", "a".repeat(64)),
                    "state": {"running": {"startedAt": "2026-12-02T00:00:00Z"}},
                }],
            },
        })
    }
}

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: shop
  annotations:
    svidcar.io/destinations: "10.253.0.2/32=spiffe://cluster.local/ns/shop/sa/backend"
spec:
  serviceAccountName: frontend
  containers:
  - name: app
    image: curlimages/curl:8.10.1
    command: ["sleep", "infinity"]
---
apiVersion: v1
kind: Pod
metadata:
  name: server
  namespace: shop
spec:
  serviceAccountName: backend
  containers:
  - name: app
    image: python:3.12-slim
    command: ["python3", "/srv/echo.py"]
    ports:
    - name: http
      containerPort: 8080
    readinessProbe:
      httpGet:
        path: /healthz
        port: http
      periodSeconds: 5
"#;

/// The server pod's app: answers every GET with the identity header the proxy set.
const ECHO_APP: &str = r#"
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("path=%s client=%s\n" % (self.path, self.headers.get("x-svidcar-client-id"))).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"#;

/// A stand-in kubelet: HTTPS, `GET /pods` with the right bearer token answers the pod list file.
const KUBELET: &str = r#"
import http.server, ssl, sys
cert, key, token, pods = sys.argv[1:5]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the kubelet (a Go server) answers
    def do_GET(self):
        if self.headers.get("authorization") != "Bearer " + open(token).read().strip():
            self.send_response(401); self.send_header("content-length", "0"); self.end_headers(); return
        if self.path != "/pods":
            self.send_response(404); self.send_header("content-length", "0"); self.end_headers(); return
        body = open(pods, "rb").read()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

#[test]
fn two_injected_pods_mesh_with_identities_the_agent_derived() {
    if !root_or_skip("k8s_pods") {
        return;
    }
    let svidcar = env!("CARGO_BIN_EXE_svidcar");
    let mut w = World::new("k8s");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    run(&["chmod", "755", dir.to_str().unwrap()]);

    // 1. Inject the manifests, as a user would before `kubectl apply`.
    std::fs::write(dir.join("pods.yaml"), MANIFESTS).unwrap();
    let out = Command::new(svidcar)
        .args(["inject", dir.join("pods.yaml").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "svidcar inject: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let injected = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&injected)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect();
    assert_eq!(docs.len(), 2, "{injected}");
    let mut pods = Vec::new();
    for (doc, name, sa, ip, cid_char) in [
        (&docs[0], "client", "frontend", POD_A, 'c'),
        (&docs[1], "server", "backend", POD_B, 'd'),
    ] {
        assert_eq!(str_of(&doc["metadata"], "name"), Some(name));
        pods.push(Pod {
            name,
            sa,
            uid: format!(
                "{}-1111-2222-3333-{:012}",
                if name == "client" {
                    "aaaaaaaa"
                } else {
                    "bbbbbbbb"
                },
                42
            ),
            proxy_cid: cid_char.to_string().repeat(64),
            spec: doc["spec"].clone(),
            ip,
        });
    }

    // 2. The node: an agent holding the CA, attesting pods through the stand-in kubelet.
    let kubelet_dir = dir.join("kubelet");
    std::fs::create_dir(&kubelet_dir).unwrap();
    // Like a kubelet's self-signed serving pair: its own CA, and a serving certificate from it.
    let p = |name: &str| kubelet_dir.join(name).to_str().unwrap().to_owned();
    let (ca, cert, key) = (p("ca.pem"), p("cert.pem"), p("key.pem"));
    run(&[
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=node-1-ca",
        "-days",
        "1",
        "-keyout",
        &p("ca.key"),
        "-out",
        &ca,
    ]);
    run(&[
        "openssl",
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=node-1",
        "-keyout",
        &key,
        "-out",
        &p("csr.pem"),
    ]);
    std::fs::write(
        p("ext.cnf"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "openssl",
        "x509",
        "-req",
        "-in",
        &p("csr.pem"),
        "-CA",
        &ca,
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &p("ext.cnf"),
        "-out",
        &cert,
    ]);
    let token = kubelet_dir.join("token");
    std::fs::write(&token, format!("agent-token-{}\n", w.tag)).unwrap();
    let pod_list = serde_json::json!({
        "kind": "PodList", "apiVersion": "v1", "metadata": {},
        "items": pods.iter().map(Pod::kubelet_json).collect::<Vec<_>>(),
    });
    let pods_json = kubelet_dir.join("pods.json");
    std::fs::write(&pods_json, serde_json::to_vec(&pod_list).unwrap()).unwrap();
    let mut kubelet = Command::new("python3")
        .args(["-c", KUBELET])
        .args([&cert, &key])
        .args([&token, &pods_json].map(|p| p.to_str().unwrap()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut port = String::new();
    {
        use std::io::BufRead;
        std::io::BufReader::new(kubelet.stdout.take().unwrap())
            .read_line(&mut port)
            .unwrap();
    }
    w.children.push(kubelet);
    let kubelet_url = format!("https://127.0.0.1:{}", port.trim());

    let socket_dir = dir.join("run-svidcar");
    let ca_dir = dir.join("ca");
    std::fs::create_dir(&socket_dir).unwrap();
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&ca_dir)
        .unwrap();
    run(&["chmod", "755", socket_dir.to_str().unwrap()]);
    let registration = dir.join("registration.yaml");
    std::fs::write(&registration, "entries: []\n").unwrap();
    let socket = socket_dir.join("agent.sock");
    let mut agent = Command::new(svidcar);
    agent.args([
        "agent",
        "--ca-dir",
        ca_dir.to_str().unwrap(),
        "--trust-domain",
        TD,
        "--socket",
        socket.to_str().unwrap(),
        "--socket-group",
        "1337",
        "--registration",
        registration.to_str().unwrap(),
        "--kubernetes",
        "--kubelet-url",
        &kubelet_url,
        "--kubelet-ca",
        &ca,
        "--kubernetes-token-file",
        token.to_str().unwrap(),
    ]);
    w.spawn(agent, &dir.join("agent.log"));
    wait_for("the agent's socket", Duration::from_secs(20), || {
        socket.exists()
    });

    // 3. The pods' network: client <-> server, and the node <-> server (the kubelet's side).
    let a = w.add_ns("a");
    let b = w.add_ns("b");
    let node = w.add_ns("node");
    w.link(&a, "eth0", POD_A, &b, "eth0", POD_B);
    w.link(&node, "eth0", NODE, &b, "eth1", POD_B_NODE);
    // What a CNI plugin gives every pod: a default route.
    run(&["ip", "-n", &a, "route", "add", "default", "via", POD_B]);
    run(&["ip", "-n", &b, "route", "add", "default", "via", NODE]);

    // The server pod's app (not the proxy user).
    std::fs::write(dir.join("echo.py"), ECHO_APP).unwrap();
    let mut app = Command::new("ip");
    app.args([
        "netns",
        "exec",
        &b,
        "python3",
        dir.join("echo.py").to_str().unwrap(),
    ]);
    w.spawn(app, &dir.join("app.log"));

    // 4. Each pod's init container, then its proxy: exactly what the injected spec says.
    for (pod, ns) in pods.iter().zip([&a, &b]) {
        let init = container(&pod.spec, "svidcar-init");
        let argv = command_line(init, svidcar);
        let out = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(&argv)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: svidcar-init {argv:?}: {}{}",
            pod.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let proxy = container(&pod.spec, "svidcar-proxy");
        let sc = &proxy["securityContext"];
        let uid = sc["runAsUser"].as_u64().expect("runAsUser");
        let gid = sc["runAsGroup"].as_u64().expect("runAsGroup");
        assert_eq!((uid, gid), (1337, 1337));
        // The Workload API volume: where the injected spec mounts it.
        let mount = proxy["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find_map(|m| str_of(m, "mountPath"))
            .expect("a volume mount")
            .to_owned();
        let cgroup = w.container_cgroup(&pod.uid, &pod.proxy_cid);
        // Like a container runtime: a private mount namespace with the node's socket directory
        // at the mount path, the process placed in its container's cgroup, then the proxy user.
        // (The cgroup first: `ip netns exec` mounts a /sys without the cgroup hierarchies.)
        let setup = format!(
            "set -e; mount -t tmpfs tmpfs /run; mkdir -p {mount}; mount --bind {sock} {mount}; \
             exec setpriv --reuid={uid} --regid={gid} --clear-groups \"$@\"",
            sock = socket_dir.display(),
        );
        let enter = format!(
            "echo $$ > {procs} && exec ip netns exec {ns} unshare -m sh -c '{setup}' sh \"$@\"",
            procs = cgroup.join("cgroup.procs").display(),
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &enter, "sh"])
            .args(command_line(proxy, svidcar))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env_of(proxy, &pod.downward()));
        w.spawn(cmd, &dir.join(format!("proxy-{}.log", pod.name)));
    }
    let log = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    for (ns, port, who) in [
        (&a, 15001, "client"),
        (&b, 15006, "server"),
        (&b, 15020, "server"),
    ] {
        let start = Instant::now();
        while !listening(ns, port) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{who} proxy not listening on {port}:\n{}",
                log(&format!("proxy-{who}.log"))
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    wait_for("the server app", Duration::from_secs(20), || {
        listening(&b, 8080)
    });
    // Ready means an SVID arrived from the agent.
    for (ns, ip, name) in [(&a, POD_A, "client"), (&b, POD_B, "server")] {
        let start = Instant::now();
        loop {
            let (ok, body) = curl(ns, &format!("http://{ip}:15020/ready"));
            if ok && body.starts_with("ready") {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{name} proxy not ready: {body}\nproxy log:\n{}\nagent log:\n{}",
                log(&format!("proxy-{name}.log")),
                log("agent.log")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // 5. Each proxy holds its own pod's identity, though both run as uid 1337.
    for (ns, ip, sa) in [(&a, POD_A, "frontend"), (&b, POD_B, "backend")] {
        let (_, config) = curl(ns, &format!("http://{ip}:15020/config"));
        let config: serde_json::Value = serde_json::from_str(&config).unwrap();
        assert_eq!(
            config["identity"]["spiffe_id"],
            format!("spiffe://{TD}/ns/shop/sa/{sa}")
        );
    }

    // 6. The client app calls the server pod as if there were no mesh; the server's app sees
    //    who called (the client proxy also checked the server is `…/sa/backend`).
    let (ok, body) = curl(&a, &format!("http://{POD_B}:8080/hello"));
    assert!(
        ok,
        "curl through the mesh: {body}\nclient proxy:\n{}\nserver proxy:\n{}",
        log("proxy-client.log"),
        log("proxy-server.log")
    );
    assert_eq!(
        body.trim(),
        format!("path=/hello client=spiffe://{TD}/ns/shop/sa/frontend")
    );

    // 7. The kubelet's view from the node: the app port refuses plaintext (STRICT), and the
    //    injected readiness probe — on the admin port — passes, through the proxy to the app.
    let (ok, body) = curl(&node, &format!("http://{POD_B_NODE}:8080/hello"));
    assert!(!ok, "plaintext to a STRICT pod must fail: {body}");
    let app = container(&pods[1].spec, "app");
    let probe = &app["readinessProbe"]["httpGet"];
    let port = probe["port"].as_u64().expect("a numeric admin port");
    let path = str_of(probe, "path").unwrap();
    assert_eq!(port, 15020, "{probe:?}");
    let (ok, body) = curl(&node, &format!("http://{POD_B_NODE}:{port}{path}"));
    assert!(ok && body.trim() == "ok", "readiness probe {path}: {body}");
    assert!(
        !log("app.log").contains("Traceback"),
        "the app is healthy: {}",
        log("app.log")
    );
}
