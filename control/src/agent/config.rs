//! The configuration of `svidcar agent`, loaded like the proxy's: defaults (documented on each
//! field of [`AgentConfig`], defined once in its `Default`), then a YAML file (`--config` /
//! `SVIDCAR_AGENT_CONFIG`), then flags and `SVIDCAR_*` environment variables ([`AgentFlags`]);
//! validated before the socket or any listener exists.

mod kubernetes;

pub use kubernetes::{KubernetesConfig, KubernetesFlags};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use svidcar_identity::config_file::{self, set, set_some, ConfigError};
use svidcar_identity::{Dur, SpiffeId, TrustDomain};

/// Settings of `svidcar agent`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Path of the Workload API socket; clients use `SPIFFE_ENDPOINT_SOCKET=unix://<path>`.
    /// Default `/run/svidcar/agent.sock`.
    pub socket: PathBuf,
    /// Socket permissions, octal (`0660`; quoted or not in YAML). Who may connect; attestation
    /// decides what each caller gets. Default `0660`.
    #[serde(deserialize_with = "octal_mode")]
    pub socket_mode: u32,
    /// Group (numeric gid) given to the socket, e.g. the workloads' group. Default: unchanged.
    pub socket_group: Option<u32>,
    /// CA directory (`ca.pem`, `ca.key`); must exist. A CA is created in it on first start.
    /// Single-machine mode; exclusive with `upstream.server`, one of the two is required.
    /// Default: none.
    pub ca_dir: Option<PathBuf>,
    /// Trust domain (e.g. `example.org`). Needed to create the CA and with `upstream.server`;
    /// checked against a loaded CA. Default: none.
    pub trust_domain: Option<TrustDomain>,
    /// HTTP endpoint for probes and Prometheus (`/live`, `/ready`, `/metrics`), e.g.
    /// `127.0.0.1:15021` ([`svidcar_api::well_known::AGENT_ADMIN_PORT`]). Default: off.
    pub admin_listen: Option<SocketAddr>,
    /// Getting SVIDs from `svidcar control` instead of holding the CA.
    pub upstream: UpstreamConfig,
    /// Registration entries (YAML), re-read when they change. Required (the default, empty,
    /// is refused).
    pub registration: PathBuf,
    /// Lifetime of issued X.509-SVIDs; they are re-issued at about half of it. At least `2s`.
    /// Default `1h`.
    pub svid_ttl: Dur,
    /// Lifetime of each CA root (the first and every successor); a successor is prepared at half
    /// of it and signs from 5/6 of it. At least twice `svid_ttl`. Default `8760h` (a year).
    pub ca_ttl: Dur,
    /// How often the registration file is checked for changes. Default `1s`.
    pub reload_interval: Dur,
    /// Pod attestation through the kubelet. Default: off.
    pub kubernetes: KubernetesConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(svidcar_api::well_known::AGENT_SOCKET),
            socket_mode: 0o660,
            socket_group: None,
            ca_dir: None,
            trust_domain: None,
            admin_listen: None,
            upstream: UpstreamConfig::default(),
            registration: PathBuf::new(),
            svid_ttl: Dur(Duration::from_secs(3600)),
            ca_ttl: Dur(Duration::from_secs(8760 * 3600)),
            reload_interval: Dur(Duration::from_secs(1)),
            kubernetes: KubernetesConfig::default(),
        }
    }
}

