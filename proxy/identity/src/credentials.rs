//! The workload's own credentials (X.509-SVID, key, trust bundles) and the store that hands the
//! current ones to every new handshake. Sources (PEM files today, the Workload API later) push
//! into the store; open connections keep what they negotiated.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::bundle::TrustBundles;
use crate::spiffe_id::SpiffeId;
use crate::svid::{check_leaf, check_signing_cert, LeafInfo, SvidError};

/// One consistent set of credentials: never key material in `Debug`.
pub struct Credentials {
    /// What our leaf says.
    pub leaf: LeafInfo,
    /// Chain and signing key, ready for rustls.
    pub key: Arc<CertifiedKey>,
    /// Bundles to verify peers with (ours and federated ones).
    pub bundles: Arc<TrustBundles>,
}

impl Credentials {
    /// Checks an SVID chain and key and pairs them with bundles. The leaf must be a valid SVID
    /// shape, the key must match it and our own trust domain must have a bundle.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundles: TrustBundles,
        provider: &CryptoProvider,
    ) -> Result<Self, SvidError> {
        let leaf_der = chain.first().ok_or(SvidError::NoCertificate)?;
        let leaf = check_leaf(leaf_der)?;
        for c in &chain[1..] {
            check_signing_cert(c)?;
        }
        let td = leaf.id.trust_domain();
        if bundles.anchors(&td).is_none() {
            return Err(SvidError::UnknownTrustDomain(td.to_string()));
        }
        let signer = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| SvidError::Malformed(format!("private key: {e}")))?;
        let key = CertifiedKey::new(chain, signer);
        key.keys_match().map_err(|_| SvidError::KeyMismatch)?;
        Ok(Credentials {
            leaf,
            key: Arc::new(key),
            bundles: Arc::new(bundles),
        })
    }

    /// Our SPIFFE ID.
    pub fn id(&self) -> &SpiffeId {
        &self.leaf.id
    }

    /// Whether `other` holds the same certificate chain and trust bundles (the key matches the
    /// chain's leaf, so it is the same too).
    pub fn same_material(&self, other: &Credentials) -> bool {
        let (ours, theirs) = (self.bundles.trust_domains(), other.bundles.trust_domains());
        self.key.cert == other.key.cert
            && ours == theirs
            && ours
                .iter()
                .all(|td| self.bundles.certs(td) == other.bundles.certs(td))
    }

    /// Whether the SVID is inside its validity window at `now` (seconds since the epoch).
    pub fn is_valid_at(&self, now: i64) -> bool {
        self.leaf.not_before <= now && now < self.leaf.not_after
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("leaf", &self.leaf)
            .field("bundles", &self.bundles)
            .finish_non_exhaustive()
    }
}

/// Holds the current credentials; swapped atomically, read lock-free on every handshake.
#[derive(Debug, Default)]
pub struct CredentialStore {
    current: ArcSwapOption<Credentials>,
    installs: AtomicU64,
    source_problem: ArcSwapOption<SourceProblem>,
}

/// Why the credential source cannot deliver new credentials right now (readiness and logs say
/// it), e.g. "Workload API unix:///run/a.sock unreachable since 2026-…Z (connection refused)".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceProblem {
    /// What is failing, e.g. `Workload API unix:///run/a.sock unreachable`.
    pub what: String,
    /// Since when, seconds since the Unix epoch.
    pub since: i64,
    /// The latest error.
    pub error: String,
}

impl fmt::Display for SourceProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} since {} ({})",
            self.what,
            crate::time_fmt::format_unix(self.since),
            self.error
        )
    }
}

impl CredentialStore {
    /// An empty store: every mesh handshake fails closed until credentials arrive.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Replaces the credentials for new handshakes.
    pub fn set(&self, creds: Credentials) {
        self.current.store(Some(Arc::new(creds)));
        self.installs.fetch_add(1, Ordering::Relaxed);
    }

    /// How many credential sets were installed so far (the first one included).
    pub fn installs(&self) -> u64 {
        self.installs.load(Ordering::Relaxed)
    }

    /// The current credentials, if any and if valid at `now`: expired credentials are never used
    /// (fail closed).
    pub fn current_at(&self, now: i64) -> Option<Arc<Credentials>> {
        self.current.load_full().filter(|c| c.is_valid_at(now))
    }

    /// The current credentials if valid now.
    pub fn current(&self) -> Option<Arc<Credentials>> {
        self.current_at(unix_now())
    }

    /// The credentials held, valid or not (for status reporting).
    pub fn latest(&self) -> Option<Arc<Credentials>> {
        self.current.load_full()
    }

    /// Records (or, with `None`, clears) why the source cannot deliver credentials.
    pub fn set_source_problem(&self, problem: Option<SourceProblem>) {
        self.source_problem.store(problem.map(Arc::new));
    }

    /// Why the source cannot deliver credentials, if it cannot.
    pub fn source_problem(&self) -> Option<Arc<SourceProblem>> {
        self.source_problem.load_full()
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
