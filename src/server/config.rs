//! How to run one node: [`NodeConfig`], its defaults and its validation,
//! and what the core's configuration and the bootstrap membership are
//! derived from it.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

use super::hooks::{ChaosHandle, ObserverHandle};
use crate::mailbox::PeerConfig;
use crate::raft::{self, NodeId};
use crate::tls::{PeerTls, ServerTls};
use crate::transport::ChannelConfig;
use crate::{Error, Result};

/// How to run one node. [`NodeConfig::new`] fills in sane defaults.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    /// Address the Raft peer service binds to (`host:port`).
    pub raft_addr: String,
    /// Address the KV client service binds to.
    pub kv_addr: String,
    /// The other voters of a new cluster (every founding node lists the
    /// same). Empty with `join`.
    pub peers: Vec<PeerConfig>,
    /// A node that joins a running cluster: it knows no configuration and
    /// learns it from the leader once an operator (or `lattice node
    /// --join`) added it. Without it and without peers, a one-node cluster.
    pub join: bool,
    /// Where the WAL, the snapshots and the hard state live.
    pub data_dir: PathBuf,
    /// Snapshot the state machine once this many entries were applied since
    /// the last snapshot (etcd's default since v3.6)...
    pub snapshot_entries: u64,
    /// ...or once the applied entries since it hold this many bytes.
    pub snapshot_bytes: u64,
    /// Entries kept in the log below a snapshot, so that a follower a little
    /// behind catches up by entries rather than by a whole snapshot.
    pub snapshot_catchup_entries: u64,
    /// Snapshots this node streams to followers at once.
    pub snapshot_sends_max: usize,
    /// Write snapshots on a blocking thread (`false`: on the runtime, as the
    /// deterministic simulation needs).
    pub snapshot_on_blocking_thread: bool,
    /// One raft tick.
    pub tick_interval: Duration,
    pub election_timeout_ticks_min: u32,
    pub election_timeout_ticks_max: u32,
    pub heartbeat_interval_ticks: u32,
    /// AppendEntries in flight per follower.
    pub inflight_appends_max: usize,
    pub append_entries_max: usize,
    pub append_bytes_max: usize,
    /// How long a KV request may wait for its command to commit.
    pub request_timeout: Duration,
    /// Deadline and keepalive of peer RPCs.
    pub peer_channel: ChannelConfig,
    /// Inputs queued for the driver before callers wait.
    pub inbox_capacity: usize,
    /// Seeds the node's RNG (election timeouts).
    pub seed: u64,
    /// PreVote (see [`raft::Config::pre_vote`]).
    pub pre_vote: bool,
    /// CheckQuorum and the vote lease (see [`raft::Config::check_quorum`]).
    pub check_quorum: bool,
    /// Connect to peers from this local address (nodes sharing a machine on
    /// their own loopback addresses). `None`: the system picks.
    pub source_ip: Option<std::net::IpAddr>,
    /// Watches applies and role changes (tests).
    pub observer: Option<ObserverHandle>,
    /// While this reads `true` the driver is frozen, timers included, as a
    /// process stopped by SIGSTOP (the simulation's pause fault). On
    /// resuming it carries on with the beliefs it had.
    pub pause: Option<watch::Receiver<bool>>,
    /// Late, reordered and duplicated peer messages (the simulation).
    pub chaos: Option<ChaosHandle>,
    /// UNSAFE: answer reads from this node's state machine at once, leader or
    /// not, without confirming leadership. Stale reads. Exists so the
    /// simulation test can show it catches them.
    pub unsafe_local_reads: bool,
    /// UNSAFE: acknowledge without syncing the log. A crash loses acknowledged
    /// writes. Exists so the simulation test can show it catches that.
    pub unsafe_no_fsync: bool,
    /// Serve `/metrics` (Prometheus) and `/health` over HTTP here
    /// (`host:port`; real TCP only). `None`: not served ([`Node::metrics_text`](super::Node::metrics_text)
    /// and [`Node::health`](super::Node::health) still answer).
    pub metrics_addr: Option<String>,
    /// Serve the KV port over TLS (and, with a client CA, ask clients for
    /// certificates). `None`: plaintext.
    pub kv_tls: Option<ServerTls>,
    /// Mutual TLS between peers: served on the Raft port and presented when
    /// dialling peers. `None`: plaintext.
    pub peer_tls: Option<PeerTls>,
    /// Bytes the KV port's `Batch` streams may hold at once, all together
    /// (requests in progress, answers unsent): past it no stream reads more
    /// until answers leave (see [`crate::transport::service::BatchBudget`]).
    pub batch_bytes_max: usize,
}

