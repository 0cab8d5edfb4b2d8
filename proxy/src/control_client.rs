//! The proxy's side of the control plane: a watch stream on which policy snapshots arrive (each
//! acknowledged, or rejected with the reason), and a stream of decision events. Both reconnect
//! with backoff; while the control plane is away the last good policy and the last revocation
//! set stay in force, and decision events that do not fit the buffer are dropped and counted,
//! never stalling traffic.

use std::sync::Arc;

use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::authz::Authz;
use crate::metrics::Metrics;
use svidcar_api::channel::{connect as channel, ChannelError, HostPort};
use svidcar_api::policy::client::PolicyServiceClient;
use svidcar_api::policy::{DecisionEventMsg, PolicySnapshot, WatchRequest};
use svidcar_api::DecisionEvent;
use svidcar_identity::backoff::{jitter, Backoff};
use svidcar_identity::tls::TlsContext;
use svidcar_identity::SpiffeId;
use svidcar_policy::{parse_file, PolicyError, PolicySet};

/// Where the control plane is and who it must be.
#[derive(Debug, Clone)]
pub(crate) struct ControlPlane {
    /// gRPC address.
    pub addr: HostPort,
    /// SPIFFE ID it must present.
    pub id: SpiffeId,
    /// Our node name.
    pub node: String,
}

/// Why a policy snapshot from the control plane is rejected (the control plane's fault: the
/// last good policy stays in force and the reason goes back on the stream).
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub(crate) struct SnapshotRejected(pub(crate) Vec<PolicyError>);

/// Why a session with the control plane ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// No channel: the control plane is unreachable, or the TLS handshake failed.
    #[error("{0}")]
    Connect(#[from] ChannelError),
    /// A call failed or the stream broke, with the gRPC status.
    #[error("{0}")]
    Rpc(#[from] tonic::Status),
    /// The control plane ended the watch stream.
    #[error("control plane closed the stream")]
    Closed,
    /// Our side of the watch stream is gone (the call ended while we were answering).
    #[error("channel closed")]
    RequestsClosed,
}

/// Turns a snapshot into a policy set, or the reason it must be rejected.
pub(crate) fn snapshot_to_set(s: &PolicySnapshot) -> Result<PolicySet, SnapshotRejected> {
    let mut policies = Vec::new();
    let mut errors = Vec::new();
    for d in &s.documents {
        let (p, e) = parse_file(&d.origin, &d.yaml);
        policies.extend(p);
        errors.extend(e);
    }
    if errors.is_empty() {
        Ok(PolicySet {
            version: s.version.clone(),
            policies,
        })
    } else {
        Err(SnapshotRejected(errors))
    }
}

/// One watch session: until the stream ends or fails.
async fn watch_once(
    client: &mut PolicyServiceClient<Channel>,
    cp: &ControlPlane,
    authz: &Authz,
    metrics: &Metrics,
) -> Result<(), SessionError> {
    let (tx, rx) = mpsc::channel(8);
    let hello = WatchRequest {
        node: cp.node.clone(),
        version: String::new(),
        error: String::new(),
    };
    tx.send(hello)
        .await
        .map_err(|_| SessionError::RequestsClosed)?;
    let requests =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let mut snapshots = client.watch(requests).await?.into_inner();
    metrics.policy.on_control_plane(true);
    authz.set_source_problem(None);
    tracing::info!(addr = %cp.addr, "control plane stream open");
    loop {
        let snap = match snapshots.message().await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(SessionError::Closed),
            Err(s) => return Err(s.into()),
        };
        // Revocations first, and whatever becomes of the documents: a snapshot whose policy is
        // rejected still carries the mesh's complete revocation set.
        authz.install_revocations(&snap.revocations);
        let reply = match snapshot_to_set(&snap) {
            Ok(set) => {
                authz.install(set);
                WatchRequest {
                    node: cp.node.clone(),
                    version: snap.version.clone(),
                    error: String::new(),
                }
            }
            Err(rejected) => {
                let error = rejected.to_string();
                tracing::warn!(version = %snap.version, %error, in_force = %svidcar_identity::OrNone(authz.version()), "rejected policy snapshot; the last good policy stays in force");
                metrics.policy.on_policy_rejected();
                WatchRequest {
                    node: cp.node.clone(),
                    version: snap.version.clone(),
                    error,
                }
            }
        };
        tx.send(reply)
            .await
            .map_err(|_| SessionError::RequestsClosed)?;
    }
}

/// Keeps the watch stream up until `cancel` fires.
pub(crate) async fn run_watch(
    tls: TlsContext,
    cp: ControlPlane,
    authz: Arc<Authz>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new();
    loop {
        let session = async {
            let ch = channel(&tls, &cp.addr, &cp.id).await?;
            backoff.reset();
            watch_once(&mut PolicyServiceClient::new(ch), &cp, &authz, &metrics).await
        };
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = session => r,
        };
        metrics.policy.on_control_plane(false);
        if let Err(e) = result {
            tracing::warn!(addr = %cp.addr, error = %e, in_force = %svidcar_identity::OrNone(authz.version()), "control plane unreachable; keeping the last good policy");
            authz.set_source_problem(Some(format!(
                "control plane {} (expected {}) unreachable: {e}",
                cp.addr, cp.id
            )));
        }
        let delay = backoff.next_delay(jitter());
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Streams decision events to the control plane until `cancel` fires.
pub(crate) async fn run_reporter(
    tls: TlsContext,
    cp: ControlPlane,
    events: mpsc::Receiver<DecisionEvent>,
    cancel: CancellationToken,
) {
    let events = Arc::new(Mutex::new(events));
    let mut backoff = Backoff::new();
    loop {
        let session = async {
            let ch = channel(&tls, &cp.addr, &cp.id).await?;
            backoff.reset();
            let stream = futures_util::stream::unfold(events.clone(), |events| async move {
                let next = events.lock().await.recv().await;
                next.map(|e| (DecisionEventMsg::from(e), events))
            });
            PolicyServiceClient::new(ch)
                .report_decisions(stream)
                .await
                .map(|_| ())
                .map_err(SessionError::from)
        };
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = session => r,
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "decision stream to the control plane ended");
        }
        let delay = backoff.next_delay(jitter());
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_with_bad_documents_are_rejected_with_the_reason() {
        use svidcar_api::policy::PolicyDocument;
        let good = PolicyDocument {
            origin: "a.yaml#1".into(),
            yaml: "kind: AuthorizationPolicy\nname: a\naction: DENY\n".into(),
        };
        let bad = PolicyDocument {
            origin: "b.yaml#1".into(),
            yaml: "kind: AuthorizationPolicy\nname: b\naction: NOPE\n".into(),
        };
        let ok = snapshot_to_set(&PolicySnapshot {
            version: "v1".into(),
            documents: vec![good.clone()],
            revocations: Vec::new(),
        })
        .unwrap();
        assert_eq!((ok.version.as_str(), ok.policies.len()), ("v1", 1));
        let err = snapshot_to_set(&PolicySnapshot {
            version: "v2".into(),
            documents: vec![good, bad],
            revocations: Vec::new(),
        })
        .unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(
            err.to_string(),
            "b.yaml#1: document 1: action: \"NOPE\" is not ALLOW, DENY or AUDIT"
        );
    }
}
