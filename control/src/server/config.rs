//! The configuration of `svidcar control`, loaded like the proxy's: defaults (documented on each
//! field of [`ControlConfig`], defined once in its `Default`), then a YAML file (`--config` /
//! `SVIDCAR_CONTROL_CONFIG`), then flags and `SVIDCAR_CONTROL_*` / `SVIDCAR_*` environment
//! variables ([`ControlFlags`]); validated before anything binds.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use svidcar_api::well_known;
use svidcar_identity::config_file::{self, set, set_some, ConfigError};
use svidcar_identity::{Dur, TrustDomain, WorkloadEndpoint};

/// Settings of `svidcar control`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// Policy directory (YAML files), watched for changes. Required (the default, empty, is
    /// refused).
    pub policy_dir: PathBuf,
    /// State directory (decision log, used join tokens). Default `svidcar-state` (relative to
    /// the working directory).
    pub state_dir: PathBuf,
    /// gRPC listener for proxies and agents (mTLS). Default `0.0.0.0:15012`
    /// ([`well_known::CONTROL_GRPC_PORT`]).
    pub listen: SocketAddr,
    /// HTTP listener for queries (`/decisions`, `/proxies`, `/nodes`, `/policies`, `/bundle`,
    /// `/metrics`). Default `127.0.0.1:15014` ([`well_known::CONTROL_QUERY_PORT`]; loopback
    /// because decisions are sensitive).
    pub admin_listen: SocketAddr,
    /// The control plane's X.509-SVID chain (PEM), when it does not hold the CA (`ca_dir`);
    /// needs `key` and `bundle`. Default: none.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM). Default: none.
    pub key: Option<PathBuf>,
    /// The trust bundle of its trust domain (PEM). Default: none.
    pub bundle: Option<PathBuf>,
    /// CA directory: the control plane holds the trust domain's CA, issues its own SVID
    /// (`spiffe://<td>/svidcar/control`) and serves SVIDs to agents on other nodes. Exclusive
    /// with `cert`/`key`/`bundle` and `workload_api`; one of the three is required. Default:
    /// none.
    pub ca_dir: Option<PathBuf>,
    /// The SPIFFE Workload API (a SPIRE agent or `svidcar agent`) the control plane takes its
    /// own SVID and trust bundles from, rotated live: `unix:///path` or `tcp://IP:PORT`.
    /// Exclusive with `ca_dir` and `cert`/`key`/`bundle`. Flag `--workload-api`, else the
    /// standard `SPIFFE_ENDPOINT_SOCKET` when no other identity source is set. Default: none.
    pub workload_api: Option<WorkloadEndpoint>,
    /// With several SVIDs from the Workload API, use the one with this hint instead of the
    /// default (first) one. Only with `workload_api`. Default: none.
    pub svid_hint: Option<String>,
    /// How long start-up waits for the first SVID from `workload_api` before failing. Default
    /// `30s`.
    pub identity_wait: Dur,
    /// Trust domain; needed to create the CA, checked against a loaded one. Only with `ca_dir`.
    /// Default: none.
    pub trust_domain: Option<TrustDomain>,
    /// Lifetime of each CA root created here (the first and every successor); a successor is
    /// prepared at half of it and signs from 5/6 of it. At least twice the longest SVID TTL.
    /// Default `8760h` (a year).
    pub ca_ttl: Dur,
    /// Lifetime of workload X.509-SVIDs signed for agents (and of the control plane's own).
    /// Default `1h`.
    pub svid_ttl: Dur,
    /// Lifetime of node SVIDs; an agent renews at half of it, and needs a new join token if it
    /// was away longer than all of it. Default `24h`.
    pub node_svid_ttl: Dur,
    /// Nodes file (YAML): which agents may join, with which one-time token, and which SPIFFE IDs
    /// their workloads may obtain. Checked on every request, parsed again when it changed. Only
    /// with `ca_dir`. Default: none (no node API).
    pub nodes: Option<PathBuf>,
    /// How often the policy directory is checked. Default `250ms`.
    pub reload_interval: Dur,
    /// Rotate the decision log at this many bytes. Default `10485760` (10 MiB).
    pub decisions_max_bytes: u64,
    /// Rotated decision files to keep. Default `5`.
    pub decisions_keep: usize,
    /// Decisions waiting to be written to the store (`<state_dir>/edges.db`); beyond, new ones
    /// are dropped and counted (`svidcar_control_decisions_dropped_total`), so that proxies'
    /// decision streams never stall. Default `16384`.
    pub decision_queue: usize,
    /// How long decisions are kept in the store (`svidcar decisions`). Default `72h`.
    pub decision_retention: Dur,
    /// How long the edge table's per-minute counts are kept (`/edges?since=`); edges
    /// themselves (first/last seen, totals) are kept. Default `720h` (30 days).
    pub edge_bucket_retention: Dur,
    /// Learning period of new-edge alerts, from the control plane's first start (with an
    /// empty store): edges seen meanwhile join the baseline silently; `0s` for none.
    /// Default `24h`.
    pub new_edge_learning: Dur,
    /// POST every new-edge alert as JSON to this `http://` or `https://` URL. Default: none.
    pub new_edge_webhook: Option<crate::edges::WebhookUrl>,
    /// What a new edge after learning does: `alert`, or `deny` (also push a generated DENY
    /// policy for exactly that edge until it is allow-listed). Default `alert`.
    pub on_new_edge: crate::edges::OnNewEdge,
    /// The mutating admission webhook (HTTPS, `POST /inject`): injects the sidecar into pods
    /// with the same code as `svidcar inject`. Its serving certificate is issued by the CA held
    /// here (so it needs `ca_dir`). Default: none (off); in Kubernetes `0.0.0.0:15017`
    /// ([`well_known::WEBHOOK_PORT`]).
    pub webhook_listen: Option<SocketAddr>,
    /// DNS names of the webhook's serving certificate: the Service name the API server calls.
    /// Default `[svidcar-control.svidcar-system.svc]`.
    pub webhook_dns_names: Vec<String>,
    /// The proxy image the webhook injects. Default: `svidcar inject`'s (`svidcar:<version>`).
    pub inject_image: Option<String>,
    /// The control-plane address injected proxies use (`HOST:PORT`); they check it presents
    /// this control plane's own SPIFFE ID. Default: the first of `webhook_dns_names` with the
    /// gRPC port (`svidcar-control.svidcar-system.svc:15012`).
    pub inject_control_plane: Option<svidcar_api::channel::HostPort>,
    /// Inject the legacy sidecar (a regular container held by `postStart`) instead of a native
    /// one, for clusters before Kubernetes 1.29. Default `false`.
    pub inject_legacy_sidecar: bool,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            policy_dir: PathBuf::new(),
            state_dir: PathBuf::from("svidcar-state"),
            listen: SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                well_known::CONTROL_GRPC_PORT,
            ),
            admin_listen: SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                well_known::CONTROL_QUERY_PORT,
            ),
            cert: None,
            key: None,
            bundle: None,
            ca_dir: None,
            workload_api: None,
            svid_hint: None,
            identity_wait: Dur(Duration::from_secs(30)),
            trust_domain: None,
            ca_ttl: Dur(Duration::from_secs(8760 * 3600)),
            svid_ttl: Dur(Duration::from_secs(3600)),
            node_svid_ttl: Dur(Duration::from_secs(24 * 3600)),
            nodes: None,
            reload_interval: Dur(Duration::from_millis(250)),
            decisions_max_bytes: 10 << 20,
            decisions_keep: 5,
            decision_queue: 16384,
            decision_retention: Dur(Duration::from_secs(72 * 3600)),
            edge_bucket_retention: Dur(Duration::from_secs(720 * 3600)),
            new_edge_learning: Dur(Duration::from_secs(24 * 3600)),
            new_edge_webhook: None,
            on_new_edge: crate::edges::OnNewEdge::Alert,
            webhook_listen: None,
            webhook_dns_names: vec!["svidcar-control.svidcar-system.svc".to_owned()],
            inject_image: None,
            inject_control_plane: None,
            inject_legacy_sidecar: false,
        }
    }
}

