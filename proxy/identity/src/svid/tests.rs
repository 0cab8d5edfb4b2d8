//! X.509-SVID validation against certificates made by rcgen in each test: the shapes the SPIFFE
//! X509-SVID spec requires (among them the cases of the go-spiffe, rust-spiffe and spiffe-rustls
//! certificate fixtures, rebuilt here: the fixtures themselves run in `.ci/conformance/tests/spiffe.rs` (a CI-only stage)),
//! the pairing of a chain with its private key, and trust, time and EKU checks at chosen times.

use std::path::Path;
use std::time::Duration;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::*;
use crate::pem_source::{parse_certs, parse_key, PemError};
use crate::{CredentialStore, Credentials, MAX_ID_LEN};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// What [`Credentials::new`] checks of a chain's shape: the leaf, then every signing cert.
fn check_shape(chain: &[CertificateDer<'_>]) -> Result<LeafInfo, SvidError> {
    let (leaf, signers) = chain.split_first().ok_or(SvidError::NoCertificate)?;
    let info = check_leaf(leaf)?;
    for c in signers {
        check_signing_cert(c)?;
    }
    Ok(info)
}

fn provider() -> CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

fn td(name: &str) -> TrustDomain {
    TrustDomain::parse(name).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Bundles with one entry per trust domain.
fn bundles(entries: &[(&str, &CertificateDer<'static>)]) -> TrustBundles {
    let mut b = TrustBundles::new();
    for (name, cert) in entries {
        b.insert(td(name), vec![(*cert).clone()])
            .unwrap_or_else(|e| panic!("bundle for {name}: {e}"));
    }
    b
}

/// Midnight UTC of a date, as a verification time.
fn at(year: i32, month: u8, day: u8) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(secs(year, month, day) as u64))
}

fn secs(year: i32, month: u8, day: u8) -> i64 {
    let t = rcgen::date_time_ymd(year, month, day).unix_timestamp();
    assert!(t >= 0, "{year}-{month}-{day} is before 1970");
    t
}

/// The file name PEM parse errors name.
const PEM_PATH: &str = "/run/svid/svid.pem";

fn parse_pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    parse_certs(Path::new(PEM_PATH), pem.as_bytes())
}

fn parse_pem_key(pem: &str) -> Result<PrivateKeyDer<'static>, PemError> {
    parse_key(Path::new(PEM_PATH), pem.as_bytes())
}

