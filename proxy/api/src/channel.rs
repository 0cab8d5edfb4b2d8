//! HTTP/2 channels over mTLS to the control plane, for proxies (policy stream) and agents (node
//! API): the server is checked by its SPIFFE ID through the client config's verifier, not by
//! its name.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use svidcar_identity::tls::TlsContext;
use svidcar_identity::SpiffeId;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

/// Why a channel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The target is not a usable address.
    #[error("{target}: {message}")]
    Target {
        /// The target as given.
        target: String,
        /// What is wrong.
        message: String,
    },
    /// The TLS client configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The connection or the TLS handshake failed.
    #[error("{0}")]
    Connect(String),
}

/// A control plane's address: `HOST:PORT`, where HOST is an IP address (IPv6 in brackets) or a
/// DNS name (e.g. `svidcar-control.svidcar-system.svc:15012`), resolved at every connection so
/// a moved Service is followed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort(String);

impl HostPort {
    /// The address as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<std::net::SocketAddr> for HostPort {
    fn from(addr: std::net::SocketAddr) -> Self {
        Self(addr.to_string())
    }
}

impl std::str::FromStr for HostPort {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.parse::<std::net::SocketAddr>().is_ok() {
            return Ok(Self(s.to_owned()));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?}: expected HOST:PORT"))?;
        port.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{s:?}: port {port:?} is not a number from 1 to 65535"))?;
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
            return Err(format!(
                "{s:?}: {host:?} is neither an IP address nor a DNS name (IPv6 goes in brackets: [::1]:15012)"
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

impl serde::Serialize for HostPort {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for HostPort {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Opens an HTTP/2 channel over mTLS to the control plane, checking its SPIFFE ID.
pub async fn connect(
    tls: &TlsContext,
    addr: &HostPort,
    id: &SpiffeId,
) -> Result<Channel, ChannelError> {
    let config = tls.client_config_with_alpn(id, b"h2")?;
    let target = addr.as_str().to_owned();
    endpoint(&target)?
        .connect_with_connector(connector(target, config))
        .await
        .map_err(|e| {
            ChannelError::Connect(format!(
                "{e}: {}",
                std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            ))
        })
}

/// A channel to `target` (`host:port`) whose connections, opened when first needed and again
/// after a loss, are TLS with `config`: the server is checked by `config`'s verifier (its SPIFFE
/// ID), not by its name.
///
/// Meant for unary calls: each gets at most 15 s, and HTTP/2 keepalives find a dead
/// connection in about 30 s, so a silent network partition never stalls a caller for long.
pub fn lazy(target: &str, config: Arc<rustls::ClientConfig>) -> Result<Channel, ChannelError> {
    Ok(endpoint(target)?
        .timeout(Duration::from_secs(15))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect_with_connector_lazy(connector(target.to_owned(), config)))
}

fn endpoint(target: &str) -> Result<Endpoint, ChannelError> {
    Ok(Endpoint::from_shared(format!("http://{target}"))
        .map_err(|e| ChannelError::Target {
            target: target.to_owned(),
            message: e.to_string(),
        })?
        .connect_timeout(Duration::from_secs(5)))
}

fn connector(
    target: String,
    config: Arc<rustls::ClientConfig>,
) -> impl tower::Service<
    tonic::codegen::http::Uri,
    Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
       + Send {
    tower::service_fn(move |_uri: tonic::codegen::http::Uri| {
        let config = config.clone();
        let target = target.clone();
        async move {
            let tcp = TcpStream::connect(target.as_str()).await?;
            let _ = tcp.set_nodelay(true);
            let peer = tcp.peer_addr()?;
            // A failed handshake says why in words (e.g. "unexpected SPIFFE ID X; expected Y"),
            // not as rustls' Debug form.
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(ServerName::IpAddress(peer.ip().into()), tcp)
                .await
                .map_err(|e| {
                    std::io::Error::other(format!(
                        "TLS handshake with {peer}: {}",
                        svidcar_identity::tls::HandshakeError::classify(&e)
                    ))
                })?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::HostPort;

    #[test]
    fn host_port_forms() {
        for ok in [
            "127.0.0.1:15012",
            "[::1]:15012",
            "svidcar-control.svidcar-system.svc:15012",
            "control:1",
            "a.b.c.:443",
        ] {
            assert_eq!(ok.parse::<HostPort>().unwrap().as_str(), ok, "{ok}");
        }
        for (bad, says) in [
            ("control", "expected HOST:PORT"),
            ("control:0", "port \"0\""),
            ("control:x", "port \"x\""),
            (":15012", "neither an IP address nor a DNS name"),
            ("::1:15012", "neither an IP address nor a DNS name"),
            ("-bad.example:1", "neither"),
            ("a_b:1", "neither"),
        ] {
            let e = bad.parse::<HostPort>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
