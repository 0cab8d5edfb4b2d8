//! Binds the listeners, runs their accept loops (`accept`), and drains on shutdown: stop
//! accepting, let open connections finish within the grace period, then close the rest.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use svidcar_api::DecisionEvent;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::authz::Authz;
use crate::config::{Mode, ProxyConfig};
use crate::conn::{ConnRecord, Direction};
use crate::context::ProxyContext;
use crate::control_client::ControlPlane;
use crate::metrics::{Cardinality, Metrics, MetricsError};
use crate::outbound::{DestinationTable, Routing};
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
    /// Bound tunnel listener address.
    pub tunnel_addr: Option<SocketAddr>,
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
        self.shutdown_or(std::future::pending()).await
    }

    /// As [`shutdown`](Self::shutdown), but open connections are closed as soon as `now`
    /// resolves (a second SIGTERM) instead of when the grace period ends.
    pub async fn shutdown_or(self, now: impl Future<Output = ()>) {
        self.stop_accepting.cancel();
        self.tracker.close();
        let open = self.metrics.conn.open_connections();
        if open > 0 {
            let grace = self.drain_grace;
            let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
            let until = svidcar_identity::unix_now()
                .saturating_add(i64::try_from(secs).unwrap_or(i64::MAX));
            tracing::info!(
                open,
                until = %svidcar_identity::format_unix(until),
                "draining: accepting no more connections; the open ones may finish until \
                 `until` (limits.drain_grace), then they are closed"
            );
        }
        let drained = tokio::select! {
            _ = self.tracker.wait() => true,
            _ = tokio::time::sleep(self.drain_grace) => {
                tracing::info!(
                    open = self.metrics.conn.open_connections(),
                    "drain grace period over; closing connections"
                );
                false
            }
            _ = now => {
                tracing::info!(
                    open = self.metrics.conn.open_connections(),
                    "drain cut short; closing connections now"
                );
                false
            }
        };
        if !drained {
            self.force_close.cancel();
            self.tracker.wait().await;
        }
        // ALLOWs folded while draining (the periodic flush stopped with the drain) leave as
        // their summaries.
        self.authz.flush_all_decisions();
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

    /// Connections accepted and not yet ended (`svidcar_tcp_connections_open`, both sides).
    pub fn open_connections(&self) -> u64 {
        self.metrics.conn.open_connections()
    }
}

