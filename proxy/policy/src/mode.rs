//! The mutual-TLS requirement of an inbound port, set by configuration or by a
//! `PeerAuthentication` policy.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Mutual-TLS requirement of an inbound port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// Only mesh mTLS with a valid client SVID is accepted.
    Strict,
    /// Mesh mTLS is terminated; plaintext and other TLS pass through untouched.
    Permissive,
}

impl MtlsMode {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Strict => "strict",
            MtlsMode::Permissive => "permissive",
        }
    }
}

impl fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MtlsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "strict" => Ok(MtlsMode::Strict),
            "permissive" => Ok(MtlsMode::Permissive),
            other => Err(format!("{other:?} is not strict or permissive")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_round_trip() {
        for m in [MtlsMode::Strict, MtlsMode::Permissive] {
            assert_eq!(m.to_string().parse::<MtlsMode>(), Ok(m));
        }
        assert!("STRICT".parse::<MtlsMode>().is_err());
    }
}
