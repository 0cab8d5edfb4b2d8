//! String matches as Istio users know them: exact, `prefix*`, `*suffix`, and `*` (anything
//! present).

use std::fmt;

/// One match pattern.
#[derive(Clone, PartialEq, Eq)]
pub enum Pattern {
    /// The whole value.
    Exact(String),
    /// Values starting with this.
    Prefix(String),
    /// Values ending with this.
    Suffix(String),
    /// Any value that is present.
    Any,
}

impl Pattern {
    /// Parses `*`, `prefix*`, `*suffix` or an exact value. A `*` elsewhere is an error.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(Pattern::Any);
        }
        let stars = s.matches('*').count();
        match (stars, s.strip_suffix('*'), s.strip_prefix('*')) {
            (0, _, _) => Ok(Pattern::Exact(s.to_owned())),
            (1, Some(p), _) => Ok(Pattern::Prefix(p.to_owned())),
            (1, _, Some(x)) => Ok(Pattern::Suffix(x.to_owned())),
            _ => Err(format!(
                "{s:?}: `*` may only stand alone, at the start or at the end"
            )),
        }
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Exact(e) => value == e,
            Pattern::Prefix(p) => value.starts_with(p.as_str()),
            Pattern::Suffix(x) => value.ends_with(x.as_str()),
            Pattern::Any => true,
        }
    }

    /// The literal part (for validating the non-wildcard part of SPIFFE ID patterns).
    pub fn literal(&self) -> &str {
        match self {
            Pattern::Exact(s) | Pattern::Prefix(s) | Pattern::Suffix(s) => s,
            Pattern::Any => "",
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(s) => f.write_str(s),
            Pattern::Prefix(s) => write!(f, "{s}*"),
            Pattern::Suffix(s) => write!(f, "*{s}"),
            Pattern::Any => f.write_str("*"),
        }
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let cases = [
            ("spiffe://td/a", "spiffe://td/a", true),
            ("spiffe://td/a", "spiffe://td/ab", false),
            ("spiffe://td/ns/shop/*", "spiffe://td/ns/shop/sa/web", true),
            (
                "spiffe://td/ns/shop/*",
                "spiffe://td/ns/other/sa/web",
                false,
            ),
            ("*/sa/web", "spiffe://td/ns/shop/sa/web", true),
            ("*/sa/web", "spiffe://td/ns/shop/sa/webx", false),
            ("*", "anything", true),
        ];
        for (p, v, want) in cases {
            assert_eq!(Pattern::parse(p).unwrap().matches(v), want, "{p} vs {v}");
        }
        assert!(Pattern::parse("a*b").is_err());
        assert!(Pattern::parse("**").is_err());
        assert_eq!(Pattern::parse("pre*").unwrap().to_string(), "pre*");
    }
}
