//! The disk task: it owns the node's [`Storage`] and carries out the writes
//! the driver hands it, in order, syncing once for all the writes that queued
//! up meanwhile (group commit). The driver goes on stepping the core while a
//! sync is under way and learns what is durable from a watch, so the disk
//! never waits on the driver and the driver waits on the disk only when
//! `WRITES_QUEUED_MAX` writes are already queued.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, Instrument, Span};

use crate::metrics::Metrics;
use crate::planted::{is_planted, Bug};
use crate::raft::{Entry, HardState, LogIndex, SnapshotMeta, Term};
use crate::storage::{SnapshotFile, Storage};
use crate::Result;

/// Writes queued for the disk task before the driver waits.
pub(super) const WRITES_QUEUED_MAX: usize = 256;
/// Writes made durable by one sync.
const WRITES_PER_SYNC_MAX: usize = 256;

/// One `Ready`'s durable state, numbered in the order it was handed out.
pub(super) struct Write {
    pub seq: u64,
    pub hard_state: Option<HardState>,
    /// A snapshot from the leader to install before `entries`.
    pub install: Option<Arc<SnapshotFile>>,
    /// Contiguous; storage first removes what it holds from `entries[0].index`.
    pub entries: Vec<Entry>,
    /// Delete the log up to here (whole segments), after the rest.
    pub compact: Option<LogIndex>,
}

/// What is durable: every write up to `seq`, and the log up to `last`.
#[derive(Clone, Debug, Default)]
pub(super) struct Durable {
    pub seq: u64,
    /// The last entry in storage after the latest write that had entries.
    pub last: Option<(LogIndex, Term)>,
    /// The newest snapshot installed from a leader.
    pub installed: Option<SnapshotMeta>,
    /// Set when storage failed; the task has stopped.
    pub failure: Option<String>,
}

pub(super) fn spawn(
    storage: Box<dyn Storage>,
    is_sync_skipped: bool,
    metrics: Arc<Metrics>,
    span: Span,
) -> (
    mpsc::Sender<Write>,
    watch::Receiver<Durable>,
    JoinHandle<()>,
) {
    let (writes_tx, writes_rx) = mpsc::channel(WRITES_QUEUED_MAX);
    let (durable_tx, durable_rx) = watch::channel(Durable::default());
    let task = tokio::spawn(
        run(storage, writes_rx, durable_tx, is_sync_skipped, metrics).instrument(span),
    );
    (writes_tx, durable_rx, task)
}

async fn run(
    mut storage: Box<dyn Storage>,
    mut writes: mpsc::Receiver<Write>,
    durable: watch::Sender<Durable>,
    is_sync_skipped: bool,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::new();
    while writes.recv_many(&mut batch, WRITES_PER_SYNC_MAX).await > 0 {
        match write_batch(&mut *storage, &batch, is_sync_skipped, &metrics).await {
            Ok(last) => {
                let seq = batch.last().map_or(0, |w| w.seq);
                let installed = batch
                    .iter()
                    .rev()
                    .find_map(|w| w.install.as_ref().map(|f| f.meta()));
                durable.send_modify(|d| {
                    d.seq = seq;
                    if last.is_some() {
                        d.last = last;
                    }
                    if installed.is_some() {
                        d.installed = installed;
                    }
                });
            }
            Err(e) => {
                error!(error = %e, "storage failed");
                durable.send_modify(|d| d.failure = Some(e.to_string()));
                return;
            }
        }
        batch.clear();
    }
}

