//! The control plane's own SVID when it holds the CA: `spiffe://<td>/svidcar/control`, issued by
//! the authority into the credential store, renewed at half its lifetime and whenever the bundle
//! changes (a new root must reach the store's bundles before it signs anyone's SVID).

use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use svidcar_identity::{unix_now, CredentialStore, Credentials, SvidError, TrustBundles};
use tokio_util::sync::CancellationToken;

use crate::authority::{Authority, AuthorityError};
use crate::node::control_id;

/// Why the control plane's own SVID cannot be installed (both causes are internal: the CA
/// held here).
#[derive(Debug, thiserror::Error)]
pub enum SelfSvidError {
    /// The CA cannot sign it.
    #[error("{0}")]
    Issue(#[source] AuthorityError),
    /// What it signed, with its bundle, does not make usable credentials.
    #[error("{0}")]
    Credentials(#[source] SvidError),
}

/// Retry delay after a failed renewal.
const RETRY: Duration = Duration::from_secs(5);

/// Issues the control plane's SVID into `store`; returns how long until it should be renewed.
pub(super) fn install(
    authority: &Authority,
    store: &CredentialStore,
    provider: &CryptoProvider,
    ttl: Duration,
) -> Result<Duration, SelfSvidError> {
    let td = authority.trust_domain();
    let svid = authority
        .issue(&control_id(td), ttl)
        .map_err(SelfSvidError::Issue)?;
    let mut bundles = TrustBundles::new();
    bundles
        .insert(td.clone(), authority.bundle().to_vec())
        .map_err(SelfSvidError::Credentials)?;
    let creds = Credentials::new(
        vec![svid.cert_der.clone()],
        svid.key_der(),
        bundles,
        provider,
    )
    .map_err(SelfSvidError::Credentials)?;
    let lifetime = (creds.leaf.not_after - unix_now()).max(2) as u64;
    store.set(creds);
    Ok(Duration::from_secs(lifetime / 2))
}

/// Keeps the SVID in `store` current until `stop` fires.
pub(super) async fn keep(
    authority: Arc<Authority>,
    store: Arc<CredentialStore>,
    provider: Arc<CryptoProvider>,
    ttl: Duration,
    mut renew_in: Duration,
    stop: CancellationToken,
) {
    let mut bundle = authority.watch_bundle();
    bundle.mark_unchanged();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(renew_in) => {}
            r = bundle.changed() => if r.is_err() { return },
        }
        renew_in = match install(&authority, &store, &provider, ttl) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot renew the control plane's SVID; retrying");
                RETRY
            }
        };
    }
}
