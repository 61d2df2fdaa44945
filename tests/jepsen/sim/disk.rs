//! The simulated disk behind `lattice::storage::Storage`: it survives a
//! crash but loses what was not synced, takes (seeded, random) time to sync,
//! and returns the storage errors the disk-error fault arms (fsyncgate's EIO,
//! ENOSPC), keeping failed writes readable until power is lost.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lattice::raft::{Entry, HardState, LogIndex, SnapshotMeta};
use lattice::storage::{resume_log, MemSnapshots, Recovered, SnapshotFile, SnapshotStore, Storage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::now;

/// How long a sync takes: uniform in `[0, sync_max]`, and with
/// `stall_probability` a stall uniform in `stall`.
#[derive(Clone, Copy, Debug)]
pub struct DiskLatency {
    pub sync_max: Duration,
    pub stall_probability: f64,
    pub stall: (Duration, Duration),
}

impl DiskLatency {
    /// A healthy disk: a few milliseconds, so every "before it is durable"
    /// window is open a little.
    pub const BASELINE: DiskLatency = DiskLatency {
        sync_max: Duration::from_millis(3),
        stall_probability: 0.0,
        stall: (Duration::ZERO, Duration::ZERO),
    };
    /// A struggling disk: slow syncs and stalls of 100 ms or more.
    pub const SLOW: DiskLatency = DiskLatency {
        sync_max: Duration::from_millis(40),
        stall_probability: 0.05,
        stall: (Duration::from_millis(100), Duration::from_millis(500)),
    };
    /// A disk that hangs on every sync for a while.
    pub const STALLED: DiskLatency = DiskLatency {
        sync_max: Duration::ZERO,
        stall_probability: 1.0,
        stall: (Duration::from_millis(150), Duration::from_millis(400)),
    };
}

/// One node's disk: what is durable, and writes not yet synced. Snapshots
/// are written atomically (as `FileStorage` does with a rename).
/// A storage error the disk returns once, when armed (the storage-fault
/// nemesis).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskError {
    /// fsync fails with EIO, and the writes it was to make durable never
    /// reach the disk (the 2018 "fsyncgate": Linux marks them clean, so a
    /// retried fsync succeeds and holds nothing). They stay readable, as in
    /// Linux's page cache: a process restarted on the same kernel reads
    /// them back, and a power loss drops them (`SimDisk::cached`).
    SyncEio,
    /// A write fails with ENOSPC: the disk is full, nothing of it is written.
    WriteEnospc,
}

pub struct SimDisk {
    /// Draws sync latencies (seeded per node: the run replays).
    rng: StdRng,
    pub latency: DiskLatency,
    /// The next write or sync (whichever the error is of) fails.
    pub fail_next: Option<DiskError>,
    /// Errors returned so far.
    pub errors_returned: usize,
    /// An error was returned since the disk was last opened (by the
    /// node's current process).
    pub failed_since_open: bool,
    hard_state: HardState,
    snapshots: Arc<MemSnapshots>,
    /// The durable log by index (compaction removes its start).
    durable: BTreeMap<LogIndex, Entry>,
    /// Unsynced appends, oldest first: (when, entries). Each truncates from
    /// its first index, then extends.
    pending: Vec<(Duration, Vec<Entry>)>,
    /// Appends whose fsync failed: in the page cache only, marked clean, so
    /// no later sync writes them. A restarted process reads them over the
    /// durable log (until `Storage::resync_recovered` writes them again); a
    /// power loss drops them.
    cached: BTreeMap<LogIndex, Entry>,
    /// Appends made durable by the "operating system" this long after they
    /// were written even without a sync (writeback); `None`: only `sync` does.
    writeback_after: Option<Duration>,
}

fn apply_append(log: &mut BTreeMap<LogIndex, Entry>, entries: &[Entry]) {
    if let Some(first) = entries.first() {
        log.split_off(&first.index);
        log.extend(entries.iter().map(|e| (e.index, e.clone())));
    }
}

impl SimDisk {
    pub fn new(seed: u64, writeback_after: Option<Duration>) -> Arc<Mutex<SimDisk>> {
        Arc::new(Mutex::new(SimDisk {
            rng: StdRng::seed_from_u64(seed),
            latency: DiskLatency::BASELINE,
            fail_next: None,
            errors_returned: 0,
            failed_since_open: false,
            hard_state: HardState::default(),
            snapshots: Arc::new(MemSnapshots::default()),
            durable: BTreeMap::new(),
            pending: Vec::new(),
            cached: BTreeMap::new(),
            writeback_after,
        }))
    }

