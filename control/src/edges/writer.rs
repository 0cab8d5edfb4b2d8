//! The store's one writer: a dedicated thread taking decisions from a bounded queue and writing
//! each batch (whatever is queued, up to [`MAX_BATCH`]) in one transaction — decisions, their
//! edges and per-minute counts, and the alerts of edges never seen — then exporting the batch
//! to the JSON-lines log and handing the alerts on. Retention runs between batches.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension};

use super::alert::{AlertStatus, NewEdgeAlert};
use super::deny;
use super::detector::{Detector, Seen};
use super::retention::{self, Retention};
use super::schema::{bucket, id_col, opt_col};
use super::settings::OnNewEdge;
use crate::decisions::{DecisionStore, StoredDecision};
use crate::edge::EdgeKey;

/// Decisions written per transaction at most.
pub(super) const MAX_BATCH: usize = 8192;

/// Attempts at one batch before it is given up (and its decisions counted as dropped).
const ATTEMPTS: u32 = 50;

/// How often retention runs (sooner while a pass still finds a full chunk).
const RETENTION_EVERY_MS: i64 = 60_000;

/// What one edge gathered in a batch.
#[derive(Debug)]
struct Gathered {
    key: EdgeKey,
    first_ms: i64,
    last_ms: i64,
    count: u64,
    /// The first decision's reporter (named by an alert).
    reporter: String,
    buckets: HashMap<i64, u64>,
}

/// What a written batch brought.
#[derive(Debug, Default)]
pub(super) struct Written {
    /// Decisions stored.
    pub(super) stored: usize,
    /// Edges learned silently (learning period).
    pub(super) learned: usize,
    /// New edges after learning, each raised once.
    pub(super) alerts: Vec<NewEdgeAlert>,
}

/// The writer's state.
pub(super) struct Writer {
    pub(super) conn: Connection,
    pub(super) detector: Detector,
    pub(super) on_new_edge: OnNewEdge,
    pub(super) export: Option<Arc<DecisionStore>>,
    pub(super) retention: Retention,
}

/// Where the writer reports to (I/O beyond the database).
pub(super) trait Outlet {
    /// After a commit: what was written.
    fn written(&self, w: &Written);
    /// A batch given up: its decisions are lost.
    fn lost(&self, n: usize);
}

