//! The examples as a user changes them: `cargo run --example cluster` with
//! its `node_configs` extended to five entries (the user document's
//! "Add more nodes - Extend `node_configs` vec").

use std::time::Duration;

use anyhow::Result;

#[path = "../examples/cluster.rs"]
#[allow(dead_code)]
mod cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_example_runs_with_five_entries_in_node_configs() -> Result<()> {
    // The example's five entries, on free loopback ports (its own ports
    // may be taken by a demo running beside the tests).
    let listeners: Vec<_> = (0..10)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.to_string()))
        .collect::<std::io::Result<_>>()?;
    drop(listeners);
    let node_configs: Vec<(u64, &str, &str)> = (0..5)
        .map(|i| {
            (
                i as u64 + 1,
                addrs[2 * i].as_str(),
                addrs[2 * i + 1].as_str(),
            )
        })
        .collect();
    let data = tempfile::tempdir()?;
    cluster::run(&node_configs, data.path(), Duration::from_secs(30), false).await?;
    // A second run recovers all five from their data directories.
    cluster::run(&node_configs, data.path(), Duration::from_secs(30), false).await
}
