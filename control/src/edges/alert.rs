//! A new-edge alert as stored, listed (`/new-edges`, `svidcar decisions --new-edges`) and
//! POSTed to the webhook.

use rusqlite::Row;
use serde::{Deserialize, Serialize};

use super::schema::{action_from, id_from, opt_from, protocol_from};
use crate::edge::EdgeKey;

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    /// Raised, not yet allow-listed.
    Open,
    /// Allow-listed by an operator (`svidcar decisions --allow-edge <id>`); a generated DENY
    /// for it is lifted.
    Allowed,
}

impl AlertStatus {
    /// `open` or `allowed`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Open => "open",
            AlertStatus::Allowed => "allowed",
        }
    }
}

/// One never-seen edge, raised once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEdgeAlert {
    /// Its number (for `--allow-edge`).
    pub id: i64,
    /// The edge as first seen (its path prefix and action are those of the first decision).
    #[serde(flatten)]
    pub key: EdgeKey,
    /// The proxy that reported it.
    pub reporter: String,
    /// When it was first seen (the decision's time), Unix milliseconds.
    pub first_seen_ms: i64,
    /// Open or allowed.
    pub status: AlertStatus,
    /// Whether a generated DENY for exactly this edge is in force (`on_new_edge: deny`).
    pub denied: bool,
}

/// The columns [`from_row`] reads, in order.
pub(super) const COLUMNS: &str = "id, source, destination, port, protocol, method, path_prefix, \
                                  action, reporter, first_seen_ms, status, denied";

/// An alert from a row of `SELECT {COLUMNS} FROM new_edges`; `Ok(None)` for a damaged row.
pub(super) fn from_row(r: &Row<'_>) -> rusqlite::Result<Option<NewEdgeAlert>> {
    let parsed = (|| -> Result<NewEdgeAlert, String> {
        let text = |i: usize| r.get::<_, String>(i).map_err(|e| e.to_string());
        let num = |i: usize| r.get::<_, i64>(i).map_err(|e| e.to_string());
        Ok(NewEdgeAlert {
            id: num(0)?,
            key: EdgeKey {
                source: id_from(text(1)?)?,
                destination: id_from(text(2)?)?,
                port: u16::try_from(num(3)?).map_err(|e| e.to_string())?,
                protocol: protocol_from(&text(4)?)?,
                method: opt_from(text(5)?),
                path_prefix: opt_from(text(6)?),
                action: action_from(&text(7)?)?,
            },
            reporter: text(8)?,
            first_seen_ms: num(9)?,
            status: match text(10)?.as_str() {
                "allowed" => AlertStatus::Allowed,
                _ => AlertStatus::Open,
            },
            denied: num(11)? != 0,
        })
    })();
    match parsed {
        Ok(a) => Ok(Some(a)),
        Err(e) => {
            tracing::warn!(error = %e, "damaged new-edge row skipped");
            Ok(None)
        }
    }
}
