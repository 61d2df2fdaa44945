//! The cluster demo (its user document is `examples/EXAMPLES.md`, in this
//! repository): real Lattice nodes on localhost (three, as `node_configs` lists
//! them) talking gRPC, electing a leader, and serving PUT / GET / DELETE /
//! CAS through consensus.
//!
//! `cargo run --example cluster` exits 0 once every stage happened, non-zero
//! with the stage that did not. Data goes to `./data/`; a second run recovers
//! it. `--keep-running` leaves the cluster up for experiments. To run more
//! nodes, add entries to `node_configs` (`tests/examples.rs` runs it with
//! five).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use lattice::{Client, Node};

mod common;
use common::{founder_config, wait_for_leader, wait_for_same_state};

/// Run a Lattice cluster on localhost and drive it through consensus.
#[derive(Parser)]
struct Args {
    /// Where each node keeps its WAL (one subdirectory per node).
    #[arg(long, default_value = "./data")]
    data_dir: std::path::PathBuf,
    /// Keep the cluster running after the demo (Ctrl-C to stop), for live
    /// experiments with `lattice kv` or scripts/partition.sh.
    #[arg(long)]
    keep_running: bool,
    /// How long each stage may take before the demo gives up.
    #[arg(long, default_value_t = 15)]
    stage_timeout_secs: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    common::init_logging();
    let args = Args::parse();
    // (id, Raft address, KV address) of each node, as in the user document.
    let node_configs = vec![
        (1, "[::1]:50051", "[::1]:50152"),
        (2, "[::1]:50151", "[::1]:50252"),
        (3, "[::1]:50251", "[::1]:50352"),
    ];
    run(
        &node_configs,
        &args.data_dir,
        Duration::from_secs(args.stage_timeout_secs),
        args.keep_running,
    )
    .await
}

/// The demo, for any number of nodes.
pub async fn run(
    node_configs: &[(u64, &str, &str)],
    data_dir: &Path,
    stage_timeout: Duration,
    keep_running: bool,
) -> Result<()> {
    let n = node_configs.len();
    println!("=== Starting {n}-Node Lattice Cluster ===\n");
    let is_recovering = data_dir.exists();
    println!(
        "Data directory: {} ({})",
        data_dir.display(),
        if is_recovering {
            "found: recovering the nodes' logs"
        } else {
            "new"
        }
    );

    // 1. Bootstrap. Nodes start a little apart, so the first ones find their
    //    peers missing for a moment: the connection failures are expected.
    let mut nodes = Vec::new();
    for &(id, _, _) in node_configs {
        let config = founder_config(id, node_configs, data_dir);
        let node = Node::start(config)
            .await
            .with_context(|| format!("stage 'bootstrap': node {id} did not start"))?;
        nodes.push(node);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    println!("\n✓ Bootstrap: {n} nodes started");

    // 2. Election.
    let (leader, term) = wait_for_leader(&nodes, stage_timeout)
        .await
        .context("stage 'election': no leader was elected")?;
    println!(
        "✓ Election: node {leader} is the leader in term {term} (a majority of {n} elected it)"
    );

    // 3. Client operations through consensus.
    let endpoints: Vec<&str> = node_configs.iter().map(|(_, _, kv)| *kv).collect();
    let mut client = Client::new(&endpoints).context("creating the client")?;
    let runs = client_operations(&mut client)
        .await
        .context("stage 'client operations'")?;
    println!(
        "\n  This cluster's data has now seen {runs} run(s) of this demo{}",
        if runs > 1 {
            " (state recovered from the data directory)"
        } else {
            ""
        }
    );

    // 4. Replication: every node applied the same state.
    let summary = wait_for_same_state(&nodes, stage_timeout)
        .await
        .context("stage 'replication': the nodes did not converge")?;
    println!(
        "✓ Replication: all {n} nodes applied the same state (applied index {}, {} keys, digest {:08x})",
        summary.applied_index, summary.keys, summary.digest
    );

    if keep_running {
        println!(
            "\nCluster is running (Ctrl-C to stop). KV endpoints: {}",
            endpoints.join(", ")
        );
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
    }
    println!("\nShutting down.");
    for node in nodes {
        node.shutdown().await;
    }
    println!("=== Demo complete ===");
    Ok(())
}

async fn client_operations(client: &mut Client) -> Result<u64> {
    println!();
    println!("  PUT key1 = value1");
    client.put("key1", "value1").await.context("PUT key1")?;
    println!(
        "Connected to KV service at http://{}",
        client.leader().unwrap_or("?")
    );
    println!("  ✓ PUT successful");

    println!("  PUT key2 = value2");
    client.put("key2", "value2").await.context("PUT key2")?;
    println!("  ✓ PUT successful");

    println!("  GET key1");
    let value = client.get("key1").await.context("GET key1")?;
    if value.as_deref() != Some(b"value1".as_slice()) {
        bail!("GET key1 returned {} instead of value1", show(&value));
    }
    println!("  ✓ GET key1 = {}", show(&value));

    println!("  DELETE key2");
    let existed = client.delete("key2").await.context("DELETE key2")?;
    if !existed {
        bail!("DELETE key2 found no key2 right after putting it");
    }
    println!("  ✓ DELETE successful");

    println!("  GET key2");
    let value = client.get("key2").await.context("GET key2")?;
    if value.is_some() {
        bail!("GET key2 returned {} after it was deleted", show(&value));
    }
    println!("  ✓ GET key2 = (not found)");

    // A counter of demo runs, bumped with compare-and-swap: it survives restarts.
    let current = client.get("demo:runs").await.context("GET demo:runs")?;
    let runs: u64 = match &current {
        Some(v) => String::from_utf8_lossy(v)
            .parse()
            .context("demo:runs is not a number")?,
        None => 0,
    };
    let next = (runs + 1).to_string();
    println!("  CAS demo:runs {} -> {}", show(&current), next);
    let result = client
        .compare_and_swap("demo:runs", current.clone(), next.as_bytes())
        .await
        .context("CAS demo:runs")?;
    if !result.swapped {
        bail!(
            "CAS demo:runs did not swap: found {}",
            show(&result.current)
        );
    }
    println!("  ✓ CAS swapped");
    Ok(runs + 1)
}

fn show(value: &Option<Vec<u8>>) -> String {
    match value {
        Some(v) => String::from_utf8_lossy(v).into_owned(),
        None => "(not found)".to_string(),
    }
}
