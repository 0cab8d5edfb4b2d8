//! [`InjectConfig`]: everything the injector needs besides the pod, with documented defaults.
//! `svidcar inject` fills it from its flags; the admission webhook from its own.

use std::str::FromStr;

pub use svidcar_api::channel::HostPort;
use svidcar_identity::SpiffeId;
pub use svidcar_policy::MtlsMode;

use crate::quantity::Quantity;

/// The image of both injected containers unless configured: `svidcar:<this crate's version>`.
pub const DEFAULT_IMAGE: &str = concat!("svidcar:", env!("CARGO_PKG_VERSION"));

/// How the injector is configured. Per-pod annotations override some of these (see the crate
/// documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct InjectConfig {
    /// Image of `svidcar-init` and `svidcar-proxy` (annotation `svidcar.io/proxy-image`).
    /// Default [`DEFAULT_IMAGE`].
    pub image: String,
    /// `SVIDCAR_CONTROL_PLANE` of the proxy: `HOST:PORT` of `svidcar control`. Default none
    /// (the proxy runs without a control plane).
    pub control_plane: Option<HostPort>,
    /// `SVIDCAR_CONTROL_PLANE_ID`: the SPIFFE ID the control plane must present. Default none.
    pub control_plane_id: Option<SpiffeId>,
    /// Where the Workload API socket directory comes from. Default [`SocketVolume::HostPath`].
    pub socket_volume: SocketVolume,
    /// The proxy as the first regular container (held by a `postStart` hook until ready)
    /// instead of a native sidecar (an init container with `restartPolicy: Always`, Kubernetes
    /// 1.29 and later). Default `false`.
    pub legacy_sidecar: bool,
    /// The proxy's resource requests and limits (annotations `svidcar.io/proxy-*`). Defaults in
    /// [`Resources::default`].
    pub proxy_resources: Resources,
    /// `SVIDCAR_LOG` of the proxy (annotation `svidcar.io/log-level`). Default `info`.
    pub log_level: LogLevel,
    /// `SVIDCAR_MTLS` of the proxy (annotation `svidcar.io/mtls`). Default none: the proxy's own
    /// default, STRICT.
    pub mtls: Option<MtlsMode>,
}

impl Default for InjectConfig {
    fn default() -> Self {
        InjectConfig {
            image: DEFAULT_IMAGE.to_owned(),
            control_plane: None,
            control_plane_id: None,
            socket_volume: SocketVolume::HostPath,
            legacy_sidecar: false,
            proxy_resources: Resources::default(),
            log_level: LogLevel::default(),
            mtls: None,
        }
    }
}

/// Requests and limits of the proxy container.
#[derive(Debug, Clone, PartialEq)]
pub struct Resources {
    /// Default `50m`.
    pub cpu_request: Quantity,
    /// Default `32Mi`.
    pub memory_request: Quantity,
    /// Default `1` (one core).
    pub cpu_limit: Quantity,
    /// Default `256Mi`.
    pub memory_limit: Quantity,
}

/// Parses a constant quantity.
fn constant(s: &str) -> Quantity {
    // Only called with the literals below, which the tests parse.
    s.parse()
        .unwrap_or_else(|_| unreachable!("constant quantity {s}"))
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpu_request: constant(Self::CPU_REQUEST),
            memory_request: constant(Self::MEMORY_REQUEST),
            cpu_limit: constant(Self::CPU_LIMIT),
            memory_limit: constant(Self::MEMORY_LIMIT),
        }
    }
}

impl Resources {
    /// Default CPU request of the proxy.
    pub const CPU_REQUEST: &'static str = "50m";
    /// Default memory request of the proxy.
    pub const MEMORY_REQUEST: &'static str = "32Mi";
    /// Default CPU limit of the proxy.
    pub const CPU_LIMIT: &'static str = "1";
    /// Default memory limit of the proxy.
    pub const MEMORY_LIMIT: &'static str = "256Mi";
}

/// Where the pod's `/run/svidcar` (the Workload API socket's directory) comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketVolume {
    /// `hostPath` `/run/svidcar` of type `Directory`, shared with the `svidcar agent`
    /// DaemonSet (`host-path`).
    HostPath,
    /// The SPIFFE CSI driver (`csi.spiffe.io`, read-only), which mounts the agent's socket
    /// directory without a hostPath (`csi`).
    Csi,
}

/// A value that is not one of the accepted words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not one of: {expected}")]
pub struct NotOneOf {
    value: String,
    expected: &'static str,
}

impl FromStr for SocketVolume {
    type Err = NotOneOf;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "host-path" => Ok(SocketVolume::HostPath),
            "csi" => Ok(SocketVolume::Csi),
            _ => Err(NotOneOf {
                value: s.to_owned(),
                expected: "host-path, csi",
            }),
        }
    }
}

/// A bad log filter or image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?}: {reason}")]
pub struct ValueError {
    value: String,
    reason: &'static str,
}

fn value_error(value: &str, reason: &'static str) -> ValueError {
    ValueError {
        value: value.to_owned(),
        reason,
    }
}

/// The proxy's log filter (`SVIDCAR_LOG`, tracing env-filter syntax, e.g. `info` or
/// `svidcar=debug,info`): one word, no spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLevel(String);

impl Default for LogLevel {
    fn default() -> Self {
        LogLevel("info".to_owned())
    }
}

impl LogLevel {
    /// The filter as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for LogLevel {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || "_-=,:.[]{}\"".contains(c);
        if s.is_empty() || !s.chars().all(allowed) {
            return Err(value_error(
                s,
                "expected a log filter such as `info` or `svidcar=debug,info`",
            ));
        }
        Ok(LogLevel(s.to_owned()))
    }
}

/// Checks an image reference enough to keep a typo out of a manifest: not empty, no spaces.
pub(crate) fn check_image(s: &str) -> Result<(), ValueError> {
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(value_error(
            s,
            "expected an image reference such as svidcar:0.1.0",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = InjectConfig::default();
        assert_eq!(c.image, "svidcar:0.1.0");
        assert_eq!(c.socket_volume, SocketVolume::HostPath);
        assert!(!c.legacy_sidecar && c.control_plane.is_none() && c.mtls.is_none());
        assert_eq!(c.log_level.as_str(), "info");
        let r = &c.proxy_resources;
        assert_eq!(
            [r.cpu_request.as_str(), r.memory_request.as_str()],
            ["50m", "32Mi"]
        );
        assert_eq!(
            [r.cpu_limit.as_str(), r.memory_limit.as_str()],
            ["1", "256Mi"]
        );
    }

    #[test]
    fn words() {
        assert_eq!("csi".parse::<SocketVolume>().unwrap(), SocketVolume::Csi);
        let e = "hostpath".parse::<SocketVolume>().unwrap_err().to_string();
        assert_eq!(e, r#""hostpath" is not one of: host-path, csi"#);
        assert_eq!(
            "permissive".parse::<MtlsMode>().unwrap(),
            MtlsMode::Permissive
        );
        assert!("STRICT".parse::<MtlsMode>().is_err());
        assert!("svidcar=debug,info".parse::<LogLevel>().is_ok());
        assert!("debug info".parse::<LogLevel>().is_err());
        assert!("".parse::<LogLevel>().is_err());
        assert!(check_image("ghcr.io/x/svidcar:1").is_ok());
        assert!(check_image("svidcar :1").is_err());
    }
}
