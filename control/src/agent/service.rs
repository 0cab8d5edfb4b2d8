//! The `SpiffeWorkloadAPI` gRPC service: checks the security header, attests the caller (and,
//! with pod attestation, its pod), and streams the full X.509 state at once and again on every
//! change.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use super::attest::attest;
use super::conn::{Conn, Reports};
use super::k8s::K8sAttestor;
use super::metrics::AgentMetrics;
use super::proto::server::{SpiffeWorkloadAPI, SpiffeWorkloadAPIServer};
use super::proto::{
    JwtBundlesRequest, JwtBundlesResponse, JwtSvidRequest, JwtSvidResponse, ValidateJwtSvidRequest,
    ValidateJwtSvidResponse, X509BundlesRequest, X509BundlesResponse, X509Svid, X509SvidRequest,
    X509SvidResponse,
};
use super::registration::{matching, needs_sha256, Workload};
use super::svids::Snapshot;
use svidcar_identity::SpiffeId;

/// The message of PermissionDenied for a caller no entry matches (the wording SPIRE uses, which
/// clients such as the `spiffe` crate recognise).
pub const NO_IDENTITY: &str = "no identity issued";

/// The security header every request must carry (SPIFFE Workload Endpoint §3).
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// How long a pod's caller waits for the SVID of its default identity when its pod was just
/// listed (the rotator issues it on the same change); then Unavailable, and the client retries.
const ISSUE_WAIT: Duration = Duration::from_secs(5);

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The Workload API over the agent's state.
#[derive(Debug, Clone)]
pub struct WorkloadApi {
    state: watch::Receiver<Arc<Snapshot>>,
    stop: CancellationToken,
    metrics: Arc<AgentMetrics>,
    k8s: Option<Arc<K8sAttestor>>,
}

impl WorkloadApi {
    /// Serves `state`; open streams end with Unavailable when `stop` fires. Calls and open
    /// streams are counted in `metrics`.
    pub fn new(
        state: watch::Receiver<Arc<Snapshot>>,
        stop: CancellationToken,
        metrics: Arc<AgentMetrics>,
    ) -> Self {
        Self {
            state,
            stop,
            metrics,
            k8s: None,
        }
    }

    /// Also attests callers' pods with `k8s`.
    pub fn with_k8s(mut self, k8s: Arc<K8sAttestor>) -> Self {
        self.k8s = Some(k8s);
        self
    }

