//! Forwarding shared by both directions: connecting to the upstream within the connect timeout,
//! and copying both ways while filling the connection's record.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::conn::Outcome;
use crate::context::{Conn, ProxyContext};
use crate::copy::{copy_bidirectional, ByteObserver, CopyOutcome};
use crate::refusal::Refusal;

/// Connects to `dst` within the connect timeout, recording a refusal on failure.
pub(crate) async fn connect(
    dst: SocketAddr,
    ctx: &ProxyContext,
    conn: &mut Conn,
) -> Option<TcpStream> {
    match timeout(ctx.config.limits.connect_timeout.0, TcpStream::connect(dst)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Some(s)
        }
        Ok(Err(e)) => {
            conn.refuse(Refusal::ConnectFailed(format!("{dst}: {e}")));
            None
        }
        Err(_) => {
            conn.refuse(Refusal::ConnectTimeout(format!("{dst}: timed out")));
            None
        }
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
