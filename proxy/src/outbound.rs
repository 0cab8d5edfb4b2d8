//! The outbound side: accepts the app's plaintext connection (redirected by iptables, or on an
//! explicit route's listener), decides mesh or passthrough for its destination, and for mesh
//! originates mTLS that requires the server's expected SPIFFE ID.

mod table;

use std::net::SocketAddr;
use std::sync::Arc;

use svidcar_identity::tls::VerifiedPeer;
use svidcar_identity::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::Instrument;

pub use table::{DestinationTable, Target};

use crate::authz::{End, Ends};
use crate::conn::{Carrier, ConnRecord, Direction, DstAddr, NoTlsReason, TlsStatus};
use crate::context::{Conn, ProxyContext};
use crate::forward::{connect, finish, mesh_config, mesh_handshake};
use crate::http;
use crate::orig_dst::orig_dst_addr;
use crate::prefixed::Prefixed;
use crate::refusal::Refusal;
use crate::tunnel::{Pool, TunnelError};

/// How an outbound listener finds the destination.
#[derive(Debug, Clone)]
pub(crate) enum Routing {
    /// A static route.
    Explicit {
        /// Peer inbound address.
        upstream: SocketAddr,
        /// Identity it must present.
        server_id: SpiffeId,
        /// The peer's tunnel listener, if the route names one.
        tunnel: Option<SocketAddr>,
    },
    /// iptables redirect plus the destination table.
    Transparent {
        /// The table.
        table: Arc<DestinationTable>,
        /// Our own listener address (a connection whose original destination is this would
        /// loop).
        listen: SocketAddr,
    },
}

/// Handles one accepted outbound connection to completion.
pub(crate) async fn handle(
    ctx: Arc<ProxyContext>,
    app: TcpStream,
    client: SocketAddr,
    routing: Routing,
) {
    let span = tracing::info_span!("outbound", client.addr = %client, dst.addr = tracing::field::Empty, server.id = tracing::field::Empty);
    let start = Instant::now();
    let mut conn = Conn::new(ConnRecord::new(Direction::Outbound, client));
    // Boxed: the connection's task, spawned per connection, stays a few words to move.
    Box::pin(proxy(&ctx, app, &routing, &mut conn))
        .instrument(span)
        .await;
    ctx.report(conn, start.elapsed());
}

async fn proxy(ctx: &Arc<ProxyContext>, app: TcpStream, routing: &Routing, conn: &mut Conn) {
    let _ = app.set_nodelay(true);
    let (dst, target) = match routing {
        Routing::Explicit {
            upstream,
            server_id,
            ..
        } => (DstAddr::Route(*upstream), Target::Mesh(server_id.clone())),
        Routing::Transparent { table, listen } => {
            let dst = match orig_dst_addr(&app) {
                Ok(d) => d,
                Err(e) => return conn.refuse(Refusal::NoOriginalDst(e.to_string())),
            };
            let local = app.local_addr().ok();
            if Some(dst.0) == local || dst.0 == *listen {
                return conn.refuse(Refusal::Loop(Direction::Outbound));
            }
            (DstAddr::Original(dst), table.lookup(dst.0))
        }
    };
    conn.rec.dst_addr = Some(dst);
    let dst = dst.addr();
    let tunnel = tunnel_for(ctx, routing, dst);
    tracing::Span::current().record("dst.addr", tracing::field::display(dst));
    let refused = match target {
        Target::Deny => {
            conn.refuse(Refusal::DestinationDenied);
            app
        }
        Target::Passthrough => {
            conn.rec.tls = TlsStatus::None(NoTlsReason::PassthroughDestination);
            let Some(upstream) = connect(dst, ctx, conn).await else {
                return answer(ctx, app, conn).await;
            };
            let mut app = app;
            finish(ctx, &mut app, upstream, conn, &ctx.force_close, 0).await;
            return crate::forward::reset_if_broken(&app, conn);
        }
        Target::Mesh(expected) => {
            let port = match conn.rec.dst_addr {
                Some(DstAddr::Original(o)) => o.0.port(),
                // Explicit routes: by the route's own (listen) port.
                _ => app.local_addr().map_or(0, |a| a.port()),
            };
            if ctx.config.http.inspects(port) {
                let deadline = Instant::now() + ctx.config.inbound.detect_timeout.0;
                if let Some(version) = http::peek(&app, deadline).await {
                    return mesh_http(ctx, app, dst, expected, tunnel, version, conn).await;
                }
            }
            match mesh(ctx, app, dst, expected, tunnel, conn).await {
                Some(app) => app,
                None => return,
            }
        }
    };
    answer(ctx, refused, conn).await
}

/// A connection refused before it reached its destination: if the app sent an HTTP request,
/// answer it with a response that says why (status, `svidcar-proxy-error`, one-line body)
/// instead of closing silently. Only failures wait for the app's first bytes.
async fn answer(ctx: &ProxyContext, mut app: TcpStream, conn: &Conn) {
    let Some(why) = &conn.rec.refusal else {
        return;
    };
    let deadline = Instant::now() + ctx.config.inbound.detect_timeout.0;
    let mut first = Vec::new();
    if let Ok(Some(version)) = http::sniff(&mut app, &mut first, deadline).await {
        http::answer(Prefixed::new(first, app), version, why).await;
    }
}

