//! Sidecar injection: what svidcar adds to a Kubernetes pod, computed once as RFC 6902
//! JSON-patch operations, for the mutating admission webhook (`svidcar control`) and for
//! `svidcar inject`, which rewrites YAML manifests offline. Pure: no I/O, no clock, no
//! Kubernetes client; reading files and writing output is the CLI's job, serving admission
//! requests the control plane's. It never depends on the data plane (`svidcar-proxy`).
//!
//! # The webhook's entry point
//!
//! [`pod_patch`] takes a Pod as JSON (an `AdmissionReview`'s `request.object`) and an
//! [`InjectConfig`], and returns a [`PodDecision`]: [`PodDecision::Inject`] with the
//! [`PatchOp`]s to send back (serialize the `Vec` with serde_json: it is the RFC 6902 array the
//! API server expects, `patchType: JSONPatch`), or [`PodDecision::Skip`] with a [`SkipReason`]
//! (allow the pod unchanged). An [`InjectError`] names what is wrong in the pod; a webhook
//! should deny the pod with that message (or allow it unchanged if it fails open).
//!
//! The operations are relative to the pod: `/metadata/…`, `/spec/…`. Absent `metadata`,
//! `metadata.annotations`, `spec.initContainers` and `spec.volumes` are added whole; present
//! ones get elements inserted. Operations apply in order (probe rewrites come first, so their
//! indices are those of the pod as sent).
//!
//! # What injection adds
//!
//! - Init container `svidcar-init` (`svidcar init`): root with `NET_ADMIN`/`NET_RAW` only,
//!   read-only root filesystem, installing the iptables rules; the capture annotations become
//!   its flags, and the admin ports (15020, 15021, 15090) are never captured.
//! - `svidcar-proxy` (`svidcar run`), UID/GID 1337, non-root, read-only root filesystem, all
//!   capabilities dropped, configured by environment (`SPIFFE_ENDPOINT_SOCKET`,
//!   `SVIDCAR_NODE` = the pod's name, `SVIDCAR_LOG`, and when configured
//!   `SVIDCAR_CONTROL_PLANE`, `SVIDCAR_CONTROL_PLANE_ID`, `SVIDCAR_MTLS`,
//!   `SVIDCAR_PORT_MTLS`, `SVIDCAR_OPAQUE_PORTS`, `SVIDCAR_DESTINATIONS`,
//!   `SVIDCAR_APP_PROBES`), port `svidcar-admin` 15020, readiness `/ready`, liveness `/live`,
//!   the Workload API socket directory mounted read-only at `/run/svidcar`. By default a native
//!   sidecar: an init container with `restartPolicy: Always` right after `svidcar-init`, with a
//!   startup probe, so the pod's own init containers and app start once the proxy is ready and
//!   Jobs complete. With [`InjectConfig::legacy_sidecar`], the first regular container, held
//!   ready by a `postStart` hook running `svidcar wait`.
//! - Volumes `svidcar-agent-socket` (hostPath `/run/svidcar` or the SPIFFE CSI driver) and
//!   `svidcar-xtables-lock` (an `emptyDir` on `svidcar-init`'s `/run`).
//! - Every HTTP, TCP and gRPC liveness/readiness/startup probe of the app's containers (and of
//!   native sidecars already there) becomes an HTTP GET of port 15020 at
//!   `svidcar_api::app_probe::probe_path`, the original going to the proxy in
//!   `SVIDCAR_APP_PROBES` (named ports resolved): kubelet probes keep working under STRICT.
//! - Annotation [`annotations::STATUS`], which also makes a second injection a no-op.
//!
//! Skipped: `hostNetwork: true`, [`annotations::INJECT`] `"false"` (label or annotation),
//! already injected. Per-pod `svidcar.io/…` annotations ([`annotations`]) override the
//! configuration; an unknown one or a bad value is an error naming it.
//!
//! # Manifests
//!
//! [`inject_manifest`] applies the same operations to every pod template of a YAML stream:
//! Pod, Deployment, StatefulSet (never its `volumeClaimTemplates`), DaemonSet, ReplicaSet, Job,
//! ReplicationController, PodTemplate, CronJob (`batch/v1` and `batch/v1beta1`), and the items
//! of a `kind: List`; a workload's own `svidcar.io/inject: "false"` counts too. Every other
//! object (Services, ConfigMaps, CRDs, custom resources) is left alone, and every document
//! without an injected pod is written back byte for byte.

pub mod annotations;
mod config;
mod documents;
mod error;
mod manifest;
mod overrides;
mod patch;
mod pod;
mod probes;
mod quantity;
mod sidecar;
mod workload;
mod yaml_patch;

pub use config::{
    HostPort, InjectConfig, LogLevel, MtlsMode, NotOneOf, Resources, SocketVolume, ValueError,
    DEFAULT_IMAGE,
};
pub use error::InjectError;
pub use manifest::{inject_manifest, Injection, Location, ManifestError, Note, Outcome, PodReport};
pub use patch::PatchOp;
pub use pod::{pod_patch, PodDecision, SkipReason};
pub use quantity::{Quantity, QuantityError};
pub use sidecar::{
    ADMIN_PORT_NAME, INIT_CONTAINER, PROXY_CONTAINER, SOCKET_VOLUME, XTABLES_VOLUME,
};
