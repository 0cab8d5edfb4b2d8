//! HTTP detection on the first bytes an inbound client sends: never panics, decides within
//! `MAX_REQUEST_LINE` bytes, and a decision never changes when more bytes arrive.

#![no_main]

use libfuzzer_sys::fuzz_target;
use svidcar_proxy::detect::{detect_http, HttpDetection, MAX_REQUEST_LINE};

/// Longer inputs than this must be decided (the proxy stops reading at `MAX_REQUEST_LINE`).
const DECIDED_BY: usize = MAX_REQUEST_LINE + 20;

/// Detects, and checks the length bound.
fn detect_bounded(bytes: &[u8]) -> HttpDetection {
    let d = detect_http(bytes);
    if bytes.len() > DECIDED_BY {
        assert_ne!(
            d,
            HttpDetection::NeedMore,
            "undecided after {} bytes",
            bytes.len()
        );
    }
    d
}

/// `prefix` arrived first, `whole` once more bytes were appended to it.
fn check_monotone(prefix: &[u8], whole: &[u8]) {
    debug_assert!(whole.starts_with(prefix));
    let first = detect_bounded(prefix);
    let then = detect_bounded(whole);
    if first != HttpDetection::NeedMore {
        assert_eq!(
            then,
            first,
            "decision changed when {} bytes were appended to {} bytes",
            whole.len() - prefix.len(),
            prefix.len()
        );
    }
}

fuzz_target!(|input: &[u8]| {
    // The first two bytes choose where the rest is split: what arrived first, then the others.
    let (cut, data) = match input {
        [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
        _ => (0, input),
    };
    let cut = cut % (data.len() + 1);
    check_monotone(&data[..cut], data);

    // libFuzzer keeps inputs short: also grow the input past the bound, by repeating it and by
    // padding it with bytes a request line may hold, so the bound and appending are checked there.
    if !data.is_empty() {
        let repeated = data.repeat(DECIDED_BY / data.len() + 1);
        check_monotone(data, &repeated);
        let mut padded = data.to_vec();
        padded.resize(DECIDED_BY + 1, b'a');
        check_monotone(data, &padded);
    }
});
