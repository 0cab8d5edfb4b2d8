//! A trust-domain certificate authority: EC P-256, issuing X.509-SVIDs with one URI SAN, not a
//! CA, key usage digitalSignature (+ keyEncipherment, keyAgreement), EKU serverAuth + clientAuth.

use std::fmt;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use svidcar_identity::{SpiffeId, TrustDomain};
use time::OffsetDateTime;

/// Why the CA could not act.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Key generation or signing failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The SPIFFE ID belongs to another trust domain.
    #[error("{id} is not in trust domain {td}")]
    ForeignId {
        /// The requested ID.
        id: String,
        /// Our trust domain.
        td: String,
    },
    /// The system random source failed.
    #[error("random source failed")]
    Random,
    /// A stored CA certificate or key cannot be used.
    #[error("{0}")]
    Load(String),
}

/// A freshly issued SVID: chain (leaf only) and key. `Debug` never shows the key.
pub struct IssuedSvid {
    /// The SPIFFE ID.
    pub id: SpiffeId,
    /// Leaf certificate, DER.
    pub cert_der: CertificateDer<'static>,
    /// Leaf certificate, PEM.
    pub cert_pem: String,
    /// Private key, PKCS#8 PEM.
    pub key_pem: String,
    key_der: Vec<u8>,
}

impl IssuedSvid {
    /// The private key, DER.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

impl fmt::Debug for IssuedSvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedSvid")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A trust domain's signing authority.
pub struct Ca {
    td: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    cert_pem: String,
    serial: String,
    not_before: i64,
    not_after: i64,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("td", &self.td)
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    bytes[0] &= 0x7f; // positive
    Ok(SerialNumber::from_slice(&bytes))
}

/// Lowercase hex of a certificate's serial number, as used in file names and logs.
pub(crate) fn serial_hex(raw: &[u8]) -> String {
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

fn unix_time(secs: i64) -> Result<OffsetDateTime, CaError> {
    OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|e| CaError::Load(format!("time {secs} out of range: {e}")))
}

/// What a root certificate says about itself (no key needed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RootInfo {
    /// The trust domain its one URI SAN names.
    pub td: TrustDomain,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Start of validity, seconds since the Unix epoch.
    pub not_before: i64,
    /// End of validity, seconds since the Unix epoch.
    pub not_after: i64,
}

impl RootInfo {
    /// Parses a CA certificate whose URI SAN is its trust domain's ID.
    pub(crate) fn parse(cert: &[u8]) -> Result<Self, CaError> {
        let (_, x509) = x509_parser::parse_x509_certificate(cert)
            .map_err(|e| CaError::Load(format!("certificate: {e}")))?;
        if !x509.is_ca() {
            return Err(CaError::Load("the certificate is not a CA".into()));
        }
        let uri = x509
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|san| {
                san.value.general_names.iter().find_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
            })
            .ok_or_else(|| {
                CaError::Load("the certificate has no URI SAN naming its trust domain".into())
            })?;
        let td = TrustDomain::parse(uri)
            .map_err(|e| CaError::Load(format!("certificate URI SAN {uri:?}: {e}")))?;
        Ok(Self {
            td,
            serial: serial_hex(x509.raw_serial()),
            not_before: x509.validity().not_before.timestamp(),
            not_after: x509.validity().not_after.timestamp(),
        })
    }
}

impl Ca {
    /// Generates a new self-signed root for `td`, valid for `validity` from now (backdated as
    /// [`Ca::generate_at`] says).
    pub fn generate(td: &TrustDomain, validity: Duration) -> Result<Self, CaError> {
        Self::generate_at(td, OffsetDateTime::now_utc().unix_timestamp(), validity)
    }

    /// Generates a root that signs at once: valid from `now` (seconds since the Unix epoch) for
    /// `validity`, its start backdated by a tenth of `validity` (at most 60 s) so that peers whose
    /// clocks run a little behind accept it.
    pub fn generate_at(td: &TrustDomain, now: i64, validity: Duration) -> Result<Self, CaError> {
        let backdate = (validity / 10).min(Duration::from_secs(60)).as_secs() as i64;
        Self::generate_window(td, now.saturating_sub(backdate), now, validity)
    }

    /// Generates a successor root, published now and signing only later: valid from exactly
    /// `now` (not backdated, so its `notBefore` records when it was published) for `validity`.
    pub fn generate_successor(
        td: &TrustDomain,
        now: i64,
        validity: Duration,
    ) -> Result<Self, CaError> {
        Self::generate_window(td, now, now, validity)
    }

