//! The store's endpoints on the control plane's query port: `GET /edges` (a JSON array of
//! [`EdgeRecord`](crate::edge::EdgeRecord)s; `since` — a duration back from now such as `15m`
//! —, `since_ms`, `source`, `destination`, `limit`), `GET /new-edges` (a JSON array of
//! alerts) and `POST /new-edges/<id>/allow` (allow-list one; from loopback callers only, like
//! every change through the query port).

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Response, StatusCode};
use svidcar_identity::Dur;

use super::query::EdgeQuery;
use super::writer::now_ms;
use super::EdgeStore;
use crate::decisions::parse_identity;
use crate::server::refuse_unless_loopback;
use crate::server::reply::{query_pairs, respond};

type Resp = Response<Full<Bytes>>;

/// Parses `/edges` parameters at `now_ms`; the error names the parameter.
pub(super) fn parse_edge_query(q: &str, now_ms: i64) -> Result<EdgeQuery, String> {
    let mut out = EdgeQuery::default();
    for (k, v) in query_pairs(q) {
        match k.as_str() {
            "since" => {
                let d: Dur = v.parse().map_err(|e| format!("since: {e}"))?;
                let back = i64::try_from(d.0.as_millis()).unwrap_or(i64::MAX);
                out.since_ms = Some(now_ms.saturating_sub(back));
            }
            "since_ms" => {
                out.since_ms = Some(
                    v.parse()
                        .map_err(|_| format!("since_ms: {v:?} is not a number"))?,
                )
            }
            "limit" => {
                out.limit = Some(
                    v.parse()
                        .map_err(|_| format!("limit: {v:?} is not a number"))?,
                )
            }
            "source" => out.source = Some(parse_identity(&v).map_err(|e| format!("source: {e}"))?),
            "destination" => {
                out.destination = Some(parse_identity(&v).map_err(|e| format!("destination: {e}"))?)
            }
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    Ok(out)
}

/// Answers the store's paths for `caller`; `None` for any other path.
pub(crate) async fn route(
    store: &Arc<EdgeStore>,
    method: &Method,
    path: &str,
    query: Option<&str>,
    caller: Option<SocketAddr>,
) -> Option<Resp> {
    let json = |v: Result<String, String>| match v {
        Ok(body) => respond(StatusCode::OK, body, true),
        Err(e) => respond(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"), false),
    };
    if path == "/edges" {
        let q = match parse_edge_query(query.unwrap_or(""), now_ms()) {
            Ok(q) => q,
            Err(e) => return Some(respond(StatusCode::BAD_REQUEST, format!("{e}\n"), false)),
        };
        let store = store.clone();
        let found = tokio::task::spawn_blocking(move || store.edges(&q))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .and_then(|e| serde_json::to_string_pretty(&e).map_err(|e| e.to_string()));
        return Some(json(found));
    }
    if path == "/new-edges" {
        let store = store.clone();
        let found = tokio::task::spawn_blocking(move || store.new_edges())
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .and_then(|a| serde_json::to_string_pretty(&a).map_err(|e| e.to_string()));
        return Some(json(found));
    }
    let id = path.strip_prefix("/new-edges/")?.strip_suffix("/allow")?;
    if method != Method::POST {
        return Some(respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST\n".into(),
            false,
        ));
    }
    if let Some(refused) = refuse_unless_loopback(caller, "new-edge alerts") {
        return Some(refused);
    }
    let Ok(id) = id.parse::<i64>() else {
        return Some(respond(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not an alert number\n"),
            false,
        ));
    };
    let store = store.clone();
    let allowed = tokio::task::spawn_blocking(move || store.allow(id))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    Some(match allowed {
        Ok(Some(a)) => respond(
            StatusCode::OK,
            serde_json::to_string_pretty(&a).unwrap_or_default(),
            true,
        ),
        Ok(None) => respond(
            StatusCode::NOT_FOUND,
            format!("no new-edge alert {id}\n"),
            false,
        ),
        Err(e) => respond(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"), false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_query_parameters() {
        let q = parse_edge_query(
            "since=15m&source=spiffe%3A%2F%2Ftd%2Fa&destination=spiffe://td/ns/*&limit=5",
            1_000_000,
        )
        .unwrap();
        assert_eq!(q.since_ms, Some(100_000));
        assert_eq!(q.source.as_deref(), Some("spiffe://td/a"));
        assert_eq!(q.destination.as_deref(), Some("spiffe://td/ns/*"));
        assert_eq!(q.limit, Some(5));
        assert_eq!(
            parse_edge_query("since_ms=42", 0).unwrap().since_ms,
            Some(42)
        );
        for (bad, says) in [
            ("since=soon", "since: "),
            ("since_ms=x", "since_ms: "),
            ("source=web", "source: "),
            ("bogus=1", "unknown parameter"),
        ] {
            let e = parse_edge_query(bad, 0).unwrap_err();
            assert!(e.starts_with(says), "{bad}: {e}");
        }
    }
}
