//! The gRPC policy service: proxies subscribe with their SVID and get the policies that select
//! them, again on every change; they acknowledge or reject each version. Decision events are
//! stored in the decision log.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::Stream;
use svidcar_api::policy::server::PolicyService;
use svidcar_api::policy::{DecisionEventMsg, PolicySnapshot, ReportSummary, WatchRequest};
use svidcar_api::DecisionEvent;
use svidcar_identity::{check_leaf, SpiffeId};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::state::{State, Subscriber};
use crate::decisions::StoredDecision;
use crate::edges::EdgeStore;

/// The service implementation.
#[derive(Debug, Clone)]
pub(super) struct Service {
    pub(crate) state: Arc<State>,
    pub(crate) decisions: Arc<EdgeStore>,
    pub(crate) next: Arc<AtomicU64>,
    /// Fires on shutdown: watch streams end so the server can drain.
    pub(crate) stop: tokio_util::sync::CancellationToken,
}

/// The caller's SPIFFE ID from its verified client certificate.
fn peer_id<T>(req: &Request<T>) -> Result<SpiffeId, Status> {
    let certs = req
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    check_leaf(leaf)
        .map(|l| l.id)
        .map_err(|e| Status::unauthenticated(format!("client SVID: {e}")))
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<PolicySnapshot, Status>> + Send>>;

#[tonic::async_trait]
impl PolicyService for Service {
    type WatchStream = SnapshotStream;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<SnapshotStream>, Status> {
        let id = peer_id(&req)?;
        let addr = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let mut inbound = req.into_inner();
        let node = match inbound.message().await? {
            Some(hello) => hello.node,
            None => {
                return Err(Status::invalid_argument(
                    "stream closed before the first message",
                ))
            }
        };
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.state.with_subscribers(|s| {
            s.insert(
                key,
                Subscriber {
                    spiffe_id: id.to_string(),
                    node: node.clone(),
                    addr: addr.clone(),
                    sent_version: String::new(),
                    acked_version: String::new(),
                    rejected: None,
                },
            )
        });
        tracing::info!(%id, %node, %addr, "proxy subscribed");
        let (tx, rx) = mpsc::channel::<Result<PolicySnapshot, Status>>(4);
        let state = self.state.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let mut policies = state.policies.subscribe();
            let mut sent = String::new();
            loop {
                let snap = policies.borrow_and_update().snapshot_for(&id);
                if snap.version != sent {
                    sent = snap.version.clone();
                    state.with_subscribers(|s| {
                        if let Some(sub) = s.get_mut(&key) {
                            sub.sent_version = sent.clone();
                        }
                    });
                    if tx.send(Ok(snap)).await.is_err() {
                        break;
                    }
                }
                tokio::select! {
                    changed = policies.changed() => if changed.is_err() { break },
                    msg = inbound.message() => match msg {
                        Ok(Some(ack)) if ack.error.is_empty() => {
                            state.with_subscribers(|s| if let Some(sub) = s.get_mut(&key) { sub.acked_version = ack.version.clone() });
                            tracing::debug!(%id, %node, version = %ack.version, "proxy acknowledged policy");
                        }
                        Ok(Some(nack)) => {
                            tracing::warn!(%id, %node, version = %nack.version, error = %nack.error, "proxy rejected policy version");
                            state.with_subscribers(|s| if let Some(sub) = s.get_mut(&key) { sub.rejected = Some((nack.version.clone(), nack.error.clone())) });
                        }
                        Ok(None) | Err(_) => break,
                    },
                    _ = tx.closed() => break,
                    _ = stop.cancelled() => break,
                }
            }
            state.with_subscribers(|s| s.remove(&key));
            tracing::info!(%id, %node, "proxy unsubscribed");
        });
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn report_decisions(
        &self,
        req: Request<Streaming<DecisionEventMsg>>,
    ) -> Result<Response<ReportSummary>, Status> {
        let reporter = peer_id(&req)?.to_string();
        let mut inbound = req.into_inner();
        let mut received = 0u64;
        let mut rejected = 0u64;
        let mut dropped = 0u64;
        loop {
            let msg = tokio::select! {
                m = inbound.message() => match m? {
                    Some(m) => m,
                    None => break,
                },
                _ = self.stop.cancelled() => break,
            };
            let event = match DecisionEvent::try_from(msg) {
                Ok(e) => e,
                Err(e) => {
                    // One warning per stream; every rejection is counted.
                    self.state.metrics.decision_events_rejected.inc();
                    rejected += 1;
                    if rejected == 1 {
                        tracing::warn!(%reporter, error = %e, "malformed decision event dropped (further ones on this stream are only counted)");
                    }
                    continue;
                }
            };
            // Never waits for the store: a full write queue drops the decision (counted) so
            // that the proxy's stream keeps flowing.
            let stored = StoredDecision {
                event,
                reporter: reporter.clone(),
            };
            if self.decisions.offer(stored) {
                received += 1;
            } else {
                dropped += 1;
                if dropped == 1 {
                    tracing::warn!(%reporter, "decision store busy: decisions dropped (counted in svidcar_control_decisions_dropped_total)");
                }
            }
        }
        Ok(Response::new(ReportSummary { received, dropped }))
    }
}
