//! The flags of `svidcar init`, each with a `SVIDCAR_*` environment variable, and `--config`
//! (`SVIDCAR_INIT_CONFIG`): defaults ([`Settings`]), then the YAML file, then these flags (the
//! proxy's pattern).

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::ArgAction;
use ipnet::IpNet;
use svidcar_identity::config_file::{self, set, ConfigError};

use crate::error::InitError;
use crate::family::Family;
use crate::lists::{parse_cidr, parse_port, CidrSet, PortSet};
use crate::settings::{BackendChoice, Settings};
use crate::verify::default_target;

/// Flags of `svidcar init`. Every setting also reads a `SVIDCAR_*` environment variable (the
/// flag wins) and overlays the `--config` file, whose fields are those of [`Settings`] (where
/// the defaults are documented and defined); lists are comma-separated.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// YAML file of settings (the fields of the flags below, with `_` for `-`).
    #[arg(long, env = "SVIDCAR_INIT_CONFIG")]
    pub config: Option<PathBuf>,
    /// proxy_uid: UID the proxy runs as; its traffic is never captured [default: 1337].
    #[arg(long, env = "SVIDCAR_PROXY_UID")]
    pub proxy_uid: Option<u32>,
    /// proxy_gid: GID the proxy runs as; its traffic is never captured [default: 1337].
    #[arg(long, env = "SVIDCAR_PROXY_GID")]
    pub proxy_gid: Option<u32>,
    /// inbound_port: port the proxy accepts redirected inbound connections on
    /// [default: 15006].
    #[arg(long, env = "SVIDCAR_INBOUND_PORT")]
    pub inbound_port: Option<u16>,
    /// outbound_port: port the proxy accepts redirected outbound connections on
    /// [default: 15001].
    #[arg(long, env = "SVIDCAR_OUTBOUND_PORT")]
    pub outbound_port: Option<u16>,
    /// admin_ports: never captured inbound (besides the two proxy ports)
    /// [default: 15020,15021,15090].
    #[arg(long, env = "SVIDCAR_ADMIN_PORTS", value_delimiter = ',', value_parser = parse_port)]
    pub admin_ports: Option<Vec<u16>>,
    /// tunnel_port: the proxy's tunnel port, never captured inbound (0: none)
    /// [default: 15008].
    #[arg(long, env = "SVIDCAR_TUNNEL_PORT")]
    pub tunnel_port: Option<u16>,
    /// inbound_ports: inbound ports to capture, `*` or a list (empty: none) [default: *].
    #[arg(long, env = "SVIDCAR_INBOUND_PORTS")]
    pub inbound_ports: Option<PortSet>,
    /// inbound_ports_exclude: inbound ports never captured.
    #[arg(long, env = "SVIDCAR_INBOUND_PORTS_EXCLUDE", value_delimiter = ',', value_parser = parse_port)]
    pub inbound_ports_exclude: Option<Vec<u16>>,
    /// outbound_ports: outbound ports to capture, `*` or a list (empty: none) [default: *].
    #[arg(long, env = "SVIDCAR_OUTBOUND_PORTS")]
    pub outbound_ports: Option<PortSet>,
    /// outbound_ports_exclude: outbound ports never captured.
    #[arg(long, env = "SVIDCAR_OUTBOUND_PORTS_EXCLUDE", value_delimiter = ',', value_parser = parse_port)]
    pub outbound_ports_exclude: Option<Vec<u16>>,
    /// outbound_cidrs: outbound destinations to capture, `*` or CIDRs of either family
    /// [default: *].
    #[arg(long, env = "SVIDCAR_OUTBOUND_CIDRS")]
    pub outbound_cidrs: Option<CidrSet>,
    /// outbound_cidrs_exclude: outbound destinations never captured (CIDRs of either family).
    #[arg(long, env = "SVIDCAR_OUTBOUND_CIDRS_EXCLUDE", value_delimiter = ',', value_parser = parse_cidr)]
    pub outbound_cidrs_exclude: Option<Vec<IpNet>>,
    /// capture_dns: capture outbound TCP to port 53 too (`--capture-dns=false` to turn off)
    /// [default: false].
    #[arg(long, env = "SVIDCAR_CAPTURE_DNS", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub capture_dns: Option<bool>,
    /// ipv6: also install the IPv6 rules (skipped with a note if ip6tables is missing)
    /// [default: false].
    #[arg(long, env = "SVIDCAR_IPV6", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub ipv6: Option<bool>,
    /// backend: iptables backend; `auto` (detect), whether given or not, leaves the choice of
    /// the `--config` file, if it makes one.
    // Not an `Option`: `auto` is the value when the flag is absent, so existing callers read a
    // plain `BackendChoice`; `auto` then means "not chosen here".
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
    /// Defaults, then the `--config` file (if any), then these flags; validated. Errors name
    /// the setting and, with a file, the file.
    pub fn load(&self) -> Result<Settings, InitError> {
        let path = self.config.as_deref();
        let settings = config_file::load(path, |s| self.apply(s), |_| Ok::<_, (String, _)>(()))?;
        settings.validate().map_err(|e| match path {
            None => InitError::Settings(e),
            Some(_) => InitError::Config(ConfigError::Invalid {
                origin: config_file::origin(path),
                field: e.field.into(),
                message: e.reason,
            }),
        })?;
        Ok(settings)
    }

    /// Writes every given flag over `s`. Lists given on the command line replace the file's.
    pub fn apply(&self, s: &mut Settings) {
        set(&mut s.proxy_uid, &self.proxy_uid);
        set(&mut s.proxy_gid, &self.proxy_gid);
        set(&mut s.inbound_port, &self.inbound_port);
        set(&mut s.outbound_port, &self.outbound_port);
        set(&mut s.admin_ports, &self.admin_ports);
        set(&mut s.tunnel_port, &self.tunnel_port);
        set(&mut s.inbound_ports, &self.inbound_ports);
        set(&mut s.inbound_ports_exclude, &self.inbound_ports_exclude);
        set(&mut s.outbound_ports, &self.outbound_ports);
        set(&mut s.outbound_ports_exclude, &self.outbound_ports_exclude);
        set(&mut s.outbound_cidrs, &self.outbound_cidrs);
        set(&mut s.outbound_cidrs_exclude, &self.outbound_cidrs_exclude);
        set(&mut s.capture_dns, &self.capture_dns);
        set(&mut s.ipv6, &self.ipv6);
        if self.backend != BackendChoice::Auto {
            s.backend = self.backend;
        }
    }

    /// The flags over the defaults, without a `--config` file (not validated): tests' shorthand.
    #[cfg(test)]
    pub(crate) fn settings(&self) -> Settings {
        let mut s = Settings::default();
        self.apply(&mut s);
        s
    }

    /// The address the verification probe dials for `family` under `settings`.
    pub(crate) fn verify_target_in(&self, settings: &Settings, family: Family) -> SocketAddr {
        let chosen = match family {
            Family::V4 => self.verify_target.map(SocketAddr::V4),
            Family::V6 => self.verify_target_v6.map(SocketAddr::V6),
        };
        chosen.unwrap_or_else(|| default_target(settings, family))
    }

    /// [`Self::verify_target_in`] the flags over the defaults: tests' shorthand.
    #[cfg(test)]
    pub(crate) fn verify_target(&self, family: Family) -> SocketAddr {
        self.verify_target_in(&self.settings(), family)
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

    fn yaml(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("init.yaml");
        std::fs::write(&path, text).unwrap();
        let flag = format!("--config={}", path.display());
        (dir, flag)
    }

    #[test]
    fn defaults_are_the_documented_well_known_numbers() {
        let s = args(&[]).load().unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!((s.proxy_uid, s.proxy_gid), (1337, 1337));
        assert_eq!((s.inbound_port, s.outbound_port), (15006, 15001));
        assert_eq!(s.admin_ports, [15020, 15021, 15090]);
        assert_eq!(
            (s.inbound_ports, s.outbound_ports),
            (PortSet::All, PortSet::All)
        );
        assert_eq!(s.outbound_cidrs, CidrSet::All);
        assert!(s.inbound_ports_exclude.is_empty() && s.outbound_ports_exclude.is_empty());
        assert!(s.outbound_cidrs_exclude.is_empty());
        assert!(!s.capture_dns && !s.ipv6);
        assert_eq!(s.backend, BackendChoice::Auto);
    }

    #[test]
    fn file_then_flags_the_flag_wins() {
        let (_dir, config) = yaml(
            "proxy_uid: 2102\ninbound_port: 4143\nadmin_ports: [4191]\ncapture_dns: true\n\
             outbound_ports: '80,443'\nbackend: legacy\n",
        );
        let s = args(&[&config]).load().unwrap();
        assert_eq!((s.proxy_uid, s.inbound_port), (2102, 4143));
        assert_eq!(s.admin_ports, [4191]);
        assert_eq!(s.outbound_ports, PortSet::Only(vec![80, 443]));
        assert!(s.capture_dns);
        assert_eq!(s.backend, BackendChoice::Legacy);
        assert_eq!(s.proxy_gid, 1337, "unset in the file: the default");
        let s = args(&[
            &config,
            "--proxy-uid=3000",
            "--admin-ports=9901,9902",
            "--capture-dns=false",
            "--backend=nft",
        ])
        .load()
        .unwrap();
        assert_eq!((s.proxy_uid, s.inbound_port), (3000, 4143));
        assert_eq!(s.admin_ports, [9901, 9902]);
        assert!(!s.capture_dns);
        assert_eq!(s.backend, BackendChoice::Nft);
    }

    #[test]
    fn file_errors_name_the_file_and_the_field() {
        let (_dir, config) = yaml("proxy_uid: 2102\ninbound_prot: 4143\n");
        let e = args(&[&config]).load().unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = e.to_string();
        assert!(
            e.contains("init.yaml: ") && e.contains("unknown field `inbound_prot`"),
            "{e}"
        );
        let (_dir, config) = yaml("inbound_port: 70000\n");
        let e = args(&[&config]).load().unwrap_err().to_string();
        assert!(e.contains("init.yaml: inbound_port: "), "{e}");
        let (_dir, config) = yaml("outbound_port: 15006\n");
        let e = args(&[&config]).load().unwrap_err().to_string();
        assert!(
            e.contains("init.yaml (with flags/environment): outbound_port: must differ"),
            "{e}"
        );
        let e = args(&["--config=/nonexistent/init.yaml"])
            .load()
            .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().starts_with("/nonexistent/init.yaml: "), "{e}");
    }
}
