//! Protocol detection on the first bytes of an inbound connection: never panics, and what it
//! reports is backed by the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use svidcar_proxy::detect::{detect, Detection, MAX_PEEK};

fuzz_target!(|data: &[u8]| {
    let d = detect(data);
    match &d {
        Detection::Tls { alpn } => {
            assert_eq!(data.first(), Some(&0x16), "TLS without a handshake record");
            for p in alpn {
                assert!(!p.is_empty(), "empty ALPN protocol in {alpn:?}");
                assert!(
                    data.windows(p.len()).any(|w| w == p.as_slice()),
                    "ALPN protocol {p:?} is not in the input"
                );
            }
        }
        // The proxy buffers at most MAX_PEEK bytes: it must decide by then.
        Detection::NeedMore => assert!(data.len() < MAX_PEEK, "undecided after {MAX_PEEK} bytes"),
        Detection::NotTls => {}
    }
    // A decision is final: more bytes never change it.
    if d != Detection::NeedMore {
        let mut longer = data.to_vec();
        longer.extend_from_slice(&[0x16, 0x03, 0x01, 0x00]);
        assert_eq!(
            detect(&longer),
            d,
            "decision changed when bytes were appended"
        );
    }
});