fn load(
    chain: &[CertificateDer<'static>],
    key: &KeyPair,
    bundles: &TrustBundles,
) -> Result<Credentials, SvidError> {
    Credentials::new(chain.to_vec(), pkcs8(key), bundles.clone(), &provider())
}

// ---------------------------------------------------------------------------------------------
// SVID shapes and keys: the cases of the go-spiffe, rust-spiffe and spiffe-rustls fixtures
// ---------------------------------------------------------------------------------------------

#[test]
fn good_pem_svids_pass_the_shape_checks_and_load_with_their_key() {
    let root = root_ca("example.org root");
    let mid = intermediate_ca("example.org intermediate", &root);
    let rsa = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("generating an RSA key");
    let leaf_only = sign(&leaf_params(ID), &rsa, &root).pem();
    let (leaf, ec) = issue_with_key(&leaf_params(ID), &mid);
    let with_mid = leaf.pem() + &mid.pem();
    let (rsa_pem, ec_pem) = (rsa.serialize_pem(), ec.serialize_pem());
    let cert_then_key = format!("{leaf_only}{rsa_pem}");
    let key_then_cert = format!("{rsa_pem}{leaf_only}");
    let bundle = bundles(&[("example.org", root.der())]);
    for (what, chain_pem, key_pem, certs) in [
        ("leaf only, RSA key", &leaf_only, &rsa_pem, 1),
        ("leaf and intermediate, ECDSA key", &with_mid, &ec_pem, 2),
        (
            "certificate and key in one PEM",
            &cert_then_key,
            &cert_then_key,
            1,
        ),
        (
            "key and certificate in one PEM",
            &key_then_cert,
            &key_then_cert,
            1,
        ),
    ] {
        let chain = parse_pem_certs(chain_pem).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(chain.len(), certs, "{what}");
        let info = check_shape(&chain).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(info.id.as_str(), ID, "{what}");
        assert_eq!(info.id.trust_domain(), td("example.org"), "{what}");
        let key = parse_pem_key(key_pem).unwrap_or_else(|e| panic!("{what}: {e}"));
        let creds = Credentials::new(chain.clone(), key, bundle.clone(), &provider())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(creds.leaf, info, "{what}");
        assert_eq!(creds.key.cert, chain, "{what}");
        let verified = verify_chain(&chain, &bundle, UnixTime::now(), Purpose::Server);
        assert_eq!(verified, Ok(info), "{what}");
    }
}

#[test]
fn leaf_info_carries_the_serial_and_validity() {
    let ca = root_ca("example.org root");
    let mut params = leaf_params(ID);
    // The high bit is set, so DER adds a 00 sign byte, which the raw serial keeps.
    params.serial_number = Some(SerialNumber::from_slice(&[0xc0, 0xff, 0xee, 0x00, 0x2a]));
    params.not_before =
        rcgen::date_time_ymd(2021, 2, 3) + Duration::from_secs(4 * 3600 + 5 * 60 + 6);
    params.not_after = rcgen::date_time_ymd(2022, 2, 3);
    let info = check_leaf(&issue(&params, &ca)).expect("good leaf");
    assert_eq!(info.serial, "00:c0:ff:ee:00:2a");
    assert_eq!(info.not_before, secs(2021, 2, 3) + 14_706);
    assert_eq!(info.not_after, secs(2022, 2, 3));
}

#[test]
fn good_der_svids_pass_the_shape_checks_and_load_with_their_key() {
    let root = root_ca("example.org root");
    let mid = intermediate_ca("example.org intermediate", &root);
    let (chained, chained_key) = issue_with_key(&leaf_params(ID), &mid);
    let mut params = leaf_params(ID);
    params.subject_alt_names.push(dns("web.example.org"));
    let (with_dns, with_dns_key) = issue_with_key(&params, &root);
    let mut params = leaf_params(ID);
    params.distinguished_name = DistinguishedName::new();
    let (no_subject, no_subject_key) = issue_with_key(&params, &root);
    let bundle = bundles(&[("example.org", root.der())]);
    for (what, chain, key) in [
        (
            "leaf and intermediate",
            vec![chained.der().clone(), mid.der().clone()],
            chained_key,
        ),
        (
            "leaf with a DNS SAN too",
            vec![with_dns.der().clone()],
            with_dns_key,
        ),
        (
            "leaf with an empty subject",
            vec![no_subject.der().clone()],
            no_subject_key,
        ),
    ] {
        let info = check_shape(&chain).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(info.id.as_str(), ID, "{what}");
        let key = PrivateKeyDer::try_from(key.serialize_der()).expect("a PKCS#8 DER key");
        let creds = Credentials::new(chain, key, bundle.clone(), &provider())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(creds.leaf, info, "{what}");
    }
    // The certificates are what they claim to be.
    let cert = parse(with_dns.der()).expect("leaf with a DNS SAN");
    let san = cert.subject_alternative_name().expect("SAN").expect("SAN");
    let dns_names = san.value.general_names.iter();
    let dns_names = dns_names.filter(|n| matches!(n, GeneralName::DNSName(_)));
    assert_eq!(dns_names.count(), 1);
    let cert = parse(no_subject.der()).expect("leaf with an empty subject");
    assert_eq!(cert.subject().iter().count(), 0);
}

/// A chain (leaf first) that breaks one rule of the X509-SVID spec, the key of its leaf, and
/// why it is refused.
type Wrong = (
    &'static str,
    Vec<CertificateDer<'static>>,
    KeyPair,
    SvidError,
);

/// The refusals of go-spiffe's `wrong-*` fixtures (and rust-spiffe's DER copies of them).
fn wrong_svids(root: &Ca) -> Vec<Wrong> {
    let leaf = |what, edit: fn(&mut CertificateParams), expected| -> Wrong {
        let mut params = leaf_params(ID);
        edit(&mut params);
        let (cert, key) = issue_with_key(&params, root);
        (what, vec![cert.der().clone()], key, expected)
    };
    let signer = |what, edit: fn(&mut CertificateParams), expected| -> Wrong {
        let mut params = ca_params("example.org signer");
        edit(&mut params);
        let signer = CertifiedIssuer::signed_by(params, new_key(), &**root).expect("signing");
        let (cert, key) = issue_with_key(&leaf_params(ID), &signer);
        (
            what,
            vec![cert.der().clone(), signer.der().clone()],
            key,
            expected,
        )
    };
    vec![
        leaf(
            "leaf with a DNS SAN and no URI SAN",
            |p| p.subject_alt_names = vec![dns("web.example.org")],
            SvidError::NoSpiffeId,
        ),
        leaf(
            "leaf with the CA flag",
            |p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained),
            SvidError::LeafIsCa,
        ),
        leaf(
            "leaf without digitalSignature",
            |p| {
                p.key_usages = vec![
                    KeyUsagePurpose::KeyEncipherment,
                    KeyUsagePurpose::KeyAgreement,
                ]
            },
            SvidError::NoDigitalSignature,
        ),
        leaf(
            "leaf with keyCertSign",
            |p| p.key_usages.push(KeyUsagePurpose::KeyCertSign),
            SvidError::LeafKeyCertSign,
        ),
        leaf(
            "leaf with cRLSign",
            |p| p.key_usages.push(KeyUsagePurpose::CrlSign),
            SvidError::LeafCrlSign,
        ),
        signer(
            "signing certificate without the CA flag",
            |p| p.is_ca = IsCa::ExplicitNoCa,
            SvidError::SigningCertNotCa,
        ),
        signer(
            "signing certificate without keyCertSign",
            |p| p.key_usages = vec![KeyUsagePurpose::CrlSign],
            SvidError::SigningCertNoKeyCertSign,
        ),
    ]
}

