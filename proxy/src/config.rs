//! One typed configuration for the proxy. Sources, lowest precedence first: built-in defaults
//! (documented on each field), an optional YAML file, then flags / `SVIDCAR_*` environment
//! variables ([`ProxyArgs`]). Validated as a whole before any port is bound; every error names
//! the setting and where it came from.

mod args;
mod http;
mod runtime;
mod tunnel;
mod values;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use args::ProxyArgs;
pub use http::{HttpConfig, PortProtocol, PortProtocolArg, DEFAULT_OPAQUE_PORTS};
pub use runtime::RuntimeConfig;
pub use svidcar_api::destination::NetPort;
pub use svidcar_identity::config_file::ConfigError;
pub use svidcar_identity::Dur;
pub use svidcar_policy::MtlsMode;
pub use tunnel::TunnelConfig;
pub use values::{DestMode, Destination, Fallback, Mode, PortMtls, Route};

use svidcar_identity::config_file;
use svidcar_identity::pem_source::PemPaths;
use svidcar_identity::WorkloadEndpoint;

/// The whole proxy configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Where our SVID comes from.
    pub identity: IdentityConfig,
    /// App → peer side.
    pub outbound: OutboundConfig,
    /// Peer → app side.
    pub inbound: InboundConfig,
    /// Timeouts and limits shared by both sides.
    pub limits: Limits,
    /// The admin server (metrics, health, config, shutdown).
    pub admin: AdminConfig,
    /// Authorization policy.
    pub policy: PolicyConfig,
    /// HTTP awareness on the inbound side.
    pub http: HttpConfig,
    /// The async runtime's threads (read once, at start-up).
    pub runtime: RuntimeConfig,
    /// Pooled mTLS tunnels between sidecars.
    pub tunnel: TunnelConfig,
}

/// Where authorization policy comes from and what applies without it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// A directory of policy YAML files, watched for changes. Default: none. It must exist
    /// and be readable at start-up (a file appearing in it later is picked up).
    pub dir: Option<PathBuf>,
    /// How often `dir` is checked for changes. Default `1s`.
    pub reload_interval: Dur,
    /// What applies to a workload no ALLOW policy selects: `allow-all`, `all-authenticated`
    /// (any caller with a valid SVID of a trust domain we trust) or `deny`. Default `allow-all`,
    /// as in Istio; STRICT mTLS still requires an SVID.
    pub default: svidcar_policy::DefaultPolicy,
    /// The control plane's gRPC address (`svidcar control`), `HOST:PORT` with an IP address or
    /// a DNS name (resolved at every connection); policy is streamed from it and decisions are
    /// streamed to it. Exclusive with `dir`. Default: none.
    pub control_plane: Option<svidcar_api::channel::HostPort>,
    /// The SPIFFE ID the control plane must present. Required with `control_plane`.
    pub control_plane_id: Option<svidcar_identity::SpiffeId>,
    /// Name this proxy reports to the control plane (e.g. the pod name). Default: the host name
    /// from `HOSTNAME`, else `svidcar`.
    pub node: Option<String>,
    /// Before the first policy set has arrived from a configured source: `deny` (fail
    /// closed) or `default` (apply `default`). Default `deny`.
    pub startup: StartupPolicy,
}

/// Behaviour before the first policy set arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StartupPolicy {
    /// Refuse every inbound connection.
    Deny,
    /// Apply the configured default policy.
    Default,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            dir: None,
            control_plane: None,
            control_plane_id: None,
            node: None,
            reload_interval: Dur(Duration::from_secs(1)),
            default: svidcar_policy::DefaultPolicy::AllowAll,
            startup: StartupPolicy::Deny,
        }
    }
}

/// Admin server settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Run the admin server. Default `true`.
    pub enabled: bool,
    /// Listener. Default `0.0.0.0:15020` (never captured by iptables).
    pub listen: SocketAddr,
    /// Distinct peer identities allowed as metric label values; more are folded into
    /// `overflow`. Default `1000`.
    pub max_identity_labels: usize,
    /// Metric label sets unused for this long are dropped. Default `10m`.
    pub label_idle: Dur,
    /// The app's kubelet probes, run by the proxy against the app over loopback when the
    /// kubelet asks `GET <path>` on this server; keyed by path under `/app-health/`. Written by
    /// `svidcar inject` (env `SVIDCAR_APP_PROBES`), so probes keep working under STRICT mTLS.
    /// Default: none.
    pub app_probes: svidcar_api::app_probe::AppProbes,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                svidcar_api::well_known::ADMIN_PORT,
            ),
            max_identity_labels: 1000,
            label_idle: Dur(Duration::from_secs(600)),
            app_probes: Default::default(),
        }
    }
}

