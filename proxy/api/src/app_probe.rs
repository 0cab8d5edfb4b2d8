//! Kubelet probes of the app, carried by the proxy (so they keep working under STRICT mTLS).
//!
//! A kubelet probe arrives from the node in plaintext; on a STRICT port the inbound would refuse
//! it. The injector therefore rewrites every HTTP, TCP and gRPC probe of an app container into an
//! HTTP GET of the proxy's admin port (never captured) at [`probe_path`], and hands the original
//! probes to the proxy in the environment variable [`ENV`] as JSON ([`AppProbes`]). The proxy
//! runs the original probe against the app over loopback and answers 200 or 503. Istio's
//! `ISTIO_KUBE_APP_PROBERS` works the same way.
//!
//! Exempting probe ports from capture instead would open the app's port (usually its only one) in
//! plaintext to anyone in the cluster, which is exactly what STRICT is there to prevent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The environment variable of the proxy container holding [`AppProbes`] as JSON.
pub const ENV: &str = "SVIDCAR_APP_PROBES";

/// The prefix of every rewritten probe's path on the admin port.
pub const PATH_PREFIX: &str = "/app-health/";

/// Which kubelet probe of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeKind {
    /// `livenessProbe`.
    Liveness,
    /// `readinessProbe`.
    Readiness,
    /// `startupProbe`.
    Startup,
}

impl ProbeKind {
    /// The last path segment: `livez`, `readyz` or `startupz`.
    pub fn segment(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "livez",
            ProbeKind::Readiness => "readyz",
            ProbeKind::Startup => "startupz",
        }
    }
}

/// The admin-port path a probe of `container` is rewritten to:
/// `/app-health/<container>/<livez|readyz|startupz>`. Container names are DNS labels, so the
/// path needs no escaping.
pub fn probe_path(container: &str, kind: ProbeKind) -> String {
    format!("{PATH_PREFIX}{container}/{}", kind.segment())
}

/// `http` or `https` (the kubelet does not verify an HTTPS probe's certificate; neither do we).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Scheme {
    /// Plain HTTP (the default, as in Kubernetes).
    #[default]
    Http,
    /// HTTPS without certificate verification.
    Https,
}

/// One header of an HTTP probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Header name.
    pub name: String,
    /// Header value.
    pub value: String,
}

/// What the proxy does for one rewritten probe. Ports are numbers: the injector resolves named
/// container ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum AppProbe {
    /// GET `path` on `127.0.0.1:port`; 200–399 is success, as for the kubelet.
    HttpGet {
        /// Path and query, e.g. `/healthz`. Default `/`.
        #[serde(default = "root")]
        path: String,
        /// The app's port.
        port: u16,
        /// Default `HTTP`.
        #[serde(default)]
        scheme: Scheme,
        /// Extra request headers (a `Host` header sets the host).
        #[serde(default, rename = "httpHeaders", skip_serializing_if = "Vec::is_empty")]
        http_headers: Vec<Header>,
        /// The probe's `timeoutSeconds` (default 1, as in Kubernetes).
        #[serde(default = "one", rename = "timeoutSeconds")]
        timeout_seconds: u32,
    },
    /// Open a TCP connection to `127.0.0.1:port`.
    TcpSocket {
        /// The app's port.
        port: u16,
        /// The probe's `timeoutSeconds` (default 1).
        #[serde(default = "one", rename = "timeoutSeconds")]
        timeout_seconds: u32,
    },
    /// The gRPC health checking protocol (`grpc.health.v1.Health/Check`) on `127.0.0.1:port`.
    Grpc {
        /// The app's port.
        port: u16,
        /// The service name asked about; empty means the server as a whole.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
        /// The probe's `timeoutSeconds` (default 1).
        #[serde(default = "one", rename = "timeoutSeconds")]
        timeout_seconds: u32,
    },
}

fn root() -> String {
    "/".to_owned()
}

fn one() -> u32 {
    1
}

/// Every rewritten probe of a pod, by admin-port path ([`probe_path`]).
pub type AppProbes = BTreeMap<String, AppProbe>;

/// Parses the value of [`ENV`].
pub fn parse(json: &str) -> Result<AppProbes, serde_json::Error> {
    serde_json::from_str(json)
}

/// The value of [`ENV`] for `probes`.
pub fn to_env_value(probes: &AppProbes) -> String {
    // A map of plain enums and strings always serializes.
    serde_json::to_string(probes).unwrap_or_else(|_| "{}".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_round_trip() {
        assert_eq!(
            probe_path("web", ProbeKind::Readiness),
            "/app-health/web/readyz"
        );
        let mut probes = AppProbes::new();
        probes.insert(
            probe_path("web", ProbeKind::Liveness),
            AppProbe::HttpGet {
                path: "/healthz".into(),
                port: 8080,
                scheme: Scheme::Http,
                http_headers: vec![Header {
                    name: "X-Probe".into(),
                    value: "1".into(),
                }],
                timeout_seconds: 3,
            },
        );
        probes.insert(
            probe_path("db", ProbeKind::Startup),
            AppProbe::TcpSocket {
                port: 5432,
                timeout_seconds: 1,
            },
        );
        let text = to_env_value(&probes);
        assert_eq!(parse(&text).unwrap(), probes);
        assert!(text.contains(r#""httpGet":{"path":"/healthz","port":8080,"scheme":"HTTP""#));
    }

    #[test]
    fn kubernetes_defaults_apply() {
        let p = parse(r#"{"/app-health/a/livez":{"httpGet":{"port":80}}}"#).unwrap();
        assert_eq!(
            p["/app-health/a/livez"],
            AppProbe::HttpGet {
                path: "/".into(),
                port: 80,
                scheme: Scheme::Http,
                http_headers: vec![],
                timeout_seconds: 1,
            }
        );
        assert!(parse(r#"{"/x":{"exec":{"command":["true"]}}}"#).is_err());
    }
}