/// How `svidcar agent` reaches `svidcar control` when it does not hold the CA (YAML section
/// `upstream`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `svidcar control`'s gRPC address (`host:port`, e.g. port
    /// [`svidcar_api::well_known::CONTROL_GRPC_PORT`]): get SVIDs from it instead of holding
    /// the CA (`ca_dir`). Default: none.
    pub server: Option<String>,
    /// The SPIFFE ID the control plane must present. Only with `server`. Default
    /// `spiffe://<trust_domain>/svidcar/control`.
    pub server_id: Option<SpiffeId>,
    /// Bundle (PEM) to verify the control plane with on first contact, before the agent has
    /// received one. Only with `server`. Default: none.
    pub server_bundle: Option<PathBuf>,
    /// File holding the one-time join token, needed while the data directory holds no valid
    /// node SVID. Only with `server`. Default: none.
    pub join_token_file: Option<PathBuf>,
    /// Where the node SVID, its key and the bundle are kept. Default `/var/lib/svidcar/agent`.
    pub data_dir: PathBuf,
    /// How long a joining agent waits for the control plane to accept connections (it may start
    /// later than the agent) before giving up. Default `2m`.
    pub join_wait: Dur,
    /// How often the bundle is fetched between renewals. Default `30s`.
    pub bundle_refresh: Dur,
}

impl Default for UpstreamConfig {
    /// Single-machine mode: no control plane.
    fn default() -> Self {
        Self {
            server: None,
            server_id: None,
            server_bundle: None,
            join_token_file: None,
            data_dir: PathBuf::from("/var/lib/svidcar/agent"),
            join_wait: Dur(Duration::from_secs(120)),
            bundle_refresh: Dur(Duration::from_secs(30)),
        }
    }
}

fn octal_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    struct ModeVisitor;
    impl serde::de::Visitor<'_> for ModeVisitor {
        type Value = u32;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("octal permissions such as 0660")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<u32, E> {
            super::parse_mode(s).map_err(E::custom)
        }
    }
    d.deserialize_str(ModeVisitor)
}

impl AgentConfig {
    /// Checks the settings that need no I/O; returns the first setting found wrong and the
    /// problem.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        match self.problems().into_iter().next() {
            Some(p) => Err(p),
            None => Ok(()),
        }
    }

    /// Every setting that is wrong (needing no I/O to tell), with the problem.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut bad = |field, message: &str| out.push((field, message.to_owned()));
        if self.registration.as_os_str().is_empty() {
            bad(
                "registration",
                "required: the registration entries file (YAML)",
            );
        }
        let up = &self.upstream;
        match (&self.ca_dir, &up.server) {
            (Some(_), Some(_)) | (None, None) => bad(
                "ca_dir",
                "give either ca_dir (hold the CA here) or upstream.server (get SVIDs from \
                 svidcar control)",
            ),
            (None, Some(_)) if self.trust_domain.is_none() => {
                bad("trust_domain", "needed with upstream.server")
            }
            _ => {}
        }
        if up.server.is_none() {
            let only_with_server = [
                ("upstream.server_id", up.server_id.is_some()),
                ("upstream.server_bundle", up.server_bundle.is_some()),
                ("upstream.join_token_file", up.join_token_file.is_some()),
            ];
            for (field, given) in only_with_server {
                if given {
                    bad(field, "only used with upstream.server");
                }
            }
        }
        if self.svid_ttl.0 < Duration::from_secs(2) {
            bad("svid_ttl", "must be at least 2s");
        }
        for (field, d) in [
            ("reload_interval", self.reload_interval),
            ("upstream.bundle_refresh", up.bundle_refresh),
        ] {
            if d.0.is_zero() {
                bad(field, "must be greater than zero");
            }
        }
        if self.ca_dir.is_some() && self.ca_ttl.0 < self.svid_ttl.0 * 2 {
            out.push((
                "ca_ttl",
                format!(
                    "must be at least twice svid_ttl ({}), so that a new root is published well \
                     before it signs",
                    self.svid_ttl
                ),
            ));
        }
        if let Err(p) = self.kubernetes.validate() {
            out.push(p);
        }
        out
    }
}

/// `svidcar agent [flags]` runs the agent; `svidcar agent check [flags]` only checks what the
/// same flags configure.
#[derive(Debug, Clone, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentCommand {
    /// What to do instead of running.
    #[command(subcommand)]
    pub action: Option<AgentAction>,
    /// The agent's settings (when running).
    #[command(flatten)]
    pub flags: AgentFlags,
}

