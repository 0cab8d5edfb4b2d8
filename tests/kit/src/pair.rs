//! A throwaway CA's SVIDs held in memory, and a client/server pair of proxies on loopback:
//! app client → client proxy's explicit outbound route → mTLS → server proxy's explicit inbound
//! (STRICT unless a tweak says otherwise) → app.
//!
//! ```ignore
//! let pair = PairBuilder::new(app).admin(true).start().await?;
//! TcpStream::connect(pair.route).await?; // plaintext in, the app sees it after the mesh
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use svidcar_control::{Ca, CaError, IssuedSvid};
use svidcar_identity::{CredentialStore, Credentials, IdError, SpiffeId, SvidError, TrustBundles};
use svidcar_proxy::config::{Mode, ProxyConfig, Route};
use svidcar_proxy::{ProxyHandle, StartError};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// The trust domain of a pair unless [`PairBuilder::trust_domain`] says otherwise.
pub const TRUST_DOMAIN: &str = "example.org";
/// The client proxy's SPIFFE ID unless [`PairBuilder::client_id`] says otherwise.
pub const CLIENT_ID: &str = "spiffe://example.org/ns/default/sa/client";
/// The server proxy's SPIFFE ID unless [`PairBuilder::server_id`] says otherwise.
pub const SERVER_ID: &str = "spiffe://example.org/ns/default/sa/server";

/// Lifetime of the throwaway CA.
const CA_TTL: Duration = Duration::from_secs(86_400);
/// Lifetime of the SVIDs issued here.
const SVID_TTL: Duration = Duration::from_secs(3_600);

/// A TCP echo app on loopback: echoes bytes as they come and half-closes when the client does.
pub async fn echo_app() -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind(localhost()).await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    Ok(addr)
}

