//! `svidcar control` (run the control plane) and `svidcar decisions` (query its decision store,
//! list new-edge alerts, allow-list a new edge).

use std::net::SocketAddr;

use anyhow::{bail, Context};
use svidcar_control::decisions::{parse_action, parse_identity, StoredDecision};
use svidcar_control::edges::NewEdgeAlert;
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
    /// `table` (aligned columns, for a person) or `json` (one JSON object per line). Either
    /// way, when nothing matches, stdout stays empty and stderr says so.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// The same as `--output json`.
    #[arg(long, hide = true)]
    json: bool,
    /// List the new-edge alerts (edges never seen before, after the learning period) instead
    /// of decisions.
    #[arg(long, conflicts_with_all = ["identity", "action", "since", "until"])]
    new_edges: bool,
    /// Allow-list the new edge of alert ID (from `--new-edges`): it is marked allowed and a
    /// DENY generated for it (`--on-new-edge deny`) is lifted.
    #[arg(long, value_name = "ID", conflicts_with_all = ["identity", "action", "since", "until", "new_edges"])]
    allow_edge: Option<i64>,
}

/// How `svidcar decisions` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    /// Aligned columns with a header.
    Table,
    /// One JSON object per line.
    Json,
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

/// One HTTP/1.1 request to the control plane's query port; the body of a 200 answer.
async fn call(control: SocketAddr, method: &str, target: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(control)
        .await
        .with_context(|| format!("connecting to the control plane at {control}"))?;
    let req = format!(
        "{method} {target} HTTP/1.1\r\nhost: {control}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
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
    Ok(body.to_owned())
}

/// Rows under a header, each column as wide as its widest cell (the last one unpadded).
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(cell);
            if i + 1 < widths.len() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(&mut header.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// The columns of a decision.
fn decision_row(d: &StoredDecision) -> Vec<String> {
    let e = &d.event;
    let mut request = match (&e.method, &e.path) {
        (Some(m), Some(p)) => format!("{m} {p}"),
        _ => "-".to_owned(),
    };
    if e.count > 1 {
        request.push_str(&format!(" (×{})", e.count));
    }
    vec![
        utc(e.time_ms),
        e.action.as_str().to_owned(),
        format!(
            "{} ({})",
            e.source_id.as_ref().map_or("(plaintext)", |i| i.as_str()),
            e.source_addr
        ),
        e.destination_id
            .as_ref()
            .map_or("-", |i| i.as_str())
            .to_owned(),
        e.port.to_string(),
        request,
        e.rule.as_ref().map_or("-".to_owned(), |r| r.to_string()),
        e.reason.clone(),
    ]
}

/// The columns of a new-edge alert.
fn alert_row(a: &NewEdgeAlert) -> Vec<String> {
    let k = &a.key;
    vec![
        a.id.to_string(),
        utc(a.first_seen_ms),
        k.source
            .as_ref()
            .map_or("(plaintext)", |i| i.as_str())
            .to_owned(),
        k.destination
            .as_ref()
            .map_or("-", |i| i.as_str())
            .to_owned(),
        k.port.to_string(),
        match &k.method {
            Some(m) => format!("{} {m}", k.protocol.as_str()),
            None => k.protocol.as_str().to_owned(),
        },
        k.action.as_str().to_owned(),
        a.status.as_str().to_owned(),
        if a.denied { "yes" } else { "no" }.to_owned(),
    ]
}

/// `svidcar decisions --new-edges` and `--allow-edge`.
async fn new_edges(args: &DecisionsArgs, json: bool) -> anyhow::Result<()> {
    let alerts: Vec<NewEdgeAlert> = match args.allow_edge {
        Some(id) => {
            let body = call(args.control, "POST", &format!("/new-edges/{id}/allow")).await?;
            vec![serde_json::from_str(&body).context("new-edge alert")?]
        }
        None => serde_json::from_str(&call(args.control, "GET", "/new-edges").await?)
            .context("new-edge alerts")?,
    };
    if alerts.is_empty() {
        eprintln!("no new edge");
    } else if json {
        for a in &alerts {
            println!("{}", serde_json::to_string(a)?);
        }
    } else {
        let rows: Vec<Vec<String>> = alerts.iter().map(alert_row).collect();
        print!(
            "{}",
            table(
                &[
                    "ID",
                    "FIRST SEEN",
                    "SOURCE",
                    "DESTINATION",
                    "PORT",
                    "PROTOCOL",
                    "ACTION",
                    "STATUS",
                    "DENIED"
                ],
                &rows
            )
        );
    }
    Ok(())
}

/// Runs `svidcar decisions`.
pub(crate) async fn decisions(args: DecisionsArgs) -> anyhow::Result<()> {
    let json = args.json || args.output == Output::Json;
    if args.new_edges || args.allow_edge.is_some() {
        return new_edges(&args, json).await;
    }
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
    let body = call(args.control, "GET", &format!("/decisions?{}", q.join("&"))).await?;
    let mut matched = 0usize;
    let mut rows = Vec::new();
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        matched += 1;
        if json {
            println!("{line}");
            continue;
        }
        let d: StoredDecision = serde_json::from_str(line).context("decision record")?;
        rows.push(decision_row(&d));
    }
    if !rows.is_empty() {
        print!(
            "{}",
            table(
                &[
                    "TIME",
                    "ACTION",
                    "SOURCE",
                    "DESTINATION",
                    "PORT",
                    "REQUEST",
                    "RULE",
                    "REASON"
                ],
                &rows
            )
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

    #[test]
    fn tables_align_columns() {
        let rows = vec![
            vec!["1".to_owned(), "spiffe://td/a".to_owned(), "x".to_owned()],
            vec!["22".to_owned(), "b".to_owned(), "y".to_owned()],
        ];
        assert_eq!(
            super::table(&["ID", "SOURCE", "END"], &rows),
            "ID  SOURCE         END\n1   spiffe://td/a  x\n22  b              y\n"
        );
    }
}
