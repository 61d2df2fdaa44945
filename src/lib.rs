//! Lattice: a Raft key-value store that proves itself.
//!
//! The crate map, from the bottom up:
//! - [`raft`]: the consensus core, a deterministic state machine with no I/O,
//!   no async and no clock (inputs in, [`raft::Ready`] out).
//! - [`storage`]: durable hard state and log: the [`storage::Storage`] seam,
//!   the CRC-checked file WAL, an in-memory store.
//! - [`kv`]: the replicated state machine (put, get, delete, compare-and-swap)
//!   and the client sessions that make retries apply at most once.
//! - [`mailbox`]: the driver's vocabulary (its inputs, its status, the
//!   request helpers), imported by the transport, the metrics and the driver.
//! - [`transport`]: the gRPC services (Raft peers, KV clients) on tonic, and the
//!   [`transport::Transport`] seam (bind / accept / connect) that lets the same
//!   code run over real TCP or a simulated network.
//! - [`server`]: the driver: one task owns a raft core, ticks it, persists,
//!   sends, applies and answers clients, one file per concern.
//!   [`server::Node`] starts one node.
//! - [`probe`](mod@probe): coverage markers on rare paths (`probe!`), counted by the
//!   simulation with the `probes` feature, nothing without it.
//! - [`planted`]: the catalogue of classic bugs the test suite must catch,
//!   compiled in only with the `planted-bugs` feature (tests).
//! - [`metrics`]: `/metrics` (Prometheus) and `/health` for operators.
//! - [`tls`]: TLS on both ports, peer identities, `lattice cert`'s CA.
//! - [`client`]: the KV client: finds the leader, retries, and tells ok,
//!   definitely failed and unknown outcome apart.
//!
//! Determinism: node logic uses only `tokio::time`, one seeded RNG per node,
//! ordered maps and `biased` selects, so a simulation seed replays exactly.

pub mod client;
mod error;
pub mod kv;
pub mod mailbox;
pub mod metrics;
#[cfg(test)]
mod mutate;
pub mod planted;
pub mod probe;
pub mod raft;
pub mod server;
pub mod storage;
pub mod tls;
pub mod transport;

pub use client::{Client, ClientConfig, ClientError, EndpointStatus, MemberList, ReadResult};
pub use error::{Error, Result};
pub use raft::{LogIndex, NodeId, Term};
pub use server::{MemberRole, Members, Node, NodeConfig, PeerConfig};

/// The generated protobuf and gRPC code (`proto/lattice.proto`).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("lattice");
}
