//! App HTTP requests carried between sidecars as HTTP/2 requests of a pooled tunnel connection
//! (`svidcar_api::tunnel`): the outbound side's rewrite of a client's request, and the inbound
//! side's rewrite back, so the app receives what the client sent.

use std::net::SocketAddr;

use hyper::header::{HeaderValue, HOST};
use hyper::http::uri::{Authority, Scheme};
use hyper::{Method, Request, Uri};
use svidcar_api::tunnel::{parse_target, OrigProto, TargetError, DST_HEADER, PROTO_HEADER};

use super::Version;

/// A client's request after [`outgoing`].
#[derive(Debug)]
pub(super) enum Rewritten<B> {
    /// Ready for the tunnel, with what to undo should it come back unsent.
    Carried(Request<B>, Original),
    /// To be carried as the client's bytes instead, unchanged.
    AsIs(Request<B>),
}

/// The parts of a request the rewrite changes, to undo it.
#[derive(Debug)]
pub(super) struct Original {
    uri: Uri,
    version: hyper::Version,
}

/// The client's request as an HTTP/2 request to the peer's tunnel, if it can be carried so and
/// written back exactly: anything HTTP/2 (but `CONNECT`), and HTTP/1.1 in origin form whose
/// `Host` (when given) is a valid authority. Everything else (HTTP/1.0, absolute or asterisk
/// form, upgrades) rides a `CONNECT` stream as bytes. `version`: what the client speaks.
/// `dst_value`: `dst` as a header value ([`addr_value`]), made once per upstream.
pub(super) fn outgoing<B>(
    req: Request<B>,
    version: Version,
    dst: SocketAddr,
    dst_value: &HeaderValue,
) -> Rewritten<B> {
    if req.method() == Method::CONNECT {
        return Rewritten::AsIs(req);
    }
    let proto = match version {
        Version::Http2 => OrigProto::Http2,
        Version::Http1 => OrigProto::Http11,
    };
    let uri = match proto {
        OrigProto::Http2 => None,
        OrigProto::Http11 => match h1_as_h2_uri(&req, dst) {
            Some(uri) => Some(uri),
            None => return Rewritten::AsIs(req),
        },
    };
    let (mut parts, body) = req.into_parts();
    let original = Original {
        uri: match uri {
            Some(uri) => std::mem::replace(&mut parts.uri, uri),
            None => parts.uri.clone(),
        },
        version: parts.version,
    };
    parts.version = hyper::Version::HTTP_2;
    let h = &mut parts.headers;
    // Any copy the app sent is replaced: these are ours.
    h.insert(DST_HEADER, dst_value.clone());
    h.insert(PROTO_HEADER, HeaderValue::from_static(proto.as_str()));
    Rewritten::Carried(Request::from_parts(parts, body), original)
}

/// An `ip:port` as a header value.
pub(super) fn addr_value(addr: SocketAddr) -> HeaderValue {
    HeaderValue::try_from(addr.to_string())
        // An address's text is ASCII digits, dots, colons and brackets.
        .unwrap_or_else(|_| HeaderValue::from_static("0.0.0.0:0"))
}

/// `http://{Host or dst}{path}` for an HTTP/1.1 request in origin form, `None` otherwise.
fn h1_as_h2_uri<B>(req: &Request<B>, dst: SocketAddr) -> Option<Uri> {
    if req.version() != hyper::Version::HTTP_11 || req.uri().scheme().is_some() {
        return None;
    }
    let pq = req.uri().path_and_query()?;
    if !pq.as_str().starts_with('/') {
        return None;
    }
    let mut hosts = req.headers().get_all(HOST).iter();
    let authority = match (hosts.next(), hosts.next()) {
        (None, _) => Authority::try_from(dst.to_string()).ok()?,
        (Some(h), None) => Authority::try_from(h.as_bytes()).ok()?,
        (Some(_), Some(_)) => return None,
    };
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority)
        .path_and_query(pq.clone())
        .build()
        .ok()
}

/// Undoes [`outgoing`] on a request the tunnel handed back unsent.
pub(super) fn restore<B>(req: Request<B>, original: Original) -> Request<B> {
    let (mut parts, body) = req.into_parts();
    parts.uri = original.uri;
    parts.version = original.version;
    parts.headers.remove(DST_HEADER);
    parts.headers.remove(PROTO_HEADER);
    Request::from_parts(parts, body)
}

