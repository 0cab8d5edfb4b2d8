//! PEM certificate chains and private keys (the spiffe-helper file layout) from arbitrary bytes:
//! never panic; the certificates found go on to the leaf check, as when loading credentials.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use svidcar_identity::check_leaf;
use svidcar_identity::pem_source::{parse_certs, parse_key};

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.pem");
    if let Ok(certs) = parse_certs(path, data) {
        assert!(!certs.is_empty(), "Ok with no certificate");
        let _ = check_leaf(&certs[0]);
    }
    let _ = parse_key(path, data);
});
