//! Hands the store's current certificate to every handshake, so a rotated SVID is used by the
//! next handshake without touching open connections.

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use crate::CredentialStore;

/// Resolves our certificate from the credential store; none while we hold no valid SVID.
#[derive(Debug)]
pub(super) struct StoreResolver {
    store: Arc<CredentialStore>,
}

impl StoreResolver {
    pub(super) fn new(store: Arc<CredentialStore>) -> Self {
        Self { store }
    }

    fn key(&self) -> Option<Arc<CertifiedKey>> {
        self.store.current().map(|c| c.key.clone())
    }
}

impl ResolvesServerCert for StoreResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.key()
    }
}

impl ResolvesClientCert for StoreResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.key()
    }

    fn has_certs(&self) -> bool {
        true
    }
}
