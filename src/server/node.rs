//! A running node and its assembly: [`Node::start_with`] recovers storage
//! and the state machine, binds both gRPC services, starts the disk task,
//! one sender task per peer and the driver, and returns the handle through
//! which a process (or a test) asks the node things and stops it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, info_span, warn, Instrument};

use super::config::NodeConfig;
use super::disk;
use super::driver::Driver;
use super::membership::PeerSpawner;
use super::snapshots::SnapshotPolicy;
use crate::kv::KvStore;
use crate::mailbox::{
    change_membership, members, transfer_leadership, Input, MemberRole, Members, StateSummary,
    Status,
};
use crate::metrics::{self, Metrics};
use crate::planted::{is_planted, Bug};
use crate::raft::{self, LogIndex, NodeId, Raft, Role, Term};
use crate::storage::{FileStorage, Storage};
use crate::transport::{self, service, ChannelConfig, TcpTransport, Transport};
use crate::{Error, Result};

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
            if snapshot.index.0 > 0 {
                observer
                    .0
                    .sessions_at(config.id, snapshot.index, kv.sessions_digest());
            }
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
            snapshot_writer: None,
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
