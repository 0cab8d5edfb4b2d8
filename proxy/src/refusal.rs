//! Why a connection was refused or closed early: one typed value that carries its stable label
//! (for the access log and metrics), who caused it, and from that the log level and — for the
//! HTTP layer — the response status. Every reason label the proxy emits comes from here.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use svidcar_identity::tls::HandshakeError;
use tokio::time::Instant;

use crate::authz::Revoked;
use crate::conn::Direction;

/// Who caused a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The peer (or the app's client): a bad certificate, plaintext on a STRICT port, a denied
    /// caller. Expected in normal operation; logged at `debug`.
    Peer,
    /// Our own configuration or state: no SVID, a deny fallback, a redirect loop, the
    /// connection cap. Operators must act; logged at `warn`.
    Local,
    /// The environment or a bug: I/O errors, unreachable upstreams. Logged at `info`.
    Internal,
}

impl Cause {
    /// Lowercase label.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Peer => "peer",
            Cause::Local => "local",
            Cause::Internal => "internal",
        }
    }
}

/// Why a connection was refused, or closed before it completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The mTLS handshake failed (the label is the handshake's own, e.g. `expired`).
    Handshake(HandshakeError),
    /// The TLS handshake did not finish within the handshake timeout.
    HandshakeTimeout,
    /// Plaintext on a STRICT port.
    PlaintextRefused,
    /// Nothing arrived within the detect timeout on a STRICT port.
    NoClientHello,
    /// A TLS record header arrived on a STRICT port, but the client closed the connection or
    /// went silent (detect timeout) before the ClientHello was complete.
    TruncatedClientHello,
    /// Outbound: the peer closed (or reset) the connection during the mTLS handshake without a
    /// TLS alert. A server proxy at its `limits.max_connections` refuses this way.
    PeerRefused(String),
    /// An HTTP request the proxy will not pass on (e.g. a path with a broken escape).
    BadRequest(&'static str),
    /// Authorization policy denied the caller.
    PolicyDenied(String),
    /// A new policy no longer allows this open connection.
    PolicyRevoked,
    /// The peer (its SPIFFE ID or its certificate) or our own identity is revoked mesh-wide:
    /// a new connection is refused, an open one closed.
    IdentityRevoked(Revoked),
    /// Outbound to the mesh without a valid SVID of our own (fail closed).
    NoLocalSvid,
    /// The mesh TLS client configuration could not be built.
    TlsConfig(String),
    /// No destination entry and the fallback is deny.
    DestinationDenied,
    /// The connection was addressed to the proxy itself (forwarding would loop).
    Loop(Direction),
    /// `SO_ORIGINAL_DST` could not be read (not redirected by iptables).
    NoOriginalDst(String),
    /// Explicit inbound mode without an app address.
    NoAppAddress,
    /// The open-connection limit was reached.
    MaxConnections(usize),
    /// The upstream (peer proxy, destination or app) refused or failed the TCP connect.
    ConnectFailed(String),
    /// The TCP connect did not finish within the connect timeout.
    ConnectTimeout(String),
    /// Outbound: the peer's tunnel server answered the stream's `CONNECT` with an error
    /// status (the words carry it).
    TunnelRejected(String),
    /// Reading or writing the connection failed.
    Io(String),
}

