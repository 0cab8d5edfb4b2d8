//! The headers of an app request carried over a tunnel connection (`svidcar-dst`,
//! `svidcar-orig-proto`), as the receiving sidecar parses them: never panics, and whatever it
//! accepts writes back to the same values.

#![no_main]

use libfuzzer_sys::fuzz_target;
use svidcar_api::tunnel::parse_target;

fuzz_target!(|input: &[u8]| {
    // The first byte chooses where the two header values split (and whether either is absent).
    let (sel, data) = match input {
        [s, rest @ ..] => (*s, rest),
        [] => (0, input),
    };
    let cut = usize::from(sel >> 2) % (data.len() + 1);
    let (dst, proto) = data.split_at(cut);
    let dst = (sel & 1 == 0).then_some(dst);
    let proto = (sel & 2 == 0).then_some(proto);
    if let Ok((addr, p)) = parse_target(dst, proto) {
        let again = parse_target(
            Some(addr.to_string().as_bytes()),
            Some(p.as_str().as_bytes()),
        );
        assert_eq!(again, Ok((addr, p)));
        assert_eq!(proto, Some(p.as_str().as_bytes()));
    }
});
