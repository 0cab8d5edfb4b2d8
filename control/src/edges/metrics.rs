//! The edge store's metrics, rendered after the control plane's own at `/metrics`: decisions
//! stored and dropped, and new edges by identity pair — at most [`MAX_PAIRS`] distinct pairs,
//! later ones counted under `other`, so the label cardinality stays bounded.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use crate::prom::encode;

/// Distinct (source, destination) label pairs of `svidcar_control_new_edges_total`.
pub(super) const MAX_PAIRS: usize = 256;

/// The label value standing for every pair beyond [`MAX_PAIRS`].
const OTHER: &str = "other";

/// Metrics of the edge store.
#[derive(Debug)]
pub(crate) struct EdgeMetrics {
    registry: Registry,
    /// Decisions written to the store.
    pub(super) stored: IntCounter,
    /// Decisions dropped because the write queue was full (or the writer gone).
    pub(crate) dropped: IntCounter,
    new_edges: IntCounterVec,
    pairs: Mutex<HashSet<(String, String)>>,
}

impl EdgeMetrics {
    /// Creates and registers them.
    pub(super) fn new() -> Result<Self, prometheus::Error> {
        let m = Self {
            registry: Registry::new(),
            stored: IntCounter::new(
                "svidcar_control_decisions_stored_total",
                "Decisions written to the control plane's store.",
            )?,
            dropped: IntCounter::new(
                "svidcar_control_decisions_dropped_total",
                "Decisions from proxies dropped because the store's write queue was full.",
            )?,
            new_edges: IntCounterVec::new(
                Opts::new(
                    "svidcar_control_new_edges_total",
                    "Never-seen edges after learning, by source and destination SPIFFE ID \
                     (`none` for a missing identity, `other` beyond 256 pairs).",
                ),
                &["source", "destination"],
            )?,
            pairs: Mutex::new(HashSet::new()),
        };
        m.registry.register(Box::new(m.stored.clone()))?;
        m.registry.register(Box::new(m.dropped.clone()))?;
        m.registry.register(Box::new(m.new_edges.clone()))?;
        Ok(m)
    }

    /// Counts a new edge between `source` and `destination` (`None`: no identity).
    pub(super) fn new_edge(&self, source: Option<&str>, destination: Option<&str>) {
        let pair = (
            source.unwrap_or("none").to_owned(),
            destination.unwrap_or("none").to_owned(),
        );
        let mut pairs = match self.pairs.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        };
        let (s, d) = if pairs.contains(&pair) || pairs.len() < MAX_PAIRS {
            pairs.insert(pair.clone());
            (pair.0.as_str(), pair.1.as_str())
        } else {
            (OTHER, OTHER)
        };
        self.new_edges.with_label_values(&[s, d]).inc();
    }

    /// The text format.
    pub(crate) fn render(&self) -> String {
        encode(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_edge_labels_are_bounded() {
        let m = EdgeMetrics::new().unwrap();
        for i in 0..MAX_PAIRS + 10 {
            m.new_edge(Some(&format!("spiffe://td/{i}")), Some("spiffe://td/db"));
        }
        m.new_edge(Some("spiffe://td/0"), Some("spiffe://td/db"));
        m.new_edge(None, Some("spiffe://td/db"));
        let text = m.render();
        let series = text
            .lines()
            .filter(|l| l.starts_with("svidcar_control_new_edges_total{"))
            .count();
        assert_eq!(series, MAX_PAIRS + 1, "{MAX_PAIRS} pairs and `other`");
        assert!(text.contains(
            "svidcar_control_new_edges_total{destination=\"spiffe://td/db\",source=\"spiffe://td/0\"} 2"
        ));
        assert!(text.contains(
            "svidcar_control_new_edges_total{destination=\"other\",source=\"other\"} 11"
        ));
    }
}
