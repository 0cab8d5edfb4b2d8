//! Everything `svidcar init` can fail with, each class with its own exit code and a message
//! that says what to do.

use std::io;

use svidcar_identity::config_file::ConfigError;

use crate::family::Family;
use crate::plan::PlanError;
use crate::settings::SettingsError;
use crate::verify::VerifyError;

/// Why `svidcar init` failed. Nothing after the failing step was applied; a failed restore
/// changes nothing either (the batch is atomic).
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A setting is invalid (local configuration). Exit code 2.
    #[error("invalid setting {0}; fix the flag or SVIDCAR_* variable of that name")]
    Settings(#[from] SettingsError),
    /// The `--config` file cannot be read or parsed, or a setting in it (or a flag over it) is
    /// invalid; the message names the file and the setting. Exit code 2.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An iptables binary is missing from the image. Exit code 3.
    #[error(
        "`{program}` not found on PATH: install the iptables package in the init image \
         (Debian/Ubuntu: apt-get install iptables; Alpine: apk add iptables ip6tables; \
         Fedora/RHEL: dnf install iptables-nft){hint}"
    )]
    NoIptables {
        /// The program that was looked for.
        program: String,
        /// Extra advice, e.g. to pick the other backend.
        hint: String,
    },
    /// The process may not change the network namespace's firewall. Exit code 4.
    #[error(
        "`{program}` was denied: changing iptables rules needs the NET_ADMIN capability in the \
         pod's network namespace; run the init container as root with `securityContext: \
         capabilities: add: [NET_ADMIN, NET_RAW]`. iptables said: {stderr}"
    )]
    NoNetAdmin {
        /// The command that was denied.
        program: String,
        /// What it printed.
        stderr: String,
    },
    /// A foreign rule set would fight ours. Exit code 5.
    #[error("{family}: {source}")]
    Conflict {
        /// The family whose nat table holds the rule.
        family: Family,
        /// The conflicting rule and why.
        source: PlanError,
    },
    /// Reading the current rules failed. Exit code 6.
    #[error(
        "`{program}` failed ({status}): {stderr}; check that the kernel supports the nat table \
         for this backend (try --backend nft or --backend legacy)"
    )]
    SaveFailed {
        /// The command.
        program: String,
        /// Its exit status, or "timed out".
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// Applying the batch failed; the batch is atomic, so nothing was changed. Exit code 7.
    #[error(
        "`{program} --noflush` failed ({status}), nothing was changed: {stderr}\nthe batch was:\n\
         {input}check that the kernel has the nat, owner, comment and REDIRECT modules for this \
         backend (or try the other one with --backend)"
    )]
    RestoreFailed {
        /// The command.
        program: String,
        /// Its exit status, or "timed out".
        status: String,
        /// What it printed on stderr.
        stderr: String,
        /// The batch it was given.
        input: String,
    },
    /// The rules were applied but redirection does not work. Exit code 8. The rules stay, on
    /// purpose: the pod's app does not start (its init step failed), a re-run (the kubelet
    /// restarts the init container) is idempotent, and removing them would let a later start
    /// with `--no-verify` or a manual app start run uncaptured without anyone deciding so.
    #[error(
        "{family}: verification failed: {source}. The app must not start without working \
         interception: fix the cause, or skip this check with --no-verify. The rules stay \
         installed (a re-run is idempotent; `svidcar init --cleanup` removes them)"
    )]
    Verify {
        /// The family that was probed.
        family: Family,
        /// What went wrong.
        source: VerifyError,
    },
    /// Writing the report failed. Exit code 1.
    #[error("cannot write output: {0}")]
    Output(#[from] io::Error),
}

impl InitError {
    /// The process exit code for this class of failure (0 is success, 2 is also what clap
    /// uses for bad flags).
    pub fn exit_code(&self) -> i32 {
        match self {
            InitError::Output(_) => 1,
            InitError::Settings(_) | InitError::Config(_) => 2,
            InitError::NoIptables { .. } => 3,
            InitError::NoNetAdmin { .. } => 4,
            InitError::Conflict { .. } => 5,
            InitError::SaveFailed { .. } => 6,
            InitError::RestoreFailed { .. } => 7,
            InitError::Verify { .. } => 8,
        }
    }

    /// Maps a planning failure for `family`.
    pub(crate) fn from_plan(family: Family, e: PlanError) -> InitError {
        match e {
            PlanError::Settings(e) => InitError::Settings(e),
            e @ PlanError::Conflict { .. } => InitError::Conflict { family, source: e },
        }
    }
}