/// Unix ms now.
pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Writer {
    /// Writes one batch in one transaction at `now_ms` (which decides learning).
    pub(super) fn write(
        &mut self,
        batch: &[StoredDecision],
        now_ms: i64,
    ) -> rusqlite::Result<(Written, Vec<u8>)> {
        let tx = self.conn.transaction()?;
        let mut lines = Vec::with_capacity(batch.len() * 320);
        let mut gathered: Vec<Gathered> = Vec::new();
        let mut index: HashMap<EdgeKey, usize> = HashMap::new();
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO decisions (time_ms, action, source, destination, record) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for d in batch {
                let e = &d.event;
                // Serializing plain strings and numbers cannot fail.
                let record = serde_json::to_string(d).unwrap_or_default();
                insert.execute((
                    e.time_ms,
                    e.action.as_str(),
                    id_col(&e.source_id),
                    id_col(&e.destination_id),
                    &record,
                ))?;
                lines.extend_from_slice(record.as_bytes());
                lines.push(b'\n');
                let key = EdgeKey::of(e);
                let n = e.count.max(1);
                let i = *index.entry(key.clone()).or_insert_with(|| {
                    gathered.push(Gathered {
                        key,
                        first_ms: e.time_ms,
                        last_ms: e.time_ms,
                        count: 0,
                        reporter: d.reporter.clone(),
                        buckets: HashMap::new(),
                    });
                    gathered.len() - 1
                });
                let g = &mut gathered[i];
                g.first_ms = g.first_ms.min(e.time_ms);
                g.last_ms = g.last_ms.max(e.time_ms);
                g.count = g.count.saturating_add(n);
                *g.buckets.entry(bucket(e.time_ms)).or_default() += n;
            }
            let mut edge = tx.prepare_cached(
                "INSERT INTO edges (source, destination, port, protocol, method, path_prefix, \
                 action, first_seen_ms, last_seen_ms, count) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
                 ON CONFLICT (source, destination, port, protocol, method, path_prefix, action) \
                 DO UPDATE SET first_seen_ms = min(first_seen_ms, excluded.first_seen_ms), \
                 last_seen_ms = max(last_seen_ms, excluded.last_seen_ms), \
                 count = count + excluded.count RETURNING id",
            )?;
            let mut bucket_row = tx.prepare_cached(
                "INSERT INTO edge_buckets (edge_id, start_ms, count) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (edge_id, start_ms) DO UPDATE SET count = count + excluded.count",
            )?;
            for g in &gathered {
                let k = &g.key;
                let id: i64 = edge.query_row(
                    (
                        id_col(&k.source),
                        id_col(&k.destination),
                        k.port,
                        k.protocol.as_str(),
                        opt_col(&k.method),
                        opt_col(&k.path_prefix),
                        k.action.as_str(),
                        g.first_ms,
                        g.last_ms,
                        i64::try_from(g.count).unwrap_or(i64::MAX),
                    ),
                    |r| r.get(0),
                )?;
                for (start, n) in &g.buckets {
                    bucket_row.execute((id, start, i64::try_from(*n).unwrap_or(i64::MAX)))?;
                }
            }
        }
        let mut written = Written {
            stored: batch.len(),
            ..Written::default()
        };
        {
            let mut alert = tx.prepare_cached(
                "INSERT INTO new_edges (source, destination, port, protocol, method, \
                 path_prefix, action, reporter, first_seen_ms, status, denied) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'open', ?10) \
                 ON CONFLICT DO NOTHING RETURNING id",
            )?;
            let by_key: HashMap<&EdgeKey, &Gathered> =
                gathered.iter().map(|g| (&g.key, g)).collect();
            for (key, seen) in self
                .detector
                .classify(gathered.iter().map(|g| &g.key), now_ms)
            {
                let g = by_key[key];
                match seen {
                    Seen::Learned => written.learned += 1,
                    Seen::New => {
                        let mut a = NewEdgeAlert {
                            id: 0,
                            key: key.clone(),
                            reporter: g.reporter.clone(),
                            first_seen_ms: g.first_ms,
                            status: AlertStatus::Open,
                            denied: false,
                        };
                        a.denied = self.on_new_edge == OnNewEdge::Deny && deny::expressible(&a);
                        // `DO NOTHING` on an alert already stored (by another writer, or before
                        // a crash that lost the edge): raised once, never twice.
                        let id: Option<i64> = alert
                            .query_row(
                                (
                                    id_col(&key.source),
                                    id_col(&key.destination),
                                    key.port,
                                    key.protocol.as_str(),
                                    opt_col(&key.method),
                                    opt_col(&key.path_prefix),
                                    key.action.as_str(),
                                    &g.reporter,
                                    g.first_ms,
                                    a.denied,
                                ),
                                |r| r.get(0),
                            )
                            .optional()?;
                        if let Some(id) = id {
                            a.id = id;
                            written.alerts.push(a);
                        }
                    }
                }
            }
        }
        tx.commit()?;
        self.detector.admit(gathered.iter().map(|g| &g.key));
        Ok((written, lines))
    }

    /// Takes batches from `queue` until every sender is gone.
    pub(super) fn run(mut self, queue: Receiver<StoredDecision>, outlet: impl Outlet) {
        let mut next_retention = now_ms();
        let mut export_failing = false;
        loop {
            let first = match queue.recv_timeout(Duration::from_secs(1)) {
                Ok(d) => d,
                Err(RecvTimeoutError::Timeout) => {
                    next_retention = self.retain(next_retention);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = Vec::with_capacity(64);
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(d) => batch.push(d),
                    Err(_) => break,
                }
            }
            let mut attempt = 0;
            let result = loop {
                attempt += 1;
                match self.write(&batch, now_ms()) {
                    Ok(done) => break Some(done),
                    Err(e) if attempt < ATTEMPTS => {
                        if attempt == 1 {
                            tracing::warn!(error = %e, decisions = batch.len(), "cannot write decisions yet; retrying (the queue holds new ones meanwhile, dropping beyond its size)");
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, decisions = batch.len(), "decisions lost: the store refused them {ATTEMPTS} times");
                        break None;
                    }
                }
            };
            match result {
                Some((written, lines)) => {
                    if let Some(export) = &self.export {
                        match export.append_lines(&lines) {
                            Ok(()) => export_failing = false,
                            Err(e) if !export_failing => {
                                export_failing = true;
                                tracing::error!(error = %e, "cannot export decisions to the JSON-lines log (they are in the store)");
                            }
                            Err(_) => {}
                        }
                    }
                    outlet.written(&written);
                }
                None => outlet.lost(batch.len()),
            }
            next_retention = self.retain(next_retention);
        }
    }

    /// Runs retention when due; returns when it is due next.
    fn retain(&self, due_ms: i64) -> i64 {
        let now = now_ms();
        if now < due_ms {
            return due_ms;
        }
        match retention::enforce(&self.conn, self.retention.cutoffs(now)) {
            Ok((decisions, buckets)) => {
                if decisions + buckets > 0 {
                    tracing::debug!(decisions, buckets, "retention: old rows deleted");
                }
                let more =
                    decisions as i64 >= retention::CHUNK || buckets as i64 >= retention::CHUNK;
                now + if more { 1_000 } else { RETENTION_EVERY_MS }
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention pass failed; trying again later");
                now + RETENTION_EVERY_MS
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests;
