//! svidcar's node API: how `svidcar agent` on a node that does not hold the CA gets SVIDs from
//! `svidcar control`. A node joins once with a one-time token and gets a node SVID
//! (`spiffe://<trust domain>/svidcar/node/<name>`); with it, over mTLS, it renews itself, asks for
//! its workloads' SVIDs (each by CSR: private keys never leave the node) and fetches the bundle.
//! The control plane presents `spiffe://<trust domain>/svidcar/control`. The messages and stubs are
//! `svidcar_api::node`.

use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::CertificateDer;
use svidcar_identity::{IdError, SpiffeId, TrustDomain};

/// The path of node SVIDs, below the trust domain.
const NODE_PREFIX: &str = "/svidcar/node/";

/// The SPIFFE ID of node `name`.
pub fn node_id(td: &TrustDomain, name: &str) -> Result<SpiffeId, IdError> {
    SpiffeId::parse(&format!("{}{NODE_PREFIX}{name}", td.id_string()))
}

/// The node name in `id`, if it is a node SVID of `td`.
pub fn node_name<'a>(td: &TrustDomain, id: &'a SpiffeId) -> Option<&'a str> {
    if id.trust_domain_str() != td.as_str() {
        return None;
    }
    id.path()
        .strip_prefix(NODE_PREFIX)
        .filter(|n| !n.is_empty() && !n.contains('/'))
}

/// The SPIFFE ID `svidcar control` presents.
pub fn control_id(td: &TrustDomain) -> SpiffeId {
    SpiffeId::parse(&format!("{}/svidcar/control", td.id_string()))
        .unwrap_or_else(|_| unreachable!("a trust domain ID plus a fixed path is a valid ID"))
}

/// A new P-256 key (PKCS#8 DER) and a certificate signing request for it (DER). The request
/// names nothing: the CA decides the certificate's contents.
pub fn key_and_csr() -> Result<(Vec<u8>, Vec<u8>), rcgen::Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let csr = CertificateParams::default().serialize_request(&key)?;
    Ok((key.serialize_der(), csr.der().to_vec()))
}

/// One PEM block.
pub fn pem_of(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der.to_vec()), config)
}

/// A bundle as PEM certificates.
pub fn bundle_pem(bundle: &[CertificateDer<'static>]) -> String {
    bundle.iter().map(|c| pem_of("CERTIFICATE", c)).collect()
}

/// The bundle as sent on the wire.
pub fn bundle_to_wire(bundle: &[CertificateDer<'static>]) -> Vec<Vec<u8>> {
    bundle.iter().map(|c| c.to_vec()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_round_trip_and_nothing_else_is_a_node() {
        let td = TrustDomain::parse("example.org").unwrap();
        let id = node_id(&td, "node-a").unwrap();
        assert_eq!(id.as_str(), "spiffe://example.org/svidcar/node/node-a");
        assert_eq!(node_name(&td, &id), Some("node-a"));
        let other = TrustDomain::parse("other.org").unwrap();
        assert_eq!(node_name(&other, &id), None);
        for not_node in [
            "spiffe://example.org/svidcar/node/a/b",
            "spiffe://example.org/svidcar/control",
            "spiffe://example.org/ns/default/sa/web",
        ] {
            assert_eq!(node_name(&td, &SpiffeId::parse(not_node).unwrap()), None);
        }
        assert_eq!(
            control_id(&td).as_str(),
            "spiffe://example.org/svidcar/control"
        );
        let (key, csr) = key_and_csr().unwrap();
        assert!(!key.is_empty());
        assert!(rcgen::CertificateSigningRequestParams::from_der(&csr.as_slice().into()).is_ok());
    }
}
