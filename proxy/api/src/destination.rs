//! The outbound destination table's entries, as `svidcar run` reads them (`--destination`,
//! `SVIDCAR_DESTINATIONS`, YAML) and as `svidcar inject` checks a pod's
//! `svidcar.io/destinations` annotation: one parser for both.

use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
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
/// (IPv6 with a port: `[CIDR]:PORT=…`). In YAML either that string or a map
/// `{cidr, port, mode, server_id}`; serialized as the map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

/// The map form of a [`Destination`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DestinationFields {
    cidr: IpNet,
    #[serde(default)]
    port: Option<u16>,
    mode: DestMode,
    #[serde(default)]
    server_id: Option<SpiffeId>,
}

const DESTINATION_MAP: &str =
    "a map with `cidr`, `mode` (mesh|passthrough) and optionally `port` and `server_id`";
const DESTINATION_FORMS: &str = "a destination: a map with `cidr`, `mode` (mesh|passthrough) and \
     optionally `port` and `server_id`, or \"CIDR[:PORT]=SPIFFE_ID|passthrough\"";

impl<'de> Deserialize<'de> for Destination {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Forms;
        impl<'de> Visitor<'de> for Forms {
            type Value = Destination;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(DESTINATION_FORMS)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Destination, E> {
                s.parse().map_err(|e| {
                    E::custom(format!(
                        "{e} (or write the destination as {DESTINATION_MAP})"
                    ))
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Destination, A::Error> {
                let DestinationFields {
                    cidr,
                    port,
                    mode,
                    server_id,
                } = DestinationFields::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Destination {
                    cidr,
                    port,
                    mode,
                    server_id,
                })
            }
        }
        d.deserialize_any(Forms)
    }
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not an IP address or CIDR"))
}

/// Addresses and an optional port: `CIDR[:PORT]` (an address alone is a /32 or /128; IPv6
/// with a port: `[CIDR]:PORT`). The left side of a destination entry, and on its own the form
/// of `tunnel.direct`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetPort {
    /// Addresses covered.
    pub cidr: IpNet,
    /// Port covered; all ports when absent.
    pub port: Option<u16>,
}

impl NetPort {
    /// Whether `addr` falls under this entry.
    pub fn contains(&self, addr: std::net::SocketAddr) -> bool {
        self.cidr.contains(&addr.ip()) && self.port.is_none_or(|p| p == addr.port())
    }
}

impl FromStr for NetPort {
    type Err = String;
    fn from_str(dst: &str) -> Result<Self, String> {
        let (net, port) = if let Some(rest) = dst.strip_prefix('[') {
            let (net, after) = rest.split_once(']').ok_or("missing ']'")?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(format!("unexpected {after:?} after ']'")),
            };
            (net, port)
        } else if dst.matches(':').count() == 1 {
            let (net, port) = dst.split_once(':').ok_or("bad port")?;
            (net, Some(port))
        } else {
            (dst, None)
        };
        let port = port
            .map(|p| {
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("{p:?} is not a port (1-65535)"))
            })
            .transpose()?;
        Ok(NetPort {
            cidr: parse_net(net)?,
            port,
        })
    }
}

impl fmt::Display for NetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.port, self.cidr) {
            (None, net) => write!(f, "{net}"),
            (Some(p), IpNet::V6(net)) => write!(f, "[{net}]:{p}"),
            (Some(p), net) => write!(f, "{net}:{p}"),
        }
    }
}

impl<'de> Deserialize<'de> for NetPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e| de::Error::custom(format!("{s:?}: {e} (expected CIDR[:PORT])")))
    }
}

impl Serialize for NetPort {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for Destination {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (dst, action) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("{s:?}: expected CIDR[:PORT]=SPIFFE_ID|passthrough"))?;
        let NetPort { cidr, port } = dst.parse().map_err(|e| format!("{s:?}: {e}"))?;
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

    #[test]
    fn net_ports_parse_print_and_match() {
        for text in [
            "10.0.0.0/8",
            "10.1.2.3/32:5432",
            "[fd00::/8]:443",
            "fd00::/8",
        ] {
            let n: NetPort = text.parse().unwrap();
            assert_eq!(n.to_string(), text);
        }
        let n: NetPort = "10.1.2.3:5432".parse().unwrap();
        assert!(n.contains("10.1.2.3:5432".parse().unwrap()));
        assert!(!n.contains("10.1.2.3:80".parse().unwrap()));
        let json = serde_json::to_value(n).unwrap();
        assert_eq!(serde_json::from_value::<NetPort>(json).unwrap(), n);
        let e = serde_json::from_value::<NetPort>(serde_json::json!("x:1")).unwrap_err();
        assert!(e.to_string().contains("expected CIDR[:PORT]"), "{e}");
    }

    #[test]
    fn both_forms_deserialize_alike() {
        let from = |v: serde_json::Value| serde_json::from_value::<Destination>(v);
        let text: Destination = "[fd00::/8]:443=spiffe://example.org/db".parse().unwrap();
        let map = from(serde_json::json!({
            "cidr": "fd00::/8", "port": 443, "mode": "mesh", "server_id": "spiffe://example.org/db"
        }))
        .unwrap();
        assert_eq!(map, text);
        assert_eq!(
            from(serde_json::json!("[fd00::/8]:443=spiffe://example.org/db")).unwrap(),
            text
        );
        // The map form round-trips through serialization.
        assert_eq!(from(serde_json::to_value(&text).unwrap()).unwrap(), text);
        for (bad, says) in [
            (serde_json::json!("10.0.0.0/8"), "`cidr`, `mode`"),
            (serde_json::json!(7), "`cidr`, `mode`"),
            (
                serde_json::json!({"cidr": "10.0.0.0/8"}),
                "missing field `mode`",
            ),
            (
                serde_json::json!({"cidr": "10.0.0.0/8", "mode": "mesh", "ports": 1}),
                "expected one of `cidr`, `port`, `mode`, `server_id`",
            ),
        ] {
            let e = from(bad.clone()).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