/// Writes `batch` in order and syncs once. Returns the last entry written.
async fn write_batch(
    storage: &mut dyn Storage,
    batch: &[Write],
    is_sync_skipped: bool,
    metrics: &Metrics,
) -> Result<Option<(LogIndex, Term)>> {
    // Only the newest hard state matters: nothing that depends on any of
    // them leaves the node before the whole batch is durable. Saving it
    // before older entries is safe (a term ahead of the log is normal).
    if let Some(hard_state) = batch.iter().rev().find_map(|w| w.hard_state) {
        if !is_planted(Bug::HardStateNotPersisted) {
            storage.save_hard_state(hard_state)?;
        }
    }
    let mut last = None;
    let mut compact = None;
    for write in batch {
        if let Some(file) = &write.install {
            storage.install_snapshot(file)?;
        }
        compact = compact.max(write.compact);
        if let Some(entry) = write.entries.last() {
            let started = Instant::now();
            let appended = storage.append(&write.entries);
            crate::probe!(StorageWriteFailed, if appended.is_err());
            appended?;
            metrics.wal_append.observe(started.elapsed().as_secs_f64());
            last = Some((entry.index, entry.term));
        }
    }
    if last.is_some() {
        let delay = storage.sync_delay();
        if delay > Duration::ZERO {
            tokio::time::sleep(delay).await;
        }
        if !is_sync_skipped {
            let started = Instant::now();
            let mut synced = storage.sync();
            if synced.is_err() && is_planted(Bug::FsyncRetriedAfterError) {
                synced = storage.sync();
            }
            crate::probe!(StorageSyncFailed, if synced.is_err());
            synced?;
            metrics.wal_fsync.observe(started.elapsed().as_secs_f64());
        }
    }
    if let Some(index) = compact {
        storage.compact(index)?;
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::storage::{MemStorage, Recovered, SnapshotStore};

    /// Memory storage whose sync fails once, with every call counted.
    struct FailingSync {
        inner: MemStorage,
        calls: Arc<Mutex<Vec<&'static str>>>,
    }

    impl Storage for FailingSync {
        fn recovered(&mut self) -> Recovered {
            self.inner.recovered()
        }
        fn resync_recovered(&mut self) -> Result<()> {
            self.inner.resync_recovered()
        }
        fn save_hard_state(&mut self, hard_state: HardState) -> Result<()> {
            self.calls.lock().unwrap().push("save_hard_state");
            self.inner.save_hard_state(hard_state)
        }
        fn append(&mut self, entries: &[Entry]) -> Result<()> {
            self.calls.lock().unwrap().push("append");
            self.inner.append(entries)
        }
        fn sync(&mut self) -> Result<()> {
            self.calls.lock().unwrap().push("sync");
            Err(crate::Error::io(
                "syncing",
                std::io::Error::from_raw_os_error(libc::EIO),
            ))
        }
        fn last_index(&self) -> LogIndex {
            self.inner.last_index()
        }
        fn install_snapshot(&mut self, file: &SnapshotFile) -> Result<()> {
            self.inner.install_snapshot(file)
        }
        fn compact(&mut self, index: LogIndex) -> Result<()> {
            self.inner.compact(index)
        }
        fn snapshot_store(&self) -> Arc<dyn SnapshotStore> {
            self.inner.snapshot_store()
        }
    }

    fn write(seq: u64, index: u64) -> Write {
        Write {
            seq,
            hard_state: None,
            install: None,
            entries: vec![Entry {
                term: Term(1),
                index: LogIndex(index),
                data: b"x".to_vec(),
            }],
            compact: None,
        }
    }

    #[tokio::test]
    async fn a_failed_fsync_stops_the_disk_and_is_never_retried() {
        // Linux may drop the dirty pages of a failed fsync and report the
        // next one clean ("fsyncgate", 2018): retrying would acknowledge
        // writes that are not on disk. The disk task reports the failure,
        // makes nothing durable, and touches storage no more.
        let calls = Arc::new(Mutex::new(Vec::new()));
        let storage = FailingSync {
            inner: MemStorage::new(),
            calls: calls.clone(),
        };
        let metrics = crate::metrics::Metrics::new(None);
        let (writes, mut durable, task) =
            spawn(Box::new(storage), false, metrics, tracing::Span::none());
        writes.send(write(1, 1)).await.expect("queued");
        durable
            .wait_for(|d| d.failure.is_some())
            .await
            .expect("the failure is reported");
        let reported = durable.borrow().clone();
        assert_eq!(reported.seq, 0, "nothing was made durable");
        assert!(
            reported
                .failure
                .as_deref()
                .unwrap_or("")
                .contains("syncing"),
            "{reported:?}"
        );
        task.await.expect("the task ends");
        // More writes find the task gone: the driver stops the node.
        assert!(writes.send(write(2, 2)).await.is_err());
        assert_eq!(*calls.lock().unwrap(), ["append", "sync"]);
    }
}