/// `svidcar agent`'s subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AgentAction {
    /// Check the configuration, the CA directory and the registration file (and the bundles
    /// it names) without starting anything: no socket, no listener, no CA created. Lists every
    /// problem; exits 0 when there is none, 1 otherwise.
    Check(AgentFlags),
}

/// Flags of `svidcar agent`, each also a `SVIDCAR_*` environment variable, over the `--config`
/// file; every one maps to a setting of [`AgentConfig`] (where the defaults are defined).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AgentFlags {
    /// YAML configuration file (the settings below; `upstream:` holds the control-plane ones).
    #[arg(long, env = "SVIDCAR_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// socket: path of the Workload API socket; clients use
    /// `SPIFFE_ENDPOINT_SOCKET=unix://<path>` [default: /run/svidcar/agent.sock].
    #[arg(long, env = "SVIDCAR_AGENT_SOCKET")]
    pub socket: Option<PathBuf>,
    /// socket_mode: socket permissions, octal. Who may connect; attestation decides what each
    /// caller gets [default: 0660].
    #[arg(long, env = "SVIDCAR_AGENT_SOCKET_MODE", value_parser = super::parse_mode)]
    pub socket_mode: Option<u32>,
    /// socket_group: group (numeric gid) given to the socket, e.g. the workloads' group.
    #[arg(long, env = "SVIDCAR_AGENT_SOCKET_GROUP")]
    pub socket_group: Option<u32>,
    /// ca_dir: CA directory (`ca.pem`, `ca.key`); must exist. A CA is created in it on first
    /// start. Single-machine mode; without it the agent gets SVIDs from `svidcar control`
    /// (`--server`).
    #[arg(long, env = "SVIDCAR_CA_DIR")]
    pub ca_dir: Option<PathBuf>,
    /// trust_domain: e.g. `example.org`. Needed to create the CA and with `--server`; checked
    /// against a loaded CA.
    #[arg(long, env = "SVIDCAR_TRUST_DOMAIN")]
    pub trust_domain: Option<TrustDomain>,
    /// admin_listen: HTTP endpoint for probes and Prometheus (`/live`, `/ready`, `/metrics`),
    /// e.g. `127.0.0.1:15021`; off when not given.
    #[arg(long, env = "SVIDCAR_AGENT_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Getting SVIDs from `svidcar control` instead.
    #[command(flatten)]
    pub upstream: UpstreamFlags,
    /// registration: registration entries (YAML), re-read when they change. Required.
    #[arg(long, env = "SVIDCAR_REGISTRATION")]
    pub registration: Option<PathBuf>,
    /// svid_ttl: lifetime of issued X.509-SVIDs; they are re-issued at about half of it
    /// [default: 1h].
    #[arg(long, env = "SVIDCAR_SVID_TTL")]
    pub svid_ttl: Option<Dur>,
    /// ca_ttl: lifetime of each CA root (the first and every successor); a successor is
    /// prepared at half of it and signs from 5/6 of it. At least twice `--svid-ttl`
    /// [default: 8760h].
    #[arg(long, env = "SVIDCAR_CA_TTL")]
    pub ca_ttl: Option<Dur>,
    /// reload_interval: how often the registration file is checked for changes [default: 1s].
    #[arg(long, env = "SVIDCAR_REGISTRATION_RELOAD")]
    pub reload_interval: Option<Dur>,
    /// Pod attestation through the kubelet.
    #[command(flatten)]
    pub kubernetes: KubernetesFlags,
}