/// Where a request received on a tunnel connection goes and in which HTTP version; the request
/// is rewritten to what the client sent (its headers, for HTTP/1.1 its origin form and
/// version).
pub(crate) fn incoming<B>(req: &mut Request<B>) -> Result<(SocketAddr, Version), TargetError> {
    let one = |name: &str| {
        let mut all = req.headers().get_all(name).iter();
        match (all.next(), all.next()) {
            (Some(v), None) => Some(v.as_bytes()),
            _ => None,
        }
    };
    let (dst, proto) = parse_target(one(DST_HEADER), one(PROTO_HEADER))?;
    req.headers_mut().remove(DST_HEADER);
    req.headers_mut().remove(PROTO_HEADER);
    match proto {
        OrigProto::Http2 => Ok((dst, Version::Http2)),
        OrigProto::Http11 => {
            let pq = req
                .uri()
                .path_and_query()
                .cloned()
                .ok_or(TargetError::BadProtocol)?;
            *req.uri_mut() = Uri::from(pq);
            *req.version_mut() = hyper::Version::HTTP_11;
            Ok((dst, Version::Http1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dst() -> SocketAddr {
        "10.1.2.3:8080".parse().unwrap()
    }

    /// The outbound rewrite; `None` when the request is handed back as it was.
    fn rewrite(req: Request<()>, version: Version) -> Option<Request<()>> {
        let before = format!("{req:?}");
        match outgoing(req, version, dst(), &addr_value(dst())) {
            Rewritten::Carried(r, _) => Some(r),
            Rewritten::AsIs(back) => {
                assert_eq!(format!("{back:?}"), before);
                None
            }
        }
    }

    #[test]
    fn an_http1_request_goes_as_h2_and_comes_back_as_sent() {
        let sent = Request::get("/a/b?q=1")
            .header(HOST, "app.example:8080")
            .header("x-kept", "yes")
            .header(DST_HEADER, "6.6.6.6:1")
            .body(())
            .unwrap();
        let mut carried = rewrite(sent, Version::Http1).unwrap();
        assert_eq!(carried.uri(), "http://app.example:8080/a/b?q=1");
        assert_eq!(carried.headers()[DST_HEADER], "10.1.2.3:8080");
        assert_eq!(carried.headers().get_all(DST_HEADER).iter().count(), 1);
        assert_eq!(incoming(&mut carried), Ok((dst(), Version::Http1)));
        assert_eq!(carried.uri(), "/a/b?q=1");
        assert_eq!(carried.version(), hyper::Version::HTTP_11);
        assert_eq!(carried.headers()[HOST], "app.example:8080");
        assert_eq!(carried.headers()["x-kept"], "yes");
        assert!(!carried.headers().contains_key(DST_HEADER));
        assert!(!carried.headers().contains_key(PROTO_HEADER));
    }

    #[test]
    fn without_host_the_authority_is_the_destination_and_no_host_appears() {
        let sent = Request::get("/").body(()).unwrap();
        let mut carried = rewrite(sent, Version::Http1).unwrap();
        assert_eq!(carried.uri(), "http://10.1.2.3:8080/");
        incoming(&mut carried).unwrap();
        assert!(!carried.headers().contains_key(HOST));
        assert_eq!(carried.uri(), "/");
    }

    #[test]
    fn only_what_writes_back_exactly_is_rewritten() {
        let http10 = Request::get("/").version(hyper::Version::HTTP_10);
        assert!(rewrite(http10.body(()).unwrap(), Version::Http1).is_none());
        let absolute = Request::get("http://other/x").body(()).unwrap();
        assert!(rewrite(absolute, Version::Http1).is_none());
        let asterisk = Request::options("*").body(()).unwrap();
        assert!(rewrite(asterisk, Version::Http1).is_none());
        let two_hosts = Request::get("/")
            .header(HOST, "a")
            .header(HOST, "b")
            .body(())
            .unwrap();
        assert!(rewrite(two_hosts, Version::Http1).is_none());
        let bad_host = Request::get("/").header(HOST, "a b").body(()).unwrap();
        assert!(rewrite(bad_host, Version::Http1).is_none());
        let connect = Request::connect("x:1").body(()).unwrap();
        assert!(rewrite(connect, Version::Http2).is_none());
        let h2 = Request::get("http://svc/rpc")
            .version(hyper::Version::HTTP_2)
            .body(())
            .unwrap();
        let mut carried = rewrite(h2, Version::Http2).unwrap();
        assert_eq!(incoming(&mut carried), Ok((dst(), Version::Http2)));
        assert_eq!(carried.uri(), "http://svc/rpc");
    }

    #[test]
    fn a_request_handed_back_unsent_is_restored() {
        let sent = Request::get("/x").header(HOST, "h").body(()).unwrap();
        let before = format!("{sent:?}");
        let Rewritten::Carried(carried, original) =
            outgoing(sent, Version::Http1, dst(), &addr_value(dst()))
        else {
            panic!("not rewritten");
        };
        assert_eq!(format!("{:?}", restore(carried, original)), before);
    }

    #[test]
    fn a_request_without_both_headers_goes_nowhere() {
        let mut r = Request::get("http://a/").body(()).unwrap();
        assert_eq!(incoming(&mut r), Err(TargetError::NoDestination));
        let mut two = Request::get("http://a/")
            .header(DST_HEADER, "10.0.0.1:80")
            .header(DST_HEADER, "10.0.0.2:80")
            .header(PROTO_HEADER, "HTTP/2")
            .body(())
            .unwrap();
        assert_eq!(incoming(&mut two), Err(TargetError::NoDestination));
    }
}