impl ControlConfig {
    /// Checks the settings that need no I/O; returns the setting and the problem.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let bad = |field, message: &str| Err((field, message.to_owned()));
        if self.policy_dir.as_os_str().is_empty() {
            return bad("policy_dir", "required: the policy directory");
        }
        let files = [
            ("cert", self.cert.is_some()),
            ("key", self.key.is_some()),
            ("bundle", self.bundle.is_some()),
        ];
        let any_file = files.iter().any(|(_, given)| *given);
        if self.workload_api.is_some() {
            if self.ca_dir.is_some() {
                return bad(
                    "workload_api",
                    "exclusive with ca_dir: the control plane holding the CA issues its own SVID",
                );
            }
            if let Some((field, _)) = files.iter().find(|(_, given)| *given) {
                return bad(
                    field,
                    "exclusive with workload_api: the SVID comes either from PEM files or from the Workload API",
                );
            }
        } else if self.svid_hint.is_some() {
            return bad("svid_hint", "needs workload_api");
        }
        if self.svid_hint.as_deref() == Some("") {
            return bad("svid_hint", "must not be empty");
        }
        if self.identity_wait.0.is_zero() {
            return bad("identity_wait", "must be greater than zero");
        }
        match (&self.ca_dir, any_file || self.workload_api.is_some()) {
            (Some(_), true) => {
                let (field, _) = files.iter().find(|(_, given)| *given).unwrap_or(&files[0]);
                return bad(
                    field,
                    "exclusive with ca_dir: the control plane holding the CA issues its own SVID",
                );
            }
            (None, false) => {
                return bad(
                    "ca_dir",
                    "give either ca_dir (the control plane holds the CA), workload_api (its SVID \
                     from the SPIFFE Workload API) or all of cert, key and bundle",
                )
            }
            (None, true) if self.workload_api.is_some() => {}
            (None, true) => {
                if let Some((field, _)) = files.iter().find(|(_, given)| !*given) {
                    return bad(
                        field,
                        "required with cert, key and bundle (all three or none)",
                    );
                }
            }
            (Some(_), false) => {}
        }
        if self.ca_dir.is_none() {
            for (field, given) in [
                ("trust_domain", self.trust_domain.is_some()),
                ("nodes", self.nodes.is_some()),
            ] {
                if given {
                    return bad(field, "needs ca_dir");
                }
            }
        }
        for (field, d) in [
            ("svid_ttl", self.svid_ttl),
            ("node_svid_ttl", self.node_svid_ttl),
            ("reload_interval", self.reload_interval),
        ] {
            if d.0.is_zero() {
                return bad(field, "must be greater than zero");
            }
        }
        // A retired root stays published as long as the longest SVID it may have signed.
        let longest = self.svid_ttl.0.max(self.node_svid_ttl.0);
        if self.ca_dir.is_some() && self.ca_ttl.0 < longest * 2 {
            return Err((
                "ca_ttl",
                format!(
                    "must be at least twice the longest SVID lifetime ({}), so that a new root is \
                     published well before it signs",
                    Dur(longest)
                ),
            ));
        }
        if self.decisions_max_bytes == 0 {
            return bad("decisions_max_bytes", "must be at least 1");
        }
        if self.decision_queue == 0 {
            return bad("decision_queue", "must be at least 1");
        }
        for (field, d) in [
            ("decision_retention", self.decision_retention),
            ("edge_bucket_retention", self.edge_bucket_retention),
        ] {
            if d.0.is_zero() {
                return bad(field, "must be greater than zero");
            }
        }
        if self.webhook_listen.is_some() {
            if self.ca_dir.is_none() {
                return bad(
                    "webhook_listen",
                    "needs ca_dir: the webhook's serving certificate is issued by the CA held here",
                );
            }
            if self.webhook_dns_names.is_empty() {
                return bad(
                    "webhook_dns_names",
                    "give at least the webhook Service's name, e.g. svidcar-control.svidcar-system.svc",
                );
            }
            if let Some(bad_name) = self.webhook_dns_names.iter().find(|n| {
                format!("{n}:1")
                    .parse::<svidcar_api::channel::HostPort>()
                    .is_err()
                    || n.parse::<IpAddr>().is_ok()
            }) {
                return Err((
                    "webhook_dns_names",
                    format!("{bad_name:?} is not a DNS name"),
                ));
            }
        }
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            return Err((
                "admin_listen",
                format!("{} is already used by listen", self.admin_listen),
            ));
        }
        Ok(())
    }
}

