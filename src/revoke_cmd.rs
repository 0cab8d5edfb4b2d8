//! `svidcar revoke` and `svidcar unrevoke`: change and list the control plane's mesh-wide
//! revocation set through `/revocations` on its query port (changes are accepted from the
//! control plane's own host only).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context};
use svidcar_control::server::revocations::{parse_until, Entry, RevocationSet, Target};
use svidcar_control::server::ControlConfig;
use svidcar_identity::tls::CertSerial;
use svidcar_identity::{format_unix, unix_now, SpiffeId};

/// How `--list` prints.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Output {
    /// One line per entry, aligned.
    Table,
    /// The control plane's JSON.
    Json,
}

/// Revoke a SPIFFE ID (every SVID of it) or one certificate mesh-wide, or list revocations.
#[derive(Debug, clap::Args)]
pub(crate) struct RevokeArgs {
    /// The SPIFFE ID to revoke (`spiffe://example.org/ns/web/sa/api`).
    #[arg(required_unless_present_any = ["serial", "list"], conflicts_with_all = ["serial", "list"])]
    spiffe_id: Option<String>,
    /// Revoke one certificate (a leaked SVID) by its serial, in hex (`3a:5f:…` or `3a5f…`).
    #[arg(long, conflicts_with = "list")]
    serial: Option<String>,
    /// Why (shown in refusals and in HTTP 403 bodies).
    #[arg(long, default_value = "")]
    reason: String,
    /// When the revocation lapses: an RFC 3339 time or a duration from now (`2h`, `7d`).
    #[arg(long)]
    until: Option<String>,
    /// List the revocations in force instead.
    #[arg(long)]
    list: bool,
    /// How `--list` prints.
    #[arg(long, value_enum, default_value = "table")]
    output: Output,
    /// The control plane's query address (`svidcar control --admin-listen`).
    #[arg(long, env = "SVIDCAR_CONTROL_ADMIN", default_value_t = ControlConfig::default().admin_listen)]
    control: SocketAddr,
}

/// Lift a revocation.
#[derive(Debug, clap::Args)]
pub(crate) struct UnrevokeArgs {
    /// The revoked SPIFFE ID.
    #[arg(required_unless_present = "serial", conflicts_with = "serial")]
    spiffe_id: Option<String>,
    /// The revoked certificate's serial, in hex.
    #[arg(long)]
    serial: Option<String>,
    /// The control plane's query address (`svidcar control --admin-listen`).
    #[arg(long, env = "SVIDCAR_CONTROL_ADMIN", default_value_t = ControlConfig::default().admin_listen)]
    control: SocketAddr,
}

/// The target named by a SPIFFE ID argument or `--serial`, checked before anything is sent.
fn target(id: Option<&str>, serial: Option<&str>) -> anyhow::Result<Target> {
    match (id, serial) {
        (Some(id), None) => SpiffeId::parse(id)
            .map(Target::Id)
            .with_context(|| format!("{id:?} is not a SPIFFE ID (spiffe://<trust domain>/<path>)")),
        (None, Some(s)) => CertSerial::parse(s)
            .map(Target::Serial)
            .with_context(|| format!("--serial {s:?}")),
        _ => bail!("give a SPIFFE ID or --serial <hex>"),
    }
}

/// Runs `svidcar revoke`.
pub(crate) fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    if args.list {
        let body = call(args.control, "GET", "/revocations", None)?;
        return print_list(&body, args.output);
    }
    let target = target(args.spiffe_id.as_deref(), args.serial.as_deref())?;
    let until = args
        .until
        .as_deref()
        .map(|u| parse_until(u, unix_now()))
        .transpose()?;
    let mut body = serde_json::json!({
        "reason": args.reason,
        "revoked_by": std::env::var("USER").unwrap_or_default(),
    });
    match &target {
        Target::Id(id) => body["spiffe_id"] = id.to_string().into(),
        Target::Serial(s) => body["serial"] = s.to_string().into(),
    }
    if let Some(u) = until {
        body["until"] = u.into();
    }
    call(
        args.control,
        "POST",
        "/revocations",
        Some(&body.to_string()),
    )?;
    let lapse = until.map_or(String::new(), |u| format!(" until {}", format_unix(u)));
    println!(
        "revoked {target}{lapse}; every proxy applies it as soon as its policy stream delivers it"
    );
    Ok(())
}

/// Runs `svidcar unrevoke`.
pub(crate) fn unrevoke(args: UnrevokeArgs) -> anyhow::Result<()> {
    let target = target(args.spiffe_id.as_deref(), args.serial.as_deref())?;
    let query = match &target {
        Target::Id(id) => format!("spiffe_id={}", encode(id.as_str())),
        Target::Serial(s) => format!("serial={s}"),
    };
    call(
        args.control,
        "DELETE",
        &format!("/revocations?{query}"),
        None,
    )?;
    println!("lifted the revocation of {target}");
    Ok(())
}

fn print_list(body: &str, output: Output) -> anyhow::Result<()> {
    if let Output::Json = output {
        print!("{body}");
        return Ok(());
    }
    let set: RevocationSet = serde_json::from_str(body).context("the control plane's answer")?;
    if set.revocations.is_empty() {
        eprintln!("nothing is revoked");
        return Ok(());
    }
    println!(
        "{:<60} {:<20} {:<20} {:<12} REASON",
        "REVOKED", "AT", "UNTIL", "BY"
    );
    for e in &set.revocations {
        println!("{}", row(e));
    }
    Ok(())
}

fn row(e: &Entry) -> String {
    let until = e.until.map_or("-".to_owned(), format_unix);
    format!(
        "{:<60} {:<20} {:<20} {:<12} {}",
        e.target.to_string(),
        format_unix(e.revoked_at),
        until,
        e.revoked_by,
        e.reason
    )
}

fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One HTTP/1.1 request to the query port; the body of a 2xx answer, else an error with the
/// control plane's words.
fn call(
    control: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&control, Duration::from_secs(10)).with_context(|| {
        format!("connecting to the control plane's query port at {control} (set --control or SVIDCAR_CONTROL_ADMIN)")
    })?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {control}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .context("reading the control plane's answer")?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 2") {
        bail!("control plane at {control}: {status}: {}", body.trim());
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_checked_before_anything_is_sent() {
        assert!(matches!(
            target(Some("spiffe://td/a"), None),
            Ok(Target::Id(_))
        ));
        assert!(
            matches!(target(None, Some("3A:5F")), Ok(Target::Serial(s)) if s.as_str() == "3a5f")
        );
        let e = format!("{:#}", target(Some("td/a"), None).unwrap_err());
        assert!(e.starts_with("\"td/a\" is not a SPIFFE ID"), "{e}");
        let e = format!("{:#}", target(None, Some("xyz")).unwrap_err());
        assert!(e.starts_with("--serial \"xyz\": "), "{e}");
    }
}
