//! `svidcar policy check` and `svidcar policy explain`: lint a policy directory, and ask "would
//! this call be allowed, and by which rule?" without running anything. `svidcar policy suggest`:
//! least-privilege policies from observed traffic (see `suggest_cmd` below).

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
    /// Suggest least-privilege AuthorizationPolicy YAML, one per destination workload, from the
    /// edges observed over a window: exactly the callers, ports and (HTTP) methods and path
    /// prefixes that were let through. Denied and plaintext edges are listed, never granted.
    Suggest(suggest_cmd::SuggestArgs),
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
        PolicyCommand::Suggest(args) => suggest_cmd::run(args),
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

mod suggest_cmd {
    //! `svidcar policy suggest`: edges from the control plane (`/edges`) or a file, the pure
    //! suggestion of `svidcar_control::suggest`, then files or standard output, and the diff.

    use std::path::PathBuf;
    use std::process::ExitCode;

    use anyhow::{bail, Context};
    use svidcar_control::edge::EdgeRecord;
    use svidcar_control::suggest::{self, Mode};
    use svidcar_identity::SpiffeId;

    /// `svidcar policy suggest`.
    #[derive(Debug, clap::Args)]
    pub(crate) struct SuggestArgs {
        /// The control plane's query address, whose `/edges` are read.
        #[arg(long, default_value = "127.0.0.1:15014", conflicts_with = "edges")]
        control: String,
        /// Read edges from this JSON file (an array of edge records, as `/edges` answers)
        /// instead of the control plane.
        #[arg(long)]
        edges: Option<PathBuf>,
        /// How far back traffic counts: 7d, 2w, 36h, 90m.
        #[arg(long, default_value = "7d")]
        since: String,
        /// Only this destination workload.
        #[arg(long)]
        destination: Option<SpiffeId>,
        /// `enforce`: ALLOW exactly what was observed. `audit`: the AUDIT counterpart, matching
        /// exactly what the ALLOW policy would deny; decisions do not change, every AUDIT record
        /// it causes is a would-be denial.
        #[arg(long, value_enum, default_value = "enforce")]
        mode: Mode,
        /// Compare with the policies in force (`--policy-dir`): calls the suggestion would newly
        /// deny, ALLOW rules no call used.
        #[arg(long, requires = "policy_dir")]
        diff: bool,
        /// The policy directory in force, for `--diff`.
        #[arg(long)]
        policy_dir: Option<PathBuf>,
        /// Write one `<name>.yaml` per destination here (created if missing) instead of printing.
        #[arg(long)]
        out: Option<PathBuf>,
    }

    fn now_ms() -> anyhow::Result<i64> {
        Ok(i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis(),
        )?)
    }

    fn edges(args: &SuggestArgs, since_ms: i64) -> anyhow::Result<Vec<EdgeRecord>> {
        let text = match &args.edges {
            Some(file) => std::fs::read_to_string(file)
                .with_context(|| format!("--edges {}", file.display()))?,
            None => {
                let mut path = format!("/edges?since_ms={since_ms}");
                if let Some(d) = &args.destination {
                    path.push_str("&destination=");
                    path.push_str(&encode(d.as_str()));
                }
                crate::identities_cmd::http_get(&args.control, &path)?
            }
        };
        let what = args.edges.as_ref().map_or_else(
            || format!("{}/edges", args.control),
            |f| f.display().to_string(),
        );
        serde_json::from_str(&text).with_context(|| format!("{what}: not a JSON array of edges"))
    }

    fn encode(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    /// Runs `svidcar policy suggest`.
    pub(crate) fn run(args: SuggestArgs) -> anyhow::Result<ExitCode> {
        let window = suggest::parse_since(&args.since).context("--since")?;
        let since_ms = now_ms()?.saturating_sub(i64::try_from(window.as_millis())?);
        let edges = edges(&args, since_ms)?;
        let grants = suggest::grants(&edges, since_ms, args.destination.as_ref());
        if grants.is_empty() {
            eprintln!(
                "no edges with a destination workload in the last {}; nothing to suggest",
                args.since
            );
        }
        let in_force = match (&args.diff, &args.policy_dir) {
            (true, Some(dir)) => Some(super::load(dir)?),
            _ => None,
        };
        if let Some(out) = &args.out {
            std::fs::create_dir_all(out).with_context(|| format!("--out {}", out.display()))?;
        }
        let mut diffs = Vec::new();
        for (i, (dst, g)) in grants.iter().enumerate() {
            let policy = suggest::render(dst, g, args.mode, &args.since);
            match &args.out {
                Some(out) => {
                    let path = out.join(policy.file_name());
                    let tmp = out.join(format!(".{}.tmp", policy.file_name()));
                    std::fs::write(&tmp, &policy.yaml)
                        .and_then(|()| std::fs::rename(&tmp, &path))
                        .with_context(|| format!("writing {}", path.display()))?;
                    eprintln!("wrote {}", path.display());
                }
                None => {
                    if i > 0 {
                        println!("---");
                    }
                    print!("{}", policy.yaml);
                }
            }
            if let Some(in_force) = &in_force {
                let allow = suggest::render(dst, g, Mode::Enforce, &args.since);
                let parsed = match svidcar_policy::parse_set([("suggested", allow.yaml.as_str())]) {
                    Ok(p) => p,
                    Err(e) => bail!("internal: the suggestion for {dst} does not parse: {e:?}"),
                };
                diffs.push(suggest::diff(dst, g, &parsed, in_force));
            }
        }
        if in_force.is_some() {
            // On standard error when the policies go to standard output, so both can be piped.
            let report = diff_report(&diffs);
            if args.out.is_some() {
                print!("{report}");
            } else {
                eprint!("{report}");
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    fn diff_report(diffs: &[suggest::Diff]) -> String {
        let mut out = String::from("diff against the policies in force (judged by caller, port, method and path prefix):\n");
        for d in diffs {
            out.push_str(&format!("{}:\n", d.destination));
            if d.allow_policies.is_empty() {
                out.push_str("  today: no ALLOW policy selects it (the default decides): every call not observed would be newly denied\n");
            } else {
                out.push_str(&format!(
                    "  today: ALLOW policies {}\n",
                    d.allow_policies.join(", ")
                ));
            }
            for e in &d.newly_denied {
                let src = e.key.source.as_ref().map_or("(plaintext)", |s| s.as_str());
                let what = match (&e.key.method, &e.key.path_prefix) {
                    (Some(m), Some(p)) => format!(" {m} {p}"),
                    _ => String::new(),
                };
                out.push_str(&format!(
                    "  newly denied: {src} -> :{} {}{what} ({} calls in the window)\n",
                    e.key.port,
                    e.key.protocol.as_str(),
                    e.count
                ));
            }
            for u in &d.unused {
                out.push_str(&format!(
                    "  never used: policy {} rule {} ({})\n",
                    u.policy, u.rule, u.origin
                ));
            }
            if d.newly_denied.is_empty() && d.unused.is_empty() {
                out.push_str("  no change for the calls observed; every rule in force was used\n");
            }
        }
        out
    }
}
