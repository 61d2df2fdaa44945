//! The in-memory view of the log: the entries after the compaction point
//! (`offset`, whose term is kept), the commit index, how far the log was
//! handed to storage and how far storage has made it durable.
//!
//! Invariants, asserted where they could break:
//! - entries are contiguous: `entries[i].index == offset + 1 + i`;
//! - terms never decrease along the log;
//! - `commit` never goes backwards and never passes the last index;
//! - a committed entry is never truncated or replaced;
//! - `offset <= commit`: only committed entries are compacted away.

use super::{Entry, LogIndex, SnapshotMeta, Term};

#[derive(Clone, Debug, Default, Hash)]
pub struct RaftLog {
    /// The index just before `entries[0]`: the compaction point (0 before
    /// any), covered by a snapshot.
    offset: LogIndex,
    /// The term of the entry at `offset`.
    offset_term: Term,
    entries: Vec<Entry>,
    /// Highest index known committed (volatile; relearned after a restart).
    commit: LogIndex,
    /// Highest index handed to storage (by a `Ready`). Entries above it go
    /// out with the next `Ready`.
    persisting: LogIndex,
    /// Highest index storage reported durable. Never above `persisting`.
    persisted: LogIndex,
}

impl RaftLog {
    /// A log recovered from storage: the newest snapshot (committed) and the
    /// log that continues it, all durable. The log may start at or below the
    /// snapshot (the catch-up tail): then its first entry becomes the
    /// compaction point, and the rest is kept.
    pub fn recovered(snapshot: SnapshotMeta, entries: Vec<Entry>) -> Self {
        let mut entries = entries.into_iter().peekable();
        let (offset, offset_term) = match entries.peek() {
            Some(first) if first.index <= snapshot.index => {
                let first = entries.next().expect("peeked");
                (first.index, first.term)
            }
            _ => (snapshot.index, snapshot.term),
        };
        let mut log = RaftLog {
            offset,
            offset_term,
            commit: snapshot.index,
            ..RaftLog::default()
        };
        for entry in entries {
            log.push(entry);
        }
        log.persisting = log.last_index();
        log.persisted = log.last_index();
        assert!(
            log.term(snapshot.index) == Some(snapshot.term),
            "the recovered log continues the snapshot at {} (term {})",
            snapshot.index,
            snapshot.term
        );
        log
    }

