//! `svidcar policy check` and `svidcar policy explain`: lint a policy directory, and ask "would
//! this call be allowed, and by which rule?" without running anything.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use svidcar_identity::SpiffeId;
use svidcar_policy::{evaluate, load_dir, DefaultPolicy, PolicyKind, Request};

/// Why a rule with methods or paths may not match what users expect.
const HTTP_ONLY: &str = "matches HTTP requests only (it names methods or paths): on an opaque port or a connection that is not HTTP it never matches";

/// Policy tooling.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum PolicyCommand {
    /// Validate every policy file in DIR; exits non-zero on errors.
    Check {
        /// Policy directory.
        dir: PathBuf,
    },
    /// Evaluate one call against the policies in DIR and say which policy and rule decide it.
    ///
    /// Exit status: 0 when the call is allowed, 1 when it is denied, 2 on a usage error or a
    /// policy directory that does not load.
    Explain {
        /// Policy directory.
        dir: PathBuf,
        /// Caller SPIFFE ID (omit for a plaintext caller).
        #[arg(long)]
        from: Option<SpiffeId>,
        /// Destination workload's SPIFFE ID.
        #[arg(long)]
        to: SpiffeId,
        /// Destination port.
        #[arg(long)]
        port: u16,
        /// Caller address.
        #[arg(long, default_value = "127.0.0.1")]
        source_ip: IpAddr,
        /// HTTP method, for HTTP requests.
        #[arg(long, requires = "path")]
        method: Option<String>,
        /// HTTP path, for HTTP requests.
        #[arg(long, requires = "method")]
        path: Option<String>,
        /// The default when no ALLOW policy selects the workload.
        #[arg(long, default_value = "allow-all")]
        default: DefaultPolicy,
    },
}

fn load(dir: &std::path::Path) -> anyhow::Result<Vec<svidcar_policy::Policy>> {
    match load_dir(dir) {
        Ok(p) => Ok(p),
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            bail!("{} error(s) in {}", errors.len(), dir.display())
        }
    }
}

/// Runs a policy subcommand; `explain` exits 1 for a denied call.
pub(crate) fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Check { dir } => {
            let policies = load(&dir)?;
            println!("ok: {} policies in {}", policies.len(), dir.display());
            for p in &policies {
                let what = match &p.kind {
                    PolicyKind::Authorization { action, rules } => {
                        format!("{} ({} rules)", action.as_str(), rules.len())
                    }
                    PolicyKind::PeerAuthentication { mode, ports } => {
                        format!("mTLS {} ({} port overrides)", mode.as_str(), ports.len())
                    }
                };
                println!(
                    "  {} — {what} — {} document {}",
                    p.name,
                    p.origin.file,
                    p.origin.doc + 1
                );
                for rule in p.http_only_rules() {
                    println!("    note: rule {rule} {HTTP_ONLY}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Explain {
            dir,
            from,
            to,
            port,
            source_ip,
            method,
            path,
            default,
        } => {
            let policies = load(&dir)?;
            let req = Request {
                source_id: from.as_ref(),
                source_ip,
                port,
                method: method.as_deref(),
                path: path.as_deref(),
                host: None,
                headers: None,
            };
            let d = evaluate(&policies, &to, &req, default);
            println!("{}: {}", d.action(), d.reason);
            if method.is_none() {
                for p in policies.iter().filter(|p| p.selects(&to)) {
                    for rule in p.http_only_rules() {
                        println!(
                            "  note: policy {} rule {rule} {HTTP_ONLY}; this call was evaluated as a TCP connection (give --method and --path for an HTTP request)",
                            p.name
                        );
                    }
                }
            }
            if let Some(by) = &d.by {
                if let Some(p) = policies.iter().find(|p| p.name == by.policy) {
                    println!(
                        "  decided by policy {} rule {} ({} document {})",
                        p.name,
                        by.rule,
                        p.origin.file,
                        p.origin.doc + 1
                    );
                }
            }
            for a in &d.audits {
                println!("  audited by {a}");
            }
            let selecting: Vec<&str> = policies
                .iter()
                .filter(|p| p.selects(&to))
                .map(|p| p.name.as_str())
                .collect();
            println!(
                "  policies selecting {to}: {}",
                if selecting.is_empty() {
                    "none".to_owned()
                } else {
                    selecting.join(", ")
                }
            );
            Ok(if d.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
