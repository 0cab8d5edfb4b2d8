//! The `http` section: which inbound ports are inspected for HTTP, and how the caller's
//! identity reaches the app.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a port carries, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    /// Detect HTTP/1.x or HTTP/2 (the default for ports not listed as opaque).
    Http,
    /// An HTTP/2 port (e.g. gRPC): inspected like `http`; the client's preface decides the
    /// version, so an HTTP/1.x client is still served.
    Http2,
    /// Never inspected: bytes go straight to the app as TCP, with no detection delay.
    Opaque,
}

impl FromStr for PortProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "http" => Ok(PortProtocol::Http),
            "http2" => Ok(PortProtocol::Http2),
            "opaque" => Ok(PortProtocol::Opaque),
            other => Err(format!("{other:?} is not http, http2 or opaque")),
        }
    }
}

impl fmt::Display for PortProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PortProtocol::Http => "http",
            PortProtocol::Http2 => "http2",
            PortProtocol::Opaque => "opaque",
        })
    }
}

/// `PORT=http|opaque`, as a flag value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortProtocolArg(pub u16, pub PortProtocol);

impl FromStr for PortProtocolArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (port, proto) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected PORT=http|http2|opaque"))?;
        let port = port
            .parse()
            .map_err(|_| format!("{s:?}: bad port {port:?}"))?;
        Ok(PortProtocolArg(
            port,
            proto.parse().map_err(|e| format!("{s:?}: {e}"))?,
        ))
    }
}

/// Server-first and binary protocols whose ports are never inspected by default (the ports
/// Linkerd and Istio treat as opaque: SMTP, submission, MySQL, Galera, PostgreSQL, Redis,
/// Elasticsearch transport, memcached).
pub const DEFAULT_OPAQUE_PORTS: [u16; 8] = [25, 587, 3306, 4444, 5432, 6379, 9300, 11211];

/// HTTP awareness on the inbound side.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Detect HTTP/1.x and HTTP/2 on inbound connections (after mesh mTLS, and plaintext on
    /// PERMISSIVE ports) and authorize, forward and count them per request. Off: every
    /// connection is opaque TCP. Default `true`.
    pub enabled: bool,
    /// App ports never inspected (server-first or binary protocols): no detection delay.
    /// Default `[25, 587, 3306, 4444, 5432, 6379, 9300, 11211]`.
    pub opaque_ports: BTreeSet<u16>,
    /// Per port: `http`, `http2` or `opaque`; wins over `opaque_ports`. Default: none.
    pub port_protocol: BTreeMap<u16, PortProtocol>,
    /// Request header that carries the verified caller's SPIFFE ID to the app; any copy sent
    /// by the caller is removed first. Default `x-svidcar-client-id`.
    pub client_id_header: String,
    /// Also set `x-forwarded-client-cert: URI=<caller SPIFFE ID>` (Envoy's form) for apps
    /// that read it; a copy sent by the caller is always removed. Default `false`.
    pub xfcc: bool,
    /// Largest request head (request line and headers) accepted, in bytes; a larger one is
    /// answered `431`. Default `65536`.
    pub max_header_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            opaque_ports: DEFAULT_OPAQUE_PORTS.into(),
            port_protocol: BTreeMap::new(),
            client_id_header: "x-svidcar-client-id".to_owned(),
            xfcc: false,
            max_header_bytes: 64 * 1024,
        }
    }
}

impl HttpConfig {
    /// Whether connections to app port `port` are inspected for HTTP.
    pub fn inspects(&self, port: u16) -> bool {
        self.enabled
            && match self.port_protocol.get(&port) {
                Some(p) => *p != PortProtocol::Opaque,
                None => !self.opaque_ports.contains(&port),
            }
    }

    /// Checks the section; returns the field and the problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let name = &self.client_id_header;
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err((
                "http.client_id_header".into(),
                format!("{name:?}: use a lower-case header name (letters, digits, '-')"),
            ));
        }
        if self.max_header_bytes < 1024 {
            return Err((
                "http.max_header_bytes".into(),
                format!("{}: must be at least 1024", self.max_header_bytes),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opaque_ports_skip_inspection_unless_a_port_says_http() {
        let mut c = HttpConfig::default();
        assert!(c.inspects(8080));
        assert!(!c.inspects(5432));
        c.port_protocol.insert(5432, PortProtocol::Http2);
        c.port_protocol.insert(8080, PortProtocol::Opaque);
        assert!(c.inspects(5432));
        assert!(!c.inspects(8080));
        c.enabled = false;
        assert!(!c.inspects(5432));
    }

    #[test]
    fn flag_values_and_validation() {
        assert_eq!(
            "9000=opaque".parse::<PortProtocolArg>(),
            Ok(PortProtocolArg(9000, PortProtocol::Opaque))
        );
        assert!("9000=tcp".parse::<PortProtocolArg>().is_err());
        assert!("x=http".parse::<PortProtocolArg>().is_err());
        let mut c = HttpConfig::default();
        assert!(c.validate().is_ok());
        c.client_id_header = "X-Caller".into();
        assert_eq!(c.validate().unwrap_err().0, "http.client_id_header");
    }
}
