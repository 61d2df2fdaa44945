//! Durable state: the hard state (term, vote) and the log. [`Storage`] is the
//! seam; [`FileStorage`] is the write-ahead log used in production and
//! [`MemStorage`] keeps everything in memory (tests, and the base of the
//! simulated disk).

mod file;

pub use file::FileStorage;

use crate::raft::{Entry, HardState, LogIndex};
use crate::Result;

/// Where a node keeps what must survive a crash.
///
/// Ordering duties (the driver honours them): `save_hard_state` is durable when
/// it returns; `append` is durable only after `sync`. Nothing that depends on
/// either may leave the node before that.
pub trait Storage: Send {
    /// The state found at open: the hard state and every log entry, in order.
    fn recovered(&mut self) -> (HardState, Vec<Entry>);
    /// Replaces the hard state, durably.
    fn save_hard_state(&mut self, hard_state: HardState) -> Result<()>;
    /// Appends `entries` (contiguous), first removing any stored entry at or
    /// after `entries[0].index`. Not durable until `sync`.
    fn append(&mut self, entries: &[Entry]) -> Result<()>;
    /// Makes every append so far durable.
    fn sync(&mut self) -> Result<()>;
    /// The index of the last stored entry.
    fn last_index(&self) -> LogIndex;
    /// How long the next `sync` takes beyond its own work: a simulated disk's
    /// latency (the disk task waits it out before syncing, so a crash in
    /// between loses the unsynced writes). Real storage: zero.
    fn sync_delay(&mut self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// Storage that lives in memory. Recovery returns whatever it was created with.
#[derive(Default)]
pub struct MemStorage {
    hard_state: HardState,
    entries: Vec<Entry>,
}

impl MemStorage {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Storage for MemStorage {
    fn recovered(&mut self) -> (HardState, Vec<Entry>) {
        (self.hard_state, self.entries.clone())
    }
    fn save_hard_state(&mut self, hard_state: HardState) -> Result<()> {
        self.hard_state = hard_state;
        Ok(())
    }
    fn append(&mut self, entries: &[Entry]) -> Result<()> {
        if let Some(first) = entries.first() {
            assert!(
                first.index.0 >= 1 && first.index.0 <= self.entries.len() as u64 + 1,
                "append must not leave a gap"
            );
            self.entries.truncate(first.index.0 as usize - 1);
            self.entries.extend_from_slice(entries);
        }
        Ok(())
    }
    fn sync(&mut self) -> Result<()> {
        Ok(())
    }
    fn last_index(&self) -> LogIndex {
        LogIndex(self.entries.len() as u64)
    }
}
