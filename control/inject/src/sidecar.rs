//! The two containers and the volumes added to every injected pod, as JSON values.

use serde_json::{json, Value};
use svidcar_api::app_probe::{self, AppProbes};
use svidcar_api::well_known::{
    ADMIN_PORT, ADMIN_PORTS, AGENT_SOCKET, AGENT_SOCKET_DIR, PROXY_GID, PROXY_UID, TUNNEL_PORT,
};

use crate::config::{InjectConfig, SocketVolume};
use crate::overrides::PodSettings;

/// The init container installing the iptables rules (`svidcar init`).
pub const INIT_CONTAINER: &str = "svidcar-init";
/// The proxy container (`svidcar-proxy run`).
pub const PROXY_CONTAINER: &str = "svidcar-proxy";
/// The proxy container's command: the image's proxy-only binary, which runs `run` exactly as
/// `svidcar run` does with fewer pages of code resident (docs/memory.md).
pub(crate) const PROXY_COMMAND: &str = "svidcar-proxy";
/// The volume holding the Workload API socket's directory.
pub const SOCKET_VOLUME: &str = "svidcar-agent-socket";
/// The `emptyDir` on `/run` of `svidcar-init`: iptables takes its lock file there, which a
/// read-only root filesystem would refuse.
pub const XTABLES_VOLUME: &str = "svidcar-xtables-lock";
/// The name of the proxy's admin port (Prometheus keeps targets by it).
pub const ADMIN_PORT_NAME: &str = "svidcar-admin";
/// The name of the proxy's tunnel port (peers' sidecars connect to it; NetworkPolicies name it).
pub(crate) const TUNNEL_PORT_NAME: &str = "svidcar-tunnel";

fn admin_get(path: &str) -> Value {
    json!({ "path": path, "port": ADMIN_PORT })
}

/// `svidcar-init`: root with NET_ADMIN and NET_RAW only, for the time it takes to install the
/// rules. The admin ports are passed explicitly so the manifest says they are never captured.
pub(crate) fn init_container(s: &PodSettings) -> Value {
    let admin_ports = ADMIN_PORTS.map(|p| p.to_string()).join(",");
    let mut args = vec!["init".to_owned(), format!("--admin-ports={admin_ports}")];
    args.extend(s.init_flags.iter().cloned());
    json!({
        "name": INIT_CONTAINER,
        "image": s.image,
        "command": ["svidcar"],
        "args": args,
        "resources": {
            "requests": { "cpu": "10m", "memory": "16Mi" },
            "limits": { "cpu": "100m", "memory": "64Mi" },
        },
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": { "add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"] },
        },
        "volumeMounts": [{ "name": XTABLES_VOLUME, "mountPath": "/run" }],
    })
}

fn env(name: &str, value: &str) -> Value {
    json!({ "name": name, "value": value })
}

/// `svidcar-proxy`, configured by environment (`svidcar-proxy run` reads `SVIDCAR_*`, as
/// `svidcar run` does). `native`: an
/// init container with `restartPolicy: Always` and a startup probe (the kubelet starts the next
/// containers once it passes); otherwise a regular container whose `postStart` hook waits for
/// readiness (the kubelet starts the next container only after the hook).
pub(crate) fn proxy_container(cfg: &InjectConfig, s: &PodSettings, probes: &AppProbes) -> Value {
    let mut envs = vec![
        env("SPIFFE_ENDPOINT_SOCKET", &format!("unix://{AGENT_SOCKET}")),
        json!({ "name": "SVIDCAR_NODE", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }),
        env("SVIDCAR_LOG", s.log_level.as_str()),
    ];
    if let Some(cp) = &cfg.control_plane {
        envs.push(env("SVIDCAR_CONTROL_PLANE", &cp.to_string()));
    }
    if let Some(id) = &cfg.control_plane_id {
        envs.push(env("SVIDCAR_CONTROL_PLANE_ID", id.as_str()));
    }
    if let Some(mode) = s.mtls {
        envs.push(env("SVIDCAR_MTLS", mode.as_str()));
    }
    let optional = [
        ("SVIDCAR_PORT_MTLS", &s.port_mtls),
        ("SVIDCAR_OPAQUE_PORTS", &s.opaque_ports),
        ("SVIDCAR_DESTINATIONS", &s.destinations),
    ];
    for (name, value) in optional {
        if let Some(v) = value {
            envs.push(env(name, v));
        }
    }
    if !probes.is_empty() {
        envs.push(env(app_probe::ENV, &app_probe::to_env_value(probes)));
    }
    let r = &s.resources;
    let mut c = json!({
        "name": PROXY_CONTAINER,
        "image": s.image,
        "command": [PROXY_COMMAND],
        "args": ["run"],
        "env": envs,
        "ports": [
            { "name": ADMIN_PORT_NAME, "containerPort": ADMIN_PORT, "protocol": "TCP" },
            { "name": TUNNEL_PORT_NAME, "containerPort": TUNNEL_PORT, "protocol": "TCP" },
        ],
        "readinessProbe": { "httpGet": admin_get("/ready"), "periodSeconds": 2, "failureThreshold": 3 },
        "livenessProbe": { "httpGet": admin_get("/live"), "periodSeconds": 10, "failureThreshold": 3 },
        "resources": {
            "requests": { "cpu": r.cpu_request.as_str(), "memory": r.memory_request.as_str() },
            "limits": { "cpu": r.cpu_limit.as_str(), "memory": r.memory_limit.as_str() },
        },
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_GID,
            "runAsNonRoot": true,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": { "drop": ["ALL"] },
        },
        "volumeMounts": [{ "name": SOCKET_VOLUME, "mountPath": AGENT_SOCKET_DIR, "readOnly": true }],
    });
    if let Some(obj) = c.as_object_mut() {
        if cfg.legacy_sidecar {
            obj.insert(
                "lifecycle".into(),
                json!({ "postStart": { "exec": { "command": ["svidcar", "wait"] } } }),
            );
        } else {
            obj.insert("restartPolicy".into(), json!("Always"));
            obj.insert(
                "startupProbe".into(),
                json!({ "httpGet": admin_get("/ready"), "periodSeconds": 1, "failureThreshold": 300 }),
            );
        }
    }
    c
}

/// The volumes every injected pod gets.
pub(crate) fn volumes(cfg: &InjectConfig) -> [Value; 2] {
    let socket = match cfg.socket_volume {
        SocketVolume::HostPath => json!({
            "name": SOCKET_VOLUME,
            "hostPath": { "path": AGENT_SOCKET_DIR, "type": "Directory" },
        }),
        SocketVolume::Csi => json!({
            "name": SOCKET_VOLUME,
            "csi": { "driver": "csi.spiffe.io", "readOnly": true },
        }),
    };
    [socket, json!({ "name": XTABLES_VOLUME, "emptyDir": {} })]
}
