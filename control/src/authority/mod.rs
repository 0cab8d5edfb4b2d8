//! The trust domain's signing authority: the CA that signs now, plus every root published in the
//! trust bundle (a prepared successor, predecessors whose SVIDs are still out there). Used by
//! `svidcar agent` in single-machine mode and by `svidcar control` when it serves agents on
//! other nodes.
//!
//! I/O: [`dir`] (the CA directory).

pub mod dir;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
use svidcar_proxy::identity::{format_unix, SpiffeId, TrustDomain};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{Ca, CaError, IssuedSvid};

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

/// The state behind the lock: the signing CA and the published bundle.
#[derive(Debug)]
struct Roots {
    active: Arc<Ca>,
    bundle: Bundle,
}

/// A trust domain's CA set, shared by every task that signs.
#[derive(Debug)]
pub struct Authority {
    td: TrustDomain,
    dir: Option<PathBuf>,
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
    /// Opens the CA directory `dir` (see [`dir`]): loads its CA, or creates one for `td` valid
    /// for `ca_ttl` when it holds none.
    pub fn open(
        dir: &Path,
        td: Option<&TrustDomain>,
        ca_ttl: Duration,
    ) -> Result<(Arc<Self>, Opened), AuthorityError> {
        let (ca, created) = dir::load_or_create(dir, td, ca_ttl)?;
        let opened = if created {
            Opened::Created
        } else {
            Opened::Loaded
        };
        Ok((Self::with_root(ca, Some(dir.to_owned())), opened))
    }

    /// An authority holding `ca` in memory only (tests, demos).
    pub fn in_memory(ca: Ca) -> Arc<Self> {
        Self::with_root(ca, None)
    }

    fn with_root(ca: Ca, dir: Option<PathBuf>) -> Arc<Self> {
        let bundle: Bundle = Arc::new(vec![ca.bundle_der().clone()]);
        let (bundle_tx, _) = watch::channel(bundle.clone());
        Arc::new(Self {
            td: ca.trust_domain().clone(),
            dir,
            roots: Mutex::new(Roots {
                active: Arc::new(ca),
                bundle,
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
        self.roots().active.clone()
    }

    /// The roots published now.
    pub fn bundle(&self) -> Bundle {
        self.roots().bundle.clone()
    }

    /// The bundle, now and on every change.
    pub fn watch_bundle(&self) -> watch::Receiver<Bundle> {
        self.bundle_tx.subscribe()
    }

    /// The validity window of an SVID issued now for `ttl` by `ca`: backdated by a tenth of
    /// the lifetime (at most 30 s) for clock skew, never outliving the CA.
    fn window(ca: &Ca, ttl: Duration) -> Result<(OffsetDateTime, OffsetDateTime), CaError> {
        let now = OffsetDateTime::now_utc();
        let not_before = now - (ttl / 10).min(Duration::from_secs(30));
        let ca_end = OffsetDateTime::from_unix_timestamp(ca.not_after())
            .map_err(|e| CaError::Load(e.to_string()))?;
        let not_after = (now + ttl).min(ca_end);
        if not_after <= now {
            return Err(CaError::Load(format!(
                "the CA expired at {}",
                format_unix(ca.not_after())
            )));
        }
        Ok((not_before, not_after))
    }

    /// Issues an X.509-SVID for `id` with a new key, valid for `ttl` (clamped to the CA).
    pub fn issue(&self, id: &SpiffeId, ttl: Duration) -> Result<IssuedSvid, AuthorityError> {
        let ca = self.active();
        let mut params = ca.svid_params(id, ttl)?;
        (params.not_before, params.not_after) = Self::window(&ca, ttl)?;
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
        let ca = self.active();
        csr.params = ca.svid_params(id, ttl)?;
        (csr.params.not_before, csr.params.not_after) = Self::window(&ca, ttl)?;
        let cert = csr
            .signed_by(ca.issuer())
            .map_err(|e| AuthorityError::Ca(CaError::Rcgen(e)))?;
        Ok(cert.der().clone())
    }

    /// Keeps the CA set current (preparing, activating and dropping roots on schedule) until
    /// `stop` fires.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        stop.cancelled().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
    use svidcar_proxy::identity::check_leaf;

    fn authority() -> Arc<Authority> {
        let td = TrustDomain::parse("example.org").unwrap();
        Authority::in_memory(Ca::generate(&td, Duration::from_secs(3600)).unwrap())
    }

    #[test]
    fn csrs_are_signed_with_our_contents_and_bad_ones_refused() {
        let a = authority();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut asked = CertificateParams::new(vec!["evil.example".into()]).unwrap();
        asked.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let csr = asked.serialize_request(&key).unwrap();
        let id = SpiffeId::parse("spiffe://example.org/w").unwrap();
        let cert = a
            .sign_csr(&id, csr.der(), Duration::from_secs(600))
            .unwrap();
        let leaf = check_leaf(&cert).unwrap();
        assert_eq!(leaf.id, id);
        assert!(leaf.not_after - leaf.not_before <= 630);
        let (_, x) = x509_parser::parse_x509_certificate(&cert).unwrap();
        assert!(!x.is_ca());
        assert_eq!(
            x.public_key().raw,
            rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
        );

        let mut tampered = csr.der().to_vec();
        let n = tampered.len();
        tampered[n - 5] ^= 0x55;
        assert!(matches!(
            a.sign_csr(&id, &tampered, Duration::from_secs(600)),
            Err(AuthorityError::Csr(_))
        ));
        assert!(matches!(
            a.sign_csr(&id, b"junk", Duration::from_secs(600)),
            Err(AuthorityError::Csr(_))
        ));
        let foreign = SpiffeId::parse("spiffe://other.org/w").unwrap();
        assert!(matches!(
            a.sign_csr(&foreign, csr.der(), Duration::from_secs(600)),
            Err(AuthorityError::Ca(CaError::ForeignId { .. }))
        ));
    }

    #[test]
    fn svids_never_outlive_the_ca() {
        let td = TrustDomain::parse("example.org").unwrap();
        let a = Authority::in_memory(Ca::generate(&td, Duration::from_secs(120)).unwrap());
        let id = SpiffeId::parse("spiffe://example.org/a").unwrap();
        let svid = a.issue(&id, Duration::from_secs(3600)).unwrap();
        assert!(check_leaf(&svid.cert_der).unwrap().not_after <= a.active().not_after());
        assert_eq!(a.bundle().len(), 1);
    }
}
