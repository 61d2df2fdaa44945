//! The consensus core: a deterministic Raft state machine with no I/O, no
//! async and no clock. The driver (`crate::server`) feeds it inputs and carries
//! out what it asks for.
//!
//! # Files
//! - `node.rs`: [`Raft`], the roles and every input (`tick`, the
//!   `handle_*` methods, `propose`, `read_index`), and [`Ready`], which
//!   says what to persist, what may be sent now and what only once the
//!   write is durable, and what to apply.
//! - `tracker.rs`: what a node tracks of the others (each follower's
//!   progress, the votes granted); `progress.rs`: one follower's progress.
//! - `quorum.rs`: majority questions as plain functions (the commit index,
//!   a confirmed read round, a won election), with table tests.
//! - `read_only.rs`: ReadIndex rounds and the reads waiting on them.
//! - `log.rs`: the in-memory log view; `membership.rs`: configurations and
//!   single-server changes; `message.rs`: every message between peers.
//!
//! # The protocol (Ongaro & Ousterhout, "In Search of an Understandable
//! # Consensus Algorithm", 2014; section numbers refer to it)
//!
//! A cluster of voters agrees on one ordered log of commands. Time is cut into
//! *terms*; each term has at most one leader (5.2, "election safety"). A
//! follower that hears nothing from a leader for a randomized number of ticks
//! becomes a candidate: it increments its term, votes for itself and asks every
//! peer for a vote with `RequestVote`. A peer grants at most one vote per term,
//! and only to a candidate whose log is at least as up to date as its own (5.4.1:
//! a higher last term wins, equal last terms compare last indexes). A candidate
//! with votes from a majority becomes leader and appends a no-op entry of its
//! term, so that it can commit (below) and serve reads.
//!
//! The leader replicates with `AppendEntries`, which names the entry just before
//! the new ones (`prev_log_index`, `prev_log_term`). A follower accepts only if
//! it holds that entry (5.3, "log matching"): then every earlier entry matches
//! too. It truncates its log only where an entry really conflicts (same index,
//! other term) and never below its commit index. On a rejection it answers with
//! a hint (the conflicting term and its first index) so the leader skips back a
//! whole term at once instead of one entry per round trip.
//!
//! An entry is *committed* once the leader has stored it on a majority, but the
//! leader counts replicas only for entries of its own term (5.4.2, figure 8): an
//! old-term entry on a majority can still be overwritten, so it is committed
//! only indirectly, by a later entry of the current term. Committed entries are
//! applied in order, identically on every node ("state machine safety").
//!
//! Reads use ReadIndex (thesis 6.4): the leader notes its commit index, proves
//! it is still leader by a round of heartbeats acknowledged by a majority, and
//! the read is served once that index is applied. Reads that arrive together
//! share one round. A leader answers reads only after committing an entry of its
//! own term, so its commit index is the cluster's.
//!
//! Any message with a higher term makes a node a follower of that term. Term
//! and vote are persisted before any message that depends on them leaves the
//! node; log entries are persisted before they are acknowledged. The core states
//! these duties on [`Ready`]; the driver honours them.
//!
//! `tests/model.rs` model-checks this module as it is (stateright, every
//! interleaving up to a bound): keep it deterministic and free of I/O.
//!
//! # Snapshots and compaction (thesis chapter 5)
//!
//! The driver snapshots the state machine now and then and reports it with
//! [`Raft::snapshot_saved`]; [`Raft::compact`] then drops the log up to a
//! point at or below it (never below what a snapshot being sent still needs:
//! the follower installing it must find the entries after it). A follower
//! whose next entry was compacted away gets `InstallSnapshot`: the core says
//! when, the driver streams the newest snapshot file, and the follower's core
//! decides in [`Raft::handle_install_snapshot`] whether to install it (never
//! one at or below its commit index). While a snapshot is out to a follower its
//! progress is paused; a failure goes back to probing.
//!
//! # Liveness under partial partitions (thesis 9.6, 6.2, 3.10)
//!
//! With `pre_vote`, a node whose election timer fires first becomes a
//! *pre-candidate*: it asks for pre-votes for the next term without raising
//! its own, and campaigns only with a majority of them. A receiver changes
//! nothing for a pre-vote; it grants one only to a log at least as up to
//! date as its own, for a term above its own. A node cut off and healed
//! therefore comes back at the term it left, and deposes nobody.
//!
//! With `check_quorum`, a leader that has not heard from a majority within
//! an election timeout steps down (its clients go elsewhere), and every node
//! keeps a *vote lease*: having heard from a live leader within the minimum
//! election timeout, it ignores (pre-)votes. The known deadlocks of the
//! pair, each a rule test in `tests/liveness.rs`:
//! - a pre-candidate forgets its leader, or two followers of a dead leader
//!   refuse each other's pre-votes forever (etcd PR #8334);
//! - a pre-vote rejection carries the receiver's term, so a longer log on a
//!   lower term learns the higher one (etcd #8501, openraft #1796);
//! - a lower-term AppendEntries is answered at the current term, so a
//!   leader learns of a node that raised its term while cut off and cannot
//!   rejoin otherwise (etcd #8243);
//! - a leader reaching only one follower steps down by CheckQuorum rather
//!   than renewing that follower's lease forever (openraft #2080; the lease
//!   of CockroachDB #107060: followers hearing a leader that cannot serve
//!   must not refuse to elect another).
//!
//! Leadership transfer: the leader stops taking proposals, brings the
//! target up to date, and sends it `TimeoutNow`; the target campaigns at
//! once, its requests marked as a transfer so the lease does not refuse
//! them. The transfer aborts after an election timeout.
//!
//! # Membership changes (thesis chapter 4; `membership.rs`)
//!
//! Single-server changes, not joint consensus: each change adds or removes
//! one member (or promotes one learner), so any majority of the old voters
//! and any majority of the new ones overlap, and no two leaders can be
//! elected by disjoint majorities. Chosen because it is the smaller
//! mechanism (no joint state to enter and leave, one configuration in force
//! at a time), it covers what operators do (replace a machine: add one,
//! remove one), and its one known flaw has a known fix (below). Joint
//! consensus (etcd's ConfChangeV2) buys arbitrary changes in one step,
//! which Lattice does not need.
//!
//! - **In force once in the log**, committed or not (thesis 4.1): every
//!   node uses the newest configuration entry its log holds; one truncated
//!   away takes its configuration with it. A leader counts only the voters
//!   of that configuration, itself only while it is one of them.
//! - **One change at a time**: a change is refused while the last one is
//!   not committed.
//! - **The 2015 fix** (Ongaro, raft-dev, "bug in single-server membership
//!   changes"): a leader appends a change only once it has committed an
//!   entry of its own term. Otherwise a new leader's change and an old
//!   leader's uncommitted one, each one server away from the configuration
//!   before, can be two servers apart, and their majorities need not meet.
//! - **Learners** receive the log and snapshots but do not vote, do not
//!   campaign and do not count toward commit or a read's round. A learner
//!   is promoted only once it holds 90% of the leader's log (etcd's rule),
//!   so a promotion does not stall commits while it catches up.
//! - **A configuration entry holds the whole configuration** (members,
//!   their addresses, the removed ids), and a snapshot carries the one in
//!   force at its index: a restart uses the newest of the snapshot's and
//!   the log's. Removed ids are never reused.
//! - **A removed leader** leads until its removal commits (it does not
//!   count itself meanwhile), then tells the others the commit index, hands
//!   leadership to a voter whose log matches its own (`TimeoutNow`), and
//!   steps down. A removed node stops itself once it applies its removal
//!   (the driver). A node not in its configuration never campaigns.
//! - **A removed node that missed its removal** (down or cut off when it
//!   committed): the leader replicates to it, so that it learns, for ten
//!   election timeouts at most; after that it learns from the first member
//!   it talks to, which refuses it (the transport), and stops.

