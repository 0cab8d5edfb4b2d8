//! The `tunnel` section: pooled, multiplexed mTLS between sidecars. The outbound side carries
//! each app connection to a mesh destination as an HTTP/2 `CONNECT` stream over a long-lived
//! mTLS connection to the peer's tunnel port; the inbound side serves that port.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use svidcar_api::destination::NetPort;
use svidcar_identity::Dur;

use super::Mode;

/// Tunnel settings (both sides).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TunnelConfig {
    /// Serve tunnels (inbound) and use them (outbound). Default `true`; `false` gives every
    /// app connection its own mTLS connection, as before tunnels.
    pub enabled: bool,
    /// The inbound tunnel listener. Default `0.0.0.0:15008` when `inbound.mode` is
    /// `transparent`; in explicit mode no tunnel listener unless set.
    pub listen: Option<SocketAddr>,
    /// Transparent mode: the port of a mesh destination's tunnel listener. Default `15008`.
    pub port: u16,
    /// Transparent-mode destinations (`CIDR[:PORT]`) that always get one mTLS connection per
    /// app connection, never a tunnel. Default none.
    pub direct: Vec<NetPort>,
    /// Concurrent streams per pooled connection; beyond it another connection is opened (and
    /// the most a tunnel server admits per connection). Default `100`.
    pub max_streams: u32,
    /// A pooled connection without streams for this long is closed. Default `90s`.
    pub idle_timeout: Dur,
    /// A peer whose tunnel port could not be used is reached directly for this long before
    /// its tunnel is tried again. Default `60s`.
    pub retry_after: Dur,
    /// Connecting to a peer's tunnel port (on timeout, direct mTLS is used). Default `1s`.
    pub connect_timeout: Dur,
    /// HTTP/2 flow-control window per stream, bytes. Default `4194304` (4 MiB).
    pub stream_window: u32,
    /// HTTP/2 flow-control window per connection, bytes. Default `16777216` (16 MiB).
    pub connection_window: u32,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
            port: svidcar_api::well_known::TUNNEL_PORT,
            direct: Vec::new(),
            max_streams: 100,
            idle_timeout: Dur(Duration::from_secs(90)),
            retry_after: Dur(Duration::from_secs(60)),
            connect_timeout: Dur(Duration::from_secs(1)),
            stream_window: 4 << 20,
            connection_window: 16 << 20,
        }
    }
}

impl TunnelConfig {
    /// The tunnel listener's address, if the proxy serves tunnels: the configured one, or by
    /// default `0.0.0.0:15008` for a transparent inbound side.
    pub fn listener(&self, inbound_enabled: bool, inbound_mode: Mode) -> Option<SocketAddr> {
        if !(self.enabled && inbound_enabled) {
            return None;
        }
        self.listen.or(match inbound_mode {
            Mode::Transparent => Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                svidcar_api::well_known::TUNNEL_PORT,
            )),
            Mode::Explicit => None,
        })
    }

    /// Whether a transparent-mode destination is reached directly (listed in `direct`).
    pub fn is_direct(&self, dst: SocketAddr) -> bool {
        self.direct.iter().any(|n| n.contains(dst))
    }

    /// Checks the section; returns the dotted field name and the problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |field: &str, msg: &str| Err((format!("tunnel.{field}"), msg.to_owned()));
        if self.max_streams == 0 {
            return bad("max_streams", "must be at least 1");
        }
        if self.port == 0 {
            return bad("port", "must be a port (1-65535)");
        }
        for (field, d) in [
            ("idle_timeout", self.idle_timeout),
            ("retry_after", self.retry_after),
            ("connect_timeout", self.connect_timeout),
        ] {
            if d.0.is_zero() {
                return bad(field, "must be greater than zero");
            }
        }
        // HTTP/2 allows windows from 65 535 bytes to 2^31 - 1.
        for (field, w) in [
            ("stream_window", self.stream_window),
            ("connection_window", self.connection_window),
        ] {
            if !(65_535..=0x7fff_ffff).contains(&w) {
                return bad(field, "must be between 65535 and 2147483647 bytes");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listener_defaults_to_15008_only_in_transparent_mode() {
        let t = TunnelConfig::default();
        assert_eq!(
            t.listener(true, Mode::Transparent),
            Some("0.0.0.0:15008".parse().unwrap())
        );
        assert_eq!(t.listener(true, Mode::Explicit), None);
        assert_eq!(t.listener(false, Mode::Transparent), None);
        let set = TunnelConfig {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            ..TunnelConfig::default()
        };
        assert!(set.listener(true, Mode::Explicit).is_some());
        let off = TunnelConfig {
            enabled: false,
            ..set
        };
        assert_eq!(off.listener(true, Mode::Explicit), None);
    }

    #[test]
    fn direct_entries_and_bad_values() {
        let t = TunnelConfig {
            direct: vec!["10.0.0.0/8:5432".parse().unwrap()],
            ..TunnelConfig::default()
        };
        assert!(t.is_direct("10.1.2.3:5432".parse().unwrap()));
        assert!(!t.is_direct("10.1.2.3:80".parse().unwrap()));
        let e = TunnelConfig {
            stream_window: 1000,
            ..TunnelConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.0, "tunnel.stream_window");
        let e = TunnelConfig {
            max_streams: 0,
            ..TunnelConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.0, "tunnel.max_streams");
    }
}
