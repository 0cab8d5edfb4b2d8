//! What a finished handshake established, and why a failed one failed — each found once, where
//! it happens, and carried as a type.
//!
//! The verifiers record the peer's SPIFFE ID, which they parse from the leaf while checking it,
//! in a slot that [`with_verified_peer`] opens around one handshake; nothing parses the
//! certificate again afterwards. A failure is classified once into a [`HandshakeError`].
//! [`warm_up`] makes the first handshake of a process cost what the later ones do.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::sync::{Arc, Once};

use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, OtherError};

use super::serial::CertSerial;
use crate::{SpiffeId, SvidError};

tokio::task_local! {
    static VERIFIED_PEER: RefCell<Option<VerifiedPeer>>;
}

/// The peer certificate our verifier accepted: its SPIFFE ID and serial (what a revocation by
/// identity or by one leaked SVID is checked against).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPeer {
    /// The SPIFFE ID from the leaf's URI SAN.
    pub id: SpiffeId,
    /// The leaf's serial number.
    pub serial: CertSerial,
}

/// Runs one handshake (`f`) and returns its result together with the peer our verifier
/// accepted during it (`None` when our verifier accepted no certificate). Read it only when the
/// handshake succeeded: a handshake can fail after the certificate was accepted.
pub async fn with_verified_peer<F: Future>(f: F) -> (F::Output, Option<VerifiedPeer>) {
    VERIFIED_PEER
        .scope(RefCell::new(None), async move {
            let out = f.await;
            let peer = VERIFIED_PEER.with(|p| p.borrow_mut().take());
            (out, peer)
        })
        .await
}

/// Called by the verifiers with the peer they accepted. Outside [`with_verified_peer`] (the
/// control plane's gRPC, which reads identities its own way) there is no slot and nothing to do.
pub(crate) fn record_verified_peer(peer: VerifiedPeer) {
    let _ = VERIFIED_PEER.try_with(|p| *p.borrow_mut() = Some(peer));
}

/// Readies the crypto library's random number generator, once per process, so that the first
/// handshake does not pay for it.
///
/// aws-lc seeds its process-wide generator on the first random bytes anyone asks for, from
/// CPU-jitter entropy: tens of milliseconds of CPU (the entropy source's start-up health tests,
/// then its first reads). Every handshake needs random bytes (the key share, the ECDSA
/// signature), so left alone that cost lands on the first connection a proxy serves, on each
/// side of it. Paid here, when the TLS configurations are built, it lands before the listeners
/// accept anything.
pub(crate) fn warm_up(provider: &CryptoProvider) {
    static READY: Once = Once::new();
    READY.call_once(|| {
        // A generator that fails here fails the first handshake again, which reports it.
        let _ = provider.secure_random.fill(&mut [0u8; 1]);
    });
}

/// Our verifiers refuse every handshake while we hold no valid SVID (fail closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no valid local SVID; refusing mesh handshakes")]
pub struct NoLocalSvid;

/// Wraps a typed refusal so it survives the trip through rustls.
pub(crate) fn other(e: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

fn other_of<E: std::error::Error + 'static>(e: &rustls::Error) -> Option<&E> {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<E>()
        }
        _ => None,
    }
}

