//! The `--since` window: how far back traffic counts, in days as operators think of it (`7d`)
//! or in any unit a [`svidcar_identity::Dur`] takes (`36h`, `90m`).

use std::time::Duration;

use svidcar_identity::Dur;

/// A window that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// Not `<number>d`, `<number>w` nor a duration such as `12h`.
    #[error("{0:?} is not a window: use e.g. 7d, 2w, 36h or 90m")]
    Syntax(String),
    /// A zero window would find no traffic and suggest denying everything.
    #[error("{0:?}: the window must be longer than zero")]
    Empty(String),
}

/// Parses `7d`, `2w`, `36h`, `90m`, `30s`.
pub fn parse_since(s: &str) -> Result<Duration, WindowError> {
    let t = s.trim();
    let days = |n: &str, per: u64| {
        n.parse::<u64>()
            .map(|n| Duration::from_secs(n.saturating_mul(per)))
            .map_err(|_| WindowError::Syntax(s.to_owned()))
    };
    let d = if let Some(n) = t.strip_suffix('d') {
        days(n, 86_400)?
    } else if let Some(n) = t.strip_suffix('w') {
        days(n, 7 * 86_400)?
    } else {
        t.parse::<Dur>()
            .map_err(|_| WindowError::Syntax(s.to_owned()))?
            .0
    };
    if d.is_zero() {
        return Err(WindowError::Empty(s.to_owned()));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        assert_eq!(parse_since("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_since("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_since("36h"), Ok(Duration::from_secs(36 * 3600)));
        assert_eq!(parse_since("90m"), Ok(Duration::from_secs(90 * 60)));
        assert_eq!(parse_since("0d"), Err(WindowError::Empty("0d".into())));
        for bad in ["", "d", "7x", "-1d", "seven days"] {
            assert_eq!(
                parse_since(bad),
                Err(WindowError::Syntax(bad.into())),
                "{bad}"
            );
        }
    }
}
