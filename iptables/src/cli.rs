//! The flags of `svidcar init`, each with a `SVIDCAR_*` environment variable.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

use clap::builder::BoolishValueParser;
use clap::ArgAction;
use ipnet::IpNet;

use crate::family::Family;
use crate::lists::{parse_cidr, parse_port, CidrSet, PortSet};
use crate::settings::{BackendChoice, Settings};
use crate::verify::default_target;

/// Flags of `svidcar init`. Every setting also reads a `SVIDCAR_*` environment variable (the
/// flag wins); lists are comma-separated. Defaults are those of [`Settings`].
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// UID the proxy runs as; its traffic is never captured.
    #[arg(long, env = "SVIDCAR_PROXY_UID", default_value_t = 1337)]
    pub proxy_uid: u32,
    /// GID the proxy runs as; its traffic is never captured.
    #[arg(long, env = "SVIDCAR_PROXY_GID", default_value_t = 1337)]
    pub proxy_gid: u32,
    /// Port the proxy accepts redirected inbound connections on.
    #[arg(long, env = "SVIDCAR_INBOUND_PORT", default_value_t = 15006)]
    pub inbound_port: u16,
    /// Port the proxy accepts redirected outbound connections on.
    #[arg(long, env = "SVIDCAR_OUTBOUND_PORT", default_value_t = 15001)]
    pub outbound_port: u16,
    /// Admin ports never captured inbound (besides the two proxy ports).
    #[arg(long, env = "SVIDCAR_ADMIN_PORTS", value_delimiter = ',',
          value_parser = parse_port, default_value = "15020,15021,15090")]
    pub admin_ports: Vec<u16>,
    /// Inbound ports to capture: `*` or a list (empty: none).
    #[arg(long, env = "SVIDCAR_INBOUND_PORTS", default_value = "*")]
    pub inbound_ports: PortSet,
    /// Inbound ports never captured.
    #[arg(long, env = "SVIDCAR_INBOUND_PORTS_EXCLUDE", value_delimiter = ',', value_parser = parse_port)]
    pub inbound_ports_exclude: Vec<u16>,
    /// Outbound ports to capture: `*` or a list (empty: none).
    #[arg(long, env = "SVIDCAR_OUTBOUND_PORTS", default_value = "*")]
    pub outbound_ports: PortSet,
    /// Outbound ports never captured.
    #[arg(long, env = "SVIDCAR_OUTBOUND_PORTS_EXCLUDE", value_delimiter = ',', value_parser = parse_port)]
    pub outbound_ports_exclude: Vec<u16>,
    /// Outbound destinations to capture: `*` or CIDRs of either family.
    #[arg(long, env = "SVIDCAR_OUTBOUND_CIDRS", default_value = "*")]
    pub outbound_cidrs: CidrSet,
    /// Outbound destinations never captured (CIDRs of either family).
    #[arg(long, env = "SVIDCAR_OUTBOUND_CIDRS_EXCLUDE", value_delimiter = ',', value_parser = parse_cidr)]
    pub outbound_cidrs_exclude: Vec<IpNet>,
    /// Capture outbound TCP to port 53 too.
    #[arg(long, env = "SVIDCAR_CAPTURE_DNS", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub capture_dns: bool,
    /// Also install the IPv6 rules (skipped with a note if ip6tables is missing).
    #[arg(long, env = "SVIDCAR_IPV6", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub ipv6: bool,
    /// iptables backend.
    #[arg(long, env = "SVIDCAR_BACKEND", value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Print the plan without changing anything.
    #[arg(long, env = "SVIDCAR_DRY_RUN", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub dry_run: bool,
    /// Remove our rules and chains instead of installing them.
    #[arg(long, env = "SVIDCAR_CLEANUP", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub cleanup: bool,
    /// Skip checking that redirection works after applying.
    #[arg(long, env = "SVIDCAR_NO_VERIFY", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub no_verify: bool,
    /// Address the IPv4 check dials; must be routable and captured [default: 192.0.2.1 on
    /// port 9, or on the first captured port if 9 is not].
    #[arg(long, env = "SVIDCAR_VERIFY_TARGET")]
    pub verify_target: Option<SocketAddrV4>,
    /// Address the IPv6 check dials; must be routable and captured [default: 2001:db8::1 on
    /// port 9, or on the first captured port if 9 is not].
    #[arg(long, env = "SVIDCAR_VERIFY_TARGET_V6")]
    pub verify_target_v6: Option<SocketAddrV6>,
}

