//! The inbound side: reads the first bytes, terminates mesh mTLS (verifying the client's SVID)
//! and forwards plaintext to the app over loopback; per port, STRICT refuses anything else and
//! PERMISSIVE passes plaintext and the app's own TLS through untouched.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::config::{Mode, MtlsMode};
use crate::conn::{ConnRecord, Direction, NoTlsReason, TlsStatus};
use crate::detect::{detect, Detection, MAX_PEEK};
use crate::orig_dst::orig_dst_addr;
use crate::outbound::{connect, finish};
use crate::prefixed::Prefixed;
use crate::runtime::Shared;
use svidcar_identity::check_leaf;
use svidcar_identity::tls::{handshake_failure, MESH_ALPN};
use svidcar_policy::Request;

/// Handles one accepted inbound connection to completion.
pub(crate) async fn handle(shared: Arc<Shared>, peer: TcpStream, client: SocketAddr) {
    let span = tracing::info_span!("inbound", client.addr = %client, dst.addr = tracing::field::Empty, client.id = tracing::field::Empty);
    let start = Instant::now();
    let mut rec = ConnRecord::new(Direction::Inbound, client);
    proxy(&shared, peer, &mut rec).instrument(span).await;
    shared.report(rec, start.elapsed());
}

/// Reads until the first bytes can be classified, the buffer is full, the peer stops sending
/// (EOF) or the deadline passes.
async fn sniff(stream: &mut TcpStream, deadline: Instant) -> std::io::Result<(Vec<u8>, Detection)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let d = detect(&buf);
        if d != Detection::NeedMore || buf.len() >= MAX_PEEK {
            return Ok((buf, d));
        }
        match timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Err(_) => return Ok((buf, d)),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e),
        }
    }
}

enum Plan {
    Terminate { mesh_alpn: bool },
    PassThrough(NoTlsReason),
    Refuse(&'static str, &'static str),
}

fn plan(mode: MtlsMode, first: &[u8], detection: &Detection) -> Plan {
    let mesh_alpn = detection.offers(MESH_ALPN);
    match (mode, detection) {
        (_, Detection::Tls { .. }) if mesh_alpn => Plan::Terminate { mesh_alpn },
        (MtlsMode::Strict, Detection::Tls { .. }) => Plan::Terminate { mesh_alpn },
        (MtlsMode::Permissive, Detection::Tls { .. }) => {
            Plan::PassThrough(NoTlsReason::PermissiveOtherTls)
        }
        (MtlsMode::Strict, _) if first.is_empty() => Plan::Refuse(
            "no_client_hello",
            "no TLS ClientHello before the detect timeout",
        ),
        (MtlsMode::Strict, _) => Plan::Refuse("plaintext_refused", "port is STRICT: mTLS required"),
        (MtlsMode::Permissive, _) if first.is_empty() => {
            Plan::PassThrough(NoTlsReason::ServerFirst)
        }
        (MtlsMode::Permissive, _) => Plan::PassThrough(NoTlsReason::PermissivePlaintext),
    }
}

async fn proxy(shared: &Shared, mut peer: TcpStream, rec: &mut ConnRecord) {
    let _ = peer.set_nodelay(true);
    let cfg = &shared.config.inbound;
    let app = match cfg.mode {
        Mode::Explicit => match cfg.app {
            Some(a) => a,
            None => return rec.refuse("config", "explicit inbound without app address"),
        },
        Mode::Transparent => match orig_dst_addr(&peer) {
            // Not redirected (someone dialled the inbound port itself): forwarding would loop.
            Ok(d) if peer.local_addr().is_ok_and(|l| l.port() == d.0.port()) => {
                return rec.refuse("loop", "connection addressed to the inbound port itself");
            }
            Ok(d) => SocketAddr::new(cfg.app_host, d.0.port()),
            Err(e) => return rec.refuse("no_original_dst", format!("SO_ORIGINAL_DST: {e}")),
        },
    };
    rec.dst_addr = Some(app);
    tracing::Span::current().record("dst.addr", tracing::field::display(app));
    if let Some(c) = shared.tls.store().latest() {
        rec.server_id = Some(c.id().clone());
    }
    // Policy (PeerAuthentication) overrides the configured per-port mode.
    let mode = shared
        .authz
        .mtls_for(rec.server_id.as_ref(), app.port())
        .unwrap_or_else(|| cfg.mtls_for(app.port()));
    let deadline = Instant::now() + cfg.detect_timeout.0;
    let (first, detection) = match sniff(&mut peer, deadline).await {
        Ok(x) => x,
        Err(e) => return rec.refuse("io_error", e.to_string()),
    };
    match plan(mode, &first, &detection) {
        Plan::Refuse(reason, detail) => rec.refuse(reason, detail),
        Plan::PassThrough(why) => {
            rec.tls = TlsStatus::None(why);
            forward(shared, peer, &first, app, rec).await;
        }
        Plan::Terminate { mesh_alpn } => {
            let acceptor = TlsAcceptor::from(shared.tls.server_config(mesh_alpn));
            let hs_deadline = Instant::now() + shared.config.limits.handshake_timeout.0;
            let tls =
                match timeout_at(hs_deadline, acceptor.accept(Prefixed::new(first, peer))).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        let (reason, detail) = handshake_failure(&e);
                        tracing::debug!(reason, %detail, "client refused");
                        shared.metrics.on_handshake_failure("inbound", reason);
                        return rec.refuse(reason, detail);
                    }
                    Err(_) => return rec.refuse("handshake_timeout", "TLS handshake timed out"),
                };
            let id = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|leaf| check_leaf(leaf).ok())
                .map(|l| l.id);
            if let Some(id) = &id {
                tracing::Span::current().record("client.id", tracing::field::display(id));
            }
            rec.client_id = id;
            rec.tls = TlsStatus::MutualTls;
            forward(shared, tls, &[], app, rec).await;
        }
    }
}

/// Authorizes the connection, then connects to the app, replays `first` and copies both ways
/// while the connection stays allowed.
async fn forward<S>(shared: &Shared, client: S, first: &[u8], app: SocketAddr, rec: &mut ConnRecord)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let workload = rec.server_id.clone();
    let source = rec.client_id.clone();
    let req = Request {
        source_id: source.as_ref(),
        source_ip: rec.client_addr.ip(),
        port: app.port(),
        method: None,
        path: None,
    };
    let decision = shared.authz.decide(workload.as_ref(), &req);
    shared
        .authz
        .record(workload.as_ref(), rec.client_addr, app, &req, &decision);
    let (true, Some(workload)) = (decision.allowed, workload) else {
        return rec.refuse("policy_denied", decision.reason);
    };
    let guard = shared.authz.register(&workload, &req, &shared.force_close);
    let Some(mut upstream) = connect(app, shared, rec).await else {
        return;
    };
    if let Err(e) = upstream.write_all(first).await {
        return rec.refuse("io_error", e.to_string());
    }
    finish(
        shared,
        client,
        upstream,
        rec,
        &guard.cancel,
        first.len() as u64,
    )
    .await;
    if guard.revoked() {
        rec.reason = "policy_revoked";
        rec.detail = "a new policy no longer allows this connection".into();
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
            Plan::Refuse("plaintext_refused", _)
        ));
        assert!(matches!(
            plan(m, b"", &Detection::NeedMore),
            Plan::Refuse("no_client_hello", _)
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
