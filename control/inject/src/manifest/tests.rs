use serde::Deserialize;
use serde_json::{json, Value};

use super::*;

fn inject(text: &str) -> Injection {
    inject_manifest(text, &InjectConfig::default()).unwrap()
}

fn docs(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde_json::to_value(serde_yaml_ng::Value::deserialize(d).unwrap()).unwrap())
        .collect()
}

const DEPLOYMENT: &str = "\
# header
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: web:1
        ports: [{name: http, containerPort: 8080}]
        livenessProbe: {tcpSocket: {port: http}}
# trailer
";

#[test]
fn the_cli_applies_exactly_the_webhook_patch() {
    for text in [
        DEPLOYMENT,
        "apiVersion: v1\nkind: Pod\nspec:\n  initContainers: [{name: i, image: i}]\n  containers: [{name: a, image: a}]\n",
    ] {
        let out = inject(text);
        let before = docs(text).remove(0);
        let after = docs(&out.output).remove(0);
        let (pointer, template) = match before["kind"].as_str() {
            Some("Pod") => ("", before.clone()),
            _ => ("/spec/template", before["spec"]["template"].clone()),
        };
        let PodDecision::Inject(ops) = pod_patch(&template, &InjectConfig::default()).unwrap() else {
            panic!("not injected")
        };
        let mut expected = template.clone();
        let patch: json_patch::Patch =
            serde_json::from_value(serde_json::to_value(&ops).unwrap()).unwrap();
        json_patch::patch(&mut expected, &patch).unwrap();
        assert_eq!(after.pointer(pointer).unwrap(), &expected);
    }
}

#[test]
fn comments_around_a_changed_document_stay() {
    let out = inject(DEPLOYMENT).output;
    assert!(out.starts_with("# header\napiVersion: apps/v1\n"), "{out}");
    assert!(out.ends_with("\n# trailer\n"), "{out}");
    assert!(out.contains("path: /app-health/web/livez"));
}

#[test]
fn untouched_documents_are_byte_identical_and_order_is_kept() {
    let text = format!(
        "--- # services\nkind: Service\napiVersion: v1\nmetadata: {{name: s}}  # inline\n---\n{DEPLOYMENT}---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata: {{k: v}}\n---\n"
    );
    let out = inject(&text).output;
    assert!(out.starts_with(
        "--- # services\nkind: Service\napiVersion: v1\nmetadata: {name: s}  # inline\n---\n# header\n"
    ));
    assert!(out.ends_with(
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata: {k: v}\n---\n"
    ));
    let kinds: Vec<Value> = docs(&out).iter().map(|d| d["kind"].clone()).collect();
    assert_eq!(
        kinds,
        [
            json!("Service"),
            json!("Deployment"),
            json!("ConfigMap"),
            Value::Null
        ]
    );
    // Nothing to inject: the text itself.
    let plain = "# only\n---\napiVersion: v1\nkind: Service\nmetadata: {name: x}\n";
    assert_eq!(inject(plain).output, plain);
    assert_eq!(inject("").output, "");
}

#[test]
fn injecting_twice_changes_nothing() {
    let once = inject(DEPLOYMENT).output;
    let twice = inject(&once);
    assert_eq!(twice.output, once);
    assert_eq!(
        twice.pods[0].outcome,
        Outcome::Skipped(SkipReason::AlreadyInjected)
    );
}

#[test]
fn reports_name_the_document_and_the_object() {
    let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: s}\n\
                - apiVersion: v1\n  kind: Pod\n  metadata: {name: p}\n  spec:\n    hostNetwork: true\n    containers: [{name: a}]\n";
    let out = inject(text);
    assert_eq!(out.output, text);
    assert_eq!(out.pods.len(), 1);
    assert_eq!(
        out.pods[0].at.to_string(),
        "document 1 (line 1), items[1], Pod/p"
    );
    assert_eq!(
        out.pods[0].outcome,
        Outcome::Skipped(SkipReason::HostNetwork)
    );
}

#[test]
fn errors_name_document_line_object_and_cause() {
    let cfg = InjectConfig::default();
    let bad_annotation = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\n---\n{}",
        DEPLOYMENT.replace(
            "labels: {app: web}\n    spec:",
            "labels: {app: web}\n      annotations: {svidcar.io/mtls: off}\n    spec:"
        )
    );
    let e = inject_manifest(&bad_annotation, &cfg)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "document 2 (line 6), Deployment/web: annotation svidcar.io/mtls=\"off\": \"off\" is not strict or permissive"
    );
    let e = inject_manifest("a: 1\n---\nkind: [\n", &cfg)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("document 2 (line 4): invalid YAML: "), "{e}");
    assert!(e.contains(" at line 4 column "), "{e}");
    let e = inject_manifest(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {}\n",
        &cfg,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "document 1 (line 1), Deployment/d: spec.template is missing or not a mapping"
    );
    let e = inject_manifest("apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\nspec:\n  template:\n    spec:\n      containers: [{name: a, ports: [{containerPort: 15020}]}]\n", &cfg)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "document 1 (line 1), Job/j: container a: port 15020 is the proxy's admin port"
    );
}

#[test]
fn legacy_jobs_get_a_note() {
    let cfg = InjectConfig {
        legacy_sidecar: true,
        ..InjectConfig::default()
    };
    let job = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{name: a}]\n";
    let out = inject_manifest(job, &cfg).unwrap();
    assert_eq!(
        out.pods[0].outcome,
        Outcome::Injected(vec![Note::RunToCompletion])
    );
    assert!(Note::RunToCompletion
        .to_string()
        .contains("POST http://127.0.0.1:15020/shutdown"));
    let out = inject_manifest(job, &InjectConfig::default()).unwrap();
    assert_eq!(out.pods[0].outcome, Outcome::Injected(vec![]));
}
