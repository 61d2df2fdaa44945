//! The driver's vocabulary: what its inbox takes (`Input`), what it
//! publishes about itself ([`Status`]), the answers it gives, and the
//! request helpers that send an input and wait for its answer. The
//! transport (services and peer senders), the metrics and the driver
//! (`server`) all import it; it imports none of them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::kv::{Command, Outcome};
use crate::raft::{
    self, AppendEntries, AppendEntriesResponse, InstallSnapshot, LogIndex, NodeId, RequestVote,
    RequestVoteResponse, Role, SnapshotMeta, Term, TimeoutNow,
};
use crate::storage::SnapshotFile;
use crate::{Error, Result};

/// Inputs the driver handles; the services and peer senders produce them.
pub(crate) enum Input {
    RequestVote {
        request: RequestVote,
        reply: oneshot::Sender<RequestVoteResponse>,
    },
    AppendEntries {
        request: AppendEntries,
        reply: oneshot::Sender<AppendEntriesResponse>,
    },
    /// Our leader hands us leadership.
    TimeoutNow { request: TimeoutNow },
    /// An operator (or a graceful shutdown) asks this leader to hand
    /// leadership to `target` (`None`: the most up-to-date follower).
    TransferLeadership {
        target: Option<NodeId>,
        reply: oneshot::Sender<Result<NodeId>>,
    },
    /// Answers once no accepted proposal waits to be applied here.
    Drain { reply: oneshot::Sender<()> },
    /// An operator's membership change (leader only); answered once it
    /// is applied here.
    ConfChange {
        change: raft::ConfChange,
        reply: oneshot::Sender<Result<Members>>,
    },
    /// The configuration in force (leader only).
    Members {
        reply: oneshot::Sender<Result<Members>>,
    },
    /// A whole snapshot received from the leader, verified.
    InstallSnapshot {
        request: InstallSnapshot,
        file: Arc<SnapshotFile>,
        reply: oneshot::Sender<AppendEntriesResponse>,
    },
    /// The snapshot task finished (or failed) writing a snapshot; the
    /// state's digest there if an observer wants it.
    SnapshotSaved {
        meta: SnapshotMeta,
        digest: Option<u32>,
        /// The file's size in bytes.
        result: Result<u64>,
    },
    RequestVoteResponse {
        from: NodeId,
        response: RequestVoteResponse,
    },
    AppendEntriesResponse {
        from: NodeId,
        response: AppendEntriesResponse,
    },
    /// A message to `peer` was dropped or its RPC failed.
    Unreachable { peer: NodeId },
    /// Sending the snapshot to `peer` failed (or was not started).
    SnapshotFailed { peer: NodeId },
    /// `peer` refused a message because it applied this node's removal.
    RemovedByPeer { peer: NodeId },
    Propose {
        command: Command,
        reply: oneshot::Sender<Result<Outcome>>,
    },
    Read {
        key: Vec<u8>,
        reply: oneshot::Sender<Result<ReadValue>>,
    },
    /// Asks for a digest of the applied state (for checks and the example).
    Inspect {
        reply: oneshot::Sender<StateSummary>,
    },
    /// An input the message-chaos seam (`server::hooks`, simulation only)
    /// held back, arriving now.
    Delayed(Box<Input>),
}

/// A linearizable read's answer: the value, and the applied index of the
/// state it was read from (at least the read's ReadIndex).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ReadValue {
    pub value: Option<Vec<u8>>,
    pub applied_index: LogIndex,
}

/// Another node of the cluster.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    pub id: NodeId,
    /// Where its Raft service listens.
    pub raft_addr: String,
    /// Where its KV service listens (handed to clients as the leader hint).
    pub kv_addr: String,
}

