use std::sync::atomic::Ordering;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use spiffe::{X509Bundle, X509BundleSet, X509Svid};

use super::*;
use crate::SpiffeId;

type Ca = CertifiedIssuer<'static, KeyPair>;

fn key() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

fn root(td: &str) -> Ca {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, td);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(p, key()).unwrap()
}

fn leaf(id: &str, ca: &Ca) -> (Vec<u8>, Vec<u8>) {
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI(Ia5String::try_from(id).unwrap())];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let k = key();
    let cert = p.signed_by(&k, &**ca).unwrap();
    (cert.der().to_vec(), k.serialize_der())
}

fn spiffe_td(name: &str) -> spiffe::TrustDomain {
    spiffe::TrustDomain::new(name).unwrap()
}

fn context(svids: &[(Vec<u8>, Vec<u8>)], bundles: &[(&str, &Ca)]) -> X509Context {
    let svids: Vec<_> = svids
        .iter()
        .map(|(c, k)| Arc::new(X509Svid::parse_from_der(c, k).unwrap()))
        .collect();
    let mut set = X509BundleSet::new();
    for (td, ca) in bundles {
        set.add_bundle(X509Bundle::parse_from_der(spiffe_td(td), ca.der()).unwrap());
    }
    X509Context::new(svids, set)
}

fn provider() -> CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

#[test]
fn the_default_svid_and_one_bundle_per_trust_domain() {
    let ours = root("example.org");
    let theirs = root("other.org");
    let first = leaf("spiffe://example.org/first", &ours);
    let second = leaf("spiffe://example.org/second", &ours);
    let ctx = context(
        &[first, second],
        &[("example.org", &ours), ("other.org", &theirs)],
    );
    let creds = credentials_from_context(&ctx, None, &provider()).unwrap();
    assert_eq!(
        creds.id(),
        &SpiffeId::parse("spiffe://example.org/first").unwrap()
    );
    let tds: Vec<_> = creds
        .bundles
        .trust_domains()
        .iter()
        .map(|t| t.as_str().to_owned())
        .collect();
    assert_eq!(tds, ["example.org", "other.org"]);
    // Never merged: each trust domain has exactly its own root.
    let td = |n| TrustDomain::parse(n).unwrap();
    assert_eq!(
        creds.bundles.certs(&td("example.org")).unwrap(),
        [ours.der().clone()]
    );
    assert_eq!(
        creds.bundles.certs(&td("other.org")).unwrap(),
        [theirs.der().clone()]
    );
}

#[test]
fn a_hint_selects_its_svid_and_a_missing_one_is_named() {
    let ours = root("example.org");
    let with_hint = |id: &str, hint: &str| {
        let (c, k) = leaf(id, &ours);
        Arc::new(X509Svid::parse_from_der_with_hint(&c, &k, Some(Arc::from(hint))).unwrap())
    };
    let mut set = X509BundleSet::new();
    set.add_bundle(X509Bundle::parse_from_der(spiffe_td("example.org"), ours.der()).unwrap());
    let ctx = X509Context::new(
        vec![
            with_hint("spiffe://example.org/main", "main"),
            with_hint("spiffe://example.org/backup", "backup"),
        ],
        set,
    );
    let creds = credentials_from_context(&ctx, Some("backup"), &provider()).unwrap();
    assert_eq!(creds.id().as_str(), "spiffe://example.org/backup");
    let creds = credentials_from_context(&ctx, None, &provider()).unwrap();
    assert_eq!(creds.id().as_str(), "spiffe://example.org/main");
    let e = credentials_from_context(&ctx, Some("nope"), &provider())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no SVID has hint \"nope\"")
            && e.contains("spiffe://example.org/backup (hint \"backup\")"),
        "{e}"
    );
}

#[test]
fn an_svid_without_its_own_bundle_is_refused() {
    let ours = root("example.org");
    let theirs = root("other.org");
    let ctx = context(
        &[leaf("spiffe://example.org/a", &ours)],
        &[("other.org", &theirs)],
    );
    let e = credentials_from_context(&ctx, None, &provider()).unwrap_err();
    assert!(matches!(e, ContextError::Svid(_)), "{e:?}");
    assert!(e.to_string().contains("example.org"), "{e}");
    let empty = X509Context::new(Vec::<Arc<X509Svid>>::new(), X509BundleSet::new());
    let e = credentials_from_context(&empty, None, &provider()).unwrap_err();
    assert!(matches!(e, ContextError::NoSvid), "{e:?}");
    assert!(e.to_string().contains("no SVID"));
}

/// Reconnects follow the backoff (200 ms doubling, jitter fixed at the middle) in paused time,
/// and the store says why nothing arrives.
#[tokio::test(start_paused = true)]
async fn reconnects_with_backoff_in_paused_time() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = WorkloadEndpoint::Unix(dir.path().join("missing.sock"));
    let store = CredentialStore::new();
    let attempts = Arc::new(AtomicU64::new(0));
    let sup = Supervisor {
        endpoint: endpoint.clone(),
        hint: None,
        store: store.clone(),
        provider: Arc::new(provider()),
        attempts: attempts.clone(),
        jitter: Box::new(|| 0.5),
    };
    let cancel = CancellationToken::new();
    let task = tokio::spawn(sup.run(cancel.clone()));
    let start = tokio::time::Instant::now();
    // Attempts at 0, 200, 600, 1400, 3000, 6200 ms.
    for (at_ms, expected) in [
        (100, 1),
        (190, 1),
        (210, 2),
        (590, 2),
        (610, 3),
        (1390, 3),
        (1410, 4),
        (2990, 4),
        (3010, 5),
        (6210, 6),
    ] {
        tokio::time::sleep_until(start + Duration::from_millis(at_ms)).await;
        // Let the attempt due now run to completion.
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert_eq!(attempts.load(Ordering::Relaxed), expected, "at {at_ms} ms");
    }
    let problem = store.source_problem().expect("the store says why");
    assert!(problem.what.contains("missing.sock") && problem.what.contains("unreachable"));
    // The delay is capped at 10 s.
    let before = attempts.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(60)).await;
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    let in_a_minute = attempts.load(Ordering::Relaxed) - before;
    assert!(
        (5..=8).contains(&in_a_minute),
        "{in_a_minute} attempts in 60 s"
    );
    cancel.cancel();
    task.await.unwrap();
}
