use std::time::Duration;

use svidcar_api::DecisionEvent;
use svidcar_identity::SpiffeId;
use svidcar_policy::Action;

use super::*;
use crate::edges::schema;

pub(in crate::edges) fn decision(
    t: i64,
    src: &str,
    dst: &str,
    port: u16,
    count: u64,
) -> StoredDecision {
    StoredDecision {
        event: DecisionEvent {
            time_ms: t,
            action: Action::Allow,
            source_id: Some(SpiffeId::parse(src).unwrap()),
            destination_id: Some(SpiffeId::parse(dst).unwrap()),
            source_addr: "10.0.0.1:40000".parse().unwrap(),
            destination_addr: "127.0.0.1:8080".parse().unwrap(),
            port,
            rule: None,
            reason: "default".into(),
            policy_version: "v1".into(),
            method: None,
            path: None,
            count,
        },
        reporter: dst.into(),
    }
}

fn writer(path: &std::path::Path, learning_until_ms: i64, on_new_edge: OnNewEdge) -> Writer {
    let conn = Connection::open(path).unwrap();
    schema::prepare(&conn).unwrap();
    let baseline = crate::edges::baseline(&conn).unwrap();
    Writer {
        conn,
        detector: Detector::new(baseline, learning_until_ms),
        on_new_edge,
        export: None,
        retention: Retention {
            decisions: Duration::from_secs(3600),
            buckets: Duration::from_secs(600),
        },
    }
}

