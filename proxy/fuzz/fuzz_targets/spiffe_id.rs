//! SPIFFE ID and trust-domain parsing: never panics, and whatever parses round-trips.

#![no_main]

use libfuzzer_sys::fuzz_target;
use svidcar_identity::{SpiffeId, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);

    if let Ok(id) = SpiffeId::parse(&s) {
        assert_eq!(id.as_str(), s, "parse changed the text");
        assert_eq!(
            SpiffeId::parse(id.as_str()).as_ref(),
            Ok(&id),
            "re-parse differs"
        );
        assert_eq!(
            format!("spiffe://{}{}", id.trust_domain_str(), id.path()),
            id.as_str(),
            "trust domain + path do not rebuild the ID"
        );
        let td = id.trust_domain();
        assert_eq!(td.as_str(), id.trust_domain_str());
        assert_eq!(TrustDomain::parse(td.as_str()).as_ref(), Ok(&td));
        assert_eq!(SpiffeId::from_parts(&td, id.path()).as_ref(), Ok(&id));
    }

    if let Ok(td) = TrustDomain::parse(&s) {
        assert_eq!(
            TrustDomain::parse(td.as_str()).as_ref(),
            Ok(&td),
            "re-parse differs"
        );
        let own = SpiffeId::parse(&td.id_string()).expect("a trust domain's own ID parses");
        assert_eq!(own.trust_domain(), td);
        assert!(own.path().is_empty());
    }
});
