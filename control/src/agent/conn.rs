//! One Workload API connection as the gRPC server sees it: the Unix stream with the client's
//! bytes mended and the server's resets reported (see [`super::frames`]). The caller's
//! credentials are the socket's, unchanged: attestation reads them through [`Connected`].

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::time::Instant;
use tonic::transport::server::{Connected, UdsConnectInfo};

use super::frames::{Inbound, Outbound, Reset};
use super::metrics::AgentMetrics;

/// At most one warning per this interval; the others are counted in the next one.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Allows one event per interval and counts those held back.
#[derive(Debug, Default)]
struct RateLimit {
    last: Option<Instant>,
    held_back: u64,
}

impl RateLimit {
    /// Whether to report an event at `now`; if so, how many were held back since the last one.
    fn allow(&mut self, now: Instant, every: Duration) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < every => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

/// Where connections report what they mended and what the server reset: metrics always, the
/// log at most once per [`WARN_EVERY`].
#[derive(Debug)]
pub(super) struct Reports {
    metrics: Arc<AgentMetrics>,
    warn: Mutex<RateLimit>,
    rewrite_note: Mutex<RateLimit>,
}

impl Reports {
    pub(super) fn new(metrics: Arc<AgentMetrics>) -> Arc<Self> {
        Arc::new(Self {
            metrics,
            warn: Mutex::default(),
            rewrite_note: Mutex::default(),
        })
    }

    fn allow(limit: &Mutex<RateLimit>) -> Option<u64> {
        let mut l = match limit.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        l.allow(Instant::now(), WARN_EVERY)
    }

    fn reset(&self, r: Reset, peer: &Peer) {
        self.metrics.reset(r.kind(), r.code_name());
        if let Some(held_back) = Self::allow(&self.warn) {
            tracing::warn!(
                what = r.kind(),
                code = r.code_name(),
                stream = r.stream,
                uid = peer.uid,
                pid = peer.pid,
                not_logged_before = held_back,
                "the Workload API server reset a {} of a caller (svidcar_agent_workload_api_resets_total counts them all; --log debug shows h2's reason)",
                r.kind()
            );
        }
    }

    fn rewrote(&self, n: u32, peer: &Peer) {
        self.metrics.authority_rewrites.inc_by(u64::from(n));
        if Self::allow(&self.rewrite_note).is_some() {
            tracing::debug!(
                uid = peer.uid,
                pid = peer.pid,
                "a caller sent an :authority that is not a URI authority (a socket path); served as localhost"
            );
        }
    }

    fn gave_up(&self, why: &str, peer: &Peer) {
        tracing::debug!(
            uid = peer.uid,
            pid = peer.pid,
            why,
            "passing a caller's HTTP/2 bytes on unchanged"
        );
    }
}

/// Who is at the other end, for the log.
#[derive(Debug, Clone, Copy)]
struct Peer {
    uid: Option<u32>,
    pid: Option<i32>,
}

/// A Workload API connection: the client's header blocks re-encoded, the server's resets
/// reported.
pub(super) struct Conn {
    io: UnixStream,
    peer: Peer,
    inbound: Inbound,
    outbound: Outbound,
    /// Mended bytes not yet read by the server, from `ready_at`.
    ready: Vec<u8>,
    ready_at: usize,
    reports: Arc<Reports>,
}

impl Conn {
    pub(super) fn new(io: UnixStream, reports: Arc<Reports>) -> Self {
        let cred = io.peer_cred().ok();
        Self {
            peer: Peer {
                uid: cred.map(|c| c.uid()),
                pid: cred.and_then(|c| c.pid()),
            },
            io,
            inbound: Inbound::default(),
            outbound: Outbound::default(),
            ready: Vec::new(),
            ready_at: 0,
            reports,
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> UdsConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready_at < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.ready_at);
                buf.put_slice(&this.ready[this.ready_at..this.ready_at + n]);
                this.ready_at += n;
                return Poll::Ready(Ok(()));
            }
            let mut raw = [0u8; 8192];
            let mut raw_buf = ReadBuf::new(&mut raw);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut raw_buf))?;
            if raw_buf.filled().is_empty() {
                return Poll::Ready(Ok(())); // end of stream
            }
            this.ready.clear();
            this.ready_at = 0;
            let events = this.inbound.feed(raw_buf.filled(), &mut this.ready);
            if events.rewritten > 0 {
                this.reports.rewrote(events.rewritten, &this.peer);
            }
            if let Some(why) = events.gave_up {
                this.reports.gave_up(why, &this.peer);
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        for reset in this.outbound.observe(&buf[..n]) {
            this.reports.reset(reset, &this.peer);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_interval_and_the_rest_counted() {
        let start = Instant::now();
        let every = Duration::from_secs(10);
        let mut l = RateLimit::default();
        assert_eq!(l.allow(start, every), Some(0));
        assert_eq!(l.allow(start + Duration::from_secs(1), every), None);
        assert_eq!(l.allow(start + Duration::from_secs(9), every), None);
        assert_eq!(l.allow(start + Duration::from_secs(10), every), Some(2));
        assert_eq!(l.allow(start + Duration::from_secs(11), every), None);
        assert_eq!(l.allow(start + Duration::from_secs(30), every), Some(1));
    }
}
