//! IP families: IPv4 rules go through `iptables`, IPv6 rules through `ip6tables`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// The IP family a plan is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4 (`iptables-*`).
    V4,
    /// IPv6 (`ip6tables-*`).
    V6,
}

/// Source address the proxy uses when it forwards inbound connections to the app over `lo` at
/// the pod's own IPv4 address. Connections from it are never captured (see `chains.rs`).
pub const INBOUND_PASSTHROUGH_SOURCE_V4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

/// IPv6 counterpart of [`INBOUND_PASSTHROUGH_SOURCE_V4`]; unlike `127.0.0.6` it is not a
/// loopback address, so a proxy that uses it must add it to `lo` first.
pub const INBOUND_PASSTHROUGH_SOURCE_V6: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The loopback host route (`127.0.0.1/32`, `::1/128`).
    pub fn loopback(self) -> IpNet {
        host(match self {
            Family::V4 => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Family::V6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
        })
    }

    /// The host route of the proxy's inbound passthrough source.
    pub fn passthrough_source(self) -> IpNet {
        host(match self {
            Family::V4 => IpAddr::V4(INBOUND_PASSTHROUGH_SOURCE_V4),
            Family::V6 => IpAddr::V6(INBOUND_PASSTHROUGH_SOURCE_V6),
        })
    }

    /// Whether `net` belongs to this family.
    pub fn contains(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
        )
    }

    /// Whether `addr` belongs to this family.
    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// `iptables` or `ip6tables`: the prefix of this family's binaries.
    pub fn tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// The single-address network of `addr` (`/32` or `/128`).
fn host(addr: IpAddr) -> IpNet {
    IpNet::from(addr)
}
