//! Keep-alive connections from the inbound side to the app, shared by every client connection
//! (and tunnel stream) of the proxy: a client that opens a connection per request costs the
//! app no new connection. HTTP/1: idle connections per app address, reused when ready (one
//! request at a time each), a request the app's close raced with sent again once on a new
//! connection. HTTP/2: one multiplexed connection per app address.
//!
//! Keyed by the app's socket address, not by the request's authority: the app is where the
//! inbound side forwards, whatever the client named.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::forward::dial;
use crate::refusal::Refusal;

/// Idle HTTP/1 connections kept per app address; more are closed when their response ends.
const MAX_IDLE_PER_APP: usize = 64;

/// An HTTP/1 connection unused this long is closed by the pool (below the 60–75 s keep-alive
/// timeouts of common app servers, so the app rarely closes one under us).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

type H1 = http1::SendRequest<Incoming>;
type H2 = http2::SendRequest<Incoming>;

/// The pool of app connections.
#[derive(Debug, Default)]
pub(crate) struct AppPool {
    h1: Mutex<HashMap<SocketAddr, Vec<(H1, tokio::time::Instant)>>>,
    h2: Mutex<HashMap<SocketAddr, H2>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl AppPool {
    /// Sends `req` over HTTP/1 on a pooled connection to `app` (a new one if none is ready).
    /// A request that wants a protocol upgrade gets a connection of its own.
    pub(crate) async fn send_h1(
        &self,
        app: SocketAddr,
        connect_timeout: Duration,
        req: Request<Incoming>,
        upgrade: bool,
    ) -> Result<Response<Incoming>, Refusal> {
        let io = |e: hyper::Error| Refusal::Io(format!("app {app}: {e}"));
        if upgrade {
            let mut s = connect_h1(app, connect_timeout).await?;
            s.ready().await.map_err(io)?;
            return s.send_request(req).await.map_err(io);
        }
        let mut req = req;
        // A pooled connection the app closed as we picked it fails before the request was
        // written: the request comes back and goes out again on a new connection.
        for fresh in [false, true] {
            let mut s = match self.idle_h1(app).filter(|_| !fresh) {
                Some(s) => s,
                None => connect_h1(app, connect_timeout).await?,
            };
            s.ready().await.map_err(io)?;
            let sent = s.try_send_request(req);
            // Back in the pool at once: it is not ready again until this response's body has
            // ended, so no other request waits behind it.
            self.put_h1(app, s);
            match sent.await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(back) if !fresh => req = back,
                    _ => return Err(io(e.into_error())),
                },
            }
        }
        Err(Refusal::Io(format!("app {app}: connection closed")))
    }

    /// Sends `req` over the app's shared HTTP/2 connection (made on first use, again if it
    /// closed).
    pub(crate) async fn send_h2(
        &self,
        app: SocketAddr,
        connect_timeout: Duration,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, Refusal> {
        let io = |e: hyper::Error| Refusal::Io(format!("app {app}: {e}"));
        let shared = lock(&self.h2).get(&app).filter(|s| !s.is_closed()).cloned();
        let mut s = match shared {
            Some(s) => s,
            None => {
                let s = connect_h2(app, connect_timeout).await?;
                lock(&self.h2).insert(app, s.clone());
                s
            }
        };
        s.ready().await.map_err(io)?;
        s.send_request(req).await.map_err(io)
    }

    /// A pooled HTTP/1 connection to `app` that can take a request now; closed and expired
    /// ones are dropped on the way.
    fn idle_h1(&self, app: SocketAddr) -> Option<H1> {
        let mut all = lock(&self.h1);
        let conns = all.get_mut(&app)?;
        let now = tokio::time::Instant::now();
        conns.retain(|(s, since)| !s.is_closed() && now.duration_since(*since) < IDLE_TIMEOUT);
        let ready = conns.iter().rposition(|(s, _)| s.is_ready())?;
        Some(conns.swap_remove(ready).0)
    }

    fn put_h1(&self, app: SocketAddr, s: H1) {
        let mut all = lock(&self.h1);
        let conns = all.entry(app).or_default();
        if conns.len() < MAX_IDLE_PER_APP {
            conns.push((s, tokio::time::Instant::now()));
        }
    }
}

async fn connect_h1(app: SocketAddr, connect_timeout: Duration) -> Result<H1, Refusal> {
    let tcp = dial(app, connect_timeout).await?;
    let (sender, conn) = http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| Refusal::Io(format!("app {app}: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "app connection ended");
        }
    });
    Ok(sender)
}

async fn connect_h2(app: SocketAddr, connect_timeout: Duration) -> Result<H2, Refusal> {
    let tcp = dial(app, connect_timeout).await?;
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    let (sender, conn) = builder
        .handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| Refusal::Io(format!("app {app}: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "app connection ended");
        }
    });
    Ok(sender)
}
