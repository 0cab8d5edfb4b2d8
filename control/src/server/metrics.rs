//! `svidcar control`'s Prometheus metrics (at `/metrics` of the query listener): the node API's
//! joins, signatures and refusals, the CA roots, and the proxies subscribed to the policy stream.
//! Labels take values from fixed sets only.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::authority::Authority;
use crate::prom::{encode, set_root_gauges};

/// Every metric of the control plane.
#[derive(Debug, Clone)]
pub struct ControlMetrics {
    registry: Registry,
    /// One scrape at a time: gauges are reset and refilled for each.
    render_lock: std::sync::Arc<std::sync::Mutex<()>>,
    /// Join attempts by outcome: `ok`, `unknown_token`, `used_token`, `expired_token`,
    /// `throttled`, `bad_request`.
    pub joins: IntCounterVec,
    /// SVIDs signed for agents, by kind: `node` (joins and renewals), `workload`.
    pub signed: IntCounterVec,
    /// Node API calls refused, by reason: `no_certificate`, `not_a_node`, `unregistered_node`,
    /// `not_allowed`, `reserved`.
    pub refusals: IntCounterVec,
    /// Decision events from proxies refused as malformed (not stored).
    pub decision_events_rejected: IntCounter,
    proxies: IntGauge,
    bundle_roots: IntGauge,
    root_expiry: IntGaugeVec,
}

impl ControlMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let m = Self {
            registry: Registry::new(),
            render_lock: Default::default(),
            joins: IntCounterVec::new(
                Opts::new(
                    "svidcar_control_node_joins_total",
                    "Node join attempts by outcome.",
                ),
                &["outcome"],
            )?,
            signed: IntCounterVec::new(
                Opts::new(
                    "svidcar_control_svids_signed_total",
                    "SVIDs signed for agents by kind (node, workload).",
                ),
                &["kind"],
            )?,
            refusals: IntCounterVec::new(
                Opts::new(
                    "svidcar_control_node_refusals_total",
                    "Node API calls refused by reason.",
                ),
                &["reason"],
            )?,
            decision_events_rejected: IntCounter::new(
                "svidcar_control_decision_events_rejected_total",
                "Decision events from proxies refused as malformed and not stored.",
            )?,
            proxies: IntGauge::with_opts(Opts::new(
                "svidcar_control_proxies",
                "Proxies subscribed to the policy stream.",
            ))?,
            bundle_roots: IntGauge::with_opts(Opts::new(
                "svidcar_control_bundle_roots",
                "Roots in the trust bundle (2 or more during a CA rotation; 0 without the CA).",
            ))?,
            root_expiry: IntGaugeVec::new(
                Opts::new(
                    "svidcar_control_ca_root_expiry_timestamp_seconds",
                    "When the CA roots held here expire (Unix time), by role: active, prepared.",
                ),
                &["role"],
            )?,
        };
        m.registry.register(Box::new(m.joins.clone()))?;
        m.registry.register(Box::new(m.signed.clone()))?;
        m.registry.register(Box::new(m.refusals.clone()))?;
        m.registry
            .register(Box::new(m.decision_events_rejected.clone()))?;
        m.registry.register(Box::new(m.proxies.clone()))?;
        m.registry.register(Box::new(m.bundle_roots.clone()))?;
        m.registry.register(Box::new(m.root_expiry.clone()))?;
        Ok(m)
    }

    /// Sets the gauges from the current state, then renders every metric in the text format.
    pub fn render(&self, proxies: usize, authority: Option<&Authority>) -> String {
        let _one_at_a_time = match self.render_lock.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        self.proxies.set(proxies as i64);
        self.root_expiry.reset();
        match authority {
            Some(a) => set_root_gauges(a, &self.bundle_roots, &self.root_expiry),
            None => self.bundle_roots.set(0),
        }
        encode(&self.registry)
    }
}
