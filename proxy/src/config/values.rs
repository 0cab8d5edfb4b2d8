//! Small value types of the configuration and their text forms (used by flags, environment
//! variables and YAML alike).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

pub use svidcar_api::destination::{DestMode, Destination};
use svidcar_identity::SpiffeId;
use svidcar_policy::MtlsMode;

/// How a listener learns where a connection was going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// iptables redirected the connection; read `SO_ORIGINAL_DST`.
    Transparent,
    /// Static routes; no iptables, no root.
    Explicit,
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

/// An explicit-mode outbound route. In YAML either a map `{listen, upstream, server_id, tunnel}`
/// or the flag's string form `LISTEN=UPSTREAM,SPIFFE_ID[,TUNNEL]`; serialized as the map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    /// Where the legacy client connects (plaintext).
    pub listen: SocketAddr,
    /// The peer's inbound (mTLS) address.
    pub upstream: SocketAddr,
    /// The SPIFFE ID the upstream must present.
    pub server_id: SpiffeId,
    /// The peer's tunnel listener: when set (and `tunnel.enabled`), connections ride pooled
    /// HTTP/2 `CONNECT` streams there, falling back to `upstream` if it cannot be used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<SocketAddr>,
}

/// The map form of a [`Route`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFields {
    listen: SocketAddr,
    upstream: SocketAddr,
    server_id: SpiffeId,
    #[serde(default)]
    tunnel: Option<SocketAddr>,
}

const ROUTE_MAP: &str = "a map with `listen`, `upstream`, `server_id` and optionally `tunnel`";
const ROUTE_FORMS: &str = "a route: a map with `listen`, `upstream`, `server_id` and optionally \
     `tunnel`, or \"LISTEN=UPSTREAM,SPIFFE_ID[,TUNNEL]\"";

impl<'de> Deserialize<'de> for Route {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Forms;
        impl<'de> Visitor<'de> for Forms {
            type Value = Route;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(ROUTE_FORMS)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Route, E> {
                s.parse()
                    .map_err(|e| E::custom(format!("{e} (or write the route as {ROUTE_MAP})")))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Route, A::Error> {
                let RouteFields {
                    listen,
                    upstream,
                    server_id,
                    tunnel,
                } = RouteFields::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Route {
                    listen,
                    upstream,
                    server_id,
                    tunnel,
                })
            }
        }
        d.deserialize_any(Forms)
    }
}

impl FromStr for Route {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || format!("{s:?}: expected LISTEN=UPSTREAM,SPIFFE_ID[,TUNNEL]");
        let (listen, rest) = s.split_once('=').ok_or_else(err)?;
        let (upstream, rest) = rest.split_once(',').ok_or_else(err)?;
        let (id, tunnel) = match rest.split_once(',') {
            Some((id, tunnel)) => (id, Some(tunnel)),
            None => (rest, None),
        };
        let tunnel = tunnel
            .map(|t| {
                t.parse()
                    .map_err(|e| format!("{s:?}: tunnel address {t:?}: {e}"))
            })
            .transpose()?;
        Ok(Route {
            listen: listen
                .parse()
                .map_err(|e| format!("{s:?}: listen address {listen:?}: {e}"))?,
            upstream: upstream
                .parse()
                .map_err(|e| format!("{s:?}: upstream address {upstream:?}: {e}"))?,
            server_id: SpiffeId::parse(id).map_err(|e| format!("{s:?}: SPIFFE ID {id:?}: {e}"))?,
            tunnel,
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
