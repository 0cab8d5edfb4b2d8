//! One app connection carried over a tunnel: the upgraded `CONNECT` stream, the server the
//! pooled connection verified, and a guard that tells the pool when the stream ends.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use svidcar_identity::tls::VerifiedPeer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Counts the open streams of one pooled connection and when it was last used.
#[derive(Debug, Default)]
pub(super) struct Usage {
    /// Streams open now.
    pub(super) streams: AtomicUsize,
    /// Milliseconds since the pool's epoch when the last stream ended.
    pub(super) idle_since_ms: AtomicU64,
}

/// Holds one stream's place in [`Usage`] until dropped.
#[derive(Debug)]
pub(super) struct StreamGuard {
    usage: Arc<Usage>,
    now_ms: fn() -> u64,
}

impl StreamGuard {
    pub(super) fn new(usage: Arc<Usage>, now_ms: fn() -> u64) -> Self {
        usage.streams.fetch_add(1, Ordering::AcqRel);
        Self { usage, now_ms }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.usage
            .idle_since_ms
            .store((self.now_ms)(), Ordering::Relaxed);
        self.usage.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An app connection's bytes over a tunnel stream. Shutting down the write side ends the
/// stream in that direction only (`END_STREAM`): TCP half-close, carried.
#[derive(Debug)]
pub(crate) struct TunnelStream {
    io: TokioIo<Upgraded>,
    /// The server our verifier accepted when the pooled connection was made.
    pub(crate) peer: VerifiedPeer,
    _guard: StreamGuard,
}

impl TunnelStream {
    pub(super) fn new(io: Upgraded, peer: VerifiedPeer, guard: StreamGuard) -> Self {
        Self {
            io: TokioIo::new(io),
            peer,
            _guard: guard,
        }
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
