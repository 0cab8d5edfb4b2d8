//! The SVIDs the agent holds: one per SPIFFE ID named by a registration entry or, with pod
//! attestation, by the default identity of a pod on the node, issued by the CA, re-issued when [`rotation::refresh_delay`] says so, and published as one [`Snapshot`] that
//! every open Workload API stream watches.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use svidcar_identity::{check_leaf, format_unix, SpiffeId, SvidError, TrustDomain};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::metrics::AgentMetrics;
use super::registration::Entry;
use super::rotation;
use super::upstream::{Upstream, UpstreamError};
use crate::authority::{Authority, AuthorityError, Bundle};

/// Why an SVID could not be issued (the rotator retries soon either way, keeping the SVID it
/// holds).
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The CA held here cannot sign (expired, or the CA directory failed).
    #[error("{0}")]
    Local(#[source] AuthorityError),
    /// The control plane did not sign; [`UpstreamError::cause`] says whose fault it was.
    #[error("{0}")]
    Upstream(#[source] UpstreamError),
    /// The certificate signed is not a valid X.509-SVID.
    #[error("{0}")]
    Leaf(#[source] SvidError),
    /// The certificate signed names another SPIFFE ID than the one asked for.
    #[error("the SVID issued names {got}")]
    WrongId {
        /// The ID in the certificate.
        got: SpiffeId,
    },
}

/// How long to wait before retrying after the CA failed to sign.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// One issued SVID. `Debug` never shows the key.
pub struct HeldSvid {
    /// The identity.
    pub id: SpiffeId,
    /// Leaf certificate, DER.
    pub cert_der: Vec<u8>,
    /// PKCS#8 private key, DER.
    pub key_der: Vec<u8>,
    /// Serial number, hex.
    pub serial: String,
    /// Expiry, seconds since the Unix epoch.
    pub not_after: i64,
    refresh: Instant,
}

impl fmt::Debug for HeldSvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeldSvid")
            .field("id", &self.id.as_str())
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The registration in force: entries, and the federated bundles read from their files.
#[derive(Debug, Default, Clone)]
pub struct Registration {
    /// Entries, in file order.
    pub entries: Arc<Vec<Entry>>,
    /// Foreign trust domains' bundles (DER certificates, concatenated).
    pub federated: Arc<BTreeMap<TrustDomain, Vec<u8>>>,
}

impl Registration {
    /// Entries only, no federation.
    pub fn of(entries: Vec<Entry>) -> Self {
        Self {
            entries: Arc::new(entries),
            federated: Arc::default(),
        }
    }
}

/// Everything a Workload API response is built from, at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Registration entries in force.
    pub entries: Arc<Vec<Entry>>,
    /// Federated bundles in force.
    pub federated: Arc<BTreeMap<TrustDomain, Vec<u8>>>,
    /// The SVID of every SPIFFE ID the entries name (absent while the CA cannot sign).
    pub svids: HashMap<SpiffeId, Arc<HeldSvid>>,
    /// Our trust domain and its bundle (DER certificates, concatenated).
    pub trust_domain: Option<TrustDomain>,
    /// The bundle of our trust domain.
    pub bundle_der: Vec<u8>,
    /// Why the latest issuance of an SVID failed, for IDs whose latest attempt failed.
    pub issue_errors: HashMap<SpiffeId, String>,
}

/// SPIFFE IDs to hold SVIDs for beyond the registration entries (the node's pods' default IDs),
/// each with the selectors it is issued for (`k8s:ns:…`, `k8s:sa:…`).
pub type ExtraIds = Arc<BTreeMap<SpiffeId, Vec<String>>>;

/// Where SVIDs come from.
#[derive(Debug, Clone)]
pub enum Signer {
    /// The CA held here (single-machine mode).
    Local(Arc<Authority>),
    /// `svidcar control`, by CSR.
    Upstream(Arc<Upstream>),
}

impl Signer {
    /// Our trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        match self {
            Signer::Local(a) => a.trust_domain(),
            Signer::Upstream(u) => u.trust_domain(),
        }
    }

    fn bundle(&self) -> Bundle {
        match self {
            Signer::Local(a) => a.bundle(),
            Signer::Upstream(u) => u.bundle(),
        }
    }

    fn watch_bundle(&self) -> watch::Receiver<Bundle> {
        match self {
            Signer::Local(a) => a.watch_bundle(),
            Signer::Upstream(u) => u.watch_bundle(),
        }
    }

    /// An SVID for `id`, issued for `selectors` (told to the control plane for its inventory;
    /// the CA held here keeps no inventory): certificate and PKCS#8 key, DER.
    async fn issue(
        &self,
        id: &SpiffeId,
        selectors: &[String],
        ttl: Duration,
    ) -> Result<(Vec<u8>, Vec<u8>), IssueError> {
        match self {
            Signer::Local(a) => {
                let svid = a.issue(id, ttl).map_err(IssueError::Local)?;
                Ok((svid.cert_der.to_vec(), svid.key_der().secret_der().to_vec()))
            }
            Signer::Upstream(u) => {
                let (cert, key) = u.issue(id, selectors).await.map_err(IssueError::Upstream)?;
                Ok((cert.to_vec(), key))
            }
        }
    }
}

