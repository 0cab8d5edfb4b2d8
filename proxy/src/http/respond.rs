//! Responses the proxy itself gives: for a refused request, a status that fits the cause, a
//! `svidcar-proxy-error` header and a one-line body saying what happened; for gRPC, the status
//! code and message in a trailers-only response (HTTP 200).

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};

use crate::refusal::Refusal;

/// The response body type of the HTTP service.
pub(crate) type Body = BoxBody<Bytes, hyper::Error>;

/// The header naming why the proxy answered.
pub(crate) const PROXY_ERROR: &str = "svidcar-proxy-error";

/// Longest explanation put in a header.
const MAX_WORDS: usize = 300;

/// The proxy's answer to a refused request; `words` explain it (e.g. `policy denied: p#rule0`).
pub(super) fn refusal(why: &Refusal, words: &str, grpc: bool) -> Response<Body> {
    let words = header_safe(words);
    let mut resp = Response::new(empty());
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&words) {
        headers.insert(PROXY_ERROR, v);
    }
    if grpc {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from(grpc_code(why)));
        if let Ok(v) = HeaderValue::from_str(&percent_encode(&words)) {
            headers.insert("grpc-message", v);
        }
        return resp;
    }
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    *resp.status_mut() = StatusCode::from_u16(why.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
    *resp.body_mut() = full(format!("{words}\n"));
    resp
}

/// The gRPC status code for a refusal (grpc/grpc doc/statuscodes.md).
pub(super) fn grpc_code(why: &Refusal) -> u16 {
    match why.http_status() {
        403 => 7, // PERMISSION_DENIED
        504 => 4, // DEADLINE_EXCEEDED
        400 => 3, // INVALID_ARGUMENT
        _ => 14,  // UNAVAILABLE
    }
}

pub(super) fn empty() -> Body {
    full(Bytes::new())
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// Printable ASCII only, bounded: safe in a header and a log line.
fn header_safe(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .take(MAX_WORDS)
        .collect();
    if s.chars().count() > MAX_WORDS {
        out.push_str("...");
    }
    out
}

/// gRPC's percent-encoding of `grpc-message` (everything outside printable ASCII, and `%`).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_refusals_say_why_in_a_header_and_the_body() {
        let why = Refusal::PolicyDenied("no rule allows it".into());
        let r = refusal(&why, "policy denied: deny-admin#rule0", false);
        assert_eq!(r.status(), 403);
        assert_eq!(r.headers()[PROXY_ERROR], "policy denied: deny-admin#rule0");
        let r = refusal(
            &Refusal::ConnectTimeout("x".into()),
            "app unreachable",
            false,
        );
        assert_eq!(r.status(), 504);
    }

    #[test]
    fn grpc_refusals_are_trailers_only_with_a_status() {
        let why = Refusal::PolicyDenied("x".into());
        let r = refusal(&why, "policy denied: 100% sure\u{e9}", true);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["grpc-status"], "7");
        assert_eq!(r.headers()["grpc-message"], "policy denied: 100%25 sure?");
        assert_eq!(r.headers()[CONTENT_TYPE], "application/grpc");
        assert_eq!(grpc_code(&Refusal::ConnectFailed("x".into())), 14);
    }

    #[test]
    fn explanations_are_bounded_and_printable() {
        let long = "a\nb".repeat(400);
        let s = header_safe(&long);
        assert!(s.len() <= MAX_WORDS + 3 && !s.contains('\n'));
    }
}
