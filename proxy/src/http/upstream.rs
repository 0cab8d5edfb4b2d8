//! Where the requests of one HTTP connection go: to the app (inbound, plain TCP over loopback)
//! or to the peer's proxy (outbound, mesh mTLS requiring the expected SPIFFE ID). Connected on
//! the first request that is let through, in the client's HTTP version, and again if the other
//! side closed the connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use svidcar_identity::tls::{TlsContext, VerifiedPeer};
use svidcar_identity::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::header::HeaderValue;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Mutex;

use super::app_pool::AppPool;
use super::carried::{self, Rewritten};
use super::Version;
use crate::authz::{Authz, End, Ends};
use crate::conn::Direction;
use crate::forward::{dial, mesh_config, mesh_handshake};
use crate::metrics::Metrics;
use crate::outbound::Tunnel;
use crate::refusal::Refusal;
use crate::tunnel::{Carried, SendError, StreamGuard, TunnelBody, TunnelError};

/// A sender of requests to the other side (a connection of this client connection's own).
#[derive(Debug)]
enum Sender {
    Http1(http1::SendRequest<TunnelBody>),
    Http2(http2::SendRequest<TunnelBody>),
}

/// The other side's response; when it came over a pooled tunnel connection, the request's
/// place in that connection's stream count, to hold until the response body ends.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) resp: Response<Incoming>,
    pub(super) hold: Option<StreamGuard>,
}

impl From<Response<Incoming>> for Answer {
    fn from(resp: Response<Incoming>) -> Self {
        Self { resp, hold: None }
    }
}

/// How to reach the other side.
#[derive(Debug)]
pub(crate) enum Dial {
    /// The app behind the inbound side, over the proxy's pooled keep-alive connections.
    App(Arc<AppPool>),
    /// Mesh mTLS with our SVID; the server must be `expected` (the outbound side).
    Mesh {
        /// Our TLS configurations.
        tls: TlsContext,
        /// Where a server whose certificate is revoked is refused (and the refusal recorded).
        authz: Arc<Authz>,
        /// The app's address (the client of the connection).
        client: SocketAddr,
        /// The SPIFFE ID the server must present.
        expected: SpiffeId,
        /// Longest a handshake may take.
        handshake_timeout: Duration,
        /// Where failed handshakes are counted.
        metrics: Arc<Metrics>,
        /// The peer's tunnel, tried before a connection of our own.
        tunnel: Option<Tunnel>,
    },
}

/// A byte stream hyper can drive: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The far side of one HTTP connection.
#[derive(Debug)]
pub(super) struct Upstream {
    version: Version,
    app: SocketAddr,
    connect_timeout: Duration,
    dial: Dial,
    /// The peer our verifier accepted, once a mesh connection was made.
    verified: OnceLock<VerifiedPeer>,
    /// Whether a request rode a pooled tunnel connection.
    tunnelled: AtomicBool,
    /// `app` as the tunnel's destination header, made for the first carried request.
    dst_value: OnceLock<HeaderValue>,
    sender: Mutex<Option<Sender>>,
}

impl Upstream {
    pub(super) fn new(
        version: Version,
        app: SocketAddr,
        connect_timeout: Duration,
        dial: Dial,
    ) -> Self {
        Self {
            version,
            app,
            connect_timeout,
            dial,
            verified: OnceLock::new(),
            tunnelled: AtomicBool::new(false),
            dst_value: OnceLock::new(),
            sender: Mutex::new(None),
        }
    }

    /// The server our verifier accepted, if a mesh connection was made.
    pub(super) fn verified(&self) -> Option<&VerifiedPeer> {
        self.verified.get()
    }

    fn dst_value(&self) -> &HeaderValue {
        self.dst_value.get_or_init(|| carried::addr_value(self.app))
    }

    /// Whether a request rode a pooled tunnel connection as a request of its own.
    pub(super) fn tunnelled(&self) -> bool {
        self.tunnelled.load(Ordering::Relaxed)
    }

    /// Sends `req` to the app; a refusal says why the app could not be reached. `upgrade`:
    /// the request asks to switch protocols.
    pub(super) async fn send(
        &self,
        req: Request<Incoming>,
        upgrade: bool,
    ) -> Result<Answer, Refusal> {
        let req = match &self.dial {
            Dial::App(pool) => {
                let resp = match self.version {
                    Version::Http1 => {
                        pool.send_h1(self.app, self.connect_timeout, req, upgrade)
                            .await
                    }
                    Version::Http2 => pool.send_h2(self.app, self.connect_timeout, req).await,
                };
                return resp.map(Answer::from);
            }
            Dial::Mesh {
                tunnel: Some(tunnel),
                expected,
                authz,
                client,
                ..
            } if !upgrade => match carried::outgoing(req, self.version, self.app, self.dst_value())
            {
                Rewritten::Carried(req, original) => {
                    let req = req.map(BodyExt::boxed);
                    let admit = |peer: &VerifiedPeer| self.admit(authz, *client, peer);
                    match tunnel.pool.send(tunnel.addr, expected, req, &admit).await {
                        Ok(Carried { resp, peer, hold }) => {
                            self.tunnelled.store(true, Ordering::Relaxed);
                            let _ = self.verified.set(peer);
                            return Ok(Answer {
                                resp,
                                hold: Some(hold),
                            });
                        }
                        Err(SendError::Refused(why)) => return Err(why),
                        // Reached directly: on a connection of this client's own.
                        Err(SendError::Unavailable(back)) => carried::restore(back, original),
                    }
                }
                Rewritten::AsIs(req) => req.map(BodyExt::boxed),
            },
            Dial::Mesh { .. } => req.map(BodyExt::boxed),
        };
        self.send_own(req).await.map(Answer::from)
    }

