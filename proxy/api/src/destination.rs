//! The outbound destination table's entries, as `svidcar run` reads them (`--destination`,
//! `SVIDCAR_DESTINATIONS`, YAML) and as `svidcar inject` checks a pod's
//! `svidcar.io/destinations` annotation: one parser for both.

use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use svidcar_identity::SpiffeId;

/// What to do with traffic to a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DestMode {
    /// Originate mTLS and require `server_id`.
    Mesh,
    /// Plain TCP.
    Passthrough,
}

/// A transparent-mode destination entry: `CIDR[:PORT]=SPIFFE_ID|passthrough`
/// (IPv6 with a port: `[CIDR]:PORT=…`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// Addresses this entry covers.
    pub cidr: IpNet,
    /// Port it covers; all ports when absent.
    #[serde(default)]
    pub port: Option<u16>,
    /// Mesh or passthrough.
    pub mode: DestMode,
    /// Required for mesh: the SPIFFE ID the destination must present.
    #[serde(default)]
    pub server_id: Option<SpiffeId>,
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not an IP address or CIDR"))
}

impl FromStr for Destination {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (dst, action) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("{s:?}: expected CIDR[:PORT]=SPIFFE_ID|passthrough"))?;
        let (net, port) = if let Some(rest) = dst.strip_prefix('[') {
            let (net, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("{s:?}: missing ']'"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(format!("{s:?}: unexpected {after:?} after ']'")),
            };
            (net, port)
        } else if dst.matches(':').count() == 1 {
            let (net, port) = dst
                .split_once(':')
                .ok_or_else(|| format!("{s:?}: bad port"))?;
            (net, Some(port))
        } else {
            (dst, None)
        };
        let port = port
            .map(|p| {
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("{s:?}: {p:?} is not a port (1-65535)"))
            })
            .transpose()?;
        let cidr = parse_net(net).map_err(|e| format!("{s:?}: {e}"))?;
        let (mode, server_id) = if action == "passthrough" {
            (DestMode::Passthrough, None)
        } else {
            let id = SpiffeId::parse(action).map_err(|e| {
                format!("{s:?}: {action:?} is neither `passthrough` nor a SPIFFE ID: {e}")
            })?;
            (DestMode::Mesh, Some(id))
        };
        Ok(Destination {
            cidr,
            port,
            mode,
            server_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_their_errors() {
        let d: Destination = "[fd00::/8]:443=spiffe://example.org/db".parse().unwrap();
        assert_eq!((d.port, d.mode), (Some(443), DestMode::Mesh));
        let d: Destination = "10.0.0.1=passthrough".parse().unwrap();
        assert_eq!((d.cidr.prefix_len(), d.mode), (32, DestMode::Passthrough));
        for (bad, says) in [
            ("10.0.0.0/8:0=passthrough", "is not a port"),
            ("10.0.0.0/8:x=passthrough", "is not a port"),
            ("10.0.0.0/8=db", "neither `passthrough` nor a SPIFFE ID"),
            ("nowhere=passthrough", "not an IP address or CIDR"),
            ("10.0.0.0/8", "expected CIDR[:PORT]=SPIFFE_ID|passthrough"),
        ] {
            let e = bad.parse::<Destination>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