    fn generate_window(
        td: &TrustDomain,
        not_before: i64,
        now: i64,
        validity: Duration,
    ) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let validity = i64::try_from(validity.as_secs()).unwrap_or(i64::MAX);
        params.not_before = unix_time(not_before)?;
        params.not_after = unix_time(now.saturating_add(validity))?;
        params.serial_number = Some(random_serial()?);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "svidcar");
        dn.push(DnType::CommonName, format!("{td} root CA"));
        params.distinguished_name = dn;
        let uri = rcgen::string::Ia5String::try_from(td.id_string())?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        let cert = params.self_signed(&key)?;
        // The serial as encoded (DER drops leading zero bytes), as a loaded root reports it.
        let serial = RootInfo::parse(cert.der())?.serial;
        Ok(Self {
            td: td.clone(),
            cert: cert.der().clone(),
            cert_pem: cert.pem(),
            serial,
            not_before: params.not_before.unix_timestamp(),
            not_after: params.not_after.unix_timestamp(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a root created by [`Ca::generate`] (or any self-signed P-256 CA whose one URI SAN is
    /// its trust domain's ID) from its PEM certificate and PKCS#8 PEM key. The key must match.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        use rustls::pki_types::pem::PemObject;
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| CaError::Load(format!("certificate: bad PEM: {e}")))?;
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| CaError::Load(format!("key: not a usable private key: {e}")))?;
        let info = RootInfo::parse(&cert)?;
        let (_, x509) = x509_parser::parse_x509_certificate(&cert)
            .map_err(|e| CaError::Load(format!("certificate: {e}")))?;
        if x509.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice() {
            return Err(CaError::Load(
                "the key does not belong to the certificate".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&cert, key)
            .map_err(|e| CaError::Load(format!("certificate: {e}")))?;
        Ok(Self {
            td: info.td,
            cert_pem: cert_pem.to_owned(),
            cert,
            serial: info.serial,
            not_before: info.not_before,
            not_after: info.not_after,
            issuer,
        })
    }

    /// The private key, PKCS#8 PEM, to store the CA (with mode 0600). Never log it.
    pub(crate) fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// When the root starts being valid, seconds since the Unix epoch.
    pub fn not_before(&self) -> i64 {
        self.not_before
    }

    /// When the root expires, seconds since the Unix epoch.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// The root's serial number, lowercase hex.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// Our trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.td
    }

    /// The root certificate, DER (the trust bundle).
    pub fn bundle_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The root certificate, PEM (the trust bundle).
    pub fn bundle_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The rcgen issuer, for callers that build unusual certificates (tests of refusals).
    pub fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// The parameters of a conforming X.509-SVID for `id`, valid from now for `ttl`.
    pub fn svid_params(&self, id: &SpiffeId, ttl: Duration) -> Result<CertificateParams, CaError> {
        if id.trust_domain_str() != self.td.as_str() {
            return Err(CaError::ForeignId {
                id: id.to_string(),
                td: self.td.to_string(),
            });
        }
        let mut params = CertificateParams::default();
        let now = OffsetDateTime::now_utc();
        // A little backdating absorbs clock skew between nodes.
        params.not_before = now - Duration::from_secs(30);
        params.not_after = now + ttl;
        params.serial_number = Some(random_serial()?);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let uri = rcgen::string::Ia5String::try_from(id.as_str())?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "SPIFFE");
        params.distinguished_name = dn;
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }

    /// Signs `params` for a new P-256 key.
    pub fn sign(&self, id: &SpiffeId, params: &CertificateParams) -> Result<IssuedSvid, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedSvid {
            id: id.clone(),
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        })
    }

    /// Issues a conforming X.509-SVID for `id`, valid for `ttl`.
    pub fn issue(&self, id: &SpiffeId, ttl: Duration) -> Result<IssuedSvid, CaError> {
        let params = self.svid_params(id, ttl)?;
        self.sign(id, &params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use svidcar_identity::{check_leaf, verify_chain, Purpose, TrustBundles};

    #[test]
    fn issued_svids_verify_and_follow_the_spec() {
        let td = TrustDomain::parse("example.org").unwrap();
        let ca = Ca::generate(&td, Duration::from_secs(3600)).unwrap();
        let id = SpiffeId::parse("spiffe://example.org/ns/default/sa/web").unwrap();
        let svid = ca.issue(&id, Duration::from_secs(600)).unwrap();
        let leaf = check_leaf(&svid.cert_der).unwrap();
        assert_eq!(leaf.id, id);
        let mut bundles = TrustBundles::new();
        bundles.insert(td, vec![ca.bundle_der().clone()]).unwrap();
        let now = rustls::pki_types::UnixTime::now();
        for purpose in [Purpose::Client, Purpose::Server] {
            assert_eq!(
                verify_chain(std::slice::from_ref(&svid.cert_der), &bundles, now, purpose)
                    .unwrap()
                    .id,
                id
            );
        }
        let other = ca.issue(&id, Duration::from_secs(600)).unwrap();
        assert_ne!(check_leaf(&other.cert_der).unwrap().serial, leaf.serial);
        let foreign = SpiffeId::parse("spiffe://other.org/x").unwrap();
        assert!(matches!(
            ca.issue(&foreign, Duration::from_secs(1)),
            Err(CaError::ForeignId { .. })
        ));
        assert!(!format!("{svid:?}").contains("PRIVATE"));
    }
}
