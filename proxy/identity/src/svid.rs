//! X.509-SVID validation per the SPIFFE X509-SVID specification: a pure function over DER
//! certificates, trust bundles and a time, usable from rustls verifiers and from credential
//! loading alike.

use std::fmt;

use rustls::pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::bundle::TrustBundles;
use crate::spiffe_id::{IdError, SpiffeId, TrustDomain};

/// Longest chain we accept from a peer (leaf included).
pub const MAX_CHAIN_LEN: usize = 16;

/// The role the presenting side plays in the TLS handshake; selects the EKU that must be
/// present when the leaf carries an EKU extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The peer is a TLS server.
    Server,
    /// The peer is a TLS client.
    Client,
}

/// Why an X.509-SVID was refused. [`SvidError::reason`] is the stable label used in logs and
/// metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    /// The peer presented no certificate.
    #[error("no certificate presented")]
    NoCertificate,
    /// A certificate could not be parsed.
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// More than [`MAX_CHAIN_LEN`] certificates.
    #[error("certificate chain longer than {MAX_CHAIN_LEN}")]
    ChainTooLong,
    /// The leaf has no URI SAN.
    #[error("leaf certificate has no SPIFFE ID (no URI SAN)")]
    NoSpiffeId,
    /// The leaf has more than one URI SAN.
    #[error("leaf certificate has {0} URI SANs; exactly one is allowed")]
    MultipleUriSans(usize),
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN is not a valid SPIFFE ID: {0}")]
    InvalidSpiffeId(IdError),
    /// The SPIFFE ID has no path (a trust domain ID is never a workload's).
    #[error("SPIFFE ID {0} has no path")]
    IdWithoutPath(String),
    /// The leaf carries the CA flag.
    #[error("leaf certificate is a CA")]
    LeafIsCa,
    /// The leaf has no key usage extension.
    #[error("leaf certificate has no key usage extension")]
    NoKeyUsage,
    /// The leaf's key usage lacks digitalSignature.
    #[error("leaf key usage lacks digitalSignature")]
    NoDigitalSignature,
    /// The leaf's key usage includes keyCertSign.
    #[error("leaf key usage includes keyCertSign")]
    LeafKeyCertSign,
    /// The leaf's key usage includes cRLSign.
    #[error("leaf key usage includes cRLSign")]
    LeafCrlSign,
    /// An intermediate is not a CA.
    #[error("signing certificate is not a CA")]
    SigningCertNotCa,
    /// An intermediate lacks keyCertSign.
    #[error("signing certificate key usage lacks keyCertSign")]
    SigningCertNoKeyCertSign,
    /// No trust bundle is known for the peer's trust domain.
    #[error("no trust bundle for trust domain {0}")]
    UnknownTrustDomain(String),
    /// The chain does not lead to the trust domain's bundle, or a signature is bad.
    #[error("untrusted certificate chain: {0}")]
    UntrustedChain(String),
    /// The leaf (or a CA in the chain) has expired.
    #[error("certificate has expired")]
    Expired,
    /// The leaf (or a CA in the chain) is not valid yet.
    #[error("certificate is not valid yet")]
    NotYetValid,
    /// The EKU extension is present but lacks the purpose of this side.
    #[error("extended key usage does not allow {0:?} authentication")]
    WrongEku(Purpose),
    /// The peer's SPIFFE ID is not the one expected for this destination (secure naming).
    #[error("unexpected SPIFFE ID {got}; expected {expected}")]
    UnexpectedId {
        /// What the destination table says.
        expected: String,
        /// What the peer presented.
        got: String,
    },
    /// A private key does not belong to the certificate.
    #[error("private key does not match the certificate")]
    KeyMismatch,
}

impl SvidError {
    /// Stable, low-cardinality label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SvidError::NoCertificate => "no_certificate",
            SvidError::Malformed(_) => "malformed_certificate",
            SvidError::ChainTooLong => "chain_too_long",
            SvidError::NoSpiffeId => "no_spiffe_id",
            SvidError::MultipleUriSans(_) => "multiple_uri_sans",
            SvidError::InvalidSpiffeId(_) => "invalid_spiffe_id",
            SvidError::IdWithoutPath(_) => "id_without_path",
            SvidError::LeafIsCa => "leaf_is_ca",
            SvidError::NoKeyUsage => "no_key_usage",
            SvidError::NoDigitalSignature => "no_digital_signature",
            SvidError::LeafKeyCertSign => "leaf_key_cert_sign",
            SvidError::LeafCrlSign => "leaf_crl_sign",
            SvidError::SigningCertNotCa => "signing_cert_not_ca",
            SvidError::SigningCertNoKeyCertSign => "signing_cert_no_key_cert_sign",
            SvidError::UnknownTrustDomain(_) => "wrong_trust_domain",
            SvidError::UntrustedChain(_) => "untrusted_chain",
            SvidError::Expired => "expired",
            SvidError::NotYetValid => "not_yet_valid",
            SvidError::WrongEku(_) => "wrong_eku",
            SvidError::UnexpectedId { .. } => "unexpected_spiffe_id",
            SvidError::KeyMismatch => "key_mismatch",
        }
    }
}

/// What the leaf of a valid SVID says.
#[derive(Clone, PartialEq, Eq)]
pub struct LeafInfo {
    /// The SPIFFE ID from the URI SAN.
    pub id: SpiffeId,
    /// Serial number, hex.
    pub serial: String,
    /// Expiry, seconds since the Unix epoch.
    pub not_after: i64,
    /// Start of validity, seconds since the Unix epoch.
    pub not_before: i64,
}

