//! The kubelet's pod list over its authenticated port (`GET https://<host>:10250/pods`): the
//! agent's service-account token as a bearer token (re-read for every request, so a rotated
//! token is used at once; never logged), the kubelet's serving certificate verified with a CA
//! file, or — weaker, and said so in the configuration — not verified at all.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, HOST};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;

/// How long one pod-list request may take, connection included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest pod list accepted (a node's 110 pods are a few MB).
const MAX_BODY: usize = 64 << 20;

/// How much of a refusal's body is quoted in the error (the kubelet says which permission is
/// missing there).
const QUOTED_BODY: usize = 300;

/// The kubelet's base URL: `https://<host>[:<port>]`, the port defaulting to
/// [`svidcar_api::well_known::KUBELET_PORT`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletUrl {
    host: String,
    port: u16,
}

impl KubeletUrl {
    /// The host, without brackets for IPv6.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` for the `Host` header.
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl Default for KubeletUrl {
    /// `https://127.0.0.1:10250`: the kubelet of this node, reached over the host network.
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: svidcar_api::well_known::KUBELET_PORT,
        }
    }
}

impl fmt::Display for KubeletUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://{}", self.authority())
    }
}

impl FromStr for KubeletUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let uri: hyper::Uri = s
            .parse()
            .map_err(|e| format!("{s:?}: not a URL ({e}); expected https://<host>:<port>"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!(
                "{s:?}: must be https:// (the token must not travel in clear; the read-only \
                 port is not supported)"
            ));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "{s:?}: give only https://<host>:<port>; /pods is added"
            ));
        }
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("{s:?}: no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Self {
            host,
            port: uri
                .port_u16()
                .unwrap_or(svidcar_api::well_known::KUBELET_PORT),
        })
    }
}

impl<'de> serde::Deserialize<'de> for KubeletUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct UrlVisitor;
        impl serde::de::Visitor<'_> for UrlVisitor {
            type Value = KubeletUrl;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the kubelet's URL, https://<host>:<port>")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<KubeletUrl, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(UrlVisitor)
    }
}