/// Flags of `svidcar control`, each also an environment variable, over the `--config` file;
/// every one maps to a setting of [`ControlConfig`] (where the defaults are defined).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ControlFlags {
    /// YAML configuration file (the settings below).
    #[arg(long, env = "SVIDCAR_CONTROL_CONFIG")]
    pub config: Option<PathBuf>,
    /// policy_dir: policy directory (YAML files), watched for changes. Required.
    #[arg(long, env = "SVIDCAR_CONTROL_POLICY_DIR")]
    pub policy_dir: Option<PathBuf>,
    /// state_dir: state directory (decision log) [default: svidcar-state].
    #[arg(long, env = "SVIDCAR_CONTROL_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// listen: gRPC listener for proxies and agents (mTLS) [default: 0.0.0.0:15012].
    #[arg(long, env = "SVIDCAR_CONTROL_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// admin_listen: HTTP listener for queries (`/decisions`, `/proxies`, `/policies`)
    /// [default: 127.0.0.1:15014].
    #[arg(long, env = "SVIDCAR_CONTROL_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// cert: the control plane's X.509-SVID chain (PEM), when it does not hold the CA
    /// (`--ca-dir`); needs `--key` and `--bundle`.
    #[arg(long, env = "SVIDCAR_CONTROL_CERT")]
    pub cert: Option<PathBuf>,
    /// key: its private key (PEM).
    #[arg(long, env = "SVIDCAR_CONTROL_KEY")]
    pub key: Option<PathBuf>,
    /// bundle: the trust bundle of its trust domain (PEM).
    #[arg(long, env = "SVIDCAR_CONTROL_BUNDLE")]
    pub bundle: Option<PathBuf>,
    /// ca_dir: the control plane holds the trust domain's CA, issues its own SVID
    /// (`spiffe://<td>/svidcar/control`) and serves SVIDs to agents on other nodes.
    #[arg(long, env = "SVIDCAR_CA_DIR")]
    pub ca_dir: Option<PathBuf>,
    /// workload_api: take the control plane's own SVID and trust bundles from this SPIFFE
    /// Workload API (a SPIRE agent or `svidcar agent`), rotated live: `unix:///path` or
    /// `tcp://IP:PORT`. Instead of `--ca-dir` or `--cert`/`--key`/`--bundle`; when none of them
    /// is given, `SPIFFE_ENDPOINT_SOCKET` is used.
    #[arg(long, env = "SVIDCAR_CONTROL_WORKLOAD_API")]
    pub workload_api: Option<WorkloadEndpoint>,
    /// The standard SPIFFE variable: the Workload API when no identity source is given.
    #[arg(
        long = "spiffe-endpoint-socket",
        env = "SPIFFE_ENDPOINT_SOCKET",
        hide = true
    )]
    pub spiffe_endpoint_socket: Option<WorkloadEndpoint>,
    /// svid_hint: with several SVIDs from the Workload API, use the one with this hint instead
    /// of the default one. Needs `--workload-api`.
    #[arg(long, env = "SVIDCAR_CONTROL_SVID_HINT")]
    pub svid_hint: Option<String>,
    /// identity_wait: how long start-up waits for the first SVID from the Workload API before
    /// failing [default: 30s].
    #[arg(long, env = "SVIDCAR_CONTROL_IDENTITY_WAIT")]
    pub identity_wait: Option<Dur>,
    /// trust_domain: needed to create the CA, checked against a loaded one. Needs `--ca-dir`.
    #[arg(long, env = "SVIDCAR_TRUST_DOMAIN")]
    pub trust_domain: Option<TrustDomain>,
    /// ca_ttl: lifetime of each CA root created here (the first and every successor); a
    /// successor is prepared at half of it and signs from 5/6 of it. At least twice the longest
    /// SVID TTL [default: 8760h].
    #[arg(long, env = "SVIDCAR_CA_TTL")]
    pub ca_ttl: Option<Dur>,
    /// svid_ttl: lifetime of workload X.509-SVIDs signed for agents (and of the control
    /// plane's own) [default: 1h].
    #[arg(long, env = "SVIDCAR_SVID_TTL")]
    pub svid_ttl: Option<Dur>,
    /// node_svid_ttl: lifetime of node SVIDs; an agent renews at half of it, and needs a new
    /// join token if it was away longer than all of it [default: 24h].
    #[arg(long, env = "SVIDCAR_NODE_SVID_TTL")]
    pub node_svid_ttl: Option<Dur>,
    /// nodes: nodes file (YAML): which agents may join, with which one-time token, and which
    /// SPIFFE IDs their workloads may obtain. Checked on every request, parsed again when it
    /// changed. Needs `--ca-dir`.
    #[arg(long, env = "SVIDCAR_CONTROL_NODES")]
    pub nodes: Option<PathBuf>,
    /// reload_interval: how often the policy directory is checked [default: 250ms].
    #[arg(long, env = "SVIDCAR_CONTROL_RELOAD_INTERVAL")]
    pub reload_interval: Option<Dur>,
    /// decisions_max_bytes: rotate the decision log at this many bytes [default: 10485760].
    #[arg(long, env = "SVIDCAR_CONTROL_DECISIONS_MAX_BYTES")]
    pub decisions_max_bytes: Option<u64>,
    /// decisions_keep: rotated decision files to keep [default: 5].
    #[arg(long, env = "SVIDCAR_CONTROL_DECISIONS_KEEP")]
    pub decisions_keep: Option<usize>,
    /// decision_queue: decisions waiting to be written to the store; beyond, new ones are
    /// dropped and counted [default: 16384].
    #[arg(long, env = "SVIDCAR_CONTROL_DECISION_QUEUE")]
    pub decision_queue: Option<usize>,
    /// decision_retention: how long decisions are kept in the store [default: 72h].
    #[arg(long, env = "SVIDCAR_CONTROL_DECISION_RETENTION")]
    pub decision_retention: Option<Dur>,
    /// edge_bucket_retention: how long the edge table's per-minute counts are kept
    /// [default: 720h].
    #[arg(long, env = "SVIDCAR_CONTROL_EDGE_BUCKET_RETENTION")]
    pub edge_bucket_retention: Option<Dur>,
    /// new_edge_learning: learning period of new-edge alerts from the first start; `0s` for
    /// none [default: 24h].
    #[arg(long, env = "SVIDCAR_CONTROL_NEW_EDGE_LEARNING")]
    pub new_edge_learning: Option<Dur>,
    /// new_edge_webhook: POST new-edge alerts as JSON to this http(s) URL [default: none].
    #[arg(long, env = "SVIDCAR_CONTROL_NEW_EDGE_WEBHOOK")]
    pub new_edge_webhook: Option<crate::edges::WebhookUrl>,
    /// on_new_edge: `alert`, or `deny` (also push a generated DENY policy for exactly that
    /// edge until it is allow-listed) [default: alert].
    #[arg(long, env = "SVIDCAR_CONTROL_ON_NEW_EDGE", value_enum)]
    pub on_new_edge: Option<crate::edges::OnNewEdge>,
    /// webhook_listen: serve the mutating admission webhook (HTTPS, `POST /inject`) here, e.g.
    /// 0.0.0.0:15017. Needs `--ca-dir` [default: off].
    #[arg(long, env = "SVIDCAR_CONTROL_WEBHOOK_LISTEN")]
    pub webhook_listen: Option<SocketAddr>,
    /// webhook_dns_names: DNS names of the webhook's serving certificate, comma-separated
    /// [default: svidcar-control.svidcar-system.svc].
    #[arg(long, env = "SVIDCAR_CONTROL_WEBHOOK_DNS_NAMES", value_delimiter = ',')]
    pub webhook_dns_names: Option<Vec<String>>,
    /// inject_image: the proxy image the webhook injects [default: svidcar:<version>].
    #[arg(long, env = "SVIDCAR_CONTROL_INJECT_IMAGE")]
    pub inject_image: Option<String>,
    /// inject_control_plane: the control-plane HOST:PORT injected proxies use [default: the
    /// first webhook DNS name, port 15012].
    #[arg(long, env = "SVIDCAR_CONTROL_INJECT_CONTROL_PLANE")]
    pub inject_control_plane: Option<svidcar_api::channel::HostPort>,
    /// inject_legacy_sidecar: inject a regular container held by `postStart` instead of a
    /// native sidecar (clusters before Kubernetes 1.29) [default: false].
    #[arg(long, env = "SVIDCAR_CONTROL_INJECT_LEGACY_SIDECAR")]
    pub inject_legacy_sidecar: Option<bool>,
}

