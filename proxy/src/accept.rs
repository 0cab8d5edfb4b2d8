//! Accept loops: admit connections under `limits.max_connections`, and at drain close the
//! listener without resetting a connection the kernel had already accepted for us.
//!
//! Closing a listening socket resets every connection still in its accept queue: a client whose
//! handshake had completed (its request may be on its way) sees a reset, not a refusal. So the
//! door closes in three steps: a socket filter drops new SYNs (those clients retry and then
//! meet the closed port: refused), the queue is emptied while handshakes under way complete,
//! and only then is the socket closed. What was taken is served like any other connection (a
//! drained HTTP/1 answer says `connection: close`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{SockFilter, SockRef};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn::{ConnRecord, Direction};
use crate::context::{Conn, ProxyContext};
use crate::refusal::Refusal;
use svidcar_identity::backoff::AcceptErrors;

/// How long a closing listener still takes connections whose handshake was under way when new
/// SYNs began to be dropped (one round trip; generous for a loaded node).
const LATE_HANDSHAKES: Duration = Duration::from_millis(50);

// Classic BPF opcodes (linux/bpf_common.h; BPF_LD and BPF_K are 0).
const BPF_LD_B_ABS: u16 = 0x10 | 0x20;
const BPF_ALU_AND_K: u16 = 0x04 | 0x50;
const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10;
const BPF_RET_K: u16 = 0x06;

/// A TCP socket's filter sees each segment from its TCP header: drop a segment with SYN set and
/// ACK clear (a new connection), keep everything else whole. Sockets accepted later inherit
/// it, where it never matches (their peers' SYNs were answered before).
const DROP_NEW_CONNECTIONS: [SockFilter; 5] = [
    // A = flags byte & (SYN | ACK)
    SockFilter::new(BPF_LD_B_ABS, 0, 0, 13),
    SockFilter::new(BPF_ALU_AND_K, 0, 0, 0x12),
    // A == SYN ? drop : keep
    SockFilter::new(BPF_JMP_JEQ_K, 0, 1, 0x02),
    SockFilter::new(BPF_RET_K, 0, 0, 0),
    SockFilter::new(BPF_RET_K, 0, 0, u32::MAX),
];

/// Serves `listener`'s connections with `handler` (each a task of `tracker`, at most
/// `limits.max_connections` at once; beyond that refused and recorded) until `stop`, then
/// closes the door.
pub(crate) async fn accept_loop<H, F>(
    listener: TcpListener,
    direction: Direction,
    shared: Arc<ProxyContext>,
    stop: CancellationToken,
    tracker: TaskTracker,
    handler: H,
) where
    H: Fn(TcpStream, SocketAddr) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let max = shared.config.limits.max_connections;
    let limit = Arc::new(Semaphore::new(max));
    let admit = move |stream: TcpStream, peer: SocketAddr| match limit.clone().try_acquire_owned() {
        Ok(permit) => {
            let open = shared.metrics.conn.on_accept(direction);
            let conn = handler(stream, peer);
            tracker.spawn(async move {
                conn.await;
                drop(open);
                drop(permit);
            });
        }
        Err(_) => {
            let mut rec = ConnRecord::new(direction, peer);
            // Our side of the refused connection is us: label it with our ID, not
            // `unknown` (inbound: destination_id, outbound: source_id).
            rec.local_id = shared.tls.store().latest().map(|c| c.id().clone());
            let mut conn = Conn::new(rec);
            conn.refuse(Refusal::MaxConnections(max));
            shared.report(conn, Duration::ZERO);
        }
    };
    let mut accept_errors = AcceptErrors::default();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => admit(stream, peer),
            Err(e) => {
                accept_errors.on_error(direction.as_str(), &e).await;
            }
        }
    }
    close_door(listener, direction, admit).await;
}

/// Closes `listener`, handing `admit` every connection the kernel completed for it first.
async fn close_door(
    listener: TcpListener,
    direction: Direction,
    admit: impl Fn(TcpStream, SocketAddr),
) {
    if let Err(e) = SockRef::from(&listener).attach_filter(&DROP_NEW_CONNECTIONS) {
        // The queue is still emptied; a connection completed after the last look is reset.
        tracing::warn!(direction = direction.as_str(), error = %e, "could not stop new connections before closing the listener");
    }
    let mut taken = 0usize;
    let late = tokio::time::sleep(LATE_HANDSHAKES);
    tokio::pin!(late);
    loop {
        tokio::select! {
            _ = &mut late => break,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    taken += 1;
                    admit(stream, peer);
                }
                Err(e) if of_one_connection(&e) => {}
                // The listener's own trouble (no file descriptors left, ...): the kernel is
                // asked directly below.
                Err(_) => break,
            },
        }
    }
    // The reactor may not have reported the last ones yet: ask the kernel until it has none.
    loop {
        match take_queued(&listener) {
            Ok(Queued::Connection(stream, peer)) => {
                taken += 1;
                admit(stream, peer);
            }
            Ok(Queued::Skipped) => {}
            Ok(Queued::Empty) => break,
            Err(e) => {
                tracing::warn!(direction = direction.as_str(), error = %e, "accept failed while closing the listener; connections still queued are reset");
                break;
            }
        }
    }
    if taken > 0 {
        tracing::info!(
            direction = direction.as_str(),
            taken,
            "listener closed; connections already accepted by the kernel are served"
        );
    }
}

