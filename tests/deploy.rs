//! The Kubernetes manifests in `deploy/` and the `Containerfile`: valid for the Kubernetes API
//! (the third-party `kubernetes-validate --strict`), in agreement with the numbers every svidcar
//! command uses (`svidcar_api::well_known`), with the CLIs' flags and defaults, with the injector
//! (`svidcar inject`) and with each other, and least privilege throughout.
//!
//! No API server is involved: these are static checks of what `kubectl apply -k deploy/` would
//! send.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::{json, Value};
use svidcar_api::well_known;

const NS: &str = "svidcar-system";
/// The control plane's Service, as agents and the webhook configuration address it.
const CONTROL_SERVICE: &str = "svidcar-control";
/// The name of the sidecar's admin port, which the injector declares and Prometheus keeps.
const SIDECAR_ADMIN_PORT_NAME: &str = "svidcar-admin";
/// The name of the agent's admin port in the DaemonSet.
const AGENT_ADMIN_PORT_NAME: &str = "agent-admin";
/// Where the agent keeps its node SVID on the node (`--data-dir`).
const AGENT_DATA_DIR: &str = "/var/lib/svidcar/agent";

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every YAML document of a file, as JSON values (empty documents skipped).
fn yaml_docs(text: &str, what: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{what}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml(rel: &str) -> Value {
    let mut docs = yaml_docs(&read(rel), rel);
    assert_eq!(docs.len(), 1, "{rel}: one document expected");
    docs.remove(0)
}

fn kustomization() -> Value {
    yaml("deploy/kustomization.yaml")
}

/// The resource files of the base, relative to the repository, as the kustomization lists them.
fn base_files() -> Vec<String> {
    let k = kustomization();
    let files: Vec<String> = k["resources"]
        .as_array()
        .expect("deploy/kustomization.yaml: resources")
        .iter()
        .map(|r| format!("deploy/{}", r.as_str().expect("a resource path")))
        .collect();
    assert!(files.len() >= 5, "{files:?}");
    files
}

/// A resource of the base, with the file it is in.
#[derive(Debug)]
struct Resource {
    file: String,
    v: Value,
}

impl Resource {
    fn kind(&self) -> &str {
        self.v["kind"].as_str().unwrap_or_default()
    }
    fn name(&self) -> &str {
        self.v["metadata"]["name"].as_str().unwrap_or_default()
    }
}

fn base() -> Vec<Resource> {
    base_files()
        .into_iter()
        .flat_map(|file| {
            yaml_docs(&read(&file), &file)
                .into_iter()
                .map(move |v| Resource {
                    file: file.clone(),
                    v,
                })
        })
        .collect()
}

fn find<'a>(res: &'a [Resource], kind: &str, name: &str) -> &'a Value {
    &res.iter()
        .find(|r| r.kind() == kind && r.name() == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/"))
        .v
}

fn all_of<'a>(res: &'a [Resource], kinds: &[&str]) -> Vec<&'a Resource> {
    res.iter().filter(|r| kinds.contains(&r.kind())).collect()
}

/// Workloads: the resources with a pod template.
fn workloads(res: &[Resource]) -> Vec<&Resource> {
    let w = all_of(
        res,
        &[
            "Deployment",
            "DaemonSet",
            "StatefulSet",
            "Job",
            "CronJob",
            "Pod",
        ],
    );
    assert!(w.len() >= 2, "the control plane and the agent");
    w
}

fn pod_spec(v: &Value) -> &Value {
    match v["kind"].as_str() {
        Some("Pod") => &v["spec"],
        Some("CronJob") => &v["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        _ => &v["spec"]["template"]["spec"],
    }
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// Init containers and containers of a pod spec.
fn containers(spec: &Value) -> Vec<&Value> {
    list(&spec["initContainers"])
        .iter()
        .chain(list(&spec["containers"]))
        .collect()
}

fn container<'a>(spec: &'a Value, name: &str) -> &'a Value {
    containers(spec)
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn strs(v: &Value) -> Vec<&str> {
    list(v).iter().filter_map(Value::as_str).collect()
}

/// The value of `--name=value` in a container's args.
fn flag<'a>(c: &'a Value, name: &str) -> &'a str {
    strs(&c["args"])
        .into_iter()
        .find_map(|a| a.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("{}: no {name}=… in args", c["name"]))
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr}: no port"))
}

fn container_port(c: &Value, name: &str) -> u64 {
    list(&c["ports"])
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("{}: no port named {name}", c["name"]))
}

fn env_value<'a>(c: &'a Value, name: &str) -> Option<&'a Value> {
    list(&c["env"]).iter().find(|e| e["name"] == name)
}

fn svidcar(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_svidcar"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("svidcar {args:?}: {e}"))
}

fn help(cmd: &str) -> String {
    let out = svidcar(&[cmd, "--help"]);
    assert!(out.status.success(), "svidcar {cmd} --help: {out:?}");
    String::from_utf8(out.stdout).expect("UTF-8 help")
}

