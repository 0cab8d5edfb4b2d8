//! `svidcar inject` end to end: the real binary on our own fixtures (tests/fixtures/k8s),
//! every injected output checked by a third-party validator (`kubernetes-validate --strict`,
//! PyPI) and parsed by a third-party YAML parser (PyYAML), per manifest what changed and that
//! every other document is byte for byte what it was.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/k8s")
        .join(name)
}

fn svidcar(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_svidcar"))
        .arg("inject")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("svidcar runs");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .expect("stdin written");
    drop(input);
    child.wait_with_output().expect("svidcar finishes")
}

/// Injects `file` (with `flags`); must succeed. Returns (stdout, stderr).
fn inject(file: &str, flags: &[&str]) -> (String, String) {
    let path = fixture(file);
    let mut args = flags.to_vec();
    let p = path.to_str().expect("utf-8 path");
    args.push(p);
    let out = svidcar(&args, None);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "svidcar inject {file}: {stderr}");
    (String::from_utf8(out.stdout).expect("utf-8 output"), stderr)
}

/// Documents as svidcar splits them: a line starting with `---` and then a space, a tab or its
/// end opens a document.
fn split(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let (mut start, mut offset) = (0, 0);
    for line in text.split_inclusive('\n') {
        let l = line.trim_end_matches(['\n', '\r']);
        let sep = l
            .strip_prefix("---")
            .is_some_and(|r| r.is_empty() || r.starts_with([' ', '\t']));
        if sep && offset > start {
            docs.push(&text[start..offset]);
            start = offset;
        }
        offset += line.len();
    }
    docs.push(&text[start..]);
    docs
}

fn python(program: &str, input: &str) -> String {
    let mut child = Command::new("python3")
        .args(["-c", program])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).expect("stdin written");
    drop(stdin);
    let out = child.wait_with_output().expect("python3 finishes");
    assert!(
        out.status.success(),
        "python3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Every document parsed by PyYAML (null for an empty one), as JSON.
fn parse(text: &str) -> Vec<Value> {
    let json = python(
        "import sys, json, yaml; json.dump(list(yaml.safe_load_all(sys.stdin)), sys.stdout)",
        text,
    );
    serde_json::from_str(&json).expect("json")
}

/// What the validator is given: every List item as a document of its own (it has no schema
/// for `List`), and `batch/v1beta1` CronJobs as `batch/v1` (removed in Kubernetes 1.25, the
/// oldest schema it ships; the `jobTemplate` shape is the same), so that neither passes
/// unchecked with a mere warning.
const FOR_VALIDATION: &str = r#"
import sys, yaml
out = []
for d in yaml.safe_load_all(sys.stdin):
    if d is None:
        continue
    for it in (d.get("items") or []) if d.get("kind") == "List" else [d]:
        if it.get("apiVersion") == "batch/v1beta1" and it.get("kind") == "CronJob":
            it["apiVersion"] = "batch/v1"
        out.append(it)
yaml.safe_dump_all(out, sys.stdout)
"#;

/// `kubernetes-validate --strict` on `text`; fails the test unless it passes and names every
/// one of `objects` (`kind/name`, lower-case kind) as passed.
fn validate(text: &str, objects: &[String]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("out.yaml");
    std::fs::write(&file, python(FOR_VALIDATION, text)).expect("written");
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .arg(&file)
        .output()
        .expect("kubernetes-validate (PyPI kubernetes-validate) is installed");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubernetes-validate: {report}");
    assert!(!report.contains("ERROR"), "{report}");
    for o in objects {
        assert!(
            report.contains(&format!("passed for resource {o} ")),
            "{o} not validated: {report}"
        );
    }
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .map(|l| l.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default()
}

fn pod_template(obj: &Value) -> &Value {
    match obj["kind"].as_str() {
        Some("Pod") => obj,
        Some("CronJob") => &obj["spec"]["jobTemplate"]["spec"]["template"],
        _ => &obj["spec"]["template"],
    }
}

fn env<'a>(c: &'a Value, name: &str) -> Option<&'a str> {
    c["env"].as_array()?.iter().find(|e| e["name"] == name)?["value"].as_str()
}