#[test]
fn wrong_svids_are_refused_for_the_expected_reason() {
    let root = root_ca("example.org root");
    let bundle = bundles(&[("example.org", root.der())]);
    let mut reasons = Vec::new();
    for (what, chain, key, expected) in wrong_svids(&root) {
        assert_eq!(check_shape(&chain).as_ref(), Err(&expected), "{what}");
        // The same refusal when loading it as our own SVID and when a peer presents it.
        let loaded = load(&chain, &key, &bundle).map(|c| c.leaf);
        assert_eq!(loaded.as_ref(), Err(&expected), "{what}");
        let presented = verify_chain(&chain, &bundle, UnixTime::now(), Purpose::Client);
        assert_eq!(presented.as_ref(), Err(&expected), "{what}");
        if let [leaf, _signer] = chain.as_slice() {
            // The refusal comes from the signing certificate, not from the leaf.
            let info = check_leaf(leaf).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(info.id.as_str(), ID, "{what}");
        }
        reasons.push(expected.reason());
    }
    assert_eq!(
        reasons,
        [
            "no_spiffe_id",
            "leaf_is_ca",
            "no_digital_signature",
            "leaf_key_cert_sign",
            "leaf_crl_sign",
            "signing_cert_not_ca",
            "signing_cert_no_key_cert_sign",
        ]
    );
}

/// A well-formed PEM certificate block whose contents are not DER (base64 of "not DER").
const CORRUPT_CERT_PEM: &str =
    "-----BEGIN CERTIFICATE-----\nbm90IERFUg==\n-----END CERTIFICATE-----\n";
/// A well-formed PEM private-key block whose contents are no key (base64 of "not a key").
const CORRUPT_KEY_PEM: &str =
    "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n";

#[test]
fn corrupt_certificate_is_malformed() {
    let chain = parse_pem_certs(CORRUPT_CERT_PEM).expect("the PEM framing is fine");
    assert_eq!(chain.len(), 1);
    for got in [
        check_leaf(&chain[0]).map(drop),
        check_signing_cert(&chain[0]),
    ] {
        assert!(matches!(got, Err(SvidError::Malformed(_))), "{got:?}");
    }
    let root = root_ca("example.org root");
    let bundle = bundles(&[("example.org", root.der())]);
    let err = load(&chain, &new_key(), &bundle).expect_err("corrupt certificate");
    assert_eq!(err.reason(), "malformed_certificate");
}

#[test]
fn corrupt_key_is_refused_when_loading() {
    // No CERTIFICATE block in a key file.
    let err = parse_pem_certs(CORRUPT_KEY_PEM).expect_err("no certificate");
    assert!(matches!(err, PemError::Pem { .. }), "{err:?}");
    // The PEM framing is fine; the key itself is not, which loading reports.
    let key = parse_pem_key(CORRUPT_KEY_PEM).expect("a PRIVATE KEY block");
    let root = root_ca("example.org root");
    let chain = vec![issue(&leaf_params(ID), &root)];
    let bundle = bundles(&[("example.org", root.der())]);
    let err = Credentials::new(chain, key, bundle, &provider()).expect_err("corrupt key");
    assert!(
        matches!(&err, SvidError::Malformed(m) if m.starts_with("private key")),
        "{err:?}"
    );
}

#[test]
fn not_pem_is_a_clear_parse_error_naming_the_file() {
    let text = "this is not PEM\n";
    let err = parse_pem_certs(text).expect_err("certificates from text");
    assert!(matches!(err, PemError::Pem { .. }), "{err:?}");
    assert_eq!(err.to_string(), format!("{PEM_PATH}: no CERTIFICATE block"));
    let err = parse_pem_key(text).expect_err("key from text");
    assert!(matches!(err, PemError::Pem { .. }), "{err:?}");
    let err = err.to_string();
    assert!(
        err.starts_with(&format!("{PEM_PATH}: no usable private key")),
        "{err}"
    );
}

#[test]
fn corrupted_der_is_malformed_as_a_certificate_and_no_key() {
    let root = root_ca("example.org root");
    let good = issue(&leaf_params(ID), &root);
    for (what, bytes) in [
        ("text", b"corrupted".to_vec()),
        ("a truncated certificate", good[..good.len() / 2].to_vec()),
    ] {
        assert!(
            matches!(check_leaf(&bytes), Err(SvidError::Malformed(_))),
            "{what}"
        );
        assert!(
            matches!(check_signing_cert(&bytes), Err(SvidError::Malformed(_))),
            "{what}"
        );
        let mut b = TrustBundles::new();
        let err = b.insert(td("example.org"), vec![CertificateDer::from(bytes.clone())]);
        assert!(matches!(err, Err(SvidError::Malformed(_))), "{what}");
        assert!(PrivateKeyDer::try_from(bytes).is_err(), "{what}");
    }
}

#[test]
fn trailing_bytes_after_a_certificate_are_malformed() {
    // One certificate is expected: two concatenated DER certificates are not one.
    let root = root_ca("example.org root");
    let mid = intermediate_ca("example.org intermediate", &root);
    let leaf = issue(&leaf_params(ID), &mid);
    let trailing = Err(SvidError::Malformed(
        "trailing bytes after certificate".into(),
    ));
    let two = [leaf.as_ref(), mid.der().as_ref()].concat();
    assert_eq!(check_leaf(&two).map(|i| i.id), trailing);
    let two = [mid.der().as_ref(), leaf.as_ref()].concat();
    assert_eq!(check_signing_cert(&two), trailing.map(|_| ()));
}

