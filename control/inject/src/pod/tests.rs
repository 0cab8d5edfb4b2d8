use serde_json::json;

use super::*;
use crate::config::SocketVolume;

fn pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "annotations": {"team": "a"}},
        "spec": {
            "containers": [{
                "name": "web",
                "image": "web:1",
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 5},
            }],
        },
    })
}

fn ops(pod: &Value, cfg: &InjectConfig) -> Vec<PatchOp> {
    match pod_patch(pod, cfg).unwrap() {
        PodDecision::Inject(ops) => ops,
        PodDecision::Skip(r) => panic!("skipped: {r}"),
    }
}

/// Applies the operations with an independent RFC 6902 implementation.
fn patched(pod: &Value, cfg: &InjectConfig) -> Value {
    let mut out = pod.clone();
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::to_value(ops(pod, cfg)).unwrap()).unwrap();
    json_patch::patch(&mut out, &patch).unwrap();
    out
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
}

#[test]
fn native_sidecar_by_default() {
    let out = patched(&pod(), &InjectConfig::default());
    let spec = &out["spec"];
    assert_eq!(
        names(&spec["initContainers"]),
        ["svidcar-init", "svidcar-proxy"]
    );
    assert_eq!(names(&spec["containers"]), ["web"]);
    assert_eq!(
        names(&spec["volumes"]),
        ["svidcar-agent-socket", "svidcar-xtables-lock"]
    );
    let proxy = &spec["initContainers"][1];
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(
        proxy["startupProbe"]["httpGet"],
        json!({"path": "/ready", "port": 15020})
    );
    assert_eq!(
        proxy["readinessProbe"]["httpGet"],
        json!({"path": "/ready", "port": 15020})
    );
    assert_eq!(proxy["command"], json!(["svidcar-proxy"]));
    assert_eq!(proxy["args"], json!(["run"]));
    assert_eq!(
        proxy["securityContext"],
        json!({"runAsUser": 1337, "runAsGroup": 1337, "runAsNonRoot": true, "privileged": false,
               "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
               "capabilities": {"drop": ["ALL"]}})
    );
    assert_eq!(
        proxy["volumeMounts"],
        json!([{"name": "svidcar-agent-socket", "mountPath": "/run/svidcar", "readOnly": true}])
    );
    assert_eq!(
        proxy["ports"],
        json!([
            {"name": "svidcar-admin", "containerPort": 15020, "protocol": "TCP"},
            {"name": "svidcar-tunnel", "containerPort": 15008, "protocol": "TCP"}
        ])
    );
    assert_eq!(
        env(proxy, "SPIFFE_ENDPOINT_SOCKET"),
        Some("unix:///run/svidcar/agent.sock")
    );
    assert_eq!(env(proxy, "SVIDCAR_LOG"), Some("info"));
    assert_eq!(env(proxy, "SVIDCAR_CONTROL_PLANE"), None);
    let node = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "SVIDCAR_NODE")
        .unwrap();
    assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
    assert!(proxy.get("lifecycle").is_none());

    let init = &spec["initContainers"][0];
    assert_eq!(init["command"], json!(["svidcar"]));
    assert_eq!(
        init["args"],
        json!(["init", "--admin-ports=15020,15021,15090"])
    );
    let sc = &init["securityContext"];
    assert_eq!(sc["runAsUser"], 0);
    assert_eq!(sc["runAsNonRoot"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(
        sc["capabilities"],
        json!({"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]})
    );

    assert_eq!(
        spec["volumes"][0],
        json!({"name": "svidcar-agent-socket", "hostPath": {"path": "/run/svidcar", "type": "Directory"}})
    );
    let status: Value = serde_json::from_str(
        out["metadata"]["annotations"]["svidcar.io/status"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        status,
        json!({"version": "0.1.0", "initContainers": ["svidcar-init", "svidcar-proxy"], "containers": [],
               "volumes": ["svidcar-agent-socket", "svidcar-xtables-lock"]})
    );
    assert_eq!(
        out["metadata"]["annotations"]["team"], "a",
        "existing annotations stay"
    );
}

#[test]
fn probes_are_rewritten_and_carried() {
    let out = patched(&pod(), &InjectConfig::default());
    let web = &out["spec"]["containers"][0];
    assert_eq!(
        web["readinessProbe"],
        json!({"httpGet": {"path": "/app-health/web/readyz", "port": 15020}, "periodSeconds": 5})
    );
    let proxy = &out["spec"]["initContainers"][1];
    assert_eq!(
        env(proxy, "SVIDCAR_APP_PROBES"),
        Some(
            r#"{"/app-health/web/readyz":{"httpGet":{"path":"/ready","port":8080,"scheme":"HTTP","timeoutSeconds":1}}}"#
        )
    );
}

#[test]
fn existing_init_containers_and_native_sidecars() {
    let mut p = pod();
    p["spec"]["initContainers"] = json!([
        {"name": "migrate", "image": "m"},
        {"name": "logs", "image": "l", "restartPolicy": "Always",
         "livenessProbe": {"tcpSocket": {"port": 9000}}},
    ]);
    p["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    let out = patched(&p, &InjectConfig::default());
    let spec = &out["spec"];
    assert_eq!(
        names(&spec["initContainers"]),
        ["svidcar-init", "svidcar-proxy", "migrate", "logs"]
    );
    assert_eq!(
        names(&spec["volumes"]),
        ["data", "svidcar-agent-socket", "svidcar-xtables-lock"]
    );
    assert_eq!(
        spec["initContainers"][3]["livenessProbe"],
        json!({"httpGet": {"path": "/app-health/logs/livez", "port": 15020}})
    );
    let probes = env(&spec["initContainers"][1], "SVIDCAR_APP_PROBES").unwrap();
    assert!(
        probes.contains(r#""/app-health/logs/livez":{"tcpSocket":{"port":9000"#),
        "{probes}"
    );
}

#[test]
fn legacy_sidecar() {
    let cfg = InjectConfig {
        legacy_sidecar: true,
        ..InjectConfig::default()
    };
    let mut p = pod();
    p["spec"]["initContainers"] = json!([{"name": "migrate", "image": "m"}]);
    let out = patched(&p, &cfg);
    let spec = &out["spec"];
    assert_eq!(names(&spec["initContainers"]), ["migrate", "svidcar-init"]);
    assert_eq!(names(&spec["containers"]), ["svidcar-proxy", "web"]);
    let proxy = &spec["containers"][0];
    assert_eq!(
        proxy["lifecycle"]["postStart"]["exec"]["command"],
        json!(["svidcar", "wait"])
    );
    assert!(proxy.get("restartPolicy").is_none() && proxy.get("startupProbe").is_none());
    assert_eq!(
        spec["containers"][1]["readinessProbe"]["httpGet"]["path"], "/app-health/web/readyz",
        "the probe rewrite hit the app, not the inserted proxy"
    );
}

#[test]
fn absent_metadata_annotations_and_lists_are_added_whole() {
    let bare = json!({"spec": {"containers": [{"name": "a", "image": "a"}]}});
    let o = ops(&bare, &InjectConfig::default());
    let paths: Vec<&str> = o.iter().map(PatchOp::path).collect();
    assert_eq!(
        paths,
        ["/spec/initContainers", "/spec/volumes", "/metadata"]
    );
    let out = patched(&bare, &InjectConfig::default());
    assert!(out["metadata"]["annotations"]["svidcar.io/status"].is_string());

    let no_annotations =
        json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "a"}]}});
    let o = ops(&no_annotations, &InjectConfig::default());
    assert_eq!(o.last().unwrap().path(), "/metadata/annotations");
    let null_annotations = json!({"metadata": {"annotations": null}, "spec": {"containers": [{"name": "a"}], "initContainers": null}});
    let out = patched(&null_annotations, &InjectConfig::default());
    assert_eq!(
        names(&out["spec"]["initContainers"]),
        ["svidcar-init", "svidcar-proxy"]
    );
    let o = ops(&pod(), &InjectConfig::default());
    assert_eq!(
        o.last().unwrap().path(),
        "/metadata/annotations/svidcar.io~1status"
    );
}

#[test]
fn skips() {
    let cfg = InjectConfig::default();
    let decide = |p: &Value| pod_patch(p, &cfg).unwrap();
    let mut p = pod();
    p["spec"]["hostNetwork"] = json!(true);
    assert_eq!(decide(&p), PodDecision::Skip(SkipReason::HostNetwork));
    let mut p = pod();
    p["metadata"]["labels"] = json!({"svidcar.io/inject": "false"});
    assert_eq!(
        decide(&p).to_skip(),
        "pod label svidcar.io/inject: \"false\""
    );
    let mut p = pod();
    p["metadata"]["annotations"]["svidcar.io/inject"] = json!("disabled");
    assert_eq!(
        decide(&p).to_skip(),
        "pod annotation svidcar.io/inject: \"false\""
    );
    let mut p = pod();
    p["metadata"]["annotations"]["svidcar.io/inject"] = json!("true");
    assert!(matches!(decide(&p), PodDecision::Inject(_)));
    let mut p = pod();
    p["spec"]["containers"][0]["name"] = json!("svidcar-proxy");
    assert_eq!(decide(&p), PodDecision::Skip(SkipReason::AlreadyInjected));
    // Injecting twice changes nothing.
    let once = patched(&pod(), &cfg);
    assert_eq!(
        decide(&once),
        PodDecision::Skip(SkipReason::AlreadyInjected)
    );
    let legacy = InjectConfig {
        legacy_sidecar: true,
        ..InjectConfig::default()
    };
    let once = patched(&pod(), &legacy);
    assert_eq!(
        pod_patch(&once, &legacy).unwrap(),
        PodDecision::Skip(SkipReason::AlreadyInjected)
    );
}

impl PodDecision {
    fn to_skip(&self) -> String {
        match self {
            PodDecision::Skip(r) => r.to_string(),
            PodDecision::Inject(_) => "injected".into(),
        }
    }
}

#[test]
fn configuration_and_annotations_reach_the_containers() {
    let cfg = InjectConfig {
        image: "registry.example/svidcar:1.2".into(),
        control_plane: Some("svidcar-control.svidcar-system.svc:15012".parse().unwrap()),
        control_plane_id: Some("spiffe://example.org/svidcar/control".parse().unwrap()),
        socket_volume: SocketVolume::Csi,
        mtls: Some(crate::MtlsMode::Strict),
        ..InjectConfig::default()
    };
    let mut p = pod();
    let a = &mut p["metadata"]["annotations"];
    a["svidcar.io/skip-inbound-ports"] = json!("22");
    a["svidcar.io/skip-outbound-cidrs"] = json!("169.254.169.254");
    a["svidcar.io/port-mtls"] = json!("8080=permissive");
    a["svidcar.io/opaque-ports"] = json!("5432");
    a["svidcar.io/destinations"] = json!("10.0.0.0/8=spiffe://example.org/ns/a/sa/b");
    a["svidcar.io/log-level"] = json!("debug");
    a["svidcar.io/proxy-memory-limit"] = json!("512Mi");
    let out = patched(&p, &cfg);
    let init = &out["spec"]["initContainers"][0];
    let proxy = &out["spec"]["initContainers"][1];
    assert_eq!(init["image"], "registry.example/svidcar:1.2");
    assert_eq!(
        init["args"],
        json!([
            "init",
            "--admin-ports=15020,15021,15090",
            "--inbound-ports-exclude=22",
            "--outbound-cidrs-exclude=169.254.169.254/32"
        ])
    );
    assert_eq!(
        env(proxy, "SVIDCAR_CONTROL_PLANE"),
        Some("svidcar-control.svidcar-system.svc:15012")
    );
    assert_eq!(
        env(proxy, "SVIDCAR_CONTROL_PLANE_ID"),
        Some("spiffe://example.org/svidcar/control")
    );
    assert_eq!(env(proxy, "SVIDCAR_MTLS"), Some("strict"));
    assert_eq!(env(proxy, "SVIDCAR_PORT_MTLS"), Some("8080=permissive"));
    assert_eq!(env(proxy, "SVIDCAR_OPAQUE_PORTS"), Some("5432"));
    assert_eq!(
        env(proxy, "SVIDCAR_DESTINATIONS"),
        Some("10.0.0.0/8=spiffe://example.org/ns/a/sa/b")
    );
    assert_eq!(env(proxy, "SVIDCAR_LOG"), Some("debug"));
    assert_eq!(
        proxy["resources"],
        json!({"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}})
    );
    assert_eq!(
        out["spec"]["volumes"][0],
        json!({"name": "svidcar-agent-socket", "csi": {"driver": "csi.spiffe.io", "readOnly": true}})
    );
}

#[test]
fn errors_say_what_is_wrong() {
    let cfg = InjectConfig::default();
    let err = |p: &Value| pod_patch(p, &cfg).unwrap_err().to_string();
    let mut p = pod();
    p["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = json!("metrics");
    assert!(
        err(&p).contains("container web: readinessProbe: port \"metrics\""),
        "{}",
        err(&p)
    );
    let mut p = pod();
    p["spec"]["containers"][0]["ports"][0]["containerPort"] = json!("8080");
    assert_eq!(
        err(&p),
        "spec.containers[0].ports[0].containerPort: invalid type: string \"8080\", expected i32"
    );
    assert_eq!(err(&json!({"metadata": {}})), "spec: missing");
    assert_eq!(err(&json!({"spec": {}})), "spec.containers: no containers");
    assert_eq!(
        err(&json!({"spec": {"containers": [{"name": "a"}], "initContainers": [{"image": "x"}]}})),
        "spec.initContainers[0].name: missing"
    );
    assert_eq!(err(&json!([])), ".: not an object");
    let mut p = pod();
    p["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(15006);
    assert_eq!(
        err(&p),
        "container web: port 15006 is the proxy's inbound port"
    );
    let mut p = pod();
    p["metadata"]["labels"] = json!({"svidcar.io/inject": "no"});
    assert_eq!(
        err(&p),
        "label svidcar.io/inject=\"no\": expected \"true\" or \"false\""
    );
    let mut p = pod();
    p["metadata"]["annotations"]["svidcar.io/mtls"] = json!("off");
    assert!(
        err(&p).starts_with("annotation svidcar.io/mtls=\"off\": "),
        "{}",
        err(&p)
    );
}
