//! Binds the listeners, runs accept loops under a connection limit, and drains on shutdown: stop
//! accepting, let open connections finish within the grace period, then close the rest.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::authz::Authz;
use crate::config::{Mode, ProxyConfig};
use crate::conn::{ConnRecord, Direction};
use crate::context::{Conn, ProxyContext};
use crate::control_client::ControlPlane;
use crate::metrics::{Cardinality, Metrics, MetricsError};
use crate::outbound::{DestinationTable, Routing};
use crate::refusal::Refusal;
use svidcar_identity::tls::{provider, TlsContext};
use svidcar_identity::CredentialStore;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({field}): {source}")]
    Bind {
        /// The setting naming the address.
        field: String,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// Metrics could not be registered.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// A running proxy.
#[derive(Debug)]
pub struct ProxyHandle {
    /// Bound outbound addresses: the transparent listener, or one per explicit route, in order.
    pub outbound_addrs: Vec<SocketAddr>,
    /// Bound inbound address.
    pub inbound_addr: Option<SocketAddr>,
    /// Bound admin address.
    pub admin_addr: Option<SocketAddr>,
    shutdown_requested: CancellationToken,
    metrics: Arc<Metrics>,
    authz: Arc<Authz>,
    stop_accepting: CancellationToken,
    force_close: CancellationToken,
    tracker: TaskTracker,
    drain_grace: Duration,
    records: broadcast::Sender<Arc<ConnRecord>>,
}

impl ProxyHandle {
    /// Receives the record of every connection that ends from now on (lagging receivers lose
    /// the oldest records).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ConnRecord>> {
        self.records.subscribe()
    }

    /// Stops accepting, waits up to the drain grace period for open connections, then closes
    /// the rest and waits for them to finish.
    pub async fn shutdown(self) {
        self.stop_accepting.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.drain_grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::info!(
                open = self.tracker.len(),
                "drain grace period over; closing connections"
            );
            self.force_close.cancel();
            self.tracker.wait().await;
        }
    }

    /// Resolves when `POST /shutdown` was called on the admin endpoint.
    pub async fn shutdown_requested(&self) {
        self.shutdown_requested.cancelled().await
    }

    /// The proxy's policy state (install policy sets pushed by a control plane here).
    pub fn authz(&self) -> &Arc<Authz> {
        &self.authz
    }

    /// The proxy's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Connections (and accept loops) still running.
    pub fn open_tasks(&self) -> usize {
        self.tracker.len()
    }
}

async fn bind(field: String, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            field,
            addr,
            source,
        })
}

