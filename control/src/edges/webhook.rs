//! POSTs new-edge alerts as JSON to the configured webhook: a task of its own fed by a bounded
//! queue (the writer never waits for it), each alert tried [`ATTEMPTS`] times with a growing
//! pause, each try bounded by [`TIMEOUT`]. Plain HTTP/1.1; `https` with the system's roots.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::alert::NewEdgeAlert;
use super::settings::WebhookUrl;

/// Alerts waiting to be POSTed; beyond, they are only logged (they stay listed).
pub(super) const QUEUE: usize = 256;

/// Tries per alert.
const ATTEMPTS: u32 = 3;

/// One try's bound (connect, TLS, request and response).
const TIMEOUT: Duration = Duration::from_secs(5);

/// Why one POST failed.
#[derive(Debug, thiserror::Error)]
enum PostError {
    /// TCP, TLS or HTTP.
    #[error("{0}")]
    Io(String),
    /// The receiver answered with something else than 2xx.
    #[error("answered {0}")]
    Status(hyper::StatusCode),
    /// No answer in time.
    #[error("no answer within {TIMEOUT:?}")]
    Timeout,
}

/// POSTs every alert from `alerts` to `url` until the queue closes.
pub(super) async fn run(url: WebhookUrl, mut alerts: mpsc::Receiver<NewEdgeAlert>) {
    let tls = url.is_https().then(tls_connector);
    while let Some(alert) = alerts.recv().await {
        let body = serde_json::to_vec(&alert).unwrap_or_default();
        for attempt in 1..=ATTEMPTS {
            let result = tokio::time::timeout(TIMEOUT, post(&url, tls.as_ref(), body.clone()))
                .await
                .unwrap_or(Err(PostError::Timeout));
            match result {
                Ok(()) => {
                    tracing::debug!(id = alert.id, %url, "new-edge alert posted");
                    break;
                }
                Err(e) if attempt < ATTEMPTS => {
                    tracing::debug!(id = alert.id, %url, error = %e, attempt, "new-edge webhook failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500) * 2u32.pow(attempt - 1)).await;
                }
                Err(e) => {
                    tracing::warn!(id = alert.id, %url, error = %e, "new-edge webhook failed {ATTEMPTS} times; the alert stays listed at /new-edges")
                }
            }
        }
    }
}

/// A TLS connector trusting the system's roots.
fn tls_connector() -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "reading the system's trust roots for the webhook");
    }
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!("no system trust roots found: https webhooks will fail");
    }
    let config = rustls::ClientConfig::builder_with_provider(svidcar_identity::tls::provider())
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .unwrap_or_else(|e| unreachable!("the default protocol versions are supported: {e}"));
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One POST.
async fn post(
    url: &WebhookUrl,
    tls: Option<&tokio_rustls::TlsConnector>,
    body: Vec<u8>,
) -> Result<(), PostError> {
    let io = |e: &dyn std::fmt::Display| PostError::Io(e.to_string());
    let tcp = TcpStream::connect((url.host(), url.port()))
        .await
        .map_err(|e| io(&e))?;
    let path = url
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let authority = url
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let req = Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, "svidcar-control")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| io(&e))?;
    let status = match tls {
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from(url.host().to_owned())
                .map_err(|e| io(&e))?;
            let stream = tls.connect(name, tcp).await.map_err(|e| io(&e))?;
            send(TokioIo::new(stream), req).await?
        }
        None => send(TokioIo::new(tcp), req).await?,
    };
    if status.is_success() {
        Ok(())
    } else {
        Err(PostError::Status(status))
    }
}

/// Sends `req` over `io` (HTTP/1.1); returns the status once the body is read.
async fn send<I>(io: I, req: Request<Full<Bytes>>) -> Result<hyper::StatusCode, PostError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| PostError::Io(e.to_string()))?;
    let conn = tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| PostError::Io(e.to_string()))?;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    conn.abort();
    Ok(status)
}
