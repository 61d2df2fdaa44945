//! Every message between peers. Requests (`RequestVote`, `AppendEntries`) are
//! answered by exactly one response of the paired type; the transport carries
//! each pair as one unary RPC. `TimeoutNow` has no answer.

use super::membership::Membership;
use super::{LogIndex, NodeId, Term};

/// One log entry. An empty `data` is the no-op a leader appends when elected.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub term: Term,
    pub index: LogIndex,
    pub data: Vec<u8>,
}

impl Entry {
    /// For a configuration entry, the configuration it puts in force (or
    /// why it does not decode); `None` for a command or a no-op.
    pub fn membership(&self) -> Option<Result<Membership, String>> {
        Membership::is_config_entry(&self.data).then(|| Membership::decode(&self.data))
    }
}

/// Candidate -> peer: "vote for me in `term`" (Raft 5.2), or, as a
/// pre-vote (thesis 9.6), "would you vote for me in `term`?".
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestVote {
    /// The candidate's term (a pre-candidate's: the term it would campaign
    /// in, its own plus one).
    pub term: Term,
    pub candidate: NodeId,
    /// Index and term of the candidate's last entry: the up-to-date check (5.4.1).
    pub last_log_index: LogIndex,
    pub last_log_term: Term,
    /// A pre-vote: the receiver changes nothing, it only says how it would vote.
    pub pre_vote: bool,
    /// The election of a leadership transfer (the old leader sent
    /// `TimeoutNow`): granted despite the vote lease.
    pub transfer: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestVoteResponse {
    /// The voter's current term, so a stale candidate steps down; for a
    /// granted pre-vote, the request's term (the voter's is not raised).
    pub term: Term,
    pub vote_granted: bool,
    /// Answers a pre-vote (never counted as a vote).
    pub pre_vote: bool,
}

/// Leader -> the follower it hands leadership to, once that follower's log
/// matches its own: "campaign now" (thesis 3.10). The follower starts an
/// election at once, skipping the pre-vote and the others' vote lease.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TimeoutNow {
    pub term: Term,
    pub leader: NodeId,
    /// The leader's last entry when it sent this: the target campaigns only
    /// if its own log ends there (a late one, after the transfer was
    /// aborted and the leader appended more, is ignored).
    pub last_log_index: LogIndex,
    pub last_log_term: Term,
}

/// Leader -> follower: entries to append after (`prev_log_index`,
/// `prev_log_term`), or none as a heartbeat (Raft 5.3).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AppendEntries {
    pub term: Term,
    pub leader: NodeId,
    pub prev_log_index: LogIndex,
    pub prev_log_term: Term,
    pub entries: Vec<Entry>,
    pub leader_commit: LogIndex,
    /// The leader's ReadIndex round when this was sent; echoed in the response.
    pub read_round: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AppendEntriesResponse {
    /// The follower's current term.
    pub term: Term,
    pub success: bool,
    /// On success: the last index known to match the leader's log.
    pub match_index: LogIndex,
    /// On rejection: the follower's term at `prev_log_index` (`Term(0)` if its
    /// log is shorter) and the first index it holds of that term (or its last
    /// index + 1 if shorter). Lets the leader skip a whole term per round trip.
    pub conflict_term: Term,
    pub conflict_index: LogIndex,
    /// Echo of the request's `read_round`.
    pub read_round: u64,
    /// On rejection: the request's `prev_log_index`, so the leader can tell a
    /// stale rejection (of an old, reordered message) from a current one.
    pub rejected_index: LogIndex,
}

/// Leader -> follower: "your next entry is compacted away here: install my
/// newest snapshot". The driver streams the snapshot itself (its index and
/// term travel in the file's header); the follower answers with an
/// `AppendEntriesResponse` whose `match_index` is the snapshot's index (or its
/// own commit index, if that is already past it).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct InstallSnapshot {
    pub term: Term,
    pub leader: NodeId,
    /// The leader's ReadIndex round when this was sent; echoed in the response.
    pub read_round: u64,
}

/// A request the core wants sent to a peer; the driver delivers it and feeds the
/// response (or the failure) back.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Message {
    RequestVote(RequestVote),
    AppendEntries(AppendEntries),
    InstallSnapshot(InstallSnapshot),
    /// Fire and forget: it has no answer.
    TimeoutNow(TimeoutNow),
}

impl Message {
    pub fn term(&self) -> Term {
        match self {
            Message::RequestVote(m) => m.term,
            Message::AppendEntries(m) => m.term,
            Message::InstallSnapshot(m) => m.term,
            Message::TimeoutNow(m) => m.term,
        }
    }

    /// The same message with every node id passed through `rename` (the
    /// model checker compares states up to a permutation of node ids).
    pub fn renamed(&self, rename: &dyn Fn(NodeId) -> NodeId) -> Message {
        match self {
            Message::RequestVote(m) => Message::RequestVote(RequestVote {
                candidate: rename(m.candidate),
                ..m.clone()
            }),
            Message::AppendEntries(m) => Message::AppendEntries(AppendEntries {
                leader: rename(m.leader),
                ..m.clone()
            }),
            Message::InstallSnapshot(m) => Message::InstallSnapshot(InstallSnapshot {
                leader: rename(m.leader),
                ..m.clone()
            }),
            Message::TimeoutNow(m) => Message::TimeoutNow(TimeoutNow {
                leader: rename(m.leader),
                ..m.clone()
            }),
        }
    }
}
