//! Kubelet probes under STRICT mTLS: every HTTP, TCP and gRPC probe of an app container becomes
//! an HTTP GET of the proxy's admin port, and the original goes to the proxy
//! (`svidcar_api::app_probe`, which explains why rewriting beats exempting the port).

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;
use svidcar_api::app_probe::{self, AppProbe, AppProbes, Header, ProbeKind, Scheme};
use svidcar_api::well_known::ADMIN_PORT;

use crate::error::InjectError;
use crate::patch::PatchOp;

/// The three probes of a container, with their field names.
fn probes(c: &Container) -> [(ProbeKind, &'static str, Option<&Probe>); 3] {
    [
        (
            ProbeKind::Liveness,
            "livenessProbe",
            c.liveness_probe.as_ref(),
        ),
        (
            ProbeKind::Readiness,
            "readinessProbe",
            c.readiness_probe.as_ref(),
        ),
        (ProbeKind::Startup, "startupProbe", c.startup_probe.as_ref()),
    ]
}

/// A probe's port as a number: named ports are looked up in the container's ports (then, as the
/// kubelet does, a numeric string is taken as the number).
fn resolve(c: &Container, probe: &'static str, port: &IntOrString) -> Result<u16, InjectError> {
    let number = |n: i64| {
        u16::try_from(n)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| InjectError::BadProbePort {
                container: c.name.clone(),
                probe,
                port: n,
            })
    };
    match port {
        IntOrString::Int(n) => number(i64::from(*n)),
        IntOrString::String(name) => {
            let named = c
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()));
            match (named, name.parse::<i64>()) {
                (Some(p), _) => number(i64::from(p.container_port)),
                (None, Ok(n)) => number(n),
                (None, Err(_)) => Err(InjectError::UnknownProbePort {
                    container: c.name.clone(),
                    probe,
                    port: name.clone(),
                }),
            }
        }
    }
}

