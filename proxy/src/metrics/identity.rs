//! Identity metrics: the SVID held (expiry, validity, rotations) and the identity source's
//! health, refreshed from the credential store at each scrape.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::core::Collector;
use prometheus::{Gauge, IntCounter, IntGauge};
use svidcar_identity::{unix_now, CredentialStore};

use super::MetricsError;

/// The identity metrics.
pub struct IdentityMetrics {
    svid_expiry: Gauge,
    svid_valid: IntGauge,
    svid_rotations: IntCounter,
    source_up: IntGauge,
    source_down_since: Gauge,
    rotations_seen: AtomicU64,
}

impl std::fmt::Debug for IdentityMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityMetrics").finish_non_exhaustive()
    }
}

impl IdentityMetrics {
    pub(super) fn new() -> Result<Self, MetricsError> {
        Ok(Self {
            svid_expiry: Gauge::new(
                "svidcar_svid_expiry_timestamp_seconds",
                "Expiry (Unix time) of the SVID currently held.",
            )?,
            svid_valid: IntGauge::new(
                "svidcar_svid_valid",
                "1 when the proxy holds an SVID valid now, else 0 (mesh connections fail closed).",
            )?,
            svid_rotations: IntCounter::new(
                "svidcar_svid_rotations_total",
                "SVIDs installed after the first one.",
            )?,
            source_up: IntGauge::new(
                "svidcar_identity_source_up",
                "1 while the identity source (the Workload API stream, or the SVID files) is healthy; 0 while it fails (the SVID held keeps serving until it expires; /ready says why).",
            )?,
            source_down_since: Gauge::new(
                "svidcar_identity_source_down_since_timestamp_seconds",
                "Unix time the identity source started failing (0 while healthy).",
            )?,
            rotations_seen: AtomicU64::new(0),
        })
    }

    pub(super) fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.svid_expiry.clone()),
            Box::new(self.svid_valid.clone()),
            Box::new(self.svid_rotations.clone()),
            Box::new(self.source_up.clone()),
            Box::new(self.source_down_since.clone()),
        ]
    }

    /// Refreshes the gauges from the store.
    pub(super) fn refresh(&self, store: &CredentialStore) {
        match store.latest() {
            Some(c) => {
                self.svid_expiry.set(c.leaf.not_after as f64);
                self.svid_valid.set(i64::from(c.is_valid_at(unix_now())));
            }
            None => self.svid_valid.set(0),
        }
        match store.source_problem() {
            None => {
                self.source_up.set(1);
                self.source_down_since.set(0.0);
            }
            Some(p) => {
                self.source_up.set(0);
                self.source_down_since.set(p.since as f64);
            }
        }
        let installs = store.installs();
        let counted = self.rotations_seen.swap(installs, Ordering::Relaxed);
        // The first install is not a rotation.
        let rotations = installs.saturating_sub(1);
        let before = counted.saturating_sub(1);
        if rotations > before {
            self.svid_rotations.inc_by(rotations - before);
        }
    }
}
