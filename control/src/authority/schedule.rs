//! When to change the CA set: a pure function of the roots' validity windows, the time and the
//! SVID lifetime. No I/O and no clock: every time is whole seconds since the Unix epoch.
//!
//! The rule, with the fractions SPIRE uses:
//! - **Prepare** a successor once the active root has passed 1/2 of its lifetime. The successor is
//!   published in the bundle at once but signs nothing yet. Successors are not backdated, so a
//!   prepared root's `notBefore` is when it was published.
//! - **Activate** the successor once the active root has passed 5/6 of its lifetime, but not
//!   before the successor has been published for [`publish_delay`] = min(SVID TTL, 1/6 of the
//!   active's lifetime), at least [`MIN_STEP`] (in one SVID TTL every holder has rotated its SVID,
//!   and fetched the bundle with it, at least once; the 1/6 cap keeps a successor prepared as late
//!   as the 5/6 point on time), and never later than the active root's expiry.
//! - **Drop** a retired root once the last SVID it signed has expired: strictly after the drop time
//!   recorded at its retirement ([`drop_at`]), never later than just after its own expiry.
//! - An active root that has expired is replaced at once by a successor that is still valid
//!   (**Activate**) or, without one, by a new root (**Replace**, at least [`MIN_STEP`] after the
//!   expiry).
//! - A successor that would expire before its activation time is **Discarded** when it expires
//!   (at least [`MIN_STEP`] after its publication) and a new one is prepared.
//!
//! Every chain of steps due at one instant is finite and short: a freshly prepared successor
//! waits at least [`MIN_STEP`], so even absurd lifetimes make the authority step once a second
//! at most, never spin.

/// The least time between a root's publication (or expiry) and the next step that depends on it.
pub const MIN_STEP: i64 = 1;

/// A root's validity window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Start of validity (for a prepared successor: when it was published).
    pub not_before: i64,
    /// End of validity (inclusive: a certificate is valid during its `notAfter` second).
    pub not_after: i64,
}

impl Window {
    fn lifetime(&self) -> i64 {
        self.not_after.saturating_sub(self.not_before).max(0)
    }

    /// The instant `num/den` through the lifetime.
    fn fraction(&self, num: i64, den: i64) -> i64 {
        let part = i128::from(self.lifetime()) * i128::from(num) / i128::from(den);
        self.not_before
            .saturating_add(i64::try_from(part).unwrap_or(i64::MAX))
    }
}

/// A retired root: still published, no longer signing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retired {
    /// Its expiry.
    pub not_after: i64,
    /// The expiry of the last SVID it signed, as recorded when it retired.
    pub drop_at: i64,
}

/// The roots of the trust domain, by role.
#[derive(Debug, Clone, Copy)]
pub struct Roots<'a> {
    /// The root that signs.
    pub active: Window,
    /// The successor, published and waiting to sign.
    pub prepared: Option<Window>,
    /// Former active roots, in the bundle until their SVIDs have expired.
    pub retired: &'a [Retired],
}

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Create a successor and publish it.
    Prepare,
    /// The successor signs from now; the active root retires.
    Activate,
    /// Remove the successor (it expired before it could sign).
    Discard,
    /// Remove `retired[i]` from the bundle and from storage.
    Drop(usize),
    /// The active root expired with no usable successor: create a new root that signs at once.
    Replace,
}

/// The next action and when it is due (it may be in the past: due now).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// What.
    pub action: Action,
    /// When, seconds since the Unix epoch.
    pub at: i64,
}

/// How long a successor is published before it may sign (see the module docs).
pub fn publish_delay(active: Window, svid_ttl: i64) -> i64 {
    svid_ttl.min(active.lifetime() / 6).max(MIN_STEP)
}

/// The drop time to record for `retiring` when it retires at `now`: when the last SVID it signed
/// expires, i.e. one SVID TTL from now or the latest expiry it is known to have signed, whichever
/// is later, and never later than its own expiry.
pub fn drop_at(retiring: Window, now: i64, svid_ttl: i64, latest_signed: i64) -> i64 {
    now.saturating_add(svid_ttl)
        .max(latest_signed)
        .min(retiring.not_after)
}

/// The next step for `roots` at `now`, with SVIDs living `svid_ttl` seconds.
pub fn next_step(roots: &Roots<'_>, now: i64, svid_ttl: i64) -> Step {
    let main = main_step(roots, now, svid_ttl);
    // A drop happens strictly after the drop time (validity includes the notAfter second).
    let drop = roots
        .retired
        .iter()
        .enumerate()
        .map(|(i, r)| Step {
            action: Action::Drop(i),
            at: r.drop_at.min(r.not_after).saturating_add(MIN_STEP),
        })
        .min_by_key(|s| s.at);
    match drop {
        Some(d) if d.at <= main.at => d,
        _ => main,
    }
}

/// The next step about the active root and its successor.
fn main_step(roots: &Roots<'_>, now: i64, svid_ttl: i64) -> Step {
    let a = roots.active;
    let step = |action, at| Step { action, at };
    if a.not_after <= now {
        return match roots.prepared {
            Some(p) if p.not_after > now => step(Action::Activate, now),
            _ => step(
                Action::Replace,
                now.max(a.not_after.saturating_add(MIN_STEP)),
            ),
        };
    }
    let Some(p) = roots.prepared else {
        return step(Action::Prepare, a.fraction(1, 2));
    };
    let activate = a
        .fraction(5, 6)
        .max(p.not_before.saturating_add(publish_delay(a, svid_ttl)))
        .min(a.not_after);
    if p.not_after <= activate {
        // Waiting for its expiry (not discarding at once) is what keeps a too-short successor
        // lifetime from making a new one at the same instant, over and over.
        return step(
            Action::Discard,
            p.not_after.max(p.not_before.saturating_add(MIN_STEP)),
        );
    }
    step(Action::Activate, activate)
}

#[cfg(test)]
mod tests;
