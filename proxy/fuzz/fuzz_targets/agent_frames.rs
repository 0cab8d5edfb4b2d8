//! The agent's rewriter of Workload API clients' HTTP/2 bytes (`agent/frames.rs`: follows the
//! frames and the client's HPACK table, mends `:authority`, re-encodes header blocks): never
//! panics, gives the same bytes however the input is split into reads, and what it writes
//! needs no more mending.
//!
//! Input: two bytes, a split offset (little-endian), then the client's bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use svidcar_control::agent::fuzz_rewrite_client_bytes as rewrite;

fuzz_target!(|data: &[u8]| {
    let (split, bytes) = match data {
        [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
        _ => (0, data),
    };
    let (whole, followed) = rewrite(&[bytes]);
    let (head, tail) = bytes.split_at(split.min(bytes.len()));
    assert_eq!(
        rewrite(&[head, tail]),
        (whole.clone(), followed),
        "the output depends on where reads end"
    );
    if followed {
        // Every header block was re-encoded: doing it again changes nothing.
        assert_eq!(rewrite(&[&whole]), (whole, true), "not a fixed point");
    }
});
