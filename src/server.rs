//! The driver: one task owns a raft core. It ticks the core, feeds it peer
//! messages and client requests, and carries out each `Ready` in the order
//! the core demands: hand the writes to the disk task (which syncs in the
//! background, once for many writes), send what may leave at once, hold the
//! rest until the disk says it is durable, apply and answer clients.
//!
//! [`Node::start`] wires a node together: storage and its disk task, the two
//! gRPC servers, one sender task per peer, and the driver.

mod disk;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::kv::{Command, KvStore, Outcome};
use crate::metrics::{self, Metrics};
use crate::planted::{is_planted, Bug};
use crate::raft::{
    self, AppendEntries, AppendEntriesResponse, InstallSnapshot, LogIndex, Message, NodeId, Raft,
    Ready, RequestVote, RequestVoteResponse, Role, SnapshotMeta, Term, TimeoutNow,
};
use crate::storage::{FileStorage, SnapshotFile, SnapshotStore, Storage};
use crate::tls::{PeerTls, ServerTls};
use crate::transport::{self, peer, service, ChannelConfig, TcpTransport, Transport};
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
    /// An input the [`MessageChaos`] seam held back, arriving now.
    Delayed(Box<Input>),
}

/// A linearizable read's answer: the value, and the applied index of the
/// state it was read from (at least the read's ReadIndex).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ReadValue {
    pub value: Option<Vec<u8>>,
    pub applied_index: LogIndex,
}

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
}

/// An [`Observer`] in a [`NodeConfig`].
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

/// A [`MessageChaos`] in a [`NodeConfig`].
#[derive(Clone)]
pub struct ChaosHandle(pub Arc<dyn MessageChaos>);