impl InitArgs {
    /// The interception settings these flags describe (not yet validated).
    pub fn settings(&self) -> Settings {
        Settings {
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid,
            inbound_port: self.inbound_port,
            outbound_port: self.outbound_port,
            admin_ports: self.admin_ports.clone(),
            inbound_ports: self.inbound_ports.clone(),
            inbound_ports_exclude: self.inbound_ports_exclude.clone(),
            outbound_ports: self.outbound_ports.clone(),
            outbound_ports_exclude: self.outbound_ports_exclude.clone(),
            outbound_cidrs: self.outbound_cidrs.clone(),
            outbound_cidrs_exclude: self.outbound_cidrs_exclude.clone(),
            capture_dns: self.capture_dns,
            ipv6: self.ipv6,
            backend: self.backend,
        }
    }

    /// The address the verification probe dials for `family`.
    pub(crate) fn verify_target(&self, family: Family) -> SocketAddr {
        let chosen = match family {
            Family::V4 => self.verify_target.map(SocketAddr::V4),
            Family::V6 => self.verify_target_v6.map(SocketAddr::V6),
        };
        chosen.unwrap_or_else(|| default_target(&self.settings(), family))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        init: InitArgs,
    }

    fn args(flags: &[&str]) -> InitArgs {
        let argv = std::iter::once("svidcar-init").chain(flags.iter().copied());
        Cli::try_parse_from(argv).unwrap().init
    }

    #[test]
    fn defaults_match_settings_defaults() {
        assert_eq!(args(&[]).settings(), Settings::default());
        let a = args(&[]);
        assert_eq!(
            a.verify_target(Family::V4),
            default_target(&a.settings(), Family::V4)
        );
        let a = args(&["--verify-target=192.0.2.9:80", "--outbound-ports=443"]);
        assert_eq!(a.verify_target(Family::V4), "192.0.2.9:80".parse().unwrap());
        assert_eq!(
            a.verify_target(Family::V6),
            "[2001:db8::1]:443".parse().unwrap()
        );
    }

    #[test]
    fn flags_parse_into_settings() {
        let a = args(&[
            "--proxy-uid=2102",
            "--inbound-ports-exclude=22,2222",
            "--outbound-ports=80,443",
            "--outbound-cidrs=10.0.0.0/8,fd00::/8",
            "--outbound-cidrs-exclude=10.96.0.0/12",
            "--admin-ports=9901",
            "--capture-dns",
            "--ipv6",
            "--backend=legacy",
            "--dry-run",
        ]);
        let s = a.settings();
        assert_eq!(s.proxy_uid, 2102);
        assert_eq!(s.inbound_ports_exclude, [22, 2222]);
        assert_eq!(s.outbound_ports, PortSet::Only(vec![80, 443]));
        assert_eq!(s.outbound_cidrs.to_string(), "10.0.0.0/8,fd00::/8");
        assert_eq!(
            s.outbound_cidrs_exclude,
            ["10.96.0.0/12".parse::<IpNet>().unwrap()]
        );
        assert_eq!(s.admin_ports, [9901]);
        assert!(s.capture_dns && s.ipv6 && a.dry_run && !a.cleanup);
        assert_eq!(s.backend, BackendChoice::Legacy);
        let bad = Cli::try_parse_from(["x", "--inbound-ports-exclude=22,ssh"]).unwrap_err();
        assert!(bad.to_string().contains("`ssh` is not a port"), "{bad}");
    }
}
