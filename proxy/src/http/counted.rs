//! A stream that counts the bytes moving through it: live into the connection's byte metrics,
//! and in totals for the access log.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::copy::ByteObserver;
use crate::metrics::ConnBytes;

/// Bytes read from the client (up) and written to it (down).
#[derive(Debug, Default)]
pub(super) struct Totals {
    up: AtomicU64,
    down: AtomicU64,
}

impl Totals {
    /// `(up, down)`.
    pub(super) fn get(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        )
    }
}

/// The client side of an HTTP connection, counted.
#[derive(Debug)]
pub(super) struct Counted<S> {
    inner: S,
    bytes: ConnBytes,
    totals: Arc<Totals>,
}

impl<S> Counted<S> {
    pub(super) fn new(inner: S, bytes: ConnBytes) -> Self {
        Self {
            inner,
            bytes,
            totals: Arc::default(),
        }
    }

    pub(super) fn totals(&self) -> Arc<Totals> {
        self.totals.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.bytes.a_to_b(n);
            self.totals.up.fetch_add(n, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.bytes.b_to_a(*n as u64);
            self.totals.down.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