/// Why the pod list could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// The CA file cannot be used (at start-up).
    #[error("kubelet CA {}: {message}", path.display())]
    Ca {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The server name to verify the kubelet's certificate for is not a DNS name or address.
    #[error("kubelet server name {0:?}: not a DNS name or IP address")]
    ServerName(String),
    /// The TLS configuration cannot be built.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The token file cannot be read, or holds no usable token (its content is never shown).
    #[error("service-account token {}: {message}", path.display())]
    Token {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The kubelet cannot be reached, the TLS handshake failed (an unverifiable certificate
    /// among others), or HTTP failed.
    #[error("kubelet {url}: {message}")]
    Connection {
        /// The kubelet.
        url: KubeletUrl,
        /// What failed.
        message: String,
    },
    /// The kubelet answered with another status than 200 (401: token not accepted; 403: the
    /// service account may not `get` `nodes/proxy`).
    #[error("kubelet {url}/pods: HTTP {status}: {body}")]
    Status {
        /// The kubelet.
        url: KubeletUrl,
        /// The status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// No answer in time.
    #[error("kubelet {url}: no pod list within {:?}", FETCH_TIMEOUT)]
    Timeout {
        /// The kubelet.
        url: KubeletUrl,
    },
}

/// How the kubelet's serving certificate is checked.
#[derive(Debug, Clone)]
pub enum Verification {
    /// Against the CA certificates in this PEM file, for this server name.
    Ca {
        /// The CA file.
        ca_file: PathBuf,
        /// The name the certificate must carry (DNS name or IP address).
        server_name: String,
    },
    /// Not at all (`skip_kubelet_verification`).
    Skip,
}

/// A client of one kubelet's `/pods`.
#[derive(Debug, Clone)]
pub struct Kubelet {
    url: KubeletUrl,
    server_name: ServerName<'static>,
    tls: Arc<ClientConfig>,
    token_file: PathBuf,
}

/// The CA certificates of a PEM file.
fn read_roots(path: &Path) -> Result<RootCertStore, KubeletError> {
    let bad = |message: String| KubeletError::Ca {
        path: path.to_owned(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block".into()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

impl Kubelet {
    /// A client of the kubelet at `url`, reading the CA file now.
    pub fn new(
        url: KubeletUrl,
        verification: Verification,
        token_file: PathBuf,
    ) -> Result<Self, KubeletError> {
        let provider = svidcar_identity::tls::provider();
        let (config, name) = match verification {
            Verification::Ca {
                ca_file,
                server_name,
            } => (
                ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(read_roots(&ca_file)?)
                    .with_no_client_auth(),
                server_name,
            ),
            // Handshake signatures are still checked: the peer holds the key of what it shows.
            Verification::Skip => (
                svidcar_identity::tls::unverified_client_config(provider, &[])?,
                url.host().to_owned(),
            ),
        };
        let server_name =
            ServerName::try_from(name.clone()).map_err(|_| KubeletError::ServerName(name))?;
        let mut config = config;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            url,
            server_name,
            tls: Arc::new(config),
            token_file,
        })
    }

    /// The kubelet's URL.
    pub fn url(&self) -> &KubeletUrl {
        &self.url
    }

    /// The service-account token, read now (it is rotated by the kubelet).
    async fn token(&self) -> Result<HeaderValue, KubeletError> {
        let bad = |message: &str| KubeletError::Token {
            path: self.token_file.clone(),
            message: message.to_owned(),
        };
        let path = self.token_file.clone();
        let text = tokio::task::spawn_blocking(move || std::fs::read_to_string(path))
            .await
            .map_err(|_| bad("reading task failed"))?
            .map_err(|e| bad(&e.to_string()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(bad("empty"));
        }
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| bad("not a valid HTTP header value"))?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// `GET /pods`: the body of a 200 answer.
    pub async fn pods(&self) -> Result<Bytes, KubeletError> {
        tokio::time::timeout(FETCH_TIMEOUT, self.fetch())
            .await
            .map_err(|_| KubeletError::Timeout {
                url: self.url.clone(),
            })?
    }

    async fn fetch(&self) -> Result<Bytes, KubeletError> {
        let auth = self.token().await?;
        let failed = |what: &str, e: &dyn fmt::Display| KubeletError::Connection {
            url: self.url.clone(),
            message: format!("{what}: {e}"),
        };
        let tcp = TcpStream::connect((self.url.host(), self.url.port()))
            .await
            .map_err(|e| failed("connect", &e))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| failed("TLS handshake", &e))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| failed("HTTP", &e))?;
        let request = hyper::Request::get("/pods")
            .header(HOST, self.url.authority())
            .header(ACCEPT, "application/json")
            .header(AUTHORIZATION, auth)
            .body(Empty::<Bytes>::new())
            .map_err(|e| failed("request", &e))?;
        let exchange = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| failed("HTTP", &e))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| failed("reading the pod list", &e))?
                .to_bytes();
            if status != hyper::StatusCode::OK {
                let quoted: String = String::from_utf8_lossy(&body)
                    .chars()
                    .take(QUOTED_BODY)
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect();
                return Err(KubeletError::Status {
                    url: self.url.clone(),
                    status: status.as_u16(),
                    body: quoted.trim().to_owned(),
                });
            }
            Ok(body)
        };
        tokio::select! {
            biased;
            r = exchange => r,
            r = conn => Err(match r {
                Err(e) => failed("HTTP", &e),
                Ok(()) => failed("HTTP", &"connection closed before the answer"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u: KubeletUrl = "https://127.0.0.1:10250".parse().unwrap();
        assert_eq!((u.host(), u.port()), ("127.0.0.1", 10250));
        assert_eq!(u, KubeletUrl::default());
        assert_eq!(u.to_string(), "https://127.0.0.1:10250");
        let u: KubeletUrl = "https://node-1.example/".parse().unwrap();
        assert_eq!((u.host(), u.port()), ("node-1.example", 10250));
        let u: KubeletUrl = "https://[fd00::1]:11250".parse().unwrap();
        assert_eq!((u.host(), u.port()), ("fd00::1", 11250));
        assert_eq!(u.to_string(), "https://[fd00::1]:11250");
        for (bad, why) in [
            ("http://127.0.0.1:10255", "must be https://"),
            ("127.0.0.1:10250", "must be https://"),
            ("https://127.0.0.1:10250/pods", "/pods is added"),
            ("https://127.0.0.1:10250/?x=1", "give only"),
            ("https://:10250", "no host"),
            ("not a url at all", "not a URL"),
        ] {
            let e = bad.parse::<KubeletUrl>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn ca_files_are_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let token = dir.path().join("token");
        let verify = |ca_file: &Path| Verification::Ca {
            ca_file: ca_file.to_owned(),
            server_name: "node-1".into(),
        };
        let e = Kubelet::new(KubeletUrl::default(), verify(&ca), token.clone()).unwrap_err();
        assert!(e.to_string().starts_with("kubelet CA "), "{e}");
        std::fs::write(&ca, "not pem").unwrap();
        let e = Kubelet::new(KubeletUrl::default(), verify(&ca), token.clone()).unwrap_err();
        assert!(e.to_string().contains("no CERTIFICATE block"), "{e}");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["node-1".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&ca, cert.pem()).unwrap();
        Kubelet::new(KubeletUrl::default(), verify(&ca), token.clone()).unwrap();
        let bad_name = Verification::Ca {
            ca_file: ca,
            server_name: "not a name!".into(),
        };
        let e = Kubelet::new(KubeletUrl::default(), bad_name, token.clone()).unwrap_err();
        assert!(matches!(e, KubeletError::ServerName(_)), "{e}");
        Kubelet::new(KubeletUrl::default(), Verification::Skip, token).unwrap();
    }

    #[tokio::test]
    async fn the_token_is_read_per_request_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        let k = Kubelet::new(KubeletUrl::default(), Verification::Skip, token.clone()).unwrap();
        let e = k.token().await.unwrap_err().to_string();
        assert!(e.starts_with("service-account token "), "{e}");
        std::fs::write(&token, "\n").unwrap();
        assert!(k.token().await.unwrap_err().to_string().ends_with("empty"));
        std::fs::write(&token, "secret-one\n").unwrap();
        let v = k.token().await.unwrap();
        assert!(v.is_sensitive());
        assert_eq!(v.to_str().unwrap(), "Bearer secret-one");
        assert!(!format!("{v:?}").contains("secret-one"));
        std::fs::write(&token, "secret\ntwo").unwrap();
        let e = k.token().await.unwrap_err().to_string();
        assert!(
            e.contains("not a valid HTTP header value") && !e.contains("secret"),
            "{e}"
        );
    }
}
