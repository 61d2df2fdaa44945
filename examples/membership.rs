//! Replacing a machine without downtime: three nodes on localhost, a client
//! writing throughout, and then, as an operator would with `lattice member`:
//! a fourth node starts (it knows no peers) and is added as a learner, it
//! catches up, it is promoted to voter, and node 1 is removed (it stops by
//! itself). Every stage is checked and shown with ✓; at the end every write
//! the client saw acknowledged is read back from the new configuration.
//!
//! `cargo run --example membership` exits 0 once every stage happened,
//! non-zero with the stage that did not. Data goes to a fresh temporary
//! directory (node ids are never reused, so a second run cannot start from
//! the first one's data).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use lattice::raft::{ConfChange, Role};
use lattice::{Client, MemberRole, Node, NodeConfig, NodeId};

mod common;
use common::{founder_config, wait_for_leader, wait_for_same_state};

/// (id, Raft address, KV address): three founders and the newcomer.
const FOUNDERS: [(u64, &str, &str); 3] = [
    (1, "[::1]:50451", "[::1]:50452"),
    (2, "[::1]:50461", "[::1]:50462"),
    (3, "[::1]:50471", "[::1]:50472"),
];
const NEWCOMER: (u64, &str, &str) = (4, "[::1]:50481", "[::1]:50482");
const STAGE_TIMEOUT: Duration = Duration::from_secs(20);

#[tokio::main]
async fn main() -> Result<()> {
    common::init_logging();
    let data = tempfile::tempdir().context("creating a data directory")?;
    println!("=== Membership: replace node 1 with node 4, under writes ===\n");

    // 1. Three founders.
    let mut nodes = Vec::new();
    for (id, _, _) in FOUNDERS {
        let config = founder_config(id, &FOUNDERS, data.path());
        nodes.push(
            Node::start(config)
                .await
                .with_context(|| format!("node {id}"))?,
        );
    }
    let (leader, term) = wait_for_leader(&nodes, STAGE_TIMEOUT)
        .await
        .context("stage 'election'")?;
    println!("✓ 3 nodes started; node {leader} leads in term {term}");

    // 2. A client writes throughout (it knows all four endpoints).
    let endpoints: Vec<&str> = FOUNDERS
        .iter()
        .chain([&NEWCOMER])
        .map(|(_, _, kv)| *kv)
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writer_client = Client::new(&endpoints).context("creating the writer")?;
    let writer = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut acked = Vec::new();
            let mut failed = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{i}");
                match writer_client.put(key.as_bytes(), i.to_string()).await {
                    Ok(()) => acked.push((key, i)),
                    Err(e) => failed.push(format!("{key}: {e}")),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (acked, failed)
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("✓ a client is writing");

    // 3. The newcomer starts knowing no peers, and is added as a learner.
    let admin = Client::new(&endpoints).context("creating the admin client")?;
    let (id, raft_addr, kv_addr) = NEWCOMER;
    let mut config = NodeConfig::new(
        NodeId(id),
        raft_addr,
        kv_addr,
        Vec::new(),
        data.path().join(format!("node-{id}")),
    );
    config.join = true;
    let newcomer = Node::start(config).await.context("starting node 4")?;
    let added = admin
        .change_membership(
            ConfChange::Add {
                id: NodeId(id),
                raft_addr: raft_addr.into(),
                kv_addr: kv_addr.into(),
                is_learner: true,
            },
            STAGE_TIMEOUT,
        )
        .await
        .context("stage 'member add 4 --learner'")?;
    println!(
        "✓ member add 4 --learner: committed at index {} ({})",
        added.index, added.membership
    );

    // 4. It catches up, without a vote.
    let deadline = tokio::time::Instant::now() + STAGE_TIMEOUT;
    loop {
        let status = newcomer.status();
        let commit = nodes
            .iter()
            .map(|n| n.status().commit_index)
            .max()
            .unwrap_or_default();
        if status.membership == MemberRole::Learner && status.applied_index >= commit {
            println!(
                "✓ node 4 caught up as a learner: applied index {} ({} snapshot install(s))",
                status.applied_index, status.snapshots_installed
            );
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("stage 'catch up': node 4 did not catch up: {status:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 5. Promote it.
    let promoted = admin
        .change_membership(ConfChange::Promote(NodeId(id)), STAGE_TIMEOUT)
        .await
        .context("stage 'member promote 4'")?;
    println!(
        "✓ member promote 4: committed at index {} ({})",
        promoted.index, promoted.membership
    );

    // 6. Remove node 1 (the leader or not): it stops by itself.
    let removed = admin
        .change_membership(ConfChange::Remove(NodeId(1)), STAGE_TIMEOUT)
        .await
        .context("stage 'member remove 1'")?;
    println!(
        "✓ member remove 1: committed at index {} ({})",
        removed.index, removed.membership
    );
    let node_1 = nodes.remove(0);
    let mut status = node_1.watch_status();
    tokio::time::timeout(STAGE_TIMEOUT, status.wait_for(|s| s.is_removed))
        .await
        .context("stage 'node 1 stops': it did not")?
        .context("node 1 status")?;
    node_1.shutdown().await;
    nodes.push(newcomer);
    let (leader, term) = wait_for_leader(&nodes, STAGE_TIMEOUT)
        .await
        .context("stage 'new configuration elects'")?;
    if nodes
        .iter()
        .any(|n| n.status().role == Role::Leader && n.id() == NodeId(1))
    {
        bail!("node 1 still leads");
    }
    println!("✓ node 1 stopped itself; node {leader} leads the new configuration in term {term}");

    // 7. Nothing was lost.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, failed) = writer.await.context("the writer")?;
    let mut reader = Client::new(&endpoints[1..]).context("creating the reader")?;
    for (key, value) in &acked {
        let read = reader
            .get(key.as_bytes())
            .await
            .with_context(|| format!("GET {key}"))?;
        if read.as_deref() != Some(value.to_string().as_bytes()) {
            bail!("stage 'read back': {key} was acknowledged as {value}, reads {read:?}");
        }
    }
    println!(
        "✓ the client wrote throughout: {} writes acknowledged, all read back from nodes 2, 3 and 4; {} failed{}",
        acked.len(),
        failed.len(),
        if failed.is_empty() { String::new() } else { format!(": {failed:?}") }
    );
    let summary = wait_for_same_state(&nodes, STAGE_TIMEOUT)
        .await
        .context("stage 'replication'")?;
    println!(
        "✓ nodes 2, 3 and 4 applied the same state (applied index {}, {} keys)",
        summary.applied_index, summary.keys
    );
    for node in nodes {
        node.shutdown().await;
    }
    println!("=== Membership demo complete ===");
    Ok(())
}