#[test]
fn bundle_of_two_certificates_trusts_both() {
    let first = root_ca("example.org root 1");
    let second = root_ca("example.org root 2");
    let both = vec![first.der().clone(), second.der().clone()];
    let mut b = TrustBundles::new();
    b.insert(td("example.org"), both.clone())
        .expect("bundle of 2");
    assert_eq!(b.anchors(&td("example.org")).map(<[_]>::len), Some(2));
    assert_eq!(b.certs(&td("example.org")), Some(both.as_slice()));
    assert_eq!(b.trust_domains(), vec![&td("example.org")]);
    assert!(b.anchors(&td("example.com")).is_none());
    // Leaves of either root verify (as while a CA rotates).
    for ca in [&first, &second] {
        let leaf = [issue(&leaf_params(ID), ca)];
        let info = verify_chain(&leaf, &b, UnixTime::now(), Purpose::Server).expect("either root");
        assert_eq!(info.id.as_str(), ID);
    }
}

/// CAs in the forms of spiffe-rustls's fixtures, self-signed.
fn cas() -> Vec<(&'static str, Ca)> {
    let mut uri_only = ca_params("URI-only CA");
    uri_only.key_usages = Vec::new();
    uri_only.subject_alt_names = vec![uri("spiffe://example.org")];
    let mut signer = ca_params("SPIFFE signer");
    signer.key_usages.push(KeyUsagePurpose::DigitalSignature);
    signer.subject_alt_names = vec![uri("spiffe://example.org/signer")];
    let self_signed = |p| CertifiedIssuer::self_signed(p, new_key()).expect("self-signing");
    vec![
        (
            "CA with keyCertSign and cRLSign",
            root_ca("example.org root"),
        ),
        ("CA with a URI SAN and no key usage", self_signed(uri_only)),
        (
            "CA with a SPIFFE ID and digitalSignature",
            self_signed(signer),
        ),
    ]
}

#[test]
fn leaves_are_checked_for_shape() {
    let root = root_ca("example.org root");
    let mut with_dns = leaf_params(ID);
    with_dns.subject_alt_names.push(dns("example.org"));
    let mut bare = CertificateParams::default();
    bare.distinguished_name
        .push(DnType::CommonName, "no SPIFFE ID");
    let mut no_key_usage = leaf_params(ID);
    no_key_usage.key_usages = Vec::new();
    let mut no_digital_signature = leaf_params(ID);
    no_digital_signature.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
    let mut cases = vec![
        (
            "leaf with DNS and URI SANs",
            issue(&with_dns, &root),
            Ok(ID),
        ),
        (
            "leaf with a URI SAN only",
            issue(&leaf_params(ID), &root),
            Ok(ID),
        ),
        (
            "certificate without SAN, key usage or basic constraints",
            issue(&bare, &root),
            Err(SvidError::NoSpiffeId),
        ),
        (
            "leaf without key usage",
            issue(&no_key_usage, &root),
            Err(SvidError::NoKeyUsage),
        ),
        (
            "leaf without digitalSignature",
            issue(&no_digital_signature, &root),
            Err(SvidError::NoDigitalSignature),
        ),
    ];
    // A CA is never a leaf, whether or not it carries a SPIFFE ID.
    for (what, ca) in cas() {
        cases.push((what, ca.der().clone(), Err(SvidError::LeafIsCa)));
    }
    for (what, cert, expected) in cases {
        let got = check_leaf(&cert).map(|info| info.id.to_string());
        assert_eq!(got, expected.map(str::to_owned), "{what}");
    }
}

#[test]
fn cas_are_signing_certs_and_never_peer_leaves() {
    let cas = cas();
    let bundle = bundles(&[("example.org", cas[0].1.der())]);
    for (what, ca) in &cas {
        assert_eq!(check_signing_cert(ca.der()), Ok(()), "{what}");
        let presented = verify_chain(
            &[ca.der().clone()],
            &bundle,
            UnixTime::now(),
            Purpose::Client,
        );
        assert_eq!(presented.expect_err(what), SvidError::LeafIsCa, "{what}");
    }
    let leaf = issue(&leaf_params(ID), &cas[0].1);
    assert_eq!(check_signing_cert(&leaf), Err(SvidError::SigningCertNotCa));
}

