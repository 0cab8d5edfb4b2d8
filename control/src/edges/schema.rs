//! The store's tables, created on open, and how our types are spelled in their columns: SQLite
//! treats NULLs as distinct in a UNIQUE key, so an absent identity, method or path prefix is
//! stored as the empty string and read back as `None`.

use rusqlite::Connection;
use svidcar_identity::SpiffeId;
use svidcar_policy::Action;

use crate::edge::Protocol;

/// The schema version in `PRAGMA user_version`.
const VERSION: i64 = 1;

/// Every table and index. `edges` holds one row per edge with first/last seen and the total;
/// `edge_buckets` the per-minute counts; `decisions` every decision (its JSON form plus the
/// columns queries filter on); `new_edges` one alert per never-seen (source, destination, port,
/// protocol, method); `meta` settings of the store itself (when learning began).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS edges (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    destination TEXT NOT NULL,
    port INTEGER NOT NULL,
    protocol TEXT NOT NULL,
    method TEXT NOT NULL,
    path_prefix TEXT NOT NULL,
    action TEXT NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    count INTEGER NOT NULL,
    UNIQUE (source, destination, port, protocol, method, path_prefix, action)
);
CREATE INDEX IF NOT EXISTS edges_source ON edges (source);
CREATE INDEX IF NOT EXISTS edges_destination ON edges (destination);
CREATE INDEX IF NOT EXISTS edges_last_seen ON edges (last_seen_ms);
CREATE TABLE IF NOT EXISTS edge_buckets (
    edge_id INTEGER NOT NULL REFERENCES edges (id),
    start_ms INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (edge_id, start_ms)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS edge_buckets_start ON edge_buckets (start_ms);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    action TEXT NOT NULL,
    source TEXT NOT NULL,
    destination TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_time ON decisions (time_ms);
CREATE INDEX IF NOT EXISTS decisions_source ON decisions (source, time_ms);
CREATE INDEX IF NOT EXISTS decisions_destination ON decisions (destination, time_ms);
CREATE TABLE IF NOT EXISTS new_edges (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    destination TEXT NOT NULL,
    port INTEGER NOT NULL,
    protocol TEXT NOT NULL,
    method TEXT NOT NULL,
    path_prefix TEXT NOT NULL,
    action TEXT NOT NULL,
    reporter TEXT NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    status TEXT NOT NULL,
    denied INTEGER NOT NULL,
    UNIQUE (source, destination, port, protocol, method)
);
";

/// The width of an `edge_buckets` row: counts per minute.
pub(super) const BUCKET_MS: i64 = 60_000;

/// The start of the bucket holding `ms`.
pub(super) fn bucket(ms: i64) -> i64 {
    ms - ms.rem_euclid(BUCKET_MS)
}

/// Sets the connection up (WAL: readers never wait for the writer; `NORMAL` sync: a crash
/// loses at most the last transactions, never the database) and creates what is missing.
pub(super) fn prepare(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version < VERSION {
        conn.pragma_update(None, "user_version", VERSION)?;
    }
    Ok(())
}

/// A meta value, set to `init` when absent; returns the stored one.
pub(super) fn meta_or_init(conn: &Connection, key: &str, init: &str) -> rusqlite::Result<String> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
        (key, init),
    )?;
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
}

/// An optional identity as stored.
pub(super) fn id_col(id: &Option<SpiffeId>) -> &str {
    id.as_ref().map_or("", |i| i.as_str())
}

/// An optional text as stored.
pub(super) fn opt_col(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("")
}

/// A stored identity; `Err` names a value that is not one (a damaged row, skipped by readers).
pub(super) fn id_from(s: String) -> Result<Option<SpiffeId>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    SpiffeId::parse(&s).map(Some).map_err(|_| s)
}

/// A stored optional text.
pub(super) fn opt_from(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// A stored protocol.
pub(super) fn protocol_from(s: &str) -> Result<Protocol, String> {
    match s {
        "tcp" => Ok(Protocol::Tcp),
        "http" => Ok(Protocol::Http),
        other => Err(other.to_owned()),
    }
}

/// A stored action.
pub(super) fn action_from(s: &str) -> Result<Action, String> {
    match s {
        "ALLOW" => Ok(Action::Allow),
        "DENY" => Ok(Action::Deny),
        "AUDIT" => Ok(Action::Audit),
        other => Err(other.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_is_created_once_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edges.db");
        let conn = Connection::open(&path).unwrap();
        prepare(&conn).unwrap();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(meta_or_init(&conn, "k", "first").unwrap(), "first");
        drop(conn);
        let conn = Connection::open(&path).unwrap();
        prepare(&conn).unwrap();
        assert_eq!(meta_or_init(&conn, "k", "second").unwrap(), "first", "kept");
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for want in [
            "edges_source",
            "edges_destination",
            "edges_last_seen",
            "edge_buckets_start",
            "decisions_time",
        ] {
            assert!(indexes.iter().any(|i| i == want), "{want}: {indexes:?}");
        }
    }

    #[test]
    fn columns_round_trip() {
        assert_eq!(bucket(125_000), 120_000);
        assert_eq!(bucket(-1), -60_000);
        let id = Some(SpiffeId::parse("spiffe://td/a").unwrap());
        assert_eq!(id_from(id_col(&id).to_owned()), Ok(id));
        assert_eq!(id_from(String::new()), Ok(None));
        assert!(id_from("not an id".into()).is_err());
        assert_eq!(opt_from(opt_col(&None).to_owned()), None);
        assert_eq!(protocol_from(Protocol::Http.as_str()), Ok(Protocol::Http));
        assert_eq!(action_from(Action::Audit.as_str()), Ok(Action::Audit));
        assert!(action_from("MAYBE").is_err());
    }
}
