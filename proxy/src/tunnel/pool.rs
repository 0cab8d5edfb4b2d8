//! The outbound side's tunnel pool: long-lived mTLS HTTP/2 connections per (peer tunnel
//! address, required server SPIFFE ID), each carrying up to `tunnel.max_streams` app
//! connections as `CONNECT` streams.
//!
//! - Secure naming: a pooled connection is made with the client config that requires the
//!   expected server ID, and it is keyed by that ID, so a stream only rides a connection whose
//!   server proved the identity the destination requires.
//! - Rotation: a connection remembers our credentials it was made with; once the store holds
//!   new ones, new streams go to a connection made with them and the old one drains (its open
//!   streams finish; it closes when the last one ends).
//! - Negotiation: a peer whose tunnel port refuses, times out, fails the handshake or does not
//!   speak HTTP/2 is reached directly for `tunnel.retry_after`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use svidcar_identity::tls::{TlsContext, VerifiedPeer, TUNNEL_ALPN};
use svidcar_identity::{Credentials, SpiffeId};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use super::stream::{StreamGuard, TunnelStream, Usage};
use crate::config::TunnelConfig;
use crate::forward::mesh_handshake;
use crate::metrics::{Metrics, OpenTunnel, TunnelSide};
use crate::refusal::Refusal;

/// Why no stream was opened.
#[derive(Debug)]
pub(crate) enum TunnelError {
    /// The peer's tunnel cannot be used now: connect directly instead.
    Unavailable,
    /// The connection must be refused (the direct path would refuse it too, or the peer's
    /// tunnel answered the stream with an error).
    Refused(Refusal),
}

/// What a pooled connection's requests carry: nothing (`CONNECT`) or an app's request body.
pub(crate) type TunnelBody = BoxBody<Bytes, hyper::Error>;

type Sender = http2::SendRequest<TunnelBody>;

/// An app's request carried as a request of a pooled connection: the response, the server
/// that answered it, and the request's place in the connection's stream count.
#[derive(Debug)]
pub(crate) struct Carried {
    pub(crate) resp: Response<Incoming>,
    pub(crate) peer: VerifiedPeer,
    pub(crate) hold: StreamGuard,
}

/// Why an app's request was not carried.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The peer's tunnel cannot be used now: the request, untouched, to send another way.
    Unavailable(Request<TunnelBody>),
    /// The request must be answered with this refusal.
    Refused(Refusal),
}

/// One pooled connection.
#[derive(Debug)]
struct Pooled {
    sender: Sender,
    peer: VerifiedPeer,
    /// Our credentials at the handshake; other than the store's current ones means rotated.
    ours: Arc<Credentials>,
    usage: Arc<Usage>,
    /// Counts the connection open for as long as the pool holds it.
    _open: OpenTunnel,
}

impl Pooled {
    /// Whether it was made with credentials other than `current` (we rotated since).
    fn rotated(&self, current: Option<&Arc<Credentials>>) -> bool {
        current.is_none_or(|c| !Arc::ptr_eq(c, &self.ours))
    }

    fn busy(&self) -> bool {
        self.usage.streams.load(Ordering::Acquire) > 0
    }
}

/// The pooled connections to one (address, server ID); the lock is held while one is made, so
/// concurrent first streams share one handshake.
#[derive(Debug, Default)]
struct Peer {
    conns: tokio::sync::Mutex<Vec<Pooled>>,
}

/// The outbound tunnel pool.
#[derive(Debug)]
pub(crate) struct Pool {
    tls: TlsContext,
    cfg: TunnelConfig,
    handshake_timeout: Duration,
    metrics: Arc<Metrics>,
    /// By tunnel address, then required server ID.
    peers: Mutex<HashMap<SocketAddr, HashMap<SpiffeId, Arc<Peer>>>>,
    /// Tunnel addresses reached directly until the instant.
    direct_until: Mutex<HashMap<SocketAddr, Instant>>,
}

