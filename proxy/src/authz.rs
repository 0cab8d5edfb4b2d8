//! Enforcement of authorization policy on inbound connections: the current policy snapshot
//! (swapped atomically), the decision for each connection before any byte reaches the app, the
//! registry of open connections that are re-checked when policy changes, and the decision log.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{MtlsMode, PolicyConfig, StartupPolicy};
use crate::metrics::Metrics;
use svidcar_api::DecisionEvent;
use svidcar_identity::{unix_now, SpiffeId};
use svidcar_policy::{Action, Decision, DefaultPolicy, PolicySet, Request, RuleRef};

struct OpenConn {
    workload: SpiffeId,
    source_id: Option<SpiffeId>,
    source_ip: IpAddr,
    port: u16,
    cancel: CancellationToken,
    revoked: Arc<AtomicBool>,
}

/// Policy state of a proxy.
pub struct Authz {
    current: ArcSwapOption<PolicySet>,
    source_configured: bool,
    default: DefaultPolicy,
    startup: StartupPolicy,
    open: Mutex<HashMap<u64, OpenConn>>,
    next_id: AtomicU64,
    updated_at: AtomicI64,
    events: Option<mpsc::Sender<DecisionEvent>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Authz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authz")
            .field("version", &self.version())
            .finish_non_exhaustive()
    }
}

/// Keeps an inbound connection registered for re-checks; unregisters on drop.
pub(crate) struct ConnGuard<'a> {
    authz: &'a Authz,
    id: u64,
    /// Cancelled when the connection must close (policy revoked or drain over).
    pub(crate) cancel: CancellationToken,
    revoked: Arc<AtomicBool>,
}

impl ConnGuard<'_> {
    /// Whether a policy change closed the connection.
    pub(crate) fn revoked(&self) -> bool {
        self.revoked.load(Ordering::Relaxed)
    }
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut open) = self.authz.open.lock() {
            open.remove(&self.id);
        }
    }
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
            current: ArcSwapOption::empty(),
            source_configured,
            default: cfg.default,
            startup: cfg.startup,
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            updated_at: AtomicI64::new(0),
            events,
            metrics,
        }
    }

    /// The version in force, if any policy arrived.
    pub fn version(&self) -> Option<String> {
        self.current.load().as_ref().map(|p| p.version.clone())
    }

    /// Unix time of the last installed policy (0 if none).
    pub fn updated_at(&self) -> i64 {
        self.updated_at.load(Ordering::Relaxed)
    }

    /// Whether the proxy still waits for its first policy.
    pub fn waiting_for_policy(&self) -> bool {
        self.source_configured && self.current.load().is_none()
    }

    /// The mTLS mode policy sets for a port, if any.
    pub fn mtls_for(&self, workload: Option<&SpiffeId>, port: u16) -> Option<MtlsMode> {
        let set = self.current.load_full()?;
        set.mtls_for(workload?, port)
    }

    /// Decides for one connection.
    pub fn decide(&self, workload: Option<&SpiffeId>, req: &Request<'_>) -> Decision {
        let deny = |reason: &str| Decision {
            allowed: false,
            by: None,
            reason: reason.to_owned(),
            audits: Vec::new(),
        };
        let Some(workload) = workload else {
            return deny("no local SVID: cannot select policies (fail closed)");
        };
        match self.current.load_full() {
            Some(set) => set.evaluate(workload, req, self.default),
            None if self.source_configured && self.startup == StartupPolicy::Deny => {
                deny("no policy received yet; start-up default denies")
            }
            None => PolicySet {
                version: String::new(),
                policies: Vec::new(),
            }
            .evaluate(workload, req, self.default),
        }
    }

    /// Installs a new policy set atomically, then re-checks every open inbound connection and
    /// closes those no longer allowed. Returns how many were closed.
    pub fn install(&self, set: PolicySet) -> usize {
        let version = set.version.clone();
        let set = Arc::new(set);
        self.current.store(Some(set.clone()));
        self.updated_at.store(unix_now(), Ordering::Relaxed);
        self.metrics.on_policy(&version, unix_now());
        let mut closed = 0;
        if let Ok(open) = self.open.lock() {
            for conn in open.values() {
                let req = Request {
                    source_id: conn.source_id.as_ref(),
                    source_ip: conn.source_ip,
                    port: conn.port,
                    method: None,
                    path: None,
                };
                let d = set.evaluate(&conn.workload, &req, self.default);
                if !d.allowed {
                    conn.revoked.store(true, Ordering::Relaxed);
                    conn.cancel.cancel();
                    closed += 1;
                }
            }
        }
        self.metrics.on_policy_revoked(closed);
        tracing::info!(version, revoked = closed, "policy installed");
        closed
    }

    /// Registers an allowed connection for re-checks; `parent` is the drain token.
    pub(crate) fn register(
        &self,
        workload: &SpiffeId,
        req: &Request<'_>,
        parent: &CancellationToken,
    ) -> ConnGuard<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cancel = parent.child_token();
        let revoked = Arc::new(AtomicBool::new(false));
        if let Ok(mut open) = self.open.lock() {
            open.insert(
                id,
                OpenConn {
                    workload: workload.clone(),
                    source_id: req.source_id.cloned(),
                    source_ip: req.source_ip,
                    port: req.port,
                    cancel: cancel.clone(),
                    revoked: revoked.clone(),
                },
            );
        }
        ConnGuard {
            authz: self,
            id,
            cancel,
            revoked,
        }
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
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|t| t.as_millis() as i64)
            .unwrap_or(0);
        let version = self.version().unwrap_or_default();
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
                "authorization decision"
            );
            self.metrics
                .on_decision(e.action.as_str(), policy, rule, req.source_id, workload);
            if let Some(tx) = &self.events {
                if tx.try_send(e).is_err() {
                    self.metrics.on_decision_dropped();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Cardinality;

    #[test]
    fn a_full_decision_buffer_drops_and_counts_instead_of_blocking() {
        let metrics = Metrics::new(Cardinality::default()).unwrap();
        let (tx, mut rx) = mpsc::channel(2);
        let authz = Authz::new(&PolicyConfig::default(), false, Some(tx), metrics.clone());
        let me = SpiffeId::parse("spiffe://td/server").unwrap();
        let caller = SpiffeId::parse("spiffe://td/client").unwrap();
        let req = Request {
            source_id: Some(&caller),
            source_ip: "10.0.0.1".parse().unwrap(),
            port: 80,
            method: None,
            path: None,
        };
        let addr: SocketAddr = "10.0.0.1:5555".parse().unwrap();
        for _ in 0..5 {
            let d = authz.decide(Some(&me), &req);
            assert!(d.allowed, "default allow-all without a policy source");
            authz.record(Some(&me), addr, addr, &req, &d);
        }
        let text = metrics.render(&svidcar_identity::CredentialStore::default());
        assert!(
            text.contains("svidcar_decision_events_dropped_total 3"),
            "{text}"
        );
        let first = rx.try_recv().unwrap();
        assert_eq!(
            (first.action, first.source_id, first.rule),
            (Action::Allow, Some(caller), None)
        );
    }

    #[test]
    fn without_a_local_identity_everything_is_denied() {
        let metrics = Metrics::new(Cardinality::default()).unwrap();
        let authz = Authz::new(&PolicyConfig::default(), false, None, metrics);
        let req = Request {
            source_id: None,
            source_ip: "10.0.0.1".parse().unwrap(),
            port: 80,
            method: None,
            path: None,
        };
        assert!(!authz.decide(None, &req).allowed);
    }
}
