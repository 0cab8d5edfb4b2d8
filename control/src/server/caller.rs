//! Who called the query port, and its one rule for changes (`POST`/`DELETE /revocations`,
//! `POST /new-edges/<id>/allow`): accepted from loopback callers only, like the proxy's `POST
//! /shutdown` — whoever can run a command on the control plane's host may make them, nobody
//! else, whatever address the port is bound to. Reading stays open to whoever reaches the port.

use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};

/// The caller's address, put in every request's extensions by the query server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller(pub(crate) SocketAddr);

impl Caller {
    /// The caller of `req`, if the query server recorded it.
    pub(crate) fn of<B>(req: &Request<B>) -> Option<SocketAddr> {
        req.extensions().get::<Caller>().map(|c| c.0)
    }
}

/// The `403 Forbidden` answer to a change of `what` (`"revocations"`) asked by `caller`, unless
/// it calls from loopback (`None`: allowed). An unknown caller is refused.
pub(crate) fn refuse_unless_loopback(
    caller: Option<SocketAddr>,
    what: &str,
) -> Option<Response<Full<Bytes>>> {
    if caller.is_some_and(|c| c.ip().is_loopback()) {
        return None;
    }
    let mut r = Response::new(Full::new(Bytes::from(format!(
        "{what} are changed from the control plane's own host only (loopback)\n"
    ))));
    *r.status_mut() = StatusCode::FORBIDDEN;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn only_loopback_callers_may_change_anything() {
        for local in ["127.0.0.1:40000", "127.0.0.9:1", "[::1]:40000"] {
            assert!(
                refuse_unless_loopback(Some(local.parse().unwrap()), "revocations").is_none(),
                "{local}"
            );
        }
        for remote in [Some("10.0.0.7:40000".parse().unwrap()), None] {
            let r = refuse_unless_loopback(remote, "new-edge alerts").unwrap();
            assert_eq!(r.status(), StatusCode::FORBIDDEN);
            let body = r.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(
                body,
                "new-edge alerts are changed from the control plane's own host only (loopback)\n"
            );
        }
        let mut req = Request::new(());
        assert_eq!(Caller::of(&req), None);
        let at: SocketAddr = "127.0.0.1:5".parse().unwrap();
        req.extensions_mut().insert(Caller(at));
        assert_eq!(Caller::of(&req), Some(at));
    }
}
