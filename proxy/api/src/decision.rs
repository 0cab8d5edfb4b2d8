//! One authorization decision, as the proxy logs it, streams it to the control plane and the
//! control plane stores it. The wire message ([`DecisionEventMsg`]) is also the JSON form of the
//! decision log; the conversions between it and this type are the only place where "none" is
//! spelled as an empty string or rule `-1`.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use svidcar_identity::SpiffeId;
use svidcar_policy::{Action, RuleRef};

use crate::policy::DecisionEventMsg;

/// One authorization decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "DecisionEventMsg", try_from = "DecisionEventMsg")]
pub struct DecisionEvent {
    /// Unix time, milliseconds.
    pub time_ms: i64,
    /// `ALLOW`, `DENY`, or `AUDIT` (an AUDIT rule matched; logged besides the decision).
    pub action: Action,
    /// The caller's verified SPIFFE ID; `None` for a caller without one (plaintext).
    pub source_id: Option<SpiffeId>,
    /// Our SPIFFE ID (the destination workload); `None` while the proxy holds no SVID.
    pub destination_id: Option<SpiffeId>,
    /// Caller address.
    pub source_addr: SocketAddr,
    /// Where the connection goes (the app).
    pub destination_addr: SocketAddr,
    /// Destination port.
    pub port: u16,
    /// The deciding policy and rule; `None` when a default decided.
    pub rule: Option<RuleRef>,
    /// Why.
    pub reason: String,
    /// Policy version in force.
    pub policy_version: String,
    /// The HTTP method, for a decision about one HTTP request.
    pub method: Option<String>,
    /// The HTTP path (bounded), for a decision about one HTTP request.
    pub path: Option<String>,
    /// How many identical decisions this event stands for (1, or more for the summary of a
    /// window of identical ALLOWs).
    pub count: u64,
}

/// Why a wire event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// A field does not hold what it must.
    #[error("decision event: {field}: {value:?} {problem}")]
    Field {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        problem: &'static str,
    },
}

impl From<DecisionEvent> for DecisionEventMsg {
    fn from(e: DecisionEvent) -> Self {
        let id = |i: Option<SpiffeId>| i.map(|i| i.as_str().to_owned()).unwrap_or_default();
        let (policy, rule) = match e.rule {
            Some(r) => (r.policy, i64::try_from(r.rule).unwrap_or(i64::MAX)),
            None => (String::new(), -1),
        };
        Self {
            time_ms: e.time_ms,
            action: e.action.as_str().to_owned(),
            source_id: id(e.source_id),
            destination_id: id(e.destination_id),
            source_addr: e.source_addr.to_string(),
            destination_addr: e.destination_addr.to_string(),
            port: e.port.into(),
            policy,
            rule,
            reason: e.reason,
            policy_version: e.policy_version,
            method: e.method.unwrap_or_default(),
            path: e.path.unwrap_or_default(),
            count: e.count,
        }
    }
}

impl TryFrom<DecisionEventMsg> for DecisionEvent {
    type Error = EventError;

