//! TLS configuration for the mesh: TLS 1.3 only, aws-lc-rs, our SVID from the credential store,
//! peers verified as X.509-SVIDs.

mod handshake;
mod resolver;
mod serial;
mod unverified;
mod verifier;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, ServerConfig};

use crate::{CredentialStore, SpiffeId, TrustBundles};
pub use handshake::{with_verified_peer, HandshakeError, NoLocalSvid, VerifiedPeer};
use resolver::StoreResolver;
pub use serial::{CertSerial, SerialError};
pub use unverified::unverified_client_config;
pub use verifier::{SpiffeClientVerifier, SpiffeServerVerifier};

/// The ALPN token by which the inbound side recognises mesh mTLS from another svidcar.
pub const MESH_ALPN: &[u8] = b"svidcar/1";

/// The ALPN token of the pooled tunnel port: HTTP/2, whose `CONNECT` streams carry the app's
/// connections (as HBONE does).
pub const TUNNEL_ALPN: &[u8] = b"h2";

/// The crypto provider used everywhere: aws-lc-rs with rustls's TLS 1.3 suites, AES-128-GCM
/// with SHA-256 preferred. Its key schedule runs on the SHA-256 instructions x86 and ARM CPUs
/// have (there are none for SHA-384, which the handshake profile showed as the top symbol under
/// AES-256-GCM-SHA384), and AES-128 costs less per byte; all three suites stay offered.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(p)
}

/// Builds TLS configurations that always use the store's current credentials.
#[derive(Debug, Clone)]
pub struct TlsContext {
    store: Arc<CredentialStore>,
    provider: Arc<CryptoProvider>,
    mesh_server: Arc<ServerConfig>,
    plain_server: Arc<ServerConfig>,
    /// Mesh client configs by expected server identity: built once per destination identity,
    /// not per connection. They read credentials from the store at each handshake, so rotation
    /// needs no invalidation.
    mesh_clients: Arc<Mutex<HashMap<SpiffeId, Arc<ClientConfig>>>>,
    /// Tunnel server config: client certificate required, ALPN [`TUNNEL_ALPN`].
    tunnel_server: Arc<ServerConfig>,
    /// Tunnel client configs by expected server identity, like `mesh_clients`.
    tunnel_clients: Arc<Mutex<HashMap<SpiffeId, Arc<ClientConfig>>>>,
}

/// Distinct server identities whose client configs are kept; beyond it the cache starts over.
const MAX_CACHED_CLIENT_CONFIGS: usize = 4096;

