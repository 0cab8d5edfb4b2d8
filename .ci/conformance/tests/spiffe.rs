//! CI-only conformance stage: the external SPIFFE vectors and certificate fixtures (gathered
//! beside the repository; their README says where they come from), run against the public API
//! of svidcar-identity.
//!
//! This crate is outside the workspace, so the README's test command (`tests/run.sh`) never
//! builds it: a bare clone relies on the unit tests, which keep their own tables of these cases
//! and rebuild the certificates with rcgen. `.ci/run` runs it when the vectors are there, with
//! `SVIDCAR_CONFORMANCE_DIR` naming their directory; unset or not a directory, every test fails
//! and says so.

use std::path::PathBuf;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use svidcar_identity::pem_source::{parse_certs, parse_key, PemError};
use svidcar_identity::{
    check_leaf, check_signing_cert, verify_chain, CredentialStore, Credentials, IdError, LeafInfo,
    Purpose, SpiffeId, SvidError, TrustBundles, TrustDomain, WorkloadEndpoint,
};
use x509_parser::prelude::{FromDer, X509Certificate};

const ENV: &str = "SVIDCAR_CONFORMANCE_DIR";

/// `$SVIDCAR_CONFORMANCE_DIR/spiffe`.
fn spiffe_dir() -> PathBuf {
    let base = std::env::var_os(ENV).unwrap_or_else(|| {
        panic!("conformance: set {ENV} to the conformance directory (see .ci/run)")
    });
    let base = PathBuf::from(base);
    assert!(
        base.is_dir(),
        "conformance: {ENV}={} is not a directory (expected the conformance directory)",
        base.display()
    );
    let dir = base.join("spiffe");
    assert!(
        dir.is_dir(),
        "conformance: {ENV}={} has no spiffe/ directory",
        base.display()
    );
    dir
}

/// The files of the `spiffe/` directory.
struct Vectors(PathBuf);

