//! Runs every vector in `shared/conformance/spiffe/`.

use super::*;
use std::path::PathBuf;

fn conformance(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/conformance/spiffe")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Lines of `INPUT<TAB>MESSAGE`; a line starting with a tab is the empty input.
fn invalid_vectors(name: &str) -> Vec<(String, String)> {
    conformance(name)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (input, msg) = l.split_once('\t').expect("vector has a tab");
            (input.to_owned(), msg.to_owned())
        })
        .collect()
}

#[test]
fn every_valid_spiffe_id_parses_and_round_trips() {
    let text = conformance("spiffeid_valid.txt");
    let mut n = 0;
    for line in text.lines() {
        let id = SpiffeId::parse(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert_eq!(id.as_str(), line);
        assert_eq!(
            format!("spiffe://{}{}", id.trust_domain_str(), id.path()),
            line
        );
        n += 1;
    }
    assert!(n > 100, "only {n} vectors");
}

#[test]
fn every_invalid_spiffe_id_is_refused_for_the_expected_reason() {
    let vectors = invalid_vectors("spiffeid_invalid.txt");
    assert!(vectors.len() > 100);
    for (input, msg) in vectors {
        let err = SpiffeId::parse(&input).expect_err(&input);
        assert_eq!(err.to_string(), msg, "input {input:?}");
    }
}

#[test]
fn every_valid_trust_domain_parses() {
    let text = conformance("trustdomain_valid.txt");
    for line in text.lines() {
        let td = TrustDomain::parse(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        if !line.contains(":/") {
            assert_eq!(td.as_str(), line);
        } else {
            assert!(line.starts_with(&td.id_string()));
        }
    }
}

#[test]
fn every_invalid_trust_domain_is_refused_for_the_expected_reason() {
    let vectors = invalid_vectors("trustdomain_invalid.txt");
    assert!(vectors.len() > 30);
    for (input, msg) in vectors {
        let err = TrustDomain::parse(&input).expect_err(&input);
        assert_eq!(err.to_string(), msg, "input {input:?}");
    }
}

/// Where go-spiffe and rust-spiffe disagree we follow the spec: upper case is refused, over-long
/// trust domains are refused, over-long IDs are refused.
#[test]
fn divergent_vectors_follow_the_spec() {
    for file in ["spiffeid_divergent.tsv", "trustdomain_divergent.tsv"] {
        for line in conformance(file).lines().skip(1) {
            let input = line.split('\t').next().unwrap_or_default();
            if input.starts_with('<') {
                continue; // length cases are generated below
            }
            let parsed = if file.starts_with("spiffeid") {
                SpiffeId::parse(input).map(|_| ())
            } else {
                TrustDomain::parse(input).map(|_| ())
            };
            assert!(parsed.is_err(), "{file}: {input:?} should be refused");
        }
    }
    let td256 = "a".repeat(256);
    assert_eq!(
        SpiffeId::parse(&format!("spiffe://{td256}")),
        Err(IdError::TrustDomainTooLong)
    );
    assert_eq!(TrustDomain::parse(&td256), Err(IdError::TrustDomainTooLong));
    let long = format!("spiffe://example.org/{}", "p".repeat(2049 - 21));
    assert_eq!(long.len(), 2049);
    assert_eq!(SpiffeId::parse(&long), Err(IdError::TooLong));
    let max = &long[..2048];
    assert!(SpiffeId::parse(max).is_ok());
}

#[test]
fn parts_and_equality() {
    let id = SpiffeId::parse("spiffe://example.org/ns/default/sa/Web").unwrap();
    assert_eq!(id.trust_domain().as_str(), "example.org");
    assert_eq!(id.path(), "/ns/default/sa/Web");
    let lower = SpiffeId::parse("spiffe://example.org/ns/default/sa/web").unwrap();
    assert_ne!(id, lower, "paths compare byte for byte");
    let td = TrustDomain::parse("example.org").unwrap();
    assert_eq!(SpiffeId::from_parts(&td, "/ns/default/sa/Web").unwrap(), id);
    assert_eq!(SpiffeId::parse("spiffe://example.org").unwrap().path(), "");
}
