//! Credentials from a SPIFFE Workload API (a SPIRE agent, or `svidcar agent`), through the
//! maintained `spiffe` crate's client. Every X.509 context received on the `FetchX509SVID` stream
//! becomes [`Credentials`] — the default SVID, and one bundle per trust domain (ours and the
//! federated ones, never merged) — swapped into the [`CredentialStore`] for new handshakes.
//!
//! When the stream breaks we reconnect with jittered exponential backoff (200 ms to 10 s) and
//! keep serving with the SVID we hold while it is valid; once it expires the store hands out
//! nothing (fail closed), the store's [`SourceProblem`] says why for `/ready`, and an error is
//! logged naming the expiry and how long the Workload API has been unreachable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spiffe::{WorkloadApiClient, WorkloadApiError, X509Context};
use tokio_util::sync::CancellationToken;

use crate::backoff::{jitter, Backoff};
use crate::bundle::TrustBundles;
use crate::credentials::{unix_now, CredentialStore, Credentials, SourceProblem};
use crate::endpoint::WorkloadEndpoint;
use crate::spiffe_id::TrustDomain;
use crate::svid::SvidError;
use crate::time_fmt::format_unix;

/// Why an X.509 context from the Workload API cannot become credentials. The agent answered;
/// what it sent is unusable (or, for [`ContextError::NoHint`], does not match our setting).
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The context holds no SVID at all.
    #[error("the response holds no SVID")]
    NoSvid,
    /// No SVID carries the hint `identity.svid_hint` asks for.
    #[error(
        "no SVID has hint {hint:?} (identity.svid_hint); the response holds: {}",
        offered.join(", ")
    )]
    NoHint {
        /// The hint asked for.
        hint: String,
        /// The SVIDs offered, each as `<id> (hint "<hint>")`.
        offered: Vec<String>,
    },
    /// A trust domain's bundle holds a certificate that cannot be a trust anchor.
    #[error("bundle of {trust_domain}: {source}")]
    Bundle {
        /// The trust domain, as the agent named it.
        trust_domain: String,
        /// Why.
        #[source]
        source: SvidError,
    },
    /// The SVID chosen is not a valid SVID with its key and our bundle.
    #[error("{0}")]
    Svid(#[source] SvidError),
}

/// Turns one X.509 context into credentials: the SVID whose hint is `hint` or, without one, the
/// default (first) SVID, with its key; and every trust domain's bundle under its own name. A
/// bundle whose trust-domain name we do not accept is left out (and reported); the SVID itself
/// must be valid.
pub fn credentials_from_context(
    ctx: &X509Context,
    hint: Option<&str>,
    provider: &CryptoProvider,
) -> Result<Credentials, ContextError> {
    let svid = match hint {
        None => ctx.default_svid().ok_or(ContextError::NoSvid)?,
        Some(hint) => ctx
            .svids()
            .iter()
            .find(|s| s.hint() == Some(hint))
            .ok_or_else(|| {
                let offered = ctx
                    .svids()
                    .iter()
                    .map(|s| format!("{} (hint {:?})", s.spiffe_id(), s.hint().unwrap_or("")))
                    .collect();
                ContextError::NoHint {
                    hint: hint.to_owned(),
                    offered,
                }
            })?,
    };
    let chain: Vec<CertificateDer<'static>> = svid
        .cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        svid.private_key().as_bytes().to_vec(),
    ));
    let mut bundles = TrustBundles::new();
    for (td, bundle) in ctx.bundle_set().iter() {
        let ours = match TrustDomain::parse(td.as_str()) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(trust_domain = td.as_str(), error = %e, "ignoring a bundle for a trust domain name we do not accept");
                continue;
            }
        };
        let certs = bundle
            .authorities()
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
            .collect();
        bundles
            .insert(ours, certs)
            .map_err(|source| ContextError::Bundle {
                trust_domain: td.as_str().to_owned(),
                source,
            })?;
    }
    Credentials::new(chain, key, bundles, provider).map_err(ContextError::Svid)
}

/// A one-line description of a Workload API failure, with the gRPC code when there is one.
pub fn describe(e: &WorkloadApiError) -> String {
    match e {
        WorkloadApiError::NoIdentityIssued => {
            "PermissionDenied: no identity issued (no registration entry matches this process)"
                .into()
        }
        WorkloadApiError::PermissionDenied(m) => format!("PermissionDenied: {m}"),
        other if other.is_invalid_argument() => format!("InvalidArgument: {other}"),
        other => {
            // Transport errors keep the useful part (e.g. "No such file or directory") in sources.
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                let s_text = s.to_string();
                if !text.contains(&s_text) {
                    text.push_str(": ");
                    text.push_str(&s_text);
                }
                source = s.source();
            }
            text
        }
    }
}

/// Connects to `endpoint` and returns the first X.509 context (one-shot; `svidcar api fetch`).
pub async fn fetch_once(endpoint: &WorkloadEndpoint) -> Result<X509Context, WorkloadApiError> {
    let client = WorkloadApiClient::connect_to(endpoint.to_string()).await?;
    client.fetch_x509_context().await
}

/// Feeds `store` from the Workload API at `endpoint` until `cancel` fires, with the default SVID.
pub async fn run(
    endpoint: WorkloadEndpoint,
    store: Arc<CredentialStore>,
    provider: Arc<CryptoProvider>,
    cancel: CancellationToken,
) {
    run_with_hint(endpoint, None, store, provider, cancel).await
}

