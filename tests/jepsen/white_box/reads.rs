//! Reads: the read oracle (a successful read reflects every index committed
//! anywhere when it was invoked), and read confirmation (a read a leader
//! serves was confirmed by answers that left a quorum of its voters after
//! the read arrived: an answer sent before it, however late it arrives,
//! proves nothing about leading when the read came).

use lattice::raft::{LogIndex, NodeId, Term};

use super::{WhiteBox, WhiteBoxObserver};
use crate::sim::now;

impl WhiteBoxObserver {
    /// The read oracle: a read invoked when `commit_at_invoke` was committed
    /// somewhere must reflect at least that index.
    pub fn check_read(&self, client: u64, key: &str, commit_at_invoke: LogIndex, applied: u64) {
        let mut w = self.0.lock().expect("white box");
        w.reads_checked += 1;
        if applied < commit_at_invoke.0 {
            let message = format!(
                "stale read: client {client} read {key} at applied index {applied}, but index {commit_at_invoke} was committed when the read was invoked"
            );
            w.violate(message);
        }
    }
}

pub(super) fn answered_leader(w: &mut WhiteBox, node: NodeId, term: Term) {
    w.last_answer.insert((node, term), now());
}

pub(super) fn read_started(w: &mut WhiteBox, node: NodeId, term: Term, context: u64) {
    let config = w.config_of(node).clone();
    w.reads_started
        .insert((node, term, context), (now(), config));
}

/// Counts the voters whose last answer to this term's leader left them
/// after the read arrived (the leader itself always counts): a quorum of
/// the configuration it had when the read arrived, or of the one it has
/// now (a change between the two is its own business), must be there.
pub(super) fn read_served(w: &mut WhiteBox, node: NodeId, term: Term, context: u64) {
    let Some((arrived, then)) = w.reads_started.remove(&(node, term, context)) else {
        return;
    };
    w.reads_confirmation_checked += 1;
    let now_config = w.config_of(node).clone();
    let confirmed_by = |config: &lattice::raft::Membership| {
        config
            .voters()
            .filter(|&voter| {
                voter == node
                    || w.last_answer
                        .get(&(voter, term))
                        .is_some_and(|&at| at > arrived)
            })
            .collect::<Vec<NodeId>>()
    };
    let (by_then, by_now) = (confirmed_by(&then), confirmed_by(&now_config));
    if by_then.len() < then.quorum() && by_now.len() < now_config.quorum() {
        let message = format!(
            "read confirmation: leader {node} of term {term} served a read that arrived at {:.3}s, but only {by_now:?} of its voters {:?} answered it after that",
            arrived.as_secs_f64(),
            now_config.voters().collect::<Vec<_>>()
        );
        w.violate(message);
    }
}
