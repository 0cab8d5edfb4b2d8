//! Identical ALLOW decisions travel together: the first of a kind in a window is logged and
//! streamed at once, the ones like it in the same window are only counted and leave as one
//! summary event (`count`) when the window ends (at the next flush, or at the next decision of
//! its kind, whichever comes first). DENY and AUDIT decisions always travel one by one. This
//! keeps the decision log cheap at thousands of HTTP requests per second.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use svidcar_api::DecisionEvent;
use svidcar_identity::SpiffeId;
use svidcar_policy::{Action, RuleRef};
use tokio::time::Instant;

/// How long identical ALLOWs are folded together.
pub(crate) const WINDOW: Duration = Duration::from_secs(1);

/// Kinds of ALLOW folded at once at most; beyond it, decisions travel one by one.
const MAX_KINDS: usize = 4096;

/// What makes two ALLOW decisions the same.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Kind {
    source: Option<SpiffeId>,
    destination: Option<SpiffeId>,
    port: u16,
    rule: Option<RuleRef>,
    method: Option<String>,
    path: Option<String>,
}

impl Kind {
    fn of(e: &DecisionEvent) -> Self {
        Self {
            source: e.source_id.clone(),
            destination: e.destination_id.clone(),
            port: e.port,
            rule: e.rule.clone(),
            method: e.method.clone(),
            path: e.path.clone(),
        }
    }
}

#[derive(Debug)]
struct Window {
    opened: Instant,
    /// Decisions folded after the first (which already went out).
    folded: u64,
    /// The latest folded one, as the summary's template.
    latest: Option<DecisionEvent>,
}

impl Window {
    fn new(opened: Instant) -> Self {
        Self {
            opened,
            folded: 0,
            latest: None,
        }
    }

    /// The summary of what it folded, if it folded anything.
    fn summary(&mut self) -> Option<DecisionEvent> {
        let mut e = self.latest.take()?;
        e.count = self.folded;
        Some(e)
    }
}

/// What [`Aggregator::admit`] lets out at once.
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

/// The open windows.
#[derive(Debug, Default)]
pub(crate) struct Aggregator {
    open: Mutex<HashMap<Kind, Window>>,
}

impl Aggregator {
    /// What must go out now: `e` itself unless it was folded into its window's count, and
    /// the summary of its kind's previous window if that ended without a flush.
    pub(crate) fn admit(&self, e: DecisionEvent, now: Instant) -> Admitted {
        if e.action != Action::Allow {
            return Admitted::now(e);
        }
        let Ok(mut open) = self.open.lock() else {
            return Admitted::now(e);
        };
        let kind = Kind::of(&e);
        if let Some(w) = open.get_mut(&kind) {
            if now.saturating_duration_since(w.opened) < WINDOW {
                w.folded += 1;
                w.latest = Some(e);
                return Admitted::default();
            }
            // Its window ended before a flush came: it closes now and `e` opens the next.
            let ended = w.summary();
            *w = Window::new(now);
            return Admitted {
                ended,
                event: Some(e),
            };
        }
        if open.len() < MAX_KINDS {
            open.insert(kind, Window::new(now));
        }
        Admitted::now(e)
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
            out.extend(w.summary());
            false
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let a = Aggregator::default();
        let t0 = Instant::now();
        assert!(a.admit(allow("/x"), t0).event.is_some());
        for i in 1..=999 {
            let out = a.admit(allow("/x"), t0 + Duration::from_micros(i));
            assert!(out.event.is_none() && out.ended.is_none());
        }
        assert!(
            a.admit(allow("/y"), t0).event.is_some(),
            "another kind goes out at once"
        );
        assert!(a.flush(t0 + Duration::from_millis(500)).is_empty());
        let summaries = a.flush(t0 + WINDOW);
        assert_eq!(summaries.len(), 1, "only /x folded anything");
        assert_eq!(
            (summaries[0].count, summaries[0].path.as_deref()),
            (999, Some("/x"))
        );
        assert!(
            a.admit(allow("/x"), t0 + WINDOW).event.is_some(),
            "a new window starts"
        );
    }

    #[test]
    fn a_window_that_ended_before_a_flush_closes_at_the_next_decision_of_its_kind() {
        let a = Aggregator::default();
        let t0 = Instant::now();
        assert!(a.admit(allow("/x"), t0).event.is_some());
        for _ in 0..5 {
            assert!(a.admit(allow("/x"), t0).event.is_none());
        }
        // No flush came: the next one closes the window (its summary goes out with it) and
        // opens the next, where the following ones fold again.
        let late = t0 + WINDOW + Duration::from_millis(300);
        let out = a.admit(allow("/x"), late);
        assert_eq!(out.ended.map(|e| e.count), Some(5));
        assert!(out.event.is_some());
        for _ in 0..3 {
            let out = a.admit(allow("/x"), late + Duration::from_millis(10));
            assert!(out.event.is_none() && out.ended.is_none());
        }
        // A window that folded nothing has no summary.
        let out = a.admit(allow("/y"), t0);
        assert!(out.event.is_some());
        let out = a.admit(allow("/y"), late);
        assert!(out.ended.is_none() && out.event.is_some());
        let summaries = a.flush(late + WINDOW);
        assert_eq!(summaries.iter().map(|e| e.count).collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn denials_are_never_folded() {
        let a = Aggregator::default();
        let mut deny = allow("/admin");
        deny.action = Action::Deny;
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(a.admit(deny.clone(), t0).event.is_some());
        }
        assert!(a.flush(t0 + WINDOW).is_empty());
    }
}
