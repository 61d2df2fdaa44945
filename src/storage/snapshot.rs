//! The snapshot file: the state machine at one log index, versioned and
//! checksummed, the same bytes on disk and on the wire (a leader streams its
//! file as it is; the follower verifies it whole before installing it).
//!
//! Layout (little endian):
//! `LATSNP01` | version: u32 | index: u64 | term: u64 | data length: u64 |
//! data | CRC-32 of everything before it: u32.
//!
//! The data is opaque here: the state machine writes and reads it. So the
//! state machine could later live in an on-disk engine whose checkpoint is
//! the data, without this format or the transport changing.

use std::io::{self, Read, Write};

use crate::raft::{LogIndex, SnapshotMeta, Term};
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"LATSNP01";
const VERSION: u32 = 1;
/// Magic, version, index, term, data length.
pub const HEADER_BYTES: usize = 8 + 4 + 8 + 8 + 8;
const TRAILER_BYTES: usize = 4;
/// Chunks of a snapshot on the wire.
pub const CHUNK_BYTES: usize = 1 << 20;

/// The header of a snapshot file (placeholder length until the data is known).
pub fn header(meta: SnapshotMeta, data_len: u64) -> [u8; HEADER_BYTES] {
    let mut header = [0u8; HEADER_BYTES];
    header[0..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&VERSION.to_le_bytes());
    header[12..20].copy_from_slice(&meta.index.0.to_le_bytes());
    header[20..28].copy_from_slice(&meta.term.0.to_le_bytes());
    header[28..36].copy_from_slice(&data_len.to_le_bytes());
    header
}

fn bad(path: &str, offset: u64, reason: impl Into<String>) -> Error {
    Error::Storage {
        path: path.to_string(),
        offset: Some(offset),
        reason: reason.into(),
    }
}

