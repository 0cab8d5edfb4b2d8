//! The facts of one proxied connection, each established once and carried as a type: the
//! addresses in their roles, our own identity, the TLS status (with the verified peer ID), the
//! bytes moved and how it ended. The access-log line is written from it by `access_log`, the
//! metric labels by `metrics`.

use std::fmt;
use std::net::SocketAddr;

use svidcar_identity::tls::CertSerial;
use svidcar_identity::SpiffeId;

pub use crate::orig_dst::OrigDstAddr;
use crate::refusal::Refusal;

/// Which side of the proxy handled the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// App → peer.
    Outbound,
    /// Peer → app.
    Inbound,
}

impl Direction {
    /// Lowercase label.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// The address of the connecting side (the app on outbound, the peer on inbound).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where the proxy sends the bytes, in its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DstAddr {
    /// The original destination iptables redirected (transparent outbound).
    Original(OrigDstAddr),
    /// A static route's upstream (explicit outbound).
    Route(SocketAddr),
    /// The app behind the inbound side.
    App(SocketAddr),
}

impl DstAddr {
    /// The socket address.
    pub fn addr(self) -> SocketAddr {
        match self {
            DstAddr::Original(OrigDstAddr(a)) | DstAddr::Route(a) | DstAddr::App(a) => a,
        }
    }
}

impl fmt::Display for DstAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.addr().fmt(f)
    }
}

/// Why a connection carried no mesh mTLS (the `tls="none"` cases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoTlsReason {
    /// Outbound destination outside the mesh.
    PassthroughDestination,
    /// Plaintext on a PERMISSIVE inbound port.
    PermissivePlaintext,
    /// The app's own TLS (no mesh ALPN) on a PERMISSIVE port, passed through untouched.
    PermissiveOtherTls,
    /// The client sent nothing within the detect timeout on a PERMISSIVE port (server-first
    /// protocol).
    ServerFirst,
}

impl NoTlsReason {
    /// Stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            NoTlsReason::PassthroughDestination => "passthrough_destination",
            NoTlsReason::PermissivePlaintext => "permissive_plaintext",
            NoTlsReason::PermissiveOtherTls => "permissive_other_tls",
            NoTlsReason::ServerFirst => "server_first",
        }
    }
}

/// How the connection was secured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsStatus {
    /// Mesh mTLS; `peer` is the SPIFFE ID our verifier accepted for the other side.
    MutualTls {
        /// The verified peer: the client on inbound, the server on outbound.
        peer: SpiffeId,
        /// The serial of the certificate it presented (what revoking one SVID names).
        serial: CertSerial,
    },
    /// No mesh TLS, for the given reason.
    None(NoTlsReason),
    /// Not decided (refused before that point).
    Unknown,
}

impl TlsStatus {
    /// `mutual_tls`, `none` or `unknown`.
    pub fn mode(&self) -> &'static str {
        match self {
            TlsStatus::MutualTls { .. } => "mutual_tls",
            TlsStatus::None(_) => "none",
            TlsStatus::Unknown => "unknown",
        }
    }

    /// The verified peer ID, if mutual TLS.
    pub fn peer(&self) -> Option<&SpiffeId> {
        match self {
            TlsStatus::MutualTls { peer, .. } => Some(peer),
            _ => None,
        }
    }

    /// The verified peer certificate's serial, if mutual TLS.
    pub fn peer_serial(&self) -> Option<&CertSerial> {
        match self {
            TlsStatus::MutualTls { serial, .. } => Some(serial),
            _ => None,
        }
    }
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Both sides closed normally.
    Complete,
    /// Nothing moved for the idle timeout.
    IdleTimeout,
    /// Closed by us: drain, a policy change (then the refusal says `policy_revoked`) or a
    /// revocation (`identity_revoked`).
    Cancelled,
    /// An I/O error ended it.
    IoError,
    /// Refused before bytes could flow.
    Refused,
}

impl Outcome {
    /// Stable label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::IdleTimeout => "idle_timeout",
            Outcome::Cancelled => "cancelled",
            Outcome::IoError => "io_error",
            Outcome::Refused => "refused",
        }
    }
}

/// What carries a connection between the sidecars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Carrier {
    /// A TCP connection of its own (with its own mTLS handshake, or plaintext).
    #[default]
    Connection,
    /// An HTTP/2 `CONNECT` stream of a pooled mTLS tunnel connection.
    Tunnel,
}

impl Carrier {
    /// Lowercase label.
    pub fn as_str(self) -> &'static str {
        match self {
            Carrier::Connection => "connection",
            Carrier::Tunnel => "tunnel",
        }
    }
}

/// The record of one connection.
#[derive(Debug, Clone)]
pub struct ConnRecord {
    /// Inbound or outbound.
    pub direction: Direction,
    /// The connecting side.
    pub client_addr: ClientAddr,
    /// Where the bytes go.
    pub dst_addr: Option<DstAddr>,
    /// Our own SPIFFE ID when the connection started (`None` without an SVID).
    pub local_id: Option<SpiffeId>,
    /// How the connection was secured; carries the verified peer ID.
    pub tls: TlsStatus,
    /// Its own connection to the peer, or a stream of a pooled tunnel.
    pub carrier: Carrier,
    /// Bytes from the client side towards the server side.
    pub bytes_up: u64,
    /// Bytes from the server side back to the client.
    pub bytes_down: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// Why it was refused or closed early, if it was.
    pub refusal: Option<Refusal>,
}

impl ConnRecord {
    /// A fresh record for an accepted connection.
    pub fn new(direction: Direction, client_addr: SocketAddr) -> Self {
        Self {
            direction,
            client_addr: ClientAddr(client_addr),
            dst_addr: None,
            local_id: None,
            tls: TlsStatus::Unknown,
            carrier: Carrier::Connection,
            bytes_up: 0,
            bytes_down: 0,
            outcome: Outcome::Refused,
            refusal: None,
        }
    }

    /// Marks the connection refused.
    pub fn refuse(&mut self, why: Refusal) {
        self.outcome = Outcome::Refused;
        self.refusal = Some(why);
    }

    /// The connecting side's SPIFFE ID: the verified peer on inbound, ours on outbound.
    pub fn client_id(&self) -> Option<&SpiffeId> {
        match self.direction {
            Direction::Inbound => self.tls.peer(),
            Direction::Outbound => self.local_id.as_ref(),
        }
    }

    /// The accepting side's SPIFFE ID: ours on inbound, the verified server on outbound.
    pub fn server_id(&self) -> Option<&SpiffeId> {
        match self.direction {
            Direction::Inbound => self.local_id.as_ref(),
            Direction::Outbound => self.tls.peer(),
        }
    }

    /// The refusal label, `""` when none.
    pub fn reason(&self) -> &'static str {
        self.refusal.as_ref().map_or("", Refusal::label)
    }
}
