//! The validated policy model. Two kinds of documents select destination workloads by SPIFFE ID:
//! `AuthorizationPolicy` (ALLOW / DENY / AUDIT with rules) and `PeerAuthentication` (mTLS mode
//! per port). See `load.rs` for the YAML form and validation.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::pattern::Pattern;
use crate::MtlsMode;
use svidcar_identity::{SpiffeId, TrustDomain};

/// Where a document came from, for error messages and explanations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// File path as given.
    pub file: String,
    /// 0-based document index within the file.
    pub doc: usize,
}

/// What an authorization policy does when a rule matches.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    /// Allow matching requests (and deny the rest, once any ALLOW policy selects the workload).
    Allow,
    /// Deny matching requests; wins over everything.
    Deny,
    /// Record matching requests in the decision log; does not change the decision.
    Audit,
}

impl Action {
    /// Upper-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
        }
    }
}

/// Who is calling. Every non-empty field must match; values within a field are ORed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Source {
    /// Caller SPIFFE IDs (exact or pattern).
    pub principals: Vec<Pattern>,
    /// Caller SPIFFE IDs that must not match.
    pub not_principals: Vec<Pattern>,
    /// Caller trust domains.
    pub trust_domains: Vec<TrustDomain>,
    /// Caller trust domains that must not match.
    pub not_trust_domains: Vec<TrustDomain>,
    /// Caller address ranges.
    pub ip_blocks: Vec<IpNet>,
    /// Caller address ranges that must not match.
    pub not_ip_blocks: Vec<IpNet>,
}

/// What is being called. Every non-empty field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Operation {
    /// Destination ports.
    pub ports: Vec<u16>,
    /// Destination ports that must not match.
    pub not_ports: Vec<u16>,
    /// HTTP methods (HTTP only).
    pub methods: Vec<String>,
    /// HTTP methods that must not match (HTTP only).
    pub not_methods: Vec<String>,
    /// HTTP paths (HTTP only; exact or pattern).
    pub paths: Vec<Pattern>,
    /// HTTP paths that must not match (HTTP only).
    pub not_paths: Vec<Pattern>,
    /// HTTP hosts (HTTP only; the `Host` / `:authority`, lower case; exact or pattern, e.g.
    /// `*.example.org`; a pattern without a port also matches the host with any port).
    pub hosts: Vec<Pattern>,
    /// HTTP hosts that must not match (HTTP only).
    pub not_hosts: Vec<Pattern>,
}

impl Operation {
    /// Whether this operation needs HTTP attributes.
    pub fn is_http_only(&self) -> bool {
        !(self.methods.is_empty()
            && self.not_methods.is_empty()
            && self.paths.is_empty()
            && self.not_paths.is_empty()
            && self.hosts.is_empty()
            && self.not_hosts.is_empty())
    }
}

/// The attribute a condition tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConditionKey {
    /// `source.principal`.
    SourcePrincipal,
    /// `source.trust_domain`.
    SourceTrustDomain,
    /// `source.ip`.
    SourceIp,
    /// `destination.port`.
    DestinationPort,
    /// `connection.tls_mode` (`mutual_tls` or `none`).
    TlsMode,
    /// `request.headers[<name>]` (HTTP only; the name in lower case).
    RequestHeader(String),
}

impl ConditionKey {
    /// Parses the YAML key.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "source.principal" => Self::SourcePrincipal,
            "source.trust_domain" => Self::SourceTrustDomain,
            "source.ip" => Self::SourceIp,
            "destination.port" => Self::DestinationPort,
            "connection.tls_mode" => Self::TlsMode,
            other => {
                let name = other
                    .strip_prefix("request.headers[")?
                    .strip_suffix(']')?
                    .to_ascii_lowercase();
                let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
                if name.is_empty() || !name.bytes().all(token) {
                    return None;
                }
                Self::RequestHeader(name)
            }
        })
    }

    /// Whether the attribute exists only for HTTP requests.
    pub fn is_http_only(&self) -> bool {
        matches!(self, Self::RequestHeader(_))
    }
}

