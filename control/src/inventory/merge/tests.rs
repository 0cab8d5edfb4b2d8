use svidcar_policy::Action;

use super::*;
use crate::edge::{EdgeKey, Protocol};

const DAY_MS: i64 = 86_400_000;
const NOW_MS: i64 = 100 * DAY_MS;

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn issued(s: &str, first_day: i64, not_after_day: i64) -> Issued {
    Issued {
        id: id(s),
        node: Some("node-a".into()),
        selectors: vec!["unix:uid:1000".into()],
        first_issued: first_day * 86_400,
        last_issued: first_day * 86_400,
        not_after: not_after_day * 86_400,
        serial: "01ab".into(),
        count: 1,
    }
}

fn edge(src: Option<&str>, dst: &str, last_day: i64) -> EdgeRecord {
    EdgeRecord {
        key: EdgeKey {
            source: src.map(id),
            destination: Some(id(dst)),
            port: 8080,
            protocol: Protocol::Tcp,
            method: None,
            path_prefix: None,
            action: Action::Allow,
        },
        first_seen_ms: 0,
        last_seen_ms: last_day * DAY_MS,
        count: 1,
    }
}

fn flags_of(rows: &[IdentityRow], s: &str) -> Vec<Flag> {
    rows.iter()
        .find(|r| r.id.as_str() == s)
        .unwrap_or_else(|| panic!("{s} missing"))
        .flags
        .clone()
}

#[test]
fn flags_table() {
    let td = TrustDomain::parse("td").unwrap();
    let params = MergeParams {
        now_ms: NOW_MS,
        unused_days: 7,
        trust_domain: Some(&td),
    };
    let issued = [
        issued("spiffe://td/busy", 10, 101),  // used yesterday
        issued("spiffe://td/idle", 10, 101),  // last used 30 days ago
        issued("spiffe://td/new", 98, 101),   // too young to be called unused
        issued("spiffe://td/gone", 10, 50),   // expired on day 50, last used day 40
        issued("spiffe://td/lapsed", 10, 99), // expired yesterday, used today: not gone
        issued("spiffe://td/never", 10, 101), // no traffic at all
    ];
    let edges = [
        edge(Some("spiffe://td/busy"), "spiffe://td/idle", 70),
        edge(Some("spiffe://td/busy"), "spiffe://td/lapsed", 100),
        edge(Some("spiffe://td/gone"), "spiffe://td/busy", 40),
        edge(Some("spiffe://other.org/partner"), "spiffe://td/busy", 99),
        edge(Some("spiffe://td/rogue"), "spiffe://td/busy", 99),
        edge(None, "spiffe://td/busy", 99),
    ];
    let rows = merge(&issued, &edges, params);
    let cases: &[(&str, &[Flag])] = &[
        ("spiffe://td/busy", &[]),
        ("spiffe://td/idle", &[Flag::UnusedIssued]),
        ("spiffe://td/new", &[]),
        (
            "spiffe://td/gone",
            &[Flag::UnusedIssued, Flag::ExpiredAndGone],
        ),
        ("spiffe://td/lapsed", &[]),
        ("spiffe://td/never", &[Flag::UnusedIssued]),
        ("spiffe://other.org/partner", &[Flag::ForeignTrustDomain]),
        ("spiffe://td/rogue", &[Flag::NotIssuedHere]),
    ];
    for (who, want) in cases {
        assert_eq!(flags_of(&rows, who), *want, "{who}");
    }
    assert_eq!(
        rows.len(),
        cases.len(),
        "one row per identity, plaintext none"
    );
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);

    let busy = rows
        .iter()
        .find(|r| r.id.as_str() == "spiffe://td/busy")
        .unwrap();
    assert_eq!(busy.traffic.last_seen_as_source_ms, Some(100 * DAY_MS));
    assert_eq!(busy.traffic.last_seen_as_destination_ms, Some(99 * DAY_MS));
    assert_eq!(busy.traffic.peers, 5, "idle, lapsed, gone, partner, rogue");
    assert!(busy.issued.is_some());
}

#[test]
fn zero_days_flags_only_identities_never_seen() {
    let rows = merge(
        &[
            issued("spiffe://td/a", 99, 101),
            issued("spiffe://td/b", 99, 101),
        ],
        &[edge(Some("spiffe://td/a"), "spiffe://td/x", 100)],
        MergeParams {
            now_ms: NOW_MS,
            unused_days: 0,
            trust_domain: None,
        },
    );
    assert_eq!(flags_of(&rows, "spiffe://td/a"), []);
    assert_eq!(flags_of(&rows, "spiffe://td/b"), [Flag::UnusedIssued]);
}

#[test]
fn without_a_trust_domain_every_unissued_id_is_not_issued_here() {
    let rows = merge(
        &[],
        &[edge(Some("spiffe://a.org/x"), "spiffe://b.org/y", 1)],
        MergeParams {
            now_ms: NOW_MS,
            unused_days: 0,
            trust_domain: None,
        },
    );
    assert!(rows.iter().all(|r| r.flags == [Flag::NotIssuedHere]));
    assert_eq!(rows[0].traffic.peers, 1);
}
