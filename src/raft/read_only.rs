//! Linearizable reads without a log entry (ReadIndex, thesis 6.4): a leader
//! notes its commit index as the read's index, then confirms it still leads
//! with a heartbeat round a quorum acknowledges; the read is served once
//! the state machine applied that index. Rounds are numbered: every
//! AppendEntries carries the current one, a follower echoes it, and a read
//! is confirmed by the round after the one in flight when it arrived, so
//! only acknowledgements sent after the read arrived confirm it.

use std::collections::VecDeque;

use super::node::ReadState;
use super::LogIndex;

/// A read waiting for its round.
#[derive(Clone, Debug, Hash)]
struct PendingRead {
    context: u64,
    index: LogIndex,
    /// The heartbeat round whose majority acknowledgement confirms this read.
    round: u64,
}

/// A leader's read rounds and the reads waiting on them.
#[derive(Clone, Debug, Default, Hash)]
pub(super) struct ReadOnly {
    /// The current round, carried by every AppendEntries.
    round: u64,
    /// Reads wait for a round not started yet.
    is_round_wanted: bool,
    /// In arrival order, so in round order.
    pending: VecDeque<PendingRead>,
}

impl ReadOnly {
    pub(super) fn round(&self) -> u64 {
        self.round
    }

    /// A read at `index`, confirmed by the next round.
    pub(super) fn add(&mut self, context: u64, index: LogIndex) {
        self.pending.push_back(PendingRead {
            context,
            index,
            round: self.round + 1,
        });
        self.is_round_wanted = true;
    }

    /// Reads wait for a round, and none is in flight. One round at a time:
    /// the reads that arrive while a round is out all share the next one, so
    /// a heavy read load costs one heartbeat per peer per round trip, not one
    /// per driver batch. A lost round is retried by the periodic heartbeat,
    /// which carries the current round.
    pub(super) fn is_round_startable(&self) -> bool {
        let is_in_flight = self
            .pending
            .front()
            .is_some_and(|read| read.round <= self.round);
        self.is_round_wanted && !is_in_flight
    }

    /// A new round begins (its heartbeats go out with this `Ready`).
    pub(super) fn start_round(&mut self) {
        self.round += 1;
    }

    /// No round is wanted any more: one started, or the node does not lead.
    pub(super) fn clear_wanted(&mut self) {
        self.is_round_wanted = false;
    }

    /// Moves every read whose round is at or below `confirmed` to `out`.
    pub(super) fn release(&mut self, confirmed: u64, out: &mut Vec<ReadState>) {
        while let Some(read) = self.pending.front() {
            if read.round > confirmed {
                break;
            }
            let read = self.pending.pop_front().expect("front exists");
            crate::probe!(ReadConfirmedByRound);
            out.push(ReadState {
                context: read.context,
                index: read.index,
            });
        }
    }

    /// The round the oldest waiting read needs (a coverage marker's
    /// condition: an answer of an older round cannot confirm it).
    #[cfg_attr(not(feature = "probes"), allow(dead_code))]
    pub(super) fn oldest_waiting_round(&self) -> Option<u64> {
        self.pending.front().map(|read| read.round)
    }

    pub(super) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The node stops leading: no round is wanted, and every waiting read's
    /// context goes to `dropped`.
    pub(super) fn drop_all(&mut self, dropped: &mut Vec<u64>) {
        crate::probe!(ReadsDroppedOnStepDown, if !self.pending.is_empty());
        self.is_round_wanted = false;
        dropped.extend(self.pending.drain(..).map(|r| r.context));
    }
}
