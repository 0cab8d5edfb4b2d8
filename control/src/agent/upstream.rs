//! An agent without the CA gets its SVIDs from `svidcar control` over the node API
//! ([`crate::node`]): it joins once with a one-time token (verifying the control plane with a
//! bootstrap bundle), keeps its node SVID in its data directory and renews it at about half its
//! lifetime, asks for each workload SVID by CSR (keys never leave the node), and follows the
//! trust bundle (a new root arrives before it signs anything).
//!
//! The node SVID, its key and the bundle are kept together in the data directory
//! ([`super::node_state`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use svidcar_api::channel::{lazy as lazy_channel, ChannelError};
use svidcar_identity::backoff::{jitter, Backoff};
use svidcar_identity::pem_source::{self, PemError};
use svidcar_identity::tls::{bootstrap_client_config, provider, TlsContext};
use svidcar_identity::{
    format_unix, unix_now, CredentialStore, Credentials, Dur, SpiffeId, SvidError, TrustBundles,
    TrustDomain,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::node_state::{self, NodeState, NodeStateError};
use super::{AgentError, UpstreamConfig};
use crate::authority::Bundle;
use crate::node::{control_id, key_and_csr, node_name};
use svidcar_api::node::client::NodeServiceClient;
use svidcar_api::node::{GetBundleRequest, JoinRequest, RenewNodeRequest, SignWorkloadRequest};

/// Who caused an [`UpstreamError`]: what decides whether trying again can help, and how loud
/// a failure is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// This node: its settings, files or data directory. Trying again does not help until the
    /// operator fixes them.
    Local,
    /// The control plane answered, refusing the request or sending something unusable. Trying
    /// again helps only once it (or its allow list) changes.
    ControlPlane,
    /// No answer: the control plane is unreachable or the call was cut short. Trying again
    /// helps.
    Network,
}

