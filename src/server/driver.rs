//! The driver loop: one task owns the raft core. It ticks it, feeds it what
//! arrives in the inbox (peer messages, client requests, the disk task's
//! reports), and carries out each `Ready` in the order the core states:
//! send what may leave now, hand the write to the disk task, hold the rest
//! until the disk says it is durable, apply and answer. The parts it hands
//! off live beside it: `apply` (proposals and their answers), `reads`
//! (linearizable reads), `membership` (configuration changes and peer
//! tasks), `snapshots` (taking, installing, compacting) and `hooks` (the
//! simulation's observer and message chaos).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use super::apply::Proposal;
use super::disk;
use super::hooks::{ChaosHandle, ObserverHandle};
use super::membership::{ConfChangeWaiter, PeerSpawner, REMOVED_STOP_TICKS};
use super::reads::PendingRead;
use super::snapshots::SnapshotPolicy;
use crate::kv::KvStore;
use crate::mailbox::{Input, MemberRole, StateSummary, Status};
use crate::metrics::Metrics;
use crate::planted::{is_planted, Bug};
use crate::raft::{
    self, AppendEntriesResponse, LogIndex, Message, NodeId, Raft, Ready, RequestVoteResponse, Role,
    Term,
};
use crate::storage::{SnapshotFile, SnapshotStore};
use crate::transport::service;
use crate::Error;

/// Inputs handled per batch before the driver persists and sends.
const INPUT_BATCH_MAX: usize = 1024;

/// What may leave the node only once a write is durable.
pub(super) enum Held {
    /// The answer, and the candidate it answers.
    Vote(
        oneshot::Sender<RequestVoteResponse>,
        RequestVoteResponse,
        NodeId,
    ),
    /// An AppendEntries or InstallSnapshot answer.
    Append(
        oneshot::Sender<AppendEntriesResponse>,
        AppendEntriesResponse,
    ),
    Messages(Vec<(NodeId, Message)>),
}

