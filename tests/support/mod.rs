//! Shared pieces of the end-to-end tests: a throwaway PKI, echo apps, proxies on port 0 (in
//! this process, or as `svidcar` processes: `process.rs`), and raw TLS peers that present
//! whatever certificate a test hands them. Proxies get in-memory SVIDs and bounded waits come
//! from `svidcar-testkit`; `Pki::write`/`Pki::identity` still write PEM files for the tests that
//! exercise the file source or hand files to other programs.

#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure // each test binary uses a different subset

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{CertificateParams, SanType};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use svidcar_control::{Ca, IssuedSvid};
use svidcar_identity::{pem_source, CredentialStore, SpiffeId, TrustDomain};
use svidcar_proxy::config::{MtlsMode, ProxyConfig};
use svidcar_proxy::conn::ConnRecord;
use svidcar_proxy::ProxyHandle;
use svidcar_testkit::PairBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

pub(crate) mod netns;
mod process;
mod tools;
#[allow(unused_imports)] // each test binary uses a different subset
pub(crate) use process::{admin_get, scrape, ProxyBuilder, ProxyProcess};
#[allow(unused_imports)] // each test binary uses a different subset
pub(crate) use tools::{curl, run, run_ok, tool, ToolServer};

pub(crate) const TD: &str = "example.org";
pub(crate) const CLIENT_ID: &str = "spiffe://example.org/ns/default/sa/client";
pub(crate) const SERVER_ID: &str = "spiffe://example.org/ns/default/sa/server";

pub(crate) fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).expect("test SPIFFE ID")
}

