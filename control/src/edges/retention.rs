//! Retention: decisions older than `decision_retention` and per-minute counts older than
//! `edge_bucket_retention` are deleted, a bounded chunk per table at a time so that the writer
//! is never held long. Edges themselves (first/last seen, totals) and alerts are kept: they are
//! the baseline.

use std::time::Duration;

use rusqlite::Connection;

use super::schema::bucket;

/// Rows deleted per table per pass.
pub(super) const CHUNK: i64 = 20_000;

/// How long things are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Decisions.
    pub decisions: Duration,
    /// Per-minute edge counts.
    pub buckets: Duration,
}

/// What is older than these Unix ms goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cutoffs {
    pub(super) decisions_before_ms: i64,
    /// A bucket start: buckets starting before it end before the retention cutoff, so go
    /// whole; the one holding the cutoff stays.
    pub(super) buckets_before_ms: i64,
}

impl Retention {
    /// The cutoffs at `now_ms`.
    pub(super) fn cutoffs(&self, now_ms: i64) -> Cutoffs {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let buckets = now_ms.saturating_sub(ms(self.buckets));
        Cutoffs {
            decisions_before_ms: now_ms.saturating_sub(ms(self.decisions)),
            buckets_before_ms: bucket(buckets),
        }
    }
}

/// Deletes one chunk of what is out of retention; returns (decisions, buckets) deleted. A pass
/// that deleted a full chunk should be followed by another soon.
pub(super) fn enforce(conn: &Connection, c: Cutoffs) -> rusqlite::Result<(usize, usize)> {
    let decisions = conn.execute(
        "DELETE FROM decisions WHERE id IN \
         (SELECT id FROM decisions WHERE time_ms < ?1 ORDER BY time_ms LIMIT ?2)",
        (c.decisions_before_ms, CHUNK),
    )?;
    let buckets = conn.execute(
        "DELETE FROM edge_buckets WHERE (edge_id, start_ms) IN \
         (SELECT edge_id, start_ms FROM edge_buckets WHERE start_ms < ?1 LIMIT ?2)",
        (c.buckets_before_ms, CHUNK),
    )?;
    Ok((decisions, buckets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoffs_keep_whole_minutes() {
        let r = Retention {
            decisions: Duration::from_secs(3600),
            buckets: Duration::from_secs(600),
        };
        let now = 10 * 3_600_000 + 30_000;
        let c = r.cutoffs(now);
        assert_eq!(c.decisions_before_ms, now - 3_600_000);
        // 10 minutes back is 9:50:30: the 9:50 bucket is partly inside and stays; 9:49 and
        // older end before the cutoff and go.
        assert_eq!(c.buckets_before_ms, 10 * 3_600_000 - 10 * 60_000);
        assert!(
            Retention {
                decisions: Duration::MAX,
                buckets: Duration::MAX
            }
            .cutoffs(now)
            .decisions_before_ms
                < 0
        );
    }
}
