//! The file write-ahead log: one directory per node holding
//!
//! - `log/<first index>.seg`: the log, split into segments of about
//!   `segment_bytes` each. A segment is the magic `LATWAL01`, then one record
//!   per entry: `[payload length: u32 LE][CRC-32 of payload: u32 LE][payload]`,
//!   where the payload is `[term: u64 LE][index: u64 LE][data]`. A segment is
//!   synced before the next one starts, so only the newest can end torn.
//!   Compaction deletes whole segments below the kept tail.
//! - `snap/<index>.snap`: the newest snapshot (see [`super::snapshot`]),
//!   written as `<index>.snap.tmp`, synced, renamed and the directory synced;
//!   the previous snapshot is deleted only after that.
//! - `hardstate`: `LATHS001`, term, vote (0 = none), CRC-32 of those 24 bytes;
//!   replaced atomically (write a temporary file, sync, rename, sync the directory);
//! - `LOCK`: held while a process has the directory open.
//!
//! Recovery after a crash at any moment: a torn or corrupt record at the end
//! of the newest segment with nothing valid after it is a torn *tail*,
//! written but never synced, so never acknowledged: it is cut off with a
//! warning. A bad record anywhere else is corruption of acknowledged data:
//! opening fails with an error naming the file and the offset, and nothing is
//! skipped. So is a corrupt snapshot, and a gap between the snapshot and the
//! log. A log from before segments (one `wal` file) is moved into `log/`.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use super::snapshot::{self, ChecksumWriter, FileReader, SnapshotFile, HEADER_BYTES};
use super::{resume_log, Recovered, SnapshotReader, SnapshotStore, SnapshotWriter, Storage};
use crate::planted::{is_planted, Bug};
use crate::raft::{Entry, HardState, LogIndex, NodeId, SnapshotMeta, Term};
use crate::{Error, Result};

const WAL_MAGIC: &[u8; 8] = b"LATWAL01";
const HARD_STATE_MAGIC: &[u8; 8] = b"LATHS001";
const RECORD_HEADER_BYTES: usize = 8;
/// Term and index precede the data in every payload.
const PAYLOAD_PREFIX_BYTES: usize = 16;
/// No entry is larger: a key (4 KiB), a value (1 MiB) and framing fit easily.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 16 << 20;
/// A new segment starts once the current one holds this much.
pub const SEGMENT_BYTES_DEFAULT: u64 = 8 << 20;

/// The largest append buffer kept for the next append.
const WRITE_BUFFER_KEPT_BYTES_MAX: usize = 8 << 20;

/// One segment file of the log.
struct Segment {
    first: LogIndex,
    path: PathBuf,
    /// Byte offset of each record: `offsets[i]` holds index `first + i`.
    offsets: Vec<u64>,
    /// Where the next record goes.
    end: u64,
    /// CRC-32 of the segment's bytes up to `end` as recovery read them (0
    /// for a segment started since): `resync_recovered` writes back only
    /// what recovery read.
    recovered_crc: u32,
}

impl Segment {
    fn next_index(&self) -> LogIndex {
        LogIndex(self.first.0 + self.offsets.len() as u64)
    }
}

/// The snapshot directory, shared by the disk task (installs), the snapshot
/// task (saves) and the peer senders (reads). Publishing a new snapshot and
/// deleting the older ones happen under one lock, so a reader never opens a
/// file being deleted (one already open stays readable).
struct FileSnapshots {
    snap_dir: PathBuf,
    newest: Mutex<Option<(SnapshotMeta, PathBuf)>>,
}

impl SnapshotStore for FileSnapshots {
    fn open_latest(&self) -> Result<Option<Box<dyn SnapshotReader>>> {
        let newest = self.newest.lock().expect("snapshot lock");
        match newest.as_ref() {
            Some((_, path)) => Ok(Some(Box::new(FileReader::open(path)?))),
            None => Ok(None),
        }
    }

    fn latest(&self) -> SnapshotMeta {
        self.newest
            .lock()
            .expect("snapshot lock")
            .as_ref()
            .map_or(SnapshotMeta::default(), |(meta, _)| *meta)
    }

    fn save(&self, meta: SnapshotMeta, write: SnapshotWriter) -> Result<u64> {
        if meta.index <= self.latest().index {
            return Ok(0);
        }
        let bytes = self.write(meta, write)?;
        info!(
            index = meta.index.0,
            term = meta.term.0,
            bytes,
            "snapshot saved"
        );
        Ok(bytes)
    }
}

pub struct FileStorage {
    dir: PathBuf,
    log_dir: PathBuf,
    /// Oldest first; the last is written to. Empty only when the log is.
    segments: Vec<Segment>,
    /// The snapshot the log continues (moved only by this storage: at open
    /// and by an install; a snapshot saved beside the disk queue does not
    /// move it).
    log_base: SnapshotMeta,
    /// The last segment, open.
    file: Option<File>,
    segment_bytes: u64,
    hard_state: HardState,
    snapshots: Arc<FileSnapshots>,
    recovered: Option<Recovered>,
    /// The records of one append, encoded, kept between appends: a fresh
    /// buffer per append cost the leader page faults and zeroing (about 3%
    /// of its CPU under load).
    write_buffer: Vec<u8>,
    /// Keeps the directory locked for as long as this storage lives.
    _lock: File,
}

fn segment_path(log_dir: &Path, first: LogIndex) -> PathBuf {
    log_dir.join(format!("{:020}.seg", first.0))
}