#[test]
fn leaves_verify_against_their_own_ca_only() {
    let a = root_ca("example.org root A");
    let b = root_ca("example.org root B");
    let (bundle_a, bundle_b) = (
        bundles(&[("example.org", a.der())]),
        bundles(&[("example.org", b.der())]),
    );
    let mut params = leaf_params(ID);
    params.not_before = rcgen::date_time_ymd(2030, 1, 1);
    params.not_after = rcgen::date_time_ymd(2031, 1, 1);
    let uri_only = [issue(&params, &b)];
    params.subject_alt_names.push(dns("example.org"));
    let with_dns = [issue(&params, &a)];
    // No server name is involved: only the SPIFFE ID and the trust domain's bundle count.
    for (what, leaf, own, other) in [
        ("leaf with a DNS SAN too", &with_dns, &bundle_a, &bundle_b),
        ("leaf with a URI SAN only", &uri_only, &bundle_b, &bundle_a),
    ] {
        let check = |bundle, t, purpose| verify_chain(leaf, bundle, t, purpose);
        for purpose in [Purpose::Server, Purpose::Client] {
            let info = check(own, at(2030, 6, 1), purpose)
                .unwrap_or_else(|e| panic!("{what}, {purpose:?}: {e}"));
            assert_eq!(info.id.as_str(), ID, "{what}");
        }
        let crossed = check(other, at(2030, 6, 1), Purpose::Server);
        assert!(
            matches!(crossed, Err(SvidError::UntrustedChain(_))),
            "{what}: {crossed:?}"
        );
        let later = check(own, at(2031, 6, 1), Purpose::Server);
        assert_eq!(later, Err(SvidError::Expired), "{what}");
    }
}

#[test]
fn mismatched_keys_are_refused_and_matching_ones_accepted() {
    let root = root_ca("example.org root");
    let mid = intermediate_ca("example.org intermediate", &root);
    let bundle = bundles(&[("example.org", root.der())]);
    let rsa = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("generating an RSA key");
    let rsa_leaf = vec![sign(&leaf_params(ID), &rsa, &root).der().clone()];
    let (ec_leaf, ec) = issue_with_key(&leaf_params(ID), &mid);
    let ec_chain = vec![ec_leaf.der().clone(), mid.der().clone()];
    for (chain, key) in [(&rsa_leaf, &rsa), (&ec_chain, &ec)] {
        let creds = load(chain, key, &bundle).unwrap_or_else(|e| panic!("matching pair: {e}"));
        assert_eq!(creds.id().as_str(), ID);
    }
    for (what, chain, key) in [
        ("RSA leaf, ECDSA key", &rsa_leaf, &ec),
        ("ECDSA leaf and intermediate, RSA key", &ec_chain, &rsa),
        ("ECDSA leaf, another ECDSA key", &ec_chain, &new_key()),
    ] {
        let err = load(chain, key, &bundle).expect_err(what);
        assert_eq!(err, SvidError::KeyMismatch, "{what}");
        assert_eq!(err.reason(), "key_mismatch");
    }
}

#[test]
fn credentials_need_a_certificate_and_our_bundle() {
    let root = root_ca("example.org root");
    let (leaf, key) = issue_with_key(&leaf_params(ID), &root);
    let ours = bundles(&[("example.org", root.der())]);
    let err = load(&[], &key, &ours).expect_err("no chain");
    assert_eq!(err, SvidError::NoCertificate);
    let other = bundles(&[("example.com", root.der())]);
    let err = load(&[leaf.der().clone()], &key, &other).expect_err("no bundle for example.org");
    assert_eq!(err, SvidError::UnknownTrustDomain("example.org".into()));
}

// ---------------------------------------------------------------------------------------------
// Fresh certificates (rcgen)
// ---------------------------------------------------------------------------------------------

type Ca = CertifiedIssuer<'static, KeyPair>;

fn new_key() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generating a P-256 key")
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

/// A self-signed root CA (P-256, CA, keyCertSign + cRLSign, valid 1975..4096).
fn root_ca(name: &str) -> Ca {
    CertifiedIssuer::self_signed(ca_params(name), new_key()).expect("self-signing a CA")
}

/// An intermediate CA signed by `parent`.
fn intermediate_ca(name: &str, parent: &Ca) -> Ca {
    CertifiedIssuer::signed_by(ca_params(name), new_key(), &**parent).expect("signing a CA")
}

fn uri(u: &str) -> SanType {
    SanType::URI(Ia5String::try_from(u).expect("URI is IA5"))
}

fn dns(name: &str) -> SanType {
    SanType::DnsName(Ia5String::try_from(name).expect("DNS name is IA5"))
}

/// A well-formed X509-SVID leaf for `id`: not a CA, digitalSignature, server and client auth.
fn leaf_params(id: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "workload");
    p.subject_alt_names = vec![uri(id)];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p
}

/// Signs `params` for the public key of `key` with `ca`.
fn sign(params: &CertificateParams, key: &KeyPair, ca: &Ca) -> rcgen::Certificate {
    params.signed_by(key, &**ca).expect("signing a certificate")
}

/// Signs `params` with `ca` for a new P-256 key; returns the certificate and its key.
fn issue_with_key(params: &CertificateParams, ca: &Ca) -> (rcgen::Certificate, KeyPair) {
    let key = new_key();
    (sign(params, &key, ca), key)
}

fn issue(params: &CertificateParams, ca: &Ca) -> CertificateDer<'static> {
    issue_with_key(params, ca).0.der().clone()
}

