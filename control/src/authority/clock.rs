//! Where the authority reads the time. Certificates carry wall-clock dates, so production reads
//! the system clock; tests that pause tokio's time need a clock that moves with it instead
//! (`SystemTime` does not).

use std::fmt;
use std::sync::Arc;

use svidcar_identity::unix_now;

/// A source of the current time, whole seconds since the Unix epoch.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> i64 + Send + Sync>);

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Self {
        Self(Arc::new(unix_now))
    }

    /// Starts at the system time and then moves with tokio's clock, so that a test pausing and
    /// advancing tokio's time moves it too. Create it inside the runtime that the test pauses.
    pub fn tokio() -> Self {
        let start = unix_now();
        let base = tokio::time::Instant::now();
        Self(Arc::new(move || {
            start.saturating_add(i64::try_from(base.elapsed().as_secs()).unwrap_or(i64::MAX))
        }))
    }

    /// Any function of no arguments (tests).
    pub fn from_fn(f: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// Now.
    pub fn now(&self) -> i64 {
        (self.0)()
    }
}