/// Where the SVID comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySource {
    /// PEM files as spiffe-helper writes them (`cert`, `key`, `bundle`), polled for changes.
    Files,
    /// A SPIFFE Workload API (a SPIRE agent or `svidcar agent`) at `workload_api`, streamed.
    #[value(name = "workload_api", alias = "workload-api")]
    WorkloadApi,
}

/// SVID source: PEM files as spiffe-helper writes them, or a SPIFFE Workload API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// `files` or `workload_api`. Default (unset): `workload_api` when `workload_api` is set and
    /// none of `cert`/`key`/`bundle` is, `files` when no Workload API address is set; with both
    /// set it must be given. Flag `--identity-source`, env `SVIDCAR_IDENTITY_SOURCE`.
    pub source: Option<IdentitySource>,
    /// The Workload API address, `unix:///path` or `tcp://IP:PORT` (SPIFFE Workload Endpoint
    /// §4). Required with source `workload_api`. Flag `--workload-api`, env
    /// `SVIDCAR_WORKLOAD_API`, else the standard `SPIFFE_ENDPOINT_SOCKET`.
    pub workload_api: Option<WorkloadEndpoint>,
    /// With several SVIDs from the Workload API, use the one with this hint instead of the
    /// default (first) one. Until one with this hint arrives the proxy has none (fail closed)
    /// and `/ready` says why; an update without it is ignored, and the SVID held serves until it
    /// expires, as during a Workload API outage. Source `workload_api` only. Flag `--svid-hint`,
    /// env `SVIDCAR_SVID_HINT`.
    pub svid_hint: Option<String>,
    /// X.509-SVID chain, leaf first. Required with source `files`. Flag `--cert`, env
    /// `SVIDCAR_CERT`.
    pub cert: Option<PathBuf>,
    /// Private key of the SVID. Required with source `files`. Flag `--key`, env `SVIDCAR_KEY`.
    pub key: Option<PathBuf>,
    /// Trust bundle of our trust domain. Required with source `files`. Flag `--bundle`, env
    /// `SVIDCAR_BUNDLE`.
    pub bundle: Option<PathBuf>,
    /// How often the files are checked for changes (source `files`). Default `1s`.
    pub reload_interval: Dur,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            source: None,
            workload_api: None,
            svid_hint: None,
            cert: None,
            key: None,
            bundle: None,
            reload_interval: Dur(Duration::from_secs(1)),
        }
    }
}

impl IdentityConfig {
    /// The source in effect (see `source`); `None` when it is ambiguous (both a Workload API
    /// address and PEM files, no explicit `source`).
    pub fn effective_source(&self) -> Option<IdentitySource> {
        let files = self.cert.is_some() || self.key.is_some() || self.bundle.is_some();
        match (self.source, self.workload_api.is_some(), files) {
            (Some(s), _, _) => Some(s),
            (None, true, false) => Some(IdentitySource::WorkloadApi),
            (None, true, true) => None,
            (None, false, _) => Some(IdentitySource::Files),
        }
    }
}

/// Outbound (app → mesh) settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboundConfig {
    /// Run the outbound side. Default `true`.
    pub enabled: bool,
    /// Transparent (iptables + `SO_ORIGINAL_DST`) or explicit (static routes). Default
    /// `transparent`.
    pub mode: Mode,
    /// Transparent-mode listener. Default `127.0.0.1:15001` (iptables REDIRECT of locally
    /// generated traffic lands on loopback).
    pub listen: SocketAddr,
    /// Explicit-mode routes; each has its own listener.
    pub routes: Vec<Route>,
    /// Transparent-mode destination table; the most specific match wins.
    pub destinations: Vec<Destination>,
    /// What happens to destinations no entry matches. Default `passthrough`.
    pub fallback: Fallback,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            mode: Mode::Transparent,
            listen: SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                svidcar_api::well_known::OUTBOUND_PORT,
            ),
            routes: Vec::new(),
            destinations: Vec::new(),
            fallback: Fallback::Passthrough,
        }
    }
}

