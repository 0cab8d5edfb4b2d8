//! Policy evaluation, with the semantics Istio users know: any matching DENY denies; if no ALLOW
//! policy selects the workload the default applies; if any ALLOW rule matches, allow; otherwise
//! deny. AUDIT matches are reported but never change the decision. A pure function.

use std::fmt;

use super::model::{
    Action, Condition, ConditionKey, Operation, Policy, PolicyKind, Request, Rule, Source,
};
use svidcar_identity::SpiffeId;

/// What applies when no ALLOW policy selects the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultPolicy {
    /// Allow everything (plaintext included).
    AllowAll,
    /// Allow any caller with a valid SVID of a trust domain we trust.
    AllAuthenticated,
    /// Deny everything.
    Deny,
}

impl DefaultPolicy {
    /// Kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            DefaultPolicy::AllowAll => "allow-all",
            DefaultPolicy::AllAuthenticated => "all-authenticated",
            DefaultPolicy::Deny => "deny",
        }
    }
}

impl std::str::FromStr for DefaultPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Self::AllowAll, Self::AllAuthenticated, Self::Deny]
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not allow-all, all-authenticated or deny"))
    }
}

impl fmt::Display for DefaultPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy and rule that matched.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RuleRef {
    /// Policy name.
    pub policy: String,
    /// 0-based rule index.
    pub rule: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#rule{}", self.policy, self.rule)
    }
}

/// The default that decided a request when no rule did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecidingDefault {
    /// The configured default: no ALLOW policy selects the workload.
    Configured(DefaultPolicy),
    /// No policy set has arrived yet and the start-up default denies (set by the proxy).
    StartupDeny,
}

impl DecidingDefault {
    /// `allow-all`, `all-authenticated`, `deny` or `startup-deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            DecidingDefault::Configured(d) => d.as_str(),
            DecidingDefault::StartupDeny => "startup-deny",
        }
    }
}

/// The outcome of evaluating one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allowed or not.
    pub allowed: bool,
    /// The rule that decided, if a rule did.
    pub by: Option<RuleRef>,
    /// The default that decided, if one did. `None` with `by` also `None`: denied without
    /// either (ALLOW policies select the workload but no rule matched, or no local SVID).
    pub default: Option<DecidingDefault>,
    /// Why, in words (also the decision log's `reason`).
    pub reason: String,
    /// AUDIT rules that matched.
    pub audits: Vec<RuleRef>,
}

impl Decision {
    /// `ALLOW` or `DENY`.
    pub fn action(&self) -> &'static str {
        if self.allowed {
            "ALLOW"
        } else {
            "DENY"
        }
    }
}

fn source_matches(s: &Source, r: &Request<'_>) -> bool {
    let id = r.source_id.map(SpiffeId::as_str);
    let td = r.source_id.map(SpiffeId::trust_domain_str);
    let any = |pats: &[super::Pattern], v: Option<&str>| {
        v.is_some_and(|v| pats.iter().any(|p| p.matches(v)))
    };
    (s.principals.is_empty() || any(&s.principals, id))
        && !any(&s.not_principals, id)
        && (s.trust_domains.is_empty() || s.trust_domains.iter().any(|t| Some(t.as_str()) == td))
        && !s.not_trust_domains.iter().any(|t| Some(t.as_str()) == td)
        && (s.ip_blocks.is_empty() || s.ip_blocks.iter().any(|n| n.contains(&r.source_ip)))
        && !s.not_ip_blocks.iter().any(|n| n.contains(&r.source_ip))
}

/// `None` when the operation needs HTTP attributes the request does not have.
fn operation_matches(o: &Operation, r: &Request<'_>) -> Option<bool> {
    let ports = (o.ports.is_empty() || o.ports.contains(&r.port)) && !o.not_ports.contains(&r.port);
    if !o.is_http_only() {
        return Some(ports);
    }
    let (method, path) = (r.method?, r.path?);
    let methods = (o.methods.is_empty() || o.methods.iter().any(|m| m == method))
        && !o.not_methods.iter().any(|m| m == method);
    let paths = (o.paths.is_empty() || o.paths.iter().any(|p| p.matches(path)))
        && !o.not_paths.iter().any(|p| p.matches(path));
    let hosts = if o.hosts.is_empty() && o.not_hosts.is_empty() {
        true
    } else {
        let host = r.host.map(str::to_ascii_lowercase).unwrap_or_default();
        let matches = |p: &super::Pattern| {
            p.matches(&host)
                || host
                    .rsplit_once(':')
                    .is_some_and(|(name, _)| p.matches(name))
        };
        (o.hosts.is_empty() || o.hosts.iter().any(matches)) && !o.not_hosts.iter().any(matches)
    };
    Some(ports && methods && paths && hosts)
}

