//! Identical ALLOW decisions travel together: the first of a kind in a window is logged and
//! streamed at once, the ones like it in the same window are only counted and leave as one
//! summary event (`count`) when the window ends. DENY and AUDIT decisions always travel one by
//! one. This keeps the decision log cheap at thousands of HTTP requests per second.

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

/// The open windows.
#[derive(Debug, Default)]
pub(crate) struct Aggregator {
    open: Mutex<HashMap<Kind, Window>>,
}

impl Aggregator {
    /// `e` back when it must go out now; `None` when it was folded into its window's count.
    pub(crate) fn admit(&self, e: DecisionEvent, now: Instant) -> Option<DecisionEvent> {
        if e.action != Action::Allow {
            return Some(e);
        }
        let Ok(mut open) = self.open.lock() else {
            return Some(e);
        };
        let kind = Kind::of(&e);
        if let Some(w) = open.get_mut(&kind) {
            if now.saturating_duration_since(w.opened) < WINDOW {
                w.folded += 1;
                w.latest = Some(e);
                return None;
            }
            // An expired window not flushed yet: its count leaves with the next flush.
            return Some(e);
        }
        if open.len() < MAX_KINDS {
            open.insert(
                kind,
                Window {
                    opened: now,
                    folded: 0,
                    latest: None,
                },
            );
        }
        Some(e)
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
            if let Some(mut e) = w.latest.take() {
                e.count = w.folded;
                out.push(e);
            }
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
        assert!(a.admit(allow("/x"), t0).is_some());
        for i in 1..=999 {
            assert!(a
                .admit(allow("/x"), t0 + Duration::from_micros(i))
                .is_none());
        }
        assert!(
            a.admit(allow("/y"), t0).is_some(),
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
            a.admit(allow("/x"), t0 + WINDOW).is_some(),
            "a new window starts"
        );
    }

    #[test]
    fn denials_are_never_folded() {
        let a = Aggregator::default();
        let mut deny = allow("/admin");
        deny.action = Action::Deny;
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(a.admit(deny.clone(), t0).is_some());
        }
        assert!(a.flush(t0 + WINDOW).is_empty());
    }
}
