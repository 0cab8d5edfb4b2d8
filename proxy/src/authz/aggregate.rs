//! Identical ALLOW decisions travel together: the first of a kind in a window is logged and
//! streamed at once, the ones like it in the same window are only counted and leave as one
//! summary event (`count`) when the window ends (at the next flush, or at the next decision of
//! its kind, whichever comes first). DENY and AUDIT decisions always travel one by one. This
//! keeps the decision log cheap at thousands of HTTP requests per second.
//!
//! Identical means the same caller, workload, port, deciding rule, method, path, reason and
//! policy version: a policy update in the middle of a window starts a new one, so every
//! summary names the version that decided all it counts. What may differ is the time and the
//! addresses; the summary carries the latest folded decision's.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use prometheus::IntCounter;
use svidcar_api::DecisionEvent;
use svidcar_identity::SpiffeId;
use svidcar_policy::RuleRef;
use tokio::time::Instant;

use crate::metrics::Handle;

/// How long identical ALLOWs are folded together.
pub(crate) const WINDOW: Duration = Duration::from_secs(1);

/// Kinds of ALLOW folded at once at most; beyond it, decisions travel one by one.
const MAX_KINDS: usize = 4096;

/// What makes two ALLOW decisions the same, borrowed from the decision at hand (an ALLOW
/// folded into its window is looked up without building anything).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct KindRef<'a> {
    pub(crate) source: Option<&'a SpiffeId>,
    pub(crate) destination: Option<&'a SpiffeId>,
    pub(crate) port: u16,
    pub(crate) rule: Option<&'a RuleRef>,
    pub(crate) method: Option<&'a str>,
    pub(crate) path: Option<&'a str>,
    pub(crate) reason: &'a str,
    pub(crate) policy_version: &'a str,
}

/// A [`KindRef`] kept by its window.
#[derive(Debug)]
struct Kind {
    source: Option<SpiffeId>,
    destination: Option<SpiffeId>,
    port: u16,
    rule: Option<RuleRef>,
    method: Option<String>,
    path: Option<String>,
    reason: String,
    policy_version: String,
}

impl Kind {
    fn of(k: KindRef<'_>) -> Self {
        Self {
            source: k.source.cloned(),
            destination: k.destination.cloned(),
            port: k.port,
            rule: k.rule.cloned(),
            method: k.method.map(str::to_owned),
            path: k.path.map(str::to_owned),
            reason: k.reason.to_owned(),
            policy_version: k.policy_version.to_owned(),
        }
    }

    fn as_ref(&self) -> KindRef<'_> {
        KindRef {
            source: self.source.as_ref(),
            destination: self.destination.as_ref(),
            port: self.port,
            rule: self.rule.as_ref(),
            method: self.method.as_deref(),
            path: self.path.as_deref(),
            reason: &self.reason,
            policy_version: &self.policy_version,
        }
    }
}

/// What differs between decisions of one kind: the latest folded one's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Moment {
    pub(crate) time_ms: i64,
    pub(crate) source_addr: SocketAddr,
    pub(crate) destination_addr: SocketAddr,
}

#[derive(Debug)]
struct Window {
    kind: Kind,
    opened: Instant,
    /// Decisions folded after the first (which already went out).
    folded: u64,
    /// The first folded one (made once per window), the summary's template.
    template: Option<DecisionEvent>,
    /// The latest folded one's moment.
    latest: Option<Moment>,
    /// The kind's decision counter.
    counter: Option<Handle<IntCounter>>,
}

impl Window {
    fn new(kind: Kind, opened: Instant) -> Self {
        Self {
            kind,
            opened,
            folded: 0,
            template: None,
            latest: None,
            counter: None,
        }
    }

    /// Closes the window and opens the next at `now`; the summary of what it folded, if it
    /// folded anything.
    fn reopen(&mut self, now: Instant) -> Option<DecisionEvent> {
        self.opened = now;
        let mut e = self.template.take()?;
        if let Some(m) = self.latest.take() {
            e.time_ms = m.time_ms;
            e.source_addr = m.source_addr;
            e.destination_addr = m.destination_addr;
        }
        e.count = std::mem::take(&mut self.folded);
        Some(e)
    }

    /// Counts one decision of its kind.
    fn count(&mut self, counter: &impl Fn() -> Handle<IntCounter>) {
        if let Some(c) = self.counter.as_ref().and_then(Handle::get) {
            c.inc();
            return;
        }
        let h = counter();
        if let Some(c) = h.get() {
            c.inc();
        }
        self.counter = Some(h);
    }
}

/// What [`Aggregator::allow`] lets out at once.
#[derive(Debug, Default)]
pub(crate) struct Admitted {
    /// The summary of the window of its kind that just ended.
    pub(crate) ended: Option<DecisionEvent>,
    /// The decision itself, unless it was folded.
    pub(crate) event: Option<DecisionEvent>,
}

