//! The decision log: every decision is counted, and logged (target `svidcar::decision`) and
//! streamed to the control plane when one is attached — identical ALLOWs folded per window
//! (`aggregate`), never blocking: a full stream drops the event and counts the drop.

use std::net::SocketAddr;
use std::sync::Arc;

use svidcar_api::DecisionEvent;
use svidcar_identity::SpiffeId;
use svidcar_policy::{Action, DecidingDefault, Decision, DefaultPolicy, Request, RuleRef};
use tokio::sync::mpsc;

use tokio::time::Instant;

use super::aggregate::{Aggregator, KindRef, Moment};
use crate::access_log::logged_path;
use crate::metrics::Metrics;

/// Where decisions go.
#[derive(Debug)]
pub(crate) struct DecisionSink {
    events: Option<mpsc::Sender<DecisionEvent>>,
    metrics: Arc<Metrics>,
    folded: Aggregator,
    /// The configured default, named in the log line of a folded ALLOW it decided.
    default: DefaultPolicy,
}

impl DecisionSink {
    pub(crate) fn new(
        events: Option<mpsc::Sender<DecisionEvent>>,
        metrics: Arc<Metrics>,
        default: DefaultPolicy,
    ) -> Self {
        Self {
            events,
            metrics,
            folded: Aggregator::default(),
            default,
        }
    }

    /// Sends the summaries of the ALLOW windows that ended by `now`.
    pub(crate) fn flush(&self, now: Instant) {
        for e in self.folded.flush(now) {
            self.emit_summary(e);
        }
    }

    /// Sends the summary of a window of folded ALLOWs.
    fn emit_summary(&self, e: DecisionEvent) {
        // A folded ALLOW without a rule was allowed by the configured default: the start-up
        // default only denies, and denials are never folded.
        let default = e
            .rule
            .is_none()
            .then_some(DecidingDefault::Configured(self.default));
        self.emit(e, default);
    }

    /// Logs, counts and streams one decision (and its AUDIT matches) about a request to
    /// `workload`, under policy `version`. An ALLOW like one already out in this window is
    /// only counted: nothing is built for it.
    pub(crate) fn record(
        &self,
        version: &str,
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
        let path = req.path.map(logged_path);
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
            policy_version: version.to_owned(),
            method: req.method.map(str::to_owned),
            path: path.map(str::to_owned),
            count: 1,
        };
        let policy = &self.metrics.policy;
        if d.allowed {
            let kind = KindRef {
                source: req.source_id,
                destination: workload,
                port: req.port,
                rule: d.by.as_ref(),
                method: req.method,
                path,
                reason: &d.reason,
                policy_version: version,
            };
            let moment = Moment {
                time_ms,
                source_addr: source,
                destination_addr: destination,
            };
            let out = self.folded.allow(
                kind,
                moment,
                Instant::now(),
                || ev(Action::Allow, d.by.as_ref()),
                || policy.decision_counter(Action::Allow, d.by.as_ref(), req.source_id, workload),
            );
            if let Some(ended) = out.ended {
                self.emit_summary(ended);
            }
            if let Some(e) = out.event {
                self.emit(e, d.default);
            }
        } else {
            policy.on_decision(Action::Deny, d.by.as_ref(), req.source_id, workload);
            self.emit(ev(Action::Deny, d.by.as_ref()), d.default);
        }
        for a in &d.audits {
            policy.on_decision(Action::Audit, Some(a), req.source_id, workload);
            self.emit(ev(Action::Audit, Some(a)), None);
        }
    }

    /// Logs one event and streams it (dropping and counting it when the stream is full).
    /// The log line names what decided: `policy` and `rule` when a rule did, `default` when a
    /// default did, neither otherwise (the `reason` says why).
    fn emit(&self, e: DecisionEvent, default: Option<DecidingDefault>) {
        let id = |i: &Option<SpiffeId>| i.as_ref().map_or("", SpiffeId::as_str).to_owned();
        let (policy, rule) = decided_by(e.rule.as_ref());
        tracing::info!(
            target: "svidcar::decision",
            action = e.action.as_str(),
            source.id = %id(&e.source_id),
            destination.id = %id(&e.destination_id),
            source.addr = %e.source_addr,
            destination.addr = %e.destination_addr,
            port = e.port,
            policy = policy.map(tracing::field::display),
            rule,
            default = default.map(|d| tracing::field::display(d.as_str())),
            reason = %e.reason,
            policy_version = %e.policy_version,
            http.method = e.method.as_deref().unwrap_or(""),
            http.path = e.path.as_deref().unwrap_or(""),
            count = e.count,
            "authorization decision"
        );
        if let Some(tx) = &self.events {
            if tx.try_send(e).is_err() {
                self.metrics.policy.on_decision_dropped();
            }
        }
    }
}

/// The `policy` and `rule` log fields: absent (not `""` and `-1`) when no rule decided.
fn decided_by(rule: Option<&RuleRef>) -> (Option<&str>, Option<u64>) {
    match rule {
        Some(r) => (Some(r.policy.as_str()), Some(r.rule as u64)),
        None => (None, None),
    }
}
