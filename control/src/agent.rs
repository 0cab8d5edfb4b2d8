//! `svidcar agent`: a node agent serving the SPIFFE Workload API on a Unix socket. It holds the
//! trust domain's CA directory itself (single-machine mode), attests callers from their socket
//! credentials, maps them to SPIFFE IDs with registration entries, and streams their X.509-SVIDs
//! and bundles, re-issued at about half their lifetime.
//!
//! Pure parts: [`registration`] (parsing, matching) and [`rotation`] (timing). I/O: [`attest`]
//! (`/proc`), [`socket`], the gRPC [`service`] and the [`svids`] rotator task. With
//! `kubernetes.enabled`, [`k8s`] attests callers' pods through the kubelet and gives each pod a
//! default identity.

pub mod admin;
pub mod attest;
mod check;
mod config;
mod conn;
mod frames;
pub mod k8s;
pub mod metrics;
pub mod node_state;
pub mod proto;
pub mod registration;
pub mod rotation;
pub mod service;
pub mod socket;
pub mod svids;
pub mod upstream;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use svidcar_identity::{format_unix, TrustDomain};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use check::{check, CheckReport};
pub use config::{
    AgentAction, AgentCommand, AgentConfig, AgentFlags, KubernetesConfig, KubernetesFlags,
    UpstreamConfig, UpstreamFlags,
};
pub use svidcar_identity::Dur;

use crate::authority::{Authority, Opened};
use k8s::{K8sAttestor, K8sSettings, KubeletError};
use metrics::AgentMetrics;
use registration::RegistrationError;
use svids::{Registration, Rotator, Signer, Snapshot};
use upstream::UpstreamError;

/// For the `agent_frames` fuzz target (`proxy/fuzz`) only; not an API. Feeds `chunks`, in
/// order, to one connection's client-side rewriter (the `:authority` mending in front of h2)
/// and returns what the gRPC server would read, and whether every header block was followed
/// (none passed on unchanged).
#[doc(hidden)]
pub fn fuzz_rewrite_client_bytes(chunks: &[&[u8]]) -> (Vec<u8>, bool) {
    let mut inbound = frames::Inbound::default();
    let mut out = Vec::new();
    let mut followed = true;
    for chunk in chunks {
        followed &= inbound.feed(chunk, &mut out).gave_up.is_none();
    }
    (out, followed)
}

/// The configuration `start` takes; the name it had before `--config` existed.
pub type AgentArgs = AgentConfig;

/// Octal socket permissions (`0660`, `0o660`), at most `0777`.
fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?}: expected octal permissions such as 0660"))
}

