//! Failed joins counted per source (an IPv4 address, or an IPv6 /64 — one host's usual share):
//! a caller guessing join tokens gets a few tries per window, then ResourceExhausted until the
//! window has passed. The table is bounded; when full, the oldest source is forgotten first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Sources tracked at most; beyond it, passed windows are forgotten first, then the oldest.
const MAX_TRACKED: usize = 4096;

/// The source an address counts for: IPv4 as is, IPv6 by its /64.
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Failed joins per address.
#[derive(Debug)]
pub(super) struct JoinThrottle {
    limit: u32,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl JoinThrottle {
    /// At most `limit` failed joins per address within `window`.
    pub(super) fn new(limit: u32, window: Duration) -> Self {
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
    pub(super) fn allows(&self, ip: IpAddr, now: Instant) -> bool {
        match self.table().get(&source(ip)) {
            Some((since, count)) => now >= *since + self.window || *count < self.limit,
            None => true,
        }
    }

    /// Counts a failed join from `ip` at `now`.
    pub(super) fn failed(&self, ip: IpAddr, now: Instant) {
        let ip = source(ip);
        let mut table = self.table();
        if table.len() >= MAX_TRACKED && !table.contains_key(&ip) {
            let window = self.window;
            table.retain(|_, (since, _)| now < *since + window);
            if table.len() >= MAX_TRACKED {
                if let Some(oldest) = table
                    .iter()
                    .min_by_key(|(_, (since, _))| *since)
                    .map(|(k, _)| *k)
                {
                    table.remove(&oldest);
                }
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
        // IPv6: one /64 is one source.
        let v6a: IpAddr = "2001:db8:1:2::10".parse().unwrap();
        let v6b: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        let v6c: IpAddr = "2001:db8:1:3::10".parse().unwrap();
        for _ in 0..3 {
            t.failed(v6a, start);
        }
        assert!(!t.allows(v6b, start), "same /64");
        assert!(t.allows(v6c, start), "another /64");
        assert!(t.allows(a, start + Duration::from_secs(60)));
        t.failed(a, start + Duration::from_secs(60));
        assert!(t.allows(a, start + Duration::from_secs(61)), "a new window");
    }

    #[test]
    fn the_table_stays_bounded_and_forgets_the_oldest_first() {
        let t = JoinThrottle::new(1, Duration::from_secs(60));
        let start = Instant::now();
        let first: IpAddr = "192.0.2.1".parse().unwrap();
        t.failed(first, start);
        let second: IpAddr = "192.0.2.2".parse().unwrap();
        t.failed(second, start + Duration::from_secs(1));
        for i in 0..(MAX_TRACKED as u32 - 1) {
            t.failed(
                IpAddr::from((0x0a00_0000 + i).to_be_bytes()),
                start + Duration::from_secs(2),
            );
        }
        assert!(t.table().len() <= MAX_TRACKED);
        assert!(
            t.allows(first, start + Duration::from_secs(3)),
            "the oldest was forgotten"
        );
        assert!(
            !t.allows(second, start + Duration::from_secs(3)),
            "not everyone was"
        );
    }
}
