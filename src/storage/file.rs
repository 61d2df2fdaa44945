//! The file write-ahead log: one directory per node holding
//!
//! - `wal`: the magic `LATWAL01`, then one record per entry:
//!   `[payload length: u32 LE][CRC-32 of payload: u32 LE][payload]`, where the
//!   payload is `[term: u64 LE][index: u64 LE][data]`;
//! - `hardstate`: `LATHS001`, term, vote (0 = none), CRC-32 of those 24 bytes;
//!   replaced atomically (write a temporary file, sync, rename, sync the directory);
//! - `LOCK`: held while a process has the directory open.
//!
//! Recovery after a crash at any moment: a torn or corrupt record with nothing
//! valid after it is a torn *tail*, written but never synced, so it was never
//! acknowledged: it is cut off with a warning. A bad record followed by a valid
//! one is corruption of acknowledged data: opening fails with an error naming
//! the file and the offset, and nothing is skipped.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::Storage;
use crate::raft::{Entry, HardState, LogIndex, NodeId, Term};
use crate::{Error, Result};

const WAL_MAGIC: &[u8; 8] = b"LATWAL01";
const HARD_STATE_MAGIC: &[u8; 8] = b"LATHS001";
const RECORD_HEADER_BYTES: usize = 8;
/// Term and index precede the data in every payload.
const PAYLOAD_PREFIX_BYTES: usize = 16;
/// No entry is larger: a key (4 KiB), a value (1 MiB) and framing fit easily.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 16 << 20;

/// The largest append buffer kept for the next append.
const WRITE_BUFFER_KEPT_BYTES_MAX: usize = 8 << 20;

pub struct FileStorage {
    dir: PathBuf,
    wal: File,
    wal_path: PathBuf,
    /// Byte offset of each entry's record: `offsets[i]` holds index `i + 1`.
    offsets: Vec<u64>,
    /// Where the next record goes.
    end: u64,
    hard_state: HardState,
    recovered: Option<Vec<Entry>>,
    /// The records of one append, encoded, kept between appends: a fresh
    /// buffer per append cost the leader page faults and zeroing (about 3%
    /// of its CPU under load).
    write_buffer: Vec<u8>,
    /// Keeps the directory locked for as long as this storage lives.
    _lock: File,
}

impl FileStorage {
    /// Opens (creating if needed) the node's data directory and recovers it.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(format!("opening {}", lock_path.display()), e))?;
        lock.try_lock().map_err(|e| match e {
            fs::TryLockError::WouldBlock => Error::Storage {
                path: dir.display().to_string(),
                offset: None,
                reason: "the data directory is in use by another process".into(),
            },
            fs::TryLockError::Error(e) => Error::io(format!("locking {}", lock_path.display()), e),
        })?;

