//! Kubernetes resource quantities (`100m`, `64Mi`, `1.5`), checked before they reach a manifest.

use std::fmt;
use std::str::FromStr;

/// A resource quantity as Kubernetes writes it: a decimal number with an optional suffix
/// (`m`, `k`, `M`, `G`, …, `Ki`, `Mi`, `Gi`, …, or an exponent `e3`). Kept as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantity {
    text: String,
    value: f64,
}

/// A value that is not a Kubernetes quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a Kubernetes quantity (e.g. 100m, 0.5, 64Mi, 1Gi)")]
pub struct QuantityError(String);

impl Quantity {
    /// The quantity as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Its value in base units (cores, bytes), for comparing a request with a limit.
    pub(crate) fn value(&self) -> f64 {
        self.value
    }
}

fn multiplier(suffix: &str) -> Option<f64> {
    let m = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => {
            let exp = suffix.strip_prefix(['e', 'E'])?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            return exp.parse::<i32>().ok().map(|e| 10f64.powi(e));
        }
    };
    Some(m)
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || QuantityError(s.to_owned());
        let unsigned = s.strip_prefix('+').unwrap_or(s);
        let end = unsigned
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(unsigned.len());
        let (number, suffix) = unsigned.split_at(end);
        let digits = number.bytes().filter(u8::is_ascii_digit).count();
        if digits == 0 || number.matches('.').count() > 1 {
            return Err(err());
        }
        let value =
            number.parse::<f64>().map_err(|_| err())? * multiplier(suffix).ok_or_else(err)?;
        Ok(Quantity {
            text: s.to_owned(),
            value,
        })
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> f64 {
        s.parse::<Quantity>().unwrap().value()
    }

    #[test]
    fn parses_what_kubernetes_accepts() {
        assert_eq!(q("100m"), 0.1);
        assert_eq!(q("2"), 2.0);
        assert_eq!(q("0.5"), 0.5);
        assert_eq!(q(".5"), 0.5);
        assert_eq!(q("64Mi"), 64.0 * 1024.0 * 1024.0);
        assert_eq!(q("1G"), 1e9);
        assert_eq!(q("1e3"), 1000.0);
        assert_eq!("64Mi".parse::<Quantity>().unwrap().to_string(), "64Mi");
    }

    #[test]
    fn rejects_the_rest() {
        for bad in [
            "", "m", "-1", "1.2.3", "64MB", "1 Gi", "ten", "1e", "1e+", "0x10",
        ] {
            let e = bad.parse::<Quantity>().unwrap_err();
            assert!(e.to_string().contains("not a Kubernetes quantity"), "{bad}");
        }
    }
}