/// The key as rustls takes it (PKCS#8).
fn pkcs8(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

const ID: &str = "spiffe://example.org/ns/default/sa/web";

fn verify(chain: &[CertificateDer<'_>], ca: &Ca, purpose: Purpose) -> Result<LeafInfo, SvidError> {
    verify_chain(
        chain,
        &bundles(&[("example.org", ca.der())]),
        UnixTime::now(),
        purpose,
    )
}

#[test]
fn valid_leaf_is_accepted_for_client_and_server() {
    let ca = root_ca("example.org root");
    let leaf = issue(&leaf_params(ID), &ca);
    for purpose in [Purpose::Client, Purpose::Server] {
        let info = verify(std::slice::from_ref(&leaf), &ca, purpose)
            .unwrap_or_else(|e| panic!("{purpose:?}: {e}"));
        assert_eq!(info.id.as_str(), ID);
        assert_eq!(info.id.path(), "/ns/default/sa/web");
        assert_eq!(info.not_before, secs(1975, 1, 1));
        assert_eq!(info.not_after, secs(4096, 1, 1));
    }
}

#[test]
fn leaf_and_intermediate_are_accepted_and_the_intermediate_is_needed() {
    let root = root_ca("example.org root");
    let mid = intermediate_ca("example.org intermediate", &root);
    let leaf = issue(&leaf_params(ID), &mid);
    let info = verify(&[leaf.clone(), mid.der().clone()], &root, Purpose::Server)
        .expect("leaf + intermediate");
    assert_eq!(info.id.as_str(), ID);
    // Without the intermediate the leaf does not reach the root.
    let err = verify(&[leaf], &root, Purpose::Server).expect_err("missing intermediate");
    assert!(matches!(err, SvidError::UntrustedChain(_)), "{err:?}");
    assert_eq!(err.reason(), "untrusted_chain");
}

#[test]
fn intermediate_must_be_a_signing_cert() {
    let root = root_ca("example.org root");
    let mut params = ca_params("not really a CA");
    params.is_ca = IsCa::ExplicitNoCa;
    let not_ca = CertifiedIssuer::signed_by(params, new_key(), &*root).expect("signing");
    let leaf = issue(&leaf_params(ID), &not_ca);
    let err = verify(&[leaf, not_ca.der().clone()], &root, Purpose::Server);
    assert_eq!(err.expect_err("non-CA signer"), SvidError::SigningCertNotCa);
}

#[test]
fn trust_domain_without_a_bundle_is_unknown() {
    let ca = root_ca("other.org root");
    let leaf = issue(&leaf_params("spiffe://other.org/web"), &ca);
    // The CA that signed it is known, but only as example.org's: bundles are never merged.
    let err = verify(&[leaf], &ca, Purpose::Client).expect_err("other.org has no bundle");
    assert_eq!(err, SvidError::UnknownTrustDomain("other.org".into()));
    assert_eq!(err.reason(), "wrong_trust_domain");
}

#[test]
fn leaf_claiming_one_trust_domain_but_signed_by_another_is_untrusted() {
    let a = root_ca("a.org root");
    let b = root_ca("b.org root");
    let all = bundles(&[("a.org", a.der()), ("b.org", b.der())]);
    let now = UnixTime::now();
    let forged = issue(&leaf_params("spiffe://a.org/web"), &b);
    let err = verify_chain(&[forged], &all, now, Purpose::Server).expect_err("B signs for A");
    assert!(matches!(err, SvidError::UntrustedChain(_)), "{err:?}");
    // The same leaf signed by A's own root is fine.
    let genuine = issue(&leaf_params("spiffe://a.org/web"), &a);
    let info = verify_chain(&[genuine], &all, now, Purpose::Server).expect("A signs for A");
    assert_eq!(info.id.trust_domain(), td("a.org"));
}

#[test]
fn validity_window_is_enforced_at_the_given_time() {
    let ca = root_ca("example.org root");
    let mut params = leaf_params(ID);
    params.not_before = rcgen::date_time_ymd(2030, 1, 1);
    params.not_after = rcgen::date_time_ymd(2031, 1, 1);
    let leaf = [issue(&params, &ca)];
    let b = bundles(&[("example.org", ca.der())]);
    let check = |t| verify_chain(&leaf, &b, t, Purpose::Client);
    let info = check(at(2030, 6, 1)).expect("inside the window");
    assert_eq!(
        (info.not_before, info.not_after),
        (secs(2030, 1, 1), secs(2031, 1, 1))
    );
    let expired = check(at(2031, 6, 1)).expect_err("after notAfter");
    assert_eq!(expired, SvidError::Expired);
    assert_eq!(expired.reason(), "expired");
    let early = check(at(2029, 6, 1)).expect_err("before notBefore");
    assert_eq!(early, SvidError::NotYetValid);
    assert_eq!(early.reason(), "not_yet_valid");
}

#[test]
fn expired_and_future_leaves_are_refused_now() {
    let ca = root_ca("example.org root");
    let mut old = leaf_params(ID);
    old.not_before = rcgen::date_time_ymd(2000, 1, 1);
    old.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let err = verify(&[issue(&old, &ca)], &ca, Purpose::Server);
    assert_eq!(err.expect_err("expired"), SvidError::Expired);
    let mut future = leaf_params(ID);
    future.not_before = rcgen::date_time_ymd(4000, 1, 1);
    let err = verify(&[issue(&future, &ca)], &ca, Purpose::Server);
    assert_eq!(err.expect_err("not yet valid"), SvidError::NotYetValid);
}

#[test]
fn ca_certificate_as_leaf_is_refused() {
    let ca = root_ca("example.org root");
    let mut params = leaf_params(ID);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    let err = verify(&[issue(&params, &ca)], &ca, Purpose::Server).expect_err("CA leaf");
    assert_eq!(err, SvidError::LeafIsCa);
    assert_eq!(err.reason(), "leaf_is_ca");
}

#[test]
fn leaf_key_usage_is_checked() {
    let ca = root_ca("example.org root");
    for (usages, expected) in [
        (vec![], SvidError::NoKeyUsage),
        (
            vec![KeyUsagePurpose::KeyEncipherment],
            SvidError::NoDigitalSignature,
        ),
        (
            vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
            ],
            SvidError::LeafKeyCertSign,
        ),
        (
            vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign],
            SvidError::LeafCrlSign,
        ),
    ] {
        let mut params = leaf_params(ID);
        params.key_usages = usages.clone();
        let got = verify(&[issue(&params, &ca)], &ca, Purpose::Client);
        assert_eq!(got.expect_err("bad key usage"), expected, "{usages:?}");
    }
}

