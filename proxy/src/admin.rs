//! The admin server (default `0.0.0.0:15020`, never captured by iptables): `/metrics`, `/live`,
//! `/ready`, `/config`, `POST /shutdown` (loopback callers only) so a Job's pod can finish
//! when its app exits, and `/app-health/<container>/<probe>`: the app's kubelet probes, run by
//! the proxy ([`app_probe`]).

mod app_probe;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::context::ProxyContext;
use svidcar_identity::{format_unix, unix_now, CredentialStore};

/// What `/ready` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Serving.
    Ready,
    /// Not serving mesh traffic, and why.
    NotReady(String),
}

/// Readiness: the first policy must have arrived (when a policy source is configured) and an
/// SVID must be loaded and valid now. When not, the reason names the SVID's dates and, if the
/// identity source is failing (e.g. the Workload API is unreachable), since when and why.
pub(crate) fn readiness(shared: &ProxyContext) -> Readiness {
    if shared.authz.waiting_for_policy() {
        let why = shared
            .authz
            .source_problem()
            .map(|p| format!("; {p}"))
            .unwrap_or_default();
        return Readiness::NotReady(format!("waiting for the first policy set{why}"));
    }
    identity_readiness(shared.tls.store(), unix_now())
}

/// The identity part of readiness, at `now` (seconds since the epoch).
pub(crate) fn identity_readiness(store: &CredentialStore, now: i64) -> Readiness {
    let source = store
        .source_problem()
        .map(|p| format!("; {p}"))
        .unwrap_or_default();
    match store.latest() {
        None => Readiness::NotReady(format!("no SVID loaded yet{source}")),
        Some(c) if now >= c.leaf.not_after => Readiness::NotReady(format!(
            "SVID {} (serial {}) is outside its validity window: expired at {}{source}; \
             mesh connections fail closed",
            c.id(),
            c.leaf.serial,
            format_unix(c.leaf.not_after),
        )),
        Some(c) if now < c.leaf.not_before => Readiness::NotReady(format!(
            "SVID {} (serial {}) is outside its validity window: not valid before \
             {}{source}; mesh connections fail closed",
            c.id(),
            c.leaf.serial,
            format_unix(c.leaf.not_before),
        )),
        Some(_) => Readiness::Ready,
    }
}

fn text(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

fn config_json(shared: &ProxyContext) -> String {
    let identity = shared.tls.store().latest().map(|c| {
        serde_json::json!({
            "spiffe_id": c.id().as_str(),
            "serial": c.leaf.serial,
            "not_before": c.leaf.not_before,
            "not_after": c.leaf.not_after,
            "valid": c.is_valid_at(unix_now()),
            "trust_domains": c.bundles.trust_domains().iter().map(|t| t.as_str()).collect::<Vec<_>>(),
        })
    });
    let body = serde_json::json!({
        "config": &*shared.config,
        "identity": identity,
        "policy_version": shared.authz.version(),
        "policy_updated_at": shared.authz.updated_at(),
    });
    serde_json::to_string_pretty(&body).unwrap_or_default()
}

async fn route(
    shared: Arc<ProxyContext>,
    shutdown: CancellationToken,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/live") => text(StatusCode::OK, "live\n", PLAIN),
        (&Method::GET, "/ready") => match readiness(&shared) {
            Readiness::Ready => text(StatusCode::OK, "ready\n", PLAIN),
            Readiness::NotReady(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
                PLAIN,
            ),
        },
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            shared.metrics.render(shared.tls.store()),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        (&Method::GET, "/config") => text(StatusCode::OK, config_json(&shared), "application/json"),
        (&Method::POST, "/shutdown") if peer.ip().is_loopback() => {
            tracing::info!(%peer, "shutdown requested on the admin endpoint");
            shutdown.cancel();
            text(StatusCode::ACCEPTED, "shutting down\n", PLAIN)
        }
        (&Method::POST, "/shutdown") => text(
            StatusCode::FORBIDDEN,
            "shutdown is only accepted from loopback\n",
            PLAIN,
        ),
        (&Method::GET, path) if path.starts_with(svidcar_api::app_probe::PATH_PREFIX) => {
            match shared.config.admin.app_probes.get(path) {
                None => text(
                    StatusCode::NOT_FOUND,
                    format!("no app probe is configured at {path}\n"),
                    PLAIN,
                ),
                Some(probe) => match app_probe::run(probe, shared.config.inbound.app_host).await {
                    Ok(()) => text(StatusCode::OK, "ok\n", PLAIN),
                    Err(e) => {
                        tracing::debug!(probe = path, error = %e, "app probe failed");
                        text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"), PLAIN)
                    }
                },
            }
        }
        (_, "/live" | "/ready" | "/metrics" | "/config" | "/shutdown") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n",
            PLAIN,
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n", PLAIN),
    };
    Ok(resp)
}

/// Serves the admin endpoints until `stop` fires. `shutdown` is cancelled by `POST /shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<ProxyContext>,
    shutdown: CancellationToken,
    stop: CancellationToken,
) {
    let mut accept_errors = svidcar_identity::backoff::AcceptErrors::default();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    accept_errors.on_error("admin", &e).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| route(shared.clone(), shutdown.clone(), peer, req));
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    tracing::debug!(error = %e, %peer, "admin connection error");
                },
                _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use svidcar_identity::SourceProblem;

    #[test]
    fn identity_readiness_says_what_is_missing_and_why() {
        let store = CredentialStore::new();
        assert_eq!(
            identity_readiness(&store, 0),
            Readiness::NotReady("no SVID loaded yet".into())
        );
        store.set_source_problem(Some(SourceProblem {
            what: "Workload API unix:///run/a.sock unreachable".into(),
            since: 1_700_000_000,
            error: "connection refused".into(),
        }));
        assert_eq!(
            identity_readiness(&store, 0),
            Readiness::NotReady(
                "no SVID loaded yet; Workload API unix:///run/a.sock unreachable since \
                 2023-11-14T22:13:20Z (connection refused)"
                    .into()
            )
        );
    }
}
