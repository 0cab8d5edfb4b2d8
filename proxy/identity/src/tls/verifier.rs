//! rustls certificate verifiers that apply the X509-SVID rules with the current trust bundles,
//! and, on the client side, secure naming (the server must be the SPIFFE ID expected for the
//! destination). A chain once accepted is remembered (`cache`) and not verified again while
//! the same bundles are in force and its certificates are valid.

mod cache;

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::handshake::{other, record_verified_peer, warm_up, NoLocalSvid, VerifiedPeer};
use super::serial::CertSerial;
use cache::VerifiedChains;

use crate::{verify_chain, CredentialStore, Purpose, SpiffeId, SvidError, TrustBundles};

/// Peer chains an inbound (client certificate) verifier remembers: any caller of the workload.
const CLIENT_CHAINS: usize = 1024;
/// Peer chains a server verifier remembers: the replicas of one destination identity.
const SERVER_CHAINS: usize = 32;

fn refuse(e: SvidError) -> rustls::Error {
    other(e)
}

/// Where a verifier takes its trust bundles from.
#[derive(Debug)]
enum Anchors {
    /// The bundles that come with our current SVID (the mesh case).
    Store(Arc<CredentialStore>),
    /// Fixed bundles, for a client that holds no SVID yet (an agent joining its trust domain).
    Fixed(Arc<TrustBundles>),
}

fn check(
    anchors: &Anchors,
    chains: &VerifiedChains,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    purpose: Purpose,
) -> Result<VerifiedPeer, rustls::Error> {
    let bundles = match anchors {
        // No valid local SVID means no bundles we may trust: fail closed.
        Anchors::Store(store) => store
            .current_at(now.as_secs() as i64)
            .ok_or_else(|| other(NoLocalSvid))?
            .bundles
            .clone(),
        Anchors::Fixed(bundles) => bundles.clone(),
    };
    if let Some(peer) = chains.get(end_entity, intermediates, &bundles, now) {
        return Ok(peer);
    }
    let mut chain = Vec::with_capacity(1 + intermediates.len());
    chain.push(end_entity.clone());
    chain.extend(intermediates.iter().cloned());
    let leaf = verify_chain(&chain, &bundles, now, purpose).map_err(refuse)?;
    // The parser spells serials as colon-separated hex, which always parses.
    let serial = CertSerial::parse(&leaf.serial)
        .map_err(|e| refuse(SvidError::Malformed(format!("serial: {e}"))))?;
    let peer = VerifiedPeer {
        id: leaf.id,
        serial,
    };
    let validity = (leaf.not_before, leaf.not_after);
    chains.insert(
        end_entity,
        intermediates,
        bundles,
        validity,
        peer.clone(),
        now,
    );
    Ok(peer)
}

/// Verifies a mesh server's SVID and that it is `expected`.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    anchors: Anchors,
    chains: VerifiedChains,
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
            anchors: Anchors::Store(store),
            chains: VerifiedChains::new(SERVER_CHAINS),
            expected,
            provider,
        }
    }

    /// A verifier trusting only `bundles`, for a client without an SVID of its own.
    pub fn with_bundles(
        bundles: Arc<TrustBundles>,
        expected: SpiffeId,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        Self {
            anchors: Anchors::Fixed(bundles),
            chains: VerifiedChains::new(SERVER_CHAINS),
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
        let peer = check(
            &self.anchors,
            &self.chains,
            end_entity,
            intermediates,
            now,
            Purpose::Server,
        )?;
        if peer.id != self.expected {
            return Err(refuse(SvidError::UnexpectedId {
                expected: self.expected.to_string(),
                got: peer.id.to_string(),
            }));
        }
        record_verified_peer(peer);
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

/// Verifies a client SVID from any trust domain we hold a bundle for; requires one unless made
/// [`optional`](Self::optional).
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    anchors: Anchors,
    chains: VerifiedChains,
    provider: Arc<CryptoProvider>,
    mandatory: bool,
}

impl SpiffeClientVerifier {
    /// A verifier reading bundles from `store` at each handshake.
    ///
    /// Every server configuration is built with one, so this is also where the crypto
    /// library is readied for the first handshake (see [`warm_up`]).
    pub fn new(store: Arc<CredentialStore>, provider: Arc<CryptoProvider>) -> Self {
        warm_up(&provider);
        Self {
            anchors: Anchors::Store(store),
            chains: VerifiedChains::new(CLIENT_CHAINS),
            provider,
            mandatory: true,
        }
    }

    /// Lets clients without a certificate through (a certificate they do send is still
    /// verified); the service must then refuse whatever needs an identity.
    pub fn optional(mut self) -> Self {
        self.mandatory = false;
        self
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
        let peer = check(
            &self.anchors,
            &self.chains,
            end_entity,
            intermediates,
            now,
            Purpose::Client,
        )?;
        record_verified_peer(peer);
        Ok(ClientCertVerified::assertion())
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
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

#[cfg(test)]
mod tests;
