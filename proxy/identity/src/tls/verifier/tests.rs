use std::io;

use rcgen::string::Ia5String;
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::*;
use crate::svid::parse_count;
use crate::tls::{provider, HandshakeError};
use crate::Credentials;

type Ca = CertifiedIssuer<'static, KeyPair>;

fn key() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

fn ca(issuer: Option<&Ca>, not_after_year: i32) -> Ca {
    let mut p = CertificateParams::default();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    p.not_after = date_time_ymd(not_after_year, 1, 1);
    match issuer {
        None => CertifiedIssuer::self_signed(p, key()).unwrap(),
        Some(i) => CertifiedIssuer::signed_by(p, key(), &**i).unwrap(),
    }
}

/// A leaf SVID for `id` signed by `issuer`, valid until the start of `not_after_year`.
fn leaf(issuer: &Ca, id: &str, not_after_year: i32) -> (CertificateDer<'static>, KeyPair) {
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI(Ia5String::try_from(id).unwrap())];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.not_after = date_time_ymd(not_after_year, 1, 1);
    let k = key();
    let der = p.signed_by(&k, &**issuer).unwrap().der().clone();
    (der, k)
}

/// Credentials of our own (`spiffe://td/server`) trusting `root`.
fn creds(root: &Ca) -> Credentials {
    let (der, k) = leaf(root, "spiffe://td/server", 2100);
    let mut bundles = TrustBundles::new();
    let td = SpiffeId::parse("spiffe://td/server")
        .unwrap()
        .trust_domain();
    bundles
        .insert(td, vec![CertificateDer::from(root.der().to_vec())])
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(k.serialize_der()));
    Credentials::new(vec![der], key, bundles, &provider()).unwrap()
}

fn at(year: i32) -> UnixTime {
    let t = date_time_ymd(year, 1, 1).unix_timestamp();
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(t as u64))
}

/// The label of a refusal, as logs and metrics spell it.
fn label(r: Result<ClientCertVerified, rustls::Error>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => HandshakeError::classify(&io::Error::other(e)).label(),
    }
}

fn verifier(root: &Ca) -> (SpiffeClientVerifier, Arc<CredentialStore>) {
    let store = CredentialStore::new();
    store.set(creds(root));
    (SpiffeClientVerifier::new(store.clone(), provider()), store)
}

#[test]
fn a_chain_is_verified_once_then_remembered() {
    let root = ca(None, 2100);
    let (v, _store) = verifier(&root);
    let (client, _) = leaf(&root, "spiffe://td/client", 2040);
    let before = parse_count::get();
    assert_eq!(label(v.verify_client_cert(&client, &[], at(2030))), "ok");
    assert_eq!(parse_count::get() - before, 1);
    for year in [2030, 2031, 2039] {
        assert_eq!(label(v.verify_client_cert(&client, &[], at(year))), "ok");
    }
    assert_eq!(parse_count::get() - before, 1, "no parse after the first");
    assert_eq!(v.chains.len(), 1);
    // Another leaf is another chain.
    let (other, _) = leaf(&root, "spiffe://td/other", 2040);
    assert_eq!(label(v.verify_client_cert(&other, &[], at(2030))), "ok");
    assert_eq!(v.chains.len(), 2);
}

#[test]
fn remembered_chains_still_expire_and_are_not_valid_early() {
    let root = ca(None, 2100);
    let (v, _store) = verifier(&root);
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI(
        Ia5String::try_from("spiffe://td/client").unwrap(),
    )];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.not_before = date_time_ymd(2030, 1, 1);
    p.not_after = date_time_ymd(2040, 1, 1);
    let client = p.signed_by(&key(), &*root).unwrap().der().clone();
    assert_eq!(label(v.verify_client_cert(&client, &[], at(2035))), "ok");
    assert_eq!(
        label(v.verify_client_cert(&client, &[], at(2041))),
        "expired"
    );
    assert_eq!(
        label(v.verify_client_cert(&client, &[], at(2029))),
        "not_yet_valid"
    );
    assert_eq!(label(v.verify_client_cert(&client, &[], at(2035))), "ok");
}

#[test]
fn a_new_bundle_verifies_again() {
    let root = ca(None, 2100);
    let (v, store) = verifier(&root);
    let (client, _) = leaf(&root, "spiffe://td/client", 2040);
    assert_eq!(label(v.verify_client_cert(&client, &[], at(2030))), "ok");
    // Our trust domain moved to another CA: the remembered chain no longer counts.
    store.set(creds(&ca(None, 2100)));
    assert_eq!(
        label(v.verify_client_cert(&client, &[], at(2030))),
        "untrusted_chain"
    );
    // And the old bundle back is a new bundle too: verified again, in full.
    store.set(creds(&root));
    let before = parse_count::get();
    assert_eq!(label(v.verify_client_cert(&client, &[], at(2030))), "ok");
    assert!(parse_count::get() > before);
}

#[test]
fn the_chain_is_valid_only_while_every_certificate_is() {
    let root = ca(None, 2100);
    let (v, _store) = verifier(&root);
    let intermediate = ca(Some(&root), 2035);
    let (client, _) = leaf(&intermediate, "spiffe://td/client", 2040);
    let chain = [CertificateDer::from(intermediate.der().to_vec())];
    assert_eq!(label(v.verify_client_cert(&client, &chain, at(2030))), "ok");
    assert_eq!(
        label(v.verify_client_cert(&client, &chain, at(2036))),
        "expired"
    );
    // The same leaf with other intermediates is not the remembered chain.
    assert_eq!(
        label(v.verify_client_cert(&client, &[], at(2030))),
        "untrusted_chain"
    );
    assert_eq!(label(v.verify_client_cert(&client, &chain, at(2030))), "ok");
}

#[test]
fn without_a_local_svid_nothing_remembered_is_accepted() {
    let root = ca(None, 2100);
    let (v, _store) = verifier(&root);
    let (client, _) = leaf(&root, "spiffe://td/client", 2040);
    assert_eq!(label(v.verify_client_cert(&client, &[], at(2030))), "ok");
    // Our own SVID is not valid after 2100.
    assert_eq!(
        label(v.verify_client_cert(&client, &[], at(2101))),
        "no_local_svid"
    );
}
