//! Both ends of one connection as authorization sees them: our workload, the verified peer (or
//! the server a route expects) with its certificate's serial, and the addresses. What a
//! revocation is checked against, what the registry keeps of an open connection, and what the
//! decision event of a refusal or a closure names.

use std::net::SocketAddr;

use svidcar_identity::tls::CertSerial;
use svidcar_identity::SpiffeId;
use svidcar_policy::Request;

use super::revoked::End;
use crate::conn::{ConnRecord, Direction};

/// The ends of a connection.
#[derive(Debug, Clone)]
pub(crate) struct Ends {
    /// Inbound (the peer is the client) or outbound (the peer is the server).
    pub(crate) direction: Direction,
    /// Our own SPIFFE ID.
    pub(crate) local: Option<SpiffeId>,
    /// The verified peer; on the outbound side before the handshake, the ID the route expects.
    pub(crate) peer: Option<SpiffeId>,
    /// The verified peer certificate's serial, once a handshake proved it.
    pub(crate) peer_serial: Option<CertSerial>,
    /// The connecting side's address.
    pub(crate) client: SocketAddr,
    /// Where the connection goes (the app inbound, the peer outbound).
    pub(crate) dst: SocketAddr,
}

impl Ends {
    /// The ends a connection's record knows of; `dst` when the record has no destination yet.
    pub(crate) fn of(rec: &ConnRecord, dst: SocketAddr) -> Self {
        Self {
            direction: rec.direction,
            local: rec.local_id.clone(),
            peer: rec.tls.peer().cloned(),
            peer_serial: rec.tls.peer_serial().cloned(),
            client: rec.client_addr.0,
            dst: rec.dst_addr.map_or(dst, |d| d.addr()),
        }
    }

    /// The calling side's SPIFFE ID.
    pub(crate) fn source_id(&self) -> Option<&SpiffeId> {
        match self.direction {
            Direction::Inbound => self.peer.as_ref(),
            Direction::Outbound => self.local.as_ref(),
        }
    }

    /// The called side's SPIFFE ID.
    pub(crate) fn destination_id(&self) -> Option<&SpiffeId> {
        match self.direction {
            Direction::Inbound => self.local.as_ref(),
            Direction::Outbound => self.peer.as_ref(),
        }
    }

    /// The connection as a policy request (no HTTP attributes).
    pub(crate) fn request(&self) -> Request<'_> {
        Request {
            source_id: self.source_id(),
            source_ip: self.client.ip(),
            port: self.dst.port(),
            method: None,
            path: None,
            host: None,
            headers: None,
        }
    }

    /// What a revocation may cover: the peer (with its certificate) and ourselves.
    pub(crate) fn revocable(&self) -> [End<'_>; 2] {
        [
            End {
                id: self.peer.as_ref(),
                serial: self.peer_serial.as_ref(),
            },
            End {
                id: self.local.as_ref(),
                serial: None,
            },
        ]
    }
}