    fn sync_delay(&mut self) -> Duration {
        let latency = self.latency;
        if latency.stall_probability > 0.0 && self.rng.random_bool(latency.stall_probability) {
            return self.rng.random_range(latency.stall.0..=latency.stall.1);
        }
        self.rng.random_range(Duration::ZERO..=latency.sync_max)
    }

    /// The machine lost power: unsynced writes are gone, and so are the
    /// pages a failed fsync left in the cache.
    pub fn crash(&mut self) -> usize {
        let lost = self.pending.iter().map(|(_, e)| e.len()).sum::<usize>() + self.cached.len();
        self.pending.clear();
        self.cached.clear();
        lost
    }

    /// Durable entries from `entries[0].index` on are replaced, and cached
    /// ones too (their pages now hold the new bytes).
    fn make_durable(&mut self, entries: &[Entry]) {
        if let Some(first) = entries.first() {
            self.cached.split_off(&first.index);
        }
        apply_append(&mut self.durable, entries);
    }

    fn flush_older_than(&mut self, now: Duration) {
        let Some(after) = self.writeback_after else {
            return;
        };
        let cut = self
            .pending
            .iter()
            .take_while(|(at, _)| *at + after <= now)
            .count();
        for (_, entries) in self.pending.drain(..cut).collect::<Vec<_>>() {
            self.make_durable(&entries);
        }
    }
}

/// A node incarnation's handle on its disk.
pub struct SimStorage {
    disk: Arc<Mutex<SimDisk>>,
    last_index: LogIndex,
    /// The snapshot the log continues (as `FileStorage`'s log base).
    log_base: LogIndex,
    recovered: Option<Recovered>,
}

impl SimStorage {
    /// Opens the disk as a restarted process would: what is durable, with
    /// what a failed fsync left in the cache read over it (a process restart
    /// keeps the kernel's cache; unsynced writes it drops, as if they never
    /// made it). A gap between the snapshot and the log fails, as
    /// `FileStorage` does.
    pub fn open(disk: Arc<Mutex<SimDisk>>) -> lattice::Result<SimStorage> {
        let recovered = {
            let mut d = disk.lock().expect("disk");
            d.pending.clear();
            d.failed_since_open = false;
            let snapshot = d.snapshots.get().map(|s| (*s).clone());
            let meta = snapshot
                .as_ref()
                .map_or(SnapshotMeta::default(), SnapshotFile::meta);
            // The cache's pages over the disk's; the log is read up to its
            // first hole (as `FileStorage` stops at the first record that
            // does not decode), so a hole a power loss left shortens it.
            let mut visible = d.durable.clone();
            visible.extend(d.cached.iter().map(|(i, e)| (*i, e.clone())));
            let mut entries: Vec<Entry> = Vec::new();
            for entry in visible.into_values() {
                if entries
                    .last()
                    .is_some_and(|last| last.index.next() != entry.index)
                {
                    break;
                }
                entries.push(entry);
            }
            let (entries, is_reset) = resume_log(meta, entries, "the simulated disk")?;
            if is_reset {
                d.durable.clear();
                d.cached.clear();
            }
            if let Some(last) = entries.last().filter(|e| e.term > d.hard_state.term) {
                return Err(lattice::Error::Storage {
                    path: "the simulated disk".into(),
                    offset: None,
                    reason: format!(
                        "last entry has term {} beyond the saved term {}",
                        last.term, d.hard_state.term
                    ),
                });
            }
            Recovered {
                hard_state: d.hard_state,
                snapshot,
                entries,
            }
        };
        let last_index = recovered
            .entries
            .last()
            .map_or(recovered.snapshot_meta().index, |e| e.index);
        Ok(SimStorage {
            disk,
            last_index,
            log_base: recovered.snapshot_meta().index,
            recovered: Some(recovered),
        })
    }
}