/// What the accept queue gave.
enum Queued {
    Connection(TcpStream, SocketAddr),
    /// One connection that could not be taken (gone before it was, not an IP peer, ...).
    Skipped,
    Empty,
}

/// Whether an accept error concerns one connection only (the next may be fine).
fn of_one_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// One connection from the accept queue, without waiting; an error is the listener's.
fn take_queued(listener: &TcpListener) -> io::Result<Queued> {
    let (socket, peer) = match SockRef::from(listener).accept() {
        Ok(taken) => taken,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Queued::Empty),
        Err(e) if of_one_connection(&e) => return Ok(Queued::Skipped),
        Err(e) => return Err(e),
    };
    let Some(peer) = peer.as_socket() else {
        return Ok(Queued::Skipped);
    };
    let stream = std::net::TcpStream::from(socket);
    let stream = stream
        .set_nonblocking(true)
        .and_then(|()| TcpStream::from_std(stream));
    Ok(match stream {
        Ok(stream) => Queued::Connection(stream, peer),
        Err(_) => Queued::Skipped,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Loopback listeners, IPv4 and (where the host has it) IPv6.
    async fn loopback_listeners() -> Vec<TcpListener> {
        let mut ls = vec![TcpListener::bind("127.0.0.1:0").await.unwrap()];
        match TcpListener::bind("[::1]:0").await {
            Ok(l) => ls.push(l),
            Err(e) => eprintln!("no IPv6 loopback here ({e}): IPv4 only"),
        }
        ls
    }

    /// The kernel's queue is read without the reactor: a connection the runtime was never told
    /// about is taken, and an empty queue says so.
    #[tokio::test]
    async fn the_queue_is_read_from_the_kernel() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let l = TcpListener::from_std(l).unwrap();
        assert!(matches!(take_queued(&l), Ok(Queued::Empty)));
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        io::Write::write_all(&mut client, b"hi").unwrap();
        // The handshake's last ACK may still be on its way through loopback.
        let mut queued = None;
        for _ in 0..100 {
            match take_queued(&l).unwrap() {
                Queued::Connection(s, peer) => {
                    queued = Some((s, peer));
                    break;
                }
                Queued::Empty => tokio::time::sleep(Duration::from_millis(10)).await,
                Queued::Skipped => panic!("the queued connection was skipped"),
            }
        }
        let (mut s, peer) = queued.expect("the queued connection was taken within 1 s");
        assert_eq!(peer, client.local_addr().unwrap());
        let mut got = [0u8; 2];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hi");
        assert!(matches!(take_queued(&l), Ok(Queued::Empty)));
    }

    /// A client whose handshake completed before the drain (its request already sent) is taken
    /// and can be answered; the port refuses afterwards.
    #[tokio::test]
    async fn a_queued_connection_is_taken_not_reset() {
        for l in loopback_listeners().await {
            let addr = l.local_addr().unwrap();
            let mut client = TcpStream::connect(addr).await.unwrap();
            client.write_all(b"request").await.unwrap();
            let taken = Mutex::new(Vec::new());
            close_door(l, Direction::Inbound, |s, peer| {
                taken.lock().unwrap().push((s, peer))
            })
            .await;
            let mut taken = taken.into_inner().unwrap();
            assert_eq!(taken.len(), 1, "{addr}");
            let (mut s, peer) = taken.pop().unwrap();
            assert_eq!(peer, client.local_addr().unwrap());
            let mut got = [0u8; 7];
            s.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"request");
            s.write_all(b"answer").await.unwrap();
            drop(s);
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.unwrap();
            assert_eq!(answer, b"answer");
            let refused = TcpStream::connect(addr).await.unwrap_err();
            assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused, "{addr}");
        }
    }

    /// The filter: a new connection's SYN goes unanswered (the client would retry), while an
    /// established connection, with the filter or without, still carries bytes both ways.
    #[tokio::test]
    async fn the_filter_drops_new_connections_only() {
        for l in loopback_listeners().await {
            let addr = l.local_addr().unwrap();
            let mut before = TcpStream::connect(addr).await.unwrap();
            SockRef::from(&l)
                .attach_filter(&DROP_NEW_CONNECTIONS)
                .unwrap();
            let (mut accepted, _) = l.accept().await.unwrap();
            // As a socket accepted after the filter inherits it.
            SockRef::from(&accepted)
                .attach_filter(&DROP_NEW_CONNECTIONS)
                .unwrap();
            let late =
                tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await;
            assert!(
                late.is_err(),
                "{addr}: a new connection was answered: {late:?}"
            );
            let bulk = vec![7u8; 256 * 1024];
            let (sent, got) = tokio::join!(before.write_all(&bulk), async {
                let mut got = vec![0u8; bulk.len()];
                accepted.read_exact(&mut got).await.map(|_| got)
            });
            sent.unwrap();
            assert_eq!(got.unwrap(), bulk);
            accepted.write_all(b"back").await.unwrap();
            let mut back = [0u8; 4];
            before.read_exact(&mut back).await.unwrap();
            assert_eq!(&back, b"back");
        }
    }
}
