//! Prometheus metrics of the proxy, by concern: connections ([`ConnMetrics`]), HTTP requests
//! ([`HttpMetrics`]), authorization and policy ([`PolicyMetrics`]), the SVID and its source ([`IdentityMetrics`]). Identity label
//! values are bounded by one cap shared by all of them (see `tracked`). The reference with every
//! metric and label is in `docs/metrics.md`.

mod conn;
mod http;
mod identity;
mod policy;
mod tracked;
mod tunnel;

use std::sync::Arc;
use std::time::Duration;

use prometheus::{Encoder, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};
use svidcar_identity::{CredentialStore, SpiffeId};
use tokio::time::Instant;
use tracked::IdCap;

pub use conn::ConnMetrics;
pub(crate) use conn::{ConnBytes, ConnLabels};
pub use http::HttpMetrics;
pub(crate) use http::ResponseHandles;
pub use identity::IdentityMetrics;
pub use policy::PolicyMetrics;
pub(crate) use tracked::Handle;
#[cfg(test)]
pub(crate) use tracked::Tracked;
pub(crate) use tunnel::OpenTunnel;
pub use tunnel::{TunnelMetrics, TunnelSide};

/// Label value for a missing identity (plaintext, refused before the handshake).
pub const UNKNOWN: &str = "unknown";

/// How many distinct peer identities may be label values at once, and after how long unused
/// label sets are dropped.
#[derive(Debug, Clone, Copy)]
pub struct Cardinality {
    /// Distinct identities at most.
    pub max_ids: usize,
    /// Idle label sets are removed after this long.
    pub idle: Duration,
}

impl Default for Cardinality {
    fn default() -> Self {
        Self {
            max_ids: 1000,
            idle: Duration::from_secs(600),
        }
    }
}

/// SPIFFE IDs as label values, under the identity cap: a flood of new IDs becomes one
/// `overflow` value, counted.
pub(crate) struct IdLabels {
    cap: IdCap,
    overflow: IntCounter,
}

impl IdLabels {
    /// The label value for `id` (`unknown` for none).
    pub(crate) fn label(&self, id: Option<&SpiffeId>) -> String {
        match id {
            None => UNKNOWN.to_owned(),
            Some(id) => {
                let (label, overflowed) = self.cap.admit(id.as_str());
                if overflowed {
                    self.overflow.inc();
                }
                label
            }
        }
    }
}

/// All proxy metrics and the registry that exposes them.
pub struct Metrics {
    registry: Registry,
    /// Connections, bytes and handshakes.
    pub conn: ConnMetrics,
    /// Decisions and policy state.
    pub policy: PolicyMetrics,
    /// HTTP requests.
    pub http: HttpMetrics,
    /// The SVID held and its source.
    pub identity: IdentityMetrics,
    /// Pooled tunnels between sidecars.
    pub tunnel: TunnelMetrics,
    cardinality: Cardinality,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Metric construction failed (a programming error: bad names or duplicate registration).
#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec, MetricsError> {
    Ok(IntCounterVec::new(Opts::new(name, help), labels)?)
}

impl Metrics {
    /// Creates and registers every metric, process metrics included.
    pub fn new(cardinality: Cardinality) -> Result<Arc<Self>, MetricsError> {
        let overflow = IntCounter::new(
            "svidcar_metrics_identity_overflow_total",
            "Times a new peer identity was folded into the `overflow` label because the identity cap was reached.",
        )?;
        let ids = Arc::new(IdLabels {
            cap: IdCap::new(cardinality.max_ids, cardinality.idle),
            overflow: overflow.clone(),
        });
        let m = Metrics {
            registry: Registry::new(),
            conn: ConnMetrics::new(ids.clone())?,
            policy: PolicyMetrics::new(ids.clone())?,
            http: HttpMetrics::new(ids)?,
            identity: IdentityMetrics::new()?,
            tunnel: TunnelMetrics::new()?,
            cardinality,
        };
        let collectors = m
            .conn
            .collectors()
            .into_iter()
            .chain(m.policy.collectors())
            .chain(m.http.collectors())
            .chain(m.identity.collectors())
            .chain(m.tunnel.collectors());
        for c in collectors {
            m.registry.register(c)?;
        }
        m.registry.register(Box::new(overflow))?;
        m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Arc::new(m))
    }

    /// Drops label sets idle longer than the configured time.
    pub fn sweep(&self) -> usize {
        let Some(cutoff) = Instant::now().checked_sub(self.cardinality.idle) else {
            return 0;
        };
        self.conn.sweep(cutoff) + self.policy.sweep(cutoff) + self.http.sweep(cutoff)
    }

    /// Refreshes the identity gauges from the store and renders the text exposition format.
    pub fn render(&self, store: &CredentialStore) -> String {
        self.identity.refresh(store);
        let mut out = Vec::new();
        let encoder = TextEncoder::new();
        // Encoding into a Vec cannot fail for well-formed metrics; an error yields what was written.
        let _ = encoder.encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