/// Why a pair (or one of its proxies) could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// A SPIFFE ID or trust domain given to the builder is malformed.
    #[error("{0}")]
    Id(#[from] IdError),
    /// The CA could not be generated or could not sign.
    #[error("throwaway CA: {0}")]
    Ca(#[from] CaError),
    /// An issued SVID was refused as credentials.
    #[error("credentials: {0}")]
    Svid(#[from] SvidError),
    /// A proxy did not start.
    #[error("proxy: {0}")]
    Start(#[from] StartError),
    /// A proxy started without the listener the pair needs (a tweak turned it off).
    #[error("the {0} proxy has no {1} listener")]
    NoListener(&'static str, &'static str),
}

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// In-memory credentials for `svid`, trusting `ca`'s trust domain bundle.
pub fn credentials(ca: &Ca, svid: &IssuedSvid) -> Result<Credentials, KitError> {
    let mut bundles = TrustBundles::new();
    bundles.insert(ca.trust_domain().clone(), vec![ca.bundle_der().clone()])?;
    Ok(Credentials::new(
        vec![svid.cert_der.clone()],
        svid.key_der(),
        bundles,
        &svidcar_identity::tls::provider(),
    )?)
}

/// A credential store holding a fresh SVID for `id`, issued by `ca` (valid for an hour).
pub fn store(ca: &Ca, id: &SpiffeId) -> Result<Arc<CredentialStore>, KitError> {
    let store = CredentialStore::new();
    store.set(credentials(ca, &ca.issue(id, SVID_TTL)?)?);
    Ok(store)
}

/// Every listener on loopback port 0; with `admin`, the admin server too, else none.
fn base_config(admin: bool) -> ProxyConfig {
    let mut config = ProxyConfig::default();
    config.admin.enabled = admin;
    config.admin.listen = localhost();
    config
}

/// A server proxy's config: outbound off, explicit inbound on loopback forwarding to `app`
/// (the default mTLS mode, STRICT).
pub fn server_config(app: SocketAddr, admin: bool) -> ProxyConfig {
    let mut config = base_config(admin);
    config.outbound.enabled = false;
    config.inbound.mode = Mode::Explicit;
    config.inbound.listen = localhost();
    config.inbound.app = Some(app);
    config
}

/// A client proxy's config: inbound off, one explicit outbound route on loopback to
/// `upstream`, which must present `server_id`.
pub fn client_config(upstream: SocketAddr, server_id: SpiffeId, admin: bool) -> ProxyConfig {
    let mut config = base_config(admin);
    config.inbound.enabled = false;
    config.outbound.mode = Mode::Explicit;
    config.outbound.routes = vec![Route {
        listen: localhost(),
        upstream,
        server_id,
        tunnel: None,
    }];
    config
}

/// Starts a proxy with `config` and a fresh in-memory SVID for `id` issued by `ca`.
pub async fn start_proxy(
    ca: &Ca,
    id: &SpiffeId,
    config: ProxyConfig,
) -> Result<ProxyHandle, KitError> {
    Ok(svidcar_proxy::start(config, store(ca, id)?).await?)
}

type Tweak = Box<dyn FnOnce(&mut ProxyConfig) + Send>;

/// Options of a [`Pair`]; [`PairBuilder::start`] starts it.
pub struct PairBuilder {
    app: SocketAddr,
    trust_domain: String,
    client_id: String,
    server_id: String,
    admin: bool,
    tunnel: bool,
    client_tweak: Option<Tweak>,
    server_tweak: Option<Tweak>,
}

impl std::fmt::Debug for PairBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairBuilder")
            .field("app", &self.app)
            .field("trust_domain", &self.trust_domain)
            .field("client_id", &self.client_id)
            .field("server_id", &self.server_id)
            .field("admin", &self.admin)
            .field("tunnel", &self.tunnel)
            .finish_non_exhaustive()
    }
}

impl PairBuilder {
    /// A pair in front of `app`: trust domain [`TRUST_DOMAIN`], [`CLIENT_ID`] and
    /// [`SERVER_ID`], no admin servers.
    pub fn new(app: SocketAddr) -> Self {
        PairBuilder {
            app,
            trust_domain: TRUST_DOMAIN.into(),
            client_id: CLIENT_ID.into(),
            server_id: SERVER_ID.into(),
            admin: false,
            tunnel: false,
            client_tweak: None,
            server_tweak: None,
        }
    }

    /// The trust domain of the throwaway CA [`start`](Self::start) generates.
    pub fn trust_domain(mut self, td: &str) -> Self {
        self.trust_domain = td.into();
        self
    }

    /// The client proxy's SPIFFE ID.
    pub fn client_id(mut self, id: &str) -> Self {
        self.client_id = id.into();
        self
    }

    /// The server proxy's SPIFFE ID (the client's route expects it).
    pub fn server_id(mut self, id: &str) -> Self {
        self.server_id = id.into();
        self
    }

    /// Whether both proxies run their admin server (on a loopback port 0).
    pub fn admin(mut self, on: bool) -> Self {
        self.admin = on;
        self
    }

    /// Carry the route's connections over a pooled tunnel: the server proxy listens for
    /// tunnels on loopback and the client's route names that listener.
    pub fn tunnel(mut self, on: bool) -> Self {
        self.tunnel = on;
        self
    }

    /// Changes the client proxy's config last, before it starts (its first route already points
    /// at the server's inbound, and with [`Self::tunnel`] names the server's tunnel).
    pub fn client_config(mut self, tweak: impl FnOnce(&mut ProxyConfig) + Send + 'static) -> Self {
        self.client_tweak = Some(Box::new(tweak));
        self
    }

    /// Changes the server proxy's config last, before it starts.
    pub fn server_config(mut self, tweak: impl FnOnce(&mut ProxyConfig) + Send + 'static) -> Self {
        self.server_tweak = Some(Box::new(tweak));
        self
    }

    /// Generates a throwaway CA for the trust domain and starts the pair with its SVIDs.
    pub async fn start(self) -> Result<Pair, KitError> {
        let td = svidcar_identity::TrustDomain::parse(&self.trust_domain)?;
        let ca = Ca::generate(&td, CA_TTL)?;
        self.start_with_ca(&ca).await
    }

    /// Starts the pair with SVIDs from `ca` (the builder's trust domain is not used).
    pub async fn start_with_ca(self, ca: &Ca) -> Result<Pair, KitError> {
        let client_id = SpiffeId::parse(&self.client_id)?;
        let server_id = SpiffeId::parse(&self.server_id)?;
        let mut server_cfg = server_config(self.app, self.admin);
        if self.tunnel {
            server_cfg.tunnel.listen = Some(localhost());
        }
        if let Some(tweak) = self.server_tweak {
            tweak(&mut server_cfg);
        }
        let server = start_proxy(ca, &server_id, server_cfg).await?;
        let inbound = server
            .inbound_addr
            .ok_or(KitError::NoListener("server", "inbound"))?;

        let mut client_cfg = client_config(inbound, server_id.clone(), self.admin);
        if self.tunnel {
            let tunnel = server
                .tunnel_addr
                .ok_or(KitError::NoListener("server", "tunnel"))?;
            for r in &mut client_cfg.outbound.routes {
                r.tunnel = Some(tunnel);
            }
        }
        if let Some(tweak) = self.client_tweak {
            tweak(&mut client_cfg);
        }
        let client = start_proxy(ca, &client_id, client_cfg).await?;
        let route = *client
            .outbound_addrs
            .first()
            .ok_or(KitError::NoListener("client", "outbound route"))?;
        Ok(Pair {
            route,
            inbound,
            client,
            server,
            client_id,
            server_id,
        })
    }
}

/// A running pair: connect to `route` to reach the app through the mesh.
#[derive(Debug)]
pub struct Pair {
    /// The client proxy (the app's side).
    pub client: ProxyHandle,
    /// The server proxy (in front of the app).
    pub server: ProxyHandle,
    /// The client proxy's first route: plaintext in, mTLS to `inbound`.
    pub route: SocketAddr,
    /// The server proxy's inbound listener (mTLS in, plaintext to the app).
    pub inbound: SocketAddr,
    /// The SPIFFE ID in the client proxy's SVID.
    pub client_id: SpiffeId,
    /// The SPIFFE ID in the server proxy's SVID.
    pub server_id: SpiffeId,
}

impl Pair {
    /// Drains and stops both proxies, client first.
    pub async fn shutdown(self) {
        self.client.shutdown().await;
        self.server.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pair_carries_bytes_exactly_between_the_expected_identities() {
        let pair = PairBuilder::new(echo_app().await.unwrap())
            .trust_domain("kit.test")
            .client_id("spiffe://kit.test/ns/a/sa/caller")
            .server_id("spiffe://kit.test/ns/b/sa/callee")
            .start()
            .await
            .unwrap();
        assert_eq!(pair.client.admin_addr, None, "admin off by default");
        let mut server_log = pair.server.subscribe();

        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let s = TcpStream::connect(pair.route).await.unwrap();
        let (mut r, mut w) = s.into_split();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), r.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        writer.await.unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "bytes changed on the way");

        let rec = tokio::time::timeout(Duration::from_secs(10), server_log.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rec.tls.mode(), "mutual_tls");
        assert_eq!(
            rec.client_id().map(SpiffeId::as_str),
            Some("spiffe://kit.test/ns/a/sa/caller")
        );
        assert_eq!(
            rec.server_id().map(SpiffeId::as_str),
            Some("spiffe://kit.test/ns/b/sa/callee")
        );
        assert_eq!((rec.bytes_up, rec.bytes_down), (300_000, 300_000));
        assert_eq!(pair.client_id.as_str(), "spiffe://kit.test/ns/a/sa/caller");
        pair.shutdown().await;
    }
}
