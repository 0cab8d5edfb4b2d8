//! An agent without the CA gets its SVIDs from `svidcar control` over the node API
//! ([`crate::node`]): it joins once with a one-time token (verifying the control plane with a
//! bootstrap bundle), keeps its node SVID in its data directory and renews it at about half its
//! lifetime, asks for each workload SVID by CSR (keys never leave the node), and follows the
//! trust bundle (a new root arrives before it signs anything).
//!
//! Data directory: `node.pem` (node SVID), `node.key` (its key, mode 0600), `bundle.pem` (the
//! trust bundle last received), each replaced atomically.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use svidcar_proxy::control_client::{jitter, lazy_channel, Backoff};
use svidcar_proxy::identity::{
    format_unix, unix_now, CredentialStore, Credentials, SpiffeId, TrustBundles, TrustDomain,
};
use svidcar_proxy::tls::{bootstrap_client_config, provider, TlsContext};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::AgentError;
use crate::authority::Bundle;
use crate::node::proto::client::NodeServiceClient;
use crate::node::proto::{GetBundleRequest, JoinRequest, RenewNodeRequest, SignWorkloadRequest};
use crate::node::{bundle_pem, control_id, key_and_csr, pem_of};

const NODE_CERT: &str = "node.pem";
const NODE_KEY: &str = "node.key";
const BUNDLE: &str = "bundle.pem";

/// How `svidcar agent` reaches `svidcar control` when it does not hold the CA.
#[derive(Debug, Clone, clap::Args)]
pub struct UpstreamArgs {
    /// `svidcar control`'s gRPC address (`host:port`): get SVIDs from it instead of holding
    /// the CA (`--ca-dir`).
    #[arg(
        long = "server",
        env = "SVIDCAR_AGENT_SERVER",
        conflicts_with = "ca_dir"
    )]
    pub server: Option<String>,
    /// The SPIFFE ID the control plane must present [default: spiffe://<td>/svidcar/control].
    #[arg(long, env = "SVIDCAR_AGENT_SERVER_ID", requires = "server")]
    pub server_id: Option<SpiffeId>,
    /// Bundle (PEM) to verify the control plane with on first contact, before the agent has
    /// received one.
    #[arg(long, env = "SVIDCAR_AGENT_SERVER_BUNDLE", requires = "server")]
    pub server_bundle: Option<PathBuf>,
    /// File holding the one-time join token, needed while the data directory holds no valid
    /// node SVID.
    #[arg(long, env = "SVIDCAR_AGENT_JOIN_TOKEN_FILE", requires = "server")]
    pub join_token_file: Option<PathBuf>,
    /// Where the node SVID, its key and the bundle are kept.
    #[arg(
        long,
        env = "SVIDCAR_AGENT_DATA_DIR",
        default_value = "/var/lib/svidcar/agent"
    )]
    pub data_dir: PathBuf,
    /// How often the bundle is fetched between renewals.
    #[arg(long, env = "SVIDCAR_AGENT_BUNDLE_REFRESH", default_value = "30s")]
    pub bundle_refresh: svidcar_proxy::config::Dur,
}

impl Default for UpstreamArgs {
    /// Single-machine mode: no control plane.
    fn default() -> Self {
        Self {
            server: None,
            server_id: None,
            server_bundle: None,
            join_token_file: None,
            data_dir: PathBuf::from("/var/lib/svidcar/agent"),
            bundle_refresh: svidcar_proxy::config::Dur(Duration::from_secs(30)),
        }
    }
}

fn err(path: &Path, message: impl Into<String>) -> AgentError {
    AgentError::Upstream(format!("{}: {}", path.display(), message.into()))
}

fn status(what: &str, s: tonic::Status) -> String {
    format!("{what}: {} ({:?})", s.message(), s.code())
}

/// The node SVID and key, kept to rebuild credentials when the bundle changes. `Debug` never
/// shows the key.
struct NodeCert {
    cert: CertificateDer<'static>,
    key: Vec<u8>,
}

impl std::fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCert").finish_non_exhaustive()
    }
}

/// The connection to the control plane.
pub struct Upstream {
    td: TrustDomain,
    dir: PathBuf,
    provider: Arc<CryptoProvider>,
    store: Arc<CredentialStore>,
    node: Mutex<NodeCert>,
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

fn certs_from_wire(bundle: Vec<Vec<u8>>) -> Result<Vec<CertificateDer<'static>>, String> {
    if bundle.is_empty() {
        return Err("the control plane sent an empty bundle".into());
    }
    Ok(bundle.into_iter().map(CertificateDer::from).collect())
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename) with `mode`.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), AgentError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| err(&tmp, e.to_string()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| err(&tmp, e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| err(path, e.to_string()))
}

