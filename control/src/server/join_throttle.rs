//! Failed joins counted per source address: a caller guessing join tokens gets a few tries per
//! window, then ResourceExhausted until the window has passed. The table is bounded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Addresses tracked at most; beyond it, windows that have passed are forgotten first, then all.
const MAX_TRACKED: usize = 4096;

/// Failed joins per address.
#[derive(Debug)]
pub struct JoinThrottle {
    limit: u32,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl JoinThrottle {
    /// At most `limit` failed joins per address within `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (Instant, u32)>> {
        match self.failures.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Whether `ip` may try to join at `now`.
    pub fn allows(&self, ip: IpAddr, now: Instant) -> bool {
        match self.table().get(&ip) {
            Some((since, count)) => now >= *since + self.window || *count < self.limit,
            None => true,
        }
    }

    /// Counts a failed join from `ip` at `now`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut table = self.table();
        if table.len() >= MAX_TRACKED && !table.contains_key(&ip) {
            let window = self.window;
            table.retain(|_, (since, _)| now < *since + window);
            if table.len() >= MAX_TRACKED {
                table.clear();
            }
        }
        let entry = table.entry(ip).or_insert((now, 0));
        if now >= entry.0 + self.window {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_failures_per_window_then_refused_until_it_passes() {
        let t = JoinThrottle::new(3, Duration::from_secs(60));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let start = Instant::now();
        for _ in 0..3 {
            assert!(t.allows(a, start));
            t.failed(a, start);
        }
        assert!(!t.allows(a, start + Duration::from_secs(59)));
        assert!(t.allows(b, start), "other addresses are not affected");
        assert!(t.allows(a, start + Duration::from_secs(60)));
        t.failed(a, start + Duration::from_secs(60));
        assert!(t.allows(a, start + Duration::from_secs(61)), "a new window");
    }

    #[test]
    fn the_table_stays_bounded() {
        let t = JoinThrottle::new(1, Duration::from_secs(60));
        let now = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 10) {
            t.failed(IpAddr::from(i.to_be_bytes()), now);
        }
        assert!(t.table().len() <= MAX_TRACKED);
    }
}
