//! Durable state: the hard state (term, vote), the newest snapshot and the
//! log after it. [`Storage`] is the seam; [`FileStorage`] is the segmented
//! write-ahead log used in production and [`MemStorage`] keeps everything in
//! memory (tests).

mod file;
pub mod snapshot;

use std::sync::{Arc, Mutex};

pub use file::{FileStorage, SEGMENT_BYTES_DEFAULT};
pub use snapshot::{SnapshotFile, SnapshotReader, SnapshotStore, SnapshotWriter};

use crate::raft::{Entry, HardState, LogIndex, SnapshotMeta};
use crate::{Error, Result};

/// What a node finds in storage when it starts.
#[derive(Debug, Default)]
pub struct Recovered {
    pub hard_state: HardState,
    /// The newest snapshot (verified), if any.
    pub snapshot: Option<SnapshotFile>,
    /// The log that continues the snapshot: contiguous, starting at or
    /// below the snapshot's index + 1 (what lies below is the catch-up tail
    /// compaction keeps for followers a little behind).
    pub entries: Vec<Entry>,
}

impl Recovered {
    pub fn snapshot_meta(&self) -> SnapshotMeta {
        self.snapshot
            .as_ref()
            .map_or(SnapshotMeta::default(), SnapshotFile::meta)
    }
}

/// Where a node keeps what must survive a crash.
///
/// Ordering duties (the driver honours them): `save_hard_state` and
/// `install_snapshot` are durable when they return;
/// `append` is durable only after `sync`. Nothing that depends on any of them
/// may leave the node before that.
pub trait Storage: Send {
    /// The state found at open (taken once).
    fn recovered(&mut self) -> Recovered;
    /// Makes what [`Storage::recovered`] returned durable, before the node
    /// votes or acknowledges with it. What a restarted process reads back
    /// need not be on the disk: after a failed fsync, Linux keeps the pages
    /// it could not write readable (and clean, so no later fsync writes
    /// them) until they are evicted or power is lost (the 2018
    /// "fsyncgate"). Writing the same bytes again and syncing them makes
    /// them durable, or fails, and the node stops.
    fn resync_recovered(&mut self) -> Result<()>;
    /// Replaces the hard state, durably.
    fn save_hard_state(&mut self, hard_state: HardState) -> Result<()>;
    /// Appends `entries` (contiguous), first removing any stored entry at or
    /// after `entries[0].index`. Not durable until `sync`.
    fn append(&mut self, entries: &[Entry]) -> Result<()>;
    /// Makes every append so far durable.
    fn sync(&mut self) -> Result<()>;
    /// The index of the last stored entry (the snapshot's if the log after it
    /// is empty).
    fn last_index(&self) -> LogIndex;
    /// How long the next `sync` takes beyond its own work: a simulated disk's
    /// latency (the disk task waits it out before syncing, so a crash in
    /// between loses the unsynced writes). Real storage: zero.
    fn sync_delay(&mut self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
    /// Installs a snapshot received from the leader (already verified),
    /// durably: it becomes the newest, and the log keeps its entries after
    /// the snapshot only if it holds the snapshot's last entry (same index and
    /// term); otherwise the log is emptied and continues after it.
    fn install_snapshot(&mut self, file: &SnapshotFile) -> Result<()>;
    /// Deletes log entries up to `index` where whole segments allow. The
    /// caller guarantees a durable snapshot covers `index`.
    fn compact(&mut self, index: LogIndex) -> Result<()>;
    /// The node's snapshots, for other tasks: a snapshot is written there
    /// (off the disk task, so the log's syncs never wait for it) and read
    /// from there to be sent.
    fn snapshot_store(&self) -> Arc<dyn SnapshotStore>;
}

/// The log a restart resumes from, given the newest snapshot and the entries
/// storage holds (contiguous, oldest first), and whether storage must be
/// emptied to continue after the snapshot. A log that holds the snapshot's
/// last entry is kept whole (its entries at and below the snapshot are the
/// catch-up tail). If the log does not reach the
/// snapshot's index, or holds it with another term, nothing of it is kept
/// (an install was cut short by a crash: what follows a conflicting entry is
/// uncommitted). A gap between the snapshot and the log is an error naming
/// `path`: the entries in it are lost, and starting anyway would silently
/// skip them.
pub fn resume_log(
    snapshot: SnapshotMeta,
    entries: Vec<Entry>,
    path: &str,
) -> Result<(Vec<Entry>, bool)> {
    let Some(first) = entries.first() else {
        return Ok((entries, false));
    };
    let (first, at) = (first.index.0, snapshot.index.0);
    if first > at + 1 {
        return Err(Error::Storage {
            path: path.to_string(),
            offset: None,
            reason: format!(
                "the log starts at index {first} but the newest snapshot ends at {at}: entries {}..={} are missing",
                at + 1,
                first - 1
            ),
        });
    }
    if first == at + 1 {
        return Ok((entries, false));
    }
    let position = (at - first) as usize;
    if entries
        .get(position)
        .is_some_and(|e| e.term == snapshot.term)
    {
        return Ok((entries, false));
    }
    Ok((Vec::new(), true))
}

/// The newest snapshot of a node held in memory (tests and the simulation).
#[derive(Default)]
pub struct MemSnapshots(Mutex<Option<Arc<SnapshotFile>>>);

impl MemSnapshots {
    /// Installs `file` as the newest (a leader's snapshot).
    pub fn set(&self, file: SnapshotFile) {
        *self.0.lock().expect("snapshot lock") = Some(Arc::new(file));
    }
    pub fn get(&self) -> Option<Arc<SnapshotFile>> {
        self.0.lock().expect("snapshot lock").clone()
    }
}

impl SnapshotStore for MemSnapshots {
    fn open_latest(&self) -> Result<Option<Box<dyn SnapshotReader>>> {
        Ok(self
            .get()
            .map(|file| Box::new(snapshot::MemReader::new(file)) as Box<dyn SnapshotReader>))
    }
    fn latest(&self) -> SnapshotMeta {
        self.get().map_or(SnapshotMeta::default(), |s| s.meta())
    }
    fn save(&self, meta: SnapshotMeta, write: SnapshotWriter) -> Result<u64> {
        let file = encode_snapshot(meta, write)?;
        let bytes = file.bytes().len() as u64;
        let mut newest = self.0.lock().expect("snapshot lock");
        if newest.as_ref().is_none_or(|n| n.meta().index < meta.index) {
            *newest = Some(Arc::new(file));
        }
        Ok(bytes)
    }
}

/// Writes a snapshot's data to memory and encodes the file.
pub fn encode_snapshot(meta: SnapshotMeta, write: SnapshotWriter) -> Result<SnapshotFile> {
    let mut data = Vec::new();
    write(&mut data).map_err(|e| Error::io("writing a snapshot", e))?;
    Ok(SnapshotFile::encode(meta, &data))
}

/// Storage that lives in memory. Recovery returns whatever it was created with.
#[derive(Default)]
pub struct MemStorage {
    hard_state: HardState,
    snapshots: Arc<MemSnapshots>,
    entries: Vec<Entry>,
}

impl MemStorage {
    pub fn new() -> Self {
        Self::default()
    }

