//! One HTTP request: authorize it with the connection's identity, its method and path; hand the
//! caller's identity to the app; forward it, or answer with a refusal that says why; count it.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use std::time::Duration;
use svidcar_identity::tls::{CertSerial, VerifiedPeer};
use svidcar_identity::SpiffeId;
use svidcar_policy::Request as PolicyRequest;

use tokio::time::Instant;

use super::observed::{Done, Observed};
use super::path::{normalize, BadPath};
use super::respond::{self, Body};
use super::upstream::{Answer, Upstream};
use crate::access_log::logged_path;
use crate::authz::{End, Ends};
use crate::conn::{Carrier, Direction};
use crate::context::{Conn, ProxyContext};
use crate::metrics::{ConnLabels, ResponseHandles};
use crate::refusal::Refusal;

/// Envoy's header for the caller's certificate identity.
const XFCC: &str = "x-forwarded-client-cert";

/// What every request of one connection shares.
#[derive(Debug)]
pub(super) struct Handler {
    ctx: Arc<ProxyContext>,
    /// Inbound: requests are authorized and the caller's identity is handed on; outbound: they
    /// are carried to the peer as they are (its inbound side decides).
    direction: Direction,
    /// Our SPIFFE ID (inbound: the workload the policies select; `None` fails closed).
    workload: Option<SpiffeId>,
    /// Inbound: the caller's verified SPIFFE ID (`None` for plaintext); outbound: the server
    /// the mesh requires.
    caller: Option<SpiffeId>,
    /// Inbound: the serial of the caller's certificate (`None` for plaintext).
    caller_serial: Option<CertSerial>,
    client: SocketAddr,
    app: SocketAddr,
    /// How the requests reach this side (inbound) or leave it (outbound, until one rides a
    /// pooled tunnel connection).
    carrier: Carrier,
    labels: ConnLabels,
    /// The metrics of its latest response.
    response_metrics: ResponseHandles,
    client_id_header: HeaderName,
    /// The caller's SPIFFE ID as that header's value (and as the XFCC value when enabled),
    /// made once for every request of the connection.
    caller_values: Option<(HeaderValue, Option<HeaderValue>)>,
    upstream: Upstream,
}

impl Handler {
    /// `server`: on the outbound side, the SPIFFE ID the peer must present.
    pub(super) fn new(
        ctx: Arc<ProxyContext>,
        conn: &Conn,
        server: Option<SpiffeId>,
        labels: ConnLabels,
        upstream: Upstream,
    ) -> Self {
        let client_id_header = HeaderName::from_bytes(ctx.config.http.client_id_header.as_bytes())
            // Validated with the configuration; the default is a valid name.
            .unwrap_or_else(|_| HeaderName::from_static("x-svidcar-client-id"));
        let peer = match conn.rec.direction {
            Direction::Inbound => conn.rec.tls.peer().cloned(),
            Direction::Outbound => server,
        };
        let caller_values = match (conn.rec.direction, &peer) {
            (Direction::Inbound, Some(id)) => HeaderValue::from_str(id.as_str()).ok().map(|v| {
                let xfcc = ctx
                    .config
                    .http
                    .xfcc
                    .then(|| HeaderValue::from_str(&format!("URI={id}")).ok())
                    .flatten();
                (v, xfcc)
            }),
            _ => None,
        };
        Self {
            direction: conn.rec.direction,
            workload: conn.rec.local_id.clone(),
            caller: peer,
            caller_serial: conn.rec.tls.peer_serial().cloned(),
            client: conn.rec.client_addr.0,
            app: conn
                .rec
                .dst_addr
                .map_or(conn.rec.client_addr.0, |d| d.addr()),
            carrier: conn.rec.carrier,
            labels,
            response_metrics: ResponseHandles::default(),
            client_id_header,
            caller_values,
            upstream,
            ctx,
        }
    }