/// The native-sidecar shape: `svidcar-init`, `svidcar-proxy`, then the pod's own init
/// containers; the app's containers as they were; the two volumes; the status annotation.
fn assert_native(t: &Value, own_inits: &[&str], containers: &[&str]) {
    let mut inits = vec!["svidcar-init", "svidcar-proxy"];
    inits.extend(own_inits);
    assert_eq!(names(&t["spec"]["initContainers"]), inits, "{t:#}");
    assert_eq!(names(&t["spec"]["containers"]), containers);
    let vols = names(&t["spec"]["volumes"]);
    assert!(
        vols.ends_with(&["svidcar-agent-socket", "svidcar-xtables-lock"]),
        "{vols:?}"
    );
    let proxy = &t["spec"]["initContainers"][1];
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["startupProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(proxy["ports"][0]["name"], "svidcar-admin");
    let status = t["metadata"]["annotations"]["svidcar.io/status"]
        .as_str()
        .expect("status annotation");
    assert!(status.contains(r#""initContainers":["svidcar-init","svidcar-proxy"]"#));
}

/// Runs a fixture: the documents at `changed` (0-based) differ, every other one is byte for
/// byte the input's; the output validates, with `injected` among what passed.
fn check_fixture(
    file: &str,
    flags: &[&str],
    changed: &[usize],
    injected: &[&str],
) -> (Vec<Value>, String) {
    let input = std::fs::read_to_string(fixture(file)).expect("fixture");
    let (output, stderr) = inject(file, flags);
    let (before, after) = (split(&input), split(&output));
    assert_eq!(before.len(), after.len(), "{file}: document count");
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        if changed.contains(&i) {
            assert_ne!(b, a, "{file}: document {} should change", i + 1);
        } else {
            assert_eq!(b, a, "{file}: document {} should be byte-identical", i + 1);
        }
    }
    let objects: Vec<String> = injected.iter().map(|o| o.to_lowercase()).collect();
    validate(&output, &objects);
    // A second run changes nothing.
    let again = svidcar(flags, Some(&output));
    assert!(again.status.success());
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        output,
        "{file}: not idempotent"
    );
    (parse(&output), stderr)
}

#[test]
fn multi_document_with_header_comments_and_empty_last_document() {
    let (docs, _) = check_fixture(
        "shop.yaml",
        &[],
        &[2, 5],
        &["Deployment/catalog", "Deployment/checkout"],
    );
    assert_eq!(docs.len(), 7);
    assert!(docs[6].is_null(), "the empty last document stays");
    let catalog = pod_template(&docs[2]);
    assert_native(catalog, &[], &["catalog"]);
    assert_eq!(
        catalog["metadata"]["annotations"]["shop.example/owner"],
        "catalog-team"
    );
    let app = &catalog["spec"]["containers"][0];
    assert_eq!(
        app["readinessProbe"],
        serde_json::json!({"httpGet": {"path": "/app-health/catalog/readyz", "port": 15020},
                           "initialDelaySeconds": 2, "periodSeconds": 5})
    );
    assert_eq!(
        app["livenessProbe"],
        serde_json::json!({"httpGet": {"path": "/app-health/catalog/livez", "port": 15020},
                           "failureThreshold": 4})
    );
    let probes = env(&catalog["spec"]["initContainers"][1], "SVIDCAR_APP_PROBES").expect("probes");
    assert_eq!(
        probes,
        r#"{"/app-health/catalog/livez":{"tcpSocket":{"port":8080,"timeoutSeconds":1}},"/app-health/catalog/readyz":{"httpGet":{"path":"/healthz","port":8080,"scheme":"HTTP","timeoutSeconds":1}}}"#,
        "named port `web` resolved to 8080"
    );
    let checkout = pod_template(&docs[5]);
    assert_native(checkout, &[], &["checkout"]);
    let app = &checkout["spec"]["containers"][0];
    assert_eq!(
        app["startupProbe"]["httpGet"]["path"],
        "/app-health/checkout/startupz"
    );
    assert!(app["startupProbe"].get("grpc").is_none());
    assert_eq!(
        app["readinessProbe"]["exec"]["command"][0], "/bin/grpc-ready",
        "exec stays"
    );
    let probes = env(&checkout["spec"]["initContainers"][1], "SVIDCAR_APP_PROBES").expect("probes");
    assert!(probes.contains(r#""grpc":{"port":9000"#), "{probes}");
}

#[test]
fn list_items_are_injected_in_place() {
    let (docs, _) = check_fixture("list.yaml", &[], &[0], &["Deployment/greeter"]);
    let input = parse(&std::fs::read_to_string(fixture("list.yaml")).expect("fixture"));
    let (items, before) = (&docs[0]["items"], &input[0]["items"]);
    assert_eq!(items[0], before[0], "the Service item is untouched");
    assert_eq!(items[2], before[2], "the ConfigMap item is untouched");
    assert_native(pod_template(&items[1]), &[], &["greeter"]);
}

#[test]
fn cronjob_v1beta1_without_template_metadata() {
    let (docs, _) = check_fixture(
        "cronjob-v1beta1.yaml",
        &[],
        &[0],
        &["CronJob/nightly-report"],
    );
    assert_eq!(docs[0]["apiVersion"], "batch/v1beta1", "the version stays");
    let t = pod_template(&docs[0]);
    assert_native(t, &[], &["report"]);
    assert_eq!(t["metadata"].as_object().map(|m| m.len()), Some(1), "{t:#}");
}

#[test]
fn host_network_daemonset_is_skipped_and_the_file_unchanged() {
    let input = std::fs::read_to_string(fixture("node-daemon.yaml")).expect("fixture");
    let (docs, stderr) = check_fixture("node-daemon.yaml", &[], &[], &[]);
    assert_eq!(docs.len(), 3);
    let (output, _) = inject("node-daemon.yaml", &[]);
    assert_eq!(output, input);
    assert!(
        stderr.contains("node-daemon.yaml: document 3 (line 19), DaemonSet/node-net: skipped: hostNetwork: true"),
        "{stderr}"
    );
}

#[test]
fn existing_native_sidecar_stays_after_the_proxy() {
    let (docs, _) = check_fixture("native-sidecar.yaml", &[], &[0], &["Deployment/ledger"]);
    let t = pod_template(&docs[0]);
    assert_native(t, &["schema", "log-forwarder"], &["ledger"]);
    let fwd = &t["spec"]["initContainers"][3];
    assert_eq!(fwd["restartPolicy"], "Always");
    assert_eq!(
        fwd["readinessProbe"]["httpGet"]["path"],
        "/app-health/log-forwarder/readyz"
    );
    let probes = env(&t["spec"]["initContainers"][1], "SVIDCAR_APP_PROBES").expect("probes");
    assert!(probes.contains(r#""path":"/up","port":2020"#), "{probes}");
}

#[test]
fn flow_style_is_injected_and_the_next_document_kept() {
    let (docs, _) = check_fixture("flow-style.yaml", &[], &[0], &["Deployment/tiny"]);
    assert_native(pod_template(&docs[0]), &[], &["tiny"]);
    assert_eq!(docs[1]["kind"], "Service");
}

#[test]
fn every_workload_kind_and_nothing_else() {
    let (docs, _) = check_fixture(
        "workloads.yaml",
        &[],
        &[0, 1, 2, 3, 4, 5, 6],
        &[
            "StatefulSet/store",
            "Job/backfill",
            "ReplicaSet/echo",
            "ReplicationController/legacy-web",
            "DaemonSet/log-reader",
            "Pod/debug",
            "CronJob/cleanup",
            "CustomResourceDefinition/widgets.example.com",
        ],
    );
    for (i, app) in [
        "store", "backfill", "echo", "web", "reader", "shell", "cleanup",
    ]
    .iter()
    .enumerate()
    {
        assert_native(pod_template(&docs[i]), &[], &[app]);
    }
    let input = parse(&std::fs::read_to_string(fixture("workloads.yaml")).expect("fixture"));
    assert_eq!(
        docs[0]["spec"]["volumeClaimTemplates"], input[0]["spec"]["volumeClaimTemplates"],
        "volumeClaimTemplates untouched"
    );
    assert_eq!(docs[8], input[8], "the custom resource is untouched");
}

#[test]
fn opt_outs_and_already_injected_are_left_alone() {
    let (docs, stderr) = check_fixture("opt-out.yaml", &[], &[3], &["Deployment/inside"]);
    assert_native(pod_template(&docs[3]), &[], &["inside"]);
    for note in [
        "document 1 (line 2), Deployment/outside: skipped: workload label svidcar.io/inject: \"false\"",
        "document 2 (line 22), Deployment/plain: skipped: pod annotation svidcar.io/inject: \"false\"",
        "document 3 (line 42), Pod/meshed: skipped: already injected",
    ] {
        assert!(stderr.contains(note), "{note}\n{stderr}");
    }
}

#[test]
fn annotations_override_the_flags() {
    let (docs, _) = check_fixture(
        "annotated.yaml",
        &[
            "--control-plane=svidcar-control.svidcar-system.svc:15012",
            "--mtls=strict",
        ],
        &[0],
        &["Deployment/orders"],
    );
    let t = pod_template(&docs[0]);
    let init = &t["spec"]["initContainers"][0];
    let proxy = &t["spec"]["initContainers"][1];
    assert_eq!(
        init["args"],
        serde_json::json!([
            "init",
            "--admin-ports=15020,15021,15090",
            "--inbound-ports-exclude=22",
            "--outbound-ports=80,443,5432",
            "--outbound-cidrs-exclude=169.254.169.254/32"
        ])
    );
    assert_eq!(proxy["image"], "registry.example/svidcar:0.1.0-dev");
    assert_eq!(init["image"], "registry.example/svidcar:0.1.0-dev");
    assert_eq!(
        env(proxy, "SVIDCAR_MTLS"),
        Some("permissive"),
        "the annotation wins"
    );
    assert_eq!(env(proxy, "SVIDCAR_PORT_MTLS"), Some("8443=strict"));
    assert_eq!(env(proxy, "SVIDCAR_OPAQUE_PORTS"), Some("5432"));
    assert_eq!(
        env(proxy, "SVIDCAR_DESTINATIONS"),
        Some("10.20.0.0/16:5432=spiffe://shop.example/ns/db/sa/postgres")
    );
    assert_eq!(env(proxy, "SVIDCAR_LOG"), Some("debug"));
    assert_eq!(
        env(proxy, "SVIDCAR_CONTROL_PLANE"),
        Some("svidcar-control.svidcar-system.svc:15012")
    );
    assert_eq!(
        proxy["resources"],
        serde_json::json!({"requests": {"cpu": "20m", "memory": "48Mi"},
                           "limits": {"cpu": "500m", "memory": "96Mi"}})
    );
}

#[test]
fn legacy_sidecar_and_its_job_notes() {
    let (docs, stderr) = check_fixture(
        "workloads.yaml",
        &["--legacy-sidecar"],
        &[0, 1, 2, 3, 4, 5, 6],
        &["Job/backfill", "CronJob/cleanup", "Pod/debug"],
    );
    for doc in &docs[..7] {
        let t = pod_template(doc);
        assert_eq!(names(&t["spec"]["initContainers"]), ["svidcar-init"]);
        let proxy = &t["spec"]["containers"][0];
        assert_eq!(proxy["name"], "svidcar-proxy");
        assert_eq!(
            proxy["lifecycle"]["postStart"]["exec"]["command"],
            serde_json::json!(["svidcar", "wait"])
        );
        assert!(proxy.get("restartPolicy").is_none());
    }
    for job in ["Job/backfill", "CronJob/cleanup"] {
        assert!(
            stderr.contains(&format!(
                "{job}: note: legacy sidecar in a pod that runs to completion"
            )),
            "{job}: {stderr}"
        );
    }
    assert_eq!(stderr.matches("note:").count(), 2, "{stderr}");
}

#[test]
fn csi_socket_volume() {
    let (docs, _) = check_fixture(
        "list.yaml",
        &["--socket-volume=csi"],
        &[0],
        &["Deployment/greeter"],
    );
    let vols = &pod_template(&docs[0]["items"][1])["spec"]["volumes"];
    assert_eq!(
        vols[0],
        serde_json::json!({"name": "svidcar-agent-socket", "csi": {"driver": "csi.spiffe.io", "readOnly": true}})
    );
}

#[test]
fn directory_stdin_and_output_file() {
    let dir = fixture("");
    let (all, _) = inject(dir.to_str().expect("utf-8"), &[]);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 9);
    for f in &files {
        let (one, _) = inject(f.to_str().expect("utf-8"), &[]);
        assert!(
            all.contains(&one),
            "{} is in the directory's output",
            f.display()
        );
    }
    let text = std::fs::read_to_string(fixture("native-sidecar.yaml")).expect("fixture");
    let from_stdin = svidcar(&["-"], Some(&text));
    assert!(from_stdin.status.success());
    let (from_file, _) = inject("native-sidecar.yaml", &[]);
    assert_eq!(String::from_utf8_lossy(&from_stdin.stdout), from_file);
    let out_dir = tempfile::tempdir().expect("tempdir");
    let out = out_dir.path().join("injected.yaml");
    let o = svidcar(&["-o", out.to_str().expect("utf-8"), "-"], Some(&text));
    assert!(o.status.success() && o.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&out).expect("written"), from_file);
}

#[test]
fn one_bad_document_fails_the_run_with_nothing_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = std::fs::read_to_string(fixture("shop.yaml")).expect("fixture");
    let bad = good.replacen(
        "shop.example/owner: catalog-team",
        "svidcar.io/mtls: sometimes",
        1,
    );
    let input = dir.path().join("bad.yaml");
    std::fs::write(&input, bad).expect("written");
    let out = dir.path().join("out.yaml");
    let o = svidcar(
        &[
            "-o",
            out.to_str().expect("utf-8"),
            fixture("list.yaml").to_str().expect("utf-8"),
            input.to_str().expect("utf-8"),
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(
            "bad.yaml: document 3 (line 29), Deployment/catalog: annotation svidcar.io/mtls=\"sometimes\": \"sometimes\" is not strict or permissive"
        ),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing written");

    let o = svidcar(&[], Some("apiVersion: v1\nkind: Service\n---\nspec: [\n"));
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(
            "<stdin>: document 2 (line 5): invalid YAML: did not find expected node content at line 5 column 1"
        ),
        "{stderr}"
    );

    let o = svidcar(&["--control-plane=svidcar-control"], Some(""));
    assert_eq!(o.status.code(), Some(2), "a bad flag is a usage error");
}
