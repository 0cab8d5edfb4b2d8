//! Pooled, multiplexed mTLS between sidecars (like HBONE). The outbound side keeps long-lived
//! mTLS HTTP/2 connections per (peer tunnel address, required server SPIFFE ID) and carries
//! each app connection as a `CONNECT` stream whose authority is the original destination
//! ([`Pool`]); the inbound side serves the tunnel port, verifies the client SVID once per
//! connection and handles every stream as a connection of its own with that identity
//! ([`serve`]). A peer whose tunnel port cannot be used is reached directly, as before.

mod pool;
mod server;
mod stream;

use std::time::Duration;

pub(crate) use pool::{Carried, Pool, SendError, TunnelBody, TunnelError};
pub(crate) use server::serve;
pub(crate) use stream::StreamGuard;

/// HTTP/2 frames we accept, bytes: larger than the 16 KiB default, so bulk data costs fewer
/// frames (the peer still sends what it chooses up to this).
const MAX_FRAME: u32 = 64 * 1024;

/// PING interval on an idle tunnel connection, so a dead peer is noticed.
const KEEPALIVE: Duration = Duration::from_secs(30);

/// How long a PING may go unanswered before the connection is closed.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Streams reset by us whose late frames are still recognised (and ignored) per pooled
/// connection (a client setting of the HTTP/2 library; servers keep its default).
/// Streams end gracefully (`stream::Graceful`); resets remain for aborts, and a pooled
/// connection carries many short-lived streams, so the HTTP/2 library's small default (10)
/// would turn the peer's frames in flight into protocol errors. For the same reason the
/// library's lifetime cap on such errors per connection (1 024, never reset: it would end a
/// long-lived pooled connection and every stream on it) is lifted: both ends are
/// authenticated sidecars of the mesh.
const RESETS: usize = 1024;
