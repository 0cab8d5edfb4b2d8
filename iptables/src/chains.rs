//! The rules we want in the nat table for given settings: our four chains and the two jumps
//! into them. This is the interception policy; everything else only moves it into the kernel.
//!
//! The outbound chain has the effect of istio-iptables' (ANCHORS §1), with two deliberate
//! differences explained at the hairpin rules in `outbound`.

use ipnet::IpNet;

use crate::family::Family;
use crate::lists::{CidrSet, PortSet};
use crate::rule::{Owner, Rule, Target};
use crate::settings::{Settings, DNS_PORT};

/// Decides what happens to inbound TCP (jumped to from PREROUTING).
pub const INBOUND: &str = "SVIDCAR_INBOUND";
/// Redirects to the proxy's inbound port.
pub const IN_REDIRECT: &str = "SVIDCAR_IN_REDIRECT";
/// Decides what happens to outbound TCP (jumped to from OUTPUT).
pub const OUTPUT: &str = "SVIDCAR_OUTPUT";
/// Redirects to the proxy's outbound port.
pub const REDIRECT: &str = "SVIDCAR_REDIRECT";

/// Our chains, in the order they are declared (also the order `iptables-save` lists them).
pub const OUR_CHAINS: [&str; 4] = [INBOUND, IN_REDIRECT, OUTPUT, REDIRECT];

/// The full desired state for one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Desired {
    /// Each of our chains with its complete rule list, in `OUR_CHAINS` order.
    pub chains: Vec<(&'static str, Vec<Rule>)>,
    /// The jumps from the built-in chains into ours.
    pub jumps: Vec<Rule>,
}

impl Desired {
    /// Every rule, chain by chain, then the jumps: the order a fresh plan appends them.
    pub(crate) fn all_rules(&self) -> impl Iterator<Item = &Rule> {
        self.chains
            .iter()
            .flat_map(|(_, rules)| rules)
            .chain(&self.jumps)
    }
}

/// Computes the desired state. `settings` must be valid.
pub(crate) fn desired(settings: &Settings, family: Family) -> Desired {
    Desired {
        chains: vec![
            (INBOUND, inbound(settings)),
            (
                IN_REDIRECT,
                vec![Rule::new(
                    IN_REDIRECT,
                    Target::Redirect(settings.inbound_port),
                    "hand inbound connections to the proxy",
                )
                .tcp()],
            ),
            (OUTPUT, outbound(settings, family)),
            (
                REDIRECT,
                vec![Rule::new(
                    REDIRECT,
                    Target::Redirect(settings.outbound_port),
                    "hand outbound connections to the proxy",
                )
                .tcp()],
            ),
        ],
        jumps: vec![
            Rule::new(
                "PREROUTING",
                Target::Jump(INBOUND),
                "inbound TCP enters our rules",
            )
            .tcp(),
            Rule::new(
                "OUTPUT",
                Target::Jump(OUTPUT),
                "outbound TCP enters our rules",
            )
            .tcp(),
        ],
    }
}

/// SVIDCAR_INBOUND: exclusions and admin ports are left alone, the rest goes to the proxy.
fn inbound(s: &Settings) -> Vec<Rule> {
    let mut rules = Vec::new();
    for port in s.inbound_never_captured() {
        let why = if s.inbound_ports_exclude.contains(&port) {
            "inbound port excluded by settings"
        } else {
            "admin or proxy port: never captured"
        };
        rules.push(Rule::new(INBOUND, Target::Return, why).tcp_dport(port));
    }
    let capture = Target::Jump(IN_REDIRECT);
    let why = "captured inbound port";
    match &s.inbound_ports {
        PortSet::All => {
            rules.push(Rule::new(INBOUND, capture, "capture all other inbound TCP").tcp())
        }
        PortSet::Only(ports) => {
            // Ports already RETURNed above would never reach these rules; leave them out.
            let never = s.inbound_never_captured();
            for &port in ports.iter().filter(|p| !never.contains(p)) {
                rules.push(Rule::new(INBOUND, capture.clone(), why).tcp_dport(port));
            }
        }
    }
    rules
}

