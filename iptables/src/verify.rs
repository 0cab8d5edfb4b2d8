//! Proving that outbound interception works before the app starts: connect to an address the
//! OUTPUT rules capture and check that the connection arrived at the outbound port with the
//! dialed address as its original destination (`SO_ORIGINAL_DST`).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt};

use crate::family::Family;
use crate::lists::{CidrSet, PortSet};
use crate::proc_status::ProcStatus;
use crate::settings::{Settings, DNS_PORT};

/// How long the probe waits to connect, and then to accept.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Default IPv4 probe address: TEST-NET-1 (RFC 5737). It needs a route (any default route
/// will do); the REDIRECT turns the connection around inside the namespace, so nothing reaches
/// the wire unless interception is broken — and then only a SYN to an address reserved for
/// documentation.
pub(crate) const DEFAULT_TARGET_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// Default IPv6 probe address: the documentation prefix (RFC 3849).
pub(crate) const DEFAULT_TARGET_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

/// Port the probe prefers: discard (9), unless the settings do not capture it.
const PREFERRED_PORT: u16 = 9;

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// A connection to `target` arrived at `listener` with `target` as its original destination.
    Redirected {
        /// The address dialed.
        target: SocketAddr,
        /// Where the probe listened (the outbound port on loopback).
        listener: SocketAddr,
    },
    /// The probe could not run without disturbing something; interception is unverified.
    Skipped {
        /// Why.
        reason: String,
    },
}

/// Why interception is not working (or could not be checked).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// We run as the proxy, whose traffic is exempt by design, so the probe proves nothing.
    #[error(
        "this process runs as uid {euid} / gid {egid}, the proxy's identity, whose traffic is \
         never captured; run init as another user (normally root)"
    )]
    RunningAsProxy {
        /// Effective uid.
        euid: u32,
        /// Effective gid.
        egid: u32,
    },
    /// The settings leave the probe target uncaptured.
    #[error("probe target {target} is not captured by these settings ({why}); pass a captured address with --verify-target")]
    TargetNotCaptured {
        /// The target.
        target: SocketAddr,
        /// Which setting excludes it.
        why: &'static str,
    },
    /// No route to the target: the kernel refused before any iptables rule was consulted.
    #[error(
        "no route to probe target {target} ({source}); the network namespace has no default \
         route yet (is the CNI done?) — pass a routable address with --verify-target"
    )]
    NoRoute {
        /// The target.
        target: SocketAddr,
        /// The connect error.
        source: io::Error,
    },
    /// The connection did not arrive at the outbound port.
    #[error("a connection to {target} was not redirected to {listener}: {detail}")]
    NotRedirected {
        /// The target.
        target: SocketAddr,
        /// Where the probe listened.
        listener: SocketAddr,
        /// What happened instead.
        detail: String,
    },
    /// It arrived, but the original destination is not what was dialed.
    #[error("SO_ORIGINAL_DST says {got:?}, expected {target}: the proxy would forward to the wrong place")]
    WrongOriginalDst {
        /// The target.
        target: SocketAddr,
        /// What the kernel reported.
        got: Option<SocketAddr>,
    },
    /// After applying, the nat table still differs from the plan (someone else is changing
    /// it concurrently, or the backend rewrote our rules).
    #[error("after applying, the nat table still needs changes:\n{remaining}(is another process changing the rules at the same time?)")]
    RulesDiffer {
        /// The steps a new plan would still take.
        remaining: String,
    },
    /// A local socket operation failed.
    #[error("probe socket error: {0}")]
    Io(#[from] io::Error),
}

/// The default probe target for `family`: the documentation address on port 9 or, when the
/// settings capture only some ports, on the first captured one. (If the address itself is not
/// captured, [`verify`] says so and asks for `--verify-target`.)
pub fn default_target(settings: &Settings, family: Family) -> SocketAddr {
    let ip = match family {
        Family::V4 => IpAddr::V4(DEFAULT_TARGET_V4),
        Family::V6 => IpAddr::V6(DEFAULT_TARGET_V6),
    };
    let candidates = match &settings.outbound_ports {
        PortSet::All => vec![PREFERRED_PORT],
        PortSet::Only(ports) => ports.clone(),
    };
    let port = candidates
        .into_iter()
        .find(|&p| check_captured(settings, SocketAddr::new(ip, p)).is_ok())
        .unwrap_or(PREFERRED_PORT);
    SocketAddr::new(ip, port)
}

