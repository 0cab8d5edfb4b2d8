//! Enforcement of authorization policy on inbound connections, and of the mesh-wide revocation
//! set on both sides: deciding with the policy in force (`decide`), the revocation set
//! (`revoked`), the registry of open connections re-checked when either changes (`registry`,
//! over each connection's `ends`), and the decision log (`sink`). `Authz` ties them together;
//! every refusal and every closure it causes is a DENY decision event.

mod aggregate;
mod decide;
mod ends;
mod registry;
mod revoked;
mod sink;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use svidcar_api::policy::Revocation;
use svidcar_api::DecisionEvent;
use svidcar_identity::{unix_now, SpiffeId};
use svidcar_policy::{Decision, PolicySet, Request};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{MtlsMode, PolicyConfig};
use crate::metrics::Metrics;
use crate::refusal::Refusal;
use decide::PolicyState;
pub(crate) use ends::Ends;
pub(crate) use registry::ConnGuard;
use registry::{Closed, OpenConns};
pub(crate) use revoked::End;
use revoked::RevocationSet;
pub use revoked::Revoked;
use sink::DecisionSink;

/// How long identical ALLOW decisions are folded into one logged and streamed event.
pub const DECISION_WINDOW: std::time::Duration = aggregate::WINDOW;

/// Policy state of a proxy.
#[derive(Debug)]
pub struct Authz {
    policy: PolicyState,
    revoked: ArcSwap<RevocationSet>,
    open: OpenConns,
    sink: DecisionSink,
    metrics: Arc<Metrics>,
    /// Why the policy source (the control plane) cannot be reached, while it cannot.
    source_problem: std::sync::Mutex<Option<String>>,
}

