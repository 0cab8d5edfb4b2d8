//! One app connection carried over a tunnel: the upgraded `CONNECT` stream, the server the
//! pooled connection verified, and a guard that tells the pool when the stream ends.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use svidcar_identity::tls::VerifiedPeer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

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
pub(crate) struct StreamGuard {
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

/// Longest a dropped stream whose write side we ended waits for the peer's end of stream.
const LINGER: Duration = Duration::from_secs(5);

/// Most bytes read and discarded while waiting for it.
const LINGER_BYTES: usize = 1 << 20;

/// A tunnel stream's bytes, closed gracefully: dropped after we ended our side (`END_STREAM`)
/// but before the peer ended its own, it keeps reading in the background until the peer's end
/// of stream (bounded in time and bytes), so the stream closes cleanly instead of being reset
/// (a reset per short-lived stream makes the peer's frames still in flight protocol errors,
/// which HTTP/2 counts against the connection). Dropped with our side still open — an abort,
/// a cancellation — it is reset at once.
#[derive(Debug)]
pub(crate) struct Graceful {
    io: Option<TokioIo<Upgraded>>,
    read_eof: bool,
    write_closed: bool,
}

impl Graceful {
    pub(crate) fn new(io: Upgraded) -> Self {
        Self {
            io: Some(TokioIo::new(io)),
            read_eof: false,
            write_closed: false,
        }
    }

    fn io(&mut self) -> io::Result<Pin<&mut TokioIo<Upgraded>>> {
        self.io
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl Drop for Graceful {
    fn drop(&mut self) {
        let Some(mut io) = self.io.take() else {
            return;
        };
        if !self.write_closed || self.read_eof {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let drain = async {
                let mut buf = vec![0u8; 16 * 1024];
                let mut seen = 0;
                while seen < LINGER_BYTES {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen += n,
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER, drain).await;
        });
    }
}

impl AsyncRead for Graceful {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let asked = buf.remaining() > 0;
        let r = self.io()?.poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && asked && buf.filled().len() == before {
            self.read_eof = true;
        }
        r
    }
}

impl AsyncWrite for Graceful {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.io()?.poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io()?.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = self.io()?.poll_shutdown(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            self.write_closed = true;
        }
        r
    }
}

/// An app connection's bytes over a tunnel stream. Shutting down the write side ends the
/// stream in that direction only (`END_STREAM`): TCP half-close, carried.
#[derive(Debug)]
pub(crate) struct TunnelStream {
    io: Graceful,
    /// The server our verifier accepted when the pooled connection was made.
    pub(crate) peer: VerifiedPeer,
    _guard: StreamGuard,
}

impl TunnelStream {
    pub(super) fn new(io: Upgraded, peer: VerifiedPeer, guard: StreamGuard) -> Self {
        Self {
            io: Graceful::new(io),
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