fn count(w: &Writer, sql: &str) -> i64 {
    w.conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

const A: &str = "spiffe://td/a";
const B: &str = "spiffe://td/b";
const DB: &str = "spiffe://td/db";

#[test]
fn a_batch_writes_decisions_edges_and_minute_counts() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(&dir.path().join("e.db"), i64::MAX, OnNewEdge::Alert);
    let batch = [
        decision(60_000, A, DB, 5432, 1),
        decision(119_999, A, DB, 5432, 5), // a folded window of 5, same minute
        decision(120_000, A, DB, 5432, 1), // next minute
        decision(130_000, B, DB, 5432, 1),
    ];
    let (written, lines) = w.write(&batch, 0).unwrap();
    assert_eq!((written.stored, written.learned), (4, 2));
    assert!(written.alerts.is_empty(), "learning: no alerts");
    assert_eq!(
        lines.iter().filter(|b| **b == b'\n').count(),
        4,
        "the export lines"
    );
    assert_eq!(count(&w, "SELECT COUNT(*) FROM decisions"), 4);
    assert_eq!(count(&w, "SELECT COUNT(*) FROM edges"), 2);
    let (first, last, total): (i64, i64, i64) = w
        .conn
        .query_row(
            "SELECT first_seen_ms, last_seen_ms, count FROM edges WHERE source = ?1",
            [A],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((first, last, total), (60_000, 120_000, 7));
    let buckets: Vec<(i64, i64)> = w
        .conn
        .prepare("SELECT b.start_ms, b.count FROM edge_buckets b JOIN edges e ON e.id = b.edge_id WHERE e.source = ?1 ORDER BY b.start_ms")
        .unwrap()
        .query_map([A], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(buckets, vec![(60_000, 6), (120_000, 1)]);
    // A second batch adds to the same rows.
    w.write(&[decision(50_000, A, DB, 5432, 2)], 0).unwrap();
    let (first, total): (i64, i64) = w
        .conn
        .query_row(
            "SELECT first_seen_ms, count FROM edges WHERE source = ?1",
            [A],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((first, total), (50_000, 9));
    assert_eq!(count(&w, "SELECT COUNT(*) FROM edges"), 2);
}

#[test]
fn one_alert_per_new_edge_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.db");
    let mut w = writer(&path, 1_000, OnNewEdge::Alert);
    // Learned during the learning period: never an alert.
    let (learned, _) = w.write(&[decision(1, A, DB, 5432, 1)], 999).unwrap();
    assert_eq!((learned.learned, learned.alerts.len()), (1, 0));
    // After it: a new source, twice in the batch and on another port once.
    let batch = [
        decision(2, B, DB, 5432, 1),
        decision(3, B, DB, 5432, 1),
        decision(4, B, DB, 6379, 1),
        decision(5, A, DB, 5432, 1),
    ];
    let (written, _) = w.write(&batch, 2_000).unwrap();
    let alerts: Vec<(i64, Option<&str>, u16)> = written
        .alerts
        .iter()
        .map(|a| (a.id, a.key.source.as_ref().map(|s| s.as_str()), a.key.port))
        .collect();
    assert_eq!(alerts, vec![(1, Some(B), 5432), (2, Some(B), 6379)]);
    assert!(written.alerts.iter().all(|a| !a.denied && a.reporter == DB));
    let (again, _) = w.write(&batch, 3_000).unwrap();
    assert!(again.alerts.is_empty(), "the same edges again");
    drop(w);
    let mut w = writer(&path, 1_000, OnNewEdge::Alert);
    let (after_restart, _) = w.write(&batch, 4_000).unwrap();
    assert!(
        after_restart.alerts.is_empty(),
        "not after a restart either"
    );
    assert_eq!(count(&w, "SELECT COUNT(*) FROM new_edges"), 2);
}

#[test]
fn deny_mode_marks_expressible_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(&dir.path().join("e.db"), 0, OnNewEdge::Deny);
    let mut plaintext = decision(1, A, DB, 80, 1);
    plaintext.event.source_id = None;
    let (written, _) = w.write(&[decision(1, A, DB, 80, 1), plaintext], 0).unwrap();
    let denied: Vec<bool> = written.alerts.iter().map(|a| a.denied).collect();
    assert_eq!(
        denied,
        vec![true, false],
        "a caller without an ID cannot be named"
    );
}

#[test]
fn retention_deletes_old_decisions_and_counts_but_keeps_edges() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(&dir.path().join("e.db"), i64::MAX, OnNewEdge::Alert);
    let hour = 3_600_000;
    let now = 10 * hour;
    let batch = [
        decision(now - 2 * hour, A, DB, 1, 1),
        decision(now - 30 * 60_000, A, DB, 1, 1),
        decision(now - 60_000, A, DB, 1, 1),
    ];
    w.write(&batch, now).unwrap();
    let (decisions, buckets) = retention::enforce(&w.conn, w.retention.cutoffs(now)).unwrap();
    assert_eq!(
        (decisions, buckets),
        (1, 2),
        "older than 1h / older than 10m"
    );
    assert_eq!(count(&w, "SELECT COUNT(*) FROM decisions"), 2);
    assert_eq!(count(&w, "SELECT COUNT(*) FROM edge_buckets"), 1);
    assert_eq!(
        count(&w, "SELECT count FROM edges"),
        3,
        "the edge keeps its total"
    );
}

/// An outlet that remembers.
#[derive(Default)]
struct Seen {
    stored: std::sync::Mutex<Vec<usize>>,
}

impl Outlet for &Seen {
    fn written(&self, w: &Written) {
        self.stored.lock().unwrap().push(w.stored);
    }
    fn lost(&self, _: usize) {}
}

#[test]
fn the_thread_batches_what_is_queued_and_exports_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(&dir.path().join("e.db"), i64::MAX, OnNewEdge::Alert);
    let export = Arc::new(DecisionStore::open(dir.path(), 1 << 30, 1).unwrap());
    w.export = Some(export.clone());
    let (tx, rx) = std::sync::mpsc::sync_channel(10_000);
    for t in 0..5_000 {
        tx.send(decision(t, A, DB, 1, 1)).unwrap();
    }
    drop(tx);
    let seen = Seen::default();
    w.run(rx, &seen); // returns once the queue is drained and closed
    let batches = seen.stored.lock().unwrap().clone();
    assert_eq!(batches.iter().sum::<usize>(), 5_000);
    assert!(batches.len() < 5_000 / 2, "batched: {batches:?}");
    assert_eq!(
        export.query(&crate::decisions::Query::default()).len(),
        5_000
    );
}