impl Vectors {
    fn get() -> Self {
        Vectors(spiffe_dir())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn bytes(&self, name: &str) -> Vec<u8> {
        let path = self.path(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    fn text(&self, name: &str) -> String {
        String::from_utf8(self.bytes(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// Lines of `INPUT<TAB>MESSAGE`; a line starting with a tab is the empty input.
    fn invalid(&self, name: &str) -> Vec<(String, String)> {
        self.text(name)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (input, msg) = l.split_once('\t').expect("vector has a tab");
                (input.to_owned(), msg.to_owned())
            })
            .collect()
    }

    /// The certificates of a PEM fixture that is expected to parse.
    fn pem_chain(&self, name: &str) -> Vec<CertificateDer<'static>> {
        let path = self.path(&format!("x509svid/{name}"));
        parse_certs(&path, &self.bytes(&format!("x509svid/{name}")))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// The private key of a PEM fixture that is expected to parse.
    fn pem_key(&self, name: &str) -> PrivateKeyDer<'static> {
        let path = self.path(&format!("x509svid/{name}"));
        parse_key(&path, &self.bytes(&format!("x509svid/{name}")))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// The certificates of a DER fixture (concatenated DER, the rust-spiffe format).
    fn der_chain(&self, name: &str) -> Vec<CertificateDer<'static>> {
        split_der(&self.bytes(&format!("x509svid/{name}")))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn der_key(&self, name: &str) -> PrivateKeyDer<'static> {
        PrivateKeyDer::try_from(self.bytes(&format!("x509svid/{name}")))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// A spiffe-rustls fixture: one DER certificate.
    fn rustls_cert(&self, name: &str) -> CertificateDer<'static> {
        let mut chain = self.der_chain(&format!("spiffe-rustls/{name}"));
        assert_eq!(chain.len(), 1, "{name}");
        chain.remove(0)
    }

    /// A CA certificate of the fixtures as the example.org bundle, for when only the shape and the
    /// key of an SVID are under test ([`Credentials::new`] does not verify the chain).
    fn example_org_bundle(&self) -> TrustBundles {
        bundle("example.org", &self.rustls_cert("ca.der"))
    }
}

/// Splits concatenated DER certificates.
fn split_der(mut bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut certs = Vec::new();
    while !bytes.is_empty() {
        let (rest, _) = X509Certificate::from_der(bytes).map_err(|e| e.to_string())?;
        let (one, _) = bytes.split_at(bytes.len() - rest.len());
        certs.push(CertificateDer::from(one.to_vec()));
        bytes = rest;
    }
    Ok(certs)
}

/// The leaf checks, then the signing-certificate checks of the rest of the chain.
fn shape(chain: &[CertificateDer<'_>]) -> Result<LeafInfo, SvidError> {
    let info = check_leaf(chain.first().ok_or(SvidError::NoCertificate)?)?;
    chain[1..].iter().try_for_each(|c| check_signing_cert(c))?;
    Ok(info)
}

fn trust_domain(name: &str) -> TrustDomain {
    TrustDomain::parse(name).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A bundle set with one CA certificate for one trust domain.
fn bundle(name: &str, ca: &CertificateDer<'static>) -> TrustBundles {
    let mut b = TrustBundles::new();
    b.insert(trust_domain(name), vec![ca.clone()])
        .unwrap_or_else(|e| panic!("bundle for {name}: {e}"));
    b
}

fn load(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    bundles: TrustBundles,
) -> Result<Credentials, SvidError> {
    Credentials::new(
        chain,
        key,
        bundles,
        &rustls::crypto::aws_lc_rs::default_provider(),
    )
}

/// Midnight UTC of a date, as a verification time.
fn at(year: i32, month: u8, day: u8) -> UnixTime {
    let t = rcgen::date_time_ymd(year, month, day).unix_timestamp();
    UnixTime::since_unix_epoch(Duration::from_secs(t.try_into().expect("after 1970")))
}

// ---------------------------------------------------------------------------------------------
// SPIFFE IDs and trust domains
// ---------------------------------------------------------------------------------------------

/// Our kind of error for a go-spiffe message: the meaning, not the wording.
fn id_error_for(message: &str) -> IdError {
    const KINDS: [(&str, IdError); 10] = [
        ("cannot be empty", IdError::Empty),
        ("scheme is missing or invalid", IdError::BadScheme),
        ("trust domain is missing", IdError::MissingTrustDomain),
        ("trust domain characters", IdError::BadTrustDomainChar),
        ("path segment characters", IdError::BadPathChar),
        ("empty segments", IdError::EmptySegment),
        ("dot segments", IdError::DotSegment),
        ("trailing slash", IdError::TrailingSlash),
        ("trust domain exceeds", IdError::TrustDomainTooLong),
        ("exceeds maximum length (2048", IdError::TooLong),
    ];
    KINDS
        .iter()
        .find(|(words, _)| message.contains(words))
        .map(|(_, kind)| *kind)
        .unwrap_or_else(|| panic!("no IdError for the message {message:?}"))
}

#[test]
fn every_valid_spiffe_id_parses_and_round_trips() {
    let v = Vectors::get();
    let text = v.text("spiffeid_valid.txt");
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
    println!("conformance: {n} valid SPIFFE IDs");
}

/// Every `INPUT<TAB>MESSAGE` line of `file` is refused by `parse` for the message's reason.
fn check_invalid(v: &Vectors, file: &str, parse: fn(&str) -> Result<(), IdError>) -> usize {
    let vectors = v.invalid(file);
    for (input, msg) in &vectors {
        assert_eq!(parse(input), Err(id_error_for(msg)), "{file}: {input:?}");
    }
    println!("conformance: {} invalid inputs of {file}", vectors.len());
    vectors.len()
}

#[test]
fn every_invalid_spiffe_id_is_refused_for_the_expected_reason() {
    let v = Vectors::get();
    let n = check_invalid(&v, "spiffeid_invalid.txt", |s| SpiffeId::parse(s).map(drop));
    assert!(n > 100, "only {n} vectors");
}

#[test]
fn every_valid_trust_domain_parses() {
    let v = Vectors::get();
    let text = v.text("trustdomain_valid.txt");
    for line in text.lines() {
        let td = TrustDomain::parse(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        if !line.contains(":/") {
            assert_eq!(td.as_str(), line);
        } else {
            assert!(line.starts_with(&td.id_string()));
        }
    }
    println!("conformance: {} valid trust domains", text.lines().count());
}

#[test]
fn every_invalid_trust_domain_is_refused_for_the_expected_reason() {
    let v = Vectors::get();
    let n = check_invalid(&v, "trustdomain_invalid.txt", |s| {
        TrustDomain::parse(s).map(drop)
    });
    assert!(n > 30, "only {n} vectors");
}

/// Where go-spiffe and rust-spiffe disagree we follow the spec, like go-spiffe: upper case is
/// refused, and so are trailing slashes and bad paths in a trust domain given as an ID.
#[test]
fn divergent_vectors_follow_the_spec() {
    let v = Vectors::get();
    for file in ["spiffeid_divergent.tsv", "trustdomain_divergent.tsv"] {
        let mut n = 0;
        for line in v.text(file).lines().skip(1) {
            let cols: Vec<&str> = line.split('\t').collect();
            let (input, go_spiffe) = (cols[0], cols[1]);
            if input.starts_with('<') {
                continue; // length cases: the unit tests build them
            }
            let msg = go_spiffe
                .strip_prefix("INVALID: ")
                .unwrap_or_else(|| panic!("{file}: {input:?}: go-spiffe says {go_spiffe}"));
            let parsed = if file.starts_with("spiffeid") {
                SpiffeId::parse(input).map(|_| ())
            } else {
                TrustDomain::parse(input).map(|_| ())
            };
            assert_eq!(parsed, Err(id_error_for(msg)), "{file}: {input:?}");
            n += 1;
        }
        println!("conformance: {n} divergent vectors of {file}");
    }
}

// ---------------------------------------------------------------------------------------------
// Workload API endpoint addresses
// ---------------------------------------------------------------------------------------------

/// Inputs on which the TSV's library verdict differs from the spec; we follow the spec.
const SPEC_OVERRIDES: &[(&str, bool)] = &[
    // go-spiffe accepts an authority; the spec says a unix URI has none.
    ("unix://foo", false),
    // rust-spiffe shorthands without an authority; the spec requires tcp://IP:PORT.
    ("tcp:127.0.0.1:8081", false),
    ("tcp:[::1]:8080", false),
];

#[test]
fn endpoint_vectors() {
    let v = Vectors::get();
    let text = v.text("spiffe_endpoint_socket.tsv");
    let mut checked = 0;
    for line in text.lines().skip(1).filter(|l| !l.is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (input, library, expected) = (cols[0], cols[1], cols[2]);
        let want_valid = SPEC_OVERRIDES
            .iter()
            .find(|(i, _)| *i == input)
            .map(|(_, v)| *v)
            .unwrap_or(expected == "valid");
        let got = WorkloadEndpoint::parse(input);
        assert_eq!(
            got.is_ok(),
            want_valid,
            "{input:?} ({library} says {expected}): {got:?}"
        );
        if let Ok(e) = got {
            // The canonical form parses back to the same endpoint.
            assert_eq!(WorkloadEndpoint::parse(&e.to_string()).unwrap(), e);
        }
        checked += 1;
    }
    assert!(checked >= 40, "only {checked} vectors");
    println!("conformance: {checked} endpoint addresses");
}

// ---------------------------------------------------------------------------------------------
// go-spiffe X.509-SVID fixtures (PEM; expired, so shape checks only)
// ---------------------------------------------------------------------------------------------

const GO_ID: &str = "spiffe://example.org/workload-1";
const RUST_ID: &str = "spiffe://example.org/service";

#[test]
fn go_spiffe_good_svids_pass_the_shape_checks() {
    let v = Vectors::get();
    for (name, certs) in [
        ("go-spiffe/good-leaf-only.pem", 1),
        ("go-spiffe/good-leaf-and-intermediate.pem", 2),
        ("go-spiffe/good-cert-and-key.pem", 1),
        ("go-spiffe/good-key-and-cert.pem", 1),
    ] {
        let chain = v.pem_chain(name);
        assert_eq!(chain.len(), certs, "{name}");
        let info = shape(&chain).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(info.id.as_str(), GO_ID, "{name}");
        assert_eq!(
            info.id.trust_domain(),
            trust_domain("example.org"),
            "{name}"
        );
        assert!(!info.serial.is_empty(), "{name}");
        assert!(info.not_before < info.not_after, "{name}");
    }
}

#[test]
fn go_spiffe_leaf_info_carries_the_serial_and_validity() {
    let v = Vectors::get();
    let info = check_leaf(&v.pem_chain("go-spiffe/good-leaf-only.pem")[0]).expect("good leaf");
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
    let v = Vectors::get();
    for (stem, expected) in WRONG {
        let name = format!("go-spiffe/{stem}.pem");
        let chain = v.pem_chain(&name);
        assert_eq!(shape(&chain).expect_err(&name), expected, "{name}");
        let loaded = load(
            chain,
            v.pem_key("go-spiffe/key-pkcs8-rsa.pem"),
            v.example_org_bundle(),
        );
        assert_eq!(loaded.expect_err(&name), expected, "{name}");
    }
}

#[test]
fn rust_spiffe_wrong_svids_are_the_same_certificates_refused_the_same_way() {
    let v = Vectors::get();
    for (stem, expected) in WRONG {
        let name = format!("rust-spiffe/svid_x509_{stem}.der");
        let chain = v.der_chain(&name);
        assert_eq!(
            chain,
            v.pem_chain(&format!("go-spiffe/{stem}.pem")),
            "{name}"
        );
        assert_eq!(shape(&chain).expect_err(&name), expected, "{name}");
    }
}

#[test]
fn wrong_intermediates_have_a_valid_leaf() {
    let v = Vectors::get();
    // The refusal comes from the second certificate, not the leaf.
    for name in [
        "go-spiffe/wrong-intermediate-no-ca.pem",
        "go-spiffe/wrong-intermediate-no-key-cert-sign.pem",
    ] {
        let chain = v.pem_chain(name);
        assert_eq!(chain.len(), 2, "{name}");
        let info = check_leaf(&chain[0]).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(info.id.as_str(), GO_ID);
    }
}

#[test]
fn go_spiffe_corrupt_certificate_is_malformed() {
    let v = Vectors::get();
    // A well-formed PEM block whose contents are not DER.
    let chain = v.pem_chain("go-spiffe/corrupt-cert.pem");
    assert_eq!(chain.len(), 1);
    assert!(matches!(
        check_leaf(&chain[0]),
        Err(SvidError::Malformed(_))
    ));
    assert!(matches!(
        check_signing_cert(&chain[0]),
        Err(SvidError::Malformed(_))
    ));
    let err = load(
        chain,
        v.pem_key("go-spiffe/key-pkcs8-rsa.pem"),
        v.example_org_bundle(),
    )
    .expect_err("corrupt certificate");
    assert_eq!(err.reason(), "malformed_certificate");
}

#[test]
fn go_spiffe_corrupt_key_is_refused() {
    let v = Vectors::get();
    let name = "x509svid/go-spiffe/corrupt-key.pem";
    // No CERTIFICATE block in a key file.
    let err = parse_certs(&v.path(name), &v.bytes(name)).expect_err("no certificate");
    assert!(matches!(err, PemError::Pem { .. }), "{err:?}");
    // The PEM framing is fine; the key itself is not, which loading reports.
    let key = parse_key(&v.path(name), &v.bytes(name)).expect("a PRIVATE KEY block");
    let err = load(
        v.pem_chain("go-spiffe/good-leaf-only.pem"),
        key,
        v.example_org_bundle(),
    )
    .expect_err("corrupt key");
    assert!(
        matches!(&err, SvidError::Malformed(m) if m.starts_with("private key")),
        "{err:?}"
    );
}

#[test]
fn not_pem_is_a_clear_parse_error_naming_the_file() {
    let v = Vectors::get();
    let name = "x509svid/go-spiffe/not-pem";
    let (path, bytes) = (v.path(name), v.bytes(name));
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
    let v = Vectors::get();
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
        (
            "rust-spiffe/svid_x509_expired-svid-chain.der",
            "rust-spiffe/svid_x509_expired-key.der",
            2,
            RUST_ID,
        ),
    ] {
        let chain = v.der_chain(name);
        assert_eq!(chain.len(), certs, "{name}");
        let info = shape(&chain).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(info.id.as_str(), id, "{name}");
        let creds = load(chain, v.der_key(key), v.example_org_bundle())
            .unwrap_or_else(|e| panic!("{name} with {key}: {e}"));
        assert_eq!(creds.id().as_str(), id, "{name}");
    }
}

#[test]
fn rust_spiffe_expired_svid_is_never_handed_out() {
    let v = Vectors::get();
    let creds = load(
        v.der_chain("rust-spiffe/svid_x509_expired-svid-chain.der"),
        v.der_key("rust-spiffe/svid_x509_expired-key.der"),
        v.example_org_bundle(),
    )
    .expect("a well-formed SVID");
    // openssl x509: valid 2021-02-09 18:20:12 to 19:20:22 UTC.
    assert_eq!(
        (creds.leaf.not_before, creds.leaf.not_after),
        (1_612_894_812, 1_612_898_422)
    );
    let store = CredentialStore::new();
    store.set(creds);
    assert!(store.current().is_none(), "expired credentials handed out");
    assert!(store.current_at(1_612_895_000).is_some());
}

#[test]
fn rust_spiffe_corrupted_is_a_parse_error_as_chain_and_as_key() {
    let v = Vectors::get();
    let bytes = v.bytes("x509svid/rust-spiffe/svid_x509_corrupted");
    assert!(split_der(&bytes).is_err());
    assert!(matches!(check_leaf(&bytes), Err(SvidError::Malformed(_))));
    assert!(PrivateKeyDer::try_from(bytes.as_slice()).is_err());
    let bundle = v.bytes("x509svid/rust-spiffe/bundle_x509_corrupted");
    assert!(split_der(&bundle).is_err());
    let mut b = TrustBundles::new();
    let err = b.insert(
        trust_domain("example.org"),
        vec![CertificateDer::from(bundle)],
    );
    assert!(matches!(err, Err(SvidError::Malformed(_))), "{err:?}");
}

#[test]
fn trailing_bytes_after_a_certificate_are_malformed() {
    let v = Vectors::get();
    // `check_leaf` takes exactly one certificate: a concatenated chain is not one.
    let bytes = v.bytes("x509svid/rust-spiffe/svid_x509_1-svid-chain.der");
    let err = check_leaf(&bytes).expect_err("two certificates as one");
    assert_eq!(
        err,
        SvidError::Malformed("trailing bytes after certificate".into())
    );
}

#[test]
fn rust_spiffe_bundle_is_two_concatenated_certificates() {
    let v = Vectors::get();
    let certs = v.der_chain("rust-spiffe/bundle_x509_bundle.der");
    assert_eq!(certs.len(), 2);
    assert_eq!(
        certs[0].as_ref(),
        v.bytes("x509svid/rust-spiffe/bundle_x509_cert1.der")
    );
    assert_eq!(
        certs[1].as_ref(),
        v.bytes("x509svid/rust-spiffe/bundle_x509_cert2.der")
    );
    let td = trust_domain("example.org");
    let mut b = TrustBundles::new();
    b.insert(td.clone(), certs).expect("bundle of 2");
    assert_eq!(b.anchors(&td).map(<[_]>::len), Some(2));
    assert_eq!(b.certs(&td).map(<[_]>::len), Some(2));
    assert_eq!(b.trust_domains(), vec![&td]);
    assert!(b.anchors(&trust_domain("example.com")).is_none());
}

// ---------------------------------------------------------------------------------------------
// spiffe-rustls fixtures (DER)
// ---------------------------------------------------------------------------------------------

#[test]
fn spiffe_rustls_leaves_are_checked_for_shape() {
    let v = Vectors::get();
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
        let got = check_leaf(&v.rustls_cert(name)).map(|info| info.id.to_string());
        assert_eq!(got, expected.map(str::to_owned), "{name}");
    }
}

#[test]
fn spiffe_rustls_cas_are_signing_certs() {
    let v = Vectors::get();
    for name in ["ca.der", "ca_uri_only.der", "ca_with_spiffe_signing.der"] {
        assert_eq!(check_signing_cert(&v.rustls_cert(name)), Ok(()), "{name}");
    }
    assert_eq!(
        check_signing_cert(&v.rustls_cert("spiffe_leaf.der")),
        Err(SvidError::SigningCertNotCa)
    );
}

#[test]
fn spiffe_rustls_leaves_verify_against_their_own_ca_only() {
    let v = Vectors::get();
    // Inside both leaves' validity (2025-12-22..2026-12-22 and 2026-04-11..2045-06-10).
    let now = at(2026, 6, 1);
    let leaf = [v.rustls_cert("spiffe_leaf.der")];
    let uri_only = [v.rustls_cert("spiffe_leaf_uri_only.der")];
    let ca = bundle("example.org", &v.rustls_cert("ca.der"));
    let ca_uri_only = bundle("example.org", &v.rustls_cert("ca_uri_only.der"));
    for purpose in [Purpose::Server, Purpose::Client] {
        let info =
            verify_chain(&leaf, &ca, now, purpose).unwrap_or_else(|e| panic!("{purpose:?}: {e}"));
        assert_eq!(info.id.as_str(), RUST_ID);
        let info = verify_chain(&uri_only, &ca_uri_only, now, purpose)
            .unwrap_or_else(|e| panic!("{purpose:?}: {e}"));
        assert_eq!(info.id.as_str(), RUST_ID);
    }
    let crossed = verify_chain(&leaf, &ca_uri_only, now, Purpose::Server);
    assert!(
        matches!(crossed, Err(SvidError::UntrustedChain(_))),
        "{crossed:?}"
    );
    let later = verify_chain(&leaf, &ca, at(2027, 1, 1), Purpose::Server);
    assert_eq!(later.expect_err("after 2026-12-22"), SvidError::Expired);
}

#[test]
fn spiffe_rustls_ca_presented_as_a_peer_leaf_is_refused() {
    let v = Vectors::get();
    let ca = bundle("example.org", &v.rustls_cert("ca.der"));
    for name in ["ca.der", "ca_with_spiffe_signing.der"] {
        let got = verify_chain(&[v.rustls_cert(name)], &ca, at(2026, 7, 1), Purpose::Client);
        assert_eq!(got.expect_err(name), SvidError::LeafIsCa, "{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// Private key matches certificate
// ---------------------------------------------------------------------------------------------

#[test]
fn mismatched_keys_are_refused_and_matching_ones_accepted() {
    let v = Vectors::get();
    for (chain, key, id) in [
        (
            v.pem_chain("go-spiffe/good-leaf-only.pem"),
            v.pem_key("go-spiffe/key-pkcs8-rsa.pem"),
            GO_ID,
        ),
        (
            v.pem_chain("go-spiffe/good-leaf-and-intermediate.pem"),
            v.pem_key("go-spiffe/key-pkcs8-ecdsa.pem"),
            GO_ID,
        ),
        (
            v.pem_chain("go-spiffe/good-cert-and-key.pem"),
            v.pem_key("go-spiffe/good-cert-and-key.pem"),
            GO_ID,
        ),
        (
            v.pem_chain("go-spiffe/good-key-and-cert.pem"),
            v.pem_key("go-spiffe/good-key-and-cert.pem"),
            GO_ID,
        ),
        (
            v.der_chain("spiffe-rustls/spiffe_leaf.der"),
            v.der_key("spiffe-rustls/leaf.key.pkcs8"),
            RUST_ID,
        ),
    ] {
        let creds = load(chain, key, v.example_org_bundle())
            .unwrap_or_else(|e| panic!("matching pair refused: {e}"));
        assert_eq!(creds.id().as_str(), id);
    }

    for (chain, key) in [
        (
            v.pem_chain("go-spiffe/good-leaf-only.pem"),
            v.pem_key("go-spiffe/key-pkcs8-ecdsa.pem"),
        ),
        (
            v.pem_chain("go-spiffe/good-leaf-and-intermediate.pem"),
            v.pem_key("go-spiffe/key-pkcs8-rsa.pem"),
        ),
        (
            v.der_chain("spiffe-rustls/spiffe_leaf.der"),
            v.der_key("spiffe-rustls/mismatched.key.pkcs8"),
        ),
    ] {
        let err = load(chain, key, v.example_org_bundle()).expect_err("mismatched key");
        assert_eq!(err, SvidError::KeyMismatch);
        assert_eq!(err.reason(), "key_mismatch");
    }
}

#[test]
fn credentials_need_a_certificate_a_good_shape_and_our_bundle() {
    let v = Vectors::get();
    let key = || v.pem_key("go-spiffe/key-pkcs8-rsa.pem");
    let err = load(Vec::new(), key(), v.example_org_bundle());
    assert_eq!(err.expect_err("no chain"), SvidError::NoCertificate);

    let other = bundle("example.com", &v.rustls_cert("ca.der"));
    let err = load(v.pem_chain("go-spiffe/good-leaf-only.pem"), key(), other);
    assert_eq!(
        err.expect_err("no bundle for example.org"),
        SvidError::UnknownTrustDomain("example.org".into())
    );
}

// ---------------------------------------------------------------------------------------------
// X.509 bundles (PEM)
// ---------------------------------------------------------------------------------------------

#[test]
fn x509_bundle_files_hold_the_expected_certificates() {
    let v = Vectors::get();
    let td = trust_domain("example.org");
    for (name, certs) in [("x509bundle_certs.pem", 2), ("x509bundle_cert.pem", 1)] {
        let name = format!("bundle/{name}");
        let parsed =
            parse_certs(&v.path(&name), &v.bytes(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(parsed.len(), certs, "{name}");
        let mut b = TrustBundles::new();
        b.insert(td.clone(), parsed)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(b.anchors(&td).map(<[_]>::len), Some(certs), "{name}");
    }
    // A PEM block whose DER is broken: malformed, and the bundle set stays as it was.
    let name = "bundle/x509bundle_corrupted.pem";
    let parsed = parse_certs(&v.path(name), &v.bytes(name)).expect("PEM framing");
    assert_eq!(parsed.len(), 1);
    assert!(matches!(
        check_signing_cert(&parsed[0]),
        Err(SvidError::Malformed(_))
    ));
    let mut b = TrustBundles::new();
    let err = b.insert(td.clone(), parsed);
    assert!(matches!(err, Err(SvidError::Malformed(_))), "{err:?}");
    assert!(b.trust_domains().is_empty());
    // No certificate, or a key only: a parse error naming the file.
    for name in [
        "x509bundle_empty.pem",
        "x509bundle_not-pem.pem",
        "x509bundle_key.pem",
    ] {
        let path = v.path(&format!("bundle/{name}"));
        let err = parse_certs(&path, &v.bytes(&format!("bundle/{name}"))).expect_err(name);
        assert!(matches!(err, PemError::Pem { .. }), "{name}: {err:?}");
        assert!(
            err.to_string().starts_with(&*path.to_string_lossy()),
            "{err}"
        );
    }
}