/// Why joining, renewing the node SVID, getting a workload SVID or fetching the bundle failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The data directory cannot hold the node state (checked before a join spends the token).
    #[error("{0}")]
    DataDir(#[source] NodeStateError),
    /// Joined, but the node state cannot be written: the one-time token is spent.
    #[error("joined, but cannot keep the node SVID (the token is spent): {0}")]
    Keep(#[source] NodeStateError),
    /// A file named by a setting (the join token, the bootstrap bundle) cannot be read.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The join token file holds no token.
    #[error("{}: empty", path.display())]
    EmptyToken {
        /// The token file.
        path: PathBuf,
    },
    /// The bootstrap bundle (`--server-bundle`) holds no usable PEM certificate.
    #[error("{0}")]
    BundlePem(#[source] PemError),
    /// The bootstrap bundle's certificates cannot be trust anchors.
    #[error("{}: {source}", path.display())]
    BundleAnchors {
        /// The bundle file.
        path: PathBuf,
        /// Why a certificate was refused.
        #[source]
        source: SvidError,
    },
    /// The node SVID we hold (kept or just received when joining) cannot be used for TLS.
    #[error("node SVID: {0}")]
    NodeSvid(#[source] SvidError),
    /// The TLS client configuration cannot be built (internal).
    #[error("{0}")]
    Tls(#[source] rustls::Error),
    /// No channel to the control plane can be set up (its address is unusable).
    #[error("{0}")]
    Channel(#[source] ChannelError),
    /// A key pair or certificate signing request cannot be made (internal).
    #[error("cannot make a key and CSR: {0}")]
    Csr(#[source] rcgen::Error),
    /// The control plane did not accept TCP connections for all of `--join-wait`; we gave up.
    #[error("{server} unreachable for {waited} ({source}); giving up (--join-wait)")]
    Unreachable {
        /// The control plane's address.
        server: String,
        /// How long we tried.
        waited: Dur,
        /// The last connect error.
        #[source]
        source: std::io::Error,
    },
    /// The control plane answered a call with a refusal (a spent token, an ID the node may not
    /// have, a node no longer allowed, a malformed request).
    #[error("{op}: {} ({:?})", status.message(), status.code())]
    Refused {
        /// What we asked for.
        op: String,
        /// The control plane's answer.
        #[source]
        status: tonic::Status,
    },
    /// A call got no answer: the control plane is unreachable or the call was cut short.
    #[error("{op}: {} ({:?})", status.message(), status.code())]
    Unanswered {
        /// What we asked for.
        op: String,
        /// The status the client library made up.
        #[source]
        status: tonic::Status,
    },
    /// The control plane sent an empty trust bundle.
    #[error("the control plane sent an empty bundle")]
    EmptyBundle,
    /// The control plane sent a node SVID or bundle that does not work with our key or with
    /// each other.
    #[error("the control plane sent unusable credentials: {0}")]
    Unusable(#[source] SvidError),
}

impl UpstreamError {
    /// A failed call `op`: a refusal when the control plane answered, [`Self::Unanswered`] when
    /// the status comes from the client side (unreachable, timed out, cancelled).
    fn rpc(op: impl Into<String>, status: tonic::Status) -> Self {
        use tonic::Code;
        let op = op.into();
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                Self::Unanswered { op, status }
            }
            _ => Self::Refused { op, status },
        }
    }

    /// Who caused the error.
    pub fn cause(&self) -> Cause {
        match self {
            Self::DataDir(_)
            | Self::Keep(_)
            | Self::File { .. }
            | Self::EmptyToken { .. }
            | Self::BundlePem(_)
            | Self::BundleAnchors { .. }
            | Self::NodeSvid(_)
            | Self::Tls(_)
            | Self::Channel(_)
            | Self::Csr(_) => Cause::Local,
            Self::Refused { .. } | Self::EmptyBundle | Self::Unusable(_) => Cause::ControlPlane,
            Self::Unreachable { .. } | Self::Unanswered { .. } => Cause::Network,
        }
    }

    /// Whether trying the same call again soon may succeed: only when the control plane did
    /// not answer.
    pub fn is_transient(&self) -> bool {
        self.cause() == Cause::Network
    }
}

/// Why the node state kept in the data directory cannot be reused (the agent then joins with a
/// token, and says why when it has none).
#[derive(Debug, thiserror::Error)]
enum KeptError {
    /// There is no state, or it cannot be read.
    #[error("{0}")]
    State(#[source] NodeStateError),
    /// The SVID, key and bundle kept do not make usable credentials.
    #[error("{}: unusable node SVID: {source}", file.display())]
    Unusable {
        /// The state file.
        file: PathBuf,
        /// Why.
        #[source]
        source: SvidError,
    },
    /// The node SVID kept has expired.
    #[error("the node SVID in {} expired at {}", file.display(), format_unix(*not_after))]
    Expired {
        /// The state file.
        file: PathBuf,
        /// Its expiry, seconds since the Unix epoch.
        not_after: i64,
    },
    /// The SVID kept is not a node SVID of our trust domain.
    #[error("{}: {id} is not a node SVID of {td}", file.display())]
    NotNode {
        /// The state file.
        file: PathBuf,
        /// The SVID's ID.
        id: SpiffeId,
        /// Our trust domain.
        td: TrustDomain,
    },
}

/// The connection to the control plane.
pub struct Upstream {
    td: TrustDomain,
    dir: PathBuf,
    provider: Arc<CryptoProvider>,
    store: Arc<CredentialStore>,
    /// The node SVID, key and bundle in force; held while they are installed and saved, so
    /// that concurrent updates (a renewal, a bundle) never undo each other.
    state: Mutex<NodeState>,
    client: NodeServiceClient<Channel>,
    bundle_tx: watch::Sender<Bundle>,
    bundle_refresh: Duration,
    name: String,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("td", &self.td)
            .field("node", &self.name)
            .finish_non_exhaustive()
    }
}

fn certs_from_wire(bundle: Vec<Vec<u8>>) -> Result<Vec<CertificateDer<'static>>, UpstreamError> {
    if bundle.is_empty() {
        return Err(UpstreamError::EmptyBundle);
    }
    Ok(bundle.into_iter().map(CertificateDer::from).collect())
}

fn read_file(path: &Path) -> Result<Vec<u8>, UpstreamError> {
    std::fs::read(path).map_err(|source| UpstreamError::File {
        path: path.to_owned(),
        source,
    })
}

fn read_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, UpstreamError> {
    pem_source::parse_certs(path, &read_file(path)?).map_err(UpstreamError::BundlePem)
}

impl Upstream {
    /// Connects to the control plane: reuses the node SVID kept in the data directory if it is
    /// still valid, or joins with the token. Errors stop start-up with a message.
    pub async fn connect(args: &UpstreamConfig, td: &TrustDomain) -> Result<Arc<Self>, AgentError> {
        let server = args.server.clone().ok_or_else(|| AgentError::Invalid {
            field: "--server",
            message: "missing".into(),
        })?;
        let server_id = args.server_id.clone().unwrap_or_else(|| control_id(td));
        let dir = args.data_dir.clone();
        node_state::ensure_dir(&dir).map_err(UpstreamError::DataDir)?;
        let provider = provider();
        let (state, name) = match load_kept(&dir, td, &provider) {
            Ok(kept) => {
                tracing::info!(dir = %dir.display(), node = %kept.1, "using the node SVID kept from an earlier run");
                kept
            }
            Err(why) => {
                let joined = join(args, &server, &server_id, td, &provider, &why).await?;
                node_state::save(&dir, &joined.0).map_err(UpstreamError::Keep)?;
                joined
            }
        };
        let store = CredentialStore::new();
        store.set(make_credentials(td, &state, &provider).map_err(UpstreamError::NodeSvid)?);
        let tls = TlsContext::new(store.clone(), provider.clone()).map_err(UpstreamError::Tls)?;
        let config = tls
            .client_config_with_alpn(&server_id, b"h2")
            .map_err(UpstreamError::Tls)?;
        let channel = lazy_channel(&server, config).map_err(UpstreamError::Channel)?;
        let (bundle_tx, _) = watch::channel(Arc::new(state.bundle.clone()));
        let up = Self {
            td: td.clone(),
            dir,
            provider,
            store,
            state: Mutex::new(state),
            client: NodeServiceClient::new(channel),
            bundle_tx,
            bundle_refresh: args.bundle_refresh.0,
            name,
        };
        Ok(Arc::new(up))
    }

    /// Installs a new node SVID and/or bundle: credentials for the next handshakes, the file,
    /// and watchers when the bundle changed — all under the state lock.
    fn install(
        &self,
        node: Option<(CertificateDer<'static>, Vec<u8>)>,
        bundle: Option<Vec<CertificateDer<'static>>>,
    ) -> Result<i64, UpstreamError> {
        let mut state = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut next = state.clone();
        if let Some((cert, key)) = node {
            next.cert = cert;
            next.key = key;
        }
        let bundle_changed = bundle.as_ref().is_some_and(|b| *b != state.bundle);
        if let Some(b) = bundle {
            next.bundle = b;
        }
        let creds =
            make_credentials(&self.td, &next, &self.provider).map_err(UpstreamError::Unusable)?;
        let not_after = creds.leaf.not_after;
        self.store.set(creds);
        if let Err(e) = node_state::save(&self.dir, &next) {
            tracing::warn!(error = %e, "cannot keep the node SVID and bundle on disk");
        }
        if bundle_changed {
            tracing::info!(roots = next.bundle.len(), "trust bundle changed");
            self.bundle_tx.send_replace(Arc::new(next.bundle.clone()));
        }
        *state = next;
        Ok(not_after)
    }

    /// Our trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.td
    }

    /// The node's name.
    pub fn node_name(&self) -> &str {
        &self.name
    }

    /// The bundle now.
    pub fn bundle(&self) -> Bundle {
        self.bundle_tx.borrow().clone()
    }

    /// The bundle, now and on every change.
    pub fn watch_bundle(&self) -> watch::Receiver<Bundle> {
        self.bundle_tx.subscribe()
    }

    /// Takes a bundle the control plane sent.
    fn take_bundle(&self, wire: Vec<Vec<u8>>) -> Result<(), UpstreamError> {
        let bundle = certs_from_wire(wire)?;
        if **self.bundle_tx.borrow() == bundle {
            return Ok(());
        }
        self.install(None, Some(bundle)).map(|_| ())
    }

    /// Gets an SVID for `id` from the control plane: a new key here, a CSR there, with the
    /// selectors it is issued for (the control plane's inventory records them). Returns the
    /// certificate and the PKCS#8 key, DER.
    pub async fn issue(
        &self,
        id: &SpiffeId,
        selectors: &[String],
    ) -> Result<(CertificateDer<'static>, Vec<u8>), UpstreamError> {
        let (key, csr) = key_and_csr().map_err(UpstreamError::Csr)?;
        let resp = self
            .client
            .clone()
            .sign_workload(sign_request(id, csr, selectors))
            .await
            .map_err(|s| UpstreamError::rpc("control plane refused the SVID", s))?
            .into_inner();
        self.take_bundle(resp.bundle)?;
        Ok((CertificateDer::from(resp.svid), key))
    }

    async fn renew_node(&self) -> Result<i64, UpstreamError> {
        let (key, csr) = key_and_csr().map_err(UpstreamError::Csr)?;
        let resp = self
            .client
            .clone()
            .renew_node(RenewNodeRequest { csr })
            .await
            .map_err(|s| UpstreamError::rpc("node SVID renewal", s))?
            .into_inner();
        let bundle = certs_from_wire(resp.bundle)?;
        self.install(Some((CertificateDer::from(resp.svid), key)), Some(bundle))
    }

    async fn refresh_bundle(&self) -> Result<(), UpstreamError> {
        let resp = self
            .client
            .clone()
            .get_bundle(GetBundleRequest {})
            .await
            .map_err(|s| UpstreamError::rpc("bundle", s))?
            .into_inner();
        self.take_bundle(resp.bundle)
    }

    /// When the node SVID expires, seconds since the Unix epoch.
    pub fn node_not_after(&self) -> i64 {
        self.node_window().1
    }

    fn node_window(&self) -> (i64, i64) {
        self.store
            .latest()
            .map(|c| (c.leaf.not_before, c.leaf.not_after))
            .unwrap_or((0, 0))
    }

    /// Renews the node SVID at about half its lifetime and fetches the bundle every
    /// `--bundle-refresh`, retrying failures with backoff, until `stop` fires.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut backoff = Backoff::new();
        let mut renew_at = tokio::time::Instant::now() + self.renew_delay();
        let mut refresh_at = tokio::time::Instant::now() + self.bundle_refresh;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(renew_at) => {
                    match self.renew_node().await {
                        Ok(not_after) => {
                            backoff.reset();
                            tracing::info!(node = %self.name, not_after = %format_unix(not_after), "renewed the node SVID");
                            renew_at = tokio::time::Instant::now() + self.renew_delay();
                        }
                        Err(e) => {
                            let (_, not_after) = self.node_window();
                            if not_after <= unix_now() {
                                tracing::error!(error = %e, cause = ?e.cause(), expired = %format_unix(not_after), "the node SVID expired without renewal; the node needs a new join token");
                            } else {
                                tracing::warn!(error = %e, cause = ?e.cause(), "cannot renew the node SVID; retrying");
                            }
                            renew_at = tokio::time::Instant::now() + backoff.next_delay(jitter());
                        }
                    }
                }
                _ = tokio::time::sleep_until(refresh_at) => {
                    if let Err(e) = self.refresh_bundle().await {
                        tracing::warn!(error = %e, cause = ?e.cause(), "cannot fetch the bundle; retrying");
                    }
                    refresh_at = tokio::time::Instant::now() + self.bundle_refresh;
                }
            }
        }
    }

    fn renew_delay(&self) -> Duration {
        let (nb, na) = self.node_window();
        let at = |s: i64| std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(s.max(0) as u64);
        super::rotation::refresh_delay(at(nb), at(na), std::time::SystemTime::now(), jitter())
    }
}

/// The node API request for an SVID of `id`.
fn sign_request(id: &SpiffeId, csr: Vec<u8>, selectors: &[String]) -> SignWorkloadRequest {
    SignWorkloadRequest {
        spiffe_id: id.to_string(),
        csr,
        selectors: selectors.to_vec(),
    }
}

fn make_credentials(
    td: &TrustDomain,
    state: &NodeState,
    provider: &CryptoProvider,
) -> Result<Credentials, SvidError> {
    let mut bundles = TrustBundles::new();
    bundles.insert(td.clone(), state.bundle.clone())?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(state.key.clone()));
    Credentials::new(vec![state.cert.clone()], key, bundles, provider)
}

