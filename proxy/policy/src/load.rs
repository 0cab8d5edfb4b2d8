//! Policy documents in YAML (one or more per file, `---` separated) from a directory, validated
//! with precise errors: file, document, field, and what is wrong.
//!
//! ```yaml
//! kind: AuthorizationPolicy
//! name: backend-allow-frontend
//! selector: [spiffe://example.org/ns/shop/sa/backend]   # destination workloads; omit for all
//! action: ALLOW                                          # ALLOW | DENY | AUDIT
//! rules:
//!   - from:
//!       - principals: [spiffe://example.org/ns/shop/sa/frontend, spiffe://example.org/ns/ops/*]
//!         not_principals: [spiffe://example.org/ns/ops/sa/intern]
//!         trust_domains: [example.org]
//!         ip_blocks: [10.0.0.0/8]
//!     to:
//!       - ports: [8080]
//!         methods: [GET]          # HTTP only
//!         paths: [/api/*]         # HTTP only (normalized: //api, /%61pi/ match too)
//!         hosts: [api.example.org, "*.shop.example.org"]  # HTTP only; any port unless named
//!     when:
//!       - key: source.ip          # source.principal | source.trust_domain | source.ip |
//!         not_values: [10.9.*]    # destination.port | connection.tls_mode |
//!       - key: request.headers[x-tenant]   # request.headers[<name>] (HTTP only)
//!         values: [blue]
//! ---
//! kind: PeerAuthentication
//! name: backend-mtls
//! selector: [spiffe://example.org/ns/shop/sa/backend]
//! mtls: STRICT                    # STRICT | PERMISSIVE
//! port_mtls: { 9090: PERMISSIVE }
//! ```

use std::collections::{BTreeMap, HashMap};

use ipnet::IpNet;
use serde::Deserialize;

use super::model::{
    Action, Condition, ConditionKey, Operation, Origin, Policy, PolicyKind, Rule, Source,
};
use super::pattern::Pattern;
use crate::MtlsMode;
use svidcar_identity::{SpiffeId, TrustDomain};

