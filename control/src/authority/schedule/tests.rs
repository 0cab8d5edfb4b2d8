use super::*;

const T0: i64 = 1_000_000;

fn w(not_before: i64, not_after: i64) -> Window {
    Window {
        not_before: T0 + not_before,
        not_after: T0 + not_after,
    }
}

fn step(action: Action, at: i64) -> Step {
    Step {
        action,
        at: T0 + at,
    }
}

/// A one-hour active root from T0, SVIDs of 5 minutes: publication delay 300 s.
const A: Window = Window {
    not_before: T0,
    not_after: T0 + 3600,
};

/// Name, active, prepared, retired, now (after T0), the step expected.
type Case<'a> = (&'a str, Window, Option<Window>, &'a [Retired], i64, Step);

#[test]
fn table() {
    let drop_early = [Retired {
        not_after: T0 + 3600,
        drop_at: T0 + 3300,
    }];
    let drop_late = [Retired {
        not_after: T0 + 3500,
        drop_at: T0 + 9999,
    }];
    let far = [Retired {
        not_after: T0 + 9999,
        drop_at: T0 + 9999,
    }];
    let two = [
        Retired {
            not_after: T0 + 3600,
            drop_at: T0 + 3500,
        },
        Retired {
            not_after: T0 + 3600,
            drop_at: T0 + 3400,
        },
    ];
    let b = w(1800, 5400);
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("fresh: prepare at half", A, None, &[], 10, step(Action::Prepare, 1800)),
        ("down through the prepare point: due at once", A, None, &[], 2000, step(Action::Prepare, 1800)),
        ("prepared on time: activate at 5/6", A, Some(b), &[], 1800, step(Action::Activate, 3000)),
        ("down through the activate point, published long ago: due", A, Some(b), &[], 3300, step(Action::Activate, 3000)),
        ("prepared late: published for the delay first", A, Some(w(2900, 6500)), &[], 2900, step(Action::Activate, 3200)),
        ("prepared after the activate point: never after the active expires", A, Some(w(3500, 7100)), &[], 3500, step(Action::Activate, 3600)),
        ("active expired, successor valid: activate now", A, Some(b), &[], 3700, step(Action::Activate, 3700)),
        ("active expired, no successor: replace now", A, None, &[], 3700, step(Action::Replace, 3700)),
        ("active expired, successor expired too: replace now", A, Some(b), &[], 9000, step(Action::Replace, 9000)),
        ("active expired this second, no successor: a second later", A, None, &[], 3600, step(Action::Replace, 3601)),
        ("successor dies before its activation: discard at its expiry", A, Some(w(1800, 1900)), &[], 1800, step(Action::Discard, 1900)),
        ("retired root dropped just after its drop time", b, None, &drop_early, 1800, step(Action::Drop(0), 3301)),
        ("a drop time past the root's expiry is capped", b, None, &drop_late, 1800, step(Action::Drop(0), 3501)),
        ("the earliest drop first", b, None, &two, 1800, step(Action::Drop(1), 3401)),
        ("an earlier main step wins over a drop", b, None, &far, 1800, step(Action::Prepare, 3600)),
        ("an earlier drop wins over the main step", b, Some(w(3599, 7199)), &drop_late, 3599, step(Action::Drop(0), 3501)),
        ("no drop pending: the main step", b, None, &[], 1800, step(Action::Prepare, 3600)),
        ("zero lifetime: replaced a second later, not in a loop", w(0, 0), None, &[], 0, step(Action::Replace, 1)),
        ("one-second lifetime: prepare at once", w(0, 1), None, &[], 0, step(Action::Prepare, 0)),
        ("one-second lifetime successor: discarded no sooner than a second later", w(0, 1), Some(w(0, 1)), &[], 0, step(Action::Discard, 1)),
    ];
    for (name, active, prepared, retired, now, want) in cases {
        let roots = Roots {
            active,
            prepared,
            retired,
        };
        assert_eq!(next_step(&roots, T0 + now, 300), want, "{name}");
    }
}

#[test]
fn publish_delay_is_the_svid_ttl_capped_by_a_sixth_of_the_lifetime_at_least_a_second() {
    assert_eq!(publish_delay(A, 300), 300);
    assert_eq!(publish_delay(A, 86_400), 600);
    assert_eq!(publish_delay(A, 0), MIN_STEP);
    assert_eq!(publish_delay(w(0, 3), 300), MIN_STEP);
    assert_eq!(publish_delay(w(10, 0), 300), MIN_STEP);
}

#[test]
fn drop_time_covers_every_svid_signed_and_never_outlives_the_root() {
    assert_eq!(drop_at(A, T0 + 3000, 300, 0), T0 + 3300);
    // An SVID signed with a longer TTL than configured (a CSR) keeps the root longer.
    assert_eq!(drop_at(A, T0 + 3000, 300, T0 + 3450), T0 + 3450);
    assert_eq!(drop_at(A, T0 + 3500, 300, 0), T0 + 3600);
    assert_eq!(drop_at(A, T0 + 3500, 300, T0 + 9999), T0 + 3600);
}

/// The authority as a model: applies each step the way it does, with roots `ca_ttl` long.
struct Model {
    active: Window,
    prepared: Option<Window>,
    retired: Vec<Retired>,
    ca_ttl: i64,
    svid_ttl: i64,
}

