//! Observed traffic folded into what each destination workload must grant: per caller, the TCP
//! ports it used and the HTTP (port, path, methods) it called. Only edges that were let through
//! (`ALLOW`, or `AUDIT`: recorded, not refused) are grants; denied and plaintext edges are kept
//! aside to be listed, never granted.

use std::collections::{BTreeMap, BTreeSet};

use svidcar_identity::SpiffeId;
use svidcar_policy::Action;

use crate::edge::{EdgeRecord, Protocol, PATH_PREFIX_SEGMENTS};

/// How an edge's path prefix is matched by the policy written for it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathMatch {
    /// The whole path: the edge kept the path whole (it was no deeper than the prefix).
    Exact(String),
    /// Paths starting with this: the edge kept only the path's first segments.
    Prefix(String),
}

impl PathMatch {
    /// How the edge table's `path_prefix` is matched: a prefix cut after
    /// [`PATH_PREFIX_SEGMENTS`] segments (it ends in `/` after that many segments) matches every
    /// path under it; a shorter one is the whole path. A `*` in a path cannot be written in a
    /// pattern: what precedes it becomes a prefix.
    pub fn of(path_prefix: &str) -> Self {
        if let Some(i) = path_prefix.find('*') {
            return PathMatch::Prefix(path_prefix[..i].to_owned());
        }
        let cut =
            path_prefix.ends_with('/') && path_prefix.matches('/').count() > PATH_PREFIX_SEGMENTS;
        if cut {
            PathMatch::Prefix(path_prefix.to_owned())
        } else {
            PathMatch::Exact(path_prefix.to_owned())
        }
    }

    /// The policy pattern: `/api/v1/*` or `/healthz`.
    pub fn pattern(&self) -> String {
        match self {
            PathMatch::Exact(p) => p.clone(),
            PathMatch::Prefix(p) => format!("{p}*"),
        }
    }

    /// A path this matches (to evaluate an edge as a request).
    pub fn example(&self) -> &str {
        match self {
            PathMatch::Exact(p) | PathMatch::Prefix(p) => p,
        }
    }
}

/// The methods granted on one (port, path).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Methods {
    /// Methods seen, each one a policy can name (upper-case letters).
    pub names: BTreeSet<String>,
    /// A method was seen that a policy cannot name (e.g. `M-SEARCH`): any method is granted.
    pub any: bool,
}

/// What one caller of a destination used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallerGrants {
    /// Ports with TCP traffic (a connection decided as a whole): the whole port is granted.
    pub tcp_ports: BTreeSet<u16>,
    /// HTTP requests by (port, path).
    pub http: BTreeMap<(u16, PathMatch), Methods>,
}

impl CallerGrants {
    /// Every port the caller used, TCP or HTTP.
    pub fn ports(&self) -> BTreeSet<u16> {
        let mut p = self.tcp_ports.clone();
        p.extend(self.http.keys().map(|(port, _)| *port));
        p
    }

    /// HTTP grants on ports without a TCP grant (a TCP grant already covers its port).
    pub fn http_only(&self) -> impl Iterator<Item = (u16, &PathMatch, &Methods)> {
        self.http
            .iter()
            .filter(|((port, _), _)| !self.tcp_ports.contains(port))
            .map(|((port, path), m)| (*port, path, m))
    }
}

/// What one destination workload's traffic in the window showed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationGrants {
    /// Callers let through, by SPIFFE ID.
    pub callers: BTreeMap<SpiffeId, CallerGrants>,
    /// Edges let through (`ALLOW`/`AUDIT`), sorted: what the diff checks the suggestion against.
    pub observed: Vec<EdgeRecord>,
    /// Edges denied today: never granted, listed.
    pub denied: Vec<EdgeRecord>,
    /// Edges let through from callers without a SPIFFE ID (plaintext): never granted, listed.
    pub plaintext: Vec<EdgeRecord>,
}

fn nameable(method: &str) -> bool {
    !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase())
}