impl ControlFlags {
    /// Defaults, then the `--config` file (if any), then these flags; validated.
    pub fn load(&self) -> Result<ControlConfig, ConfigError> {
        config_file::load(
            self.config.as_deref(),
            |c| self.apply(c),
            ControlConfig::validate,
        )
    }

    /// Writes every given flag over `c`.
    pub fn apply(&self, c: &mut ControlConfig) {
        set(&mut c.policy_dir, &self.policy_dir);
        set(&mut c.state_dir, &self.state_dir);
        set(&mut c.listen, &self.listen);
        set(&mut c.admin_listen, &self.admin_listen);
        set_some(&mut c.cert, &self.cert);
        set_some(&mut c.key, &self.key);
        set_some(&mut c.bundle, &self.bundle);
        set_some(&mut c.ca_dir, &self.ca_dir);
        set_some(&mut c.workload_api, &self.workload_api);
        set_some(&mut c.svid_hint, &self.svid_hint);
        set(&mut c.identity_wait, &self.identity_wait);
        // The standard variable is a fallback only: set in a pod for its workloads, it must not
        // turn a control plane holding the CA (or reading PEM files) into a misconfiguration.
        let no_source = c.ca_dir.is_none()
            && c.workload_api.is_none()
            && c.cert.is_none()
            && c.key.is_none()
            && c.bundle.is_none();
        if no_source {
            set_some(&mut c.workload_api, &self.spiffe_endpoint_socket);
        }
        set_some(&mut c.trust_domain, &self.trust_domain);
        set(&mut c.ca_ttl, &self.ca_ttl);
        set(&mut c.svid_ttl, &self.svid_ttl);
        set(&mut c.node_svid_ttl, &self.node_svid_ttl);
        set_some(&mut c.nodes, &self.nodes);
        set(&mut c.reload_interval, &self.reload_interval);
        set(&mut c.decisions_max_bytes, &self.decisions_max_bytes);
        set(&mut c.decisions_keep, &self.decisions_keep);
        set(&mut c.decision_queue, &self.decision_queue);
        set(&mut c.decision_retention, &self.decision_retention);
        set(&mut c.edge_bucket_retention, &self.edge_bucket_retention);
        set(&mut c.new_edge_learning, &self.new_edge_learning);
        set_some(&mut c.new_edge_webhook, &self.new_edge_webhook);
        set(&mut c.on_new_edge, &self.on_new_edge);
        set_some(&mut c.webhook_listen, &self.webhook_listen);
        set(&mut c.webhook_dns_names, &self.webhook_dns_names);
        set_some(&mut c.inject_image, &self.inject_image);
        set_some(&mut c.inject_control_plane, &self.inject_control_plane);
        set(&mut c.inject_legacy_sidecar, &self.inject_legacy_sidecar);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        control: ControlFlags,
    }

