//! A certificate's serial number in one spelling, so that a serial an operator typed (with or
//! without colons, any case, leading zeros) and the one a verifier read from a leaf compare equal.

use std::fmt;

/// Longest serial accepted, in hex digits after leading zeros are dropped: RFC 5280 allows 20
/// octets.
const MAX_HEX_DIGITS: usize = 40;

/// A certificate serial number: lowercase hex, no separators, no leading zeros (`0` for zero).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CertSerial(String);

/// Why a text is not a certificate serial.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SerialError {
    /// Nothing but separators.
    #[error("a certificate serial needs at least one hex digit")]
    Empty,
    /// A character that is neither a hex digit nor a separator.
    #[error("{0:?} is not a hex digit (write the serial as hex, e.g. 3a:5f:01 or 3a5f01)")]
    NotHex(char),
    /// More than 20 octets.
    #[error("a certificate serial has at most {MAX_HEX_DIGITS} hex digits (20 octets)")]
    TooLong,
}

impl CertSerial {
    /// Parses hex with optional `0x`, `:`, `-` or space separators, in any case.
    pub fn parse(text: &str) -> Result<Self, SerialError> {
        let t = text.trim();
        let t = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        let mut digits = String::with_capacity(t.len());
        for c in t.chars() {
            match c {
                ':' | '-' | ' ' => {}
                c if c.is_ascii_hexdigit() => digits.push(c.to_ascii_lowercase()),
                c => return Err(SerialError::NotHex(c)),
            }
        }
        if digits.is_empty() {
            return Err(SerialError::Empty);
        }
        let trimmed = digits.trim_start_matches('0');
        let normal = if trimmed.is_empty() { "0" } else { trimmed };
        if normal.len() > MAX_HEX_DIGITS {
            return Err(SerialError::TooLong);
        }
        Ok(Self(normal.to_owned()))
    }

    /// The normal spelling.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CertSerial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_serial_compare_equal() {
        let a = CertSerial::parse("00:3A:5f:01").unwrap();
        for s in ["3a5f01", "0x3A5F01", " 3a-5f-01 ", "003a5f01"] {
            assert_eq!(CertSerial::parse(s).unwrap(), a, "{s}");
        }
        assert_eq!(a.as_str(), "3a5f01");
        assert_eq!(CertSerial::parse("00:00").unwrap().as_str(), "0");
    }

    #[test]
    fn bad_serials_say_what_is_wrong() {
        assert_eq!(CertSerial::parse(": :"), Err(SerialError::Empty));
        assert_eq!(CertSerial::parse("3g"), Err(SerialError::NotHex('g')));
        assert_eq!(
            CertSerial::parse(&"a".repeat(41)),
            Err(SerialError::TooLong)
        );
        assert!(CertSerial::parse(&format!("00{}", "a".repeat(40))).is_ok());
    }
}
