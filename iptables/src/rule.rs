//! One nat-table rule of ours, typed, and its text exactly as `iptables-save` prints it.
//!
//! Rendering in the canonical save form (`-s`, `-d`, `-o`, `-p`, then matches in the order they
//! were added, then `-j`) is what lets a plan compare its rules with the kernel's textually.

use std::fmt;

use ipnet::IpNet;

/// The comment every rule of ours carries, so we can recognise (and remove) exactly our rules.
pub const TAG: &str = "svidcar-managed";

/// What a rule does with a matching packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// Stop evaluating this chain (leave the packet alone if it came from a built-in chain).
    Return,
    /// Continue in one of our chains.
    Jump(&'static str),
    /// Rewrite the destination to this local port (`REDIRECT --to-ports`).
    Redirect(u16),
}

/// A match on the owner of the socket (only valid in OUTPUT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    /// Socket owned by this uid (`true`) or not (`false`).
    Uid(bool, u32),
    /// Socket owned by this gid (`true`) or not (`false`).
    Gid(bool, u32),
}

/// A rule in one chain of the nat table, with the reason it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub(crate) chain: &'static str,
    source: Option<IpNet>,
    /// `(negated, network)`.
    destination: Option<(bool, IpNet)>,
    out_loopback: bool,
    tcp: bool,
    dport: Option<u16>,
    owner: Option<Owner>,
    pub(crate) target: Target,
    why: &'static str,
}

impl Rule {
    /// A rule in `chain` that matches every packet and sends it to `target`.
    pub(crate) fn new(chain: &'static str, target: Target, why: &'static str) -> Rule {
        Rule {
            chain,
            source: None,
            destination: None,
            out_loopback: false,
            tcp: false,
            dport: None,
            owner: None,
            target,
            why,
        }
    }

    pub(crate) fn src(mut self, net: IpNet) -> Rule {
        self.source = Some(net);
        self
    }

    pub(crate) fn dst(mut self, net: IpNet) -> Rule {
        self.destination = Some((false, net));
        self
    }

    pub(crate) fn not_dst(mut self, net: IpNet) -> Rule {
        self.destination = Some((true, net));
        self
    }

    pub(crate) fn out_loopback(mut self) -> Rule {
        self.out_loopback = true;
        self
    }

    pub(crate) fn tcp(mut self) -> Rule {
        self.tcp = true;
        self
    }

    pub(crate) fn tcp_dport(mut self, port: u16) -> Rule {
        self.tcp = true;
        self.dport = Some(port);
        self
    }

    pub(crate) fn owner(mut self, owner: Owner) -> Rule {
        self.owner = Some(owner);
        self
    }

    /// The chain this rule belongs to.
    pub fn chain(&self) -> &str {
        self.chain
    }

    /// Why the rule exists, in a few words.
    pub fn why(&self) -> &str {
        self.why
    }

    /// The rule without `-A CHAIN`, as `iptables-save` prints it.
    pub fn spec(&self) -> String {
        let mut s = String::new();
        if let Some(net) = self.source {
            s += &format!(" -s {net}");
        }
        if let Some((negated, net)) = self.destination {
            s += &format!("{} -d {net}", if negated { " !" } else { "" });
        }
        if self.out_loopback {
            s += " -o lo";
        }
        if self.tcp {
            s += " -p tcp";
        }
        if let Some(port) = self.dport {
            s += &format!(" -m tcp --dport {port}");
        }
        match self.owner {
            Some(Owner::Uid(is, uid)) => s += &format!(" -m owner{} --uid-owner {uid}", not(is)),
            Some(Owner::Gid(is, gid)) => s += &format!(" -m owner{} --gid-owner {gid}", not(is)),
            None => {}
        }
        s += &format!(" -m comment --comment {TAG}");
        match self.target {
            Target::Return => s += " -j RETURN",
            Target::Jump(chain) => s += &format!(" -j {chain}"),
            Target::Redirect(port) => s += &format!(" -j REDIRECT --to-ports {port}"),
        }
        s.trim_start().to_string()
    }

    /// The rule in words, e.g. `tcp dport 53 → RETURN`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(net) = self.source {
            parts.push(format!("from {net}"));
        }
        match self.destination {
            Some((false, net)) => parts.push(format!("to {net}")),
            Some((true, net)) => parts.push(format!("not to {net}")),
            None => {}
        }
        if self.out_loopback {
            parts.push("out lo".into());
        }
        match (self.tcp, self.dport) {
            (_, Some(port)) => parts.push(format!("tcp dport {port}")),
            (true, None) => parts.push("tcp".into()),
            (false, None) => {}
        }
        match self.owner {
            Some(Owner::Uid(is, uid)) => parts.push(format!("uid {}{uid}", eq(is))),
            Some(Owner::Gid(is, gid)) => parts.push(format!("gid {}{gid}", eq(is))),
            None => {}
        }
        if parts.is_empty() {
            parts.push("any".into());
        }
        let target = match self.target {
            Target::Return => "RETURN".to_string(),
            Target::Jump(chain) => chain.to_string(),
            Target::Redirect(port) => format!("REDIRECT :{port}"),
        };
        format!("{} → {target}", parts.join(", "))
    }
}

fn not(is: bool) -> &'static str {
    if is {
        ""
    } else {
        " !"
    }
}

fn eq(is: bool) -> &'static str {
    if is {
        ""
    } else {
        "!= "
    }
}

/// `-A CHAIN spec`, a line of `iptables-restore` input.
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-A {} {}", self.chain, self.spec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_in_save_order() {
        let lo: IpNet = "127.0.0.1/32".parse().unwrap();
        let r = Rule::new("SVIDCAR_OUTPUT", Target::Jump("SVIDCAR_INBOUND"), "x")
            .owner(Owner::Uid(true, 1337))
            .out_loopback()
            .not_dst(lo);
        assert_eq!(
            r.to_string(),
            "-A SVIDCAR_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1337 \
             -m comment --comment svidcar-managed -j SVIDCAR_INBOUND"
        );
        assert_eq!(
            r.summary(),
            "not to 127.0.0.1/32, out lo, uid 1337 → SVIDCAR_INBOUND"
        );
        let r = Rule::new("SVIDCAR_OUTPUT", Target::Redirect(15001), "x").tcp_dport(80);
        assert_eq!(
            r.spec(),
            "-p tcp -m tcp --dport 80 -m comment --comment svidcar-managed \
             -j REDIRECT --to-ports 15001"
        );
        let r = Rule::new("OUTPUT", Target::Return, "x").owner(Owner::Gid(false, 7));
        assert_eq!(r.summary(), "gid != 7 → RETURN");
    }
}