impl Admitted {
    fn now(e: DecisionEvent) -> Self {
        Self {
            ended: None,
            event: Some(e),
        }
    }
}

/// The open windows, by the hash of their kind (a kind whose hash another holds is not
/// folded).
#[derive(Debug, Default)]
pub(crate) struct Aggregator {
    open: Mutex<HashMap<u64, Window>>,
    hasher: RandomState,
}

impl Aggregator {
    /// An ALLOW of `kind` at `moment`, counted with `counter` (a handle on its decision
    /// counter, asked for once per kind): what must go out now is the decision itself
    /// (`event`, made only then) unless it was folded into its window, and the summary of its
    /// kind's previous window if that ended without a flush.
    pub(crate) fn allow(
        &self,
        kind: KindRef<'_>,
        moment: Moment,
        now: Instant,
        event: impl FnOnce() -> DecisionEvent,
        counter: impl Fn() -> Handle<IntCounter>,
    ) -> Admitted {
        let count_alone = || {
            if let Some(c) = counter().get() {
                c.inc();
            }
        };
        let Ok(mut open) = self.open.lock() else {
            count_alone();
            return Admitted::now(event());
        };
        let hash = self.hasher.hash_one(kind);
        let room = open.len() < MAX_KINDS;
        match open.get_mut(&hash) {
            Some(w) if w.kind.as_ref() == kind => {
                w.count(&counter);
                if now.saturating_duration_since(w.opened) < WINDOW {
                    w.folded += 1;
                    w.latest = Some(moment);
                    if w.template.is_none() {
                        w.template = Some(event());
                    }
                    return Admitted::default();
                }
                // Its window ended before a flush came: it closes now and this one opens the
                // next.
                Admitted {
                    ended: w.reopen(now),
                    event: Some(event()),
                }
            }
            None if room => {
                let mut w = Window::new(Kind::of(kind), now);
                w.count(&counter);
                open.insert(hash, w);
                Admitted::now(event())
            }
            // Another kind holds its hash, or too many kinds are open: it travels alone.
            _ => {
                count_alone();
                Admitted::now(event())
            }
        }
    }

