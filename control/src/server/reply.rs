//! What the control plane's HTTP endpoints (the query port) share: plain or JSON responses, and
//! query strings decoded once, by `form_urlencoded` (`+` is a space, `%XX` a byte, a bad or
//! truncated escape stays as written).

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};

/// A response with `body`, as JSON or plain UTF-8 text.
pub(crate) fn respond(status: StatusCode, body: String, json: bool) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let ct = if json {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ct),
    );
    r
}

/// The decoded `key=value` pairs of a query string, in order (a key without `=` has an empty
/// value).
pub(crate) fn query_pairs(q: &str) -> impl Iterator<Item = (String, String)> + '_ {
    form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(q: &str) -> String {
        query_pairs(&format!("k={q}")).next().unwrap().1
    }

    #[test]
    fn query_values_are_decoded_once() {
        assert_eq!(
            value("spiffe%3A%2F%2Fexample.org%2Fa+b"),
            "spiffe://example.org/a b"
        );
        assert_eq!(value("%zz%4"), "%zz%4");
        assert_eq!(value("a%2"), "a%2", "a truncated escape stays");
        assert_eq!(value("%C3%A9"), "é");
        let pairs: Vec<_> = query_pairs("a=1&&b&c=%3D").collect();
        assert_eq!(
            pairs,
            [
                ("a".into(), "1".into()),
                ("b".into(), String::new()),
                ("c".into(), "=".into())
            ]
        );
    }
}