/// The tunnel to carry a mesh connection to `dst` in, if any: the route's, or in transparent
/// mode the destination's own tunnel port unless `tunnel.direct` lists it.
fn tunnel_for(ctx: &ProxyContext, routing: &Routing, dst: SocketAddr) -> Option<Tunnel> {
    let pool = ctx.tunnels.clone()?;
    let addr = match routing {
        Routing::Explicit { tunnel, .. } => (*tunnel)?,
        Routing::Transparent { .. } if ctx.config.tunnel.is_direct(dst) => return None,
        Routing::Transparent { .. } => SocketAddr::new(dst.ip(), ctx.config.tunnel.port),
    };
    Some(Tunnel { pool, addr })
}

/// Originates mTLS to `dst`, requiring the server to be `expected`: a stream of a pooled
/// tunnel when the peer has one, else a connection of its own. A connection refused before
/// bytes could flow is handed back.
async fn mesh(
    ctx: &ProxyContext,
    app: TcpStream,
    dst: SocketAddr,
    expected: SpiffeId,
    tunnel: Option<Tunnel>,
    conn: &mut Conn,
) -> Option<TcpStream> {
    tracing::Span::current().record("server.id", tracing::field::display(&expected));
    let (config, ours) = match mesh_config(&ctx.tls, &expected) {
        Ok(x) => x,
        Err(why) => return refused(conn, app, why),
    };
    conn.rec.local_id = Some(ours);
    // Neither we nor the server we must reach may be revoked: refused before dialing.
    // Checked by reference; the ends are built only for a refusal's decision event.
    let revocable = [
        End {
            id: Some(&expected),
            serial: None,
        },
        End {
            id: conn.rec.local_id.as_ref(),
            serial: None,
        },
    ];
    let revoked = ctx.authz.refuse_revoked_lazy(&revocable, || {
        let mut ends = Ends::of(&conn.rec, dst);
        ends.peer = Some(expected.clone());
        ends
    });
    if let Some(why) = revoked {
        return refused(conn, app, why);
    }
    if let Some(t) = tunnel {
        match t.pool.open(t.addr, &expected, dst).await {
            Ok(stream) => {
                let peer = stream.peer.clone();
                conn.rec.carrier = Carrier::Tunnel;
                return carry(ctx, app, stream, peer, dst, conn).await;
            }
            Err(TunnelError::Refused(why)) => return refused(conn, app, why),
            Err(TunnelError::Unavailable) => {}
        }
    }
    let Some(tcp) = connect(dst, ctx, conn).await else {
        return Some(app);
    };
    let limit = ctx.config.limits.handshake_timeout.0;
    let (tls, peer) = match mesh_handshake(config, tcp, dst, limit, &ctx.metrics).await {
        Ok(x) => x,
        Err(why) => return refused(conn, app, why),
    };
    carry(ctx, app, tls, peer, dst, conn).await
}

/// Copies between the app and a verified upstream (its own mTLS connection or a tunnel
/// stream) while the connection stays allowed.
async fn carry<S>(
    ctx: &ProxyContext,
    app: TcpStream,
    upstream: S,
    peer: VerifiedPeer,
    dst: SocketAddr,
    conn: &mut Conn,
) -> Option<TcpStream>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    conn.rec.tls = TlsStatus::MutualTls {
        peer: peer.id,
        serial: peer.serial,
    };
    // The certificate it presented may be one revoked by serial.
    let ends = Ends::of(&conn.rec, dst);
    if let Some(why) = ctx.authz.refuse_revoked(&ends) {
        return refused(conn, app, why);
    }
    let guard = ctx.authz.register(ends, false, &ctx.force_close);
    let mut app = app;
    finish(ctx, &mut app, upstream, conn, &guard.cancel, 0).await;
    crate::forward::reset_if_broken(&app, conn);
    if let Some(why) = guard.closed_by() {
        conn.rec.refusal = Some(why);
    }
    None
}

/// A peer's tunnel listener and the pool that reaches it.
#[derive(Debug, Clone)]
pub(crate) struct Tunnel {
    pub(crate) pool: Arc<Pool>,
    pub(crate) addr: SocketAddr,
}

/// The app speaks HTTP to a mesh destination: its requests ride mTLS to the peer one by one,
/// each failure answered with its reason, each request counted (direction `outbound`).
async fn mesh_http(
    ctx: &Arc<ProxyContext>,
    app: TcpStream,
    dst: SocketAddr,
    expected: SpiffeId,
    tunnel: Option<Tunnel>,
    version: http::Version,
    conn: &mut Conn,
) {
    tracing::Span::current().record("server.id", tracing::field::display(&expected));
    conn.rec.local_id = ctx.tls.store().latest().map(|c| c.id().clone());
    let dial = http::Dial::Mesh {
        tls: ctx.tls.clone(),
        authz: ctx.authz.clone(),
        client: conn.rec.client_addr.0,
        expected,
        handshake_timeout: ctx.config.limits.handshake_timeout.0,
        metrics: ctx.metrics.clone(),
        tunnel,
    };
    http::serve(ctx, app, version, dst, dial, conn).await;
}

/// Records the refusal and hands the app's connection back, to be answered.
fn refused(conn: &mut Conn, app: TcpStream, why: Refusal) -> Option<TcpStream> {
    conn.refuse(why);
    Some(app)
}
