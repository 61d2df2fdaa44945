//! The log and what is applied from it: the same entry applied at each
//! index everywhere (state machine safety), the same session table there
//! (so no snapshot loses or changes one, and no write applies twice), leader completeness as a state
//! invariant, a node keeps what it acknowledged for the term (durability),
//! and a leader commits only entries of its own term (figure 8).

use lattice::raft::{Entry, LogIndex, NodeId, SnapshotMeta, Term};

use super::{crc, WhiteBox};

pub(super) fn applied(w: &mut WhiteBox, node: NodeId, entry: &Entry) {
    w.applies += 1;
    w.state_at.insert(node, entry.index);
    if let Some(Ok(config)) = entry.membership() {
        w.config_applied(node, entry.index, config);
    }
    let seen = (entry.term, crc(&entry.data));
    match w.applied.get(&entry.index) {
        Some(&first) if first != seen => {
            let message = format!(
                "state machine safety: node {node} applied (term {}, crc {:08x}) at index {} where (term {}, crc {:08x}) was applied before",
                entry.term, seen.1, entry.index, first.0, first.1
            );
            w.violate(message);
        }
        Some(_) => {}
        None => {
            w.applied.insert(entry.index, seen);
            w.check_leader_completeness();
        }
    }
}

pub(super) fn log_recovered(
    w: &mut WhiteBox,
    node: NodeId,
    snapshot: SnapshotMeta,
    entries: &[Entry],
) {
    let committed = w.committed_terms(snapshot.index);
    w.logs.insert(node, committed);
    w.reset_configs(node, snapshot.index);
    w.state_at.insert(node, snapshot.index);
    w.write_log(node, entries);
    w.check_leader_completeness();
}

pub(super) fn log_written(w: &mut WhiteBox, node: NodeId, entries: &[Entry]) {
    w.write_log(node, entries);
    w.check_leader_completeness();
}

pub(super) fn acknowledged(w: &mut WhiteBox, node: NodeId, term: Term, match_index: LogIndex) {
    let entry = w.acknowledged.entry(node).or_insert((term, match_index));
    if term > entry.0 {
        *entry = (term, match_index);
    } else if term == entry.0 {
        entry.1 = entry.1.max(match_index);
    }
}

/// What a node acknowledged to its term's leader it keeps for as long as
/// that term lasts (only a newer leader may make it cut entries), crash
/// and restart included: the leader counted on it to commit.
pub(super) fn log_changed(w: &mut WhiteBox, node: NodeId, term: Term, last_index: LogIndex) {
    let Some(&(acked_term, acked_index)) = w.acknowledged.get(&node) else {
        return;
    };
    if term == acked_term && last_index < acked_index {
        let message = format!(
            "durability: node {node} acknowledged index {acked_index} in term {term}, but its log now ends at {last_index} in that term"
        );
        w.violate(message);
    }
}

/// The commit rule as a leader commits (Raft 5.4.2, figure 8): it
/// counts replicas only for an entry of its own term, and older ones
/// commit with it. An index a leader commits is of its term. Checked
/// when the node led the same term before and after the move (a
/// follower's commit and its election in one step of the driver are
/// not told apart, and skipped).
pub(super) fn committed(w: &mut WhiteBox, node: NodeId, index: LogIndex, led: Option<Term>) {
    w.commit_max = w.commit_max.max(index);
    if let Some(term) = led {
        let entry_term = w
            .logs
            .get(&node)
            .and_then(|log| log.get((index.0 as usize).checked_sub(1)?))
            .copied()
            .filter(|&t| t != Term(0));
        if let Some(entry_term) = entry_term.filter(|&t| t != term) {
            let message = format!(
                "commit rule: leader {node} of term {term} committed index {index}, an entry of term {entry_term} (a leader counts replicas only for entries of its own term)"
            );
            w.violate(message);
        }
    }
}

impl WhiteBox {
    /// Leader completeness, as a state invariant: no node that lacks the
    /// newest committed entry could win an election, that is, fewer than a
    /// quorum of the voters of its own configuration (itself included)
    /// have logs no more up to date than its own. True in every state of
    /// correct Raft (the committed entry is on a majority of a configuration
    /// in force, each of which refuses such a candidate, and single-server
    /// changes keep the majorities of consecutive configurations
    /// overlapping), so a bad commit is caught when it happens, not only
    /// once a leader loses it. Learners, removed and joining nodes do not
    /// campaign.
    pub(super) fn check_leader_completeness(&mut self) {
        let Some((&index, &(term, _))) = self.applied.last_key_value() else {
            return;
        };
        let position = (index.0 - 1) as usize;
        let last = |log: &Vec<Term>| (log.last().copied().unwrap_or_default(), log.len());
        let mut found = None;
        for (node, log) in &self.logs {
            if log.get(position) == Some(&term) {
                continue;
            }
            let config = self.config_of(*node);
            if !config.is_voter(*node) {
                continue;
            }
            let empty = Vec::new();
            let voters: Vec<NodeId> = config
                .voters()
                .filter(|voter| last(self.logs.get(voter).unwrap_or(&empty)) <= last(log))
                .collect();
            if voters.len() >= config.quorum() {
                found = Some(format!(
                    "leader completeness: node {node} lacks committed entry {index} (term {term}), yet nodes {voters:?} of its configuration would vote for it"
                ));
                break;
            }
        }
        if let Some(message) = found {
            self.violate(message);
        }
    }

    /// The committed terms of indexes 1..=index (what a snapshot there holds).
    pub(super) fn committed_terms(&self, index: LogIndex) -> Vec<Term> {
        (1..=index.0)
            .map(|i| {
                self.applied
                    .get(&LogIndex(i))
                    .map_or(Term(0), |&(term, _)| term)
            })
            .collect()
    }

    pub(super) fn write_log(&mut self, node: NodeId, entries: &[Entry]) {
        let log = self.logs.entry(node).or_default();
        let Some(first) = entries.first() else {
            return;
        };
        log.truncate((first.index.0 - 1) as usize);
        log.extend(entries.iter().map(|e| e.term));
        let mut configs = self.configs.remove(&node).unwrap_or_default();
        configs.split_off(&first.index);
        for entry in entries {
            match entry.membership() {
                Some(Ok(config)) => {
                    let before = configs
                        .last_key_value()
                        .map_or(&self.initial, |(_, c)| c)
                        .clone();
                    self.check_one_change(&before, &config, || {
                        format!("node {node}'s log at {}", entry.index)
                    });
                    configs.insert(entry.index, config);
                }
                Some(Err(e)) => self.violate(format!(
                    "configuration: node {node} wrote an undecodable configuration entry at {}: {e}",
                    entry.index
                )),
                None => {}
            }
        }
        self.configs.insert(node, configs);
    }
}

/// Every node at `index` has the session table the first one there had: a
/// snapshot that lost it, or a write applied twice, shows at once.
pub(super) fn sessions_at(w: &mut WhiteBox, node: NodeId, index: LogIndex, digest: u64) {
    match w.sessions_at.get(&index) {
        Some(&(first, by)) if first != digest => {
            let message = format!(
                "sessions: node {node}'s session table at index {index} (digest {digest:016x}) differs from node {by}'s there ({first:016x})"
            );
            w.violate(message);
        }
        Some(_) => {}
        None => {
            w.sessions_at.insert(index, (digest, node));
        }
    }
}
