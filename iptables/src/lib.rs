//! svidcar's traffic interception: plans and applies the nat-table rules that send a pod's
//! TCP traffic through the sidecar — inbound connections to the proxy's inbound port (15006),
//! the app's outbound connections to its outbound port (15001) — and proves they work.
//!
//! The core is pure: [`plan`] maps [`Settings`] and the current `iptables-save` output to a
//! [`Plan`], the exact `iptables-restore --noflush` batch (idempotent: an already-configured
//! table yields an empty plan; foreign meshes are refused as conflicts), and
//! [`choose_backend`] picks nft or legacy from what the namespace already uses. Around it are
//! thin I/O steps: [`detect_backend`], [`read_rules`], [`apply`] (one atomic batch), and
//! [`verify`], which dials a captured address and checks `SO_ORIGINAL_DST` on the redirected
//! connection. [`run_init`] strings them together for the `svidcar init` subcommand.
//!
//! Left to others: the proxy listening on those ports and reading the original destination
//! (`svidcar-proxy`), the process and its exit status (the `svidcar` binary, which maps
//! [`InitError::exit_code`]), and injecting the init container into pods. TPROXY mode (source
//! address preservation) and DNS (UDP) capture are not implemented.

// In tests a panic is the failure report, so unwrapping is the point.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod apply;
mod backend;
mod chains;
mod cli;
mod conflict;
mod error;
mod exec;
mod family;
mod init;
mod lists;
mod plan;
mod proc_status;
mod render;
mod rule;
mod save;
mod settings;
mod verify;

pub use apply::{apply, detect_backend, read_rules};
pub use backend::{choose_backend, Backend, Detection};
pub use chains::{INBOUND, IN_REDIRECT, OUR_CHAINS, OUTPUT, REDIRECT};
pub use cli::InitArgs;
pub use error::InitError;
pub use family::{Family, INBOUND_PASSTHROUGH_SOURCE_V4, INBOUND_PASSTHROUGH_SOURCE_V6};
pub use init::run_init;
pub use lists::{CidrSet, ListError, PortSet};
pub use plan::{cleanup_plan, desired_rules, plan, Op, Plan, PlanError};
pub use rule::{Rule, TAG};
pub use settings::{BackendChoice, Settings, SettingsError};
pub use verify::{default_target, verify, Verification, VerifyError, PROBE_TIMEOUT};
