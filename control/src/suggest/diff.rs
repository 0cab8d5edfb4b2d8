//! The suggestion against the policies in force, per destination: which calls let through in
//! the window the suggestion would deny (newly denied), and which ALLOW rules in force no
//! observed call used (what the suggestion takes away). Edges carry caller, port, method and path
//! prefix, not addresses, hosts or headers: rules are judged on those four only.

use std::net::{IpAddr, Ipv4Addr};

use svidcar_identity::SpiffeId;
use svidcar_policy::{evaluate, Action, DefaultPolicy, Policy, PolicyKind, Request};

use super::grants::DestinationGrants;
use crate::edge::EdgeRecord;

/// An ALLOW rule in force that no call in the window used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnusedRule {
    /// Policy name.
    pub policy: String,
    /// 0-based rule index.
    pub rule: usize,
    /// `file document n`.
    pub origin: String,
}

/// One destination's diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    /// The destination workload.
    pub destination: SpiffeId,
    /// The ALLOW policies in force selecting it; empty: the default decides for it today, so
    /// whatever was not observed would be newly denied.
    pub allow_policies: Vec<String>,
    /// Calls let through in the window that the suggestion would deny.
    pub newly_denied: Vec<EdgeRecord>,
    /// ALLOW rules in force that no call let through in the window matched.
    pub unused: Vec<UnusedRule>,
}

/// The edge as a request (a path under its prefix; an unknown address).
fn request(e: &EdgeRecord) -> Request<'_> {
    Request {
        source_id: e.key.source.as_ref(),
        source_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        port: e.key.port,
        method: e.key.method.as_deref(),
        // The prefix itself is a path its pattern matches (`/api/v1/` under `/api/v1/*`).
        path: e.key.path_prefix.as_deref(),
        host: None,
        headers: None,
    }
}

/// Diffs `grants` of `destination`, suggested as `suggested` (parsed), against `in_force`.
pub fn diff(
    destination: &SpiffeId,
    grants: &DestinationGrants,
    suggested: &[Policy],
    in_force: &[Policy],
) -> Diff {
    let let_through = grants.observed.iter().chain(&grants.plaintext);
    let newly_denied = let_through
        .filter(|e| !evaluate(suggested, destination, &request(e), DefaultPolicy::Deny).allowed)
        .cloned()
        .collect();
    let mut allow_policies = Vec::new();
    let mut unused = Vec::new();
    for p in in_force.iter().filter(|p| p.selects(destination)) {
        let PolicyKind::Authorization {
            action: Action::Allow,
            rules,
        } = &p.kind
        else {
            continue;
        };
        allow_policies.push(p.name.clone());
        for (i, rule) in rules.iter().enumerate() {
            let alone = [Policy {
                kind: PolicyKind::Authorization {
                    action: Action::Allow,
                    rules: vec![rule.clone()],
                },
                ..p.clone()
            }];
            let used =
                grants.observed.iter().chain(&grants.plaintext).any(|e| {
                    evaluate(&alone, destination, &request(e), DefaultPolicy::Deny).allowed
                });
            if !used {
                unused.push(UnusedRule {
                    policy: p.name.clone(),
                    rule: i,
                    origin: format!("{} document {}", p.origin.file, p.origin.doc + 1),
                });
            }
        }
    }
    Diff {
        destination: destination.clone(),
        allow_policies,
        newly_denied,
        unused,
    }
}

#[cfg(test)]
mod tests {
    use svidcar_policy::parse_set;

    use super::*;
    use crate::suggest::grants::grants;
    use crate::suggest::grants::tests::edge;
    use crate::suggest::render::{render, Mode};

    const A: &str = "spiffe://td/a";
    const B: &str = "spiffe://td/b";

    #[test]
    fn newly_denied_and_unused_rules() {
        let b = SpiffeId::parse(B).unwrap();
        let edges = [
            edge(
                Some(A),
                B,
                8080,
                Some(("GET", "/api/v1/")),
                Action::Allow,
                1,
            ),
            edge(None, B, 8080, Some(("GET", "/")), Action::Allow, 1),
        ];
        let g = grants(&edges, 0, None);
        let s = render(&b, &g[&b], Mode::Enforce, "7d");
        let suggested = parse_set([("s.yaml", s.yaml.as_str())]).unwrap();
        let in_force = parse_set([(
            "force.yaml",
            "kind: AuthorizationPolicy\nname: b-callers\nselector: [spiffe://td/b]\naction: ALLOW\nrules:\n  - from: [{ principals: [spiffe://td/a] }]\n    to: [{ ports: [8080], paths: [/api/*] }]\n  - from: [{ principals: [spiffe://td/old] }]\n  - to: [{ ports: [8080] }]\n---\nkind: AuthorizationPolicy\nname: deny-x\naction: DENY\nrules: [{}]\n",
        )])
        .unwrap();
        let d = diff(&b, &g[&b], &suggested, &in_force);
        assert_eq!(d.allow_policies, ["b-callers"]);
        assert_eq!(d.newly_denied.len(), 1);
        assert_eq!(d.newly_denied[0].key.source, None, "the plaintext caller");
        assert_eq!(
            d.unused,
            [UnusedRule {
                policy: "b-callers".into(),
                rule: 1,
                origin: "force.yaml document 1".into()
            }]
        );
        let none = diff(&b, &g[&b], &suggested, &[]);
        assert!(none.allow_policies.is_empty() && none.unused.is_empty());
    }
}
