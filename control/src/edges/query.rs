//! Reading the store: decisions (`/decisions`, the filters of [`Query`]), edges (`/edges`,
//! [`EdgeQuery`]) and new-edge alerts (`/new-edges`). Damaged rows are skipped with a warning,
//! never fatal.

use rusqlite::types::Value;
use rusqlite::Connection;

use super::alert::{self, NewEdgeAlert};
use super::schema::{action_from, bucket, id_from, opt_from, protocol_from};
use crate::decisions::{Query, StoredDecision};
use crate::edge::{EdgeKey, EdgeRecord};

/// Filters of `/edges`; empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgeQuery {
    /// Edges seen at or after this Unix time (ms); their `count` is then the count since
    /// (by whole minutes: the minute holding it counts whole).
    pub since_ms: Option<i64>,
    /// The source: a SPIFFE ID, or a prefix ending in `*`.
    pub source: Option<String>,
    /// The destination: a SPIFFE ID, or a prefix ending in `*`.
    pub destination: Option<String>,
    /// At most this many, the most recently seen.
    pub limit: Option<usize>,
}

/// Builds a WHERE clause with positional parameters.
#[derive(Default)]
struct Filter {
    clauses: Vec<String>,
    params: Vec<Value>,
}

impl Filter {
    fn param(&mut self, v: impl Into<Value>) -> String {
        self.params.push(v.into());
        format!("?{}", self.params.len())
    }

    /// `column` matches `want` (exact, or a `prefix*`), as one condition.
    fn identity(&mut self, columns: &[&str], want: &str) -> String {
        let ors: Vec<String> = columns
            .iter()
            .map(|col| match want.strip_suffix('*') {
                // A range over the column keeps its index usable (unlike LIKE or substr).
                Some(prefix) => match prefix_end(prefix) {
                    Some(end) => {
                        let (a, b) = (self.param(prefix.to_owned()), self.param(end));
                        format!("({col} >= {a} AND {col} < {b})")
                    }
                    None => {
                        let a = self.param(prefix.to_owned());
                        format!("substr({col}, 1, length({a})) = {a}")
                    }
                },
                None => {
                    let a = self.param(want.to_owned());
                    format!("{col} = {a}")
                }
            })
            .collect();
        format!("({})", ors.join(" OR "))
    }

    fn push(&mut self, clause: String) {
        self.clauses.push(clause);
    }

    fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }
}

/// The smallest string greater than every string starting with `prefix` (its last character
/// incremented); `None` when there is none to increment to.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    let last = chars.pop()?;
    let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32)?;
    chars.push(next);
    Some(chars.into_iter().collect())
}

/// The newest decisions matching `q`, oldest first.
pub(super) fn decisions(conn: &Connection, q: &Query) -> rusqlite::Result<Vec<StoredDecision>> {
    let mut f = Filter::default();
    if let Some(want) = &q.identity {
        let c = f.identity(&["source", "destination"], want);
        f.push(c);
    }
    if let Some(a) = &q.action {
        let p = f.param(a.to_ascii_uppercase());
        f.push(format!("action = {p}"));
    }
    if let Some(t) = q.since_ms {
        let p = f.param(t);
        f.push(format!("time_ms >= {p}"));
    }
    if let Some(t) = q.until_ms {
        let p = f.param(t);
        f.push(format!("time_ms <= {p}"));
    }
    let limit = q.limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
    let lp = f.param(limit);
    let sql = format!(
        "SELECT record FROM decisions{} ORDER BY time_ms DESC, id DESC LIMIT {lp}",
        f.sql()
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(f.params.iter()), |r| {
        r.get::<_, String>(0)
    })?;
    let mut out = Vec::new();
    for row in rows {
        match serde_json::from_str::<StoredDecision>(&row?) {
            Ok(d) => out.push(d),
            Err(e) => tracing::warn!(error = %e, "damaged decision row skipped"),
        }
    }
    out.reverse();
    Ok(out)
}

/// Edges matching `q`, the most recently seen first.
pub(super) fn edges(conn: &Connection, q: &EdgeQuery) -> rusqlite::Result<Vec<EdgeRecord>> {
    let mut f = Filter::default();
    if let Some(want) = &q.source {
        let c = f.identity(&["source"], want);
        f.push(c);
    }
    if let Some(want) = &q.destination {
        let c = f.identity(&["destination"], want);
        f.push(c);
    }
    let count = match q.since_ms {
        Some(since) => {
            let p = f.param(since);
            f.push(format!("last_seen_ms >= {p}"));
            let b = f.param(bucket(since));
            format!(
                "(SELECT COALESCE(SUM(b.count), 0) FROM edge_buckets b \
                 WHERE b.edge_id = e.id AND b.start_ms >= {b})"
            )
        }
        None => "count".to_owned(),
    };
    let limit = q.limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
    let lp = f.param(limit);
    let sql = format!(
        "SELECT source, destination, port, protocol, method, path_prefix, action, \
         first_seen_ms, last_seen_ms, {count} FROM edges e{} \
         ORDER BY last_seen_ms DESC, id LIMIT {lp}",
        f.sql()
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(f.params.iter()), |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, String>(6)?,
            r.get::<_, i64>(7)?,
            r.get::<_, i64>(8)?,
            r.get::<_, i64>(9)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (src, dst, port, proto, method, path, action, first, last, count) = row?;
        let record = (|| -> Result<EdgeRecord, String> {
            Ok(EdgeRecord {
                key: EdgeKey {
                    source: id_from(src)?,
                    destination: id_from(dst)?,
                    port: u16::try_from(port).map_err(|e| e.to_string())?,
                    protocol: protocol_from(&proto)?,
                    method: opt_from(method),
                    path_prefix: opt_from(path),
                    action: action_from(&action)?,
                },
                first_seen_ms: first,
                last_seen_ms: last,
                count: u64::try_from(count).unwrap_or(0),
            })
        })();
        match record {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!(error = %e, "damaged edge row skipped"),
        }
    }
    Ok(out)
}

/// Every new-edge alert, oldest first.
pub(super) fn alerts(conn: &Connection) -> rusqlite::Result<Vec<NewEdgeAlert>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {} FROM new_edges ORDER BY id",
        alert::COLUMNS
    ))?;
    let rows = stmt.query_map([], alert::from_row)?;
    let mut out = Vec::new();
    for row in rows {
        out.extend(row?);
    }
    Ok(out)
}

/// Allow-lists alert `id`; returns it as it was before (`None`: no such alert).
pub(super) fn allow(conn: &Connection, id: i64) -> rusqlite::Result<Option<NewEdgeAlert>> {
    let before = conn
        .prepare_cached(&format!(
            "SELECT {} FROM new_edges WHERE id = ?1",
            alert::COLUMNS
        ))?
        .query_row([id], alert::from_row);
    let before = match before {
        Ok(a) => a,
        Err(rusqlite::Error::QueryReturnedNoRows) => return Ok(None),
        Err(e) => return Err(e),
    };
    conn.execute(
        "UPDATE new_edges SET status = 'allowed', denied = 0 WHERE id = ?1",
        [id],
    )?;
    Ok(before)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(
            prefix_end("spiffe://td/ns/").as_deref(),
            Some("spiffe://td/ns0")
        );
        assert_eq!(prefix_end("a\u{d7ff}").as_deref(), Some("a\u{e000}"));
        assert_eq!(prefix_end(""), None);
        assert_eq!(prefix_end("\u{10ffff}"), None);
    }
}
