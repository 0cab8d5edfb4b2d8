//! Authorization per SPIFFE ID: the policy model (`AuthorizationPolicy`, `PeerAuthentication`,
//! the mTLS mode and the default policy), ID patterns, YAML parsing with precise errors, and
//! evaluation. Pure: no sockets, no clock, no command line. The one I/O edge, reading a policy
//! directory, is behind the `fs` feature; watching it and enforcing decisions are left to the
//! proxy and the control plane.

#[cfg(feature = "fs")]
mod dir;
mod eval;
mod load;
mod mode;
mod model;
mod pattern;

use std::fmt;

#[cfg(feature = "fs")]
pub use dir::{dir_version, load_dir, policy_files};
pub use eval::{evaluate, DecidingDefault, Decision, DefaultPolicy, RuleRef};
pub use load::{parse_file, parse_set, PolicyError};
pub use mode::MtlsMode;
pub use model::{
    Action, Condition, ConditionKey, Headers, Operation, Origin, Policy, PolicyKind, Request, Rule,
    Source,
};
pub use pattern::Pattern;

use svidcar_identity::SpiffeId;

/// A versioned set of policies, as one snapshot.
#[derive(Clone, PartialEq, Eq)]
pub struct PolicySet {
    /// Opaque version (content hash for local directories; assigned by the control plane).
    pub version: String,
    /// The policies.
    pub policies: Vec<Policy>,
}

impl fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicySet")
            .field("version", &self.version)
            .field("policies", &self.policies.len())
            .finish()
    }
}

impl PolicySet {
    /// The mTLS mode the policies set for `port` of `workload`, if any PeerAuthentication
    /// selects it. A selector naming the workload exactly wins over a pattern; among equals the
    /// first in file order wins.
    pub fn mtls_for(&self, workload: &SpiffeId, port: u16) -> Option<MtlsMode> {
        let mut best: Option<(bool, &Policy)> = None;
        for p in self.policies.iter().filter(|p| p.selects(workload)) {
            if !matches!(p.kind, PolicyKind::PeerAuthentication { .. }) {
                continue;
            }
            let exact = p.selects_exactly(workload);
            if best.is_none_or(|(e, _)| exact && !e) {
                best = Some((exact, p));
            }
        }
        match &best?.1.kind {
            PolicyKind::PeerAuthentication { mode, ports } => {
                Some(ports.get(&port).copied().unwrap_or(*mode))
            }
            PolicyKind::Authorization { .. } => None,
        }
    }

    /// Evaluates a request to `workload`.
    pub fn evaluate(
        &self,
        workload: &SpiffeId,
        request: &Request<'_>,
        default: DefaultPolicy,
    ) -> Decision {
        evaluate(&self.policies, workload, request, default)
    }
}

/// A stable content version: FNV-1a over the given bytes, hex.
pub fn content_version<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(&[0xff]) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}