impl std::fmt::Debug for ChaosHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChaosHandle")
    }
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
    /// (`host:port`; real TCP only). `None`: not served ([`Node::metrics_text`]
    /// and [`Node::health`] still answer).
    pub metrics_addr: Option<String>,
    /// Serve the KV port over TLS (and, with a client CA, ask clients for
    /// certificates). `None`: plaintext.
    pub kv_tls: Option<ServerTls>,
    /// Mutual TLS between peers: served on the Raft port and presented when
    /// dialling peers. `None`: plaintext.
    pub peer_tls: Option<PeerTls>,
    /// Bytes the KV port's `Batch` streams may hold at once, all together
    /// (requests in progress, answers unsent): past it no stream reads more
    /// until answers leave (see [`service::BatchBudget`]).
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
    fn bootstrap_membership(&self) -> raft::Membership {
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

    fn raft_config(&self) -> raft::Config {
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
    fn of(membership: &raft::Membership, id: NodeId) -> MemberRole {
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

/// A running node. Dropping it stops it (without waiting).
pub struct Node {
    id: NodeId,
    status: watch::Receiver<Status>,
    metrics: Arc<Metrics>,
    inbox: mpsc::Sender<Input>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// How long a leadership transfer may take before the core aborts it
    /// (an election timeout), and a margin for the new leader to be heard.
    transfer_timeout: Duration,
    /// How long a command accepted here may wait to commit.
    request_timeout: Duration,
}

impl Node {
    /// Starts a node on real TCP with its WAL under `config.data_dir`.
    pub async fn start(config: NodeConfig) -> Result<Node> {
        config.validate()?;
        let span = info_span!("node", id = config.id.0, addr = %config.raft_addr);
        let storage = span.in_scope(|| FileStorage::open(&config.data_dir))?;
        let transport: Arc<dyn Transport> = match config.source_ip {
            Some(source) => Arc::new(transport::SourceBoundTcpTransport { source }),
            None => Arc::new(TcpTransport),
        };
        let metrics_listener = match &config.metrics_addr {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| Error::io(format!("binding the metrics service to {addr}"), e))?,
            ),
            None => None,
        };
        let node = Node::start_with(config, Box::new(storage), transport).await?;
        if let Some(listener) = metrics_listener {
            let serving = tokio::spawn(metrics::serve(
                listener,
                node.metrics.clone(),
                node.status.clone(),
                node.shutdown.subscribe(),
            ));
            let mut node = node;
            node.tasks.push(serving);
            return Ok(node);
        }
        Ok(node)
    }

    /// Starts a node on the given storage and transport (the simulation seams).
    pub async fn start_with(
        config: NodeConfig,
        mut storage: Box<dyn Storage>,
        transport: Arc<dyn Transport>,
    ) -> Result<Node> {
        config.validate()?;
        let span = info_span!("node", id = config.id.0, addr = %config.raft_addr);
        let recovered = storage.recovered();
        if !is_planted(Bug::RecoveredLogNotResynced) {
            storage.resync_recovered()?;
        }
        let snapshot = recovered.snapshot_meta();
        let kv = match &recovered.snapshot {
            Some(file) => KvStore::restore(file.data()).map_err(|e| Error::Storage {
                path: format!("snapshot {}", snapshot.index),
                offset: None,
                reason: format!("the state machine does not load: {e}"),
            })?,
            None => KvStore::new(),
        };
        if kv.applied_meta() != snapshot {
            return Err(Error::Storage {
                path: format!("snapshot {}", snapshot.index),
                offset: None,
                reason: format!(
                    "its state machine is at index {} (term {}), its header says {} (term {})",
                    kv.applied(),
                    kv.applied_meta().term,
                    snapshot.index,
                    snapshot.term
                ),
            });
        }
        if let Some(observer) = &config.observer {
            observer
                .0
                .log_recovered(config.id, snapshot, &recovered.entries);
        }
        span.in_scope(|| {
            info!(
                snapshot = snapshot.index.0,
                entries = recovered.entries.len(),
                "restored from storage"
            )
        });
        let bootstrap_membership = config.bootstrap_membership();
        if kv
            .membership()
            .is_some_and(|applied| applied.removed.contains(&config.id))
        {
            return Err(Error::Config(format!(
                "node {} was removed from the cluster (its snapshot says so) and ids are \
                 never reused: start a new node with a new id and an empty data directory",
                config.id
            )));
        }
        let membership = kv
            .membership()
            .cloned()
            .unwrap_or_else(|| bootstrap_membership.clone());
        let raft = Raft::restore(
            config.raft_config(),
            recovered.hard_state,
            snapshot,
            membership,
            recovered.entries,
        );
        let storage_last_index = storage.last_index();
        let snapshots = storage.snapshot_store();
        let snapshot_sends = Arc::new(tokio::sync::Semaphore::new(config.snapshot_sends_max));

        let raft_server = service::server(config.peer_tls.as_ref().map(|tls| &tls.server))
            .map_err(|e| Error::Config(format!("the Raft port: {e}")))?;
        let kv_server = service::server(config.kv_tls.as_ref())
            .map_err(|e| Error::Config(format!("the KV port: {e}")))?;
        let raft_listener = transport.bind(&config.raft_addr).await.map_err(|e| {
            Error::io(
                format!("binding the Raft service to {}", config.raft_addr),
                e,
            )
        })?;
        let kv_listener = transport
            .bind(&config.kv_addr)
            .await
            .map_err(|e| Error::io(format!("binding the KV service to {}", config.kv_addr), e))?;

        let (inbox_tx, inbox_rx) = mpsc::channel(config.inbox_capacity);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let metrics = Metrics::new(Some(&config.data_dir));
        let mut tasks = Vec::new();
        // Peers follow the configuration in force (see `Driver::sync_peers`).
        let spawner = PeerSpawner {
            id: config.id,
            transport: transport.clone(),
            channel: ChannelConfig {
                tls: config.peer_tls.as_ref().map(|tls| tls.client.clone()),
                ..config.peer_channel.clone()
            },
            snapshots: snapshots.clone(),
            snapshot_sends,
            inbox: inbox_tx.clone(),
            inflight_max: config.inflight_appends_max,
            shutdown: shutdown_rx.clone(),
            span: span.clone(),
            metrics: metrics.clone(),
        };

        let initial_status = Status {
            id: config.id,
            role: raft.role(),
            term: raft.term(),
            leader: raft.leader(),
            commit_index: raft.log().commit(),
            applied_index: LogIndex(0),
            last_index: raft.log().last_index(),
            snapshot_index: snapshot.index,
            compacted_index: raft.log().offset().index,
            snapshots_taken: 0,
            snapshots_installed: 0,
            failure: None,
            membership: MemberRole::of(raft.membership(), config.id),
            is_removed: false,
        };
        if let Some(observer) = &config.observer {
            observer
                .0
                .log_changed(config.id, raft.term(), raft.log().last_index());
        }
        let (status_tx, status_rx) = watch::channel(initial_status);

        let applied_membership = kv.membership().unwrap_or(&bootstrap_membership);
        let (removed_tx, removed_rx) = watch::channel(applied_membership.removed.clone());
        tasks.push(service::spawn_raft_server(
            raft_server,
            config.id,
            removed_rx,
            raft_listener,
            inbox_tx.clone(),
            shutdown_rx.clone(),
            span.clone(),
        ));
        let transfer_timeout = config.tick_interval * config.election_timeout_ticks_max
            + config.tick_interval * config.heartbeat_interval_ticks * 2;
        let batch_budget = Arc::new(service::BatchBudget::new(
            config.batch_bytes_max,
            Some(metrics.batch_bytes_held.clone()),
        ));
        tasks.push(service::spawn_kv_server(
            kv_server,
            kv_listener,
            inbox_tx.clone(),
            service::KvConfig {
                request_timeout: config.request_timeout,
                budget: batch_budget.clone(),
                proposals_failed: metrics.proposals_failed.clone(),
            },
            service::AdminConfig {
                id: config.id,
                status: status_rx.clone(),
                transfer_timeout,
                request_timeout: config.request_timeout,
            },
            shutdown_rx.clone(),
            span.clone(),
        ));
        span.in_scope(|| {
            let peer = match &config.peer_tls {
                Some(_) => "mutual TLS",
                None => "plaintext",
            };
            info!("Raft server listening on {} ({peer})", config.raft_addr);
            let kv = match &config.kv_tls {
                Some(tls) if tls.requires_client_certificate() => {
                    "TLS, client certificates required"
                }
                Some(_) => "TLS",
                None => "plaintext",
            };
            info!("KV server listening on {} ({kv})", config.kv_addr);
        });

        if config.unsafe_local_reads || config.unsafe_no_fsync {
            span.in_scope(|| {
                warn!(
                    local_reads = config.unsafe_local_reads,
                    no_fsync = config.unsafe_no_fsync,
                    "UNSAFE options are on: this node gives up linearizability or durability"
                )
            });
        }
        debug_assert_eq!(storage_last_index, raft.log().last_index());
        let (disk, durable, disk_task) = disk::spawn(
            storage,
            config.unsafe_no_fsync,
            metrics.clone(),
            span.clone(),
        );
        tasks.push(disk_task);
        let mut driver = Driver {
            raft,
            batch_budget,
            spawner,
            removed_senders: removed_tx,
            peers_version: None,
            peers_synced: Vec::new(),
            conf_changes: BTreeMap::new(),
            removed_ticks: None,
            observer: config.observer.clone(),
            chaos: config.chaos.clone(),
            own_inbox: inbox_tx.clone(),
            unsafe_local_reads: config.unsafe_local_reads,
            disk,
            durable,
            write_seq_issued: 0,
            write_seq_durable: 0,
            kv,
            snapshots,
            snapshot_policy: SnapshotPolicy {
                entries: config.snapshot_entries,
                bytes: config.snapshot_bytes,
                catchup_entries: config.snapshot_catchup_entries,
                on_blocking_thread: config.snapshot_on_blocking_thread,
            },
            snapshot_base: snapshot.index,
            bytes_since_snapshot: 0,
            is_snapshotting: false,
            last_snapshot_bytes: 0,
            install_pending: None,
            compact_pending: None,
            snapshots_taken: 0,
            snapshots_installed: 0,
            own_kv_addr: config.kv_addr.clone(),
            bootstrap_membership,
            peers: BTreeMap::new(),
            answers: Vec::new(),
            held: VecDeque::new(),
            proposals: BTreeMap::new(),
            drain_waiters: Vec::new(),
            is_draining: false,
            reads: BTreeMap::new(),
            reads_waiting: BTreeMap::new(),
            read_context_next: 1,
            status: status_tx,
            metrics: metrics.clone(),
            snapshot_started: None,
        };
        span.in_scope(|| driver.sync_peers());
        tasks.push(tokio::spawn(
            driver
                .run(
                    inbox_rx,
                    config.tick_interval,
                    shutdown_rx,
                    config.pause.clone(),
                )
                .instrument(span),
        ));
        Ok(Node {
            id: config.id,
            status: status_rx,
            metrics,
            inbox: inbox_tx,
            shutdown: shutdown_tx,
            tasks,
            transfer_timeout,
            request_timeout: config.request_timeout,
        })
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Every metric, in the Prometheus text format (what `/metrics` serves).
    pub fn metrics_text(&self) -> String {
        let status = self.status.borrow().clone();
        self.metrics.render(&status)
    }

    /// What `/health` says: healthy, or why not.
    pub fn health(&self) -> std::result::Result<(), String> {
        metrics::health(&self.status.borrow())
    }

    /// A watch on the node's status (to await changes instead of polling).
    pub fn watch_status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// A digest of the applied state machine.
    pub async fn state_summary(&self) -> Result<StateSummary> {
        let (reply, answer) = oneshot::channel();
        self.inbox
            .send(Input::Inspect { reply })
            .await
            .map_err(|_| Error::Unavailable("node stopped".into()))?;
        answer
            .await
            .map_err(|_| Error::Unavailable("node stopped".into()))
    }

    /// Hands leadership to `target` (`None`: the most up-to-date follower)
    /// and waits until another node leads. Fails if this node does not lead
    /// (naming the leader), if `target` is not a voter, or if the transfer
    /// did not complete within an election timeout (it is then aborted).
    pub async fn transfer_leadership(&self, target: Option<NodeId>) -> Result<(NodeId, Term)> {
        transfer_leadership(
            self.id,
            &self.inbox,
            self.status.clone(),
            target,
            self.transfer_timeout,
        )
        .await
    }

    /// Changes the cluster's membership (leader only): answers once the
    /// change is committed and applied here, with the configuration then
    /// in force. See [`raft::Raft::propose_conf_change`] for the rules.
    pub async fn change_membership(&self, change: raft::ConfChange) -> Result<Members> {
        change_membership(&self.inbox, change, self.request_timeout).await
    }

    /// The configuration in force (leader only).
    pub async fn members(&self) -> Result<Members> {
        members(&self.inbox).await
    }

    /// Stops the node without failing its clients (SIGTERM): a leader first
    /// hands leadership to the most up-to-date voter, then the node waits
    /// for the commands it accepted to be applied (the new leader commits
    /// them), then stops. Bounded: a transfer that does not complete within
    /// an election timeout, or commands that do not commit within the
    /// request timeout, do not hold it up further.
    pub async fn shutdown_gracefully(self) {
        self.hand_over_and_drain().await;
        self.shutdown().await;
    }

    /// The first half of a graceful shutdown: a leader hands leadership
    /// over, then the node waits (bounded) for the commands it accepted to
    /// be applied. It refuses new commands from here on, but keeps serving
    /// its peers until it is stopped.
    pub async fn hand_over_and_drain(&self) {
        if self.status.borrow().role == Role::Leader {
            match self.transfer_leadership(None).await {
                Ok((leader, term)) => info!(
                    node = self.id.0,
                    new_leader = leader.0,
                    term = term.0,
                    "shutting down: leadership handed over"
                ),
                Err(e) => warn!(
                    node = self.id.0,
                    error = %e,
                    "shutting down: leadership could not be handed over"
                ),
            }
        }
        let (reply, drained) = oneshot::channel();
        if self.inbox.send(Input::Drain { reply }).await.is_ok()
            && tokio::time::timeout(self.request_timeout, drained)
                .await
                .is_err()
        {
            warn!(
                node = self.id.0,
                "shutting down with commands still waiting to commit"
            );
        }
    }

    /// Stops every task of the node and waits for them (storage is released).
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for mut task in std::mem::take(&mut self.tasks) {
            if tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                // Wait for the cancellation too: only then are its sockets
                // closed (a restart binds the same ports).
                task.abort();
                let _ = task.await;
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        for task in &self.tasks {
            task.abort();
        }
    }
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

/// Nice 10 for the calling thread (Linux: per thread). Best effort.
fn lower_thread_priority() {
    // SAFETY: plain syscalls on the calling thread.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}

/// When to snapshot and how much log to keep (see [`NodeConfig`]).
struct SnapshotPolicy {
    entries: u64,
    bytes: u64,
    catchup_entries: u64,
    on_blocking_thread: bool,
}

/// Inputs handled per batch before the driver persists and sends.
const INPUT_BATCH_MAX: usize = 1024;

struct Proposal {
    term: Term,
    reply: oneshot::Sender<Result<Outcome>>,
}

struct ConfChangeWaiter {
    term: Term,
    reply: oneshot::Sender<Result<Members>>,
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

/// Ticks a removed node keeps running after applying its removal, so its
/// last messages (a leader's handover among them) leave before it stops.
const REMOVED_STOP_TICKS: u32 = 4;

/// Starts the sender task of one peer (see `transport::peer`).
struct PeerSpawner {
    id: NodeId,
    transport: Arc<dyn Transport>,
    channel: ChannelConfig,
    snapshots: Arc<dyn SnapshotStore>,
    snapshot_sends: Arc<tokio::sync::Semaphore>,
    inbox: mpsc::Sender<Input>,
    inflight_max: usize,
    shutdown: watch::Receiver<bool>,
    span: tracing::Span,
    metrics: Arc<Metrics>,
}

impl PeerSpawner {
    /// The peer's queue; its task ends when the queue is dropped (or at
    /// shutdown).
    fn spawn(&self, peer: PeerConfig) -> Result<mpsc::Sender<Message>> {
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

struct PendingRead {
    key: Vec<u8>,
    reply: oneshot::Sender<Result<ReadValue>>,
}

/// What may leave the node only once a write is durable.
enum Held {
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

struct Driver {
    raft: Raft,
    /// The KV port's budget of bytes held, told how large a value can be.
    batch_budget: Arc<service::BatchBudget>,
    observer: Option<ObserverHandle>,
    chaos: Option<ChaosHandle>,
    /// For inputs the chaos seam delays.
    own_inbox: mpsc::Sender<Input>,
    unsafe_local_reads: bool,
    /// The disk task's queue, and what it reports durable.
    disk: mpsc::Sender<disk::Write>,
    durable: watch::Receiver<disk::Durable>,
    /// Writes handed to the disk task, and made durable, counted.
    write_seq_issued: u64,
    write_seq_durable: u64,
    kv: KvStore,
    /// This node's newest durable snapshot, for the peer senders.
    snapshots: Arc<dyn SnapshotStore>,
    snapshot_policy: SnapshotPolicy,
    /// The applied index of the newest snapshot taken or installed, and the
    /// entry bytes applied since.
    snapshot_base: LogIndex,
    bytes_since_snapshot: u64,
    /// A snapshot is being written.
    is_snapshotting: bool,
    /// The size of the last snapshot written here (what the next one costs).
    last_snapshot_bytes: u64,
    /// A snapshot accepted by the core, to hand to the disk with the next
    /// `Ready`.
    install_pending: Option<Arc<SnapshotFile>>,
    /// Compact storage up to here with the next write.
    compact_pending: Option<LogIndex>,
    snapshots_taken: u64,
    snapshots_installed: u64,
    own_kv_addr: String,
    /// Starts the sender task of a peer the configuration adds.
    spawner: PeerSpawner,
    /// The nodes the Raft service no longer hears: those whose removal
    /// was applied.
    removed_senders: watch::Sender<std::collections::BTreeSet<NodeId>>,
    /// The configurations `peers` was last made to follow
    /// ([`Raft::membership_version`]).
    peers_version: Option<(LogIndex, Term, LogIndex)>,
    /// The core's peers `peers` was last made to follow.
    peers_synced: Vec<NodeId>,
    /// Membership changes proposed here, by log index: answered once
    /// applied (or failed if another entry took the index).
    conf_changes: BTreeMap<LogIndex, ConfChangeWaiter>,
    /// Ticks since this node applied its own removal (it stops shortly
    /// after: its last messages, the handover among them, leave first).
    removed_ticks: Option<u32>,
    /// The configuration of this cluster before any change (in force at a
    /// snapshot that carries none).
    bootstrap_membership: raft::Membership,
    /// Each peer's outgoing queue and KV address.
    peers: BTreeMap<NodeId, (mpsc::Sender<Message>, String)>,
    /// Answers to peer requests made since the last `Ready`: they wait for
    /// every write handed out with or before it.
    answers: Vec<Held>,
    /// What waits for a write to be durable: (write seq, what), in order.
    held: VecDeque<(u64, Held)>,
    /// Proposals waiting to be applied, by log index.
    proposals: BTreeMap<LogIndex, Proposal>,
    /// Told once no proposal at or below the index waits (a graceful
    /// shutdown waits on it).
    drain_waiters: Vec<(LogIndex, oneshot::Sender<()>)>,
    /// Shutting down: proposals refused, no campaigning.
    is_draining: bool,
    /// Reads waiting for their ReadIndex round, by context.
    reads: BTreeMap<u64, PendingRead>,
    /// Reads confirmed, waiting for the state machine to reach their index.
    reads_waiting: BTreeMap<LogIndex, Vec<PendingRead>>,
    read_context_next: u64,
    status: watch::Sender<Status>,
    metrics: Arc<Metrics>,
    /// When the snapshot being written was started.
    snapshot_started: Option<tokio::time::Instant>,
}

impl Driver {
    async fn run(
        mut self,
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
                    Some(input) => self.handle(input),
                    None => break,
                },
            }
            for _ in 0..INPUT_BATCH_MAX {
                match inbox.try_recv() {
                    Ok(input) => self.handle(input),
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
        info!("Raft loop stopped");
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

    fn handle(&mut self, input: Input) {
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
            // Unwrapped above; the chaos seam never delays an input twice.
            Input::Delayed(_) => warn!("an input delayed twice: dropped"),
        }
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

    /// Makes the peer tasks follow the core's peers (see
    /// [`raft::Raft::peers`]): a task for each new one. (A node that left
    /// loses its task in `prune_peers`, once this `Ready`'s messages, its
    /// last one among them, are on their way.)
    fn sync_peers(&mut self) {
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
    fn prune_peers(&mut self) {
        if !self.peers.keys().eq(self.raft.peers().iter()) {
            let wanted = self.raft.peers();
            self.peers.retain(|peer, _| wanted.contains(peer));
        }
    }

    /// The applied configuration changed (an entry at `index`, or a
    /// snapshot there): the Raft service refuses the removed nodes, and a
    /// node that finds itself removed stops shortly.
    fn membership_applied(&mut self, index: LogIndex) {
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
    fn stop_as_removed(&mut self, how: std::fmt::Arguments<'_>) {
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

    fn propose_conf_change(
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
                let error = match rejected {
                    Rejected::NotLeader(_) => self.not_leader(),
                    Rejected::ChangePending
                    | Rejected::NotReady
                    | Rejected::TransferInProgress
                    | Rejected::LearnerBehind { .. } => Error::Unavailable(rejected.to_string()),
                    Rejected::IdTaken(_) | Rejected::UnknownNode(_) | Rejected::Invalid(_) => {
                        Error::InvalidArgument(rejected.to_string())
                    }
                };
                let _ = reply.send(Err(error));
            }
        }
    }

    /// The configuration in force (leader only: a follower's may be behind).
    fn members(&self) -> Result<Members> {
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

    fn kv_addr_of(&self, node: NodeId) -> Option<String> {
        if node == self.raft.id() {
            return Some(self.own_kv_addr.clone());
        }
        self.peers.get(&node).map(|(_, addr)| addr.clone())
    }

    fn not_leader(&self) -> Error {
        Error::NotLeader {
            leader: self.raft.leader().and_then(|l| self.kv_addr_of(l)),
        }
    }

    fn propose(&mut self, command: Command, reply: oneshot::Sender<Result<Outcome>>) {
        if self.is_draining {
            self.metrics.proposals_failed.inc();
            let leader = self.raft.leader().filter(|&l| l != self.raft.id());
            let _ = reply.send(Err(Error::NotLeader {
                leader: leader.and_then(|l| self.kv_addr_of(l)),
            }));
            return;
        }
        match self.raft.propose(command.encode()) {
            Ok(index) => {
                let proposal = Proposal {
                    term: self.raft.term(),
                    reply,
                };
                if let Some(old) = self.proposals.insert(index, proposal) {
                    // An older proposal at this index was truncated away here,
                    // but another node may still commit it.
                    self.metrics.proposals_failed.inc();
                    let _ = old.reply.send(Err(Error::Indeterminate(
                        "leadership changed while the command was in flight".into(),
                    )));
                }
            }
            // During a leadership transfer, the hint is the target.
            Err(raft::NotLeader { leader }) => {
                self.metrics.proposals_failed.inc();
                let _ = reply.send(Err(Error::NotLeader {
                    leader: leader.and_then(|l| self.kv_addr_of(l)),
                }));
            }
        }
    }

    fn read(&mut self, key: Vec<u8>, reply: oneshot::Sender<Result<ReadValue>>) {
        if self.unsafe_local_reads {
            let _ = reply.send(Ok(ReadValue {
                value: self.kv.get(&key).map(<[u8]>::to_vec),
                applied_index: self.kv.applied(),
            }));
            return;
        }
        let context = self.read_context_next;
        self.read_context_next += 1;
        match self.raft.read_index(context) {
            Ok(()) => {
                self.reads.insert(context, PendingRead { key, reply });
            }
            Err(raft::ReadRejected::NotLeader(raft::NotLeader { leader })) => {
                self.metrics.read_indexes_failed.inc();
                let _ = reply.send(Err(Error::NotLeader {
                    leader: leader.and_then(|l| self.kv_addr_of(l)),
                }));
            }
            Err(raft::ReadRejected::NotReady) => {
                self.metrics.read_indexes_failed.inc();
                let _ = reply.send(Err(Error::Unavailable(
                    "new leader has not committed an entry of its term yet".into(),
                )));
            }
        }
    }

    /// A snapshot from the leader: its data must load before the core sees
    /// it; if the core accepts it, the state machine is replaced at once (it
    /// is committed) and the disk installs the file with the next write.
    fn install_snapshot(
        &mut self,
        request: InstallSnapshot,
        file: Arc<SnapshotFile>,
        reply: oneshot::Sender<AppendEntriesResponse>,
    ) {
        let meta = file.meta();
        let started = tokio::time::Instant::now();
        let kv = match KvStore::restore(file.data()) {
            Ok(kv) if kv.applied_meta() == meta => kv,
            Ok(kv) => {
                warn!(
                    index = meta.index.0,
                    data_index = kv.applied().0,
                    "snapshot whose data does not match its header: refused"
                );
                return;
            }
            Err(e) => {
                warn!(index = meta.index.0, error = %e, "snapshot data does not load: refused");
                return;
            }
        };
        // Without a configuration, the cluster's bootstrap one is in force
        // at the snapshot (it never changed up to there).
        let membership = kv
            .membership()
            .cloned()
            .unwrap_or_else(|| self.bootstrap_membership.clone());
        let (response, is_accepted) = self.raft.handle_install_snapshot(request, meta, membership);
        if is_accepted {
            // Commands proposed here at or below it may or may not be in it.
            let below: Vec<LogIndex> = self
                .proposals
                .range(..=meta.index)
                .map(|(&index, _)| index)
                .collect();
            for index in below {
                if let Some(proposal) = self.proposals.remove(&index) {
                    self.metrics.proposals_failed.inc();
                    let _ = proposal.reply.send(Err(Error::Indeterminate(
                        "this node installed a snapshot past the command".into(),
                    )));
                }
            }
            let applied_before = self.kv.applied();
            self.kv = kv;
            self.membership_applied(meta.index);
            self.snapshot_base = meta.index;
            self.bytes_since_snapshot = 0;
            self.snapshots_installed += 1;
            self.metrics.snapshots_installed.inc();
            // Applied in one step: so committed and applied agree.
            self.metrics
                .proposals_applied
                .inc_by(meta.index.0.saturating_sub(applied_before.0));
            self.metrics
                .snapshot_install
                .observe(started.elapsed().as_secs_f64());
            self.install_pending = Some(file);
            if let Some(observer) = &self.observer {
                observer
                    .0
                    .snapshot_installed(self.raft.id(), meta, self.kv.digest());
            }
        }
        // Answered like an append: it acknowledges up to `match_index`.
        self.answers.push(Held::Append(reply, response));
    }

    /// Starts a snapshot if the policy says so and none is being written. The
    /// state machine is cloned (O(1): persistent maps) and written by a task
    /// of its own, so the driver goes on applying meanwhile.
    fn maybe_snapshot(&mut self) {
        let applied = self.kv.applied();
        let entries_since = applied.0.saturating_sub(self.snapshot_base.0);
        let policy = &self.snapshot_policy;
        // A snapshot rewrites the whole state: with a large state, wait
        // until the log since the last one is an eighth of its size, so
        // snapshots cost at most 8 bytes written per byte of log (the
        // `snapshot_bytes` bound on the log held in memory still applies).
        let is_amortized = self.bytes_since_snapshot.saturating_mul(8) >= self.last_snapshot_bytes
            || self.bytes_since_snapshot >= policy.bytes;
        let is_due = is_amortized
            && (entries_since >= policy.entries
                || (entries_since > 0 && self.bytes_since_snapshot >= policy.bytes));
        // Only what this node's own log holds durably: a snapshot ahead of
        // the disk queue would get ahead of the log it continues (and of the
        // term the disk has saved).
        let is_durable = applied <= self.raft.log().persisted();
        if self.is_snapshotting || !is_due || !is_durable {
            return;
        }
        let meta = self.kv.applied_meta();
        let kv = self.kv.clone();
        let digest = self.observer.as_ref().map(|_| kv.digest());
        self.is_snapshotting = true;
        self.snapshot_started = Some(tokio::time::Instant::now());
        self.snapshot_base = meta.index;
        self.bytes_since_snapshot = 0;
        let store = self.snapshots.clone();
        let inbox = self.own_inbox.clone();
        let delay = store.save_delay();
        info!(index = meta.index.0, "snapshot started");
        let save = move || store.save(meta, Box::new(move |out| kv.write_snapshot(out)));
        if is_planted(Bug::CompactBeforeSnapshotDurable) {
            self.raft.snapshot_saved(meta);
            self.compact();
        }
        if self.snapshot_policy.on_blocking_thread {
            // A thread of its own at a lower CPU priority: the drivers and
            // the log's fsyncs go first.
            let spawned = std::thread::Builder::new()
                .name("snapshot".into())
                .spawn(move || {
                    lower_thread_priority();
                    let result = save();
                    let _ = inbox.blocking_send(Input::SnapshotSaved {
                        meta,
                        digest,
                        result,
                    });
                });
            if let Err(e) = spawned {
                error!(error = %e, "could not start a snapshot thread");
                self.is_snapshotting = false;
            }
        } else {
            tokio::spawn(async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let result = save();
                let _ = inbox
                    .send(Input::SnapshotSaved {
                        meta,
                        digest,
                        result,
                    })
                    .await;
            });
        }
    }

    /// A snapshot is durable: the core may send it, and the log below it
    /// (but the catch-up tail) goes, in memory now and on disk with the next
    /// write.
    fn snapshot_saved(&mut self, meta: SnapshotMeta, digest: Option<u32>, result: Result<u64>) {
        self.is_snapshotting = false;
        if let Some(started) = self.snapshot_started.take() {
            self.metrics
                .snapshot_save
                .observe(started.elapsed().as_secs_f64());
        }
        match result {
            Ok(bytes) => {
                self.last_snapshot_bytes = bytes;
                self.metrics.snapshots_saved.inc();
            }
            Err(e) => {
                self.metrics.snapshot_save_failures.inc();
                // The log is still whole: nothing is lost. Retried at the
                // next threshold.
                error!(index = meta.index.0, error = %e, "writing a snapshot failed");
                return;
            }
        }
        self.snapshots_taken += 1;
        self.raft.snapshot_saved(meta);
        if let (Some(observer), Some(digest)) = (&self.observer, digest) {
            observer.0.snapshot_taken(self.raft.id(), meta, digest);
        }
        self.compact();
    }

    /// Compacts the log below the newest durable snapshot (but the catch-up
    /// tail): in memory now, on disk with the next write.
    fn compact(&mut self) {
        let before = self.raft.log().offset().index;
        let to = self.raft.compact(self.snapshot_policy.catchup_entries);
        if to > before {
            self.compact_pending = Some(to);
            if let Some(observer) = &self.observer {
                observer.0.compacted(self.raft.id(), to);
            }
        }
    }

    /// Carries out one `Ready` (see [`Ready`] for the order): hand the write
    /// to the disk task, send or hold messages and answers, apply, answer.
    /// Fails only if the disk task has stopped.
    async fn process_ready(&mut self) -> std::result::Result<(), ()> {
        let mut ready: Ready = self.raft.ready();
        self.sync_peers();
        // A leader's AppendEntries may go out before its own disk has the
        // entries (Raft thesis 10.2.1): the core counts the leader's own copy
        // only once the disk reports it durable. Messages of a Ready that
        // changes term or vote (RequestVote, a first AppendEntries) wait.
        let is_sent_now = ready.hard_state.is_none() && self.raft.role() == Role::Leader;
        if is_sent_now {
            self.send(std::mem::take(&mut ready.messages));
        }
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
        if !ready.messages.is_empty() {
            let messages = std::mem::take(&mut ready.messages);
            self.held.push_back((seq, Held::Messages(messages)));
        }
        self.release_held();
        self.prune_peers();

        self.metrics
            .proposals_applied
            .inc_by(ready.committed.len() as u64);
        for entry in ready.committed {
            self.bytes_since_snapshot += entry.data.len() as u64;
            let outcome = self.kv.apply(&entry);
            if let Some(observer) = &self.observer {
                observer.0.applied(self.raft.id(), &entry);
            }
            if let Some(waiter) = self.conf_changes.remove(&entry.index) {
                let answer = if waiter.term == entry.term {
                    Ok(Members {
                        leader: self.raft.id(),
                        index: entry.index,
                        is_committed: true,
                        membership: self.kv.membership().cloned().unwrap_or_default(),
                    })
                } else {
                    Err(Error::Unavailable(format!(
                        "the change was overwritten at index {} by a new leader; it did not happen",
                        entry.index
                    )))
                };
                let _ = waiter.reply.send(answer);
            }
            if entry.membership().is_some() {
                self.membership_applied(entry.index);
            }
            if let Some(proposal) = self.proposals.remove(&entry.index) {
                let answer = if proposal.term == entry.term {
                    outcome
                        .ok_or_else(|| Error::Indeterminate("no-op in place of a command".into()))
                } else {
                    self.metrics.proposals_failed.inc();
                    Err(Error::Unavailable(format!(
                        "the command was overwritten at index {} by a new leader and will never apply",
                        entry.index
                    )))
                };
                let _ = proposal.reply.send(answer);
            }
        }
        for context in ready.reads_dropped {
            if let Some(read) = self.reads.remove(&context) {
                self.metrics.read_indexes_failed.inc();
                let _ = read.reply.send(Err(self.not_leader()));
            }
        }
        for read_state in ready.read_states {
            if let Some(read) = self.reads.remove(&read_state.context) {
                self.reads_waiting
                    .entry(read_state.index)
                    .or_default()
                    .push(read);
            }
        }
        self.maybe_snapshot();
        let applied = self.kv.applied();
        while let Some(entry) = self.reads_waiting.first_entry() {
            if *entry.key() > applied {
                break;
            }
            for read in entry.remove() {
                let value = self.kv.get(&read.key).map(<[u8]>::to_vec);
                let _ = read.reply.send(Ok(ReadValue {
                    value,
                    applied_index: applied,
                }));
            }
        }
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
                    let _ = reply.send(response);
                }
                Held::Messages(messages) => self.send(messages),
            }
        }
    }

    /// Hands messages to the peers' sender tasks, never blocking the loop.
    fn send(&mut self, messages: Vec<(NodeId, Message)>) {
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

    fn publish_status(&self) {
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
