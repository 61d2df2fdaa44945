//! What the examples share: the log format of the user document, and waiting
//! for a leader and for the nodes to converge.

use std::fmt;
use std::time::Duration;

use anyhow::{bail, Result};
use lattice::raft::Role;
use lattice::{Node, NodeConfig, NodeId, PeerConfig};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Logs as the user document shows them (`[Node <addr>] message`), at
/// `info` unless RUST_LOG says otherwise. Once per process.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(false)
        .event_format(NodeFormat)
        .try_init();
}

/// The configuration of node `id`, a founder of the cluster `nodes` (each
/// (id, Raft address, KV address)): every other founder is a peer.
pub fn founder_config(
    id: u64,
    nodes: &[(u64, &str, &str)],
    data_dir: &std::path::Path,
) -> NodeConfig {
    let (_, raft_addr, kv_addr) = *nodes
        .iter()
        .find(|(node, _, _)| *node == id)
        .expect("the node is one of the founders");
    let peers = nodes
        .iter()
        .filter(|(peer, _, _)| *peer != id)
        .map(|&(peer, raft, kv)| PeerConfig {
            id: NodeId(peer),
            raft_addr: raft.to_string(),
            kv_addr: kv.to_string(),
        })
        .collect();
    NodeConfig::new(
        NodeId(id),
        raft_addr,
        kv_addr,
        peers,
        data_dir.join(format!("node-{id}")),
    )
}

/// The leader a majority of `nodes` follow, and its term.
pub async fn wait_for_leader(nodes: &[Node], timeout: Duration) -> Result<(NodeId, u64)> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let leaders: Vec<_> = nodes
            .iter()
            .map(Node::status)
            .filter(|s| s.role == Role::Leader)
            .collect();
        if let Some(leader) = leaders.iter().max_by_key(|s| s.term) {
            // Wait until a majority follow it, so the demo starts from a settled cluster.
            let followers = nodes
                .iter()
                .map(Node::status)
                .filter(|s| s.term == leader.term && s.leader == Some(leader.id))
                .count();
            if followers > nodes.len() / 2 {
                return Ok((leader.id, leader.term.0));
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every node applied the same state, up to the highest
/// commit index among them.
pub async fn wait_for_same_state(
    nodes: &[Node],
    timeout: Duration,
) -> Result<lattice::server::StateSummary> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut summaries = Vec::new();
        for node in nodes {
            summaries.push(node.state_summary().await?);
        }
        let commit = nodes
            .iter()
            .map(|n| n.status().commit_index)
            .max()
            .unwrap_or_default();
        let first = summaries[0];
        if first.applied_index >= commit && summaries.iter().all(|s| *s == first) {
            return Ok(first);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?}: {summaries:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Prints library events as `[Node <addr>] message fields`, like the user
/// document shows; events outside a node are printed bare.
struct NodeFormat;

impl<S, N> FormatEvent<S, N> for NodeFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = *event.metadata().level();
        if level <= tracing::Level::WARN {
            write!(writer, "{level} ")?;
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if span.name() != "node" {
                    continue;
                }
                let extensions = span.extensions();
                let fields = extensions
                    .get::<FormattedFields<N>>()
                    .map(|f| f.fields.as_str())
                    .unwrap_or("");
                let addr = fields
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix("addr="))
                    .unwrap_or(fields);
                write!(writer, "[Node {addr}] ")?;
            }
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