/// Why a TLS handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The peer's certificate is not an acceptable SVID (or not the expected one).
    #[error(transparent)]
    PeerSvid(#[from] SvidError),
    /// The peer presented no certificate where one is required.
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    /// We hold no valid SVID, so no mesh handshake is possible.
    #[error(transparent)]
    NoLocalSvid(#[from] NoLocalSvid),
    /// The peer wanted a client certificate we did not send.
    #[error("peer requires a client certificate")]
    PeerRequiresCertificate,
    /// The peer aborted with an alert.
    #[error("peer sent alert: {0}")]
    PeerAlert(String),
    /// No common application protocol.
    #[error("no common application protocol")]
    NoApplicationProtocol,
    /// The peer speaks nothing we accept (e.g. not TLS 1.3).
    #[error("incompatible peer: {0}")]
    IncompatiblePeer(String),
    /// Some other certificate problem rustls found.
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    /// Another TLS error.
    #[error("TLS error: {0}")]
    Tls(String),
    /// The connection failed underneath TLS.
    #[error("I/O: {0}")]
    Io(String),
}

impl HandshakeError {
    /// Classifies the error tokio-rustls returned for a failed handshake.
    pub fn classify(e: &io::Error) -> Self {
        let Some(tls) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return Self::Io(e.to_string());
        };
        if let Some(svid) = other_of::<SvidError>(tls) {
            return Self::PeerSvid(svid.clone());
        }
        if let Some(none) = other_of::<NoLocalSvid>(tls) {
            return Self::NoLocalSvid(*none);
        }
        use rustls::Error as E;
        match tls {
            E::NoCertificatesPresented => Self::NoPeerCertificate,
            E::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
                Self::PeerRequiresCertificate
            }
            E::AlertReceived(a) => Self::PeerAlert(format!("{a:?}")),
            E::InvalidCertificate(c) => Self::InvalidCertificate(format!("{c:?}")),
            E::NoApplicationProtocol => Self::NoApplicationProtocol,
            E::PeerIncompatible(p) => Self::IncompatiblePeer(format!("{p:?}")),
            other => Self::Tls(other.to_string()),
        }
    }

    /// Stable, low-cardinality label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::PeerSvid(e) => e.reason(),
            Self::NoPeerCertificate => SvidError::NoCertificate.reason(),
            Self::NoLocalSvid(_) => "no_local_svid",
            Self::PeerRequiresCertificate => "peer_requires_certificate",
            Self::PeerAlert(_) => "peer_alert",
            Self::NoApplicationProtocol => "no_application_protocol",
            Self::IncompatiblePeer(_) => "incompatible_peer",
            Self::InvalidCertificate(_) => "invalid_certificate",
            Self::Tls(_) => "tls_error",
            Self::Io(_) => "io",
        }
    }

    /// Whether our side, not the peer, is the reason (no SVID of our own).
    pub fn is_local(&self) -> bool {
        matches!(self, Self::NoLocalSvid(_))
    }
}

#[cfg(test)]
mod tests {
    use rcgen::string::Ia5String;
    use rcgen::{CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose, SanType};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::svid::parse_count;
    use crate::tls::{provider, TlsContext};
    use crate::{CredentialStore, Credentials, TrustBundles};

    type Ca = CertifiedIssuer<'static, KeyPair>;

    fn key() -> KeyPair {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
    }

    fn root() -> Ca {
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        CertifiedIssuer::self_signed(p, key()).unwrap()
    }

