//! Byte-exact bidirectional copy between two streams that honours TCP half-close: when one side
//! finishes sending, the other side's write half is shut down and the opposite direction keeps
//! flowing until it finishes too. Bounded by an idle timeout and a cancellation token.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const BUF: usize = 64 * 1024;

/// How a proxied connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CopyOutcome {
    /// Both directions reached end-of-stream.
    Complete,
    /// Nothing moved for longer than the idle timeout.
    IdleTimeout,
    /// Closed by us (drain grace period over, or policy).
    Cancelled,
    /// A read or write failed (reset by a peer, TLS error…).
    Error,
}

/// Result of [`copy_bidirectional`].
#[derive(Debug, Clone)]
pub(crate) struct CopyReport {
    /// Bytes read from `a` and written to `b`.
    pub a_to_b: u64,
    /// Bytes read from `b` and written to `a`.
    pub b_to_a: u64,
    /// How it ended.
    pub outcome: CopyOutcome,
    /// The first I/O error, if any.
    pub error: Option<String>,
}

/// Called with the size of every chunk moved, a→b and b→a (live byte metrics).
pub(crate) trait ByteObserver: Sync {
    /// `n` bytes moved from `a` to `b`.
    fn a_to_b(&self, n: u64);
    /// `n` bytes moved from `b` to `a`.
    fn b_to_a(&self, n: u64);
}

struct Progress<'a> {
    observe: &'a (dyn Fn(u64) + Sync),
    bytes: AtomicU64,
    start: Instant,
    /// Milliseconds since `start` of the last byte moved in either direction.
    last_ms: Arc<AtomicU64>,
}

async fn one_way<R, W>(mut r: R, mut w: W, p: &Progress<'_>) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            // Half-close: pass end-of-stream on, keep the other direction open.
            w.shutdown().await?;
            return Ok(());
        }
        w.write_all(&buf[..n]).await?;
        w.flush().await?;
        p.bytes.fetch_add(n as u64, Ordering::Relaxed);
        (p.observe)(n as u64);
        p.last_ms
            .store(p.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Copies `a` ⇄ `b` until both directions end, nothing moves for `idle`, or `cancel` fires.
pub(crate) async fn copy_bidirectional<A, B>(
    a: A,
    b: B,
    idle: Duration,
    cancel: &CancellationToken,
    observer: &dyn ByteObserver,
) -> CopyReport
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    let start = Instant::now();
    let last_ms = Arc::new(AtomicU64::new(0));
    let observe_up = |n| observer.a_to_b(n);
    let observe_down = |n| observer.b_to_a(n);
    let up = Progress {
        observe: &observe_up,
        bytes: AtomicU64::new(0),
        start,
        last_ms: last_ms.clone(),
    };
    let down = Progress {
        observe: &observe_down,
        bytes: AtomicU64::new(0),
        start,
        last_ms: last_ms.clone(),
    };
    // The first error in either direction ends both.
    let both = async { tokio::try_join!(one_way(ar, bw, &up), one_way(br, aw, &down)) };
    tokio::pin!(both);
    let watchdog = async {
        loop {
            let last = Duration::from_millis(last_ms.load(Ordering::Relaxed));
            let deadline = start + last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    let (outcome, error) = tokio::select! {
        r = &mut both => match r {
            Ok(_) => (CopyOutcome::Complete, None),
            Err(e) => (CopyOutcome::Error, Some(e.to_string())),
        },
        _ = watchdog => (CopyOutcome::IdleTimeout, None),
        _ = cancel.cancelled() => (CopyOutcome::Cancelled, None),
    };
    CopyReport {
        a_to_b: up.bytes.load(Ordering::Relaxed),
        b_to_a: down.bytes.load(Ordering::Relaxed),
        outcome,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Observes nothing.
    #[derive(Debug)]
    struct NoObserver;

    impl ByteObserver for NoObserver {
        fn a_to_b(&self, _: u64) {}
        fn b_to_a(&self, _: u64) {}
    }
    use tokio::io::duplex;

    #[tokio::test]
    async fn half_close_keeps_the_other_direction_open() {
        let (mut client, proxy_a) = duplex(1024);
        let (proxy_b, mut server) = duplex(1024);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(async move {
            copy_bidirectional(
                proxy_a,
                proxy_b,
                Duration::from_secs(60),
                &cancel,
                &NoObserver,
            )
            .await
        });
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
        server.write_all(b"late response").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"late response");
        let report = task.await.unwrap();
        assert_eq!((report.a_to_b, report.b_to_a), (7, 13));
        assert_eq!(report.outcome, CopyOutcome::Complete);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed() {
        let (_client, proxy_a) = duplex(64);
        let (proxy_b, _server) = duplex(64);
        let cancel = CancellationToken::new();
        let t0 = Instant::now();
        let report = copy_bidirectional(
            proxy_a,
            proxy_b,
            Duration::from_secs(30),
            &cancel,
            &NoObserver,
        )
        .await;
        assert_eq!(report.outcome, CopyOutcome::IdleTimeout);
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_secs(30) && waited < Duration::from_secs(31),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn cancellation_closes() {
        let (_client, proxy_a) = duplex(64);
        let (proxy_b, _server) = duplex(64);
        let cancel = CancellationToken::new();
        cancel.cancel();
        let report = copy_bidirectional(
            proxy_a,
            proxy_b,
            Duration::from_secs(30),
            &cancel,
            &NoObserver,
        )
        .await;
        assert_eq!(report.outcome, CopyOutcome::Cancelled);
    }
}
