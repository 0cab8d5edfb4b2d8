use std::net::{IpAddr, Ipv4Addr};

use svidcar_policy::{evaluate, parse_set, Action, DefaultPolicy, Policy, Request};

use super::*;
use crate::suggest::grants::grants;
use crate::suggest::grants::tests::edge;

const A: &str = "spiffe://td/ns/shop/sa/web";
const B: &str = "spiffe://td/ns/shop/sa/api";
const C: &str = "spiffe://td/ns/ops/sa/probe";

fn edges() -> Vec<EdgeRecord> {
    vec![
        edge(
            Some(A),
            B,
            8080,
            Some(("GET", "/api/v1/")),
            Action::Allow,
            100,
        ),
        edge(
            Some(A),
            B,
            8080,
            Some(("POST", "/api/v1/")),
            Action::Allow,
            100,
        ),
        edge(
            Some(A),
            B,
            8080,
            Some(("GET", "/healthz")),
            Action::Allow,
            100,
        ),
        edge(Some(A), B, 9090, None, Action::Allow, 100),
        edge(
            Some(C),
            B,
            8080,
            Some(("GET", "/metrics")),
            Action::Audit,
            100,
        ),
        edge(
            Some(C),
            B,
            8080,
            Some(("DELETE", "/api/v1/")),
            Action::Deny,
            100,
        ),
        edge(None, B, 8080, Some(("GET", "/")), Action::Allow, 100),
    ]
}

fn policy(mode: Mode) -> (SuggestedPolicy, Vec<Policy>) {
    let b = SpiffeId::parse(B).unwrap();
    let g = grants(&edges(), 0, None);
    let s = render(&b, &g[&b], mode, "7d");
    let parsed = parse_set([("suggested.yaml", s.yaml.as_str())])
        .unwrap_or_else(|e| panic!("{e:?}\n{}", s.yaml));
    (s, parsed)
}

/// (caller, port, method and path for HTTP).
type Call = (
    Option<&'static str>,
    u16,
    Option<(&'static str, &'static str)>,
);

fn decide(policies: &[Policy], (src, port, http): Call) -> (bool, usize) {
    let src = src.map(|s| SpiffeId::parse(s).unwrap());
    let req = Request {
        source_id: src.as_ref(),
        source_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port,
        method: http.map(|(m, _)| m),
        path: http.map(|(_, p)| p),
        host: None,
        headers: None,
    };
    let d = evaluate(
        policies,
        &SpiffeId::parse(B).unwrap(),
        &req,
        DefaultPolicy::AllowAll,
    );
    (d.allowed, d.audits.len())
}

/// Calls like the observed ones (deeper paths under an observed prefix included).
const OBSERVED: &[Call] = &[
    (Some(A), 8080, Some(("GET", "/api/v1/items/7"))),
    (Some(A), 8080, Some(("POST", "/api/v1/orders"))),
    (Some(A), 8080, Some(("GET", "/healthz"))),
    (Some(A), 9090, None),
    (Some(A), 9090, Some(("PUT", "/anything"))),
    (Some(C), 8080, Some(("GET", "/metrics"))),
];

/// Calls outside what was observed.
const OUTSIDE: &[Call] = &[
    (Some(A), 8080, Some(("DELETE", "/api/v1/items/7"))),
    (Some(A), 8080, Some(("GET", "/api/v2/items"))),
    (Some(A), 8080, Some(("GET", "/healthz/deep"))),
    (Some(A), 8080, Some(("POST", "/healthz"))),
    (Some(A), 7070, None),
    (Some(C), 8080, Some(("DELETE", "/api/v1/items/7"))),
    (Some(C), 8080, Some(("GET", "/metricsx"))),
    (Some(C), 9090, None),
    (
        Some("spiffe://td/ns/x/sa/new"),
        8080,
        Some(("GET", "/healthz")),
    ),
    (None, 8080, Some(("GET", "/"))),
];