/// Parses a header: the snapshot's end and its data length. `path` names the
/// file (or the peer it came from) in errors.
pub fn parse_header(bytes: &[u8], path: &str) -> Result<(SnapshotMeta, u64)> {
    if bytes.len() < HEADER_BYTES {
        return Err(bad(path, 0, "truncated snapshot header"));
    }
    if &bytes[0..8] != MAGIC {
        return Err(bad(path, 0, "not a Lattice snapshot (bad magic)"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(bad(
            path,
            8,
            format!("snapshot format version {version}; this build reads {VERSION}"),
        ));
    }
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let meta = SnapshotMeta {
        index: LogIndex(u64_at(12)),
        term: Term(u64_at(20)),
    };
    if meta.index.0 == 0 || meta.term.0 == 0 {
        return Err(bad(path, 12, "snapshot of index or term 0"));
    }
    Ok((meta, u64_at(28)))
}

/// A whole snapshot file in memory, verified.
#[derive(Clone, Debug)]
pub struct SnapshotFile {
    meta: SnapshotMeta,
    bytes: Vec<u8>,
}

impl SnapshotFile {
    /// A snapshot of `data` ending at `meta`.
    pub fn encode(meta: SnapshotMeta, data: &[u8]) -> SnapshotFile {
        let mut bytes = Vec::with_capacity(HEADER_BYTES + data.len() + TRAILER_BYTES);
        bytes.extend_from_slice(&header(meta, data.len() as u64));
        bytes.extend_from_slice(data);
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        SnapshotFile { meta, bytes }
    }

    /// Checks a file's bytes whole: header, length and checksum.
    pub fn decode(bytes: Vec<u8>, path: &str) -> Result<SnapshotFile> {
        let (meta, data_len) = parse_header(&bytes, path)?;
        let expected = (HEADER_BYTES as u64)
            .checked_add(data_len)
            .and_then(|n| n.checked_add(TRAILER_BYTES as u64));
        if expected != Some(bytes.len() as u64) {
            return Err(bad(
                path,
                28,
                format!(
                    "snapshot is {} bytes; its header says {} of data",
                    bytes.len(),
                    data_len
                ),
            ));
        }
        let end = bytes.len() - TRAILER_BYTES;
        let crc = u32::from_le_bytes(bytes[end..].try_into().expect("4 bytes"));
        if crc32fast::hash(&bytes[..end]) != crc {
            return Err(bad(path, end as u64, "snapshot checksum mismatch"));
        }
        Ok(SnapshotFile { meta, bytes })
    }

    pub fn meta(&self) -> SnapshotMeta {
        self.meta
    }

    /// The state machine's data.
    pub fn data(&self) -> &[u8] {
        &self.bytes[HEADER_BYTES..self.bytes.len() - TRAILER_BYTES]
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Writes a snapshot file to `out` as the state machine streams its data:
/// the data length is patched into the header by the caller (or known).
/// Computes the checksum on the way.
pub struct ChecksumWriter<W: Write> {
    pub inner: W,
    pub hasher: crc32fast::Hasher,
    pub written: u64,
}

impl<W: Write> Write for ChecksumWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the state machine's data for a snapshot (see `KvStore::write_snapshot`).
pub type SnapshotWriter = Box<dyn FnOnce(&mut dyn Write) -> io::Result<()> + Send>;

/// Reads one snapshot file in chunks, for streaming to a follower.
pub trait SnapshotReader: Send {
    fn meta(&self) -> SnapshotMeta;
    /// The file's size in bytes.
    fn file_bytes(&self) -> u64;
    /// The next chunk of the file's bytes (at most `max`), empty at the end.
    fn read_chunk(&mut self, max: usize) -> Result<Vec<u8>>;
}

/// A node's snapshots, usable from any task: the driver's snapshot task
/// writes them, the peer senders read them.
pub trait SnapshotStore: Send + Sync {
    /// The newest durable snapshot, opened (it stays readable even if a newer
    /// one replaces it meanwhile). `None` if there is none.
    fn open_latest(&self) -> Result<Option<Box<dyn SnapshotReader>>>;
    /// The newest durable snapshot's end (index 0: none).
    fn latest(&self) -> SnapshotMeta;
    /// Makes a snapshot of the state machine at `meta`, its data written by
    /// `write`, the newest one, durably and atomically: after a crash at any
    /// point the previous snapshot or this one is there, whole. The previous
    /// one is removed once this one is durable. An older one than the newest
    /// is not kept. The log is untouched. Returns the file's size in bytes.
    fn save(&self, meta: SnapshotMeta, write: SnapshotWriter) -> Result<u64>;
    /// How long the next `save` takes beyond its own work: a simulated
    /// disk's latency (the snapshot task waits it out first, so a crash can
    /// fall in the middle). Real storage: zero.
    fn save_delay(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// A [`SnapshotReader`] over a file held in memory.
pub struct MemReader {
    file: std::sync::Arc<SnapshotFile>,
    at: usize,
}

impl MemReader {
    pub fn new(file: std::sync::Arc<SnapshotFile>) -> Self {
        MemReader { file, at: 0 }
    }
}

impl SnapshotReader for MemReader {
    fn meta(&self) -> SnapshotMeta {
        self.file.meta()
    }
    fn file_bytes(&self) -> u64 {
        self.file.bytes().len() as u64
    }
    fn read_chunk(&mut self, max: usize) -> Result<Vec<u8>> {
        let bytes = self.file.bytes();
        let end = (self.at + max).min(bytes.len());
        let chunk = bytes[self.at..end].to_vec();
        self.at = end;
        Ok(chunk)
    }
}

/// A [`SnapshotReader`] over a file on disk.
pub struct FileReader {
    meta: SnapshotMeta,
    len: u64,
    file: std::fs::File,
    path: String,
}

impl FileReader {
    /// Opens `path` and reads its header.
    pub fn open(path: &std::path::Path) -> Result<FileReader> {
        let name = path.display().to_string();
        let mut file = std::fs::File::open(path)
            .map_err(|e| Error::io(format!("opening snapshot {name}"), e))?;
        let mut header = [0u8; HEADER_BYTES];
        file.read_exact(&mut header)
            .map_err(|e| Error::io(format!("reading snapshot {name}"), e))?;
        let (meta, _) = parse_header(&header, &name)?;
        use std::io::Seek;
        file.seek(io::SeekFrom::Start(0))
            .map_err(|e| Error::io(format!("reading snapshot {name}"), e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io(format!("reading snapshot {name}"), e))?
            .len();
        Ok(FileReader {
            meta,
            len,
            file,
            path: name,
        })
    }
}

impl SnapshotReader for FileReader {
    fn meta(&self) -> SnapshotMeta {
        self.meta
    }
    fn file_bytes(&self) -> u64 {
        self.len
    }
    fn read_chunk(&mut self, max: usize) -> Result<Vec<u8>> {
        let mut chunk = Vec::with_capacity(max.min(CHUNK_BYTES));
        (&mut self.file)
            .take(max as u64)
            .read_to_end(&mut chunk)
            .map_err(|e| Error::io(format!("reading snapshot {}", self.path), e))?;
        Ok(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_round_trips_and_any_damage_is_caught() {
        let meta = SnapshotMeta {
            index: LogIndex(42),
            term: Term(3),
        };
        let file = SnapshotFile::encode(meta, b"the state machine");
        let decoded = SnapshotFile::decode(file.bytes().to_vec(), "x").expect("decodes");
        assert_eq!(decoded.meta(), meta);
        assert_eq!(decoded.data(), b"the state machine");
        let mut caught = 0;
        for offset in 0..file.bytes().len() {
            for bit in 0..8 {
                let mut bad = file.bytes().to_vec();
                bad[offset] ^= 1 << bit;
                assert!(
                    SnapshotFile::decode(bad, "x").is_err(),
                    "bit {bit} at {offset}"
                );
                caught += 1;
            }
        }
        assert_eq!(caught, file.bytes().len() * 8);
        for cut in 0..file.bytes().len() {
            assert!(SnapshotFile::decode(file.bytes()[..cut].to_vec(), "x").is_err());
        }
    }

    #[test]
    fn damaged_snapshot_files_are_errors() {
        use rand::{rngs::StdRng, SeedableRng};
        let meta = SnapshotMeta {
            index: LogIndex(42),
            term: Term(3),
        };
        let file = SnapshotFile::encode(meta, &[7u8; 300]);
        let mut rng = StdRng::seed_from_u64(20);
        let mut errors = 0;
        for case in 0..20_000 {
            let damaged = crate::mutate::damaged(&mut rng, file.bytes());
            let _ = parse_header(&damaged, "x");
            match SnapshotFile::decode(damaged.clone(), "x") {
                // Damage that leaves a valid file: the same file doubled
                // is not one, so only a change undone by another.
                Ok(decoded) => assert_eq!(decoded.bytes(), file.bytes(), "case {case}"),
                Err(e) => {
                    assert!(e.to_string().contains('x'), "case {case}: {e}");
                    errors += 1;
                }
            }
        }
        assert!(errors > 19_000, "{errors}");
    }
}
