//! What the benchmarks share: [`main`] runs a bench's async body on a multi-thread runtime and
//! turns an error into a message and a non-zero exit; [`median`] summarizes rounds.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

/// Runs `body` on a new multi-thread tokio runtime. On error, prints `{name}: FAILED: ` and the
/// error with its causes (`{:#}`, as `anyhow` shows them) and returns failure.
pub fn main<E: Display>(name: &str, body: impl Future<Output = Result<(), E>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(body) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The median of `values` (the upper one of an even count); NaN when there are none.
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_takes_the_middle_or_upper_middle() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), 3.0);
        assert!(median([]).is_nan());
    }
}
