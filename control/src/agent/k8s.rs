//! Kubernetes pod attestation, as SPIRE's `k8s` workload attestor does it: the caller's pid
//! (from `SO_PEERCRED`) leads to `/proc/<pid>/cgroup`, which names the pod UID and container ID
//! ([`cgroup`]); the kubelet's pod list ([`kubelet`], parsed by [`pods`]) tells the pod's
//! namespace, service account, name, labels and the container's name. A pod's default identity
//! comes from a [`template`] (`ns/{namespace}/sa/{service_account}`).
//!
//! The pod list is cached and refreshed every `refresh_interval`; a caller whose pod or
//! container is not in it triggers a refresh (at most one request at a time, and not more often
//! than [`MIN_REFRESH_GAP`]), retried with backoff until `attest_wait` has passed, after which
//! attestation is refused naming the pod UID or container ID and what was missing.
//!
//! Every refresh also publishes the default IDs of the node's pods, so that their SVIDs are
//! issued (and rotated) like those of registration entries, before the pods ask.

pub mod cgroup;
pub mod kubelet;
pub mod pods;
pub mod template;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use svidcar_identity::{SpiffeId, TrustDomain};
use tokio::sync::{watch, Mutex};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use cgroup::{ContainerId, PodCgroup, PodUid};
pub use kubelet::{Kubelet, KubeletError, KubeletUrl, Verification};
pub use pods::{PodFacts, PodIndex};
pub use template::IdTemplate;

use super::attest::status_ids;
use super::metrics::AgentMetrics;
use super::svids::ExtraIds;

/// The shortest time between two pod-list requests.
pub const MIN_REFRESH_GAP: Duration = Duration::from_millis(200);

/// The first wait between lookups of a missing pod; doubled each time up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);

/// The longest wait between lookups of a missing pod.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Why a caller could not be attested as a pod.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// `/proc/<pid>/cgroup` cannot be read, or the process changed identity meanwhile.
    #[error("process {pid}: {message}")]
    Process {
        /// The pid.
        pid: i32,
        /// What failed.
        message: String,
    },
    /// The cgroups name a pod but cannot be believed.
    #[error("process {pid}: {source}")]
    Cgroup {
        /// The pid.
        pid: i32,
        /// What is wrong.
        source: cgroup::CgroupError,
    },
    /// The pod (or its container) is not in the kubelet's pod list, after refreshing it for the
    /// whole wait.
    #[error("{missing} after {waited:?}{}", last_error.as_ref().map(|e| format!(" (the last request failed: {e})")).unwrap_or_default())]
    NotListed {
        /// What is missing.
        missing: pods::Missing,
        /// How long it was waited for.
        waited: Duration,
        /// Why the latest pod-list request failed, if it did.
        last_error: Option<String>,
    },
    /// The default identity template gives no valid SPIFFE ID for this pod.
    #[error("default identity {template} for namespace {namespace:?}, service account {service_account:?}: {source}")]
    DefaultId {
        /// The template.
        template: String,
        /// The pod's namespace.
        namespace: String,
        /// The pod's service account.
        service_account: String,
        /// Why the ID is invalid.
        source: svidcar_identity::IdError,
    },
}

impl K8sError {
    /// Whether the kubelet could not be asked (rather than saying no): the caller should retry.
    pub fn kubelet_unavailable(&self) -> bool {
        matches!(
            self,
            K8sError::NotListed {
                last_error: Some(_),
                ..
            }
        )
    }
}

/// The text of `/proc/<pid>/cgroup`, checking afterwards that the pid was not reused meanwhile
/// (its effective ids must still be the ones the socket reported). Blocking.
fn read_cgroup(pid: i32, uid: u32, gid: u32) -> Result<String, K8sError> {
    let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    let text = std::fs::read_to_string(proc_dir.join("cgroup")).map_err(|e| K8sError::Process {
        pid,
        message: format!("cannot read /proc/{pid}/cgroup: {e}"),
    })?;
    let status = std::fs::read_to_string(proc_dir.join("status")).ok();
    if status.as_deref().and_then(status_ids) != Some((uid, gid)) {
        return Err(K8sError::Process {
            pid,
            message: "exited or changed identity during attestation".into(),
        });
    }
    Ok(text)
}

