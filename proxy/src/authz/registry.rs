//! The open inbound connections an authorization decision let through, kept so a new policy
//! can close those it no longer allows.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use svidcar_identity::SpiffeId;
use svidcar_policy::{DefaultPolicy, PolicySet, Request};
use tokio_util::sync::CancellationToken;

struct OpenConn {
    workload: SpiffeId,
    source_id: Option<SpiffeId>,
    source_ip: IpAddr,
    port: u16,
    cancel: CancellationToken,
    revoked: Arc<AtomicBool>,
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

/// Keeps an inbound connection registered for re-checks; unregisters on drop.
pub(crate) struct ConnGuard<'a> {
    registry: &'a OpenConns,
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
        if let Ok(mut open) = self.registry.open.lock() {
            open.remove(&self.id);
        }
    }
}

impl OpenConns {
    /// Registers an allowed connection; `parent` is the drain token.
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
            registry: self,
            id,
            cancel,
            revoked,
        }
    }

    /// Re-checks every open connection against `set` and closes those it denies; returns how
    /// many were closed.
    pub(crate) fn recheck(&self, set: &PolicySet, default: DefaultPolicy) -> usize {
        let Ok(open) = self.open.lock() else {
            return 0;
        };
        let mut closed = 0;
        for conn in open.values() {
            let req = Request {
                source_id: conn.source_id.as_ref(),
                source_ip: conn.source_ip,
                port: conn.port,
                method: None,
                path: None,
                host: None,
                headers: None,
            };
            if !set.evaluate(&conn.workload, &req, default).allowed {
                conn.revoked.store(true, Ordering::Relaxed);
                conn.cancel.cancel();
                closed += 1;
            }
        }
        closed
    }
}