impl Refusal {
    /// Stable, low-cardinality label (access log `reason`, metric label `reason`).
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Handshake(e) => e.label(),
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::PlaintextRefused => "plaintext_refused",
            Refusal::NoClientHello => "no_client_hello",
            Refusal::TruncatedClientHello => "truncated_client_hello",
            Refusal::PeerRefused(_) => "peer_refused",
            Refusal::BadRequest(_) => "bad_request",
            Refusal::PolicyDenied(_) => "policy_denied",
            Refusal::PolicyRevoked => "policy_revoked",
            Refusal::IdentityRevoked(_) => "identity_revoked",
            Refusal::NoLocalSvid => "no_local_svid",
            Refusal::TlsConfig(_) => "tls_config",
            Refusal::DestinationDenied => "destination_denied",
            Refusal::Loop(_) => "loop",
            Refusal::NoOriginalDst(_) => "no_original_dst",
            Refusal::NoAppAddress => "config",
            Refusal::MaxConnections(_) => "max_connections",
            Refusal::ConnectFailed(_) => "connect_failed",
            Refusal::ConnectTimeout(_) => "connect_timeout",
            Refusal::TunnelRejected(_) => "tunnel_rejected",
            Refusal::Io(_) => "io_error",
        }
    }

    /// Who caused it.
    pub fn cause(&self) -> Cause {
        match self {
            Refusal::Handshake(e) if e.is_local() => Cause::Local,
            Refusal::Handshake(HandshakeError::Io(_)) => Cause::Internal,
            Refusal::Handshake(_)
            | Refusal::HandshakeTimeout
            | Refusal::PlaintextRefused
            | Refusal::NoClientHello
            | Refusal::TruncatedClientHello
            | Refusal::PeerRefused(_)
            | Refusal::TunnelRejected(_)
            | Refusal::BadRequest(_)
            | Refusal::PolicyDenied(_)
            | Refusal::IdentityRevoked(_) => Cause::Peer,
            Refusal::PolicyRevoked
            | Refusal::NoLocalSvid
            | Refusal::TlsConfig(_)
            | Refusal::DestinationDenied
            | Refusal::Loop(_)
            | Refusal::NoOriginalDst(_)
            | Refusal::NoAppAddress
            | Refusal::MaxConnections(_) => Cause::Local,
            Refusal::ConnectFailed(_) | Refusal::ConnectTimeout(_) | Refusal::Io(_) => {
                Cause::Internal
            }
        }
    }

    /// The log level of the diagnostic event for this refusal (the access-log record itself is
    /// always written): peer-caused at `debug`, the environment at `info`, our own state or
    /// configuration at `warn` — except a revocation, which an operator's policy change or
    /// revocation asked for, and which they want to see used (`info`).
    pub fn level(&self) -> tracing::Level {
        match (self, self.cause()) {
            (Refusal::PolicyRevoked | Refusal::IdentityRevoked(_), _) => tracing::Level::INFO,
            (_, Cause::Peer) => tracing::Level::DEBUG,
            (_, Cause::Local) => tracing::Level::WARN,
            (_, Cause::Internal) => tracing::Level::INFO,
        }
    }

    /// The HTTP status an HTTP-aware listener answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            Refusal::PolicyDenied(_)
            | Refusal::PolicyRevoked
            | Refusal::IdentityRevoked(_)
            | Refusal::DestinationDenied => 403,
            Refusal::ConnectTimeout(_) | Refusal::HandshakeTimeout => 504,
            Refusal::Handshake(e) if e.is_local() => 503,
            Refusal::ConnectFailed(_)
            | Refusal::Handshake(_)
            | Refusal::TunnelRejected(_)
            | Refusal::Io(_) => 502,
            Refusal::PlaintextRefused
            | Refusal::NoClientHello
            | Refusal::TruncatedClientHello
            | Refusal::BadRequest(_) => 400,
            Refusal::PeerRefused(_)
            | Refusal::NoLocalSvid
            | Refusal::TlsConfig(_)
            | Refusal::Loop(_)
            | Refusal::NoOriginalDst(_)
            | Refusal::NoAppAddress
            | Refusal::MaxConnections(_) => 503,
        }
    }

    /// Writes the diagnostic event at the level the cause calls for. `warn` events are written
    /// at most once per [`WARN_EVERY`] per label, so a proxy that lost its SVID or hit its
    /// connection cap does not add a warning per connection (each is still in the access log
    /// and the metrics).
    pub fn log(&self) {
        self.log_as("connection refused")
    }

    /// [`Self::log`] for a connection that was carrying bytes when it ended (a reset, a
    /// revocation): the same event, worded as what happened.
    pub fn log_ended(&self) {
        self.log_as("connection ended early")
    }

    fn log_as(&self, what: &'static str) {
        let (reason, cause) = (self.label(), self.cause().as_str());
        let level = self.level();
        if level == tracing::Level::WARN && !warn_due(reason, Instant::now()) {
            return;
        }
        match level {
            tracing::Level::WARN => tracing::warn!(reason, cause, detail = %self, "{what}"),
            tracing::Level::INFO => tracing::info!(reason, cause, detail = %self, "{what}"),
            _ => tracing::debug!(reason, cause, detail = %self, "{what}"),
        }
    }
}