/// The help text of one flag (up to the next flag), or `None` if `--help` does not list it.
fn flag_help<'a>(help: &'a str, name: &str) -> Option<&'a str> {
    let start = help.match_indices(name).find_map(|(i, _)| {
        let after = help[i + name.len()..].chars().next();
        let line_start = help[..i].rfind('\n').map_or(0, |n| n + 1);
        let leading = help[line_start..i].trim();
        let whole = !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-');
        (whole && (leading.is_empty() || leading.ends_with(','))).then_some(i)
    })?;
    let rest = &help[start + name.len()..];
    let end = rest.find("\n  -").unwrap_or(rest.len());
    Some(&rest[..end])
}

fn cli_default(help: &str, name: &str) -> String {
    let text = flag_help(help, name).unwrap_or_else(|| panic!("{name} not in --help"));
    let (_, rest) = text
        .split_once("[default: ")
        .unwrap_or_else(|| panic!("{name}: no default in --help: {text}"));
    rest.split(']').next().unwrap_or_default().to_owned()
}

/// The image the kustomization names (`images:`), as `name:tag`.
fn kustomize_image() -> String {
    let k = kustomization();
    let images = list(&k["images"]);
    assert_eq!(images.len(), 1, "one image: {images:?}");
    let i = &images[0];
    assert_eq!(i["name"], "svidcar");
    format!(
        "{}:{}",
        i["newName"].as_str().expect("newName"),
        i["newTag"].as_str().expect("newTag")
    )
}

fn containerfile() -> String {
    read("Containerfile")
}

/// The Containerfile's instructions, continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                cur.push_str(part);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                out.push(std::mem::take(&mut cur));
            }
        }
    }
    out
}

// --- Validity ---------------------------------------------------------------------------------

