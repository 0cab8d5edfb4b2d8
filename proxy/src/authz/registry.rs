//! The open connections authorization let through, kept so that a new policy or a new
//! revocation set can close those it no longer allows — each closure handed back so it becomes
//! a DENY decision event.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use svidcar_policy::Decision;
use tokio_util::sync::CancellationToken;

use super::ends::Ends;
use crate::refusal::Refusal;

struct OpenConn {
    ends: Ends,
    /// Re-evaluated against each new policy (inbound TCP; HTTP is authorized per request and
    /// outbound is decided by the peer's inbound side).
    policy_checked: bool,
    cancel: CancellationToken,
    closed_by: Arc<OnceLock<Refusal>>,
}

/// A connection the registry closed, and the decision that closed it.
#[derive(Debug)]
pub(crate) struct Closed {
    pub(crate) ends: Ends,
    pub(crate) decision: Decision,
}

/// The registry.
#[derive(Default)]
pub(crate) struct OpenConns {
    open: Mutex<HashMap<u64, OpenConn>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for OpenConns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenConns").finish_non_exhaustive()
    }
}

/// Keeps a connection registered for re-checks; unregisters on drop.
pub(crate) struct ConnGuard<'a> {
    registry: &'a OpenConns,
    id: u64,
    /// Cancelled when the connection must close (policy or revocation, or drain over).
    pub(crate) cancel: CancellationToken,
    closed_by: Arc<OnceLock<Refusal>>,
}

impl ConnGuard<'_> {
    /// Why a policy change or a revocation closed the connection, if one did.
    pub(crate) fn closed_by(&self) -> Option<Refusal> {
        self.closed_by.get().cloned()
    }
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut open) = self.registry.open.lock() {
            open.remove(&self.id);
        }
    }
}

impl OpenConns {
    /// Registers an allowed connection; `parent` is the drain token.
    pub(crate) fn register(
        &self,
        ends: Ends,
        policy_checked: bool,
        parent: &CancellationToken,
    ) -> ConnGuard<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cancel = parent.child_token();
        let closed_by = Arc::new(OnceLock::new());
        if let Ok(mut open) = self.open.lock() {
            open.insert(
                id,
                OpenConn {
                    ends,
                    policy_checked,
                    cancel: cancel.clone(),
                    closed_by: closed_by.clone(),
                },
            );
        }
        ConnGuard {
            registry: self,
            id,
            cancel,
            closed_by,
        }
    }

    /// Closes every open connection `verdict` refuses (`policy_only`: only those re-evaluated
    /// against policy); returns them with the deciding decision.
    pub(crate) fn close_where(
        &self,
        policy_only: bool,
        verdict: impl Fn(&Ends) -> Option<(Decision, Refusal)>,
    ) -> Vec<Closed> {
        let Ok(open) = self.open.lock() else {
            return Vec::new();
        };
        let mut closed = Vec::new();
        for conn in open.values() {
            if policy_only && !conn.policy_checked {
                continue;
            }
            if conn.closed_by.get().is_some() {
                continue;
            }
            if let Some((decision, why)) = verdict(&conn.ends) {
                let _ = conn.closed_by.set(why);
                conn.cancel.cancel();
                closed.push(Closed {
                    ends: conn.ends.clone(),
                    decision,
                });
            }
        }
        closed
    }
}
