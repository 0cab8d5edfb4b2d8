//! Planning: from settings and the current `iptables-save` output to the smallest batch that
//! makes the nat table hold exactly our rules (or, for cleanup, none of them).

use crate::chains::{desired, Desired, OUR_CHAINS};
use crate::conflict;
use crate::family::Family;
use crate::rule::Rule;
use crate::save::{tokenize, NatTable};
use crate::settings::{Settings, SettingsError};

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The settings are invalid (local configuration).
    #[error("invalid settings: {0}")]
    Settings(#[from] SettingsError),
    /// A rule already in the nat table would fight ours; nothing was changed.
    #[error("conflicting rule `{rule}`: {reason}")]
    Conflict {
        /// The rule as `iptables-save` printed it.
        rule: String,
        /// Why it conflicts and what to do about it.
        reason: String,
    },
}

/// One step of a plan, i.e. one line of `iptables-restore` input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `:CHAIN - [0:0]`: create the chain, or flush it if it exists (`--noflush` semantics).
    Declare(&'static str),
    /// `-A`: append one of our rules.
    Append(Rule),
    /// `-D CHAIN spec`: delete a rule of ours (a stale or duplicate one), given as saved.
    Delete {
        /// Chain of the rule.
        chain: String,
        /// The rule's spec as `iptables-save` printed it.
        spec: String,
    },
    /// `-F CHAIN`: flush one of our chains before deleting it.
    Flush(&'static str),
    /// `-X CHAIN`: delete one of our (empty, unreferenced) chains.
    DeleteChain(&'static str),
}

/// What has to change in one family's nat table. Render it with [`Plan::restore_input`] (the
/// exact `iptables-restore --noflush` batch) or [`Plan::describe`] (for people).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub(crate) family: Family,
    pub(crate) ops: Vec<Op>,
}

impl Plan {
    /// The family this plan is for.
    pub fn family(&self) -> Family {
        self.family
    }

    /// The steps, in batch order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Whether the nat table is already as wanted ("nothing to do").
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Plans installing our rules for `settings` into a nat table currently holding `current_save`
/// (`iptables-save` output; only its `*nat` section is read, and empty means no rules).
///
/// - Our chains already exactly right and each jump present once: empty plan.
/// - Otherwise all four chains are declared (created, or flushed if they exist) and refilled,
///   and the jumps are added only where missing — all in one batch.
/// - Tagged rules outside our chains that are not wanted (duplicates, leftovers of other
///   settings) are deleted.
/// - A conflicting foreign rule (another mesh, an untagged redirect to our ports, an untagged
///   jump into our chains) is a [`PlanError::Conflict`] and nothing is planned.
pub fn plan(settings: &Settings, current_save: &str, family: Family) -> Result<Plan, PlanError> {
    settings.validate()?;
    let table = NatTable::parse(current_save);
    if let Some(c) = conflict::find(settings, &table) {
        return Err(PlanError::Conflict {
            rule: c.rule,
            reason: c.reason,
        });
    }
    let want = desired(settings, family);
    let mut ops = Vec::new();
    if !chains_match(&want, &table) {
        ops.extend(OUR_CHAINS.iter().map(|&c| Op::Declare(c)));
        ops.extend(
            want.chains
                .iter()
                .flat_map(|(_, rules)| rules.iter().cloned().map(Op::Append)),
        );
    }
    // Tagged rules outside our chains: keep the first copy of each wanted jump, delete the rest.
    let mut missing: Vec<&Rule> = want.jumps.iter().collect();
    for saved in table
        .rules
        .iter()
        .filter(|r| r.is_tagged() && !is_ours(&r.chain))
    {
        let wanted = missing
            .iter()
            .position(|j| j.chain == saved.chain && same(&j.spec(), &saved.spec));
        match wanted {
            Some(i) => {
                missing.remove(i);
            }
            None => ops.push(Op::Delete {
                chain: saved.chain.clone(),
                spec: saved.spec.clone(),
            }),
        }
    }
    ops.extend(missing.into_iter().cloned().map(Op::Append));
    Ok(Plan { family, ops })
}

/// Plans removing everything of ours from a nat table holding `current_save`: every tagged
/// rule outside our chains (our jumps), then our chains (flushed, then deleted). Foreign
/// rules and chains are never touched; an untagged jump into our chains is a conflict.
pub fn cleanup_plan(current_save: &str, family: Family) -> Result<Plan, PlanError> {
    let table = NatTable::parse(current_save);
    if let Some(c) = conflict::find_for_cleanup(&table) {
        return Err(PlanError::Conflict {
            rule: c.rule,
            reason: c.reason,
        });
    }
    let mut ops: Vec<Op> = table
        .rules
        .iter()
        .filter(|r| r.is_tagged() && !is_ours(&r.chain))
        .map(|r| Op::Delete {
            chain: r.chain.clone(),
            spec: r.spec.clone(),
        })
        .collect();
    let present: Vec<&'static str> = OUR_CHAINS
        .into_iter()
        .filter(|c| table.has_chain(c))
        .collect();
    ops.extend(present.iter().map(|&c| Op::Flush(c)));
    ops.extend(present.iter().map(|&c| Op::DeleteChain(c)));
    Ok(Plan { family, ops })
}

/// The full rule list we want for `settings` (chains, then jumps), as `-A` lines: what
/// `iptables-save` shows of ours once a plan has been applied.
pub fn desired_rules(settings: &Settings, family: Family) -> Result<Vec<Rule>, PlanError> {
    settings.validate()?;
    Ok(desired(settings, family).all_rules().cloned().collect())
}

fn is_ours(chain: &str) -> bool {
    OUR_CHAINS.contains(&chain)
}

/// Whether every chain of ours exists with exactly the wanted rules.
fn chains_match(want: &Desired, table: &NatTable) -> bool {
    want.chains.iter().all(|(name, rules)| {
        table.has_chain(name) && {
            let have: Vec<&str> = table.chain_rules(name).map(|r| r.spec.as_str()).collect();
            have.len() == rules.len() && rules.iter().zip(have).all(|(w, h)| same(&w.spec(), h))
        }
    })
}

/// Rule specs compared token by token, so quoting differences between iptables versions
/// (`--comment "x"` vs `--comment x`) do not matter.
fn same(a: &str, b: &str) -> bool {
    tokenize(a) == tokenize(b)
}

#[cfg(test)]
pub(crate) mod tests;
