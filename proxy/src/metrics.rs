//! Prometheus metrics of the proxy, labelled with SPIFFE identities where they exist. Label
//! cardinality is bounded (see `tracked`). The reference with every metric and label is in
//! `docs/metrics.md`.

mod tracked;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};
use tokio::time::Instant;

use crate::conn::{ConnRecord, Outcome};
use svidcar_identity::{unix_now, CredentialStore, SpiffeId};
use tracked::{IdCap, Tracked};

const CONN_LABELS: &[&str] = &["direction", "source_id", "destination_id", "tls_mode"];
const CLOSE_LABELS: &[&str] = &[
    "direction",
    "source_id",
    "destination_id",
    "tls_mode",
    "outcome",
    "reason",
];

/// The byte counters of one open connection (client→server received, server→client sent).
#[derive(Debug, Clone)]
pub struct ConnBytes {
    received: IntCounter,
    sent: IntCounter,
}

impl crate::copy::ByteObserver for ConnBytes {
    fn a_to_b(&self, n: u64) {
        self.received.inc_by(n);
    }
    fn b_to_a(&self, n: u64) {
        self.sent.inc_by(n);
    }
}

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

/// All proxy metrics and the registry that exposes them.
pub struct Metrics {
    registry: Registry,
    opened: Tracked<IntCounterVec>,
    closed: Tracked<IntCounterVec>,
    received: Tracked<IntCounterVec>,
    sent: Tracked<IntCounterVec>,
    duration: Tracked<HistogramVec>,
    handshake_failures: IntCounterVec,
    decisions: Tracked<IntCounterVec>,
    decisions_dropped: IntCounter,
    policy_info: prometheus::IntGaugeVec,
    policy_updated: Gauge,
    policy_revoked: IntCounter,
    policy_rejected: IntCounter,
    control_plane_up: IntGauge,
    overflow: IntCounter,
    svid_expiry: Gauge,
    svid_valid: IntGauge,
    svid_rotations: IntCounter,
    source_up: IntGauge,
    source_down_since: Gauge,
    rotations_seen: AtomicU64,
    ids: IdCap,
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

/// The label values of one connection (direction, source and destination identity, TLS
/// mode), computed once per connection: the identity cap is consulted once per ID, not per
/// metric update.
#[derive(Debug, Clone)]
pub struct ConnLabels([String; 4]);

impl ConnLabels {
    fn values(&self) -> [&str; 4] {
        [&self.0[0], &self.0[1], &self.0[2], &self.0[3]]
    }
}

impl Metrics {
    /// Creates and registers every metric, process metrics included.
    pub fn new(cardinality: Cardinality) -> Result<Arc<Self>, MetricsError> {
        let registry = Registry::new();
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "svidcar_tcp_connection_duration_seconds",
                "Lifetime of proxied TCP connections.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
                3600.0,
            ]),
            CONN_LABELS,
        )?;
        let m = Metrics {
            opened: Tracked::new(counter_vec(
                "svidcar_tcp_connections_opened_total",
                "TCP connections proxied (counted once bytes may flow: after the mTLS handshake or the passthrough connect).",
                CONN_LABELS,
            )?),
            closed: Tracked::new(counter_vec(
                "svidcar_tcp_connections_closed_total",
                "TCP connections ended, by outcome (complete, idle_timeout, cancelled, io_error, refused) and reason.",
                CLOSE_LABELS,
            )?),
            received: Tracked::new(counter_vec(
                "svidcar_tcp_received_bytes_total",
                "Bytes received from the connecting side (client to server), counted as they move.",
                CONN_LABELS,
            )?),
            sent: Tracked::new(counter_vec(
                "svidcar_tcp_sent_bytes_total",
                "Bytes sent back to the connecting side (server to client), counted as they move.",
                CONN_LABELS,
            )?),
            duration: Tracked::new(duration),
            handshake_failures: counter_vec(
                "svidcar_tls_handshake_failures_total",
                "mTLS handshakes that failed, by typed reason.",
                &["direction", "reason"],
            )?,
            decisions: Tracked::new(counter_vec(
                "svidcar_authz_decisions_total",
                "Inbound authorization decisions by action (ALLOW, DENY, AUDIT), deciding policy and rule (empty / -1 when a default decided).",
                &["action", "policy", "rule", "source_id", "destination_id"],
            )?),
            decisions_dropped: IntCounter::new(
                "svidcar_decision_events_dropped_total",
                "Decision events dropped because the stream to the control plane was full (traffic is never stalled for them).",
            )?,
            policy_info: prometheus::IntGaugeVec::new(
                Opts::new("svidcar_policy_info", "1 for the policy version in force."),
                &["version"],
            )?,
            policy_updated: Gauge::new(
                "svidcar_policy_last_update_timestamp_seconds",
                "Unix time the policy in force was installed (0: none yet).",
            )?,
            policy_revoked: IntCounter::new(
                "svidcar_policy_revoked_connections_total",
                "Open connections closed because a new policy no longer allows them.",
            )?,
            policy_rejected: IntCounter::new(
                "svidcar_policy_rejected_snapshots_total",
                "Policy snapshots from the control plane rejected as invalid (the last good policy stays).",
            )?,
            control_plane_up: IntGauge::new(
                "svidcar_control_plane_connected",
                "1 while the policy stream to the control plane is open.",
            )?,
            overflow: IntCounter::new(
                "svidcar_metrics_identity_overflow_total",
                "Times a new peer identity was folded into the `overflow` label because the identity cap was reached.",
            )?,
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
            ids: IdCap::new(cardinality.max_ids, cardinality.idle),
            cardinality,
            registry,
        };
        for c in [
            m.opened.collector(),
            m.closed.collector(),
            m.received.collector(),
            m.sent.collector(),
            m.duration.collector(),
            Box::new(m.handshake_failures.clone()),
            m.decisions.collector(),
            Box::new(m.decisions_dropped.clone()),
            Box::new(m.policy_info.clone()),
            Box::new(m.policy_updated.clone()),
            Box::new(m.policy_revoked.clone()),
            Box::new(m.policy_rejected.clone()),
            Box::new(m.control_plane_up.clone()),
            Box::new(m.overflow.clone()),
            Box::new(m.svid_expiry.clone()),
            Box::new(m.svid_valid.clone()),
            Box::new(m.svid_rotations.clone()),
            Box::new(m.source_up.clone()),
            Box::new(m.source_down_since.clone()),
        ] {
            m.registry.register(c)?;
        }
        m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Arc::new(m))
    }

    fn id_label(&self, id: Option<&SpiffeId>) -> String {
        match id {
            None => UNKNOWN.to_owned(),
            Some(id) => {
                let (label, overflowed) = self.ids.admit(id.as_str());
                if overflowed {
                    self.overflow.inc();
                }
                label
            }
        }
    }

    /// The label values of `rec`, to compute once per connection.
    pub fn labels(&self, rec: &ConnRecord) -> ConnLabels {
        ConnLabels([
            rec.direction.as_str().to_owned(),
            self.id_label(rec.client_id()),
            self.id_label(rec.server_id()),
            rec.tls.mode().to_owned(),
        ])
    }

    /// A connection starts carrying bytes; the returned counters take its bytes as they move.
    pub fn on_open(&self, labels: &ConnLabels) -> ConnBytes {
        let l = labels.values();
        self.opened.with(&l).inc();
        ConnBytes {
            received: self.received.with(&l),
            sent: self.sent.with(&l),
        }
    }

    /// A connection ended (or was refused); `labels` are the ones computed when it opened.
    pub fn on_close(&self, rec: &ConnRecord, labels: Option<&ConnLabels>, elapsed: Duration) {
        let computed;
        let labels = match labels {
            Some(l) => l,
            None => {
                computed = self.labels(rec);
                &computed
            }
        };
        let base = labels.values();
        let [d, s, t, m] = base;
        self.closed
            .with(&[d, s, t, m, rec.outcome.as_str(), rec.reason()])
            .inc();
        if rec.outcome != Outcome::Refused {
            // Bytes were counted live; touch the sets so a long connection's labels count as used.
            self.received.with(&base);
            self.sent.with(&base);
            self.duration.with(&base).observe(elapsed.as_secs_f64());
        }
    }

    /// An mTLS handshake failed.
    pub fn on_handshake_failure(&self, direction: &str, reason: &str) {
        self.handshake_failures
            .with_label_values(&[direction, reason])
            .inc();
    }

    /// An authorization decision (or an AUDIT match).
    pub fn on_decision(
        &self,
        action: &str,
        policy: &str,
        rule: i64,
        source: Option<&SpiffeId>,
        destination: Option<&SpiffeId>,
    ) {
        let rule = rule.to_string();
        let src = self.id_label(source);
        let dst = self.id_label(destination);
        self.decisions
            .with(&[action, policy, &rule, &src, &dst])
            .inc();
    }

    /// A decision event was dropped under back pressure.
    pub fn on_decision_dropped(&self) {
        self.decisions_dropped.inc();
    }

    /// A policy version was installed at `when` (Unix time).
    pub fn on_policy(&self, version: &str, when: i64) {
        self.policy_info.reset();
        self.policy_info.with_label_values(&[version]).set(1);
        self.policy_updated.set(when as f64);
    }

    /// A snapshot from the control plane was rejected.
    pub fn on_policy_rejected(&self) {
        self.policy_rejected.inc();
    }

    /// The control-plane stream opened (`true`) or closed.
    pub fn on_control_plane(&self, up: bool) {
        self.control_plane_up.set(i64::from(up));
    }

    /// Connections closed by a policy change.
    pub fn on_policy_revoked(&self, n: usize) {
        self.policy_revoked.inc_by(n as u64);
    }

    /// Drops label sets idle longer than the configured time.
    pub fn sweep(&self) -> usize {
        let Some(cutoff) = Instant::now().checked_sub(self.cardinality.idle) else {
            return 0;
        };
        self.opened.sweep(cutoff)
            + self.closed.sweep(cutoff)
            + self.received.sweep(cutoff)
            + self.sent.sweep(cutoff)
            + self.duration.sweep(cutoff)
            + self.decisions.sweep(cutoff)
    }

    /// Refreshes the identity gauges from the store and renders the text exposition format.
    pub fn render(&self, store: &CredentialStore) -> String {
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
        let mut out = Vec::new();
        let encoder = TextEncoder::new();
        // Encoding into a Vec cannot fail for well-formed metrics; an error yields what was written.
        let _ = encoder.encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
