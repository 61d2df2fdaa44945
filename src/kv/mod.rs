//! The replicated state machine: a sorted map of byte keys to byte values with
//! put, get, delete and compare-and-swap, and the client session table that
//! makes a retried command apply at most once.
//!
//! Every node applies the same committed entries in the same order, so every
//! node computes the same map, the same session table and the same results.
//! Nothing here may depend on anything but the entries (no clock, no RNG, no
//! `HashMap` order).

use std::io::{self, Write};
use std::sync::Arc;

use imbl::OrdMap;
use prost::Message as _;
use tracing::warn;

use crate::planted::{is_planted, Bug};
use crate::proto;
use crate::raft::{Entry, LogIndex, Membership, SnapshotMeta, Term};
use crate::{Error, Result};

/// A key is 1 byte to 4 KiB.
pub const KEY_BYTES_MAX: usize = 4 << 10;
/// A value is at most 1 MiB.
pub const VALUE_BYTES_MAX: usize = 1 << 20;
/// Sessions remembered; past this the least recently used one is forgotten
/// (deterministically, by the log index of its last command).
pub const SESSIONS_MAX: usize = 100_000;

/// What a command does to the map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Swap in `new_value` if the current value equals `expected` (`None`: the
    /// key must be absent).
    CompareAndSwap {
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        new_value: Vec<u8>,
    },
}

/// One client command: the operation and the session that orders it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub client_id: u64,
    /// Grows by one per operation of this client; a retry reuses it.
    pub sequence: u64,
    pub operation: Operation,
}

/// The result of applying a command, remembered per session so that a retry
/// gets the first answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Put,
    Delete {
        existed: bool,
    },
    CompareAndSwap {
        swapped: bool,
        current: Option<Vec<u8>>,
    },
    /// The command was not applied: an older sequence number of a session that
    /// has moved on, or an entry that does not decode.
    Rejected(String),
}

pub fn validate_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument("the key is empty".into()));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(Error::InvalidArgument(format!(
            "the key is {} bytes; the limit is {KEY_BYTES_MAX}",
            key.len()
        )));
    }
    Ok(())
}

pub fn validate_value(value: &[u8]) -> Result<()> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(Error::InvalidArgument(format!(
            "the value is {} bytes; the limit is {VALUE_BYTES_MAX}",
            value.len()
        )));
    }
    Ok(())
}

