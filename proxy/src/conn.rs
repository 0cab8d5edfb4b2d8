//! What every proxied connection reports when it ends: one access-log record (target
//! `svidcar::access`) with addresses, identities, bytes, duration, outcome and reason.

use std::net::SocketAddr;
use std::time::Duration;

use svidcar_identity::SpiffeId;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsStatus {
    /// Mesh mTLS with verified SVIDs on both sides.
    MutualTls,
    /// No mesh TLS, for the given reason.
    None(NoTlsReason),
    /// Not decided (refused before that point).
    Unknown,
}

/// The access-log record of one connection.
#[derive(Debug, Clone)]
pub struct ConnRecord {
    /// Inbound or outbound.
    pub direction: Direction,
    /// The connecting side.
    pub client_addr: SocketAddr,
    /// Where the bytes go: original destination, route upstream or app.
    pub dst_addr: Option<SocketAddr>,
    /// Verified client SPIFFE ID (inbound) or our own (outbound).
    pub client_id: Option<SpiffeId>,
    /// Verified server SPIFFE ID (outbound) or our own (inbound).
    pub server_id: Option<SpiffeId>,
    /// TLS status.
    pub tls: TlsStatus,
    /// Bytes from the client side towards the server side.
    pub bytes_up: u64,
    /// Bytes from the server side back to the client.
    pub bytes_down: u64,
    /// `complete`, `idle_timeout`, `cancelled`, `io_error` or `refused`.
    pub outcome: &'static str,
    /// Stable reason label for refusals and errors (`""` when none).
    pub reason: &'static str,
    /// Human detail for the reason.
    pub detail: String,
}

impl ConnRecord {
    /// A fresh record for an accepted connection.
    pub fn new(direction: Direction, client_addr: SocketAddr) -> Self {
        Self {
            direction,
            client_addr,
            dst_addr: None,
            client_id: None,
            server_id: None,
            tls: TlsStatus::Unknown,
            bytes_up: 0,
            bytes_down: 0,
            outcome: "refused",
            reason: "",
            detail: String::new(),
        }
    }

    /// Marks the connection refused.
    pub fn refuse(&mut self, reason: &'static str, detail: impl Into<String>) {
        self.outcome = "refused";
        self.reason = reason;
        self.detail = detail.into();
    }

    /// Emits the access-log event. Refusals caused by peers are logged at `info` (they are
    /// security-relevant but not our errors).
    pub fn emit(&self, elapsed: Duration) {
        let (tls, no_tls_reason) = match self.tls {
            TlsStatus::MutualTls => ("mutual_tls", ""),
            TlsStatus::None(r) => ("none", r.as_str()),
            TlsStatus::Unknown => ("unknown", ""),
        };
        let id = |i: &Option<SpiffeId>| i.as_ref().map(|i| i.to_string()).unwrap_or_default();
        let dst = self.dst_addr.map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(
            target: "svidcar::access",
            direction = self.direction.as_str(),
            client.addr = %self.client_addr,
            client.id = %id(&self.client_id),
            dst.addr = %dst,
            server.id = %id(&self.server_id),
            tls,
            no_tls_reason,
            bytes_up = self.bytes_up,
            bytes_down = self.bytes_down,
            duration_ms = elapsed.as_millis() as u64,
            outcome = self.outcome,
            reason = self.reason,
            detail = %self.detail,
            "connection closed"
        );
    }
}