    /// Whether a request may go to the server `peer` (it may be revoked by ID or serial).
    fn admit(&self, authz: &Authz, client: SocketAddr, peer: &VerifiedPeer) -> Result<(), Refusal> {
        let revocable = [End {
            id: Some(&peer.id),
            serial: Some(&peer.serial),
        }];
        let refused = authz.refuse_revoked_lazy(&revocable, || Ends {
            direction: Direction::Outbound,
            local: None,
            peer: Some(peer.id.clone()),
            peer_serial: Some(peer.serial.clone()),
            client,
            dst: self.app,
        });
        refused.map_or(Ok(()), Err)
    }

    /// Sends `req` on this client connection's own connection to the other side (made on the
    /// first request, again if it closed).
    async fn send_own(&self, req: Request<TunnelBody>) -> Result<Response<Incoming>, Refusal> {
        let io = |e: hyper::Error| Refusal::Io(format!("app {}: {e}", self.app));
        let mut slot = self.sender.lock().await;
        let usable = match &*slot {
            Some(Sender::Http1(s)) => !s.is_closed(),
            Some(Sender::Http2(s)) => !s.is_closed(),
            None => false,
        };
        if !usable {
            *slot = Some(self.connect().await?);
        }
        match slot.as_mut() {
            Some(Sender::Http1(s)) => {
                // HTTP/1: one request at a time on the connection (the lock is held).
                s.ready().await.map_err(io)?;
                s.send_request(req).await.map_err(io)
            }
            Some(Sender::Http2(s)) => {
                // HTTP/2: streams run concurrently; the lock only guards the handle.
                let mut s = s.clone();
                drop(slot);
                s.ready().await.map_err(io)?;
                s.send_request(req).await.map_err(io)
            }
            None => Err(Refusal::Io("no connection to the app".into())),
        }
    }

    async fn connect(&self) -> Result<Sender, Refusal> {
        let app = self.app;
        let io: Box<dyn Io> = match &self.dial {
            // The app is reached through the proxy's pool (`send`).
            Dial::App(_) => return Err(Refusal::Io(format!("app {app}: not pooled"))),
            Dial::Mesh {
                tls,
                authz,
                client,
                expected,
                handshake_timeout,
                metrics,
                tunnel,
            } => {
                let (config, ours) = mesh_config(tls, expected)?;
                let carried = match tunnel {
                    Some(t) => match t.pool.open(t.addr, expected, app).await {
                        Ok(stream) => Some(stream),
                        Err(TunnelError::Refused(why)) => return Err(why),
                        Err(TunnelError::Unavailable) => None,
                    },
                    None => None,
                };
                let (stream, peer): (Box<dyn Io>, VerifiedPeer) = match carried {
                    Some(s) => {
                        let peer = s.peer.clone();
                        (Box::new(s), peer)
                    }
                    None => {
                        let tcp = dial(app, self.connect_timeout).await?;
                        let (s, peer) =
                            mesh_handshake(config, tcp, app, *handshake_timeout, metrics).await?;
                        (Box::new(s), peer)
                    }
                };
                // The certificate it presented may be one revoked by serial.
                let ends = Ends {
                    direction: Direction::Outbound,
                    local: Some(ours),
                    peer: Some(peer.id.clone()),
                    peer_serial: Some(peer.serial.clone()),
                    client: *client,
                    dst: app,
                };
                if let Some(why) = authz.refuse_revoked(&ends) {
                    return Err(why);
                }
                let _ = self.verified.set(peer);
                stream
            }
        };
        let io = TokioIo::new(io);
        let handshake = |e: hyper::Error| Refusal::Io(format!("app {app}: {e}"));
        match self.version {
            Version::Http1 => {
                let (sender, conn) = http1::handshake(io).await.map_err(handshake)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!(error = %e, "app connection ended");
                    }
                });
                Ok(Sender::Http1(sender))
            }
            Version::Http2 => {
                let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(handshake)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "app connection ended");
                    }
                });
                Ok(Sender::Http2(sender))
            }
        }
    }
}