/// A policy file or document that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The directory or a file could not be read.
    #[error("{path}: {message}")]
    Read {
        /// File or directory.
        path: String,
        /// The OS error.
        message: String,
    },
    /// A document is not valid YAML for the schema (the message names the field and line).
    #[error("{file}: document {doc}: {message}")]
    Syntax {
        /// The file.
        file: String,
        /// 1-based document number.
        doc: usize,
        /// What is wrong.
        message: String,
    },
    /// A field has a value that cannot work.
    #[error("{file}: document {doc}: {field}: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// 1-based document number.
        doc: usize,
        /// Dotted field path, e.g. `rules[0].from[1].principals[0]`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDoc {
    kind: String,
    name: String,
    #[serde(default)]
    selector: Vec<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default)]
    mtls: Option<String>,
    #[serde(default)]
    port_mtls: BTreeMap<u16, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    from: Vec<RawSource>,
    #[serde(default)]
    to: Vec<RawOperation>,
    #[serde(default)]
    when: Vec<RawCondition>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSource {
    principals: Vec<String>,
    not_principals: Vec<String>,
    trust_domains: Vec<String>,
    not_trust_domains: Vec<String>,
    ip_blocks: Vec<String>,
    not_ip_blocks: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawOperation {
    ports: Vec<u16>,
    not_ports: Vec<u16>,
    methods: Vec<String>,
    not_methods: Vec<String>,
    paths: Vec<String>,
    not_paths: Vec<String>,
    hosts: Vec<String>,
    not_hosts: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCondition {
    key: String,
    #[serde(default)]
    values: Vec<String>,
    #[serde(default)]
    not_values: Vec<String>,
}

/// Collects errors for one document.
struct Ctx<'a> {
    file: &'a str,
    doc: usize,
    errors: Vec<PolicyError>,
}

impl Ctx<'_> {
    fn err(&mut self, field: String, message: impl Into<String>) {
        self.errors.push(PolicyError::Invalid {
            file: self.file.to_owned(),
            doc: self.doc + 1,
            field,
            message: message.into(),
        });
    }

    /// A SPIFFE ID pattern: exact IDs must be valid SPIFFE IDs (the SPIFFE-ID reason is given);
    /// prefixes must be the start of one.
    fn id_pattern(&mut self, field: String, s: &str) -> Option<Pattern> {
        let p = match Pattern::parse(s) {
            Ok(p) => p,
            Err(e) => {
                self.err(field, e);
                return None;
            }
        };
        let check = match &p {
            Pattern::Exact(e) => SpiffeId::parse(e).map(|_| ()),
            Pattern::Prefix(pre) if pre.len() >= "spiffe://".len() => {
                SpiffeId::parse(&format!("{pre}x")).map(|_| ())
            }
            Pattern::Prefix(pre) if "spiffe://".starts_with(pre.as_str()) => Ok(()),
            Pattern::Prefix(_) => Err(svidcar_identity::IdError::BadScheme),
            Pattern::Suffix(suf) => SpiffeId::parse(&format!("spiffe://x/x{suf}"))
                .or_else(|_| SpiffeId::parse(&format!("spiffe://x{suf}")))
                .map(|_| ()),
            Pattern::Any => Ok(()),
        };
        match check {
            Ok(()) => Some(p),
            Err(e) => {
                self.err(
                    field,
                    format!("{s:?} is not a valid SPIFFE ID or ID pattern: {e}"),
                );
                None
            }
        }
    }

    fn ids(&mut self, field: &str, values: &[String]) -> Vec<Pattern> {
        values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| self.id_pattern(format!("{field}[{i}]"), v))
            .collect()
    }

    fn tds(&mut self, field: &str, values: &[String]) -> Vec<TrustDomain> {
        let mut out = Vec::new();
        for (i, v) in values.iter().enumerate() {
            match TrustDomain::parse(v) {
                Ok(t) => out.push(t),
                Err(e) => self.err(
                    format!("{field}[{i}]"),
                    format!("{v:?} is not a trust domain: {e}"),
                ),
            }
        }
        out
    }

    fn nets(&mut self, field: &str, values: &[String]) -> Vec<IpNet> {
        let mut out = Vec::new();
        for (i, v) in values.iter().enumerate() {
            match v
                .parse::<IpNet>()
                .or_else(|_| v.parse::<std::net::IpAddr>().map(IpNet::from))
            {
                Ok(n) => out.push(n),
                Err(_) => self.err(
                    format!("{field}[{i}]"),
                    format!("{v:?} is not an IP address or CIDR"),
                ),
            }
        }
        out
    }

    fn patterns(&mut self, field: &str, values: &[String]) -> Vec<Pattern> {
        let mut out = Vec::new();
        for (i, v) in values.iter().enumerate() {
            match Pattern::parse(v) {
                Ok(p) => out.push(p),
                Err(e) => self.err(format!("{field}[{i}]"), e),
            }
        }
        out
    }

    /// Host patterns, lower case (`Host` is case-insensitive).
    fn hosts(&mut self, field: &str, values: &[String]) -> Vec<Pattern> {
        let mut out = Vec::new();
        for (i, v) in values.iter().enumerate() {
            if v.is_empty() || v.bytes().any(|b| b.is_ascii_whitespace() || b == b'/') {
                self.err(
                    format!("{field}[{i}]"),
                    format!("{v:?} is not a host (e.g. api.example.org, *.example.org, api:8080)"),
                );
                continue;
            }
            match Pattern::parse(&v.to_ascii_lowercase()) {
                Ok(p) => out.push(p),
                Err(e) => self.err(format!("{field}[{i}]"), e),
            }
        }
        out
    }

    fn methods(&mut self, field: &str, values: &[String]) -> Vec<String> {
        for (i, v) in values.iter().enumerate() {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_uppercase()) {
                self.err(
                    format!("{field}[{i}]"),
                    format!("{v:?} is not an HTTP method (upper case, e.g. GET)"),
                );
            }
        }
        values.to_vec()
    }

    fn mtls(&mut self, field: String, v: &str) -> Option<MtlsMode> {
        match v.to_ascii_uppercase().as_str() {
            "STRICT" => Some(MtlsMode::Strict),
            "PERMISSIVE" => Some(MtlsMode::Permissive),
            _ => {
                self.err(field, format!("{v:?} is not STRICT or PERMISSIVE"));
                None
            }
        }
    }

    fn rule(&mut self, i: usize, raw: &RawRule) -> Rule {
        let mut rule = Rule::default();
        for (j, s) in raw.from.iter().enumerate() {
            let f = format!("rules[{i}].from[{j}]");
            rule.from.push(Source {
                principals: self.ids(&format!("{f}.principals"), &s.principals),
                not_principals: self.ids(&format!("{f}.not_principals"), &s.not_principals),
                trust_domains: self.tds(&format!("{f}.trust_domains"), &s.trust_domains),
                not_trust_domains: self
                    .tds(&format!("{f}.not_trust_domains"), &s.not_trust_domains),
                ip_blocks: self.nets(&format!("{f}.ip_blocks"), &s.ip_blocks),
                not_ip_blocks: self.nets(&format!("{f}.not_ip_blocks"), &s.not_ip_blocks),
            });
        }
        for (j, o) in raw.to.iter().enumerate() {
            let f = format!("rules[{i}].to[{j}]");
            for (k, p) in o.ports.iter().chain(&o.not_ports).enumerate() {
                if *p == 0 {
                    self.err(format!("{f}.ports[{k}]"), "port 0 is not a port");
                }
            }
            for (k, p) in o.paths.iter().chain(&o.not_paths).enumerate() {
                if !p.starts_with('/') && !p.starts_with('*') {
                    self.err(
                        format!("{f}.paths[{k}]"),
                        format!("{p:?} must start with '/' (or be a '*' pattern)"),
                    );
                }
            }
            rule.to.push(Operation {
                ports: o.ports.clone(),
                not_ports: o.not_ports.clone(),
                methods: self.methods(&format!("{f}.methods"), &o.methods),
                not_methods: self.methods(&format!("{f}.not_methods"), &o.not_methods),
                paths: self.patterns(&format!("{f}.paths"), &o.paths),
                not_paths: self.patterns(&format!("{f}.not_paths"), &o.not_paths),
                hosts: self.hosts(&format!("{f}.hosts"), &o.hosts),
                not_hosts: self.hosts(&format!("{f}.not_hosts"), &o.not_hosts),
            });
        }
        for (j, c) in raw.when.iter().enumerate() {
            let f = format!("rules[{i}].when[{j}]");
            let Some(key) = ConditionKey::parse(&c.key) else {
                self.err(
                    format!("{f}.key"),
                    format!("{:?} is not one of source.principal, source.trust_domain, source.ip, destination.port, connection.tls_mode, request.headers[<name>]", c.key),
                );
                continue;
            };
            if c.values.is_empty() && c.not_values.is_empty() {
                self.err(f.clone(), "needs values or not_values");
            }
            let (values, not_values) = if key == ConditionKey::SourcePrincipal {
                (
                    self.ids(&format!("{f}.values"), &c.values),
                    self.ids(&format!("{f}.not_values"), &c.not_values),
                )
            } else {
                (
                    self.patterns(&format!("{f}.values"), &c.values),
                    self.patterns(&format!("{f}.not_values"), &c.not_values),
                )
            };
            rule.when.push(Condition {
                key,
                values,
                not_values,
            });
        }
        rule
    }

    fn policy(&mut self, raw: RawDoc) -> Option<Policy> {
        let before = self.errors.len();
        if raw.name.is_empty()
            || raw.name.len() > 253
            || !raw
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        {
            self.err(
                "name".into(),
                format!(
                    "{:?}: use 1-253 lower-case letters, digits, '-' or '.'",
                    raw.name
                ),
            );
        }
        let selector = self.ids("selector", &raw.selector);
        let kind = match raw.kind.as_str() {
            "AuthorizationPolicy" => {
                if raw.mtls.is_some() || !raw.port_mtls.is_empty() {
                    self.err("mtls".into(), "belongs in a PeerAuthentication document");
                }
                let action = match raw.action.as_deref() {
                    Some("ALLOW") => Some(Action::Allow),
                    Some("DENY") => Some(Action::Deny),
                    Some("AUDIT") => Some(Action::Audit),
                    Some(other) => {
                        self.err(
                            "action".into(),
                            format!("{other:?} is not ALLOW, DENY or AUDIT"),
                        );
                        None
                    }
                    None => {
                        self.err("action".into(), "required (ALLOW, DENY or AUDIT)");
                        None
                    }
                };
                let rules = raw
                    .rules
                    .iter()
                    .enumerate()
                    .map(|(i, r)| self.rule(i, r))
                    .collect();
                action.map(|action| PolicyKind::Authorization { action, rules })
            }
            "PeerAuthentication" => {
                if raw.action.is_some() || !raw.rules.is_empty() {
                    self.err(
                        "action".into(),
                        "belongs in an AuthorizationPolicy document",
                    );
                }
                let mode = match raw.mtls.as_deref() {
                    Some(m) => self.mtls("mtls".into(), m),
                    None => {
                        self.err("mtls".into(), "required (STRICT or PERMISSIVE)");
                        None
                    }
                };
                let mut ports = BTreeMap::new();
                for (port, m) in &raw.port_mtls {
                    if let Some(m) = self.mtls(format!("port_mtls.{port}"), m) {
                        ports.insert(*port, m);
                    }
                }
                mode.map(|mode| PolicyKind::PeerAuthentication { mode, ports })
            }
            other => {
                self.err(
                    "kind".into(),
                    format!("{other:?} is not AuthorizationPolicy or PeerAuthentication"),
                );
                None
            }
        };
        if self.errors.len() > before {
            return None;
        }
        Some(Policy {
            name: raw.name,
            selector,
            kind: kind?,
            origin: Origin {
                file: self.file.to_owned(),
                doc: self.doc,
            },
            source: String::new(),
        })
    }
}

