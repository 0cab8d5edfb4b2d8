//! The control plane's HTTP endpoint: `/decisions` (query the decision log), `/proxies`
//! (subscribed proxies, versions sent and acknowledged, rejections), `/nodes` (agents that used
//! the node API since start), `/policies`, `/bundle`, `/metrics`, `/live`.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::reply::{query_pairs, respond};
use super::state::State;
use crate::decisions::{parse_action, parse_identity, FilterError, Query};
use crate::edges::EdgeStore;

/// Why a `/decisions` query is refused (the client's mistake: `400 Bad Request`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A numeric parameter holds something else.
    #[error("{param}: {value:?} is not a number")]
    NotANumber {
        /// The parameter.
        param: String,
        /// Its value, decoded.
        value: String,
    },
    /// A parameter we do not know.
    #[error("unknown parameter {0:?}")]
    Unknown(String),
    /// An `identity` or `action` filter that could never match.
    #[error("{param}: {source}")]
    Filter {
        /// The parameter.
        param: &'static str,
        /// What is wrong and what is allowed.
        source: FilterError,
    },
}

/// Parses `/decisions` query parameters.
pub fn parse_query(q: &str) -> Result<Query, QueryError> {
    let mut out = Query::default();
    for (k, v) in query_pairs(q) {
        let k = k.as_str();
        let not_a_number = |param: &str, value: &str| QueryError::NotANumber {
            param: param.to_owned(),
            value: value.to_owned(),
        };
        let num = |v: &str| v.parse::<i64>().map_err(|_| not_a_number(k, v));
        match k {
            "identity" => {
                out.identity = Some(parse_identity(&v).map_err(|source| QueryError::Filter {
                    param: "identity",
                    source,
                })?)
            }
            "action" => {
                out.action = Some(parse_action(&v).map_err(|source| QueryError::Filter {
                    param: "action",
                    source,
                })?)
            }
            "since_ms" => out.since_ms = Some(num(&v)?),
            "until_ms" => out.until_ms = Some(num(&v)?),
            "limit" => out.limit = Some(v.parse().map_err(|_| not_a_number("limit", &v))?),
            other => return Err(QueryError::Unknown(other.to_owned())),
        }
    }
    Ok(out)
}