/// What a node reports about itself, updated as it changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub term: Term,
    pub leader: Option<NodeId>,
    pub commit_index: LogIndex,
    pub applied_index: LogIndex,
    pub last_index: LogIndex,
    /// Where the newest durable snapshot ends (0: none).
    pub snapshot_index: LogIndex,
    /// Where the log in memory starts after.
    pub compacted_index: LogIndex,
    /// Snapshots taken here, and installed from a leader, since start.
    pub snapshots_taken: u64,
    pub snapshots_installed: u64,
    /// Set when the node stopped on a fatal error (a storage failure).
    pub failure: Option<String>,
    /// Whether this node is a voter, a learner, or not (yet) a member of
    /// the configuration in force.
    pub membership: MemberRole,
    /// Set when the node stopped because it was removed from the cluster.
    pub is_removed: bool,
}

/// A node's place in the configuration in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberRole {
    Voter,
    Learner,
    /// Joining (it knows no configuration with itself yet) or removed.
    None,
}

impl MemberRole {
    pub(crate) fn of(membership: &raft::Membership, id: NodeId) -> MemberRole {
        if membership.is_voter(id) {
            MemberRole::Voter
        } else if membership.is_learner(id) {
            MemberRole::Learner
        } else {
            MemberRole::None
        }
    }
}

/// A summary of the applied state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateSummary {
    pub applied_index: LogIndex,
    pub keys: usize,
    /// Equal on nodes that applied the same commands.
    pub digest: u32,
}

/// The cluster's configuration as its leader sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Members {
    pub leader: NodeId,
    /// The index of the configuration entry (0: the bootstrap configuration).
    pub index: LogIndex,
    /// Whether that entry is committed (a change answers only once it is).
    pub is_committed: bool,
    pub membership: raft::Membership,
}

/// Asks the driver behind `inbox` to make a membership change and waits
/// (up to `timeout`) until it is applied.
pub(crate) async fn change_membership(
    inbox: &mpsc::Sender<Input>,
    change: raft::ConfChange,
    timeout: Duration,
) -> Result<Members> {
    let (reply, answer) = oneshot::channel();
    inbox
        .send(Input::ConfChange { change, reply })
        .await
        .map_err(|_| Error::Unavailable("node stopped".into()))?;
    match tokio::time::timeout(timeout, answer).await {
        Ok(answer) => answer.map_err(|_| Error::Unavailable("node stopped".into()))?,
        Err(_) => Err(Error::Indeterminate(format!(
            "the membership change did not commit within {timeout:?}; \
             it may still: check with member list"
        ))),
    }
}

pub(crate) async fn members(inbox: &mpsc::Sender<Input>) -> Result<Members> {
    let (reply, answer) = oneshot::channel();
    inbox
        .send(Input::Members { reply })
        .await
        .map_err(|_| Error::Unavailable("node stopped".into()))?;
    answer
        .await
        .map_err(|_| Error::Unavailable("node stopped".into()))?
}

/// Asks the driver behind `inbox` to hand leadership over, then waits
/// (on `status`) until another node leads, or `timeout`.
pub(crate) async fn transfer_leadership(
    id: NodeId,
    inbox: &mpsc::Sender<Input>,
    mut status: watch::Receiver<Status>,
    target: Option<NodeId>,
    timeout: Duration,
) -> Result<(NodeId, Term)> {
    let (reply, answer) = oneshot::channel();
    inbox
        .send(Input::TransferLeadership { target, reply })
        .await
        .map_err(|_| Error::Unavailable("node stopped".into()))?;
    let target = answer
        .await
        .map_err(|_| Error::Unavailable("node stopped".into()))??;
    if target == id {
        let status = status.borrow();
        return Ok((id, status.term));
    }
    let handed_over = status.wait_for(|s| s.leader.is_some_and(|leader| leader != id));
    match tokio::time::timeout(timeout, handed_over).await {
        Ok(Ok(status)) => Ok((status.leader.expect("waited for it"), status.term)),
        Ok(Err(_)) => Err(Error::Unavailable("node stopped".into())),
        Err(_) => Err(Error::Unavailable(format!(
            "leadership transfer to node {target} did not complete within {timeout:?}: aborted"
        ))),
    }
}
