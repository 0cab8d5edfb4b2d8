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

/// Opens an HTTP/2 channel over mTLS to the control plane, checking its SPIFFE ID.
pub async fn connect(
    tls: &TlsContext,
    addr: std::net::SocketAddr,
    id: &SpiffeId,
) -> Result<Channel, ChannelError> {
    let config = tls.client_config_with_alpn(id, b"h2")?;
    let target = addr.to_string();
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
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(ServerName::IpAddress(peer.ip().into()), tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    })
}
