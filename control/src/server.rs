//! `svidcar control`: loads and watches the policy directory, serves the policy stream to
//! proxies over mTLS gRPC, stores their decision events, and answers queries over HTTP.

mod admin;
mod config;
mod grpc;
mod join_throttle;
pub mod metrics;
mod node_service;
pub mod nodes;
mod self_svid;
mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use svidcar_api::policy::server::PolicyServiceServer;
use svidcar_identity::pem_source::{self, PemPaths};
use svidcar_identity::tls::{provider, TlsContext};
use svidcar_identity::CredentialStore;
use svidcar_policy::{dir_version, load_dir};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use admin::{parse_query, QueryError};
pub use config::{ControlConfig, ControlFlags};
pub use self_svid::SelfSvidError;
pub use state::{Policies, State, Subscriber};

use crate::authority::Authority;
use crate::decisions::DecisionStore;
use svidcar_api::node::server::NodeServiceServer;

/// Failed joins allowed per source address and minute.
const FAILED_JOINS_PER_MINUTE: u32 = 10;

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
    /// The policy directory has errors at start-up.
    #[error("policy directory: {0}")]
    Policy(String),
    /// A listener.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
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
}

/// A running control plane.
#[derive(Debug)]
pub struct ControlHandle {
    /// gRPC address.
    pub grpc_addr: SocketAddr,
    /// HTTP query address.
    pub admin_addr: SocketAddr,
    /// Shared state.
    pub state: Arc<State>,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
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
fn load(dir: &std::path::Path) -> Result<Policies, Vec<String>> {
    let version =
        dir_version(dir).ok_or_else(|| vec![format!("{}: cannot read", dir.display())])?;
    load_dir(dir)
        .map(|policies| Policies {
            policies,
            errors: Vec::new(),
            version,
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
                state.policies.send_replace(p);
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
    let provider = provider();
    let store = CredentialStore::new();
    let stop = CancellationToken::new();
    let authority = match (&args.ca_dir, &args.cert, &args.key, &args.bundle) {
        (Some(dir), None, None, None) => {
            // A retired root stays published as long as the longest SVID it may have signed
            // (`validate` checked that `ca_ttl` is at least twice that).
            let longest = args.svid_ttl.0.max(args.node_svid_ttl.0);
            let (authority, _) =
                Authority::open(dir, args.trust_domain.as_ref(), args.ca_ttl.0, longest)?;
            tracing::info!(dir = %dir.display(), trust_domain = %authority.trust_domain(), "holding the CA");
            let renew_in = self_svid::install(&authority, &store, &provider, args.svid_ttl.0)
                .map_err(ControlError::SelfSvid)?;
            tokio::spawn(authority.clone().run(stop.clone()));
            tokio::spawn(self_svid::keep(
                authority.clone(),
                store.clone(),
                provider.clone(),
                args.svid_ttl.0,
                renew_in,
                stop.clone(),
            ));
            Some(authority)
        }
        (None, Some(cert), Some(key), Some(bundle)) => {
            let paths = PemPaths {
                cert: cert.clone(),
                key: key.clone(),
                bundle: bundle.clone(),
            };
            store.set(pem_source::load(&paths, &provider)?);
            tokio::spawn(pem_source::watch(
                paths,
                store.clone(),
                provider.clone(),
                Duration::from_secs(1),
                stop.clone(),
            ));
            None
        }
        _ => {
            return Err(ControlError::Settings(
                "ca_dir: give either ca_dir (the control plane holds the CA) or all of cert, key and bundle".into(),
            ))
        }
    };

    let state = Arc::new(State::new());
    if let Some(a) = &authority {
        let _ = state.authority.set(a.clone());
    }
    let initial = load(&args.policy_dir).map_err(|e| ControlError::Policy(e.join("; ")))?;
    tracing::info!(version = %initial.version, policies = initial.policies.len(), "policies loaded");
    state.policies.send_replace(initial);
    tokio::spawn(watch_policies(
        args.policy_dir.clone(),
        state.clone(),
        args.reload_interval.0,
        stop.clone(),
    ));

    let decisions = Arc::new(DecisionStore::open(
        &args.state_dir,
        args.decisions_max_bytes,
        args.decisions_keep,
    )?);
    let admin = TcpListener::bind(args.admin_listen)
        .await
        .map_err(|source| ControlError::Bind {
            addr: args.admin_listen,
            source,
        })?;
    let admin_addr = admin.local_addr().unwrap_or(args.admin_listen);
    tokio::spawn(admin::serve(
        admin,
        state.clone(),
        decisions.clone(),
        stop.clone(),
    ));

    let grpc = TcpListener::bind(args.listen)
        .await
        .map_err(|source| ControlError::Bind {
            addr: args.listen,
            source,
        })?;
    let grpc_addr = grpc.local_addr().unwrap_or(args.listen);
    let tls = TlsContext::new(store, provider)?;
    // With the CA here, agents joining with a token come without a client certificate; every
    // other call still requires (and gets) a verified SVID.
    let server_config = if authority.is_some() {
        tls.server_config_client_optional(b"h2")?
    } else {
        tls.server_config_with_alpn(b"h2")
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
    let (conns_tx, conns_rx) = tokio::sync::mpsc::channel(64);
    let accept_stop = stop.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = accept_stop.cancelled() => return,
                r = grpc.accept() => match r { Ok(x) => x, Err(_) => continue },
            };
            let acceptor = acceptor.clone();
            let tx = conns_tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok::<_, std::io::Error>(tls)).await;
                    }
                    Ok(Err(e)) => {
                        let e = svidcar_identity::tls::HandshakeError::classify(&e);
                        tracing::info!(%peer, reason = e.label(), detail = %e, "control-plane client refused");
                    }
                    Err(_) => tracing::info!(%peer, "control-plane handshake timed out"),
                }
            });
        }
    });
    let incoming = futures_util::stream::unfold(conns_rx, |mut rx| async move {
        rx.recv().await.map(|c| (c, rx))
    });
    let service = grpc::Service {
        state: state.clone(),
        decisions,
        next: Arc::new(AtomicU64::new(0)),
        stop: stop.clone(),
    };
    let node_api = match authority {
        Some(authority) => {
            let ledger = nodes::TokenLedger::open(&args.state_dir.join("used-join-tokens"))?;
            let nodes_file = match &args.nodes {
                Some(path) => {
                    // Checked now so that a broken file stops start-up; then again on each
                    // request, parsed anew when it changed.
                    let file =
                        nodes::NodesFile::new(path.clone(), authority.trust_domain().clone());
                    let n = file.current()?;
                    tracing::info!(file = %path.display(), nodes = n.len(), "serving SVIDs to nodes");
                    Some(file)
                }
                None => None,
            };
            Some(NodeServiceServer::new(node_service::NodeApi {
                authority,
                nodes: nodes_file,
                ledger: Arc::new(ledger),
                svid_ttl: args.svid_ttl.0,
                node_svid_ttl: args.node_svid_ttl.0,
                throttle: join_throttle::JoinThrottle::new(
                    FAILED_JOINS_PER_MINUTE,
                    Duration::from_secs(60),
                ),
                metrics: state.metrics.clone(),
                state: state.clone(),
            }))
        }
        None => None,
    };
    let server_stop = stop.clone();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PolicyServiceServer::new(service))
            .add_optional_service(node_api)
            .serve_with_incoming_shutdown(incoming, async move { server_stop.cancelled().await }),
    );
    tracing::info!(grpc = %grpc_addr, admin = %admin_addr, "svidcar control listening");
    Ok(ControlHandle {
        grpc_addr,
        admin_addr,
        state,
        stop,
        server,
    })
}
