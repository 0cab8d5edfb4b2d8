//! The agent's HTTP endpoint (off unless `--admin-listen` is given): `/live`, `/ready` (200 when
//! every registered SPIFFE ID has a valid SVID; otherwise 503 naming the IDs without one and why)
//! and `/metrics` (Prometheus text format). It serves no key material and no SVID.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use svidcar_identity::{format_unix, unix_now, SpiffeId};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::metrics::AgentMetrics;
use super::svids::{Signer, Snapshot};
use super::AgentError;

/// Why the agent is not ready (`/ready` answers 503 with this).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// There is no trust bundle to serve yet.
    #[error("no trust bundle yet")]
    NoBundle,
    /// Some registered IDs have no valid SVID.
    #[error("not ready: {}", join(.0))]
    Missing(Vec<MissingSvid>),
}

fn join(missing: &[MissingSvid]) -> String {
    missing
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A registered ID without a valid SVID, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingSvid {
    /// The ID.
    pub id: SpiffeId,
    /// When its SVID expired, if one was issued.
    pub expired_at: Option<i64>,
    /// Why its latest issuance failed, if it did.
    pub error: Option<String>,
}

impl std::fmt::Display for MissingSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.expired_at {
            Some(at) => write!(f, "{} expired at {}", self.id, format_unix(at))?,
            None => write!(f, "{} not issued yet", self.id)?,
        }
        match &self.error {
            Some(e) => write!(f, ": {e}"),
            None => Ok(()),
        }
    }
}

/// Whether the agent serves every registered identity at `now`: `Ok` with a summary, or `Err`
/// naming what is missing.
pub fn readiness(snap: &Snapshot, now: i64) -> Result<String, NotReady> {
    if snap.bundle_der.is_empty() {
        return Err(NotReady::NoBundle);
    }
    let wanted: BTreeSet<_> = snap.entries.iter().map(|e| &e.spiffe_id).collect();
    let mut missing = Vec::new();
    for id in &wanted {
        match snap.svids.get(*id) {
            Some(svid) if svid.not_after > now => {}
            held => missing.push(MissingSvid {
                id: (*id).clone(),
                expired_at: held.map(|svid| svid.not_after),
                error: snap.issue_errors.get(*id).cloned(),
            }),
        }
    }
    if missing.is_empty() {
        Ok(format!("ready: {} SVIDs\n", wanted.len()))
    } else {
        Err(NotReady::Missing(missing))
    }
}

fn respond(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

const TEXT: &str = "text/plain; charset=utf-8";

fn route(
    state: &watch::Receiver<Arc<Snapshot>>,
    signer: &Signer,
    metrics: &AgentMetrics,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let snap = state.borrow().clone();
    match req.uri().path() {
        "/live" => respond(StatusCode::OK, "live\n".into(), TEXT),
        "/ready" => match readiness(&snap, unix_now()) {
            Ok(body) => respond(StatusCode::OK, body, TEXT),
            Err(e @ NotReady::NoBundle) => {
                respond(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), TEXT)
            }
            Err(e @ NotReady::Missing(_)) => {
                respond(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"), TEXT)
            }
        },
        "/metrics" => respond(
            StatusCode::OK,
            metrics.render(&snap, signer),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        _ => respond(
            StatusCode::NOT_FOUND,
            "not found; try /live, /ready or /metrics\n".into(),
            TEXT,
        ),
    }
}

/// Binds the endpoint's listener when `listen` is given.
pub(super) async fn bind(listen: Option<SocketAddr>) -> Result<Option<TcpListener>, AgentError> {
    match listen {
        Some(addr) => Ok(Some(TcpListener::bind(addr).await.map_err(|e| {
            AgentError::Invalid {
                field: "--admin-listen",
                message: format!("cannot listen on {addr}: {e}"),
            }
        })?)),
        None => Ok(None),
    }
}

/// Serves the endpoint on `listener` until `stop` fires.
pub async fn serve(
    listener: TcpListener,
    state: watch::Receiver<Arc<Snapshot>>,
    signer: Signer,
    metrics: Arc<AgentMetrics>,
    stop: CancellationToken,
) {
    let mut accept_errors = svidcar_identity::backoff::AcceptErrors::default();
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    accept_errors.on_error("agent admin (--admin-listen)", &e).await;
                    continue;
                }
            },
        };
        let (state, signer, metrics) = (state.clone(), signer.clone(), metrics.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let resp = route(&state, &signer, &metrics, &req);
                async move { Ok::<_, Infallible>(resp) }
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
    use crate::agent::registration::uid0_entry;
    use crate::agent::svids::{Registration, Rotator};
    use crate::authority::Authority;
    use crate::Ca;
    use std::time::Duration;
    use svidcar_identity::{SpiffeId, TrustDomain};

    #[tokio::test]
    async fn ready_only_with_a_valid_svid_for_every_registered_id() {
        let td = TrustDomain::parse("example.org").unwrap();
        let authority = Authority::in_memory(Ca::generate(&td, Duration::from_secs(3600)).unwrap());
        let mut r = Rotator::new(
            Signer::Local(authority),
            Duration::from_secs(600),
            Box::new(|| 0.5),
        );
        let entries = vec![
            uid0_entry("spiffe://example.org/a"),
            uid0_entry("spiffe://example.org/a"),
            uid0_entry("spiffe://example.org/b"),
        ];
        r.sync(&entries).await;
        let mut snap = r.snapshot(&Registration::of(entries));
        let now = unix_now();
        assert_eq!(readiness(&snap, now).unwrap(), "ready: 2 SVIDs\n");

        let later = readiness(&snap, now + 700).unwrap_err().to_string();
        assert!(
            later.contains("spiffe://example.org/a expired at"),
            "{later}"
        );

        let b = SpiffeId::parse("spiffe://example.org/b").unwrap();
        snap.svids.remove(&b);
        snap.issue_errors.insert(b, "the CA expired".into());
        let e = readiness(&snap, now).unwrap_err();
        assert_eq!(
            e.to_string(),
            "not ready: spiffe://example.org/b not issued yet: the CA expired"
        );

        snap.bundle_der.clear();
        let e = readiness(&snap, now).unwrap_err();
        assert_eq!(e, NotReady::NoBundle);
        assert_eq!(e.to_string(), "no trust bundle yet");
    }
}