/// Milliseconds since the first call: the pool's clock for idle times.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Pool {
    /// Creates the pool and starts its idle sweeper (which ends when the pool is dropped).
    pub(crate) fn new(
        tls: TlsContext,
        cfg: TunnelConfig,
        handshake_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let pool = Arc::new(Self {
            tls,
            cfg,
            handshake_timeout,
            metrics,
            peers: Mutex::new(HashMap::new()),
            direct_until: Mutex::new(HashMap::new()),
        });
        tokio::spawn(sweep(Arc::downgrade(&pool)));
        pool
    }

    /// Opens a stream to `authority` (the original destination) through the peer's tunnel at
    /// `addr`, whose server must be `expected`.
    pub(crate) async fn open(
        &self,
        addr: SocketAddr,
        expected: &SpiffeId,
        authority: SocketAddr,
    ) -> Result<TunnelStream, TunnelError> {
        if self.reached_directly(addr) {
            return Err(TunnelError::Unavailable);
        }
        let peer = self.peer(addr, expected);
        // A connection that died between being picked and carrying the stream (the peer
        // closed it, GOAWAY) is replaced once.
        for retry in [false, true] {
            let (sender, verified, usage) = self.checkout(&peer, addr, expected).await?;
            let guard = StreamGuard::new(usage, now_ms);
            match connect_stream(sender, authority).await {
                Ok(io) => {
                    self.metrics.tunnel.on_stream(TunnelSide::Client);
                    return Ok(TunnelStream::new(io, verified, guard));
                }
                Err(StreamError::Status(status)) => {
                    return Err(TunnelError::Refused(Refusal::TunnelRejected(format!(
                        "{addr} answered CONNECT {authority} with {status}"
                    ))))
                }
                Err(StreamError::Connection(e)) if !retry => {
                    tracing::debug!(tunnel = %addr, error = %e, "tunnel connection gone; opening another");
                }
                Err(StreamError::Connection(e)) => {
                    return Err(TunnelError::Refused(Refusal::Io(format!(
                        "tunnel {addr}: {e}"
                    ))))
                }
            }
        }
        Err(TunnelError::Unavailable)
    }

    /// Sends an app's HTTP request (already in the form the peer expects: see
    /// `svidcar_api::tunnel`) as a request of its own on a pooled connection to the peer's
    /// tunnel at `addr`, whose server must be `expected` and pass `admit` (a revocation
    /// check). The response comes with the server that carried it and a hold on the
    /// connection's stream count, to keep until the response body ends. A tunnel that cannot
    /// be used now hands the request back, untouched.
    pub(crate) async fn send(
        &self,
        addr: SocketAddr,
        expected: &SpiffeId,
        req: Request<TunnelBody>,
        admit: &(dyn Fn(&VerifiedPeer) -> Result<(), Refusal> + Sync),
    ) -> Result<Carried, SendError> {
        if self.reached_directly(addr) {
            return Err(SendError::Unavailable(req));
        }
        let peer = self.peer(addr, expected);
        let mut req = req;
        // A connection that closed between being picked and taking the request (the peer's
        // GOAWAY, its idle close) hands the request back unsent: it goes once more, on
        // another connection.
        for retry in [false, true] {
            let (mut sender, verified, usage) = match self.checkout(&peer, addr, expected).await {
                Ok(x) => x,
                Err(TunnelError::Unavailable) => return Err(SendError::Unavailable(req)),
                Err(TunnelError::Refused(why)) => return Err(SendError::Refused(why)),
            };
            admit(&verified).map_err(SendError::Refused)?;
            let hold = StreamGuard::new(usage, now_ms);
            if let Err(e) = sender.ready().await {
                if retry {
                    return Err(SendError::Refused(Refusal::Io(format!(
                        "tunnel {addr}: {e}"
                    ))));
                }
                tracing::debug!(tunnel = %addr, error = %e, "tunnel connection gone; opening another");
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.metrics.tunnel.on_stream(TunnelSide::Client);
                    return Ok(Carried {
                        resp,
                        peer: verified,
                        hold,
                    });
                }
                Err(mut e) => match e.take_message() {
                    Some(back) if !retry => {
                        tracing::debug!(tunnel = %addr, error = %e.error(), "tunnel connection gone; opening another");
                        req = back;
                    }
                    _ => {
                        return Err(SendError::Refused(Refusal::Io(format!(
                            "tunnel {addr}: {}",
                            e.into_error()
                        ))))
                    }
                },
            }
        }
        Err(SendError::Refused(Refusal::Io(format!(
            "tunnel {addr}: connection closed"
        ))))
    }

    fn reached_directly(&self, addr: SocketAddr) -> bool {
        let mut direct = lock(&self.direct_until);
        match direct.get(&addr) {
            Some(until) if Instant::now() < *until => true,
            Some(_) => {
                direct.remove(&addr);
                false
            }
            None => false,
        }
    }

    /// The peer's pool entry; the key (and its SPIFFE ID) is allocated only for a new one,
    /// not per stream.
    fn peer(&self, addr: SocketAddr, server: &SpiffeId) -> Arc<Peer> {
        let mut peers = lock(&self.peers);
        let by_id = peers.entry(addr).or_default();
        if let Some(p) = by_id.get(server) {
            return p.clone();
        }
        by_id.entry(server.clone()).or_default().clone()
    }

    /// A connection with room for one more stream: a pooled one made with our current
    /// credentials, or a new one.
    async fn checkout(
        &self,
        peer: &Peer,
        addr: SocketAddr,
        expected: &SpiffeId,
    ) -> Result<(Sender, VerifiedPeer, Arc<Usage>), TunnelError> {
        let ours = self
            .tls
            .store()
            .current()
            .ok_or(TunnelError::Refused(Refusal::NoLocalSvid))?;
        let max = usize::try_from(self.cfg.max_streams).unwrap_or(usize::MAX);
        let mut conns = peer.conns.lock().await;
        // A connection made before a rotation takes no new streams; it is kept while its
        // open ones finish (dropping its sender closes it).
        conns.retain(|c| !c.sender.is_closed() && (!c.rotated(Some(&ours)) || c.busy()));
        if let Some(c) = conns
            .iter()
            .find(|c| !c.rotated(Some(&ours)) && c.usage.streams.load(Ordering::Acquire) < max)
        {
            return Ok((c.sender.clone(), c.peer.clone(), c.usage.clone()));
        }
        let c = self.connect(addr, expected, ours).await?;
        let out = (c.sender.clone(), c.peer.clone(), c.usage.clone());
        conns.push(c);
        Ok(out)
    }

    /// Makes a pooled connection: TCP, mTLS requiring `expected` with ALPN `h2`, HTTP/2.
    async fn connect(
        &self,
        addr: SocketAddr,
        expected: &SpiffeId,
        ours: Arc<Credentials>,
    ) -> Result<Pooled, TunnelError> {
        let config = self
            .tls
            .tunnel_client_config(expected)
            .map_err(|e| TunnelError::Refused(Refusal::TlsConfig(e.to_string())))?;
        let tcp = match timeout(self.cfg.connect_timeout.0, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(self.unusable(addr, "connect", &e)),
            Err(_) => return Err(self.unusable(addr, "connect", &"timed out")),
        };
        let _ = tcp.set_nodelay(true);
        let (tls, peer) =
            match mesh_handshake(config, tcp, addr, self.handshake_timeout, &self.metrics).await {
                Ok(x) => x,
                // Without an SVID of our own the direct path fails closed the same way.
                Err(why @ Refusal::NoLocalSvid) => return Err(TunnelError::Refused(why)),
                Err(why) => return Err(self.unusable(addr, "handshake", &why)),
            };
        if tls.get_ref().1.alpn_protocol() != Some(TUNNEL_ALPN) {
            return Err(self.unusable(addr, "protocol", &"no HTTP/2 (ALPN h2) on the port"));
        }
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .initial_stream_window_size(self.cfg.stream_window)
            .initial_connection_window_size(self.cfg.connection_window)
            .max_frame_size(super::MAX_FRAME)
            .keep_alive_interval(super::KEEPALIVE)
            .keep_alive_timeout(super::KEEPALIVE_TIMEOUT)
            // The server is an authenticated sidecar; see `super::RESETS`.
            .max_local_error_reset_streams(None)
            .max_concurrent_reset_streams(super::RESETS);
        let (sender, conn) = match builder.handshake(TokioIo::new(tls)).await {
            Ok(x) => x,
            Err(e) => return Err(self.unusable(addr, "protocol", &e)),
        };
        tokio::spawn(drive(conn, addr));
        tracing::debug!(tunnel = %addr, server.id = %peer.id, "tunnel connection made");
        Ok(Pooled {
            sender,
            peer,
            ours,
            usage: Arc::new(Usage {
                idle_since_ms: now_ms().into(),
                ..Usage::default()
            }),
            _open: self.metrics.tunnel.on_connection(TunnelSide::Client),
        })
    }

    /// Remembers that `addr` is reached directly for `tunnel.retry_after`, says so once, and
    /// counts it.
    fn unusable(
        &self,
        addr: SocketAddr,
        reason: &'static str,
        why: &dyn std::fmt::Display,
    ) -> TunnelError {
        let retry = self.cfg.retry_after.0;
        lock(&self.direct_until).insert(addr, Instant::now() + retry);
        self.metrics.tunnel.on_fallback(reason);
        tracing::info!(
            tunnel = %addr,
            reason,
            error = %why,
            retry_in = ?retry,
            "peer's tunnel port not usable; connecting directly"
        );
        TunnelError::Unavailable
    }

    /// Closes pooled connections idle longer than `tunnel.idle_timeout` and drained ones made
    /// before a rotation; forgets peers left without connections.
    fn sweep(&self) {
        let idle = u64::try_from(self.cfg.idle_timeout.0.as_millis()).unwrap_or(u64::MAX);
        let now = now_ms();
        let current = self.tls.store().current();
        let mut peers = lock(&self.peers);
        peers.retain(|_, by_id| {
            by_id.retain(|_, peer| {
                let Ok(mut conns) = peer.conns.try_lock() else {
                    return true;
                };
                conns.retain(|c| {
                    let recent =
                        now.saturating_sub(c.usage.idle_since_ms.load(Ordering::Relaxed)) < idle;
                    !c.sender.is_closed() && (c.busy() || (recent && !c.rotated(current.as_ref())))
                });
                !conns.is_empty() || Arc::strong_count(peer) > 1
            });
            !by_id.is_empty()
        });
    }
}

