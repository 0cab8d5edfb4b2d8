//! Reconnect and retry pacing shared by every client of svidcar (Workload API, control plane,
//! node API): exponential backoff from 200 ms to 10 s, spread by a random jitter; and the pacing
//! of every accept loop (proxy and control plane) after a failed accept ([`AcceptErrors`]).

use std::time::Duration;

/// Exponential backoff with jitter, from 200 ms to 10 s.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(10);

    /// Starts at the shortest delay.
    pub fn new() -> Self {
        Self { next: Self::MIN }
    }

    /// Back to the shortest delay (after a success).
    pub fn reset(&mut self) {
        self.next = Self::MIN;
    }

    /// The delay to wait now; `jitter` in [0, 1) spreads the retries of many clients.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let d = self.next.mul_f64(0.75 + jitter.clamp(0.0, 1.0) / 2.0);
        self.next = (self.next * 2).min(Self::MAX);
        d
    }
}

/// A draw in [0, 1) from the system random source (0.5 if it fails).
pub fn jitter() -> f64 {
    let mut b = [0u8; 2];
    match rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut b)
    {
        Ok(()) => f64::from(u16::from_le_bytes(b)) / 65536.0,
        Err(_) => 0.5,
    }
}

/// How long an accept loop pauses after a failed accept. Out of file descriptors (EMFILE,
/// ENFILE) the connection stays queued and the listener stays readable: retrying at once would
/// spin.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Failed accepts are logged at most once per this interval; the line says how many were not.
pub const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// One accept loop's failed accepts: backs off after each, logs at most once per interval.
#[derive(Debug, Default)]
pub struct AcceptErrors {
    last_logged: Option<tokio::time::Instant>,
    suppressed: u64,
}

impl AcceptErrors {
    /// Logs `e` (unless logged within the interval: then counts it) and backs off; returns
    /// whether it logged. `listener` names the listener in the log line.
    pub async fn on_error(&mut self, listener: &str, e: &std::io::Error) -> bool {
        let now = tokio::time::Instant::now();
        if self
            .last_logged
            .is_none_or(|t| now.duration_since(t) >= ACCEPT_ERROR_LOG_INTERVAL)
        {
            tracing::warn!(
                listener,
                error = %e,
                not_logged = self.suppressed,
                "accept failed; retrying every {ACCEPT_BACKOFF:?}, logging at most every {ACCEPT_ERROR_LOG_INTERVAL:?}"
            );
            self.last_logged = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        tokio::time::sleep(ACCEPT_BACKOFF).await;
        self.suppressed == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener failing without pause (out of fds) for 25 s: one line at once, then one per
    /// 10 s, each after 50 ms of back-off.
    #[tokio::test(start_paused = true)]
    async fn failed_accepts_back_off_and_are_logged_once_per_interval() {
        let mut errors = AcceptErrors::default();
        let e = std::io::Error::from_raw_os_error(24);
        let start = tokio::time::Instant::now();
        let mut logged = 0;
        for _ in 0..500 {
            if errors.on_error("inbound", &e).await {
                logged += 1;
            }
        }
        assert_eq!(start.elapsed(), Duration::from_millis(500 * 50));
        assert_eq!(logged, 3, "at 0 s, 10 s and 20 s");
        assert_eq!(errors.suppressed, 99, "failures since the line at 20 s");
    }

    #[test]
    fn backoff_grows_to_a_cap_and_resets() {
        let mut b = Backoff::new();
        let delays: Vec<_> = (0..8).map(|_| b.next_delay(0.5)).collect();
        assert_eq!(delays[0], Duration::from_millis(200));
        assert_eq!(delays[1], Duration::from_millis(400));
        assert_eq!(delays[7], Duration::from_secs(10));
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        b.reset();
        assert_eq!(b.next_delay(0.0), Duration::from_millis(150));
        assert_eq!(b.next_delay(0.999_9).as_millis(), 500 - 1);
    }

    #[test]
    fn jitter_is_in_range() {
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }
}
