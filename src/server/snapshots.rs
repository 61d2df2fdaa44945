//! Snapshots in the driver: taking one when the policy says so (the state
//! machine cloned in O(1) and written off the driver), installing one
//! received from the leader, and compacting the log below the newest
//! durable one.

use std::sync::Arc;

use tokio::sync::oneshot;
use tracing::{error, info, warn};

use super::driver::{Driver, Held};
use crate::kv::KvStore;
use crate::mailbox::Input;
use crate::planted::{is_planted, Bug};
use crate::raft::{AppendEntriesResponse, InstallSnapshot, LogIndex, SnapshotMeta};
use crate::storage::SnapshotFile;
use crate::{Error, Result};

/// When to snapshot and how much log to keep (see [`NodeConfig`]).
pub(super) struct SnapshotPolicy {
    pub(super) entries: u64,
    pub(super) bytes: u64,
    pub(super) catchup_entries: u64,
    pub(super) on_blocking_thread: bool,
}

/// Nice 10 for the calling thread (Linux: per thread). Best effort.
fn lower_thread_priority() {
    // SAFETY: plain syscalls on the calling thread.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}

impl Driver {
    /// A snapshot from the leader: its data must load before the core sees
    /// it; if the core accepts it, the state machine is replaced at once (it
    /// is committed) and the disk installs the file with the next write.
    pub(super) fn install_snapshot(
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
                observer
                    .0
                    .sessions_at(self.raft.id(), meta.index, self.kv.sessions_digest());
            }
        }
        // Answered like an append: it acknowledges up to `match_index`.
        self.answers.push(Held::Append(reply, response));
    }

    /// Starts a snapshot if the policy says so and none is being written. The
    /// state machine is cloned (O(1): persistent maps) and written by a task
    /// of its own, so the driver goes on applying meanwhile.
    pub(super) fn maybe_snapshot(&mut self) {
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
            match spawned {
                Ok(writer) => self.snapshot_writer = Some(writer),
                Err(e) => {
                    error!(error = %e, "could not start a snapshot thread");
                    self.is_snapshotting = false;
                }
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
    pub(super) fn snapshot_saved(
        &mut self,
        meta: SnapshotMeta,
        digest: Option<u32>,
        result: Result<u64>,
    ) {
        self.is_snapshotting = false;
        // Its thread has sent this as its last act: let it go.
        self.snapshot_writer = None;
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
    pub(super) fn compact(&mut self) {
        let before = self.raft.log().offset().index;
        let to = self.raft.compact(self.snapshot_policy.catchup_entries);
        if to > before {
            self.compact_pending = Some(to);
            if let Some(observer) = &self.observer {
                observer.0.compacted(self.raft.id(), to);
            }
        }
    }
}