impl Model {
    fn new(now: i64, ca_ttl: i64, svid_ttl: i64) -> Self {
        let mut m = Model {
            active: w(0, 0),
            prepared: None,
            retired: Vec::new(),
            ca_ttl,
            svid_ttl,
        };
        m.replace(now);
        m
    }

    fn replace(&mut self, now: i64) {
        // Like Ca::generate_at: backdated by a tenth of the lifetime, at most 60 s.
        let backdate = (self.ca_ttl / 10).min(60);
        self.active = Window {
            not_before: now - backdate,
            not_after: now + self.ca_ttl,
        };
        self.prepared = None;
    }

    fn roots(&self) -> Roots<'_> {
        Roots {
            active: self.active,
            prepared: self.prepared,
            retired: &self.retired,
        }
    }

    /// Applies `action` at `now`, checking the rule's promises.
    fn apply(&mut self, action: Action, now: i64, what: &str) {
        let a = self.active;
        match action {
            Action::Prepare => {
                assert!(self.prepared.is_none(), "{what}: prepare twice");
                assert!(now >= a.fraction(1, 2), "{what}: prepared before half");
                self.prepared = Some(Window {
                    not_before: now,
                    not_after: now + self.ca_ttl,
                });
            }
            Action::Activate => {
                let p = self.prepared.take().expect("activate without successor");
                assert!(p.not_after > now, "{what}: activated an expired root");
                if a.not_after > now {
                    assert!(now >= a.fraction(5, 6), "{what}: activated before 5/6");
                    assert!(
                        now - p.not_before >= publish_delay(a, self.svid_ttl),
                        "{what}: activated before it was published long enough"
                    );
                }
                if a.not_after >= now {
                    self.retired.push(Retired {
                        not_after: a.not_after,
                        drop_at: drop_at(a, now, self.svid_ttl, 0),
                    });
                }
                self.active = p;
            }
            Action::Discard => {
                let p = self.prepared.take().expect("discard without successor");
                assert!(now >= p.not_after, "{what}: discarded a usable successor");
            }
            Action::Drop(i) => {
                let r = self.retired.remove(i);
                assert!(
                    now > r.drop_at.min(r.not_after),
                    "{what}: dropped before its last SVID expired"
                );
            }
            Action::Replace => {
                assert!(now > a.not_after, "{what}: replaced a root still valid");
                self.replace(now);
            }
        }
    }
}

/// Runs the model through `span` seconds; every `down_every`-th step the agent is "down" for
/// `down_for` seconds. Returns the actions taken.
fn simulate(
    ca_ttl: i64,
    svid_ttl: i64,
    down_every: usize,
    down_for: i64,
    span: i64,
) -> Vec<Action> {
    let what = format!("ca_ttl {ca_ttl}, svid_ttl {svid_ttl}, down {down_for} every {down_every}");
    let mut now = T0;
    let mut m = Model::new(now, ca_ttl, svid_ttl);
    let mut taken = Vec::new();
    let mut same_instant = 0;
    for n in 1..=20_000 {
        if now >= T0 + span {
            return taken;
        }
        if down_every > 0 && n % down_every == 0 {
            now += down_for;
        }
        let s = next_step(&m.roots(), now, svid_ttl);
        if s.at > now {
            now = s.at;
            same_instant = 0;
        }
        same_instant += 1;
        assert!(same_instant <= 8, "{what}: spinning at {now}: {taken:?}");
        m.apply(s.action, now, &what);
        taken.push(s.action);
    }
    panic!("{what}: no progress");
}

#[test]
fn healthy_rotation_prepares_activates_and_drops_without_gaps() {
    for (ca_ttl, svid_ttl) in [(30, 6), (3600, 300), (365 * 86_400, 3600), (600, 3600)] {
        let taken = simulate(ca_ttl, svid_ttl, 0, 0, 10 * ca_ttl);
        assert!(
            !taken
                .iter()
                .any(|a| matches!(a, Action::Replace | Action::Discard)),
            "{ca_ttl}/{svid_ttl}: {taken:?}"
        );
        let activations = taken.iter().filter(|a| **a == Action::Activate).count();
        assert!(activations >= 9, "{ca_ttl}/{svid_ttl}: {taken:?}");
        assert_eq!(taken[..2], [Action::Prepare, Action::Activate]);
        let drops = taken
            .iter()
            .filter(|a| matches!(a, Action::Drop(_)))
            .count();
        assert!(drops + 1 >= activations, "{ca_ttl}/{svid_ttl}: {taken:?}");
    }
}

#[test]
fn downtime_and_tiny_lifetimes_never_spin_nor_break_the_promises() {
    for ca_ttl in [0, 1, 2, 3, 7, 30, 3600] {
        for svid_ttl in [1, 2, 6, 300, 100_000] {
            for (every, down) in [
                (0, 0),
                (3, ca_ttl / 2 + 1),
                (5, ca_ttl + 7),
                (4, 3 * ca_ttl + 1),
            ] {
                simulate(ca_ttl, svid_ttl, every, down, 20 * ca_ttl.max(5));
            }
        }
    }
}