#[test]
fn exactly_one_uri_san_is_allowed() {
    let ca = root_ca("example.org root");
    let mut params = leaf_params(ID);
    params
        .subject_alt_names
        .push(uri("spiffe://example.org/other"));
    let err = verify(&[issue(&params, &ca)], &ca, Purpose::Server).expect_err("two URI SANs");
    assert_eq!(err, SvidError::MultipleUriSans(2));
    assert_eq!(err.reason(), "multiple_uri_sans");
    assert!(err.to_string().contains("2 URI SANs"), "{err}");

    // DNS SANs beside the one URI SAN do not count.
    let mut params = leaf_params(ID);
    params.subject_alt_names.push(dns("web.example.org"));
    verify(&[issue(&params, &ca)], &ca, Purpose::Server).expect("URI + DNS SAN");

    let mut params = leaf_params(ID);
    params.subject_alt_names = vec![dns("web.example.org")];
    let err = verify(&[issue(&params, &ca)], &ca, Purpose::Server).expect_err("DNS SAN only");
    assert_eq!(err, SvidError::NoSpiffeId);
    assert_eq!(err.reason(), "no_spiffe_id");
}

#[test]
fn id_without_path_is_refused() {
    let ca = root_ca("example.org root");
    let params = leaf_params("spiffe://example.org");
    let err = verify(&[issue(&params, &ca)], &ca, Purpose::Client).expect_err("no path");
    assert_eq!(err, SvidError::IdWithoutPath("spiffe://example.org".into()));
    assert_eq!(err.reason(), "id_without_path");
}

#[test]
fn uri_san_must_be_a_valid_spiffe_id_of_at_most_2048_bytes() {
    let ca = root_ca("example.org root");
    let prefix = "spiffe://example.org/";
    let longest = format!("{prefix}{}", "a".repeat(MAX_ID_LEN - prefix.len()));
    assert_eq!(longest.len(), 2048);
    let info =
        verify(&[issue(&leaf_params(&longest), &ca)], &ca, Purpose::Client).expect("2048-byte ID");
    assert_eq!(info.id.as_str(), longest);

    let too_long = format!("{longest}a");
    for (id, expected) in [
        (too_long.as_str(), IdError::TooLong),
        ("https://example.org/web", IdError::BadScheme),
        ("spiffe://Example.org/web", IdError::BadTrustDomainChar),
        ("spiffe://example.org/a/../b", IdError::DotSegment),
    ] {
        let got = verify(&[issue(&leaf_params(id), &ca)], &ca, Purpose::Client);
        assert_eq!(
            got.expect_err(id),
            SvidError::InvalidSpiffeId(expected),
            "{id}"
        );
    }
    assert_eq!(
        SvidError::InvalidSpiffeId(IdError::TooLong).reason(),
        "invalid_spiffe_id"
    );
}

#[test]
fn eku_must_allow_the_presenting_side_when_present() {
    let ca = root_ca("example.org root");
    let with_eku = |ekus: Vec<ExtendedKeyUsagePurpose>| {
        let mut params = leaf_params(ID);
        params.extended_key_usages = ekus;
        [issue(&params, &ca)]
    };

    let server_only = with_eku(vec![ExtendedKeyUsagePurpose::ServerAuth]);
    verify(&server_only, &ca, Purpose::Server).expect("serverAuth as server");
    let err = verify(&server_only, &ca, Purpose::Client).expect_err("serverAuth as client");
    assert_eq!(err, SvidError::WrongEku(Purpose::Client));
    assert_eq!(err.reason(), "wrong_eku");

    let client_only = with_eku(vec![ExtendedKeyUsagePurpose::ClientAuth]);
    verify(&client_only, &ca, Purpose::Client).expect("clientAuth as client");
    let err = verify(&client_only, &ca, Purpose::Server).expect_err("clientAuth as server");
    assert_eq!(err, SvidError::WrongEku(Purpose::Server));

    // No EKU extension at all: any purpose.
    let none = with_eku(vec![]);
    for purpose in [Purpose::Client, Purpose::Server] {
        verify(&none, &ca, purpose).unwrap_or_else(|e| panic!("no EKU as {purpose:?}: {e}"));
    }
}