/// `None` when the condition needs HTTP attributes the request does not have.
fn condition_matches(c: &Condition, r: &Request<'_>) -> Option<bool> {
    if let ConditionKey::RequestHeader(name) = &c.key {
        let values = r.headers?.values(name);
        let any =
            |pats: &[super::Pattern]| values.iter().any(|v| pats.iter().any(|p| p.matches(v)));
        return Some((c.values.is_empty() || any(&c.values)) && !any(&c.not_values));
    }
    let value: Option<String> = match &c.key {
        ConditionKey::SourcePrincipal => r.source_id.map(|i| i.as_str().to_owned()),
        ConditionKey::SourceTrustDomain => r.source_id.map(|i| i.trust_domain_str().to_owned()),
        ConditionKey::SourceIp => Some(r.source_ip.to_string()),
        ConditionKey::DestinationPort => Some(r.port.to_string()),
        ConditionKey::TlsMode => Some(
            if r.source_id.is_some() {
                "mutual_tls"
            } else {
                "none"
            }
            .to_owned(),
        ),
        ConditionKey::RequestHeader(_) => None,
    };
    let Some(v) = value else {
        return Some(false);
    };
    Some(
        (c.values.is_empty() || c.values.iter().any(|p| p.matches(&v)))
            && !c.not_values.iter().any(|p| p.matches(&v)),
    )
}

/// Whether a rule matches. HTTP-only operations and conditions on a non-HTTP request never
/// match for ALLOW and AUDIT, and always match for DENY (fail safe).
fn rule_matches(rule: &Rule, r: &Request<'_>, action: Action) -> bool {
    let unknown = action == Action::Deny;
    let from = rule.from.is_empty() || rule.from.iter().any(|s| source_matches(s, r));
    let to = rule.to.is_empty()
        || rule
            .to
            .iter()
            .any(|o| operation_matches(o, r).unwrap_or(unknown));
    from && to
        && rule
            .when
            .iter()
            .all(|c| condition_matches(c, r).unwrap_or(unknown))
}

/// Evaluates `request` to workload `workload` against `policies`.
pub fn evaluate(
    policies: &[Policy],
    workload: &SpiffeId,
    request: &Request<'_>,
    default: DefaultPolicy,
) -> Decision {
    let mut audits = Vec::new();
    let mut deny = None;
    let mut allow = None;
    let mut any_allow_policy = false;
    for p in policies.iter().filter(|p| p.selects(workload)) {
        let PolicyKind::Authorization { action, rules } = &p.kind else {
            continue;
        };
        if *action == Action::Allow {
            any_allow_policy = true;
        }
        for (i, rule) in rules.iter().enumerate() {
            if !rule_matches(rule, request, *action) {
                continue;
            }
            let hit = RuleRef {
                policy: p.name.clone(),
                rule: i,
            };
            match action {
                Action::Deny if deny.is_none() => deny = Some(hit),
                Action::Allow if allow.is_none() => allow = Some(hit),
                Action::Audit => audits.push(hit),
                _ => {}
            }
        }
    }
    if let Some(by) = deny {
        return Decision {
            allowed: false,
            reason: format!("denied by DENY policy {by}"),
            by: Some(by),
            default: None,
            audits,
        };
    }
    if !any_allow_policy {
        let allowed = match default {
            DefaultPolicy::AllowAll => true,
            DefaultPolicy::AllAuthenticated => request.source_id.is_some(),
            DefaultPolicy::Deny => false,
        };
        let reason = format!(
            "no ALLOW policy selects {workload}; default {} {}",
            default.as_str(),
            if allowed { "allows" } else { "denies" }
        );
        return Decision {
            allowed,
            by: None,
            default: Some(DecidingDefault::Configured(default)),
            reason,
            audits,
        };
    }
    match allow {
        Some(by) => Decision {
            allowed: true,
            reason: format!("allowed by ALLOW policy {by}"),
            by: Some(by),
            default: None,
            audits,
        },
        None => Decision {
            allowed: false,
            by: None,
            default: None,
            reason: "ALLOW policies select this workload but no rule matched".to_owned(),
            audits,
        },
    }
}

#[cfg(test)]
mod tests;
