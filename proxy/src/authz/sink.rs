//! The decision log: every decision is logged (target `svidcar::decision`), counted, and
//! streamed to the control plane when one is attached — never blocking: a full stream drops the
//! event and counts the drop.

use std::net::SocketAddr;
use std::sync::Arc;

use svidcar_api::DecisionEvent;
use svidcar_identity::SpiffeId;
use svidcar_policy::{Action, Decision, Request, RuleRef};
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// Where decisions go.
#[derive(Debug)]
pub(crate) struct DecisionSink {
    events: Option<mpsc::Sender<DecisionEvent>>,
    metrics: Arc<Metrics>,
}

impl DecisionSink {
    pub(crate) fn new(events: Option<mpsc::Sender<DecisionEvent>>, metrics: Arc<Metrics>) -> Self {
        Self { events, metrics }
    }

    /// Logs, counts and streams one decision (and its AUDIT matches) about a request to
    /// `workload`, under policy `version`.
    pub(crate) fn record(
        &self,
        version: Option<String>,
        workload: Option<&SpiffeId>,
        source: SocketAddr,
        destination: SocketAddr,
        req: &Request<'_>,
        d: &Decision,
    ) {
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|t| t.as_millis() as i64)
            .unwrap_or(0);
        let version = version.unwrap_or_default();
        let ev = |action: Action, rule: Option<&RuleRef>| DecisionEvent {
            time_ms,
            action,
            source_id: req.source_id.cloned(),
            destination_id: workload.cloned(),
            source_addr: source,
            destination_addr: destination,
            port: req.port,
            rule: rule.cloned(),
            reason: d.reason.clone(),
            policy_version: version.clone(),
            method: req.method.map(str::to_owned),
            path: req.path.map(str::to_owned),
        };
        let verdict = if d.allowed {
            Action::Allow
        } else {
            Action::Deny
        };
        let mut events = vec![ev(verdict, d.by.as_ref())];
        for a in &d.audits {
            events.push(ev(Action::Audit, Some(a)));
        }
        for e in events {
            let none = String::new();
            let id = |i: &Option<SpiffeId>| i.as_ref().map_or("", SpiffeId::as_str).to_owned();
            let (policy, rule) = e
                .rule
                .as_ref()
                .map_or((&none, -1), |r| (&r.policy, r.rule as i64));
            tracing::info!(
                target: "svidcar::decision",
                action = e.action.as_str(),
                source.id = %id(&e.source_id),
                destination.id = %id(&e.destination_id),
                source.addr = %e.source_addr,
                destination.addr = %e.destination_addr,
                port = e.port,
                policy = %policy,
                rule,
                reason = %e.reason,
                policy_version = %e.policy_version,
                http.method = e.method.as_deref().unwrap_or(""),
                http.path = e.path.as_deref().unwrap_or(""),
                "authorization decision"
            );
            self.metrics
                .policy
                .on_decision(e.action, e.rule.as_ref(), req.source_id, workload);
            if let Some(tx) = &self.events {
                if tx.try_send(e).is_err() {
                    self.metrics.policy.on_decision_dropped();
                }
            }
        }
    }
}
