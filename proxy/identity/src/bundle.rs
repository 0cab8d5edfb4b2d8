//! Trust bundles, one per trust domain and never merged: a peer is verified only against the
//! bundle of the trust domain its SPIFFE ID names.

use std::collections::HashMap;
use std::fmt;

use rustls::pki_types::{CertificateDer, TrustAnchor};

use crate::spiffe_id::TrustDomain;
use crate::svid::SvidError;

/// The CA certificates of every trust domain we trust, keyed by trust domain.
#[derive(Clone, Default)]
pub struct TrustBundles {
    anchors: HashMap<TrustDomain, Vec<TrustAnchor<'static>>>,
    certs: HashMap<TrustDomain, Vec<CertificateDer<'static>>>,
}

impl TrustBundles {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets (replaces) the bundle of one trust domain.
    pub fn insert(
        &mut self,
        td: TrustDomain,
        certs: Vec<CertificateDer<'static>>,
    ) -> Result<(), SvidError> {
        let anchors = certs
            .iter()
            .map(|c| {
                webpki::anchor_from_trusted_cert(c)
                    .map(|a| a.to_owned())
                    .map_err(|e| SvidError::Malformed(format!("bundle for {td}: {e:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.anchors.insert(td.clone(), anchors);
        self.certs.insert(td, certs);
        Ok(())
    }

    /// The trust anchors of `td`, if we have its bundle.
    pub fn anchors(&self, td: &TrustDomain) -> Option<&[TrustAnchor<'static>]> {
        self.anchors.get(td).map(Vec::as_slice)
    }

    /// The CA certificates of `td`, if we have its bundle.
    pub fn certs(&self, td: &TrustDomain) -> Option<&[CertificateDer<'static>]> {
        self.certs.get(td).map(Vec::as_slice)
    }

    /// Trust domains with a bundle, sorted.
    pub fn trust_domains(&self) -> Vec<&TrustDomain> {
        let mut v: Vec<_> = self.anchors.keys().collect();
        v.sort();
        v
    }
}

impl fmt::Debug for TrustBundles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.certs.iter().map(|(k, v)| (k.as_str(), v.len())))
            .finish()
    }
}