/// Why the agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The CA directory cannot be used or the CA failed.
    #[error(transparent)]
    Authority(#[from] crate::authority::AuthorityError),
    /// The registration file cannot be read.
    #[error("{}: cannot read the registration file (registration, --registration): {source}", path.display())]
    RegistrationRead {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The registration file is malformed (the message names the entry).
    #[error(transparent)]
    Registration(#[from] RegistrationError),
    /// The socket cannot be served.
    #[error("{}: {message}", path.display())]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The control plane cannot be reached or refused us, or this node's side of joining it
    /// (token, bootstrap bundle, data directory) cannot be used; [`UpstreamError::cause`] says
    /// which.
    #[error("control plane: {0}")]
    Upstream(#[from] UpstreamError),
    /// The `--config` file cannot be used, or a setting is invalid (the message names the
    /// file and the setting).
    #[error(transparent)]
    Config(#[from] svidcar_identity::config_file::ConfigError),
    /// Pod attestation cannot be set up (the kubelet CA file or server name).
    #[error("kubernetes: {0}")]
    Kubernetes(#[from] KubeletError),
    /// A setting has a value that cannot work.
    #[error("{field}: {message}")]
    Invalid {
        /// The setting (or flag).
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Reads the registration file and the federated bundles it names. Returns the bytes read (to
/// notice changes) and the registration.
fn read_registration(path: &Path, td: &TrustDomain) -> Result<(Vec<u8>, Registration), AgentError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut seen = std::fs::read(path).map_err(|source| AgentError::RegistrationRead {
        path: path.to_owned(),
        source,
    })?;
    let file = registration::parse(path, &String::from_utf8_lossy(&seen), td)?;
    let mut federated = BTreeMap::new();
    let mut problems = Vec::new();
    for (other, bundle) in &file.federates_with {
        let read = || -> Result<(Vec<u8>, Vec<u8>), String> {
            let bytes = std::fs::read(bundle).map_err(|e| e.to_string())?;
            let certs = CertificateDer::pem_slice_iter(&bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("bad PEM: {e}"))?;
            if certs.is_empty() {
                return Err("no CERTIFICATE block".into());
            }
            let der = certs.iter().flat_map(|c| c.iter().copied()).collect();
            Ok((bytes, der))
        };
        match read() {
            Ok((bytes, der)) => {
                seen.extend_from_slice(&bytes);
                federated.insert(other.clone(), der);
            }
            Err(e) => problems.push(format!("federates_with.{other}: {}: {e}", bundle.display())),
        }
    }
    if !problems.is_empty() {
        return Err(RegistrationError {
            path: path.to_owned(),
            problems,
        }
        .into());
    }
    Ok((
        seen,
        Registration {
            entries: Arc::new(file.entries),
            federated: Arc::new(federated),
        },
    ))
}

/// A running agent.
#[derive(Debug)]
pub struct AgentHandle {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    socket: PathBuf,
    state: watch::Receiver<Arc<Snapshot>>,
    admin_addr: Option<SocketAddr>,
}

impl AgentHandle {
    /// Where the admin endpoint listens, if it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The state served now (for tests and status).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.state.borrow().clone()
    }

    /// Ends open streams with Unavailable, stops serving and removes the socket.
    pub async fn shutdown(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Checks the configuration, the CA directory (without changing it) and the registration
/// entries, binds the admin listener and the socket (a busy one fails here, before anything is
/// created on disk), then opens or creates the CA (or joins the control plane), issues the first
/// SVIDs and serves the Workload API. A failed start removes the socket it bound.
pub async fn start(args: &AgentConfig) -> Result<AgentHandle, AgentError> {
    args.validate()
        .map_err(|(field, message)| AgentError::Invalid { field, message })?;
    let k8s_settings = k8s_settings(args)?;
    let known_td = trust_domain_before_start(args)?;
    // With the trust domain known, check the entries before a CA may be created for nothing.
    let early = match &known_td {
        Some(td) => Some(load_registration(&args.registration, td)?),
        None => None,
    };
    let admin = admin::bind(args.admin_listen).await?;
    let listener = socket::bind_configured(args)?;
    let mut tasks = Tasks::default();
    match serve(args, &mut tasks, k8s_settings, early, admin, listener).await {
        Ok((state, admin_addr)) => Ok(AgentHandle {
            stop: tasks.stop,
            tasks: tasks.handles,
            socket: args.socket.clone(),
            state,
            admin_addr,
        }),
        Err(e) => {
            tasks.stop.cancel();
            let _ = std::fs::remove_file(&args.socket);
            Err(e)
        }
    }
}

/// The trust domain, as far as it is known before anything is created: `trust_domain`, checked
/// against the CA the CA directory holds (looked at, not changed), or that CA's.
fn trust_domain_before_start(args: &AgentConfig) -> Result<Option<TrustDomain>, AgentError> {
    let Some(dir) = &args.ca_dir else {
        return Ok(args.trust_domain.clone());
    };
    let held = crate::authority::dir::inspect(dir)?;
    match (held, &args.trust_domain) {
        (Some(held), Some(given)) if &held != given => Err(AgentError::Invalid {
            field: "trust_domain",
            message: format!(
                "the CA in {} is for trust domain {held}, but --trust-domain (trust_domain) says {given}: \
                 drop --trust-domain to use the CA's, or point --ca-dir at {given}'s CA directory \
                 (an empty one gets a new CA)",
                dir.display()
            ),
        }),
        (Some(held), _) => Ok(Some(held)),
        (None, given) => Ok(given.clone()),
    }
}

/// Everything after the listeners are bound: the signer, the entries (unless `early` holds
/// them), the first SVIDs and the servers. Returns the state served and the admin address.
async fn serve(
    args: &AgentConfig,
    tasks: &mut Tasks,
    k8s_settings: Option<K8sSettings>,
    early: Option<(Vec<u8>, Registration)>,
    admin: Option<TcpListener>,
    listener: UnixListener,
) -> Result<(watch::Receiver<Arc<Snapshot>>, Option<SocketAddr>), AgentError> {
    let signer = tasks.signer(args).await?;
    let td = signer.trust_domain().clone();
    let (bytes, reg) = match early {
        Some(loaded) => loaded,
        None => load_registration(&args.registration, &td)?,
    };
    if !args.kubernetes.enabled && registration::uses_k8s(&reg.entries) {
        tracing::warn!("registration entries have k8s: selectors, which never match while kubernetes.enabled is false");
    }
    let metrics = AgentMetrics::new().map_err(|e| AgentError::Invalid {
        field: "metrics",
        message: e.to_string(),
    })?;
    let k8s = k8s_settings.map(|s| Arc::new(K8sAttestor::new(s, td.clone(), metrics.clone())));
    let (entries_tx, entries_rx) = watch::channel(reg);
    let (rotator, state_tx, state_rx) = first_svids(
        &signer,
        args.svid_ttl.0,
        &metrics,
        &entries_rx,
        k8s.as_deref(),
    )
    .await;
    tasks.spawn(rotator.run(entries_rx, state_tx, tasks.stop.clone()));
    tasks.watch_registration(args, td, bytes, entries_tx, &metrics);
    let admin_addr = tasks.admin(admin, &state_rx, signer, &metrics);
    if let Some(k8s) = &k8s {
        tracing::info!(
            kubelet = %args.kubernetes.kubelet_url,
            verify = !args.kubernetes.skip_kubelet_verification,
            default_id = args.kubernetes.default_id.then_some(args.kubernetes.default_id_template.as_str()),
            "pod attestation on"
        );
        tasks.spawn(
            k8s.clone()
                .run(args.kubernetes.refresh_interval.0, tasks.stop.clone()),
        );
    }
    tasks.workload_api(listener, &state_rx, metrics, k8s);
    Ok((state_rx, admin_addr))
}

/// Pod attestation's settings (the kubelet CA file is read here), if it is on.
fn k8s_settings(args: &AgentConfig) -> Result<Option<K8sSettings>, AgentError> {
    if !args.kubernetes.enabled {
        return Ok(None);
    }
    Ok(Some(args.kubernetes.settings()?))
}

/// Reads the registration file (and the federated bundles it names) with `td` and says what it
/// holds.
fn load_registration(path: &Path, td: &TrustDomain) -> Result<(Vec<u8>, Registration), AgentError> {
    let (bytes, reg) = read_registration(path, td)?;
    tracing::info!(
        file = %path.display(),
        entries = reg.entries.len(),
        federated = ?reg.federated.keys().map(|t| t.as_str()).collect::<Vec<_>>(),
        "loaded registration entries"
    );
    Ok((bytes, reg))
}

/// The rotator with the first SVIDs for `entries`, issued before the socket exists so that the
/// first caller gets an answer at once, and the state it publishes.
async fn first_svids(
    signer: &Signer,
    ttl: Duration,
    metrics: &Arc<AgentMetrics>,
    entries: &watch::Receiver<Registration>,
    k8s: Option<&K8sAttestor>,
) -> (
    Rotator,
    watch::Sender<Arc<Snapshot>>,
    watch::Receiver<Arc<Snapshot>>,
) {
    let mut rotator = Rotator::new(
        signer.clone(),
        ttl,
        Box::new(svidcar_identity::backoff::jitter),
    )
    .with_metrics(metrics.clone());
    if let Some(k8s) = k8s {
        rotator = rotator.with_extra_ids(k8s.default_ids());
    }
    let first = entries.borrow().entries.clone();
    rotator.sync(&first).await;
    let (state_tx, state_rx) = watch::channel(Arc::new(rotator.snapshot(&entries.borrow())));
    (rotator, state_tx, state_rx)
}

/// The agent's background tasks and servers, stopped together.
#[derive(Default)]
struct Tasks {
    /// Stops them all.
    stop: CancellationToken,
    /// Awaited on shutdown.
    handles: Vec<JoinHandle<()>>,
}

impl Tasks {
    /// Runs `task` until shutdown.
    fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.handles.push(tokio::spawn(task));
    }

    /// What signs the SVIDs: the CA held here or the control plane, per `args`.
    async fn signer(&mut self, args: &AgentConfig) -> Result<Signer, AgentError> {
        match (&args.ca_dir, &args.upstream.server) {
            (Some(dir), None) => Ok(Signer::Local(self.hold_ca(dir, args)?)),
            (None, Some(server)) => Ok(Signer::Upstream(self.upstream(server, args).await?)),
            _ => Err(AgentError::Invalid {
                field: "ca_dir",
                message: "give either ca_dir (hold the CA here) or upstream.server (get SVIDs from svidcar control)".into(),
            }),
        }
    }

    /// Opens (and locks) the CA directory, creating the CA if there is none, and keeps it
    /// current.
    fn hold_ca(&mut self, dir: &Path, args: &AgentConfig) -> Result<Arc<Authority>, AgentError> {
        let (authority, opened) = Authority::open(
            dir,
            args.trust_domain.as_ref(),
            args.ca_ttl.0,
            args.svid_ttl.0,
        )?;
        let not_after = format_unix(authority.active().not_after());
        let td = authority.trust_domain();
        match opened {
            Opened::Created => {
                tracing::info!(dir = %dir.display(), trust_domain = %td, %not_after, "created a new CA")
            }
            Opened::Loaded => {
                tracing::info!(dir = %dir.display(), trust_domain = %td, %not_after, "loaded the CA")
            }
        }
        self.spawn(authority.clone().run(self.stop.clone()));
        Ok(authority)
    }

    /// Joins (or rejoins) the control plane at `server` and keeps this node's SVID current.
    async fn upstream(
        &mut self,
        server: &str,
        args: &AgentConfig,
    ) -> Result<Arc<upstream::Upstream>, AgentError> {
        let td = args.trust_domain.as_ref().ok_or(AgentError::Invalid {
            field: "trust_domain",
            message: "needed with upstream.server".into(),
        })?;
        let up = upstream::Upstream::connect(&args.upstream, td).await?;
        tracing::info!(%server, node = %up.node_name(), trust_domain = %td, "getting SVIDs from the control plane");
        self.spawn(up.clone().run(self.stop.clone()));
        Ok(up)
    }

    /// Watches the registration file, sending changed entries to `out`; `bytes` is what was
    /// read at start.
    fn watch_registration(
        &mut self,
        args: &AgentConfig,
        td: TrustDomain,
        bytes: Vec<u8>,
        out: watch::Sender<Registration>,
        metrics: &Arc<AgentMetrics>,
    ) {
        self.spawn(watch_registration(
            args.registration.clone(),
            td,
            bytes,
            out,
            args.reload_interval.0,
            metrics.clone(),
            self.stop.clone(),
        ));
    }

    /// The admin endpoint on `listener`, if it is on; returns its address.
    fn admin(
        &mut self,
        listener: Option<TcpListener>,
        state: &watch::Receiver<Arc<Snapshot>>,
        signer: Signer,
        metrics: &Arc<AgentMetrics>,
    ) -> Option<SocketAddr> {
        let listener = listener?;
        let addr = listener.local_addr().ok();
        tracing::info!(addr = ?addr, "agent admin endpoint (/live, /ready, /metrics)");
        self.spawn(admin::serve(
            listener,
            state.clone(),
            signer,
            metrics.clone(),
            self.stop.clone(),
        ));
        addr
    }

    /// The Workload API on the socket `listener`, attesting pods with `k8s`.
    fn workload_api(
        &mut self,
        listener: UnixListener,
        state: &watch::Receiver<Arc<Snapshot>>,
        metrics: Arc<AgentMetrics>,
        k8s: Option<Arc<K8sAttestor>>,
    ) {
        let mut api = service::WorkloadApi::new(state.clone(), self.stop.clone(), metrics);
        if let Some(k8s) = k8s {
            api = api.with_k8s(k8s);
        }
        self.spawn(service::serve(listener, api, self.stop.clone()));
    }
}

/// Re-reads the registration file (and the federated bundles it names) every `interval`; a
/// changed valid registration replaces the one in force, a bad one is reported once and the one
/// in force stays, an empty one (mid-rewrite) is read again at the next poll.
async fn watch_registration(
    path: PathBuf,
    td: TrustDomain,
    mut last: Vec<u8>,
    out: watch::Sender<Registration>,
    interval: Duration,
    metrics: Arc<AgentMetrics>,
    stop: CancellationToken,
) {
    let mut last_error = String::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        // An empty file is one being rewritten in place (truncated, not yet written: how
        // `std::fs::write` and many editors save), not "no entries" (`entries: []` says that):
        // read it again at the next poll rather than revoke every workload's identity.
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
            continue;
        }
        match read_registration(&path, &td) {
            Ok((bytes, _)) if bytes == last => last_error.clear(),
            Ok((bytes, reg)) => {
                tracing::info!(
                    file = %path.display(),
                    entries = reg.entries.len(),
                    federated = ?reg.federated.keys().map(|t| t.as_str()).collect::<Vec<_>>(),
                    "registration reloaded"
                );
                out.send_replace(reg);
                last = bytes;
                last_error.clear();
            }
            Err(e) => {
                let text = e.to_string();
                if text != last_error {
                    metrics.reload_errors.inc();
                    tracing::error!(error = %text, "ignoring bad registration entries; the previous entries stay in force");
                    last_error = text;
                }
            }
        }
    }
}

/// Runs the agent until `shutdown` completes.
pub async fn run(args: &AgentConfig, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    let agent = start(args).await?;
    shutdown.await;
    tracing::info!("agent stopping");
    agent.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn socket_modes_are_octal() {
        assert_eq!(parse_mode("0660").unwrap(), 0o660);
        assert_eq!(parse_mode("0o600").unwrap(), 0o600);
        assert_eq!(parse_mode("777").unwrap(), 0o777);
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("1777").is_err());
    }

    fn args(dir: &Path) -> AgentArgs {
        AgentArgs {
            socket: dir.join("agent.sock"),
            socket_mode: 0o600,
            socket_group: None,
            ca_dir: Some(dir.join("ca")),
            trust_domain: Some(TrustDomain::parse("example.org").unwrap()),
            registration: dir.join("reg.yaml"),
            svid_ttl: Dur(Duration::from_secs(600)),
            ca_ttl: Dur(Duration::from_secs(3600)),
            reload_interval: Dur(Duration::from_millis(20)),
            admin_listen: None,
            upstream: Default::default(),
            kubernetes: Default::default(),
        }
    }

    #[tokio::test]
    async fn start_up_errors_name_the_file_and_a_bad_reload_keeps_the_entries() {
        let dir = tempfile::tempdir().unwrap();
        let a = args(dir.path());
        let ca_dir = a.ca_dir.clone().unwrap();
        let e = start(&a).await.unwrap_err().to_string();
        assert!(e.contains("ca") && e.contains("CA directory"), "{e}");
        std::fs::create_dir(&ca_dir).unwrap();
        std::fs::set_permissions(&ca_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = start(&a).await.unwrap_err().to_string();
        assert!(e.contains("(mode 0755)") && e.contains("chmod 700"), "{e}");
        std::fs::set_permissions(&ca_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = start(&a).await.unwrap_err().to_string();
        assert!(e.contains("reg.yaml") && e.contains("No such file"), "{e}");
        std::fs::write(
            &a.registration,
            "entries:\n  - { spiffe_id: spiffe://example.org/a, selectors: [unix:uid:nope] }\n  - { spiffe_id: spiffe://example.org/b, selectors: [unix:gid:nope] }\n",
        )
        .unwrap();
        let e = start(&a).await.unwrap_err().to_string();
        assert!(
            e.contains("reg.yaml: 2 problems:")
                && e.contains("entries[0] (spiffe://example.org/a): selectors[0]: selector")
                && e.contains("entries[1] (spiffe://example.org/b): selectors[0]: selector"),
            "{e}"
        );
        std::fs::write(
            &a.registration,
            "entries:\n  - { spiffe_id: spiffe://example.org/a, selectors: [unix:uid:0] }\n",
        )
        .unwrap();
        assert!(
            !a.socket.exists(),
            "no socket before the configuration is good"
        );
        assert_eq!(
            std::fs::read_dir(&ca_dir).unwrap().count(),
            0,
            "no CA for nothing"
        );
        let agent = start(&a).await.unwrap();
        assert!(a.socket.exists());
        assert_eq!(agent.snapshot().svids.len(), 1);

        // A bad edit is ignored...
        std::fs::write(&a.registration, "entries: [ {").unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(agent.snapshot().entries.len(), 1);
        // ...a good one applies.
        std::fs::write(
            &a.registration,
            "entries:\n  - { spiffe_id: spiffe://example.org/a, selectors: [unix:uid:0] }\n  - { spiffe_id: spiffe://example.org/b, selectors: [unix:uid:1] }\n",
        )
        .unwrap();
        let mut ok = false;
        for _ in 0..100 {
            if agent.snapshot().svids.len() == 2 {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ok, "new entry not picked up");
        let socket = a.socket.clone();
        agent.shutdown().await;
        assert!(!socket.exists());
    }
}
