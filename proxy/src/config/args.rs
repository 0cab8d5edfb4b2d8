//! Flags and `SVIDCAR_*` environment variables for every setting of [`ProxyConfig`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use svidcar_identity::WorkloadEndpoint;

use super::values::{Destination, Fallback, Mode, PortMtls, Route};
use super::ProxyConfig;
use super::{Dur, MtlsMode};

/// Overrides on top of the config file; every field maps to one setting.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ProxyArgs {
    /// YAML configuration file.
    #[arg(long, env = "SVIDCAR_CONFIG")]
    pub config: Option<PathBuf>,
    /// identity.source: files | workload_api [default: workload_api when a Workload API address
    /// is set and no PEM file is, else files].
    #[arg(long, env = "SVIDCAR_IDENTITY_SOURCE")]
    pub identity_source: Option<super::IdentitySource>,
    /// identity.workload_api: Workload API address, unix:///path or tcp://IP:PORT.
    #[arg(long = "workload-api", env = "SVIDCAR_WORKLOAD_API")]
    pub workload_api: Option<WorkloadEndpoint>,
    /// identity.svid_hint: use the Workload API's SVID with this hint, not the default one.
    #[arg(long, env = "SVIDCAR_SVID_HINT")]
    pub svid_hint: Option<String>,
    /// identity.workload_api when neither --workload-api nor SVIDCAR_WORKLOAD_API is given
    /// (the SPIFFE standard variable).
    #[arg(
        long = "spiffe-endpoint-socket",
        env = "SPIFFE_ENDPOINT_SOCKET",
        hide = true
    )]
    pub spiffe_endpoint_socket: Option<WorkloadEndpoint>,
    /// identity.cert: X.509-SVID chain (PEM).
    #[arg(long, env = "SVIDCAR_CERT")]
    pub cert: Option<PathBuf>,
    /// identity.key: SVID private key (PEM).
    #[arg(long, env = "SVIDCAR_KEY")]
    pub key: Option<PathBuf>,
    /// identity.bundle: trust bundle of our trust domain (PEM).
    #[arg(long, env = "SVIDCAR_BUNDLE")]
    pub bundle: Option<PathBuf>,
    /// identity.reload_interval [default: 1s].
    #[arg(long, env = "SVIDCAR_RELOAD_INTERVAL")]
    pub reload_interval: Option<Dur>,

    /// outbound.enabled [default: true].
    #[arg(long, env = "SVIDCAR_OUTBOUND_ENABLED")]
    pub outbound_enabled: Option<bool>,
    /// outbound.mode [default: transparent].
    #[arg(long, env = "SVIDCAR_OUTBOUND_MODE")]
    pub outbound_mode: Option<Mode>,
    /// outbound.listen [default: 127.0.0.1:15001].
    #[arg(long, env = "SVIDCAR_OUTBOUND_LISTEN")]
    pub outbound_listen: Option<SocketAddr>,
    /// outbound.routes: LISTEN=UPSTREAM,SPIFFE_ID (repeat, or `;`-separated in the env var).
    #[arg(long = "route", env = "SVIDCAR_ROUTES", value_delimiter = ';')]
    pub routes: Vec<Route>,
    /// outbound.destinations: CIDR[:PORT]=SPIFFE_ID|passthrough (repeat, or `;`-separated).
    #[arg(
        long = "destination",
        env = "SVIDCAR_DESTINATIONS",
        value_delimiter = ';'
    )]
    pub destinations: Vec<Destination>,
    /// outbound.fallback [default: passthrough].
    #[arg(long, env = "SVIDCAR_OUTBOUND_FALLBACK")]
    pub outbound_fallback: Option<Fallback>,

    /// inbound.enabled [default: true].
    #[arg(long, env = "SVIDCAR_INBOUND_ENABLED")]
    pub inbound_enabled: Option<bool>,
    /// inbound.mode [default: transparent].
    #[arg(long, env = "SVIDCAR_INBOUND_MODE")]
    pub inbound_mode: Option<Mode>,
    /// inbound.listen [default: 0.0.0.0:15006].
    #[arg(long, env = "SVIDCAR_INBOUND_LISTEN")]
    pub inbound_listen: Option<SocketAddr>,
    /// inbound.app: the app's address in explicit mode.
    #[arg(long, env = "SVIDCAR_INBOUND_APP")]
    pub inbound_app: Option<SocketAddr>,
    /// inbound.app_host [default: 127.0.0.1].
    #[arg(long, env = "SVIDCAR_INBOUND_APP_HOST")]
    pub inbound_app_host: Option<IpAddr>,
    /// inbound.mtls: mode of ports without their own [default: strict].
    #[arg(long, env = "SVIDCAR_MTLS", value_parser = one_of::<MtlsMode, 2>(["strict", "permissive"]))]
    pub mtls: Option<MtlsMode>,
    /// inbound.port_mtls: PORT=strict|permissive (repeat, or `;`-separated).
    #[arg(long = "port-mtls", env = "SVIDCAR_PORT_MTLS", value_delimiter = ';')]
    pub port_mtls: Vec<PortMtls>,
    /// inbound.detect_timeout [default: 1s].
    #[arg(long, env = "SVIDCAR_DETECT_TIMEOUT")]
    pub detect_timeout: Option<Dur>,

    /// limits.connect_timeout [default: 5s].
    #[arg(long, env = "SVIDCAR_CONNECT_TIMEOUT")]
    pub connect_timeout: Option<Dur>,
    /// limits.handshake_timeout [default: 10s].
    #[arg(long, env = "SVIDCAR_HANDSHAKE_TIMEOUT")]
    pub handshake_timeout: Option<Dur>,
    /// limits.idle_timeout [default: 1h].
    #[arg(long, env = "SVIDCAR_IDLE_TIMEOUT")]
    pub idle_timeout: Option<Dur>,
    /// limits.max_connections [default: 10000].
    #[arg(long, env = "SVIDCAR_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// admin.enabled [default: true].
    #[arg(long, env = "SVIDCAR_ADMIN_ENABLED")]
    pub admin_enabled: Option<bool>,
    /// admin.listen [default: 0.0.0.0:15020].
    #[arg(long, env = "SVIDCAR_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// admin.max_identity_labels [default: 1000].
    #[arg(long, env = "SVIDCAR_MAX_IDENTITY_LABELS")]
    pub max_identity_labels: Option<usize>,
    /// admin.label_idle [default: 10m].
    #[arg(long, env = "SVIDCAR_LABEL_IDLE")]
    pub label_idle: Option<Dur>,
    /// admin.app_probes: the app's kubelet probes, as JSON keyed by admin path (written by
    /// `svidcar inject`; see docs/injection.md) [default: none].
    #[arg(long, env = "SVIDCAR_APP_PROBES", value_parser = parse_app_probes)]
    pub app_probes: Option<svidcar_api::app_probe::AppProbes>,

    /// policy.dir: directory of policy YAML files, watched for changes.
    #[arg(long, env = "SVIDCAR_POLICY_DIR")]
    pub policy_dir: Option<PathBuf>,
    /// policy.control_plane: gRPC address of `svidcar control`, HOST:PORT (IP or DNS name).
    #[arg(long, env = "SVIDCAR_CONTROL_PLANE")]
    pub control_plane: Option<svidcar_api::channel::HostPort>,
    /// policy.control_plane_id: SPIFFE ID the control plane must present.
    #[arg(long, env = "SVIDCAR_CONTROL_PLANE_ID")]
    pub control_plane_id: Option<svidcar_identity::SpiffeId>,
    /// policy.node: name reported to the control plane.
    #[arg(long, env = "SVIDCAR_NODE")]
    pub node: Option<String>,
    /// policy.reload_interval [default: 1s].
    #[arg(long, env = "SVIDCAR_POLICY_RELOAD_INTERVAL")]
    pub policy_reload_interval: Option<Dur>,
    /// policy.default: when no ALLOW policy selects us [default: allow-all].
    #[arg(
        long,
        env = "SVIDCAR_DEFAULT_POLICY",
        value_parser = one_of::<svidcar_policy::DefaultPolicy, 3>(["allow-all", "all-authenticated", "deny"])
    )]
    pub default_policy: Option<svidcar_policy::DefaultPolicy>,
    /// policy.startup: before the first policy arrives [default: deny].
    #[arg(long, env = "SVIDCAR_POLICY_STARTUP")]
    pub policy_startup: Option<super::StartupPolicy>,
    /// http.enabled: detect HTTP on inbound connections and handle it per request [default: true].
    #[arg(long, env = "SVIDCAR_HTTP_ENABLED")]
    pub http_enabled: Option<bool>,
    /// http.opaque_ports: app ports never inspected for HTTP (replaces the default list
    /// 25,587,3306,4444,5432,6379,9300,11211; comma- or `;`-separated).
    #[arg(long, env = "SVIDCAR_OPAQUE_PORTS", value_delimiter = ',')]
    pub opaque_ports: Option<Vec<u16>>,
    /// http.port_protocol: PORT=http|http2|opaque (repeat, or `;`-separated).
    #[arg(
        long = "port-protocol",
        env = "SVIDCAR_PORT_PROTOCOL",
        value_delimiter = ';'
    )]
    pub port_protocol: Vec<super::PortProtocolArg>,
    /// http.client_id_header: header carrying the caller's SPIFFE ID to the app [default: x-svidcar-client-id].
    #[arg(long, env = "SVIDCAR_CLIENT_ID_HEADER")]
    pub client_id_header: Option<String>,
    /// http.xfcc: also set x-forwarded-client-cert: URI=<id> [default: false].
    #[arg(long, env = "SVIDCAR_XFCC")]
    pub xfcc: Option<bool>,

    /// tunnel.enabled: pooled HTTP/2 tunnels between sidecars, served and used [default: true].
    #[arg(long, env = "SVIDCAR_TUNNEL_ENABLED")]
    pub tunnel_enabled: Option<bool>,
    /// tunnel.listen: the inbound tunnel listener [default: 0.0.0.0:15008 in transparent mode].
    #[arg(long, env = "SVIDCAR_TUNNEL_LISTEN")]
    pub tunnel_listen: Option<SocketAddr>,
    /// tunnel.port: the port of mesh destinations' tunnel listeners [default: 15008].
    #[arg(long, env = "SVIDCAR_TUNNEL_PORT")]
    pub tunnel_port: Option<u16>,
    /// tunnel.direct: CIDR[:PORT] reached with one mTLS connection per app connection
    /// (repeat, or `;`-separated).
    #[arg(
        long = "tunnel-direct",
        env = "SVIDCAR_TUNNEL_DIRECT",
        value_delimiter = ';'
    )]
    pub tunnel_direct: Vec<super::NetPort>,

    /// limits.drain_grace [default: 20s].
    #[arg(long, env = "SVIDCAR_DRAIN_GRACE")]
    pub drain_grace: Option<Dur>,
    /// limits.listen_backlog: connections queued per listener before accept [default: 4096].
    #[arg(long, env = "SVIDCAR_LISTEN_BACKLOG")]
    pub listen_backlog: Option<u32>,
    /// runtime.worker_threads: threads of the async runtime, 0 = one per CPU [default: 2].
    #[arg(long, env = "SVIDCAR_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
}

