//! The inbound side's tunnel listener: mTLS with ALPN `h2` (a client SVID required, verified
//! once per connection), then HTTP/2 whose `CONNECT` streams each carry one app connection.
//! A stream is handled exactly as a mesh connection terminated on the inbound port: its own
//! record, policy decision, revocation registration, HTTP inspection and access-log line, with
//! the pooled connection's verified client identity. Any other request is an app's HTTP
//! request carried as a request of its own (`svidcar_api::tunnel`), served like a request of
//! an inbound mesh connection from that client. The connection is registered for revocation:
//! revoking its client closes it.

use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::future::Either;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use svidcar_identity::tls::{with_verified_peer, HandshakeError, VerifiedPeer, TUNNEL_ALPN};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::authz::Ends;
use crate::config::Mode;
use crate::conn::{Carrier, ConnRecord, Direction, DstAddr, TlsStatus};
use crate::context::{Conn, ProxyContext};
use crate::http::{self, Body, CarriedRequests};
use crate::metrics::TunnelSide;
use crate::refusal::Refusal;

/// Serves one connection accepted on the tunnel listener until it closes; `draining` fires when
/// the proxy stops accepting (the peer is then told, with `GOAWAY`, to open new streams
/// elsewhere while the open ones finish).
pub(crate) async fn serve(
    ctx: Arc<ProxyContext>,
    tcp: TcpStream,
    client: SocketAddr,
    draining: CancellationToken,
) {
    let span =
        tracing::info_span!("tunnel", client.addr = %client, client.id = tracing::field::Empty);
    async move {
        let start = Instant::now();
        let peer = match accept(&ctx, tcp).await {
            Ok(p) => p,
            Err(why) => {
                // A failed tunnel handshake is recorded like a refused inbound connection.
                let mut conn = Conn::new(ConnRecord::new(Direction::Inbound, client));
                conn.rec.local_id = ctx.tls.store().latest().map(|c| c.id().clone());
                conn.rec.carrier = Carrier::Tunnel;
                conn.refuse(why);
                return ctx.report(conn, start.elapsed());
            }
        };
        tracing::Span::current().record("client.id", tracing::field::display(&peer.1.id));
        connection(ctx, peer, client, draining).await;
    }
    .instrument(span)
    .await
}

type Tls = tokio_rustls::server::TlsStream<TcpStream>;

/// The mTLS handshake, within the handshake timeout, requiring ALPN `h2`.
async fn accept(ctx: &ProxyContext, tcp: TcpStream) -> Result<(Tls, VerifiedPeer), Refusal> {
    let _ = tcp.set_nodelay(true);
    let acceptor = TlsAcceptor::from(ctx.tls.tunnel_server_config());
    let deadline = Instant::now() + ctx.config.limits.handshake_timeout.0;
    let (tls, verified) = with_verified_peer(timeout_at(deadline, acceptor.accept(tcp))).await;
    let failed = |e: HandshakeError| {
        ctx.metrics
            .conn
            .on_handshake_failure(Direction::Inbound, e.label());
        Refusal::Handshake(e)
    };
    let tls = match tls {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(failed(HandshakeError::classify(&e))),
        Err(_) => return Err(Refusal::HandshakeTimeout),
    };
    let peer = verified.ok_or_else(|| failed(HandshakeError::NoPeerCertificate))?;
    if tls.get_ref().1.alpn_protocol() != Some(TUNNEL_ALPN) {
        return Err(failed(HandshakeError::NoApplicationProtocol));
    }
    Ok((tls, peer))
}

/// Serves HTTP/2 on a verified tunnel connection.
async fn connection(
    ctx: Arc<ProxyContext>,
    (tls, peer): (Tls, VerifiedPeer),
    client: SocketAddr,
    draining: CancellationToken,
) {
    let _open = ctx.metrics.tunnel.on_connection(TunnelSide::Server);
    let t = &ctx.config.tunnel;
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(t.max_streams)
        .initial_stream_window_size(t.stream_window)
        .initial_connection_window_size(t.connection_window)
        .max_frame_size(super::MAX_FRAME)
        .keep_alive_interval(super::KEEPALIVE)
        .keep_alive_timeout(super::KEEPALIVE_TIMEOUT)
        // The peer is an authenticated sidecar; see `super::RESETS`.
        .max_local_error_reset_streams(None);
    // Revoking the client (its ID or this certificate) closes the connection and every
    // stream and request on it.
    let ends = Ends {
        direction: Direction::Inbound,
        local: ctx.tls.store().latest().map(|c| c.id().clone()),
        peer: Some(peer.id.clone()),
        peer_serial: Some(peer.serial.clone()),
        client,
        dst: tls.get_ref().0.local_addr().unwrap_or(client),
    };
    let authz = ctx.authz.clone();
    let guard = authz.register(ends, false, &ctx.force_close);
    let closing = guard.cancel.clone();
    let peer = Arc::new(peer);
    let carried = Arc::new(CarriedRequests::default());
    let span = tracing::Span::current();
    let service = {
        let ctx = ctx.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            // Answered at once (a `CONNECT`, a refusal) or once the app answered.
            let answer = if req.method() == Method::CONNECT {
                Either::Left(ready(stream(&ctx, &peer, client, req, &span)))
            } else {
                carried_request(&ctx, &carried, &peer, client, req)
            };
            async move { Ok::<_, Infallible>(answer.await) }
        })
    };
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = draining.cancelled() => None,
        _ = closing.cancelled() => return,
    };
    let ended = match ended {
        Some(r) => r,
        None => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn.as_mut() => r,
                _ = closing.cancelled() => return,
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "tunnel connection ended");
    }
}

