//! HTTP on the inbound side. Once a connection is known to carry HTTP/1.x or HTTP/2 (after mesh
//! mTLS is terminated, or plaintext on a PERMISSIVE port), it is served with hyper: every
//! request is authorized on its own with the connection's verified SPIFFE ID, its method and
//! path; the caller's identity is handed to the app in a header (any copy the caller sent is
//! removed first); allowed requests stream to the app over one upstream connection of the same
//! HTTP version; a refused one gets a response that says why. Upgrades (WebSocket) and
//! `CONNECT` continue as opaque bytes after the app accepts them.

mod app_pool;
mod carried;
mod counted;
mod observed;
mod path;
mod request;
mod respond;
mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{timeout_at, Instant};

use tokio::net::TcpStream;

use crate::authz::Ends;
use crate::conn::{Outcome, TlsStatus};
use crate::context::{Conn, ProxyContext};
use crate::detect::{detect_http, HttpDetection, MAX_REQUEST_LINE};
use crate::refusal::Refusal;
use crate::sniff::read_until;
pub(crate) use app_pool::AppPool;
pub(crate) use carried::incoming as carried_target;
use counted::Counted;
use request::Handler;
pub(crate) use respond::Body;
pub(crate) use upstream::Dial;
use upstream::Upstream;

/// The HTTP version a connection speaks, as detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Version {
    /// HTTP/1.0 or HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge (h2c, gRPC).
    Http2,
}

/// Reads from `stream` into `buf` until the bytes can be classified, the client stops sending
/// or the deadline passes (then it is not HTTP: a server-first protocol must not wait longer).
pub(crate) async fn sniff<S>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> std::io::Result<Option<Version>>
where
    S: AsyncRead + Unpin,
{
    let decided = |b: &[u8]| match detect_http(b) {
        HttpDetection::Http1 => Some(Some(Version::Http1)),
        HttpDetection::Http2 => Some(Some(Version::Http2)),
        HttpDetection::NotHttp => Some(None),
        HttpDetection::NeedMore => None,
    };
    Ok(read_until(stream, buf, MAX_REQUEST_LINE, deadline, decided)
        .await?
        .flatten())
}

/// Serves an HTTP connection until the client or the drain ends it, filling the record.
pub(crate) async fn serve<S>(
    ctx: &Arc<ProxyContext>,
    io: S,
    version: Version,
    dst: SocketAddr,
    dial: Dial,
    conn: &mut Conn,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // On the outbound side the server's identity is the one secure naming requires; the
    // connection's TLS status is set once a handshake proved it.
    let expected = match &dial {
        Dial::Mesh { expected, .. } => Some(expected.clone()),
        Dial::App(_) => None,
    };
    let labels = match &expected {
        Some(server) => ctx.metrics.conn.labels_for(
            conn.rec.direction,
            conn.rec.local_id.as_ref(),
            Some(server),
            "mutual_tls",
        ),
        None => ctx.metrics.conn.labels(&conn.rec),
    };
    let bytes = ctx.metrics.conn.on_open(&labels);
    let io = Counted::new(io, bytes);
    let totals = io.totals();
    // Registered so that a revocation closes it (its requests are authorized one by one).
    let mut ends = Ends::of(&conn.rec, dst);
    if expected.is_some() {
        ends.peer.clone_from(&expected);
    }
    let guard = ctx.authz.register(ends, false, &ctx.force_close);
    let closing = guard.cancel.clone();
    let upstream = Upstream::new(version, dst, ctx.config.limits.connect_timeout.0, dial);
    let handler = Arc::new(Handler::new(
        ctx.clone(),
        conn,
        expected,
        labels.clone(),
        upstream,
    ));
    conn.labels = Some(labels);
    let max_head = ctx.config.http.max_header_bytes;
    let served_by = handler.clone();
    // Draining: every HTTP/1 response from now on says `connection: close`, so the client
    // ends the connection at a response boundary and reconnects elsewhere (closing an idle
    // keep-alive connection ourselves would race with a request already on its way).
    let draining = ctx.draining.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let closing_after = version == Version::Http1
            && draining.is_cancelled()
            && req.method() != hyper::Method::CONNECT;
        let served = handler.clone().handle(req);
        async move {
            let mut resp = served.await?;
            if closing_after && resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
                resp.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let io = TokioIo::new(io);
    let served = match version {
        Version::Http1 => {
            let c = hyper::server::conn::http1::Builder::new()
                .max_buf_size(max_head.max(8192))
                // A client that half-closes after its request still gets the response.
                .half_close(true)
                .serve_connection(io, service)
                .with_upgrades();
            tokio::select! {
                r = c => r,
                _ = closing.cancelled() => return finish(conn, &totals, Outcome::Cancelled, guard.closed_by()),
            }
        }
        Version::Http2 => {
            let c = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX))
                .serve_connection(io, service);
            tokio::pin!(c);
            let ended = tokio::select! {
                r = c.as_mut() => Some(r),
                _ = ctx.draining.cancelled() => None,
                _ = closing.cancelled() => return finish(conn, &totals, Outcome::Cancelled, guard.closed_by()),
            };
            match ended {
                Some(r) => r,
                None => {
                    // Draining: GOAWAY; the open streams finish, no new one starts.
                    c.as_mut().graceful_shutdown();
                    tokio::select! {
                        r = c.as_mut() => r,
                        _ = closing.cancelled() => return finish(conn, &totals, Outcome::Cancelled, guard.closed_by()),
                    }
                }
            }
        }
    };
    if let Some(peer) = served_by.verified_server() {
        conn.rec.tls = TlsStatus::MutualTls {
            peer: peer.id,
            serial: peer.serial,
        };
    }
    conn.rec.carrier = served_by.carrier();
    match served {
        Ok(()) => finish(conn, &totals, Outcome::Complete, None),
        Err(e) => finish(
            conn,
            &totals,
            Outcome::IoError,
            Some(Refusal::Io(e.to_string())),
        ),
    }
}

