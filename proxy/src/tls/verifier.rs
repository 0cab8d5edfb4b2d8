//! rustls certificate verifiers that apply the X509-SVID rules with the current trust bundles,
//! and, on the client side, secure naming (the server must be the SPIFFE ID expected for the
//! destination).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};

use crate::identity::{verify_chain, CredentialStore, Purpose, SpiffeId, SvidError};

/// Wraps a typed refusal so it survives the trip through rustls and can be recovered with
/// [`svid_error_of`].
fn refuse(e: SvidError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// Recovers our typed refusal reason from a rustls error, if it came from our verifiers.
pub fn svid_error_of(e: &rustls::Error) -> Option<&SvidError> {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<SvidError>()
        }
        _ => None,
    }
}

fn check(
    store: &CredentialStore,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    purpose: Purpose,
) -> Result<SpiffeId, rustls::Error> {
    // No valid local SVID means no bundles we may trust: fail closed.
    let creds = store.current_at(now.as_secs() as i64).ok_or_else(|| {
        rustls::Error::General("no valid local SVID; refusing mesh handshakes".into())
    })?;
    let mut chain = Vec::with_capacity(1 + intermediates.len());
    chain.push(end_entity.clone());
    chain.extend(intermediates.iter().cloned());
    verify_chain(&chain, &creds.bundles, now, purpose)
        .map(|leaf| leaf.id)
        .map_err(refuse)
}

/// Verifies a mesh server's SVID and that it is `expected`.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    store: Arc<CredentialStore>,
    expected: SpiffeId,
    provider: Arc<CryptoProvider>,
}

impl SpiffeServerVerifier {
    /// A verifier for one destination.
    pub fn new(
        store: Arc<CredentialStore>,
        expected: SpiffeId,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        Self {
            store,
            expected,
            provider,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = check(&self.store, end_entity, intermediates, now, Purpose::Server)?;
        if id != self.expected {
            return Err(refuse(SvidError::UnexpectedId {
                expected: self.expected.to_string(),
                got: id.to_string(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Requires and verifies a client SVID from any trust domain we hold a bundle for.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    store: Arc<CredentialStore>,
    provider: Arc<CryptoProvider>,
}

impl SpiffeClientVerifier {
    /// A verifier reading bundles from `store` at each handshake.
    pub fn new(store: Arc<CredentialStore>, provider: Arc<CryptoProvider>) -> Self {
        Self { store, provider }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        check(&self.store, end_entity, intermediates, now, Purpose::Client)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
