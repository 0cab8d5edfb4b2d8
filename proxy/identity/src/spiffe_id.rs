//! SPIFFE IDs and trust domains, parsed exactly per the SPIFFE-ID specification.
//!
//! Choices where implementations diverge (the cases are `DIVERGENT_IDS` and
//! `DIVERGENT_TRUST_DOMAINS` in `spiffe_id/tests.rs`, beside the tables of valid and invalid
//! cases): upper case is rejected in the scheme and the trust domain (the spec says they MUST be
//! lowercase; we never case-fold), IDs compare byte for byte (the path is case-sensitive), a trust
//! domain longer than 255 bytes and an ID longer than 2048 bytes are rejected.

use std::fmt;
use std::str::FromStr;

const SCHEME: &str = "spiffe://";
/// Longest SPIFFE ID the spec allows, in bytes (URI SAN limit).
pub const MAX_ID_LEN: usize = 2048;
/// Longest trust domain name the spec allows, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a string is not a SPIFFE ID or trust domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The input is empty.
    #[error("cannot be empty")]
    Empty,
    /// The input does not start with exactly `spiffe://`.
    #[error("scheme is missing or invalid")]
    BadScheme,
    /// Nothing between `spiffe://` and the path.
    #[error("trust domain is missing")]
    MissingTrustDomain,
    /// A trust-domain byte outside `[a-z0-9._-]`.
    #[error("trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores")]
    BadTrustDomainChar,
    /// A path-segment byte outside `[a-zA-Z0-9._-]`.
    #[error(
        "path segment characters are limited to letters, numbers, dots, dashes, and underscores"
    )]
    BadPathChar,
    /// Two slashes in a row.
    #[error("path cannot contain empty segments")]
    EmptySegment,
    /// A `.` or `..` segment.
    #[error("path cannot contain dot segments")]
    DotSegment,
    /// The path ends with `/`.
    #[error("path cannot have a trailing slash")]
    TrailingSlash,
    /// The trust domain is longer than 255 bytes.
    #[error("trust domain exceeds maximum length (255 bytes)")]
    TrustDomainTooLong,
    /// The ID is longer than 2048 bytes.
    #[error("SPIFFE ID exceeds maximum length (2048 bytes)")]
    TooLong,
}

/// A SPIFFE trust domain name such as `example.org`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

/// A SPIFFE ID such as `spiffe://example.org/ns/default/sa/web`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: String,
    /// Byte offset where the path starts (== `uri.len()` when the path is empty).
    path_start: usize,
}

fn is_td_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
}

fn is_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

fn check_trust_domain(td: &str) -> Result<(), IdError> {
    if td.is_empty() {
        return Err(IdError::MissingTrustDomain);
    }
    if !td.bytes().all(is_td_char) {
        return Err(IdError::BadTrustDomainChar);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(IdError::TrustDomainTooLong);
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), IdError> {
    if path.is_empty() {
        return Ok(());
    }
    // `path` starts with '/', so the first split item is the empty string before it.
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        if seg.is_empty() {
            return Err(if i == last {
                IdError::TrailingSlash
            } else {
                IdError::EmptySegment
            });
        }
        if !seg.bytes().all(is_path_char) {
            return Err(IdError::BadPathChar);
        }
        if *seg == "." || *seg == ".." {
            return Err(IdError::DotSegment);
        }
    }
    Ok(())
}

impl SpiffeId {
    /// Parses a SPIFFE ID.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        let rest = s.strip_prefix(SCHEME).ok_or(IdError::BadScheme)?;
        let td_end = rest.find('/').unwrap_or(rest.len());
        check_trust_domain(&rest[..td_end])?;
        check_path(&rest[td_end..])?;
        if s.len() > MAX_ID_LEN {
            return Err(IdError::TooLong);
        }
        Ok(SpiffeId {
            uri: s.to_owned(),
            path_start: SCHEME.len() + td_end,
        })
    }

    /// Builds `spiffe://<td><path>`; `path` is empty or starts with `/`.
    pub fn from_parts(td: &TrustDomain, path: &str) -> Result<Self, IdError> {
        Self::parse(&format!("{SCHEME}{}{path}", td.0))
    }

    /// The trust domain part.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_str().to_owned())
    }

    /// The trust domain part, borrowed.
    pub fn trust_domain_str(&self) -> &str {
        &self.uri[SCHEME.len()..self.path_start]
    }

    /// The path, empty for the trust domain's own ID.
    pub fn path(&self) -> &str {
        &self.uri[self.path_start..]
    }

    /// The whole URI.
    pub fn as_str(&self) -> &str {
        &self.uri
    }
}

impl TrustDomain {
    /// Parses a bare trust domain name (`example.org`) or takes the trust domain of a SPIFFE ID.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.contains(":/") {
            return Ok(SpiffeId::parse(s)?.trust_domain());
        }
        check_trust_domain(s)?;
        Ok(TrustDomain(s.to_owned()))
    }

    /// The name, e.g. `example.org`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `spiffe://<name>`, the trust domain's own ID.
    pub fn id_string(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

impl FromStr for TrustDomain {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SpiffeId::parse(&s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

impl<'de> serde::Deserialize<'de> for TrustDomain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Parsed inside the visitor, so that a YAML error names the field (as `Dur` does).
        struct TdVisitor;
        impl serde::de::Visitor<'_> for TdVisitor {
            type Value = TrustDomain;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a trust domain such as example.org")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<TrustDomain, E> {
                TrustDomain::parse(s).map_err(|e| E::custom(format!("{s:?}: {e}")))
            }
        }
        d.deserialize_str(TdVisitor)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.uri)
    }
}

#[cfg(test)]
mod tests;
