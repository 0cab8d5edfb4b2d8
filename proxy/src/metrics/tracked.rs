//! Bounded label cardinality: every label set a metric has seen is remembered with the time it
//! was last touched, so sets idle for a while can be dropped; and a cap on distinct peer
//! identities turns a flood of new IDs into one `overflow` label value (counted).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec};
use tokio::time::Instant;

/// A labelled metric family whose children can be removed.
pub(crate) trait LabelledVec: Clone + prometheus::core::Collector + 'static {
    /// The child metric type.
    type Child;
    /// The child for these label values.
    fn child(&self, labels: &[&str]) -> Self::Child;
    /// Removes the child for these label values.
    fn remove(&self, labels: &[&str]);
}

impl LabelledVec for IntCounterVec {
    type Child = IntCounter;
    fn child(&self, labels: &[&str]) -> IntCounter {
        self.with_label_values(labels)
    }
    fn remove(&self, labels: &[&str]) {
        let _ = self.remove_label_values(labels);
    }
}

impl LabelledVec for HistogramVec {
    type Child = Histogram;
    fn child(&self, labels: &[&str]) -> Histogram {
        self.with_label_values(labels)
    }
    fn remove(&self, labels: &[&str]) {
        let _ = self.remove_label_values(labels);
    }
}

/// Label sets of one metric vector and when each was last used.
pub(crate) struct Tracked<V: LabelledVec> {
    pub(crate) vec: V,
    seen: Mutex<HashMap<u64, Vec<Seen>>>,
    /// Hashes label values for `seen`, so that marking a known set as used allocates nothing.
    hasher: RandomState,
    /// The origin of [`Stamp`] times.
    base: Instant,
}

/// A label set and when it was last used.
struct Seen {
    labels: Vec<String>,
    stamp: Arc<Stamp>,
}

impl Seen {
    fn is(&self, labels: &[&str]) -> bool {
        self.labels
            .iter()
            .map(String::as_str)
            .eq(labels.iter().copied())
    }
}

/// When a label set was last used (nanoseconds after [`Tracked`]'s base), and whether a sweep
/// dropped it; shared with the [`Handle`]s that use the set without a lookup.
#[derive(Debug)]
struct Stamp {
    at: AtomicU64,
    dropped: AtomicBool,
}

/// One label set's child metric, kept by a user of the set so that using it takes no lookup,
/// no lock and no label hashing: [`get`](Self::get) marks it used, like [`Tracked::with`].
/// Once a sweep dropped the set (idle past the sweep cutoff) the handle gives nothing and its
/// holder takes a new one.
#[derive(Debug, Clone)]
pub(crate) struct Handle<C> {
    child: C,
    stamp: Arc<Stamp>,
    base: Instant,
}

impl<C> Handle<C> {
    /// The child, marked as used now; `None` once a sweep dropped its label set.
    pub(crate) fn get(&self) -> Option<&C> {
        if self.stamp.dropped.load(Ordering::Acquire) {
            return None;
        }
        self.stamp
            .at
            .store(since(self.base, Instant::now()), Ordering::Relaxed);
        Some(&self.child)
    }
}

/// `now` as nanoseconds after `base`.
fn since(base: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(base).as_nanos()).unwrap_or(u64::MAX)
}

impl<V: LabelledVec> Tracked<V> {
    pub(crate) fn new(vec: V) -> Self {
        Self {
            vec,
            seen: Mutex::new(HashMap::new()),
            hasher: RandomState::new(),
            base: Instant::now(),
        }
    }

    /// The metric for `labels`, marked as used now.
    pub(crate) fn with(&self, labels: &[&str]) -> V::Child {
        self.handle(labels).child
    }

    /// A handle on the metric for `labels`, marked as used now.
    pub(crate) fn handle(&self, labels: &[&str]) -> Handle<V::Child> {
        let now = since(self.base, Instant::now());
        let stamp = match self.seen.lock() {
            Ok(mut seen) => {
                // Sets whose hashes collide share a bucket (in practice, one set per bucket).
                let bucket = seen.entry(self.hasher.hash_one(labels)).or_default();
                match bucket.iter_mut().find(|s| s.is(labels)) {
                    Some(s) => {
                        s.stamp.at.store(now, Ordering::Relaxed);
                        s.stamp.clone()
                    }
                    None => {
                        let stamp = Arc::new(Stamp {
                            at: AtomicU64::new(now),
                            dropped: AtomicBool::new(false),
                        });
                        bucket.push(Seen {
                            labels: labels.iter().map(|l| l.to_string()).collect(),
                            stamp: stamp.clone(),
                        });
                        stamp
                    }
                }
            }
            // Untracked (never swept): a poisoned lock only stops the bookkeeping.
            Err(_) => Arc::new(Stamp {
                at: AtomicU64::new(now),
                dropped: AtomicBool::new(false),
            }),
        };
        Handle {
            child: self.vec.child(labels),
            stamp,
            base: self.base,
        }
    }

