//! X.509-SVID leaf and signing-certificate checks on arbitrary DER: never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use svidcar_identity::{check_leaf, check_signing_cert};

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = check_leaf(data) {
        assert!(!info.id.path().is_empty(), "accepted an ID without a path");
    }
    let _ = check_signing_cert(data);
});