    fn store_for(ca: &Ca, id: &str) -> Arc<CredentialStore> {
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::URI(Ia5String::try_from(id).unwrap())];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let k = key();
        let leaf = p.signed_by(&k, &**ca).unwrap().der().clone();
        let mut bundles = TrustBundles::new();
        let td = SpiffeId::parse(id).unwrap().trust_domain();
        bundles
            .insert(td, vec![CertificateDer::from(ca.der().to_vec())])
            .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(k.serialize_der()));
        let creds = Credentials::new(vec![leaf], key, bundles, &provider()).unwrap();
        let store = CredentialStore::new();
        store.set(creds);
        store
    }

    /// One real mesh handshake over an in-memory pipe, on this thread: returns what each side's
    /// verifier recorded, and how many times certificates were parsed during the handshake.
    async fn handshake(
        client: &TlsContext,
        server: &TlsContext,
        expect: &str,
    ) -> (Option<VerifiedPeer>, Option<VerifiedPeer>, usize) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let expected = SpiffeId::parse(expect).unwrap();
        let connector = TlsConnector::from(client.client_config(&expected).unwrap());
        let acceptor = TlsAcceptor::from(server.server_config(true));
        let before = parse_count::get();
        let name = ServerName::try_from("svidcar.invalid").unwrap();
        let ((c, client_saw), (s, server_saw)) = tokio::join!(
            with_verified_peer(connector.connect(name, a)),
            with_verified_peer(acceptor.accept(b)),
        );
        c.unwrap();
        s.unwrap();
        (client_saw, server_saw, parse_count::get() - before)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn each_side_parses_the_peer_leaf_once_and_gets_its_id_from_the_verifier() {
        let ca = root();
        let client = TlsContext::new(store_for(&ca, "spiffe://td/client"), provider()).unwrap();
        let server = TlsContext::new(store_for(&ca, "spiffe://td/server"), provider()).unwrap();
        let (client_saw, server_saw, parses) =
            handshake(&client, &server, "spiffe://td/server").await;
        let (client_saw, server_saw) = (client_saw.unwrap(), server_saw.unwrap());
        assert_eq!(client_saw.id.as_str(), "spiffe://td/server");
        assert_eq!(server_saw.id.as_str(), "spiffe://td/client");
        // Each side recorded the other's serial, as the leaf spells it.
        assert_ne!(client_saw.serial, server_saw.serial);
        let leaf = client.store().latest().unwrap();
        assert_eq!(
            server_saw.serial,
            CertSerial::parse(&leaf.leaf.serial).unwrap()
        );
        // One parse of the peer's leaf per verifying side (webpki's own is not ours to count).
        assert_eq!(parses, 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_peer_seen_before_is_not_verified_again() {
        let ca = root();
        let client = TlsContext::new(store_for(&ca, "spiffe://td/client"), provider()).unwrap();
        let server = TlsContext::new(store_for(&ca, "spiffe://td/server"), provider()).unwrap();
        let first = handshake(&client, &server, "spiffe://td/server").await;
        let again = handshake(&client, &server, "spiffe://td/server").await;
        assert_eq!(first.2, 2);
        assert_eq!(again.2, 0, "remembered chains are not parsed again");
        // Each side still learns who the peer is, from what its verifier remembered.
        assert_eq!((&first.0, &first.1), (&again.0, &again.1));
        assert!(again.0.is_some() && again.1.is_some());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn without_a_local_svid_the_failure_is_ours_not_the_peers() {
        let ca = root();
        let server = TlsContext::new(store_for(&ca, "spiffe://td/server"), provider()).unwrap();
        let client = TlsContext::new(CredentialStore::new(), provider()).unwrap();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let expected = SpiffeId::parse("spiffe://td/server").unwrap();
        let connector = TlsConnector::from(client.client_config(&expected).unwrap());
        let acceptor = TlsAcceptor::from(server.server_config(true));
        let name = ServerName::try_from("svidcar.invalid").unwrap();
        let ((c, client_saw), _) = tokio::join!(
            with_verified_peer(connector.connect(name, a)),
            acceptor.accept(b)
        );
        let e = HandshakeError::classify(&c.unwrap_err());
        assert_eq!((e.label(), e.is_local()), ("no_local_svid", true), "{e:?}");
        assert_eq!(client_saw, None);
    }

    #[test]
    fn labels_are_stable() {
        let io = io::Error::other("reset");
        assert_eq!(HandshakeError::classify(&io).label(), "io");
        let ours = io::Error::other(other(NoLocalSvid));
        let e = HandshakeError::classify(&ours);
        assert_eq!((e.label(), e.is_local()), ("no_local_svid", true));
        let general = io::Error::other(rustls::Error::General("x".into()));
        assert_eq!(HandshakeError::classify(&general).label(), "tls_error");
        let svid = io::Error::other(other(SvidError::LeafIsCa));
        assert_eq!(HandshakeError::classify(&svid).label(), "leaf_is_ca");
    }
}