#[test]
fn chains_longer_than_16_certificates_are_refused() {
    let root = root_ca("example.org root");
    let mid = intermediate_ca("example.org intermediate", &root);
    let leaf = issue(&leaf_params(ID), &mid);
    let chain = |len: usize| {
        let mut c = vec![leaf.clone()];
        c.resize(len, mid.der().clone());
        c
    };
    assert_eq!(MAX_CHAIN_LEN, 16);
    let info = verify(&chain(MAX_CHAIN_LEN), &root, Purpose::Server).expect("16 certificates");
    assert_eq!(info.id.as_str(), ID);
    let err = verify(&chain(MAX_CHAIN_LEN + 1), &root, Purpose::Server).expect_err("17");
    assert_eq!(err, SvidError::ChainTooLong);
    assert_eq!(err.reason(), "chain_too_long");
}

#[test]
fn empty_chain_is_no_certificate() {
    let ca = root_ca("example.org root");
    let err = verify(&[], &ca, Purpose::Client).expect_err("empty chain");
    assert_eq!(err, SvidError::NoCertificate);
    assert_eq!(err.reason(), "no_certificate");
}

#[test]
fn garbage_leaf_is_malformed() {
    let ca = root_ca("example.org root");
    let garbage = CertificateDer::from(b"not a certificate".to_vec());
    let err = verify(&[garbage], &ca, Purpose::Client).expect_err("garbage");
    assert!(matches!(err, SvidError::Malformed(_)), "{err:?}");
    assert_eq!(err.reason(), "malformed_certificate");
}

#[test]
fn bundle_of_garbage_is_malformed_and_leaves_the_set_unchanged() {
    let mut b = TrustBundles::new();
    let err = b
        .insert(
            td("example.org"),
            vec![CertificateDer::from(b"garbage".to_vec())],
        )
        .expect_err("garbage bundle");
    assert!(
        matches!(&err, SvidError::Malformed(m) if m.contains("example.org")),
        "{err:?}"
    );
    assert!(b.anchors(&td("example.org")).is_none());
    assert!(b.trust_domains().is_empty());
}

#[test]
fn bundle_insert_replaces_the_trust_domains_previous_bundle() {
    let old = root_ca("old root");
    let new = root_ca("new root");
    let leaf = [issue(&leaf_params(ID), &old)];
    let mut b = bundles(&[("example.org", old.der())]);
    verify_chain(&leaf, &b, UnixTime::now(), Purpose::Server).expect("old root trusted");
    b.insert(td("example.org"), vec![new.der().clone()])
        .expect("new bundle");
    let err = verify_chain(&leaf, &b, UnixTime::now(), Purpose::Server).expect_err("old root gone");
    assert!(matches!(err, SvidError::UntrustedChain(_)), "{err:?}");
}

#[test]
fn credential_store_never_hands_out_credentials_outside_their_validity() {
    let ca = root_ca("example.org root");
    let mut params = leaf_params(ID);
    params.not_before = rcgen::date_time_ymd(2030, 1, 1);
    params.not_after = rcgen::date_time_ymd(2031, 1, 1);
    let (cert, key) = issue_with_key(&params, &ca);
    let creds = load(
        &[cert.der().clone()],
        &key,
        &bundles(&[("example.org", ca.der())]),
    )
    .expect("fresh credentials");

    let store = CredentialStore::new();
    assert!(store.current_at(secs(2030, 6, 1)).is_none(), "empty store");
    store.set(creds);
    let current = store.current_at(secs(2030, 6, 1)).expect("inside validity");
    assert_eq!(current.id().as_str(), ID);
    assert!(store.current_at(secs(2031, 6, 1)).is_none(), "expired");
    assert!(
        store.current_at(secs(2029, 6, 1)).is_none(),
        "not yet valid"
    );
    // Held for status reporting even when unusable.
    assert!(store.latest().is_some());
}

#[test]
fn reasons_are_distinct() {
    let all = [
        SvidError::NoCertificate,
        SvidError::Malformed(String::new()),
        SvidError::ChainTooLong,
        SvidError::NoSpiffeId,
        SvidError::MultipleUriSans(2),
        SvidError::InvalidSpiffeId(IdError::Empty),
        SvidError::IdWithoutPath(String::new()),
        SvidError::LeafIsCa,
        SvidError::NoKeyUsage,
        SvidError::NoDigitalSignature,
        SvidError::LeafKeyCertSign,
        SvidError::LeafCrlSign,
        SvidError::SigningCertNotCa,
        SvidError::SigningCertNoKeyCertSign,
        SvidError::UnknownTrustDomain(String::new()),
        SvidError::UntrustedChain(String::new()),
        SvidError::Expired,
        SvidError::NotYetValid,
        SvidError::WrongEku(Purpose::Client),
        SvidError::UnexpectedId {
            expected: String::new(),
            got: String::new(),
        },
        SvidError::KeyMismatch,
    ];
    let mut reasons: Vec<&str> = all.iter().map(SvidError::reason).collect();
    reasons.sort_unstable();
    reasons.dedup();
    assert_eq!(reasons.len(), all.len());
}
