//! Forwarding shared by both directions: connecting to the upstream within the connect timeout,
//! and copying both ways while filling the connection's record.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use svidcar_identity::tls::{with_verified_peer, HandshakeError, TlsContext, VerifiedPeer};
use svidcar_identity::SpiffeId;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::conn::{Direction, Outcome};
use crate::context::{Conn, ProxyContext};
use crate::copy::{copy_bidirectional, ByteObserver, CopyOutcome};
use crate::metrics::Metrics;
use crate::refusal::Refusal;

/// Connects to `dst` within `limit`.
pub(crate) async fn dial(dst: SocketAddr, limit: Duration) -> Result<TcpStream, Refusal> {
    match timeout(limit, TcpStream::connect(dst)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(Refusal::ConnectFailed(format!("{dst}: {e}"))),
        Err(_) => Err(Refusal::ConnectTimeout(format!("{dst}: timed out"))),
    }
}

/// Connects to `dst` within the connect timeout, recording a refusal on failure.
pub(crate) async fn connect(
    dst: SocketAddr,
    ctx: &ProxyContext,
    conn: &mut Conn,
) -> Option<TcpStream> {
    match dial(dst, ctx.config.limits.connect_timeout.0).await {
        Ok(s) => Some(s),
        Err(why) => {
            conn.refuse(why);
            None
        }
    }
}

/// The mesh client configuration for a server that must be `expected`, and our own SPIFFE
/// ID; without a valid SVID of our own no mesh connection is made (fail closed, before
/// touching the network).
pub(crate) fn mesh_config(
    tls: &TlsContext,
    expected: &SpiffeId,
) -> Result<(Arc<ClientConfig>, SpiffeId), Refusal> {
    let ours = tls
        .store()
        .current()
        .ok_or(Refusal::NoLocalSvid)?
        .id()
        .clone();
    let config = tls
        .client_config(expected)
        .map_err(|e| Refusal::TlsConfig(e.to_string()))?;
    Ok((config, ours))
}

/// Originates mesh mTLS over `tcp` to `dst` within `limit`; returns the stream and the server
/// our verifier accepted (a handshake that finished without one fails closed).
/// Failed handshakes are counted.
pub(crate) async fn mesh_handshake(
    config: Arc<ClientConfig>,
    tcp: TcpStream,
    dst: SocketAddr,
    limit: Duration,
    metrics: &Metrics,
) -> Result<(TlsStream<TcpStream>, VerifiedPeer), Refusal> {
    let failed = |e: HandshakeError| {
        metrics
            .conn
            .on_handshake_failure(Direction::Outbound, e.label());
        Refusal::Handshake(e)
    };
    let name = ServerName::IpAddress(dst.ip().into());
    let handshake = timeout(limit, TlsConnector::from(config).connect(name, tcp));
    let (tls, verified) = with_verified_peer(handshake).await;
    let tls = match tls {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) if closed_by_peer(&e) => {
            let why = Refusal::PeerRefused(e.to_string());
            metrics
                .conn
                .on_handshake_failure(Direction::Outbound, why.label());
            return Err(why);
        }
        Ok(Err(e)) => return Err(failed(HandshakeError::classify(&e))),
        Err(_) => return Err(Refusal::HandshakeTimeout),
    };
    let peer = verified.ok_or_else(|| failed(HandshakeError::NoPeerCertificate))?;
    Ok((tls, peer))
}

/// Whether a failed client handshake ended because the server closed or reset the connection
/// without a word of TLS (no alert): how a server proxy at its `limits.max_connections` (or
/// one draining) refuses. Told apart from other I/O failures so the client can say so.
fn closed_by_peer(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    let tls = e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>());
    !tls && matches!(
        e.kind(),
        K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe
    )
}

/// After a copy that ended in an I/O error on the other side (a reset, or TLS ended without
/// `close_notify`), closes `app` with a reset rather than a FIN: the app must not take a
/// truncated stream for a complete one.
pub(crate) fn reset_if_broken(app: &TcpStream, conn: &Conn) {
    if conn.rec.outcome == Outcome::IoError {
        let _ = app.set_zero_linger();
    }
}

/// Copies both ways and fills the record; `already_up` bytes were sent upstream before.
pub(crate) async fn finish<A, B>(
    ctx: &ProxyContext,
    a: A,
    b: B,
    conn: &mut Conn,
    cancel: &CancellationToken,
    already_up: u64,
) where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    // Identity labels are computed once, here; byte counters move live, chunk by chunk.
    let labels = ctx.metrics.conn.labels(&conn.rec);
    let bytes = ctx.metrics.conn.on_open(&labels);
    conn.labels = Some(labels);
    bytes.a_to_b(already_up);
    let idle = ctx.config.limits.idle_timeout.0;
    let report = copy_bidirectional(a, b, idle, cancel, &bytes).await;
    let rec = &mut conn.rec;
    rec.bytes_up = already_up + report.a_to_b;
    rec.bytes_down = report.b_to_a;
    rec.outcome = match report.outcome {
        CopyOutcome::Complete => Outcome::Complete,
        CopyOutcome::IdleTimeout => Outcome::IdleTimeout,
        CopyOutcome::Cancelled => Outcome::Cancelled,
        CopyOutcome::Error => Outcome::IoError,
    };
    if let Some(e) = report.error {
        rec.refusal = Some(Refusal::Io(e));
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Error, ErrorKind};

    use super::*;

    #[test]
    fn a_silent_close_is_told_from_tls_failures() {
        for kind in [
            ErrorKind::UnexpectedEof,
            ErrorKind::ConnectionReset,
            ErrorKind::ConnectionAborted,
            ErrorKind::BrokenPipe,
        ] {
            assert!(
                closed_by_peer(&Error::new(kind, "tls handshake eof")),
                "{kind:?}"
            );
        }
        assert!(!closed_by_peer(&Error::new(ErrorKind::TimedOut, "slow")));
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure);
        assert!(!closed_by_peer(&Error::new(ErrorKind::InvalidData, alert)));
        let tls_eof = rustls::Error::General("eof".into());
        assert!(!closed_by_peer(&Error::new(
            ErrorKind::UnexpectedEof,
            tls_eof
        )));
    }
}