impl fmt::Debug for LeafInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeafInfo")
            .field("id", &self.id.as_str())
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish()
    }
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, SvidError> {
    #[cfg(test)]
    parse_count::bump();
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(SvidError::Malformed(
            "trailing bytes after certificate".into(),
        )),
        Err(e) => Err(SvidError::Malformed(e.to_string())),
    }
}

fn ext_err(e: x509_parser::error::X509Error) -> SvidError {
    SvidError::Malformed(e.to_string())
}

/// Checks everything the X509-SVID spec requires of a leaf that does not depend on time or trust:
/// not a CA (checked first: a CA presented as a leaf is refused as such, SPIFFE ID or not), one
/// URI SAN with a SPIFFE ID that has a path, key usage with digitalSignature and without
/// keyCertSign / cRLSign.
pub fn check_leaf(der: &[u8]) -> Result<LeafInfo, SvidError> {
    leaf_info(&parse(der)?)
}

fn leaf_info(cert: &X509Certificate<'_>) -> Result<LeafInfo, SvidError> {
    if let Some(bc) = cert.basic_constraints().map_err(ext_err)? {
        if bc.value.ca {
            return Err(SvidError::LeafIsCa);
        }
    }
    let san = cert.subject_alternative_name().map_err(ext_err)?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    let uri = match uris.as_slice() {
        [] => return Err(SvidError::NoSpiffeId),
        [one] => *one,
        many => return Err(SvidError::MultipleUriSans(many.len())),
    };
    let id = SpiffeId::parse(uri).map_err(SvidError::InvalidSpiffeId)?;
    if id.path().is_empty() {
        return Err(SvidError::IdWithoutPath(id.to_string()));
    }
    let ku = cert
        .key_usage()
        .map_err(ext_err)?
        .ok_or(SvidError::NoKeyUsage)?;
    if !ku.value.digital_signature() {
        return Err(SvidError::NoDigitalSignature);
    }
    if ku.value.key_cert_sign() {
        return Err(SvidError::LeafKeyCertSign);
    }
    if ku.value.crl_sign() {
        return Err(SvidError::LeafCrlSign);
    }
    let validity = cert.validity();
    Ok(LeafInfo {
        id,
        serial: cert.raw_serial_as_string(),
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
    })
}

/// Checks a certificate that signs others (an intermediate): CA flag and keyCertSign.
pub fn check_signing_cert(der: &[u8]) -> Result<(), SvidError> {
    let cert = parse(der)?;
    let is_ca = cert
        .basic_constraints()
        .map_err(ext_err)?
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(SvidError::SigningCertNotCa);
    }
    match cert.key_usage().map_err(ext_err)? {
        Some(ku) if !ku.value.key_cert_sign() => Err(SvidError::SigningCertNoKeyCertSign),
        _ => Ok(()),
    }
}

/// Checks the EKU extension of the leaf, if present, for the purpose of the presenting side.
fn check_eku(cert: &X509Certificate<'_>, purpose: Purpose) -> Result<(), SvidError> {
    match cert.extended_key_usage().map_err(ext_err)? {
        None => Ok(()),
        Some(eku) => {
            let ok = eku.value.any
                || match purpose {
                    Purpose::Server => eku.value.server_auth,
                    Purpose::Client => eku.value.client_auth,
                };
            if ok {
                Ok(())
            } else {
                Err(SvidError::WrongEku(purpose))
            }
        }
    }
}

fn map_webpki(e: webpki::Error) -> SvidError {
    match e {
        webpki::Error::CertExpired { .. } => SvidError::Expired,
        webpki::Error::CertNotValidYet { .. } => SvidError::NotYetValid,
        webpki::Error::CaUsedAsEndEntity => SvidError::LeafIsCa,
        webpki::Error::RequiredEkuNotFoundContext(_) => {
            SvidError::UntrustedChain("required EKU not found".into())
        }
        other => SvidError::UntrustedChain(format!("{other:?}")),
    }
}

/// Verifies a peer's X.509-SVID chain (leaf first) against the bundle of the trust domain its
/// SPIFFE ID names, at time `now`, for the given purpose.
pub fn verify_chain(
    chain: &[CertificateDer<'_>],
    bundles: &TrustBundles,
    now: UnixTime,
    purpose: Purpose,
) -> Result<LeafInfo, SvidError> {
    let (leaf, intermediates) = chain.split_first().ok_or(SvidError::NoCertificate)?;
    if chain.len() > MAX_CHAIN_LEN {
        return Err(SvidError::ChainTooLong);
    }
    // The leaf is parsed here once; webpki parses it again for the signature checks.
    let cert = parse(leaf)?;
    let info = leaf_info(&cert)?;
    for c in intermediates {
        check_signing_cert(c)?;
    }
    check_eku(&cert, purpose)?;
    let td: TrustDomain = info.id.trust_domain();
    let anchors = bundles
        .anchors(&td)
        .ok_or_else(|| SvidError::UnknownTrustDomain(td.to_string()))?;
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(map_webpki)?;
    let usage = match purpose {
        Purpose::Server => webpki::KeyUsage::server_auth(),
        Purpose::Client => webpki::KeyUsage::client_auth(),
    };
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        anchors,
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map_err(map_webpki)?;
    Ok(info)
}

/// Counts certificate parses on this thread, so tests can prove how often a handshake parses
/// the peer's leaf.
#[cfg(test)]
pub(crate) mod parse_count {
    use std::cell::Cell;

    thread_local! {
        static PARSES: Cell<usize> = const { Cell::new(0) };
    }

    pub(crate) fn bump() {
        PARSES.with(|p| p.set(p.get() + 1));
    }

    /// Parses on this thread so far.
    pub(crate) fn get() -> usize {
        PARSES.with(Cell::get)
    }
}

#[cfg(test)]
mod tests;