fn read_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, AgentError> {
    let bytes = std::fs::read(path).map_err(|e| err(path, e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err(path, "no CERTIFICATE block"));
    }
    Ok(certs)
}

impl Upstream {
    fn credentials(
        &self,
        node: &NodeCert,
        bundle: &[CertificateDer<'static>],
    ) -> Result<Credentials, String> {
        make_credentials(&self.td, node, bundle, &self.provider)
    }

    /// Connects to the control plane: reuses the node SVID kept in the data directory if it is
    /// still valid, or joins with the token. Errors stop start-up with a message.
    pub async fn connect(args: &UpstreamArgs, td: &TrustDomain) -> Result<Arc<Self>, AgentError> {
        let server = args.server.clone().ok_or_else(|| AgentError::Invalid {
            field: "--server",
            message: "missing".into(),
        })?;
        let server_id = args.server_id.clone().unwrap_or_else(|| control_id(td));
        let dir = args.data_dir.clone();
        if !dir.exists() {
            std::fs::create_dir_all(&dir).map_err(|e| err(&dir, e.to_string()))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| err(&dir, e.to_string()))?;
        }
        let provider = provider();
        let kept = load_kept(&dir, td, &provider)?;
        let (node, bundle, name) = match kept {
            Some(k) => {
                tracing::info!(dir = %dir.display(), node = %k.2, "using the node SVID kept from an earlier run");
                k
            }
            None => join(args, &server, &server_id, td, &provider).await?,
        };
        let store = CredentialStore::new();
        store.set(
            make_credentials(td, &node, &bundle, &provider)
                .map_err(|e| AgentError::Upstream(format!("node SVID: {e}")))?,
        );
        let tls = TlsContext::new(store.clone(), provider.clone())
            .map_err(|e| AgentError::Upstream(e.to_string()))?;
        let config = tls
            .client_config_with_alpn(&server_id, b"h2")
            .map_err(|e| AgentError::Upstream(e.to_string()))?;
        let channel = lazy_channel(&server, config).map_err(AgentError::Upstream)?;
        let (bundle_tx, _) = watch::channel(Arc::new(bundle.clone()));
        let up = Self {
            td: td.clone(),
            dir,
            provider,
            store,
            node: Mutex::new(node),
            client: NodeServiceClient::new(channel),
            bundle_tx,
            bundle_refresh: args.bundle_refresh.0,
            name,
        };
        up.persist_node()?;
        up.persist_bundle(&bundle)?;
        Ok(Arc::new(up))
    }

    fn node(&self) -> std::sync::MutexGuard<'_, NodeCert> {
        match self.node.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn persist_node(&self) -> Result<(), AgentError> {
        let node = self.node();
        write_atomic(
            &self.dir.join(NODE_KEY),
            pem_of("PRIVATE KEY", &node.key).as_bytes(),
            0o600,
        )?;
        write_atomic(
            &self.dir.join(NODE_CERT),
            pem_of("CERTIFICATE", &node.cert).as_bytes(),
            0o644,
        )
    }