/// Settings of pod attestation, from the agent's configuration.
#[derive(Debug, Clone)]
pub struct K8sSettings {
    /// The kubelet client.
    pub kubelet: Kubelet,
    /// Only pods of this node are considered, when given.
    pub node_name: Option<String>,
    /// The default identity of every pod, if on.
    pub default_id: Option<IdTemplate>,
    /// How long a caller missing from the pod list is waited for.
    pub attest_wait: Duration,
}

/// The pod attestor: the cached pod list and the kubelet behind it.
#[derive(Debug)]
pub struct K8sAttestor {
    settings: K8sSettings,
    trust_domain: TrustDomain,
    index: watch::Sender<Arc<PodIndex>>,
    default_ids: watch::Sender<ExtraIds>,
    /// When the latest request started; held while one is in flight.
    last_fetch: Mutex<Option<Instant>>,
    /// Why the latest request failed, if it did.
    last_error: std::sync::Mutex<Option<String>>,
    metrics: Arc<AgentMetrics>,
}

impl K8sAttestor {
    /// An attestor with an empty pod list; [`K8sAttestor::run`] fills it.
    pub fn new(
        settings: K8sSettings,
        trust_domain: TrustDomain,
        metrics: Arc<AgentMetrics>,
    ) -> Self {
        Self {
            settings,
            trust_domain,
            index: watch::Sender::new(Arc::default()),
            default_ids: watch::Sender::new(Arc::default()),
            last_fetch: Mutex::new(None),
            last_error: std::sync::Mutex::new(None),
            metrics,
        }
    }

    /// The default SPIFFE IDs of the pods listed now, each with the `k8s:` selectors its pods
    /// share ([`default_id_selectors`]), updated on every refresh.
    pub fn default_ids(&self) -> watch::Receiver<ExtraIds> {
        self.default_ids.subscribe()
    }

    /// The default SPIFFE ID of `pod`, if default identities are on.
    pub fn default_id(&self, pod: &PodFacts) -> Result<Option<SpiffeId>, K8sError> {
        let Some(template) = &self.settings.default_id else {
            return Ok(None);
        };
        template
            .render(&self.trust_domain, pod)
            .map(Some)
            .map_err(|source| K8sError::DefaultId {
                template: template.to_string(),
                namespace: pod.namespace.clone(),
                service_account: pod.service_account.clone(),
                source,
            })
    }

    /// The pod facts of process `pid`, whose effective ids the socket reported as `uid`/`gid`;
    /// `None` when it is not in a pod.
    pub async fn attest(&self, pid: i32, uid: u32, gid: u32) -> Result<Option<PodFacts>, K8sError> {
        let text = tokio::task::spawn_blocking(move || read_cgroup(pid, uid, gid))
            .await
            .map_err(|_| K8sError::Process {
                pid,
                message: "attestation task failed".into(),
            })??;
        let Some(at) = cgroup::parse(&text).map_err(|source| K8sError::Cgroup { pid, source })?
        else {
            return Ok(None);
        };
        self.lookup(&at).await.map(Some)
    }

    /// The facts of the pod and container `at`, refreshing the pod list while they are missing,
    /// for at most `attest_wait`.
    pub async fn lookup(&self, at: &PodCgroup) -> Result<PodFacts, K8sError> {
        let started = Instant::now();
        let deadline = started + self.settings.attest_wait;
        let mut delay = FIRST_RETRY_DELAY;
        loop {
            let missing = match self.index.borrow().lookup(at) {
                Ok(facts) => return Ok(facts),
                Err(missing) => missing,
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(K8sError::NotListed {
                    missing,
                    waited: self.settings.attest_wait,
                    last_error: self.last_error(),
                });
            }
            // A refresh that outlives the deadline is not waited for (it goes on for others).
            let _ = tokio::time::timeout_at(deadline, self.refresh(false)).await;
            if self.index.borrow().lookup(at).is_ok() {
                continue;
            }
            tokio::time::sleep_until(deadline.min(Instant::now() + delay)).await;
            delay = (delay * 2).min(MAX_RETRY_DELAY);
        }
    }

