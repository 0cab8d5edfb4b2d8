//! `svidcar control`: loads and watches the policy directory, serves the policy stream to
//! proxies over mTLS gRPC, stores their decision events, and answers queries over HTTP.

mod admin;
mod caller;
mod config;
mod grpc;
mod join_throttle;
pub mod metrics;
mod node_service;
pub mod nodes;
pub(crate) mod reply;
pub mod revocations;
mod self_svid;
mod state;
mod state_lock;
mod webhook;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use svidcar_api::policy::server::PolicyServiceServer;
use svidcar_identity::backoff::AcceptErrors;
use svidcar_identity::pem_source::{self, PemPaths};
use svidcar_identity::tls::{provider, TlsContext};
use svidcar_identity::{workload_api, CredentialStore, Dur, WorkloadEndpoint};
use svidcar_policy::{dir_version, load_dir};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use admin::{parse_query, QueryError};
pub(crate) use caller::refuse_unless_loopback;
pub use config::{ControlConfig, ControlFlags};
pub use self_svid::SelfSvidError;
pub use state::{Policies, State, Subscriber};
pub use state_lock::StateLockError;
pub use webhook::WebhookError;

use crate::authority::Authority;
use crate::decisions::DecisionStore;
use crate::edges::{EdgeSettings, EdgeStore};
use node_service::NodeApi;
use svidcar_api::node::server::NodeServiceServer;