/// Issues and rotates SVIDs.
pub struct Rotator {
    signer: Signer,
    ttl: Duration,
    jitter: Box<dyn FnMut() -> f64 + Send>,
    held: HashMap<SpiffeId, Arc<HeldSvid>>,
    /// IDs whose first SVID could not be issued yet, and when to try again.
    failed: HashMap<SpiffeId, Instant>,
    /// The latest failure of each ID whose latest attempt failed.
    errors: HashMap<SpiffeId, String>,
    issued: u64,
    metrics: Option<Arc<AgentMetrics>>,
    /// More IDs to hold SVIDs for than the entries name (the node's pods' default IDs).
    extra: Option<watch::Receiver<ExtraIds>>,
    /// Every ID wanted now and the selectors it is issued for: the first entry naming it, else
    /// its pod's.
    selectors: HashMap<SpiffeId, Vec<String>>,
}

impl fmt::Debug for Rotator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rotator")
            .field("ttl", &self.ttl)
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl Rotator {
    /// SVIDs valid for `ttl` (clamped to the CA's own expiry); `jitter` draws in [0, 1).
    pub fn new(signer: Signer, ttl: Duration, jitter: Box<dyn FnMut() -> f64 + Send>) -> Self {
        Self {
            signer,
            ttl,
            jitter,
            held: HashMap::new(),
            failed: HashMap::new(),
            errors: HashMap::new(),
            issued: 0,
            metrics: None,
            extra: None,
            selectors: HashMap::new(),
        }
    }

    /// Also holds SVIDs for the IDs `extra` names, following its changes.
    pub fn with_extra_ids(mut self, extra: watch::Receiver<ExtraIds>) -> Self {
        self.extra = Some(extra);
        self
    }

    /// Counts issuances and failures in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<AgentMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// How many SVIDs were issued so far.
    pub fn issued(&self) -> u64 {
        self.issued
    }

    async fn issue(&mut self, id: &SpiffeId) -> Result<HeldSvid, IssueError> {
        let selectors = self
            .selectors
            .get(id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let (cert_der, key_der) = self.signer.issue(id, selectors, self.ttl).await?;
        let leaf = check_leaf(&cert_der).map_err(IssueError::Leaf)?;
        if leaf.id != *id {
            return Err(IssueError::WrongId { got: leaf.id });
        }
        let at = |secs: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
        let delay = rotation::refresh_delay(
            at(leaf.not_before),
            at(leaf.not_after),
            SystemTime::now(),
            (self.jitter)(),
        );
        self.issued += 1;
        tracing::info!(
            id = %id,
            serial = %leaf.serial,
            not_after = %format_unix(leaf.not_after),
            refresh_in_ms = delay.as_millis() as u64,
            "issued X.509-SVID"
        );
        Ok(HeldSvid {
            id: id.clone(),
            cert_der,
            key_der,
            serial: leaf.serial,
            not_after: leaf.not_after,
            refresh: Instant::now() + delay,
        })
    }

    async fn issue_or_retry(&mut self, id: &SpiffeId) {
        match self.issue(id).await {
            Ok(svid) => {
                self.failed.remove(id);
                self.errors.remove(id);
                self.held.insert(id.clone(), Arc::new(svid));
                if let Some(m) = &self.metrics {
                    m.svids_issued.inc();
                }
            }
            Err(e) => {
                tracing::error!(id = %id, error = %e, "cannot issue X.509-SVID; retrying");
                if let Some(m) = &self.metrics {
                    m.issue_failures.inc();
                }
                self.errors.insert(id.clone(), e.to_string());
                if !self.held.contains_key(id) {
                    self.failed
                        .insert(id.clone(), Instant::now() + RETRY_AFTER_FAILURE);
                }
                // Keep the previous SVID (if any) and try again soon.
                if let Some(old) = self.held.get(id) {
                    let retry = HeldSvid {
                        id: old.id.clone(),
                        cert_der: old.cert_der.clone(),
                        key_der: old.key_der.clone(),
                        serial: old.serial.clone(),
                        not_after: old.not_after,
                        refresh: Instant::now() + RETRY_AFTER_FAILURE,
                    };
                    self.held.insert(id.clone(), Arc::new(retry));
                }
            }
        }
    }

    /// Issues SVIDs for IDs the entries (or the extra IDs) name and drops those of IDs no longer
    /// named.
    pub async fn sync(&mut self, entries: &[Entry]) {
        let extra = self
            .extra
            .as_mut()
            .map(|rx| rx.borrow_and_update().clone())
            .unwrap_or_default();
        self.selectors = wanted_selectors(entries, &extra);
        let wanted = &self.selectors;
        self.held.retain(|id, _| wanted.contains_key(id));
        self.failed.retain(|id, _| wanted.contains_key(id));
        self.errors.retain(|id, _| wanted.contains_key(id));
        let missing: Vec<SpiffeId> = wanted
            .keys()
            .filter(|id| !self.held.contains_key(*id))
            .cloned()
            .collect();
        for id in &missing {
            self.issue_or_retry(id).await;
        }
    }

    /// Re-issues every SVID whose refresh instant has come; returns whether any was.
    pub async fn rotate_due(&mut self, now: Instant) -> bool {
        let due: Vec<SpiffeId> = self
            .held
            .values()
            .filter(|s| s.refresh <= now)
            .map(|s| s.id.clone())
            .chain(
                self.failed
                    .iter()
                    .filter(|(_, at)| **at <= now)
                    .map(|(id, _)| id.clone()),
            )
            .collect();
        for id in &due {
            self.issue_or_retry(id).await;
        }
        !due.is_empty()
    }

    /// The earliest refresh (or retry) instant, if any.
    pub fn next_refresh(&self) -> Option<Instant> {
        self.held
            .values()
            .map(|s| s.refresh)
            .chain(self.failed.values().copied())
            .min()
    }

    /// The current state for responses.
    pub fn snapshot(&self, reg: &Registration) -> Snapshot {
        Snapshot {
            entries: reg.entries.clone(),
            federated: reg.federated.clone(),
            svids: self.held.clone(),
            trust_domain: Some(self.signer.trust_domain().clone()),
            bundle_der: self
                .signer
                .bundle()
                .iter()
                .flat_map(|c| c.iter().copied())
                .collect(),
            issue_errors: self.errors.clone(),
        }
    }

    /// Keeps SVIDs for the entries in `registration` and rotates them, publishing every change to
    /// `out`, until `cancel` fires.
    pub async fn run(
        mut self,
        mut registration: watch::Receiver<Registration>,
        out: watch::Sender<Arc<Snapshot>>,
        cancel: CancellationToken,
    ) {
        let mut bundle = self.signer.watch_bundle();
        bundle.mark_unchanged();
        let mut current = registration.borrow_and_update().clone();
        self.sync(&current.entries).await;
        out.send_replace(Arc::new(self.snapshot(&current)));
        loop {
            let next = self.next_refresh();
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = registration.changed() => {
                    if r.is_err() {
                        return;
                    }
                    current = registration.borrow_and_update().clone();
                    self.sync(&current.entries).await;
                }
                _ = sleep_until(next) => {
                    self.rotate_due(Instant::now()).await;
                }
                // A root added to or dropped from the bundle: streams get the new bundle.
                r = bundle.changed() => {
                    if r.is_err() {
                        return;
                    }
                }
                // Pods came or went.
                true = extra_changed(&mut self.extra) => {
                    self.sync(&current.entries).await;
                }
            }
            out.send_replace(Arc::new(self.snapshot(&current)));
        }
    }
}

