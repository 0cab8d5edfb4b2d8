//! Taking the [`schedule`]'s steps: at open ([`Authority::catch_up`]) and on time
//! ([`Authority::run`]). Each step is stored (see [`dir`]) before the authority acts on it, and
//! every change of the published roots goes out on [`Authority::watch_bundle`].

use std::sync::Arc;
use std::time::Duration;

use svidcar_identity::format_unix;
use tokio_util::sync::CancellationToken;

use super::roots::{window, RetiredRoot, RootSet};
use super::schedule::{self, Action, Step};
use super::{dir, Authority, AuthorityError, Roots};
use crate::Ca;

/// How long to wait before retrying a step that failed (a full disk, say).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);
/// The longest single sleep: the wall clock may jump (suspend, NTP), so the plan is re-read at
/// least this often.
const MAX_NAP: Duration = Duration::from_secs(600);
/// The most steps taken at one instant. The schedule needs only a few; this bound keeps a bug
/// from becoming a busy loop.
const MAX_STEPS_AT_ONCE: usize = 16;

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl Authority {
    /// The next rotation step, or `None` for an authority that does not rotate.
    pub fn next_step(&self) -> Option<Step> {
        let rotation = self.rotation?;
        let now = self.clock.now();
        Some(self.roots().set.next_step(now, secs(rotation.svid_ttl)))
    }

    /// Takes every step due now.
    pub(super) fn catch_up(&self) -> Result<(), AuthorityError> {
        for _ in 0..MAX_STEPS_AT_ONCE {
            let now = self.clock.now();
            match self.next_step() {
                Some(step) if step.at <= now => self.apply(step.action, now)?,
                _ => break,
            }
        }
        Ok(())
    }

    /// Keeps the CA set current (preparing, activating and dropping roots on schedule) until
    /// `stop` fires. An authority held in memory only never rotates.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut at_once = 0;
        loop {
            let now = self.clock.now();
            let wait = match self.next_step() {
                None => {
                    stop.cancelled().await;
                    return;
                }
                Some(step) if step.at > now => {
                    at_once = 0;
                    Duration::from_secs(u64::try_from(step.at - now).unwrap_or(u64::MAX))
                        .min(MAX_NAP)
                }
                Some(_) if at_once >= MAX_STEPS_AT_ONCE => {
                    at_once = 0;
                    Duration::from_secs(schedule::MIN_STEP.unsigned_abs())
                }
                Some(step) => {
                    at_once += 1;
                    match self.apply(step.action, now) {
                        Ok(()) => Duration::ZERO,
                        Err(e) => {
                            tracing::error!(error = %e, step = ?step.action, "CA rotation step failed; retrying");
                            RETRY_AFTER_FAILURE
                        }
                    }
                }
            };
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Publishes the bundle of `roots` (the lock held).
    fn publish(&self, roots: &mut Roots) {
        roots.bundle = roots.set.bundle();
        self.bundle_tx.send_replace(roots.bundle.clone());
    }

    fn change(&self, f: impl FnOnce(&mut RootSet)) {
        let mut roots = self.roots();
        f(&mut roots.set);
        self.publish(&mut roots);
    }

    /// Stores and takes one step at `now`.
    fn apply(&self, action: Action, now: i64) -> Result<(), AuthorityError> {
        let (Some(rotation), Some(dir)) = (self.rotation, self.dir.as_deref()) else {
            return Ok(());
        };
        match action {
            Action::Prepare => {
                let ca = Ca::generate_successor(&self.td, now, rotation.ca_ttl)?;
                dir::prepare(dir, &ca)?;
                tracing::info!(
                    serial = ca.serial(),
                    not_before = %format_unix(ca.not_before()),
                    not_after = %format_unix(ca.not_after()),
                    "prepared a new CA: published in the bundle, not signing yet"
                );
                self.change(|set| set.prepared = Some(Arc::new(ca)));
            }
            Action::Activate => {
                // Under the lock from the drop time's computation to the switch: no SVID can be
                // signed by the old root after its last expiry was read.
                let mut roots = self.roots();
                let Some(next) = roots.set.prepared.clone() else {
                    return Ok(());
                };
                let old = roots.set.active.clone();
                let retiring = (old.not_after() >= now).then(|| {
                    let drop_at = schedule::drop_at(
                        window(&old),
                        now,
                        secs(rotation.svid_ttl),
                        roots.latest_signed,
                    );
                    RetiredRoot::of(&old, now, drop_at)
                });
                dir::activate(dir, retiring.as_ref(), &next)?;
                tracing::info!(
                    serial = next.serial(),
                    not_after = %format_unix(next.not_after()),
                    retired = old.serial(),
                    retired_leaves_bundle_after = %retiring.as_ref().map_or_else(|| "now (expired)".into(), |r| format_unix(r.drop_at)),
                    "activated a new CA"
                );
                roots.set.active = next;
                roots.set.prepared = None;
                roots.set.retired.extend(retiring);
                roots.latest_signed = 0;
                self.publish(&mut roots);
            }
            Action::Drop(i) => {
                let Some(gone) = self.roots().set.retired.get(i).cloned() else {
                    return Ok(());
                };
                dir::drop_retired(dir, &gone.serial)?;
                tracing::info!(
                    serial = %gone.serial,
                    not_after = %format_unix(gone.not_after),
                    retired_at = %format_unix(gone.retired_at),
                    "dropped retired CA from the bundle"
                );
                self.change(|set| set.retired.retain(|r| r.serial != gone.serial));
            }
            Action::Discard => {
                dir::discard(dir)?;
                let gone = self.roots().set.prepared.clone();
                tracing::warn!(
                    serial = gone.as_ref().map(|c| c.serial()),
                    "discarded a successor CA that expired before it could sign"
                );
                self.change(|set| set.prepared = None);
            }
            Action::Replace => {
                let fresh = Ca::generate_at(&self.td, now, rotation.ca_ttl)?;
                dir::replace(dir, &fresh)?;
                let old = self.active();
                tracing::warn!(
                    expired = old.serial(),
                    expired_at = %format_unix(old.not_after()),
                    serial = fresh.serial(),
                    not_after = %format_unix(fresh.not_after()),
                    "every CA in the directory has expired (was the authority down that long?); created a new one: SVIDs of the old one are no longer trusted"
                );
                let mut roots = self.roots();
                roots.set.active = Arc::new(fresh);
                roots.set.prepared = None;
                roots.latest_signed = 0;
                self.publish(&mut roots);
            }
        }
        Ok(())
    }
}