    fn snapshot_index(&self) -> LogIndex {
        self.snapshots.get().map_or(LogIndex(0), |s| s.meta().index)
    }

    fn first_index(&self) -> LogIndex {
        self.entries
            .first()
            .map_or(self.snapshot_index().next(), |e| e.index)
    }
}

impl Storage for MemStorage {
    fn recovered(&mut self) -> Recovered {
        Recovered {
            hard_state: self.hard_state,
            snapshot: self.snapshots.get().map(|s| (*s).clone()),
            entries: self.entries.clone(),
        }
    }
    fn resync_recovered(&mut self) -> Result<()> {
        Ok(())
    }
    fn save_hard_state(&mut self, hard_state: HardState) -> Result<()> {
        self.hard_state = hard_state;
        Ok(())
    }
    fn append(&mut self, entries: &[Entry]) -> Result<()> {
        if let Some(first) = entries.first() {
            let start = self.first_index();
            assert!(
                first.index >= start && first.index <= self.last_index().next(),
                "append must not leave a gap"
            );
            self.entries.truncate((first.index.0 - start.0) as usize);
            self.entries.extend_from_slice(entries);
        }
        Ok(())
    }
    fn sync(&mut self) -> Result<()> {
        Ok(())
    }
    fn last_index(&self) -> LogIndex {
        self.entries
            .last()
            .map_or(self.snapshot_index(), |e| e.index)
    }
    fn install_snapshot(&mut self, file: &SnapshotFile) -> Result<()> {
        let meta = file.meta();
        self.snapshots.set(file.clone());
        let entries = std::mem::take(&mut self.entries);
        self.entries = resume_log(meta, entries, "memory")?.0;
        Ok(())
    }
    fn compact(&mut self, index: LogIndex) -> Result<()> {
        self.entries.retain(|e| e.index > index);
        Ok(())
    }
    fn snapshot_store(&self) -> Arc<dyn SnapshotStore> {
        self.snapshots.clone()
    }
}