/// Starts the proxy's listeners with credentials from `store` (the caller keeps the store fed).
pub async fn start(
    config: ProxyConfig,
    store: Arc<CredentialStore>,
) -> Result<ProxyHandle, StartError> {
    let metrics = Metrics::new(Cardinality {
        max_ids: config.admin.max_identity_labels,
        idle: config.admin.label_idle.0,
    })?;
    let control_plane = match (config.policy.control_plane, &config.policy.control_plane_id) {
        (Some(addr), Some(id)) => Some(ControlPlane {
            addr,
            id: id.clone(),
            node: config.policy.node.clone().unwrap_or_else(node_name),
        }),
        _ => None,
    };
    let (events_tx, events_rx) = match control_plane {
        Some(_) => {
            let (tx, rx) = tokio::sync::mpsc::channel(DECISION_BUFFER);
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let source_configured = config.policy.dir.is_some() || control_plane.is_some();
    let authz = Arc::new(Authz::new(
        &config.policy,
        source_configured,
        events_tx,
        metrics.clone(),
    ));
    let shared = Arc::new(ProxyContext {
        tls: TlsContext::new(store, provider())?,
        config: Arc::new(config),
        force_close: CancellationToken::new(),
        records: broadcast::channel(1024).0,
        authz,
        metrics,
    });
    let cfg = shared.config.clone();
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut outbound_addrs = Vec::new();
    let mut inbound_addr = None;
    if cfg.outbound.enabled {
        match cfg.outbound.mode {
            Mode::Explicit => {
                for (i, route) in cfg.outbound.routes.iter().enumerate() {
                    let l = bind(format!("outbound.routes[{i}].listen"), route.listen).await?;
                    outbound_addrs.push(l.local_addr().unwrap_or(route.listen));
                    let routing = Routing::Explicit {
                        upstream: route.upstream,
                        server_id: route.server_id.clone(),
                    };
                    let sh = shared.clone();
                    let h = move |s, p| crate::outbound::handle(sh.clone(), s, p, routing.clone());
                    tracker.spawn(accept_loop(
                        l,
                        Direction::Outbound,
                        shared.clone(),
                        stop.clone(),
                        tracker.clone(),
                        h,
                    ));
                }
            }
            Mode::Transparent => {
                let l = bind("outbound.listen".into(), cfg.outbound.listen).await?;
                let listen = l.local_addr().unwrap_or(cfg.outbound.listen);
                outbound_addrs.push(listen);
                let table = Arc::new(DestinationTable::new(
                    cfg.outbound.destinations.clone(),
                    cfg.outbound.fallback,
                ));
                let routing = Routing::Transparent { table, listen };
                let sh = shared.clone();
                let h = move |s, p| crate::outbound::handle(sh.clone(), s, p, routing.clone());
                tracker.spawn(accept_loop(
                    l,
                    Direction::Outbound,
                    shared.clone(),
                    stop.clone(),
                    tracker.clone(),
                    h,
                ));
            }
        }
    }
    if cfg.inbound.enabled {
        let l = bind("inbound.listen".into(), cfg.inbound.listen).await?;
        inbound_addr = Some(l.local_addr().unwrap_or(cfg.inbound.listen));
        let sh = shared.clone();
        let h = move |s, p| crate::inbound::handle(sh.clone(), s, p);
        tracker.spawn(accept_loop(
            l,
            Direction::Inbound,
            shared.clone(),
            stop.clone(),
            tracker.clone(),
            h,
        ));
    }
    let shutdown_requested = CancellationToken::new();
    let mut admin_addr = None;
    if cfg.admin.enabled {
        let l = bind("admin.listen".into(), cfg.admin.listen).await?;
        admin_addr = Some(l.local_addr().unwrap_or(cfg.admin.listen));
        tokio::spawn(crate::admin::serve(
            l,
            shared.clone(),
            shutdown_requested.clone(),
            stop.clone(),
        ));
    }
    tokio::spawn(sweep_labels(shared.clone(), stop.clone()));
    if let (Some(cp), Some(events)) = (control_plane, events_rx) {
        tokio::spawn(crate::control_client::run_watch(
            shared.tls.clone(),
            cp.clone(),
            shared.authz.clone(),
            shared.metrics.clone(),
            stop.clone(),
        ));
        tokio::spawn(crate::control_client::run_reporter(
            shared.tls.clone(),
            cp,
            events,
            stop.clone(),
        ));
    }
    if let Some(dir) = &cfg.policy.dir {
        tokio::spawn(crate::policy_watch::watch_dir(
            dir.clone(),
            shared.authz.clone(),
            cfg.policy.reload_interval.0,
            stop.clone(),
        ));
    }
    tracing::info!(outbound = ?outbound_addrs, inbound = ?inbound_addr, admin = ?admin_addr, "svidcar proxy listening");
    Ok(ProxyHandle {
        outbound_addrs,
        inbound_addr,
        stop_accepting: stop,
        force_close: shared.force_close.clone(),
        tracker,
        drain_grace: cfg.limits.drain_grace.0,
        records: shared.records.clone(),
        admin_addr,
        shutdown_requested,
        metrics: shared.metrics.clone(),
        authz: shared.authz.clone(),
    })
}

async fn accept_loop<H, F>(
    listener: TcpListener,
    direction: Direction,
    shared: Arc<ProxyContext>,
    stop: CancellationToken,
    tracker: TaskTracker,
    handler: H,
) where
    H: Fn(TcpStream, SocketAddr) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let max = shared.config.limits.max_connections;
    let limit = Arc::new(Semaphore::new(max));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => match limit.clone().try_acquire_owned() {
                Ok(permit) => {
                    let conn = handler(stream, peer);
                    tracker.spawn(async move {
                        conn.await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    let mut conn = Conn::new(ConnRecord::new(direction, peer));
                    conn.refuse(Refusal::MaxConnections(max));
                    shared.report(conn, Duration::ZERO);
                }
            },
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Drops idle metric label sets once a minute until `stop` fires.
async fn sweep_labels(shared: Arc<ProxyContext>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let n = shared.metrics.sweep();
                if n > 0 {
                    tracing::debug!(removed = n, "dropped idle metric label sets");
                }
            }
        }
    }
}

/// Decision events buffered for the control plane before new ones are dropped (and counted).
const DECISION_BUFFER: usize = 4096;

/// The node name reported to the control plane by default.
fn node_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "svidcar".to_owned())
}
