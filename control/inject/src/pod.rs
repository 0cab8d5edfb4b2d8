//! [`pod_patch`]: what injecting one pod means, as JSON-patch operations.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use svidcar_api::app_probe::AppProbes;
use svidcar_api::well_known::{ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT, TUNNEL_PORT};

use crate::annotations as key;
use crate::config::InjectConfig;
use crate::error::InjectError;
use crate::overrides::{pod_settings, PodSettings};
use crate::patch::{escape, PatchOp};
use crate::probes;
use crate::sidecar::{self, INIT_CONTAINER, PROXY_CONTAINER, SOCKET_VOLUME, XTABLES_VOLUME};

/// What to do with one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum PodDecision {
    /// Apply these operations, in order, to the pod.
    Inject(Vec<PatchOp>),
    /// Leave the pod as it is.
    Skip(SkipReason),
}

/// Why a pod is left as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// `hostNetwork: true`: the pod shares the node's network namespace, where `svidcar init`'s
    /// rules would capture the node's traffic.
    HostNetwork,
    /// `svidcar.io/inject: "false"` on the pod (or, for `svidcar inject`, the workload).
    OptedOut {
        /// Where it was found, e.g. `pod template annotation` or `workload label`.
        source: String,
    },
    /// A `svidcar-proxy` container or the `svidcar.io/status` annotation is there already.
    AlreadyInjected,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::HostNetwork => f.write_str("hostNetwork: true"),
            SkipReason::OptedOut { source } => write!(f, "{source} {}: \"false\"", key::INJECT),
            SkipReason::AlreadyInjected => f.write_str("already injected"),
        }
    }
}

/// The `svidcar.io/status` annotation's value.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Status<'a> {
    version: &'a str,
    init_containers: Vec<&'a str>,
    containers: Vec<&'a str>,
    volumes: [&'a str; 2],
}

/// Reads `field` of the pod as `T`; errors say where in the pod (`spec.containers[0].ports`).
fn field<T: DeserializeOwned + Default>(
    pod: &Value,
    name: &str,
    required: bool,
) -> Result<T, InjectError> {
    match pod.get(name) {
        None | Some(Value::Null) if required => Err(InjectError::InvalidPod {
            path: name.to_owned(),
            message: "missing".to_owned(),
        }),
        None | Some(Value::Null) => Ok(T::default()),
        Some(v) => serde_path_to_error::deserialize(v).map_err(|e| InjectError::InvalidPod {
            path: match e.path().to_string().as_str() {
                "." => name.to_owned(),
                p => format!("{name}.{p}"),
            },
            message: e.into_inner().to_string(),
        }),
    }
}

/// `svidcar.io/inject` in `map` (labels or annotations): `Some(false)` to opt out.
pub(crate) fn inject_flag(
    map: Option<&BTreeMap<String, String>>,
    kind: &'static str,
) -> Result<Option<bool>, InjectError> {
    match map.and_then(|m| m.get(key::INJECT)).map(String::as_str) {
        None => Ok(None),
        Some("false" | "disabled") => Ok(Some(false)),
        Some("true" | "enabled") => Ok(Some(true)),
        Some(other) => Err(InjectError::Annotation {
            kind,
            key: key::INJECT.to_owned(),
            value: other.to_owned(),
            reason: "expected \"true\" or \"false\"".to_owned(),
        }),
    }
}

/// Whether `meta` opts out (label or annotation), and where.
pub(crate) fn opt_out(meta: &ObjectMeta, whose: &str) -> Result<Option<SkipReason>, InjectError> {
    for (map, kind) in [(&meta.labels, "label"), (&meta.annotations, "annotation")] {
        if inject_flag(map.as_ref(), kind)? == Some(false) {
            return Ok(Some(SkipReason::OptedOut {
                source: format!("{whose} {kind}"),
            }));
        }
    }
    Ok(None)
}

fn is_native_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// What k8s-openapi lets through with defaults but a pod cannot be without.
fn check_containers(spec: &PodSpec) -> Result<(), InjectError> {
    let missing = |path: String, message: &str| InjectError::InvalidPod {
        path,
        message: message.to_owned(),
    };
    if spec.containers.is_empty() {
        return Err(missing("spec.containers".into(), "no containers"));
    }
    let lists = [
        ("containers", Some(&spec.containers)),
        ("initContainers", spec.init_containers.as_ref()),
    ];
    for (list, containers) in lists {
        for (i, c) in containers.into_iter().flatten().enumerate() {
            if c.name.is_empty() {
                return Err(missing(format!("spec.{list}[{i}].name"), "missing"));
            }
        }
    }
    Ok(())
}

fn check_ports(spec: &PodSpec) -> Result<(), InjectError> {
    let all = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in all {
        for p in c.ports.iter().flatten() {
            let Ok(port) = u16::try_from(p.container_port) else {
                continue;
            };
            let role = match port {
                OUTBOUND_PORT => "outbound",
                INBOUND_PORT => "inbound",
                ADMIN_PORT => "admin",
                TUNNEL_PORT => "tunnel",
                _ => continue,
            };
            return Err(InjectError::PortConflict {
                container: c.name.clone(),
                port,
                role,
            });
        }
    }
    Ok(())
}