/// Folds `edges` last seen at or after `since_ms` into grants per destination (only
/// `destination` when given). Edges without a destination ID name no workload and are skipped.
pub fn grants(
    edges: &[EdgeRecord],
    since_ms: i64,
    destination: Option<&SpiffeId>,
) -> BTreeMap<SpiffeId, DestinationGrants> {
    let mut out: BTreeMap<SpiffeId, DestinationGrants> = BTreeMap::new();
    for e in edges.iter().filter(|e| e.last_seen_ms >= since_ms) {
        let Some(dst) = &e.key.destination else {
            continue;
        };
        if destination.is_some_and(|d| d != dst) {
            continue;
        }
        let d = out.entry(dst.clone()).or_default();
        if e.key.action == Action::Deny {
            d.denied.push(e.clone());
            continue;
        }
        let Some(src) = &e.key.source else {
            d.plaintext.push(e.clone());
            continue;
        };
        d.observed.push(e.clone());
        let c = d.callers.entry(src.clone()).or_default();
        match (e.key.protocol, &e.key.method, &e.key.path_prefix) {
            (Protocol::Http, Some(method), Some(prefix)) => {
                let m = c
                    .http
                    .entry((e.key.port, PathMatch::of(prefix)))
                    .or_default();
                if nameable(method) {
                    m.names.insert(method.clone());
                } else {
                    m.any = true;
                }
            }
            // An HTTP edge without method or path cannot be narrowed: its port is granted.
            _ => {
                c.tcp_ports.insert(e.key.port);
            }
        }
    }
    for d in out.values_mut() {
        for list in [&mut d.observed, &mut d.denied, &mut d.plaintext] {
            list.sort_by(|a, b| a.key.cmp(&b.key));
        }
    }
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::edge::EdgeKey;

    pub(crate) fn edge(
        src: Option<&str>,
        dst: &str,
        port: u16,
        http: Option<(&str, &str)>,
        action: Action,
        last_seen_ms: i64,
    ) -> EdgeRecord {
        let id = |s: &str| SpiffeId::parse(s).unwrap();
        EdgeRecord {
            key: EdgeKey {
                source: src.map(id),
                destination: Some(id(dst)),
                port,
                protocol: if http.is_some() {
                    Protocol::Http
                } else {
                    Protocol::Tcp
                },
                method: http.map(|(m, _)| m.to_owned()),
                path_prefix: http.map(|(_, p)| p.to_owned()),
                action,
            },
            first_seen_ms: last_seen_ms - 10,
            last_seen_ms,
            count: 3,
        }
    }

    #[test]
    fn path_matches() {
        for (prefix, want) in [
            ("/api/v1/", PathMatch::Prefix("/api/v1/".into())),
            ("/api/v1", PathMatch::Exact("/api/v1".into())),
            ("/api/", PathMatch::Exact("/api/".into())),
            ("/healthz", PathMatch::Exact("/healthz".into())),
            ("/", PathMatch::Exact("/".into())),
            ("/a*b", PathMatch::Prefix("/a".into())),
        ] {
            assert_eq!(PathMatch::of(prefix), want, "{prefix}");
        }
        assert_eq!(PathMatch::of("/api/v1/").pattern(), "/api/v1/*");
        assert_eq!(PathMatch::of("/healthz").pattern(), "/healthz");
    }

    #[test]
    fn only_edges_let_through_in_the_window_are_granted() {
        let (a, b, c) = ("spiffe://td/a", "spiffe://td/b", "spiffe://td/c");
        let edges = [
            edge(
                Some(a),
                b,
                8080,
                Some(("GET", "/api/v1/")),
                Action::Allow,
                100,
            ),
            edge(
                Some(a),
                b,
                8080,
                Some(("POST", "/api/v1/")),
                Action::Audit,
                100,
            ),
            edge(
                Some(a),
                b,
                8080,
                Some(("M-SEARCH", "/x")),
                Action::Allow,
                100,
            ),
            edge(Some(a), b, 9090, None, Action::Allow, 100),
            edge(
                Some(c),
                b,
                8080,
                Some(("DELETE", "/api/v1/")),
                Action::Deny,
                100,
            ),
            edge(None, b, 8080, None, Action::Allow, 100),
            edge(Some(c), b, 7070, None, Action::Allow, 10), // before the window
            edge(Some(b), a, 1, None, Action::Allow, 100),
        ];
        let all = grants(&edges, 50, None);
        assert_eq!(all.len(), 2);
        let bid = SpiffeId::parse(b).unwrap();
        let only_b = grants(&edges, 50, Some(&bid));
        assert_eq!(only_b.keys().collect::<Vec<_>>(), [&bid]);
        let g = &only_b[&bid];
        assert_eq!(
            g.callers.len(),
            1,
            "c was only denied or outside the window"
        );
        let ca = &g.callers[&SpiffeId::parse(a).unwrap()];
        assert_eq!(ca.tcp_ports, BTreeSet::from([9090]));
        assert_eq!(ca.ports(), BTreeSet::from([8080, 9090]));
        let api = &ca.http[&(8080, PathMatch::Prefix("/api/v1/".into()))];
        assert_eq!(
            api.names,
            BTreeSet::from(["GET".to_owned(), "POST".to_owned()])
        );
        assert!(!api.any);
        assert!(ca.http[&(8080, PathMatch::Exact("/x".into()))].any);
        assert_eq!(
            (g.observed.len(), g.denied.len(), g.plaintext.len()),
            (4, 1, 1)
        );
    }
}