fn snapshot_path(snap_dir: &Path, index: LogIndex) -> PathBuf {
    snap_dir.join(format!("{:020}.snap", index.0))
}

/// The files in `dir` named `<number><suffix>`, by number.
fn numbered_files(dir: &Path, suffix: &str) -> Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    let listing =
        fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    for item in listing {
        let item = item.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(number) = name
            .strip_suffix(suffix)
            .and_then(|n| n.parse::<u64>().ok())
        {
            found.push((number, item.path()));
        }
    }
    found.sort();
    Ok(found)
}

fn create_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))
}

impl FileStorage {
    /// Opens (creating if needed) the node's data directory and recovers it.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(dir, SEGMENT_BYTES_DEFAULT)
    }

    /// As [`FileStorage::open`], starting a new segment every `segment_bytes`.
    pub fn open_with(dir: impl AsRef<Path>, segment_bytes: u64) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        create_dir(&dir)?;
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
        let log_dir = dir.join("log");
        let snap_dir = dir.join("snap");
        let is_new = !log_dir.exists() || !snap_dir.exists();
        create_dir(&log_dir)?;
        create_dir(&snap_dir)?;
        let old_wal = dir.join("wal");
        if old_wal.is_file() {
            let to = segment_path(&log_dir, LogIndex(1));
            info!(from = %old_wal.display(), to = %to.display(), "moving the log into segments");
            fs::rename(&old_wal, &to)
                .map_err(|e| Error::io(format!("moving {}", old_wal.display()), e))?;
            sync_dir(&log_dir)?;
            sync_dir(&dir)?;
        }
        if is_new {
            sync_dir(&dir)?;
        }

        let snapshot = recover_snapshot(&snap_dir)?;
        let snapshot_meta = snapshot
            .as_ref()
            .map_or(SnapshotMeta::default(), |s| s.meta());
        let (segments, entries) = recover_segments(&log_dir)?;
        let log_name = log_dir.display().to_string();
        let (entries, is_reset) = resume_log(snapshot_meta, entries, &log_name)?;
        let snapshots = Arc::new(FileSnapshots {
            snap_dir: snap_dir.clone(),
            newest: Mutex::new(
                snapshot
                    .is_some()
                    .then(|| (snapshot_meta, snapshot_path(&snap_dir, snapshot_meta.index))),
            ),
        });
        let mut storage = FileStorage {
            dir,
            log_dir,
            segments,
            log_base: snapshot_meta,
            file: None,
            segment_bytes: segment_bytes.max(1),
            hard_state,
            snapshots,
            recovered: None,
            write_buffer: Vec::new(),
            _lock: lock,
        };
        if is_reset {
            warn!(
                snapshot = snapshot_meta.index.0,
                "the log does not continue the snapshot (an install was interrupted): emptied"
            );
            storage.delete_segments_from(0)?;
        }
        storage.open_last_segment()?;
        if let Some(last) = entries.last() {
            if last.term > hard_state.term {
                return Err(Error::Storage {
                    path: storage.log_dir.display().to_string(),
                    offset: None,
                    reason: format!(
                        "last entry has term {} beyond the saved term {}: the hard state is stale",
                        last.term, hard_state.term
                    ),
                });
            }
        }
        info!(
            dir = %storage.dir.display(),
            term = hard_state.term.0,
            snapshot = snapshot_meta.index.0,
            entries = entries.len(),
            segments = storage.segments.len(),
            "storage recovered"
        );
        storage.recovered = Some(Recovered {
            hard_state,
            snapshot,
            entries,
        });
        Ok(storage)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn open_last_segment(&mut self) -> Result<()> {
        self.file = match self.segments.last() {
            Some(segment) => Some(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&segment.path)
                    .map_err(|e| Error::io(format!("opening {}", segment.path.display()), e))?,
            ),
            None => None,
        };
        Ok(())
    }

    /// Deletes segments `from..`, newest first: a crash midway leaves a
    /// prefix of the log, never a log with a hole.
    fn delete_segments_from(&mut self, from: usize) -> Result<()> {
        while self.segments.len() > from {
            let segment = self.segments.pop().expect("len > from");
            fs::remove_file(&segment.path)
                .map_err(|e| Error::io(format!("deleting {}", segment.path.display()), e))?;
            // One at a time: unlinks need not reach the disk in order.
            sync_dir(&self.log_dir)?;
        }
        self.file = None;
        self.open_last_segment()
    }

    /// Starts a new segment whose first entry will be `first`.
    fn start_segment(&mut self, first: LogIndex) -> Result<()> {
        if let Some(file) = &self.file {
            // Only the newest segment may end torn.
            file.sync_data()
                .map_err(|e| Error::io("syncing a full segment", e))?;
        }
        let path = segment_path(&self.log_dir, first);
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        file.write_all_at(WAL_MAGIC, 0)
            .and_then(|()| file.sync_data())
            .map_err(|e| Error::io(format!("initializing {}", path.display()), e))?;
        sync_dir(&self.log_dir)?;
        self.segments.push(Segment {
            first,
            path,
            offsets: Vec::new(),
            end: WAL_MAGIC.len() as u64,
            recovered_crc: 0,
        });
        self.file = Some(file);
        Ok(())
    }

    /// The index after the last stored entry (or after the snapshot).
    fn next_index(&self) -> LogIndex {
        self.segments
            .last()
            .map_or(self.log_base.index.next(), Segment::next_index)
            .max(self.log_base.index.next())
    }

    /// Cuts the log so that `index` is the next entry written.
    fn truncate_to(&mut self, index: LogIndex) -> Result<()> {
        let keep = self
            .segments
            .iter()
            .position(|s| s.first >= index)
            .unwrap_or(self.segments.len());
        // Segments starting at or after `index` go whole; the one before is cut.
        if keep < self.segments.len() {
            self.delete_segments_from(keep.max(1))?;
            if keep == 0 {
                // The cut is at the first segment's first entry: empty it.
                let segment = &mut self.segments[0];
                segment.offsets.clear();
                segment.end = WAL_MAGIC.len() as u64;
                let file = self.file.as_ref().expect("segment open");
                file.set_len(segment.end)
                    .and_then(|()| file.sync_data())
                    .map_err(|e| Error::io(format!("truncating {}", segment.path.display()), e))?;
                segment.first = index.min(segment.first);
                return Ok(());
            }
        }
        let Some(segment) = self.segments.last_mut() else {
            return Ok(());
        };
        if index >= segment.next_index() {
            return Ok(());
        }
        let keep_records = (index.0 - segment.first.0) as usize;
        let cut = segment.offsets[keep_records];
        // Sync the cut before overwriting: otherwise, after a power loss, new
        // bytes could land while old records past them survive.
        let file = self.file.as_ref().expect("segment open");
        file.set_len(cut)
            .and_then(|()| file.sync_data())
            .map_err(|e| Error::io(format!("truncating {}", segment.path.display()), e))?;
        segment.offsets.truncate(keep_records);
        segment.end = cut;
        Ok(())
    }

    /// The term of the stored entry at `index`, if the log holds it.
    fn term_at(&self, index: LogIndex) -> Result<Option<Term>> {
        let Some(segment) = self
            .segments
            .iter()
            .rev()
            .find(|s| s.first <= index && index < s.next_index())
        else {
            return Ok(None);
        };
        let offset = segment.offsets[(index.0 - segment.first.0) as usize];
        let mut prefix = [0u8; RECORD_HEADER_BYTES + 8];
        File::open(&segment.path)
            .and_then(|f| f.read_exact_at(&mut prefix, offset))
            .map_err(|e| Error::io(format!("reading {}", segment.path.display()), e))?;
        Ok(Some(Term(u64::from_le_bytes(
            prefix[RECORD_HEADER_BYTES..].try_into().expect("8 bytes"),
        ))))
    }
}