pub(super) struct Driver {
    pub(super) raft: Raft,
    /// The KV port's budget of bytes held, told how large a value can be.
    pub(super) batch_budget: Arc<service::BatchBudget>,
    pub(super) observer: Option<ObserverHandle>,
    pub(super) chaos: Option<ChaosHandle>,
    /// For inputs the chaos seam delays.
    pub(super) own_inbox: mpsc::Sender<Input>,
    pub(super) unsafe_local_reads: bool,
    /// The disk task's queue, and what it reports durable.
    pub(super) disk: mpsc::Sender<disk::Write>,
    pub(super) durable: watch::Receiver<disk::Durable>,
    /// Writes handed to the disk task, and made durable, counted.
    pub(super) write_seq_issued: u64,
    pub(super) write_seq_durable: u64,
    pub(super) kv: KvStore,
    /// This node's newest durable snapshot, for the peer senders.
    pub(super) snapshots: Arc<dyn SnapshotStore>,
    pub(super) snapshot_policy: SnapshotPolicy,
    /// The applied index of the newest snapshot taken or installed, and the
    /// entry bytes applied since.
    pub(super) snapshot_base: LogIndex,
    pub(super) bytes_since_snapshot: u64,
    /// A snapshot is being written.
    pub(super) is_snapshotting: bool,
    /// The size of the last snapshot written here (what the next one costs).
    pub(super) last_snapshot_bytes: u64,
    /// A snapshot accepted by the core, to hand to the disk with the next
    /// `Ready`.
    pub(super) install_pending: Option<Arc<SnapshotFile>>,
    /// Compact storage up to here with the next write.
    pub(super) compact_pending: Option<LogIndex>,
    pub(super) snapshots_taken: u64,
    pub(super) snapshots_installed: u64,
    pub(super) own_kv_addr: String,
    /// Starts the sender task of a peer the configuration adds.
    pub(super) spawner: PeerSpawner,
    /// The nodes the Raft service no longer hears: those whose removal
    /// was applied.
    pub(super) removed_senders: watch::Sender<std::collections::BTreeSet<NodeId>>,
    /// The configurations `peers` was last made to follow
    /// ([`Raft::membership_version`]).
    pub(super) peers_version: Option<(LogIndex, Term, LogIndex)>,
    /// The core's peers `peers` was last made to follow.
    pub(super) peers_synced: Vec<NodeId>,
    /// Membership changes proposed here, by log index: answered once
    /// applied (or failed if another entry took the index).
    pub(super) conf_changes: BTreeMap<LogIndex, ConfChangeWaiter>,
    /// Ticks since this node applied its own removal (it stops shortly
    /// after: its last messages, the handover among them, leave first).
    pub(super) removed_ticks: Option<u32>,
    /// The configuration of this cluster before any change (in force at a
    /// snapshot that carries none).
    pub(super) bootstrap_membership: raft::Membership,
    /// Each peer's outgoing queue and KV address.
    pub(super) peers: BTreeMap<NodeId, (mpsc::Sender<Message>, String)>,
    /// Answers to peer requests made since the last `Ready`: they wait for
    /// every write handed out with or before it.
    pub(super) answers: Vec<Held>,
    /// What waits for a write to be durable: (write seq, what), in order.
    pub(super) held: VecDeque<(u64, Held)>,
    /// Proposals waiting to be applied, by log index.
    pub(super) proposals: BTreeMap<LogIndex, Proposal>,
    /// Told once no proposal at or below the index waits (a graceful
    /// shutdown waits on it).
    pub(super) drain_waiters: Vec<(LogIndex, oneshot::Sender<()>)>,
    /// Shutting down: proposals refused, no campaigning.
    pub(super) is_draining: bool,
    /// Reads waiting for their ReadIndex round, by context.
    pub(super) reads: BTreeMap<u64, PendingRead>,
    /// Reads confirmed, waiting for the state machine to reach their index.
    pub(super) reads_waiting: BTreeMap<LogIndex, Vec<PendingRead>>,
    pub(super) read_context_next: u64,
    pub(super) status: watch::Sender<Status>,
    pub(super) metrics: Arc<Metrics>,
    /// When the snapshot being written was started.
    pub(super) snapshot_started: Option<tokio::time::Instant>,
    /// The thread writing a snapshot into the data directory, until it
    /// reports (`Input::SnapshotSaved`): the node does not stop before it
    /// ends.
    pub(super) snapshot_writer: Option<std::thread::JoinHandle<()>>,
}

