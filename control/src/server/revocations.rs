//! Mesh-wide revocation: the set of revoked SPIFFE IDs and certificate serials, kept in the
//! state directory (`revocations.json`), pushed to every proxy in its policy snapshot on each
//! change, lapsed when an entry's `until` passes, and checked by the node API before it signs.
//! Changed through `/revocations` on the query port (`svidcar revoke`, `svidcar unrevoke`).

mod http;
mod set;
mod store;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use svidcar_identity::{unix_now, Dur, SpiffeId};
use tokio_util::sync::CancellationToken;

pub(super) use http::route;
pub use set::{Entry, EntryError, EntryJson, RevocationSet, Target};
pub use store::StoreError;

use super::state::State;

/// How often lapsed entries are looked for.
const LAPSE_EVERY: Duration = Duration::from_secs(1);

/// The set in force and the file it is kept in.
#[derive(Debug, Default)]
pub struct RevocationBook {
    inner: Mutex<Book>,
}

#[derive(Debug, Default)]
struct Book {
    set: RevocationSet,
    /// `None` until [`open`] ran (then changes are not persisted: tests of `State` alone).
    file: Option<PathBuf>,
}

impl RevocationBook {
    fn with<R>(&self, f: impl FnOnce(&mut Book) -> R) -> R {
        match self.inner.lock() {
            Ok(mut b) => f(&mut b),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// The entries in force.
    pub fn current(&self) -> RevocationSet {
        self.with(|b| b.set.clone())
    }
}

/// Loads the set kept in `state_dir` and publishes it to proxies.
pub(super) fn open(state: &State, state_dir: &Path) -> Result<(), StoreError> {
    let file = state_dir.join(store::FILE);
    let mut set = store::load(&file)?;
    let lapsed = set.lapse(unix_now());
    if !lapsed.is_empty() {
        store::save(&file, &set)?;
    }
    tracing::info!(file = %file.display(), revocations = set.revocations.len(), "revocation set loaded");
    state.revocations.with(|b| {
        b.set = set;
        b.file = Some(file);
        publish(state, &b.set);
    });
    Ok(())
}

/// Applies `change` to the set, keeps it on disk, and pushes it to every proxy. When the file
/// cannot be written the change is undone and the error returned: a revocation that would not
/// survive a restart is not reported as made.
fn change<R>(state: &State, change: impl FnOnce(&mut RevocationSet) -> R) -> Result<R, StoreError> {
    state.revocations.with(|b| {
        let before = b.set.clone();
        let out = change(&mut b.set);
        if b.set == before {
            return Ok(out);
        }
        if let Some(file) = &b.file {
            if let Err(e) = store::save(file, &b.set) {
                b.set = before;
                return Err(e);
            }
        }
        publish(state, &b.set);
        Ok(out)
    })
}

fn publish(state: &State, set: &RevocationSet) {
    let wire = set.to_wire();
    state.policies.send_modify(|p| p.revocations = wire);
}

/// Revokes `entry.target` (replacing an earlier entry for it).
pub(super) fn revoke(state: &State, entry: Entry) -> Result<(), StoreError> {
    tracing::warn!(target = %entry.target, reason = %entry.reason, by = %entry.revoked_by, until = %svidcar_identity::OrNone(entry.until.map(svidcar_identity::format_unix)), "revoked; pushing to every proxy");
    change(state, |s| s.revoke(entry))
}

/// Lifts the revocation of `target`; `None` if it was not revoked.
pub(super) fn lift(state: &State, target: &Target) -> Result<Option<Entry>, StoreError> {
    let lifted = change(state, |s| s.lift(target))?;
    if lifted.is_some() {
        tracing::info!(%target, "revocation lifted; pushing to every proxy");
    }
    Ok(lifted)
}

/// Removes lapsed entries every second until `stop` fires.
pub(super) async fn lapse(state: std::sync::Arc<State>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(LAPSE_EVERY) => {}
        }
        match change(&state, |s| s.lapse(unix_now())) {
            Ok(lapsed) => {
                for e in lapsed {
                    tracing::info!(target = %e.target, "revocation lapsed; pushing to every proxy");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot record lapsed revocations; retrying"),
        }
    }
}

/// The node API's check: refuses `id` (a node or a workload SVID asked for) while it is
/// revoked.
pub(super) fn refuse_revoked(state: &State, id: &SpiffeId) -> Result<(), tonic::Status> {
    let revoked = state
        .revocations
        .with(|b| b.set.revoking_id(id, unix_now()).cloned());
    match revoked {
        None => Ok(()),
        Some(e) => {
            tracing::warn!(%id, reason = %e.reason, "refused to sign for a revoked identity");
            Err(tonic::Status::permission_denied(format!(
                "{id} is revoked ({}); lift it with `svidcar unrevoke {id}`",
                e.reason
            )))
        }
    }
}

/// Why an `--until` value is not a time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--until {0:?}: give an RFC 3339 time (2025-06-01T12:00:00Z) or a duration from now (2h, 30m, 7d)")]
pub struct UntilError(pub String);

/// Parses `--until`: an RFC 3339 time, or a duration from `now` (Unix seconds).
pub fn parse_until(text: &str, now: i64) -> Result<i64, UntilError> {
    let bad = || UntilError(text.to_owned());
    if let Ok(t) = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        return Ok(t.unix_timestamp());
    }
    let d: Dur = text.parse().map_err(|_| bad())?;
    let secs = i64::try_from(d.0.as_secs()).map_err(|_| bad())?;
    now.checked_add(secs).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> Entry {
        Entry::try_from(EntryJson {
            spiffe_id: Some(id.into()),
            reason: "compromised".into(),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn changes_are_kept_on_disk_pushed_to_proxies_and_checked_by_the_node_api() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::new();
        open(&state, dir.path()).unwrap();
        let a = SpiffeId::parse("spiffe://td/a").unwrap();
        assert!(refuse_revoked(&state, &a).is_ok());
        let snapshots = state.policies.subscribe();
        revoke(&state, entry("spiffe://td/a")).unwrap();
        assert!(snapshots.has_changed().unwrap());
        let snap = state.policies.borrow().snapshot_for(&a);
        assert_eq!(snap.revocations.len(), 1);
        let e = refuse_revoked(&state, &a).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("compromised"), "{}", e.message());

        // A restart finds it again.
        let again = State::new();
        open(&again, dir.path()).unwrap();
        assert_eq!(again.revocations.current(), state.revocations.current());
        assert_eq!(again.policies.borrow().revocations.len(), 1);

        let target = Target::Id(a.clone());
        assert!(lift(&state, &target).unwrap().is_some());
        assert!(lift(&state, &target).unwrap().is_none());
        assert!(refuse_revoked(&state, &a).is_ok());
        assert!(state
            .policies
            .borrow()
            .snapshot_for(&a)
            .revocations
            .is_empty());
    }

    #[test]
    fn until_is_a_time_or_a_duration_from_now() {
        assert_eq!(parse_until("2h", 1000).unwrap(), 1000 + 7200);
        assert_eq!(parse_until("1970-01-01T00:01:00Z", 0).unwrap(), 60);
        let e = parse_until("tomorrow", 0).unwrap_err().to_string();
        assert!(
            e.starts_with("--until \"tomorrow\": give an RFC 3339"),
            "{e}"
        );
    }
}