mod log;
mod membership;
mod message;
mod node;
mod progress;
mod quorum;
mod read_only;
mod tracker;

pub use log::RaftLog;
pub use membership::{ConfChange, ConfChangeRejected, Member, Membership, CONFIG_ENTRY_MARKER};
pub use message::{
    AppendEntries, AppendEntriesResponse, Entry, InstallSnapshot, Message, RequestVote,
    RequestVoteResponse, TimeoutNow,
};
pub use node::{Config, NotLeader, Raft, ReadRejected, ReadState, Ready, Role, TransferRejected};

use std::fmt;

/// A node's identity in the cluster. `0` is never a valid id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub u64);

/// A Raft term: a logical clock that only grows. `Term(0)` precedes every election.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Term(pub u64);

/// A position in the log. The first entry has index 1; `LogIndex(0)` means "none".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LogIndex(pub u64);

impl LogIndex {
    pub fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }
    /// The index before this one (saturating at 0).
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl fmt::Display for LogIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The state that must survive a crash before any message depending on it is
/// sent: the current term and whom this node voted for in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct HardState {
    pub term: Term,
    pub vote: Option<NodeId>,
}

/// Where a snapshot of the state machine ends: the last log entry it
/// contains. `SnapshotMeta::default()` (index 0) is "no snapshot".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SnapshotMeta {
    pub index: LogIndex,
    pub term: Term,
}

#[cfg(test)]
mod tests;