    /// Drops label sets not used since `cutoff`; returns how many. A handle used at the very
    /// moment its set is dropped (after idling past the cutoff) may count once into the
    /// dropped child.
    pub(crate) fn sweep(&self, cutoff: Instant) -> usize {
        let Ok(mut seen) = self.seen.lock() else {
            return 0;
        };
        let cutoff = since(self.base, cutoff);
        let mut dropped = 0;
        seen.retain(|_, bucket| {
            bucket.retain(|s| {
                if s.stamp.at.load(Ordering::Relaxed) >= cutoff {
                    return true;
                }
                s.stamp.dropped.store(true, Ordering::Release);
                let refs: Vec<&str> = s.labels.iter().map(String::as_str).collect();
                self.vec.remove(&refs);
                dropped += 1;
                false
            });
            !bucket.is_empty()
        });
        dropped
    }

    /// Label sets currently held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.seen
            .lock()
            .map(|s| s.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    pub(crate) fn collector(&self) -> Box<dyn prometheus::core::Collector> {
        Box::new(self.vec.clone())
    }
}

/// Admits at most `cap` distinct identities as label values at a time.
pub(crate) struct IdCap {
    cap: usize,
    idle: Duration,
    known: Mutex<HashMap<String, Instant>>,
}

/// The label value used once the cap is reached.
pub(crate) const OVERFLOW: &str = "overflow";

impl IdCap {
    pub(crate) fn new(cap: usize, idle: Duration) -> Self {
        Self {
            cap,
            idle,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// The label value for `id`: itself while under the cap (or already known), else
    /// [`OVERFLOW`]; the second value says whether the cap was hit.
    pub(crate) fn admit(&self, id: &str) -> (String, bool) {
        let Ok(mut known) = self.known.lock() else {
            return (OVERFLOW.to_owned(), true);
        };
        let now = Instant::now();
        if let Some(t) = known.get_mut(id) {
            *t = now;
            return (id.to_owned(), false);
        }
        if known.len() >= self.cap {
            let idle = self.idle;
            known.retain(|_, t| now.duration_since(*t) < idle);
            if known.len() >= self.cap {
                return (OVERFLOW.to_owned(), true);
            }
        }
        known.insert(id.to_owned(), now);
        (id.to_owned(), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{IntCounterVec, Opts};

    #[tokio::test(start_paused = true)]
    async fn idle_label_sets_are_dropped() {
        let t = Tracked::new(IntCounterVec::new(Opts::new("x_total", "x"), &["id"]).unwrap());
        t.with(&["a"]).inc();
        tokio::time::advance(Duration::from_secs(60)).await;
        t.with(&["b"]).inc();
        assert_eq!(t.sweep(Instant::now() - Duration::from_secs(30)), 1);
        assert_eq!(t.len(), 1);
        assert_eq!(t.vec.with_label_values(&["b"]).get(), 1);
        // "a" was removed: a new child starts from zero.
        assert_eq!(t.vec.with_label_values(&["a"]).get(), 0);
    }

    /// A handle in use keeps its set from the sweep; once idle past the cutoff the set is
    /// dropped and the handle says so, and a new handle counts into a new child.
    #[tokio::test(start_paused = true)]
    async fn a_handle_keeps_its_set_while_used_and_says_when_it_was_dropped() {
        let t = Tracked::new(IntCounterVec::new(Opts::new("x_total", "x"), &["id"]).unwrap());
        let h = t.handle(&["a"]);
        h.get().unwrap().inc();
        tokio::time::advance(Duration::from_secs(60)).await;
        h.get().unwrap().inc();
        assert_eq!(t.sweep(Instant::now() - Duration::from_secs(30)), 0);
        assert_eq!(t.vec.with_label_values(&["a"]).get(), 2);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(t.sweep(Instant::now() - Duration::from_secs(30)), 1);
        assert!(h.get().is_none(), "the set was dropped");
        t.handle(&["a"]).get().unwrap().inc();
        assert_eq!(t.vec.with_label_values(&["a"]).get(), 1);
        assert_eq!(t.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_admits_known_ids_and_overflows_new_ones() {
        let cap = IdCap::new(2, Duration::from_secs(300));
        assert_eq!(cap.admit("a"), ("a".into(), false));
        assert_eq!(cap.admit("b"), ("b".into(), false));
        assert_eq!(cap.admit("c"), (OVERFLOW.into(), true));
        assert_eq!(cap.admit("a"), ("a".into(), false));
        tokio::time::advance(Duration::from_secs(301)).await;
        assert_eq!(cap.admit("c"), ("c".into(), false), "idle ids make room");
    }
}
