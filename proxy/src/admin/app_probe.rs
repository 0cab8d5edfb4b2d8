//! Runs the app's kubelet probes for the kubelet (see `svidcar_api::app_probe` for why): the
//! kubelet asks the admin port, the proxy probes the app over loopback the way the kubelet would
//! have, and answers 200 or 503 with the reason.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use svidcar_api::app_probe::{AppProbe, Scheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Why a probe failed; the text goes into the 503 body the kubelet records as the probe event.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    /// No answer within the probe's `timeoutSeconds`.
    #[error("no answer from {addr} within {secs}s")]
    Timeout {
        /// The app address probed.
        addr: SocketAddr,
        /// The probe's timeout.
        secs: u32,
    },
    /// The TCP connection (or TLS) failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The app address probed.
        addr: SocketAddr,
        /// What the OS or TLS said.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP probe of {addr}: {message}")]
    Http {
        /// The app address probed.
        addr: SocketAddr,
        /// What went wrong.
        message: String,
    },
    /// The app answered with a failing status.
    #[error("{what} answered {status}")]
    Status {
        /// The probe target.
        what: String,
        /// The answer.
        status: String,
    },
}

/// Runs `probe` against the app at `host`.
pub(crate) async fn run(probe: &AppProbe, host: IpAddr) -> Result<(), ProbeError> {
    let (port, secs) = match probe {
        AppProbe::HttpGet {
            port,
            timeout_seconds,
            ..
        }
        | AppProbe::TcpSocket {
            port,
            timeout_seconds,
        }
        | AppProbe::Grpc {
            port,
            timeout_seconds,
            ..
        } => (*port, (*timeout_seconds).max(1)),
    };
    let addr = SocketAddr::new(host, port);
    let work = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| ProbeError::Connect { addr, source })?;
        match probe {
            AppProbe::TcpSocket { .. } => Ok(()),
            AppProbe::HttpGet {
                path,
                scheme: Scheme::Http,
                http_headers,
                ..
            } => http_get(tcp, addr, path, http_headers).await,
            AppProbe::HttpGet {
                path,
                scheme: Scheme::Https,
                http_headers,
                ..
            } => {
                let config = insecure_client().map_err(|e| ProbeError::Connect {
                    addr,
                    source: std::io::Error::other(e),
                })?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(ServerName::IpAddress(host.into()), tcp)
                    .await
                    .map_err(|source| ProbeError::Connect { addr, source })?;
                http_get(tls, addr, path, http_headers).await
            }
            AppProbe::Grpc { service, .. } => grpc_check(tcp, addr, service.as_deref()).await,
        }
    };
    tokio::time::timeout(Duration::from_secs(u64::from(secs)), work)
        .await
        .unwrap_or(Err(ProbeError::Timeout { addr, secs }))
}

