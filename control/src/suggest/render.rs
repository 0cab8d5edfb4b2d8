//! A destination's grants as one `AuthorizationPolicy` document: enforcing (`ALLOW` exactly
//! what was observed) or its `AUDIT` counterpart, whose rules match exactly the requests the
//! `ALLOW` policy would deny — installed next to the policies in force it changes no decision,
//! and every `AUDIT` record it causes is a would-be denial. Deterministic: same edges, same bytes.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use svidcar_identity::SpiffeId;

use super::grants::DestinationGrants;
use crate::edge::EdgeRecord;

/// Which policy to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// `action: AUDIT`, matching what the suggestion would deny: changes nothing, reports.
    Audit,
    /// `action: ALLOW`, exactly the observed traffic: everything else is denied.
    Enforce,
}

/// One suggested policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuggestedPolicy {
    /// The destination workload it selects.
    pub destination: SpiffeId,
    /// The policy's name (`suggested-…`, `-audit` for the AUDIT form).
    pub name: String,
    /// The YAML document, comments included.
    pub yaml: String,
}

impl SuggestedPolicy {
    /// `<name>.yaml`.
    pub fn file_name(&self) -> String {
        format!("{}.yaml", self.name)
    }
}

/// A YAML scalar, always quoted (JSON strings are YAML).
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

fn list(items: impl IntoIterator<Item = String>) -> String {
    let v: Vec<String> = items.into_iter().collect();
    format!("[{}]", v.join(", "))
}

fn ports(p: &BTreeSet<u16>) -> String {
    list(p.iter().map(u16::to_string))
}

/// The policy name for `id`: `suggested-` and the ID in the characters names allow.
pub(super) fn base_name(id: &SpiffeId) -> String {
    let raw = id
        .as_str()
        .trim_start_matches("spiffe://")
        .to_ascii_lowercase();
    let mut slug: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    // Names are at most 253 characters; keep room for `suggested-`, `-audit` and a hash.
    if slug.len() > 200 {
        slug.truncate(200);
        slug.push('-');
        slug.push_str(&svidcar_policy::content_version([id.as_str().as_bytes()])[..8]);
    }
    format!("suggested-{slug}")
}

fn edge_line(e: &EdgeRecord) -> String {
    let src = e.key.source.as_ref().map_or("(plaintext)", |s| s.as_str());
    let what = match (&e.key.method, &e.key.path_prefix) {
        (Some(m), Some(p)) => format!(" {m} {p}"),
        _ => String::new(),
    };
    let what = what.replace(['\n', '\r'], " ");
    format!(
        "#   {src} -> :{} {}{what} ({} × {})",
        e.key.port,
        e.key.protocol.as_str(),
        e.count,
        e.key.action.as_str()
    )
}

fn header(out: &mut String, g: &DestinationGrants, window: &str, mode: Mode) {
    let _ = writeln!(
        out,
        "# Suggested by `svidcar policy suggest` from the traffic of the last {window}: {} caller(s), {} edge(s) let through.",
        g.callers.len(),
        g.observed.len()
    );
    match mode {
        Mode::Enforce => {
            let _ = writeln!(
                out,
                "# Allows exactly what was observed; everything else to this workload is denied."
            );
        }
        Mode::Audit => {
            let _ = writeln!(
                out,
                "# AUDIT form: its rules match exactly what the ALLOW suggestion would deny (HTTP"
            );
            let _ = writeln!(out, "# requests by method and path; TCP by caller and port). Decisions do not change; every");
            let _ = writeln!(out, "# AUDIT record it causes (`svidcar decisions --action AUDIT`) is a would-be denial.");
        }
    }
    for (title, edges) in [
        ("Not granted, denied today", &g.denied),
        (
            "Not granted, callers without a SPIFFE ID (plaintext)",
            &g.plaintext,
        ),
    ] {
        if edges.is_empty() {
            continue;
        }
        let _ = writeln!(out, "# {title}:");
        for e in edges {
            let _ = writeln!(out, "{}", edge_line(e));
        }
    }
}

