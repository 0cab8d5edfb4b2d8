//! `svidcar identities`: the control plane's identity inventory (`/identities` on its query
//! port) as a table or JSON; and the small HTTP GET the governance commands share.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use svidcar_control::inventory::IdentityRow;

/// How to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    /// One line per identity.
    Table,
    /// The JSON array `/identities` answers.
    Json,
}

/// List every identity the CA issued or traffic shows, with flags.
#[derive(Debug, clap::Args)]
pub(crate) struct IdentitiesArgs {
    /// The control plane's query address.
    #[arg(long, default_value = "127.0.0.1:15014")]
    control: String,
    /// Table or JSON.
    #[arg(long, value_enum, default_value = "table")]
    output: Output,
    /// Flag identities issued at least this many days ago without traffic since (0: never
    /// seen in traffic at all).
    #[arg(long, default_value_t = svidcar_control::inventory::DEFAULT_UNUSED_DAYS)]
    unused_days: u32,
}

/// `GET path` from `addr` over plain HTTP/1.1; the body of a 200 answer.
pub(crate) fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr)
        .with_context(|| format!("connecting to the control plane at {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .context("reading the control plane's answer")?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "control plane {path}: {} {}",
            head.lines().next().unwrap_or_default(),
            body.trim()
        );
    }
    if head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"))
    {
        bail!("control plane {path}: chunked answers are not read here");
    }
    Ok(body.to_owned())
}

/// `YYYY-MM-DDTHH:MM:SSZ`, or `-`.
fn when_s(s: Option<i64>) -> String {
    s.map_or("-".to_owned(), svidcar_identity::format_unix)
}

fn when_ms(ms: Option<i64>) -> String {
    when_s(ms.map(|m| m.div_euclid(1000)))
}

/// `a,b`, or `-` for none.
fn list(items: &[&str]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(",")
    }
}

/// The table: one line per identity.
fn table(rows: &[IdentityRow]) -> String {
    let mut out = format!(
        "{:<50} {:<12} {:<20} {:<20} {:<20} {:<20} {:>5}  {:<16} SELECTORS\n",
        "SPIFFE ID",
        "NODE",
        "LAST ISSUED",
        "EXPIRES",
        "LAST AS SOURCE",
        "LAST AS DEST",
        "PEERS",
        "FLAGS"
    );
    for r in rows {
        let i = r.issued.as_ref();
        let flags: Vec<&str> = r.flags.iter().map(|f| f.as_str()).collect();
        let selectors: Vec<&str> = i
            .map(|i| i.selectors.iter().map(String::as_str).collect())
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<50} {:<12} {:<20} {:<20} {:<20} {:<20} {:>5}  {:<16} {}\n",
            r.id.as_str(),
            i.and_then(|i| i.node.as_deref()).unwrap_or("-"),
            when_s(i.map(|i| i.last_issued)),
            when_s(i.map(|i| i.not_after)),
            when_ms(r.traffic.last_seen_as_source_ms),
            when_ms(r.traffic.last_seen_as_destination_ms),
            r.traffic.peers,
            list(&flags),
            list(&selectors),
        ));
    }
    out
}

/// Runs `svidcar identities`.
pub(crate) fn run(args: IdentitiesArgs) -> anyhow::Result<ExitCode> {
    let body = http_get(
        &args.control,
        &format!("/identities?unused_days={}", args.unused_days),
    )?;
    match args.output {
        Output::Json => println!("{}", body.trim_end()),
        Output::Table => {
            let rows: Vec<IdentityRow> =
                serde_json::from_str(&body).context("the control plane's /identities")?;
            print!("{}", table(&rows));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use svidcar_control::inventory::{Flag, Issued, Traffic};
    use svidcar_identity::SpiffeId;

    #[test]
    fn the_table_shows_the_node_and_the_selectors_of_each_identity() {
        let id = |s: &str| SpiffeId::parse(s).unwrap();
        let rows = [
            IdentityRow {
                id: id("spiffe://example.org/ns/shop/sa/web"),
                issued: Some(Issued {
                    id: id("spiffe://example.org/ns/shop/sa/web"),
                    node: Some("node-a".into()),
                    selectors: vec!["k8s:ns:shop".into(), "k8s:sa:web".into()],
                    first_issued: 1_748_855_671,
                    last_issued: 1_748_855_671,
                    not_after: 1_748_859_271,
                    serial: "01".into(),
                    count: 1,
                }),
                traffic: Traffic {
                    last_seen_as_source_ms: Some(1_748_855_673_000),
                    last_seen_as_destination_ms: None,
                    peers: 1,
                },
                flags: vec![],
            },
            IdentityRow {
                id: id("spiffe://other.org/x"),
                issued: None,
                traffic: Traffic::default(),
                flags: vec![Flag::ForeignTrustDomain],
            },
        ];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].ends_with("FLAGS            SELECTORS"), "{t}");
        assert!(
            lines[1].starts_with("spiffe://example.org/ns/shop/sa/web "),
            "{t}"
        );
        assert!(lines[1].contains(" node-a "), "{t}");
        assert!(lines[1].contains(" 2025-06-02T09:14:33Z "), "{t}");
        assert!(
            lines[1].ends_with(" -                k8s:ns:shop,k8s:sa:web"),
            "{t}"
        );
        assert!(lines[2].ends_with(" foreign-trust-domain -"), "{t}");
    }
}