/// The node state kept in `dir` and the node's name, if the SVID in it is usable now; `Err`
/// says why not (the agent then joins with a token).
fn load_kept(
    dir: &Path,
    td: &TrustDomain,
    provider: &CryptoProvider,
) -> Result<(NodeState, String), KeptError> {
    let state = node_state::load(dir).map_err(KeptError::State)?;
    let file = dir.join(node_state::STATE_FILE);
    let creds = match make_credentials(td, &state, provider) {
        Ok(c) => c,
        Err(source) => return Err(KeptError::Unusable { file, source }),
    };
    if !creds.is_valid_at(unix_now()) {
        return Err(KeptError::Expired {
            file,
            not_after: creds.leaf.not_after,
        });
    }
    let name = match node_name(td, creds.id()) {
        Some(name) => name.to_owned(),
        None => {
            return Err(KeptError::NotNode {
                file,
                id: creds.id().clone(),
                td: td.clone(),
            })
        }
    };
    Ok((state, name))
}

/// Waits (with backoff, at most `limit`) until `server` accepts TCP connections: a node agent
/// often starts before the control plane. Anything past the TCP connect (an untrusted control
/// plane, a refused token) fails at once.
async fn wait_reachable(server: &str, limit: Duration) -> Result<(), UpstreamError> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut backoff = Backoff::new();
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(server),
        )
        .await;
        let error = match attempt {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
        };
        let delay = backoff.next_delay(jitter());
        if tokio::time::Instant::now() + delay > deadline {
            return Err(UpstreamError::Unreachable {
                server: server.to_owned(),
                waited: Dur(limit),
                source: error,
            });
        }
        tracing::warn!(%server, %error, retry_in_ms = delay.as_millis() as u64, "control plane not reachable yet; retrying");
        tokio::time::sleep(delay).await;
    }
}