    /// Serves one request (never fails: refusals are responses).
    pub(super) async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
    ) -> Result<Response<Body>, std::convert::Infallible> {
        let start = Instant::now();
        let method = req.method().clone();
        let path = logged_path(req.uri().path()).to_owned();
        let grpc = is_grpc(&req);
        let peer_serial = match self.direction {
            Direction::Inbound => self.caller_serial.as_ref(),
            Direction::Outbound => self.upstream.verified().map(|p| &p.serial),
        };
        let revocable = [
            End {
                id: self.caller.as_ref(),
                serial: peer_serial,
            },
            End {
                id: self.workload.as_ref(),
                serial: None,
            },
        ];
        if let Some(why) = self
            .ctx
            .authz
            .refuse_revoked_lazy(&revocable, || self.ends())
        {
            let words = why.to_string();
            return Ok(self.refuse(&why, &words, grpc, &method, &path, start));
        }
        if self.direction == Direction::Outbound {
            return Ok(match self.forward(req).await {
                Ok(resp) => self.observe(resp, method, path, start),
                Err(why) => {
                    let words = format!("{}: {why}", why.label().replace('_', " "));
                    self.refuse(&why, &words, grpc, &method, &path, start)
                }
            });
        }
        // Policy sees, and the app receives, one canonical spelling of the whole path.
        let full_path = match normalize_into(&mut req) {
            Ok(p) => p,
            Err(BadPath(what)) => {
                let why = Refusal::BadRequest(what);
                let words = format!("bad request: {what}");
                return Ok(self.refuse(&why, &words, grpc, &method, &path, start));
            }
        };
        let path = logged_path(&full_path).to_owned();
        let headers = ReqHeaders(req.headers());
        let preq = PolicyRequest {
            source_id: self.caller.as_ref(),
            source_ip: self.client.ip(),
            port: self.app.port(),
            method: Some(method.as_str()),
            path: Some(&full_path),
            host: host(&req),
            headers: Some(&headers),
        };
        let decision = self.ctx.authz.decide(self.workload.as_ref(), &preq);
        self.ctx.authz.record(
            self.workload.as_ref(),
            self.client,
            self.app,
            &preq,
            &decision,
        );
        if !decision.allowed {
            let words = match &decision.by {
                Some(rule) => format!("policy denied: {rule}"),
                None => format!("policy denied: {}", decision.reason),
            };
            let why = Refusal::PolicyDenied(decision.reason);
            return Ok(self.refuse(&why, &words, grpc, &method, &path, start));
        }
        self.identify(&mut req);
        match self.forward(req).await {
            Ok(resp) => Ok(self.observe(resp, method, path, start)),
            Err(why) => {
                let words = format!("{}: {why}", why.label().replace('_', " "));
                Ok(self.refuse(&why, &words, grpc, &method, &path, start))
            }
        }
    }

    /// The proxy's own answer to a refused request, counted and logged now.
    fn refuse(
        &self,
        why: &Refusal,
        words: &str,
        grpc: bool,
        method: &Method,
        path: &str,
        start: Instant,
    ) -> Response<Body> {
        let resp = respond::refusal(why, words, grpc);
        let grpc_status = resp
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        why.log();
        self.account(
            method,
            path,
            resp.status().as_u16(),
            &grpc_status,
            Some(why),
            start.elapsed(),
        );
        resp
    }

    /// The app's response, counted when its body ends (with the gRPC status of its trailers).
    fn observe(
        self: &Arc<Self>,
        answer: Answer,
        method: Method,
        path: String,
        start: Instant,
    ) -> Response<Body> {
        let Answer { resp, hold } = answer;
        let latency = start.elapsed();
        let status = resp.status().as_u16();
        let header_status = resp
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let this = self.clone();
        let done: Done = Box::new(move |grpc_status: &str| {
            this.account(&method, &path, status, grpc_status, None, latency);
            // The tunnel's stream ends with the body.
            drop(hold);
        });
        resp.map(|body| Observed::new(body, &header_status, done).boxed())
    }

    /// The server our verifier accepted on the outbound side, once a request reached it.
    pub(super) fn verified_server(&self) -> Option<VerifiedPeer> {
        self.upstream.verified().cloned()
    }

    /// How the requests travelled: a request that rode a pooled tunnel connection makes the
    /// connection's carrier the tunnel.
    pub(super) fn carrier(&self) -> Carrier {
        if self.upstream.tunnelled() {
            Carrier::Tunnel
        } else {
            self.carrier
        }
    }

    /// The connection's ends as a revocation sees them: the caller (inbound) or the server
    /// (outbound, with its certificate once connected), and ourselves.
    fn ends(&self) -> Ends {
        let peer_serial = match self.direction {
            Direction::Inbound => self.caller_serial.clone(),
            Direction::Outbound => self.upstream.verified().map(|p| p.serial.clone()),
        };
        Ends {
            direction: self.direction,
            local: self.workload.clone(),
            peer: self.caller.clone(),
            peer_serial,
            client: self.client,
            dst: self.app,
        }
    }

    /// Removes every copy of the identity headers the caller sent, then states the verified
    /// caller (none for plaintext).
    fn identify(&self, req: &mut Request<Incoming>) {
        let headers = req.headers_mut();
        headers.remove(&self.client_id_header);
        headers.remove(XFCC);
        let Some((id, xfcc)) = &self.caller_values else {
            return;
        };
        headers.insert(self.client_id_header.clone(), id.clone());
        if let Some(xfcc) = xfcc {
            headers.insert(XFCC, xfcc.clone());
        }
    }

    /// Sends an allowed request to the app; an upgrade continues as opaque bytes.
    async fn forward(&self, mut req: Request<Incoming>) -> Result<Answer, Refusal> {
        let upgrading = wants_upgrade(&req);
        if !upgrading {
            // The client's connection options are between it and us: the app connection is
            // the proxy's, kept alive for the next request whatever this client asked.
            strip_connection_options(req.headers_mut());
        }
        let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
        let mut answer = self.upstream.send(req, upgrading).await?;
        let resp = &mut answer.resp;
        let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS
            || (upgrading && resp.status().is_success());
        if let (true, Some(client_upgrade)) = (switched, client_upgrade) {
            let app_upgrade = hyper::upgrade::on(resp);
            let force_close = self.ctx.force_close.clone();
            tokio::spawn(async move {
                let (Ok(client), Ok(app)) = (client_upgrade.await, app_upgrade.await) else {
                    return;
                };
                let mut client = hyper_util::rt::TokioIo::new(client);
                let mut app = hyper_util::rt::TokioIo::new(app);
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut app) => {}
                    _ = force_close.cancelled() => {}
                }
            });
        }
        Ok(answer)
    }

    /// Counts the request and writes its access-log record.
    fn account(
        &self,
        method: &Method,
        path: &str,
        status: u16,
        grpc_status: &str,
        refusal: Option<&Refusal>,
        elapsed: Duration,
    ) {
        self.ctx.metrics.http.on_response(
            &self.response_metrics,
            &self.labels,
            method,
            status,
            grpc_status,
            elapsed,
        );
        fn id(i: Option<&SpiffeId>) -> &str {
            i.map_or("", SpiffeId::as_str)
        }
        let (client_id, server_id) = match self.direction {
            Direction::Inbound => (&self.caller, &self.workload),
            Direction::Outbound => (&self.workload, &self.caller),
        };
        tracing::info!(
            target: "svidcar::access",
            direction = self.direction.as_str(),
            client.addr = %self.client,
            client.id = %id(client_id.as_ref()),
            dst.addr = %self.app,
            server.id = %id(server_id.as_ref()),
            carrier = self.carrier().as_str(),
            http.method = %method,
            http.path = %path,
            http.status = status,
            grpc.status = grpc_status,
            duration_ms = elapsed.as_millis() as u64,
            reason = refusal.map_or("", Refusal::label),
            cause = refusal.map_or("", |r| r.cause().as_str()),
            "request"
        );
    }
}

