//! What the control plane knows: the current valid policy set (and the errors of a rejected
//! edit), and every subscribed proxy with the version it was sent and what it answered.

use std::collections::BTreeMap;
use std::sync::Mutex;

use svidcar_api::policy::{PolicyDocument, PolicySnapshot, Revocation};
use svidcar_identity::SpiffeId;
use svidcar_policy::{content_version, Policy};
use tokio::sync::watch;

/// The policy set in force plus load errors.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    /// Valid policies (the last valid set when an edit is rejected).
    pub policies: Vec<Policy>,
    /// Errors of the newest edit, if it was rejected.
    pub errors: Vec<String>,
    /// Content version of the directory's valid set.
    pub version: String,
    /// The mesh-wide revocation set (wire form), sent to every proxy with its policies.
    pub revocations: Vec<Revocation>,
}

impl Policies {
    /// The snapshot for a proxy whose workload is `id`: only the policies that select it, and
    /// the whole revocation set (its version covers both, so a revocation is pushed at once).
    pub fn snapshot_for(&self, id: &SpiffeId) -> PolicySnapshot {
        let documents: Vec<PolicyDocument> = self
            .policies
            .iter()
            .filter(|p| p.selects(id))
            .map(|p| PolicyDocument {
                origin: format!("{}#{}", p.origin.file, p.origin.doc + 1),
                yaml: p.source.clone(),
            })
            .collect();
        let revoked: Vec<String> = self
            .revocations
            .iter()
            .map(|r| format!("{}|{}|{}|{}", r.spiffe_id, r.serial, r.until, r.reason))
            .collect();
        let version = content_version(
            documents
                .iter()
                .flat_map(|d| [d.origin.as_bytes(), d.yaml.as_bytes()])
                .chain(revoked.iter().map(String::as_bytes)),
        );
        PolicySnapshot {
            version,
            documents,
            revocations: self.revocations.clone(),
        }
    }
}

/// A proxy on the watch stream.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Subscriber {
    /// Its SPIFFE ID (from mTLS).
    pub spiffe_id: String,
    /// Its node name.
    pub node: String,
    /// Its address.
    pub addr: String,
    /// The version last sent.
    pub sent_version: String,
    /// The version last acknowledged.
    pub acked_version: String,
    /// The last rejection: version and reason.
    pub rejected: Option<(String, String)>,
}

/// Shared control-plane state.
#[derive(Debug)]
pub struct State {
    /// Current policies; subscribers watch for changes.
    pub policies: watch::Sender<Policies>,
    /// Connected proxies by stream number.
    pub subscribers: Mutex<BTreeMap<u64, Subscriber>>,
    /// The CA, when this control plane holds it.
    pub authority: std::sync::OnceLock<std::sync::Arc<crate::authority::Authority>>,
    /// Prometheus metrics.
    pub metrics: super::metrics::ControlMetrics,
    /// Nodes that used the node API since start, by name.
    pub nodes: Mutex<BTreeMap<String, NodeSeen>>,
    /// The revocation set and its file.
    pub revocations: super::revocations::RevocationBook,
}

/// What the control plane saw of a node since it started (shown at `/nodes`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct NodeSeen {
    /// Address of its latest call.
    pub addr: String,
    /// When it joined with its token (Unix time), if it did since start.
    pub joined_at: Option<i64>,
    /// Its latest call (Unix time) and which one.
    pub last_call_at: i64,
    /// `Join`, `RenewNode`, `SignWorkload` or `GetBundle`.
    pub last_call: String,
    /// When the node SVID last signed for it expires (Unix time).
    pub node_svid_not_after: Option<i64>,
    /// Workload SVIDs signed for it since start.
    pub workload_svids_signed: u64,
    /// Workload SVIDs refused to it since start.
    pub workload_svids_refused: u64,
}

impl State {
    /// Empty state.
    pub fn new() -> Self {
        Self {
            metrics: super::metrics::ControlMetrics::new()
                .unwrap_or_else(|e| unreachable!("metric definitions are static and valid: {e}")),
            policies: watch::channel(Policies::default()).0,
            subscribers: Mutex::new(BTreeMap::new()),
            authority: std::sync::OnceLock::new(),
            nodes: Mutex::new(BTreeMap::new()),
            revocations: Default::default(),
        }
    }

    /// Puts a newly loaded policy set in force, keeping the revocation set (which the policy
    /// directory does not hold).
    pub fn replace_policies(&self, mut p: Policies) {
        self.policies.send_modify(|current| {
            p.revocations = std::mem::take(&mut current.revocations);
            crate::edges::keep_generated(&current.policies, &mut p.policies);
            *current = p;
        });
    }

    /// Records a node API call of node `name` from `addr`, and lets `f` update the record.
    pub fn node_call(&self, name: &str, addr: &str, call: &str, f: impl FnOnce(&mut NodeSeen)) {
        let mut nodes = match self.nodes.lock() {
            Ok(n) => n,
            Err(poisoned) => poisoned.into_inner(),
        };
        let seen = nodes.entry(name.to_owned()).or_default();
        seen.addr = addr.to_owned();
        seen.last_call_at = svidcar_identity::unix_now();
        seen.last_call = call.to_owned();
        f(seen);
    }

    /// Runs `f` on the subscriber table.
    pub fn with_subscribers<R>(&self, f: impl FnOnce(&mut BTreeMap<u64, Subscriber>) -> R) -> R {
        match self.subscribers.lock() {
            Ok(mut s) => f(&mut s),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }
}

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}
