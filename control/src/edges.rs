//! The control plane's traffic record in SQLite (`<state_dir>/edges.db`): every decision, the
//! edge table (first/last seen and totals per edge, counts per minute), and new-edge alerts.
//!
//! Ingestion never waits: [`EdgeStore::offer`] puts a decision on a bounded queue, or drops and
//! counts it (`svidcar_control_decisions_dropped_total`) when the queue is full, so a proxy's
//! decision stream never stalls. One thread writes ([`writer`]): a batch per transaction, WAL
//! mode; queries read through their own connection meanwhile. The JSON-lines decision log
//! ([`crate::decisions`]) is still written, batch by batch, as the export format.
//!
//! New edges: after a learning period, an edge whose (source, destination, port, protocol,
//! method) is not in the table yet is raised once — a warning, a counter, a stored alert
//! (`/new-edges`), a webhook POST, and with `on_new_edge: deny` a generated DENY policy for
//! exactly that edge ([`deny`]) until it is allow-listed ([`EdgeStore::allow`]).

mod alert;
mod deny;
mod detector;
pub(crate) mod http;
mod metrics;
mod query;
mod retention;
mod schema;
mod settings;
mod webhook;
mod writer;

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::mpsc;

pub use alert::{AlertStatus, NewEdgeAlert};
pub use deny::keep_generated;
pub use query::EdgeQuery;
pub use retention::Retention;
pub use settings::{OnNewEdge, WebhookUrl};

use crate::decisions::{DecisionStore, Query, StoredDecision};
use crate::edge::EdgeRecord;
use crate::server::{ControlConfig, State};
use detector::{BaselineKey, Detector};
use metrics::EdgeMetrics;
use schema::{id_from, opt_from, protocol_from};
use writer::{now_ms, Outlet, Writer, Written};

/// The database file in the state directory.
pub const DB_FILE: &str = "edges.db";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// Opening or preparing the database.
    #[error("edge store {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A query.
    #[error("edge store: {0}")]
    Sql(#[from] rusqlite::Error),
    /// The writer thread could not start.
    #[error("edge store writer: {0}")]
    Thread(std::io::Error),
}

/// What the store needs to know (from `svidcar control`'s settings).
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    /// The database file.
    pub path: PathBuf,
    /// Decisions the write queue holds; beyond, new ones are dropped and counted.
    pub queue: usize,
    /// How long decisions and per-minute counts are kept.
    pub retention: Retention,
    /// How long after the store was first opened every new edge is learned silently.
    pub learning: Duration,
    /// Where new-edge alerts are POSTed.
    pub webhook: Option<WebhookUrl>,
    /// Alert only, or deny too.
    pub on_new_edge: OnNewEdge,
}

impl EdgeSettings {
    /// The settings of a control plane configured as `c`.
    pub fn from_config(c: &ControlConfig) -> Self {
        Self {
            path: c.state_dir.join(DB_FILE),
            queue: c.decision_queue,
            retention: Retention {
                decisions: c.decision_retention.0,
                buckets: c.edge_bucket_retention.0,
            },
            learning: c.new_edge_learning.0,
            webhook: c.new_edge_webhook.clone(),
            on_new_edge: c.on_new_edge,
        }
    }
}

/// The store: the ingest queue's sending end, a reading connection, metrics.
pub struct EdgeStore {
    queue: SyncSender<StoredDecision>,
    reader: Mutex<Connection>,
    metrics: Arc<EdgeMetrics>,
    state: Arc<State>,
}

impl std::fmt::Debug for EdgeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeStore").finish_non_exhaustive()
    }
}

/// What the writer hands on after each batch: counters, log records, generated DENYs, the
/// webhook queue.
struct Dispatch {
    metrics: Arc<EdgeMetrics>,
    state: Arc<State>,
    webhook: Option<mpsc::Sender<NewEdgeAlert>>,
}

impl Outlet for Dispatch {
    fn written(&self, w: &Written) {
        self.metrics.stored.inc_by(w.stored as u64);
        for a in &w.alerts {
            let src = a.key.source.as_ref().map(|i| i.as_str());
            let dst = a.key.destination.as_ref().map(|i| i.as_str());
            tracing::warn!(
                id = a.id,
                source = src.unwrap_or("(plaintext)"),
                destination = dst.unwrap_or("(none)"),
                port = a.key.port,
                protocol = a.key.protocol.as_str(),
                method = a.key.method.as_deref().unwrap_or(""),
                action = a.key.action.as_str(),
                reporter = %a.reporter,
                denied = a.denied,
                "new edge: never seen before (allow-list it with `svidcar decisions --allow-edge {}`)",
                a.id
            );
            self.metrics.new_edge(src, dst);
            if let Some(tx) = &self.webhook {
                if tx.try_send(a.clone()).is_err() {
                    tracing::warn!(id = a.id, "new-edge webhook queue full; alert not posted");
                }
            }
        }
        deny::install(&self.state.policies, w.alerts.iter().filter(|a| a.denied));
    }

    fn lost(&self, n: usize) {
        self.metrics.dropped.inc_by(n as u64);
    }
}

fn open_conn(path: &std::path::Path) -> Result<Connection, EdgeError> {
    let err = |source| EdgeError::Open {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        // A missing directory shows up as SQLite's "unable to open" below.
        let _ = std::fs::create_dir_all(dir);
    }
    let conn = Connection::open(path).map_err(err)?;
    schema::prepare(&conn).map_err(err)?;
    Ok(conn)
}