async fn route(
    state: Arc<State>,
    decisions: Arc<EdgeStore>,
    inventory: Arc<crate::inventory::IssuanceStore>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    if path == "/identities" {
        return Ok(identities(&state, decisions, inventory, req.uri().query()).await);
    }
    if path == "/revocations" {
        return Ok(super::revocations::route(&state, req).await);
    }
    let caller = super::caller::Caller::of(&req);
    if let Some(r) =
        crate::edges::http::route(&decisions, req.method(), path, req.uri().query(), caller).await
    {
        return Ok(r);
    }
    Ok(match path {
        "/live" => respond(StatusCode::OK, "live\n".into(), false),
        "/metrics" => {
            let proxies = state.with_subscribers(|s| s.len());
            let body = state
                .metrics
                .render(proxies, state.authority.get().map(|a| a.as_ref()));
            let body = body + &decisions.render_metrics();
            let mut r = respond(StatusCode::OK, body, false);
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        // The trust bundle (PEM) when the CA is here: what agents joining use as --server-bundle.
        "/bundle" => match state.authority.get() {
            Some(a) => respond(StatusCode::OK, crate::node::bundle_pem(&a.bundle()), false),
            None => respond(
                StatusCode::NOT_FOUND,
                "this control plane does not hold the CA\n".into(),
                false,
            ),
        },
        "/decisions" => match parse_query(req.uri().query().unwrap_or("")) {
            Ok(q) => {
                let found = tokio::task::spawn_blocking(move || decisions.query(&q))
                    .await
                    .unwrap_or_default();
                let mut body = String::new();
                for d in found {
                    if let Ok(line) = serde_json::to_string(&d) {
                        body.push_str(&line);
                        body.push('\n');
                    }
                }
                respond(StatusCode::OK, body, true)
            }
            Err(e) => respond(StatusCode::BAD_REQUEST, format!("{e}\n"), false),
        },
        "/nodes" => {
            let nodes = match state.nodes.lock() {
                Ok(n) => n.clone(),
                Err(poisoned) => poisoned.into_inner().clone(),
            };
            respond(
                StatusCode::OK,
                serde_json::to_string_pretty(&nodes).unwrap_or_default(),
                true,
            )
        }
        "/proxies" => {
            let subs: Vec<_> = state.with_subscribers(|s| s.values().cloned().collect());
            respond(
                StatusCode::OK,
                serde_json::to_string_pretty(&subs).unwrap_or_default(),
                true,
            )
        }
        "/policies" => {
            let p = state.policies.borrow().clone();
            let names: Vec<_> = p
                .policies
                .iter()
                .map(|p| {
                    format!(
                        "{} ({} document {})",
                        p.name,
                        p.origin.file,
                        p.origin.doc + 1
                    )
                })
                .collect();
            let body = serde_json::json!({ "version": p.version, "policies": names, "rejected_edit_errors": p.errors });
            respond(
                StatusCode::OK,
                serde_json::to_string_pretty(&body).unwrap_or_default(),
                true,
            )
        }
        _ => respond(StatusCode::NOT_FOUND, "not found\n".into(), false),
    })
}

/// `/identities`: the identity inventory, merged with the edge table (see
/// [`crate::inventory::identities`]).
async fn identities(
    state: &State,
    edges: Arc<EdgeStore>,
    inventory: Arc<crate::inventory::IssuanceStore>,
    query: Option<&str>,
) -> Response<Full<Bytes>> {
    let query = query.unwrap_or("").to_owned();
    let td = state.authority.get().map(|a| a.trust_domain().clone());
    let now_ms = svidcar_identity::unix_now().saturating_mul(1000);
    let rows = tokio::task::spawn_blocking(move || {
        crate::inventory::identities(&inventory, &query, td.as_ref(), now_ms, |q| {
            edges.edges(q).map_err(|e| e.to_string())
        })
    })
    .await
    .unwrap_or_else(|e| Err(crate::inventory::EndpointError::Store(e.to_string())));
    match rows {
        Ok(rows) => respond(
            StatusCode::OK,
            serde_json::to_string_pretty(&rows).unwrap_or_default(),
            true,
        ),
        Err(e @ crate::inventory::EndpointError::Query(_)) => {
            respond(StatusCode::BAD_REQUEST, format!("{e}\n"), false)
        }
        Err(e) => respond(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"), false),
    }
}

/// Serves until `stop` fires.
pub(super) async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    decisions: Arc<EdgeStore>,
    inventory: Arc<crate::inventory::IssuanceStore>,
    stop: CancellationToken,
) {
    let mut accept_errors = svidcar_identity::backoff::AcceptErrors::default();
    loop {
        let (stream, caller) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    accept_errors.on_error("control query (--admin-listen)", &e).await;
                    continue;
                }
            },
        };
        let (state, decisions) = (state.clone(), decisions.clone());
        let inventory = inventory.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(super::caller::Caller(caller));
                route(state.clone(), decisions.clone(), inventory.clone(), req)
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters() {
        let q =
            parse_query("identity=spiffe%3A%2F%2Ftd%2Fa*&action=deny&since_ms=5&limit=3").unwrap();
        assert_eq!(q.identity.as_deref(), Some("spiffe://td/a*"));
        assert_eq!(q.action.as_deref(), Some("DENY"));
        assert_eq!((q.since_ms, q.limit), (Some(5), Some(3)));
        let e = parse_query("bogus=1").unwrap_err();
        assert_eq!(e.to_string(), "unknown parameter \"bogus\"");
        let e = parse_query("since_ms=soon").unwrap_err();
        assert_eq!(e.to_string(), "since_ms: \"soon\" is not a number");
        let e = parse_query("limit=-1").unwrap_err();
        assert_eq!(e.to_string(), "limit: \"-1\" is not a number");
        let e = parse_query("action=REJECT").unwrap_err();
        assert_eq!(
            e.to_string(),
            "action: \"REJECT\" is not an action: use ALLOW, DENY or AUDIT (any case)"
        );
        let e = parse_query("identity=example.org%2Ffoo").unwrap_err();
        assert!(
            e.to_string().starts_with(
                "identity: \"example.org/foo\" is not an identity filter: use a SPIFFE ID"
            ),
            "{e}"
        );
        let e = parse_query("identity=example.org%2F*").unwrap_err();
        assert!(e.to_string().starts_with("identity: "), "{e}");
        let q = parse_query("identity=spiffe%3A%2F%2Ftd%2Fns%2Fweb&action=Audit").unwrap();
        assert_eq!(q.identity.as_deref(), Some("spiffe://td/ns/web"));
        assert_eq!(q.action.as_deref(), Some("AUDIT"));
    }
}