fn set<T: Clone>(slot: &mut T, value: &Option<T>) {
    if let Some(v) = value {
        *slot = v.clone();
    }
}

impl ProxyArgs {
    /// Writes every given flag over `c`. Lists given on the command line replace the file's.
    pub fn apply(&self, c: &mut ProxyConfig) {
        set(&mut c.identity.source, &self.identity_source.map(Some));
        if let Some(e) = self
            .workload_api
            .as_ref()
            .or(self.spiffe_endpoint_socket.as_ref())
        {
            c.identity.workload_api = Some(e.clone());
        }
        if self.svid_hint.is_some() {
            c.identity.svid_hint.clone_from(&self.svid_hint);
        }
        if self.cert.is_some() {
            c.identity.cert.clone_from(&self.cert);
        }
        if self.key.is_some() {
            c.identity.key.clone_from(&self.key);
        }
        if self.bundle.is_some() {
            c.identity.bundle.clone_from(&self.bundle);
        }
        set(&mut c.identity.reload_interval, &self.reload_interval);
        set(&mut c.outbound.enabled, &self.outbound_enabled);
        set(&mut c.outbound.mode, &self.outbound_mode);
        set(&mut c.outbound.listen, &self.outbound_listen);
        if !self.routes.is_empty() {
            c.outbound.routes.clone_from(&self.routes);
        }
        if !self.destinations.is_empty() {
            c.outbound.destinations.clone_from(&self.destinations);
        }
        set(&mut c.outbound.fallback, &self.outbound_fallback);
        set(&mut c.inbound.enabled, &self.inbound_enabled);
        set(&mut c.inbound.mode, &self.inbound_mode);
        set(&mut c.inbound.listen, &self.inbound_listen);
        if self.inbound_app.is_some() {
            c.inbound.app = self.inbound_app;
        }
        set(&mut c.inbound.app_host, &self.inbound_app_host);
        set(&mut c.inbound.mtls, &self.mtls);
        for PortMtls(port, mode) in &self.port_mtls {
            c.inbound.port_mtls.insert(*port, *mode);
        }
        set(&mut c.inbound.detect_timeout, &self.detect_timeout);
        set(&mut c.limits.connect_timeout, &self.connect_timeout);
        set(&mut c.limits.handshake_timeout, &self.handshake_timeout);
        set(&mut c.limits.idle_timeout, &self.idle_timeout);
        set(&mut c.limits.max_connections, &self.max_connections);
        set(&mut c.limits.drain_grace, &self.drain_grace);
        set(&mut c.limits.listen_backlog, &self.listen_backlog);
        set(&mut c.runtime.worker_threads, &self.worker_threads);
        if self.policy_dir.is_some() {
            c.policy.dir.clone_from(&self.policy_dir);
        }
        if self.control_plane.is_some() {
            c.policy.control_plane = self.control_plane.clone();
        }
        if self.control_plane_id.is_some() {
            c.policy.control_plane_id.clone_from(&self.control_plane_id);
        }
        if self.node.is_some() {
            c.policy.node.clone_from(&self.node);
        }
        set(&mut c.policy.reload_interval, &self.policy_reload_interval);
        set(&mut c.policy.default, &self.default_policy);
        set(&mut c.policy.startup, &self.policy_startup);
        set(&mut c.admin.enabled, &self.admin_enabled);
        set(&mut c.admin.listen, &self.admin_listen);
        set(&mut c.admin.max_identity_labels, &self.max_identity_labels);
        set(&mut c.admin.label_idle, &self.label_idle);
        set(&mut c.admin.app_probes, &self.app_probes);
        set(&mut c.http.enabled, &self.http_enabled);
        if let Some(ports) = &self.opaque_ports {
            c.http.opaque_ports = ports.iter().copied().collect();
        }
        for super::PortProtocolArg(port, proto) in &self.port_protocol {
            c.http.port_protocol.insert(*port, *proto);
        }
        set(&mut c.http.client_id_header, &self.client_id_header);
        set(&mut c.http.xfcc, &self.xfcc);
        set(&mut c.tunnel.enabled, &self.tunnel_enabled);
        if self.tunnel_listen.is_some() {
            c.tunnel.listen = self.tunnel_listen;
        }
        set(&mut c.tunnel.port, &self.tunnel_port);
        if !self.tunnel_direct.is_empty() {
            c.tunnel.direct.clone_from(&self.tunnel_direct);
        }
    }
}

fn parse_app_probes(s: &str) -> Result<svidcar_api::app_probe::AppProbes, String> {
    svidcar_api::app_probe::parse(s).map_err(|e| format!("not a JSON map of app probes: {e}"))
}

/// A parser accepting exactly `names` (listed in `--help` and in clap's error) into `T`.
fn one_of<T, const N: usize>(
    names: [&'static str; N],
) -> impl clap::builder::TypedValueParser<Value = T>
where
    T: std::str::FromStr<Err = String> + Clone + Send + Sync + 'static,
{
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(names).try_map(|s| s.parse::<T>())
}
