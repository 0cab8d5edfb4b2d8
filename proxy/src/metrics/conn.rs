//! Connection metrics: opened and closed connections, bytes each way, lifetimes and failed
//! handshakes, labelled with both identities. A connection's label values are computed once
//! ([`ConnLabels`]) and reused for every update.

use std::sync::Arc;
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};
use tokio::time::Instant;

use super::tracked::Tracked;
use super::{counter_vec, IdLabels, MetricsError};
use svidcar_identity::SpiffeId;

use crate::conn::{ConnRecord, Direction, Outcome};

const CONN_LABELS: &[&str] = &["direction", "source_id", "destination_id", "tls_mode"];
const CLOSE_LABELS: &[&str] = &[
    "direction",
    "source_id",
    "destination_id",
    "tls_mode",
    "outcome",
    "reason",
];

/// The label values of one connection (direction, source and destination identity, TLS
/// mode), computed once per connection: the identity cap is consulted once per ID, not per
/// metric update.
#[derive(Debug, Clone)]
pub(crate) struct ConnLabels([String; 4]);

impl ConnLabels {
    pub(super) fn values(&self) -> [&str; 4] {
        [&self.0[0], &self.0[1], &self.0[2], &self.0[3]]
    }
}

/// The byte counters of one open connection (client→server received, server→client sent).
#[derive(Debug, Clone)]
pub(crate) struct ConnBytes {
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

/// The connection metrics.
pub struct ConnMetrics {
    ids: Arc<IdLabels>,
    opened: Tracked<IntCounterVec>,
    closed: Tracked<IntCounterVec>,
    received: Tracked<IntCounterVec>,
    sent: Tracked<IntCounterVec>,
    duration: Tracked<HistogramVec>,
    handshake_failures: IntCounterVec,
    open: IntGaugeVec,
}

/// Counts one accepted connection in `svidcar_tcp_connections_open` until dropped.
#[derive(Debug)]
pub(crate) struct OpenConn(IntGauge);

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl std::fmt::Debug for ConnMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnMetrics").finish_non_exhaustive()
    }
}

impl ConnMetrics {
    pub(super) fn new(ids: Arc<IdLabels>) -> Result<Self, MetricsError> {
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
        Ok(Self {
            ids,
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
            open: IntGaugeVec::new(
                Opts::new(
                    "svidcar_tcp_connections_open",
                    "TCP connections accepted and not yet ended, by direction.",
                ),
                &["direction"],
            )?,
        })
    }

    pub(super) fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            self.opened.collector(),
            self.closed.collector(),
            self.received.collector(),
            self.sent.collector(),
            self.duration.collector(),
            Box::new(self.handshake_failures.clone()),
            Box::new(self.open.clone()),
        ]
    }

    pub(super) fn sweep(&self, cutoff: Instant) -> usize {
        self.opened.sweep(cutoff)
            + self.closed.sweep(cutoff)
            + self.received.sweep(cutoff)
            + self.sent.sweep(cutoff)
            + self.duration.sweep(cutoff)
    }

    /// The label values of `rec`, to compute once per connection.
    pub(crate) fn labels(&self, rec: &ConnRecord) -> ConnLabels {
        self.labels_for(
            rec.direction,
            rec.client_id(),
            rec.server_id(),
            rec.tls.mode(),
        )
    }

    /// Label values given explicitly (e.g. an outbound HTTP connection, whose server identity
    /// is the one secure naming requires before a handshake proved it).
    pub(crate) fn labels_for(
        &self,
        direction: Direction,
        client: Option<&SpiffeId>,
        server: Option<&SpiffeId>,
        tls_mode: &str,
    ) -> ConnLabels {
        ConnLabels([
            direction.as_str().to_owned(),
            self.ids.label(client),
            self.ids.label(server),
            tls_mode.to_owned(),
        ])
    }

    /// A connection starts carrying bytes; the returned counters take its bytes as they move.
    pub(crate) fn on_open(&self, labels: &ConnLabels) -> ConnBytes {
        let l = labels.values();
        self.opened.with(&l).inc();
        ConnBytes {
            received: self.received.with(&l),
            sent: self.sent.with(&l),
        }
    }

    /// A connection ended (or was refused); `labels` are the ones computed when it opened.
    pub(crate) fn on_close(
        &self,
        rec: &ConnRecord,
        labels: Option<&ConnLabels>,
        elapsed: Duration,
    ) {
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

    /// A connection was accepted; it counts as open until the returned guard is dropped.
    pub(crate) fn on_accept(&self, direction: Direction) -> OpenConn {
        let gauge = self.open.with_label_values(&[direction.as_str()]);
        gauge.inc();
        OpenConn(gauge)
    }

    /// Connections accepted and not yet ended, both directions together.
    pub fn open_connections(&self) -> u64 {
        [Direction::Inbound, Direction::Outbound]
            .iter()
            .map(|d| self.open.with_label_values(&[d.as_str()]).get())
            .map(|n| u64::try_from(n).unwrap_or(0))
            .sum()
    }

    /// An mTLS handshake failed.
    pub(crate) fn on_handshake_failure(&self, direction: Direction, reason: &str) {
        self.handshake_failures
            .with_label_values(&[direction.as_str(), reason])
            .inc();
    }
}