/// Parses every document of one file's text.
pub fn parse_file(file: &str, text: &str) -> (Vec<Policy>, Vec<PolicyError>) {
    let mut policies = Vec::new();
    let mut errors = Vec::new();
    for (doc, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = match serde_yaml_ng::Value::deserialize(de) {
            Ok(serde_yaml_ng::Value::Null) => continue, // an empty document
            Ok(v) => v,
            Err(e) => {
                errors.push(PolicyError::Syntax {
                    file: file.to_owned(),
                    doc: doc + 1,
                    message: e.to_string(),
                });
                break; // the rest of the stream cannot be trusted
            }
        };
        let source = serde_yaml_ng::to_string(&value).unwrap_or_default();
        let raw: RawDoc = match serde_yaml_ng::from_value(value) {
            Ok(r) => r,
            Err(e) => {
                errors.push(PolicyError::Syntax {
                    file: file.to_owned(),
                    doc: doc + 1,
                    message: e.to_string(),
                });
                continue;
            }
        };
        let mut ctx = Ctx {
            file,
            doc,
            errors: Vec::new(),
        };
        if let Some(mut p) = ctx.policy(raw) {
            p.source = source;
            policies.push(p);
        }
        errors.extend(ctx.errors);
    }
    (policies, errors)
}

/// Parses and validates a whole policy set given as `(file name, text)` pairs, in order; all
/// errors are returned, not just the first. Names must be unique across the set.
pub fn parse_set<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<Policy>, Vec<PolicyError>> {
    let mut policies: Vec<Policy> = Vec::new();
    let mut errors = Vec::new();
    for (file, text) in files {
        let (p, e) = parse_file(file, text);
        policies.extend(p);
        errors.extend(e);
    }
    let mut seen: HashMap<&str, &Origin> = HashMap::new();
    for p in &policies {
        if let Some(first) = seen.insert(&p.name, &p.origin) {
            errors.push(PolicyError::Invalid {
                file: p.origin.file.clone(),
                doc: p.origin.doc + 1,
                field: "name".into(),
                message: format!(
                    "{:?} is already used in {} document {}",
                    p.name,
                    first.file,
                    first.doc + 1
                ),
            });
        }
    }
    if errors.is_empty() {
        Ok(policies)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> Vec<String> {
        parse_file("p.yaml", yaml)
            .1
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn precise_errors() {
        let cases: &[(&str, &str)] = &[
            ("kind: AuthorizationPolicy\nname: x\naction: ALLOW\nrules: [{ from: [{ principals: [\"spiffe://Example.org/a\"] }] }]\n",
             "p.yaml: document 1: rules[0].from[0].principals[0]: \"spiffe://Example.org/a\" is not a valid SPIFFE ID or ID pattern: trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores"),
            ("kind: AuthorizationPolicy\nname: x\naction: PERMIT\n", "p.yaml: document 1: action: \"PERMIT\" is not ALLOW, DENY or AUDIT"),
            ("kind: AuthorizationPolicy\nname: x\n", "p.yaml: document 1: action: required (ALLOW, DENY or AUDIT)"),
            ("kind: Nope\nname: x\n", "p.yaml: document 1: kind: \"Nope\" is not AuthorizationPolicy or PeerAuthentication"),
            ("kind: AuthorizationPolicy\nname: Bad_Name\naction: DENY\n", "p.yaml: document 1: name: \"Bad_Name\": use 1-253 lower-case letters, digits, '-' or '.'"),
            ("kind: AuthorizationPolicy\nname: x\naction: DENY\nrules: [{ from: [{ ip_blocks: [10.0.0.0/33] }] }]\n",
             "p.yaml: document 1: rules[0].from[0].ip_blocks[0]: \"10.0.0.0/33\" is not an IP address or CIDR"),
            ("kind: AuthorizationPolicy\nname: x\naction: DENY\nrules: [{ to: [{ methods: [get] }] }]\n",
             "p.yaml: document 1: rules[0].to[0].methods[0]: \"get\" is not an HTTP method (upper case, e.g. GET)"),
            ("kind: AuthorizationPolicy\nname: x\naction: DENY\nrules: [{ when: [{ key: request.size, values: [\"1\"] }] }]\n",
             "p.yaml: document 1: rules[0].when[0].key: \"request.size\" is not one of source.principal, source.trust_domain, source.ip, destination.port, connection.tls_mode, request.headers[<name>]"),
            ("kind: PeerAuthentication\nname: x\nmtls: LAX\n", "p.yaml: document 1: mtls: \"LAX\" is not STRICT or PERMISSIVE"),
            ("kind: AuthorizationPolicy\nname: x\naction: ALLOW\nselector: [\"spiffe://td/a*b\"]\n",
             "p.yaml: document 1: selector[0]: \"spiffe://td/a*b\": `*` may only stand alone, at the start or at the end"),
        ];
        for (yaml, want) in cases {
            assert_eq!(errors(yaml), vec![want.to_string()], "{yaml}");
        }
        // Unknown fields and wrong types are named by the YAML layer, with the document.
        let e = errors("kind: AuthorizationPolicy\nname: ok\naction: ALLOW\n---\nkind: AuthorizationPolicy\nname: y\naction: ALLOW\nrules: [{ form: [] }]\n");
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("p.yaml: document 2: ") && e[0].contains("unknown field `form`"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn duplicate_names_across_files_are_refused() {
        let doc = "kind: AuthorizationPolicy\nname: same\naction: DENY\n";
        let errs = parse_set([("a.yaml", doc), ("b.yml", doc)]).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0]
                .to_string()
                .contains("b.yml: document 1: name: \"same\" is already used in a.yaml document 1"),
            "{}",
            errs[0]
        );
        assert_eq!(parse_set([("a.yaml", doc)]).unwrap().len(), 1);
    }
}
