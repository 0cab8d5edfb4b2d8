//! Issuance records and traffic merged into one row per identity, with flags. Pure: the clock
//! and the window come in as parameters.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use svidcar_identity::{SpiffeId, TrustDomain};

use crate::edge::EdgeRecord;

/// What the CA issued for one SPIFFE ID (its latest SVID's expiry and serial).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    /// The identity.
    pub id: SpiffeId,
    /// The node whose agent asked for it last (`None`: signed for the control plane itself).
    pub node: Option<String>,
    /// The registration entry's selectors, when the agent sent them.
    pub selectors: Vec<String>,
    /// First issuance, Unix seconds.
    pub first_issued: i64,
    /// Latest issuance, Unix seconds.
    pub last_issued: i64,
    /// The latest SVID's `notAfter`, Unix seconds.
    pub not_after: i64,
    /// The latest SVID's serial number, hex.
    pub serial: String,
    /// SVIDs issued for it.
    pub count: u64,
}

/// What traffic shows of one identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// Last decision where it called, Unix milliseconds.
    pub last_seen_as_source_ms: Option<i64>,
    /// Last decision where it was called, Unix milliseconds.
    pub last_seen_as_destination_ms: Option<i64>,
    /// Distinct identities it talked to, either way.
    pub peers: usize,
}

impl Traffic {
    /// The later of the two.
    pub fn last_seen_ms(&self) -> Option<i64> {
        self.last_seen_as_source_ms
            .max(self.last_seen_as_destination_ms)
    }
}

/// Something an operator should look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flag {
    /// Issued at least N days ago, and no traffic in the last N days (N = 0: never any
    /// traffic).
    UnusedIssued,
    /// Seen in traffic, never issued here, in our trust domain (another issuer, e.g. an agent
    /// holding its own CA, or a leaked key).
    NotIssuedHere,
    /// Seen in traffic, of another trust domain (federated or foreign).
    ForeignTrustDomain,
    /// Its latest SVID expired and no traffic since.
    ExpiredAndGone,
}

impl Flag {
    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Flag::UnusedIssued => "unused-issued",
            Flag::NotIssuedHere => "not-issued-here",
            Flag::ForeignTrustDomain => "foreign-trust-domain",
            Flag::ExpiredAndGone => "expired-and-gone",
        }
    }
}

/// One identity of the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRow {
    /// The identity.
    pub id: SpiffeId,
    /// What was issued, if the CA here issued it.
    pub issued: Option<Issued>,
    /// What traffic shows.
    #[serde(flatten)]
    pub traffic: Traffic,
    /// Flags, sorted.
    pub flags: Vec<Flag>,
}

/// The merge's clock and thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeParams<'a> {
    /// Now, Unix milliseconds.
    pub now_ms: i64,
    /// Issued but without traffic for this many days: [`Flag::UnusedIssued`]; 0: never seen in
    /// traffic at all.
    pub unused_days: u32,
    /// Our trust domain (the CA's), to tell foreign identities apart.
    pub trust_domain: Option<&'a TrustDomain>,
}

fn traffic(edges: &[EdgeRecord]) -> BTreeMap<SpiffeId, Traffic> {
    let mut out: BTreeMap<SpiffeId, Traffic> = BTreeMap::new();
    let mut peers: BTreeMap<SpiffeId, BTreeSet<SpiffeId>> = BTreeMap::new();
    for e in edges {
        let (src, dst) = (&e.key.source, &e.key.destination);
        if let Some(s) = src {
            let t = out.entry(s.clone()).or_default();
            t.last_seen_as_source_ms = t.last_seen_as_source_ms.max(Some(e.last_seen_ms));
        }
        if let Some(d) = dst {
            let t = out.entry(d.clone()).or_default();
            t.last_seen_as_destination_ms = t.last_seen_as_destination_ms.max(Some(e.last_seen_ms));
        }
        if let (Some(s), Some(d)) = (src, dst) {
            if s != d {
                peers.entry(s.clone()).or_default().insert(d.clone());
                peers.entry(d.clone()).or_default().insert(s.clone());
            }
        }
    }
    for (id, p) in peers {
        if let Some(t) = out.get_mut(&id) {
            t.peers = p.len();
        }
    }
    out
}

/// One row per identity issued or seen, sorted by ID.
pub fn merge(issued: &[Issued], edges: &[EdgeRecord], p: MergeParams<'_>) -> Vec<IdentityRow> {
    let mut seen = traffic(edges);
    let by_id: BTreeMap<&SpiffeId, &Issued> = issued.iter().map(|i| (&i.id, i)).collect();
    let ids: BTreeSet<SpiffeId> = by_id
        .keys()
        .map(|i| (*i).clone())
        .chain(seen.keys().cloned())
        .collect();
    let window_ms = i64::from(p.unused_days).saturating_mul(86_400_000);
    let mut rows = Vec::with_capacity(ids.len());
    for id in ids {
        let traffic = seen.remove(&id).unwrap_or_default();
        let last = traffic.last_seen_ms();
        let issued = by_id.get(&id).map(|i| (*i).clone());
        let mut flags = Vec::new();
        match &issued {
            Some(i) => {
                let cutoff = p.now_ms.saturating_sub(window_ms);
                let old_enough = i.first_issued.saturating_mul(1000) <= cutoff;
                let idle = match p.unused_days {
                    0 => last.is_none(),
                    _ => old_enough && last.is_none_or(|t| t < cutoff),
                };
                if idle {
                    flags.push(Flag::UnusedIssued);
                }
                let expired_ms = i.not_after.saturating_mul(1000);
                if expired_ms <= p.now_ms && last.is_none_or(|t| t <= expired_ms) {
                    flags.push(Flag::ExpiredAndGone);
                }
            }
            None => {
                let ours = p
                    .trust_domain
                    .is_none_or(|td| td.as_str() == id.trust_domain_str());
                flags.push(if ours {
                    Flag::NotIssuedHere
                } else {
                    Flag::ForeignTrustDomain
                });
            }
        }
        flags.sort();
        rows.push(IdentityRow {
            id,
            issued,
            traffic,
            flags,
        });
    }
    rows
}

#[cfg(test)]
mod tests;
