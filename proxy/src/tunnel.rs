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

pub(crate) use pool::{Pool, TunnelError};
pub(crate) use server::serve;

/// HTTP/2 frames we accept, bytes: larger than the 16 KiB default, so bulk data costs fewer
/// frames (the peer still sends what it chooses up to this).
const MAX_FRAME: u32 = 64 * 1024;

/// PING interval on an idle tunnel connection, so a dead peer is noticed.
const KEEPALIVE: Duration = Duration::from_secs(30);

/// How long a PING may go unanswered before the connection is closed.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
