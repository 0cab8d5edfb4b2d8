//! The outbound side: accepts the app's plaintext connection (redirected by iptables, or on an
//! explicit route's listener), decides mesh or passthrough for its destination, and for mesh
//! originates mTLS that requires the server's expected SPIFFE ID.

mod table;

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_rustls::TlsConnector;
use tracing::Instrument;

pub use table::{DestinationTable, Target};

use crate::conn::{ConnRecord, Direction, NoTlsReason, TlsStatus};
use crate::copy::{copy_bidirectional, ByteObserver};
use crate::orig_dst::orig_dst_addr;
use crate::runtime::Shared;
use svidcar_identity::tls::handshake_failure;
use svidcar_identity::{check_leaf, SpiffeId};

/// How an outbound listener finds the destination.
#[derive(Debug, Clone)]
pub(crate) enum Routing {
    /// A static route.
    Explicit {
        /// Peer inbound address.
        upstream: SocketAddr,
        /// Identity it must present.
        server_id: SpiffeId,
    },
    /// iptables redirect plus the destination table.
    Transparent {
        /// The table.
        table: Arc<DestinationTable>,
        /// Our own listener address (a connection whose original destination is this would
        /// loop).
        listen: SocketAddr,
    },
}

/// Handles one accepted outbound connection to completion.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    app: TcpStream,
    client: SocketAddr,
    routing: Routing,
) {
    let span = tracing::info_span!("outbound", client.addr = %client, dst.addr = tracing::field::Empty, server.id = tracing::field::Empty);
    let start = Instant::now();
    let mut rec = ConnRecord::new(Direction::Outbound, client);
    proxy(&shared, app, &routing, &mut rec)
        .instrument(span)
        .await;
    shared.report(rec, start.elapsed());
}

async fn proxy(shared: &Shared, app: TcpStream, routing: &Routing, rec: &mut ConnRecord) {
    let _ = app.set_nodelay(true);
    let (dst, target) = match routing {
        Routing::Explicit {
            upstream,
            server_id,
        } => (*upstream, Target::Mesh(server_id.clone())),
        Routing::Transparent { table, listen } => {
            let dst = match orig_dst_addr(&app) {
                Ok(d) => d.0,
                Err(e) => {
                    return rec.refuse("no_original_dst", format!("SO_ORIGINAL_DST: {e}"));
                }
            };
            let local = app.local_addr().ok();
            if Some(dst) == local || dst == *listen {
                return rec.refuse("loop", "connection addressed to the proxy itself");
            }
            (dst, table.lookup(dst))
        }
    };
    rec.dst_addr = Some(dst);
    tracing::Span::current().record("dst.addr", tracing::field::display(dst));
    let limits = &shared.config.limits;
    match target {
        Target::Deny => rec.refuse(
            "destination_denied",
            "no destination entry and fallback is deny",
        ),
        Target::Passthrough => {
            rec.tls = TlsStatus::None(NoTlsReason::PassthroughDestination);
            let Some(upstream) = connect(dst, shared, rec).await else {
                return;
            };
            finish(shared, app, upstream, rec, &shared.force_close, 0).await;
        }
        Target::Mesh(expected) => {
            tracing::Span::current().record("server.id", tracing::field::display(&expected));
            // Fail closed before touching the network when we have no valid SVID.
            let Some(creds) = shared.tls.store().current() else {
                return rec.refuse("no_local_svid", "no valid local SVID");
            };
            rec.client_id = Some(creds.id().clone());
            let config = match shared.tls.client_config(&expected) {
                Ok(c) => c,
                Err(e) => return rec.refuse("tls_config", e.to_string()),
            };
            let Some(tcp) = connect(dst, shared, rec).await else {
                return;
            };
            let connector = TlsConnector::from(config);
            let name = ServerName::IpAddress(dst.ip().into());
            let tls = match timeout(limits.handshake_timeout.0, connector.connect(name, tcp)).await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    let (reason, detail) = handshake_failure(&e);
                    tracing::debug!(reason, %detail, "mesh handshake failed");
                    shared.metrics.on_handshake_failure("outbound", reason);
                    return rec.refuse(reason, detail);
                }
                Err(_) => return rec.refuse("handshake_timeout", "TLS handshake timed out"),
            };
            rec.server_id = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|leaf| check_leaf(leaf).ok())
                .map(|l| l.id);
            rec.tls = TlsStatus::MutualTls;
            finish(shared, app, tls, rec, &shared.force_close, 0).await;
        }
    }
}

/// Connects to `dst` within the connect timeout, recording a refusal on failure.
pub(crate) async fn connect(
    dst: SocketAddr,
    shared: &Shared,
    rec: &mut ConnRecord,
) -> Option<TcpStream> {
    match timeout(
        shared.config.limits.connect_timeout.0,
        TcpStream::connect(dst),
    )
    .await
    {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Some(s)
        }
        Ok(Err(e)) => {
            rec.refuse("connect_failed", format!("{dst}: {e}"));
            None
        }
        Err(_) => {
            rec.refuse("connect_timeout", format!("{dst}: timed out"));
            None
        }
    }
}

/// Copies both ways and fills the record.
pub(crate) async fn finish<A, B>(
    shared: &Shared,
    a: A,
    b: B,
    rec: &mut ConnRecord,
    cancel: &tokio_util::sync::CancellationToken,
    already_up: u64,
) where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // Byte counters move live, chunk by chunk, not only when the connection closes.
    let bytes = shared.metrics.on_open(rec);
    bytes.a_to_b(already_up);
    let idle = shared.config.limits.idle_timeout.0;
    let report = copy_bidirectional(a, b, idle, cancel, &bytes).await;
    rec.bytes_up = already_up + report.a_to_b;
    rec.bytes_down = report.b_to_a;
    rec.outcome = report.outcome.as_str();
    if let Some(e) = report.error {
        rec.reason = "io_error";
        rec.detail = e;
    }
}
