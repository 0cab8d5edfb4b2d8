//! Edges from decision-log records, for traffic views while no edge table answers: every
//! decision folded into its edge ([`EdgeKey::of`]) with first/last seen and count.

use std::collections::BTreeMap;

use crate::decisions::StoredDecision;
use crate::edge::{EdgeKey, EdgeRecord};

/// The edges of `decisions`, sorted by key.
pub fn edges_from_decisions(decisions: &[StoredDecision]) -> Vec<EdgeRecord> {
    let mut edges: BTreeMap<EdgeKey, EdgeRecord> = BTreeMap::new();
    for d in decisions {
        let key = EdgeKey::of(&d.event);
        let t = d.event.time_ms;
        let count = d.event.count.max(1);
        edges
            .entry(key.clone())
            .and_modify(|r| {
                r.first_seen_ms = r.first_seen_ms.min(t);
                r.last_seen_ms = r.last_seen_ms.max(t);
                r.count = r.count.saturating_add(count);
            })
            .or_insert(EdgeRecord {
                key,
                first_seen_ms: t,
                last_seen_ms: t,
                count,
            });
    }
    edges.into_values().collect()
}

#[cfg(test)]
mod tests {
    use svidcar_api::DecisionEvent;
    use svidcar_identity::SpiffeId;
    use svidcar_policy::Action;

    use super::*;

    fn decision(time_ms: i64, path: &str, count: u64) -> StoredDecision {
        StoredDecision {
            event: DecisionEvent {
                time_ms,
                action: Action::Allow,
                source_id: Some(SpiffeId::parse("spiffe://td/a").unwrap()),
                destination_id: Some(SpiffeId::parse("spiffe://td/b").unwrap()),
                source_addr: "10.0.0.1:4000".parse().unwrap(),
                destination_addr: "127.0.0.1:8080".parse().unwrap(),
                port: 8080,
                rule: None,
                reason: "default".into(),
                policy_version: "v".into(),
                method: Some("GET".into()),
                path: Some(path.into()),
                count,
            },
            reporter: "spiffe://td/b".into(),
        }
    }

    #[test]
    fn decisions_fold_into_edges() {
        let edges = edges_from_decisions(&[
            decision(30, "/api/v1/x", 2),
            decision(10, "/api/v1/y", 1),
            decision(20, "/healthz", 1),
        ]);
        assert_eq!(edges.len(), 2);
        let api = edges
            .iter()
            .find(|e| e.key.path_prefix.as_deref() == Some("/api/v1/"))
            .unwrap();
        assert_eq!(
            (api.first_seen_ms, api.last_seen_ms, api.count),
            (10, 30, 3)
        );
    }
}
