//! The roots of a trust domain by role, as held in memory and stored in the CA directory, and the
//! bundle they publish.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;

use super::schedule::{self, Window};
use super::Bundle;
use crate::Ca;

/// A root that no longer signs but stays published until the SVIDs it signed have expired. Its
/// key is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredRoot {
    /// Its certificate, DER.
    pub cert: CertificateDer<'static>,
    /// Its certificate, PEM.
    pub cert_pem: String,
    /// Its serial number, lowercase hex.
    pub serial: String,
    /// Its expiry, seconds since the Unix epoch.
    pub not_after: i64,
    /// When it stopped signing.
    pub retired_at: i64,
    /// When the last SVID it signed expires; it leaves the bundle just after.
    pub drop_at: i64,
}

impl RetiredRoot {
    /// `ca` retiring at `now`, leaving the bundle after `drop_at`.
    pub fn of(ca: &Ca, now: i64, drop_at: i64) -> Self {
        Self {
            cert: ca.bundle_der().clone(),
            cert_pem: ca.bundle_pem().to_owned(),
            serial: ca.serial().to_owned(),
            not_after: ca.not_after(),
            retired_at: now,
            drop_at,
        }
    }
}

/// Every root of the trust domain.
#[derive(Debug, Clone)]
pub struct RootSet {
    /// The root that signs.
    pub active: Arc<Ca>,
    /// The published successor, not signing yet.
    pub prepared: Option<Arc<Ca>>,
    /// Retired roots, oldest first.
    pub retired: Vec<RetiredRoot>,
}

/// A CA's validity window for the schedule.
pub(super) fn window(ca: &Ca) -> Window {
    Window {
        not_before: ca.not_before(),
        not_after: ca.not_after(),
    }
}

impl RootSet {
    /// The published roots in publication order: retired, active, prepared.
    pub fn bundle(&self) -> Bundle {
        let mut roots: Vec<CertificateDer<'static>> =
            self.retired.iter().map(|r| r.cert.clone()).collect();
        roots.push(self.active.bundle_der().clone());
        roots.extend(self.prepared.iter().map(|p| p.bundle_der().clone()));
        Arc::new(roots)
    }

    /// The retired roots as the schedule sees them.
    pub fn retired_times(&self) -> Vec<schedule::Retired> {
        self.retired
            .iter()
            .map(|r| schedule::Retired {
                not_after: r.not_after,
                drop_at: r.drop_at,
            })
            .collect()
    }

    /// The next step at `now`.
    pub fn next_step(&self, now: i64, svid_ttl: i64) -> schedule::Step {
        let retired = self.retired_times();
        let roots = schedule::Roots {
            active: window(&self.active),
            prepared: self.prepared.as_deref().map(window),
            retired: &retired,
        };
        schedule::next_step(&roots, now, svid_ttl)
    }
}
