//! Membership in the driver: configuration changes proposed here and
//! answered once applied, the configuration in force for `member list`,
//! one sender task per peer following the core's peers, and a node that
//! learns it was removed stopping itself.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use super::driver::Driver;
use crate::mailbox::{Input, Members, PeerConfig};
use crate::metrics::Metrics;
use crate::raft::{self, LogIndex, Message, NodeId, Role, Term};
use crate::storage::SnapshotStore;
use crate::transport::{self, peer, ChannelConfig, Transport};
use crate::{Error, Result};

pub(super) struct ConfChangeWaiter {
    pub(super) term: Term,
    pub(super) reply: oneshot::Sender<Result<Members>>,
}

/// Ticks a removed node keeps running after applying its removal, so its
/// last messages (a leader's handover among them) leave before it stops.
pub(super) const REMOVED_STOP_TICKS: u32 = 4;

/// Starts the sender task of one peer (see `transport::peer`).
pub(super) struct PeerSpawner {
    pub(super) id: NodeId,
    pub(super) transport: Arc<dyn Transport>,
    pub(super) channel: ChannelConfig,
    pub(super) snapshots: Arc<dyn SnapshotStore>,
    pub(super) snapshot_sends: Arc<tokio::sync::Semaphore>,
    pub(super) inbox: mpsc::Sender<Input>,
    pub(super) inflight_max: usize,
    pub(super) shutdown: watch::Receiver<bool>,
    pub(super) span: tracing::Span,
    pub(super) metrics: Arc<Metrics>,
}

impl PeerSpawner {
    /// The peer's queue; its task ends when the queue is dropped (or at
    /// shutdown).
    pub(super) fn spawn(&self, peer: PeerConfig) -> Result<mpsc::Sender<Message>> {
        let channels = peer::PeerChannels {
            votes: transport::channel(self.transport.clone(), &peer.raft_addr, &self.channel)?,
            replication: transport::stream_channel(
                self.transport.clone(),
                &peer.raft_addr,
                &self.channel,
            )?,
            rpc_timeout: self.channel.rpc_timeout,
            snapshots: self.snapshots.clone(),
            snapshot_sends: self.snapshot_sends.clone(),
            metrics: self.metrics.clone(),
        };
        let (sender, _task) = peer::spawn(
            self.id,
            peer,
            channels,
            self.inbox.clone(),
            self.inflight_max,
            self.shutdown.clone(),
            self.span.clone(),
        );
        Ok(sender)
    }
}

impl Driver {
    /// Makes the peer tasks follow the core's peers (see
    /// [`raft::Raft::peers`]): a task for each new one. (A node that left
    /// loses its task in `prune_peers`, once this `Ready`'s messages, its
    /// last one among them, are on their way.)
    pub(super) fn sync_peers(&mut self) {
        let version = self.raft.membership_version();
        if Some(version) == self.peers_version && self.raft.peers() == self.peers_synced {
            return;
        }
        let is_start = self.peers_version.is_none();
        self.peers_version = Some(version);
        let wanted = self.raft.peers().to_vec();
        self.peers_synced.clone_from(&wanted);
        for peer in wanted {
            if self.peers.contains_key(&peer) {
                continue;
            }
            let Some(member) = self
                .raft
                .membership()
                .members
                .get(&peer)
                .or_else(|| self.raft.membership_at(version.2).members.get(&peer))
                .cloned()
            else {
                warn!(
                    peer = peer.0,
                    "a peer without a known address: not reachable"
                );
                continue;
            };
            let config = PeerConfig {
                id: peer,
                raft_addr: member.raft_addr.clone(),
                kv_addr: member.kv_addr.clone(),
            };
            match self.spawner.spawn(config) {
                Ok(sender) => {
                    if is_start {
                        debug!(peer = peer.0, raft_addr = %member.raft_addr, "peer");
                    } else {
                        info!(peer = peer.0, raft_addr = %member.raft_addr, "peer added");
                    }
                    self.peers.insert(peer, (sender, member.kv_addr.clone()));
                }
                Err(e) => error!(
                    peer = peer.0,
                    raft_addr = %member.raft_addr,
                    error = %e,
                    "cannot reach a member: its address is unusable"
                ),
            }
        }
    }

