//! Small value types of the configuration and their text forms (used by flags, environment
//! variables and YAML alike).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::identity::SpiffeId;

/// A duration written as `<number><unit>` with unit `ms`, `s`, `m` or `h` (e.g. `250ms`, `5s`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("{s:?}: missing unit (ms, s, m or h)"))?;
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?}: expected a whole number followed by ms, s, m or h"))?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
        };
        Ok(Dur(d))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            write!(f, "{ms}ms")
        } else if ms.is_multiple_of(3_600_000) && ms > 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) && ms > 0 {
            write!(f, "{}m", ms / 60_000)
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

impl fmt::Debug for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Parse inside the visitor: an error raised there is located at the value, so it names
        // the field (`limits.idle_timeout: ...`), not just the enclosing section (`limits: ...`).
        struct DurVisitor;
        impl serde::de::Visitor<'_> for DurVisitor {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 250ms, 5s, 2m or 1h")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Dur, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(DurVisitor)
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// How a listener learns where a connection was going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// iptables redirected the connection; read `SO_ORIGINAL_DST`.
    Transparent,
    /// Static routes; no iptables, no root.
    Explicit,
}

/// Mutual-TLS requirement of an inbound port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// Only mesh mTLS with a valid client SVID is accepted.
    Strict,
    /// Mesh mTLS is terminated; plaintext and other TLS pass through untouched.
    Permissive,
}

impl MtlsMode {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Strict => "strict",
            MtlsMode::Permissive => "permissive",
        }
    }
}

/// What the outbound side does with a destination that no table entry matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Plain TCP to the original destination (outside the mesh).
    Passthrough,
    /// Refuse the connection.
    Deny,
}

/// An explicit-mode outbound route: `listen=upstream,server-id`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Where the legacy client connects (plaintext).
    pub listen: SocketAddr,
    /// The peer's inbound (mTLS) address.
    pub upstream: SocketAddr,
    /// The SPIFFE ID the upstream must present.
    pub server_id: SpiffeId,
}

impl FromStr for Route {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || format!("{s:?}: expected LISTEN=UPSTREAM,SPIFFE_ID");
        let (listen, rest) = s.split_once('=').ok_or_else(err)?;
        let (upstream, id) = rest.split_once(',').ok_or_else(err)?;
        Ok(Route {
            listen: listen
                .parse()
                .map_err(|e| format!("{s:?}: listen address {listen:?}: {e}"))?,
            upstream: upstream
                .parse()
                .map_err(|e| format!("{s:?}: upstream address {upstream:?}: {e}"))?,
            server_id: SpiffeId::parse(id).map_err(|e| format!("{s:?}: SPIFFE ID {id:?}: {e}"))?,
        })
    }
}

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
                    .map_err(|_| format!("{s:?}: bad port {p:?}"))
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

/// `PORT=strict|permissive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMtls(pub u16, pub MtlsMode);

impl FromStr for PortMtls {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (port, mode) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected PORT=strict|permissive"))?;
        let port = port
            .parse()
            .map_err(|_| format!("{s:?}: bad port {port:?}"))?;
        let mode = match mode {
            "strict" => MtlsMode::Strict,
            "permissive" => MtlsMode::Permissive,
            other => return Err(format!("{s:?}: mode {other:?} is not strict or permissive")),
        };
        Ok(PortMtls(port, mode))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            "250ms".parse::<Dur>().unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!("2h".parse::<Dur>().unwrap().0, Duration::from_secs(7200));
        for bad in ["", "5", "s", "5x", "-1s", "1.5s"] {
            assert!(bad.parse::<Dur>().is_err(), "{bad}");
        }
        for d in ["250ms", "5s", "2m", "1h", "0s"] {
            assert_eq!(d.parse::<Dur>().unwrap().to_string(), d);
        }
    }

    #[test]
    fn routes() {
        let r: Route = "127.0.0.1:9000=10.0.0.2:15006,spiffe://td/backend"
            .parse()
            .unwrap();
        assert_eq!(r.upstream.port(), 15006);
        assert_eq!(r.server_id.as_str(), "spiffe://td/backend");
        assert!("127.0.0.1:9000=10.0.0.2:15006".parse::<Route>().is_err());
        let e = "127.0.0.1:9000=10.0.0.2:15006,spiffe://TD/x"
            .parse::<Route>()
            .unwrap_err();
        assert!(e.contains("trust domain characters"), "{e}");
    }

    #[test]
    fn destinations() {
        let d: Destination = "10.0.0.0/24:8080=spiffe://td/api".parse().unwrap();
        assert_eq!(d.port, Some(8080));
        assert_eq!(d.mode, DestMode::Mesh);
        let d: Destination = "10.1.2.3=passthrough".parse().unwrap();
        assert_eq!(d.cidr.to_string(), "10.1.2.3/32");
        assert_eq!((d.port, d.mode), (None, DestMode::Passthrough));
        let d: Destination = "[fd00::/64]:443=passthrough".parse().unwrap();
        assert_eq!(d.port, Some(443));
        let d: Destination = "fd00::1=spiffe://td/x".parse().unwrap();
        assert_eq!((d.cidr.to_string().as_str(), d.port), ("fd00::1/128", None));
        assert!("10.0.0.0/33=passthrough".parse::<Destination>().is_err());
        assert!("10.0.0.1:99999=passthrough".parse::<Destination>().is_err());
        assert!("10.0.0.1=nope".parse::<Destination>().is_err());
    }

    #[test]
    fn port_modes() {
        assert_eq!(
            "8080=permissive".parse::<PortMtls>().unwrap(),
            PortMtls(8080, MtlsMode::Permissive)
        );
        assert!("8080=lax".parse::<PortMtls>().is_err());
    }
}
