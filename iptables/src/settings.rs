//! What to capture: one typed, serde-friendly struct with a documented default on every field.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use svidcar_api::well_known;

use crate::lists::{CidrSet, PortSet};

/// Interception settings: the configuration of `svidcar init` (YAML file via `--config`, each
/// field also a flag and a `SVIDCAR_*` variable, see [`crate::InitArgs`]). `Settings::default()`
/// is what `svidcar init` does with no flags, and it matches the well-known Istio numbers
/// operators already know ([`svidcar_api::well_known`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// UID the proxy runs as; its own connections are never captured (loop prevention).
    /// Default `1337`.
    pub proxy_uid: u32,
    /// GID the proxy runs as; treated exactly like `proxy_uid`. Default `1337`.
    pub proxy_gid: u32,
    /// Port the proxy accepts redirected inbound connections on. Default `15006`.
    pub inbound_port: u16,
    /// Port the proxy accepts redirected outbound connections on. Default `15001`.
    pub outbound_port: u16,
    /// Admin ports (health, metrics) that inbound capture never touches, in addition to
    /// `inbound_port` and `outbound_port` themselves. Default `[15020, 15021, 15090]`.
    pub admin_ports: Vec<u16>,
    /// The proxy's tunnel port (pooled mTLS HTTP/2 from peers' sidecars), never captured
    /// inbound: peers connect to it directly. `0`: none. Default `15008`.
    pub tunnel_port: u16,
    /// Inbound destination ports to capture. Default `*` (all); an empty list captures no
    /// inbound traffic.
    pub inbound_ports: PortSet,
    /// Inbound destination ports never captured. Default empty.
    pub inbound_ports_exclude: Vec<u16>,
    /// Outbound destination ports to capture. Default `*` (all); an empty list captures no
    /// outbound traffic.
    pub outbound_ports: PortSet,
    /// Outbound destination ports never captured. Default empty.
    pub outbound_ports_exclude: Vec<u16>,
    /// Outbound destination networks to capture (both families in one list; each family's
    /// rules use its own entries). Default `*` (all).
    pub outbound_cidrs: CidrSet,
    /// Outbound destination networks never captured. Default empty.
    pub outbound_cidrs_exclude: Vec<IpNet>,
    /// Capture outbound TCP to port 53. Default `false`: DNS over TCP goes straight to the
    /// resolver, as it would without a mesh.
    pub capture_dns: bool,
    /// Also install the IPv6 rules (ip6tables). Default `false`.
    pub ipv6: bool,
    /// Which iptables backend to use. Default `auto` (detected from what the network namespace
    /// already uses).
    pub backend: BackendChoice,
}

/// The iptables backend to use, or `auto` to detect it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// Use whichever backend already holds rules in the namespace (nft if neither or both).
    #[default]
    Auto,
    /// `iptables-nft-*` (the nf_tables kernel API).
    Nft,
    /// `iptables-legacy-*` (the x_tables kernel API).
    Legacy,
}

/// Port of the DNS resolver, left alone unless `capture_dns` is set.
pub(crate) const DNS_PORT: u16 = 53;

/// A setting with a value that cannot work; names the field and says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {reason}")]
pub struct SettingsError {
    /// The field (as spelled in config files; the CLI flag is the same with dashes).
    pub field: &'static str,
    /// What is wrong with it and what would work.
    pub reason: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            proxy_uid: well_known::PROXY_UID,
            proxy_gid: well_known::PROXY_GID,
            inbound_port: well_known::INBOUND_PORT,
            outbound_port: well_known::OUTBOUND_PORT,
            admin_ports: well_known::ADMIN_PORTS.to_vec(),
            tunnel_port: well_known::TUNNEL_PORT,
            inbound_ports: PortSet::All,
            inbound_ports_exclude: Vec::new(),
            outbound_ports: PortSet::All,
            outbound_ports_exclude: Vec::new(),
            outbound_cidrs: CidrSet::All,
            outbound_cidrs_exclude: Vec::new(),
            capture_dns: false,
            ipv6: false,
            backend: BackendChoice::Auto,
        }
    }
}

impl Settings {
    /// Checks the settings before anything is planned or touched.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let err = |field, reason: &str| {
            Err(SettingsError {
                field,
                reason: reason.to_string(),
            })
        };
        if self.inbound_port == 0 {
            return err(
                "inbound_port",
                "port 0 cannot be redirected to; use 1-65535",
            );
        }
        if self.outbound_port == 0 {
            return err(
                "outbound_port",
                "port 0 cannot be redirected to; use 1-65535",
            );
        }
        if self.inbound_port == self.outbound_port {
            return err(
                "outbound_port",
                "must differ from inbound_port: the proxy tells directions apart by port",
            );
        }
        let lists: [(&'static str, &[u16]); 3] = [
            ("admin_ports", &self.admin_ports),
            ("inbound_ports_exclude", &self.inbound_ports_exclude),
            ("outbound_ports_exclude", &self.outbound_ports_exclude),
        ];
        let includes: [(&'static str, &PortSet); 2] = [
            ("inbound_ports", &self.inbound_ports),
            ("outbound_ports", &self.outbound_ports),
        ];
        let included = includes.iter().filter_map(|(field, set)| match set {
            PortSet::All => None,
            PortSet::Only(ports) => Some((*field, ports.as_slice())),
        });
        for (field, ports) in lists.into_iter().chain(included) {
            if ports.contains(&0) {
                return err(field, "port 0 is not a port; use 1-65535");
            }
        }
        Ok(())
    }

    /// Ports inbound capture never touches: exclusions first, then admin ports, then the
    /// proxy's own two ports, each once, in that order.
    pub(crate) fn inbound_never_captured(&self) -> Vec<u16> {
        let mut ports = Vec::new();
        let all = self
            .inbound_ports_exclude
            .iter()
            .chain(&self.admin_ports)
            .chain([&self.inbound_port, &self.outbound_port, &self.tunnel_port]);
        for &p in all {
            if p != 0 && !ports.contains(&p) {
                ports.push(p);
            }
        }
        ports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let s = Settings::default();
        assert_eq!(s.validate(), Ok(()));
        assert_eq!((s.proxy_uid, s.proxy_gid), (1337, 1337));
        assert_eq!((s.inbound_port, s.outbound_port), (15006, 15001));
        assert_eq!(
            s.inbound_never_captured(),
            vec![15020, 15021, 15090, 15006, 15001, 15008]
        );
    }

    #[test]
    fn invalid_values_name_the_field() {
        let s = Settings {
            outbound_port: 15006,
            ..Settings::default()
        };
        assert_eq!(s.validate().unwrap_err().field, "outbound_port");
        let s = Settings {
            outbound_ports: PortSet::Only(vec![80, 0]),
            ..Settings::default()
        };
        let e = s.validate().unwrap_err();
        assert_eq!(e.field, "outbound_ports");
        assert!(e.to_string().starts_with("`outbound_ports`: "), "{e}");
    }

    #[test]
    fn exclusions_come_first_and_are_not_repeated() {
        let s = Settings {
            inbound_ports_exclude: vec![15021, 22],
            ..Settings::default()
        };
        assert_eq!(
            s.inbound_never_captured(),
            vec![15021, 22, 15020, 15090, 15006, 15001, 15008]
        );
    }
}
