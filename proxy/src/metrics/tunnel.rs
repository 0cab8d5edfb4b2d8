//! Tunnel metrics: pooled connections open by side, streams carried, and connections that went
//! directly because a peer's tunnel could not be used (by reason).

use prometheus::core::Collector;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};

use super::{counter_vec, MetricsError};

/// The tunnel metrics.
pub struct TunnelMetrics {
    connections: IntGaugeVec,
    streams: IntCounterVec,
    fallbacks: IntCounterVec,
}

impl std::fmt::Debug for TunnelMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelMetrics").finish_non_exhaustive()
    }
}

/// Which end of a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelSide {
    /// Our outbound side's pooled connections to peers.
    Client,
    /// Connections peers opened to our tunnel listener.
    Server,
}

impl TunnelSide {
    fn as_str(self) -> &'static str {
        match self {
            TunnelSide::Client => "client",
            TunnelSide::Server => "server",
        }
    }
}

/// Decrements the open-connection gauge when dropped.
#[derive(Debug)]
pub(crate) struct OpenTunnel(prometheus::IntGauge);

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl TunnelMetrics {
    pub(super) fn new() -> Result<Self, MetricsError> {
        Ok(Self {
            connections: IntGaugeVec::new(
                Opts::new(
                    "svidcar_tunnel_connections",
                    "Pooled tunnel connections open: side=client (ours to peers), side=server (peers' to our tunnel listener).",
                ),
                &["side"],
            )?,
            streams: counter_vec(
                "svidcar_tunnel_streams_total",
                "App connections carried as CONNECT streams of a tunnel, by side.",
                &["side"],
            )?,
            fallbacks: counter_vec(
                "svidcar_tunnel_fallbacks_total",
                "Peers whose tunnel port could not be used, so connections went directly (for tunnel.retry_after), by reason: connect, handshake, protocol.",
                &["reason"],
            )?,
        })
    }

    pub(super) fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.connections.clone()),
            Box::new(self.streams.clone()),
            Box::new(self.fallbacks.clone()),
        ]
    }

    /// A tunnel connection opened; the gauge falls when the returned value is dropped.
    pub(crate) fn on_connection(&self, side: TunnelSide) -> OpenTunnel {
        let g = self.connections.with_label_values(&[side.as_str()]);
        g.inc();
        OpenTunnel(g)
    }

    /// A stream opened.
    pub fn on_stream(&self, side: TunnelSide) {
        self.streams.with_label_values(&[side.as_str()]).inc();
    }

    /// A peer's tunnel could not be used.
    pub fn on_fallback(&self, reason: &'static str) {
        self.fallbacks.with_label_values(&[reason]).inc();
    }
}