impl Storage for SimStorage {
    fn recovered(&mut self) -> Recovered {
        self.recovered.take().unwrap_or_default()
    }
    /// What the cache held is written again and synced: durable now.
    fn resync_recovered(&mut self) -> lattice::Result<()> {
        let mut d = self.disk.lock().expect("disk");
        let cached: Vec<Entry> = std::mem::take(&mut d.cached).into_values().collect();
        d.make_durable(&cached);
        Ok(())
    }
    fn save_hard_state(&mut self, hard_state: HardState) -> lattice::Result<()> {
        self.disk.lock().expect("disk").hard_state = hard_state;
        Ok(())
    }
    fn append(&mut self, entries: &[Entry]) -> lattice::Result<()> {
        let mut d = self.disk.lock().expect("disk");
        d.flush_older_than(now());
        if d.fail_next == Some(DiskError::WriteEnospc) {
            d.fail_next = None;
            d.errors_returned += 1;
            d.failed_since_open = true;
            return Err(lattice::Error::io(
                "appending to the simulated disk",
                io::Error::from_raw_os_error(libc::ENOSPC),
            ));
        }
        if let Some(first) = entries.first() {
            assert!(
                first.index > self.log_base && first.index <= self.last_index.next(),
                "append must not leave a gap or rewrite the snapshot: first {} with last {} and base {}",
                first.index,
                self.last_index,
                self.log_base
            );
        }
        if let Some(last) = entries.last() {
            self.last_index = last.index;
        }
        d.pending.push((now(), entries.to_vec()));
        Ok(())
    }
    fn sync(&mut self) -> lattice::Result<()> {
        let mut d = self.disk.lock().expect("disk");
        if d.fail_next == Some(DiskError::SyncEio) {
            d.fail_next = None;
            d.errors_returned += 1;
            d.failed_since_open = true;
            // Never written, but readable until power is lost; the
            // truncation each append made of the entries it replaced did
            // happen.
            for (_, entries) in std::mem::take(&mut d.pending) {
                if let Some(first) = entries.first() {
                    d.durable.split_off(&first.index);
                }
                apply_append(&mut d.cached, &entries);
            }
            return Err(lattice::Error::io(
                "syncing the simulated disk",
                io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        let pending = std::mem::take(&mut d.pending);
        for (_, entries) in pending {
            d.make_durable(&entries);
        }
        Ok(())
    }
    fn last_index(&self) -> LogIndex {
        self.last_index
    }
    fn sync_delay(&mut self) -> Duration {
        self.disk.lock().expect("disk").sync_delay()
    }
    fn install_snapshot(&mut self, file: &SnapshotFile) -> lattice::Result<()> {
        let mut d = self.disk.lock().expect("disk");
        // Durable on return, log reset included (the earlier unsynced
        // appends are written out first, as a sync would).
        let pending = std::mem::take(&mut d.pending);
        for (_, entries) in pending {
            d.make_durable(&entries);
        }
        let meta = file.meta();
        if d.durable.get(&meta.index).map(|e| e.term) != Some(meta.term) {
            d.durable.clear();
            d.cached.clear();
            self.last_index = meta.index;
        }
        self.log_base = meta.index;
        d.snapshots.set(file.clone());
        Ok(())
    }
    fn compact(&mut self, index: LogIndex) -> lattice::Result<()> {
        let mut d = self.disk.lock().expect("disk");
        d.durable = d.durable.split_off(&index.next());
        d.cached = d.cached.split_off(&index.next());
        Ok(())
    }
    fn snapshot_store(&self) -> Arc<dyn SnapshotStore> {
        let d = self.disk.lock().expect("disk");
        Arc::new(SimSnapshots {
            snapshots: d.snapshots.clone(),
            rng: Mutex::new(StdRng::seed_from_u64(d.rng.clone().random())),
        })
    }
}

/// The simulated disk's snapshots: saved atomically, after a seeded delay of
/// up to 30 ms (writing a snapshot takes time; a crash can fall in it).
struct SimSnapshots {
    snapshots: Arc<MemSnapshots>,
    rng: Mutex<StdRng>,
}

impl SnapshotStore for SimSnapshots {
    fn open_latest(&self) -> lattice::Result<Option<Box<dyn lattice::storage::SnapshotReader>>> {
        self.snapshots.open_latest()
    }
    fn latest(&self) -> SnapshotMeta {
        self.snapshots.latest()
    }
    fn save(
        &self,
        meta: SnapshotMeta,
        write: lattice::storage::SnapshotWriter,
    ) -> lattice::Result<u64> {
        self.snapshots.save(meta, write)
    }
    fn save_delay(&self) -> Duration {
        let mut rng = self.rng.lock().expect("rng");
        rng.random_range(Duration::ZERO..=Duration::from_millis(30))
    }
}
