//! Recovering the original destination of a connection redirected by iptables (`SO_ORIGINAL_DST`
//! for IPv4, `IP6T_SO_ORIGINAL_DST` for IPv6), through nix's safe socket options.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::TcpStream;

/// The address the client meant to reach before iptables redirected it to us.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OrigDstAddr(pub SocketAddr);

impl fmt::Display for OrigDstAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for OrigDstAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OrigDstAddr({})", self.0)
    }
}

/// Reads the original destination of an accepted, redirected connection.
pub(crate) fn orig_dst_addr(stream: &TcpStream) -> std::io::Result<OrigDstAddr> {
    let local = stream.local_addr()?;
    let v4_socket = match local {
        SocketAddr::V4(_) => true,
        // A v4 client accepted on a dual-stack listener is tracked by v4 conntrack.
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
    };
    let addr = match v4_socket {
        true => {
            let sin = getsockopt(stream, sockopt::OriginalDst)?;
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            ))
        }
        false => {
            let sin6 = getsockopt(stream, sockopt::Ip6tOriginalDst)?;
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(sin6.sin6_port), 0, 0))
        }
    };
    Ok(OrigDstAddr(addr))
}
