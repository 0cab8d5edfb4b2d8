//! The sidecar process, shared by `svidcar run` and the `svidcar-proxy` binary so that both
//! start, log, stop and fail the same way: the configuration, then a runtime with
//! `runtime.worker_threads` workers, the identity source (PEM files, polled, or the Workload
//! API, streamed), [`crate::start`], and on SIGTERM/SIGINT (or `POST /shutdown`) the drain; a
//! second signal ends the drain at once. [`log`] sets up the log both binaries write.

pub mod log;
mod signals;
mod sni_log;

use std::error::Error;
use std::process::ExitCode;

use svidcar_identity::pem_source::{self, PemError};
use svidcar_identity::{workload_api, CredentialStore};
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, IdentitySource, ProxyArgs, ProxyConfig};
use crate::runtime::StartError;
pub use signals::Signals;

/// Why the sidecar process stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The configuration could not be loaded or is invalid (the message names the setting).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The Workload API was chosen as the identity source without an endpoint.
    #[error("identity.workload_api is required")]
    NoWorkloadApi,
    /// PEM files were chosen as the identity source without all three paths.
    #[error("identity.cert, identity.key and identity.bundle are required")]
    NoPemFiles,
    /// The PEM files could not be read or do not hold a valid SVID.
    #[error("loading the SVID")]
    LoadSvid(#[source] PemError),
    /// A listener, the TLS configuration or the metrics could not be set up.
    #[error(transparent)]
    Start(#[from] StartError),
    /// A signal handler could not be installed.
    #[error("installing {signal} handler")]
    Signal {
        /// `SIGTERM` or `SIGINT`.
        signal: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// `<program> run` from parsed flags to exit code: the configuration (before the runtime,
/// since it says how many threads the runtime gets), the runtime, then [`run`] on it. Errors
/// go to stderr as `<program>: <error and causes>`; exit code 2 for an error of the proxy's,
/// 1 if the runtime cannot start. Logging must be set up before ([`log::init`]).
pub fn run_command(args: &ProxyArgs, program: &str) -> ExitCode {
    let config = match ProxyConfig::load(args) {
        Ok(c) => c,
        Err(e) => return report(program, &ProcessError::from(e)),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.runtime.threads())
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{program}: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(program, &e),
    }
}

fn report(program: &str, e: &ProcessError) -> ExitCode {
    eprintln!("{program}: {}", describe(e));
    ExitCode::from(2)
}

/// The proxy with its identity source, until a shutdown signal (or `POST /shutdown`) and the
/// drain that follows.
pub async fn run(config: ProxyConfig) -> Result<(), ProcessError> {
    let provider = svidcar_identity::tls::provider();
    let store = CredentialStore::new();
    let stop_source = CancellationToken::new();
    let source = match config.identity.effective_source() {
        Some(IdentitySource::WorkloadApi) => {
            let endpoint = config
                .identity
                .workload_api
                .clone()
                .ok_or(ProcessError::NoWorkloadApi)?;
            tracing::info!(%endpoint, hint = %svidcar_identity::OrNone(config.identity.svid_hint.as_deref()), "SVIDs from the SPIFFE Workload API; fail closed until the first arrives");
            tokio::spawn(workload_api::run_with_hint(
                endpoint,
                config.identity.svid_hint.clone(),
                store.clone(),
                provider.clone(),
                stop_source.clone(),
            ))
        }
        _ => {
            let paths = config.pem_paths().ok_or(ProcessError::NoPemFiles)?;
            let creds = pem_source::load(&paths, &provider).map_err(ProcessError::LoadSvid)?;
            tracing::info!(id = %creds.id(), not_after = %svidcar_identity::format_unix(creds.leaf.not_after), "SVID loaded");
            store.set(creds);
            tokio::spawn(pem_source::watch(
                paths,
                store.clone(),
                provider.clone(),
                config.identity.reload_interval.0,
                stop_source.clone(),
            ))
        }
    };
    let proxy = crate::start(config, store).await?;
    let mut signals = Signals::install()?;
    tokio::select! {
        s = signals.recv() => tracing::info!(signal = s, "shutting down; send it again to close open connections at once"),
        _ = proxy.shutdown_requested() => tracing::info!("shutting down (POST /shutdown)"),
    }
    proxy
        .shutdown_or(async {
            let s = signals.recv().await;
            tracing::info!(
                signal = s,
                "second shutdown signal: not waiting for the drain"
            );
        })
        .await;
    stop_source.cancel();
    let _ = source.await;
    tracing::info!("stopped");
    Ok(())
}

/// The error and its causes, each cause only if the text so far does not already say it (many
/// of our errors print their source themselves).
pub fn describe(e: &(dyn Error + 'static)) -> String {
    let mut out = String::new();
    let mut cause = Some(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_adds_each_cause_once() {
        let io = std::io::Error::other("permission denied");
        let e = ProcessError::Signal {
            signal: "SIGTERM",
            source: io,
        };
        assert_eq!(
            describe(&e),
            "installing SIGTERM handler: permission denied"
        );
        let said = ProcessError::Start(StartError::Bind {
            field: "admin.listen".into(),
            addr: ([127, 0, 0, 1], 1).into(),
            source: std::io::Error::other("address in use"),
        });
        // The bind error prints its OS error itself: not twice.
        assert_eq!(
            describe(&said),
            "cannot listen on 127.0.0.1:1 (admin.listen): address in use"
        );
    }

    #[test]
    fn a_missing_identity_names_the_settings() {
        let mut config = ProxyConfig::default();
        config.identity.source = Some(IdentitySource::Files);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let e = rt.block_on(run(config)).expect_err("no PEM paths");
        assert!(matches!(e, ProcessError::NoPemFiles), "{e:?}");
    }
}