/// `kubernetes-validate --strict` (the Kubernetes OpenAPI schemas, unknown fields refused)
/// accepts every resource of the base: each file on its own, every document of it, none of an
/// unknown kind (which the validator would only warn about).
#[test]
fn every_manifest_passes_kubernetes_validate_strict() {
    let files = base_files();
    let docs: usize = files.iter().map(|f| yaml_docs(&read(f), f).len()).sum();
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .args(files.iter().map(|f| repo(f)))
        .output()
        .unwrap_or_else(|e| {
            panic!("kubernetes-validate: {e} (pip install kubernetes-validate; tests/run.sh does)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "kubernetes-validate --strict:\n{text}"
    );
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("WARN") || l.starts_with("ERROR"))
        .collect();
    assert!(bad.is_empty(), "kubernetes-validate --strict:\n{text}");
    let passed = text.lines().filter(|l| l.contains(" passed for ")).count();
    assert_eq!(passed, docs, "every document validated:\n{text}");
}

/// With kubectl at hand, what `kubectl apply -k deploy/` would send (generated ConfigMaps
/// included) passes the validator too. Without it, the per-file check above stands.
#[test]
fn the_rendered_kustomization_passes_kubernetes_validate_strict() {
    let Ok(out) = Command::new("kubectl")
        .args(["kustomize"])
        .arg(repo("deploy"))
        .output()
    else {
        eprintln!("kubectl not installed: the rendered kustomization is not validated");
        return;
    };
    assert!(out.status.success(), "kubectl kustomize deploy: {out:?}");
    let rendered = String::from_utf8(out.stdout).unwrap();
    let docs = yaml_docs(&rendered, "kubectl kustomize deploy");
    let names: BTreeSet<String> = docs
        .iter()
        .map(|d| format!("{}/{}", d["kind"].as_str().unwrap(), d["metadata"]["name"]))
        .collect();
    for generated in ["svidcar-prometheus-scrape", "svidcar-grafana-dashboard"] {
        assert!(
            names.contains(&format!("ConfigMap/\"{generated}\"")),
            "{names:?}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &rendered).unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet"])
        .arg(&file)
        .output()
        .expect("kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.trim().is_empty(), "{text}");

    // An overlay that moves the image moves the injected one with it.
    let overlay = tempfile::Builder::new()
        .prefix("deploy-overlay")
        .tempdir_in(repo("target"))
        .unwrap();
    std::fs::write(
        overlay.path().join("kustomization.yaml"),
        "resources: [../../deploy]\nimages:\n  - {name: svidcar, newName: registry.example/mesh/svidcar, newTag: \"9.9\"}\n",
    )
    .unwrap();
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(overlay.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "kubectl kustomize overlay: {out:?}");
    let docs = yaml_docs(&String::from_utf8(out.stdout).unwrap(), "the overlay");
    let control = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "svidcar-control")
        .expect("the control plane");
    let c = container(pod_spec(control), "control");
    assert_eq!(c["image"], "registry.example/mesh/svidcar:9.9");
    assert_eq!(
        env_value(c, "SVIDCAR_CONTROL_INJECT_IMAGE").map(|e| &e["value"]),
        Some(&c["image"])
    );
}

/// The kustomization lists exactly the files of `deploy/kubernetes/`, its generators read files
/// that exist, every resource of a namespace is in `svidcar-system`, and the image is named once
/// and agrees with the Containerfile and the crate version.
#[test]
fn the_kustomization_lists_every_manifest_and_names_one_image() {
    let listed: BTreeSet<String> = base_files().into_iter().collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(repo("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml"))
        .map(|n| format!("deploy/kubernetes/{n}"))
        .collect();
    assert_eq!(listed, on_disk);

    let k = kustomization();
    for g in list(&k["configMapGenerator"]) {
        assert_eq!(g["namespace"], NS, "{g}");
        for f in strs(&g["files"]) {
            let path = f.split_once('=').map_or(f, |(_, p)| p);
            assert!(repo(&format!("deploy/{path}")).is_file(), "{path}");
        }
    }

    let res = base();
    let cluster_scoped = [
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "MutatingWebhookConfiguration",
    ];
    for r in &res {
        if !cluster_scoped.contains(&r.kind()) {
            assert_eq!(r.v["metadata"]["namespace"], NS, "{} {}", r.file, r.name());
        }
    }
    assert_eq!(find(&res, "Namespace", NS)["kind"], "Namespace");

    let image = kustomize_image();
    assert_eq!(image, format!("svidcar:{}", env!("CARGO_PKG_VERSION")));
    for w in workloads(&res) {
        for c in containers(pod_spec(&w.v)) {
            assert_eq!(c["image"], image.as_str(), "{} {}", w.name(), c["name"]);
        }
    }
    // The image the webhook injects is the control plane's own (kustomizeconfig.yaml).
    let control = container(
        pod_spec(find(&res, "Deployment", "svidcar-control")),
        "control",
    );
    assert_eq!(
        env_value(control, "SVIDCAR_CONTROL_INJECT_IMAGE").map(|e| &e["value"]),
        Some(&json!(image))
    );
    assert_eq!(k["configurations"], json!(["kustomizeconfig.yaml"]));
    assert_eq!(
        yaml("deploy/kustomizeconfig.yaml"),
        json!({"images": [{"path": "spec/template/spec/containers/env/value", "kind": "Deployment"}]})
    );
    let version_label = format!(
        "org.opencontainers.image.version=\"{}\"",
        env!("CARGO_PKG_VERSION")
    );
    assert!(containerfile().contains(&version_label), "{version_label}");
}

// --- Agreement with svidcar_api::well_known and the CLIs ----------------------------------------

/// Ports, the proxy's uid/gid and the socket paths in deploy/ are the constants of
/// `svidcar_api::well_known`.
#[test]
fn ports_ids_and_socket_paths_agree_with_well_known() {
    let res = base();

    // The control plane: gRPC and webhook listeners, ports, Service, NetworkPolicy, webhook.
    let control = pod_spec(find(&res, "Deployment", "svidcar-control"));
    let c = container(control, "control");
    assert_eq!(port_of(flag(c, "--listen")), well_known::CONTROL_GRPC_PORT);
    assert_eq!(
        flag(c, "--admin-listen"),
        format!("127.0.0.1:{}", well_known::CONTROL_QUERY_PORT),
        "the query port stays on loopback"
    );
    assert_eq!(
        port_of(flag(c, "--webhook-listen")),
        well_known::WEBHOOK_PORT
    );
    assert_eq!(
        container_port(c, "grpc"),
        u64::from(well_known::CONTROL_GRPC_PORT)
    );
    assert_eq!(
        container_port(c, "webhook"),
        u64::from(well_known::WEBHOOK_PORT)
    );
    let svc = find(&res, "Service", CONTROL_SERVICE);
    let svc_ports: BTreeMap<&str, (u64, &str)> = list(&svc["spec"]["ports"])
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                (
                    p["port"].as_u64().unwrap(),
                    p["targetPort"].as_str().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(
        svc_ports,
        BTreeMap::from([
            ("grpc", (u64::from(well_known::CONTROL_GRPC_PORT), "grpc")),
            ("webhook", (u64::from(well_known::WEBHOOK_PORT), "webhook")),
        ])
    );
    let np = find(&res, "NetworkPolicy", "svidcar-control");
    let allowed: BTreeSet<u64> = list(&np["spec"]["ingress"])
        .iter()
        .flat_map(|r| list(&r["ports"]))
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    assert_eq!(
        allowed,
        BTreeSet::from([
            u64::from(well_known::CONTROL_GRPC_PORT),
            u64::from(well_known::WEBHOOK_PORT)
        ])
    );
    assert_eq!(
        np["spec"]["egress"],
        json!([]),
        "the control plane dials nothing"
    );
    let wh = &find(&res, "MutatingWebhookConfiguration", "svidcar-injector")["webhooks"][0];
    assert_eq!(
        wh["clientConfig"]["service"],
        json!({"name": CONTROL_SERVICE, "namespace": NS, "port": well_known::WEBHOOK_PORT, "path": "/inject"})
    );

    // The agent: socket, its group, admin port, kubelet port, control plane address.
    let ds = find(&res, "DaemonSet", "svidcar-agent");
    let agent_pod = pod_spec(ds);
    let a = container(agent_pod, "agent");
    assert_eq!(flag(a, "--socket"), well_known::AGENT_SOCKET);
    assert_eq!(flag(a, "--socket-group"), well_known::PROXY_GID.to_string());
    assert!(
        list(&agent_pod["securityContext"]["supplementalGroups"])
            .contains(&json!(well_known::PROXY_GID)),
        "the agent may give the socket the proxies' group only as a member of it"
    );
    assert_eq!(
        port_of(flag(a, "--admin-listen")),
        well_known::AGENT_ADMIN_PORT
    );
    assert_eq!(
        container_port(a, AGENT_ADMIN_PORT_NAME),
        u64::from(well_known::AGENT_ADMIN_PORT)
    );
    assert_eq!(
        flag(a, "--kubelet-url"),
        format!("https://$(NODE_IP):{}", well_known::KUBELET_PORT)
    );
    assert_eq!(
        flag(a, "--server"),
        format!(
            "{CONTROL_SERVICE}.{NS}.svc:{}",
            well_known::CONTROL_GRPC_PORT
        )
    );
    assert_eq!(flag(a, "--data-dir"), AGENT_DATA_DIR);
    let host_paths: BTreeMap<&str, &str> = list(&agent_pod["volumes"])
        .iter()
        .filter(|v| v["hostPath"].is_object())
        .map(|v| {
            (
                v["name"].as_str().unwrap(),
                v["hostPath"]["path"].as_str().unwrap(),
            )
        })
        .collect();
    let mounts: BTreeMap<&str, &str> = list(&a["volumeMounts"])
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap(),
                m["mountPath"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        host_paths.values().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([well_known::AGENT_SOCKET_DIR, AGENT_DATA_DIR]),
        "hostPaths: the socket directory and the node SVID, nothing else"
    );
    for (volume, path) in &host_paths {
        assert_eq!(
            mounts.get(volume),
            Some(path),
            "{volume}: mounted where it is on the node"
        );
    }
    assert!(Path::new(well_known::AGENT_SOCKET).starts_with(well_known::AGENT_SOCKET_DIR));

    // Kubernetes expands $(VAR) only for variables the container defines.
    for w in workloads(&res) {
        for c in containers(pod_spec(&w.v)) {
            for arg in strs(&c["args"]) {
                for var in arg.split("$(").skip(1).filter_map(|s| s.split_once(')')) {
                    assert!(
                        env_value(c, var.0).is_some(),
                        "{}: {arg} uses $({}), which its env does not define",
                        c["name"],
                        var.0
                    );
                }
            }
        }
    }
    assert_eq!(
        env_value(a, "NODE_NAME").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(
        env_value(a, "NODE_IP").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "status.hostIP"
    );

    // The image's default user is the proxy's.
    let user = instructions(&containerfile())
        .into_iter()
        .filter_map(|i| i.strip_prefix("USER ").map(str::to_owned))
        .collect::<Vec<_>>();
    assert_eq!(
        user,
        [format!(
            "{}:{}",
            well_known::PROXY_UID,
            well_known::PROXY_GID
        )]
    );
}

/// Every flag the manifests pass exists in `svidcar <command> --help`, and where a manifest
/// spells out a default it is the CLI's. The defaults the manifests rely on without spelling them
/// (the webhook certificate's DNS name, the control plane injected proxies dial) are the
/// Service's.
#[test]
fn flags_in_the_manifests_exist_and_match_the_cli_defaults() {
    let res = base();
    let mut checked = 0;
    for w in workloads(&res) {
        for c in containers(pod_spec(&w.v)) {
            let args = strs(&c["args"]);
            let Some(cmd) = args.first().filter(|a| !a.starts_with('-')) else {
                continue;
            };
            let text = help(cmd);
            for arg in &args[1..] {
                let name = arg.split('=').next().unwrap();
                assert!(
                    name.starts_with("--"),
                    "{}: {arg}: use --flag=value",
                    c["name"]
                );
                assert!(
                    flag_help(&text, name).is_some(),
                    "svidcar {cmd} has no {name} (deploy/, {} {})",
                    w.name(),
                    c["name"]
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "{checked} flags checked");

    let control = container(
        pod_spec(find(&res, "Deployment", "svidcar-control")),
        "control",
    );
    let agent = container(pod_spec(find(&res, "DaemonSet", "svidcar-agent")), "agent");
    let control_help = help("control");
    let agent_help = help("agent");
    for (c, text, name) in [
        (control, &control_help, "--listen"),
        (control, &control_help, "--admin-listen"),
        (agent, &agent_help, "--socket"),
        (agent, &agent_help, "--socket-mode"),
        (agent, &agent_help, "--data-dir"),
    ] {
        assert_eq!(flag(c, name), cli_default(text, name), "{name}");
    }
    let service_dns = format!("{CONTROL_SERVICE}.{NS}.svc");
    assert_eq!(
        cli_default(&control_help, "--webhook-dns-names"),
        service_dns
    );
    assert!(
        flag_help(&control_help, "--inject-control-plane").is_some_and(|h| h.contains(&format!(
            "[default: the first webhook DNS name, port {}]",
            well_known::CONTROL_GRPC_PORT
        ))),
        "injected proxies dial the Service on the gRPC port"
    );
    assert_eq!(
        flag(agent, "--server"),
        format!("{service_dns}:{}", well_known::CONTROL_GRPC_PORT)
    );
    assert!(
        flag_help(&control_help, "--inject-image")
            .is_some_and(|h| h.contains("env: SVIDCAR_CONTROL_INJECT_IMAGE=")),
        "--inject-image reads SVIDCAR_CONTROL_INJECT_IMAGE"
    );
    assert_eq!(
        cli_default(&agent_help, "--kubernetes-default-id-template"),
        "ns/{namespace}/sa/{service_account}"
    );

    // Both take the trust domain from the one ConfigMap, through their flags' variable.
    for (c, text) in [(control, &control_help), (agent, &agent_help)] {
        let var = env_value(c, "SVIDCAR_TRUST_DOMAIN").expect("SVIDCAR_TRUST_DOMAIN");
        assert_eq!(
            var["valueFrom"]["configMapKeyRef"],
            json!({"name": "svidcar-mesh", "key": "trust_domain"})
        );
        assert!(
            flag_help(text, "--trust-domain")
                .is_some_and(|h| h.contains("env: SVIDCAR_TRUST_DOMAIN=")),
            "--trust-domain reads SVIDCAR_TRUST_DOMAIN"
        );
    }
}

// --- Least privilege ----------------------------------------------------------------------------

/// Every container: no privilege escalation, every capability dropped and none added, a
/// read-only root filesystem, requests and a memory limit, and a non-root user except where the
/// exception is written down here. Pods: no API token, the runtime's seccomp profile, no host
/// network or IPC; host PID and hostPath volumes for the agent only.
#[test]
fn containers_and_pods_run_with_least_privilege() {
    // (workload, container): why it runs as uid 0 (with no capabilities).
    let root_allowed = [(
        "svidcar-agent",
        "agent",
        "owns the root-created hostPath directories of the socket and the node SVID",
    )];
    let res = base();
    let mut seen = 0;
    for w in workloads(&res) {
        let spec = pod_spec(&w.v);
        let who = w.name();
        assert_eq!(spec["automountServiceAccountToken"], false, "{who}");
        assert_eq!(
            spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{who}"
        );
        assert_ne!(spec["hostNetwork"], true, "{who}");
        assert_ne!(spec["hostIPC"], true, "{who}");
        let is_agent = who == "svidcar-agent";
        assert_eq!(spec["hostPID"] == true, is_agent, "{who}: hostPID");
        let host_paths = list(&spec["volumes"])
            .iter()
            .filter(|v| v["hostPath"].is_object())
            .count();
        assert_eq!(host_paths > 0, is_agent, "{who}: hostPath volumes");
        for c in containers(spec) {
            seen += 1;
            let name = c["name"].as_str().unwrap();
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{who}/{name}");
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{who}/{name}");
            assert!(sc["capabilities"]["add"].is_null(), "{who}/{name}");
            assert_ne!(sc["privileged"], true, "{who}/{name}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{who}/{name}");
            for r in ["requests/cpu", "requests/memory", "limits/memory"] {
                let (a, b) = r.split_once('/').unwrap();
                assert!(
                    c["resources"][a][b].is_string(),
                    "{who}/{name}: resources.{a}.{b}"
                );
            }
            let pick = |k: &str| {
                if sc[k].is_null() {
                    spec["securityContext"][k].clone()
                } else {
                    sc[k].clone()
                }
            };
            match root_allowed
                .iter()
                .find(|(w2, c2, _)| *w2 == who && *c2 == name)
            {
                Some(_) => {
                    assert_eq!(pick("runAsUser"), 0, "{who}/{name}");
                    assert_ne!(pick("runAsNonRoot"), true, "{who}/{name}");
                }
                None => {
                    assert_eq!(pick("runAsNonRoot"), true, "{who}/{name}");
                    let uid = pick("runAsUser");
                    assert!(uid.as_u64().is_some_and(|u| u != 0), "{who}/{name}: {uid}");
                    assert_ne!(
                        uid,
                        json!(well_known::PROXY_UID),
                        "{who}/{name}: only sidecars run as the uid init exempts from capture"
                    );
                }
            }
        }
    }
    assert!(seen >= 3, "{seen} containers");
    for sa in all_of(&res, &["ServiceAccount"]) {
        assert_eq!(sa.v["automountServiceAccountToken"], false, "{}", sa.name());
    }
}

/// RBAC: the agent may get its kubelet's pod list (`nodes/pods`), nothing else; the control
/// plane has no binding at all; no rule has a wildcard. The component for older clusters swaps
/// exactly that rule for `get nodes/proxy`.
#[test]
fn rbac_grants_the_agent_only_the_kubelet_pod_list() {
    let res = base();
    let roles = all_of(&res, &["Role", "ClusterRole"]);
    let names: Vec<(&str, &str)> = roles.iter().map(|r| (r.kind(), r.name())).collect();
    assert_eq!(names, [("ClusterRole", "svidcar-agent")]);
    let pod_list = json!([{"apiGroups": [""], "resources": ["nodes/pods"], "verbs": ["get"]}]);
    assert_eq!(roles[0].v["rules"], pod_list);
    for r in &roles {
        for rule in list(&r.v["rules"]) {
            for k in ["apiGroups", "resources", "verbs", "resourceNames"] {
                assert!(
                    !strs(&rule[k]).iter().any(|s| s.contains('*')),
                    "{}: {rule}",
                    r.name()
                );
            }
        }
    }

    let bindings = all_of(&res, &["RoleBinding", "ClusterRoleBinding"]);
    assert_eq!(bindings.len(), 1);
    let b = &bindings[0].v;
    assert_eq!(
        b["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "svidcar-agent"})
    );
    assert_eq!(
        b["subjects"],
        json!([{"kind": "ServiceAccount", "name": "svidcar-agent", "namespace": NS}])
    );
    assert_eq!(
        pod_spec(find(&res, "DaemonSet", "svidcar-agent"))["serviceAccountName"],
        "svidcar-agent"
    );
    assert_eq!(
        pod_spec(find(&res, "Deployment", "svidcar-control"))["serviceAccountName"],
        "svidcar-control"
    );

    let component = yaml("deploy/components/kubelet-before-1.33/kustomization.yaml");
    assert_eq!(component["kind"], "Component");
    let patches = list(&component["patches"]);
    assert_eq!(patches.len(), 1);
    assert_eq!(patches[0]["target"]["kind"], "ClusterRole");
    assert_eq!(patches[0]["target"]["name"], "svidcar-agent");
    let ops = yaml_docs(
        patches[0]["patch"].as_str().unwrap(),
        "the component's patch",
    );
    assert_eq!(
        ops,
        [json!([{"op": "replace", "path": "/rules",
                 "value": [{"apiGroups": [""], "resources": ["nodes/proxy"], "verbs": ["get"]}]}])]
    );
}

/// The injector's webhook: opt-in per namespace, opt-out per pod, pods on CREATE only, fails
/// closed, no side effects, AdmissionReview v1, and no caBundle in the file (it is the control
/// plane's CA, patched in at install).
#[test]
fn the_injector_webhook_is_opt_in_and_fails_closed() {
    let res = base();
    let cfg = find(&res, "MutatingWebhookConfiguration", "svidcar-injector");
    let hooks = list(&cfg["webhooks"]);
    assert_eq!(hooks.len(), 2, "per namespace, and per pod elsewhere");
    // The second: pods labelled `enabled` in namespaces that are not, never the system ones.
    let per_pod = &hooks[1];
    assert_eq!(
        per_pod["objectSelector"],
        json!({"matchLabels": {"svidcar.io/inject": "enabled"}})
    );
    assert_eq!(
        per_pod["namespaceSelector"],
        json!({"matchExpressions": [
            {"key": "svidcar.io/inject", "operator": "NotIn", "values": ["enabled"]},
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
             "values": ["kube-system", NS]}]})
    );
    for key in [
        "clientConfig",
        "rules",
        "failurePolicy",
        "sideEffects",
        "admissionReviewVersions",
    ] {
        assert_eq!(per_pod[key], hooks[0][key], "{key}");
    }
    let wh = &hooks[0];
    assert_eq!(wh["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(wh["sideEffects"], "None");
    assert_eq!(wh["failurePolicy"], "Fail");
    assert_eq!(
        wh["namespaceSelector"],
        json!({"matchLabels": {"svidcar.io/inject": "enabled"}})
    );
    assert_eq!(
        wh["objectSelector"],
        json!({"matchExpressions": [{"key": "svidcar.io/inject", "operator": "NotIn", "values": ["false"]}]})
    );
    assert_eq!(
        wh["rules"],
        json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                "resources": ["pods"], "scope": "Namespaced"}])
    );
    assert!(wh["clientConfig"]["caBundle"].is_null());
    // Never the control plane's own namespace: it must start without its webhook.
    let ns = find(&res, "Namespace", NS);
    assert!(ns["metadata"]["labels"]["svidcar.io/inject"].is_null());
}

// --- Monitoring ---------------------------------------------------------------------------------

/// The Prometheus jobs keep targets by the port names the injector and the DaemonSet declare;
/// the PodMonitors (a CRD kubernetes-validate does not know) use only fields of
/// monitoring.coreos.com/v1 PodMonitor that we checked by hand, and the same port names.
#[test]
fn scrape_config_and_pod_monitors_select_the_declared_ports() {
    let res = base();
    let agent = container(pod_spec(find(&res, "DaemonSet", "svidcar-agent")), "agent");
    assert_eq!(
        container_port(agent, AGENT_ADMIN_PORT_NAME),
        u64::from(well_known::AGENT_ADMIN_PORT)
    );

    let scrape = yaml("deploy/prometheus/scrape.yaml");
    let mut kept = BTreeMap::new();
    for job in list(&scrape["scrape_configs"]) {
        let keep: Vec<&str> = list(&job["relabel_configs"])
            .iter()
            .filter(|r| {
                r["action"] == "keep"
                    && r["source_labels"] == json!(["__meta_kubernetes_pod_container_port_name"])
            })
            .filter_map(|r| r["regex"].as_str())
            .collect();
        assert_eq!(keep.len(), 1, "{job}: keeps by one port name");
        kept.insert(job["job_name"].as_str().unwrap(), keep[0]);
    }
    assert_eq!(
        kept,
        BTreeMap::from([
            ("svidcar", SIDECAR_ADMIN_PORT_NAME),
            ("svidcar-agent", AGENT_ADMIN_PORT_NAME)
        ])
    );

    let monitors = yaml_docs(
        &read("deploy/monitoring/podmonitor.yaml"),
        "deploy/monitoring/podmonitor.yaml",
    );
    let k = yaml("deploy/monitoring/kustomization.yaml");
    assert_eq!(k["resources"], json!(["podmonitor.yaml"]));
    let allowed_spec = ["namespaceSelector", "selector", "podMetricsEndpoints"];
    let allowed_endpoint = ["port", "path", "interval", "scheme"];
    let mut ports = BTreeSet::new();
    for m in &monitors {
        assert_eq!(m["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(m["kind"], "PodMonitor");
        assert_eq!(m["metadata"]["namespace"], NS);
        let spec = m["spec"].as_object().expect("spec");
        for key in spec.keys() {
            assert!(
                allowed_spec.contains(&key.as_str()),
                "PodMonitor spec.{key}"
            );
        }
        for ep in list(&m["spec"]["podMetricsEndpoints"]) {
            for key in ep.as_object().unwrap().keys() {
                assert!(
                    allowed_endpoint.contains(&key.as_str()),
                    "podMetricsEndpoints[].{key}"
                );
            }
            assert_eq!(ep["path"], "/metrics");
            ports.insert(ep["port"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(
        ports,
        BTreeSet::from([
            SIDECAR_ADMIN_PORT_NAME.to_owned(),
            AGENT_ADMIN_PORT_NAME.to_owned()
        ])
    );
}

/// Every metric a Grafana dashboard in deploy/ queries is documented in docs/metrics.md (the
/// proxy's are also checked against a live /metrics by tests/admin.rs and tests/http.rs).
#[test]
fn dashboards_query_only_documented_metrics() {
    let documented = read("docs/metrics.md");
    let mut dashboards = 0;
    for entry in std::fs::read_dir(repo("deploy/grafana")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let dash: Value = serde_json::from_str(&text).unwrap();
        assert!(dash["title"].is_string(), "{}", path.display());
        dashboards += 1;
        let mut used = 0;
        for name in text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|t| t.starts_with("svidcar_") && *t != "svidcar_identity")
        {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(
                documented.contains(&format!("`{base}`")),
                "{}: {name} is not in docs/metrics.md",
                path.display()
            );
            used += 1;
        }
        assert!(used > 0, "{}", path.display());
    }
    assert!(dashboards >= 1);
    let k = kustomization();
    let generated: Vec<&str> = list(&k["configMapGenerator"])
        .iter()
        .flat_map(|g| strs(&g["files"]))
        .collect();
    assert!(
        generated
            .iter()
            .any(|f| f.ends_with("grafana/svidcar-identity.json")),
        "{generated:?}"
    );
    assert!(
        generated
            .iter()
            .any(|f| f.ends_with("prometheus/scrape.yaml")),
        "{generated:?}"
    );
}

// --- The image ----------------------------------------------------------------------------------

/// The Containerfile builds `svidcar` (release profile) and `svidcar-proxy` (the `sidecar`
/// profile) from the lock file on bookworm and runs them on bookworm-slim with iptables (both
/// backends) and nothing they do not need.
#[test]
fn the_containerfile_builds_locked_release_on_bookworm() {
    let ins = instructions(&containerfile());
    let froms: Vec<&String> = ins.iter().filter(|i| i.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "{froms:?}");
    assert!(
        froms[0].contains("rust:")
            && froms[0].contains("-bookworm")
            && froms[0].ends_with(" AS build"),
        "{}",
        froms[0]
    );
    assert_eq!(froms[1], "FROM docker.io/library/debian:bookworm-slim");
    let last_stage: Vec<&String> = ins.iter().skip_while(|i| *i != froms[1]).collect();
    let build_stage: Vec<&String> = ins.iter().take_while(|i| *i != froms[1]).collect();
    assert!(
        build_stage
            .iter()
            .any(|i| i.contains("cargo build --locked --release --bin svidcar")),
        "{build_stage:?}"
    );
    assert!(
        build_stage.iter().any(|i| i.contains(
            "cargo build --locked --profile sidecar -p svidcar-sidecar --bin svidcar-proxy"
        ) && i.contains("target/sidecar/svidcar-proxy")),
        "{build_stage:?}"
    );
    let install = last_stage
        .iter()
        .find(|i| i.contains("apt-get install"))
        .expect("apt-get install");
    assert!(
        install.contains("--no-install-recommends iptables"),
        "{install}"
    );
    assert!(!install.contains("iproute2"), "{install}");
    assert!(install.contains("rm -rf /var/lib/apt/lists/*"), "{install}");
    assert!(
        install.contains(&format!(
            "--uid {} --gid {}",
            well_known::PROXY_UID,
            well_known::PROXY_GID
        )),
        "{install}"
    );
    assert!(
        last_stage.contains(&&"ENTRYPOINT [\"/usr/local/bin/svidcar\"]".to_owned()),
        "{last_stage:?}"
    );
    // The injected containers run `svidcar` and `svidcar-proxy` by name: both are on the
    // image's PATH.
    for bin in ["svidcar", "svidcar-proxy"] {
        assert!(
            last_stage.iter().any(|i| i.starts_with("COPY --from=build")
                && i.ends_with(&format!(" /usr/local/bin/{bin}"))),
            "{bin}: {last_stage:?}"
        );
    }
}

// --- The injector -------------------------------------------------------------------------------

/// What `svidcar inject` adds to a pod agrees with deploy/: the image, the proxy's uid/gid, the
/// admin port and its name (which the scrape config keeps), the agent's socket directory on the
/// node and the socket path.
#[test]
fn svidcar_inject_agrees_with_deploy() {
    let probe = svidcar(&["inject", "--help"]);
    if !probe.status.success() {
        eprintln!(
            "svidcar inject is not in this build ({}); its agreement with deploy/ (image, uid/gid, \
             port svidcar-admin, socket) is not checked until it is",
            String::from_utf8_lossy(&probe.stderr).lines().next().unwrap_or_default()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app.yaml");
    std::fs::write(
        &app,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: shop\n\
         spec:\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      \
         labels: {app: web}\n    spec:\n      serviceAccountName: web\n      containers:\n      \
         - name: web\n        image: nginx:1.27\n        ports:\n        - containerPort: 8080\n",
    )
    .unwrap();
    let inject_help = String::from_utf8(probe.stdout).unwrap();
    assert_eq!(cli_default(&inject_help, "--image"), kustomize_image());
    let out = svidcar(&["inject", app.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "svidcar inject app.yaml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = yaml_docs(
        &String::from_utf8(out.stdout).unwrap(),
        "svidcar inject output",
    );
    assert_eq!(docs.len(), 1);
    let spec = pod_spec(&docs[0]);
    let proxy = container(spec, "svidcar-proxy");
    let init = container(spec, "svidcar-init");

    let res = base();
    let image = kustomize_image();
    assert_eq!(proxy["image"], image.as_str());
    assert_eq!(init["image"], image.as_str());
    assert_eq!(
        container_port(proxy, SIDECAR_ADMIN_PORT_NAME),
        u64::from(well_known::ADMIN_PORT)
    );
    assert_eq!(
        (
            &proxy["securityContext"]["runAsUser"],
            &proxy["securityContext"]["runAsGroup"]
        ),
        (&json!(well_known::PROXY_UID), &json!(well_known::PROXY_GID))
    );

    let agent_pod = pod_spec(find(&res, "DaemonSet", "svidcar-agent"));
    let agent = container(agent_pod, "agent");
    let socket_mount = list(&proxy["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"] == well_known::AGENT_SOCKET_DIR)
        .expect("the proxy mounts the socket directory");
    assert_eq!(socket_mount["readOnly"], true);
    let volume = list(&spec["volumes"])
        .iter()
        .find(|v| v["name"] == socket_mount["name"])
        .expect("the socket volume");
    let agent_socket_dir = list(&agent_pod["volumes"])
        .iter()
        .find(|v| v["name"] == "socket-dir")
        .map(|v| &v["hostPath"]["path"])
        .unwrap();
    if volume["hostPath"].is_object() {
        assert_eq!(&volume["hostPath"]["path"], agent_socket_dir);
    }
    assert_eq!(
        env_value(proxy, "SPIFFE_ENDPOINT_SOCKET").map(|e| &e["value"]),
        Some(&json!(format!("unix://{}", flag(agent, "--socket"))))
    );
}