/// The shortest interval between two `warn` events for the same refusal label.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// Whether a `warn` for `label` may be written at `now` (and if so, remembers it).
fn warn_due(label: &'static str, now: Instant) -> bool {
    static LAST: OnceLock<Mutex<HashMap<&'static str, Instant>>> = OnceLock::new();
    let Ok(mut last) = LAST.get_or_init(Default::default).lock() else {
        return true;
    };
    match last.get(label) {
        Some(t) if now.saturating_duration_since(*t) < WARN_EVERY => false,
        _ => {
            last.insert(label, now);
            true
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Handshake(e) => write!(f, "{e}"),
            Refusal::HandshakeTimeout => f.write_str("TLS handshake timed out"),
            Refusal::PlaintextRefused => f.write_str("port is STRICT: mTLS required"),
            Refusal::NoClientHello => f.write_str("no TLS ClientHello before the detect timeout"),
            Refusal::TruncatedClientHello => f.write_str(
                "TLS ClientHello cut short: the client closed or went silent before it was complete",
            ),
            Refusal::PeerRefused(e) => write!(
                f,
                "the peer closed the connection during the TLS handshake ({e}); \
                 a server proxy at its connection limit refuses this way"
            ),
            Refusal::BadRequest(what) => write!(f, "bad request: {what}"),
            Refusal::PolicyDenied(why) => f.write_str(why),
            Refusal::PolicyRevoked => f.write_str("a new policy no longer allows this connection"),
            Refusal::IdentityRevoked(r) => r.fmt(f),
            Refusal::NoLocalSvid => f.write_str("no valid local SVID"),
            Refusal::TlsConfig(e) => write!(f, "TLS configuration: {e}"),
            Refusal::DestinationDenied => f.write_str("no destination entry and fallback is deny"),
            Refusal::Loop(Direction::Inbound) => {
                f.write_str("connection addressed to the inbound port itself")
            }
            Refusal::Loop(Direction::Outbound) => {
                f.write_str("connection addressed to the proxy itself")
            }
            Refusal::NoOriginalDst(e) => write!(f, "SO_ORIGINAL_DST: {e}"),
            Refusal::NoAppAddress => f.write_str("explicit inbound without app address"),
            Refusal::MaxConnections(max) => write!(f, "limit of {max} open connections reached"),
            Refusal::TunnelRejected(e) => write!(f, "the peer's tunnel refused the stream: {e}"),
            Refusal::ConnectFailed(e) | Refusal::ConnectTimeout(e) | Refusal::Io(e) => {
                f.write_str(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use svidcar_identity::SvidError;

    use super::*;

    /// One value of every variant, nested handshake and SVID reasons included. The `match`
    /// below fails to compile when a variant is added and not listed here.
    fn every_refusal() -> Vec<Refusal> {
        let s = String::new;
        let svid = [
            SvidError::NoCertificate,
            SvidError::Malformed(s()),
            SvidError::ChainTooLong,
            SvidError::NoSpiffeId,
            SvidError::MultipleUriSans(2),
            SvidError::InvalidSpiffeId(
                svidcar_identity::SpiffeId::parse("not-spiffe").unwrap_err(),
            ),
            SvidError::IdWithoutPath(s()),
            SvidError::LeafIsCa,
            SvidError::NoKeyUsage,
            SvidError::NoDigitalSignature,
            SvidError::LeafKeyCertSign,
            SvidError::LeafCrlSign,
            SvidError::SigningCertNotCa,
            SvidError::SigningCertNoKeyCertSign,
            SvidError::UnknownTrustDomain(s()),
            SvidError::UntrustedChain(s()),
            SvidError::Expired,
            SvidError::NotYetValid,
            SvidError::WrongEku(svidcar_identity::Purpose::Client),
            SvidError::UnexpectedId {
                expected: s(),
                got: s(),
            },
            SvidError::KeyMismatch,
        ];
        let mut all: Vec<Refusal> = svid
            .into_iter()
            .map(|e| Refusal::Handshake(HandshakeError::PeerSvid(e)))
            .collect();
        all.extend(
            [
                HandshakeError::NoPeerCertificate,
                HandshakeError::NoLocalSvid(svidcar_identity::tls::NoLocalSvid),
                HandshakeError::PeerRequiresCertificate,
                HandshakeError::PeerAlert(s()),
                HandshakeError::NoApplicationProtocol,
                HandshakeError::IncompatiblePeer(s()),
                HandshakeError::InvalidCertificate(s()),
                HandshakeError::Tls(s()),
                HandshakeError::Io(s()),
            ]
            .into_iter()
            .map(Refusal::Handshake),
        );
        all.extend([
            Refusal::HandshakeTimeout,
            Refusal::PlaintextRefused,
            Refusal::NoClientHello,
            Refusal::TruncatedClientHello,
            Refusal::PeerRefused(s()),
            Refusal::BadRequest("x"),
            Refusal::PolicyDenied(s()),
            Refusal::PolicyRevoked,
            Refusal::IdentityRevoked(Revoked {
                what: s(),
                reason: s(),
            }),
            Refusal::NoLocalSvid,
            Refusal::TlsConfig(s()),
            Refusal::DestinationDenied,
            Refusal::Loop(Direction::Inbound),
            Refusal::Loop(Direction::Outbound),
            Refusal::NoOriginalDst(s()),
            Refusal::NoAppAddress,
            Refusal::MaxConnections(1),
            Refusal::ConnectFailed(s()),
            Refusal::ConnectTimeout(s()),
            Refusal::TunnelRejected(s()),
            Refusal::Io(s()),
        ]);
        for r in &all {
            // Exhaustiveness guard: a new variant must be added to the list above.
            match r {
                Refusal::Handshake(_)
                | Refusal::HandshakeTimeout
                | Refusal::PlaintextRefused
                | Refusal::NoClientHello
                | Refusal::TruncatedClientHello
                | Refusal::PeerRefused(_)
                | Refusal::BadRequest(_)
                | Refusal::PolicyDenied(_)
                | Refusal::PolicyRevoked
                | Refusal::IdentityRevoked(_)
                | Refusal::NoLocalSvid
                | Refusal::TlsConfig(_)
                | Refusal::DestinationDenied
                | Refusal::Loop(_)
                | Refusal::NoOriginalDst(_)
                | Refusal::NoAppAddress
                | Refusal::MaxConnections(_)
                | Refusal::ConnectFailed(_)
                | Refusal::ConnectTimeout(_)
                | Refusal::TunnelRejected(_)
                | Refusal::Io(_) => {}
            }
        }
        all
    }

    #[test]
    fn every_refusal_label_is_documented_in_the_metrics_reference() {
        let doc = include_str!("../../docs/metrics.md");
        let missing: Vec<&str> = every_refusal()
            .iter()
            .map(Refusal::label)
            .filter(|l| !doc.contains(&format!("`{l}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "labels missing from docs/metrics.md: {missing:?}"
        );
    }

    #[test]
    fn labels_are_snake_case_and_statuses_are_errors() {
        for r in every_refusal() {
            let l = r.label();
            assert!(
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{l}"
            );
            assert!((400..600).contains(&r.http_status()), "{l}");
        }
    }

    #[test]
    fn causes_levels_and_statuses_are_pinned() {
        use tracing::Level;
        let ours = || HandshakeError::NoLocalSvid(svidcar_identity::tls::NoLocalSvid);
        let table: Vec<(Refusal, Cause, Level, u16)> = vec![
            (Refusal::PlaintextRefused, Cause::Peer, Level::DEBUG, 400),
            (Refusal::NoClientHello, Cause::Peer, Level::DEBUG, 400),
            (
                Refusal::TruncatedClientHello,
                Cause::Peer,
                Level::DEBUG,
                400,
            ),
            (
                Refusal::PeerRefused(String::new()),
                Cause::Peer,
                Level::DEBUG,
                503,
            ),
            (
                Refusal::Handshake(HandshakeError::PeerSvid(SvidError::Expired)),
                Cause::Peer,
                Level::DEBUG,
                502,
            ),
            (Refusal::Handshake(ours()), Cause::Local, Level::WARN, 503),
            (
                Refusal::Handshake(HandshakeError::Io(String::new())),
                Cause::Internal,
                Level::INFO,
                502,
            ),
            (Refusal::HandshakeTimeout, Cause::Peer, Level::DEBUG, 504),
            (
                Refusal::PolicyDenied(String::new()),
                Cause::Peer,
                Level::DEBUG,
                403,
            ),
            (Refusal::PolicyRevoked, Cause::Local, Level::INFO, 403),
            (
                Refusal::IdentityRevoked(Revoked {
                    what: "spiffe://td/a".into(),
                    reason: "leaked".into(),
                }),
                Cause::Peer,
                Level::INFO,
                403,
            ),
            (Refusal::NoLocalSvid, Cause::Local, Level::WARN, 503),
            (Refusal::DestinationDenied, Cause::Local, Level::WARN, 403),
            (Refusal::MaxConnections(1), Cause::Local, Level::WARN, 503),
            (
                Refusal::Loop(Direction::Inbound),
                Cause::Local,
                Level::WARN,
                503,
            ),
            (
                Refusal::ConnectFailed(String::new()),
                Cause::Internal,
                Level::INFO,
                502,
            ),
            (
                Refusal::ConnectTimeout(String::new()),
                Cause::Internal,
                Level::INFO,
                504,
            ),
            (
                Refusal::TunnelRejected(String::new()),
                Cause::Peer,
                Level::DEBUG,
                502,
            ),
            (
                Refusal::Io(String::new()),
                Cause::Internal,
                Level::INFO,
                502,
            ),
        ];
        for (r, cause, level, status) in table {
            assert_eq!(
                (r.cause(), r.level(), r.http_status()),
                (cause, level, status),
                "{r:?}"
            );
        }
        assert_eq!(
            ours().is_local(),
            Refusal::Handshake(ours()).cause() == Cause::Local
        );
    }

    #[test]
    fn warnings_are_rate_limited_per_label() {
        let t0 = Instant::now();
        assert!(warn_due("test_label_a", t0));
        assert!(!warn_due("test_label_a", t0 + Duration::from_secs(1)));
        assert!(warn_due("test_label_b", t0 + Duration::from_secs(1)));
        assert!(warn_due("test_label_a", t0 + WARN_EVERY));
    }

    #[test]
    fn the_inbound_loop_keeps_its_message() {
        assert_eq!(
            Refusal::Loop(Direction::Inbound).to_string(),
            "connection addressed to the inbound port itself"
        );
    }
}
