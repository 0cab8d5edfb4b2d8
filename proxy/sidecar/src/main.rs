//! `svidcar-proxy`: the sidecar proxy alone, what injected pods run. `svidcar-proxy run` takes
//! exactly the flags, `SVIDCAR_*` variables and configuration file of `svidcar run`, and
//! behaves and logs the same (both call `svidcar_proxy::process`); the control plane, the node
//! agent, the injector and their dependencies (SQLite, the Kubernetes API types) are not linked
//! in, so an idle proxy maps fewer pages of code (docs/memory.md).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use svidcar_alloc as _;
use svidcar_proxy::config::ProxyArgs;
use svidcar_proxy::process::{self, log::LogArgs};

#[derive(Debug, Parser)]
#[command(
    name = "svidcar-proxy",
    version,
    about = "The svidcar sidecar proxy (mTLS with SPIFFE workload identity), without the other \
             roles of `svidcar`"
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the sidecar proxy (outbound and inbound), as `svidcar run` does.
    Run(ProxyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    process::log::init(&cli.log);
    match cli.command {
        Command::Run(args) => process::run_command(&args, "svidcar-proxy"),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_the_flags_of_svidcar_run() {
        let cli = Cli::parse_from([
            "svidcar-proxy",
            "--log-format",
            "json",
            "run",
            "--config",
            "/etc/svidcar/proxy.yaml",
        ]);
        let Command::Run(args) = cli.command;
        assert_eq!(
            args.config.as_deref(),
            Some(std::path::Path::new("/etc/svidcar/proxy.yaml"))
        );
    }
}