    /// Closes the windows that ended by `now`; returns one summary event per window that folded
    /// decisions (`count` = how many).
    pub(crate) fn flush(&self, now: Instant) -> Vec<DecisionEvent> {
        let Ok(mut open) = self.open.lock() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        open.retain(|_, w| {
            if now.saturating_duration_since(w.opened) < WINDOW {
                return true;
            }
            out.extend(w.reopen(now));
            false
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{IntCounterVec, Opts};
    use svidcar_policy::Action;

    use super::*;
    use crate::metrics::Tracked;

    /// An aggregator and the decision counter it counts into (by path).
    struct Folding {
        a: Aggregator,
        counts: Tracked<IntCounterVec>,
    }

    impl Folding {
        fn new() -> Self {
            Self {
                a: Aggregator::default(),
                counts: Tracked::new(
                    IntCounterVec::new(Opts::new("d_total", "d"), &["path"]).unwrap(),
                ),
            }
        }

        fn allow(&self, path: &str, now: Instant) -> Admitted {
            let e = allow(path);
            let moment = Moment {
                time_ms: e.time_ms,
                source_addr: e.source_addr,
                destination_addr: e.destination_addr,
            };
            self.a.allow(
                kind_of(&e),
                moment,
                now,
                || e.clone(),
                || self.counts.handle(&[path]),
            )
        }

        fn counted(&self, path: &str) -> u64 {
            self.counts.vec.with_label_values(&[path]).get()
        }
    }

    fn kind_of(e: &DecisionEvent) -> KindRef<'_> {
        KindRef {
            source: e.source_id.as_ref(),
            destination: e.destination_id.as_ref(),
            port: e.port,
            rule: e.rule.as_ref(),
            method: e.method.as_deref(),
            path: e.path.as_deref(),
            reason: &e.reason,
            policy_version: &e.policy_version,
        }
    }

    fn allow(path: &str) -> DecisionEvent {
        DecisionEvent {
            time_ms: 0,
            action: Action::Allow,
            source_id: Some(SpiffeId::parse("spiffe://td/client").unwrap()),
            destination_id: Some(SpiffeId::parse("spiffe://td/server").unwrap()),
            source_addr: "10.0.0.1:1".parse().unwrap(),
            destination_addr: "127.0.0.1:80".parse().unwrap(),
            port: 80,
            rule: Some(RuleRef {
                policy: "p".into(),
                rule: 0,
            }),
            reason: "allowed".into(),
            policy_version: "v".into(),
            method: Some("GET".into()),
            path: Some(path.into()),
            count: 1,
        }
    }

    #[test]
    fn identical_allows_in_a_window_become_one_counted_summary() {
        let f = Folding::new();
        let t0 = Instant::now();
        assert!(f.allow("/x", t0).event.is_some());
        for i in 1..=999 {
            let out = f.allow("/x", t0 + Duration::from_micros(i));
            assert!(out.event.is_none() && out.ended.is_none());
        }
        assert!(
            f.allow("/y", t0).event.is_some(),
            "another kind goes out at once"
        );
        assert!(f.a.flush(t0 + Duration::from_millis(500)).is_empty());
        let summaries = f.a.flush(t0 + WINDOW);
        assert_eq!(summaries.len(), 1, "only /x folded anything");
        assert_eq!(
            (summaries[0].count, summaries[0].path.as_deref()),
            (999, Some("/x"))
        );
        assert!(
            f.allow("/x", t0 + WINDOW).event.is_some(),
            "a new window starts"
        );
        assert_eq!(
            (f.counted("/x"), f.counted("/y")),
            (1001, 1),
            "each one counted"
        );
    }

    #[test]
    fn a_window_that_ended_before_a_flush_closes_at_the_next_decision_of_its_kind() {
        let f = Folding::new();
        let t0 = Instant::now();
        assert!(f.allow("/x", t0).event.is_some());
        for _ in 0..5 {
            assert!(f.allow("/x", t0).event.is_none());
        }
        // No flush came: the next one closes the window (its summary goes out with it) and
        // opens the next, where the following ones fold again.
        let late = t0 + WINDOW + Duration::from_millis(300);
        let out = f.allow("/x", late);
        assert_eq!(out.ended.map(|e| e.count), Some(5));
        assert!(out.event.is_some());
        for _ in 0..3 {
            let out = f.allow("/x", late + Duration::from_millis(10));
            assert!(out.event.is_none() && out.ended.is_none());
        }
        // A window that folded nothing has no summary.
        let out = f.allow("/y", t0);
        assert!(out.event.is_some());
        let out = f.allow("/y", late);
        assert!(out.ended.is_none() && out.event.is_some());
        let summaries = f.a.flush(late + WINDOW);
        assert_eq!(summaries.iter().map(|e| e.count).collect::<Vec<_>>(), [3]);
        assert_eq!((f.counted("/x"), f.counted("/y")), (10, 2));
    }

    /// A new policy version (or reason) in the middle of a window starts a window of its own:
    /// each summary counts only decisions made under the version it names.
    #[test]
    fn a_policy_update_starts_a_new_window() {
        let a = Aggregator::default();
        let counts = Tracked::new(IntCounterVec::new(Opts::new("d_total", "d"), &["p"]).unwrap());
        let t0 = Instant::now();
        let moment = Moment {
            time_ms: 0,
            source_addr: "10.0.0.1:1".parse().unwrap(),
            destination_addr: "127.0.0.1:80".parse().unwrap(),
        };
        let mut outs = Vec::new();
        for version in ["v1", "v1", "v1", "v2", "v2"] {
            let mut e = allow("/x");
            e.policy_version = version.into();
            let out = a.allow(
                kind_of(&e),
                moment,
                t0,
                || e.clone(),
                || counts.handle(&["x"]),
            );
            outs.push(out.event.map(|e| e.policy_version));
        }
        assert_eq!(
            outs,
            [Some("v1".into()), None, None, Some("v2".into()), None],
            "the first decision under v2 goes out at once"
        );
        let mut summaries: Vec<_> = a
            .flush(t0 + WINDOW)
            .into_iter()
            .map(|e| (e.policy_version, e.count))
            .collect();
        summaries.sort();
        assert_eq!(summaries, [("v1".into(), 2), ("v2".into(), 1)]);
        assert_eq!(counts.vec.with_label_values(&["x"]).get(), 5);
    }

    /// The summary carries the latest folded decision's time and addresses.
    #[test]
    fn the_summary_is_the_latest_folded_decision() {
        let a = Aggregator::default();
        let counts = Tracked::new(IntCounterVec::new(Opts::new("d_total", "d"), &["p"]).unwrap());
        let t0 = Instant::now();
        let e = allow("/x");
        let kind = kind_of(&e);
        for i in 0..3u16 {
            let moment = Moment {
                time_ms: i64::from(i),
                source_addr: SocketAddr::from(([10, 0, 0, 1], 1000 + i)),
                destination_addr: e.destination_addr,
            };
            a.allow(kind, moment, t0, || e.clone(), || counts.handle(&["x"]));
        }
        let s = a.flush(t0 + WINDOW).pop().unwrap();
        assert_eq!((s.count, s.time_ms, s.source_addr.port()), (2, 2, 1002));
    }
}
