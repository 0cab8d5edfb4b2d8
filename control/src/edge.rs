//! An edge of the mesh's traffic graph: who called whom, on which port, with which protocol and
//! (for HTTP) method and path prefix, and what was decided. The edge table, the inventory,
//! `svidcar policy suggest` and new-edge alerts all speak of this one type; a [`DecisionEvent`]
//! is turned into its edge in exactly one place, [`EdgeKey::of`].

use serde::{Deserialize, Serialize};
use svidcar_api::DecisionEvent;
use svidcar_identity::SpiffeId;
use svidcar_policy::Action;

/// How many leading path segments an HTTP edge keeps: `/api/v1/users/42?x=1` → `/api/v1/`.
/// Enough to tell an API from another, few enough that IDs in paths do not make every request
/// an edge of its own.
pub const PATH_PREFIX_SEGMENTS: usize = 2;

/// The protocol of an edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// A TCP connection (decided once per connection).
    Tcp,
    /// An HTTP request (decided per request).
    Http,
}

impl Protocol {
    /// `tcp` or `http`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
        }
    }
}

/// What identifies an edge.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EdgeKey {
    /// The caller's verified SPIFFE ID; `None` for a caller without one (plaintext).
    pub source: Option<SpiffeId>,
    /// The called workload; `None` while its proxy held no SVID.
    pub destination: Option<SpiffeId>,
    /// Destination port.
    pub port: u16,
    /// TCP or HTTP.
    pub protocol: Protocol,
    /// The HTTP method (HTTP edges only).
    pub method: Option<String>,
    /// The path's first [`PATH_PREFIX_SEGMENTS`] segments, with a trailing `/` when the path
    /// went deeper (HTTP edges only).
    pub path_prefix: Option<String>,
    /// What was decided.
    pub action: Action,
}

impl EdgeKey {
    /// The edge a decision belongs to.
    pub fn of(event: &DecisionEvent) -> Self {
        let protocol = match event.method {
            Some(_) => Protocol::Http,
            None => Protocol::Tcp,
        };
        EdgeKey {
            source: event.source_id.clone(),
            destination: event.destination_id.clone(),
            port: event.port,
            protocol,
            method: event.method.clone(),
            path_prefix: event.path.as_deref().map(path_prefix),
            action: event.action,
        }
    }
}

/// An edge with what the edge table knows of it (the JSON form of `/edges` on the control
/// plane's query port, one object per edge).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeRecord {
    /// The edge.
    #[serde(flatten)]
    pub key: EdgeKey,
    /// First decision on it, Unix milliseconds.
    pub first_seen_ms: i64,
    /// Last decision on it, Unix milliseconds.
    pub last_seen_ms: i64,
    /// Decisions on it (in the window asked for, when one was).
    pub count: u64,
}

/// The first [`PATH_PREFIX_SEGMENTS`] segments of `path` (query and fragment dropped), ending in
/// `/` when the path has more: `/api/v1/users/42` → `/api/v1/`, `/healthz` → `/healthz`,
/// `/a/b/` → `/a/b/`.
pub fn path_prefix(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let path = if path.starts_with('/') { path } else { "/" };
    match path.match_indices('/').nth(PATH_PREFIX_SEGMENTS) {
        Some((i, _)) => path[..=i].to_owned(),
        None => path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_prefixes() {
        for (path, prefix) in [
            ("/api/v1/users/42?x=1", "/api/v1/"),
            ("/api/v1/", "/api/v1/"),
            ("/api/v1", "/api/v1"),
            ("/healthz", "/healthz"),
            ("/", "/"),
            ("", "/"),
            ("*", "/"),
            ("/a/b/c#frag", "/a/b/"),
            ("/a?b/c/d", "/a"),
        ] {
            assert_eq!(path_prefix(path), prefix, "{path}");
        }
    }

    #[test]
    fn an_http_decision_is_an_http_edge() {
        let event = DecisionEvent {
            time_ms: 0,
            action: Action::Allow,
            source_id: Some(SpiffeId::parse("spiffe://td/a").unwrap()),
            destination_id: Some(SpiffeId::parse("spiffe://td/b").unwrap()),
            source_addr: "10.0.0.1:40000".parse().unwrap(),
            destination_addr: "127.0.0.1:8080".parse().unwrap(),
            port: 8080,
            rule: None,
            reason: "default".into(),
            policy_version: "v1".into(),
            method: Some("GET".into()),
            path: Some("/api/v1/items/7".into()),
            count: 3,
        };
        let key = EdgeKey::of(&event);
        assert_eq!(key.protocol, Protocol::Http);
        assert_eq!(key.path_prefix.as_deref(), Some("/api/v1/"));
        let tcp = EdgeKey::of(&DecisionEvent {
            method: None,
            path: None,
            ..event
        });
        assert_eq!((tcp.protocol, tcp.path_prefix), (Protocol::Tcp, None));
    }
}
