//! Chains a verifier already accepted, so that a peer connecting again with the same SVID is
//! not verified from scratch. Without it every handshake parses the peer's certificates twice
//! (ours, then webpki's) and checks the CA's signature over the leaf again: after the key
//! exchange and the handshake signatures themselves, the largest part of a handshake's CPU.
//!
//! A hit needs the very same DER bytes (leaf and intermediates), the very same trust bundles
//! (the `Arc` the credentials hold: a rotated bundle is another one, and holding it here means
//! its address cannot be reused by a different set), and a time inside every certificate's
//! validity, compared as webpki compares. Anything else is verified in full; failures are
//! never remembered. Revocation is checked by the proxy after every handshake, cached or not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::super::handshake::VerifiedPeer;
use crate::TrustBundles;

/// Chains accepted by one verifier (one purpose), by leaf; at most `capacity` of them (about
/// 1.5 KB each). When full, expired ones go first, then one at random.
#[derive(Debug)]
pub(super) struct VerifiedChains {
    capacity: usize,
    by_leaf: Mutex<HashMap<Vec<u8>, Verified>>,
}

/// One accepted chain.
#[derive(Debug)]
struct Verified {
    intermediates: Vec<Vec<u8>>,
    bundles: Arc<TrustBundles>,
    /// Seconds since the Unix epoch: the latest `notBefore` and the earliest `notAfter` of the
    /// chain's certificates, both inclusive.
    not_before: i64,
    not_after: i64,
    peer: VerifiedPeer,
}

impl Verified {
    fn valid_at(&self, now: i64) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

fn secs(now: UnixTime) -> i64 {
    i64::try_from(now.as_secs()).unwrap_or(i64::MAX)
}

impl VerifiedChains {
    /// A cache remembering `capacity` chains at most.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            by_leaf: Mutex::new(HashMap::new()),
        }
    }

    /// The peer this chain proved when it was verified against `bundles`, if it was and `now`
    /// is inside its validity.
    pub(super) fn get(
        &self,
        leaf: &[u8],
        intermediates: &[CertificateDer<'_>],
        bundles: &Arc<TrustBundles>,
        now: UnixTime,
    ) -> Option<VerifiedPeer> {
        let by_leaf = self.by_leaf.lock().ok()?;
        let hit = by_leaf.get(leaf)?;
        let same = Arc::ptr_eq(&hit.bundles, bundles)
            && hit.valid_at(secs(now))
            && hit.intermediates.len() == intermediates.len()
            && hit
                .intermediates
                .iter()
                .zip(intermediates)
                .all(|(a, b)| a.as_slice() == b.as_ref());
        same.then(|| hit.peer.clone())
    }

    /// Remembers a chain that was just verified against `bundles`; `leaf_validity` is the
    /// leaf's (`notBefore`, `notAfter`), already parsed by the verification.
    pub(super) fn insert(
        &self,
        leaf: &[u8],
        intermediates: &[CertificateDer<'_>],
        bundles: Arc<TrustBundles>,
        leaf_validity: (i64, i64),
        peer: VerifiedPeer,
        now: UnixTime,
    ) {
        let (mut not_before, mut not_after) = leaf_validity;
        for der in intermediates {
            // Verified a moment ago, so it parses; if it did not, it is simply not remembered.
            let Ok((_, cert)) = X509Certificate::from_der(der) else {
                return;
            };
            let validity = cert.validity();
            not_before = not_before.max(validity.not_before.timestamp());
            not_after = not_after.min(validity.not_after.timestamp());
        }
        let entry = Verified {
            intermediates: intermediates.iter().map(|c| c.to_vec()).collect(),
            bundles,
            not_before,
            not_after,
            peer,
        };
        let Ok(mut by_leaf) = self.by_leaf.lock() else {
            return;
        };
        if by_leaf.len() >= self.capacity && !by_leaf.contains_key(leaf) {
            let now = secs(now);
            by_leaf.retain(|_, v| v.not_after >= now);
            if by_leaf.len() >= self.capacity {
                // The map's order is arbitrary: its first key is as good as a random victim.
                if let Some(victim) = by_leaf.keys().next().cloned() {
                    by_leaf.remove(&victim);
                }
            }
        }
        by_leaf.insert(leaf.to_vec(), entry);
    }

    /// Chains held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_leaf.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::tls::CertSerial;
    use crate::SpiffeId;

    fn peer(n: u8) -> VerifiedPeer {
        VerifiedPeer {
            id: SpiffeId::parse(&format!("spiffe://td/{n}")).unwrap(),
            serial: CertSerial::parse(&n.to_string()).unwrap(),
        }
    }

    fn at(secs: u64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(secs))
    }

    #[test]
    fn a_full_cache_drops_expired_chains_first_then_any() {
        let chains = VerifiedChains::new(2);
        let bundles = Arc::new(TrustBundles::new());
        chains.insert(b"a", &[], bundles.clone(), (0, 100), peer(1), at(50));
        chains.insert(b"b", &[], bundles.clone(), (0, 1000), peer(2), at(50));
        // At 200 "a" has expired: it makes room, "b" stays.
        chains.insert(b"c", &[], bundles.clone(), (0, 1000), peer(3), at(200));
        assert_eq!(chains.len(), 2);
        assert_eq!(chains.get(b"b", &[], &bundles, at(200)), Some(peer(2)));
        assert_eq!(chains.get(b"c", &[], &bundles, at(200)), Some(peer(3)));
        // Nothing expired: one of the two goes.
        chains.insert(b"d", &[], bundles.clone(), (0, 1000), peer(4), at(200));
        assert_eq!(chains.len(), 2);
        assert_eq!(chains.get(b"d", &[], &bundles, at(200)), Some(peer(4)));
        // Bounds are inclusive, as webpki's; other bundles are not these.
        assert_eq!(chains.get(b"d", &[], &bundles, at(0)), Some(peer(4)));
        assert_eq!(chains.get(b"d", &[], &bundles, at(1000)), Some(peer(4)));
        assert_eq!(chains.get(b"d", &[], &bundles, at(1001)), None);
        let other = Arc::new(TrustBundles::new());
        assert_eq!(chains.get(b"d", &[], &other, at(200)), None);
    }
}