    /// Why the latest pod-list request failed, if it did.
    fn last_error(&self) -> Option<String> {
        match self.last_error.lock() {
            Ok(e) => e.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Fetches the pod list unless one was fetched less than [`MIN_REFRESH_GAP`] ago (or
    /// `force`); one request at a time (a caller arriving meanwhile waits for it, then finds
    /// the list fresh).
    async fn refresh(&self, force: bool) {
        let mut last = self.last_fetch.lock().await;
        if !force && last.is_some_and(|at| at.elapsed() < MIN_REFRESH_GAP) {
            return;
        }
        *last = Some(Instant::now());
        let error = self.fetch().await.err();
        match self.last_error.lock() {
            Ok(mut e) => *e = error,
            Err(poisoned) => *poisoned.into_inner() = error,
        }
    }

    /// One pod-list request; publishes the list and the default IDs.
    async fn fetch(&self) -> Result<(), String> {
        let kubelet = &self.settings.kubelet;
        let parsed = match kubelet.pods().await {
            Ok(body) => {
                pods::parse(&body, self.settings.node_name.as_deref()).map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        let index = match parsed {
            Ok(index) => index,
            Err(e) => {
                self.metrics.kubelet_fetch(false);
                return Err(e);
            }
        };
        self.metrics.kubelet_fetch(true);
        self.metrics.kubernetes_pods.set(index.len() as i64);
        let ids = default_id_selectors(index.pods().filter_map(|p| {
            let facts = PodFacts {
                namespace: p.namespace.clone(),
                service_account: p.service_account.clone(),
                pod_name: p.name.clone(),
                pod_uid: p.uid.clone(),
                labels: Default::default(),
                container_name: None,
                container_id: None,
            };
            let id = self.default_id(&facts).ok().flatten()?;
            Some((id, facts))
        }));
        self.default_ids.send_if_modified(|old| {
            let changed = **old != ids;
            if changed {
                *old = Arc::new(ids);
            }
            changed
        });
        self.index.send_replace(Arc::new(index));
        Ok(())
    }

    /// Refreshes the pod list every `interval` until `stop` fires; a failure is logged when it
    /// starts (and when it changes), a recovery once.
    pub async fn run(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        // `None`: nothing reported yet; `Some(None)`: success reported.
        let mut reported: Option<Option<String>> = None;
        loop {
            self.refresh(true).await;
            let error = self.last_error();
            if reported.as_ref() != Some(&error) {
                let kubelet = self.settings.kubelet.url();
                match &error {
                    Some(e) => {
                        tracing::error!(%kubelet, error = %e, "cannot get the kubelet's pod list; retrying")
                    }
                    None => {
                        let pods = self.index.borrow().len();
                        tracing::info!(%kubelet, pods, "got the kubelet's pod list")
                    }
                }
                reported = Some(error);
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}

/// Each default ID of `pods` (pairs of an ID and a pod whose default identity it is) with the
/// selectors it is issued for: `k8s:ns:<namespace>` and `k8s:sa:<service account>`, only those
/// every pod with that ID shares (a template without `{service_account}` gives pods of several
/// service accounts one ID: then no `k8s:sa:` selector is claimed).
pub fn default_id_selectors(
    pods: impl IntoIterator<Item = (SpiffeId, PodFacts)>,
) -> BTreeMap<SpiffeId, Vec<String>> {
    let mut ids: BTreeMap<SpiffeId, Vec<String>> = BTreeMap::new();
    for (id, pod) in pods {
        let own = [
            format!("k8s:ns:{}", pod.namespace),
            format!("k8s:sa:{}", pod.service_account),
        ];
        ids.entry(id)
            .and_modify(|shared| shared.retain(|s| own.contains(s)))
            .or_insert_with(|| own.to_vec());
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, sa: &str, name: &str) -> PodFacts {
        PodFacts {
            namespace: ns.into(),
            service_account: sa.into(),
            pod_name: name.into(),
            pod_uid: PodUid::parse("8d4a1f3e-0b1c-4f7e-9a2b-3c4d5e6f7a8b").unwrap(),
            labels: Default::default(),
            container_name: None,
            container_id: None,
        }
    }

    #[test]
    fn a_default_id_is_issued_for_the_k8s_selectors_its_pods_share() {
        let id = |s: &str| SpiffeId::parse(s).unwrap();
        let web = id("spiffe://example.org/ns/shop/sa/web");
        let shop = id("spiffe://example.org/ns/shop");
        let ids = default_id_selectors([
            (web.clone(), pod("shop", "web", "web-1")),
            (web.clone(), pod("shop", "web", "web-2")),
            // A template of the namespace only: two service accounts, one ID.
            (shop.clone(), pod("shop", "web", "web-1")),
            (shop.clone(), pod("shop", "api", "api-1")),
        ]);
        assert_eq!(ids[&web], ["k8s:ns:shop", "k8s:sa:web"]);
        assert_eq!(ids[&shop], ["k8s:ns:shop"]);
        assert_eq!(ids.len(), 2);
    }
}
