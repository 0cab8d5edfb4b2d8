//! The transparent-mode destination table: for an original destination, mesh (with the SPIFFE ID
//! the server must present) or passthrough. Pure lookup; the most specific entry wins (longest
//! prefix, then an entry with a port over one without).

use std::net::SocketAddr;

use crate::config::{DestMode, Destination, Fallback};
use svidcar_identity::SpiffeId;

/// What to do with a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Originate mTLS and require this server identity.
    Mesh(SpiffeId),
    /// Plain TCP, outside the mesh.
    Passthrough,
    /// Refuse (no entry matched and the fallback is `deny`).
    Deny,
}

/// Destination entries plus the fallback.
#[derive(Debug, Clone)]
pub struct DestinationTable {
    entries: Vec<Destination>,
    fallback: Fallback,
}

impl DestinationTable {
    /// Builds the table (entries were validated with the config).
    pub fn new(entries: Vec<Destination>, fallback: Fallback) -> Self {
        Self { entries, fallback }
    }

    /// Decides for one original destination.
    pub fn lookup(&self, dst: SocketAddr) -> Target {
        let best = self
            .entries
            .iter()
            .filter(|d| d.cidr.contains(&dst.ip()) && d.port.is_none_or(|p| p == dst.port()))
            .max_by_key(|d| (d.cidr.prefix_len(), d.port.is_some()));
        match best {
            Some(d) => match (d.mode, &d.server_id) {
                (DestMode::Mesh, Some(id)) => Target::Mesh(id.clone()),
                // Validation guarantees mesh entries have an ID; treat a gap as passthrough-free
                // refusal rather than plaintext.
                (DestMode::Mesh, None) => Target::Deny,
                (DestMode::Passthrough, _) => Target::Passthrough,
            },
            None => match self.fallback {
                Fallback::Passthrough => Target::Passthrough,
                Fallback::Deny => Target::Deny,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[&str], fallback: Fallback) -> DestinationTable {
        DestinationTable::new(
            entries.iter().map(|e| e.parse().unwrap()).collect(),
            fallback,
        )
    }

    #[test]
    fn most_specific_entry_wins() {
        let t = table(
            &[
                "10.0.0.0/8=spiffe://td/wide",
                "10.1.0.0/16=spiffe://td/narrow",
                "10.1.0.0/16:5432=passthrough",
                "10.1.2.3=spiffe://td/host",
            ],
            Fallback::Deny,
        );
        let id = |s: &str| Target::Mesh(SpiffeId::parse(s).unwrap());
        assert_eq!(
            t.lookup("10.9.9.9:80".parse().unwrap()),
            id("spiffe://td/wide")
        );
        assert_eq!(
            t.lookup("10.1.9.9:80".parse().unwrap()),
            id("spiffe://td/narrow")
        );
        assert_eq!(
            t.lookup("10.1.9.9:5432".parse().unwrap()),
            Target::Passthrough
        );
        assert_eq!(
            t.lookup("10.1.2.3:5432".parse().unwrap()),
            id("spiffe://td/host")
        );
        assert_eq!(t.lookup("192.0.2.1:80".parse().unwrap()), Target::Deny);
        let open = table(&[], Fallback::Passthrough);
        assert_eq!(
            open.lookup("[2001:db8::1]:443".parse().unwrap()),
            Target::Passthrough
        );
    }
}