        let hard_state = read_hard_state(&dir.join("hardstate"))?;
        let wal_path = dir.join("wal");
        let is_new = !wal_path.exists();
        let mut wal = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&wal_path)
            .map_err(|e| Error::io(format!("opening {}", wal_path.display()), e))?;
        let mut bytes = Vec::new();
        wal.read_to_end(&mut bytes)
            .map_err(|e| Error::io(format!("reading {}", wal_path.display()), e))?;
        let recovery = recover(&bytes, &wal_path)?;
        if bytes.len() < WAL_MAGIC.len() {
            // New, or a crash while creating it: start with a fresh header.
            wal.set_len(0)
                .and_then(|()| wal.write_all_at(WAL_MAGIC, 0))
                .and_then(|()| wal.sync_all())
                .map_err(|e| Error::io(format!("initializing {}", wal_path.display()), e))?;
        } else if recovery.valid_bytes < bytes.len() as u64 {
            warn!(
                file = %wal_path.display(),
                offset = recovery.valid_bytes,
                dropped_bytes = bytes.len() as u64 - recovery.valid_bytes,
                "torn tail record cut off (never synced, so never acknowledged)"
            );
            wal.set_len(recovery.valid_bytes)
                .and_then(|()| wal.sync_all())
                .map_err(|e| Error::io(format!("truncating {}", wal_path.display()), e))?;
        }
        if is_new {
            sync_dir(&dir)?;
        }
        let entries = recovery.entries;
        if let Some(last) = entries.last() {
            if last.term > hard_state.term {
                return Err(Error::Storage {
                    path: wal_path.display().to_string(),
                    offset: None,
                    reason: format!(
                        "last entry has term {} beyond the saved term {}: the hard state is stale",
                        last.term, hard_state.term
                    ),
                });
            }
        }
        info!(
            dir = %dir.display(),
            term = hard_state.term.0,
            entries = entries.len(),
            "storage recovered"
        );
        Ok(FileStorage {
            dir,
            wal,
            wal_path,
            offsets: recovery.offsets,
            end: recovery.valid_bytes.max(WAL_MAGIC.len() as u64),
            hard_state,
            recovered: Some(entries),
            write_buffer: Vec::new(),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Storage for FileStorage {
    fn recovered(&mut self) -> (HardState, Vec<Entry>) {
        (self.hard_state, self.recovered.take().unwrap_or_default())
    }

    fn save_hard_state(&mut self, hard_state: HardState) -> Result<()> {
        let mut bytes = Vec::with_capacity(28);
        bytes.extend_from_slice(HARD_STATE_MAGIC);
        bytes.extend_from_slice(&hard_state.term.0.to_le_bytes());
        bytes.extend_from_slice(&hard_state.vote.map_or(0, |v| v.0).to_le_bytes());
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let tmp = self.dir.join("hardstate.tmp");
        let path = self.dir.join("hardstate");
        let io = |what: &str, e| Error::io(format!("{what} {}", tmp.display()), e);
        let mut file = File::create(&tmp).map_err(|e| io("creating", e))?;
        file.write_all(&bytes).map_err(|e| io("writing", e))?;
        file.sync_all().map_err(|e| io("syncing", e))?;
        fs::rename(&tmp, &path).map_err(|e| io("renaming", e))?;
        sync_dir(&self.dir)?;
        self.hard_state = hard_state;
        Ok(())
    }

    fn append(&mut self, entries: &[Entry]) -> Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let last_index = self.offsets.len() as u64;
        assert!(
            first.index.0 >= 1 && first.index.0 <= last_index + 1,
            "append must not leave a gap: first {} after last {}",
            first.index,
            last_index
        );
        if first.index.0 <= last_index {
            let cut = self.offsets[first.index.0 as usize - 1];
            // Sync the cut before overwriting: otherwise, after a power loss,
            // new bytes could land while old records past them survive.
            self.wal
                .set_len(cut)
                .and_then(|()| self.wal.sync_data())
                .map_err(|e| Error::io(format!("truncating {}", self.wal_path.display()), e))?;
            self.offsets.truncate(first.index.0 as usize - 1);
            self.end = cut;
        }
        let mut buffer = std::mem::take(&mut self.write_buffer);
        buffer.clear();
        buffer.reserve(
            entries
                .iter()
                .map(|e| RECORD_HEADER_BYTES + PAYLOAD_PREFIX_BYTES + e.data.len())
                .sum(),
        );
        let offsets_before = self.offsets.len();
        for entry in entries {
            self.offsets.push(self.end + buffer.len() as u64);
            encode_record(entry, &mut buffer);
        }
        let written = self.wal.write_all_at(&buffer, self.end);
        let bytes = buffer.len() as u64;
        // Keep an ordinary batch's buffer; let a rare huge one go.
        if buffer.capacity() <= WRITE_BUFFER_KEPT_BYTES_MAX {
            self.write_buffer = buffer;
        }
        if let Err(e) = written {
            // Nothing past `end` counts: the records may be partly written.
            self.offsets.truncate(offsets_before);
            return Err(Error::io(format!("writing {}", self.wal_path.display()), e));
        }
        self.end += bytes;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.wal
            .sync_data()
            .map_err(|e| Error::io(format!("syncing {}", self.wal_path.display()), e))
    }

    fn last_index(&self) -> LogIndex {
        LogIndex(self.offsets.len() as u64)
    }
}

fn encode_record(entry: &Entry, out: &mut Vec<u8>) {
    let payload_len = PAYLOAD_PREFIX_BYTES + entry.data.len();
    assert!(
        payload_len <= RECORD_PAYLOAD_BYTES_MAX,
        "entry too large for a WAL record"
    );
    let start = out.len();
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&entry.term.0.to_le_bytes());
    out.extend_from_slice(&entry.index.0.to_le_bytes());
    out.extend_from_slice(&entry.data);
    let crc = crc32fast::hash(&out[start + RECORD_HEADER_BYTES..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A record that parses and whose checksum holds, at `offset`.
fn decode_record(bytes: &[u8], offset: usize) -> std::result::Result<(Entry, usize), String> {
    let header = bytes
        .get(offset..offset + RECORD_HEADER_BYTES)
        .ok_or("truncated record header")?;
    let payload_len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if !(PAYLOAD_PREFIX_BYTES..=RECORD_PAYLOAD_BYTES_MAX).contains(&payload_len) {
        return Err(format!("impossible record length {payload_len}"));
    }
    let start = offset + RECORD_HEADER_BYTES;
    let payload = bytes
        .get(start..start + payload_len)
        .ok_or("truncated record payload")?;
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch".into());
    }
    let term = u64::from_le_bytes(payload[0..8].try_into().expect("8 bytes"));
    let index = u64::from_le_bytes(payload[8..16].try_into().expect("8 bytes"));
    let entry = Entry {
        term: Term(term),
        index: LogIndex(index),
        data: payload[PAYLOAD_PREFIX_BYTES..].to_vec(),
    };
    Ok((entry, start + payload_len))
}

struct Recovery {
    entries: Vec<Entry>,
    offsets: Vec<u64>,
    /// Length of the valid prefix of the file.
    valid_bytes: u64,
}

fn corruption(path: &Path, offset: usize, reason: String) -> Error {
    Error::Storage {
        path: path.display().to_string(),
        offset: Some(offset as u64),
        reason,
    }
}

fn recover(bytes: &[u8], path: &Path) -> Result<Recovery> {
    let mut recovery = Recovery {
        entries: Vec::new(),
        offsets: Vec::new(),
        valid_bytes: 0,
    };
    if bytes.len() < WAL_MAGIC.len() {
        // A crash while creating the file leaves a prefix of the magic.
        if WAL_MAGIC.starts_with(bytes) {
            return Ok(recovery);
        }
        return Err(corruption(path, 0, "not a Lattice WAL (bad magic)".into()));
    }
    if &bytes[..WAL_MAGIC.len()] != WAL_MAGIC {
        return Err(corruption(path, 0, "not a Lattice WAL (bad magic)".into()));
    }
    let mut offset = WAL_MAGIC.len();
    while offset < bytes.len() {
        match decode_record(bytes, offset) {
            Ok((entry, next)) => {
                let expected = recovery.entries.len() as u64 + 1;
                if entry.index.0 != expected {
                    return Err(corruption(
                        path,
                        offset,
                        format!(
                            "record holds index {} where {} was expected",
                            entry.index, expected
                        ),
                    ));
                }
                if recovery
                    .entries
                    .last()
                    .is_some_and(|last| last.term > entry.term)
                {
                    return Err(corruption(
                        path,
                        offset,
                        format!("term goes backwards at index {}", entry.index),
                    ));
                }
                recovery.offsets.push(offset as u64);
                recovery.entries.push(entry);
                offset = next;
            }
            Err(reason) => {
                let expected = recovery.entries.len() as u64 + 1;
                if let Some(later) = find_valid_record_after(bytes, offset, expected) {
                    return Err(corruption(
                        path,
                        offset,
                        format!("{reason}, with a valid record after it at offset {later}: acknowledged data is damaged"),
                    ));
                }
                break;
            }
        }
    }
    // Either the end of the file or the start of a torn tail.
    recovery.valid_bytes = offset as u64;
    Ok(recovery)
}

/// Whether any later position holds a record that parses and checks out.
fn find_valid_record_after(bytes: &[u8], offset: usize, expected_index: u64) -> Option<usize> {
    // Only a record that could follow the damaged one counts, so a client's
    // value that happens to contain an encoded record does not.
    (offset + 1
        ..bytes
            .len()
            .saturating_sub(RECORD_HEADER_BYTES + PAYLOAD_PREFIX_BYTES - 1))
        .find(|&candidate| {
            decode_record(bytes, candidate).is_ok_and(|(entry, _)| entry.index.0 >= expected_index)
        })
}

fn read_hard_state(path: &Path) -> Result<HardState> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HardState::default()),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let bad = |reason: &str| Error::Storage {
        path: path.display().to_string(),
        offset: Some(0),
        reason: reason.to_string(),
    };
    if bytes.len() != 28 || &bytes[..8] != HARD_STATE_MAGIC {
        return Err(bad("not a Lattice hard state file (bad length or magic)"));
    }
    let crc = u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[..24]) != crc {
        return Err(bad("checksum mismatch"));
    }
    let term = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let vote = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    Ok(HardState {
        term: Term(term),
        vote: (vote != 0).then_some(NodeId(vote)),
    })
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(count: u64) -> Vec<Entry> {
        (1..=count)
            .map(|i| Entry {
                term: Term(1 + i / 3),
                index: LogIndex(i),
                data: format!("value-{i}").into_bytes(),
            })
            .collect()
    }

    /// A small log on disk: its bytes and each record's start offset.
    fn small_log(dir: &Path, count: u64) -> (Vec<u8>, Vec<u64>) {
        let mut storage = FileStorage::open(dir).expect("open");
        storage
            .save_hard_state(HardState {
                term: Term(9),
                vote: Some(NodeId(2)),
            })
            .expect("hard state");
        storage.append(&entries(count)).expect("append");
        storage.sync().expect("sync");
        let offsets = storage.offsets.clone();
        drop(storage);
        (fs::read(dir.join("wal")).expect("read"), offsets)
    }

    fn reopen_with(dir: &Path, bytes: &[u8]) -> Result<Vec<Entry>> {
        fs::write(dir.join("wal"), bytes).expect("write");
        let mut storage = FileStorage::open(dir)?;
        Ok(storage.recovered().1)
    }

    #[test]
    fn entries_and_hard_state_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        small_log(dir.path(), 10);
        let mut storage = FileStorage::open(dir.path()).expect("reopen");
        let (hard_state, recovered) = storage.recovered();
        assert_eq!(
            hard_state,
            HardState {
                term: Term(9),
                vote: Some(NodeId(2))
            }
        );
        assert_eq!(recovered, entries(10));
        // Overwriting a suffix (a follower's truncation) then appending.
        let replacement = vec![Entry {
            term: Term(9),
            index: LogIndex(4),
            data: b"new".to_vec(),
        }];
        storage.append(&replacement).expect("append");
        storage.sync().expect("sync");
        drop(storage);
        let mut storage = FileStorage::open(dir.path()).expect("reopen");
        let recovered = storage.recovered().1;
        assert_eq!(recovered.len(), 4);
        assert_eq!(recovered[3], replacement[0]);
        assert_eq!(recovered[..3], entries(3)[..]);
    }

    #[test]
    fn truncation_at_every_offset_recovers_exactly_the_complete_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bytes, offsets) = small_log(dir.path(), 6);
        let all = entries(6);
        for cut in 0..bytes.len() {
            let recovered = reopen_with(dir.path(), &bytes[..cut])
                .unwrap_or_else(|e| panic!("cut at {cut}: a torn tail must recover, got {e}"));
            // Records that end at or before the cut survive; nothing else does.
            let complete = (0..offsets.len())
                .filter(|&i| offsets.get(i + 1).map_or(bytes.len() as u64, |&o| o) <= cut as u64)
                .count();
            assert_eq!(recovered, all[..complete], "cut at {cut}");
            // The torn bytes are gone from the file: new appends land cleanly.
            let mut storage = FileStorage::open(dir.path()).expect("reopen after repair");
            let next = Entry {
                term: Term(5),
                index: LogIndex(complete as u64 + 1),
                data: b"next".to_vec(),
            };
            storage.append(std::slice::from_ref(&next)).expect("append");
            storage.sync().expect("sync");
            drop(storage);
            let mut storage = FileStorage::open(dir.path()).expect("reopen after append");
            let mut expected = all[..complete].to_vec();
            expected.push(next);
            assert_eq!(storage.recovered().1, expected, "append after cut at {cut}");
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_is_caught() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bytes, offsets) = small_log(dir.path(), 6);
        let last_record = *offsets.last().expect("records") as usize;
        let all = entries(6);
        let (mut errors, mut tails) = (0, 0);
        for offset in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[offset] ^= 1 << bit;
                let result = reopen_with(dir.path(), &damaged);
                if offset >= last_record {
                    // Damage in the last record looks like a torn write: it is
                    // cut off, and everything before it is intact.
                    let recovered =
                        result.unwrap_or_else(|e| panic!("offset {offset} bit {bit}: {e}"));
                    assert_eq!(recovered, all[..5], "offset {offset} bit {bit}");
                    tails += 1;
                } else {
                    // Damage before the tail is an error naming file and offset.
                    let error = result.expect_err("corruption before the tail must not be skipped");
                    let text = error.to_string();
                    assert!(text.contains("wal"), "names the file: {text}");
                    let record_start = if offset < WAL_MAGIC.len() {
                        0
                    } else {
                        *offsets
                            .iter()
                            .filter(|&&o| o as usize <= offset)
                            .max()
                            .expect("a record") as usize
                    };
                    assert!(
                        text.contains(&format!("offset {record_start}")),
                        "names offset {record_start}: {text}"
                    );
                    errors += 1;
                }
            }
        }
        assert_eq!(errors + tails, bytes.len() * 8);
        assert!(errors > 0 && tails > 0);
    }

    #[test]
    fn a_damaged_hard_state_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        small_log(dir.path(), 1);
        let path = dir.path().join("hardstate");
        let good = fs::read(&path).expect("read");
        for offset in 0..good.len() {
            let mut bad = good.clone();
            bad[offset] ^= 0x10;
            fs::write(&path, &bad).expect("write");
            let error = FileStorage::open(dir.path())
                .err()
                .expect("damaged hard state must fail");
            assert!(error.to_string().contains("hardstate"), "{error}");
        }
        fs::write(&path, &good[..10]).expect("write");
        assert!(
            FileStorage::open(dir.path()).is_err(),
            "a short hard state file fails"
        );
    }

    #[test]
    fn a_second_process_cannot_open_the_same_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = FileStorage::open(dir.path()).expect("open");
        let error = FileStorage::open(dir.path()).err().expect("locked");
        assert!(error.to_string().contains("in use"), "{error}");
    }

    #[test]
    fn garbage_instead_of_a_wal_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("wal"), b"this is not a write-ahead log").expect("write");
        let error = FileStorage::open(dir.path()).err().expect("bad magic");
        assert!(error.to_string().contains("bad magic"), "{error}");
    }
}