/// Binds a listener on `addr` whose kernel accept queue holds `backlog` connections
/// (`limits.listen_backlog`; tokio's `TcpListener::bind` would use 128). `SO_REUSEADDR` as
/// tokio sets it, so a restarted proxy can bind while old connections linger in TIME_WAIT.
fn bind(field: String, addr: SocketAddr, backlog: u32) -> Result<TcpListener, StartError> {
    let listen = || {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(backlog)
    };
    listen().map_err(|source| StartError::Bind {
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
    let control_plane = control_plane(&config);
    let (ctx, events) = context(config, store, control_plane.is_some())?;
    let tasks = Tasks {
        ctx: ctx.clone(),
        stop: ctx.draining.clone(),
        tracker: TaskTracker::new(),
    };
    let cfg = ctx.config.clone();
    let outbound_addrs = match (cfg.outbound.enabled, cfg.outbound.mode) {
        (false, _) => Vec::new(),
        (true, Mode::Explicit) => tasks.explicit_outbound().await?,
        (true, Mode::Transparent) => vec![tasks.transparent_outbound().await?],
    };
    let inbound_addr = match cfg.inbound.enabled {
        true => Some(tasks.inbound().await?),
        false => None,
    };
    let tunnel_addr = match cfg.tunnel.listener(cfg.inbound.enabled, cfg.inbound.mode) {
        Some(listen) => Some(tasks.tunnel(listen).await?),
        None => None,
    };
    let shutdown_requested = CancellationToken::new();
    let admin_addr = match cfg.admin.enabled {
        true => Some(tasks.admin(shutdown_requested.clone()).await?),
        false => None,
    };
    tasks.background(control_plane.zip(events));
    tracing::info!(outbound = ?outbound_addrs, inbound = %svidcar_identity::OrNone(inbound_addr), tunnel = %svidcar_identity::OrNone(tunnel_addr), admin = %svidcar_identity::OrNone(admin_addr), "svidcar proxy listening");
    Ok(ProxyHandle {
        outbound_addrs,
        inbound_addr,
        tunnel_addr,
        stop_accepting: tasks.stop,
        force_close: ctx.force_close.clone(),
        tracker: tasks.tracker,
        drain_grace: cfg.limits.drain_grace.0,
        records: ctx.records.clone(),
        admin_addr,
        shutdown_requested,
        metrics: ctx.metrics.clone(),
        authz: ctx.authz.clone(),
    })
}

/// The control plane to take policy from, when configured.
fn control_plane(config: &ProxyConfig) -> Option<ControlPlane> {
    match (
        &config.policy.control_plane,
        &config.policy.control_plane_id,
    ) {
        (Some(addr), Some(id)) => Some(ControlPlane {
            addr: addr.clone(),
            id: id.clone(),
            node: config.policy.node.clone().unwrap_or_else(node_name),
        }),
        _ => None,
    }
}

/// Builds what every handler shares; with a control plane, also the receiving end of the
/// decision stream.
fn context(
    config: ProxyConfig,
    store: Arc<CredentialStore>,
    with_control_plane: bool,
) -> Result<(Arc<ProxyContext>, Option<mpsc::Receiver<DecisionEvent>>), StartError> {
    let metrics = Metrics::new(Cardinality {
        max_ids: config.admin.max_identity_labels,
        idle: config.admin.label_idle.0,
    })?;
    let (events_tx, events_rx) = match with_control_plane {
        true => {
            let (tx, rx) = mpsc::channel(DECISION_BUFFER);
            (Some(tx), Some(rx))
        }
        false => (None, None),
    };
    let source_configured = config.policy.dir.is_some() || with_control_plane;
    let authz = Authz::new(
        &config.policy,
        source_configured,
        events_tx,
        metrics.clone(),
    );
    let tls = TlsContext::new(store, provider())?;
    let tunnels = config.tunnel.enabled.then(|| {
        crate::tunnel::Pool::new(
            tls.clone(),
            config.tunnel.clone(),
            config.limits.handshake_timeout.0,
            metrics.clone(),
        )
    });
    let ctx = ProxyContext {
        tls,
        config: Arc::new(config),
        draining: CancellationToken::new(),
        force_close: CancellationToken::new(),
        records: broadcast::channel(1024).0,
        authz: Arc::new(authz),
        metrics,
        tunnels,
        app_pool: Arc::default(),
    };
    Ok((Arc::new(ctx), events_rx))
}

/// What the listeners and background tasks of one proxy share.
struct Tasks {
    ctx: Arc<ProxyContext>,
    /// Stops the accept loops and background tasks.
    stop: CancellationToken,
    /// Accept loops and connections, for the drain.
    tracker: TaskTracker,
}

impl Tasks {
    /// `limits.listen_backlog`.
    fn backlog(&self) -> u32 {
        self.ctx.config.limits.listen_backlog
    }

    /// Runs an accept loop on `l` whose connections `handler` serves.
    fn serve<H, F>(&self, l: TcpListener, direction: Direction, handler: H)
    where
        H: Fn(TcpStream, SocketAddr) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(crate::accept::accept_loop(
            l,
            direction,
            self.ctx.clone(),
            self.stop.clone(),
            self.tracker.clone(),
            handler,
        ));
    }

    /// One listener per explicit route; their bound addresses in order.
    async fn explicit_outbound(&self) -> Result<Vec<SocketAddr>, StartError> {
        let mut addrs = Vec::new();
        for (i, route) in self.ctx.config.outbound.routes.iter().enumerate() {
            let l = bind(
                format!("outbound.routes[{i}].listen"),
                route.listen,
                self.backlog(),
            )?;
            addrs.push(l.local_addr().unwrap_or(route.listen));
            let routing = Routing::Explicit {
                upstream: route.upstream,
                server_id: route.server_id.clone(),
                tunnel: route.tunnel,
            };
            let ctx = self.ctx.clone();
            let h = move |s, p| crate::outbound::handle(ctx.clone(), s, p, routing.clone());
            self.serve(l, Direction::Outbound, h);
        }
        Ok(addrs)
    }

    /// The transparent outbound listener and its destination table.
    async fn transparent_outbound(&self) -> Result<SocketAddr, StartError> {
        let cfg = &self.ctx.config.outbound;
        let l = bind("outbound.listen".into(), cfg.listen, self.backlog())?;
        let listen = l.local_addr().unwrap_or(cfg.listen);
        let table = DestinationTable::new(cfg.destinations.clone(), cfg.fallback);
        let routing = Routing::Transparent {
            table: Arc::new(table),
            listen,
        };
        let ctx = self.ctx.clone();
        let h = move |s, p| crate::outbound::handle(ctx.clone(), s, p, routing.clone());
        self.serve(l, Direction::Outbound, h);
        Ok(listen)
    }

    /// The inbound listener.
    async fn inbound(&self) -> Result<SocketAddr, StartError> {
        let listen = self.ctx.config.inbound.listen;
        let l = bind("inbound.listen".into(), listen, self.backlog())?;
        let addr = l.local_addr().unwrap_or(listen);
        let ctx = self.ctx.clone();
        self.serve(l, Direction::Inbound, move |s, p| {
            crate::inbound::handle(ctx.clone(), s, p)
        });
        Ok(addr)
    }

    /// The tunnel listener; its connections are told to go elsewhere (`GOAWAY`) when the
    /// proxy stops accepting.
    async fn tunnel(&self, listen: SocketAddr) -> Result<SocketAddr, StartError> {
        let l = bind("tunnel.listen".into(), listen, self.backlog())?;
        let addr = l.local_addr().unwrap_or(listen);
        let (ctx, stop) = (self.ctx.clone(), self.stop.clone());
        self.serve(l, Direction::Inbound, move |s, p| {
            crate::tunnel::serve(ctx.clone(), s, p, stop.clone())
        });
        Ok(addr)
    }

    /// The admin server; `shutdown_requested` fires on `POST /shutdown`.
    async fn admin(&self, shutdown_requested: CancellationToken) -> Result<SocketAddr, StartError> {
        let listen = self.ctx.config.admin.listen;
        let l = bind("admin.listen".into(), listen, self.backlog())?;
        let addr = l.local_addr().unwrap_or(listen);
        tokio::spawn(crate::admin::serve(
            l,
            self.ctx.clone(),
            shutdown_requested,
            self.stop.clone(),
        ));
        Ok(addr)
    }

    /// Label sweeping, and the policy sources: the control plane's streams or the local
    /// policy directory.
    fn background(&self, control_plane: Option<(ControlPlane, mpsc::Receiver<DecisionEvent>)>) {
        let ctx = &self.ctx;
        tokio::spawn(sweep_labels(ctx.clone(), self.stop.clone()));
        tokio::spawn(flush_decisions(ctx.clone(), self.stop.clone()));
        if let Some((cp, events)) = control_plane {
            tokio::spawn(crate::control_client::run_watch(
                ctx.tls.clone(),
                cp.clone(),
                ctx.authz.clone(),
                ctx.metrics.clone(),
                self.stop.clone(),
            ));
            tokio::spawn(crate::control_client::run_reporter(
                ctx.tls.clone(),
                cp,
                events,
                self.stop.clone(),
            ));
        }
        if let Some(dir) = &ctx.config.policy.dir {
            tokio::spawn(crate::policy_watch::watch_dir(
                dir.clone(),
                ctx.authz.clone(),
                ctx.config.policy.reload_interval.0,
                self.stop.clone(),
            ));
        }
    }
}

/// Sends the summaries of folded ALLOW decisions once per window until `stop` fires (and a
/// last time then).
async fn flush_decisions(ctx: Arc<ProxyContext>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(crate::authz::DECISION_WINDOW);
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                ctx.authz.flush_all_decisions();
                return;
            }
            _ = tick.tick() => ctx.authz.flush_decisions(),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpStream;

    use super::bind;

    /// With tokio's default backlog (128) connects beyond the accept queue go unanswered until
    /// the proxy accepts; with ours a burst of 300 is queued by the kernel at once.
    #[tokio::test]
    async fn a_burst_beyond_128_pending_connects_is_queued() {
        let l = bind("test".into(), "127.0.0.1:0".parse().unwrap(), 1024).unwrap();
        let addr = l.local_addr().unwrap();
        let connects = (0..300).map(|_| tokio::spawn(TcpStream::connect(addr)));
        let mut streams = Vec::new();
        for c in connects {
            let s = tokio::time::timeout(Duration::from_secs(2), c)
                .await
                .expect("connect answered without an accept")
                .unwrap();
            streams.push(s.expect("connect not refused"));
        }
        assert_eq!(streams.len(), 300);
        drop(l);
    }
}
