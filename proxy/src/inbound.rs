//! The inbound side: reads the first bytes, terminates mesh mTLS (verifying the client's SVID)
//! and forwards plaintext to the app over loopback; per port, STRICT refuses anything else and
//! PERMISSIVE passes plaintext and the app's own TLS through untouched.

use std::net::SocketAddr;
use std::sync::Arc;

use svidcar_identity::tls::{with_verified_peer, HandshakeError, MESH_ALPN};
use svidcar_policy::Request;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::authz::Ends;
use crate::config::{Mode, MtlsMode};
use crate::conn::{ConnRecord, Direction, DstAddr, NoTlsReason, TlsStatus};
use crate::context::{Conn, ProxyContext};
use crate::detect::{detect, truncated_client_hello, Detection, MAX_PEEK};
use crate::forward::{connect, finish};
use crate::http;
use crate::orig_dst::orig_dst_addr;
use crate::prefixed::Prefixed;
use crate::refusal::Refusal;
use crate::sniff::read_until;

/// Handles one accepted inbound connection to completion.
pub(crate) async fn handle(ctx: Arc<ProxyContext>, peer: TcpStream, client: SocketAddr) {
    let span = tracing::info_span!("inbound", client.addr = %client, dst.addr = tracing::field::Empty, client.id = tracing::field::Empty);
    let start = Instant::now();
    let mut conn = Conn::new(ConnRecord::new(Direction::Inbound, client));
    // Boxed: the connection's task, spawned per connection, stays a few words to move.
    Box::pin(proxy(&ctx, peer, &mut conn))
        .instrument(span)
        .await;
    ctx.report(conn, start.elapsed());
}

/// Reads until the first bytes can be classified, the buffer is full, the peer stops sending
/// (EOF) or the deadline passes (then the detection is `NeedMore`).
async fn sniff(stream: &mut TcpStream, deadline: Instant) -> std::io::Result<(Vec<u8>, Detection)> {
    let mut buf = Vec::with_capacity(1024);
    let decided = |b: &[u8]| Some(detect(b)).filter(|d| *d != Detection::NeedMore);
    let d = read_until(stream, &mut buf, MAX_PEEK, deadline, decided).await?;
    Ok((buf, d.unwrap_or(Detection::NeedMore)))
}

enum Plan {
    Terminate { mesh_alpn: bool },
    PassThrough(NoTlsReason),
    Refuse(Refusal),
}

fn plan(mode: MtlsMode, first: &[u8], detection: &Detection) -> Plan {
    let mesh_alpn = detection.offers(MESH_ALPN);
    match (mode, detection) {
        (_, Detection::Tls { .. }) if mesh_alpn => Plan::Terminate { mesh_alpn },
        (MtlsMode::Strict, Detection::Tls { .. }) => Plan::Terminate { mesh_alpn },
        (MtlsMode::Permissive, Detection::Tls { .. }) => {
            Plan::PassThrough(NoTlsReason::PermissiveOtherTls)
        }
        (MtlsMode::Strict, _) if first.is_empty() => Plan::Refuse(Refusal::NoClientHello),
        (MtlsMode::Strict, _) if truncated_client_hello(first) => {
            Plan::Refuse(Refusal::TruncatedClientHello)
        }
        (MtlsMode::Strict, _) => Plan::Refuse(Refusal::PlaintextRefused),
        (MtlsMode::Permissive, _) if first.is_empty() => {
            Plan::PassThrough(NoTlsReason::ServerFirst)
        }
        (MtlsMode::Permissive, _) => Plan::PassThrough(NoTlsReason::PermissivePlaintext),
    }
}