/// Joins with the token: verifies the control plane with the bootstrap bundle, sends the token
/// and a CSR, and returns the node SVID, key, bundle and node name.
async fn join(
    args: &UpstreamConfig,
    server: &str,
    server_id: &SpiffeId,
    td: &TrustDomain,
    provider: &Arc<CryptoProvider>,
    why: &KeptError,
) -> Result<(NodeState, String), AgentError> {
    let token_path = args
        .join_token_file
        .as_ref()
        .ok_or_else(|| AgentError::Invalid {
            field: "--join-token-file",
            message: format!("needed to join: {why}"),
        })?;
    tracing::info!(reason = %why, "joining the trust domain with the token");
    let token = std::fs::read_to_string(token_path)
        .map_err(|source| UpstreamError::File {
            path: token_path.clone(),
            source,
        })?
        .trim()
        .to_owned();
    if token.is_empty() {
        return Err(UpstreamError::EmptyToken {
            path: token_path.clone(),
        }
        .into());
    }
    let bundle_path = args
        .server_bundle
        .as_ref()
        .ok_or_else(|| AgentError::Invalid {
            field: "--server-bundle",
            message: "needed to verify the control plane when joining".into(),
        })?;
    let mut bootstrap = TrustBundles::new();
    bootstrap
        .insert(td.clone(), read_bundle(bundle_path)?)
        .map_err(|source| UpstreamError::BundleAnchors {
            path: bundle_path.clone(),
            source,
        })?;
    let config = bootstrap_client_config(Arc::new(bootstrap), server_id, b"h2", provider.clone())
        .map_err(UpstreamError::Tls)?;
    wait_reachable(server, args.join_wait.0).await?;
    let channel = lazy_channel(server, config).map_err(UpstreamError::Channel)?;
    let (key, csr) = key_and_csr().map_err(UpstreamError::Csr)?;
    let resp = NodeServiceClient::new(channel)
        .join(JoinRequest { token, csr })
        .await
        .map_err(|s| UpstreamError::rpc(format!("joining via {server}"), s))?
        .into_inner();
    let bundle = certs_from_wire(resp.bundle)?;
    tracing::info!(node = %resp.node, %server, "joined the trust domain");
    Ok((
        NodeState {
            cert: CertificateDer::from(resp.svid),
            key,
            bundle,
        },
        resp.node,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::node_id;
    use crate::Ca;

    fn td() -> TrustDomain {
        TrustDomain::parse("example.org").unwrap()
    }

    /// Saves a state as a joined agent leaves it; `age` moves the SVID's window into the past.
    fn lay_out(dir: &Path, ca: &Ca, id: &SpiffeId, age: Duration) -> NodeState {
        let mut params = ca.svid_params(id, Duration::from_secs(600)).unwrap();
        params.not_before -= age;
        params.not_after -= age;
        let svid = ca.sign(id, &params).unwrap();
        let state = NodeState {
            cert: svid.cert_der.clone(),
            key: svid.key_der().secret_der().to_vec(),
            bundle: vec![ca.bundle_der().clone()],
        };
        node_state::save(dir, &state).unwrap();
        state
    }

    /// The control plane's refusal, no answer at all, and our own mistakes are told apart by
    /// variant (not by message text): only no answer is worth retrying soon.
    #[test]
    fn a_refusal_is_told_from_no_answer_and_from_our_own_mistakes() {
        let refused = UpstreamError::rpc(
            "control plane refused the SVID",
            tonic::Status::permission_denied(
                "node node-a may not obtain spiffe://example.org/x: not in the node's allow list",
            ),
        );
        assert!(
            matches!(refused, UpstreamError::Refused { .. }),
            "{refused:?}"
        );
        assert_eq!(refused.cause(), Cause::ControlPlane);
        assert!(!refused.is_transient());
        assert_eq!(
            refused.to_string(),
            "control plane refused the SVID: node node-a may not obtain spiffe://example.org/x: \
             not in the node's allow list (PermissionDenied)"
        );
        for status in [
            tonic::Status::unavailable("tcp connect error"),
            tonic::Status::cancelled("Timeout expired"),
            tonic::Status::deadline_exceeded("too slow"),
        ] {
            let down = UpstreamError::rpc("node SVID renewal", status);
            assert!(matches!(down, UpstreamError::Unanswered { .. }), "{down:?}");
            assert_eq!(down.cause(), Cause::Network);
            assert!(down.is_transient());
            assert!(
                down.to_string().starts_with("node SVID renewal: "),
                "{down}"
            );
        }
        let gone = UpstreamError::rpc("bundle", tonic::Status::unauthenticated("no SVID"));
        assert_eq!(gone.cause(), Cause::ControlPlane);
        assert_eq!(UpstreamError::EmptyBundle.cause(), Cause::ControlPlane);
        let ours = UpstreamError::EmptyToken {
            path: "/etc/svidcar/token".into(),
        };
        assert_eq!(ours.cause(), Cause::Local);
        assert!(!ours.is_transient());
        assert_eq!(
            AgentError::from(ours).to_string(),
            "control plane: /etc/svidcar/token: empty"
        );
    }

    /// The request carries the selectors as field 3: an old control plane (without it) reads
    /// the rest, and a request of an old agent (without it) reads as no selectors.
    #[test]
    fn sign_requests_carry_selectors_compatibly() {
        use prost::Message;
        #[derive(Clone, PartialEq, prost::Message)]
        struct OldSignWorkloadRequest {
            #[prost(string, tag = "1")]
            spiffe_id: String,
            #[prost(bytes = "vec", tag = "2")]
            csr: Vec<u8>,
        }
        let id = SpiffeId::parse("spiffe://example.org/ns/shop/sa/web").unwrap();
        let selectors = ["unix:uid:1001".to_owned(), "unix:gid:1001".to_owned()];
        let new = sign_request(&id, b"csr".to_vec(), &selectors);
        assert_eq!(new.selectors, selectors);
        let old = OldSignWorkloadRequest::decode(new.encode_to_vec().as_slice()).unwrap();
        assert_eq!(
            (old.spiffe_id.as_str(), old.csr.as_slice()),
            (id.as_str(), b"csr".as_slice())
        );
        let from_old = SignWorkloadRequest::decode(old.encode_to_vec().as_slice()).unwrap();
        assert!(from_old.selectors.is_empty());
        assert_eq!(from_old.spiffe_id, id.as_str());
    }

    #[test]
    fn a_kept_node_svid_is_reused_while_valid_and_otherwise_says_why_not() {
        let ca = Ca::generate(&td(), Duration::from_secs(3600)).unwrap();
        let provider = provider();
        let dir = tempfile::tempdir().unwrap();
        let node = node_id(&td(), "node-a").unwrap();
        let why = load_kept(dir.path(), &td(), &provider).unwrap_err();
        assert!(matches!(
            why,
            KeptError::State(NodeStateError::Missing { .. })
        ));
        assert!(why.to_string().contains("holds no node SVID yet"), "{why}");

        lay_out(dir.path(), &ca, &node, Duration::ZERO);
        let (state, name) = load_kept(dir.path(), &td(), &provider).unwrap();
        assert_eq!(name, "node-a");
        assert_eq!(state.bundle, vec![ca.bundle_der().clone()]);

        lay_out(dir.path(), &ca, &node, Duration::from_secs(3600));
        let why = load_kept(dir.path(), &td(), &provider).unwrap_err();
        assert!(matches!(why, KeptError::Expired { .. }));
        assert!(why.to_string().contains("expired at"), "{why}");

        // A key that is not the certificate's (as a torn write of separate files would leave).
        let mut torn = lay_out(dir.path(), &ca, &node, Duration::ZERO);
        torn.key = ca
            .issue(&node, Duration::from_secs(60))
            .unwrap()
            .key_der()
            .secret_der()
            .to_vec();
        node_state::save(dir.path(), &torn).unwrap();
        let why = load_kept(dir.path(), &td(), &provider).unwrap_err();
        assert!(matches!(why, KeptError::Unusable { .. }));
        assert!(
            why.to_string().contains("node.json: unusable node SVID"),
            "{why}"
        );

        let workload = SpiffeId::parse("spiffe://example.org/w").unwrap();
        lay_out(dir.path(), &ca, &workload, Duration::ZERO);
        let why = load_kept(dir.path(), &td(), &provider).unwrap_err();
        assert!(matches!(why, KeptError::NotNode { .. }));
        assert!(why.to_string().contains("is not a node SVID"), "{why}");
    }
}