impl Authz {
    /// Creates the state. `source_configured` says whether a policy source (directory or
    /// control plane) will deliver policy; `events` receives decision events (dropped, and
    /// counted, when full).
    pub fn new(
        cfg: &PolicyConfig,
        source_configured: bool,
        events: Option<mpsc::Sender<DecisionEvent>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            policy: PolicyState::new(cfg, source_configured),
            revoked: ArcSwap::from_pointee(RevocationSet::default()),
            open: OpenConns::default(),
            sink: DecisionSink::new(events, metrics.clone(), cfg.default),
            metrics,
            source_problem: std::sync::Mutex::new(None),
        }
    }

    /// Records why the policy source cannot be reached (`None`: it can).
    pub(crate) fn set_source_problem(&self, problem: Option<String>) {
        if let Ok(mut slot) = self.source_problem.lock() {
            *slot = problem;
        }
    }

    /// Why the policy source cannot be reached, if it cannot.
    pub fn source_problem(&self) -> Option<String> {
        self.source_problem.lock().ok().and_then(|p| p.clone())
    }

    /// The version in force, if any policy arrived.
    pub fn version(&self) -> Option<String> {
        self.policy.version()
    }

    /// Unix time of the last installed policy (0 if none).
    pub fn updated_at(&self) -> i64 {
        self.policy.updated_at()
    }

    /// Whether the proxy still waits for its first policy.
    pub fn waiting_for_policy(&self) -> bool {
        self.policy.waiting_for_policy()
    }

    /// The mTLS mode policy sets for a port, if any.
    pub fn mtls_for(&self, workload: Option<&SpiffeId>, port: u16) -> Option<MtlsMode> {
        self.policy.mtls_for(workload, port)
    }

    /// Decides for one connection.
    pub fn decide(&self, workload: Option<&SpiffeId>, req: &Request<'_>) -> Decision {
        self.policy.decide(workload, req)
    }

    /// Installs a new policy set atomically, then re-checks every open inbound TCP connection
    /// and closes those no longer allowed, each a DENY decision event. Returns how many were
    /// closed.
    pub fn install(&self, set: PolicySet) -> usize {
        let version = set.version.clone();
        let set = self.policy.swap(set);
        self.metrics.policy.on_policy(&version, unix_now());
        let default = self.policy.default_policy();
        let closed = self.open.close_where(true, |ends| {
            let d = set.evaluate(ends.local.as_ref()?, &ends.request(), default);
            (!d.allowed).then(|| {
                let reason = format!("open connection closed by a new policy: {}", d.reason);
                (Decision { reason, ..d }, Refusal::PolicyRevoked)
            })
        });
        let n = self.record_closed(closed);
        self.metrics.policy.on_policy_revoked(n);
        tracing::info!(version, revoked = n, "policy installed");
        n
    }

    /// Installs the control plane's revocation set (complete: what it does not list is
    /// lifted), then closes every open connection from or to a revoked identity or certificate,
    /// each a DENY decision event. Returns how many were closed.
    pub fn install_revocations(&self, list: &[Revocation]) -> usize {
        let (set, errors) = RevocationSet::from_wire(list);
        for e in &errors {
            tracing::warn!(error = %e, "revocation entry skipped");
        }
        let entries = set.len();
        let set = Arc::new(set);
        self.revoked.store(set.clone());
        let now = unix_now();
        let closed = self.open.close_where(false, |ends| {
            let r = set.check(&ends.revocable(), now)?;
            Some((revoked_decision(&r, true), Refusal::IdentityRevoked(r)))
        });
        let n = self.record_closed(closed);
        tracing::info!(
            revocations = entries,
            closed = n,
            "revocation set installed"
        );
        n
    }

    /// The refusal for a new connection when one of its ends is revoked (recorded as a DENY
    /// decision event), `None` when neither is.
    pub(crate) fn refuse_revoked(&self, ends: &Ends) -> Option<Refusal> {
        self.refuse_revoked_lazy(&ends.revocable(), || ends.clone())
    }

    /// [`Self::refuse_revoked`] for a caller that holds the ends' IDs by reference (once per
    /// HTTP request): `ends` is only built, for the decision event, when something is revoked.
    pub(crate) fn refuse_revoked_lazy(
        &self,
        revocable: &[End<'_>],
        ends: impl FnOnce() -> Ends,
    ) -> Option<Refusal> {
        let r = self.revoked.load().check(revocable, unix_now())?;
        self.record_ends(&ends(), &revoked_decision(&r, false));
        Some(Refusal::IdentityRevoked(r))
    }

    /// Registers an allowed connection for re-checks (`policy_checked`: against new policies
    /// too, not only revocations); `parent` is the drain token.
    pub(crate) fn register(
        &self,
        ends: Ends,
        policy_checked: bool,
        parent: &CancellationToken,
    ) -> ConnGuard<'_> {
        self.open.register(ends, policy_checked, parent)
    }

    /// Records a DENY decision event for each closed connection; returns how many.
    fn record_closed(&self, closed: Vec<Closed>) -> usize {
        for c in &closed {
            self.record_ends(&c.ends, &c.decision);
        }
        closed.len()
    }

    /// Records a decision about the connection between `ends`.
    fn record_ends(&self, ends: &Ends, d: &Decision) {
        let req = ends.request();
        self.record(ends.destination_id(), ends.client, ends.dst, &req, d);
    }

    /// Sends the summaries of identical ALLOWs folded in windows that ended; call about once
    /// per [`DECISION_WINDOW`].
    pub fn flush_decisions(&self) {
        self.sink.flush(tokio::time::Instant::now());
    }

    /// Sends the summaries of every open window now (at shutdown).
    pub fn flush_all_decisions(&self) {
        self.sink
            .flush(tokio::time::Instant::now() + DECISION_WINDOW);
    }

    /// Logs a decision (target `svidcar::decision`), counts it, and streams it if a sink is
    /// attached. Never blocks: a full sink drops the event and counts the drop.
    pub fn record(
        &self,
        workload: Option<&SpiffeId>,
        source: SocketAddr,
        destination: SocketAddr,
        req: &Request<'_>,
        d: &Decision,
    ) {
        self.policy.with_version(|version| {
            self.sink
                .record(version, workload, source, destination, req, d)
        });
    }
}

/// The DENY a revocation makes (`open`: it closed an open connection).
fn revoked_decision(r: &Revoked, open: bool) -> Decision {
    let reason = if open {
        format!("open connection closed: {r}")
    } else {
        r.to_string()
    };
    Decision {
        allowed: false,
        by: None,
        default: None,
        reason,
        audits: Vec::new(),
    }
}

#[cfg(test)]
mod tests;