/// Handlers a tunnel connection keeps for its carried requests (one per app port and version).
const MAX_CARRIED_HANDLERS: usize = 64;

/// The HTTP requests one tunnel connection carries as requests of their own (not inside a
/// `CONNECT` stream): each is served exactly like a request of an inbound mesh connection from
/// the tunnel's verified client (revocation, per-request policy, identity headers, the app
/// pool, metrics and access log), by a handler kept per (app address, HTTP version).
#[derive(Debug, Default)]
pub(crate) struct CarriedRequests {
    handlers: std::sync::Mutex<HashMap<(SocketAddr, Version), Arc<Handler>>>,
}

impl CarriedRequests {
    /// Serves `req` (already rewritten by [`carried_target`]) to `app` in `version`;
    /// `record` describes the tunnel connection (its client, identity and carrier) for a
    /// handler made now.
    pub(crate) fn serve(
        &self,
        ctx: &Arc<ProxyContext>,
        app: SocketAddr,
        version: Version,
        record: &dyn Fn() -> Conn,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> impl std::future::Future<Output = hyper::Response<Body>> + Send + 'static {
        let make = || {
            let mut conn = record();
            conn.rec.dst_addr = Some(crate::conn::DstAddr::App(app));
            let labels = ctx.metrics.conn.labels(&conn.rec);
            let timeout = ctx.config.limits.connect_timeout.0;
            let dial = Dial::App(ctx.app_pool.clone());
            let upstream = Upstream::new(version, app, timeout, dial);
            Arc::new(Handler::new(ctx.clone(), &conn, None, labels, upstream))
        };
        let handler = {
            let mut all = self
                .handlers
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match all.get(&(app, version)) {
                Some(h) => h.clone(),
                // A peer naming ever more ports gets handlers that are not kept.
                None if all.len() >= MAX_CARRIED_HANDLERS => make(),
                None => all.entry((app, version)).or_insert_with(make).clone(),
            }
        };
        async move {
            match handler.handle(req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            }
        }
    }
}

/// A refusal of a request that cannot be carried, as the response that says why.
pub(crate) fn refusal_response(why: &Refusal) -> hyper::Response<Body> {
    respond::refusal(why, &why.to_string(), false)
}

/// An empty body of the proxy's own responses.
pub(crate) fn empty_body() -> Body {
    respond::empty()
}

/// Peeks at the first bytes an app sent on `stream`, without taking them, until they say HTTP
/// or not, or the deadline passes (a silent client is not HTTP).
pub(crate) async fn peek(stream: &TcpStream, deadline: Instant) -> Option<Version> {
    // Most request lines fit the small buffer; a longer one gets the whole bound at once.
    let mut buf = vec![0u8; FIRST_PEEK];
    loop {
        let n = match timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return None,
        };
        match detect_http(&buf[..n]) {
            HttpDetection::Http1 => return Some(Version::Http1),
            HttpDetection::Http2 => return Some(Version::Http2),
            HttpDetection::NotHttp => return None,
            HttpDetection::NeedMore if n >= MAX_REQUEST_LINE => return None,
            HttpDetection::NeedMore if n == buf.len() => {
                buf.resize(MAX_REQUEST_LINE, 0);
                continue;
            }
            // The rest of the request line is on its way: look again shortly.
            HttpDetection::NeedMore => tokio::time::sleep(PEEK_AGAIN).await,
        }
        if Instant::now() >= deadline {
            return None;
        }
    }
}

/// Bytes of the first peek at an app's first bytes.
const FIRST_PEEK: usize = 512;

/// Pause between two peeks at a request line that is still arriving.
const PEEK_AGAIN: std::time::Duration = std::time::Duration::from_millis(2);

/// Answers every request on `io` with the refusal `why` (the proxy could not reach the
/// destination), then closes; bounded in time.
pub(crate) async fn answer<S>(io: S, version: Version, why: &Refusal)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let words = format!("{}: {why}", why.label().replace('_', " "));
    let why = why.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let grpc = request::is_grpc(&req);
        let resp = respond::refusal(&why, &words, grpc);
        async move { Ok::<_, std::convert::Infallible>(resp) }
    });
    let io = TokioIo::new(io);
    let serving = async {
        match version {
            Version::Http1 => {
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(false)
                    .serve_connection(io, service)
                    .await;
            }
            Version::Http2 => {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service)
                    .await;
            }
        }
    };
    let _ = tokio::time::timeout(ANSWER_LIMIT, serving).await;
}

/// How long a refused connection is served its explanation at most.
const ANSWER_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

fn finish(conn: &mut Conn, totals: &counted::Totals, outcome: Outcome, why: Option<Refusal>) {
    let (up, down) = totals.get();
    conn.rec.bytes_up = up;
    conn.rec.bytes_down = down;
    conn.rec.outcome = outcome;
    if why.is_some() {
        conn.rec.refusal = why;
    }
}
