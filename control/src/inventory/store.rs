//! Issuance records in the state directory (`identities.sqlite`, SQLite): one row per SPIFFE
//! ID, updated at every SVID the CA signs. Survives restarts; the one I/O edge of the inventory.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection};
use svidcar_identity::SpiffeId;

use super::merge::Issued;

/// The inventory store failed.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The database cannot be opened, read or written.
    #[error("identity inventory {path}: {source}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
}

/// One issuance to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuance<'a> {
    /// The identity signed.
    pub id: &'a SpiffeId,
    /// The node whose agent asked.
    pub node: Option<&'a str>,
    /// The registration entry's selectors, if the agent sent them.
    pub selectors: &'a [String],
    /// When, Unix seconds.
    pub at: i64,
    /// The SVID's `notAfter`, Unix seconds.
    pub not_after: i64,
    /// The SVID's serial, hex.
    pub serial: String,
}

/// `notAfter` (Unix seconds) and serial (hex) of a DER certificate.
pub fn certificate_facts(der: &[u8]) -> Option<(i64, String)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let serial = cert.tbs_certificate.raw_serial_as_string().replace(':', "");
    Some((cert.validity().not_after.timestamp(), serial))
}

/// Issuance records, by SPIFFE ID.
#[derive(Debug)]
pub struct IssuanceStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS issued (
    id TEXT PRIMARY KEY,
    node TEXT,
    selectors TEXT NOT NULL,
    first_issued INTEGER NOT NULL,
    last_issued INTEGER NOT NULL,
    not_after INTEGER NOT NULL,
    serial TEXT NOT NULL,
    count INTEGER NOT NULL
)";

impl IssuanceStore {
    /// Opens (creating) `identities.sqlite` in `dir`.
    pub fn open(dir: &Path) -> Result<Self, InventoryError> {
        let path = dir.join("identities.sqlite");
        let err = |source| InventoryError::Db {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.execute(SCHEMA, []).map_err(err)?;
        Ok(Self {
            path,
            conn: Mutex::new(conn),
        })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        match self.conn.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn err(&self, source: rusqlite::Error) -> InventoryError {
        InventoryError::Db {
            path: self.path.clone(),
            source,
        }
    }

    /// Records one issuance: a new row, or the latest issuance of a known ID (selectors kept
    /// when this request sent none).
    pub fn record(&self, i: &Issuance<'_>) -> Result<(), InventoryError> {
        let selectors = serde_json::to_string(i.selectors).unwrap_or_else(|_| "[]".into());
        self.db()
            .execute(
                "INSERT INTO issued (id, node, selectors, first_issued, last_issued, not_after, serial, count)
                 VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, 1)
                 ON CONFLICT(id) DO UPDATE SET
                   node = excluded.node,
                   selectors = CASE WHEN excluded.selectors = '[]' THEN selectors ELSE excluded.selectors END,
                   last_issued = MAX(last_issued, excluded.last_issued),
                   not_after = excluded.not_after,
                   serial = excluded.serial,
                   count = count + 1",
                params![i.id.as_str(), i.node, selectors, i.at, i.not_after, i.serial],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Every record, by ID. Rows that no longer parse (edited by hand) are skipped.
    pub fn all(&self) -> Result<Vec<Issued>, InventoryError> {
        let db = self.db();
        let mut stmt = db
            .prepare(
                "SELECT id, node, selectors, first_issued, last_issued, not_after, serial, count
                 FROM issued ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, i64>(7)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, node, selectors, first_issued, last_issued, not_after, serial, count) =
                row.map_err(|e| self.err(e))?;
            let Ok(id) = SpiffeId::parse(&id) else {
                continue;
            };
            out.push(Issued {
                id,
                node,
                selectors: serde_json::from_str(&selectors).unwrap_or_default(),
                first_issued,
                last_issued,
                not_after,
                serial,
                count: u64::try_from(count).unwrap_or(0),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuances_are_kept_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let a = SpiffeId::parse("spiffe://td/a").unwrap();
        let sel = vec!["unix:uid:1000".to_owned()];
        {
            let store = IssuanceStore::open(dir.path()).unwrap();
            let mut i = Issuance {
                id: &a,
                node: Some("n1"),
                selectors: &sel,
                at: 100,
                not_after: 200,
                serial: "01".into(),
            };
            store.record(&i).unwrap();
            i.at = 150;
            i.not_after = 250;
            i.serial = "02".into();
            i.selectors = &[];
            store.record(&i).unwrap();
        }
        let store = IssuanceStore::open(dir.path()).unwrap();
        let all = store.all().unwrap();
        assert_eq!(
            all,
            [Issued {
                id: a,
                node: Some("n1".into()),
                selectors: sel,
                first_issued: 100,
                last_issued: 150,
                not_after: 250,
                serial: "02".into(),
                count: 2,
            }]
        );
    }
}
