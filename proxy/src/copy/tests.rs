use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

/// Observes nothing.
#[derive(Debug)]
struct NoObserver;

impl ByteObserver for NoObserver {
    fn a_to_b(&self, _: u64) {}
    fn b_to_a(&self, _: u64) {}
}

/// Copies `a` ⇄ `b` on a task of its own, observing nothing, never cancelled.
fn spawn_copy<A, B>(a: A, b: B, idle: Duration) -> tokio::task::JoinHandle<CopyReport>
where
    A: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        copy_bidirectional(a, b, idle, &CancellationToken::new(), &NoObserver).await
    })
}

/// Sums what it is told, each way.
#[derive(Debug, Default)]
struct Totals(AtomicU64, AtomicU64);

impl ByteObserver for Totals {
    fn a_to_b(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    fn b_to_a(&self, n: u64) {
        self.1.fetch_add(n, Ordering::Relaxed);
    }
}

#[tokio::test]
async fn half_close_keeps_the_other_direction_open() {
    let (mut client, proxy_a) = duplex(1024);
    let (proxy_b, mut server) = duplex(1024);
    let task = spawn_copy(proxy_a, proxy_b, Duration::from_secs(60));
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

#[tokio::test(start_paused = true)]
async fn bytes_either_way_keep_a_connection_open() {
    let (mut client, proxy_a) = duplex(64);
    let (proxy_b, mut server) = duplex(64);
    let t0 = Instant::now();
    let copy = spawn_copy(proxy_a, proxy_b, Duration::from_secs(30));
    // A byte every 20 s, alternating directions, for 100 s.
    for i in 0..5 {
        tokio::time::sleep(Duration::from_secs(20)).await;
        let mut byte = [0u8; 1];
        if i % 2 == 0 {
            client.write_all(b"x").await.unwrap();
            server.read_exact(&mut byte).await.unwrap();
        } else {
            server.write_all(b"y").await.unwrap();
            client.read_exact(&mut byte).await.unwrap();
        }
    }
    let report = copy.await.unwrap();
    assert_eq!(report.outcome, CopyOutcome::IdleTimeout);
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(130) && waited < Duration::from_secs(131),
        "{waited:?}"
    );
    assert_eq!((report.a_to_b, report.b_to_a), (3, 2));
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

/// A writer that holds what it is given until flushed, as a TLS stream may.
struct HoldsUntilFlushed {
    inner: DuplexStream,
    held: Vec<u8>,
}

impl AsyncRead for HoldsUntilFlushed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for HoldsUntilFlushed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.held.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let this = &mut *self;
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &this.held))?;
            this.held.drain(..n);
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn a_buffering_writer_is_flushed_once_there_is_nothing_more_to_read() {
    let (mut client, proxy_a) = duplex(1024);
    let (proxy_b, server) = duplex(1024);
    let mut server = server;
    let proxy_b = HoldsUntilFlushed {
        inner: proxy_b,
        held: Vec::new(),
    };
    let task = spawn_copy(proxy_a, proxy_b, Duration::from_secs(60));
    // The client keeps its side open: only a flush can deliver these bytes.
    client.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), server.read_exact(&mut got))
        .await
        .expect("the held bytes were flushed")
        .unwrap();
    assert_eq!(&got, b"ping");
    drop((client, server));
    task.await.unwrap();
}

