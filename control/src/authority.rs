//! The trust domain's signing authority: the CA that signs now, plus every root published in the
//! trust bundle (a prepared successor, predecessors whose SVIDs are still out there). Used by
//! `svidcar agent` in single-machine mode and by `svidcar control` when it serves agents on
//! other nodes.
//!
//! Rotation: a successor is prepared (published, not signing) at half the active root's lifetime,
//! activated at 5/6 of it once it has been published long enough, and the old root leaves the
//! bundle when the last SVID it signed has expired ([`schedule`] has the exact rule).
//!
//! Pure: [`schedule`]. I/O: [`dir`] (the CA directory) and the [`Authority::run`] task.

mod clock;
pub mod dir;
mod roots;
pub mod schedule;
mod steps;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
use svidcar_identity::{format_unix, SpiffeId, TrustDomain};
use time::OffsetDateTime;
use tokio::sync::watch;

pub use clock::Clock;
pub use roots::RetiredRoot;

use crate::{Ca, CaError, IssuedSvid};
use roots::RootSet;

/// The roots of our trust domain's bundle, DER, in publication order.
pub type Bundle = Arc<Vec<CertificateDer<'static>>>;

/// Why the authority cannot be opened or cannot sign.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// The CA directory or a file in it cannot be used.
    #[error("{}: {message}", path.display())]
    Dir {
        /// The directory or file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The CA failed.
    #[error("CA: {0}")]
    Ca(#[from] CaError),
    /// A certificate signing request was refused.
    #[error("certificate signing request: {0}")]
    Csr(String),
}

/// The state behind the lock: the roots, the bundle they publish, and the latest expiry of an
/// SVID the active root signed (so that it stays published long enough once it retires).
#[derive(Debug)]
struct Roots {
    set: RootSet,
    bundle: Bundle,
    latest_signed: i64,
}

/// How the CA set rotates.
#[derive(Debug, Clone, Copy)]
struct Rotation {
    ca_ttl: Duration,
    svid_ttl: Duration,
}

/// A trust domain's CA set, shared by every task that signs.
#[derive(Debug)]
pub struct Authority {
    td: TrustDomain,
    dir: Option<PathBuf>,
    /// The directory's lock, held for the authority's lifetime: one process per CA directory.
    _lock: Option<std::fs::File>,
    rotation: Option<Rotation>,
    clock: Clock,
    roots: Mutex<Roots>,
    bundle_tx: watch::Sender<Bundle>,
}

/// How an [`Authority`] was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// A new CA was created in an empty directory.
    Created,
    /// The directory's CA was loaded.
    Loaded,
}

impl Authority {
    /// Opens the CA directory `dir` (see [`dir`]): loads its roots, or creates one for `td` valid
    /// for `ca_ttl` when it holds none, then takes every rotation step already due (a successor
    /// for an expired root, a new root when all have expired). Successors are created valid for
    /// `ca_ttl`; `svid_ttl` is the lifetime of the SVIDs signed (see [`schedule`]).
    pub fn open(
        dir: &Path,
        td: Option<&TrustDomain>,
        ca_ttl: Duration,
        svid_ttl: Duration,
    ) -> Result<(Arc<Self>, Opened), AuthorityError> {
        let lock = dir::lock(dir)?;
        Self::open_inner(dir, td, ca_ttl, svid_ttl, Clock::system(), Some(lock))
    }

    /// [`Authority::open`] reading the time from `clock`, without taking the directory's lock
    /// (tests that reopen a directory while its first authority still runs).
    pub fn open_with_clock(
        dir: &Path,
        td: Option<&TrustDomain>,
        ca_ttl: Duration,
        svid_ttl: Duration,
        clock: Clock,
    ) -> Result<(Arc<Self>, Opened), AuthorityError> {
        Self::open_inner(dir, td, ca_ttl, svid_ttl, clock, None)
    }

    fn open_inner(
        dir: &Path,
        td: Option<&TrustDomain>,
        ca_ttl: Duration,
        svid_ttl: Duration,
        clock: Clock,
        lock: Option<std::fs::File>,
    ) -> Result<(Arc<Self>, Opened), AuthorityError> {
        let (set, created) = dir::load_or_create(dir, td, ca_ttl, clock.now())?;
        let opened = if created {
            Opened::Created
        } else {
            Opened::Loaded
        };
        let rotation = Rotation { ca_ttl, svid_ttl };
        let authority = Self::with_roots(set, Some(dir.to_owned()), lock, Some(rotation), clock);
        authority.catch_up()?;
        Ok((authority, opened))
    }

    /// An authority holding `ca` in memory only, never rotating (tests, demos).
    pub fn in_memory(ca: Ca) -> Arc<Self> {
        let set = RootSet {
            active: Arc::new(ca),
            prepared: None,
            retired: Vec::new(),
        };
        Self::with_roots(set, None, None, None, Clock::system())
    }

