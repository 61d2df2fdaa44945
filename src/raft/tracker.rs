//! What a node tracks of the others: as a leader, each follower's
//! replication [`Progress`] (match index, read rounds acknowledged); as a
//! (pre-)candidate, the votes granted. Quorum questions over them go to
//! [`super::quorum`]; which nodes count (voters, the node itself) is the
//! caller's, since it knows the configuration.

use std::collections::{BTreeMap, BTreeSet};

use super::progress::Progress;
use super::quorum::{is_quorum, quorum_value};
use super::{LogIndex, NodeId};

#[derive(Clone, Debug, Default)]
pub(super) struct Tracker {
    /// Leader: each follower's replication state.
    pub(super) progress: BTreeMap<NodeId, Progress>,
    /// (Pre-)candidate: who granted its vote this term (itself included).
    pub(super) votes: BTreeSet<NodeId>,
}

impl Tracker {
    /// The highest index a quorum stores: the match index of each of
    /// `counted` (0 for one without progress), and `own` (the node's own
    /// durable index, if it counts).
    pub(super) fn committed_index(
        &self,
        counted: impl Iterator<Item = NodeId>,
        own: Option<LogIndex>,
        quorum: usize,
    ) -> Option<LogIndex> {
        let matched: Vec<LogIndex> = counted
            .map(|peer| {
                self.progress
                    .get(&peer)
                    .map_or(LogIndex(0), |p| p.match_index)
            })
            .chain(own)
            .collect();
        quorum_value(matched, quorum)
    }

    /// The newest read round a quorum acknowledged: each of `voters`'
    /// acknowledged round, and the node itself (always current) if it votes.
    pub(super) fn read_round_confirmed(
        &self,
        voters: impl Iterator<Item = NodeId>,
        is_self_counted: bool,
        quorum: usize,
    ) -> Option<u64> {
        let acked: Vec<u64> = voters
            .map(|peer| self.progress.get(&peer).map_or(0, |p| p.read_round_acked))
            .chain(is_self_counted.then_some(u64::MAX))
            .collect();
        quorum_value(acked, quorum)
    }

    /// Whether the votes granted are a quorum.
    pub(super) fn is_vote_won(&self, quorum: usize) -> bool {
        is_quorum(self.votes.len(), quorum)
    }
}
