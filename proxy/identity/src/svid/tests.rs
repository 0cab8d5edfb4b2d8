//! X.509-SVID validation: shape checks against every certificate of the shared conformance
//! fixtures (`shared/conformance/spiffe/x509svid/`, mostly expired, so no dates involved), and
//! trust, time and EKU checks against fresh rcgen certificates verified at chosen times.

use std::path::PathBuf;
use std::time::Duration;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::*;
use crate::pem_source::{parse_certs, parse_key, PemError};
use crate::{CredentialStore, Credentials, MAX_ID_LEN};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/conformance/spiffe/x509svid"
);

const GO_ID: &str = "spiffe://example.org/workload-1";
const RUST_ID: &str = "spiffe://example.org/service";

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(FIXTURES).join(name)
}

fn fixture(name: &str) -> Vec<u8> {
    let path = fixture_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The certificates of a PEM fixture that is expected to parse.
fn pem_chain(name: &str) -> Vec<CertificateDer<'static>> {
    parse_certs(&fixture_path(name), &fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The private key of a PEM fixture that is expected to parse.
fn pem_key(name: &str) -> PrivateKeyDer<'static> {
    parse_key(&fixture_path(name), &fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Splits concatenated DER certificates (the rust-spiffe fixtures' format).
fn split_der(mut bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, SvidError> {
    let mut certs = Vec::new();
    while !bytes.is_empty() {
        let (rest, _) =
            X509Certificate::from_der(bytes).map_err(|e| SvidError::Malformed(e.to_string()))?;
        let (one, _) = bytes.split_at(bytes.len() - rest.len());
        certs.push(CertificateDer::from(one.to_vec()));
        bytes = rest;
    }
    Ok(certs)
}

fn der_chain(name: &str) -> Vec<CertificateDer<'static>> {
    split_der(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn der_key(name: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::try_from(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

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

/// Any well-formed CA certificate serves as the example.org bundle when only the shape and the
/// key of an SVID are under test ([`Credentials::new`] does not verify the chain).
fn example_org_bundle() -> TrustBundles {
    bundles(&[("example.org", &der_chain("spiffe-rustls/ca.der")[0])])
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

// ---------------------------------------------------------------------------------------------
// go-spiffe fixtures (PEM)
// ---------------------------------------------------------------------------------------------

#[test]
fn go_spiffe_good_svids_pass_the_shape_checks() {
    for (name, certs) in [
        ("go-spiffe/good-leaf-only.pem", 1),
        ("go-spiffe/good-leaf-and-intermediate.pem", 2),
        ("go-spiffe/good-cert-and-key.pem", 1),
        ("go-spiffe/good-key-and-cert.pem", 1),
    ] {
        let chain = pem_chain(name);
        assert_eq!(chain.len(), certs, "{name}");
        let info = check_shape(&chain).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(info.id.as_str(), GO_ID, "{name}");
        assert_eq!(info.id.trust_domain(), td("example.org"), "{name}");
        assert!(!info.serial.is_empty(), "{name}");
        assert!(info.not_before < info.not_after, "{name}");
    }
}

#[test]
fn go_spiffe_leaf_info_carries_the_serial_and_validity() {
    let info = check_leaf(&pem_chain("go-spiffe/good-leaf-only.pem")[0]).expect("good leaf");
    // openssl x509: serial F2B2E4C4EEC64ABB, 2020-03-30 19:00:37 to 2025-03-29 19:00:37 UTC.
    // The serial is the raw DER integer (with its leading 00 sign byte), hex with colons.
    assert_eq!(info.serial, "00:f2:b2:e4:c4:ee:c6:4a:bb");
    assert_eq!(info.not_before, 1_585_594_837);
    assert_eq!(info.not_after, 1_743_274_837);
}

/// The go-spiffe `wrong-*` certificates and their byte-identical rust-spiffe DER copies.
const WRONG: [(&str, SvidError); 7] = [
    ("wrong-leaf-empty-id", SvidError::NoSpiffeId),
    ("wrong-leaf-ca-true", SvidError::LeafIsCa),
    (
        "wrong-leaf-no-digital-signature",
        SvidError::NoDigitalSignature,
    ),
    ("wrong-leaf-cert-sign", SvidError::LeafKeyCertSign),
    ("wrong-leaf-crl-sign", SvidError::LeafCrlSign),
    ("wrong-intermediate-no-ca", SvidError::SigningCertNotCa),
    (
        "wrong-intermediate-no-key-cert-sign",
        SvidError::SigningCertNoKeyCertSign,
    ),
];

#[test]
fn go_spiffe_wrong_svids_are_refused_for_the_expected_reason() {
    for (stem, expected) in WRONG {
        let name = format!("go-spiffe/{stem}.pem");
        let got = check_shape(&pem_chain(&name)).expect_err(&name);
        assert_eq!(got, expected, "{name}");
    }
}

#[test]
fn rust_spiffe_wrong_svids_are_the_same_certificates_refused_the_same_way() {
    for (stem, expected) in WRONG {
        let name = format!("rust-spiffe/svid_x509_{stem}.der");
        let chain = der_chain(&name);
        assert_eq!(chain, pem_chain(&format!("go-spiffe/{stem}.pem")), "{name}");
        assert_eq!(check_shape(&chain).expect_err(&name), expected, "{name}");
    }
}

#[test]
fn wrong_intermediates_have_a_valid_leaf() {
    // The refusal comes from the second certificate, not the leaf.
    for name in [
        "go-spiffe/wrong-intermediate-no-ca.pem",
        "go-spiffe/wrong-intermediate-no-key-cert-sign.pem",
    ] {
        let chain = pem_chain(name);
        assert_eq!(chain.len(), 2, "{name}");
        let info = check_leaf(&chain[0]).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(info.id.as_str(), GO_ID);
    }
}

#[test]
fn go_spiffe_corrupt_certificate_is_malformed() {
    // A well-formed PEM block whose contents are not DER ("CORRUPT").
    let chain = pem_chain("go-spiffe/corrupt-cert.pem");
    assert_eq!(chain.len(), 1);
    assert!(matches!(
        check_leaf(&chain[0]),
        Err(SvidError::Malformed(_))
    ));
    assert!(matches!(
        check_signing_cert(&chain[0]),
        Err(SvidError::Malformed(_))
    ));
    let err = Credentials::new(
        chain,
        pem_key("go-spiffe/key-pkcs8-rsa.pem"),
        example_org_bundle(),
        &provider(),
    )
    .expect_err("corrupt certificate");
    assert_eq!(err.reason(), "malformed_certificate");
}

#[test]
fn go_spiffe_corrupt_key_is_refused() {
    let name = "go-spiffe/corrupt-key.pem";
    let path = fixture_path(name);
    // No CERTIFICATE block in a key file.
    let err = parse_certs(&path, &fixture(name)).expect_err("no certificate");
    assert!(matches!(err, PemError::Pem { .. }), "{err:?}");
    // The PEM framing is fine; the key itself is not ("CORRUPT"), which loading reports.
    let err = match parse_key(&path, &fixture(name)) {
        Err(e) => e.to_string(),
        Ok(key) => Credentials::new(
            pem_chain("go-spiffe/good-leaf-only.pem"),
            key,
            example_org_bundle(),
            &provider(),
        )
        .expect_err("corrupt key")
        .to_string(),
    };
    assert!(err.contains("private key"), "{err}");
}

#[test]
fn not_pem_is_a_clear_parse_error_naming_the_file() {
    let name = "go-spiffe/not-pem";
    let path = fixture_path(name);
    let bytes = fixture(name);
    let err = parse_certs(&path, &bytes).expect_err("certificates from not-pem");
    assert!(matches!(err, PemError::Pem { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&*path.to_string_lossy()), "{text}");
    assert!(text.contains("no CERTIFICATE block"), "{text}");
    let err = parse_key(&path, &bytes).expect_err("key from not-pem");
    assert!(matches!(err, PemError::Pem { .. }), "{err:?}");
    assert!(err.to_string().contains("no usable private key"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// rust-spiffe fixtures (DER)
// ---------------------------------------------------------------------------------------------

#[test]
fn rust_spiffe_good_svids_pass_the_shape_checks_and_match_their_keys() {
    for (name, key, certs, id) in [
        (
            "rust-spiffe/svid_x509_1-svid-chain.der",
            "rust-spiffe/svid_x509_1-key.der",
            2,
            RUST_ID,
        ),
        (
            "rust-spiffe/svid_x509_svid-with-dns.der",
            "rust-spiffe/svid_x509_svid-with-dns-key.der",
            1,
            RUST_ID,
        ),
        (
            "rust-spiffe/svid_x509_empty-subject-name.der",
            "rust-spiffe/svid_x509_empty-subject-name-key.der",
            1,
            "spiffe://example.org/test-empty-subject",
        ),
    ] {
        let chain = der_chain(name);
        assert_eq!(chain.len(), certs, "{name}");
        let info = check_shape(&chain).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(info.id.as_str(), id, "{name}");
        let creds = Credentials::new(chain, der_key(key), example_org_bundle(), &provider())
            .unwrap_or_else(|e| panic!("{name} with {key}: {e}"));
        assert_eq!(creds.id().as_str(), id, "{name}");
    }
}

#[test]
fn rust_spiffe_corrupted_is_a_parse_error_as_chain_and_as_key() {
    let bytes = fixture("rust-spiffe/svid_x509_corrupted");
    assert!(matches!(split_der(&bytes), Err(SvidError::Malformed(_))));
    assert!(matches!(check_leaf(&bytes), Err(SvidError::Malformed(_))));
    assert!(PrivateKeyDer::try_from(bytes.as_slice()).is_err());
    let bundle = fixture("rust-spiffe/bundle_x509_corrupted");
    assert!(matches!(split_der(&bundle), Err(SvidError::Malformed(_))));
}

#[test]
fn trailing_bytes_after_a_certificate_are_malformed() {
    // `check_leaf` takes exactly one certificate: a concatenated chain is not one.
    let bytes = fixture("rust-spiffe/svid_x509_1-svid-chain.der");
    let err = check_leaf(&bytes).expect_err("two certificates as one");
    assert_eq!(
        err,
        SvidError::Malformed("trailing bytes after certificate".into())
    );
}

#[test]
fn rust_spiffe_bundle_is_two_concatenated_certificates() {
    let certs = der_chain("rust-spiffe/bundle_x509_bundle.der");
    assert_eq!(certs.len(), 2);
    assert_eq!(
        certs[0].as_ref(),
        fixture("rust-spiffe/bundle_x509_cert1.der")
    );
    assert_eq!(
        certs[1].as_ref(),
        fixture("rust-spiffe/bundle_x509_cert2.der")
    );
    let mut b = TrustBundles::new();
    b.insert(td("example.org"), certs).expect("bundle of 2");
    assert_eq!(b.anchors(&td("example.org")).map(<[_]>::len), Some(2));
    assert_eq!(b.certs(&td("example.org")).map(<[_]>::len), Some(2));
    assert_eq!(b.trust_domains(), vec![&td("example.org")]);
    assert!(b.anchors(&td("example.com")).is_none());
}

// ---------------------------------------------------------------------------------------------
// spiffe-rustls fixtures (DER)
// ---------------------------------------------------------------------------------------------

fn rustls_fixture(name: &str) -> CertificateDer<'static> {
    let mut chain = der_chain(&format!("spiffe-rustls/{name}"));
    assert_eq!(chain.len(), 1, "{name}");
    chain.remove(0)
}

#[test]
fn spiffe_rustls_leaves_are_checked_for_shape() {
    for (name, expected) in [
        ("spiffe_leaf.der", Ok(RUST_ID)),
        ("spiffe_leaf_uri_only.der", Ok(RUST_ID)),
        ("no_spiffe_leaf.der", Err(SvidError::NoSpiffeId)),
        ("spiffe_leaf_no_key_usage.der", Err(SvidError::NoKeyUsage)),
        (
            "spiffe_leaf_no_digital_signature.der",
            Err(SvidError::NoDigitalSignature),
        ),
        // A CA is never a leaf, whether or not it carries a SPIFFE ID.
        ("ca.der", Err(SvidError::LeafIsCa)),
        ("ca_uri_only.der", Err(SvidError::LeafIsCa)),
        ("ca_with_spiffe_signing.der", Err(SvidError::LeafIsCa)),
    ] {
        let got = check_leaf(&rustls_fixture(name)).map(|info| info.id.to_string());
        assert_eq!(got, expected.map(str::to_owned), "{name}");
    }
}

#[test]
fn spiffe_rustls_cas_are_signing_certs() {
    for name in ["ca.der", "ca_uri_only.der", "ca_with_spiffe_signing.der"] {
        assert_eq!(check_signing_cert(&rustls_fixture(name)), Ok(()), "{name}");
    }
    assert_eq!(
        check_signing_cert(&rustls_fixture("spiffe_leaf.der")),
        Err(SvidError::SigningCertNotCa)
    );
}

#[test]
fn spiffe_rustls_leaves_verify_against_their_own_ca_only() {
    // Inside both leaves' validity (2025-12-22..2026-12-22 and 2026-04-11..2045-06-10).
    let now = at(2026, 6, 1);
    let leaf = rustls_fixture("spiffe_leaf.der");
    let uri_only = rustls_fixture("spiffe_leaf_uri_only.der");
    let ca = bundles(&[("example.org", &rustls_fixture("ca.der"))]);
    let ca_uri_only = bundles(&[("example.org", &rustls_fixture("ca_uri_only.der"))]);
    for purpose in [Purpose::Server, Purpose::Client] {
        let info = verify_chain(std::slice::from_ref(&leaf), &ca, now, purpose)
            .unwrap_or_else(|e| panic!("{purpose:?}: {e}"));
        assert_eq!(info.id.as_str(), RUST_ID);
        let info = verify_chain(std::slice::from_ref(&uri_only), &ca_uri_only, now, purpose)
            .unwrap_or_else(|e| panic!("{purpose:?}: {e}"));
        assert_eq!(info.id.as_str(), RUST_ID);
    }
    let crossed = verify_chain(
        std::slice::from_ref(&leaf),
        &ca_uri_only,
        now,
        Purpose::Server,
    );
    assert!(
        matches!(crossed, Err(SvidError::UntrustedChain(_))),
        "{crossed:?}"
    );
    let later = verify_chain(
        std::slice::from_ref(&leaf),
        &ca,
        at(2027, 1, 1),
        Purpose::Server,
    );
    assert_eq!(later.expect_err("after 2026-12-22"), SvidError::Expired);
}

#[test]
fn spiffe_rustls_ca_presented_as_a_peer_leaf_is_refused() {
    let ca = rustls_fixture("ca.der");
    let bundle = bundles(&[("example.org", &ca)]);
    for name in ["ca.der", "ca_with_spiffe_signing.der"] {
        let got = verify_chain(
            &[rustls_fixture(name)],
            &bundle,
            at(2026, 7, 1),
            Purpose::Client,
        );
        assert_eq!(got.expect_err(name), SvidError::LeafIsCa, "{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// Private key matches certificate
// ---------------------------------------------------------------------------------------------

#[test]
fn mismatched_keys_are_refused_and_matching_ones_accepted() {
    let good = |chain: &str, key: PrivateKeyDer<'static>, id: &str| {
        let chain = if chain.ends_with(".pem") {
            pem_chain(chain)
        } else {
            der_chain(chain)
        };
        let creds = Credentials::new(chain, key, example_org_bundle(), &provider())
            .unwrap_or_else(|e| panic!("matching pair refused: {e}"));
        assert_eq!(creds.id().as_str(), id);
    };
    good(
        "go-spiffe/good-leaf-only.pem",
        pem_key("go-spiffe/key-pkcs8-rsa.pem"),
        GO_ID,
    );
    good(
        "go-spiffe/good-leaf-and-intermediate.pem",
        pem_key("go-spiffe/key-pkcs8-ecdsa.pem"),
        GO_ID,
    );
    good(
        "go-spiffe/good-cert-and-key.pem",
        pem_key("go-spiffe/good-cert-and-key.pem"),
        GO_ID,
    );
    good(
        "go-spiffe/good-key-and-cert.pem",
        pem_key("go-spiffe/good-key-and-cert.pem"),
        GO_ID,
    );
    good(
        "spiffe-rustls/spiffe_leaf.der",
        der_key("spiffe-rustls/leaf.key.pkcs8"),
        RUST_ID,
    );

    for (chain, key) in [
        (
            pem_chain("go-spiffe/good-leaf-only.pem"),
            pem_key("go-spiffe/key-pkcs8-ecdsa.pem"),
        ),
        (
            pem_chain("go-spiffe/good-leaf-and-intermediate.pem"),
            pem_key("go-spiffe/key-pkcs8-rsa.pem"),
        ),
        (
            der_chain("spiffe-rustls/spiffe_leaf.der"),
            der_key("spiffe-rustls/mismatched.key.pkcs8"),
        ),
    ] {
        let err = Credentials::new(chain, key, example_org_bundle(), &provider())
            .expect_err("mismatched key");
        assert_eq!(err, SvidError::KeyMismatch);
        assert_eq!(err.reason(), "key_mismatch");
    }
}

#[test]
fn credentials_need_a_certificate_a_good_shape_and_our_bundle() {
    let key = || pem_key("go-spiffe/key-pkcs8-rsa.pem");
    let err = Credentials::new(Vec::new(), key(), example_org_bundle(), &provider());
    assert_eq!(err.expect_err("no chain"), SvidError::NoCertificate);

    let err = Credentials::new(
        pem_chain("go-spiffe/wrong-leaf-ca-true.pem"),
        key(),
        example_org_bundle(),
        &provider(),
    );
    assert_eq!(err.expect_err("CA leaf"), SvidError::LeafIsCa);

    let err = Credentials::new(
        pem_chain("go-spiffe/wrong-intermediate-no-ca.pem"),
        key(),
        example_org_bundle(),
        &provider(),
    );
    assert_eq!(err.expect_err("bad signer"), SvidError::SigningCertNotCa);

    let other = bundles(&[("example.com", &rustls_fixture("ca.der"))]);
    let err = Credentials::new(
        pem_chain("go-spiffe/good-leaf-only.pem"),
        key(),
        other,
        &provider(),
    );
    assert_eq!(
        err.expect_err("no bundle for example.org"),
        SvidError::UnknownTrustDomain("example.org".into())
    );
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

/// Signs `params` with `ca`; returns the certificate and its key.
fn issue_with_key(params: &CertificateParams, ca: &Ca) -> (CertificateDer<'static>, KeyPair) {
    let key = new_key();
    let cert = params.signed_by(&key, &**ca).expect("signing a leaf");
    (cert.der().clone(), key)
}

fn issue(params: &CertificateParams, ca: &Ca) -> CertificateDer<'static> {
    issue_with_key(params, ca).0
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
    params.subject_alt_names.push(SanType::DnsName(
        Ia5String::try_from("web.example.org").expect("IA5"),
    ));
    verify(&[issue(&params, &ca)], &ca, Purpose::Server).expect("URI + DNS SAN");

    let mut params = leaf_params(ID);
    params.subject_alt_names = vec![SanType::DnsName(
        Ia5String::try_from("web.example.org").expect("IA5"),
    )];
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
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let creds = Credentials::new(
        vec![cert],
        key,
        bundles(&[("example.org", ca.der())]),
        &provider(),
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