/// Every SPIFFE ID wanted and the selectors it is issued for: each entry's ID with the selectors
/// of the first entry naming it, then the extra IDs no entry names, with their own.
fn wanted_selectors(
    entries: &[Entry],
    extra: &BTreeMap<SpiffeId, Vec<String>>,
) -> HashMap<SpiffeId, Vec<String>> {
    let mut wanted = HashMap::new();
    for e in entries {
        wanted
            .entry(e.spiffe_id.clone())
            .or_insert_with(|| e.selectors.iter().map(ToString::to_string).collect());
    }
    for (id, selectors) in extra {
        wanted
            .entry(id.clone())
            .or_insert_with(|| selectors.clone());
    }
    wanted
}

/// Resolves when the extra IDs change: `true`, or `false` once their sender is gone (never, when
/// there are none).
async fn extra_changed(extra: &mut Option<watch::Receiver<ExtraIds>>) -> bool {
    match extra {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::registration::uid0_entry;

    fn ca() -> Signer {
        let td = TrustDomain::parse("example.org").unwrap();
        Signer::Local(Authority::in_memory(
            crate::Ca::generate(&td, Duration::from_secs(24 * 3600)).unwrap(),
        ))
    }

    fn serial(snap: &Snapshot, id: &str) -> String {
        snap.svids[&SpiffeId::parse(id).unwrap()].serial.clone()
    }

    /// With time paused, an SVID of a 1 h TTL (backdated 30 s, jitter 0) is re-issued 30 min in,
    /// not before; the new one is pushed to watchers.
    #[tokio::test(start_paused = true)]
    async fn rotates_at_half_the_lifetime_with_paused_time() {
        let rotator = Rotator::new(ca(), Duration::from_secs(3600), Box::new(|| 0.0));
        let (entries_tx, entries_rx) =
            watch::channel(Registration::of(vec![uid0_entry("spiffe://example.org/a")]));
        let (out_tx, mut out_rx) = watch::channel(Arc::new(Snapshot::default()));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(rotator.run(entries_rx, out_tx, cancel.clone()));
        out_rx.changed().await.unwrap();
        let first = serial(&out_rx.borrow_and_update(), "spiffe://example.org/a");

        // Refresh point: (3600 + 30) / 2 = 1815 s after not_before = 1785 s after issuance.
        tokio::time::sleep(Duration::from_secs(1780)).await;
        assert!(!out_rx.has_changed().unwrap(), "rotated too early");
        assert_eq!(serial(&out_rx.borrow(), "spiffe://example.org/a"), first);

        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(
            out_rx.has_changed().unwrap(),
            "not rotated at half the lifetime"
        );
        let second = serial(&out_rx.borrow_and_update(), "spiffe://example.org/a");
        assert_ne!(first, second);

        // The next rotation is half the new lifetime later again: about 1785 s after the one
        // that happened between 1780 s and 1790 s (certificate times have whole seconds).
        tokio::time::sleep(Duration::from_secs(1770)).await;
        assert!(!out_rx.has_changed().unwrap());
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(out_rx.has_changed().unwrap());
        assert_ne!(
            serial(&out_rx.borrow_and_update(), "spiffe://example.org/a"),
            second
        );

        // A new entry gets its SVID at once; a removed one is dropped.
        entries_tx.send_replace(Registration::of(vec![uid0_entry("spiffe://example.org/b")]));
        out_rx.changed().await.unwrap();
        let snap = out_rx.borrow_and_update().clone();
        assert_eq!(snap.svids.len(), 1);
        assert!(snap
            .svids
            .contains_key(&SpiffeId::parse("spiffe://example.org/b").unwrap()));

        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_moves_rotation_earlier_never_later() {
        let mut r = Rotator::new(ca(), Duration::from_secs(1000), Box::new(|| 0.999));
        let start = Instant::now();
        r.sync(&[uid0_entry("spiffe://example.org/a")]).await;
        let next = r.next_refresh().unwrap() - start;
        // Lifetime 1030 s (30 s backdating): between 40 % and 50 % of it, minus the 30 s.
        assert!(
            next >= Duration::from_secs(380) && next <= Duration::from_secs(485),
            "{next:?}"
        );
        assert_eq!(r.issued(), 1);
        assert!(!r.rotate_due(start + next - Duration::from_secs(1)).await);
        assert!(r.rotate_due(start + next).await);
        assert_eq!(r.issued(), 2);
    }

    /// Each ID is issued for the selectors of the first entry naming it; a pod's default ID no
    /// entry names, for its pod's; an ID no longer wanted has none.
    #[tokio::test]
    async fn each_id_is_issued_for_the_selectors_that_chose_it() {
        use super::super::registration::Selector;
        let id = |s: &str| SpiffeId::parse(s).unwrap();
        let mut second = uid0_entry("spiffe://example.org/a");
        second.selectors = vec![Selector::Uid(7), Selector::Gid(8)];
        let entries = vec![
            uid0_entry("spiffe://example.org/a"),
            second,
            uid0_entry("spiffe://example.org/b"),
        ];
        let pods = [
            (
                id("spiffe://example.org/pod"),
                vec!["k8s:ns:shop".to_owned()],
            ),
            (
                id("spiffe://example.org/b"),
                vec!["k8s:ns:other".to_owned()],
            ),
        ];
        let (tx, extra) = watch::channel(Arc::new(pods.into_iter().collect::<BTreeMap<_, _>>()));
        let mut r =
            Rotator::new(ca(), Duration::from_secs(600), Box::new(|| 0.0)).with_extra_ids(extra);
        r.sync(&entries).await;
        let of = |r: &Rotator, s: &str| r.selectors.get(&id(s)).cloned();
        assert_eq!(of(&r, "spiffe://example.org/a").unwrap(), ["unix:uid:0"]);
        assert_eq!(of(&r, "spiffe://example.org/b").unwrap(), ["unix:uid:0"]);
        assert_eq!(of(&r, "spiffe://example.org/pod").unwrap(), ["k8s:ns:shop"]);
        assert_eq!(r.issued(), 3);
        tx.send_replace(Arc::default());
        r.sync(&entries[..1]).await;
        assert_eq!(of(&r, "spiffe://example.org/pod"), None);
        assert_eq!(of(&r, "spiffe://example.org/b"), None);
        assert_eq!(r.snapshot(&Registration::default()).svids.len(), 1);
    }

    #[tokio::test]
    async fn svids_never_outlive_the_ca_and_debug_hides_keys() {
        let td = TrustDomain::parse("example.org").unwrap();
        let ca = Authority::in_memory(crate::Ca::generate(&td, Duration::from_secs(120)).unwrap());
        let mut r = Rotator::new(
            Signer::Local(ca.clone()),
            Duration::from_secs(3600),
            Box::new(|| 0.0),
        );
        r.sync(&[uid0_entry("spiffe://example.org/a")]).await;
        let snap = r.snapshot(&Registration::default());
        let held = snap.svids.values().next().unwrap();
        assert!(held.not_after <= ca.active().not_after());
        let shown = format!("{snap:?}");
        assert!(shown.contains("spiffe://example.org/a") && !shown.contains("key_der"));
    }
}
