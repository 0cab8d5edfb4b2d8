//! Authorization and policy metrics: decisions by action, policy and rule (with both
//! identities), dropped decision events, the policy version in force, revocations, rejected
//! snapshots and the control-plane stream.

use std::sync::Arc;

use prometheus::core::Collector;
use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use svidcar_identity::SpiffeId;
use svidcar_policy::{Action, RuleRef};
use tokio::time::Instant;

use super::tracked::{Handle, Tracked};
use super::{counter_vec, IdLabels, MetricsError};

/// The policy metrics.
pub struct PolicyMetrics {
    ids: Arc<IdLabels>,
    decisions: Tracked<IntCounterVec>,
    decisions_dropped: IntCounter,
    policy_info: IntGaugeVec,
    policy_updated: Gauge,
    policy_revoked: IntCounter,
    policy_rejected: IntCounter,
    control_plane_up: IntGauge,
}

impl std::fmt::Debug for PolicyMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyMetrics").finish_non_exhaustive()
    }
}

impl PolicyMetrics {
    pub(super) fn new(ids: Arc<IdLabels>) -> Result<Self, MetricsError> {
        Ok(Self {
            ids,
            decisions: Tracked::new(counter_vec(
                "svidcar_authz_decisions_total",
                "Inbound authorization decisions by action (ALLOW, DENY, AUDIT), deciding policy and rule (empty / -1 when a default decided).",
                &["action", "policy", "rule", "source_id", "destination_id"],
            )?),
            decisions_dropped: IntCounter::new(
                "svidcar_decision_events_dropped_total",
                "Decision events dropped because the stream to the control plane was full (traffic is never stalled for them).",
            )?,
            policy_info: IntGaugeVec::new(
                Opts::new("svidcar_policy_info", "1 for the policy version in force."),
                &["version"],
            )?,
            policy_updated: Gauge::new(
                "svidcar_policy_last_update_timestamp_seconds",
                "Unix time the policy in force was installed (0: none yet).",
            )?,
            policy_revoked: IntCounter::new(
                "svidcar_policy_revoked_connections_total",
                "Open connections closed because a new policy no longer allows them.",
            )?,
            policy_rejected: IntCounter::new(
                "svidcar_policy_rejected_snapshots_total",
                "Policy snapshots from the control plane rejected as invalid (the last good policy stays).",
            )?,
            control_plane_up: IntGauge::new(
                "svidcar_control_plane_connected",
                "1 while the policy stream to the control plane is open.",
            )?,
        })
    }

    pub(super) fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            self.decisions.collector(),
            Box::new(self.decisions_dropped.clone()),
            Box::new(self.policy_info.clone()),
            Box::new(self.policy_updated.clone()),
            Box::new(self.policy_revoked.clone()),
            Box::new(self.policy_rejected.clone()),
            Box::new(self.control_plane_up.clone()),
        ]
    }

    pub(super) fn sweep(&self, cutoff: Instant) -> usize {
        self.decisions.sweep(cutoff)
    }

    /// An authorization decision (or an AUDIT match).
    /// Labels `policy`/`rule` are empty / `-1` when a default decided.
    pub(crate) fn on_decision(
        &self,
        action: Action,
        rule: Option<&RuleRef>,
        source: Option<&SpiffeId>,
        destination: Option<&SpiffeId>,
    ) {
        if let Some(c) = self
            .decision_counter(action, rule, source, destination)
            .get()
        {
            c.inc();
        }
    }

    /// A handle on the counter of decisions like this one (kept by a run of like decisions).
    pub(crate) fn decision_counter(
        &self,
        action: Action,
        rule: Option<&RuleRef>,
        source: Option<&SpiffeId>,
        destination: Option<&SpiffeId>,
    ) -> Handle<IntCounter> {
        let (policy, rule) = match rule {
            Some(r) => (r.policy.as_str(), r.rule.to_string()),
            None => ("", "-1".to_owned()),
        };
        let src = self.ids.label(source);
        let dst = self.ids.label(destination);
        self.decisions
            .handle(&[action.as_str(), policy, &rule, &src, &dst])
    }

    /// A decision event was dropped under back pressure.
    pub(crate) fn on_decision_dropped(&self) {
        self.decisions_dropped.inc();
    }

    /// A policy version was installed at `when` (Unix time).
    pub(crate) fn on_policy(&self, version: &str, when: i64) {
        self.policy_info.reset();
        self.policy_info.with_label_values(&[version]).set(1);
        self.policy_updated.set(when as f64);
    }

    /// A snapshot from the control plane was rejected.
    pub(crate) fn on_policy_rejected(&self) {
        self.policy_rejected.inc();
    }

    /// The control-plane stream opened (`true`) or closed.
    pub(crate) fn on_control_plane(&self, up: bool) {
        self.control_plane_up.set(i64::from(up));
    }

    /// Connections closed by a policy change.
    pub(crate) fn on_policy_revoked(&self, n: usize) {
        self.policy_revoked.inc_by(n as u64);
    }
}