/// Inbound (mesh → app) settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct InboundConfig {
    /// Run the inbound side. Default `true`.
    pub enabled: bool,
    /// Transparent (forward to `app_host`:original port) or explicit (forward to `app`).
    /// Default `transparent`.
    pub mode: Mode,
    /// Listener. Default `0.0.0.0:15006`.
    pub listen: SocketAddr,
    /// Explicit mode: the app's address. Required in explicit mode.
    pub app: Option<SocketAddr>,
    /// Transparent mode: where the app listens. Default `127.0.0.1`.
    pub app_host: IpAddr,
    /// mTLS mode of ports not listed in `port_mtls`. Default `strict`.
    pub mtls: MtlsMode,
    /// Per-port mTLS modes (by original destination port; in explicit mode by the app's port).
    pub port_mtls: BTreeMap<u16, MtlsMode>,
    /// How long to wait for a client's first bytes. On a PERMISSIVE port silence means a
    /// server-first protocol and the connection passes through; on a STRICT port it is refused.
    /// Default `1s`.
    pub detect_timeout: Dur,
}

impl Default for InboundConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            mode: Mode::Transparent,
            listen: SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                svidcar_api::well_known::INBOUND_PORT,
            ),
            app: None,
            app_host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            mtls: MtlsMode::Strict,
            port_mtls: BTreeMap::new(),
            detect_timeout: Dur(Duration::from_secs(1)),
        }
    }
}

impl InboundConfig {
    /// The mTLS mode of a port.
    pub fn mtls_for(&self, port: u16) -> MtlsMode {
        self.port_mtls.get(&port).copied().unwrap_or(self.mtls)
    }
}

/// Limits and timeouts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Connecting to an upstream or the app. Default `5s`.
    pub connect_timeout: Dur,
    /// TLS handshake. Default `10s`.
    pub handshake_timeout: Dur,
    /// A connection with no bytes either way for this long is closed. Default `1h`.
    pub idle_timeout: Dur,
    /// Open connections per listener; further ones are accepted and closed. Default `10000`.
    pub max_connections: usize,
    /// After SIGTERM/SIGINT, open connections may finish for this long (a second signal closes
    /// them at once). Default `20s`.
    pub drain_grace: Dur,
    /// Connections the kernel queues per listener before the proxy accepts them (the `listen(2)`
    /// backlog); a burst beyond it is refused or retried by the client. The kernel caps it at
    /// `net.core.somaxconn` (4096 on Linux 5.4 and later). Default `4096`.
    pub listen_backlog: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connect_timeout: Dur(Duration::from_secs(5)),
            handshake_timeout: Dur(Duration::from_secs(10)),
            idle_timeout: Dur(Duration::from_secs(3600)),
            max_connections: 10_000,
            drain_grace: Dur(Duration::from_secs(20)),
            listen_backlog: 4096,
        }
    }
}

impl ProxyConfig {
    /// Parses a YAML document.
    pub fn from_yaml(path: &Path, text: &str) -> Result<Self, ConfigError> {
        config_file::from_yaml(path, text)
    }

    /// Defaults, then the file named by `args.config` (if any), then the flags and environment
    /// variables in `args`; validated.
    pub fn load(args: &ProxyArgs) -> Result<Self, ConfigError> {
        config_file::load(args.config.as_deref(), |c| args.apply(c), Self::validate)
    }

    /// The PEM paths, once validated.
    pub fn pem_paths(&self) -> Option<PemPaths> {
        Some(PemPaths {
            cert: self.identity.cert.clone()?,
            key: self.identity.key.clone()?,
            bundle: self.identity.bundle.clone()?,
        })
    }

