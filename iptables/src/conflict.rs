//! Foreign rules we refuse to work next to: they would fight ours for the same connections.

use crate::chains::OUR_CHAINS;
use crate::save::{NatTable, SavedRule};
use crate::settings::Settings;

/// Chain-name prefixes of other meshes' interception (Istio's istio-iptables, Linkerd's
/// proxy-init). A jump into one of them from PREROUTING or OUTPUT means another sidecar is
/// already intercepting this pod.
const FOREIGN_MESH_PREFIXES: [&str; 2] = ["ISTIO_", "PROXY_INIT_"];

/// A rule that conflicts with ours, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Conflict {
    /// The rule as `iptables-save` printed it.
    pub rule: String,
    /// Why it conflicts and what to do about it.
    pub reason: String,
}

/// The first conflicting rule in `table` for setting up interception with `settings`.
pub(crate) fn find(settings: &Settings, table: &NatTable) -> Option<Conflict> {
    table.rules.iter().find_map(|rule| {
        let reason = untagged_jump_into_ours(rule)
            .or_else(|| foreign_mesh(rule))
            .or_else(|| redirect_to_our_ports(settings, rule))?;
        Some(Conflict {
            rule: rule.line(),
            reason,
        })
    })
}

/// The first conflict for removing our rules: only untagged jumps into our chains matter
/// (they would keep the chains referenced, and they are not ours to delete).
pub(crate) fn find_for_cleanup(table: &NatTable) -> Option<Conflict> {
    table.rules.iter().find_map(|rule| {
        Some(Conflict {
            rule: rule.line(),
            reason: untagged_jump_into_ours(rule)?,
        })
    })
}

fn untagged_jump_into_ours(rule: &SavedRule) -> Option<String> {
    let target = rule.target()?;
    (OUR_CHAINS.contains(&target)
        && !OUR_CHAINS.contains(&rule.chain.as_str())
        && !rule.is_tagged())
    .then(|| {
        format!(
            "it jumps into our chain {target} but lacks our tag, so it was not added by \
                 svidcar; delete it (iptables -t nat -D {} {})",
            rule.chain, rule.spec
        )
    })
}

fn foreign_mesh(rule: &SavedRule) -> Option<String> {
    if !matches!(rule.chain.as_str(), "PREROUTING" | "OUTPUT") {
        return None;
    }
    let target = rule.target()?;
    FOREIGN_MESH_PREFIXES
        .iter()
        .any(|p| target.starts_with(p))
        .then(|| {
            format!(
                "another mesh's interception chain {target} is hooked into {}; two sidecars \
                 cannot both capture this pod's traffic: remove the other mesh's init container \
                 (or run its cleanup) and re-run",
                rule.chain
            )
        })
}

fn redirect_to_our_ports(settings: &Settings, rule: &SavedRule) -> Option<String> {
    if rule.is_tagged() || OUR_CHAINS.contains(&rule.chain.as_str()) {
        return None;
    }
    let ours = [settings.inbound_port, settings.outbound_port];
    let hits = |port: u16| ours.contains(&port);
    let redirect = rule.target() == Some("REDIRECT")
        && rule.option("--to-ports").is_some_and(|p| {
            port_range(p).is_some_and(|(lo, hi)| ours.iter().any(|&o| lo <= o && o <= hi))
        });
    let dnat = rule.target() == Some("DNAT")
        && rule
            .option("--to-destination")
            .and_then(|d| d.rsplit_once(':'))
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_some_and(hits);
    (redirect || dnat).then(|| {
        "it sends connections to the proxy's port but was not added by svidcar; another \
         interception setup is active in this network namespace: remove it and re-run"
            .to_string()
    })
}

/// `15001` or `15001-15002`.
fn port_range(s: &str) -> Option<(u16, u16)> {
    match s.split_once('-') {
        Some((lo, hi)) => Some((lo.parse().ok()?, hi.parse().ok()?)),
        None => {
            let p = s.parse().ok()?;
            Some((p, p))
        }
    }
}