/// The mutation injecting the svidcar sidecar into `pod`, a Pod object as JSON (as in an
/// `AdmissionReview` request; a workload's pod template, which has the same `metadata` and
/// `spec`, works the same way). See the crate documentation for what is added.
///
/// Skips (unchanged) `hostNetwork` pods, pods opting out with `svidcar.io/inject: "false"`
/// (label or annotation) and pods already injected. Errors when the pod is not a valid pod, an
/// annotation is invalid, a probe names a port its container does not have, or a container
/// uses one of the proxy's ports.
pub fn pod_patch(pod: &Value, cfg: &InjectConfig) -> Result<PodDecision, InjectError> {
    if !pod.is_object() {
        return Err(InjectError::InvalidPod {
            path: ".".to_owned(),
            message: "not an object".to_owned(),
        });
    }
    let meta: ObjectMeta = field(pod, "metadata", false)?;
    let spec: PodSpec = field(pod, "spec", true)?;
    check_containers(&spec)?;
    let annotations = meta.annotations.clone().unwrap_or_default();

    if spec.host_network == Some(true) {
        return Ok(PodDecision::Skip(SkipReason::HostNetwork));
    }
    if let Some(reason) = opt_out(&meta, "pod")? {
        return Ok(PodDecision::Skip(reason));
    }
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    if annotations.contains_key(key::STATUS)
        || containers.clone().any(|c| c.name == PROXY_CONTAINER)
    {
        return Ok(PodDecision::Skip(SkipReason::AlreadyInjected));
    }
    check_ports(&spec)?;
    let settings = pod_settings(cfg, &annotations)?;
    Ok(PodDecision::Inject(operations(pod, &spec, cfg, &settings)?))
}

fn operations(
    pod: &Value,
    spec: &PodSpec,
    cfg: &InjectConfig,
    settings: &PodSettings,
) -> Result<Vec<PatchOp>, InjectError> {
    let mut ops = Vec::new();

    // Probes first: their paths index the containers as they are before anything is inserted.
    let mut carried = AppProbes::new();
    for (i, c) in spec.containers.iter().enumerate() {
        probes::rewrite(c, &format!("/spec/containers/{i}"), &mut ops, &mut carried)?;
    }
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        if is_native_sidecar(c) {
            probes::rewrite(
                c,
                &format!("/spec/initContainers/{i}"),
                &mut ops,
                &mut carried,
            )?;
        }
    }

    let init = sidecar::init_container(settings);
    let proxy = sidecar::proxy_container(cfg, settings, &carried);
    let has_inits = spec.init_containers.is_some();
    let (init_containers, containers) = if cfg.legacy_sidecar {
        // The app's own init containers run before the rules exist (no proxy runs yet to carry
        // their traffic); the proxy leads the regular containers.
        ops.push(match has_inits {
            true => add("/spec/initContainers/-", init),
            false => add("/spec/initContainers", json!([init])),
        });
        ops.push(add("/spec/containers/0", proxy));
        (vec![INIT_CONTAINER], vec![PROXY_CONTAINER])
    } else {
        // The rules, then the proxy, then the app's own init containers (meshed already).
        if has_inits {
            ops.push(add("/spec/initContainers/0", init));
            ops.push(add("/spec/initContainers/1", proxy));
        } else {
            ops.push(add("/spec/initContainers", json!([init, proxy])));
        }
        (vec![INIT_CONTAINER, PROXY_CONTAINER], vec![])
    };

    let vols = sidecar::volumes(cfg);
    if spec.volumes.is_some() {
        for v in vols {
            ops.push(add("/spec/volumes/-", v));
        }
    } else {
        ops.push(add("/spec/volumes", json!(vols)));
    }

    let status = Status {
        version: env!("CARGO_PKG_VERSION"),
        init_containers,
        containers,
        volumes: [SOCKET_VOLUME, XTABLES_VOLUME],
    };
    // A struct of strings always serializes.
    let status = serde_json::to_string(&status).unwrap_or_default();
    let meta = pod.get("metadata").filter(|m| !m.is_null());
    let has_annotations = meta
        .and_then(|m| m.get("annotations"))
        .is_some_and(|a| !a.is_null());
    ops.push(match (meta.is_some(), has_annotations) {
        (true, true) => add(
            &format!("/metadata/annotations/{}", escape(key::STATUS)),
            json!(status),
        ),
        (true, false) => add("/metadata/annotations", json!({ key::STATUS: status })),
        (false, _) => add(
            "/metadata",
            json!({ "annotations": { key::STATUS: status } }),
        ),
    });
    Ok(ops)
}

fn add(path: &str, value: Value) -> PatchOp {
    PatchOp::Add {
        path: path.to_owned(),
        value,
    }
}

#[cfg(test)]
mod tests;
