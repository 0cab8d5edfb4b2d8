//! The `svidcar` command: one binary, one subcommand per role.

mod api_cmd;
mod control_cmd;
mod demo;
mod identities_cmd;
mod inject_cmd;
mod policy_cmd;
mod revoke_cmd;
mod wait_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
// The process's allocator, jemalloc with the options measured for a sidecar (docs/memory.md).
use svidcar_alloc as _;
use svidcar_proxy::config::ProxyArgs;
use svidcar_proxy::process::{self, log::LogArgs, Signals};

#[derive(Debug, Parser)]
#[command(
    name = "svidcar",
    version,
    about = "Transparent mTLS sidecar with SPIFFE workload identity"
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

// One value per process run: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the sidecar proxy (outbound and inbound).
    Run(ProxyArgs),
    /// Mesh two local services through two svidcar proxies with throwaway certificates and
    /// show what happens.
    Demo,
    /// Install the iptables rules that redirect the pod's TCP to the proxy (init container).
    Init(svidcar_iptables::InitArgs),
    /// Run the control plane: serve policy to proxies, keep their decision log.
    Control(svidcar_control::server::ControlFlags),
    /// Query the control plane's decision log.
    Decisions(control_cmd::DecisionsArgs),
    /// The identity inventory: every SPIFFE ID the CA issued or traffic shows, with flags.
    Identities(identities_cmd::IdentitiesArgs),
    /// Revoke a SPIFFE ID or one certificate mesh-wide (or `--list` the revocations).
    Revoke(revoke_cmd::RevokeArgs),
    /// Lift a revocation.
    Unrevoke(revoke_cmd::UnrevokeArgs),
    /// Lint and explain authorization policy.
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
    /// Run the node agent: serve the SPIFFE Workload API on a Unix socket, with its own CA.
    Agent(svidcar_control::agent::AgentCommand),
    /// Talk to a SPIFFE Workload API (a SPIRE agent or `svidcar agent`).
    #[command(subcommand)]
    Api(api_cmd::ApiCommand),
    /// Add the svidcar sidecar to the pods of Kubernetes YAML manifests (offline injection).
    Inject(inject_cmd::InjectArgs),
    /// Wait until the proxy is ready (its admin `/ready` answers 200); the legacy sidecar's
    /// `postStart` hook, which holds the app until the proxy can serve it.
    Wait(wait_cmd::WaitArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    process::log::init(&cli.log);
    // Synchronous commands need no async runtime.
    let command = match cli.command {
        Command::Init(args) => {
            return match svidcar_iptables::run_init(&args, &mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("svidcar init: {e}");
                    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
                }
            };
        }
        Command::Policy(cmd) => return policy_cmd::run(cmd).unwrap_or_else(|e| exit(Err(e))),
        Command::Api(cmd) => return api_cmd::run(cmd),
        Command::Inject(args) => return exit(inject_cmd::run(args)),
        Command::Identities(args) => {
            return identities_cmd::run(args).unwrap_or_else(|e| exit(Err(e)))
        }
        Command::Revoke(args) => return exit(revoke_cmd::revoke(args)),
        Command::Unrevoke(args) => return exit(revoke_cmd::unrevoke(args)),
        Command::Agent(svidcar_control::agent::AgentCommand {
            action: Some(svidcar_control::agent::AgentAction::Check(flags)),
            ..
        }) => return agent_check(&flags),
        // The proxy reads its configuration before its runtime exists: it says how many
        // threads the runtime gets (the same code as the `svidcar-proxy` binary's).
        Command::Run(args) => return process::run_command(&args, "svidcar"),
        other => other,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("svidcar: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match command {
            // No context here: `exit` prefixes every error with `svidcar: ` once.
            Command::Agent(cmd) => Ok(agent(cmd.flags).await?),
            Command::Demo => demo::run().await,
            Command::Control(args) => control_cmd::control(args).await,
            Command::Decisions(args) => control_cmd::decisions(args).await,
            Command::Wait(args) => wait_cmd::run(args).await,
            Command::Run(_) | Command::Init(_) | Command::Policy(_) | Command::Api(_) => Ok(()),
            Command::Inject(_) => Ok(()),
            Command::Identities(_) => Ok(()),
            Command::Revoke(_) | Command::Unrevoke(_) => Ok(()),
        }
    });
    exit(result)
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("svidcar: {}", process::describe(e.as_ref()));
            ExitCode::from(2)
        }
    }
}

/// `svidcar agent check`: what was checked on stdout and exit 0, or every problem on stderr and
/// exit 1.
fn agent_check(flags: &svidcar_control::agent::AgentFlags) -> ExitCode {
    let report = svidcar_control::agent::check(flags);
    if report.ok() {
        print!("svidcar agent check: {report}");
        ExitCode::SUCCESS
    } else {
        eprint!("svidcar agent check: {report}");
        ExitCode::from(1)
    }
}

async fn agent(
    flags: svidcar_control::agent::AgentFlags,
) -> Result<(), svidcar_control::agent::AgentError> {
    let config = flags.load()?;
    svidcar_control::agent::run(&config, async {
        if let Err(e) = shutdown_signal().await {
            tracing::error!(error = %e, "cannot wait for signals; stopping");
        }
    })
    .await
}

/// The first SIGTERM or SIGINT.
pub(crate) async fn shutdown_signal() -> anyhow::Result<()> {
    Signals::install()?.recv().await;
    Ok(())
}
