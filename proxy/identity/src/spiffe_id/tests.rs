//! SPIFFE ID and trust-domain parsing, case by case.
//!
//! Cases derived from the SPIFFE ID specification and the go-spiffe v2 and rust-spiffe (`spiffe`
//! crate) test vectors; expected outcomes (our [`IdError`] kinds) per our reading of the spec.
//! The original vectors can also be run as they are: see `.ci/conformance/tests/spiffe.rs` (a CI-only stage).

use super::*;
use IdError::*;

/// Valid SPIFFE IDs: input, then the trust domain and the path it parses into. Every byte the spec
/// allows in a trust domain (`[a-z0-9._-]`) and in a path segment (`[a-zA-Z0-9._-]`), IDs without
/// a path, IP-like trust domains and segments made only of dots beyond `.` and `..`.
const VALID_IDS: &[(&str, &str, &str)] = &[
    ("spiffe://trustdomain", "trustdomain", ""),
    ("spiffe://trustdomain-/path", "trustdomain-", "/path"),
    ("spiffe://trustdomain/path-", "trustdomain", "/path-"),
    ("spiffe://trustdomain./path", "trustdomain.", "/path"),
    ("spiffe://trustdomain/path.", "trustdomain", "/path."),
    ("spiffe://trustdomain0/path", "trustdomain0", "/path"),
    ("spiffe://trustdomain/path0", "trustdomain", "/path0"),
    ("spiffe://trustdomain1/path", "trustdomain1", "/path"),
    ("spiffe://trustdomain/path1", "trustdomain", "/path1"),
    ("spiffe://trustdomain2/path", "trustdomain2", "/path"),
    ("spiffe://trustdomain/path2", "trustdomain", "/path2"),
    ("spiffe://trustdomain3/path", "trustdomain3", "/path"),
    ("spiffe://trustdomain/path3", "trustdomain", "/path3"),
    ("spiffe://trustdomain4/path", "trustdomain4", "/path"),
    ("spiffe://trustdomain/path4", "trustdomain", "/path4"),
    ("spiffe://trustdomain5/path", "trustdomain5", "/path"),
    ("spiffe://trustdomain/path5", "trustdomain", "/path5"),
    ("spiffe://trustdomain6/path", "trustdomain6", "/path"),
    ("spiffe://trustdomain/path6", "trustdomain", "/path6"),
    ("spiffe://trustdomain7/path", "trustdomain7", "/path"),
    ("spiffe://trustdomain/path7", "trustdomain", "/path7"),
    ("spiffe://trustdomain8/path", "trustdomain8", "/path"),
    ("spiffe://trustdomain/path8", "trustdomain", "/path8"),
    ("spiffe://trustdomain9/path", "trustdomain9", "/path"),
    ("spiffe://trustdomain/path9", "trustdomain", "/path9"),
    ("spiffe://trustdomain/pathA", "trustdomain", "/pathA"),
    ("spiffe://trustdomain/pathB", "trustdomain", "/pathB"),
    ("spiffe://trustdomain/pathC", "trustdomain", "/pathC"),
    ("spiffe://trustdomain/pathD", "trustdomain", "/pathD"),
    ("spiffe://trustdomain/pathE", "trustdomain", "/pathE"),
    ("spiffe://trustdomain/pathF", "trustdomain", "/pathF"),
    ("spiffe://trustdomain/pathG", "trustdomain", "/pathG"),
    ("spiffe://trustdomain/pathH", "trustdomain", "/pathH"),
    ("spiffe://trustdomain/pathI", "trustdomain", "/pathI"),
    ("spiffe://trustdomain/pathJ", "trustdomain", "/pathJ"),
    ("spiffe://trustdomain/pathK", "trustdomain", "/pathK"),
    ("spiffe://trustdomain/pathL", "trustdomain", "/pathL"),
    ("spiffe://trustdomain/pathM", "trustdomain", "/pathM"),
    ("spiffe://trustdomain/pathN", "trustdomain", "/pathN"),
    ("spiffe://trustdomain/pathO", "trustdomain", "/pathO"),
    ("spiffe://trustdomain/pathP", "trustdomain", "/pathP"),
    ("spiffe://trustdomain/pathQ", "trustdomain", "/pathQ"),
    ("spiffe://trustdomain/pathR", "trustdomain", "/pathR"),
    ("spiffe://trustdomain/pathS", "trustdomain", "/pathS"),
    ("spiffe://trustdomain/pathT", "trustdomain", "/pathT"),
    ("spiffe://trustdomain/pathU", "trustdomain", "/pathU"),
    ("spiffe://trustdomain/pathV", "trustdomain", "/pathV"),
    ("spiffe://trustdomain/pathW", "trustdomain", "/pathW"),
    ("spiffe://trustdomain/pathX", "trustdomain", "/pathX"),
    ("spiffe://trustdomain/pathY", "trustdomain", "/pathY"),
    ("spiffe://trustdomain/pathZ", "trustdomain", "/pathZ"),
    ("spiffe://trustdomain_/path", "trustdomain_", "/path"),
    ("spiffe://trustdomain/path_", "trustdomain", "/path_"),
    ("spiffe://trustdomaina/path", "trustdomaina", "/path"),
    ("spiffe://trustdomain/patha", "trustdomain", "/patha"),
    ("spiffe://trustdomainb/path", "trustdomainb", "/path"),
    ("spiffe://trustdomain/pathb", "trustdomain", "/pathb"),
    ("spiffe://trustdomainc/path", "trustdomainc", "/path"),
    ("spiffe://trustdomain/pathc", "trustdomain", "/pathc"),
    ("spiffe://trustdomaind/path", "trustdomaind", "/path"),
    ("spiffe://trustdomain/pathd", "trustdomain", "/pathd"),
    ("spiffe://trustdomaine/path", "trustdomaine", "/path"),
    ("spiffe://trustdomain/pathe", "trustdomain", "/pathe"),
    ("spiffe://trustdomainf/path", "trustdomainf", "/path"),
    ("spiffe://trustdomain/pathf", "trustdomain", "/pathf"),
    ("spiffe://trustdomaing/path", "trustdomaing", "/path"),
    ("spiffe://trustdomain/pathg", "trustdomain", "/pathg"),
    ("spiffe://trustdomainh/path", "trustdomainh", "/path"),
    ("spiffe://trustdomain/pathh", "trustdomain", "/pathh"),
    ("spiffe://trustdomaini/path", "trustdomaini", "/path"),
    ("spiffe://trustdomain/pathi", "trustdomain", "/pathi"),
    ("spiffe://trustdomainj/path", "trustdomainj", "/path"),
    ("spiffe://trustdomain/pathj", "trustdomain", "/pathj"),
    ("spiffe://trustdomaink/path", "trustdomaink", "/path"),
    ("spiffe://trustdomain/pathk", "trustdomain", "/pathk"),
    ("spiffe://trustdomainl/path", "trustdomainl", "/path"),
    ("spiffe://trustdomain/pathl", "trustdomain", "/pathl"),
    ("spiffe://trustdomainm/path", "trustdomainm", "/path"),
    ("spiffe://trustdomain/pathm", "trustdomain", "/pathm"),
    ("spiffe://trustdomainn/path", "trustdomainn", "/path"),
    ("spiffe://trustdomain/pathn", "trustdomain", "/pathn"),
    ("spiffe://trustdomaino/path", "trustdomaino", "/path"),
    ("spiffe://trustdomain/patho", "trustdomain", "/patho"),
    ("spiffe://trustdomainp/path", "trustdomainp", "/path"),
    ("spiffe://trustdomain/pathp", "trustdomain", "/pathp"),
    ("spiffe://trustdomainq/path", "trustdomainq", "/path"),
    ("spiffe://trustdomain/pathq", "trustdomain", "/pathq"),
    ("spiffe://trustdomainr/path", "trustdomainr", "/path"),
    ("spiffe://trustdomain/pathr", "trustdomain", "/pathr"),
    ("spiffe://trustdomains/path", "trustdomains", "/path"),
    ("spiffe://trustdomain/paths", "trustdomain", "/paths"),
    ("spiffe://trustdomaint/path", "trustdomaint", "/path"),
    ("spiffe://trustdomain/patht", "trustdomain", "/patht"),
    ("spiffe://trustdomainu/path", "trustdomainu", "/path"),
    ("spiffe://trustdomain/pathu", "trustdomain", "/pathu"),
    ("spiffe://trustdomainv/path", "trustdomainv", "/path"),
    ("spiffe://trustdomain/pathv", "trustdomain", "/pathv"),
    ("spiffe://trustdomainw/path", "trustdomainw", "/path"),
    ("spiffe://trustdomain/pathw", "trustdomain", "/pathw"),
    ("spiffe://trustdomainx/path", "trustdomainx", "/path"),
    ("spiffe://trustdomain/pathx", "trustdomain", "/pathx"),
    ("spiffe://trustdomainy/path", "trustdomainy", "/path"),
    ("spiffe://trustdomain/pathy", "trustdomain", "/pathy"),
    ("spiffe://trustdomainz/path", "trustdomainz", "/path"),
    ("spiffe://trustdomain/pathz", "trustdomain", "/pathz"),
    ("spiffe://trustdomain/.path", "trustdomain", "/.path"),
    ("spiffe://trustdomain/..path", "trustdomain", "/..path"),
    ("spiffe://trustdomain/...", "trustdomain", "/..."),
    ("spiffe://trustdomain/path", "trustdomain", "/path"),
    ("spiffe://foo.test", "foo.test", ""),
    ("spiffe://foo.test/A", "foo.test", "/A"),
    ("spiffe://foo.test/B", "foo.test", "/B"),
    ("spiffe://foo.test/sub/C", "foo.test", "/sub/C"),
    ("spiffe://bar.test/A", "bar.test", "/A"),
    (
        "spiffe://trustdomain/path/element",
        "trustdomain",
        "/path/element",
    ),
    ("spiffe://example.org/p", "example.org", "/p"),
    ("spiffe://example.org", "example.org", ""),
    (
        "spiffe://example.org/path/element",
        "example.org",
        "/path/element",
    ),
    ("spiffe://example.org/path", "example.org", "/path"),
    ("spiffe://example.org/service", "example.org", "/service"),
    ("spiffe://example.org/Service", "example.org", "/Service"),
    ("spiffe://trustdomain-", "trustdomain-", ""),
    ("spiffe://trustdomain.", "trustdomain.", ""),
    ("spiffe://trustdomain0", "trustdomain0", ""),
    ("spiffe://trustdomain1", "trustdomain1", ""),
    ("spiffe://trustdomain2", "trustdomain2", ""),
    ("spiffe://trustdomain3", "trustdomain3", ""),
    ("spiffe://trustdomain4", "trustdomain4", ""),
    ("spiffe://trustdomain5", "trustdomain5", ""),
    ("spiffe://trustdomain6", "trustdomain6", ""),
    ("spiffe://trustdomain7", "trustdomain7", ""),
    ("spiffe://trustdomain8", "trustdomain8", ""),
    ("spiffe://trustdomain9", "trustdomain9", ""),
    ("spiffe://trustdomain_", "trustdomain_", ""),
    ("spiffe://trustdomaina", "trustdomaina", ""),
    ("spiffe://trustdomainb", "trustdomainb", ""),
    ("spiffe://trustdomainc", "trustdomainc", ""),
    ("spiffe://trustdomaind", "trustdomaind", ""),
    ("spiffe://trustdomaine", "trustdomaine", ""),
    ("spiffe://trustdomainf", "trustdomainf", ""),
    ("spiffe://trustdomaing", "trustdomaing", ""),
    ("spiffe://trustdomainh", "trustdomainh", ""),
    ("spiffe://trustdomaini", "trustdomaini", ""),
    ("spiffe://trustdomainj", "trustdomainj", ""),
    ("spiffe://trustdomaink", "trustdomaink", ""),
    ("spiffe://trustdomainl", "trustdomainl", ""),
    ("spiffe://trustdomainm", "trustdomainm", ""),
    ("spiffe://trustdomainn", "trustdomainn", ""),
    ("spiffe://trustdomaino", "trustdomaino", ""),
    ("spiffe://trustdomainp", "trustdomainp", ""),
    ("spiffe://trustdomainq", "trustdomainq", ""),
    ("spiffe://trustdomainr", "trustdomainr", ""),
    ("spiffe://trustdomains", "trustdomains", ""),
    ("spiffe://trustdomaint", "trustdomaint", ""),
    ("spiffe://trustdomainu", "trustdomainu", ""),
    ("spiffe://trustdomainv", "trustdomainv", ""),
    ("spiffe://trustdomainw", "trustdomainw", ""),
    ("spiffe://trustdomainx", "trustdomainx", ""),
    ("spiffe://trustdomainy", "trustdomainy", ""),
    ("spiffe://trustdomainz", "trustdomainz", ""),
    ("spiffe://1.2.3.4/service", "1.2.3.4", "/service"),
    ("spiffe://a_b.example/foo", "a_b.example", "/foo"),
];