/// SVIDCAR_OUTPUT, in evaluation order.
fn outbound(s: &Settings, family: Family) -> Vec<Rule> {
    let loopback = family.loopback();
    let mut rules = vec![
        // The proxy forwarding an inbound connection to the app at the pod's own address
        // leaves over `lo` from this source; without this rule the hairpin rules below would
        // send it straight back into the inbound proxy (a loop).
        Rule::new(OUTPUT, Target::Return, "proxy → app inbound passthrough")
            .src(family.passthrough_source())
            .out_loopback(),
    ];
    // Hairpin: the app called a service that resolved to this very pod. The outbound proxy
    // then connects (as the proxy) to the pod's own address, which the kernel routes over
    // `lo`. That connection must enter the inbound side like a call from any other pod would,
    // so it goes through SVIDCAR_INBOUND *before* the owner RETURN below exempts it.
    //
    // Istio jumps straight to its IN_REDIRECT chain here; we jump to SVIDCAR_INBOUND instead
    // so that hairpin traffic to an excluded or admin port is left alone exactly as it would
    // be coming from outside (a RETURN there resumes this chain, where the owner RETURN
    // below then exempts it). And a process that has only the proxy's gid is treated exactly
    // like one with its uid, as the owner RETURNs below do; Istio's rule order lets such a
    // process's `lo` traffic RETURN instead. Connections to 127.0.0.1 are the proxy's own
    // plumbing (e.g. inbound forwarding to the app) and are never hairpinned.
    for owner in [Owner::Uid(true, s.proxy_uid), Owner::Gid(true, s.proxy_gid)] {
        rules.push(
            Rule::new(
                OUTPUT,
                Target::Jump(INBOUND),
                "hairpin: proxy → own pod address over lo",
            )
            .not_dst(loopback)
            .out_loopback()
            .owner(owner),
        );
    }
    // Any other traffic over `lo` stays local: the app calling itself (at 127.0.0.1 or its
    // pod address) talks to itself directly, as in Istio (`-o lo ! --uid-owner → RETURN`).
    // For the proxy, the hairpin rules above already took everything not to 127.0.0.1.
    rules.push(
        Rule::new(OUTPUT, Target::Return, "other loopback traffic stays local").out_loopback(),
    );
    // Loop prevention: the proxy's own connections to the outside are never captured.
    rules.push(
        Rule::new(
            OUTPUT,
            Target::Return,
            "loop prevention: the proxy's own connections",
        )
        .owner(Owner::Uid(true, s.proxy_uid)),
    );
    rules.push(
        Rule::new(
            OUTPUT,
            Target::Return,
            "loop prevention: the proxy's own connections",
        )
        .owner(Owner::Gid(true, s.proxy_gid)),
    );
    rules.push(
        Rule::new(
            OUTPUT,
            Target::Return,
            "loopback destination never captured",
        )
        .dst(loopback),
    );
    for &net in s
        .outbound_cidrs_exclude
        .iter()
        .filter(|n| family.contains(n))
    {
        rules.push(
            Rule::new(OUTPUT, Target::Return, "destination excluded by settings").dst(net.trunc()),
        );
    }
    let mut excluded_ports = s.outbound_ports_exclude.clone();
    for &port in &s.outbound_ports_exclude {
        rules.push(
            Rule::new(OUTPUT, Target::Return, "outbound port excluded by settings").tcp_dport(port),
        );
    }
    if !s.capture_dns && !excluded_ports.contains(&DNS_PORT) {
        rules.push(
            Rule::new(
                OUTPUT,
                Target::Return,
                "DNS over TCP not captured: capture_dns is off",
            )
            .tcp_dport(DNS_PORT),
        );
        excluded_ports.push(DNS_PORT);
    }
    rules.extend(capture_rules(s, family, &excluded_ports));
    rules
}

/// The rules that finally send outbound traffic to SVIDCAR_REDIRECT: every included network
/// crossed with every included port (`*` needs no match at all).
fn capture_rules(s: &Settings, family: Family, excluded_ports: &[u16]) -> Vec<Rule> {
    let nets: Vec<Option<IpNet>> = match &s.outbound_cidrs {
        CidrSet::All => vec![None],
        CidrSet::Only(nets) => nets
            .iter()
            .filter(|n| family.contains(n))
            .map(|n| Some(n.trunc()))
            .collect(),
    };
    let ports: Vec<Option<u16>> = match &s.outbound_ports {
        PortSet::All => vec![None],
        PortSet::Only(ports) => ports
            .iter()
            .filter(|p| !excluded_ports.contains(p))
            .map(|&p| Some(p))
            .collect(),
    };
    let mut rules = Vec::new();
    for net in &nets {
        for port in &ports {
            let mut rule = Rule::new(OUTPUT, Target::Jump(REDIRECT), "captured outbound traffic");
            if let Some(net) = net {
                rule = rule.dst(*net);
            }
            if let Some(port) = port {
                rule = rule.tcp_dport(*port);
            }
            rules.push(rule);
        }
    }
    rules
}
