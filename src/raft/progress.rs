//! The leader's view of one follower: how far its log is known to match, what
//! to send next, and how many AppendEntries are in flight.

use std::collections::VecDeque;

use super::LogIndex;

/// How the leader currently talks to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProgressState {
    /// The match point is unknown: one AppendEntries at a time until one succeeds.
    Probe,
    /// The follower is keeping up: pipeline entries, up to the in-flight limit.
    Replicate,
    /// The follower's next entry was compacted away: a snapshot ending at
    /// `index` is being sent. Nothing else is sent (heartbeats aside) until
    /// it is acknowledged or fails.
    Snapshot { index: LogIndex },
}

#[derive(Clone, Debug, Hash)]
pub struct Progress {
    /// Highest index known to be stored on the follower and to match ours.
    pub match_index: LogIndex,
    /// The next index to send.
    pub next_index: LogIndex,
    pub state: ProgressState,
    /// Probe: a message is out and unanswered; wait for its answer or a heartbeat.
    pub is_probe_sent: bool,
    /// Replicate: the last index of each AppendEntries in flight, oldest first.
    inflight_last_index: VecDeque<LogIndex>,
    inflight_max: usize,
    /// Highest ReadIndex round this follower acknowledged in our term.
    pub read_round_acked: u64,
    /// It answered since the last CheckQuorum (any answer in our term).
    pub recent_active: bool,
    /// It answered in the window before (a transfer goes only to a peer
    /// heard from lately).
    pub was_active: bool,
}

impl Progress {
    pub fn new(next_index: LogIndex, inflight_max: usize) -> Self {
        assert!(
            inflight_max >= 1,
            "at least one AppendEntries must be allowed in flight"
        );
        Progress {
            match_index: LogIndex(0),
            next_index,
            state: ProgressState::Probe,
            is_probe_sent: false,
            inflight_last_index: VecDeque::new(),
            inflight_max,
            read_round_acked: 0,
            recent_active: false,
            was_active: false,
        }
    }

    /// Whether nothing more may be sent now (entries; heartbeats always go).
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.is_probe_sent,
            ProgressState::Replicate => self.inflight_last_index.len() >= self.inflight_max,
            ProgressState::Snapshot { .. } => true,
        }
    }

    /// Records that an AppendEntries whose last entry is `last_index` was sent.
    pub fn sent(&mut self, last_index: LogIndex) {
        match self.state {
            ProgressState::Probe => self.is_probe_sent = true,
            ProgressState::Replicate => {
                assert!(
                    self.inflight_last_index.len() < self.inflight_max,
                    "in-flight limit: sent while paused"
                );
                self.next_index = last_index.next();
                self.inflight_last_index.push_back(last_index);
            }
            ProgressState::Snapshot { .. } => {
                unreachable!("nothing is sent while a snapshot is out")
            }
        }
    }

    /// A success acknowledging `match_index`. Returns whether it moved forward.
    pub fn acknowledge(&mut self, match_index: LogIndex) -> bool {
        while self
            .inflight_last_index
            .front()
            .is_some_and(|&last| last <= match_index)
        {
            self.inflight_last_index.pop_front();
        }
        if match_index < self.match_index {
            return false; // stale
        }
        let is_forward = match_index > self.match_index;
        self.match_index = match_index;
        if self.next_index <= match_index {
            self.next_index = match_index.next();
        }
        if self.state != ProgressState::Replicate {
            // The match point is found (even if it did not move), or the
            // snapshot arrived: replicate.
            self.state = ProgressState::Replicate;
            self.is_probe_sent = false;
            self.next_index = match_index.next();
        }
        is_forward
    }

    /// A success while a snapshot is out: the match point may move, but the
    /// follower stays paused for its snapshot.
    pub fn acknowledge_match(&mut self, match_index: LogIndex) {
        self.match_index = self.match_index.max(match_index);
    }

    /// The follower no longer holds what it acknowledged: start over.
    pub fn forget_match(&mut self) {
        self.match_index = LogIndex(0);
    }

    /// A rejection or a lost message: fall back to probing from `next_index`,
    /// never below what is known to match.
    pub fn probe_from(&mut self, next_index: LogIndex) {
        self.state = ProgressState::Probe;
        self.is_probe_sent = false;
        self.inflight_last_index.clear();
        self.next_index = next_index.max(self.match_index.next());
    }

    /// A snapshot ending at `index` is on its way to the follower.
    pub fn snapshot_sent(&mut self, index: LogIndex) {
        self.state = ProgressState::Snapshot { index };
        self.is_probe_sent = false;
        self.inflight_last_index.clear();
    }

    /// The snapshot being sent, if any.
    pub fn snapshot_pending(&self) -> Option<LogIndex> {
        match self.state {
            ProgressState::Snapshot { index } => Some(index),
            _ => None,
        }
    }

    /// A heartbeat interval passed: a probe that went unanswered may be retried.
    pub fn heartbeat(&mut self) {
        self.is_probe_sent = false;
    }
}