/// Invalid SPIFFE IDs and why: every printable ASCII byte outside the allowed sets in the trust
/// domain and in the path, the scheme, empty, dot and trailing segments, percent-encoding (never
/// decoded), ports, user info, queries and fragments.
const INVALID_IDS: &[(&str, IdError)] = &[
    ("", Empty),
    ("spiffe://trustdomain!/path", BadTrustDomainChar),
    ("spiffe://trustdomain/path!", BadPathChar),
    (r#"spiffe://trustdomain"/path"#, BadTrustDomainChar),
    (r#"spiffe://trustdomain/path""#, BadPathChar),
    ("spiffe://trustdomain#/path", BadTrustDomainChar),
    ("spiffe://trustdomain/path#", BadPathChar),
    ("spiffe://trustdomain$/path", BadTrustDomainChar),
    ("spiffe://trustdomain/path$", BadPathChar),
    ("spiffe://trustdomain%/path", BadTrustDomainChar),
    ("spiffe://trustdomain/path%", BadPathChar),
    ("spiffe://trustdomain&/path", BadTrustDomainChar),
    ("spiffe://trustdomain/path&", BadPathChar),
    ("spiffe://trustdomain'/path", BadTrustDomainChar),
    ("spiffe://trustdomain/path'", BadPathChar),
    ("spiffe://trustdomain(/path", BadTrustDomainChar),
    ("spiffe://trustdomain/path(", BadPathChar),
    ("spiffe://trustdomain)/path", BadTrustDomainChar),
    ("spiffe://trustdomain/path)", BadPathChar),
    ("spiffe://trustdomain*/path", BadTrustDomainChar),
    ("spiffe://trustdomain/path*", BadPathChar),
    ("spiffe://trustdomain+/path", BadTrustDomainChar),
    ("spiffe://trustdomain/path+", BadPathChar),
    ("spiffe://trustdomain,/path", BadTrustDomainChar),
    ("spiffe://trustdomain/path,", BadPathChar),
    ("spiffe://trustdomain:/path", BadTrustDomainChar),
    ("spiffe://trustdomain/path:", BadPathChar),
    ("spiffe://trustdomain;/path", BadTrustDomainChar),
    ("spiffe://trustdomain/path;", BadPathChar),
    ("spiffe://trustdomain</path", BadTrustDomainChar),
    ("spiffe://trustdomain/path<", BadPathChar),
    ("spiffe://trustdomain=/path", BadTrustDomainChar),
    ("spiffe://trustdomain/path=", BadPathChar),
    ("spiffe://trustdomain>/path", BadTrustDomainChar),
    ("spiffe://trustdomain/path>", BadPathChar),
    ("spiffe://trustdomain?/path", BadTrustDomainChar),
    ("spiffe://trustdomain/path?", BadPathChar),
    ("spiffe://trustdomain@/path", BadTrustDomainChar),
    ("spiffe://trustdomain/path@", BadPathChar),
    ("spiffe://trustdomain[/path", BadTrustDomainChar),
    ("spiffe://trustdomain/path[", BadPathChar),
    (r#"spiffe://trustdomain\/path"#, BadTrustDomainChar),
    (r#"spiffe://trustdomain/path\"#, BadPathChar),
    ("spiffe://trustdomain]/path", BadTrustDomainChar),
    ("spiffe://trustdomain/path]", BadPathChar),
    ("spiffe://trustdomain^/path", BadTrustDomainChar),
    ("spiffe://trustdomain/path^", BadPathChar),
    ("spiffe://trustdomain`/path", BadTrustDomainChar),
    ("spiffe://trustdomain/path`", BadPathChar),
    ("spiffe://trustdomain{/path", BadTrustDomainChar),
    ("spiffe://trustdomain/path{", BadPathChar),
    ("spiffe://trustdomain|/path", BadTrustDomainChar),
    ("spiffe://trustdomain/path|", BadPathChar),
    ("spiffe://trustdomain}/path", BadTrustDomainChar),
    ("spiffe://trustdomain/path}", BadPathChar),
    ("spiffe://trustdomain~/path", BadTrustDomainChar),
    ("spiffe://trustdomain/path~", BadPathChar),
    ("s", BadScheme),
    ("spiffe:/", BadScheme),
    ("Spiffe://", BadScheme),
    ("spiffe://", MissingTrustDomain),
    ("spiffe:///", MissingTrustDomain),
    ("spiffe://trustdomain/", TrailingSlash),
    ("spiffe://trustdomain//", EmptySegment),
    ("spiffe://trustdomain//path", EmptySegment),
    ("spiffe://trustdomain/path/", TrailingSlash),
    ("spiffe://trustdomain/.", DotSegment),
    ("spiffe://trustdomain/./path", DotSegment),
    ("spiffe://trustdomain/path/./other", DotSegment),
    ("spiffe://trustdomain/path/..", DotSegment),
    ("spiffe://trustdomain/..", DotSegment),
    ("spiffe://trustdomain/../path", DotSegment),
    ("spiffe://trustdomain/path/../other", DotSegment),
    ("spiffe://%F0%9F%A4%AF/path", BadTrustDomainChar),
    ("spiffe://trustdomain/%F0%9F%A4%AF", BadPathChar),
    ("spiffe://%62%61%64/path", BadTrustDomainChar),
    ("spiffe://trustdomain/%62%61%64", BadPathChar),
    ("spiffe://trust$domain", BadTrustDomainChar),
    ("BAD", BadScheme),
    ("spiffe:/trustdomain/path", BadScheme),
    ("spiffe:///path", MissingTrustDomain),
    ("sparfe://domain1.test/workload", BadScheme),
    ("192.168.2.2:6688", BadScheme),
    ("http://domain.test/path/element", BadScheme),
    ("spiffe:/path/element", BadScheme),
    ("spiffe:///path/element", MissingTrustDomain),
    ("spiffe:path/element", BadScheme),
    ("spiffe://domain.test/path/element?query=1", BadPathChar),
    ("spiffe://domain.test/path/element#fragment-1", BadPathChar),
    ("spiffe://domain.test:8080/path/element", BadTrustDomainChar),
    (
        "spiffe://user:password@test.org/path/element",
        BadTrustDomainChar,
    ),
    ("spiffe://test.org/", TrailingSlash),
    ("spiffe://test.org//", EmptySegment),
    ("spiffe://test.org/path//other", EmptySegment),
    ("spiffe://test.org/path/other/", TrailingSlash),
    ("spiffe://test.org/./other", DotSegment),
    ("spiffe://test.org/../other", DotSegment),
    ("spiffe://trustdomain!", BadTrustDomainChar),
    (r#"spiffe://trustdomain""#, BadTrustDomainChar),
    ("spiffe://trustdomain#", BadTrustDomainChar),
    ("spiffe://trustdomain$", BadTrustDomainChar),
    ("spiffe://trustdomain%", BadTrustDomainChar),
    ("spiffe://trustdomain&", BadTrustDomainChar),
    ("spiffe://trustdomain'", BadTrustDomainChar),
    ("spiffe://trustdomain(", BadTrustDomainChar),
    ("spiffe://trustdomain)", BadTrustDomainChar),
    ("spiffe://trustdomain*", BadTrustDomainChar),
    ("spiffe://trustdomain+", BadTrustDomainChar),
    ("spiffe://trustdomain,", BadTrustDomainChar),
    ("spiffe://trustdomain:", BadTrustDomainChar),
    ("spiffe://trustdomain;", BadTrustDomainChar),
    ("spiffe://trustdomain<", BadTrustDomainChar),
    ("spiffe://trustdomain=", BadTrustDomainChar),
    ("spiffe://trustdomain>", BadTrustDomainChar),
    ("spiffe://trustdomain?", BadTrustDomainChar),
    ("spiffe://trustdomain@", BadTrustDomainChar),
    ("spiffe://trustdomain[", BadTrustDomainChar),
    (r#"spiffe://trustdomain\"#, BadTrustDomainChar),
    ("spiffe://trustdomain]", BadTrustDomainChar),
    ("spiffe://trustdomain^", BadTrustDomainChar),
    ("spiffe://trustdomain`", BadTrustDomainChar),
    ("spiffe://trustdomain{", BadTrustDomainChar),
    ("spiffe://trustdomain|", BadTrustDomainChar),
    ("spiffe://trustdomain}", BadTrustDomainChar),
    ("spiffe://trustdomain~", BadTrustDomainChar),
];

/// Inputs that some libraries accept (rust-spiffe lower-cases the scheme and the trust domain)
/// but the spec refuses: the scheme and the trust domain MUST be lowercase, and we never case-fold.
const DIVERGENT_IDS: &[(&str, IdError)] = &[
    ("spiffe://trustdomainA/path", BadTrustDomainChar),
    ("spiffe://trustdomainB/path", BadTrustDomainChar),
    ("spiffe://trustdomainC/path", BadTrustDomainChar),
    ("spiffe://trustdomainD/path", BadTrustDomainChar),
    ("spiffe://trustdomainE/path", BadTrustDomainChar),
    ("spiffe://trustdomainF/path", BadTrustDomainChar),
    ("spiffe://trustdomainG/path", BadTrustDomainChar),
    ("spiffe://trustdomainH/path", BadTrustDomainChar),
    ("spiffe://trustdomainI/path", BadTrustDomainChar),
    ("spiffe://trustdomainJ/path", BadTrustDomainChar),
    ("spiffe://trustdomainK/path", BadTrustDomainChar),
    ("spiffe://trustdomainL/path", BadTrustDomainChar),
    ("spiffe://trustdomainM/path", BadTrustDomainChar),
    ("spiffe://trustdomainN/path", BadTrustDomainChar),
    ("spiffe://trustdomainO/path", BadTrustDomainChar),
    ("spiffe://trustdomainP/path", BadTrustDomainChar),
    ("spiffe://trustdomainQ/path", BadTrustDomainChar),
    ("spiffe://trustdomainR/path", BadTrustDomainChar),
    ("spiffe://trustdomainS/path", BadTrustDomainChar),
    ("spiffe://trustdomainT/path", BadTrustDomainChar),
    ("spiffe://trustdomainU/path", BadTrustDomainChar),
    ("spiffe://trustdomainV/path", BadTrustDomainChar),
    ("spiffe://trustdomainW/path", BadTrustDomainChar),
    ("spiffe://trustdomainX/path", BadTrustDomainChar),
    ("spiffe://trustdomainY/path", BadTrustDomainChar),
    ("spiffe://trustdomainZ/path", BadTrustDomainChar),
    ("SpIfFe://Example.Org/path", BadScheme),
    ("SPIFFE://EXAMPLE.ORG/MyService", BadScheme),
    ("SPIFFE://example.org/service", BadScheme),
    ("spiffe://EXAMPLE.ORG/service", BadTrustDomainChar),
    ("SPIFFE://EXAMPLE.ORG/service", BadScheme),
    ("spiffe://trustdomainA", BadTrustDomainChar),
    ("spiffe://trustdomainB", BadTrustDomainChar),
    ("spiffe://trustdomainC", BadTrustDomainChar),
    ("spiffe://trustdomainD", BadTrustDomainChar),
    ("spiffe://trustdomainE", BadTrustDomainChar),
    ("spiffe://trustdomainF", BadTrustDomainChar),
    ("spiffe://trustdomainG", BadTrustDomainChar),
    ("spiffe://trustdomainH", BadTrustDomainChar),
    ("spiffe://trustdomainI", BadTrustDomainChar),
    ("spiffe://trustdomainJ", BadTrustDomainChar),
    ("spiffe://trustdomainK", BadTrustDomainChar),
    ("spiffe://trustdomainL", BadTrustDomainChar),
    ("spiffe://trustdomainM", BadTrustDomainChar),
    ("spiffe://trustdomainN", BadTrustDomainChar),
    ("spiffe://trustdomainO", BadTrustDomainChar),
    ("spiffe://trustdomainP", BadTrustDomainChar),
    ("spiffe://trustdomainQ", BadTrustDomainChar),
    ("spiffe://trustdomainR", BadTrustDomainChar),
    ("spiffe://trustdomainS", BadTrustDomainChar),
    ("spiffe://trustdomainT", BadTrustDomainChar),
    ("spiffe://trustdomainU", BadTrustDomainChar),
    ("spiffe://trustdomainV", BadTrustDomainChar),
    ("spiffe://trustdomainW", BadTrustDomainChar),
    ("spiffe://trustdomainX", BadTrustDomainChar),
    ("spiffe://trustdomainY", BadTrustDomainChar),
    ("spiffe://trustdomainZ", BadTrustDomainChar),
];

/// Valid trust-domain inputs: a bare name or a SPIFFE ID, then the trust domain name.
const VALID_TRUST_DOMAINS: &[(&str, &str)] = &[
    ("spiffe://trustdomain", "trustdomain"),
    ("spiffe://trustdomain/path", "trustdomain"),
    ("trustdomain-", "trustdomain-"),
    ("spiffe://trustdomain-", "trustdomain-"),
    ("trustdomain.", "trustdomain."),
    ("spiffe://trustdomain.", "trustdomain."),
    ("trustdomain0", "trustdomain0"),
    ("spiffe://trustdomain0", "trustdomain0"),
    ("trustdomain1", "trustdomain1"),
    ("spiffe://trustdomain1", "trustdomain1"),
    ("trustdomain2", "trustdomain2"),
    ("spiffe://trustdomain2", "trustdomain2"),
    ("trustdomain3", "trustdomain3"),
    ("spiffe://trustdomain3", "trustdomain3"),
    ("trustdomain4", "trustdomain4"),
    ("spiffe://trustdomain4", "trustdomain4"),
    ("trustdomain5", "trustdomain5"),
    ("spiffe://trustdomain5", "trustdomain5"),
    ("trustdomain6", "trustdomain6"),
    ("spiffe://trustdomain6", "trustdomain6"),
    ("trustdomain7", "trustdomain7"),
    ("spiffe://trustdomain7", "trustdomain7"),
    ("trustdomain8", "trustdomain8"),
    ("spiffe://trustdomain8", "trustdomain8"),
    ("trustdomain9", "trustdomain9"),
    ("spiffe://trustdomain9", "trustdomain9"),
    ("trustdomain_", "trustdomain_"),
    ("spiffe://trustdomain_", "trustdomain_"),
    ("trustdomaina", "trustdomaina"),
    ("spiffe://trustdomaina", "trustdomaina"),
    ("trustdomainb", "trustdomainb"),
    ("spiffe://trustdomainb", "trustdomainb"),
    ("trustdomainc", "trustdomainc"),
    ("spiffe://trustdomainc", "trustdomainc"),
    ("trustdomaind", "trustdomaind"),
    ("spiffe://trustdomaind", "trustdomaind"),
    ("trustdomaine", "trustdomaine"),
    ("spiffe://trustdomaine", "trustdomaine"),
    ("trustdomainf", "trustdomainf"),
    ("spiffe://trustdomainf", "trustdomainf"),
    ("trustdomaing", "trustdomaing"),
    ("spiffe://trustdomaing", "trustdomaing"),
    ("trustdomainh", "trustdomainh"),
    ("spiffe://trustdomainh", "trustdomainh"),
    ("trustdomaini", "trustdomaini"),
    ("spiffe://trustdomaini", "trustdomaini"),
    ("trustdomainj", "trustdomainj"),
    ("spiffe://trustdomainj", "trustdomainj"),
    ("trustdomaink", "trustdomaink"),
    ("spiffe://trustdomaink", "trustdomaink"),
    ("trustdomainl", "trustdomainl"),
    ("spiffe://trustdomainl", "trustdomainl"),
    ("trustdomainm", "trustdomainm"),
    ("spiffe://trustdomainm", "trustdomainm"),
    ("trustdomainn", "trustdomainn"),
    ("spiffe://trustdomainn", "trustdomainn"),
    ("trustdomaino", "trustdomaino"),
    ("spiffe://trustdomaino", "trustdomaino"),
    ("trustdomainp", "trustdomainp"),
    ("spiffe://trustdomainp", "trustdomainp"),
    ("trustdomainq", "trustdomainq"),
    ("spiffe://trustdomainq", "trustdomainq"),
    ("trustdomainr", "trustdomainr"),
    ("spiffe://trustdomainr", "trustdomainr"),
    ("trustdomains", "trustdomains"),
    ("spiffe://trustdomains", "trustdomains"),
    ("trustdomaint", "trustdomaint"),
    ("spiffe://trustdomaint", "trustdomaint"),
    ("trustdomainu", "trustdomainu"),
    ("spiffe://trustdomainu", "trustdomainu"),
    ("trustdomainv", "trustdomainv"),
    ("spiffe://trustdomainv", "trustdomainv"),
    ("trustdomainw", "trustdomainw"),
    ("spiffe://trustdomainw", "trustdomainw"),
    ("trustdomainx", "trustdomainx"),
    ("spiffe://trustdomainx", "trustdomainx"),
    ("trustdomainy", "trustdomainy"),
    ("spiffe://trustdomainy", "trustdomainy"),
    ("trustdomainz", "trustdomainz"),
    ("spiffe://trustdomainz", "trustdomainz"),
    ("trustdomain", "trustdomain"),
    ("a", "a"),
    ("b", "b"),
    ("domain2.test", "domain2.test"),
    ("spiffe://domain2.test", "domain2.test"),
    ("domain1.test", "domain1.test"),
    ("spiffe://other.test", "other.test"),
    ("spiffe://domain.test/path/element", "domain.test"),
    ("domain.test", "domain.test"),
    ("other.test", "other.test"),
    ("1.2.3.4", "1.2.3.4"),
    ("a_b.example", "a_b.example"),
    ("spiffe://example.org", "example.org"),
    ("example.org", "example.org"),
    ("example..org", "example..org"),
    (".example.org", ".example.org"),
    ("example.org.", "example.org."),
    ("-example.org", "-example.org"),
    ("example-.org", "example-.org"),
];

/// Invalid trust-domain inputs and why.
const INVALID_TRUST_DOMAINS: &[(&str, IdError)] = &[
    ("", MissingTrustDomain),
    ("spiffe:/trustdomain/path", BadScheme),
    ("spiffe://", MissingTrustDomain),
    ("spiffe:///path", MissingTrustDomain),
    ("spiffe://%F0%9F%A4%AF/path", BadTrustDomainChar),
    ("trustdomain!", BadTrustDomainChar),
    (r#"trustdomain""#, BadTrustDomainChar),
    ("trustdomain#", BadTrustDomainChar),
    ("trustdomain$", BadTrustDomainChar),
    ("trustdomain%", BadTrustDomainChar),
    ("trustdomain&", BadTrustDomainChar),
    ("trustdomain'", BadTrustDomainChar),
    ("trustdomain(", BadTrustDomainChar),
    ("trustdomain)", BadTrustDomainChar),
    ("trustdomain*", BadTrustDomainChar),
    ("trustdomain+", BadTrustDomainChar),
    ("trustdomain,", BadTrustDomainChar),
    ("trustdomain/", BadTrustDomainChar),
    ("trustdomain:", BadTrustDomainChar),
    ("trustdomain;", BadTrustDomainChar),
    ("trustdomain<", BadTrustDomainChar),
    ("trustdomain=", BadTrustDomainChar),
    ("trustdomain>", BadTrustDomainChar),
    ("trustdomain?", BadTrustDomainChar),
    ("trustdomain@", BadTrustDomainChar),
    ("trustdomain[", BadTrustDomainChar),
    (r#"trustdomain\"#, BadTrustDomainChar),
    ("trustdomain]", BadTrustDomainChar),
    ("trustdomain^", BadTrustDomainChar),
    ("trustdomain`", BadTrustDomainChar),
    ("trustdomain{", BadTrustDomainChar),
    ("trustdomain|", BadTrustDomainChar),
    ("trustdomain}", BadTrustDomainChar),
    ("trustdomain~", BadTrustDomainChar),
    ("spiffe://trust$domain", BadTrustDomainChar),
    ("other://domain.test", BadScheme),
    ("spiffe://domain.test:80", BadTrustDomainChar),
    ("spiffe://user:pass@domain.test", BadTrustDomainChar),
    ("://domain.test", BadScheme),
];

/// Inputs that some libraries accept (rust-spiffe lower-cases the scheme and the trust domain)
/// but the spec refuses: the scheme and the trust domain MUST be lowercase, and we never case-fold. td
const DIVERGENT_TRUST_DOMAINS: &[(&str, IdError)] = &[
    ("spiffe://trustdomain/", TrailingSlash),
    ("spiffe://trustdomain/path/", TrailingSlash),
    ("spiffe://trustdomain/%F0%9F%A4%AF", BadPathChar),
    ("trustdomainA", BadTrustDomainChar),
    ("trustdomainB", BadTrustDomainChar),
    ("trustdomainC", BadTrustDomainChar),
    ("trustdomainD", BadTrustDomainChar),
    ("trustdomainE", BadTrustDomainChar),
    ("trustdomainF", BadTrustDomainChar),
    ("trustdomainG", BadTrustDomainChar),
    ("trustdomainH", BadTrustDomainChar),
    ("trustdomainI", BadTrustDomainChar),
    ("trustdomainJ", BadTrustDomainChar),
    ("trustdomainK", BadTrustDomainChar),
    ("trustdomainL", BadTrustDomainChar),
    ("trustdomainM", BadTrustDomainChar),
    ("trustdomainN", BadTrustDomainChar),
    ("trustdomainO", BadTrustDomainChar),
    ("trustdomainP", BadTrustDomainChar),
    ("trustdomainQ", BadTrustDomainChar),
    ("trustdomainR", BadTrustDomainChar),
    ("trustdomainS", BadTrustDomainChar),
    ("trustdomainT", BadTrustDomainChar),
    ("trustdomainU", BadTrustDomainChar),
    ("trustdomainV", BadTrustDomainChar),
    ("trustdomainW", BadTrustDomainChar),
    ("trustdomainX", BadTrustDomainChar),
    ("trustdomainY", BadTrustDomainChar),
    ("trustdomainZ", BadTrustDomainChar),
    ("spiffe://trustdomain/path$", BadPathChar),
    ("BAD", BadTrustDomainChar),
    ("Example.Org", BadTrustDomainChar),
    ("SpIfFe://Example.Org/Service", BadScheme),
];

/// `spiffe://example.org/` followed by `a`s, `len` bytes in all.
fn long_id(len: usize) -> String {
    let prefix = "spiffe://example.org/";
    format!("{prefix}{}", "a".repeat(len - prefix.len()))
}

/// Parses a valid ID and checks its parts and every way back to the same ID.
fn assert_valid_id(input: &str, td: &str, path: &str) {
    let id = SpiffeId::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e:?}"));
    assert_eq!(
        (id.as_str(), id.trust_domain_str(), id.path()),
        (input, td, path),
        "{input:?}"
    );
    assert_eq!(id.trust_domain().as_str(), td, "{input:?}");
    assert_eq!(id.to_string(), input);
    assert_eq!(
        SpiffeId::from_parts(&id.trust_domain(), id.path()).as_ref(),
        Ok(&id),
        "{input:?}"
    );
    assert_eq!(input.parse::<SpiffeId>().as_ref(), Ok(&id), "{input:?}");
}

#[test]
fn valid_ids_parse_into_their_parts_and_round_trip() {
    for &(input, td, path) in VALID_IDS {
        assert_valid_id(input, td, path);
    }
}

#[test]
fn invalid_ids_are_refused_for_the_expected_reason() {
    for &(input, expected) in INVALID_IDS.iter().chain(DIVERGENT_IDS) {
        assert_eq!(SpiffeId::parse(input), Err(expected), "{input:?}");
        assert_eq!(input.parse::<SpiffeId>(), Err(expected), "{input:?}");
    }
}

/// The spec's limits: 2048 bytes for an ID, 255 for its trust domain (some libraries accept
/// longer IDs or trust domains; we refuse them).
#[test]
fn ids_are_limited_to_2048_bytes_and_trust_domains_to_255() {
    let max = long_id(MAX_ID_LEN);
    assert_valid_id(&max, "example.org", &max["spiffe://example.org".len()..]);
    assert_eq!(SpiffeId::parse(&long_id(MAX_ID_LEN + 1)), Err(TooLong));
    let td255 = "a".repeat(MAX_TRUST_DOMAIN_LEN);
    assert_valid_id(&format!("spiffe://{td255}"), &td255, "");
    let td256 = "a".repeat(MAX_TRUST_DOMAIN_LEN + 1);
    assert_eq!(
        SpiffeId::parse(&format!("spiffe://{td256}/path")),
        Err(TrustDomainTooLong)
    );
}

/// Parses a valid trust domain and checks its name and the round trips.
fn assert_valid_trust_domain(input: &str, name: &str) {
    let td = TrustDomain::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e:?}"));
    assert_eq!(td.as_str(), name, "{input:?}");
    assert_eq!(td.to_string(), name);
    assert_eq!(td.id_string(), format!("spiffe://{name}"));
    assert_eq!(TrustDomain::parse(name).as_ref(), Ok(&td), "{input:?}");
    assert_eq!(TrustDomain::parse(&td.id_string()).as_ref(), Ok(&td));
    assert_eq!(input.parse::<TrustDomain>().as_ref(), Ok(&td));
}

#[test]
fn valid_trust_domains_parse_to_their_name() {
    for &(input, name) in VALID_TRUST_DOMAINS {
        assert_valid_trust_domain(input, name);
    }
}

#[test]
fn invalid_trust_domains_are_refused_for_the_expected_reason() {
    for &(input, expected) in INVALID_TRUST_DOMAINS.iter().chain(DIVERGENT_TRUST_DOMAINS) {
        assert_eq!(TrustDomain::parse(input), Err(expected), "{input:?}");
        assert_eq!(input.parse::<TrustDomain>(), Err(expected), "{input:?}");
    }
}

#[test]
fn trust_domains_are_limited_to_255_bytes_and_ids_given_for_them_to_2048() {
    let td255 = "a".repeat(MAX_TRUST_DOMAIN_LEN);
    assert_valid_trust_domain(&td255, &td255);
    assert_valid_trust_domain(&format!("spiffe://{td255}"), &td255);
    let td256 = "a".repeat(MAX_TRUST_DOMAIN_LEN + 1);
    assert_eq!(TrustDomain::parse(&td256), Err(TrustDomainTooLong));
    assert_eq!(
        TrustDomain::parse(&format!("spiffe://{td256}")),
        Err(TrustDomainTooLong)
    );
    assert_valid_trust_domain(&long_id(MAX_ID_LEN), "example.org");
    assert_eq!(TrustDomain::parse(&long_id(MAX_ID_LEN + 1)), Err(TooLong));
}

#[test]
fn parts_and_equality() {
    let id = SpiffeId::parse("spiffe://example.org/ns/default/sa/Web").unwrap();
    assert_eq!(id.trust_domain().as_str(), "example.org");
    assert_eq!(id.path(), "/ns/default/sa/Web");
    let lower = SpiffeId::parse("spiffe://example.org/ns/default/sa/web").unwrap();
    assert_ne!(id, lower, "paths compare byte for byte");
    let td = TrustDomain::parse("example.org").unwrap();
    assert_eq!(SpiffeId::from_parts(&td, "/ns/default/sa/Web").unwrap(), id);
    assert_eq!(SpiffeId::parse("spiffe://example.org").unwrap().path(), "");
}