impl Command {
    /// Checks the limits; nothing invalid is ever proposed.
    pub fn validate(&self) -> Result<()> {
        if self.client_id == 0 || self.sequence == 0 {
            return Err(Error::InvalidArgument(
                "a session needs a non-zero client id and sequence number".into(),
            ));
        }
        match &self.operation {
            Operation::Put { key, value } => {
                validate_key(key)?;
                validate_value(value)
            }
            Operation::Delete { key } => validate_key(key),
            Operation::CompareAndSwap {
                key,
                expected,
                new_value,
            } => {
                validate_key(key)?;
                if let Some(expected) = expected {
                    validate_value(expected)?;
                }
                validate_value(new_value)
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        use proto::command::Operation as Op;
        let operation = match &self.operation {
            Operation::Put { key, value } => Op::Put(proto::PutOperation {
                key: key.clone(),
                value: value.clone(),
            }),
            Operation::Delete { key } => Op::Delete(proto::DeleteOperation { key: key.clone() }),
            Operation::CompareAndSwap {
                key,
                expected,
                new_value,
            } => Op::CompareAndSwap(proto::CompareAndSwapOperation {
                key: key.clone(),
                expected: expected.clone(),
                new_value: new_value.clone(),
            }),
        };
        proto::Command {
            client_id: self.client_id,
            sequence: self.sequence,
            operation: Some(operation),
        }
        .encode_to_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Command> {
        use proto::command::Operation as Op;
        let command = proto::Command::decode(bytes)
            .map_err(|e| Error::InvalidArgument(format!("undecodable command: {e}")))?;
        let operation = match command.operation {
            Some(Op::Put(op)) => Operation::Put {
                key: op.key,
                value: op.value,
            },
            Some(Op::Delete(op)) => Operation::Delete { key: op.key },
            Some(Op::CompareAndSwap(op)) => Operation::CompareAndSwap {
                key: op.key,
                expected: op.expected,
                new_value: op.new_value,
            },
            None => {
                return Err(Error::InvalidArgument(
                    "command without an operation".into(),
                ))
            }
        };
        Ok(Command {
            client_id: command.client_id,
            sequence: command.sequence,
            operation,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Session {
    sequence: u64,
    /// Checksum of the command that used `sequence`: a different command
    /// under the same number (a client that restarted with a fixed id) is
    /// refused instead of being answered with someone else's result.
    command_crc: u32,
    outcome: Outcome,
    /// Log index of the session's last command (its recency, for eviction).
    last_index: LogIndex,
}

/// The map, the sessions and how far the log has been applied.
///
/// The maps are persistent (shared structure), so a clone costs O(1): the
/// driver snapshots a clone while it goes on applying to the original.
#[derive(Clone, Debug, Default)]
pub struct KvStore {
    /// Keys and values shared, not owned: a tree node copied after a clone
    /// (the first write to it while a snapshot holds the old tree) copies
    /// pointers, not every key and value in it.
    data: OrdMap<Arc<[u8]>, Arc<[u8]>>,
    sessions: OrdMap<u64, Session>,
    /// Session client ids by the index of their last command, oldest first.
    sessions_by_index: OrdMap<LogIndex, u64>,
    applied: LogIndex,
    /// The term of the entry at `applied`.
    applied_term: Term,
    /// The configuration of the newest configuration entry applied (`None`:
    /// the cluster's bootstrap configuration). A snapshot carries it: it
    /// is the one in force at the snapshot's index.
    membership: Option<Membership>,
    /// No value in the store is larger (an upper bound: values overwritten
    /// or deleted since count). What a read may answer, for the KV port's
    /// budget of answers held.
    value_bytes_bound: usize,
    /// The index this store was restored at from a snapshot (0: it was
    /// not): a retry answered from a session no newer than it is answered
    /// from restored state (a coverage marker; not part of the state).
    #[cfg_attr(not(feature = "probes"), allow(dead_code))]
    restored_index: LogIndex,
    /// The session table's digest, kept as rows come and go: the wrapping
    /// sum of each row's hash (`session_row_hash`), so equal tables have
    /// equal digests whatever their history. Nodes at the same applied
    /// index must agree on it (the simulation checks that they do).
    sessions_digest: u64,
}

/// One session row's part of [`KvStore::sessions_digest`]: its client,
/// sequence number, command and index, mixed (splitmix64's finalizer).
fn session_row_hash(client_id: u64, session: &Session) -> u64 {
    let mix = |mut x: u64| {
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    };
    let row = mix(client_id)
        ^ mix(session.sequence.rotate_left(17))
        ^ mix(u64::from(session.command_crc).rotate_left(41))
        ^ mix(session.last_index.0.rotate_left(5) ^ 0x5E55_1045);
    mix(row)
}

impl KvStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn applied(&self) -> LogIndex {
        self.applied
    }

    /// No value in the store is larger than this.
    pub fn value_bytes_bound(&self) -> usize {
        self.value_bytes_bound
    }

    /// Where a snapshot of the store now would end.
    pub fn applied_meta(&self) -> SnapshotMeta {
        SnapshotMeta {
            index: self.applied,
            term: self.applied_term,
        }
    }

    /// See the field: `None` while the bootstrap configuration is in force.
    pub fn membership(&self) -> Option<&Membership> {
        self.membership.as_ref()
    }

    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.data.get(key).map(|value| &value[..])
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// A checksum of the whole map, equal on nodes that applied the same log.
    /// A digest of the session table (see the field): equal on nodes that
    /// applied the same commands, so a table lost or changed in a snapshot
    /// shows at the next index compared.
    pub fn sessions_digest(&self) -> u64 {
        self.sessions_digest
    }

    pub fn digest(&self) -> u32 {
        let mut hasher = crc32fast::Hasher::new();
        for (key, value) in &self.data {
            hasher.update(&(key.len() as u64).to_le_bytes());
            hasher.update(key);
            hasher.update(&(value.len() as u64).to_le_bytes());
            hasher.update(value);
        }
        hasher.finalize()
    }

    /// Applies the next committed entry. Returns `None` for a no-op and a
    /// configuration entry.
    pub fn apply(&mut self, entry: &Entry) -> Option<Outcome> {
        assert_eq!(
            entry.index,
            self.applied.next(),
            "entries are applied in order, each exactly once"
        );
        self.applied = entry.index;
        self.applied_term = entry.term;
        if entry.data.is_empty() {
            return None;
        }
        if let Some(decoded) = entry.membership() {
            // The core checked it before it entered the log.
            match decoded {
                Ok(membership) => self.membership = Some(membership),
                Err(e) => {
                    warn!(index = entry.index.0, error = %e, "committed configuration does not decode: skipped")
                }
            }
            return None;
        }
        let command = match Command::decode(&entry.data) {
            Ok(command) => command,
            Err(e) => {
                warn!(index = entry.index.0, error = %e, "committed entry does not decode: skipped");
                return Some(Outcome::Rejected(e.to_string()));
            }
        };
        // Leaders propose only valid commands; one that is not (a peer that
        // is not Lattice, or a bug) would otherwise put a key in the store
        // that no snapshot of it could restore.
        if let Err(e) = command.validate() {
            warn!(index = entry.index.0, error = %e, "committed command breaks the limits: skipped");
            return Some(Outcome::Rejected(e.to_string()));
        }
        if let Operation::Put { value, .. }
        | Operation::CompareAndSwap {
            new_value: value, ..
        } = &command.operation
        {
            self.value_bytes_bound = self.value_bytes_bound.max(value.len());
        }
        let session = self
            .sessions
            .get(&command.client_id)
            .filter(|_| !is_planted(Bug::RetriedWriteAppliedTwice));
        if let Some(session) = session {
            if command.sequence == session.sequence {
                if session.command_crc != crc32fast::hash(&entry.data) {
                    return Some(Outcome::Rejected(format!(
                        "client {} reused sequence {} for a different command",
                        command.client_id, command.sequence
                    )));
                }
                crate::probe!(RetryAnsweredFromSession);
                crate::probe!(
                    RetryAnsweredFromRestoredSession,
                    if session.last_index <= self.restored_index
                );
                return Some(session.outcome.clone());
            }
            if command.sequence < session.sequence {
                return Some(Outcome::Rejected(format!(
                    "sequence {} of client {} is older than its last ({})",
                    command.sequence, command.client_id, session.sequence
                )));
            }
        }
        let outcome = self.execute(command.operation);
        self.remember(
            command.client_id,
            command.sequence,
            crc32fast::hash(&entry.data),
            outcome.clone(),
            entry.index,
        );
        Some(outcome)
    }

    fn execute(&mut self, operation: Operation) -> Outcome {
        match operation {
            Operation::Put { key, value } => {
                self.data.insert(key.into(), value.into());
                Outcome::Put
            }
            Operation::Delete { key } => Outcome::Delete {
                existed: self.data.remove(&key[..]).is_some(),
            },
            Operation::CompareAndSwap {
                key,
                expected,
                new_value,
            } => {
                let current = self.data.get(&key[..]);
                if current.map(|v| &v[..]) == expected.as_deref() {
                    self.data.insert(key.into(), new_value.into());
                    Outcome::CompareAndSwap {
                        swapped: true,
                        current: None,
                    }
                } else {
                    Outcome::CompareAndSwap {
                        swapped: false,
                        current: current.map(|v| v.to_vec()),
                    }
                }
            }
        }
    }

    fn remember(
        &mut self,
        client_id: u64,
        sequence: u64,
        command_crc: u32,
        outcome: Outcome,
        index: LogIndex,
    ) {
        let session = Session {
            sequence,
            command_crc,
            outcome,
            last_index: index,
        };
        self.sessions_digest = self
            .sessions_digest
            .wrapping_add(session_row_hash(client_id, &session));
        if let Some(old) = self.sessions.insert(client_id, session) {
            self.sessions_by_index.remove(&old.last_index);
            self.sessions_digest = self
                .sessions_digest
                .wrapping_sub(session_row_hash(client_id, &old));
        }
        self.sessions_by_index.insert(index, client_id);
        while self.sessions.len() > SESSIONS_MAX {
            let (&index, &oldest) = self
                .sessions_by_index
                .get_min()
                .map(|(index, client)| (index, client))
                .expect("the index holds one row per session");
            self.sessions_by_index.remove(&index);
            if let Some(evicted) = self.sessions.remove(&oldest) {
                self.sessions_digest = self
                    .sessions_digest
                    .wrapping_sub(session_row_hash(oldest, &evicted));
            }
        }
    }
}

// ------------------------------------------------------------ snapshots
//
// The data of a snapshot (the file around it is `storage::snapshot`), little
// endian: applied index: u64, applied term: u64, key count: u64, then per key
// key length: u32, key, value length: u32, value; session count: u64, then
// per session client id: u64, sequence: u64, command CRC: u32, last index:
// u64, outcome (tag: u8, then its fields); then, if a configuration entry
// was applied, that configuration (length: u32, `Membership::encode`).

const OUTCOME_PUT: u8 = 0;
const OUTCOME_DELETE: u8 = 1;
const OUTCOME_CAS: u8 = 2;
const OUTCOME_REJECTED: u8 = 3;

fn write_bytes(out: &mut dyn Write, bytes: &[u8]) -> io::Result<()> {
    out.write_all(&(bytes.len() as u32).to_le_bytes())?;
    out.write_all(bytes)
}

impl KvStore {
    /// Writes the store as a snapshot's data (see the layout above).
    pub fn write_snapshot(&self, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(&self.applied.0.to_le_bytes())?;
        out.write_all(&self.applied_term.0.to_le_bytes())?;
        out.write_all(&(self.data.len() as u64).to_le_bytes())?;
        for (key, value) in &self.data {
            write_bytes(out, key)?;
            write_bytes(out, value)?;
        }
        // Planted: the table left out (the snapshot says it had none).
        let is_left_out = is_planted(Bug::SessionsLeftOutOfSnapshot);
        let sessions = if is_left_out { 0 } else { self.sessions.len() };
        out.write_all(&(sessions as u64).to_le_bytes())?;
        for (client_id, session) in self.sessions.iter().filter(|_| !is_left_out) {
            out.write_all(&client_id.to_le_bytes())?;
            out.write_all(&session.sequence.to_le_bytes())?;
            out.write_all(&session.command_crc.to_le_bytes())?;
            out.write_all(&session.last_index.0.to_le_bytes())?;
            match &session.outcome {
                Outcome::Put => out.write_all(&[OUTCOME_PUT])?,
                Outcome::Delete { existed } => out.write_all(&[OUTCOME_DELETE, *existed as u8])?,
                Outcome::CompareAndSwap { swapped, current } => {
                    out.write_all(&[OUTCOME_CAS, *swapped as u8, current.is_some() as u8])?;
                    write_bytes(out, current.as_deref().unwrap_or_default())?;
                }
                Outcome::Rejected(reason) => {
                    out.write_all(&[OUTCOME_REJECTED])?;
                    write_bytes(out, reason.as_bytes())?;
                }
            }
        }
        if let Some(membership) = &self.membership {
            write_bytes(out, &membership.encode())?;
        }
        Ok(())
    }

    /// A store from a snapshot's data. Anything malformed is an error, never
    /// a panic and never a partial store.
    pub fn restore(data: &[u8]) -> Result<KvStore> {
        let mut reader = SnapshotData { data, at: 0 };
        let applied = LogIndex(reader.u64()?);
        let mut store = KvStore {
            applied,
            applied_term: Term(reader.u64()?),
            restored_index: applied,
            ..KvStore::default()
        };
        let keys = reader.u64()?;
        for _ in 0..keys {
            let key = reader.bytes()?.to_vec();
            let value = reader.bytes()?.to_vec();
            validate_key(&key)?;
            validate_value(&value)?;
            store.value_bytes_bound = store.value_bytes_bound.max(value.len());
            store.data.insert(key.into(), value.into());
        }
        let sessions = reader.u64()?;
        for _ in 0..sessions {
            let client_id = reader.u64()?;
            let sequence = reader.u64()?;
            let command_crc = reader.u32()?;
            let last_index = LogIndex(reader.u64()?);
            let outcome = match reader.u8()? {
                OUTCOME_PUT => Outcome::Put,
                OUTCOME_DELETE => Outcome::Delete {
                    existed: reader.u8()? != 0,
                },
                OUTCOME_CAS => {
                    let swapped = reader.u8()? != 0;
                    let is_present = reader.u8()? != 0;
                    let current = reader.bytes()?.to_vec();
                    Outcome::CompareAndSwap {
                        swapped,
                        current: is_present.then_some(current),
                    }
                }
                OUTCOME_REJECTED => {
                    Outcome::Rejected(String::from_utf8_lossy(reader.bytes()?).into_owned())
                }
                tag => return Err(reader.bad(&format!("unknown outcome tag {tag}"))),
            };
            if store
                .sessions_by_index
                .insert(last_index, client_id)
                .is_some()
            {
                return Err(reader.bad("two sessions with one last index"));
            }
            let session = Session {
                sequence,
                command_crc,
                outcome,
                last_index,
            };
            store.sessions_digest = store
                .sessions_digest
                .wrapping_add(session_row_hash(client_id, &session));
            store.sessions.insert(client_id, session);
        }
        if store.sessions.len() as u64 != sessions || store.data.len() as u64 != keys {
            return Err(reader.bad("duplicate keys or sessions"));
        }
        if reader.at != data.len() {
            let config = reader.bytes()?;
            let membership = Membership::decode(config)
                .map_err(|e| reader.bad(&format!("the configuration does not decode: {e}")))?;
            store.membership = Some(membership);
        }
        if reader.at != data.len() {
            return Err(reader.bad("trailing bytes"));
        }
        Ok(store)
    }
}

/// Reads a snapshot's data with bounds checks.
struct SnapshotData<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> SnapshotData<'a> {
    fn bad(&self, reason: &str) -> Error {
        Error::InvalidArgument(format!("snapshot data at byte {}: {reason}", self.at))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.data.len())
            .ok_or_else(|| self.bad("truncated"))?;
        let bytes = &self.data[self.at..end];
        self.at = end;
        Ok(bytes)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::Term;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    struct Log {
        store: KvStore,
        next: u64,
    }

    impl Log {
        fn new() -> Self {
            Log {
                store: KvStore::new(),
                next: 1,
            }
        }
        fn apply(
            &mut self,
            client_id: u64,
            sequence: u64,
            operation: Operation,
        ) -> Option<Outcome> {
            let data = Command {
                client_id,
                sequence,
                operation,
            }
            .encode();
            let entry = Entry {
                term: Term(1),
                index: LogIndex(self.next),
                data,
            };
            self.next += 1;
            self.store.apply(&entry)
        }
    }

    fn put(key: &str, value: &str) -> Operation {
        Operation::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    fn cas(key: &str, expected: Option<&str>, new_value: &str) -> Operation {
        Operation::CompareAndSwap {
            key: key.into(),
            expected: expected.map(Into::into),
            new_value: new_value.into(),
        }
    }

    #[test]
    fn a_retried_command_applies_once_and_answers_its_first_result() {
        let mut log = Log::new();
        let first = log.apply(7, 1, cas("k", None, "a"));
        assert_eq!(
            first,
            Some(Outcome::CompareAndSwap {
                swapped: true,
                current: None
            })
        );
        // The retry (same client, same sequence) is committed again: it must
        // not apply a second time (it would now fail) but answer as the first.
        assert_eq!(log.apply(7, 1, cas("k", None, "a")), first);
        assert_eq!(log.store.get(b"k"), Some(&b"a"[..]));
        // Another client changes the key; a late duplicate of 7/1 must not undo it.
        log.apply(8, 1, put("k", "b"));
        assert_eq!(log.apply(7, 1, cas("k", None, "a")), first);
        assert_eq!(log.store.get(b"k"), Some(&b"b"[..]));
        // The session moves on; an older sequence is refused, not applied.
        log.apply(7, 2, put("k", "c"));
        assert!(matches!(
            log.apply(7, 1, put("k", "zzz")),
            Some(Outcome::Rejected(_))
        ));
        assert_eq!(log.store.get(b"k"), Some(&b"c"[..]));
        // A restarted client reusing an id and number for another command is
        // refused, not told "ok" with the old command's result.
        assert!(matches!(
            log.apply(7, 2, put("k", "other")),
            Some(Outcome::Rejected(_))
        ));
        assert_eq!(log.store.get(b"k"), Some(&b"c"[..]));
    }

    #[test]
    fn delete_and_compare_and_swap_report_what_they_found() {
        let mut log = Log::new();
        assert_eq!(
            log.apply(1, 1, Operation::Delete { key: "k".into() }),
            Some(Outcome::Delete { existed: false })
        );
        log.apply(1, 2, put("k", "v"));
        assert_eq!(
            log.apply(1, 3, cas("k", Some("x"), "w")),
            Some(Outcome::CompareAndSwap {
                swapped: false,
                current: Some(b"v".to_vec())
            })
        );
        assert_eq!(
            log.apply(1, 4, cas("k", None, "w")),
            Some(Outcome::CompareAndSwap {
                swapped: false,
                current: Some(b"v".to_vec())
            }),
            "expected-absent fails on a present key"
        );
        assert_eq!(
            log.apply(1, 5, cas("k", Some("v"), "w")),
            Some(Outcome::CompareAndSwap {
                swapped: true,
                current: None
            })
        );
        assert_eq!(
            log.apply(1, 6, Operation::Delete { key: "k".into() }),
            Some(Outcome::Delete { existed: true })
        );
        assert_eq!(log.store.len(), 0);
    }

    #[test]
    fn limits_are_enforced_before_proposing() {
        let ok = |operation| {
            Command {
                client_id: 1,
                sequence: 1,
                operation,
            }
            .validate()
        };
        assert!(ok(put("k", "v")).is_ok());
        assert!(ok(put("", "v")).is_err(), "empty key");
        assert!(ok(Operation::Put {
            key: vec![b'k'; KEY_BYTES_MAX],
            value: vec![]
        })
        .is_ok());
        assert!(ok(Operation::Put {
            key: vec![b'k'; KEY_BYTES_MAX + 1],
            value: vec![]
        })
        .is_err());
        assert!(ok(Operation::Put {
            key: b"k".to_vec(),
            value: vec![0; VALUE_BYTES_MAX]
        })
        .is_ok());
        assert!(ok(Operation::Put {
            key: b"k".to_vec(),
            value: vec![0; VALUE_BYTES_MAX + 1]
        })
        .is_err());
        let bad_session = Command {
            client_id: 0,
            sequence: 1,
            operation: put("k", "v"),
        };
        assert!(matches!(
            bad_session.validate(),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn an_undecodable_entry_is_skipped_identically_everywhere() {
        let mut store = KvStore::new();
        let entry = Entry {
            term: Term(1),
            index: LogIndex(1),
            data: vec![0xfe, 0xff, 0xff],
        };
        assert!(matches!(store.apply(&entry), Some(Outcome::Rejected(_))));
        assert_eq!(store.applied(), LogIndex(1));
        assert!(store.is_empty());
    }

    #[test]
    fn a_configuration_entry_is_applied_and_kept_in_the_snapshot() {
        use crate::raft::{ConfChange, Membership, NodeId};
        let mut log = Log::new();
        log.apply(7, 1, put("k", "v"));
        let mut store = log.store;
        assert_eq!(store.membership(), None, "the bootstrap configuration");
        let membership = Membership::bootstrap(&[NodeId(1), NodeId(2), NodeId(3)])
            .changed(&ConfChange::Add {
                id: NodeId(4),
                raft_addr: "127.0.0.4:7001".into(),
                kv_addr: "127.0.0.4:7002".into(),
                is_learner: true,
            })
            .unwrap();
        let entry = Entry {
            term: Term(1),
            index: LogIndex(2),
            data: membership.encode(),
        };
        assert_eq!(store.apply(&entry), None, "no client outcome");
        assert_eq!(store.applied(), LogIndex(2));
        assert_eq!(store.membership(), Some(&membership));
        let mut bytes = Vec::new();
        store.write_snapshot(&mut bytes).unwrap();
        let restored = KvStore::restore(&bytes).unwrap();
        assert_eq!(restored.membership(), Some(&membership));
        assert_eq!(restored.digest(), store.digest());
        // A snapshot without a configuration (written before any change)
        // still loads; a truncated configuration does not.
        let mut plain = Vec::new();
        KvStore::new().write_snapshot(&mut plain).unwrap();
        assert_eq!(KvStore::restore(&plain).unwrap().membership(), None);
        assert!(KvStore::restore(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn sessions_are_bounded_and_evicted_oldest_first() {
        let mut log = Log::new();
        for client in 1..=(SESSIONS_MAX as u64 + 10) {
            log.apply(client, 1, put("k", "v"));
        }
        assert_eq!(log.store.sessions.len(), SESSIONS_MAX);
        assert!(
            !log.store.sessions.contains_key(&1),
            "the oldest session was evicted"
        );
        assert!(log.store.sessions.contains_key(&(SESSIONS_MAX as u64 + 10)));
        assert_eq!(log.store.sessions_by_index.len(), SESSIONS_MAX);
    }

    /// The session digest kept as rows come, change and go (evictions
    /// included) equals the one a restore computes from the rows alone, and
    /// tells tables apart.
    #[test]
    fn the_session_digest_follows_the_table() {
        let mut log = Log::new();
        let empty = log.store.sessions_digest();
        for client in 1..=(SESSIONS_MAX as u64 + 10) {
            log.apply(client, 1, put("k", "v"));
        }
        log.apply(SESSIONS_MAX as u64 + 10, 2, put("k", "w"));
        let mut data = Vec::new();
        log.store.write_snapshot(&mut data).expect("write");
        let restored = KvStore::restore(&data).expect("restore");
        assert_eq!(restored.sessions_digest(), log.store.sessions_digest());
        assert_ne!(log.store.sessions_digest(), empty);
        let before = log.store.sessions_digest();
        let outcome = log.apply(SESSIONS_MAX as u64 + 100, 1, put("k", "x"));
        assert_ne!(
            log.store.sessions_digest(),
            before,
            "a new row changes it: {outcome:?}, {} rows",
            log.store.sessions.len()
        );
    }

    #[test]
    fn a_snapshot_restores_the_same_store_and_garbage_is_refused() {
        let mut log = Log::new();
        log.apply(1, 1, put("a", "1"));
        log.apply(2, 1, cas("b", None, "2"));
        log.apply(2, 2, cas("b", Some("x"), "3"));
        log.apply(3, 1, Operation::Delete { key: "a".into() });
        log.apply(3, 2, put("c", ""));
        let mut data = Vec::new();
        log.store.write_snapshot(&mut data).expect("write");
        let restored = KvStore::restore(&data).expect("restore");
        assert_eq!(restored.applied(), LogIndex(5));
        assert_eq!(restored.applied_meta().term, Term(1));
        assert_eq!(restored.digest(), log.store.digest());
        assert_eq!(restored.len(), 2);
        assert_eq!(restored.sessions, log.store.sessions);
        assert_eq!(restored.sessions_by_index, log.store.sessions_by_index);
        // A retry after the restore still gets its first answer.
        let mut continued = Log {
            store: restored,
            next: 6,
        };
        assert_eq!(
            continued.apply(2, 2, cas("b", Some("x"), "3")),
            Some(Outcome::CompareAndSwap {
                swapped: false,
                current: Some(b"2".to_vec())
            })
        );
        for cut in 0..data.len() {
            assert!(KvStore::restore(&data[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = data.clone();
        longer.push(0);
        assert!(KvStore::restore(&longer).is_err());
    }

    fn snapshot_of(store: &KvStore) -> Vec<u8> {
        let mut data = Vec::new();
        store.write_snapshot(&mut data).expect("to memory");
        data
    }

    #[test]
    fn damaged_commands_never_panic_and_the_store_still_snapshots() {
        // Whatever a leader commits, even entries that are not commands of
        // ours or break the limits: apply never panics, and the store's
        // snapshot restores to the same store.
        let mut rng = StdRng::seed_from_u64(17);
        let mut store = KvStore::new();
        let mut outcomes = [0usize; 2]; // [applied, rejected]
        for i in 1..=20_000u64 {
            let operation = match rng.random_range(0..4) {
                0 => put("key", "value"),
                1 => Operation::Delete {
                    key: b"key".to_vec(),
                },
                2 => cas("key", Some("value"), "new"),
                _ => cas("other", None, ""),
            };
            let valid = Command {
                // A session each: a damaged sequence number does not
                // make the next commands of its client look old.
                client_id: i,
                sequence: 1,
                operation,
            }
            .encode();
            let data = crate::mutate::damaged(&mut rng, &valid);
            let entry = Entry {
                term: Term(1),
                index: LogIndex(i),
                data,
            };
            match store.apply(&entry) {
                Some(Outcome::Rejected(_)) => outcomes[1] += 1,
                Some(_) => outcomes[0] += 1,
                None => {}
            }
            if i % 2_000 == 0 {
                let restored = KvStore::restore(&snapshot_of(&store)).expect("restores");
                assert_eq!(restored.digest(), store.digest());
                assert_eq!(restored.len(), store.len());
            }
        }
        eprintln!("applied {}, rejected {}", outcomes[0], outcomes[1]);
        assert!(outcomes[0] > 1_000 && outcomes[1] > 1_000, "{outcomes:?}");
        assert!(store.data.keys().all(|k| validate_key(k).is_ok()));
    }

    #[test]
    fn damaged_snapshot_data_is_an_error_or_a_valid_store() {
        let mut log = Log::new();
        for i in 0..20 {
            log.apply(
                1 + i % 4,
                1 + i / 4,
                put(&format!("k{i}"), &format!("v{i}")),
            );
        }
        log.apply(
            9,
            1,
            Operation::Delete {
                key: b"k3".to_vec(),
            },
        );
        log.apply(10, 1, cas("k4", Some("nope"), "x"));
        log.apply(11, 1, cas("k5", Some("v5"), "x"));
        log.apply(1, 1, put("k1", "replayed with another command"));
        log.store.membership = Some(Membership::bootstrap(&[
            crate::NodeId(1),
            crate::NodeId(2),
            crate::NodeId(3),
        ]));
        let valid = snapshot_of(&log.store);
        assert_eq!(
            KvStore::restore(&valid).expect("restores").digest(),
            log.store.digest()
        );
        let mut rng = StdRng::seed_from_u64(18);
        let (mut errors, mut stores) = (0, 0);
        for case in 0..20_000 {
            let data = crate::mutate::damaged(&mut rng, &valid);
            match KvStore::restore(&data) {
                Err(e) => {
                    assert!(!e.to_string().is_empty(), "case {case}");
                    errors += 1;
                }
                // Damage that still reads as a store (a changed value byte):
                // it is a whole, valid store that snapshots the same again.
                Ok(store) => {
                    assert!(store.data.keys().all(|k| validate_key(k).is_ok()));
                    let again = KvStore::restore(&snapshot_of(&store)).expect("round trip");
                    assert_eq!(again.digest(), store.digest(), "case {case}");
                    stores += 1;
                }
            }
        }
        assert!(
            errors > 10_000 && stores > 100,
            "{errors} errors, {stores} stores"
        );
    }
}