impl FileSnapshots {
    /// Writes `write`'s snapshot of `meta` to a temporary file, syncs it and
    /// renames it into place (the planted bug writes in place instead).
    fn write(&self, meta: SnapshotMeta, write: SnapshotWriter) -> Result<u64> {
        let path = snapshot_path(&self.snap_dir, meta.index);
        let is_atomic = !is_planted(Bug::NonAtomicSnapshotWrite);
        let tmp = if is_atomic {
            path.with_extension("snap.tmp")
        } else {
            path.clone()
        };
        let io = |what: &str, e| Error::io(format!("{what} {}", tmp.display()), e);
        let file = File::create(&tmp).map_err(|e| io("creating", e))?;
        file.write_all_at(&[0u8; HEADER_BYTES], 0)
            .map_err(|e| io("writing", e))?;
        // Buffered first, so the checksum and the syscalls see 1 MiB at a
        // time; written back as it goes, so the log's fsyncs never wait for
        // a whole snapshot of dirty pages.
        let mut out = BufWriter::with_capacity(
            1 << 20,
            ChecksumWriter {
                inner: WritebackWriter {
                    file: &file,
                    offset: HEADER_BYTES as u64,
                    started_to: HEADER_BYTES as u64,
                    began: std::time::Instant::now(),
                },
                hasher: crc32fast::Hasher::new(),
                written: 0,
            },
        );
        write(&mut out).map_err(|e| io("writing", e))?;
        let ChecksumWriter {
            hasher: data_hasher,
            written,
            ..
        } = out
            .into_inner()
            .map_err(|e| io("writing", e.into_error()))?;
        let header = snapshot::header(meta, written);
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&header);
        hasher.combine(&data_hasher);
        file.write_all_at(&header, 0)
            .and_then(|()| {
                file.write_all_at(
                    &hasher.finalize().to_le_bytes(),
                    HEADER_BYTES as u64 + written,
                )
            })
            .map_err(|e| io("writing", e))?;
        file.sync_all().map_err(|e| io("syncing", e))?;
        if is_atomic {
            fs::rename(&tmp, &path).map_err(|e| io("renaming", e))?;
        }
        sync_dir(&self.snap_dir)?;
        self.snapshot_durable(meta, path)?;
        Ok((HEADER_BYTES + 4) as u64 + written)
    }

    /// `path` holds the newest snapshot, durably: publish it, delete older ones.
    fn snapshot_durable(&self, meta: SnapshotMeta, path: PathBuf) -> Result<()> {
        let mut newest = self.newest.lock().expect("snapshot lock");
        if let Some((n, _)) = newest.as_ref() {
            if n.index == meta.index {
                // The same snapshot (same index: the same committed state),
                // written twice under one name: keep it.
                return Ok(());
            }
            if n.index > meta.index {
                // A newer one landed meanwhile (an install beside a save).
                return remove_if_present(&path);
            }
        }
        *newest = Some((meta, path));
        for (index, old) in numbered_files(&self.snap_dir, ".snap")? {
            if index < meta.index.0 {
                remove_if_present(&old)?;
            }
        }
        Ok(())
    }

    /// Writes an encoded snapshot file (received from the leader) atomically.
    fn write_bytes(&self, meta: SnapshotMeta, bytes: &[u8]) -> Result<()> {
        let path = snapshot_path(&self.snap_dir, meta.index);
        write_atomically(
            &self.snap_dir,
            &path.with_extension("snap.tmp"),
            &path,
            bytes,
        )?;
        self.snapshot_durable(meta, path)
    }
}