/// The baseline: every (source, destination, port, protocol, method) in the edge table.
fn baseline(conn: &Connection) -> rusqlite::Result<Vec<BaselineKey>> {
    let mut stmt =
        conn.prepare("SELECT DISTINCT source, destination, port, protocol, method FROM edges")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (s, d, port, proto, method) = row?;
        let key = (|| -> Result<BaselineKey, String> {
            Ok(BaselineKey {
                source: id_from(s)?,
                destination: id_from(d)?,
                port: u16::try_from(port).map_err(|e| e.to_string())?,
                protocol: protocol_from(&proto)?,
                method: opt_from(method),
            })
        })();
        match key {
            Ok(k) => out.push(k),
            Err(e) => tracing::warn!(error = %e, "damaged edge row left out of the baseline"),
        }
    }
    Ok(out)
}

impl EdgeStore {
    /// Opens (creating) the store, loads the baseline, re-installs the DENY policies of open
    /// alerts into `state`, and starts the writer (and the webhook task, on the current tokio
    /// runtime). Decisions also go to `export` when given.
    pub fn open(
        settings: EdgeSettings,
        state: Arc<State>,
        export: Option<Arc<DecisionStore>>,
    ) -> Result<Arc<Self>, EdgeError> {
        let conn = open_conn(&settings.path)?;
        let reader = open_conn(&settings.path)?;
        let started: i64 =
            schema::meta_or_init(&conn, "learning_started_ms", &now_ms().to_string())?
                .parse()
                .unwrap_or(0);
        let learning_ms = i64::try_from(settings.learning.as_millis()).unwrap_or(i64::MAX);
        let detector = Detector::new(baseline(&conn)?, started.saturating_add(learning_ms));
        if detector.learning(now_ms()) {
            tracing::info!(until = %svidcar_identity::format_unix(started.saturating_add(learning_ms) / 1000), "new edges: learning the baseline");
        }
        let open = query::alerts(&conn)?;
        deny::install(
            &state.policies,
            open.iter()
                .filter(|a| a.denied && a.status == AlertStatus::Open),
        );
        let metrics = Arc::new(
            EdgeMetrics::new()
                .unwrap_or_else(|e| unreachable!("metric definitions are static and valid: {e}")),
        );
        let webhook = settings.webhook.clone().map(|url| {
            let (tx, rx) = mpsc::channel(webhook::QUEUE);
            tokio::spawn(webhook::run(url, rx));
            tx
        });
        let (queue, rx) = sync_channel(settings.queue.max(1));
        let writer = Writer {
            conn,
            detector,
            on_new_edge: settings.on_new_edge,
            export,
            retention: settings.retention,
        };
        let dispatch = Dispatch {
            metrics: metrics.clone(),
            state: state.clone(),
            webhook,
        };
        std::thread::Builder::new()
            .name("svidcar-edges".into())
            .spawn(move || writer.run(rx, dispatch))
            .map_err(EdgeError::Thread)?;
        Ok(Arc::new(Self {
            queue,
            reader: Mutex::new(reader),
            metrics,
            state,
        }))
    }

    /// Queues a decision for the writer; `false` when it was dropped (queue full), counted.
    pub fn offer(&self, d: StoredDecision) -> bool {
        match self.queue.try_send(d) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.metrics.dropped.inc();
                false
            }
        }
    }

    fn read<R>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<R>) -> Result<R, EdgeError> {
        let conn = match self.reader.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        Ok(f(&conn)?)
    }

    /// The newest decisions matching `q`, oldest first (empty, with an error logged, when the
    /// store cannot be read).
    pub fn query(&self, q: &Query) -> Vec<StoredDecision> {
        self.read(|c| query::decisions(c, q)).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read decisions");
            Vec::new()
        })
    }

    /// Edges matching `q`, the most recently seen first.
    pub fn edges(&self, q: &EdgeQuery) -> Result<Vec<EdgeRecord>, EdgeError> {
        self.read(|c| query::edges(c, q))
    }

    /// Every new-edge alert, oldest first.
    pub fn new_edges(&self) -> Result<Vec<NewEdgeAlert>, EdgeError> {
        self.read(query::alerts)
    }

    /// Allow-lists alert `id`: marked allowed, its generated DENY (if any) lifted. Returns the
    /// alert as now stored; `None` when there is no such alert.
    pub fn allow(&self, id: i64) -> Result<Option<NewEdgeAlert>, EdgeError> {
        let Some(mut alert) = self.read(|c| query::allow(c, id))? else {
            return Ok(None);
        };
        deny::lift(&self.state.policies, id);
        if alert.status != AlertStatus::Allowed {
            let src = alert
                .key
                .source
                .as_ref()
                .map_or("(plaintext)", |i| i.as_str());
            let dst = alert
                .key
                .destination
                .as_ref()
                .map_or("(none)", |i| i.as_str());
            tracing::info!(
                id,
                source = src,
                destination = dst,
                port = alert.key.port,
                lifted_deny = alert.denied,
                "new edge allow-listed"
            );
        }
        alert.status = AlertStatus::Allowed;
        alert.denied = false;
        Ok(Some(alert))
    }

    /// Decisions written so far (since start).
    pub fn stored(&self) -> u64 {
        self.metrics.stored.get()
    }

    /// Decisions dropped so far (since start).
    pub fn dropped(&self) -> u64 {
        self.metrics.dropped.get()
    }

    /// The store's metrics in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        self.metrics.render()
    }
}

#[cfg(test)]
mod tests;
