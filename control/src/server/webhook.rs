//! The mutating admission webhook (`--webhook-listen`): HTTPS, `POST /inject` with an
//! `admission.k8s.io/v1` `AdmissionReview` for a Pod, answered by [`review::answer`] with the
//! JSON patch of `svidcar inject`. The serving certificate is an X.509-SVID of the control
//! plane's own ID with the Service's DNS names, issued by the CA held here and renewed at half
//! its lifetime; the API server trusts it through the `caBundle` (the trust bundle, `/bundle`).

mod review;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use svidcar_identity::SpiffeId;
use svidcar_inject::InjectConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::authority::Authority;

/// Largest review accepted: a pod object is bounded by etcd's 1.5 MiB request limit.
const MAX_BODY: usize = 4 << 20;

/// Why the webhook cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The CA cannot issue the serving certificate.
    #[error("issuing the webhook's serving certificate: {0}")]
    Issue(#[from] crate::authority::AuthorityError),
    /// The issued key cannot be used.
    #[error("the webhook's serving key: {0}")]
    Key(#[from] rustls::Error),
}

/// The serving certificate in force, swapped on renewal.
#[derive(Debug)]
struct ServingCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().map(|k| k.clone())
    }
}

/// Issues a serving certificate; returns it with how long until it should be renewed.
fn issue(
    authority: &Authority,
    id: &SpiffeId,
    dns_names: &[String],
    ttl: Duration,
    provider: &CryptoProvider,
) -> Result<(Arc<CertifiedKey>, Duration), WebhookError> {
    let svid = authority.issue_with_dns(id, dns_names, ttl)?;
    let key = provider.key_provider.load_private_key(svid.key_der())?;
    let lifetime = x509_parser::parse_x509_certificate(&svid.cert_der)
        .map(|(_, c)| c.validity().time_to_expiration())
        .ok()
        .flatten()
        .map(|d| Duration::from_secs(d.whole_seconds().max(2) as u64))
        .unwrap_or(ttl);
    let certified = CertifiedKey::new(vec![svid.cert_der.clone()], key);
    Ok((Arc::new(certified), lifetime / 2))
}

/// What the webhook needs to run.
pub(crate) struct Webhook {
    /// The CA held here.
    pub(crate) authority: Arc<Authority>,
    /// The certificate's URI SAN (the control plane's ID).
    pub(crate) id: SpiffeId,
    /// The certificate's DNS names.
    pub(crate) dns_names: Vec<String>,
    /// Lifetime of each serving certificate.
    pub(crate) ttl: Duration,
    /// How pods are injected.
    pub(crate) inject: InjectConfig,
    /// The crypto provider.
    pub(crate) provider: Arc<CryptoProvider>,
}

impl Webhook {
    /// Issues the first certificate (an error stops start-up), then serves on `listener` and
    /// renews the certificate until `stop` fires.
    pub(crate) fn start(
        self,
        listener: TcpListener,
        stop: CancellationToken,
    ) -> Result<(), WebhookError> {
        let (key, renew_in) = issue(
            &self.authority,
            &self.id,
            &self.dns_names,
            self.ttl,
            &self.provider,
        )?;
        let cert = Arc::new(ServingCert(RwLock::new(key)));
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(cert.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let inject = Arc::new(self.inject.clone());
        tokio::spawn(renew(self, cert, renew_in, stop.clone()));
        tokio::spawn(serve(listener, acceptor, inject, stop));
        Ok(())
    }
}

async fn renew(
    webhook: Webhook,
    cert: Arc<ServingCert>,
    mut renew_in: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(renew_in) => {}
        }
        renew_in = match issue(
            &webhook.authority,
            &webhook.id,
            &webhook.dns_names,
            webhook.ttl,
            &webhook.provider,
        ) {
            Ok((key, next)) => {
                if let Ok(mut slot) = cert.0.write() {
                    *slot = key;
                }
                tracing::info!("webhook serving certificate renewed");
                next
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot renew the webhook's serving certificate; retrying in 5s");
                Duration::from_secs(5)
            }
        };
    }
}

async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    inject: Arc<InjectConfig>,
    stop: CancellationToken,
) {
    let mut accept_errors = svidcar_identity::backoff::AcceptErrors::default();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    accept_errors.on_error("webhook (--webhook-listen)", &e).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let inject = inject.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::warn!(%peer, error = %e, "webhook TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(%peer, "webhook TLS handshake timed out");
                        return;
                    }
                };
            let svc = hyper::service::service_fn(move |req| route(inject.clone(), peer, req));
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "webhook connection error");
                },
                _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

async fn route(
    inject: Arc<InjectConfig>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.uri().path() != "/inject" {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            PLAIN,
            b"not found; the webhook is POST /inject\n".to_vec(),
        ));
    }
    if req.method() != Method::POST {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            b"POST an AdmissionReview\n".to_vec(),
        ));
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            tracing::warn!(%peer, error = %e, "webhook request body unreadable or over 4 MiB");
            return Ok(reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                PLAIN,
                format!("the AdmissionReview is unreadable or larger than {MAX_BODY} bytes: {e}\n")
                    .into_bytes(),
            ));
        }
    };
    Ok(match review::answer(&body, &inject) {
        review::Answer::Review(v) => {
            let resp = &v["response"];
            tracing::info!(
                %peer,
                uid = resp["uid"].as_str().unwrap_or_default(),
                allowed = resp["allowed"].as_bool().unwrap_or_default(),
                patched = resp.get("patch").is_some(),
                warning = resp["warnings"][0].as_str().unwrap_or_default(),
                refusal = resp["status"]["message"].as_str().unwrap_or_default(),
                "admission review answered"
            );
            reply(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec(&v).unwrap_or_default(),
            )
        }
        review::Answer::BadRequest(why) => {
            tracing::warn!(%peer, reason = %why, "malformed admission review");
            reply(
                StatusCode::BAD_REQUEST,
                PLAIN,
                format!("{why}\n").into_bytes(),
            )
        }
    })
}
