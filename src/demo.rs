//! `svidcar demo`: two services meshed through two svidcar proxies on loopback, in explicit mode,
//! with a throwaway CA. Shows an mTLS call with both identities, a call refused by secure naming,
//! and plaintext refused by a STRICT inbound.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use svidcar_control::Ca;
use svidcar_identity::{pem_source, CredentialStore, SpiffeId, TrustDomain};
use svidcar_proxy::config::{Mode, ProxyConfig, Route};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const TD: &str = "svidcar.demo";
const FRONTEND: &str = "spiffe://svidcar.demo/ns/shop/sa/frontend";
const BACKEND: &str = "spiffe://svidcar.demo/ns/shop/sa/backend";

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// The backend "legacy app": answers each line it receives.
async fn backend_app() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind(localhost()).await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply = format!("backend got {line:?}\n");
                    if w.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// A credential store loaded from PEM files written the way spiffe-helper writes them.
fn identity(
    dir: &std::path::Path,
    ca: &Ca,
    id: &str,
) -> anyhow::Result<(ProxyConfig, std::sync::Arc<CredentialStore>)> {
    let id = SpiffeId::parse(id)?;
    let svid = ca.issue(&id, Duration::from_secs(3600))?;
    let name = id.path().rsplit('/').next().unwrap_or("svid");
    let mut config = ProxyConfig::default();
    config.admin.listen = localhost();
    let (cert, key, bundle) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}_key.pem")),
        dir.join("bundle.pem"),
    );
    std::fs::write(&cert, &svid.cert_pem)?;
    std::fs::write(&key, &svid.key_pem)?;
    std::fs::write(&bundle, ca.bundle_pem())?;
    config.identity.cert = Some(cert);
    config.identity.key = Some(key);
    config.identity.bundle = Some(bundle);
    let store = CredentialStore::new();
    let paths = config.pem_paths().context("paths set above")?;
    store.set(pem_source::load(
        &paths,
        &svidcar_identity::tls::provider(),
    )?);
    Ok((config, store))
}

/// Sends lines, half-closes and reads the answer. A connection the far side refused (closed or
/// reset) yields an empty answer.
async fn exchange(addr: SocketAddr, lines: &[&str]) -> anyhow::Result<String> {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
    let mut s = TcpStream::connect(addr).await?;
    let mut out = String::new();
    let talk = async {
        for l in lines {
            s.write_all(format!("{l}\n").as_bytes()).await?;
        }
        s.shutdown().await?;
        s.read_to_string(&mut out).await
    };
    match tokio::time::timeout(Duration::from_secs(5), talk)
        .await
        .context("timed out waiting for the reply")?
    {
        Ok(_) => Ok(out),
        Err(e) if matches!(e.kind(), ConnectionReset | BrokenPipe) => Ok(String::new()),
        Err(e) => Err(e.into()),
    }
}

/// Runs the demo.
pub async fn run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = Ca::generate(&TrustDomain::parse(TD)?, Duration::from_secs(86400))?;
    println!("1. Throwaway CA for trust domain {TD}; SVIDs issued to\n   {FRONTEND}\n   {BACKEND}");

    let app = backend_app().await?;
    let (mut server_cfg, server_store) = identity(dir.path(), &ca, BACKEND)?;
    server_cfg.outbound.enabled = false;
    server_cfg.inbound.mode = Mode::Explicit;
    server_cfg.inbound.listen = localhost();
    server_cfg.inbound.app = Some(app);
    let server = svidcar_proxy::start(server_cfg, server_store).await?;
    let inbound = server.inbound_addr.context("inbound listener")?;

    let (mut client_cfg, client_store) = identity(dir.path(), &ca, FRONTEND)?;
    client_cfg.inbound.enabled = false;
    client_cfg.outbound.mode = Mode::Explicit;
    client_cfg.outbound.routes = vec![
        Route {
            listen: localhost(),
            upstream: inbound,
            server_id: SpiffeId::parse(BACKEND)?,
        },
        Route {
            listen: localhost(),
            upstream: inbound,
            server_id: SpiffeId::parse("spiffe://svidcar.demo/ns/shop/sa/payments")?,
        },
    ];
    let client = svidcar_proxy::start(client_cfg, client_store).await?;
    println!(
        "2. backend app on {app}; its svidcar inbound (STRICT mTLS) on {inbound}\n   frontend's svidcar outbound route {} -> {inbound}, expecting {BACKEND}",
        client.outbound_addrs[0]
    );

    let reply = exchange(client.outbound_addrs[0], &["GET /cart", "GET /checkout"]).await?;
    println!("3. The frontend app speaks plaintext to its local route; the backend app answered:");
    for l in reply.lines() {
        println!("   {l}");
    }
    if reply.lines().count() != 2 {
        bail!("expected two answers through the mesh, got {reply:?}");
    }

    let refused = exchange(client.outbound_addrs[1], &["GET /cart"]).await?;
    println!(
        "4. A route that expects spiffe://svidcar.demo/ns/shop/sa/payments at the same address: {}",
        if refused.is_empty() {
            "refused (secure naming: the server is not who we expected)"
        } else {
            "NOT refused"
        }
    );
    if !refused.is_empty() {
        bail!("secure naming did not refuse the wrong server");
    }

    let plain = exchange(inbound, &["GET /cart"]).await?;
    println!(
        "5. Plaintext straight to the backend's inbound, bypassing the mesh: {}",
        if plain.is_empty() {
            "refused (port is STRICT)"
        } else {
            "NOT refused"
        }
    );
    if !plain.is_empty() {
        bail!("STRICT inbound accepted plaintext");
    }
    println!("   (the access log lines above on stderr show identities, bytes and reasons)");

    client.shutdown().await;
    server.shutdown().await;
    println!("6. Both proxies drained and stopped. Demo OK.");
    Ok(())
}