/// Runs a pooled connection's dispatch until it closes or the pool lets it go.
async fn drive<T>(conn: http2::Connection<T, TunnelBody, TokioExecutor>, addr: SocketAddr)
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    if let Err(e) = conn.await {
        tracing::debug!(tunnel = %addr, error = %e, "tunnel connection ended");
    }
}

async fn sweep(pool: Weak<Pool>) {
    let every = match pool.upgrade() {
        Some(p) => {
            (p.cfg.idle_timeout.0 / 2).clamp(Duration::from_millis(100), Duration::from_secs(30))
        }
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        match pool.upgrade() {
            Some(p) => p.sweep(),
            None => return,
        }
    }
}

#[derive(Debug)]
enum StreamError {
    /// The tunnel server answered with a status other than 200.
    Status(StatusCode),
    /// The pooled connection failed.
    Connection(hyper::Error),
}

/// Sends `CONNECT authority` and waits for the server's 200.
async fn connect_stream(
    mut sender: Sender,
    authority: SocketAddr,
) -> Result<hyper::upgrade::Upgraded, StreamError> {
    let uri = Uri::builder()
        .authority(authority.to_string())
        .build()
        .map_err(|_| StreamError::Status(StatusCode::BAD_REQUEST))?;
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri(uri)
        .body(Empty::new().map_err(|never| match never {}).boxed())
        .map_err(|_| StreamError::Status(StatusCode::BAD_REQUEST))?;
    sender.ready().await.map_err(StreamError::Connection)?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(StreamError::Connection)?;
    if resp.status() != StatusCode::OK {
        return Err(StreamError::Status(resp.status()));
    }
    hyper::upgrade::on(resp)
        .await
        .map_err(StreamError::Connection)
}
