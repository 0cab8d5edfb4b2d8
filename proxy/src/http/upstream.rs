//! The connection to the app behind one HTTP connection: opened on the first request that is
//! allowed, in the client's HTTP version, and opened again if the app closed it.

use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::Version;
use crate::refusal::Refusal;

/// A sender of requests to the app.
#[derive(Debug)]
enum Sender {
    Http1(http1::SendRequest<Incoming>),
    Http2(http2::SendRequest<Incoming>),
}

/// The app side of one HTTP connection.
#[derive(Debug)]
pub(super) struct Upstream {
    version: Version,
    app: SocketAddr,
    connect_timeout: Duration,
    sender: Mutex<Option<Sender>>,
}

impl Upstream {
    pub(super) fn new(version: Version, app: SocketAddr, connect_timeout: Duration) -> Self {
        Self {
            version,
            app,
            connect_timeout,
            sender: Mutex::new(None),
        }
    }

    /// Sends `req` to the app; a refusal says why the app could not be reached.
    pub(super) async fn send(&self, req: Request<Incoming>) -> Result<Response<Incoming>, Refusal> {
        let io = |e: hyper::Error| Refusal::Io(format!("app {}: {e}", self.app));
        let mut slot = self.sender.lock().await;
        let usable = match &*slot {
            Some(Sender::Http1(s)) => !s.is_closed(),
            Some(Sender::Http2(s)) => !s.is_closed(),
            None => false,
        };
        if !usable {
            *slot = Some(self.connect().await?);
        }
        match slot.as_mut() {
            Some(Sender::Http1(s)) => {
                // HTTP/1: one request at a time on the connection (the lock is held).
                s.ready().await.map_err(io)?;
                s.send_request(req).await.map_err(io)
            }
            Some(Sender::Http2(s)) => {
                // HTTP/2: streams run concurrently; the lock only guards the handle.
                let mut s = s.clone();
                drop(slot);
                s.ready().await.map_err(io)?;
                s.send_request(req).await.map_err(io)
            }
            None => Err(Refusal::Io("no connection to the app".into())),
        }
    }

    async fn connect(&self) -> Result<Sender, Refusal> {
        let app = self.app;
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(app)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(Refusal::ConnectFailed(format!("{app}: {e}"))),
            Err(_) => return Err(Refusal::ConnectTimeout(format!("{app}: timed out"))),
        };
        let _ = tcp.set_nodelay(true);
        let io = TokioIo::new(tcp);
        let handshake = |e: hyper::Error| Refusal::Io(format!("app {app}: {e}"));
        match self.version {
            Version::Http1 => {
                let (sender, conn) = http1::handshake(io).await.map_err(handshake)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!(error = %e, "app connection ended");
                    }
                });
                Ok(Sender::Http1(sender))
            }
            Version::Http2 => {
                let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(handshake)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "app connection ended");
                    }
                });
                Ok(Sender::Http2(sender))
            }
        }
    }
}