/// [`run`] with the SVID whose hint is `hint` instead of the default one (a workload registered
/// under several identities).
pub async fn run_with_hint(
    endpoint: WorkloadEndpoint,
    hint: Option<String>,
    store: Arc<CredentialStore>,
    provider: Arc<CryptoProvider>,
    cancel: CancellationToken,
) {
    Supervisor {
        endpoint,
        hint,
        store,
        provider,
        attempts: Arc::new(AtomicU64::new(0)),
        jitter: Box::new(jitter),
    }
    .run(cancel)
    .await
}

/// The reconnect loop.
struct Supervisor {
    endpoint: WorkloadEndpoint,
    hint: Option<String>,
    store: Arc<CredentialStore>,
    provider: Arc<CryptoProvider>,
    attempts: Arc<AtomicU64>,
    jitter: Box<dyn FnMut() -> f64 + Send + Sync>,
}

/// How a stream ended.
enum Ended {
    Cancelled,
    Failed(String),
}

impl Supervisor {
    async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = Backoff::new();
        let mut down_since: Option<i64> = None;
        let mut expiry_reported: Option<String> = None;
        let mut last_error = String::new();
        loop {
            self.attempts.fetch_add(1, Ordering::Relaxed);
            let error = match self.stream(&cancel, &mut backoff, &mut down_since).await {
                Ended::Cancelled => return,
                Ended::Failed(e) => e,
            };
            let outage_starts = down_since.is_none();
            let since = *down_since.get_or_insert_with(unix_now);
            let problem = SourceProblem {
                what: format!("Workload API {} unreachable", self.endpoint),
                since,
                error: error.clone(),
            };
            self.store.set_source_problem(Some(problem.clone()));
            let delay = backoff.next_delay((self.jitter)());
            let valid_until = self.store.current().map(|c| c.leaf.not_after);
            // Warn when the failure starts or changes; repeats of it are debug.
            if outage_starts || error != last_error {
                tracing::warn!(
                    endpoint = %self.endpoint,
                    error = %error,
                    retry_in_ms = delay.as_millis() as u64,
                    svid_valid_until = valid_until.map(format_unix),
                    "cannot get SVIDs from the Workload API; retrying with backoff, keeping the \
                     current SVID while it is valid"
                );
            } else {
                tracing::debug!(endpoint = %self.endpoint, error = %error, retry_in_ms = delay.as_millis() as u64, "Workload API still unavailable");
            }
            last_error = error;
            let retry = tokio::time::sleep(delay);
            tokio::pin!(retry);
            loop {
                let reported = expiry_reported.clone();
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = &mut retry => break,
                    serial = self.expiry(reported.as_deref()) => {
                        self.report_expiry(&problem);
                        expiry_reported = Some(serial);
                    }
                }
            }
        }
    }

    /// Waits until the SVID held expires (forever if none is held, or if it expired and its
    /// expiry was `reported` already); returns its serial.
    async fn expiry(&self, reported: Option<&str>) -> String {
        match self.store.latest() {
            Some(c) if c.is_valid_at(unix_now()) => {
                let at = UNIX_EPOCH + Duration::from_secs(c.leaf.not_after.max(0) as u64);
                let wait = at
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                tokio::time::sleep(wait).await;
                // Sleep past the second boundary the validity check uses.
                while c.is_valid_at(unix_now()) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                c.leaf.serial.clone()
            }
            Some(c) if reported != Some(c.leaf.serial.as_str()) => c.leaf.serial.clone(),
            _ => std::future::pending().await,
        }
    }

    fn report_expiry(&self, problem: &SourceProblem) {
        if let Some(c) = self.store.latest() {
            tracing::error!(
                id = %c.id(),
                serial = %c.leaf.serial,
                "SVID expired at {}; {}; mesh connections fail closed",
                format_unix(c.leaf.not_after),
                problem
            );
        }
    }

    /// One connection: streams contexts into the store until it breaks.
    async fn stream(
        &mut self,
        cancel: &CancellationToken,
        backoff: &mut Backoff,
        down_since: &mut Option<i64>,
    ) -> Ended {
        let connect = async {
            let client = WorkloadApiClient::connect_to(self.endpoint.to_string()).await?;
            client.stream_x509_contexts().await
        };
        let mut stream = tokio::select! {
            _ = cancel.cancelled() => return Ended::Cancelled,
            r = connect => match r {
                Ok(s) => s,
                Err(e) => return Ended::Failed(describe(&e)),
            },
        };
        loop {
            let item = tokio::select! {
                _ = cancel.cancelled() => return Ended::Cancelled,
                item = stream.next() => item,
            };
            match item {
                Some(Ok(ctx)) => {
                    match credentials_from_context(&ctx, self.hint.as_deref(), &self.provider) {
                        Ok(creds) => {
                            tracing::info!(
                                id = %creds.id(),
                                serial = %creds.leaf.serial,
                                not_after = %format_unix(creds.leaf.not_after),
                                svids = ctx.svids().len(),
                                trust_domains = ?creds.bundles.trust_domains(),
                                "SVID received from the Workload API"
                            );
                            self.store.set(creds);
                            self.store.set_source_problem(None);
                            backoff.reset();
                            *down_since = None;
                        }
                        Err(e) => {
                            tracing::warn!(
                                endpoint = %self.endpoint,
                                error = %e,
                                "ignoring a Workload API update; keeping the current SVID"
                            );
                            if self.store.current().is_none() {
                                // Nothing to keep: readiness says why.
                                self.store.set_source_problem(Some(SourceProblem {
                                    what: format!(
                                        "Workload API {} answers unusably",
                                        self.endpoint
                                    ),
                                    since: unix_now(),
                                    error: e.to_string(),
                                }));
                            }
                        }
                    }
                }
                Some(Err(e)) => return Ended::Failed(describe(&e)),
                None => return Ended::Failed("the agent closed the stream".into()),
            }
        }
    }
}

#[cfg(test)]
mod tests;
