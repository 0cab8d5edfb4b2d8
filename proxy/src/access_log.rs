//! The access log: one record per connection (target `svidcar::access`) with addresses,
//! identities, TLS status, bytes, duration, outcome and the refusal's label, cause and detail.

use std::fmt;
use std::time::Duration;

use svidcar_identity::SpiffeId;

use crate::conn::{ConnRecord, TlsStatus};

/// Writes the access-log record of a finished connection.
pub(crate) fn emit(rec: &ConnRecord, elapsed: Duration) {
    let no_tls_reason = match rec.tls {
        TlsStatus::None(r) => r.as_str(),
        _ => "",
    };
    fn id(i: Option<&SpiffeId>) -> &str {
        i.map_or("", SpiffeId::as_str)
    }
    let (reason, cause) = match &rec.refusal {
        Some(r) => (r.label(), r.cause().as_str()),
        None => ("", ""),
    };
    tracing::info!(
        target: "svidcar::access",
        direction = rec.direction.as_str(),
        client.addr = %rec.client_addr,
        client.id = %id(rec.client_id()),
        dst.addr = %OrEmpty(rec.dst_addr),
        server.id = %id(rec.server_id()),
        tls = rec.tls.mode(),
        carrier = rec.carrier.as_str(),
        no_tls_reason,
        bytes_up = rec.bytes_up,
        bytes_down = rec.bytes_down,
        duration_ms = elapsed.as_millis() as u64,
        outcome = rec.outcome.as_str(),
        reason,
        cause,
        detail = %OrEmpty(rec.refusal.as_ref()),
        "connection closed"
    );
}

/// Displays the value, or nothing for `None` (written by the subscriber, not into a string of
/// our own first).
struct OrEmpty<T>(Option<T>);

impl<T: fmt::Display> fmt::Display for OrEmpty<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => Ok(()),
        }
    }
}

/// Longest HTTP path written to a log record or a decision event, in bytes.
pub(crate) const MAX_LOGGED_PATH: usize = 256;

/// `path` cut at [`MAX_LOGGED_PATH`] bytes on a character boundary (policy always sees the
/// whole path; only what is written down is bounded).
pub(crate) fn logged_path(path: &str) -> &str {
    let mut end = path.len().min(MAX_LOGGED_PATH);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    &path[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_paths_are_cut_on_a_character_boundary() {
        let p = format!("/{}", "é".repeat(200));
        let b = logged_path(&p);
        assert!(b.len() <= MAX_LOGGED_PATH && b.len() > MAX_LOGGED_PATH - 2 && p.starts_with(b));
        assert_eq!(logged_path("/short"), "/short");
    }
}