/// Bytes of a deterministic pseudo-random stream.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes `data` in chunks of varying size, then half-closes.
async fn send(mut w: impl AsyncWrite + Unpin, data: Arc<Vec<u8>>) {
    let mut at = 0;
    let mut step = 1;
    while at < data.len() {
        let end = (at + step).min(data.len());
        w.write_all(&data[at..end]).await.unwrap();
        at = end;
        step = step * 7 % 100_003 + 1;
    }
    w.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_directions_at_once_are_byte_exact_and_observed() {
    const LEN: usize = 3 * 1024 * 1024 + 17;
    let (client, proxy_a) = duplex(7 * 1024);
    let (proxy_b, server) = duplex(5 * 1024);
    let cancel = CancellationToken::new();
    let totals = Arc::new(Totals::default());
    let observer = totals.clone();
    let copy = tokio::spawn(async move {
        copy_bidirectional(
            proxy_a,
            proxy_b,
            Duration::from_secs(60),
            &cancel,
            &*observer,
        )
        .await
    });
    let up = Arc::new(pattern(1, LEN));
    let down = Arc::new(pattern(2, LEN / 3));
    let (mut cr, cw) = tokio::io::split(client);
    let (mut sr, sw) = tokio::io::split(server);
    let senders = tokio::spawn({
        let (up, down) = (up.clone(), down.clone());
        async move { tokio::join!(send(cw, up), send(sw, down)) }
    });
    let (mut at_server, mut at_client) = (Vec::new(), Vec::new());
    let (r1, r2) = tokio::join!(
        sr.read_to_end(&mut at_server),
        cr.read_to_end(&mut at_client)
    );
    r1.unwrap();
    r2.unwrap();
    senders.await.unwrap();
    assert!(at_server == *up, "client to server differs");
    assert!(at_client == *down, "server to client differs");
    let report = copy.await.unwrap();
    assert_eq!(report.outcome, CopyOutcome::Complete);
    assert_eq!(
        (report.a_to_b, report.b_to_a),
        (up.len() as u64, down.len() as u64)
    );
    assert_eq!(
        (
            totals.0.load(Ordering::Relaxed),
            totals.1.load(Ordering::Relaxed)
        ),
        (report.a_to_b, report.b_to_a)
    );
}

/// A stream whose reads fail.
struct Broken;

impl AsyncRead for Broken {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
    }
}

impl AsyncWrite for Broken {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn an_error_either_way_ends_both() {
    let (_client, proxy_a) = duplex(64);
    let cancel = CancellationToken::new();
    for (a_broken, report) in [
        (
            true,
            copy_bidirectional(
                Broken,
                proxy_a,
                Duration::from_secs(30),
                &cancel,
                &NoObserver,
            )
            .await,
        ),
        (false, {
            let (_client, proxy_a) = duplex(64);
            copy_bidirectional(
                proxy_a,
                Broken,
                Duration::from_secs(30),
                &cancel,
                &NoObserver,
            )
            .await
        }),
    ] {
        assert_eq!(report.outcome, CopyOutcome::Error, "a broken: {a_broken}");
        assert!(report.error.is_some_and(|e| e.contains("reset")));
    }
}

#[tokio::test]
async fn buffers_appear_with_the_first_bytes_and_grow_for_bulk() {
    let (mut src, mut reader) = duplex(256 * 1024);
    let (mut writer, mut dst) = duplex(256 * 1024);
    let mut pipe = Pipe::new();
    let poll = |pipe: &mut Pipe, r: &mut DuplexStream, w: &mut DuplexStream| {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        pipe.poll_copy(&mut cx, Pin::new(r), Pin::new(w), |_| {})
    };
    // Nothing sent: no buffer.
    assert!(poll(&mut pipe, &mut reader, &mut writer).is_pending());
    assert_eq!(pipe.buf.capacity(), 0);
    // A small request: the first buffer.
    src.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert!(poll(&mut pipe, &mut reader, &mut writer).is_pending());
    assert_eq!(pipe.buf.len(), FIRST_BUF);
    let mut got = vec![0u8; 18];
    dst.read_exact(&mut got).await.unwrap();
    assert_eq!(got, b"GET / HTTP/1.1\r\n\r\n");
    // Bulk that fills it: the largest buffer, bytes exact.
    let bulk = pattern(7, 200 * 1024);
    src.write_all(&bulk).await.unwrap();
    assert!(poll(&mut pipe, &mut reader, &mut writer).is_pending());
    assert_eq!(pipe.buf.len(), BUF);
    let mut got = vec![0u8; bulk.len()];
    dst.read_exact(&mut got).await.unwrap();
    assert!(got == bulk);
}