fn timeout(p: &Probe) -> u32 {
    p.timeout_seconds
        .and_then(|t| u32::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(1)
}

/// Rewrites the probes of container `c`, at JSON pointer `base` (e.g. `/spec/containers/0`):
/// appends the patch operations to `ops` and the original probes to `carried`. The timing
/// fields stay as they are; exec probes, and probes with an explicit `host` (which do not reach
/// the pod), are left alone.
pub(crate) fn rewrite(
    c: &Container,
    base: &str,
    ops: &mut Vec<PatchOp>,
    carried: &mut AppProbes,
) -> Result<(), InjectError> {
    for (kind, field, probe) in probes(c) {
        let Some(p) = probe else { continue };
        let (app, replaced) = if let Some(h) = &p.http_get {
            if h.host.is_some() {
                continue;
            }
            let app = AppProbe::HttpGet {
                path: h.path.clone().unwrap_or_else(|| "/".to_owned()),
                port: resolve(c, field, &h.port)?,
                scheme: match h.scheme.as_deref() {
                    Some("HTTPS") => Scheme::Https,
                    _ => Scheme::Http,
                },
                http_headers: h
                    .http_headers
                    .iter()
                    .flatten()
                    .map(|h| Header {
                        name: h.name.clone(),
                        value: h.value.clone(),
                    })
                    .collect(),
                timeout_seconds: timeout(p),
            };
            (app, "httpGet")
        } else if let Some(t) = &p.tcp_socket {
            if t.host.is_some() {
                continue;
            }
            let app = AppProbe::TcpSocket {
                port: resolve(c, field, &t.port)?,
                timeout_seconds: timeout(p),
            };
            (app, "tcpSocket")
        } else if let Some(g) = &p.grpc {
            let app = AppProbe::Grpc {
                port: resolve(c, field, &IntOrString::Int(g.port))?,
                service: g.service.clone().filter(|s| !s.is_empty()),
                timeout_seconds: timeout(p),
            };
            (app, "grpc")
        } else {
            continue;
        };
        let path = app_probe::probe_path(&c.name, kind);
        let http_get = json!({ "path": path, "port": ADMIN_PORT });
        let at = format!("{base}/{field}");
        if replaced == "httpGet" {
            ops.push(PatchOp::Replace {
                path: format!("{at}/httpGet"),
                value: http_get,
            });
        } else {
            ops.push(PatchOp::Remove {
                path: format!("{at}/{replaced}"),
            });
            ops.push(PatchOp::Add {
                path: format!("{at}/httpGet"),
                value: http_get,
            });
        }
        carried.insert(path, app);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(v: serde_json::Value) -> Container {
        serde_json::from_value(v).unwrap()
    }

    fn run(v: serde_json::Value) -> Result<(Vec<PatchOp>, AppProbes), InjectError> {
        let mut ops = Vec::new();
        let mut carried = AppProbes::new();
        rewrite(&container(v), "/spec/containers/1", &mut ops, &mut carried)?;
        Ok((ops, carried))
    }

    #[test]
    fn http_tcp_grpc_become_admin_port_gets() {
        let (ops, carried) = run(json!({
            "name": "web",
            "ports": [{"name": "http", "containerPort": 8080}],
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTPS",
                "httpHeaders": [{"name": "X-A", "value": "1"}]}, "timeoutSeconds": 3, "periodSeconds": 7},
            "readinessProbe": {"tcpSocket": {"port": 8080}},
            "startupProbe": {"grpc": {"port": 9090, "service": "svc"}, "failureThreshold": 30},
        }))
        .unwrap();
        assert_eq!(
            serde_json::to_value(&ops).unwrap(),
            json!([
                {"op": "replace", "path": "/spec/containers/1/livenessProbe/httpGet",
                 "value": {"path": "/app-health/web/livez", "port": 15020}},
                {"op": "remove", "path": "/spec/containers/1/readinessProbe/tcpSocket"},
                {"op": "add", "path": "/spec/containers/1/readinessProbe/httpGet",
                 "value": {"path": "/app-health/web/readyz", "port": 15020}},
                {"op": "remove", "path": "/spec/containers/1/startupProbe/grpc"},
                {"op": "add", "path": "/spec/containers/1/startupProbe/httpGet",
                 "value": {"path": "/app-health/web/startupz", "port": 15020}},
            ])
        );
        assert_eq!(
            carried["/app-health/web/livez"],
            AppProbe::HttpGet {
                path: "/healthz".into(),
                port: 8080,
                scheme: Scheme::Https,
                http_headers: vec![Header {
                    name: "X-A".into(),
                    value: "1".into()
                }],
                timeout_seconds: 3,
            }
        );
        assert_eq!(
            carried["/app-health/web/readyz"],
            AppProbe::TcpSocket {
                port: 8080,
                timeout_seconds: 1
            }
        );
        assert_eq!(
            carried["/app-health/web/startupz"],
            AppProbe::Grpc {
                port: 9090,
                service: Some("svc".into()),
                timeout_seconds: 1
            }
        );
    }

    #[test]
    fn exec_and_host_probes_stay() {
        let (ops, carried) = run(json!({
            "name": "db",
            "livenessProbe": {"exec": {"command": ["true"]}},
            "readinessProbe": {"httpGet": {"host": "example.org", "port": 80}},
        }))
        .unwrap();
        assert!(ops.is_empty() && carried.is_empty());
    }

    #[test]
    fn named_ports_must_resolve() {
        let e = run(json!({
            "name": "web",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"port": "metrics"}},
        }))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "container web: readinessProbe: port \"metrics\" is not a named port of the \
             container (needed to hand the probe to the proxy)"
        );
        let e =
            run(json!({"name": "w", "livenessProbe": {"tcpSocket": {"port": 70000}}})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "container w: livenessProbe: port 70000 is not a port number"
        );
        let (_, carried) =
            run(json!({"name": "w", "livenessProbe": {"tcpSocket": {"port": "81"}}})).unwrap();
        assert_eq!(
            carried["/app-health/w/livez"],
            AppProbe::TcpSocket {
                port: 81,
                timeout_seconds: 1
            }
        );
    }
}
