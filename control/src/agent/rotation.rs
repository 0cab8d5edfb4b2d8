//! When to re-issue an SVID: a pure function of its validity window and a jitter draw.
//!
//! SPIRE's rule: rotate when about half the lifetime is left. We rotate between 40 % and 50 %
//! of the lifetime (never later than half, so a missed rotation still leaves half the lifetime
//! for retries), spread by `jitter` so that many SVIDs issued together do not all renew at once.

use std::time::{Duration, SystemTime};

/// The shortest wait between two rotations of one SVID, whatever its dates say (an SVID clamped
/// by an expiring CA must not make the agent spin).
pub const MIN_REFRESH: Duration = Duration::from_secs(1);

/// The instant to re-issue an SVID valid from `not_before` to `not_after`; `jitter` in [0, 1)
/// moves it from half the lifetime (0) towards 40 % of it (1).
pub fn refresh_at(not_before: SystemTime, not_after: SystemTime, jitter: f64) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let fraction = 0.5 - 0.1 * jitter.clamp(0.0, 1.0);
    not_before + lifetime.mul_f64(fraction)
}

/// How long to wait from `now` until [`refresh_at`], at least [`MIN_REFRESH`].
pub fn refresh_delay(
    not_before: SystemTime,
    not_after: SystemTime,
    now: SystemTime,
    jitter: f64,
) -> Duration {
    refresh_at(not_before, not_after, jitter)
        .duration_since(now)
        .unwrap_or(Duration::ZERO)
        .max(MIN_REFRESH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn half_the_lifetime_without_jitter() {
        assert_eq!(refresh_at(at(1000), at(4600), 0.0), at(2800));
    }

    #[test]
    fn jitter_only_moves_it_earlier_down_to_forty_percent() {
        let nb = at(0);
        let na = at(3600);
        assert_eq!(refresh_at(nb, na, 1.0), at(1440));
        for j in [0.0, 0.1, 0.5, 0.99, 1.0, 7.0, -3.0] {
            let r = refresh_at(nb, na, j);
            assert!(r >= at(1440) && r <= at(1800), "jitter {j}: {r:?}");
        }
    }

    #[test]
    fn delay_counts_from_now_with_a_floor() {
        let nb = at(100);
        let na = at(200);
        assert_eq!(refresh_delay(nb, na, at(110), 0.0), Duration::from_secs(40));
        // Already past the refresh point: re-issue soon, but not in a loop. Reversed dates (an
        // empty lifetime) refresh at not_before.
        assert_eq!(refresh_delay(nb, na, at(190), 0.0), MIN_REFRESH);
        assert_eq!(refresh_delay(na, nb, at(0), 0.0), Duration::from_secs(200));
        assert_eq!(refresh_delay(na, nb, at(250), 0.0), MIN_REFRESH);
    }

    #[test]
    fn short_lived_svids_with_a_little_backdating_rotate_a_few_seconds_in() {
        // 20 s TTL backdated by 2 s: rotation 9–11 s after issuance.
        let issued = at(1_000_000);
        let nb = issued - Duration::from_secs(2);
        let na = issued + Duration::from_secs(20);
        for j in [0.0, 0.5, 0.999] {
            let d = refresh_delay(nb, na, issued, j);
            assert!(
                d >= Duration::from_millis(6_800) && d <= Duration::from_secs(9),
                "{d:?}"
            );
        }
    }
}
