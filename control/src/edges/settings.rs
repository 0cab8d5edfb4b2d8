//! The edge store's settings: what `svidcar control` does on a new edge, and the webhook URL.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// What the control plane does when an edge outside the baseline appears after learning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OnNewEdge {
    /// Log, count, list and (with a webhook) POST it.
    #[default]
    Alert,
    /// As `alert`, and push a generated DENY policy for exactly that edge to the proxies
    /// until it is allow-listed.
    Deny,
}

/// Where new-edge alerts are POSTed: an `http://` or `https://` URL (https trusts the
/// system's roots).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(hyper::Uri);

impl WebhookUrl {
    /// The URL.
    pub fn uri(&self) -> &hyper::Uri {
        &self.0
    }

    /// Whether it is `https`.
    pub fn is_https(&self) -> bool {
        self.0.scheme_str() == Some("https")
    }

    /// Host name or address (without brackets).
    pub fn host(&self) -> &str {
        let h = self.0.host().unwrap_or_default();
        h.trim_start_matches('[').trim_end_matches(']')
    }

    /// Port, explicit or the scheme's.
    pub fn port(&self) -> u16 {
        self.0
            .port_u16()
            .unwrap_or(if self.is_https() { 443 } else { 80 })
    }
}

impl FromStr for WebhookUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let uri: hyper::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err(format!("{s:?}: use an http:// or https:// URL")),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(format!("{s:?}: no host"));
        }
        Ok(Self(uri))
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for WebhookUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls() {
        let u: WebhookUrl = "http://127.0.0.1:9000/hook".parse().unwrap();
        assert_eq!(
            (u.host(), u.port(), u.is_https()),
            ("127.0.0.1", 9000, false)
        );
        let u: WebhookUrl = "https://alerts.example.org/x".parse().unwrap();
        assert_eq!(
            (u.host(), u.port(), u.is_https()),
            ("alerts.example.org", 443, true)
        );
        let u: WebhookUrl = "http://[::1]/".parse().unwrap();
        assert_eq!((u.host(), u.port()), ("::1", 80));
        for bad in ["ftp://x/", "/relative", "not a url", "http:///x"] {
            assert!(bad.parse::<WebhookUrl>().is_err(), "{bad}");
        }
    }
}