/// Probes outbound interception for `family` (see the module doc). Must run in the network
/// namespace that was configured, as a user that is not the proxy. Bounded by
/// [`PROBE_TIMEOUT`] twice.
pub fn verify(settings: &Settings, target: SocketAddr) -> Result<Verification, VerifyError> {
    if let Some(me) = ProcStatus::current() {
        if me.euid == settings.proxy_uid || me.egid == settings.proxy_gid {
            return Err(VerifyError::RunningAsProxy {
                euid: me.euid,
                egid: me.egid,
            });
        }
    }
    check_captured(settings, target)?;
    let loopback = Family::of(target.ip()).loopback().addr();
    let listen_at = SocketAddr::new(loopback, settings.outbound_port);
    let listener = match TcpListener::bind(listen_at) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            return Ok(Verification::Skipped {
                reason: format!(
                    "{listen_at} is already in use (the proxy is running?); not probing through it"
                ),
            })
        }
        Err(e) => return Err(e.into()),
    };
    let not_redirected = |detail: String| VerifyError::NotRedirected {
        target,
        listener: listen_at,
        detail,
    };
    let client = match TcpStream::connect_timeout(&target, PROBE_TIMEOUT) {
        Ok(s) => s,
        Err(e) if is_unroutable(&e) => return Err(VerifyError::NoRoute { target, source: e }),
        Err(e) => return Err(not_redirected(format!("connect failed: {e}"))),
    };
    let client_addr = client.local_addr()?;
    let accepted = accept_from(&listener, client_addr, PROBE_TIMEOUT)?.ok_or_else(|| {
        not_redirected(format!(
            "the connection was established (to something else?) but never reached the listener within {PROBE_TIMEOUT:?}"
        ))
    })?;
    let got = original_dst(&accepted, target)?;
    if got != Some(target) {
        return Err(VerifyError::WrongOriginalDst { target, got });
    }
    Ok(Verification::Redirected {
        target,
        listener: listen_at,
    })
}

/// Whether the settings capture outbound TCP to `target` (from a non-proxy, non-loopback
/// socket), following the order of the OUTPUT rules.
pub(crate) fn check_captured(settings: &Settings, target: SocketAddr) -> Result<(), VerifyError> {
    let fail = |why| Err(VerifyError::TargetNotCaptured { target, why });
    let (ip, port) = (target.ip(), target.port());
    if ip.is_loopback() {
        return fail("loopback destinations are never captured");
    }
    if settings
        .outbound_cidrs_exclude
        .iter()
        .any(|n| n.contains(&ip))
    {
        return fail("outbound_cidrs_exclude");
    }
    if settings.outbound_ports_exclude.contains(&port) {
        return fail("outbound_ports_exclude");
    }
    if port == DNS_PORT && !settings.capture_dns {
        return fail("port 53 is only captured with capture_dns");
    }
    if let CidrSet::Only(nets) = &settings.outbound_cidrs {
        if !nets.iter().any(|n| n.contains(&ip)) {
            return fail("outside outbound_cidrs");
        }
    }
    if let PortSet::Only(ports) = &settings.outbound_ports {
        if !ports.contains(&port) {
            return fail("port not in outbound_ports");
        }
    }
    Ok(())
}

fn is_unroutable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NetworkUnreachable | io::ErrorKind::HostUnreachable
    )
}

