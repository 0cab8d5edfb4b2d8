//! The policy in force and the decision for one request: a snapshot swapped atomically, the
//! start-up default until the first one arrives, and evaluation (pure, in `svidcar-policy`).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use svidcar_identity::{unix_now, SpiffeId};
use svidcar_policy::{DecidingDefault, Decision, DefaultPolicy, PolicySet, Request};

use crate::config::{MtlsMode, PolicyConfig, StartupPolicy};

/// The policy snapshot in force and what applies without one.
#[derive(Debug)]
pub(crate) struct PolicyState {
    current: ArcSwapOption<PolicySet>,
    source_configured: bool,
    default: DefaultPolicy,
    startup: StartupPolicy,
    updated_at: AtomicI64,
}

impl PolicyState {
    pub(crate) fn new(cfg: &PolicyConfig, source_configured: bool) -> Self {
        Self {
            current: ArcSwapOption::empty(),
            source_configured,
            default: cfg.default,
            startup: cfg.startup,
            updated_at: AtomicI64::new(0),
        }
    }

    /// The default for workloads no ALLOW policy selects.
    pub(crate) fn default_policy(&self) -> DefaultPolicy {
        self.default
    }

    /// The version in force, if any policy arrived.
    pub(crate) fn version(&self) -> Option<String> {
        self.current.load().as_ref().map(|p| p.version.clone())
    }

    /// `f` with the version in force (`""` before the first policy), borrowed: the decision
    /// log reads it for every decision.
    pub(crate) fn with_version<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        let current = self.current.load();
        f(current.as_ref().map_or("", |p| p.version.as_str()))
    }

    /// Unix time of the last installed policy (0 if none).
    pub(crate) fn updated_at(&self) -> i64 {
        self.updated_at.load(Ordering::Relaxed)
    }

    /// Whether the proxy still waits for its first policy.
    pub(crate) fn waiting_for_policy(&self) -> bool {
        self.source_configured && self.current.load().is_none()
    }

    /// The mTLS mode policy sets for a port, if any.
    pub(crate) fn mtls_for(&self, workload: Option<&SpiffeId>, port: u16) -> Option<MtlsMode> {
        let set = self.current.load_full()?;
        set.mtls_for(workload?, port)
    }

    /// Swaps in a new snapshot; returns it shared.
    pub(crate) fn swap(&self, set: PolicySet) -> Arc<PolicySet> {
        let set = Arc::new(set);
        self.current.store(Some(set.clone()));
        self.updated_at.store(unix_now(), Ordering::Relaxed);
        set
    }

    /// Decides for one request to `workload` (ours; `None` without an SVID: fail closed).
    pub(crate) fn decide(&self, workload: Option<&SpiffeId>, req: &Request<'_>) -> Decision {
        let deny = |reason: &str, default: Option<DecidingDefault>| Decision {
            allowed: false,
            by: None,
            default,
            reason: reason.to_owned(),
            audits: Vec::new(),
        };
        let Some(workload) = workload else {
            return deny("no local SVID: cannot select policies (fail closed)", None);
        };
        match self.current.load_full() {
            Some(set) => set.evaluate(workload, req, self.default),
            None if self.source_configured && self.startup == StartupPolicy::Deny => deny(
                "no policy received yet; start-up default denies",
                Some(DecidingDefault::StartupDeny),
            ),
            None => svidcar_policy::evaluate(&[], workload, req, self.default),
        }
    }
}