    fn load(flags: &[&str]) -> Result<ControlConfig, String> {
        let argv = std::iter::once("control").chain(flags.iter().copied());
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        cli.control.load().map_err(|e| e.to_string())
    }

    /// Writes `control.yaml`; returns the flag naming it.
    fn write(dir: &Path, text: &str) -> String {
        let path = dir.join("control.yaml");
        std::fs::write(&path, text).unwrap();
        format!("--config={}", path.display())
    }

    #[test]
    fn defaults_are_the_documented_values() {
        let c = ControlConfig::default();
        assert_eq!(c.policy_dir, Path::new(""));
        assert_eq!(c.state_dir, Path::new("svidcar-state"));
        assert_eq!(c.listen, "0.0.0.0:15012".parse().unwrap());
        assert_eq!(c.admin_listen, "127.0.0.1:15014".parse().unwrap());
        assert_eq!((&c.cert, &c.key, &c.bundle), (&None, &None, &None));
        assert_eq!(
            (&c.ca_dir, &c.trust_domain, &c.nodes),
            (&None, &None, &None)
        );
        assert_eq!(c.ca_ttl.to_string(), "8760h");
        assert_eq!(c.svid_ttl.to_string(), "1h");
        assert_eq!(c.node_svid_ttl.to_string(), "24h");
        assert_eq!(c.reload_interval.to_string(), "250ms");
        assert_eq!((c.decisions_max_bytes, c.decisions_keep), (10_485_760, 5));
        assert_eq!(c.decision_queue, 16384);
        assert_eq!(
            (
                c.decision_retention.to_string(),
                c.edge_bucket_retention.to_string(),
                c.new_edge_learning.to_string()
            ),
            ("72h".into(), "720h".into(), "24h".into())
        );
        assert_eq!(
            (&c.new_edge_webhook, c.on_new_edge),
            (&None, crate::edges::OnNewEdge::Alert)
        );
        let c = load(&["--policy-dir=/p", "--ca-dir=/ca"]).unwrap();
        assert_eq!(
            c,
            ControlConfig {
                policy_dir: "/p".into(),
                ca_dir: Some("/ca".into()),
                ..ControlConfig::default()
            }
        );
    }

