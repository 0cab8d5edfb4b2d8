//! Table-driven evaluation tests, including the edge cases of the Istio semantics.

use super::*;
use crate::parse_file;

const BACKEND: &str = "spiffe://example.org/ns/shop/sa/backend";
const FRONTEND: &str = "spiffe://example.org/ns/shop/sa/frontend";
const OPS: &str = "spiffe://example.org/ns/ops/sa/admin";
const INTERN: &str = "spiffe://example.org/ns/ops/sa/intern";
const PARTNER: &str = "spiffe://partner.org/ns/x/sa/api";

fn policies(yaml: &str) -> Vec<Policy> {
    let (p, errors) = parse_file("test.yaml", yaml);
    assert!(errors.is_empty(), "{errors:?}");
    p
}

struct Case {
    name: &'static str,
    from: Option<&'static str>,
    ip: &'static str,
    port: u16,
    http: Option<(&'static str, &'static str)>,
    allowed: bool,
    by: Option<&'static str>,
}

fn check(yaml: &str, default: DefaultPolicy, cases: &[Case]) {
    let ps = policies(yaml);
    let workload = SpiffeId::parse(BACKEND).unwrap();
    for c in cases {
        let id = c.from.map(|s| SpiffeId::parse(s).unwrap());
        let req = Request {
            source_id: id.as_ref(),
            source_ip: c.ip.parse().unwrap(),
            port: c.port,
            method: c.http.map(|h| h.0),
            path: c.http.map(|h| h.1),
            host: None,
            headers: None,
        };
        let d = evaluate(&ps, &workload, &req, default);
        assert_eq!(d.allowed, c.allowed, "{}: {}", c.name, d.reason);
        assert_eq!(
            d.by.as_ref().map(|r| r.to_string()).as_deref(),
            c.by,
            "{}: {}",
            c.name,
            d.reason
        );
    }
}