/// Flags of the `upstream` settings.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct UpstreamFlags {
    /// upstream.server: `svidcar control`'s gRPC address (`host:port`): get SVIDs from it
    /// instead of holding the CA (`--ca-dir`).
    #[arg(long = "server", env = "SVIDCAR_AGENT_SERVER")]
    pub server: Option<String>,
    /// upstream.server_id: the SPIFFE ID the control plane must present
    /// [default: spiffe://<td>/svidcar/control].
    #[arg(long, env = "SVIDCAR_AGENT_SERVER_ID")]
    pub server_id: Option<SpiffeId>,
    /// upstream.server_bundle: bundle (PEM) to verify the control plane with on first contact,
    /// before the agent has received one.
    #[arg(long, env = "SVIDCAR_AGENT_SERVER_BUNDLE")]
    pub server_bundle: Option<PathBuf>,
    /// upstream.join_token_file: file holding the one-time join token, needed while the data
    /// directory holds no valid node SVID.
    #[arg(long, env = "SVIDCAR_AGENT_JOIN_TOKEN_FILE")]
    pub join_token_file: Option<PathBuf>,
    /// upstream.data_dir: where the node SVID, its key and the bundle are kept
    /// [default: /var/lib/svidcar/agent].
    #[arg(long, env = "SVIDCAR_AGENT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// upstream.join_wait: how long a joining agent waits for the control plane to accept
    /// connections (it may start later than the agent) before giving up [default: 2m].
    #[arg(long, env = "SVIDCAR_AGENT_JOIN_WAIT")]
    pub join_wait: Option<Dur>,
    /// upstream.bundle_refresh: how often the bundle is fetched between renewals
    /// [default: 30s].
    #[arg(long, env = "SVIDCAR_AGENT_BUNDLE_REFRESH")]
    pub bundle_refresh: Option<Dur>,
}

impl AgentFlags {
    /// Defaults, then the `--config` file (if any), then these flags; validated.
    pub fn load(&self) -> Result<AgentConfig, ConfigError> {
        config_file::load(
            self.config.as_deref(),
            |c| self.apply(c),
            AgentConfig::validate,
        )
    }

    /// Writes every given flag over `c`.
    pub fn apply(&self, c: &mut AgentConfig) {
        set(&mut c.socket, &self.socket);
        set(&mut c.socket_mode, &self.socket_mode);
        set_some(&mut c.socket_group, &self.socket_group);
        set_some(&mut c.ca_dir, &self.ca_dir);
        set_some(&mut c.trust_domain, &self.trust_domain);
        set_some(&mut c.admin_listen, &self.admin_listen);
        set(&mut c.registration, &self.registration);
        set(&mut c.svid_ttl, &self.svid_ttl);
        set(&mut c.ca_ttl, &self.ca_ttl);
        set(&mut c.reload_interval, &self.reload_interval);
        let (u, f) = (&mut c.upstream, &self.upstream);
        set_some(&mut u.server, &f.server);
        set_some(&mut u.server_id, &f.server_id);
        set_some(&mut u.server_bundle, &f.server_bundle);
        set_some(&mut u.join_token_file, &f.join_token_file);
        set(&mut u.data_dir, &f.data_dir);
        set(&mut u.join_wait, &f.join_wait);
        set(&mut u.bundle_refresh, &f.bundle_refresh);
        self.kubernetes.apply(&mut c.kubernetes);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::Parser;

    use super::*;

    /// Writes `agent.yaml`; returns the flag naming it.
    fn write(dir: &Path, text: &str) -> String {
        let path = dir.join("agent.yaml");
        std::fs::write(&path, text).unwrap();
        format!("--config={}", path.display())
    }

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentFlags,
    }

