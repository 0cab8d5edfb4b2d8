//! Port and CIDR lists as operators write them: `*` for "all", or comma-separated values.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// A list value that could not be parsed; the message names the offending item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ListError(String);

/// A set of destination ports to capture: every port, or only the listed ones.
///
/// Written as `*` or `80,443`; an empty list captures nothing in that direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Repr<u16>", into = "Repr<u16>")]
pub enum PortSet {
    /// Every port (`*`).
    All,
    /// Only these ports.
    Only(Vec<u16>),
}

/// A set of destination networks to capture: every address, or only the listed networks.
///
/// Written as `*` or `10.0.0.0/8,fd00::/8`; a bare address means that single host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Repr<String>", into = "Repr<String>")]
pub enum CidrSet {
    /// Every address (`*`).
    All,
    /// Only these networks.
    Only(Vec<IpNet>),
}

/// Parses one port: a decimal number in 1..=65535.
pub(crate) fn parse_port(s: &str) -> Result<u16, ListError> {
    match s.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(ListError(format!(
            "`{s}` is not a port (expected a number from 1 to 65535)"
        ))),
        Ok(p) => Ok(p),
    }
}

/// Parses one network: `10.0.0.0/8`, `fd00::/8`, or a bare address (a single host). Host bits
/// are cleared (`10.1.2.3/8` becomes `10.0.0.0/8`) because that is how iptables stores it.
pub(crate) fn parse_cidr(s: &str) -> Result<IpNet, ListError> {
    let s = s.trim();
    let net = match s.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => s.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
            ListError(format!(
                "`{s}` is not a CIDR (expected e.g. 10.0.0.0/8, fd00::/8 or 192.0.2.7)"
            ))
        })?,
    };
    Ok(net.trunc())
}

/// Parses a comma-separated list; empty items are skipped so `""` is the empty list.
pub(crate) fn parse_list<T>(
    s: &str,
    item: impl Fn(&str) -> Result<T, ListError>,
) -> Result<Vec<T>, ListError> {
    s.split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .map(item)
        .collect()
}

impl FromStr for PortSet {
    type Err = ListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "*" {
            Ok(PortSet::All)
        } else {
            parse_list(s, parse_port).map(PortSet::Only)
        }
    }
}

impl FromStr for CidrSet {
    type Err = ListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "*" {
            Ok(CidrSet::All)
        } else {
            parse_list(s, parse_cidr).map(CidrSet::Only)
        }
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSet::All => f.write_str("*"),
            PortSet::Only(ports) => write_list(f, ports),
        }
    }
}

impl fmt::Display for CidrSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CidrSet::All => f.write_str("*"),
            CidrSet::Only(nets) => write_list(f, nets),
        }
    }
}

fn write_list<T: fmt::Display>(f: &mut fmt::Formatter<'_>, items: &[T]) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(",")?;
        }
        write!(f, "{item}")?;
    }
    Ok(())
}

/// Serde form of both sets: the string syntax (`"*"`, `"80,443"`) or a list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum Repr<T> {
    Text(String),
    List(Vec<T>),
}

impl TryFrom<Repr<u16>> for PortSet {
    type Error = ListError;

    fn try_from(r: Repr<u16>) -> Result<Self, Self::Error> {
        match r {
            Repr::Text(s) => s.parse(),
            Repr::List(ports) => Ok(PortSet::Only(ports)),
        }
    }
}

impl From<PortSet> for Repr<u16> {
    fn from(p: PortSet) -> Self {
        match p {
            PortSet::All => Repr::Text("*".into()),
            PortSet::Only(ports) => Repr::List(ports),
        }
    }
}

impl TryFrom<Repr<String>> for CidrSet {
    type Error = ListError;

    fn try_from(r: Repr<String>) -> Result<Self, Self::Error> {
        match r {
            Repr::Text(s) => s.parse(),
            Repr::List(items) => items
                .iter()
                .map(|i| parse_cidr(i))
                .collect::<Result<_, _>>()
                .map(CidrSet::Only),
        }
    }
}

impl From<CidrSet> for Repr<String> {
    fn from(c: CidrSet) -> Self {
        match c {
            CidrSet::All => Repr::Text("*".into()),
            CidrSet::Only(nets) => Repr::List(nets.iter().map(ToString::to_string).collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::value::{Error as DeError, StrDeserializer};
    use serde::de::IntoDeserializer;

    #[test]
    fn port_sets() {
        assert_eq!("*".parse(), Ok(PortSet::All));
        assert_eq!(" 80, 443 ,".parse(), Ok(PortSet::Only(vec![80, 443])));
        assert_eq!("".parse(), Ok(PortSet::Only(vec![])));
        assert!("0".parse::<PortSet>().is_err());
        assert!("65536".parse::<PortSet>().is_err());
        let e = "80,http".parse::<PortSet>().unwrap_err();
        assert!(e.to_string().contains("`http`"), "{e}");
        assert_eq!(PortSet::Only(vec![80, 443]).to_string(), "80,443");
    }

    #[test]
    fn cidr_sets() {
        assert_eq!("*".parse(), Ok(CidrSet::All));
        let set: CidrSet = "10.1.2.3/8, 192.0.2.7, fd00::1/8".parse().unwrap();
        assert_eq!(set.to_string(), "10.0.0.0/8,192.0.2.7/32,fd00::/8");
        assert!("10.0.0.0/33".parse::<CidrSet>().is_err());
        assert!("example.com".parse::<CidrSet>().is_err());
    }

    #[test]
    fn serde_accepts_text_and_lists() {
        let de: StrDeserializer<DeError> = "*".into_deserializer();
        assert_eq!(PortSet::deserialize(de), Ok(PortSet::All));
        let de: StrDeserializer<DeError> = "53,80".into_deserializer();
        assert_eq!(PortSet::deserialize(de), Ok(PortSet::Only(vec![53, 80])));
        let de: StrDeserializer<DeError> = "10.0.0.0/8".into_deserializer();
        assert_eq!(
            CidrSet::deserialize(de),
            Ok(CidrSet::Only(vec!["10.0.0.0/8".parse().unwrap()]))
        );
        let de: StrDeserializer<DeError> = "nope".into_deserializer();
        assert!(CidrSet::deserialize(de).is_err());
    }
}