#[test]
fn enforce_allows_exactly_what_was_observed() {
    let (s, p) = policy(Mode::Enforce);
    assert_eq!(s.name, "suggested-td-ns-shop-sa-api");
    for call in OBSERVED {
        assert_eq!(decide(&p, *call), (true, 0), "{call:?}\n{}", s.yaml);
    }
    for call in OUTSIDE {
        assert_eq!(decide(&p, *call), (false, 0), "{call:?}\n{}", s.yaml);
    }
}

#[test]
fn audit_matches_exactly_what_enforce_would_deny() {
    let (s, p) = policy(Mode::Audit);
    assert_eq!(s.file_name(), "suggested-td-ns-shop-sa-api-audit.yaml");
    for call in OBSERVED {
        assert_eq!(decide(&p, *call), (true, 0), "{call:?}\n{}", s.yaml);
    }
    for call in OUTSIDE {
        let (allowed, audits) = decide(&p, *call);
        assert!(allowed, "AUDIT never changes a decision");
        assert!(audits >= 1, "{call:?} is a would-be denial\n{}", s.yaml);
    }
}

#[test]
fn output_is_deterministic_and_lists_what_is_not_granted() {
    let (s, _) = policy(Mode::Enforce);
    let b = SpiffeId::parse(B).unwrap();
    let mut reversed = edges();
    reversed.reverse();
    let g = grants(&reversed, 0, None);
    assert_eq!(render(&b, &g[&b], Mode::Enforce, "7d").yaml, s.yaml);
    let want = r#"# Suggested by `svidcar policy suggest` from the traffic of the last 7d: 2 caller(s), 5 edge(s) let through.
# Allows exactly what was observed; everything else to this workload is denied.
# Not granted, denied today:
#   spiffe://td/ns/ops/sa/probe -> :8080 http DELETE /api/v1/ (3 × DENY)
# Not granted, callers without a SPIFFE ID (plaintext):
#   (plaintext) -> :8080 http GET / (3 × ALLOW)
kind: AuthorizationPolicy
name: suggested-td-ns-shop-sa-api
selector: ["spiffe://td/ns/shop/sa/api"]
action: ALLOW
rules:
  - from: [{ principals: ["spiffe://td/ns/ops/sa/probe"] }]
    to:
      - { ports: [8080], methods: ["GET"], paths: ["/metrics"] }
  - from: [{ principals: ["spiffe://td/ns/shop/sa/web"] }]
    to:
      - { ports: [9090] }
      - { ports: [8080], methods: ["GET"], paths: ["/healthz"] }
      - { ports: [8080], methods: ["GET", "POST"], paths: ["/api/v1/*"] }
"#;
    assert_eq!(s.yaml, want);
}

#[test]
fn a_destination_nobody_was_let_through_to_denies_and_audits_everything() {
    let b = SpiffeId::parse(B).unwrap();
    let g = grants(&[edge(Some(A), B, 1, None, Action::Deny, 1)], 0, None);
    for (mode, want) in [(Mode::Enforce, (false, 0)), (Mode::Audit, (true, 1))] {
        let s = render(&b, &g[&b], mode, "1d");
        let p = parse_set([("s.yaml", s.yaml.as_str())]).unwrap();
        assert_eq!(decide(&p, (Some(A), 1, None)), want, "{}", s.yaml);
    }
}

#[test]
fn long_ids_make_valid_names() {
    let long = format!("spiffe://td/{}", "Seg_".repeat(80));
    let id = SpiffeId::parse(&long).unwrap();
    let name = base_name(&id);
    assert!(name.len() <= 253 - "-audit".len(), "{}", name.len());
    let g = grants(&[edge(Some(A), &long, 1, None, Action::Allow, 1)], 0, None);
    let s = render(&id, &g[&id], Mode::Audit, "1d");
    parse_set([("s.yaml", s.yaml.as_str())]).unwrap();
}