/// Runs the `svidcar` binary with `args`; returns its exit code, stdout and stderr.
pub(crate) fn svidcar(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_svidcar"))
        .args(args)
        .output()
        .expect("svidcar runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub(crate) fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A trust domain's CA plus a directory for PEM files.
pub(crate) struct Pki {
    pub ca: Ca,
    pub dir: tempfile::TempDir,
}

/// PEM files of one SVID.
#[derive(Debug, Clone)]
pub(crate) struct SvidFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
}

impl Pki {
    pub(crate) fn new(td: &str) -> Self {
        let td = TrustDomain::parse(td).expect("td");
        Pki {
            ca: Ca::generate(&td, Duration::from_secs(86400)).expect("CA"),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub(crate) fn issue(&self, id_str: &str) -> IssuedSvid {
        self.ca
            .issue(&id(id_str), Duration::from_secs(3600))
            .expect("issue")
    }

    /// Issues an SVID whose parameters `tweak` changes (for refusal tests).
    pub(crate) fn issue_with(
        &self,
        id_str: &str,
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> IssuedSvid {
        let id = id(id_str);
        let mut params = self
            .ca
            .svid_params(&id, Duration::from_secs(3600))
            .expect("params");
        tweak(&mut params);
        self.ca.sign(&id, &params).expect("sign")
    }

    /// Writes an SVID as spiffe-helper would, under `name`.
    pub(crate) fn write(&self, name: &str, svid: &IssuedSvid) -> SvidFiles {
        let files = SvidFiles {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}_key.pem")),
            bundle: self.dir.path().join("bundle.pem"),
        };
        std::fs::write(&files.cert, &svid.cert_pem).expect("write cert");
        std::fs::write(&files.key, &svid.key_pem).expect("write key");
        std::fs::write(&files.bundle, self.ca.bundle_pem()).expect("write bundle");
        files
    }

    /// A store holding a fresh SVID for `id`, and the config pointing at its files.
    pub(crate) fn identity(&self, name: &str, id_str: &str) -> (ProxyConfig, Arc<CredentialStore>) {
        let files = self.write(name, &self.issue(id_str));
        let mut config = ProxyConfig::default();
        config.admin.listen = localhost();
        config.identity.cert = Some(files.cert);
        config.identity.key = Some(files.key);
        config.identity.bundle = Some(files.bundle);
        let store = CredentialStore::new();
        let paths = config.pem_paths().expect("paths");
        store.set(pem_source::load(&paths, &svidcar_identity::tls::provider()).expect("load"));
        (config, store)
    }
}

/// A TCP echo app: echoes bytes as they come and half-closes when the client does.
pub(crate) async fn echo_app() -> SocketAddr {
    svidcar_testkit::echo_app().await.expect("bind")
}

/// An app that reads the whole request (until the client half-closes), then answers.
pub(crate) async fn answer_after_eof_app(answer: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind(localhost()).await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut req = Vec::new();
                if s.read_to_end(&mut req).await.is_ok() {
                    let mut reply = format!("got {} bytes; ", req.len()).into_bytes();
                    reply.extend_from_slice(answer);
                    let _ = s.write_all(&reply).await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    addr
}

/// A client/server pair of proxies in explicit mode: route → inbound → app.
pub(crate) struct Pair {
    pub pki: Pki,
    pub client: ProxyHandle,
    pub server: ProxyHandle,
    pub route: SocketAddr,
    pub inbound: SocketAddr,
}

/// How long a server proxy here waits for a ClientHello (short, so refusals come quickly).
fn quick_detect(cfg: &mut ProxyConfig) {
    cfg.inbound.detect_timeout = svidcar_identity::Dur(Duration::from_millis(300));
}

/// A server proxy for `SERVER_ID` (in-memory SVID, admin on) in front of `app`.
pub(crate) async fn start_server(
    pki: &Pki,
    app: SocketAddr,
    mode: MtlsMode,
    tweak: impl FnOnce(&mut ProxyConfig),
) -> ProxyHandle {
    let mut cfg = svidcar_testkit::server_config(app, true);
    cfg.inbound.mtls = mode;
    quick_detect(&mut cfg);
    tweak(&mut cfg);
    svidcar_testkit::start_proxy(&pki.ca, &id(SERVER_ID), cfg)
        .await
        .expect("server proxy")
}

/// A client proxy for `CLIENT_ID` (in-memory SVID, admin on) with one route to `upstream`,
/// which must be `expect`.
pub(crate) async fn start_client(
    pki: &Pki,
    upstream: SocketAddr,
    expect: &str,
    tweak: impl FnOnce(&mut ProxyConfig),
) -> ProxyHandle {
    let mut cfg = svidcar_testkit::client_config(upstream, id(expect), true);
    tweak(&mut cfg);
    svidcar_testkit::start_proxy(&pki.ca, &id(CLIENT_ID), cfg)
        .await
        .expect("client proxy")
}

impl Pair {
    pub(crate) async fn new(app: SocketAddr) -> Pair {
        Pair::build(app, |b| b.server_config(quick_detect)).await
    }

    /// A pair in front of `app` (admin on, this file's IDs) with `options` applied to the
    /// builder.
    pub(crate) async fn build(
        app: SocketAddr,
        options: impl FnOnce(PairBuilder) -> PairBuilder,
    ) -> Pair {
        let pki = Pki::new(TD);
        let builder = PairBuilder::new(app)
            .trust_domain(TD)
            .client_id(CLIENT_ID)
            .server_id(SERVER_ID)
            .admin(true);
        let pair = options(builder)
            .start_with_ca(&pki.ca)
            .await
            .expect("proxy pair");
        Pair {
            pki,
            client: pair.client,
            server: pair.server,
            route: pair.route,
            inbound: pair.inbound,
        }
    }
}

/// Bounded waiting, shared with the benchmark and the demo.
#[allow(unused_imports)] // each test binary uses a different subset
pub(crate) use svidcar_testkit::{try_wait_for, try_wait_until, wait_for, wait_until, Wait};

/// Waits (bounded) for the next record on `rx`.
pub(crate) async fn next_record(rx: &mut broadcast::Receiver<Arc<ConnRecord>>) -> Arc<ConnRecord> {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a connection record within 10 s")
        .expect("record channel open")
}

/// Sends `payload`, half-closes, and reads everything back (bounded).
pub(crate) async fn round_trip(addr: SocketAddr, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let s = TcpStream::connect(addr).await?;
    let (mut r, mut w) = s.into_split();
    let data = payload.to_vec();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await?;
        w.shutdown().await
    });
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), r.read_to_end(&mut got))
        .await
        .map_err(|_| std::io::Error::other("timed out reading"))??;
    // A refused connection may reset the writer; what was read is what counts.
    let _ = writer.await;
    Ok(got)
}