    fn try_from(m: DecisionEventMsg) -> Result<Self, EventError> {
        let bad = |field, value: &str, problem| EventError::Field {
            field,
            value: value.to_owned(),
            problem,
        };
        let id = |field, v: &str| match v {
            "" => Ok(None),
            v => SpiffeId::parse(v)
                .map(Some)
                .map_err(|_| bad(field, v, "is not a SPIFFE ID")),
        };
        let addr = |field, v: &str| {
            v.parse::<SocketAddr>()
                .map_err(|_| bad(field, v, "is not an address with a port"))
        };
        let action = match m.action.as_str() {
            "ALLOW" => Action::Allow,
            "DENY" => Action::Deny,
            "AUDIT" => Action::Audit,
            other => return Err(bad("action", other, "is not ALLOW, DENY or AUDIT")),
        };
        // "No rule" is spelled exactly ("", -1); anything else must name a policy and a rule.
        let rule = match (m.policy.as_str(), m.rule) {
            ("", -1) => None,
            ("", r) => return Err(bad("rule", &r.to_string(), "given without a policy")),
            (_, r) => Some(RuleRef {
                policy: m.policy.clone(),
                rule: usize::try_from(r)
                    .map_err(|_| bad("rule", &r.to_string(), "is not a rule index"))?,
            }),
        };
        if action == Action::Audit && rule.is_none() {
            return Err(bad("policy", "", "is required for an AUDIT event"));
        }
        Ok(Self {
            time_ms: m.time_ms,
            action,
            source_id: id("source_id", &m.source_id)?,
            destination_id: id("destination_id", &m.destination_id)?,
            source_addr: addr("source_addr", &m.source_addr)?,
            destination_addr: addr("destination_addr", &m.destination_addr)?,
            port: u16::try_from(m.port)
                .map_err(|_| bad("port", &m.port.to_string(), "is not a port"))?,
            rule,
            reason: m.reason,
            policy_version: m.policy_version,
            method: Some(m.method).filter(|s| !s.is_empty()),
            path: Some(m.path).filter(|s| !s.is_empty()),
            count: m.count.max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(rule: Option<RuleRef>, source: Option<&str>) -> DecisionEvent {
        DecisionEvent {
            time_ms: 1_700_000_000_123,
            action: Action::Deny,
            source_id: source.map(|s| SpiffeId::parse(s).unwrap()),
            destination_id: Some(SpiffeId::parse("spiffe://td/backend").unwrap()),
            source_addr: "10.0.0.1:40000".parse().unwrap(),
            destination_addr: "127.0.0.1:8080".parse().unwrap(),
            port: 8080,
            rule,
            reason: "denied by policy".into(),
            policy_version: "v1".into(),
            method: Some("POST".into()),
            path: Some("/admin".into()),
            count: 1,
        }
    }

    #[test]
    fn wire_and_json_forms_round_trip() {
        let with_rule = Some(RuleRef {
            policy: "deny-client".into(),
            rule: 2,
        });
        for e in [
            event(with_rule, Some("spiffe://td/client")),
            event(None, None),
        ] {
            let wire = DecisionEventMsg::from(e.clone());
            assert_eq!(DecisionEvent::try_from(wire).unwrap(), e);
            let json = serde_json::to_string(&e).unwrap();
            assert_eq!(serde_json::from_str::<DecisionEvent>(&json).unwrap(), e);
        }
    }

    #[test]
    fn none_is_spelled_empty_and_minus_one_on_the_wire() {
        let wire = DecisionEventMsg::from(event(None, None));
        assert_eq!(
            (wire.source_id.as_str(), wire.policy.as_str(), wire.rule),
            ("", "", -1)
        );
        let json = serde_json::to_value(event(None, None)).unwrap();
        assert_eq!(json["rule"], -1);
        assert_eq!(json["action"], "DENY");
    }

    #[test]
    fn malformed_wire_events_are_refused_with_the_field() {
        let good = DecisionEventMsg::from(event(None, None));
        type Spoil = fn(&mut DecisionEventMsg);
        let cases: [(&str, Spoil); 7] = [
            ("action", |m| m.action = "PERMIT".into()),
            ("source_id", |m| m.source_id = "spiffe://TD/x".into()),
            ("source_addr", |m| m.source_addr = "10.0.0.1".into()),
            ("port", |m| m.port = 70_000),
            ("rule", |m| {
                m.policy = "p".into();
                m.rule = -1;
            }),
            ("rule", |m| m.rule = 5),
            ("policy", |m| m.action = "AUDIT".into()),
        ];
        for (field, spoil) in cases {
            let mut m = good.clone();
            spoil(&mut m);
            let err = DecisionEvent::try_from(m).unwrap_err();
            assert!(
                matches!(err, EventError::Field { field: f, .. } if f == field),
                "{err}"
            );
        }
    }
}
