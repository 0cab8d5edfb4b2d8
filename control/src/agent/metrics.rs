//! The agent's Prometheus metrics. Counters move where things happen (issuance, Workload API
//! calls, registration reloads); gauges are read from the current state at each scrape, so they
//! never drift from it. Label values are bounded: SPIFFE IDs come from the registration file
//! and, with pod attestation, from the default identities of the node's pods; methods, codes and
//! results from fixed sets.

use std::sync::Arc;

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::svids::{Signer, Snapshot};
use crate::prom::{encode, set_root_gauges};

/// Every metric of the agent.
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    registry: Registry,
    /// One scrape at a time: gauges are reset and refilled for each.
    render_lock: Arc<std::sync::Mutex<()>>,
    /// X.509-SVIDs issued.
    pub svids_issued: IntCounter,
    /// Failed issuances (each retried).
    pub issue_failures: IntCounter,
    /// Registration edits refused (the entries in force stay).
    pub reload_errors: IntCounter,
    /// Workload API calls by method and gRPC code.
    pub requests: IntCounterVec,
    /// Open Workload API streams.
    pub streams: IntGauge,
    /// Requests for the kubelet's pod list, by result (`ok`, `error`).
    pub kubelet_fetches: IntCounterVec,
    /// Pods in the latest pod list.
    pub kubernetes_pods: IntGauge,
    /// Streams (`RST_STREAM`) and connections (`GOAWAY`) the Workload API server ended with an
    /// HTTP/2 error, by `what` (`stream`, `connection`) and `code` (the error code's name).
    pub resets: IntCounterVec,
    /// Callers' `:authority` values that were not URI authorities (gRPC C-core's
    /// percent-encoded socket path) and were served as `localhost`.
    pub authority_rewrites: IntCounter,
    svid_expiry: IntGaugeVec,
    entries: IntGauge,
    bundle_roots: IntGauge,
    root_expiry: IntGaugeVec,
    node_svid_expiry: IntGauge,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl AgentMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Arc<Self>, prometheus::Error> {
        let registry = Registry::new();
        let m = Self {
            svids_issued: IntCounter::with_opts(opts(
                "svidcar_agent_svids_issued_total",
                "X.509-SVIDs issued (by the local CA or the control plane).",
            ))?,
            issue_failures: IntCounter::with_opts(opts(
                "svidcar_agent_svid_issue_failures_total",
                "X.509-SVID issuances that failed and are retried.",
            ))?,
            reload_errors: IntCounter::with_opts(opts(
                "svidcar_agent_registration_reload_errors_total",
                "Registration edits refused; the entries in force stay.",
            ))?,
            requests: IntCounterVec::new(
                opts(
                    "svidcar_agent_workload_api_requests_total",
                    "Workload API calls by method and gRPC code.",
                ),
                &["method", "code"],
            )?,
            streams: IntGauge::with_opts(opts(
                "svidcar_agent_workload_api_streams",
                "Open Workload API streams.",
            ))?,
            kubelet_fetches: IntCounterVec::new(
                opts(
                    "svidcar_agent_kubelet_pod_list_requests_total",
                    "Requests for the kubelet's pod list (pod attestation), by result (ok, error).",
                ),
                &["result"],
            )?,
            kubernetes_pods: IntGauge::with_opts(opts(
                "svidcar_agent_kubernetes_pods",
                "Pods in the latest kubelet pod list (pod attestation).",
            ))?,
            resets: IntCounterVec::new(
                opts(
                    "svidcar_agent_workload_api_resets_total",
                    "Workload API streams (what=stream, RST_STREAM) and connections (what=connection, GOAWAY) ended with an HTTP/2 error, by error code.",
                ),
                &["what", "code"],
            )?,
            authority_rewrites: IntCounter::with_opts(opts(
                "svidcar_agent_workload_api_authority_rewrites_total",
                "Workload API requests whose :authority was not a URI authority (a socket path, as gRPC C-core sends) and was served as localhost.",
            ))?,
            svid_expiry: IntGaugeVec::new(
                opts(
                    "svidcar_agent_svid_expiry_timestamp_seconds",
                    "When each held X.509-SVID expires (Unix time).",
                ),
                &["spiffe_id"],
            )?,
            entries: IntGauge::with_opts(opts(
                "svidcar_agent_registration_entries",
                "Registration entries in force.",
            ))?,
            bundle_roots: IntGauge::with_opts(opts(
                "svidcar_agent_bundle_roots",
                "Roots in our trust domain's bundle (2 or more during a CA rotation).",
            ))?,
            root_expiry: IntGaugeVec::new(
                opts(
                    "svidcar_agent_ca_root_expiry_timestamp_seconds",
                    "When the CA roots held here expire (Unix time), by role: active signs, prepared waits to.",
                ),
                &["role"],
            )?,
            node_svid_expiry: IntGauge::with_opts(opts(
                "svidcar_agent_node_svid_expiry_timestamp_seconds",
                "When the node SVID expires (Unix time; agents getting SVIDs from svidcar control).",
            ))?,
            registry,
            render_lock: Default::default(),
        };
        m.registry.register(Box::new(m.svids_issued.clone()))?;
        m.registry.register(Box::new(m.issue_failures.clone()))?;
        m.registry.register(Box::new(m.reload_errors.clone()))?;
        m.registry.register(Box::new(m.requests.clone()))?;
        m.registry.register(Box::new(m.streams.clone()))?;
        m.registry.register(Box::new(m.kubelet_fetches.clone()))?;
        m.registry.register(Box::new(m.kubernetes_pods.clone()))?;
        m.registry.register(Box::new(m.resets.clone()))?;
        m.registry
            .register(Box::new(m.authority_rewrites.clone()))?;
        m.registry.register(Box::new(m.svid_expiry.clone()))?;
        m.registry.register(Box::new(m.entries.clone()))?;
        m.registry.register(Box::new(m.bundle_roots.clone()))?;
        m.registry.register(Box::new(m.root_expiry.clone()))?;
        m.registry.register(Box::new(m.node_svid_expiry.clone()))?;
        Ok(Arc::new(m))
    }

    /// Counts one Workload API call.
    pub fn request(&self, method: &str, code: tonic::Code) {
        self.requests
            .with_label_values(&[method, &format!("{code:?}")])
            .inc();
    }

    /// Counts one stream or connection the Workload API server reset.
    pub fn reset(&self, what: &str, code: &str) {
        self.resets.with_label_values(&[what, code]).inc();
    }

    /// Counts one request for the kubelet's pod list.
    pub fn kubelet_fetch(&self, ok: bool) {
        self.kubelet_fetches
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// Sets the gauges from `snap` and `signer`, then renders every metric in the text format.
    pub fn render(&self, snap: &Snapshot, signer: &Signer) -> String {
        let _one_at_a_time = match self.render_lock.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        self.svid_expiry.reset();
        for svid in snap.svids.values() {
            self.svid_expiry
                .with_label_values(&[svid.id.as_str()])
                .set(svid.not_after);
        }
        self.entries.set(snap.entries.len() as i64);
        self.root_expiry.reset();
        match signer {
            Signer::Local(a) => set_root_gauges(a, &self.bundle_roots, &self.root_expiry),
            Signer::Upstream(u) => {
                self.bundle_roots.set(u.bundle().len() as i64);
                self.node_svid_expiry.set(u.node_not_after());
            }
        }
        encode(&self.registry)
    }
}