fn allow_rules(out: &mut String, g: &DestinationGrants) {
    if g.callers.is_empty() {
        out.push_str("rules: []   # no caller was let through in the window\n");
        return;
    }
    out.push_str("rules:\n");
    for (caller, c) in &g.callers {
        let _ = writeln!(
            out,
            "  - from: [{{ principals: [{}] }}]",
            q(caller.as_str())
        );
        out.push_str("    to:\n");
        if !c.tcp_ports.is_empty() {
            let _ = writeln!(out, "      - {{ ports: {} }}", ports(&c.tcp_ports));
        }
        for (port, path, m) in c.http_only() {
            let methods = if m.any {
                String::new()
            } else {
                format!(", methods: {}", list(m.names.iter().map(|s| q(s))))
            };
            let _ = writeln!(
                out,
                "      - {{ ports: [{port}]{methods}, paths: [{}] }}",
                q(&path.pattern())
            );
        }
    }
}

fn audit_rules(out: &mut String, g: &DestinationGrants) {
    out.push_str("rules:\n");
    if g.callers.is_empty() {
        out.push_str("  - {}   # every call: no caller was let through in the window\n");
        return;
    }
    let callers = list(g.callers.keys().map(|c| q(c.as_str())));
    let _ = writeln!(out, "  # callers never seen (plaintext included)");
    let _ = writeln!(out, "  - from: [{{ not_principals: {callers} }}]");
    for (caller, c) in &g.callers {
        let from = format!("[{{ principals: [{}] }}]", q(caller.as_str()));
        let _ = writeln!(out, "  # {caller}: ports it never used");
        let _ = writeln!(out, "  - from: {from}");
        let _ = writeln!(out, "    to: [{{ not_ports: {} }}]", ports(&c.ports()));
        let http_ports: BTreeSet<u16> = c.http_only().map(|(p, _, _)| p).collect();
        for port in http_ports {
            let paths: Vec<_> = c
                .http_only()
                .filter(|(p, _, _)| *p == port)
                .map(|(_, path, m)| (path, m))
                .collect();
            let _ = writeln!(out, "  # {caller}: paths it never called on port {port}");
            let _ = writeln!(out, "  - from: {from}");
            let _ = writeln!(
                out,
                "    to: [{{ ports: [{port}], not_paths: {} }}]",
                list(paths.iter().map(|(p, _)| q(&p.pattern())))
            );
            for (path, m) in paths.iter().filter(|(_, m)| !m.any) {
                let _ = writeln!(out, "  - from: {from}");
                let _ = writeln!(
                    out,
                    "    to: [{{ ports: [{port}], paths: [{}], not_methods: {} }}]",
                    q(&path.pattern()),
                    list(m.names.iter().map(|s| q(s)))
                );
            }
        }
    }
}

/// The suggested policy for `destination`; `window` is how the window was given (`7d`), for
/// the header comment.
pub fn render(
    destination: &SpiffeId,
    grants: &DestinationGrants,
    mode: Mode,
    window: &str,
) -> SuggestedPolicy {
    let name = match mode {
        Mode::Enforce => base_name(destination),
        Mode::Audit => format!("{}-audit", base_name(destination)),
    };
    let mut out = String::new();
    header(&mut out, grants, window, mode);
    out.push_str("kind: AuthorizationPolicy\n");
    let _ = writeln!(out, "name: {name}");
    let _ = writeln!(out, "selector: [{}]", q(destination.as_str()));
    match mode {
        Mode::Enforce => {
            out.push_str("action: ALLOW\n");
            allow_rules(&mut out, grants);
        }
        Mode::Audit => {
            out.push_str("action: AUDIT\n");
            audit_rules(&mut out, grants);
        }
    }
    SuggestedPolicy {
        destination: destination.clone(),
        name,
        yaml: out,
    }
}

#[cfg(test)]
mod tests;
