//! Interop with TLS stacks we did not write: curl and `openssl s_client` presenting an SVID (or a
//! plain web certificate) to the inbound, and `openssl s_server` as the mesh server behind the
//! outbound.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use support::*;
use svidcar_policy::MtlsMode;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

/// An HTTP/1.1 app answering every request with `hello from the app`.
async fn http_app() -> SocketAddr {
    let l = TcpListener::bind(localhost()).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.is_empty() {
                        let body = "hello from the app\n";
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = w.write_all(resp.as_bytes()).await;
                        let _ = w.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A line-oriented app: answers `got <line>` per line.
async fn line_app() -> SocketAddr {
    let l = TcpListener::bind(localhost()).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if w.write_all(format!("got {line}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A self-signed web server certificate (DNS SAN only), written as PEM files.
fn web_cert(pki: &Pki) -> (std::path::PathBuf, std::path::PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = pki.dir.path().join("web.pem");
    let key = pki.dir.path().join("web_key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

async fn curl(url: &str, cert: Option<(&std::path::Path, &std::path::Path)>) -> (bool, String) {
    let mut cmd = Command::new("curl");
    // -k: SVIDs carry no DNS name for curl's hostname check; the inbound verifies the client.
    cmd.args(["-sS", "-k", "--max-time", "10", url]);
    if let Some((c, k)) = cert {
        cmd.arg("--cert").arg(c).arg("--key").arg(k);
    }
    let out = tokio::time::timeout(Duration::from_secs(15), cmd.kill_on_drop(true).output())
        .await
        .expect("curl finished")
        .expect("curl runs (is it installed?)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn curl_with_an_svid_is_accepted_and_with_a_web_cert_refused() {
    let pki = Pki::new(TD);
    let server = start_server(&pki, http_app().await, MtlsMode::Strict, |_| {}).await;
    let mut log = server.subscribe();
    let url = format!("https://{}/hello", server.inbound_addr.unwrap());

    let svid = pki.write("curl", &pki.issue(CLIENT_ID));
    let (ok, body) = curl(&url, Some((&svid.cert, &svid.key))).await;
    assert!(ok, "curl with an SVID failed");
    assert_eq!(body, "hello from the app\n");
    let rec = next_record(&mut log).await;
    assert_eq!(rec.tls.mode(), "mutual_tls");
    assert_eq!(rec.client_id().map(|i| i.as_str()), Some(CLIENT_ID));

    let (cert, key) = web_cert(&pki);
    let (ok, body) = curl(&url, Some((&cert, &key))).await;
    assert!(!ok && body.is_empty(), "a web certificate was accepted");
    let rec = next_record(&mut log).await;
    assert_eq!(
        (rec.outcome.as_str(), rec.reason()),
        ("refused", "no_spiffe_id"),
        "{}",
        rec.refusal
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    );

    let (ok, _) = curl(&url, None).await;
    assert!(!ok, "no client certificate was accepted");
    assert_eq!(next_record(&mut log).await.reason(), "no_certificate");
}

/// Runs `openssl s_client`, sends a line and returns what came back within a few seconds.
async fn s_client(
    addr: SocketAddr,
    cert: &std::path::Path,
    key: &std::path::Path,
    ca: &std::path::Path,
) -> String {
    let mut child = Command::new("openssl")
        .args(["s_client", "-quiet", "-verify_return_error", "-connect"])
        .arg(addr.to_string())
        .arg("-cert")
        .arg(cert)
        .arg("-key")
        .arg(key)
        .arg("-CAfile")
        .arg(ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl runs");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let _ = stdin.write_all(b"hello svidcar\n").await;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !got.ends_with(b"\n") {
        match tokio::time::timeout_at(deadline, stdout.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let _ = child.kill().await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn openssl_s_client_with_an_svid_is_accepted_and_with_a_web_cert_refused() {
    let pki = Pki::new(TD);
    let server = start_server(&pki, line_app().await, MtlsMode::Strict, |_| {}).await;
    let inbound = server.inbound_addr.unwrap();
    let mut log = server.subscribe();
    let svid = pki.write("sclient", &pki.issue(CLIENT_ID));
    // s_client also verifies the inbound's SVID against the trust bundle.
    assert_eq!(
        s_client(inbound, &svid.cert, &svid.key, &svid.bundle).await,
        "got hello svidcar\n"
    );
    let rec = next_record(&mut log).await;
    assert_eq!(rec.client_id().map(|i| i.as_str()), Some(CLIENT_ID));

    let (cert, key) = web_cert(&pki);
    assert_eq!(s_client(inbound, &cert, &key, &svid.bundle).await, "");
    assert_eq!(next_record(&mut log).await.reason(), "no_spiffe_id");
}

#[tokio::test]
async fn openssl_s_server_is_the_mesh_server_behind_the_outbound() {
    let pki = Pki::new(TD);
    let server_svid = pki.write("sserver", &pki.issue(SERVER_ID));
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let _s_server = Command::new("openssl")
        .args([
            "s_server",
            "-quiet",
            "-rev",
            "-tls1_3",
            "-Verify",
            "2",
            "-verify_return_error",
            "-accept",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&server_svid.cert)
        .arg("-key")
        .arg(&server_svid.key)
        .arg("-CAfile")
        .arg(&server_svid.bundle)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl runs");
    let upstream = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until(
        "openssl s_server to listen",
        Duration::from_secs(10),
        || async move { TcpStream::connect(upstream).await.is_ok() },
    )
    .await;
    let client = start_client(&pki, upstream, SERVER_ID, |_| {}).await;
    let mut log = client.subscribe();
    let mut s = TcpStream::connect(client.outbound_addrs[0]).await.unwrap();
    s.write_all(b"hello svidcar\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.windows(13).any(|w| w == b"racdivs olleh") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("s_server answered")
            .unwrap();
        assert!(
            n > 0,
            "closed early; got {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    drop(s);
    let rec = next_record(&mut log).await;
    assert_eq!(rec.tls.mode(), "mutual_tls");
    assert_eq!(rec.server_id().map(|i| i.as_str()), Some(SERVER_ID));
}
