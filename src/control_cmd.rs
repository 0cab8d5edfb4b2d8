//! `svidcar control` (run the control plane) and `svidcar decisions` (query its decision log).

use std::net::SocketAddr;

use anyhow::{bail, Context};
use svidcar_control::decisions::{parse_action, parse_identity, StoredDecision};
use svidcar_control::server::ControlConfig;
use svidcar_identity::Dur;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Query the control plane's decision log.
#[derive(Debug, clap::Args)]
pub(crate) struct DecisionsArgs {
    /// The control plane's query address (`svidcar control --admin-listen`).
    #[arg(long, env = "SVIDCAR_CONTROL_ADMIN", default_value_t = ControlConfig::default().admin_listen)]
    control: SocketAddr,
    /// Source or destination SPIFFE ID: exact (`spiffe://example.org/ns/web`), or a prefix
    /// ending in `*` (`spiffe://example.org/ns/*`).
    #[arg(long, value_parser = parse_identity)]
    identity: Option<String>,
    /// ALLOW, DENY or AUDIT (any case).
    #[arg(long, value_parser = parse_action)]
    action: Option<String>,
    /// Only decisions newer than this (e.g. `15m`).
    #[arg(long)]
    since: Option<Dur>,
    /// Only decisions older than this (e.g. `5m`).
    #[arg(long)]
    until: Option<Dur>,
    /// At most this many (the newest).
    #[arg(long, default_value = "100")]
    limit: usize,
    /// Print raw JSON lines. Either way, when no decision matches, stdout stays empty and
    /// stderr says so.
    #[arg(long)]
    json: bool,
}

/// Loads the configuration, then runs the control plane until SIGTERM/SIGINT.
pub(crate) async fn control(flags: svidcar_control::server::ControlFlags) -> anyhow::Result<()> {
    let handle = svidcar_control::server::start(flags.load()?).await?;
    crate::shutdown_signal().await?;
    handle.shutdown().await;
    Ok(())
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

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` from Unix milliseconds.
fn utc(ms: i64) -> String {
    let secs = svidcar_identity::format_unix(ms.div_euclid(1000));
    let base = secs.strip_suffix('Z').unwrap_or(&secs);
    format!("{base}.{:03}Z", ms.rem_euclid(1000))
}

/// Runs `svidcar decisions`.
pub(crate) async fn decisions(args: DecisionsArgs) -> anyhow::Result<()> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let mut q = vec![format!("limit={}", args.limit)];
    if let Some(i) = &args.identity {
        q.push(format!("identity={}", encode(i)));
    }
    if let Some(a) = &args.action {
        q.push(format!("action={}", encode(a)));
    }
    if let Some(s) = args.since {
        q.push(format!("since_ms={}", now_ms - s.0.as_millis() as i64));
    }
    if let Some(u) = args.until {
        q.push(format!("until_ms={}", now_ms - u.0.as_millis() as i64));
    }
    let mut s = tokio::net::TcpStream::connect(args.control)
        .await
        .with_context(|| format!("connecting to the control plane at {}", args.control))?;
    let req = format!(
        "GET /decisions?{} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
        q.join("&"),
        args.control
    );
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(30), s.read_to_end(&mut raw))
        .await
        .context("the control plane did not answer in 30 s")??;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "control plane: {} {}",
            head.lines().next().unwrap_or_default(),
            body.trim()
        );
    }
    let mut matched = 0usize;
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        matched += 1;
        if args.json {
            println!("{line}");
            continue;
        }
        let d: StoredDecision = serde_json::from_str(line).context("decision record")?;
        let e = &d.event;
        let rule = e.rule.as_ref().map_or("-".to_owned(), |r| r.to_string());
        let src = e.source_id.as_ref().map_or("(plaintext)", |i| i.as_str());
        let dst = e.destination_id.as_ref().map_or("", |i| i.as_str());
        let mut request = match (&e.method, &e.path) {
            (Some(m), Some(p)) => format!(" {m} {p}"),
            _ => String::new(),
        };
        if e.count > 1 {
            request.push_str(&format!(" (×{})", e.count));
        }
        println!(
            "{} {:<5} {src} ({}) -> {} :{}{request} {rule} — {}",
            utc(e.time_ms),
            e.action.as_str(),
            e.source_addr,
            dst,
            e.port,
            e.reason
        );
    }
    if matched == 0 {
        // On stderr, so that `--json` output stays a (here empty) stream of JSON lines.
        eprintln!("no decision matched");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formatting() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::utc(1_795_395_812_345), "2026-11-23T01:03:32.345Z");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
