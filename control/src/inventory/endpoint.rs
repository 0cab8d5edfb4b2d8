//! `/identities` on the query port: the inventory as a JSON array of [`IdentityRow`], with
//! `unused_days=N` (default 30) for the unused flag.

use svidcar_identity::TrustDomain;

use super::merge::{merge, IdentityRow, MergeParams};
use super::store::IssuanceStore;
use crate::edge::EdgeRecord;
use crate::edges::EdgeQuery;

/// Days without traffic before an issued identity is flagged unused, unless the query says.
pub const DEFAULT_UNUSED_DAYS: u32 = 30;

/// Why `/identities` did not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// A query parameter is wrong (the client's mistake: 400).
    #[error("{0}")]
    Query(String),
    /// The issuance records or the edges cannot be read (ours: 503).
    #[error("{0}")]
    Store(String),
}

/// `unused_days` from the query string.
pub fn parse_unused_days(query: &str) -> Result<u32, EndpointError> {
    let mut days = DEFAULT_UNUSED_DAYS;
    for (k, v) in crate::server::reply::query_pairs(query) {
        match (k.as_str(), v) {
            ("unused_days", v) => {
                days = v.parse().map_err(|_| {
                    EndpointError::Query(format!("unused_days: {v:?} is not a number of days"))
                })?;
            }
            (other, _) => {
                return Err(EndpointError::Query(format!("unknown parameter {other:?}")));
            }
        }
    }
    Ok(days)
}

/// The inventory rows: issuance records merged with every edge `edges` returns.
pub fn identities(
    store: &IssuanceStore,
    query: &str,
    trust_domain: Option<&TrustDomain>,
    now_ms: i64,
    edges: impl FnOnce(&EdgeQuery) -> Result<Vec<EdgeRecord>, String>,
) -> Result<Vec<IdentityRow>, EndpointError> {
    let unused_days = parse_unused_days(query)?;
    let issued = store
        .all()
        .map_err(|e| EndpointError::Store(e.to_string()))?;
    let edges = edges(&EdgeQuery::default()).map_err(EndpointError::Store)?;
    Ok(merge(
        &issued,
        &edges,
        MergeParams {
            now_ms,
            unused_days,
            trust_domain,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unused_days_parameter() {
        assert_eq!(parse_unused_days(""), Ok(DEFAULT_UNUSED_DAYS));
        assert_eq!(parse_unused_days("unused_days=7"), Ok(7));
        assert!(matches!(
            parse_unused_days("unused_days=x"),
            Err(EndpointError::Query(m)) if m.contains("\"x\"")
        ));
        assert!(parse_unused_days("since=1").is_err());
    }
}