/// Deterministic pseudo-random bytes.
pub(crate) fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A server-certificate verifier that accepts anything: for rogue clients in tests only.
#[derive(Debug)]
pub(crate) struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl AcceptAnyServer {
    pub(crate) fn new(provider: Arc<rustls::crypto::CryptoProvider>) -> Self {
        Self(provider)
    }
}

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn chain_and_key(svid: &IssuedSvid) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    (vec![svid.cert_der.clone()], svid.key_der())
}

/// Connects to `addr` as a TLS client presenting `svid` (any certificate) with `alpn`.
pub(crate) async fn rogue_client(
    addr: SocketAddr,
    svid: &IssuedSvid,
    alpn: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let provider = svidcar_identity::tls::provider();
    let (chain, key) = chain_and_key(svid);
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
        .with_client_auth_cert(chain, key)
        .map_err(std::io::Error::other)?;
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await?;
    // In TLS 1.3 the server's verdict on our certificate arrives after the client finishes:
    // exchange a byte so a refusal shows up here.
    tls.write_all(b"x").await?;
    tls.flush().await?;
    let mut b = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut b)).await {
        Ok(Ok(1)) => Ok(tls),
        Ok(Ok(_)) => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed",
        )),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::other("timed out")),
    }
}

/// A TLS server presenting `svid` that echoes; returns its address.
pub(crate) async fn rogue_server(svid: &IssuedSvid) -> SocketAddr {
    let provider = svidcar_identity::tls::provider();
    let (chain, key) = chain_and_key(svid);
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server cert");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind(localhost()).await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(s).await {
                    let (mut r, mut w) = tokio::io::split(tls);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    addr
}

/// Adds a second URI SAN.
pub(crate) fn two_uri_sans(p: &mut CertificateParams) {
    let extra = rcgen::string::Ia5String::try_from("spiffe://example.org/other").expect("ia5");
    p.subject_alt_names.push(SanType::URI(extra));
}

/// Makes the certificate a CA.
pub(crate) fn make_ca(p: &mut CertificateParams) {
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
}

/// Moves the validity window into the past.
pub(crate) fn expired(p: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - Duration::from_secs(7200);
    p.not_after = now - Duration::from_secs(3600);
}

/// One sample as parsed by the official Prometheus Python client.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Sample {
    #[serde(rename = "type")]
    pub family_type: String,
    pub name: String,
    pub labels: std::collections::HashMap<String, String>,
    pub value: f64,
}

/// Parses an exposition with `prometheus_client`'s parser (`tests/tools/parse_metrics.py`).
pub(crate) async fn parse_metrics(body: &str) -> Vec<Sample> {
    let mut child = tokio::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/tools/parse_metrics.py"
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(body.as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("parser finished")
        .unwrap();
    assert!(
        out.status.success(),
        "not valid exposition format (or prometheus_client missing: pip install prometheus_client)"
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("parser output"))
        .collect()
}

impl Sample {
    /// Whether this is a sample of `name` with (at least) these label values.
    pub(crate) fn is(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.name == name
            && labels
                .iter()
                .all(|(k, v)| self.labels.get(*k).map(String::as_str) == Some(*v))
    }
}

/// The value of the first sample of `name` with these label values.
pub(crate) fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples.iter().find(|s| s.is(name, labels)).map(|s| s.value)
}

/// The sum of the samples of `name` with these label values (over all other labels).
pub(crate) fn total(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.is(name, labels))
        .map(|s| s.value)
        .sum()
}

/// An HTTP/1.1 app answering `200 ok` to every request, one per connection.
pub(crate) async fn http_app() -> SocketAddr {
    let l = TcpListener::bind(localhost()).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}
