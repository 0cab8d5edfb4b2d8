//! The `svidcar` command: one binary, one subcommand per role.

mod api_cmd;
mod control_cmd;
mod demo;
mod identities_cmd;
mod inject_cmd;
mod policy_cmd;
mod revoke_cmd;
mod sni_log;
mod wait_cmd;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use svidcar_identity::{pem_source, workload_api, CredentialStore};
use svidcar_proxy::config::{IdentitySource, ProxyArgs, ProxyConfig};
use tokio_util::sync::CancellationToken;

// The allocator: jemalloc, serving the C code (aws-lc) as well as Rust (the crate's
// `override_allocator_on_supported_platforms` feature makes it the process's `malloc`). Chosen
// by measurement (docs/memory.md; release binary, a pair holding 9 900 idle connections, then
// closing them): glibc malloc kept every byte (+434 MiB per proxy after the close) and a second
// flood ratcheted it to +1.5 GiB, since reused chunks are zeroed and so touched; glibc with
// MALLOC_ARENA_MAX=2 and lower trim/mmap thresholds still kept +342 MiB, and only a manual
// malloc_trim (an unsafe call, a walk of every arena under its lock) brought it to +33 MiB.
// mimalloc with its defaults started at 9 MiB of heap instead of 1 and kept +790 MiB. jemalloc,
// with the options below, is back within +21 MiB of baseline a second after the close (that
// rest is the proxy's own high-water tables, not the allocator) and does not ratchet. Its idle
// heap is 0.5 MiB above glibc's; handshakes were 5-10 % faster, bulk copying up to 15 % slower
// on a noisy machine (`MALLOC_CONF=dirty_decay_ms:10000` closes most of that gap).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it initializes (at the first allocation, before `main`);
/// `MALLOC_CONF` in the environment overrides any of them (e.g. `narenas:4` for a proxy with
/// many worker threads). `background_thread`: a thread of jemalloc's own returns freed pages to
/// the kernel while the proxy is idle (without it, purging happens only inside allocator calls,
/// so an idle proxy would keep the memory of its last load). `dirty_decay_ms:1000`: freed pages
/// go back within about a second (default 10 s). `muzzy_decay_ms:0`: with `MADV_DONTNEED`
/// directly, not `MADV_FREE` first, whose pages stay in RSS until the kernel is short of memory.
/// `narenas:1`: one arena (default: four per CPU) for a sidecar's two or so threads, each with
/// its own thread cache, so no arena holds half-empty pages another could use.
// SAFETY: jemalloc declares `const char *malloc_conf` (weak, so this strong definition wins)
// and only reads it, once; this is a thin pointer to a NUL-terminated string that lives as
// long as the program and is never written.
#[allow(unsafe_code)]
#[unsafe(export_name = "malloc_conf")]
static MALLOC_CONF: &[u8; 70] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:1\0";

#[derive(Debug, Parser)]
#[command(
    name = "svidcar",
    version,
    about = "Transparent mTLS sidecar with SPIFFE workload identity"
)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "SVIDCAR_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    /// Log filter (tracing env-filter syntax), e.g. `info` or `svidcar=debug`.
    #[arg(long, global = true, env = "SVIDCAR_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
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

fn init_tracing(cli: &Cli) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;

    let mut filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // rustls's per-connection SNI warnings are counted, not logged (see `sni_log`).
    if let Some(directive) = sni_log::directive(&cli.log).and_then(|d| d.parse().ok()) {
        filter = filter.add_directive(directive);
    }
    // Colour only for a person at a terminal: escape codes in a file or a log collector are
    // noise (and break grep).
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let fmt = match cli.log_format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(sni_log::counter())
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli);
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
        // threads the runtime gets.
        Command::Run(args) => return run_proxy(&args),
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

/// The error and its causes, each cause only if the text so far does not already say it (many
/// of our errors print their source themselves).
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("svidcar: {}", describe(&e));
            ExitCode::from(2)
        }
    }
}

/// `svidcar run`: the configuration, then a runtime with `runtime.worker_threads` workers,
/// then the proxy on it.
fn run_proxy(args: &ProxyArgs) -> ExitCode {
    let config = match ProxyConfig::load(args) {
        Ok(c) => c,
        Err(e) => return exit(Err(e.into())),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.runtime.threads())
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("svidcar: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    exit(runtime.block_on(run(config)))
}

async fn run(config: ProxyConfig) -> anyhow::Result<()> {
    let provider = svidcar_identity::tls::provider();
    let store = CredentialStore::new();
    let stop_source = CancellationToken::new();
    let source = match config.identity.effective_source() {
        Some(IdentitySource::WorkloadApi) => {
            let endpoint = config
                .identity
                .workload_api
                .clone()
                .context("identity.workload_api is required")?;
            tracing::info!(%endpoint, hint = %svidcar_identity::OrNone(config.identity.svid_hint.as_deref()), "SVIDs from the SPIFFE Workload API; fail closed until the first arrives");
            tokio::spawn(workload_api::run_with_hint(
                endpoint,
                config.identity.svid_hint.clone(),
                store.clone(),
                provider.clone(),
                stop_source.clone(),
            ))
        }
        _ => {
            let paths = config
                .pem_paths()
                .context("identity.cert, identity.key and identity.bundle are required")?;
            let creds = pem_source::load(&paths, &provider).context("loading the SVID")?;
            tracing::info!(id = %creds.id(), not_after = %svidcar_identity::format_unix(creds.leaf.not_after), "SVID loaded");
            store.set(creds);
            tokio::spawn(pem_source::watch(
                paths,
                store.clone(),
                provider.clone(),
                config.identity.reload_interval.0,
                stop_source.clone(),
            ))
        }
    };
    let proxy = svidcar_proxy::start(config, store).await?;
    let mut signals = Signals::install()?;
    tokio::select! {
        s = signals.recv() => tracing::info!(signal = s, "shutting down; send it again to close open connections at once"),
        _ = proxy.shutdown_requested() => tracing::info!("shutting down (POST /shutdown)"),
    }
    proxy
        .shutdown_or(async {
            let s = signals.recv().await;
            tracing::info!(
                signal = s,
                "second shutdown signal: not waiting for the drain"
            );
        })
        .await;
    stop_source.cancel();
    let _ = source.await;
    tracing::info!("stopped");
    Ok(())
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

/// SIGTERM and SIGINT, installed once so that a second one is seen too (and never falls back
/// to the default action, which would end the process without a drain).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
        })
    }

    /// The next SIGTERM or SIGINT, by name.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

pub(crate) async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}
