//! HTTP detection on the first bytes a client sends: an HTTP/2 prior-knowledge preface or an
//! HTTP/1.x request line. A pure parser over untrusted bytes: it never panics, never reads past
//! the slice and decides within [`MAX_REQUEST_LINE`] bytes.

/// What the first bytes say about HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpDetection {
    /// Not enough bytes yet to decide.
    NeedMore,
    /// An HTTP/1.0 or HTTP/1.1 request line.
    Http1,
    /// The HTTP/2 connection preface (prior knowledge, e.g. gRPC).
    Http2,
    /// Something else: handled as opaque TCP.
    NotHttp,
}

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longest request line looked at; a longer one is not treated as HTTP.
pub const MAX_REQUEST_LINE: usize = 8192;

/// Longest method token accepted (`OPTIONS`, `CONNECT`, extension methods).
const MAX_METHOD: usize = 20;

/// Looks at the first bytes a client sent.
pub fn detect_http(bytes: &[u8]) -> HttpDetection {
    if bytes.is_empty() {
        return HttpDetection::NeedMore;
    }
    let n = bytes.len().min(H2_PREFACE.len());
    if bytes[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            HttpDetection::Http2
        } else {
            HttpDetection::NeedMore
        };
    }
    request_line(bytes)
}

/// `METHOD SP request-target SP HTTP/1.x CRLF`, with a token method (RFC 9110 §9, §5.6.2).
fn request_line(bytes: &[u8]) -> HttpDetection {
    let method_len = bytes.iter().take_while(|b| is_tchar(**b)).count();
    if method_len == 0 || method_len > MAX_METHOD {
        return HttpDetection::NotHttp;
    }
    match bytes.get(method_len) {
        None => return HttpDetection::NeedMore,
        Some(b' ') => {}
        Some(_) => return HttpDetection::NotHttp,
    }
    let rest = &bytes[method_len + 1..];
    let Some(end) = rest.iter().position(|b| *b == b'\n') else {
        return if bytes.len() < MAX_REQUEST_LINE && rest.iter().all(|b| is_line_byte(*b)) {
            HttpDetection::NeedMore
        } else {
            HttpDetection::NotHttp
        };
    };
    if method_len + 1 + end >= MAX_REQUEST_LINE {
        return HttpDetection::NotHttp;
    }
    let line = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
    let Some(space) = line.iter().rposition(|b| *b == b' ') else {
        return HttpDetection::NotHttp;
    };
    let (target, version) = (&line[..space], &line[space + 1..]);
    let version_ok = version == b"HTTP/1.1" || version == b"HTTP/1.0";
    if version_ok && !target.is_empty() && target.iter().all(|b| b.is_ascii_graphic()) {
        HttpDetection::Http1
    } else {
        HttpDetection::NotHttp
    }
}

/// A token character (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A byte that may appear in a request line still being received.
fn is_line_byte(b: u8) -> bool {
    b.is_ascii_graphic() || b == b' ' || b == b'\r'
}

#[cfg(test)]
mod tests {
    use super::*;
    use HttpDetection::*;

    #[test]
    fn request_lines_and_prefaces() {
        let cases: &[(&[u8], HttpDetection)] = &[
            (b"", NeedMore),
            (b"G", NeedMore),
            (b"GET", NeedMore),
            (b"GET ", NeedMore),
            (b"GET /index.html HTTP/1.1", NeedMore),
            (b"GET /index.html HTTP/1.1\r", NeedMore),
            (b"GET /index.html HTTP/1.1\r\n", Http1),
            (b"GET / HTTP/1.0\r\nHost: x\r\n\r\n", Http1),
            (b"POST /api/v1?x=1 HTTP/1.1\r\n", Http1),
            (b"OPTIONS * HTTP/1.1\r\n", Http1),
            (b"CONNECT example.org:443 HTTP/1.1\r\n", Http1),
            (b"PURGE /cache HTTP/1.1\n", Http1),
            (b"PRI", NeedMore),
            (b"PRI * HTTP/2.0\r\n", NeedMore),
            (H2_PREFACE, Http2),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04", Http2),
            // Not HTTP.
            (b"\x16\x03\x01\x00", NotHttp),
            (b"SSH-2.0-OpenSSH_9.6\r\n", NotHttp),
            (b"GET / HTTP/2.0\r\n", NotHttp),
            (b"GET / HTTP/1.1 extra\r\n", NotHttp),
            (b"GET  HTTP/1.1\r\n", NotHttp),
            (b"GET /\x01 HTTP/1.1\r\n", NotHttp),
            (b"GET /\x01", NotHttp),
            (b"get\t/ HTTP/1.1\r\n", NotHttp),
            (b" GET / HTTP/1.1\r\n", NotHttp),
            (b"*1\r\n$4\r\nPING\r\n", NotHttp),
            (b"PRX * HTTP/2.0\r\n", NotHttp),
        ];
        for (input, want) in cases {
            assert_eq!(
                detect_http(input),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn long_lines_and_methods_are_decided_not_awaited() {
        let method = "A".repeat(MAX_METHOD + 1);
        assert_eq!(
            detect_http(format!("{method} / HTTP/1.1\r\n").as_bytes()),
            NotHttp
        );
        let path = "a".repeat(MAX_REQUEST_LINE);
        assert_eq!(detect_http(format!("GET /{path}").as_bytes()), NotHttp);
        assert_eq!(
            detect_http(format!("GET /{path} HTTP/1.1\r\n").as_bytes()),
            NotHttp
        );
    }

    #[test]
    fn every_prefix_of_a_request_is_need_more_until_it_is_complete() {
        let req = b"DELETE /things/7 HTTP/1.1\r\n";
        for i in 1..req.len() - 1 {
            assert_eq!(detect_http(&req[..i]), NeedMore, "{i}");
        }
        assert_eq!(detect_http(req), Http1);
        for i in 1..H2_PREFACE.len() {
            assert_eq!(detect_http(&H2_PREFACE[..i]), NeedMore, "{i}");
        }
    }
}
