//! New-edge detection, pure: the baseline is the set of (source, destination, port, protocol,
//! method) already in the edge table; during the learning period every edge joins it silently,
//! after it an edge outside it is new — once: the caller admits what it stored, and the edge is
//! known from then on.

use std::collections::HashSet;

use svidcar_identity::SpiffeId;

use crate::edge::{EdgeKey, Protocol};

/// What makes an edge "the same" for alerts: the path prefix and the action do not (a new
/// path under a known method is not a new edge; a known edge denied is not a new one).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct BaselineKey {
    pub(crate) source: Option<SpiffeId>,
    pub(crate) destination: Option<SpiffeId>,
    pub(crate) port: u16,
    pub(crate) protocol: Protocol,
    pub(crate) method: Option<String>,
}

impl From<&EdgeKey> for BaselineKey {
    fn from(k: &EdgeKey) -> Self {
        Self {
            source: k.source.clone(),
            destination: k.destination.clone(),
            port: k.port,
            protocol: k.protocol,
            method: k.method.clone(),
        }
    }
}

/// How an edge outside the baseline is classified (edges in it are not listed at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Not in it, but we are still learning: it joins silently.
    Learned,
    /// Not in it, after learning: raise an alert.
    New,
}

/// The baseline and the end of the learning period.
#[derive(Debug, Clone, Default)]
pub(crate) struct Detector {
    baseline: HashSet<BaselineKey>,
    /// Unix ms before which every new edge is learned.
    learning_until_ms: i64,
}

impl Detector {
    /// A detector over `baseline`, learning until `learning_until_ms`.
    pub(crate) fn new(
        baseline: impl IntoIterator<Item = BaselineKey>,
        learning_until_ms: i64,
    ) -> Self {
        Self {
            baseline: baseline.into_iter().collect(),
            learning_until_ms,
        }
    }

    /// Classifies the edges of one batch outside the baseline at `now_ms`, each distinct key once (the first
    /// occurrence wins): a key twice in a batch is one alert. Nothing changes until
    /// [`Detector::admit`].
    pub(crate) fn classify<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a EdgeKey>,
        now_ms: i64,
    ) -> Vec<(&'a EdgeKey, Seen)> {
        let mut seen_here = HashSet::new();
        let mut out = Vec::new();
        for key in keys {
            let base = BaselineKey::from(key);
            if self.baseline.contains(&base) || !seen_here.insert(base) {
                continue;
            }
            let seen = if now_ms < self.learning_until_ms {
                Seen::Learned
            } else {
                Seen::New
            };
            out.push((key, seen));
        }
        out
    }

    /// Adds stored edges to the baseline.
    pub(crate) fn admit<'a>(&mut self, keys: impl IntoIterator<Item = &'a EdgeKey>) {
        self.baseline
            .extend(keys.into_iter().map(BaselineKey::from));
    }

    /// Whether `now_ms` is within the learning period.
    pub(crate) fn learning(&self, now_ms: i64) -> bool {
        now_ms < self.learning_until_ms
    }
}

#[cfg(test)]
mod tests {
    use svidcar_policy::Action;

    use super::*;

    fn key(src: &str, port: u16, method: Option<&str>, path: Option<&str>) -> EdgeKey {
        EdgeKey {
            source: Some(SpiffeId::parse(src).unwrap()),
            destination: Some(SpiffeId::parse("spiffe://td/db").unwrap()),
            port,
            protocol: if method.is_some() {
                Protocol::Http
            } else {
                Protocol::Tcp
            },
            method: method.map(Into::into),
            path_prefix: path.map(Into::into),
            action: Action::Allow,
        }
    }

    #[test]
    fn learning_then_exactly_one_alert_per_new_edge() {
        let a = key("spiffe://td/a", 5432, None, None);
        let mut d = Detector::new([], 1_000);
        // Learning: silent, and known afterwards.
        assert_eq!(d.classify([&a], 999), vec![(&a, Seen::Learned)]);
        d.admit([&a]);
        assert!(d.learning(999) && !d.learning(1_000));
        assert!(
            d.classify([&a], 5_000).is_empty(),
            "learned edges are known"
        );

        // After learning: a new source, twice in one batch, is one alert.
        let b = key("spiffe://td/b", 5432, None, None);
        let b_denied = EdgeKey {
            action: Action::Deny,
            ..b.clone()
        };
        assert_eq!(
            d.classify([&b, &a, &b_denied], 5_000),
            vec![(&b, Seen::New)]
        );
        // Not admitted (the write failed): still new on the retry.
        assert_eq!(d.classify([&b], 5_001), vec![(&b, Seen::New)]);
        d.admit([&b]);
        assert!(d.classify([&b, &b_denied], 6_000).is_empty(), "once");
    }

    #[test]
    fn port_protocol_and_method_make_an_edge_path_does_not() {
        let get = key("spiffe://td/a", 80, Some("GET"), Some("/api/v1/"));
        let mut d = Detector::new([BaselineKey::from(&get)], 0);
        let other_path = key("spiffe://td/a", 80, Some("GET"), Some("/admin/"));
        assert!(d.classify([&other_path], 1).is_empty());
        let post = key("spiffe://td/a", 80, Some("POST"), Some("/api/v1/"));
        let port = key("spiffe://td/a", 81, Some("GET"), Some("/api/v1/"));
        let tcp = key("spiffe://td/a", 80, None, None);
        let found: Vec<_> = d
            .classify([&post, &port, &tcp], 1)
            .into_iter()
            .map(|(k, s)| (k.clone(), s))
            .collect();
        assert_eq!(found.len(), 3);
        assert!(found.iter().all(|(_, s)| *s == Seen::New));
        d.admit([&post, &port, &tcp]);
        assert!(d.classify([&post, &port, &tcp], 2).is_empty());
    }

    #[test]
    fn no_learning_period_alerts_from_the_start() {
        let a = key("spiffe://td/a", 1, None, None);
        assert_eq!(
            Detector::new([], 0).classify([&a], 0),
            vec![(&a, Seen::New)]
        );
    }
}