    fn with_roots(
        set: RootSet,
        dir: Option<PathBuf>,
        lock: Option<std::fs::File>,
        rotation: Option<Rotation>,
        clock: Clock,
    ) -> Arc<Self> {
        let bundle = set.bundle();
        let (bundle_tx, _) = watch::channel(bundle.clone());
        Arc::new(Self {
            td: set.active.trust_domain().clone(),
            dir,
            _lock: lock,
            rotation,
            clock,
            roots: Mutex::new(Roots {
                set,
                bundle,
                latest_signed: 0,
            }),
            bundle_tx,
        })
    }

    fn roots(&self) -> MutexGuard<'_, Roots> {
        match self.roots.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Our trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.td
    }

    /// The CA directory, if the authority has one.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The CA that signs now.
    pub fn active(&self) -> Arc<Ca> {
        self.roots().set.active.clone()
    }

    /// The published successor, if one is prepared.
    pub fn prepared(&self) -> Option<Arc<Ca>> {
        self.roots().set.prepared.clone()
    }

    /// The retired roots still published, oldest first.
    pub fn retired(&self) -> Vec<RetiredRoot> {
        self.roots().set.retired.clone()
    }

    /// The roots published now.
    pub fn bundle(&self) -> Bundle {
        self.roots().bundle.clone()
    }

    /// The bundle, now and on every change.
    pub fn watch_bundle(&self) -> watch::Receiver<Bundle> {
        self.bundle_tx.subscribe()
    }

    /// The active CA and the validity window of an SVID it issues now for `ttl`: backdated by a
    /// tenth of the lifetime (at most 30 s) for clock skew, never outside the CA's own window.
    /// Remembers the expiry, so that the CA stays published until it has passed.
    fn signer(&self, ttl: Duration) -> Result<(Arc<Ca>, OffsetDateTime, OffsetDateTime), CaError> {
        let now = self.clock.now();
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        let mut roots = self.roots();
        let ca = roots.set.active.clone();
        let not_before = now
            .saturating_sub(secs((ttl / 10).min(Duration::from_secs(30))))
            .max(ca.not_before());
        let not_after = now.saturating_add(secs(ttl).max(1)).min(ca.not_after());
        if not_after <= now {
            return Err(CaError::Load(format!(
                "the CA expired at {}",
                format_unix(ca.not_after())
            )));
        }
        roots.latest_signed = roots.latest_signed.max(not_after);
        drop(roots);
        let at = |t: i64| {
            OffsetDateTime::from_unix_timestamp(t).map_err(|e| CaError::Load(e.to_string()))
        };
        Ok((ca, at(not_before)?, at(not_after)?))
    }

    /// Issues an X.509-SVID for `id` with a new key, valid for `ttl` (clamped to the CA).
    pub fn issue(&self, id: &SpiffeId, ttl: Duration) -> Result<IssuedSvid, AuthorityError> {
        let (ca, not_before, not_after) = self.signer(ttl)?;
        let mut params = ca.svid_params(id, ttl)?;
        (params.not_before, params.not_after) = (not_before, not_after);
        Ok(ca.sign(id, &params)?)
    }

    /// Issues an X.509-SVID for `id` that also names `dns_names` (DNS SANs, which the X.509-SVID
    /// spec allows beside the one URI SAN), valid for `ttl` (clamped to the CA): the admission
    /// webhook's serving certificate, which the Kubernetes API server checks by DNS name.
    pub fn issue_with_dns(
        &self,
        id: &SpiffeId,
        dns_names: &[String],
        ttl: Duration,
    ) -> Result<IssuedSvid, AuthorityError> {
        let (ca, not_before, not_after) = self.signer(ttl)?;
        let mut params = ca.svid_params(id, ttl)?;
        (params.not_before, params.not_after) = (not_before, not_after);
        for name in dns_names {
            let name = rcgen::string::Ia5String::try_from(name.as_str())
                .map_err(|e| AuthorityError::Ca(CaError::Rcgen(e)))?;
            params.subject_alt_names.push(rcgen::SanType::DnsName(name));
        }
        Ok(ca.sign(id, &params)?)
    }

    /// Signs the public key of a PKCS#10 request (whose signature must verify) as an X.509-SVID
    /// for `id`, valid for `ttl` (clamped to the CA). Whatever else the request asks for (names,
    /// extensions) is ignored: the SVID's contents are ours to decide.
    pub fn sign_csr(
        &self,
        id: &SpiffeId,
        csr_der: &[u8],
        ttl: Duration,
    ) -> Result<CertificateDer<'static>, AuthorityError> {
        let der = CertificateSigningRequestDer::from(csr_der);
        let mut csr = rcgen::CertificateSigningRequestParams::from_der(&der)
            .map_err(|e| AuthorityError::Csr(e.to_string()))?;
        let (ca, not_before, not_after) = self.signer(ttl)?;
        csr.params = ca.svid_params(id, ttl)?;
        (csr.params.not_before, csr.params.not_after) = (not_before, not_after);
        let cert = csr
            .signed_by(ca.issuer())
            .map_err(|e| AuthorityError::Ca(CaError::Rcgen(e)))?;
        Ok(cert.der().clone())
    }
}

#[cfg(test)]
mod tests;