const MIXED: &str = r#"
kind: AuthorizationPolicy
name: allow-shop
selector: [spiffe://example.org/ns/shop/sa/backend]
action: ALLOW
rules:
  - from: [{ principals: [spiffe://example.org/ns/shop/*] }]
    to: [{ ports: [8080] }]
  - from: [{ principals: [spiffe://example.org/ns/ops/*], not_principals: [spiffe://example.org/ns/ops/sa/intern] }]
  - from: [{ trust_domains: [partner.org] }]
    to: [{ ports: [8443], methods: [GET], paths: [/api/*] }]
---
kind: AuthorizationPolicy
name: deny-bad-net
action: DENY
rules:
  - from: [{ ip_blocks: [10.66.0.0/16] }]
  - when: [{ key: destination.port, values: ["22"] }]
---
kind: AuthorizationPolicy
name: audit-ops
action: AUDIT
rules:
  - from: [{ principals: ["*/sa/admin"] }]
---
kind: AuthorizationPolicy
name: other-workload
selector: [spiffe://example.org/ns/shop/sa/cart]
action: DENY
rules: [{}]
"#;

#[test]
fn istio_semantics() {
    let c = |name, from, ip, port, http, allowed, by| Case {
        name,
        from,
        ip,
        port,
        http,
        allowed,
        by,
    };
    check(
        MIXED,
        DefaultPolicy::Deny,
        &[
            c(
                "shop caller on 8080",
                Some(FRONTEND),
                "10.1.0.1",
                8080,
                None,
                true,
                Some("allow-shop#rule0"),
            ),
            c(
                "shop caller on another port",
                Some(FRONTEND),
                "10.1.0.1",
                9090,
                None,
                false,
                None,
            ),
            c(
                "ops on any port",
                Some(OPS),
                "10.1.0.1",
                9090,
                None,
                true,
                Some("allow-shop#rule1"),
            ),
            c(
                "negated principal",
                Some(INTERN),
                "10.1.0.1",
                9090,
                None,
                false,
                None,
            ),
            c(
                "DENY wins over ALLOW",
                Some(FRONTEND),
                "10.66.3.4",
                8080,
                None,
                false,
                Some("deny-bad-net#rule0"),
            ),
            c(
                "DENY by condition",
                Some(OPS),
                "10.1.0.1",
                22,
                None,
                false,
                Some("deny-bad-net#rule1"),
            ),
            c(
                "plaintext matches no principal",
                None,
                "10.1.0.1",
                8080,
                None,
                false,
                None,
            ),
            c(
                "HTTP rule on HTTP request",
                Some(PARTNER),
                "10.1.0.1",
                8443,
                Some(("GET", "/api/v1")),
                true,
                Some("allow-shop#rule2"),
            ),
            c(
                "HTTP rule wrong method",
                Some(PARTNER),
                "10.1.0.1",
                8443,
                Some(("POST", "/api/v1")),
                false,
                None,
            ),
            c(
                "HTTP-only ALLOW rule never matches TCP",
                Some(PARTNER),
                "10.1.0.1",
                8443,
                None,
                false,
                None,
            ),
            c(
                "selector of another workload ignored",
                Some(FRONTEND),
                "10.1.0.1",
                8080,
                None,
                true,
                Some("allow-shop#rule0"),
            ),
        ],
    );
}

#[test]
fn audit_is_reported_but_does_not_decide() {
    let ps = policies(MIXED);
    let workload = SpiffeId::parse(BACKEND).unwrap();
    let ops = SpiffeId::parse(OPS).unwrap();
    let req = Request {
        source_id: Some(&ops),
        source_ip: "10.1.0.1".parse().unwrap(),
        port: 9090,
        method: None,
        path: None,
        host: None,
        headers: None,
    };
    let d = evaluate(&ps, &workload, &req, DefaultPolicy::Deny);
    assert!(d.allowed);
    assert_eq!(
        d.audits.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        vec!["audit-ops#rule0"]
    );
}

#[test]
fn defaults_apply_only_without_allow_policies() {
    let deny_only = r#"
kind: AuthorizationPolicy
name: deny-intern
action: DENY
rules: [{ from: [{ principals: [spiffe://example.org/ns/ops/sa/intern] }] }]
"#;
    let c = |name, from, allowed| Case {
        name,
        from,
        ip: "10.1.0.1",
        port: 80,
        http: None,
        allowed,
        by: None,
    };
    check(
        deny_only,
        DefaultPolicy::AllowAll,
        &[
            c("allow-all plaintext", None, true),
            c("allow-all mTLS", Some(FRONTEND), true),
        ],
    );
    check(
        deny_only,
        DefaultPolicy::AllAuthenticated,
        &[
            c("authenticated", Some(FRONTEND), true),
            c("plaintext", None, false),
        ],
    );
    check(
        deny_only,
        DefaultPolicy::Deny,
        &[c("deny default", Some(FRONTEND), false)],
    );
    check(
        "",
        DefaultPolicy::Deny,
        &[c("no policies at all", Some(FRONTEND), false)],
    );
}

#[test]
fn empty_rules_deny_and_an_empty_rule_allows_everything() {
    let no_rules = "kind: AuthorizationPolicy\nname: nothing\naction: ALLOW\n";
    let c = |name, from, allowed, by| Case {
        name,
        from,
        ip: "10.1.0.1",
        port: 80,
        http: None,
        allowed,
        by,
    };
    check(
        no_rules,
        DefaultPolicy::AllowAll,
        &[c("ALLOW without rules denies", Some(FRONTEND), false, None)],
    );
    let empty_rule = "kind: AuthorizationPolicy\nname: everything\naction: ALLOW\nrules: [{}]\n";
    check(
        empty_rule,
        DefaultPolicy::Deny,
        &[
            c(
                "empty rule allows mTLS",
                Some(FRONTEND),
                true,
                Some("everything#rule0"),
            ),
            c(
                "empty rule allows plaintext",
                None,
                true,
                Some("everything#rule0"),
            ),
        ],
    );
    let deny_empty = "kind: AuthorizationPolicy\nname: lockdown\naction: DENY\nrules: [{}]\n";
    check(
        deny_empty,
        DefaultPolicy::AllowAll,
        &[c(
            "DENY with an empty rule denies all",
            Some(OPS),
            false,
            Some("lockdown#rule0"),
        )],
    );
    let deny_no_rules = "kind: AuthorizationPolicy\nname: inert\naction: DENY\n";
    check(
        deny_no_rules,
        DefaultPolicy::AllowAll,
        &[c(
            "DENY without rules matches nothing",
            Some(OPS),
            true,
            None,
        )],
    );
}

#[test]
fn http_only_deny_rules_fail_safe_on_tcp() {
    let yaml = "kind: AuthorizationPolicy\nname: no-delete\naction: DENY\nrules: [{ to: [{ methods: [DELETE] }] }]\n";
    let c = |name, http, allowed, by| Case {
        name,
        from: Some(FRONTEND),
        ip: "10.1.0.1",
        port: 80,
        http,
        allowed,
        by,
    };
    check(
        yaml,
        DefaultPolicy::AllowAll,
        &[
            c(
                "TCP: the HTTP-only DENY rule applies",
                None,
                false,
                Some("no-delete#rule0"),
            ),
            c("HTTP GET passes", Some(("GET", "/")), true, None),
            c(
                "HTTP DELETE denied",
                Some(("DELETE", "/")),
                false,
                Some("no-delete#rule0"),
            ),
        ],
    );
}

#[test]
fn peer_authentication_by_port_and_specificity() {
    let yaml = r#"
kind: PeerAuthentication
name: mesh-wide
mtls: STRICT
---
kind: PeerAuthentication
name: backend
selector: [spiffe://example.org/ns/shop/sa/backend]
mtls: PERMISSIVE
port_mtls: { 8443: STRICT }
"#;
    let set = crate::PolicySet {
        version: "v".into(),
        policies: policies(yaml),
    };
    let backend = SpiffeId::parse(BACKEND).unwrap();
    let other = SpiffeId::parse(FRONTEND).unwrap();
    assert_eq!(set.mtls_for(&backend, 80), Some(MtlsMode::Permissive));
    assert_eq!(set.mtls_for(&backend, 8443), Some(MtlsMode::Strict));
    assert_eq!(set.mtls_for(&other, 80), Some(MtlsMode::Strict));
    let empty = crate::PolicySet {
        version: "v".into(),
        policies: vec![],
    };
    assert_eq!(empty.mtls_for(&backend, 80), None);
}

use crate::MtlsMode;

#[derive(Debug)]
struct Hdrs(Vec<(&'static str, &'static str)>);

impl crate::Headers for Hdrs {
    fn values(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .collect()
    }
}

#[test]
fn hosts_and_header_conditions_are_evaluated_per_request_and_fail_safe_on_tcp() {
    let yaml = format!(
        "kind: AuthorizationPolicy\nname: api\nselector: [{BACKEND}]\naction: ALLOW\nrules:\n  - to: [{{ hosts: [\"API.example.org\", \"*.shop.example.org\"] }}]\n    when: [{{ key: \"request.headers[X-Tenant]\", values: [blue, \"green-*\"] }}]\n---\nkind: AuthorizationPolicy\nname: no-debug\naction: DENY\nrules:\n  - when: [{{ key: \"request.headers[x-debug]\", values: [\"*\"] }}]\n"
    );
    let ps = policies(&yaml);
    let workload = SpiffeId::parse(BACKEND).unwrap();
    let decide = |host: Option<&'static str>, headers: Option<&Hdrs>| {
        let req = Request {
            source_id: None,
            source_ip: "10.0.0.1".parse().unwrap(),
            port: 8080,
            method: headers.map(|_| "GET"),
            path: headers.map(|_| "/"),
            host,
            headers: headers.map(|h| h as &dyn crate::Headers),
        };
        let d = evaluate(&ps, &workload, &req, DefaultPolicy::AllowAll);
        (d.allowed, d.by.map(|r| r.policy))
    };
    let blue = Hdrs(vec![("x-tenant", "blue")]);
    let green = Hdrs(vec![("x-tenant", "red"), ("x-tenant", "green-2")]);
    let red = Hdrs(vec![("x-tenant", "red")]);
    let debug = Hdrs(vec![("x-tenant", "blue"), ("x-debug", "1")]);
    assert_eq!(
        decide(Some("api.example.org"), Some(&blue)),
        (true, Some("api".into()))
    );
    assert!(decide(Some("API.example.org:8080"), Some(&blue)).0);
    assert!(decide(Some("cart.shop.example.org"), Some(&green)).0);
    assert!(!decide(Some("other.example.org"), Some(&blue)).0);
    assert!(!decide(None, Some(&blue)).0);
    assert!(!decide(Some("api.example.org"), Some(&red)).0);
    assert_eq!(
        decide(Some("api.example.org"), Some(&debug)),
        (false, Some("no-debug".into()))
    );
    // A TCP connection has no host and no headers: the ALLOW cannot match, the DENY does.
    assert_eq!(decide(None, None), (false, Some("no-debug".into())));
    assert!(ps.iter().all(|p| p.http_only_rules() == vec![0]));
}

#[test]
fn header_keys_and_hosts_are_checked() {
    let (_, errors) = parse_file(
        "p.yaml",
        "kind: AuthorizationPolicy\nname: x\naction: DENY\nrules:\n  - to: [{ hosts: [\"a b\"] }]\n    when: [{ key: \"request.headers[]\", values: [x] }]\n",
    );
    let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].contains("rules[0].to[0].hosts[0]: \"a b\" is not a host"),
        "{errors:?}"
    );
    assert!(
        errors[1].contains("rules[0].when[0].key: \"request.headers[]\" is not one of"),
        "{errors:?}"
    );
}