impl Driver {
    pub(super) async fn run(
        mut self,
        inbox: mpsc::Receiver<Input>,
        tick_interval: Duration,
        shutdown: watch::Receiver<bool>,
        pause: Option<watch::Receiver<bool>>,
    ) {
        self.run_loop(inbox, tick_interval, shutdown, pause).await;
        // A snapshot still being written would go on writing into the data
        // directory after the node stopped, racing a restart on it or an
        // operator moving it away (seen: a test that removes a stopped
        // node's directory got "directory not empty").
        if let Some(writer) = self.snapshot_writer.take() {
            info!("waiting for the snapshot being written");
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
        info!("Raft loop stopped");
    }

    async fn run_loop(
        &mut self,
        mut inbox: mpsc::Receiver<Input>,
        tick_interval: Duration,
        mut shutdown: watch::Receiver<bool>,
        mut pause: Option<watch::Receiver<bool>>,
    ) {
        info!("Starting Raft loop");
        let mut ticker = tokio::time::interval(tick_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some(pause) = pause.as_mut() {
                if *pause.borrow() {
                    info!("paused");
                    tokio::select! {
                        biased;
                        _ = shutdown.changed() => break,
                        resumed = pause.wait_for(|is_paused| !*is_paused) => {
                            if resumed.is_err() {
                                break;
                            }
                        }
                    }
                    info!("resumed");
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                changed = self.durable.changed() => {
                    if changed.is_err() {
                        error!("the disk task ended: stopping this node");
                        self.status
                            .send_modify(|s| s.failure = Some("the disk task ended".into()));
                        return;
                    }
                    if !self.on_durable() {
                        return;
                    }
                }
                _ = ticker.tick() => {
                    if !self.is_draining || self.raft.role() == Role::Leader {
                        self.raft.tick();
                    }
                    if let Some(ticks) = self.removed_ticks.as_mut() {
                        *ticks += 1;
                        // Its last messages wait for its disk: give them
                        // time to leave (bounded: a stalled disk does not
                        // keep a removed node up).
                        let is_flushed = self.held.is_empty();
                        if (*ticks >= REMOVED_STOP_TICKS && is_flushed)
                            || *ticks >= 10 * REMOVED_STOP_TICKS
                        {
                            warn!("removed from the cluster: this node stops (its data directory is of no further use)");
                            self.publish_status();
                            self.status.send_modify(|s| s.is_removed = true);
                            return;
                        }
                    }
                }
                input = inbox.recv() => match input {
                    Some(input) => self.receive(input),
                    None => break,
                },
            }
            for _ in 0..INPUT_BATCH_MAX {
                match inbox.try_recv() {
                    Ok(input) => self.receive(input),
                    Err(_) => break,
                }
            }
            while self.raft.has_ready() || !self.answers.is_empty() {
                if self.process_ready().await.is_err() {
                    error!("the disk task stopped: stopping this node");
                    self.status
                        .send_modify(|s| s.failure = Some("the disk task stopped".into()));
                    return;
                }
            }
            if !self.drain_waiters.is_empty() {
                let first = self.proposals.keys().next().copied();
                for (last, waiter) in std::mem::take(&mut self.drain_waiters) {
                    if first.is_none_or(|first| first > last) {
                        let _ = waiter.send(());
                    } else {
                        self.drain_waiters.push((last, waiter));
                    }
                }
            }
            self.publish_status();
        }
    }

    /// The disk task made more writes durable: tell the core, release what
    /// waited for them. Returns `false` if storage failed.
    fn on_durable(&mut self) -> bool {
        let durable = self.durable.borrow_and_update().clone();
        if let Some(failure) = durable.failure {
            error!(error = %failure, "storage failed: stopping this node");
            self.status.send_modify(|s| s.failure = Some(failure));
            return false;
        }
        self.write_seq_durable = durable.seq;
        if let Some((index, term)) = durable.last {
            self.raft.persisted(index, term);
        }
        if let Some(meta) = durable.installed {
            self.raft.snapshot_saved(meta);
        }
        self.release_held();
        true
    }

    /// Hands one input to the core or to the part of the driver it is for.
    pub(super) fn handle(&mut self, input: Input) {
        match input {
            Input::RequestVote { request, reply } => {
                let candidate = request.candidate;
                let response = self.raft.handle_request_vote(request);
                self.answers.push(Held::Vote(reply, response, candidate));
            }
            Input::AppendEntries { request, reply } => {
                let response = self.raft.handle_append_entries(request);
                self.answers.push(Held::Append(reply, response));
            }
            Input::TimeoutNow { request } => self.raft.handle_timeout_now(request),
            Input::ConfChange { change, reply } => self.propose_conf_change(change, reply),
            Input::Members { reply } => {
                let _ = reply.send(self.members());
            }
            Input::TransferLeadership { target, reply } => {
                let result = self.raft.transfer_leadership(target).map_err(|e| match e {
                    raft::TransferRejected::NotLeader(_) => self.not_leader(),
                    raft::TransferRejected::UnknownNode(node) => Error::InvalidArgument(format!(
                        "node {node} is not a voter of this cluster"
                    )),
                    raft::TransferRejected::NoLiveFollower => Error::Unavailable(
                        "no follower answered lately: no node to hand leadership to".into(),
                    ),
                    raft::TransferRejected::InProgress(pending) => Error::Unavailable(format!(
                        "a leadership transfer to node {pending} is under way"
                    )),
                });
                let _ = reply.send(result);
            }
            Input::Drain { reply } => {
                // Shutting down: new commands go elsewhere, and this node
                // no longer campaigns (it would be stopped while leading).
                // Those accepted so far are waited for.
                self.is_draining = true;
                let last = self.proposals.keys().next_back().copied();
                self.drain_waiters.push((last.unwrap_or_default(), reply));
            }
            Input::InstallSnapshot {
                request,
                file,
                reply,
            } => self.install_snapshot(request, file, reply),
            Input::SnapshotSaved {
                meta,
                digest,
                result,
            } => self.snapshot_saved(meta, digest, result),
            Input::RequestVoteResponse { from, response } => {
                self.raft.handle_request_vote_response(from, response)
            }
            Input::AppendEntriesResponse { from, response } => {
                self.raft.handle_append_entries_response(from, response)
            }
            Input::Unreachable { peer } => self.raft.report_unreachable(peer),
            Input::SnapshotFailed { peer } => self.raft.report_snapshot_failed(peer),
            // It missed its own removal (cut off, or down, when it
            // committed): a member that applied it says so.
            Input::RemovedByPeer { peer } => {
                self.stop_as_removed(format_args!("node {peer} refused it as removed"))
            }
            Input::Propose { command, reply } => self.propose(command, reply),
            Input::Read { key, reply } => self.read(key, reply),
            Input::Inspect { reply } => {
                let _ = reply.send(StateSummary {
                    applied_index: self.kv.applied(),
                    keys: self.kv.len(),
                    digest: self.kv.digest(),
                });
            }
            // Unwrapped by `receive`; the chaos seam never delays an input twice.
            Input::Delayed(_) => warn!("an input delayed twice: dropped"),
        }
    }

    pub(super) fn kv_addr_of(&self, node: NodeId) -> Option<String> {
        if node == self.raft.id() {
            return Some(self.own_kv_addr.clone());
        }
        self.peers.get(&node).map(|(_, addr)| addr.clone())
    }

    pub(super) fn not_leader(&self) -> Error {
        Error::NotLeader {
            leader: self.raft.leader().and_then(|l| self.kv_addr_of(l)),
        }
    }

    /// Carries out one `Ready` (see [`Ready`] for the order): send what may
    /// leave now, hand the write to the disk task, hold the other messages
    /// and the answers until it is durable, apply, answer.
    /// Fails only if the disk task has stopped.
    async fn process_ready(&mut self) -> std::result::Result<(), ()> {
        let mut ready: Ready = self.raft.ready();
        self.sync_peers();
        // What may leave before the write, as the core sorted it.
        self.send(std::mem::take(&mut ready.messages));
        let install = ready.snapshot.map(|meta| {
            let file = self
                .install_pending
                .take()
                .expect("the core accepts only snapshots the driver holds");
            assert_eq!(file.meta(), meta, "the accepted snapshot is the one held");
            file
        });
        if ready.hard_state.is_some()
            || !ready.entries.is_empty()
            || install.is_some()
            || self.compact_pending.is_some()
        {
            if let (Some(observer), false) = (&self.observer, ready.entries.is_empty()) {
                observer.0.log_written(self.raft.id(), &ready.entries);
                if self.raft.role() == Role::Leader {
                    observer.0.leader_appended(
                        self.raft.id(),
                        self.raft.term(),
                        self.raft.log().commit(),
                        &ready.entries,
                    );
                }
            }
            self.write_seq_issued += 1;
            let write = disk::Write {
                seq: self.write_seq_issued,
                hard_state: ready.hard_state,
                install,
                entries: std::mem::take(&mut ready.entries),
                compact: self.compact_pending.take(),
            };
            self.disk.send(write).await.map_err(|_| ())?;
        }
        let seq = if is_planted(Bug::AnswerBeforeDurable) {
            self.write_seq_durable
        } else {
            self.write_seq_issued
        };
        for answer in self.answers.drain(..) {
            self.held.push_back((seq, answer));
        }
        if !ready.persisted_messages.is_empty() {
            let messages = std::mem::take(&mut ready.persisted_messages);
            self.held.push_back((seq, Held::Messages(messages)));
        }
        self.release_held();
        self.prune_peers();

        self.apply_committed(ready.committed);
        self.reads_confirmed(ready.reads_dropped, ready.read_states);
        self.maybe_snapshot();
        self.serve_reads();
        Ok(())
    }

    /// Sends what waited for writes that are now durable.
    fn release_held(&mut self) {
        while self
            .held
            .front()
            .is_some_and(|(seq, _)| *seq <= self.write_seq_durable)
        {
            let (_, held) = self.held.pop_front().expect("front exists");
            match held {
                Held::Vote(reply, response, candidate) => {
                    // A pre-vote grant binds nobody: not a vote.
                    let (term, is_granted) =
                        (response.term, response.vote_granted && !response.pre_vote);
                    // A grant counts only if it reached the service (not the
                    // void a chaos copy or a timed-out call answers into).
                    if let (Ok(()), Some(observer), true) =
                        (reply.send(response), &self.observer, is_granted)
                    {
                        observer.0.vote_granted(self.raft.id(), term, candidate);
                    }
                }
                Held::Append(reply, response) => {
                    if let (Some(observer), true) = (&self.observer, response.success) {
                        observer.0.acknowledged(
                            self.raft.id(),
                            response.term,
                            response.match_index,
                        );
                    }
                    let term = response.term;
                    // Only an answer that reached the service (not the void
                    // a chaos copy is answered into) can reach the leader.
                    if let (Ok(()), Some(observer)) = (reply.send(response), &self.observer) {
                        observer.0.answered_leader(self.raft.id(), term);
                    }
                }
                Held::Messages(messages) => self.send(messages),
            }
        }
    }

    /// Hands messages to the peers' sender tasks, never blocking the loop.
    pub(super) fn send(&mut self, messages: Vec<(NodeId, Message)>) {
        if let Some(observer) = &self.observer {
            // A candidate's RequestVote leaves once its own vote is durable.
            if let Some((_, Message::RequestVote(request))) = messages
                .iter()
                .find(|(_, m)| matches!(m, Message::RequestVote(r) if !r.pre_vote))
            {
                observer
                    .0
                    .vote_granted(self.raft.id(), request.term, request.candidate);
            }
        }
        for (to, message) in messages {
            let Some((sender, _)) = self.peers.get(&to) else {
                warn!(to = to.0, "message for an unknown peer dropped");
                continue;
            };
            let is_snapshot = matches!(message, Message::InstallSnapshot(_));
            if sender.try_send(message).is_err() {
                // The peer's queue is full (it is slow or down): drop, and let
                // the core fall back to probing rather than block the loop.
                if is_snapshot {
                    self.raft.report_snapshot_failed(to);
                } else {
                    self.raft.report_unreachable(to);
                }
            }
        }
    }

    pub(super) fn publish_status(&self) {
        self.batch_budget
            .note_value_bytes_bound(self.kv.value_bytes_bound());
        let status = Status {
            id: self.raft.id(),
            role: self.raft.role(),
            term: self.raft.term(),
            leader: self.raft.leader(),
            commit_index: self.raft.log().commit(),
            applied_index: self.kv.applied(),
            last_index: self.raft.log().last_index(),
            snapshot_index: self.raft.snapshot().index,
            compacted_index: self.raft.log().offset().index,
            snapshots_taken: self.snapshots_taken,
            snapshots_installed: self.snapshots_installed,
            failure: None,
            membership: MemberRole::of(self.raft.membership(), self.raft.id()),
            is_removed: false,
        };
        let observer = self.observer.as_ref();
        self.metrics
            .proposals_pending
            .set(self.proposals.len() as i64);
        let metrics = &self.metrics;
        self.status.send_if_modified(|current| {
            if *current == status {
                return false;
            }
            metrics.status_changed(current, &status);
            if current.role != status.role || current.term != status.term {
                if let Some(observer) = observer {
                    observer.0.role_changed(status.id, status.term, status.role);
                }
            }
            if current.commit_index != status.commit_index {
                if let Some(observer) = observer {
                    // Leader of one term before and after: the commit index
                    // moved by the leader's counting (else, in which role is
                    // not known: both changed at once).
                    let led = (current.role == Role::Leader
                        && status.role == Role::Leader
                        && current.term == status.term)
                        .then_some(status.term);
                    observer.0.committed(status.id, status.commit_index, led);
                }
            }
            if current.term != status.term || current.last_index != status.last_index {
                if let Some(observer) = observer {
                    observer
                        .0
                        .log_changed(status.id, status.term, status.last_index);
                }
            }
            *current = status;
            true
        });
    }
}