impl TlsContext {
    /// Creates the context; server configs are built once and follow rotations through the
    /// resolver and verifier.
    pub fn new(
        store: Arc<CredentialStore>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, rustls::Error> {
        let verifier = SpiffeClientVerifier::new(store.clone(), provider.clone());
        let mut server = server_base(&store, &provider, verifier)?;
        // TLS without our ALPN (curl, openssl with an SVID) is answered without ALPN.
        let plain_server = Arc::new(server.clone());
        let mut tunnel_server = server.clone();
        tunnel_server.alpn_protocols = vec![TUNNEL_ALPN.to_vec()];
        server.alpn_protocols = vec![MESH_ALPN.to_vec()];
        Ok(Self {
            store,
            provider,
            mesh_server: Arc::new(server),
            plain_server,
            mesh_clients: Arc::new(Mutex::new(HashMap::new())),
            tunnel_server: Arc::new(tunnel_server),
            tunnel_clients: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// Server config for mesh mTLS; `offers_mesh_alpn` says whether the ClientHello carried
    /// [`MESH_ALPN`].
    pub fn server_config(&self, offers_mesh_alpn: bool) -> Arc<ServerConfig> {
        if offers_mesh_alpn {
            self.mesh_server.clone()
        } else {
            self.plain_server.clone()
        }
    }

    /// Client config that presents our SVID and accepts only a server whose SVID is `expected`.
    pub fn client_config(&self, expected: &SpiffeId) -> Result<Arc<ClientConfig>, rustls::Error> {
        self.cached_client_config(&self.mesh_clients, expected, MESH_ALPN)
    }

    /// Server config of the tunnel port: a client SVID required, ALPN [`TUNNEL_ALPN`].
    pub fn tunnel_server_config(&self) -> Arc<ServerConfig> {
        self.tunnel_server.clone()
    }

    /// [`Self::client_config`] for a pooled tunnel connection (ALPN [`TUNNEL_ALPN`]).
    pub fn tunnel_client_config(
        &self,
        expected: &SpiffeId,
    ) -> Result<Arc<ClientConfig>, rustls::Error> {
        self.cached_client_config(&self.tunnel_clients, expected, TUNNEL_ALPN)
    }

    fn cached_client_config(
        &self,
        cache: &Mutex<HashMap<SpiffeId, Arc<ClientConfig>>>,
        expected: &SpiffeId,
        alpn: &[u8],
    ) -> Result<Arc<ClientConfig>, rustls::Error> {
        let mut cache = match cache.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(c) = cache.get(expected) {
            return Ok(c.clone());
        }
        let config = self.client_config_with_alpn(expected, alpn)?;
        if cache.len() >= MAX_CACHED_CLIENT_CONFIGS {
            cache.clear();
        }
        cache.insert(expected.clone(), config.clone());
        Ok(config)
    }

    /// Server config for a service of our own (the control plane's gRPC) that requires a client
    /// SVID and negotiates `alpn` (e.g. `h2`).
    pub fn server_config_with_alpn(&self, alpn: &[u8]) -> Arc<ServerConfig> {
        let mut config = (*self.plain_server).clone();
        config.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(config)
    }

    /// [`Self::server_config_with_alpn`] that also admits clients without a certificate (an
    /// agent joining with a token); the service must refuse whatever needs an identity.
    pub fn server_config_client_optional(
        &self,
        alpn: &[u8],
    ) -> Result<Arc<ServerConfig>, rustls::Error> {
        let verifier =
            SpiffeClientVerifier::new(self.store.clone(), self.provider.clone()).optional();
        let mut config = server_base(&self.store, &self.provider, verifier)?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(config))
    }

    /// [`Self::client_config`] negotiating `alpn` instead of the mesh token.
    pub fn client_config_with_alpn(
        &self,
        expected: &SpiffeId,
        alpn: &[u8],
    ) -> Result<Arc<ClientConfig>, rustls::Error> {
        let verifier =
            SpiffeServerVerifier::new(self.store.clone(), expected.clone(), self.provider.clone());
        let config = client_base(&self.provider, verifier)?
            .with_client_cert_resolver(Arc::new(StoreResolver::new(self.store.clone())));
        Ok(client_finish(config, alpn))
    }

    /// The credential store.
    pub fn store(&self) -> &Arc<CredentialStore> {
        &self.store
    }
}

/// A client config for a client that holds no SVID yet: it presents no certificate and accepts
/// only a server whose SVID chains to `bundles` and is `expected`.
pub fn bootstrap_client_config(
    bundles: Arc<TrustBundles>,
    expected: &SpiffeId,
    alpn: &[u8],
    provider: Arc<CryptoProvider>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let verifier = SpiffeServerVerifier::with_bundles(bundles, expected.clone(), provider.clone());
    let config = client_base(&provider, verifier)?.with_no_client_auth();
    Ok(client_finish(config, alpn))
}

/// TLS 1.3 with our certificate from `store` and client certificates checked by `verifier`,
/// without session resumption: every connection presents and verifies a current SVID, so a
/// rotated-away or expired certificate never rides on an old session.
fn server_base(
    store: &Arc<CredentialStore>,
    provider: &Arc<CryptoProvider>,
    verifier: SpiffeClientVerifier,
) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(StoreResolver::new(store.clone())));
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// TLS 1.3 checking the server with `verifier`; the caller chooses the client certificate.
fn client_base(
    provider: &Arc<CryptoProvider>,
    verifier: SpiffeServerVerifier,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, rustls::Error> {
    Ok(ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier)))
}

/// Negotiates `alpn`, never resumes a session (as on the server side).
fn client_finish(mut config: ClientConfig, alpn: &[u8]) -> Arc<ClientConfig> {
    config.alpn_protocols = vec![alpn.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_128_gcm_sha256_is_preferred_and_the_others_kept() {
        let p = provider();
        assert_eq!(
            p.cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        assert_eq!(
            p.cipher_suites.len(),
            rustls::crypto::aws_lc_rs::default_provider()
                .cipher_suites
                .len()
        );
    }

    #[test]
    fn client_configs_are_built_once_per_server_identity() {
        let ctx = TlsContext::new(CredentialStore::new(), provider()).unwrap();
        let a = SpiffeId::parse("spiffe://td/a").unwrap();
        let b = SpiffeId::parse("spiffe://td/b").unwrap();
        let first = ctx.client_config(&a).unwrap();
        assert!(Arc::ptr_eq(&first, &ctx.client_config(&a).unwrap()));
        assert!(!Arc::ptr_eq(&first, &ctx.client_config(&b).unwrap()));
        assert_eq!(first.alpn_protocols, vec![MESH_ALPN.to_vec()]);
        let tunnel = ctx.tunnel_client_config(&a).unwrap();
        assert!(Arc::ptr_eq(&tunnel, &ctx.tunnel_client_config(&a).unwrap()));
        assert_eq!(tunnel.alpn_protocols, vec![TUNNEL_ALPN.to_vec()]);
        assert_eq!(
            ctx.tunnel_server_config().alpn_protocols,
            vec![TUNNEL_ALPN.to_vec()]
        );
    }
}
