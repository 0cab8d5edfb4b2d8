//! The log of svidcar's processes: the `--log` filter and `--log-format` flags (every
//! `svidcar` subcommand and `svidcar-proxy` take them) and the subscriber they configure, so
//! that `svidcar run` and `svidcar-proxy run` write the same lines, access log included.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

use super::sni_log;

/// The log flags, global to every subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "SVIDCAR_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Log filter (tracing env-filter syntax), e.g. `info` or `svidcar=debug`.
    #[arg(long, global = true, env = "SVIDCAR_LOG", default_value = "info")]
    pub log: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event, its fields at the top level.
    Json,
}

/// Installs the process's subscriber: events passing `--log` (an invalid filter means `info`),
/// on stderr, in `--log-format`, coloured only for a person at a terminal; rustls's
/// per-connection SNI warnings counted rather than logged (see `sni_log`).
pub fn init(args: &LogArgs) {
    let mut filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if let Some(directive) = sni_log::directive(&args.log).and_then(|d| d.parse().ok()) {
        filter = filter.add_directive(directive);
    }
    // Escape codes in a file or a log collector are noise (and break grep).
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let fmt = match args.log_format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(sni_log::counter())
        .init();
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        log: LogArgs,
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Command {
        Run,
    }

    #[test]
    fn the_flags_are_accepted_before_and_after_the_subcommand() {
        let before = Cli::parse_from(["p", "--log-format", "json", "run", "--log", "debug"]);
        assert_eq!(before.log.log_format, LogFormat::Json);
        assert_eq!(before.log.log, "debug");
    }

    #[test]
    fn sni_warnings_are_dropped_unless_the_filter_names_rustls() {
        assert_eq!(
            sni_log::directive("info"),
            Some("rustls::msgs::handshake=error")
        );
        assert_eq!(sni_log::directive("info,rustls=warn"), None);
    }
}