    #[test]
    fn edge_store_settings_from_the_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let config = write(
            dir.path(),
            "policy_dir: /p\nca_dir: /ca\nnew_edge_learning: 0s\non_new_edge: deny\n\
             new_edge_webhook: http://127.0.0.1:9000/hook\n",
        );
        let c = load(&[&config, "--decision-queue=64", "--decision-retention=1h"]).unwrap();
        assert_eq!(c.new_edge_learning.to_string(), "0s");
        assert_eq!(c.on_new_edge, crate::edges::OnNewEdge::Deny);
        assert_eq!(
            c.new_edge_webhook.map(|u| u.to_string()).as_deref(),
            Some("http://127.0.0.1:9000/hook")
        );
        assert_eq!(
            (c.decision_queue, c.decision_retention.to_string()),
            (64, "1h".into())
        );
        let e = load(&["--policy-dir=/p", "--ca-dir=/ca", "--decision-queue=0"]).unwrap_err();
        assert!(e.contains("decision_queue: must be at least 1"), "{e}");
        let e = load(&[
            "--policy-dir=/p",
            "--ca-dir=/ca",
            "--new-edge-webhook=ftp://x/",
        ])
        .unwrap_err();
        assert!(e.contains("use an http:// or https:// URL"), "{e}");
        let e = load(&["--policy-dir=/p", "--ca-dir=/ca", "--on-new-edge=revoke"]).unwrap_err();
        assert!(e.contains("revoke"), "{e}");
    }

    #[test]
    fn file_then_flags_the_flag_wins() {
        let dir = tempfile::tempdir().unwrap();
        let config = write(
            dir.path(),
            "policy_dir: /etc/policies\nca_dir: /ca\ntrust_domain: example.org\n\
             listen: 0.0.0.0:9012\nsvid_ttl: 10m\ndecisions_keep: 2\n",
        );
        let c = load(&[&config]).unwrap();
        assert_eq!(c.policy_dir, Path::new("/etc/policies"));
        assert_eq!(c.listen, "0.0.0.0:9012".parse().unwrap());
        assert_eq!(
            c.trust_domain.as_ref().map(|t| t.as_str()),
            Some("example.org")
        );
        assert_eq!(
            (c.svid_ttl.to_string(), c.decisions_keep),
            ("10m".into(), 2)
        );
        assert_eq!(c.node_svid_ttl.to_string(), "24h", "unset: the default");
        let c = load(&[
            &config,
            "--listen=0.0.0.0:9013",
            "--svid-ttl=20m",
            "--decisions-keep=7",
        ])
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:9013".parse().unwrap());
        assert_eq!(
            (c.svid_ttl.to_string(), c.decisions_keep),
            ("20m".into(), 7)
        );
        assert_eq!(
            c.policy_dir,
            Path::new("/etc/policies"),
            "kept from the file"
        );
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let config = write(dir.path(), "policy_dir: /p\nca_dri: /ca\n");
        let e = load(&[&config]).unwrap_err();
        assert!(
            e.contains("control.yaml: ") && e.contains("unknown field `ca_dri`"),
            "{e}"
        );
        let config = write(dir.path(), "listen: everywhere\n");
        let e = load(&[&config]).unwrap_err();
        assert!(e.contains("control.yaml: listen: "), "{e}");
        let config = write(dir.path(), "trust_domain: Example.Org\n");
        let e = load(&[&config]).unwrap_err();
        assert!(e.contains("control.yaml: trust_domain: "), "{e}");
        let config = write(dir.path(), "policy_dir: /p\nca_dir: /ca\nca_ttl: 1h\n");
        let e = load(&[&config]).unwrap_err();
        assert!(
            e.contains("control.yaml (with flags/environment): ca_ttl: must be at least twice"),
            "{e}"
        );
    }

    #[test]
    fn validation_names_the_setting() {
        let e = load(&["--ca-dir=/ca"]).unwrap_err();
        assert!(
            e.starts_with("flags/environment: policy_dir: required"),
            "{e}"
        );
        let e = load(&["--policy-dir=/p"]).unwrap_err();
        assert!(
            e.starts_with("flags/environment: ca_dir: give either"),
            "{e}"
        );
        let e = load(&["--policy-dir=/p", "--ca-dir=/ca", "--cert=/c"]).unwrap_err();
        assert!(
            e.starts_with("flags/environment: cert: exclusive with ca_dir"),
            "{e}"
        );
        let e = load(&["--policy-dir=/p", "--cert=/c", "--key=/k"]).unwrap_err();
        assert!(
            e.starts_with("flags/environment: bundle: required with cert"),
            "{e}"
        );
        let e = load(&[
            "--policy-dir=/p",
            "--cert=/c",
            "--key=/k",
            "--bundle=/b",
            "--nodes=/n",
        ])
        .unwrap_err();
        assert!(
            e.starts_with("flags/environment: nodes: needs ca_dir"),
            "{e}"
        );
        let e = load(&[
            "--policy-dir=/p",
            "--ca-dir=/ca",
            "--admin-listen=0.0.0.0:15012",
        ])
        .unwrap_err();
        assert!(e.starts_with("flags/environment: admin_listen: "), "{e}");
    }

    #[test]
    fn the_workload_api_is_a_third_identity_source_exclusive_with_the_others() {
        let c = load(&[
            "--policy-dir=/p",
            "--workload-api=unix:///run/agent.sock",
            "--svid-hint=control",
            "--identity-wait=5s",
        ])
        .unwrap();
        assert_eq!(
            c.workload_api.as_ref().map(ToString::to_string).as_deref(),
            Some("unix:///run/agent.sock")
        );
        assert_eq!(c.svid_hint.as_deref(), Some("control"));
        assert_eq!(c.identity_wait.to_string(), "5s");
        assert_eq!(ControlConfig::default().identity_wait.to_string(), "30s");

        let e = load(&[
            "--policy-dir=/p",
            "--workload-api=unix:///a",
            "--ca-dir=/ca",
        ])
        .unwrap_err();
        assert!(
            e.starts_with("flags/environment: workload_api: exclusive with ca_dir"),
            "{e}"
        );
        let e = load(&["--policy-dir=/p", "--workload-api=unix:///a", "--key=/k"]).unwrap_err();
        assert!(
            e.starts_with("flags/environment: key: exclusive with workload_api"),
            "{e}"
        );
        let e = load(&["--policy-dir=/p", "--ca-dir=/ca", "--svid-hint=x"]).unwrap_err();
        assert!(
            e.starts_with("flags/environment: svid_hint: needs workload_api"),
            "{e}"
        );
        let e = load(&[
            "--policy-dir=/p",
            "--workload-api=unix:///a",
            "--identity-wait=0s",
        ])
        .unwrap_err();
        assert!(
            e.starts_with("flags/environment: identity_wait: must be greater than zero"),
            "{e}"
        );
        let e = load(&["--policy-dir=/p", "--workload-api=tcp://nowhere"]).unwrap_err();
        assert!(e.contains("--workload-api"), "{e}");
        let e = load(&["--policy-dir=/p"]).unwrap_err();
        assert!(
            e.contains("workload_api"),
            "the missing source lists it: {e}"
        );

        // SPIFFE_ENDPOINT_SOCKET (the standard variable) is the fallback when no source is
        // given, and ignored beside ca_dir or PEM files.
        let c = load(&[
            "--policy-dir=/p",
            "--spiffe-endpoint-socket=unix:///std.sock",
        ])
        .unwrap();
        assert_eq!(
            c.workload_api.as_ref().map(ToString::to_string).as_deref(),
            Some("unix:///std.sock")
        );
        let c = load(&[
            "--policy-dir=/p",
            "--ca-dir=/ca",
            "--spiffe-endpoint-socket=unix:///std.sock",
        ])
        .unwrap();
        assert_eq!(c.workload_api, None);
        let c = load(&[
            "--policy-dir=/p",
            "--workload-api=unix:///mine.sock",
            "--spiffe-endpoint-socket=unix:///std.sock",
        ])
        .unwrap();
        assert_eq!(
            c.workload_api.as_ref().map(ToString::to_string).as_deref(),
            Some("unix:///mine.sock")
        );
    }
}