async fn proxy(ctx: &Arc<ProxyContext>, mut peer: TcpStream, conn: &mut Conn) {
    let _ = peer.set_nodelay(true);
    let cfg = &ctx.config.inbound;
    let app = match cfg.mode {
        Mode::Explicit => match cfg.app {
            Some(a) => a,
            None => return conn.refuse(Refusal::NoAppAddress),
        },
        Mode::Transparent => match orig_dst_addr(&peer) {
            // Not redirected (someone dialled the inbound port itself): forwarding would loop.
            Ok(d) if peer.local_addr().is_ok_and(|l| l.port() == d.0.port()) => {
                return conn.refuse(Refusal::Loop(Direction::Inbound));
            }
            Ok(d) => SocketAddr::new(cfg.app_host, d.0.port()),
            Err(e) => return conn.refuse(Refusal::NoOriginalDst(e.to_string())),
        },
    };
    conn.rec.dst_addr = Some(DstAddr::App(app));
    tracing::Span::current().record("dst.addr", tracing::field::display(app));
    if let Some(c) = ctx.tls.store().latest() {
        conn.rec.local_id = Some(c.id().clone());
    }
    // Policy (PeerAuthentication) overrides the configured per-port mode.
    let mode = ctx
        .authz
        .mtls_for(conn.rec.local_id.as_ref(), app.port())
        .unwrap_or_else(|| cfg.mtls_for(app.port()));
    let deadline = Instant::now() + cfg.detect_timeout.0;
    let (first, detection) = match sniff(&mut peer, deadline).await {
        Ok(x) => x,
        Err(e) => return conn.refuse(Refusal::Io(e.to_string())),
    };
    match plan(mode, &first, &detection) {
        Plan::Refuse(why) => conn.refuse(why),
        Plan::PassThrough(why) => {
            conn.rec.tls = TlsStatus::None(why);
            match why {
                NoTlsReason::PermissivePlaintext => serve(ctx, peer, first, app, conn).await,
                _ => forward(ctx, peer, &first, app, conn).await,
            }
        }
        Plan::Terminate { mesh_alpn } => {
            let acceptor = TlsAcceptor::from(ctx.tls.server_config(mesh_alpn));
            let hs_deadline = Instant::now() + ctx.config.limits.handshake_timeout.0;
            let accept = acceptor.accept(Prefixed::new(first, peer));
            let (tls, verified) = with_verified_peer(timeout_at(hs_deadline, accept)).await;
            let failed = |e: HandshakeError| {
                ctx.metrics
                    .conn
                    .on_handshake_failure(Direction::Inbound, e.label());
                Refusal::Handshake(e)
            };
            let tls = match tls {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return conn.refuse(failed(HandshakeError::classify(&e))),
                Err(_) => return conn.refuse(Refusal::HandshakeTimeout),
            };
            // The client verifier requires a certificate on this config, so a finished
            // handshake always verified one; without it, fail closed.
            let Some(peer_id) = verified else {
                return conn.refuse(failed(HandshakeError::NoPeerCertificate));
            };
            tracing::Span::current().record("client.id", tracing::field::display(&peer_id.id));
            conn.rec.tls = TlsStatus::MutualTls {
                peer: peer_id.id,
                serial: peer_id.serial,
            };
            serve(ctx, tls, Vec::new(), app, conn).await;
        }
    }
}

/// Serves HTTP per request when the port is inspected and the client speaks HTTP; anything
/// else (and a client silent for the detect timeout) is forwarded as TCP. `first` holds bytes
/// already read.
pub(crate) async fn serve<S>(
    ctx: &Arc<ProxyContext>,
    mut client: S,
    mut first: Vec<u8>,
    app: SocketAddr,
    conn: &mut Conn,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if ctx.config.http.inspects(app.port()) {
        let deadline = Instant::now() + ctx.config.inbound.detect_timeout.0;
        match http::sniff(&mut client, &mut first, deadline).await {
            Ok(Some(version)) => {
                let client = Prefixed::new(first, client);
                let dial = http::Dial::App(ctx.app_pool.clone());
                return http::serve(ctx, client, version, app, dial, conn).await;
            }
            Ok(None) => {}
            Err(e) => return conn.refuse(Refusal::Io(e.to_string())),
        }
    }
    forward(ctx, client, &first, app, conn).await
}