impl NodeConfig {
    pub fn new(
        id: NodeId,
        raft_addr: impl Into<String>,
        kv_addr: impl Into<String>,
        peers: Vec<PeerConfig>,
        data_dir: impl Into<PathBuf>,
    ) -> Self {
        NodeConfig {
            id,
            raft_addr: raft_addr.into(),
            kv_addr: kv_addr.into(),
            peers,
            join: false,
            data_dir: data_dir.into(),
            snapshot_entries: 10_000,
            snapshot_bytes: 64 << 20,
            snapshot_catchup_entries: 5_000,
            snapshot_sends_max: 2,
            snapshot_on_blocking_thread: true,
            tick_interval: Duration::from_millis(50),
            election_timeout_ticks_min: 10,
            election_timeout_ticks_max: 20,
            heartbeat_interval_ticks: 2,
            inflight_appends_max: 4,
            append_entries_max: 4096,
            append_bytes_max: 4 << 20,
            request_timeout: Duration::from_secs(3),
            peer_channel: ChannelConfig {
                connect_timeout: Duration::from_millis(500),
                rpc_timeout: Duration::from_secs(2),
                keepalive_interval: Duration::from_secs(1),
                keepalive_timeout: Duration::from_secs(2),
                tls: None,
            },
            inbox_capacity: 16 << 10,
            seed: id.0,
            pre_vote: true,
            check_quorum: true,
            source_ip: None,
            observer: None,
            pause: None,
            chaos: None,
            unsafe_local_reads: false,
            unsafe_no_fsync: false,
            metrics_addr: None,
            kv_tls: None,
            peer_tls: None,
            batch_bytes_max: 256 << 20,
        }
    }

    /// The configuration of a new cluster: this node and its peers, all
    /// voters, with their addresses.
    pub(super) fn bootstrap_membership(&self) -> raft::Membership {
        let mut membership = raft::Membership::default();
        if self.join {
            return membership;
        }
        let own = PeerConfig {
            id: self.id,
            raft_addr: self.raft_addr.clone(),
            kv_addr: self.kv_addr.clone(),
        };
        for peer in self.peers.iter().chain([&own]) {
            membership.members.insert(
                peer.id,
                raft::Member {
                    raft_addr: peer.raft_addr.clone(),
                    kv_addr: peer.kv_addr.clone(),
                    is_learner: false,
                },
            );
        }
        membership
    }

    pub(super) fn raft_config(&self) -> raft::Config {
        let mut voters: Vec<NodeId> = self.peers.iter().map(|p| p.id).collect();
        if !self.join {
            voters.push(self.id);
        }
        voters.sort();
        raft::Config {
            id: self.id,
            voters,
            election_timeout_ticks_min: self.election_timeout_ticks_min,
            election_timeout_ticks_max: self.election_timeout_ticks_max,
            heartbeat_interval_ticks: self.heartbeat_interval_ticks,
            inflight_appends_max: self.inflight_appends_max,
            append_entries_max: self.append_entries_max,
            append_bytes_max: self.append_bytes_max,
            seed: self.seed,
            pre_vote: self.pre_vote,
            check_quorum: self.check_quorum,
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.raft_config().validate().map_err(Error::Config)?;
        if self.join && !self.peers.is_empty() {
            return Err(Error::Config(
                "a joining node learns its peers from the cluster: give no peers".into(),
            ));
        }
        if self.peers.iter().any(|p| p.id == self.id) {
            return Err(Error::Config(format!(
                "node {} lists itself as a peer",
                self.id
            )));
        }
        if self.snapshot_entries == 0 || self.snapshot_bytes == 0 || self.snapshot_sends_max == 0 {
            return Err(Error::Config(
                "snapshot thresholds and the snapshot send limit must be positive".into(),
            ));
        }
        if self.tick_interval.is_zero() || self.inbox_capacity == 0 {
            return Err(Error::Config(
                "tick interval and inbox capacity must be positive".into(),
            ));
        }
        Ok(())
    }
}