    fn load(flags: &[&str]) -> Result<AgentConfig, String> {
        let argv = std::iter::once("agent").chain(flags.iter().copied());
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        cli.agent.load().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_the_documented_values() {
        let c = AgentConfig::default();
        assert_eq!(c.socket, Path::new("/run/svidcar/agent.sock"));
        assert_eq!((c.socket_mode, c.socket_group), (0o660, None));
        assert_eq!(
            (&c.ca_dir, &c.trust_domain, c.admin_listen),
            (&None, &None, None)
        );
        assert_eq!(c.registration, Path::new(""));
        assert_eq!(c.svid_ttl.to_string(), "1h");
        assert_eq!(c.ca_ttl.to_string(), "8760h");
        assert_eq!(c.reload_interval.to_string(), "1s");
        let u = &c.upstream;
        assert_eq!((&u.server, &u.server_id), (&None, &None));
        assert_eq!((&u.server_bundle, &u.join_token_file), (&None, &None));
        assert_eq!(u.data_dir, Path::new("/var/lib/svidcar/agent"));
        assert_eq!(
            (u.join_wait.to_string(), u.bundle_refresh.to_string()),
            ("2m".into(), "30s".into())
        );
        // The flags alone give the defaults plus what they set.
        let c = load(&["--ca-dir=/ca", "--registration=/r.yaml"]).unwrap();
        assert_eq!(
            c,
            AgentConfig {
                ca_dir: Some("/ca".into()),
                registration: "/r.yaml".into(),
                ..AgentConfig::default()
            }
        );
    }

    #[test]
    fn file_then_flags_the_flag_wins() {
        let dir = tempfile::tempdir().unwrap();
        let config = write(
            dir.path(),
            "socket_mode: 0600\nregistration: /etc/reg.yaml\nsvid_ttl: 10m\n\
             trust_domain: example.org\nupstream:\n  server: control:15012\n  join_wait: 5s\n",
        );
        let c = load(&[&config]).unwrap();
        assert_eq!(c.socket_mode, 0o600);
        assert_eq!(c.registration, Path::new("/etc/reg.yaml"));
        assert_eq!(c.svid_ttl.to_string(), "10m");
        assert_eq!(c.upstream.server.as_deref(), Some("control:15012"));
        assert_eq!(c.upstream.join_wait.to_string(), "5s");
        assert_eq!(
            c.upstream.bundle_refresh.to_string(),
            "30s",
            "unset: the default"
        );
        let c = load(&[
            &config,
            "--socket-mode=0640",
            "--svid-ttl=20m",
            "--server=other:15012",
            "--join-wait=1m",
        ])
        .unwrap();
        assert_eq!(c.socket_mode, 0o640);
        assert_eq!(c.svid_ttl.to_string(), "20m");
        assert_eq!(c.upstream.server.as_deref(), Some("other:15012"));
        assert_eq!(c.upstream.join_wait.to_string(), "1m");
        assert_eq!(
            c.registration,
            Path::new("/etc/reg.yaml"),
            "kept from the file"
        );
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let config = write(dir.path(), "registration: /r.yaml\nsvid_tll: 1h\n");
        let e = load(&[&config]).unwrap_err();
        assert!(
            e.contains("agent.yaml: ") && e.contains("unknown field `svid_tll`"),
            "{e}"
        );
        let config = write(dir.path(), "svid_ttl: soon\n");
        let e = load(&[&config]).unwrap_err();
        assert!(e.contains("agent.yaml: svid_ttl: "), "{e}");
        let config = write(dir.path(), "upstream:\n  join_wait: 5 minutes\n");
        let e = load(&[&config]).unwrap_err();
        assert!(e.contains("agent.yaml: upstream.join_wait: "), "{e}");
        let config = write(dir.path(), "socket_mode: 0999\n");
        let e = load(&[&config]).unwrap_err();
        assert!(e.contains("agent.yaml: socket_mode: "), "{e}");
        let config = write(
            dir.path(),
            "ca_dir: /ca\nregistration: /r.yaml\nsvid_ttl: 1s\n",
        );
        let e = load(&[&config]).unwrap_err();
        assert!(
            e.contains("agent.yaml (with flags/environment): svid_ttl: must be at least 2s"),
            "{e}"
        );
        let e = load(&[&config, "--svid-ttl=1h", "--ca-ttl=90m"]).unwrap_err();
        assert!(
            e.contains("agent.yaml (with flags/environment): ca_ttl: "),
            "{e}"
        );
    }

    #[test]
    fn the_kubernetes_section_and_its_flags() {
        let dir = tempfile::tempdir().unwrap();
        let config = write(
            dir.path(),
            "ca_dir: /ca\nregistration: /r.yaml\nkubernetes:\n  enabled: true\n  \
             kubelet_url: https://10.0.0.7:10250\n  kubelet_ca: /ca.crt\n  node_name: node-1\n  \
             attest_wait: 3s\n",
        );
        let c = load(&[&config]).unwrap();
        let k = &c.kubernetes;
        assert!(k.enabled && !k.skip_kubelet_verification);
        assert_eq!(k.kubelet_url.to_string(), "https://10.0.0.7:10250");
        assert_eq!(k.kubelet_ca.as_deref(), Some(Path::new("/ca.crt")));
        assert_eq!(k.node_name.as_deref(), Some("node-1"));
        assert_eq!(k.attest_wait.to_string(), "3s");
        assert_eq!(k.refresh_interval.to_string(), "10s", "unset: the default");
        let c = load(&[
            "--ca-dir=/ca",
            "--registration=/r.yaml",
            "--kubernetes",
            "--skip-kubelet-verification",
            "--kubelet-url=https://node-1:11250",
            "--kubernetes-token-file=/t",
            "--kubernetes-default-id=false",
            "--kubernetes-attest-wait=2s",
            "--kubernetes-refresh-interval=1m",
        ])
        .unwrap();
        let k = &c.kubernetes;
        assert!(k.enabled && k.skip_kubelet_verification && !k.default_id);
        assert_eq!(k.kubelet_url.to_string(), "https://node-1:11250");
        assert_eq!(k.token_file, Path::new("/t"));
        assert_eq!(
            (k.attest_wait.to_string(), k.refresh_interval.to_string()),
            ("2s".into(), "1m".into())
        );
        let e = load(&[&config, "--kubelet-url=http://10.0.0.7:10255"]).unwrap_err();
        assert!(e.contains("must be https://"), "{e}");
        let config = write(
            dir.path(),
            "ca_dir: /ca\nregistration: /r.yaml\nkubernetes:\n  kubelet_url: http://x\n",
        );
        let e = load(&[&config]).unwrap_err();
        assert!(e.contains("agent.yaml: kubernetes.kubelet_url: "), "{e}");
        let e = load(&["--ca-dir=/ca", "--registration=/r", "--kubernetes"]).unwrap_err();
        assert!(
            e.starts_with("flags/environment: kubernetes.kubelet_ca: required"),
            "{e}"
        );
        let e = load(&[
            "--ca-dir=/ca",
            "--registration=/r",
            "--kubernetes",
            "--skip-kubelet-verification",
            "--kubernetes-default-id-template=ns/{ns}",
        ])
        .unwrap_err();
        assert!(
            e.starts_with("flags/environment: kubernetes.default_id_template: "),
            "{e}"
        );
    }

    #[test]
    fn validation_names_the_setting() {
        let e = load(&["--ca-dir=/ca"]).unwrap_err();
        assert_eq!(
            e,
            "flags/environment: registration: required: the registration entries file (YAML)"
        );
        let e = load(&["--registration=/r"]).unwrap_err();
        assert!(
            e.starts_with("flags/environment: ca_dir: give either"),
            "{e}"
        );
        let e = load(&["--registration=/r", "--ca-dir=/ca", "--server=c:1"]).unwrap_err();
        assert!(
            e.starts_with("flags/environment: ca_dir: give either"),
            "{e}"
        );
        let e = load(&["--registration=/r", "--server=c:1"]).unwrap_err();
        assert!(
            e.starts_with("flags/environment: trust_domain: needed"),
            "{e}"
        );
        let e = load(&["--registration=/r", "--ca-dir=/ca", "--join-token-file=/t"]).unwrap_err();
        assert!(
            e.starts_with("flags/environment: upstream.join_token_file: only"),
            "{e}"
        );
        let e = load(&["--registration=/r", "--ca-dir=/ca", "--reload-interval=0s"]).unwrap_err();
        assert!(e.starts_with("flags/environment: reload_interval: "), "{e}");
    }
}
