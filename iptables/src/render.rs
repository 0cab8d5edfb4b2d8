//! Turning a plan into text: the exact `iptables-restore --noflush` batch, and a listing for
//! people (what `--dry-run` prints next to it).

use std::fmt::Write;

use crate::plan::{Op, Plan};

impl Op {
    /// The `iptables-restore` line for this step.
    pub fn restore_line(&self) -> String {
        match self {
            Op::Declare(chain) => format!(":{chain} - [0:0]"),
            Op::Append(rule) => rule.to_string(),
            Op::Delete { chain, spec } => format!("-D {chain} {spec}"),
            Op::Flush(chain) => format!("-F {chain}"),
            Op::DeleteChain(chain) => format!("-X {chain}"),
        }
    }

    /// This step in words.
    pub fn describe(&self) -> String {
        match self {
            Op::Declare(chain) => format!("create chain {chain} (flushed if it exists)"),
            Op::Append(rule) => {
                format!(
                    "add to {}: {}  ({})",
                    rule.chain(),
                    rule.summary(),
                    rule.why()
                )
            }
            Op::Delete { chain, spec } => format!("remove from {chain}: {spec}"),
            Op::Flush(chain) => format!("flush chain {chain}"),
            Op::DeleteChain(chain) => format!("delete chain {chain}"),
        }
    }
}

impl Plan {
    /// The exact input for `iptables-restore --noflush` (or `ip6tables-restore`): one `*nat`
    /// batch ending in `COMMIT`, applied atomically. Empty when there is nothing to do.
    pub fn restore_input(&self) -> String {
        if self.ops.is_empty() {
            return String::new();
        }
        let mut out = String::from("*nat\n");
        for op in &self.ops {
            out += &op.restore_line();
            out.push('\n');
        }
        out += "COMMIT\n";
        out
    }

    /// One line per step, numbered, or a single "nothing to do" line.
    pub fn describe(&self) -> String {
        if self.ops.is_empty() {
            return format!(
                "{}: nat table already as planned, nothing to do\n",
                self.family
            );
        }
        let mut out = format!("{}: {} step(s)\n", self.family, self.ops.len());
        for (i, op) in self.ops.iter().enumerate() {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "{:>3}. {}", i + 1, op.describe());
        }
        out
    }
}