    /// Checks the whole configuration; returns the dotted field name and the problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |field: &str, msg: &str| Err((field.to_owned(), msg.to_owned()));
        match self.identity.effective_source() {
            None => {
                return bad(
                    "identity.source",
                    "both a Workload API address (identity.workload_api / SPIFFE_ENDPOINT_SOCKET) \
                     and PEM files are set: choose files or workload_api",
                )
            }
            Some(IdentitySource::Files) => {
                if self.identity.svid_hint.is_some() {
                    return bad(
                        "identity.svid_hint",
                        "selects among the SVIDs of the Workload API; PEM files hold one",
                    );
                }
                for (field, value) in [
                    ("identity.cert", &self.identity.cert),
                    ("identity.key", &self.identity.key),
                    ("identity.bundle", &self.identity.bundle),
                ] {
                    if value.is_none() {
                        return bad(
                            field,
                            "required (path to a PEM file), or use the Workload API \
                             (identity.workload_api / SPIFFE_ENDPOINT_SOCKET)",
                        );
                    }
                }
            }
            Some(IdentitySource::WorkloadApi) => {
                if self.identity.workload_api.is_none() {
                    return bad(
                        "identity.workload_api",
                        "required with identity.source workload_api: unix:///path or \
                         tcp://IP:PORT (flag --workload-api, or SPIFFE_ENDPOINT_SOCKET)",
                    );
                }
                if self.identity.svid_hint.as_deref() == Some("") {
                    return bad(
                        "identity.svid_hint",
                        "empty: leave it out for the default SVID",
                    );
                }
            }
        }
        let nonzero = [
            ("identity.reload_interval", self.identity.reload_interval),
            ("inbound.detect_timeout", self.inbound.detect_timeout),
            ("policy.reload_interval", self.policy.reload_interval),
            ("limits.connect_timeout", self.limits.connect_timeout),
            ("limits.handshake_timeout", self.limits.handshake_timeout),
            ("limits.idle_timeout", self.limits.idle_timeout),
        ];
        for (field, d) in nonzero {
            if d.0.is_zero() {
                return bad(field, "must be greater than zero");
            }
        }
        match (&self.policy.control_plane, &self.policy.control_plane_id) {
            (Some(_), None) => {
                return bad(
                    "policy.control_plane_id",
                    "required with policy.control_plane",
                )
            }
            (None, Some(_)) => {
                return bad(
                    "policy.control_plane",
                    "required with policy.control_plane_id",
                )
            }
            (Some(_), Some(_)) if self.policy.dir.is_some() => {
                return bad(
                    "policy.dir",
                    "use either a policy directory or a control plane, not both",
                )
            }
            _ => {}
        }
        if let Some(dir) = &self.policy.dir {
            // Checked here, before anything binds: a typo would otherwise start a proxy that
            // refuses every connection while it waits for a directory that never appears.
            policy_dir_usable(dir).map_err(|message| ("policy.dir".to_owned(), message))?;
        }
        if self.admin.max_identity_labels == 0 {
            return bad("admin.max_identity_labels", "must be at least 1");
        }
        if self.admin.label_idle.0.is_zero() {
            return bad("admin.label_idle", "must be greater than zero");
        }
        if self.limits.max_connections == 0 {
            return bad("limits.max_connections", "must be at least 1");
        }
        if self.limits.listen_backlog == 0 {
            return bad("limits.listen_backlog", "must be at least 1");
        }
        if !self.outbound.enabled && !self.inbound.enabled {
            return bad("outbound.enabled", "outbound and inbound are both disabled");
        }
        self.http.validate()?;
        self.tunnel.validate()?;
        let mut listeners: Vec<(String, SocketAddr)> = Vec::new();
        if self.outbound.enabled {
            match self.outbound.mode {
                Mode::Explicit => {
                    if self.outbound.routes.is_empty() {
                        return bad("outbound.routes", "explicit mode needs at least one route");
                    }
                    for (i, r) in self.outbound.routes.iter().enumerate() {
                        listeners.push((format!("outbound.routes[{i}].listen"), r.listen));
                    }
                }
                Mode::Transparent => {
                    listeners.push(("outbound.listen".into(), self.outbound.listen));
                }
            }
            for (i, d) in self.outbound.destinations.iter().enumerate() {
                let field = format!("outbound.destinations[{i}].server_id");
                match (d.mode, &d.server_id) {
                    (DestMode::Mesh, None) => {
                        return Err((field, "required when mode is mesh".into()))
                    }
                    (DestMode::Passthrough, Some(_)) => {
                        return Err((field, "must be empty when mode is passthrough".into()))
                    }
                    _ => {}
                }
            }
        }
        if self.inbound.enabled {
            listeners.push(("inbound.listen".into(), self.inbound.listen));
            if let Some(t) = self.tunnel.listener(true, self.inbound.mode) {
                listeners.push(("tunnel.listen".into(), t));
            }
            if self.inbound.mode == Mode::Explicit && self.inbound.app.is_none() {
                return bad("inbound.app", "required in explicit mode");
            }
        }
        if self.admin.enabled {
            listeners.push(("admin.listen".into(), self.admin.listen));
        }
        for (i, (field, addr)) in listeners.iter().enumerate() {
            if addr.port() == 0 {
                // Port 0 (any free port) is allowed: tests and the demo use it.
                continue;
            }
            if let Some((other, _)) = listeners[..i].iter().find(|(_, a)| a == addr) {
                return Err((field.clone(), format!("{addr} is already used by {other}")));
            }
        }
        Ok(())
    }
}

/// Whether `dir` is a directory we can list; the message names the path and what is wrong.
fn policy_dir_usable(dir: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{}: not a directory", dir.display()));
    }
    std::fs::read_dir(dir)
        .map(drop)
        .map_err(|e| format!("{}: cannot list the directory: {e}", dir.display()))
}

#[cfg(test)]
mod tests;