    /// Counts a call's outcome and hands it back.
    fn counted<T>(&self, method: &str, r: Result<T, Status>) -> Result<T, Status> {
        let code = match &r {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        self.metrics.request(method, code);
        r
    }
}

/// Keeps the open-streams gauge up while a stream lives.
struct OpenStream(prometheus::IntGauge);

impl OpenStream {
    fn new(gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn check_header<T>(req: &Request<T>) -> Result<(), Status> {
    match req.metadata().get(SECURITY_HEADER) {
        Some(v) if v.as_bytes() == b"true" => Ok(()),
        _ => Err(Status::invalid_argument(format!(
            "security header missing from request: {SECURITY_HEADER}: true"
        ))),
    }
}

/// Attests the caller of `req` (file reads run off the async threads), and its pod with `k8s`.
/// Returns the workload and, for a pod, its default SPIFFE ID (if those are on).
async fn attest_caller<T>(
    req: &Request<T>,
    with_sha256: bool,
    k8s: Option<&K8sAttestor>,
) -> Result<(Workload, Option<SpiffeId>), Status> {
    let cred = req
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|i| i.peer_cred)
        .ok_or_else(|| Status::permission_denied("cannot attest caller: no peer credentials"))?;
    let (uid, gid, pid) = (cred.uid(), cred.gid(), cred.pid());
    let w = tokio::task::spawn_blocking(move || attest(uid, gid, pid, with_sha256))
        .await
        .map_err(|_| Status::internal("attestation task failed"))?
        .map_err(|e| {
            tracing::info!(uid, gid, ?pid, error = %e, "attestation failed");
            Status::permission_denied(format!("cannot attest caller: {e}"))
        })?;
    let Some(k8s) = k8s else {
        return Ok((w, None));
    };
    attest_pod(k8s, w).await
}

/// Adds the caller's pod (if it is in one) to `w`, with its default identity.
async fn attest_pod(
    k8s: &K8sAttestor,
    mut w: Workload,
) -> Result<(Workload, Option<SpiffeId>), Status> {
    let refused = |e: super::k8s::K8sError, w: &Workload| {
        tracing::info!(uid = w.uid, pid = w.pid, error = %e, "pod attestation failed");
        let message = format!("cannot attest caller's pod: {e}");
        if e.kubelet_unavailable() {
            Status::unavailable(message)
        } else {
            Status::permission_denied(message)
        }
    };
    w.k8s = k8s
        .attest(w.pid, w.uid, w.gid)
        .await
        .map_err(|e| refused(e, &w))?;
    let default = match &w.k8s {
        Some(pod) => k8s.default_id(pod).map_err(|e| refused(e, &w))?,
        None => None,
    };
    Ok((w, default))
}

/// Every SVID `w` is entitled to: the matching entries' in file order, then `pod_default` (its
/// pod's default identity) unless an entry names it already. The first is the default identity;
/// while it is not issued, none is served: another SVID must never stand in as the caller's
/// default identity.
pub fn x509_response(
    snap: &Snapshot,
    w: &Workload,
    pod_default: Option<&SpiffeId>,
) -> Result<X509SvidResponse, Refusal> {
    let mut ids: Vec<(&SpiffeId, Option<&String>)> = matching(&snap.entries, w)
        .into_iter()
        .map(|e| (&e.spiffe_id, e.hint.as_ref()))
        .collect();
    if let Some(id) = pod_default.filter(|id| !ids.iter().any(|(have, _)| have == id)) {
        ids.push((id, None));
    }
    let Some((default, _)) = ids.first() else {
        return Err(Refusal::NoEntry);
    };
    if !snap.svids.contains_key(*default) {
        return Err(Refusal::NotIssuedYet);
    }
    let svids: Vec<X509Svid> = ids
        .into_iter()
        .filter_map(|(id, hint)| {
            let held = snap.svids.get(id)?;
            Some(X509Svid {
                spiffe_id: id.to_string(),
                x509_svid: held.cert_der.clone(),
                x509_svid_key: held.key_der.clone(),
                bundle: snap.bundle_der.clone(),
                hint: hint.cloned().unwrap_or_default(),
            })
        })
        .collect();
    if svids.is_empty() {
        return Err(Refusal::NotIssuedYet);
    }
    Ok(X509SvidResponse {
        svids,
        crl: Vec::new(),
        federated_bundles: federated(snap),
    })
}

/// Why a caller gets no SVID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No registration entry matches it: PermissionDenied, as the spec wants.
    NoEntry,
    /// Entries match but the CA (or the control plane) has not issued the default one's SVID
    /// yet: Unavailable, so that the client retries.
    NotIssuedYet,
}

impl Refusal {
    fn status(self) -> Status {
        match self {
            Refusal::NoEntry => Status::permission_denied(NO_IDENTITY),
            Refusal::NotIssuedYet => Status::unavailable(
                "the SVID of this caller's default entry is not issued yet (the CA or the control plane cannot sign); retry",
            ),
        }
    }
}

/// Foreign trust domains' bundles, keyed by the trust domain's SPIFFE ID.
fn federated(snap: &Snapshot) -> HashMap<String, Vec<u8>> {
    snap.federated
        .iter()
        .map(|(td, der)| (td.id_string(), der.clone()))
        .collect()
}

/// The bundles response: ours and the federated ones, keyed by trust domain ID.
pub fn bundles_response(snap: &Snapshot) -> X509BundlesResponse {
    let mut bundles = federated(snap);
    if let Some(td) = &snap.trust_domain {
        bundles.insert(td.id_string(), snap.bundle_der.clone());
    }
    X509BundlesResponse {
        crl: Vec::new(),
        bundles,
    }
}

/// Streams `build(snapshot)` now and whenever it changes; `None` ends the stream with
/// PermissionDenied (the caller's identities were all withdrawn).
fn stream_changes<T, F>(
    mut state: watch::Receiver<Arc<Snapshot>>,
    stop: CancellationToken,
    open: prometheus::IntGauge,
    mut workload: Workload,
    mut build: F,
) -> Result<ResponseStream<T>, Status>
where
    T: Clone + PartialEq + Send + 'static,
    F: FnMut(&Snapshot, &Workload) -> Result<T, Refusal> + Send + 'static,
{
    let first = {
        let snap = state.borrow_and_update().clone();
        build(&snap, &workload).map_err(Refusal::status)?
    };
    let (tx, rx) = mpsc::channel::<Result<T, Status>>(2);
    tokio::spawn(async move {
        let _open = OpenStream::new(open);
        let mut last = first.clone();
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = stop.cancelled() => {
                    let _ = tx.send(Err(Status::unavailable("agent shutting down"))).await;
                    return;
                }
                r = state.changed() => if r.is_err() { return },
            }
            let snap = state.borrow_and_update().clone();
            if workload.sha256.is_none() && needs_sha256(&snap.entries) {
                // A sha256 selector appeared since the caller was attested.
                let (uid, gid, pid) = (workload.uid, workload.gid, Some(workload.pid));
                if let Ok(Ok(w)) =
                    tokio::task::spawn_blocking(move || attest(uid, gid, pid, true)).await
                {
                    workload = Workload {
                        k8s: workload.k8s.take(),
                        ..w
                    };
                }
            }
            match build(&snap, &workload) {
                Err(refusal) => {
                    let _ = tx.send(Err(refusal.status())).await;
                    return;
                }
                Ok(resp) if resp != last => {
                    if tx.send(Ok(resp.clone())).await.is_err() {
                        return;
                    }
                    last = resp;
                }
                Ok(_) => {}
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok(Box::pin(stream))
}

#[tonic::async_trait]
impl SpiffeWorkloadAPI for WorkloadApi {
    type FetchX509SVIDStream = ResponseStream<X509SvidResponse>;
    type FetchX509BundlesStream = ResponseStream<X509BundlesResponse>;
    type FetchJWTBundlesStream = ResponseStream<JwtBundlesResponse>;

    async fn fetch_x509_svid(
        &self,
        req: Request<X509SvidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let r = self.x509_svid(req).await;
        self.counted("FetchX509SVID", r)
    }

    async fn fetch_x509_bundles(
        &self,
        req: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let r = self.x509_bundles(req).await;
        self.counted("FetchX509Bundles", r)
    }

    async fn fetch_jwt_svid(
        &self,
        req: Request<JwtSvidRequest>,
    ) -> Result<Response<JwtSvidResponse>, Status> {
        let r = check_header(&req).and(Err(Status::unimplemented(
            "JWT-SVIDs are not supported by svidcar agent",
        )));
        self.counted("FetchJWTSVID", r)
    }

    async fn fetch_jwt_bundles(
        &self,
        req: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let r = check_header(&req).and(Err(Status::unimplemented(
            "JWT bundles are not supported by svidcar agent",
        )));
        self.counted("FetchJWTBundles", r)
    }

    async fn validate_jwt_svid(
        &self,
        req: Request<ValidateJwtSvidRequest>,
    ) -> Result<Response<ValidateJwtSvidResponse>, Status> {
        let r = check_header(&req).and(Err(Status::unimplemented(
            "JWT-SVIDs are not supported by svidcar agent",
        )));
        self.counted("ValidateJWTSVID", r)
    }
}

impl WorkloadApi {
    /// Waits (at most [`ISSUE_WAIT`]) while the caller's default SVID is being issued: a pod
    /// just listed has its default identity issued on the same change.
    async fn wait_for_issuance(&self, w: &Workload, pod_default: Option<&SpiffeId>) {
        let mut state = self.state.clone();
        let issued = |snap: &Arc<Snapshot>| {
            !matches!(
                x509_response(snap, w, pod_default),
                Err(Refusal::NotIssuedYet)
            )
        };
        let _ = tokio::time::timeout(ISSUE_WAIT, state.wait_for(issued)).await;
    }

    async fn x509_svid(
        &self,
        req: Request<X509SvidRequest>,
    ) -> Result<Response<ResponseStream<X509SvidResponse>>, Status> {
        check_header(&req)?;
        let with_sha256 = needs_sha256(&self.state.borrow().entries);
        let (workload, pod_default) = attest_caller(&req, with_sha256, self.k8s.as_deref()).await?;
        if pod_default.is_some() {
            self.wait_for_issuance(&workload, pod_default.as_ref())
                .await;
        }
        let stream = stream_changes(
            self.state.clone(),
            self.stop.clone(),
            self.metrics.streams.clone(),
            workload.clone(),
            move |snap, w| x509_response(snap, w, pod_default.as_ref()),
        )
        .inspect_err(|status| {
            tracing::info!(
                uid = workload.uid,
                gid = workload.gid,
                pid = workload.pid,
                path = ?workload.path,
                code = ?status.code(),
                "refused: {}", status.message()
            )
        })?;
        tracing::debug!(
            uid = workload.uid,
            pid = workload.pid,
            "FetchX509SVID stream opened"
        );
        Ok(Response::new(stream))
    }

    async fn x509_bundles(
        &self,
        req: Request<X509BundlesRequest>,
    ) -> Result<Response<ResponseStream<X509BundlesResponse>>, Status> {
        check_header(&req)?;
        let with_sha256 = needs_sha256(&self.state.borrow().entries);
        let (workload, pod_default) = attest_caller(&req, with_sha256, self.k8s.as_deref()).await?;
        if pod_default.is_some() {
            self.wait_for_issuance(&workload, pod_default.as_ref())
                .await;
        }
        // Bundles go to registered callers only, like SVIDs.
        let stream = stream_changes(
            self.state.clone(),
            self.stop.clone(),
            self.metrics.streams.clone(),
            workload,
            move |snap, w| {
                x509_response(snap, w, pod_default.as_ref()).map(|_| bundles_response(snap))
            },
        )?;
        Ok(Response::new(stream))
    }
}

/// Serves `api` on the socket `listener` until `stop` fires.
pub(super) async fn serve(listener: UnixListener, api: WorkloadApi, stop: CancellationToken) {
    let reports = Reports::new(api.metrics.clone());
    // A failed accept (out of fds) is not passed on (tonic would retry at once): backed off
    // and logged at most once per interval here.
    let accept_errors = svidcar_identity::backoff::AcceptErrors::default();
    let incoming =
        futures_util::stream::unfold((listener, accept_errors), move |(l, mut errors)| {
            let reports = reports.clone();
            async move {
                loop {
                    match l.accept().await {
                        Ok((s, _)) => {
                            return Some((
                                Ok::<_, std::io::Error>(Conn::new(s, reports)),
                                (l, errors),
                            ))
                        }
                        Err(e) => {
                            errors.on_error("agent Workload API socket", &e).await;
                        }
                    }
                }
            }
        });
    let svc = SpiffeWorkloadAPIServer::new(api);
    let result = tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "Workload API server failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::registration::{Entry, Selector};
    use crate::agent::svids::Rotator;
    use crate::Ca;
    use std::time::Duration;
    use svidcar_identity::{SpiffeId, TrustDomain};

    fn entry(id: &str, sel: Selector, hint: Option<&str>) -> Entry {
        Entry {
            spiffe_id: SpiffeId::parse(id).unwrap(),
            selectors: vec![sel],
            hint: hint.map(str::to_owned),
        }
    }

    fn workload(uid: u32) -> Workload {
        Workload {
            uid,
            gid: 0,
            pid: 1,
            path: None,
            sha256: None,
            k8s: None,
        }
    }

    #[tokio::test]
    async fn responses_carry_every_matching_svid_default_first() {
        let td = TrustDomain::parse("example.org").unwrap();
        let ca = Ca::generate(&td, Duration::from_secs(3600)).unwrap();
        let root = ca.bundle_der().to_vec();
        let authority = crate::authority::Authority::in_memory(ca);
        let entries = vec![
            entry("spiffe://example.org/one", Selector::Uid(5), Some("main")),
            entry("spiffe://example.org/two", Selector::Gid(0), None),
            entry("spiffe://example.org/three", Selector::Uid(6), None),
        ];
        let mut r = Rotator::new(
            crate::agent::svids::Signer::Local(authority),
            Duration::from_secs(600),
            Box::new(|| 0.5),
        );
        r.sync(&entries).await;
        let mut reg = crate::agent::svids::Registration::of(entries);
        let other = TrustDomain::parse("other.org").unwrap();
        reg.federated = Arc::new([(other, vec![1, 2, 3])].into_iter().collect());
        let snap = r.snapshot(&reg);
        let resp = x509_response(&snap, &workload(5), None).unwrap();
        let mut unsigned = Snapshot {
            entries: snap.entries.clone(),
            ..Default::default()
        };
        assert_eq!(
            x509_response(&unsigned, &workload(5), None).unwrap_err(),
            Refusal::NotIssuedYet
        );
        // The default identity missing, another one held: nothing is served.
        let mut partial = Snapshot {
            entries: snap.entries.clone(),
            svids: snap.svids.clone(),
            bundle_der: snap.bundle_der.clone(),
            ..Default::default()
        };
        partial
            .svids
            .remove(&SpiffeId::parse("spiffe://example.org/one").unwrap());
        assert_eq!(
            x509_response(&partial, &workload(5), None).unwrap_err(),
            Refusal::NotIssuedYet
        );
        unsigned.entries = Arc::new(Vec::new());
        assert_eq!(
            x509_response(&unsigned, &workload(5), None).unwrap_err(),
            Refusal::NoEntry
        );
        let ids: Vec<_> = resp.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
        assert_eq!(
            ids,
            ["spiffe://example.org/one", "spiffe://example.org/two"]
        );
        assert_eq!(resp.svids[0].hint, "main");
        assert_eq!(resp.svids[0].bundle, root);
        assert_eq!(
            resp.federated_bundles.get("spiffe://other.org"),
            Some(&vec![1, 2, 3])
        );
        assert!(format!("{resp:?}").contains("spiffe://example.org/one"));
        let mut nobody = workload(9);
        nobody.gid = 9;
        assert_eq!(
            x509_response(&snap, &nobody, None).unwrap_err(),
            Refusal::NoEntry
        );
        let bundles = bundles_response(&snap);
        assert_eq!(bundles.bundles.get("spiffe://example.org"), Some(&root));
        assert_eq!(bundles.bundles.len(), 2);
    }

    #[tokio::test]
    async fn a_pods_default_identity_comes_after_the_entries_once() {
        let td = TrustDomain::parse("example.org").unwrap();
        let authority = crate::authority::Authority::in_memory(
            Ca::generate(&td, Duration::from_secs(3600)).unwrap(),
        );
        let pod_id = SpiffeId::parse("spiffe://example.org/ns/shop/sa/backend").unwrap();
        let entries = vec![entry("spiffe://example.org/one", Selector::Uid(5), None)];
        let (_tx, extra) = watch::channel(Arc::new(
            [(pod_id.clone(), vec!["k8s:ns:shop".to_owned()])]
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>(),
        ));
        let mut r = Rotator::new(
            crate::agent::svids::Signer::Local(authority),
            Duration::from_secs(600),
            Box::new(|| 0.5),
        )
        .with_extra_ids(extra);
        r.sync(&entries).await;
        let snap = r.snapshot(&crate::agent::svids::Registration::of(entries));
        let ids = |resp: X509SvidResponse| {
            resp.svids
                .into_iter()
                .map(|s| s.spiffe_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ids(x509_response(&snap, &workload(5), Some(&pod_id)).unwrap()),
            ["spiffe://example.org/one", pod_id.as_str()]
        );
        assert_eq!(
            ids(x509_response(&snap, &workload(6), Some(&pod_id)).unwrap()),
            [pod_id.as_str()],
            "no entry: the default identity alone"
        );
        let same = SpiffeId::parse("spiffe://example.org/one").unwrap();
        assert_eq!(
            ids(x509_response(&snap, &workload(5), Some(&same)).unwrap()),
            ["spiffe://example.org/one"],
            "named by an entry already: once"
        );
        let unissued = SpiffeId::parse("spiffe://example.org/ns/new/sa/x").unwrap();
        assert_eq!(
            x509_response(&snap, &workload(6), Some(&unissued)).unwrap_err(),
            Refusal::NotIssuedYet
        );
    }

    #[test]
    fn the_security_header_must_be_exactly_true() {
        let mut req = Request::new(X509SvidRequest {});
        assert_eq!(
            check_header(&req).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        req.metadata_mut()
            .insert(SECURITY_HEADER, "True".parse().unwrap());
        assert!(check_header(&req).is_err());
        req.metadata_mut()
            .insert(SECURITY_HEADER, "true".parse().unwrap());
        assert!(check_header(&req).is_ok());
    }
}
