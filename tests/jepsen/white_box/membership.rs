//! Membership: each node's configuration followed from its own log, no two
//! disjoint majorities (one voter changed at a time), every node's
//! configuration history a prefix of the committed one, and the leader's
//! rules as it appends (one change pending, after an entry of its term).

use std::collections::BTreeMap;

use lattice::raft::{Entry, LogIndex, Membership, NodeId, Term};

use super::WhiteBox;

/// The rules of single-server changes, as a leader appends: one
/// change at a time, a configuration only once the one before it in
/// its log is committed (two pending ones may together change two
/// voters, and majorities of the committed configuration and of the
/// newest one may not meet); and only after an entry of its own term
/// committed.
pub(super) fn leader_appended(
    w: &mut WhiteBox,
    node: NodeId,
    term: Term,
    commit: LogIndex,
    entries: &[Entry],
) {
    for entry in entries.iter().filter(|e| e.term == term) {
        if entry.membership().is_none() {
            continue;
        }
        let before = w
            .configs
            .get(&node)
            .and_then(|c| c.range(..entry.index).next_back())
            .map_or(LogIndex(0), |(i, _)| *i);
        // Ongaro's 2015 fix: and only once an entry of its own term
        // is committed (else a configuration appended by a deposed
        // leader, never committed, may combine with this one).
        let commit_term = w
            .logs
            .get(&node)
            .and_then(|log| log.get((commit.0 as usize).checked_sub(1)?))
            .copied();
        if commit_term != Some(term) {
            let message = format!(
                "configuration: leader {node} of term {term} appended a configuration at {} before committing an entry of its term (its commit index {commit} is of term {commit_term:?})",
                entry.index
            );
            w.violate(message);
        }
        if before > commit {
            let message = format!(
                "configuration: leader {node} of term {term} appended a configuration at {} while the one at {before} was not committed (its commit index {commit}): two changes pending",
                entry.index
            );
            w.violate(message);
        }
    }
}

impl WhiteBox {
    /// The configuration node `node` is in: the last of its log.
    pub(super) fn config_of(&self, node: NodeId) -> &Membership {
        self.configs
            .get(&node)
            .and_then(|configs| configs.last_key_value())
            .map_or(&self.initial, |(_, config)| config)
    }

    /// No two disjoint majorities: a configuration differs from the one
    /// before it by one voter at most (single-server changes), so every
    /// majority of one meets every majority of the other.
    pub(super) fn check_one_change(
        &mut self,
        before: &Membership,
        after: &Membership,
        at: impl Fn() -> String,
    ) {
        let old: std::collections::BTreeSet<NodeId> = before.voters().collect();
        let new: std::collections::BTreeSet<NodeId> = after.voters().collect();
        let changed = old.symmetric_difference(&new).count();
        if changed > 1 {
            let message = format!(
                "configuration: {} changes {changed} voters at once ({old:?} -> {new:?}): their majorities may be disjoint",
                at()
            );
            self.violate(message);
        }
    }

    /// After a snapshot at `index` (installed or recovered), a node's
    /// configurations up to it are the committed ones.
    pub(super) fn reset_configs(&mut self, node: NodeId, index: LogIndex) {
        let committed: BTreeMap<LogIndex, Membership> = self
            .committed_configs
            .range(..=index)
            .map(|(i, c)| (*i, c.clone()))
            .collect();
        self.configs.insert(node, committed);
    }

    /// A node applied the configuration entry at `index`: the committed
    /// history gains it, one voter from the previous one at most, and the
    /// node's own history up to it (from its log) is exactly the committed
    /// one (every node's configurations are a prefix of one history).
    pub(super) fn config_applied(&mut self, node: NodeId, index: LogIndex, config: Membership) {
        if !self.committed_configs.contains_key(&index) {
            let before = self
                .committed_configs
                .range(..index)
                .next_back()
                .map_or(&self.initial, |(_, c)| c)
                .clone();
            self.check_one_change(&before, &config, || {
                format!("the committed configuration at {index}")
            });
            for (id, member) in &config.members {
                match before.members.get(id) {
                    None if member.is_learner => self.config_changes[0] += 1,
                    None => self.config_changes[1] += 1,
                    Some(old) if old.is_learner && !member.is_learner => {
                        self.config_changes[2] += 1
                    }
                    Some(_) => {}
                }
            }
            for (id, member) in &before.members {
                if !config.members.contains_key(id) {
                    self.config_changes[if member.is_learner { 4 } else { 3 }] += 1;
                }
            }
            self.committed_configs.insert(index, config);
        }
        let own: Vec<(LogIndex, Vec<NodeId>)> = self
            .configs
            .get(&node)
            .into_iter()
            .flat_map(|c| c.range(..=index))
            .map(|(i, c)| (*i, c.voters().collect()))
            .collect();
        let committed: Vec<(LogIndex, Vec<NodeId>)> = self
            .committed_configs
            .range(..=index)
            .map(|(i, c)| (*i, c.voters().collect()))
            .collect();
        // A node that installed a snapshot holds the committed history
        // below it; a node restarted from a snapshot too.
        if own != committed {
            let message = format!(
                "configuration: node {node} applied the configuration at {index} with the history {own:?} in its log; the committed history is {committed:?}"
            );
            self.violate(message);
        }
    }
}
