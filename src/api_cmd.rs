//! `svidcar api fetch`: asks a SPIFFE Workload API for this process's X.509-SVIDs and prints them
//! (and optionally writes them as PEM files, in spiffe-helper's layout). Exit codes: 0 fetched,
//! 3 no identity for this process (PermissionDenied), 4 request refused as malformed
//! (InvalidArgument), 5 unreachable or other failure.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use svidcar_identity::Dur;
use svidcar_identity::{check_leaf, format_unix, workload_api, WorkloadEndpoint};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ApiCommand {
    /// Fetch this process's X.509-SVIDs and bundles once and print them.
    Fetch(FetchArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct FetchArgs {
    /// Workload API address, unix:///path or tcp://IP:PORT.
    #[arg(long = "workload-api", env = "SPIFFE_ENDPOINT_SOCKET")]
    endpoint: WorkloadEndpoint,
    /// Give up after this long.
    #[arg(long, default_value = "5s")]
    timeout: Dur,
    /// Write svid.pem, svid_key.pem (mode 0600) and svid_bundle.pem of the default SVID into
    /// this directory, which must exist.
    #[arg(long)]
    write: Option<PathBuf>,
}

pub(crate) fn run(cmd: ApiCommand) -> ExitCode {
    let ApiCommand::Fetch(args) = cmd;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("svidcar api fetch: cannot start the async runtime: {e}");
            return ExitCode::from(5);
        }
    };
    // A directory that cannot take the files is said before anything is asked of the API.
    if let Some(dir) = &args.write {
        if let Err(e) = check_write_dir(dir) {
            eprintln!("svidcar api fetch: {e}");
            return ExitCode::from(5);
        }
    }
    let fetched = runtime.block_on(async {
        tokio::time::timeout(args.timeout.0, workload_api::fetch_once(&args.endpoint)).await
    });
    let ctx = match fetched {
        Err(_) => {
            eprintln!(
                "svidcar api fetch: {}: no answer within {}",
                args.endpoint, args.timeout
            );
            return ExitCode::from(5);
        }
        Ok(Err(e)) => {
            eprintln!(
                "svidcar api fetch: {}: {}",
                args.endpoint,
                workload_api::describe(&e)
            );
            return ExitCode::from(match e {
                spiffe::WorkloadApiError::NoIdentityIssued
                | spiffe::WorkloadApiError::PermissionDenied(_) => 3,
                e if e.is_invalid_argument() => 4,
                _ => 5,
            });
        }
        Ok(Ok(ctx)) => ctx,
    };
    for (i, svid) in ctx.svids().iter().enumerate() {
        let leaf = check_leaf(svid.leaf().as_bytes());
        let (serial, not_after) = match &leaf {
            Ok(l) => (l.serial.clone(), format_unix(l.not_after)),
            Err(e) => (format!("invalid: {e}"), String::new()),
        };
        println!(
            "svid {i}{} {} serial={serial} not_after={not_after} chain={} hint={}",
            if i == 0 { " (default)" } else { "" },
            svid.spiffe_id(),
            svid.cert_chain().len(),
            svid.hint().unwrap_or("")
        );
    }
    for (td, bundle) in ctx.bundle_set().iter() {
        println!(
            "bundle {} certificates={}",
            td.as_str(),
            bundle.authorities().len()
        );
    }
    if let Some(dir) = &args.write {
        if let Err(e) = write_pem(dir, &ctx) {
            eprintln!("svidcar api fetch: {e:#}");
            return ExitCode::from(5);
        }
    }
    ExitCode::SUCCESS
}

use svidcar_control::node::pem_of as pem;

/// What `--write DIR` must be: an existing directory (never created: a typo must not scatter a
/// private key somewhere unexpected).
fn check_write_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => anyhow::bail!("--write {}: not a directory", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "--write {}: no such directory; create it first (e.g. `mkdir -p -m 700 {}`)",
            dir.display(),
            dir.display()
        ),
        Err(e) => anyhow::bail!("--write {}: {e}", dir.display()),
    }
}

/// Writes `text` to `path` through a temporary file beside it, renamed into place. Errors name
/// `path` (what the operator asked for), not the temporary name.
fn write_file(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let dir = path.parent().unwrap_or(Path::new("."));
    let what = || {
        format!(
            "cannot write {} (through {} in {})",
            path.display(),
            tmp.file_name()
                .map_or(tmp.as_os_str(), |n| n)
                .to_string_lossy(),
            dir.display()
        )
    };
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        if e.kind() == std::io::ErrorKind::NotFound && !dir.is_dir() {
            anyhow::bail!(
                "--write {}: no such directory; create it first (e.g. `mkdir -p -m 700 {}`)",
                dir.display(),
                dir.display()
            );
        }
        return Err(e).with_context(what);
    }
    std::fs::rename(&tmp, path).with_context(what)
}

/// Writes the default SVID in spiffe-helper's layout; each file is replaced atomically.
fn write_pem(dir: &Path, ctx: &spiffe::X509Context) -> anyhow::Result<()> {
    let svid = ctx.default_svid().context("no SVID to write")?;
    let chain: String = svid
        .cert_chain()
        .iter()
        .map(|c| pem("CERTIFICATE", c.as_bytes()))
        .collect();
    let bundle: String = ctx
        .bundle_set()
        .get(svid.spiffe_id().trust_domain())
        .context("no bundle for the SVID's trust domain")?
        .authorities()
        .iter()
        .map(|c| pem("CERTIFICATE", c.as_bytes()))
        .collect();
    write_file(
        &dir.join("svid_key.pem"),
        &pem("PRIVATE KEY", svid.private_key().as_bytes()),
        0o600,
    )?;
    write_file(&dir.join("svid.pem"), &chain, 0o644)?;
    write_file(&dir.join("svid_bundle.pem"), &bundle, 0o644)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn pem_blocks() {
        assert_eq!(
            super::pem("X", b"foobar!"),
            "-----BEGIN X-----\nZm9vYmFyIQ==\n-----END X-----\n"
        );
    }
}
