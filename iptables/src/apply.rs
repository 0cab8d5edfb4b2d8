//! The thin I/O steps around the pure planner: read the nat table, detect the backend, hand a
//! plan to `iptables-restore --noflush` in one batch.

use crate::backend::{choose_backend, Backend, Detection};
use crate::error::InitError;
use crate::exec::{ExecError, Output, Runner, System};
use crate::family::Family;
use crate::plan::Plan;
use crate::proc_status::ProcStatus;
use crate::settings::BackendChoice;

/// Seconds a restore waits for the xtables lock held by another iptables user.
const LOCK_WAIT_SECS: &str = "5";

/// Detects the backend for `choice` by running `iptables-legacy-save` and `iptables-nft-save`
/// (see [`choose_backend`] for the rule). A forced backend runs nothing.
pub fn detect_backend(choice: BackendChoice) -> Result<Detection, InitError> {
    detect_with(&System::default(), choice)
}

/// The current rules of `family` as `<backend>-save` prints them. All tables are listed:
/// asking for `-t nat` would create the nat table as a side effect, and a dry run must change
/// nothing. [`plan`](crate::plan()) only reads the `*nat` section.
pub fn read_rules(backend: Backend, family: Family) -> Result<String, InitError> {
    read_rules_with(&System::default(), backend, family)
}

/// Applies `plan` with `<backend>-restore --noflush` in one batch. An empty plan runs nothing.
pub fn apply(backend: Backend, plan: &Plan) -> Result<(), InitError> {
    apply_with(&System::default(), backend, plan)
}

pub(crate) fn detect_with(
    runner: &dyn Runner,
    choice: BackendChoice,
) -> Result<Detection, InitError> {
    let (legacy, nft) = match choice {
        BackendChoice::Auto => (
            save_if_installed(runner, Backend::Legacy)?,
            save_if_installed(runner, Backend::Nft)?,
        ),
        // A forced backend needs no evidence; a missing binary shows up when it is used.
        BackendChoice::Nft | BackendChoice::Legacy => (None, None),
    };
    choose_backend(choice, legacy.as_deref(), nft.as_deref()).ok_or_else(|| InitError::NoIptables {
        program: "iptables-nft-save (or iptables-legacy-save)".into(),
        hint: String::new(),
    })
}

/// The IPv4 save output of one backend, or `None` if that backend is not installed.
fn save_if_installed(runner: &dyn Runner, backend: Backend) -> Result<Option<String>, InitError> {
    match read_rules_with(runner, backend, Family::V4) {
        Ok(save) => Ok(Some(save)),
        Err(InitError::NoIptables { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

pub(crate) fn read_rules_with(
    runner: &dyn Runner,
    backend: Backend,
    family: Family,
) -> Result<String, InitError> {
    let program = backend.save_program(family);
    let result = runner.run(&program, &[], None);
    checked(&program, result)
        .map(|o| o.stdout)
        .map_err(|f| f.save())
}

pub(crate) fn apply_with(
    runner: &dyn Runner,
    backend: Backend,
    plan: &Plan,
) -> Result<(), InitError> {
    if plan.is_empty() {
        return Ok(());
    }
    let program = backend.restore_program(plan.family());
    let input = plan.restore_input();
    let result = runner.run(&program, &["--noflush", "-w", LOCK_WAIT_SECS], Some(&input));
    checked(&program, result)
        .map(drop)
        .map_err(|f| f.restore(input))
}

/// A command that did not succeed, before we know whether it was a save or a restore.
struct Failure {
    program: String,
    status: String,
    stderr: String,
    kind: FailureKind,
}

enum FailureKind {
    NotFound,
    Denied,
    Failed,
}

fn checked(program: &str, result: Result<Output, ExecError>) -> Result<Output, Failure> {
    let failure = |kind, status: String, stderr: String| Failure {
        program: program.to_string(),
        status,
        stderr,
        kind,
    };
    match result {
        Ok(out) if out.status.success() => Ok(out),
        Ok(out) => {
            let stderr = out.stderr.trim().to_string();
            let kind = if denied(&stderr, ProcStatus::current()) {
                FailureKind::Denied
            } else {
                FailureKind::Failed
            };
            Err(failure(kind, out.status.to_string(), stderr))
        }
        Err(ExecError::NotFound) => {
            Err(failure(FailureKind::NotFound, String::new(), String::new()))
        }
        Err(e) => Err(failure(FailureKind::Failed, e.to_string(), String::new())),
    }
}

/// Whether a failed command was refused for lack of privilege: iptables says so on stderr
/// ("Permission denied (you must be root)"), except legacy restores, which only say "unable
/// to initialize table" — then our own capability set decides.
pub(crate) fn denied(stderr: &str, me: Option<ProcStatus>) -> bool {
    stderr.contains("Permission denied")
        || stderr.contains("you must be root")
        || stderr.contains("Operation not permitted")
        || me.is_some_and(|p| !p.net_admin)
}

impl Failure {
    fn save(self) -> InitError {
        self.into_error(|program, status, stderr| InitError::SaveFailed {
            program,
            status,
            stderr,
        })
    }

    fn restore(self, input: String) -> InitError {
        self.into_error(|program, status, stderr| InitError::RestoreFailed {
            program,
            status,
            stderr,
            input,
        })
    }

    fn into_error(self, failed: impl FnOnce(String, String, String) -> InitError) -> InitError {
        match self.kind {
            FailureKind::NotFound => InitError::NoIptables {
                program: self.program,
                hint: "; or pick the other backend with --backend".into(),
            },
            FailureKind::Denied => InitError::NoNetAdmin {
                program: self.program,
                stderr: self.stderr,
            },
            FailureKind::Failed => failed(self.program, self.status, self.stderr),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_missing_privilege() {
        let root = ProcStatus {
            euid: 0,
            egid: 0,
            net_admin: true,
        };
        let nft = "iptables-nft-restore v1.8.9 (nf_tables): Could not fetch rule set generation \
                   id: Permission denied (you must be root)";
        assert!(denied(nft, Some(root)));
        let legacy = "iptables-restore v1.8.9 (legacy): iptables-restore: unable to initialize \
                      table 'nat'";
        assert!(!denied(legacy, Some(root)));
        let no_cap = ProcStatus {
            net_admin: false,
            ..root
        };
        assert!(denied(legacy, Some(no_cap)));
        assert!(!denied("Bad argument `x'", None));
    }
}
