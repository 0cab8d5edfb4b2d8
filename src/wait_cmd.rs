//! `svidcar wait`: block until the proxy's `/ready` says 200, or fail after a timeout. The
//! injector's legacy (non-native) sidecar mode runs it as the proxy container's `postStart`
//! hook, so the kubelet starts the app only once the proxy can serve it.

use std::time::Duration;

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use svidcar_identity::Dur;

/// `svidcar wait` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct WaitArgs {
    /// The proxy's admin address.
    #[arg(long, env = "SVIDCAR_ADMIN_ADDR", default_value = "127.0.0.1:15020")]
    admin: std::net::SocketAddr,
    /// Give up after this long (exit code 1).
    #[arg(long, default_value = "60s")]
    timeout: Dur,
    /// Time between two checks.
    #[arg(long, default_value = "200ms")]
    interval: Dur,
}

/// Polls `/ready` until it answers 200.
pub(crate) async fn run(args: WaitArgs) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + args.timeout.0;
    loop {
        let last = match ready(args.admin).await {
            Ok(None) => {
                eprintln!("svidcar wait: the proxy at {} is ready", args.admin);
                return Ok(());
            }
            Ok(Some(why)) => why,
            Err(e) => format!("{e:#}"),
        };
        if tokio::time::Instant::now() + args.interval.0 > deadline {
            bail!(
                "the proxy at {} was not ready within {}: {last}",
                args.admin,
                args.timeout
            );
        }
        tokio::time::sleep(args.interval.0).await;
    }
}

/// `None` when ready, else what `/ready` said.
async fn ready(admin: std::net::SocketAddr) -> anyhow::Result<Option<String>> {
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(admin)
            .await
            .with_context(|| format!("connecting to {admin}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::get("/ready")
            .header(hyper::header::HOST, admin.to_string())
            .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), 16 * 1024)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading /ready: {e}"))?
            .to_bytes();
        Ok(match status {
            hyper::StatusCode::OK => None,
            s => Some(format!(
                "/ready answered {s}: {}",
                String::from_utf8_lossy(&body).trim()
            )),
        })
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .unwrap_or_else(|_| Ok(Some(format!("/ready on {admin} did not answer within 2s"))))
}