    fn persist_bundle(&self, bundle: &[CertificateDer<'static>]) -> Result<(), AgentError> {
        write_atomic(&self.dir.join(BUNDLE), bundle_pem(bundle).as_bytes(), 0o644)
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

    /// Takes a bundle the control plane sent: used for the next handshakes, kept on disk, pushed
    /// to watchers when it changed.
    fn take_bundle(&self, wire: Vec<Vec<u8>>) -> Result<(), String> {
        let bundle = certs_from_wire(wire)?;
        if **self.bundle_tx.borrow() == bundle {
            return Ok(());
        }
        let creds = self.credentials(&self.node(), &bundle)?;
        self.store.set(creds);
        if let Err(e) = self.persist_bundle(&bundle) {
            tracing::warn!(error = %e, "cannot keep the new bundle on disk");
        }
        tracing::info!(roots = bundle.len(), "trust bundle changed");
        self.bundle_tx.send_replace(Arc::new(bundle));
        Ok(())
    }

    /// Gets an SVID for `id` from the control plane: a new key here, a CSR there. Returns the
    /// certificate and the PKCS#8 key, DER.
    pub async fn issue(&self, id: &SpiffeId) -> Result<(CertificateDer<'static>, Vec<u8>), String> {
        let (key, csr) = key_and_csr().map_err(|e| e.to_string())?;
        let resp = self
            .client
            .clone()
            .sign_workload(SignWorkloadRequest {
                spiffe_id: id.to_string(),
                csr,
            })
            .await
            .map_err(|s| status("control plane refused the SVID", s))?
            .into_inner();
        self.take_bundle(resp.bundle)?;
        Ok((CertificateDer::from(resp.svid), key))
    }

    async fn renew_node(&self) -> Result<i64, String> {
        let (key, csr) = key_and_csr().map_err(|e| e.to_string())?;
        let resp = self
            .client
            .clone()
            .renew_node(RenewNodeRequest { csr })
            .await
            .map_err(|s| status("node SVID renewal", s))?
            .into_inner();
        let node = NodeCert {
            cert: CertificateDer::from(resp.svid),
            key,
        };
        let bundle = certs_from_wire(resp.bundle)?;
        let creds = self.credentials(&node, &bundle)?;
        let not_after = creds.leaf.not_after;
        self.store.set(creds);
        *self.node() = node;
        self.persist_node().map_err(|e| e.to_string())?;
        if **self.bundle_tx.borrow() != bundle {
            self.persist_bundle(&bundle).map_err(|e| e.to_string())?;
            self.bundle_tx.send_replace(Arc::new(bundle));
        }
        Ok(not_after)
    }

    async fn refresh_bundle(&self) -> Result<(), String> {
        let resp = self
            .client
            .clone()
            .get_bundle(GetBundleRequest {})
            .await
            .map_err(|s| status("bundle", s))?
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
                                tracing::error!(error = %e, expired = %format_unix(not_after), "the node SVID expired without renewal; the node needs a new join token");
                            } else {
                                tracing::warn!(error = %e, "cannot renew the node SVID; retrying");
                            }
                            renew_at = tokio::time::Instant::now() + backoff.next_delay(jitter());
                        }
                    }
                }
                _ = tokio::time::sleep_until(refresh_at) => {
                    if let Err(e) = self.refresh_bundle().await {
                        tracing::warn!(error = %e, "cannot fetch the bundle; retrying");
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

fn make_credentials(
    td: &TrustDomain,
    node: &NodeCert,
    bundle: &[CertificateDer<'static>],
    provider: &CryptoProvider,
) -> Result<Credentials, String> {
    let mut bundles = TrustBundles::new();
    bundles
        .insert(td.clone(), bundle.to_vec())
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(node.key.clone()));
    Credentials::new(vec![node.cert.clone()], key, bundles, provider).map_err(|e| e.to_string())
}

/// The node SVID, key and bundle kept in `dir`, if all are there and the SVID is still valid.
fn load_kept(
    dir: &Path,
    td: &TrustDomain,
    provider: &CryptoProvider,
) -> Result<Option<(NodeCert, Vec<CertificateDer<'static>>, String)>, AgentError> {
    let (cert_path, key_path) = (dir.join(NODE_CERT), dir.join(NODE_KEY));
    if !cert_path.exists() || !key_path.exists() {
        return Ok(None);
    }
    let cert = read_bundle(&cert_path)?.remove(0);
    let key_pem = std::fs::read(&key_path).map_err(|e| err(&key_path, e.to_string()))?;
    let key = PrivatePkcs8KeyDer::from_pem_slice(&key_pem)
        .map_err(|e| err(&key_path, format!("bad PEM: {e}")))?
        .secret_pkcs8_der()
        .to_vec();
    let bundle = read_bundle(&dir.join(BUNDLE))?;
    let node = NodeCert { cert, key };
    let creds = make_credentials(td, &node, &bundle, provider).map_err(|e| err(&cert_path, e))?;
    if !creds.is_valid_at(unix_now()) {
        tracing::warn!(file = %cert_path.display(), expired = %format_unix(creds.leaf.not_after), "the kept node SVID expired; joining again");
        return Ok(None);
    }
    let name = crate::node::node_name(td, creds.id())
        .ok_or_else(|| {
            err(
                &cert_path,
                format!("{} is not a node SVID of {td}", creds.id()),
            )
        })?
        .to_owned();
    Ok(Some((node, bundle, name)))
}

/// Joins with the token: verifies the control plane with the bootstrap bundle, sends the token
/// and a CSR, and returns the node SVID, key, bundle and node name.
async fn join(
    args: &UpstreamArgs,
    server: &str,
    server_id: &SpiffeId,
    td: &TrustDomain,
    provider: &Arc<CryptoProvider>,
) -> Result<(NodeCert, Vec<CertificateDer<'static>>, String), AgentError> {
    let token_path = args
        .join_token_file
        .as_ref()
        .ok_or_else(|| AgentError::Invalid {
            field: "--join-token-file",
            message: format!(
                "needed: {} holds no valid node SVID to renew, so this node must join with a token",
                args.data_dir.display()
            ),
        })?;
    let token = std::fs::read_to_string(token_path)
        .map_err(|e| err(token_path, e.to_string()))?
        .trim()
        .to_owned();
    if token.is_empty() {
        return Err(err(token_path, "empty"));
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
        .map_err(|e| err(bundle_path, e.to_string()))?;
    let config = bootstrap_client_config(Arc::new(bootstrap), server_id, b"h2", provider.clone())
        .map_err(|e| AgentError::Upstream(e.to_string()))?;
    let channel = lazy_channel(server, config).map_err(AgentError::Upstream)?;
    let (key, csr) = key_and_csr().map_err(|e| AgentError::Upstream(e.to_string()))?;
    let resp = NodeServiceClient::new(channel)
        .join(JoinRequest { token, csr })
        .await
        .map_err(|s| AgentError::Upstream(status(&format!("joining via {server}"), s)))?
        .into_inner();
    let bundle = certs_from_wire(resp.bundle).map_err(AgentError::Upstream)?;
    tracing::info!(node = %resp.node, %server, "joined the trust domain");
    Ok((
        NodeCert {
            cert: CertificateDer::from(resp.svid),
            key,
        },
        bundle,
        resp.node,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::Authority;
    use crate::node::node_id;
    use crate::Ca;

    fn td() -> TrustDomain {
        TrustDomain::parse("example.org").unwrap()
    }

    /// Lays out a data directory as a joined agent leaves it; `age` moves the SVID's window
    /// into the past.
    fn lay_out(dir: &Path, ca: &Ca, name: &str, age: Duration) {
        let id = node_id(&td(), name).unwrap();
        let mut params = ca.svid_params(&id, Duration::from_secs(600)).unwrap();
        params.not_before -= age;
        params.not_after -= age;
        let svid = ca.sign(&id, &params).unwrap();
        std::fs::write(dir.join(NODE_CERT), &svid.cert_pem).unwrap();
        std::fs::write(dir.join(NODE_KEY), &svid.key_pem).unwrap();
        std::fs::write(dir.join(BUNDLE), ca.bundle_pem()).unwrap();
    }

    #[test]
    fn a_kept_node_svid_is_reused_while_valid_and_problems_name_the_file() {
        let ca = Ca::generate(&td(), Duration::from_secs(3600)).unwrap();
        let provider = provider();
        let dir = tempfile::tempdir().unwrap();
        assert!(load_kept(dir.path(), &td(), &provider).unwrap().is_none());

        lay_out(dir.path(), &ca, "node-a", Duration::ZERO);
        let (_, bundle, name) = load_kept(dir.path(), &td(), &provider).unwrap().unwrap();
        assert_eq!(name, "node-a");
        assert_eq!(bundle, vec![ca.bundle_der().clone()]);

        // Expired: join again (no error).
        lay_out(dir.path(), &ca, "node-a", Duration::from_secs(3600));
        assert!(load_kept(dir.path(), &td(), &provider).unwrap().is_none());

        // Another key: refused, naming the certificate file.
        lay_out(dir.path(), &ca, "node-a", Duration::ZERO);
        let other = Authority::in_memory(Ca::generate(&td(), Duration::from_secs(60)).unwrap())
            .issue(&node_id(&td(), "x").unwrap(), Duration::from_secs(60))
            .unwrap();
        std::fs::write(dir.path().join(NODE_KEY), &other.key_pem).unwrap();
        let e = load_kept(dir.path(), &td(), &provider)
            .unwrap_err()
            .to_string();
        assert!(e.contains("node.pem"), "{e}");

        // A workload SVID is not a node SVID.
        let wl = ca
            .issue(
                &SpiffeId::parse("spiffe://example.org/w").unwrap(),
                Duration::from_secs(60),
            )
            .unwrap();
        std::fs::write(dir.path().join(NODE_CERT), &wl.cert_pem).unwrap();
        std::fs::write(dir.path().join(NODE_KEY), &wl.key_pem).unwrap();
        let e = load_kept(dir.path(), &td(), &provider)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a node SVID"), "{e}");

        // A broken bundle file is named.
        std::fs::write(dir.path().join(BUNDLE), "junk").unwrap();
        let e = load_kept(dir.path(), &td(), &provider)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bundle.pem") && e.contains("no CERTIFICATE"),
            "{e}"
        );
    }

    #[test]
    fn state_files_are_replaced_atomically_with_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.path().join("node.tmp").exists());
    }
}
