//! What every connection handler shares (the proxy's context), and the connection in flight:
//! its record plus the metric label handles computed once for it.

use std::sync::Arc;
use std::time::Duration;

use svidcar_identity::tls::TlsContext;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::authz::Authz;
use crate::config::ProxyConfig;
use crate::conn::ConnRecord;
use crate::metrics::{ConnLabels, Metrics};
use crate::refusal::Refusal;

/// State every connection handler shares.
#[derive(Debug)]
pub(crate) struct ProxyContext {
    pub(crate) tls: TlsContext,
    pub(crate) config: Arc<ProxyConfig>,
    /// Fires when the drain starts (the proxy stops accepting): HTTP connections finish the
    /// request in flight, answer it with `connection: close` (HTTP/1) or `GOAWAY` (HTTP/2) and
    /// close, so that none is cut with a request in flight when the grace ends.
    pub(crate) draining: CancellationToken,
    /// Fires when the drain grace period is over: open connections close.
    pub(crate) force_close: CancellationToken,
    /// Every finished connection's record, for observers (tests, metrics).
    pub(crate) records: broadcast::Sender<Arc<ConnRecord>>,
    /// Prometheus metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// Authorization policy state.
    pub(crate) authz: Arc<Authz>,
    /// Pooled tunnels to peers (`None` with `tunnel.enabled: false`).
    pub(crate) tunnels: Option<Arc<crate::tunnel::Pool>>,
    /// Keep-alive HTTP connections to the app, shared by all inbound connections.
    pub(crate) app_pool: Arc<crate::http::AppPool>,
}

/// A connection in flight.
#[derive(Debug)]
pub(crate) struct Conn {
    /// Its facts.
    pub(crate) rec: ConnRecord,
    /// Identity label handles, computed once when bytes start to flow.
    pub(crate) labels: Option<ConnLabels>,
}

impl Conn {
    pub(crate) fn new(rec: ConnRecord) -> Self {
        Self { rec, labels: None }
    }

    /// Marks the connection refused.
    pub(crate) fn refuse(&mut self, why: Refusal) {
        self.rec.refuse(why);
    }
}

impl ProxyContext {
    /// Logs a finished connection, counts it and hands its record to observers.
    pub(crate) fn report(&self, conn: Conn, elapsed: Duration) {
        let Conn { rec, labels } = conn;
        if let Some(r) = &rec.refusal {
            match rec.outcome {
                crate::conn::Outcome::Refused => r.log(),
                _ => r.log_ended(),
            }
        }
        crate::access_log::emit(&rec, elapsed);
        self.metrics.conn.on_close(&rec, labels.as_ref(), elapsed);
        // No observer is the common case; a send error only means that.
        let _ = self.records.send(Arc::new(rec));
    }
}