async fn http_get<S>(
    io: S,
    addr: SocketAddr,
    path: &str,
    headers: &[svidcar_api::app_probe::Header],
) -> Result<(), ProbeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = |message: String| ProbeError::Http { addr, message };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| http(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::USER_AGENT, "kube-probe (svidcar)")
        .header(hyper::header::ACCEPT, "*/*");
    for h in headers {
        // A Host header given in the probe replaces ours, as with the kubelet.
        if h.name.eq_ignore_ascii_case("host") {
            req.headers_mut().map(|m| m.remove(hyper::header::HOST));
        }
        req = req.header(h.name.as_str(), h.value.as_str());
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| http(format!("bad request for path {path:?}: {e}")))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| http(e.to_string()))?;
    let status = resp.status();
    // The kubelet counts 200–399 as success (a redirect it does not follow is a success too).
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(ProbeError::Status {
            what: format!("GET {path} on {addr}"),
            status: status.to_string(),
        })
    }
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse` (status 1 is SERVING).
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

const SERVING: i32 = 1;

async fn grpc_check(
    tcp: TcpStream,
    addr: SocketAddr,
    service: Option<&str>,
) -> Result<(), ProbeError> {
    use prost::Message;
    let http = |message: String| ProbeError::Http { addr, message };
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .map_err(|e| http(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let msg = HealthCheckRequest {
        service: service.unwrap_or_default().to_owned(),
    }
    .encode_to_vec();
    let mut frame = Vec::with_capacity(5 + msg.len());
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(0).to_be_bytes());
    frame.extend_from_slice(&msg);
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header(hyper::header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(frame)))
        .map_err(|e| http(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| http(e.to_string()))?;
    if resp.status() != StatusCode::OK {
        return Err(ProbeError::Status {
            what: format!("gRPC health check on {addr}"),
            status: resp.status().to_string(),
        });
    }
    let header_status = resp.headers().get("grpc-status").cloned();
    let collected = Limited::new(resp.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| http(format!("reading the answer: {e}")))?;
    let grpc_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status").cloned())
        .or(header_status);
    let grpc_status = grpc_status
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or("missing");
    if grpc_status != "0" {
        return Err(ProbeError::Status {
            what: format!("gRPC health check on {addr}"),
            status: format!("grpc-status {grpc_status}"),
        });
    }
    let body = collected.to_bytes();
    let status = body
        .get(5..)
        .and_then(|m| HealthCheckResponse::decode(m).ok())
        .map(|r| r.status);
    match status {
        Some(SERVING) => Ok(()),
        other => Err(ProbeError::Status {
            what: format!("gRPC health check on {addr}"),
            status: match other {
                Some(s) => format!("status {s} (not SERVING)"),
                None => "an unreadable HealthCheckResponse".to_owned(),
            },
        }),
    }
}

/// HTTPS probes verify no certificate, as the kubelet's do: the app's certificate is for its
/// clients, and the probe never leaves the pod.
fn insecure_client() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    svidcar_identity::tls::unverified_client_config(svidcar_identity::tls::provider(), &[])
        .map(Arc::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// A one-shot HTTP/1 server answering `status`; returns its port and the request it saw.
    async fn http_once(status: &'static str) -> (u16, tokio::task::JoinHandle<String>) {
        let l = TcpListener::bind((LO, 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
            }
            let resp = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
            s.write_all(resp.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&seen).into_owned()
        });
        (port, task)
    }

    fn get(port: u16, path: &str, headers: Vec<svidcar_api::app_probe::Header>) -> AppProbe {
        AppProbe::HttpGet {
            path: path.into(),
            port,
            scheme: Scheme::Http,
            http_headers: headers,
            timeout_seconds: 2,
        }
    }

    #[tokio::test]
    async fn http_probe_passes_on_2xx_and_3xx_and_sends_the_path_and_headers() {
        for status in ["200 OK", "302 Found"] {
            let (port, seen) = http_once(status).await;
            let header = svidcar_api::app_probe::Header {
                name: "X-Probe".into(),
                value: "yes".into(),
            };
            run(&get(port, "/healthz?full=1", vec![header]), LO)
                .await
                .unwrap();
            let seen = seen.await.unwrap();
            assert!(
                seen.starts_with("GET /healthz?full=1 HTTP/1.1\r\n"),
                "{seen}"
            );
            assert!(seen.to_ascii_lowercase().contains("x-probe: yes"), "{seen}");
        }
    }

    #[tokio::test]
    async fn http_probe_fails_on_5xx_with_the_status() {
        let (port, _seen) = http_once("500 Internal Server Error").await;
        let e = run(&get(port, "/ready", vec![]), LO).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("GET /ready on 127.0.0.1:{port} answered 500 Internal Server Error")
        );
    }

    #[tokio::test]
    async fn tcp_probe_needs_a_listener_and_a_silent_server_times_out() {
        let l = TcpListener::bind((LO, 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        let tcp = AppProbe::TcpSocket {
            port,
            timeout_seconds: 1,
        };
        run(&tcp, LO).await.unwrap();
        drop(l);
        let e = run(&tcp, LO).await.unwrap_err();
        assert!(matches!(e, ProbeError::Connect { .. }), "{e}");
        // Accepts but never answers: the HTTP probe gives up after its timeout.
        let l = TcpListener::bind((LO, 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        let e = run(&get(port, "/", vec![]), LO).await.unwrap_err();
        assert!(matches!(e, ProbeError::Timeout { secs: 2, .. }), "{e}");
        drop(l);
    }
}