/// Authorizes the connection, then connects to the app, replays `first` and copies both ways
/// while the connection stays allowed.
async fn forward<S>(ctx: &ProxyContext, client: S, first: &[u8], app: SocketAddr, conn: &mut Conn)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ends = Ends::of(&conn.rec, app);
    if let Some(why) = ctx.authz.refuse_revoked(&ends) {
        return conn.refuse(why);
    }
    let workload = conn.rec.local_id.clone();
    let source = conn.rec.tls.peer().cloned();
    let req = Request {
        source_id: source.as_ref(),
        source_ip: conn.rec.client_addr.0.ip(),
        port: app.port(),
        method: None,
        path: None,
        host: None,
        headers: None,
    };
    let decision = ctx.authz.decide(workload.as_ref(), &req);
    ctx.authz.record(
        workload.as_ref(),
        conn.rec.client_addr.0,
        app,
        &req,
        &decision,
    );
    if !(decision.allowed && workload.is_some()) {
        return conn.refuse(Refusal::PolicyDenied(decision.reason));
    }
    let guard = ctx.authz.register(ends, true, &ctx.force_close);
    let Some(mut upstream) = connect(app, ctx, conn).await else {
        return;
    };
    if let Err(e) = upstream.write_all(first).await {
        return conn.refuse(Refusal::Io(e.to_string()));
    }
    finish(
        ctx,
        client,
        &mut upstream,
        conn,
        &guard.cancel,
        first.len() as u64,
    )
    .await;
    crate::forward::reset_if_broken(&upstream, conn);
    if let Some(why) = guard.closed_by() {
        conn.rec.refusal = Some(why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(alpn: &[&[u8]]) -> Detection {
        Detection::Tls {
            alpn: alpn.iter().map(|a| a.to_vec()).collect(),
        }
    }

    #[test]
    fn strict_terminates_tls_and_refuses_the_rest() {
        let m = MtlsMode::Strict;
        assert!(matches!(
            plan(m, b"x", &tls(&[MESH_ALPN])),
            Plan::Terminate { mesh_alpn: true }
        ));
        assert!(matches!(
            plan(m, b"x", &tls(&[b"h2"])),
            Plan::Terminate { mesh_alpn: false }
        ));
        assert!(matches!(
            plan(m, b"GET", &Detection::NotTls),
            Plan::Refuse(Refusal::PlaintextRefused)
        ));
        assert!(matches!(
            plan(m, b"", &Detection::NeedMore),
            Plan::Refuse(Refusal::NoClientHello)
        ));
        // A TLS record header, then the client closed or went silent: not plaintext.
        assert!(matches!(
            plan(m, &[0x16, 3, 1, 2, 0, 1, 0], &Detection::NeedMore),
            Plan::Refuse(Refusal::TruncatedClientHello)
        ));
        assert!(matches!(
            plan(m, b"GE", &Detection::NeedMore),
            Plan::Refuse(Refusal::PlaintextRefused)
        ));
    }

    #[test]
    fn permissive_terminates_only_mesh() {
        let m = MtlsMode::Permissive;
        assert!(matches!(
            plan(m, b"x", &tls(&[MESH_ALPN])),
            Plan::Terminate { mesh_alpn: true }
        ));
        assert!(matches!(
            plan(m, b"x", &tls(&[b"h2"])),
            Plan::PassThrough(NoTlsReason::PermissiveOtherTls)
        ));
        assert!(matches!(
            plan(m, b"GET", &Detection::NotTls),
            Plan::PassThrough(NoTlsReason::PermissivePlaintext)
        ));
        assert!(matches!(
            plan(m, b"", &Detection::NeedMore),
            Plan::PassThrough(NoTlsReason::ServerFirst)
        ));
    }
}
