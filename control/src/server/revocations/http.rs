//! `/revocations` on the query port: `GET` lists the set (JSON), `POST` adds an entry (JSON
//! body: `spiffe_id` or `serial`, `reason`, `until` in Unix seconds, `revoked_by`), `DELETE
//! ?spiffe_id=…` or `?serial=…` lifts one. Changes are accepted from loopback callers only, like
//! the proxy's `POST /shutdown`: whoever can run a command on the control plane's host may change
//! the set, nobody else, whatever address the port is bound to.

use std::net::SocketAddr;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use svidcar_identity::tls::CertSerial;
use svidcar_identity::{unix_now, SpiffeId};

use super::set::{Entry, EntryJson, Target};
use super::{lift, revoke};
use crate::server::caller::{refuse_unless_loopback, Caller};
use crate::server::state::State;

/// Largest `POST` body accepted.
const MAX_BODY: usize = 16 * 1024;

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let ct = if status.is_success() {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ct),
    );
    r
}

fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Response<Full<Bytes>> {
    reply(
        status,
        serde_json::to_string_pretty(v).unwrap_or_default() + "\n",
    )
}

fn bad(status: StatusCode, why: impl std::fmt::Display) -> Response<Full<Bytes>> {
    reply(status, format!("{why}\n"))
}

/// Answers one `/revocations` request.
pub(in crate::server) async fn route(
    state: &State,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let caller = Caller::of(&req);
    let method = req.method().clone();
    if method == Method::GET {
        return json(StatusCode::OK, &state.revocations.current());
    }
    if let Some(refused) = refuse_unless_loopback(caller, "revocations") {
        return refused;
    }
    match method {
        Method::POST => post(state, req, caller).await,
        Method::DELETE => delete(state, req.uri().query().unwrap_or("")),
        _ => bad(StatusCode::METHOD_NOT_ALLOWED, "use GET, POST or DELETE"),
    }
}

async fn post(
    state: &State,
    req: Request<Incoming>,
    caller: Option<SocketAddr>,
) -> Response<Full<Bytes>> {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return bad(StatusCode::BAD_REQUEST, format!("request body: {e}")),
    };
    let mut j: EntryJson = match serde_json::from_slice(&body) {
        Ok(j) => j,
        Err(e) => return bad(StatusCode::BAD_REQUEST, format!("request body: {e}")),
    };
    let now = unix_now();
    j.revoked_at = now;
    if j.revoked_by.is_empty() {
        j.revoked_by = caller.map_or_else(|| "unknown".into(), |c| c.to_string());
    }
    if let Some(u) = j.until.filter(|u| *u <= now) {
        return bad(
            StatusCode::BAD_REQUEST,
            format!(
                "until: {} is not in the future",
                svidcar_identity::format_unix(u)
            ),
        );
    }
    let entry = match Entry::try_from(j) {
        Ok(e) => e,
        Err(e) => return bad(StatusCode::BAD_REQUEST, e),
    };
    match revoke(state, entry.clone()) {
        Ok(()) => json(StatusCode::OK, &entry),
        Err(e) => bad(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

fn delete(state: &State, query: &str) -> Response<Full<Bytes>> {
    let target = match parse_target(query) {
        Ok(t) => t,
        Err(why) => return bad(StatusCode::BAD_REQUEST, why),
    };
    match lift(state, &target) {
        Ok(Some(entry)) => json(StatusCode::OK, &entry),
        Ok(None) => bad(StatusCode::NOT_FOUND, format!("{target} is not revoked")),
        Err(e) => bad(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// `spiffe_id=…` or `serial=…` (percent-encoded).
fn parse_target(query: &str) -> Result<Target, String> {
    let (k, v) = crate::server::reply::query_pairs(query)
        .next()
        .ok_or("give ?spiffe_id=<ID> or ?serial=<hex>")?;
    match k.as_str() {
        "spiffe_id" => SpiffeId::parse(&v)
            .map(Target::Id)
            .map_err(|e| format!("spiffe_id {v:?}: {e}")),
        "serial" => CertSerial::parse(&v)
            .map(Target::Serial)
            .map_err(|e| format!("serial {v:?}: {e}")),
        other => Err(format!(
            "unknown parameter {other:?}: give ?spiffe_id=<ID> or ?serial=<hex>"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_targets() {
        assert_eq!(
            parse_target("spiffe_id=spiffe%3A%2F%2Ftd%2Fa").unwrap(),
            Target::Id(SpiffeId::parse("spiffe://td/a").unwrap())
        );
        assert_eq!(
            parse_target("serial=3A%3A5f").unwrap(),
            Target::Serial(CertSerial::parse("3a5f").unwrap())
        );
        assert!(parse_target("").unwrap_err().contains("give ?spiffe_id"));
        assert!(parse_target("id=x")
            .unwrap_err()
            .contains("unknown parameter"));
        assert!(parse_target("serial=zz")
            .unwrap_err()
            .starts_with("serial \"zz\""));
    }
}
