//! What one sidecar tells another on a pooled tunnel connection (`well_known::TUNNEL_PORT`,
//! mTLS, HTTP/2), besides the streams' bytes.
//!
//! - A `CONNECT` stream whose authority is the original destination carries one app
//!   connection's bytes, opaque.
//! - Any other request is an app's HTTP request carried as an HTTP/2 request of its own (the
//!   way linkerd2-proxy carries HTTP/1 between proxies): [`DST_HEADER`] names the original
//!   destination and [`PROTO_HEADER`] the protocol the app spoke, so the receiving side hands
//!   the app the request in that protocol. Both headers are set by the sending sidecar (any
//!   copy from the app is replaced) and removed by the receiving one; they are trusted only
//!   on an authenticated tunnel connection.

use std::net::SocketAddr;

/// The original destination (`ip:port`) of a request carried as an HTTP/2 request.
pub const DST_HEADER: &str = "svidcar-dst";

/// The protocol the app's request was in ([`OrigProto::as_str`]).
pub const PROTO_HEADER: &str = "svidcar-orig-proto";

/// The protocol an app's request arrived in at the sending sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrigProto {
    /// HTTP/1.1 in origin form (`GET /path HTTP/1.1`): the receiving side writes it back as
    /// that, with the `Host` header it carried (if any).
    Http11,
    /// HTTP/2 (h2c, gRPC): passed on as it is.
    Http2,
}

impl OrigProto {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            OrigProto::Http11 => "HTTP/1.1",
            OrigProto::Http2 => "HTTP/2",
        }
    }

    /// The protocol a header value names; `None` for anything else (the request is refused).
    pub fn parse(value: &[u8]) -> Option<Self> {
        match value {
            b"HTTP/1.1" => Some(OrigProto::Http11),
            b"HTTP/2" => Some(OrigProto::Http2),
            _ => None,
        }
    }
}

/// Why a carried request's headers do not say where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.as_str())]
pub enum TargetError {
    /// No [`DST_HEADER`] (or more than one).
    NoDestination,
    /// [`DST_HEADER`] is not an `ip:port`.
    BadDestination,
    /// No [`PROTO_HEADER`], more than one, or a protocol this side does not know.
    BadProtocol,
}

impl TargetError {
    /// What is wrong, in words.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetError::NoDestination => "no single svidcar-dst header",
            TargetError::BadDestination => "svidcar-dst is not an ip:port",
            TargetError::BadProtocol => "no single known svidcar-orig-proto header",
        }
    }
}

/// Where a carried request goes and in which protocol, from the values of its
/// [`DST_HEADER`] and [`PROTO_HEADER`] headers (untrusted bytes, each `None` when absent).
pub fn parse_target(
    dst: Option<&[u8]>,
    proto: Option<&[u8]>,
) -> Result<(SocketAddr, OrigProto), TargetError> {
    let dst = dst.ok_or(TargetError::NoDestination)?;
    let dst = std::str::from_utf8(dst)
        .ok()
        .and_then(|d| d.parse::<SocketAddr>().ok())
        .ok_or(TargetError::BadDestination)?;
    let proto = proto
        .and_then(OrigProto::parse)
        .ok_or(TargetError::BadProtocol)?;
    Ok((dst, proto))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_only_from_both_headers() {
        let ok = parse_target(Some(b"10.0.0.5:8080"), Some(b"HTTP/1.1"));
        assert_eq!(
            ok,
            Ok(("10.0.0.5:8080".parse().unwrap(), OrigProto::Http11))
        );
        let v6 = parse_target(Some(b"[fd00::1]:80"), Some(b"HTTP/2"));
        assert_eq!(v6, Ok(("[fd00::1]:80".parse().unwrap(), OrigProto::Http2)));
        assert_eq!(
            parse_target(None, Some(b"HTTP/2")),
            Err(TargetError::NoDestination)
        );
        for bad in [&b"10.0.0.5"[..], b"app:80", b"\xff:80", b""] {
            assert_eq!(
                parse_target(Some(bad), Some(b"HTTP/2")),
                Err(TargetError::BadDestination),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_target(Some(b"10.0.0.5:80"), Some(b"HTTP/1.0")),
            Err(TargetError::BadProtocol)
        );
        assert_eq!(
            parse_target(Some(b"10.0.0.5:80"), None),
            Err(TargetError::BadProtocol)
        );
    }

    #[test]
    fn protocols_round_trip_and_nothing_else_parses() {
        for p in [OrigProto::Http11, OrigProto::Http2] {
            assert_eq!(OrigProto::parse(p.as_str().as_bytes()), Some(p));
        }
        for bad in [&b""[..], b"HTTP/1.0", b"http/1.1", b"HTTP/2 ", b"h2"] {
            assert_eq!(OrigProto::parse(bad), None, "{bad:?}");
        }
    }
}