/// Accepts until the connection from `from` shows up or `timeout` passes.
fn accept_from(
    listener: &TcpListener,
    from: SocketAddr,
    timeout: Duration,
) -> io::Result<Option<TcpStream>> {
    const POLL: Duration = Duration::from_millis(5);
    listener.set_nonblocking(true)?;
    // Counting sleeps instead of reading a clock: can only overshoot, by the polling overhead.
    let mut waited = Duration::ZERO;
    loop {
        match listener.accept() {
            Ok((stream, peer)) if peer == from => return Ok(Some(stream)),
            Ok(_) => continue, // someone else's connection: not ours to judge
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if waited >= timeout {
                    return Ok(None);
                }
                thread::sleep(POLL);
                waited += POLL;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The redirected connection's original destination, read the way the proxy reads it.
fn original_dst(stream: &TcpStream, target: SocketAddr) -> io::Result<Option<SocketAddr>> {
    let got = match target {
        SocketAddr::V4(_) => getsockopt(stream, sockopt::OriginalDst).map(|sa| {
            SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr))),
                u16::from_be(sa.sin_port),
            )
        }),
        SocketAddr::V6(_) => getsockopt(stream, sockopt::Ip6tOriginalDst).map(|sa| {
            SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(sa.sin6_addr.s6_addr)),
                u16::from_be(sa.sin6_port),
            )
        }),
    };
    match got {
        Ok(addr) => Ok(Some(addr)),
        // ENOENT: the connection was not NATed at all.
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(e) => Err(io::Error::from(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET_V4: SocketAddr = SocketAddr::new(IpAddr::V4(DEFAULT_TARGET_V4), 9);

    fn rejects(settings: &Settings, target: SocketAddr) -> bool {
        matches!(
            check_captured(settings, target),
            Err(VerifyError::TargetNotCaptured { .. })
        )
    }

    #[test]
    fn default_targets_are_captured() {
        let s = Settings::default();
        assert_eq!(
            default_target(&s, Family::V4),
            "192.0.2.1:9".parse().unwrap()
        );
        assert_eq!(
            default_target(&s, Family::V6),
            "[2001:db8::1]:9".parse().unwrap()
        );
        let s = Settings {
            outbound_ports: "53,8443,80".parse().unwrap(),
            outbound_ports_exclude: vec![8443],
            ..Settings::default()
        };
        assert_eq!(
            default_target(&s, Family::V4),
            "192.0.2.1:80".parse().unwrap()
        );
        for family in Family::ALL {
            assert!(check_captured(&s, default_target(&s, family)).is_ok());
        }
    }

    #[test]
    fn excluded_targets_are_refused_up_front() {
        let t: SocketAddr = "192.0.2.1:53".parse().unwrap();
        assert!(rejects(&Settings::default(), t));
        let dns = Settings {
            capture_dns: true,
            ..Settings::default()
        };
        assert!(!rejects(&dns, t));
        let s = Settings {
            outbound_cidrs: "10.0.0.0/8".parse().unwrap(),
            ..Settings::default()
        };
        assert!(rejects(&s, TARGET_V4));
        let s = Settings {
            outbound_cidrs_exclude: vec!["192.0.2.0/24".parse().unwrap()],
            ..Settings::default()
        };
        assert!(rejects(&s, TARGET_V4));
        let s = Settings {
            outbound_ports: "80".parse().unwrap(),
            ..Settings::default()
        };
        assert!(rejects(&s, TARGET_V4));
        assert!(rejects(
            &Settings::default(),
            "127.0.0.1:9".parse().unwrap()
        ));
    }

    #[test]
    fn a_busy_outbound_port_skips_the_probe() {
        let busy = TcpListener::bind("127.0.0.1:0").unwrap();
        let s = Settings {
            outbound_port: busy.local_addr().unwrap().port(),
            proxy_uid: u32::MAX - 1,
            proxy_gid: u32::MAX - 1,
            ..Settings::default()
        };
        let got = verify(&s, TARGET_V4).unwrap();
        assert!(matches!(got, Verification::Skipped { .. }), "{got:?}");
    }

    #[test]
    fn plain_connections_have_no_original_destination() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).unwrap();
        let accepted = accept_from(&listener, client.local_addr().unwrap(), PROBE_TIMEOUT)
            .unwrap()
            .unwrap();
        // Not NATed: "no entry", an error without conntrack, or the real destination itself.
        if let Ok(Some(got)) = original_dst(&accepted, TARGET_V4) {
            assert_eq!(got, addr);
        }
    }
}