    /// Ends the tasks of peers the core no longer talks to (what they have
    /// queued still goes out).
    pub(super) fn prune_peers(&mut self) {
        if !self.peers.keys().eq(self.raft.peers().iter()) {
            let wanted = self.raft.peers();
            self.peers.retain(|peer, _| wanted.contains(peer));
        }
    }

    /// The applied configuration changed (an entry at `index`, or a
    /// snapshot there): the Raft service refuses the removed nodes, and a
    /// node that finds itself removed stops shortly.
    pub(super) fn membership_applied(&mut self, index: LogIndex) {
        self.update_removed_senders();
        if self
            .kv
            .membership()
            .is_some_and(|m| m.removed.contains(&self.raft.id()))
        {
            self.stop_as_removed(format_args!("configuration applied at index {index}"));
        }
    }

    /// This node was removed from the cluster: it stops after
    /// `REMOVED_STOP_TICKS`, once its last messages left (see the tick).
    pub(super) fn stop_as_removed(&mut self, how: std::fmt::Arguments<'_>) {
        if self.removed_ticks.is_none() {
            warn!("this node was removed from the cluster ({how}): it stops shortly");
            self.removed_ticks = Some(0);
        }
    }

    /// The Raft service stops hearing a node once its removal is applied
    /// here (not when it is only in the log: a leader whose removal is not
    /// committed yet still leads, and its last messages carry the commit).
    fn update_removed_senders(&self) {
        if let Some(applied) = self.kv.membership() {
            self.removed_senders.send_if_modified(|removed| {
                let is_changed = *removed != applied.removed;
                removed.clone_from(&applied.removed);
                is_changed
            });
        }
    }

    pub(super) fn propose_conf_change(
        &mut self,
        change: raft::ConfChange,
        reply: oneshot::Sender<Result<Members>>,
    ) {
        use raft::ConfChangeRejected as Rejected;
        match self.raft.propose_conf_change(&change) {
            Ok(index) => {
                let term = self.raft.term();
                self.conf_changes
                    .insert(index, ConfChangeWaiter { term, reply });
            }
            Err(rejected) => {
                let unavailable = || Error::Unavailable(rejected.to_string());
                let error = match rejected {
                    Rejected::NotLeader(_) => {
                        crate::probe!(ConfChangeRefusedNotLeader);
                        self.not_leader()
                    }
                    Rejected::ChangePending => {
                        crate::probe!(ConfChangeRefusedChangePending);
                        unavailable()
                    }
                    Rejected::NotReady => {
                        crate::probe!(ConfChangeRefusedBeforeOwnTermCommit);
                        unavailable()
                    }
                    Rejected::TransferInProgress => {
                        crate::probe!(ConfChangeRefusedDuringTransfer);
                        unavailable()
                    }
                    Rejected::LearnerBehind { .. } => {
                        crate::probe!(ConfChangeRefusedLearnerBehind);
                        unavailable()
                    }
                    Rejected::IdTaken(_) | Rejected::UnknownNode(_) | Rejected::Invalid(_) => {
                        crate::probe!(ConfChangeRefusedInvalid);
                        Error::InvalidArgument(rejected.to_string())
                    }
                };
                let _ = reply.send(Err(error));
            }
        }
    }

    /// The configuration in force (leader only: a follower's may be behind).
    pub(super) fn members(&self) -> Result<Members> {
        if self.raft.role() != Role::Leader {
            return Err(self.not_leader());
        }
        Ok(Members {
            leader: self.raft.id(),
            index: self.raft.membership_index(),
            is_committed: self.raft.membership_index() <= self.raft.log().commit(),
            membership: self.raft.membership().clone(),
        })
    }
}
