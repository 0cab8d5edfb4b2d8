//! What can go wrong injecting one pod.

/// Why a pod could not be injected. Each variant names what is wrong in the pod, so that a
/// caller can prefix it with the object (the CLI: file, document, kind/name; the webhook: the
/// admission request) and the user knows what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// The object does not have the shape of a pod (or pod template): `path` is the field
    /// path, `message` what is wrong there.
    #[error("{path}: {message}")]
    InvalidPod {
        /// Field path, e.g. `spec.containers[0].ports[1].containerPort`.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A `svidcar.io/…` annotation (or the `svidcar.io/inject` label) has a value we cannot use,
    /// or is not one we know.
    #[error("{kind} {key}={value:?}: {reason}")]
    Annotation {
        /// `annotation` or `label`.
        kind: &'static str,
        /// The key, e.g. `svidcar.io/mtls`.
        key: String,
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A probe names a port that is not one of its container's named ports.
    #[error(
        "container {container}: {probe}: port {port:?} is not a named port of the container \
         (needed to hand the probe to the proxy)"
    )]
    UnknownProbePort {
        /// The container's name.
        container: String,
        /// `livenessProbe`, `readinessProbe` or `startupProbe`.
        probe: &'static str,
        /// The port as written.
        port: String,
    },
    /// A probe's port number is out of range.
    #[error("container {container}: {probe}: port {port} is not a port number")]
    BadProbePort {
        /// The container's name.
        container: String,
        /// `livenessProbe`, `readinessProbe` or `startupProbe`.
        probe: &'static str,
        /// The port as written.
        port: i64,
    },
    /// A container of the pod listens on one of the proxy's ports.
    #[error("container {container}: port {port} is the proxy's {role} port")]
    PortConflict {
        /// The container's name.
        container: String,
        /// The port.
        port: u16,
        /// `outbound`, `inbound` or `admin`.
        role: &'static str,
    },
    /// A resource request is larger than its limit (after the annotations).
    #[error("proxy {resource} request {request} is larger than its limit {limit}")]
    RequestOverLimit {
        /// `cpu` or `memory`.
        resource: &'static str,
        /// The request.
        request: String,
        /// The limit.
        limit: String,
    },
}
