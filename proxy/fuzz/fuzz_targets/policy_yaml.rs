//! Policy files: parsing arbitrary text never panics, and neither does evaluating whatever
//! policies it yields.

#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use svidcar_identity::SpiffeId;
use svidcar_policy::{evaluate, parse_file, DefaultPolicy, PolicySet, Request};

static WORKLOAD: LazyLock<SpiffeId> =
    LazyLock::new(|| SpiffeId::parse("spiffe://example.org/ns/shop/sa/backend").expect("valid"));
static CALLER: LazyLock<SpiffeId> =
    LazyLock::new(|| SpiffeId::parse("spiffe://example.org/ns/shop/sa/frontend").expect("valid"));

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (policies, _errors) = parse_file("fuzz.yaml", &text);

    let ip = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
    let requests = [
        // mTLS, HTTP.
        Request {
            source_id: Some(&*CALLER),
            source_ip: ip,
            port: 8080,
            method: Some("GET"),
            path: Some("/api/items"),
            host: Some("api.example.org:8080"),
            headers: Some(&HEADERS),
        },
        // Plaintext, opaque TCP.
        Request {
            source_id: None,
            source_ip: ip,
            port: 15090,
            method: None,
            path: None,
            host: None,
            headers: None,
        },
    ];
    for request in &requests {
        for default in [
            DefaultPolicy::AllowAll,
            DefaultPolicy::AllAuthenticated,
            DefaultPolicy::Deny,
        ] {
            let _ = evaluate(&policies, &WORKLOAD, request, default);
        }
    }
    let set = PolicySet {
        version: String::new(),
        policies,
    };
    let _ = set.mtls_for(&WORKLOAD, 8080);
});

/// Headers for `request.headers[...]` conditions.
#[derive(Debug)]
struct FixedHeaders;

impl svidcar_policy::Headers for FixedHeaders {
    fn values(&self, name: &str) -> Vec<&str> {
        match name {
            "x-tenant" => vec!["blue", "green"],
            "user-agent" => vec!["curl/8"],
            _ => Vec::new(),
        }
    }
}

static HEADERS: FixedHeaders = FixedHeaders;
