//! `svidcar demo`: two services meshed through two svidcar proxies on loopback, in explicit mode,
//! with a throwaway CA. Shows an mTLS call with both identities, a call refused by secure naming,
//! and plaintext refused by a STRICT inbound. The SVIDs stay in memory; the pair is built by
//! `svidcar-testkit`'s `PairBuilder`, as in the end-to-end tests and the benchmark.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use svidcar_identity::SpiffeId;
use svidcar_proxy::config::Route;
use svidcar_testkit::PairBuilder;
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
pub(crate) async fn run() -> anyhow::Result<()> {
    println!("1. Throwaway CA for trust domain {TD}; SVIDs issued to\n   {FRONTEND}\n   {BACKEND}");

    let app = backend_app().await?;
    let payments = SpiffeId::parse("spiffe://svidcar.demo/ns/shop/sa/payments")?;
    let pair = PairBuilder::new(app)
        .trust_domain(TD)
        .client_id(FRONTEND)
        .server_id(BACKEND)
        .admin(true)
        .client_config(move |c| {
            // A second route to the same inbound, expecting an identity the backend lacks.
            let upstream = c.outbound.routes[0].upstream;
            c.outbound.routes.push(Route {
                listen: localhost(),
                upstream,
                server_id: payments,
                tunnel: None,
            });
        })
        .start()
        .await?;
    let (client, server, inbound) = (pair.client, pair.server, pair.inbound);
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
