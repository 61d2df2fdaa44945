//! `checker`: record what clients did, then decide whether some sequential
//! order explains it (linearizability).
//!
//! The crate map:
//! - [`history`]: the JSON Lines history format (a contract), events, and the
//!   pairing of events into operations; [`recorder`] writes it as clients run.
//! - [`operation`]: an invocation paired with its completion, generic over the
//!   model's input and output (below both `history` and `model`).
//! - [`jepsen`]: parsers for Jepsen's etcd register logs and EDN KV histories.
//! - [`model`]: the [`Model`] trait, the KV / register model, and (feature
//!   `stateright`) an adapter for any stateright `SequentialSpec`.
//! - [`search`]: Wing & Gong's search with Lowe's memoization, an explicit
//!   stack, a time budget; partitions checked in parallel.
//! - [`report`]: verdicts explained (the failing key, the smallest window of
//!   operations that cannot be ordered, the longest linearizable prefix) and a
//!   self-contained HTML timeline.
//!
//! It depends on nothing of the Lattice node: any project can use it.

pub mod generate;
pub mod history;
pub mod jepsen;
pub mod model;
pub mod operation;
pub mod recorder;
pub mod report;
pub mod search;

pub use history::{Event, EventType, History, Operation};
pub use model::{KvInput, KvModel, KvOp, KvOutput, KvState, Model, Refutation};
pub use recorder::{OpHandle, Recorder};
pub use search::{check, CheckOptions, Outcome, Verdict};

/// Everything that can go wrong before a verdict: bad input, mostly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("line {line}: {reason}")]
    Parse { line: usize, reason: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