/// The host a request names: HTTP/2 `:authority`, else the `Host` header.
fn host<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(hyper::header::HOST)?.to_str().ok())
}

/// A request's headers, as policy conditions read them.
#[derive(Debug)]
struct ReqHeaders<'a>(&'a hyper::HeaderMap);

impl svidcar_policy::Headers for ReqHeaders<'_> {
    fn values(&self, name: &str) -> Vec<&str> {
        self.0
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }
}

/// Normalizes the request's path in place (the query is kept); returns the normalized path.
fn normalize_into<B>(req: &mut Request<B>) -> Result<String, BadPath> {
    let uri = req.uri();
    let path = normalize(uri.path())?;
    if path != uri.path() {
        let mut parts = uri.clone().into_parts();
        let pq = match uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        parts.path_and_query = Some(
            pq.parse()
                .map_err(|_| BadPath("a path that cannot be written back"))?,
        );
        *req.uri_mut() = hyper::Uri::from_parts(parts)
            .map_err(|_| BadPath("a path that cannot be written back"))?;
    }
    Ok(path)
}

/// `application/grpc`, `application/grpc+proto`, …
pub(super) fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Removes the hop-by-hop headers of a request (RFC 9110, section 7.6.1): `Connection`, the
/// headers it names, and `Keep-Alive` / `Proxy-Connection`.
fn strip_connection_options(headers: &mut hyper::HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [CONNECTION.as_str(), "keep-alive", "proxy-connection"] {
        headers.remove(name);
    }
}

/// An HTTP/1 `Upgrade` (WebSocket) or a `CONNECT`.
fn wants_upgrade<B>(req: &Request<B>) -> bool {
    let connection_upgrade = req
        .headers()
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    req.method() == Method::CONNECT || (connection_upgrade && req.headers().contains_key(UPGRADE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_options_stay_with_the_client() {
        let mut h = hyper::HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("close, x-trace"));
        h.insert("x-trace", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_connection_options(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn grpc_and_upgrades_are_recognised() {
        let r = Request::builder()
            .header(CONTENT_TYPE, "application/grpc+proto")
            .body(())
            .unwrap();
        assert!(is_grpc(&r));
        let ws = Request::builder()
            .header(CONNECTION, "keep-alive, Upgrade")
            .header(UPGRADE, "websocket")
            .body(())
            .unwrap();
        assert!(wants_upgrade(&ws));
        let plain = Request::builder().header(UPGRADE, "h2c").body(()).unwrap();
        assert!(!wants_upgrade(&plain));
        let connect = Request::builder().method(Method::CONNECT).body(()).unwrap();
        assert!(wants_upgrade(&connect));
    }

    #[test]
    fn paths_are_normalized_in_place_and_the_query_kept() {
        let mut r = Request::builder()
            .uri("/x/..//%61dmin?q=%2e%2e")
            .body(())
            .unwrap();
        assert_eq!(normalize_into(&mut r).unwrap(), "/admin");
        assert_eq!(r.uri().to_string(), "/admin?q=%2e%2e");
        let mut bad = Request::builder().uri("/a%zz").body(()).unwrap();
        assert!(normalize_into(&mut bad).is_err());
    }
}
