//! The wire's limits and shared words: the largest messages each port takes,
//! the bounds of a `Batch` stream, and how a member refuses a removed node.
//! Both sides of the wire read them here: the services, the peer senders and
//! the client (which imports nothing else from the server side).

use crate::kv;
use crate::raft::NodeId;

/// Largest peer message: a batch of entries (`append_bytes_max`) plus one
/// maximal entry and framing.
pub const RAFT_MESSAGE_BYTES_MAX: usize = 16 << 20;
/// Terms beyond this are refused: no real cluster gets near it, and a forged
/// one could otherwise overflow the term counter.
pub const TERM_MAX: u64 = 1 << 62;

/// Largest snapshot a follower accepts (it is held in memory while it
/// arrives).
pub const SNAPSHOT_BYTES_MAX: u64 = 4 << 30;

/// Largest client message: a compare-and-swap with two maximal values.
pub const KV_MESSAGE_BYTES_MAX: usize =
    2 * kv::VALUE_BYTES_MAX + 2 * kv::KEY_BYTES_MAX + (64 << 10);

/// Calls and streams one connection may have open at once: HTTP/2 refuses
/// more streams, and more calls in progress wait. With a `Batch` stream's
/// own bound ([`BATCH_PENDING_MAX`] operations), a connection has at most
/// `64 * 4096` operations in progress; the node-wide
/// [`BatchBudget`](super::service::BatchBudget) bounds
/// their bytes.
pub const CALLS_PER_CONNECTION_MAX: usize = 64;

/// Operations one `Batch` message may carry; more ends the stream.
pub const BATCH_OPERATIONS_MAX: usize = 1024;
/// Operations a `Batch` stream may have in progress or answered and unsent,
/// and the bytes of the requests in progress and of the answers unsent: the
/// stream is read only while a whole message more fits under both (else
/// HTTP/2 flow control pushes back on the client). Reads already in progress
/// when the bytes run out still land their answers, so a client that asks
/// for many large values and never reads can make a stream hold up to
/// `BATCH_PENDING_MAX` of them; the node-wide
/// [`BatchBudget`](super::service::BatchBudget) stops every
/// stream from reading more while the node holds too much.
pub const BATCH_PENDING_MAX: usize = 4 * BATCH_OPERATIONS_MAX;
/// How a node refuses a message from a node whose removal it applied; the
/// sender recognises it (`PermissionDenied` with this message) and stops.
pub fn removed_message(node: NodeId) -> String {
    format!("node {node} was removed from the cluster")
}
