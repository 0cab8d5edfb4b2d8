//! Generated DENY policies (`on_new_edge: deny`): one per new edge, for exactly that edge
//! (its destination selected; its source, port and — for HTTP — method), living in the policy set
//! in force beside the directory's policies until the edge is allow-listed. A directory reload
//! keeps them ([`keep_generated`]).

use svidcar_policy::{parse_file, Policy};
use tokio::sync::watch;

use super::alert::NewEdgeAlert;
use crate::edge::Protocol;
use crate::server::Policies;

/// The `origin.file` of every generated policy starts with this.
const ORIGIN_PREFIX: &str = "generated/new-edge-";

/// The name of the policy generated for alert `id`.
fn name(id: i64) -> String {
    format!("svidcar-generated-new-edge-{id}")
}

/// Whether `p` was generated here.
fn is_generated(p: &Policy) -> bool {
    p.origin.file.starts_with(ORIGIN_PREFIX)
}

/// Whether a DENY for exactly this edge can be written: it needs both identities (a policy
/// selects its destination by SPIFFE ID and names the caller).
pub(super) fn expressible(alert: &NewEdgeAlert) -> bool {
    alert.key.source.is_some() && alert.key.destination.is_some()
}

/// The DENY policy for the edge of `alert`, or `None` when it cannot be expressed.
pub(super) fn policy_for(alert: &NewEdgeAlert) -> Option<Policy> {
    let (src, dst) = (alert.key.source.as_ref()?, alert.key.destination.as_ref()?);
    // JSON strings are YAML strings: identities and methods are quoted whatever they hold.
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let methods = match (alert.key.protocol, &alert.key.method) {
        (Protocol::Http, Some(m)) => format!(", methods: [{}]", q(m)),
        _ => String::new(),
    };
    let yaml = format!(
        "kind: AuthorizationPolicy\nname: {}\nselector: [{}]\naction: DENY\nrules:\n  - from: [{{ principals: [{}] }}]\n    to: [{{ ports: [{}]{methods} }}]\n",
        name(alert.id),
        q(dst.as_str()),
        q(src.as_str()),
        alert.key.port,
    );
    let (mut policies, errors) = parse_file(&format!("{ORIGIN_PREFIX}{}.yaml", alert.id), &yaml);
    if let Some(e) = errors.first() {
        tracing::error!(error = %e, "generated DENY policy refused");
        return None;
    }
    policies.pop()
}

/// Puts the DENY policies of `alerts` into the set in force (replacing older copies); proxies
/// get them on their policy stream.
pub(super) fn install<'a>(
    policies: &watch::Sender<Policies>,
    alerts: impl IntoIterator<Item = &'a NewEdgeAlert>,
) {
    let generated: Vec<Policy> = alerts.into_iter().filter_map(policy_for).collect();
    if generated.is_empty() {
        return;
    }
    policies.send_modify(|p| {
        p.policies.retain(|old| {
            !generated
                .iter()
                .any(|g| g.name == old.name && is_generated(old))
        });
        p.policies.extend(generated);
    });
}

/// Takes the DENY generated for alert `id` out of the set in force.
pub(super) fn lift(policies: &watch::Sender<Policies>, id: i64) {
    let name = name(id);
    policies.send_if_modified(|p| {
        let before = p.policies.len();
        p.policies
            .retain(|old| !(is_generated(old) && old.name == name));
        p.policies.len() != before
    });
}

/// Carries the generated DENY policies of the set in force (`current`) over into a newly
/// loaded one (`new`); called inside the one atomic replacement of the set
/// (`State::replace_policies`), so no proxy ever sees the set without them.
pub fn keep_generated(current: &[Policy], new: &mut Vec<Policy>) {
    new.extend(current.iter().filter(|p| is_generated(p)).cloned());
}

#[cfg(test)]
mod tests {
    use svidcar_identity::SpiffeId;
    use svidcar_policy::{Action, DefaultPolicy, PolicySet, Request};

    use super::*;
    use crate::edge::EdgeKey;
    use crate::edges::AlertStatus;

    fn alert(id: i64, method: Option<&str>) -> NewEdgeAlert {
        NewEdgeAlert {
            id,
            key: EdgeKey {
                source: Some(SpiffeId::parse("spiffe://td/ns/a/sa/web").unwrap()),
                destination: Some(SpiffeId::parse("spiffe://td/ns/b/sa/db").unwrap()),
                port: 5432,
                protocol: if method.is_some() {
                    Protocol::Http
                } else {
                    Protocol::Tcp
                },
                method: method.map(Into::into),
                path_prefix: None,
                action: Action::Allow,
            },
            reporter: "spiffe://td/ns/b/sa/db".into(),
            first_seen_ms: 1,
            status: AlertStatus::Open,
            denied: true,
        }
    }

    /// Whether the request is denied.
    fn decide(set: &[Policy], src: &str, port: u16, method: Option<&str>) -> bool {
        let set = PolicySet {
            version: "v".into(),
            policies: set.to_vec(),
        };
        let src = SpiffeId::parse(src).unwrap();
        let req = Request {
            source_id: Some(&src),
            source_ip: "10.0.0.1".parse().unwrap(),
            port,
            method,
            path: method.map(|_| "/"),
            host: None,
            headers: None,
        };
        let dst = SpiffeId::parse("spiffe://td/ns/b/sa/db").unwrap();
        !set.evaluate(&dst, &req, DefaultPolicy::AllowAll).allowed
    }

    #[test]
    fn the_generated_policy_denies_exactly_the_edge() {
        let tcp = policy_for(&alert(7, None)).unwrap();
        assert_eq!(tcp.name, "svidcar-generated-new-edge-7");
        let set = [tcp];
        assert!(
            decide(&set, "spiffe://td/ns/a/sa/web", 5432, None),
            "denied"
        );
        assert!(!decide(&set, "spiffe://td/ns/a/sa/web", 5433, None));
        assert!(!decide(&set, "spiffe://td/ns/a/sa/other", 5432, None));
        let set = [policy_for(&alert(8, Some("DELETE"))).unwrap()];
        assert!(decide(
            &set,
            "spiffe://td/ns/a/sa/web",
            5432,
            Some("DELETE")
        ));
        assert!(!decide(&set, "spiffe://td/ns/a/sa/web", 5432, Some("GET")));
        let mut plaintext = alert(9, None);
        plaintext.key.source = None;
        assert!(!expressible(&plaintext) && policy_for(&plaintext).is_none());
    }

    #[test]
    fn installed_lifted_and_kept_across_reloads() {
        let (tx, _rx) = watch::channel(Policies::default());
        install(&tx, [&alert(1, None), &alert(2, Some("GET"))]);
        install(&tx, [&alert(1, None)]);
        assert_eq!(tx.borrow().policies.len(), 2, "installed once each");
        tx.send_modify(|current| {
            let mut new = Policies {
                version: "dir-v2".into(),
                ..Policies::default()
            };
            keep_generated(&current.policies, &mut new.policies);
            *current = new;
        });
        assert_eq!(tx.borrow().version, "dir-v2");
        assert_eq!(tx.borrow().policies.len(), 2, "kept over a reload");
        lift(&tx, 1);
        let names: Vec<String> = tx
            .borrow()
            .policies
            .iter()
            .map(|p| p.name.clone())
            .collect();
        assert_eq!(names, vec!["svidcar-generated-new-edge-2".to_owned()]);
    }
}