/// An app's HTTP request carried as a request of its own: served by the connection's handlers,
/// or refused (a missing or malformed target, a destination that would loop) with a response
/// that says why.
fn carried_request(
    ctx: &Arc<ProxyContext>,
    carried: &CarriedRequests,
    peer: &Arc<VerifiedPeer>,
    client: SocketAddr,
    mut req: Request<Incoming>,
) -> Either<Ready<Response<Body>>, impl Future<Output = Response<Body>> + Send + 'static> {
    let refuse = |why: Refusal| {
        let resp = http::refusal_response(&why);
        let mut conn = record(ctx, peer, client);
        conn.refuse(why);
        ctx.report(conn, std::time::Duration::ZERO);
        resp
    };
    let (dst, version) = match http::carried_target(&mut req) {
        Ok(x) => x,
        Err(e) => return Either::Left(ready(refuse(Refusal::BadRequest(e.as_str())))),
    };
    let app = match app_for(ctx, dst) {
        Ok(app) => app,
        Err(why) => return Either::Left(ready(refuse(why))),
    };
    ctx.metrics.tunnel.on_stream(TunnelSide::Server);
    Either::Right(carried.serve(ctx, app, version, &|| record(ctx, peer, client), req))
}

/// Answers one stream's `CONNECT` and hands the upgraded stream to its own task.
fn stream(
    ctx: &Arc<ProxyContext>,
    peer: &Arc<VerifiedPeer>,
    client: SocketAddr,
    mut req: Request<Incoming>,
    span: &tracing::Span,
) -> Response<Body> {
    let status = |s: StatusCode| {
        let mut r = Response::new(http::empty_body());
        *r.status_mut() = s;
        r
    };
    let Some(dst) = req
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
    else {
        return status(StatusCode::BAD_REQUEST);
    };
    let app = match app_for(ctx, dst) {
        Ok(app) => app,
        Err(why) => {
            let s = StatusCode::from_u16(why.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut conn = record(ctx, peer, client);
            conn.refuse(why);
            ctx.report(conn, std::time::Duration::ZERO);
            return status(s);
        }
    };
    ctx.metrics.tunnel.on_stream(TunnelSide::Server);
    let upgrade = hyper::upgrade::on(&mut req);
    let (ctx, peer) = (ctx.clone(), peer.clone());
    let span = tracing::info_span!(parent: span, "stream", dst.addr = %app);
    tokio::spawn(
        async move {
            let start = Instant::now();
            let mut conn = record(&ctx, &peer, client);
            conn.rec.dst_addr = Some(DstAddr::App(app));
            match upgrade.await {
                Ok(io) => {
                    let io = super::stream::Graceful::new(io);
                    crate::inbound::serve(&ctx, io, Vec::new(), app, &mut conn).await
                }
                Err(e) => conn.refuse(Refusal::Io(format!("tunnel stream: {e}"))),
            }
            ctx.report(conn, start.elapsed());
        }
        .instrument(span),
    );
    status(StatusCode::OK)
}

/// A stream's record: inbound, from the tunnel's client, with its verified identity.
fn record(ctx: &ProxyContext, peer: &VerifiedPeer, client: SocketAddr) -> Conn {
    let mut conn = Conn::new(ConnRecord::new(Direction::Inbound, client));
    conn.rec.local_id = ctx.tls.store().latest().map(|c| c.id().clone());
    conn.rec.tls = TlsStatus::MutualTls {
        peer: peer.id.clone(),
        serial: peer.serial.clone(),
    };
    conn.rec.carrier = Carrier::Tunnel;
    conn
}

/// Where a stream for the original destination `dst` goes: in transparent mode the app on the
/// same port (never one of our own listeners: that would loop), in explicit mode `inbound.app`.
fn app_for(ctx: &ProxyContext, dst: SocketAddr) -> Result<SocketAddr, Refusal> {
    let cfg = &ctx.config;
    match cfg.inbound.mode {
        Mode::Explicit => cfg.inbound.app.ok_or(Refusal::NoAppAddress),
        Mode::Transparent => {
            let ours = [
                Some(cfg.inbound.listen.port()),
                cfg.tunnel
                    .listener(cfg.inbound.enabled, cfg.inbound.mode)
                    .map(|a| a.port()),
            ];
            if ours.contains(&Some(dst.port())) {
                return Err(Refusal::Loop(Direction::Inbound));
            }
            Ok(SocketAddr::new(cfg.inbound.app_host, dst.port()))
        }
    }
}