/// A `when` condition: the attribute must match one of `values` and none of `not_values`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// Which attribute.
    pub key: ConditionKey,
    /// Accepted values (patterns).
    pub values: Vec<Pattern>,
    /// Rejected values (patterns).
    pub not_values: Vec<Pattern>,
}

/// A rule: any `from` entry, any `to` entry and all `when` conditions must match. Empty lists
/// match everything, so an empty rule matches every request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    /// Sources, ORed.
    pub from: Vec<Source>,
    /// Operations, ORed.
    pub to: Vec<Operation>,
    /// Conditions, ANDed.
    pub when: Vec<Condition>,
}

impl Rule {
    /// Whether the rule can only match HTTP requests: every operation it lists names methods
    /// or paths. On a connection that is not HTTP (an opaque port, a non-HTTP protocol) such a
    /// rule never matches.
    pub fn is_http_only(&self) -> bool {
        (!self.to.is_empty() && self.to.iter().all(Operation::is_http_only))
            || self.when.iter().any(|c| c.key.is_http_only())
    }
}

impl Policy {
    /// Indexes of the rules that can only match HTTP requests.
    pub fn http_only_rules(&self) -> Vec<usize> {
        match &self.kind {
            PolicyKind::Authorization { rules, .. } => rules
                .iter()
                .enumerate()
                .filter(|(_, r)| r.is_http_only())
                .map(|(i, _)| i)
                .collect(),
            PolicyKind::PeerAuthentication { .. } => Vec::new(),
        }
    }
}

/// What a policy document does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyKind {
    /// Authorization rules.
    Authorization {
        /// ALLOW, DENY or AUDIT.
        action: Action,
        /// Rules; an empty list matches nothing.
        rules: Vec<Rule>,
    },
    /// mTLS requirement.
    PeerAuthentication {
        /// Default mode for the workload's ports.
        mode: MtlsMode,
        /// Per-port overrides.
        ports: BTreeMap<u16, MtlsMode>,
    },
}

/// One validated policy document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Unique name.
    pub name: String,
    /// Destination workloads it applies to; empty means all.
    pub selector: Vec<Pattern>,
    /// What it does.
    pub kind: PolicyKind,
    /// Where it was written.
    pub origin: Origin,
    /// The document in canonical YAML (what the control plane sends to proxies).
    pub source: String,
}

impl Policy {
    /// Whether the policy applies to the workload `id`.
    pub fn selects(&self, id: &SpiffeId) -> bool {
        self.selector.is_empty() || self.selector.iter().any(|p| p.matches(id.as_str()))
    }

    /// Whether the selector names `id` exactly (more specific than a pattern).
    pub fn selects_exactly(&self, id: &SpiffeId) -> bool {
        self.selector
            .iter()
            .any(|p| matches!(p, Pattern::Exact(e) if e == id.as_str()))
    }
}

/// The attributes of a connection or request being authorized.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// Verified caller identity; `None` for plaintext.
    pub source_id: Option<&'a SpiffeId>,
    /// Caller address.
    pub source_ip: IpAddr,
    /// Destination port (the app's port).
    pub port: u16,
    /// HTTP method, when the request is HTTP.
    pub method: Option<&'a str>,
    /// HTTP path, when the request is HTTP.
    pub path: Option<&'a str>,
    /// HTTP host (`Host` / `:authority`), when the request is HTTP and names one.
    pub host: Option<&'a str>,
    /// The request's headers, when the request is HTTP.
    pub headers: Option<&'a dyn Headers>,
}

/// Read access to a request's headers, for `request.headers[...]` conditions.
pub trait Headers: std::fmt::Debug + Sync {
    /// The values of header `name` (lower case), in order.
    fn values(&self, name: &str) -> Vec<&str>;
}