/// The configuration `start` takes; the name it had before `--config` existed.
pub type ControlArgs = ControlConfig;

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// SVID files.
    #[error(transparent)]
    Identity(#[from] pem_source::PemError),
    /// The decision log.
    #[error(transparent)]
    Store(#[from] crate::decisions::StoreError),
    /// The edge store (decisions, edges, new-edge alerts).
    #[error(transparent)]
    Edges(#[from] crate::edges::EdgeError),
    /// The policy directory has errors at start-up.
    #[error("policy directory: {0}")]
    Policy(String),
    /// A listener.
    #[error("{setting}: cannot listen on {addr}: {source}")]
    Bind {
        /// The flag naming the address (`--listen`, `--admin-listen`).
        setting: &'static str,
        /// Address.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// TLS setup.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The CA directory or CA.
    #[error(transparent)]
    Authority(#[from] crate::authority::AuthorityError),
    /// The nodes file or token ledger.
    #[error(transparent)]
    Nodes(#[from] nodes::NodesError),
    /// Settings that cannot work together (the message names the setting).
    #[error("{0}")]
    Settings(String),
    /// The `--config` file cannot be used, or a setting is invalid (the message names the
    /// file and the setting).
    #[error(transparent)]
    Config(#[from] svidcar_identity::config_file::ConfigError),
    /// The control plane's own SVID.
    #[error("control-plane SVID: {0}")]
    SelfSvid(#[from] SelfSvidError),
    /// The admission webhook.
    #[error("webhook: {0}")]
    Webhook(#[from] WebhookError),
    /// The identity inventory's store.
    #[error(transparent)]
    Inventory(#[from] crate::inventory::InventoryError),
    /// The revocation set in the state directory.
    #[error("revocations: {0}")]
    Revocations(#[from] revocations::StoreError),
    /// The state directory is another control plane's, or cannot be locked.
    #[error("state_dir: {0}")]
    StateDir(#[from] StateLockError),
    /// No SVID came from the Workload API within `identity_wait`.
    #[error(
        "workload_api: no SVID from the Workload API at {endpoint} within {waited} \
         (identity_wait){}; is the agent running, and is this process registered with it?",
        .problem.as_deref().map(|p| format!(": {p}")).unwrap_or_default()
    )]
    NoSvid {
        /// The Workload API address.
        endpoint: WorkloadEndpoint,
        /// How long start-up waited.
        waited: Dur,
        /// The last problem the Workload API client saw, if any.
        problem: Option<String>,
    },
}

/// A running control plane.
#[derive(Debug)]
pub struct ControlHandle {
    /// gRPC address.
    pub grpc_addr: SocketAddr,
    /// HTTP query address.
    pub admin_addr: SocketAddr,
    /// The admission webhook's address, when it runs.
    pub webhook_addr: Option<SocketAddr>,
    /// Shared state.
    pub state: Arc<State>,
    stop: CancellationToken,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    /// The state directory is ours while this is held.
    _state_lock: state_lock::StateLock,
}

impl ControlHandle {
    /// Stops serving: streams end, open connections get up to five seconds to drain.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if tokio::time::timeout(Duration::from_secs(5), &mut self.server)
            .await
            .is_err()
        {
            self.server.abort();
        }
    }
}

/// Loads the directory once; `Err` carries every error as text.
fn load(dir: &Path) -> Result<Policies, Vec<String>> {
    let version =
        dir_version(dir).ok_or_else(|| vec![format!("{}: cannot read", dir.display())])?;
    load_dir(dir)
        .map(|policies| Policies {
            policies,
            errors: Vec::new(),
            version,
            revocations: Vec::new(),
        })
        .map_err(|errors| errors.iter().map(ToString::to_string).collect())
}

async fn watch_policies(
    dir: PathBuf,
    state: Arc<State>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut seen = dir_version(&dir);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let now = dir_version(&dir);
        if now == seen {
            continue;
        }
        seen = now;
        match load(&dir) {
            Ok(p) => {
                tracing::info!(version = %p.version, policies = p.policies.len(), "policy directory changed; pushing to proxies");
                state.replace_policies(p);
            }
            Err(errors) => {
                for e in &errors {
                    tracing::warn!(error = %e, "policy edit rejected; the last valid set stays in force");
                }
                state.policies.send_modify(|p| p.errors = errors);
            }
        }
    }
}

/// Starts the control plane.
pub async fn start(args: ControlConfig) -> Result<ControlHandle, ControlError> {
    args.validate()
        .map_err(|(field, message)| ControlError::Settings(format!("{field}: {message}")))?;
    let state_lock = state_lock::lock(&args.state_dir)?;
    let tasks = Tasks::new();
    let authority = match tasks.credentials(&args).await {
        Ok(a) => a,
        Err(e) => {
            tasks.stop.cancel();
            return Err(e);
        }
    };
    let state = Arc::new(State::new());
    if let Some(a) = &authority {
        let _ = state.authority.set(a.clone());
    }
    tasks.policies(&args, &state)?;
    revocations::open(&state, &args.state_dir)?;
    tokio::spawn(revocations::lapse(state.clone(), tasks.stop.clone()));
    let decisions = Arc::new(DecisionStore::open(
        &args.state_dir,
        args.decisions_max_bytes,
        args.decisions_keep,
    )?);
    let decisions = EdgeStore::open(
        EdgeSettings::from_config(&args),
        state.clone(),
        Some(decisions),
    )?;
    let inventory = Arc::new(crate::inventory::IssuanceStore::open(&args.state_dir)?);
    let admin_addr = tasks
        .admin(args.admin_listen, &state, &decisions, &inventory)
        .await?;
    let webhook_addr = match (args.webhook_listen, &authority) {
        (Some(listen), Some(authority)) => Some(tasks.webhook(listen, &args, authority).await?),
        _ => None,
    };
    let (grpc_addr, conns) = tasks.handshakes(args.listen, authority.is_some()).await?;
    let node_api = authority
        .map(|authority| NodeApi::open(&args, authority, &state, inventory))
        .transpose()?;
    let server = tasks.grpc(&state, decisions, node_api, conns);
    tracing::info!(grpc = %grpc_addr, admin = %admin_addr, webhook = %svidcar_identity::OrNone(webhook_addr), "svidcar control listening");
    Ok(ControlHandle {
        grpc_addr,
        admin_addr,
        webhook_addr,
        state,
        stop: tasks.stop,
        server,
        _state_lock: state_lock,
    })
}

/// Connections that completed the TLS handshake on the gRPC listener.
type Conns = mpsc::Receiver<std::io::Result<TlsStream<TcpStream>>>;

/// What the control plane's listeners and background tasks share.
struct Tasks {
    /// Stops them all.
    stop: CancellationToken,
    /// The control plane's own SVID and trust bundles.
    store: Arc<CredentialStore>,
    provider: Arc<CryptoProvider>,
}

impl Tasks {
    /// Nothing running yet, and no credentials.
    fn new() -> Self {
        Self {
            provider: provider(),
            store: CredentialStore::new(),
            stop: CancellationToken::new(),
        }
    }

    /// The control plane's own credentials, from the CA held here (returned), from PEM files,
    /// or from the Workload API.
    async fn credentials(
        &self,
        args: &ControlConfig,
    ) -> Result<Option<Arc<Authority>>, ControlError> {
        if let Some(endpoint) = &args.workload_api {
            self.workload_api(endpoint, args.svid_hint.clone(), args.identity_wait)
                .await?;
            return Ok(None);
        }
        match (&args.ca_dir, &args.cert, &args.key, &args.bundle) {
            (Some(dir), None, None, None) => self.hold_ca(dir, args).map(Some),
            (None, Some(cert), Some(key), Some(bundle)) => {
                let paths = PemPaths {
                    cert: cert.clone(),
                    key: key.clone(),
                    bundle: bundle.clone(),
                };
                self.pem_files(paths)?;
                Ok(None)
            }
            _ => Err(ControlError::Settings(
                "ca_dir: give either ca_dir (the control plane holds the CA), workload_api or all of cert, key and bundle".into(),
            )),
        }
    }

    /// Streams the control plane's SVID from the Workload API into the store (rotated live);
    /// waits up to `wait` for the first one.
    async fn workload_api(
        &self,
        endpoint: &WorkloadEndpoint,
        hint: Option<String>,
        wait: Dur,
    ) -> Result<(), ControlError> {
        tracing::info!(%endpoint, hint = hint.as_deref().unwrap_or("(default SVID)"), waiting = %wait, "control-plane SVID from the SPIFFE Workload API; waiting for the first");
        tokio::spawn(workload_api::run_with_hint(
            endpoint.clone(),
            hint,
            self.store.clone(),
            self.provider.clone(),
            self.stop.clone(),
        ));
        let first = tokio::time::timeout(wait.0, async {
            loop {
                if let Some(creds) = self.store.latest() {
                    return creds;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        match first {
            Ok(creds) => {
                tracing::info!(id = %creds.id(), not_after = %svidcar_identity::format_unix(creds.leaf.not_after), "control-plane SVID from the Workload API");
                Ok(())
            }
            Err(_) => Err(ControlError::NoSvid {
                endpoint: endpoint.clone(),
                waited: wait,
                problem: self.store.source_problem().map(|p| p.to_string()),
            }),
        }
    }

    /// Opens (and locks) the CA directory, issues the control plane's SVID from it, and keeps
    /// both current.
    fn hold_ca(&self, dir: &Path, args: &ControlConfig) -> Result<Arc<Authority>, ControlError> {
        // A retired root stays published as long as the longest SVID it may have signed
        // (`validate` checked that `ca_ttl` is at least twice that).
        let longest = args.svid_ttl.0.max(args.node_svid_ttl.0);
        let (authority, _) =
            Authority::open(dir, args.trust_domain.as_ref(), args.ca_ttl.0, longest)?;
        tracing::info!(dir = %dir.display(), trust_domain = %authority.trust_domain(), "holding the CA");
        let renew_in = self_svid::install(&authority, &self.store, &self.provider, args.svid_ttl.0)
            .map_err(ControlError::SelfSvid)?;
        tokio::spawn(authority.clone().run(self.stop.clone()));
        tokio::spawn(self_svid::keep(
            authority.clone(),
            self.store.clone(),
            self.provider.clone(),
            args.svid_ttl.0,
            renew_in,
            self.stop.clone(),
        ));
        Ok(authority)
    }

    /// Loads the control plane's SVID from PEM files, and again whenever they change.
    fn pem_files(&self, paths: PemPaths) -> Result<(), ControlError> {
        self.store.set(pem_source::load(&paths, &self.provider)?);
        tokio::spawn(pem_source::watch(
            paths,
            self.store.clone(),
            self.provider.clone(),
            Duration::from_secs(1),
            self.stop.clone(),
        ));
        Ok(())
    }

    /// Loads the policy directory (any error stops start-up) and watches it for changes.
    fn policies(&self, args: &ControlConfig, state: &Arc<State>) -> Result<(), ControlError> {
        let initial = load(&args.policy_dir).map_err(|e| ControlError::Policy(e.join("; ")))?;
        tracing::info!(version = %initial.version, policies = initial.policies.len(), "policies loaded");
        state.replace_policies(initial);
        tokio::spawn(watch_policies(
            args.policy_dir.clone(),
            state.clone(),
            args.reload_interval.0,
            self.stop.clone(),
        ));
        Ok(())
    }

    /// The HTTP query endpoint.
    async fn admin(
        &self,
        listen: SocketAddr,
        state: &Arc<State>,
        decisions: &Arc<EdgeStore>,
        inventory: &Arc<crate::inventory::IssuanceStore>,
    ) -> Result<SocketAddr, ControlError> {
        let (admin, addr) = bind("--admin-listen", listen).await?;
        tokio::spawn(admin::serve(
            admin,
            state.clone(),
            decisions.clone(),
            inventory.clone(),
            self.stop.clone(),
        ));
        Ok(addr)
    }

    /// The admission webhook, with a serving certificate from `authority`; injected proxies
    /// are told to reach this control plane and to expect its ID.
    async fn webhook(
        &self,
        listen: SocketAddr,
        args: &ControlConfig,
        authority: &Arc<Authority>,
    ) -> Result<SocketAddr, ControlError> {
        let (listener, addr) = bind("--webhook-listen", listen).await?;
        let id = crate::node::control_id(authority.trust_domain());
        let control_plane = match &args.inject_control_plane {
            Some(cp) => cp.clone(),
            None => format!(
                "{}:{}",
                args.webhook_dns_names
                    .first()
                    .map(String::as_str)
                    .unwrap_or("svidcar-control"),
                svidcar_api::well_known::CONTROL_GRPC_PORT
            )
            .parse()
            .map_err(|e: String| ControlError::Settings(format!("inject_control_plane: {e}")))?,
        };
        let mut inject = svidcar_inject::InjectConfig {
            control_plane: Some(control_plane),
            control_plane_id: Some(id.clone()),
            legacy_sidecar: args.inject_legacy_sidecar,
            ..Default::default()
        };
        if let Some(image) = &args.inject_image {
            inject.image.clone_from(image);
        }
        webhook::Webhook {
            authority: authority.clone(),
            id,
            dns_names: args.webhook_dns_names.clone(),
            ttl: args.svid_ttl.0,
            inject,
            provider: self.provider.clone(),
        }
        .start(listener, self.stop.clone())?;
        Ok(addr)
    }

    /// The gRPC listener and its TLS handshakes; with the CA here, a client certificate is
    /// optional.
    async fn handshakes(
        &self,
        listen: SocketAddr,
        holds_ca: bool,
    ) -> Result<(SocketAddr, Conns), ControlError> {
        let (grpc, addr) = bind("--listen", listen).await?;
        let tls = TlsContext::new(self.store.clone(), self.provider.clone())?;
        // With the CA here, agents joining with a token come without a client certificate; every
        // other call still requires (and gets) a verified SVID.
        let server_config = if holds_ca {
            tls.server_config_client_optional(b"h2")?
        } else {
            tls.server_config_with_alpn(b"h2")
        };
        let acceptor = TlsAcceptor::from(server_config);
        let (conns_tx, conns_rx) = mpsc::channel(64);
        tokio::spawn(accept(grpc, acceptor, conns_tx, self.stop.clone()));
        Ok((addr, conns_rx))
    }

    /// The gRPC server on the handshaken `conns`: the policy service and, with the CA here, the
    /// node API.
    fn grpc(
        &self,
        state: &Arc<State>,
        decisions: Arc<EdgeStore>,
        node_api: Option<NodeApi>,
        conns: Conns,
    ) -> JoinHandle<Result<(), tonic::transport::Error>> {
        let incoming = futures_util::stream::unfold(conns, |mut rx| async move {
            rx.recv().await.map(|c| (c, rx))
        });
        let service = grpc::Service {
            state: state.clone(),
            decisions,
            next: Arc::new(AtomicU64::new(0)),
            stop: self.stop.clone(),
        };
        let server_stop = self.stop.clone();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PolicyServiceServer::new(service))
                .add_optional_service(node_api.map(NodeServiceServer::new))
                .serve_with_incoming_shutdown(
                    incoming,
                    async move { server_stop.cancelled().await },
                ),
        )
    }
}

/// Binds a TCP listener; returns it with its address.
async fn bind(
    setting: &'static str,
    listen: SocketAddr,
) -> Result<(TcpListener, SocketAddr), ControlError> {
    let l = TcpListener::bind(listen)
        .await
        .map_err(|source| ControlError::Bind {
            setting,
            addr: listen,
            source,
        })?;
    let addr = l.local_addr().unwrap_or(listen);
    Ok((l, addr))
}

/// Accepts on `listener` until `stop` fires, each connection's handshake in a task of its own.
async fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    conns: mpsc::Sender<std::io::Result<TlsStream<TcpStream>>>,
    stop: CancellationToken,
) {
    let mut accept_errors = AcceptErrors::default();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    accept_errors.on_error("control gRPC (--listen)", &e).await;
                    continue;
                }
            },
        };
        tokio::spawn(handshake(acceptor.clone(), tcp, peer, conns.clone()));
    }
}

/// Passes `tcp` on to `conns` once its TLS handshake completed within ten seconds.
async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    conns: mpsc::Sender<std::io::Result<TlsStream<TcpStream>>>,
) {
    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => {
            let _ = conns.send(Ok(tls)).await;
        }
        Ok(Err(e)) => {
            let e = svidcar_identity::tls::HandshakeError::classify(&e);
            tracing::info!(%peer, reason = e.label(), detail = %e, "control-plane client refused");
        }
        Err(_) => tracing::info!(%peer, "control-plane handshake timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_busy_port_names_the_setting() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind("--admin-listen", addr).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("--admin-listen: cannot listen on {addr}: ")),
            "{text}"
        );
    }
}
