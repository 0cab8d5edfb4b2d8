//! Bounded waiting: poll a condition every few milliseconds until it holds or a deadline passes.
//!
//! The condition is a probe returning `bool` (holds or not) or `Option<T>` (`Some` carries the
//! value waited for). [`wait_for`] takes a plain closure, [`wait_until`] an async one; both panic
//! on timeout with a message naming what was awaited and for how long, which is how a test
//! reports it. The `try_` variants return [`TimedOut`] instead, for callers that add context
//! (a log) or propagate errors, and [`Wait`] sets a different poll interval.
//!
//! Time is `tokio::time`, so waits follow a paused clock in tests that pause time. A probe that
//! is still running at the deadline is dropped: the whole wait is bounded, not just the polling.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often a condition is polled unless a [`Wait`] says otherwise.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// What a probe reports: whether the condition holds and, if so, the value it yields.
pub trait Outcome {
    /// The value a wait returns once the condition holds.
    type Value;
    /// `Some` when the condition holds.
    fn into_option(self) -> Option<Self::Value>;
}

impl Outcome for bool {
    type Value = ();
    fn into_option(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn into_option(self) -> Option<T> {
        self
    }
}

/// A condition that did not hold within its limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {waited:?} waiting for {what}")]
pub struct TimedOut {
    /// What was awaited, e.g. "the SVID to rotate".
    pub what: String,
    /// The limit that passed.
    pub waited: Duration,
}

/// One bounded wait: what is awaited, for how long at most, how often to look.
#[derive(Debug, Clone)]
pub struct Wait {
    what: String,
    limit: Duration,
    interval: Duration,
}

impl Wait {
    /// Waits up to `limit` for `what` (a phrase completing "waiting for …"), polling every
    /// [`POLL_INTERVAL`].
    pub fn new(what: impl Into<String>, limit: Duration) -> Self {
        Wait {
            what: what.into(),
            limit,
            interval: POLL_INTERVAL,
        }
    }

    /// Polls every `interval` instead (for probes that are costly, e.g. spawn a process).
    pub fn every(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Polls the async `probe` (a closure returning a future) until it reports the condition holds; a probe still running at
    /// the deadline counts as not holding.
    pub async fn until<O: Outcome, F: Future<Output = O>>(
        self,
        mut probe: impl FnMut() -> F,
    ) -> Result<O::Value, TimedOut> {
        let deadline = Instant::now() + self.limit;
        loop {
            if let Ok(outcome) = tokio::time::timeout_at(deadline, probe()).await {
                if let Some(value) = outcome.into_option() {
                    return Ok(value);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(TimedOut {
                    what: self.what,
                    waited: self.limit,
                });
            }
            // The last look is at the deadline itself.
            tokio::time::sleep(self.interval.min(deadline - now)).await;
        }
    }

    /// Polls the plain `probe` until it reports the condition holds.
    pub async fn until_sync<O: Outcome>(
        self,
        mut probe: impl FnMut() -> O,
    ) -> Result<O::Value, TimedOut> {
        self.until(|| std::future::ready(probe())).await
    }
}

/// Waits up to `limit` for the plain `probe` to hold; `Err` names `what` on timeout.
pub async fn try_wait_for<O: Outcome>(
    what: &str,
    limit: Duration,
    probe: impl FnMut() -> O,
) -> Result<O::Value, TimedOut> {
    Wait::new(what, limit).until_sync(probe).await
}

/// Waits up to `limit` for the async `probe` (a closure returning a future) to hold; `Err` names `what` on timeout.
pub async fn try_wait_until<O: Outcome, F: Future<Output = O>>(
    what: &str,
    limit: Duration,
    probe: impl FnMut() -> F,
) -> Result<O::Value, TimedOut> {
    Wait::new(what, limit).until(probe).await
}

/// Waits up to `limit` for the plain `probe` to hold and returns its value; panics on timeout
/// with "timed out after {limit} waiting for {what}".
///
/// ```ignore
/// wait_for("the SVID to rotate", Duration::from_secs(10), || serial(&store) != before).await;
/// ```
pub async fn wait_for<O: Outcome>(
    what: &str,
    limit: Duration,
    probe: impl FnMut() -> O,
) -> O::Value {
    try_wait_for(what, limit, probe).await.unwrap_or_else(fail)
}

/// Waits up to `limit` for the async `probe` (a closure returning a future) to hold and returns its value; panics on timeout
/// with "timed out after {limit} waiting for {what}". The probe is a closure returning a future,
/// e.g. `|| async move { TcpStream::connect(addr).await.is_ok() }`.
pub async fn wait_until<O: Outcome, F: Future<Output = O>>(
    what: &str,
    limit: Duration,
    probe: impl FnMut() -> F,
) -> O::Value {
    try_wait_until(what, limit, probe)
        .await
        .unwrap_or_else(fail)
}

#[track_caller]
fn fail<T>(e: impl fmt::Display) -> T {
    panic!("{e}")
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn returns_as_soon_as_the_condition_holds() {
        let start = Instant::now();
        let polls = Cell::new(0);
        let value = wait_for("the third poll", Duration::from_secs(10), || {
            polls.set(polls.get() + 1);
            (polls.get() == 3).then_some("done")
        })
        .await;
        assert_eq!(value, "done");
        assert_eq!(polls.get(), 3);
        assert_eq!(
            start.elapsed(),
            2 * POLL_INTERVAL,
            "two pauses, then it held"
        );

        let start = Instant::now();
        wait_until("an async probe", Duration::from_secs(10), || async { true }).await;
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "no pause when it holds at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_names_what_was_awaited_and_for_how_long() {
        let start = Instant::now();
        let err = try_wait_for("the SVID to rotate", Duration::from_secs(3), || false)
            .await
            .unwrap_err();
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(3),
            "bounded by the limit"
        );
        assert_eq!(
            err.to_string(),
            "timed out after 3s waiting for the SVID to rotate"
        );

        let panic = tokio::spawn(wait_for("a listener", Duration::from_millis(100), || {
            None::<u8>
        }))
        .await
        .unwrap_err()
        .into_panic();
        assert_eq!(
            panic.downcast_ref::<String>().map(String::as_str),
            Some("timed out after 100ms waiting for a listener")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_hangs_is_cut_off_at_the_deadline() {
        let start = Instant::now();
        let err = Wait::new("a hung probe", Duration::from_secs(2))
            .every(Duration::from_millis(500))
            .until(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                true
            })
            .await
            .unwrap_err();
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert_eq!(err.what, "a hung probe");
    }

    #[tokio::test(start_paused = true)]
    async fn the_condition_is_checked_once_more_at_the_deadline() {
        let start = Instant::now();
        let got = Wait::new("the deadline", Duration::from_millis(50))
            .every(Duration::from_secs(1))
            .until_sync(|| start.elapsed() >= Duration::from_millis(50))
            .await;
        assert_eq!(got, Ok(()));
    }
}