/// Writes a file at increasing offsets, gently: every 4 MiB written it
/// starts that range's writeback and waits for the previous range's (as
/// RocksDB's `bytes_per_sync`), and it keeps to `SNAPSHOT_WRITE_BYTES_PER_S`.
/// So the final fsync finds little left to do, and neither a burst of a
/// whole snapshot's dirty pages nor a saturated disk stalls the log's fsyncs
/// meanwhile. A snapshot is rare enough (see the driver's policy) to take
/// its time.
struct WritebackWriter<'a> {
    file: &'a File,
    offset: u64,
    started_to: u64,
    began: std::time::Instant,
}

const WRITEBACK_BYTES: u64 = 4 << 20;
/// The pace of a snapshot write.
const SNAPSHOT_WRITE_BYTES_PER_S: u64 = 48 << 20;

impl std::io::Write for WritebackWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write_all_at(buf, self.offset)?;
        self.offset += buf.len() as u64;
        if self.offset - self.started_to >= WRITEBACK_BYTES {
            use std::os::fd::AsRawFd;
            let fd = self.file.as_raw_fd();
            // A write-back error must fail the snapshot: Linux reports it
            // once, to whichever call asks first, so ignoring it here would
            // let the final fsync succeed over pages it never wrote. A file
            // system without sync_file_range only leaves the final fsync
            // more to do.
            let checked = |rc: libc::c_int| -> std::io::Result<()> {
                if rc == 0 {
                    return Ok(());
                }
                let error = std::io::Error::last_os_error();
                match error.raw_os_error() {
                    Some(libc::EINVAL | libc::ENOSYS | libc::ESPIPE | libc::EOPNOTSUPP) => Ok(()),
                    _ => Err(error),
                }
            };
            // Wait for the previous range, then start this one.
            let previous = self.started_to.saturating_sub(WRITEBACK_BYTES);
            // SAFETY: plain syscalls on an open descriptor.
            checked(unsafe {
                libc::sync_file_range(
                    fd,
                    previous as libc::off64_t,
                    (self.started_to - previous) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                )
            })?;
            // SAFETY: as above.
            checked(unsafe {
                libc::sync_file_range(
                    fd,
                    self.started_to as libc::off64_t,
                    (self.offset - self.started_to) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            })?;
            self.started_to = self.offset;
            let due = std::time::Duration::from_secs_f64(
                self.offset as f64 / SNAPSHOT_WRITE_BYTES_PER_S as f64,
            );
            if let Some(ahead) = due.checked_sub(self.began.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The newest snapshot in `snap_dir`, verified; leftovers of interrupted
/// writes are deleted. A damaged newest snapshot is an error: after the
/// atomic write it cannot be torn, so it was damaged at rest.
fn recover_snapshot(snap_dir: &Path) -> Result<Option<SnapshotFile>> {
    for (_, tmp) in numbered_files(snap_dir, ".snap.tmp")? {
        warn!(file = %tmp.display(), "deleting an unfinished snapshot (the write was interrupted)");
        fs::remove_file(&tmp).map_err(|e| Error::io(format!("deleting {}", tmp.display()), e))?;
    }
    let Some((_, newest)) = numbered_files(snap_dir, ".snap")?.pop() else {
        return Ok(None);
    };
    let bytes =
        fs::read(&newest).map_err(|e| Error::io(format!("reading {}", newest.display()), e))?;
    SnapshotFile::decode(bytes, &newest.display().to_string()).map(Some)
}

/// Every segment in `log_dir`, checked, and the entries they hold.
fn recover_segments(log_dir: &Path) -> Result<(Vec<Segment>, Vec<Entry>)> {
    let files = numbered_files(log_dir, ".seg")?;
    let mut segments: Vec<Segment> = Vec::new();
    let mut entries = Vec::new();
    for (position, (first, path)) in files.iter().enumerate() {
        let first = LogIndex(*first);
        let is_newest = position + 1 == files.len();
        if let Some(previous) = segments.last() {
            if previous.next_index() != first {
                return Err(Error::Storage {
                    path: path.display().to_string(),
                    offset: None,
                    reason: format!(
                        "segment starts at index {first} but the one before ends at {}",
                        previous.next_index().prev()
                    ),
                });
            }
        }
        let mut bytes = Vec::new();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        file.read_to_end(&mut bytes)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let recovery = recover(&bytes, path, first)?;
        if recovery.valid_bytes < bytes.len() as u64 || bytes.len() < WAL_MAGIC.len() {
            if !is_newest {
                return Err(corruption(
                    path,
                    recovery.valid_bytes as usize,
                    "a torn record in a segment that is not the newest".into(),
                ));
            }
            if bytes.len() >= WAL_MAGIC.len() {
                warn!(
                    file = %path.display(),
                    offset = recovery.valid_bytes,
                    dropped_bytes = bytes.len() as u64 - recovery.valid_bytes,
                    "torn tail record cut off (never synced, so never acknowledged)"
                );
            }
            let valid = recovery.valid_bytes.max(WAL_MAGIC.len() as u64);
            file.set_len(recovery.valid_bytes)
                .and_then(|()| file.write_all_at(&WAL_MAGIC[..], 0))
                .and_then(|()| file.set_len(valid))
                .and_then(|()| file.sync_all())
                .map_err(|e| Error::io(format!("truncating {}", path.display()), e))?;
        }
        // What the file holds now (a torn tail cut, or only the magic).
        let content = if recovery.valid_bytes >= WAL_MAGIC.len() as u64 {
            &bytes[..recovery.valid_bytes as usize]
        } else {
            &WAL_MAGIC[..]
        };
        segments.push(Segment {
            first,
            path: path.clone(),
            offsets: recovery.offsets,
            end: content.len() as u64,
            recovered_crc: crc32fast::hash(content),
        });
        entries.extend(recovery.entries);
    }
    Ok((segments, entries))
}

impl Storage for FileStorage {
    fn recovered(&mut self) -> Recovered {
        self.recovered.take().unwrap_or_default()
    }

    /// Writes every recovered segment's bytes again, in place, and syncs
    /// it (a torn rewrite of the same bytes leaves the same bytes); saves
    /// the hard state again; syncs the directories.
    fn resync_recovered(&mut self) -> Result<()> {
        let started = std::time::Instant::now();
        let mut rewritten = 0u64;
        let mut bytes = Vec::new();
        for segment in &self.segments {
            let io = |what: &str, e| Error::io(format!("{what} {}", segment.path.display()), e);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&segment.path)
                .map_err(|e| io("opening", e))?;
            bytes.resize(segment.end as usize, 0);
            file.read_exact_at(&mut bytes, 0)
                .map_err(|e| io("reading", e))?;
            // Pages evicted since recovery read them would read back as what
            // the disk holds: then what the node recovered is not on disk.
            if crc32fast::hash(&bytes) != segment.recovered_crc {
                return Err(Error::Storage {
                    path: segment.path.display().to_string(),
                    offset: None,
                    reason: "the segment reads back differently than at recovery (pages a failed \
                             write-back left in the cache were dropped): restart to recover again"
                        .into(),
                });
            }
            file.write_all_at(&bytes, 0)
                .map_err(|e| io("rewriting", e))?;
            file.sync_all().map_err(|e| io("syncing", e))?;
            rewritten += segment.end;
        }
        if self.hard_state != HardState::default() {
            self.save_hard_state(self.hard_state)?;
        }
        sync_dir(&self.log_dir)?;
        sync_dir(&self.snapshots.snap_dir)?;
        sync_dir(&self.dir)?;
        info!(
            bytes = rewritten,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "recovered log written again and synced (what was read back may have been pages a failed fsync left unwritten)"
        );
        Ok(())
    }

    fn save_hard_state(&mut self, hard_state: HardState) -> Result<()> {
        let mut bytes = Vec::with_capacity(28);
        bytes.extend_from_slice(HARD_STATE_MAGIC);
        bytes.extend_from_slice(&hard_state.term.0.to_le_bytes());
        bytes.extend_from_slice(&hard_state.vote.map_or(0, |v| v.0).to_le_bytes());
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        write_atomically(
            &self.dir,
            &self.dir.join("hardstate.tmp"),
            &self.dir.join("hardstate"),
            &bytes,
        )?;
        self.hard_state = hard_state;
        Ok(())
    }

    fn append(&mut self, entries: &[Entry]) -> Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let next = self.next_index();
        let snapshot = self.log_base;
        assert!(
            first.index > snapshot.index && first.index <= next,
            "append must not leave a gap or rewrite the snapshot: first {} with next {} and snapshot {}",
            first.index,
            next,
            snapshot.index
        );
        if first.index < next {
            self.truncate_to(first.index)?;
        }
        let is_full = self
            .segments
            .last()
            .is_none_or(|s| s.end >= self.segment_bytes);
        if is_full {
            self.start_segment(first.index)?;
        }
        let segment = self.segments.last_mut().expect("a segment to write");
        let file = self.file.as_ref().expect("the last segment is open");
        let mut buffer = std::mem::take(&mut self.write_buffer);
        buffer.clear();
        buffer.reserve(
            entries
                .iter()
                .map(|e| RECORD_HEADER_BYTES + PAYLOAD_PREFIX_BYTES + e.data.len())
                .sum(),
        );
        let offsets_before = segment.offsets.len();
        for entry in entries {
            segment.offsets.push(segment.end + buffer.len() as u64);
            encode_record(entry, &mut buffer);
        }
        let written = file.write_all_at(&buffer, segment.end);
        let bytes = buffer.len() as u64;
        // Keep an ordinary batch's buffer; let a rare huge one go.
        if buffer.capacity() <= WRITE_BUFFER_KEPT_BYTES_MAX {
            self.write_buffer = buffer;
        }
        if let Err(e) = written {
            // Nothing past `end` counts: the records may be partly written.
            segment.offsets.truncate(offsets_before);
            return Err(Error::io(format!("writing {}", segment.path.display()), e));
        }
        segment.end += bytes;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        match (&self.file, self.segments.last()) {
            (Some(file), Some(segment)) => file
                .sync_data()
                .map_err(|e| Error::io(format!("syncing {}", segment.path.display()), e)),
            _ => Ok(()),
        }
    }

    fn last_index(&self) -> LogIndex {
        self.next_index().prev()
    }

    fn install_snapshot(&mut self, file: &SnapshotFile) -> Result<()> {
        let meta = file.meta();
        let holds_it = self.term_at(meta.index)? == Some(meta.term);
        // The file is already encoded: write it as the leader sent it.
        self.snapshots.write_bytes(meta, file.bytes())?;
        if !holds_it {
            // Newest first, so a crash midway leaves a prefix of the old log,
            // which recovery drops (it does not continue the snapshot).
            self.delete_segments_from(0)?;
        }
        self.log_base = meta;
        info!(
            index = meta.index.0,
            term = meta.term.0,
            kept_log = holds_it,
            "snapshot installed"
        );
        Ok(())
    }

    fn compact(&mut self, index: LogIndex) -> Result<()> {
        // Whole segments whose last entry is at or below `index`, never the
        // one being written.
        let whole = self
            .segments
            .windows(2)
            .take_while(|pair| pair[1].first.prev() <= index)
            .count();
        if whole == 0 {
            return Ok(());
        }
        for segment in self.segments.drain(..whole) {
            fs::remove_file(&segment.path)
                .map_err(|e| Error::io(format!("deleting {}", segment.path.display()), e))?;
            // One at a time, oldest first: unlinks need not reach the disk
            // in order, and a hole below the newest would stop a restart.
            sync_dir(&self.log_dir)?;
        }
        Ok(())
    }

    fn snapshot_store(&self) -> Arc<dyn SnapshotStore> {
        self.snapshots.clone()
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

fn recover(bytes: &[u8], path: &Path, first: LogIndex) -> Result<Recovery> {
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
                let expected = first.0 + recovery.entries.len() as u64;
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
                let expected = first.0 + recovery.entries.len() as u64;
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

/// Replaces `path` in `dir` with `bytes`, atomically and durably: a
/// temporary file, synced, renamed into place, the directory synced.
fn write_atomically(dir: &Path, tmp: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |what: &str, e| Error::io(format!("{what} {}", tmp.display()), e);
    let mut file = File::create(tmp).map_err(|e| io("creating", e))?;
    file.write_all(bytes).map_err(|e| io("writing", e))?;
    file.sync_all().map_err(|e| io("syncing", e))?;
    fs::rename(tmp, path).map_err(|e| io("renaming", e))?;
    sync_dir(dir)
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io(format!("deleting {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_segment(dir: &Path) -> PathBuf {
        dir.join("log").join(format!("{:020}.seg", 1))
    }

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
        let offsets = storage.segments[0].offsets.clone();
        drop(storage);
        (fs::read(first_segment(dir)).expect("read"), offsets)
    }

    fn reopen_with(dir: &Path, bytes: &[u8]) -> Result<Vec<Entry>> {
        fs::write(first_segment(dir), bytes).expect("write");
        let mut storage = FileStorage::open(dir)?;
        Ok(storage.recovered().entries)
    }

    #[test]
    fn entries_and_hard_state_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        small_log(dir.path(), 10);
        let mut storage = FileStorage::open(dir.path()).expect("reopen");
        let Recovered {
            hard_state,
            entries: recovered,
            ..
        } = storage.recovered();
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
        let recovered = storage.recovered().entries;
        assert_eq!(recovered.len(), 4);
        assert_eq!(recovered[3], replacement[0]);
        assert_eq!(recovered[..3], entries(3)[..]);
    }

    /// Writing the recovered log again (fsyncgate) leaves every segment
    /// byte for byte as it was, a torn tail cut off first, and the log and
    /// hard state recover the same after it; the node goes on appending.
    #[test]
    fn resyncing_the_recovered_log_changes_no_byte() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut storage = FileStorage::open_with(dir.path(), 256).expect("open");
        storage
            .save_hard_state(HardState {
                term: Term(20),
                vote: Some(NodeId(2)),
            })
            .expect("hard state");
        for chunk in entries(40).chunks(5) {
            storage.append(chunk).expect("append");
        }
        storage.sync().expect("sync");
        assert!(storage.segments.len() > 2, "several segments");
        drop(storage);
        let files = numbered_files(&dir.path().join("log"), ".seg").expect("segments");
        let newest = &files.last().expect("a segment").1;
        let mut torn = fs::read(newest).expect("read");
        let complete = torn.len();
        torn.extend_from_slice(&[0x5a; 7]);
        fs::write(newest, &torn).expect("tear");
        let before: Vec<Vec<u8>> = files
            .iter()
            .map(|(_, p)| fs::read(p).expect("read"))
            .collect();

        let mut storage = FileStorage::open_with(dir.path(), 256).expect("reopen");
        let recovered = storage.recovered();
        storage.resync_recovered().expect("resync");
        assert_eq!(recovered.entries, entries(40));
        for (i, (_, path)) in files.iter().enumerate() {
            let after = fs::read(path).expect("read");
            let expected = if i + 1 == files.len() {
                &before[i][..complete]
            } else {
                &before[i][..]
            };
            assert_eq!(after, expected, "{} changed", path.display());
        }
        storage.append(&entries(41)[40..]).expect("append");
        storage.sync().expect("sync");
        drop(storage);
        let mut storage = FileStorage::open_with(dir.path(), 256).expect("reopen");
        let again = storage.recovered();
        assert_eq!(again.entries, entries(41));
        assert_eq!(again.hard_state, recovered.hard_state);
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
            assert_eq!(
                storage.recovered().entries,
                expected,
                "append after cut at {cut}"
            );
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
                    assert!(text.contains(".seg"), "names the file: {text}");
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
    fn damaged_segments_recover_a_contiguous_prefix_or_fail_clearly() {
        use rand::{rngs::StdRng, SeedableRng};
        let dir = tempfile::tempdir().expect("tempdir");
        let (bytes, _) = small_log(dir.path(), 12);
        let all = entries(12);
        let path = first_segment(dir.path());
        let mut rng = StdRng::seed_from_u64(19);
        let (mut errors, mut prefixes) = (0, 0);
        for case in 0..20_000 {
            let damaged = crate::mutate::damaged(&mut rng, &bytes);
            match recover(&damaged, &path, LogIndex(1)) {
                Ok(recovery) => {
                    // Only whole, checksummed records, in order from the
                    // first index: a prefix of what was written, or (when
                    // a doubled file repeats them) nothing new.
                    let n = recovery.entries.len();
                    assert!(n <= all.len(), "case {case}");
                    assert_eq!(recovery.entries, all[..n], "case {case}");
                    assert!(recovery.valid_bytes as usize <= damaged.len());
                    prefixes += 1;
                }
                Err(e) => {
                    assert!(e.to_string().contains(".seg"), "case {case}: {e}");
                    errors += 1;
                }
            }
        }
        assert!(errors > 5_000 && prefixes > 1_000, "{errors} / {prefixes}");
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
        fs::create_dir_all(dir.path().join("log")).expect("mkdir");
        fs::write(first_segment(dir.path()), b"this is not a write-ahead log").expect("write");
        let error = FileStorage::open(dir.path()).err().expect("bad magic");
        assert!(error.to_string().contains("bad magic"), "{error}");
    }

    fn meta(index: u64, term: u64) -> SnapshotMeta {
        SnapshotMeta {
            index: LogIndex(index),
            term: Term(term),
        }
    }

    fn writer(data: Vec<u8>) -> SnapshotWriter {
        Box::new(move |out| out.write_all(&data))
    }

    /// A writer that dies after `bytes` bytes of `data`, as a process killed
    /// in the middle of writing a snapshot.
    fn dying_writer(data: Vec<u8>, bytes: usize) -> SnapshotWriter {
        Box::new(move |out| {
            out.write_all(&data[..bytes])?;
            out.flush()?;
            Err(std::io::Error::other("killed"))
        })
    }

    /// Snapshots a store, then dies at every point of writing the next one:
    /// each reopen must find the first snapshot whole, or the second.
    fn check_snapshot_write_is_atomic() -> std::result::Result<(), String> {
        let old = b"the old state machine".to_vec();
        let new: Vec<u8> = (0..300u32).flat_map(|i| i.to_le_bytes()).collect();
        for cut in (0..new.len()).step_by(97).chain([new.len() - 1]) {
            let dir = tempfile::tempdir().expect("tempdir");
            let storage = FileStorage::open(dir.path()).expect("open");
            let store = storage.snapshot_store();
            store
                .save(meta(10, 1), writer(old.clone()))
                .expect("first snapshot");
            assert!(store
                .save(meta(20, 1), dying_writer(new.clone(), cut))
                .is_err());
            drop(storage);
            let mut storage = FileStorage::open(dir.path())
                .map_err(|e| format!("killed after {cut} bytes: reopen failed: {e}"))?;
            let snapshot = storage.recovered().snapshot.ok_or("no snapshot at all")?;
            if (snapshot.meta(), snapshot.data()) != (meta(10, 1), &old[..]) {
                return Err(format!(
                    "killed after {cut} bytes: found {:?}, neither snapshot whole",
                    snapshot.meta()
                ));
            }
        }
        Ok(())
    }

    #[test]
    fn a_snapshot_write_killed_midway_leaves_the_previous_one() {
        check_snapshot_write_is_atomic().expect("atomic snapshot writes");
    }

    /// The storage test catches the planted non-atomic snapshot write (the
    /// simulation's disk is not `FileStorage`, so only this test can).
    #[cfg(feature = "planted-bugs")]
    #[test]
    fn planted_non_atomic_snapshot_write_is_caught() {
        crate::planted::plant(Some(Bug::NonAtomicSnapshotWrite));
        let result = check_snapshot_write_is_atomic();
        crate::planted::plant(None);
        let error = result.expect_err("the planted bug must be caught");
        println!("NonAtomicSnapshotWrite caught: {error}");
    }

    #[test]
    fn a_saved_snapshot_survives_and_only_the_newest_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = FileStorage::open(dir.path()).expect("open");
        let store = storage.snapshot_store();
        assert!(store.open_latest().expect("open").is_none());
        store
            .save(meta(5, 1), writer(b"five".to_vec()))
            .expect("save");
        store
            .save(meta(9, 2), writer(b"nine".to_vec()))
            .expect("save");
        // An older one than the newest is not kept.
        store
            .save(meta(7, 2), writer(b"seven".to_vec()))
            .expect("save");
        assert_eq!(store.latest(), meta(9, 2));
        let mut reader = store.open_latest().expect("open").expect("a snapshot");
        let mut bytes = Vec::new();
        loop {
            let chunk = reader.read_chunk(3).expect("read");
            if chunk.is_empty() {
                break;
            }
            bytes.extend(chunk);
        }
        assert_eq!(bytes.len() as u64, reader.file_bytes());
        let file = SnapshotFile::decode(bytes, "read back").expect("whole");
        assert_eq!((file.meta(), file.data()), (meta(9, 2), &b"nine"[..]));
        let files = numbered_files(&dir.path().join("snap"), ".snap").expect("list");
        assert_eq!(files.len(), 1, "older snapshots are deleted: {files:?}");
        drop(storage);
        let mut storage = FileStorage::open(dir.path()).expect("reopen");
        assert_eq!(storage.recovered().snapshot_meta(), meta(9, 2));
        // A damaged snapshot stops the node with the file named.
        drop(storage);
        let path = &files[0].1;
        let mut damaged = fs::read(path).expect("read");
        damaged[HEADER_BYTES] ^= 1;
        fs::write(path, damaged).expect("write");
        let error = FileStorage::open(dir.path())
            .err()
            .expect("damage is refused");
        assert!(error.to_string().contains(".snap"), "{error}");
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            data: vec![b'x'; 100],
        }
    }

    fn recovered_indexes(dir: &Path) -> Vec<u64> {
        let mut storage = FileStorage::open_with(dir, 1000).expect("reopen");
        storage
            .recovered()
            .entries
            .iter()
            .map(|e| e.index.0)
            .collect()
    }

    #[test]
    fn segments_roll_compact_and_truncate_across_boundaries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut storage = FileStorage::open_with(dir.path(), 1000).expect("open");
        storage
            .save_hard_state(HardState {
                term: Term(3),
                vote: None,
            })
            .expect("hard state");
        for i in 1..=40 {
            storage.append(&[entry(i, 1)]).expect("append");
        }
        storage.sync().expect("sync");
        let segments = storage.segments.len();
        assert!(segments >= 4, "small segments roll: {segments}");
        // Truncate in the middle of an older segment: later ones go.
        storage.append(&[entry(15, 2)]).expect("truncating append");
        storage.sync().expect("sync");
        assert_eq!(storage.last_index(), LogIndex(15));
        drop(storage);
        assert_eq!(recovered_indexes(dir.path()), (1..=15).collect::<Vec<_>>());
        // Compaction needs a snapshot covering it; whole segments only.
        let mut storage = FileStorage::open_with(dir.path(), 1000).expect("open");
        storage
            .snapshot_store()
            .save(meta(12, 1), writer(Vec::new()))
            .expect("snapshot");
        storage.compact(LogIndex(12)).expect("compact");
        let first = storage.segments[0].first;
        assert!(
            first > LogIndex(1) && first <= LogIndex(13),
            "first segment starts at {first}"
        );
        drop(storage);
        assert_eq!(
            recovered_indexes(dir.path()),
            (first.0..=15).collect::<Vec<_>>(),
            "restart keeps what compaction kept (the catch-up tail) and the rest"
        );
    }

    #[test]
    fn an_installed_snapshot_keeps_a_matching_log_and_empties_another() {
        for (term_at_snapshot, expected) in [(1, (1..=12).collect::<Vec<u64>>()), (2, vec![])] {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut storage = FileStorage::open_with(dir.path(), 1000).expect("open");
            storage
                .save_hard_state(HardState {
                    term: Term(2),
                    vote: None,
                })
                .expect("hard state");
            storage
                .append(&(1..=12).map(|i| entry(i, 1)).collect::<Vec<_>>())
                .expect("append");
            storage.sync().expect("sync");
            let file = SnapshotFile::encode(meta(10, term_at_snapshot), b"leader's state");
            storage.install_snapshot(&file).expect("install");
            assert_eq!(
                storage.last_index(),
                LogIndex(if expected.is_empty() { 10 } else { 12 })
            );
            // The log continues after the snapshot.
            let next = storage.last_index().next().0;
            storage.append(&[entry(next, 2)]).expect("append after");
            storage.sync().expect("sync");
            drop(storage);
            let mut expected = expected;
            expected.push(next);
            assert_eq!(recovered_indexes(dir.path()), expected);
        }
    }

    #[test]
    fn a_gap_between_the_snapshot_and_the_log_stops_the_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut storage = FileStorage::open_with(dir.path(), 1000).expect("open");
        storage
            .append(&(1..=40).map(|i| entry(i, 1)).collect::<Vec<_>>())
            .expect("append");
        storage.append(&[entry(41, 1)]).expect("append");
        storage.sync().expect("sync");
        storage
            .snapshot_store()
            .save(meta(30, 1), writer(Vec::new()))
            .expect("snapshot");
        storage.compact(LogIndex(30)).expect("compact");
        // Lose the oldest segment left: the log then starts past index 31.
        assert!(storage.segments.len() >= 2 && storage.segments[1].first > LogIndex(31));
        let oldest = storage.segments[0].path.clone();
        drop(storage);
        fs::remove_file(oldest).expect("remove");
        let error = FileStorage::open(dir.path())
            .err()
            .expect("a gap is refused");
        assert!(error.to_string().contains("missing"), "{error}");
    }

    #[test]
    fn a_log_from_before_segments_is_moved_into_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bytes, _) = small_log(dir.path(), 5);
        fs::remove_dir_all(dir.path().join("log")).expect("rm");
        fs::remove_dir_all(dir.path().join("snap")).expect("rm");
        fs::write(dir.path().join("wal"), bytes).expect("write the old layout");
        let mut storage = FileStorage::open(dir.path()).expect("open");
        assert_eq!(storage.recovered().entries, entries(5));
        assert!(!dir.path().join("wal").exists());
    }
}