    pub fn last_index(&self) -> LogIndex {
        LogIndex(self.offset.0 + self.entries.len() as u64)
    }

    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(self.offset_term, |e| e.term)
    }

    /// The compaction point: entries at and below it are gone from memory.
    pub fn offset(&self) -> SnapshotMeta {
        SnapshotMeta {
            index: self.offset,
            term: self.offset_term,
        }
    }

    pub fn commit(&self) -> LogIndex {
        self.commit
    }

    pub fn persisted(&self) -> LogIndex {
        self.persisted
    }

    /// The term of the entry at `index`; `Term(0)` for index 0; `None` past
    /// the end or below the compaction point.
    pub fn term(&self, index: LogIndex) -> Option<Term> {
        if index == self.offset {
            return Some(self.offset_term);
        }
        self.get(index).map(|e| e.term)
    }

    pub fn get(&self, index: LogIndex) -> Option<&Entry> {
        if index <= self.offset {
            return None;
        }
        self.entries.get((index.0 - self.offset.0 - 1) as usize)
    }

    /// Entries in `[from, to]`, at most `count_max` of them and, past the first,
    /// at most `bytes_max` of payload.
    pub fn slice(
        &self,
        from: LogIndex,
        to: LogIndex,
        count_max: usize,
        bytes_max: usize,
    ) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut index = from;
        while index <= to && out.len() < count_max {
            let Some(entry) = self.get(index) else { break };
            bytes += entry.data.len();
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(entry.clone());
            index = index.next();
        }
        out
    }

    /// The first index of the run of entries with the same term as `index`
    /// (the fast-backtracking hint a follower returns).
    pub fn first_index_of_term_at(&self, index: LogIndex) -> LogIndex {
        let Some(term) = self.term(index) else {
            return self.last_index().next();
        };
        let mut first = index;
        while first.0 > self.offset.0 + 1 && self.term(first.prev()) == Some(term) {
            first = first.prev();
        }
        first
    }

    /// The last index holding an entry of `term`, if any (the leader's side of
    /// fast backtracking). Terms are monotonic, so scan back from the end.
    pub fn last_index_of_term(&self, term: Term) -> Option<LogIndex> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.term <= term)
            .filter(|e| e.term == term)
            .map(|e| e.index)
    }

    /// Appends one entry at the end (leader path).
    pub fn push(&mut self, entry: Entry) {
        assert_eq!(
            entry.index,
            self.last_index().next(),
            "log contiguity: appended entry index must follow the last index"
        );
        assert!(
            entry.term >= self.last_term(),
            "log terms are monotonic: entry {} has term {} below last term {}",
            entry.index,
            entry.term,
            self.last_term()
        );
        self.entries.push(entry);
    }

    /// Follower path: merges `entries` (which follow a matching prev entry)
    /// into the log. Skips entries already present with the same term, truncates
    /// at the first real conflict, appends the rest. Returns the index of the
    /// last entry given (the new match point).
    pub fn merge(&mut self, entries: Vec<Entry>) -> Option<LogIndex> {
        let last_given = entries.last().map(|e| e.index);
        let mut new = entries.into_iter().peekable();
        while let Some(entry) = new.peek() {
            match self.term(entry.index) {
                Some(term) if term == entry.term => {
                    new.next();
                }
                Some(_) => {
                    self.truncate_from(entry.index);
                    break;
                }
                None => break,
            }
        }
        for entry in new {
            self.push(entry);
        }
        if crate::planted::is_planted(crate::planted::Bug::TruncateOnStaleAppend) {
            // Takes the message for the whole truth after its anchor: a stale
            // one cuts entries that were acknowledged.
            if let Some(last) = last_given {
                if last < self.last_index() && last >= self.commit {
                    self.truncate_from(last.next());
                }
            }
        }
        last_given
    }

    /// Drops the entries up to `index` (committed, covered by a snapshot).
    pub fn compact_to(&mut self, index: LogIndex) {
        if index <= self.offset {
            return;
        }
        assert!(
            index <= self.commit && index <= self.persisting,
            "only committed entries handed to storage are compacted: {} with commit {}",
            index,
            self.commit
        );
        let term = self.term(index).expect("index is in the log");
        self.entries.drain(..(index.0 - self.offset.0) as usize);
        self.offset = index;
        self.offset_term = term;
    }

    /// A snapshot from the leader replaces the log up to `snapshot.index`: the
    /// entries after it are kept if the log holds the snapshot's last entry
    /// (they follow a committed entry), else the log is emptied. The snapshot
    /// is committed.
    pub fn install(&mut self, snapshot: SnapshotMeta) {
        // The planted bug installs a snapshot at or below the commit index
        // and, as figure 13's step 7 says for a snapshot that does not match,
        // discards the whole log: acknowledged entries after it go too.
        let is_suffix_kept = snapshot.index >= self.offset
            && self.term(snapshot.index) == Some(snapshot.term)
            && !crate::planted::is_planted(crate::planted::Bug::InstallSnapshotOlderThanCommit);
        // The snapshot is handed to storage with the next write; it is
        // durable (and `persisted` reaches it) only when storage says so.
        if is_suffix_kept {
            self.entries
                .drain(..(snapshot.index.0 - self.offset.0) as usize);
            self.persisting = self.persisting.max(snapshot.index);
        } else {
            self.entries.clear();
            self.persisting = snapshot.index;
            self.persisted = self.persisted.min(snapshot.index);
        }
        self.offset = snapshot.index;
        self.offset_term = snapshot.term;
        // Above the commit index on the correct path (the core refuses older
        // snapshots); only the planted bug moves it back.
        self.commit = snapshot.index;
    }

    /// Removes every entry at `index` and after. Never below the commit index.
    fn truncate_from(&mut self, index: LogIndex) {
        assert!(
            index > self.commit,
            "committed entries are never truncated: truncating from {} with commit {}",
            index,
            self.commit
        );
        assert!(index > self.offset, "truncation below the log start");
        self.entries
            .truncate((index.0 - self.offset.0 - 1) as usize);
        // The truncation reaches storage with the next write (its first
        // entry's index says where to cut); what was durable above it is not
        // ours any more.
        self.persisting = self.persisting.min(index.prev());
        self.persisted = self.persisted.min(index.prev());
    }

    /// Moves the commit index forward to `index` (never backwards).
    pub fn commit_to(&mut self, index: LogIndex) -> bool {
        if index <= self.commit {
            return false;
        }
        assert!(
            index <= self.last_index(),
            "commit index {} past the last index {}",
            index,
            self.last_index()
        );
        self.commit = index;
        true
    }

    /// Highest index handed to storage so far.
    pub fn persisting(&self) -> LogIndex {
        self.persisting
    }

    /// Hands the entries not yet given to storage (they start where storage
    /// must truncate, if a conflict cut the log).
    pub fn take_unpersisted(&mut self) -> Vec<Entry> {
        let entries = self.slice(
            self.persisting.next(),
            self.last_index(),
            usize::MAX,
            usize::MAX,
        );
        self.persisting = self.last_index();
        entries
    }

    /// Storage made its log durable up to the entry (`index`, `term`). An
    /// answer about entries since truncated (their term differs now) is
    /// ignored: (index, term) names one entry for good, so a match means
    /// everything up to `index` is ours and durable.
    pub fn persisted_to(&mut self, index: LogIndex, term: Term) {
        if index > self.persisted && index <= self.persisting && self.term(index) == Some(term) {
            self.persisted = index;
        }
    }
}
