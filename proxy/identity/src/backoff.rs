//! Reconnect and retry pacing shared by every client of svidcar (Workload API, control plane,
//! node API): exponential backoff from 200 ms to 10 s, spread by a random jitter.

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

#[cfg(test)]
mod tests {
    use super::*;

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
