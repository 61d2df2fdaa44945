//! The simulation's hooks into a node: an [`Observer`] that watches what it
//! applies, writes and answers (the white box of `tests/`), and
//! [`MessageChaos`], which delivers peer messages late, reordered or twice.
//! Both are `None` in production. Chaos is applied as an input leaves the
//! inbox, before the driver handles it (`Driver::receive`), so the driver's
//! protocol dispatch (`Driver::handle`) knows nothing of it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::driver::Driver;
use crate::mailbox::Input;
use crate::raft::{
    self, AppendEntries, AppendEntriesResponse, InstallSnapshot, LogIndex, NodeId, RequestVote,
    RequestVoteResponse, Role, SnapshotMeta, Term, TimeoutNow,
};
use crate::storage::SnapshotFile;

/// Watches a node from outside: what it applies and how its role changes.
/// The simulation test checks invariants across nodes with it (one leader per
/// term, the same entry applied at each index everywhere). Called from the
/// driver task: keep it cheap and never block.
pub trait Observer: Send + Sync {
    fn applied(&self, node: NodeId, entry: &raft::Entry);
    fn role_changed(&self, node: NodeId, term: Term, role: Role);
    /// The node's commit index moved to `index`; `led`: the term it led
    /// throughout (before and after the move), so the move was its own
    /// counting of replicas.
    fn committed(&self, _node: NodeId, _index: LogIndex, _led: Option<Term>) {}
    /// The node's term or last log index changed (or it started).
    fn log_changed(&self, _node: NodeId, _term: Term, _last_index: LogIndex) {}
    /// The node started with this durable snapshot and log after it.
    fn log_recovered(&self, _node: NodeId, _snapshot: SnapshotMeta, _entries: &[raft::Entry]) {}
    /// The node made a snapshot of its state machine at `meta` durable; its
    /// state's digest (`KvStore::digest`) there.
    fn snapshot_taken(&self, _node: NodeId, _meta: SnapshotMeta, _digest: u32) {}
    /// The node installed the leader's snapshot at `meta` (its state machine
    /// now holds it, with this digest).
    fn snapshot_installed(&self, _node: NodeId, _meta: SnapshotMeta, _digest: u32) {}
    /// The node compacted its log up to `index`.
    fn compacted(&self, _node: NodeId, _index: LogIndex) {}
    /// The node handed these entries to its disk, cutting its log at the
    /// first one's index first.
    fn log_written(&self, _node: NodeId, _entries: &[raft::Entry]) {}
    /// As a leader of `term` it appended these entries, its commit index
    /// then at `commit`.
    fn leader_appended(
        &self,
        _node: NodeId,
        _term: Term,
        _commit: LogIndex,
        _entries: &[raft::Entry],
    ) {
    }
    /// The node's answer granting its vote in `term` to `candidate` left it
    /// (or, with `candidate` the node itself, its RequestVote as a candidate).
    fn vote_granted(&self, _node: NodeId, _term: Term, _candidate: NodeId) {}
    /// The node's answer acknowledging its log up to `match_index` to the
    /// leader of `term` left it (the entries are durable).
    fn acknowledged(&self, _node: NodeId, _term: Term, _match_index: LogIndex) {}
    /// The node's answer to an AppendEntries or InstallSnapshot of the
    /// leader of `term` left it (accepting or not: any answer of the term
    /// tells that leader it still leads).
    fn answered_leader(&self, _node: NodeId, _term: Term) {}
    /// As leader of `term` the node started the linearizable read
    /// `context` (its ReadIndex round is to come).
    fn read_started(&self, _node: NodeId, _term: Term, _context: u64) {}
    /// It served that read, confirmed.
    fn read_served(&self, _node: NodeId, _term: Term, _context: u64) {}
    /// The digest of the node's session table once it is at `index` (after
    /// applying the entry there, restoring a snapshot there, or installing
    /// one).
    fn sessions_at(&self, _node: NodeId, _index: LogIndex, _digest: u64) {}
}

/// An [`Observer`] in a [`NodeConfig`](super::NodeConfig).
#[derive(Clone)]
pub struct ObserverHandle(pub Arc<dyn Observer>);

impl std::fmt::Debug for ObserverHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ObserverHandle")
    }
}

