//! `svidcar init`: detect the backend, plan every family, print the plans, apply them, check
//! the result and probe redirection.

use std::io::Write;
use std::net::SocketAddr;

use crate::apply::{apply_with, detect_with, read_rules_with};
use crate::backend::{Backend, Detection};
use crate::cli::InitArgs;
use crate::error::InitError;
use crate::exec::{Runner, System};
use crate::family::Family;
use crate::plan::{cleanup_plan, plan, Plan};
use crate::settings::{BackendChoice, Settings};
use crate::verify::{verify, Verification, VerifyError};

/// Runs `svidcar init`: validates, detects the backend, plans every family (nothing is
/// applied unless all families plan without conflict), prints each plan — the steps in words
/// and the exact `iptables-restore --noflush` input — then, unless `--dry-run`, applies them
/// and, unless `--cleanup` or `--no-verify`, checks the installed rules and probes redirection.
pub fn run_init(args: &InitArgs, out: &mut dyn Write) -> Result<(), InitError> {
    run(args, out, &System::default(), &verify)
}

/// The probe: [`verify`] for real, a stub in tests.
pub(crate) type Probe<'a> = &'a dyn Fn(&Settings, SocketAddr) -> Result<Verification, VerifyError>;

pub(crate) fn run(
    args: &InitArgs,
    out: &mut dyn Write,
    runner: &dyn Runner,
    probe: Probe<'_>,
) -> Result<(), InitError> {
    let settings = args.load()?;
    let (detection, can_read) = match detect_with(runner, settings.backend) {
        Ok(d) => (d, true),
        Err(InitError::NoNetAdmin { .. }) if args.dry_run => {
            let backend = match settings.backend {
                BackendChoice::Legacy => Backend::Legacy,
                BackendChoice::Nft | BackendChoice::Auto => Backend::Nft,
            };
            let reason = "assumed: the current rules cannot be read without NET_ADMIN".into();
            (Detection { backend, reason }, false)
        }
        Err(e) => return Err(e),
    };
    let backend = detection.backend;
    let what = if args.cleanup {
        "removing"
    } else {
        "installing"
    };
    writeln!(
        out,
        "svidcar init: {what} interception rules with {backend} ({})",
        detection.reason
    )?;
    let plans = plan_families(args, &settings, runner, backend, can_read, out)?;
    for p in &plans {
        write!(out, "{}", p.describe())?;
        if !p.is_empty() {
            let program = backend.restore_program(p.family());
            writeln!(out, "{program} --noflush input:")?;
            write!(out, "{}", p.restore_input())?;
        }
    }
    if args.dry_run {
        writeln!(out, "dry run: nothing was changed")?;
        return Ok(());
    }
    for p in plans.iter().filter(|p| !p.is_empty()) {
        apply_with(runner, backend, p)?;
        writeln!(out, "{}: applied", p.family())?;
    }
    if args.cleanup {
        return Ok(());
    }
    if args.no_verify {
        writeln!(out, "verification skipped (--no-verify)")?;
        return Ok(());
    }
    for p in &plans {
        verify_family(args, &settings, runner, backend, p, probe, out)?;
    }
    Ok(())
}

/// Plans every enabled family before anything is applied, so a conflict in one leaves all
/// untouched. IPv6 is skipped (with a note) when ip6tables is not installed.
fn plan_families(
    args: &InitArgs,
    settings: &Settings,
    runner: &dyn Runner,
    backend: Backend,
    mut can_read: bool,
    out: &mut dyn Write,
) -> Result<Vec<Plan>, InitError> {
    let families: &[Family] = if settings.ipv6 {
        &Family::ALL
    } else {
        &[Family::V4]
    };
    let mut plans = Vec::new();
    for &family in families {
        let current = match current_rules(runner, backend, family, can_read, args.dry_run) {
            Ok(Some(save)) => save,
            Ok(None) => {
                if can_read {
                    writeln!(out, "note: cannot read the current rules without NET_ADMIN; planning against an empty table")?;
                    can_read = false;
                }
                String::new()
            }
            Err(InitError::NoIptables { program, .. }) if family == Family::V6 => {
                writeln!(out, "{family}: `{program}` not found, IPv6 rules skipped (install ip6tables to add them)")?;
                continue;
            }
            Err(e) => return Err(e),
        };
        let planned = if args.cleanup {
            cleanup_plan(&current, family)
        } else {
            plan(settings, &current, family)
        };
        plans.push(planned.map_err(|e| InitError::from_plan(family, e))?);
    }
    Ok(plans)
}

/// The current nat table, or `Ok(None)` on a dry run that lacks the privilege to read it.
fn current_rules(
    runner: &dyn Runner,
    backend: Backend,
    family: Family,
    can_read: bool,
    dry_run: bool,
) -> Result<Option<String>, InitError> {
    if !can_read {
        return Ok(None);
    }
    match read_rules_with(runner, backend, family) {
        Ok(save) => Ok(Some(save)),
        Err(InitError::NoNetAdmin { .. }) if dry_run => Ok(None),
        Err(e) => Err(e),
    }
}

/// Re-reads the table (it must now need no change) and probes redirection.
fn verify_family(
    args: &InitArgs,
    settings: &Settings,
    runner: &dyn Runner,
    backend: Backend,
    applied: &Plan,
    probe: Probe<'_>,
    out: &mut dyn Write,
) -> Result<(), InitError> {
    let family = applied.family();
    let now = read_rules_with(runner, backend, family)?;
    let again = plan(settings, &now, family).map_err(|e| InitError::from_plan(family, e))?;
    if !again.is_empty() {
        return Err(InitError::Verify {
            family,
            source: VerifyError::RulesDiffer {
                remaining: again.describe(),
            },
        });
    }
    let target = args.verify_target_in(settings, family);
    match probe(settings, target) {
        Ok(Verification::Redirected { target, listener }) => writeln!(
            out,
            "{family}: verified: a connection to {target} arrived at {listener} with original destination {target}"
        )?,
        Ok(Verification::Skipped { reason }) => {
            writeln!(out, "{family}: redirection not probed: {reason}")?
        }
        Err(source) => return Err(InitError::Verify { family, source }),
    }
    Ok(())
}

#[cfg(test)]
mod tests;