/// A peer message as the [`MessageChaos`] seam sees it: requests without the
/// channel their answer goes back on.
#[derive(Clone, Debug)]
pub enum PeerMessage {
    RequestVote(RequestVote),
    AppendEntries(AppendEntries),
    InstallSnapshot(InstallSnapshot, Arc<SnapshotFile>),
    TimeoutNow(TimeoutNow),
    RequestVoteResponse {
        from: NodeId,
        response: RequestVoteResponse,
    },
    AppendEntriesResponse {
        from: NodeId,
        response: AppendEntriesResponse,
    },
}

/// What becomes of one arriving peer message.
#[derive(Debug, Default)]
pub struct ChaosVerdict {
    /// Hold the message back this long (it arrives after later ones).
    pub delay: Option<Duration>,
    /// Copies that arrive again after these delays. A copy of a request is
    /// answered into the void, as on a connection that has since broken.
    pub copies: Vec<(Duration, PeerMessage)>,
}

/// The simulation's seam for what TCP and gRPC never do on one connection
/// but a network of reconnecting peers does: deliver a peer message late,
/// after newer ones, or twice. Consulted by the driver for every peer message
/// as it arrives (so keep it cheap); the node spawns one timer task per
/// delayed message, so the seam bounds how many it asks for.
pub trait MessageChaos: Send + Sync {
    fn arrived(&self, node: NodeId, message: &PeerMessage) -> ChaosVerdict;
}

/// A [`MessageChaos`] in a [`NodeConfig`](super::NodeConfig).
#[derive(Clone)]
pub struct ChaosHandle(pub Arc<dyn MessageChaos>);

impl std::fmt::Debug for ChaosHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChaosHandle")
    }
}

impl Driver {
    /// An input leaves the inbox: through the chaos seam if there is one
    /// (a delayed input has been through it already), then handled.
    pub(super) fn receive(&mut self, input: Input) {
        let input = match input {
            Input::Delayed(input) => *input,
            input => match self.chaos.clone() {
                Some(chaos) => match self.through_chaos(&chaos, input) {
                    Some(input) => input,
                    None => return,
                },
                None => input,
            },
        };
        self.handle(input);
    }

    /// Asks the chaos seam what becomes of a peer message: the copies it
    /// wants are delivered later, and the message itself now (`Some`) or
    /// later (`None`).
    fn through_chaos(&self, chaos: &ChaosHandle, input: Input) -> Option<Input> {
        let message = match &input {
            Input::RequestVote { request, .. } => PeerMessage::RequestVote(request.clone()),
            Input::AppendEntries { request, .. } => PeerMessage::AppendEntries(request.clone()),
            Input::TimeoutNow { request } => PeerMessage::TimeoutNow(request.clone()),
            Input::InstallSnapshot { request, file, .. } => {
                PeerMessage::InstallSnapshot(request.clone(), file.clone())
            }
            Input::RequestVoteResponse { from, response } => PeerMessage::RequestVoteResponse {
                from: *from,
                response: response.clone(),
            },
            Input::AppendEntriesResponse { from, response } => PeerMessage::AppendEntriesResponse {
                from: *from,
                response: response.clone(),
            },
            _ => return Some(input),
        };
        let verdict = chaos.0.arrived(self.raft.id(), &message);
        for (delay, copy) in verdict.copies {
            let copy = match copy {
                PeerMessage::RequestVote(request) => Input::RequestVote {
                    request,
                    reply: oneshot::channel().0,
                },
                PeerMessage::AppendEntries(request) => Input::AppendEntries {
                    request,
                    reply: oneshot::channel().0,
                },
                PeerMessage::InstallSnapshot(request, file) => Input::InstallSnapshot {
                    request,
                    file,
                    reply: oneshot::channel().0,
                },
                PeerMessage::TimeoutNow(request) => Input::TimeoutNow { request },
                PeerMessage::RequestVoteResponse { from, response } => {
                    Input::RequestVoteResponse { from, response }
                }
                PeerMessage::AppendEntriesResponse { from, response } => {
                    Input::AppendEntriesResponse { from, response }
                }
            };
            self.deliver_later(delay, copy);
        }
        match verdict.delay {
            Some(delay) => {
                self.deliver_later(delay, input);
                None
            }
            None => Some(input),
        }
    }

    fn deliver_later(&self, delay: Duration, input: Input) {
        let inbox = self.own_inbox.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = inbox.send(Input::Delayed(Box::new(input))).await;
        });
    }
}
