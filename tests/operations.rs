//! What an operator watches: `/metrics` and `/health` over HTTP on a real
//! three-node cluster. The metrics say what happened (a leader, commits,
//! fsyncs, round trips, snapshots) and pass `promtool check metrics`;
//! `/health` turns 503 once the leader is lost.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use lattice::raft::Role;
use lattice::{Client, ClientConfig, Node, NodeConfig, NodeId, PeerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Addrs {
    raft: String,
    kv: String,
    metrics: String,
}

fn free_addrs(n: usize) -> Vec<Addrs> {
    let listeners: Vec<_> = (0..3 * n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let addr = |i: usize| listeners[i].local_addr().expect("addr").to_string();
    (0..n)
        .map(|i| Addrs {
            raft: addr(3 * i),
            kv: addr(3 * i + 1),
            metrics: addr(3 * i + 2),
        })
        .collect()
}

fn config(id: u64, addrs: &[Addrs], data: &Path) -> NodeConfig {
    let peers = addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i as u64 + 1 != id)
        .map(|(i, a)| PeerConfig {
            id: NodeId(i as u64 + 1),
            raft_addr: a.raft.clone(),
            kv_addr: a.kv.clone(),
        })
        .collect();
    let me = &addrs[id as usize - 1];
    let mut config = NodeConfig::new(
        NodeId(id),
        &me.raft,
        &me.kv,
        peers,
        data.join(format!("node-{id}")),
    );
    config.metrics_addr = Some(me.metrics.clone());
    config.tick_interval = Duration::from_millis(10);
    config.election_timeout_ticks_min = 15;
    config.election_timeout_ticks_max = 30;
    config.heartbeat_interval_ticks = 3;
    config.snapshot_entries = 100;
    config.snapshot_catchup_entries = 20;
    config
}

/// Three nodes with metrics, on fresh ports (again if one was taken).
async fn start(data: &Path) -> Result<(Vec<Addrs>, BTreeMap<u64, Node>)> {
    for attempt in 1.. {
        let addrs = free_addrs(3);
        let mut nodes = BTreeMap::new();
        let mut failed = None;
        for id in 1..=3 {
            match Node::start(config(id, &addrs, data)).await {
                Ok(node) => {
                    nodes.insert(id, node);
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        match failed {
            None => return Ok((addrs, nodes)),
            Some(e) if attempt < 5 && e.to_string().contains("in use") => {
                for (_, node) in nodes {
                    node.shutdown().await;
                }
            }
            Some(e) => return Err(e.into()),
        }
    }
    unreachable!()
}

/// One HTTP/1.0 GET: the status code and the body.
async fn get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .context("no answer within 10 s")??;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("not HTTP: {response:?}"))?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status code: {head:?}"))?;
    Ok((code, body.to_string()))
}

/// `name{labels}` -> value, for every sample.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn sample(samples: &BTreeMap<String, f64>, name: &str) -> Result<f64> {
    samples
        .get(name)
        .copied()
        .with_context(|| format!("no sample {name}"))
}

/// `promtool check metrics` on the text. Without promtool, skipped with a
/// note, unless LATTICE_REQUIRE_PROMTOOL is set (CI sets it).
fn promtool_check(text: &str) -> Result<()> {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if std::env::var_os("LATTICE_REQUIRE_PROMTOOL").is_none() => {
            eprintln!("promtool not found ({e}): check skipped (apt-get install prometheus)");
            return Ok(());
        }
        Err(e) => bail!("promtool is required (LATTICE_REQUIRE_PROMTOOL) but: {e}"),
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())?;
    let output = child.wait_with_output()?;
    ensure!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("promtool check metrics: passed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_say_what_happened_and_health_flips_when_the_leader_is_lost() -> Result<()> {
    let data = tempfile::tempdir()?;
    let (addrs, mut nodes) = start(data.path()).await?;
    let endpoints: Vec<String> = addrs.iter().map(|a| a.kv.clone()).collect();
    let mut client = Client::with_config(
        &endpoints,
        ClientConfig {
            operation_timeout: Duration::from_secs(10),
            ..ClientConfig::default()
        },
        Arc::new(lattice::transport::TcpTransport),
    )?;
    for i in 0..300 {
        client.put(format!("k{i}"), format!("v{i}")).await?;
    }
    assert_eq!(client.get("k7").await?, Some(b"v7".to_vec()));
    let leader = nodes
        .values()
        .find(|n| n.status().role == Role::Leader)
        .map(|n| n.id().0)
        .context("a leader")?;
    // Followers apply what the leader committed (heartbeats carry it).
    for node in nodes.values() {
        let mut status = node.watch_status();
        tokio::time::timeout(
            Duration::from_secs(10),
            status.wait_for(|s| s.applied_index.0 >= 300 && s.leader.is_some()),
        )
        .await
        .context("every node applies the writes")??;
    }

    for id in 1..=3u64 {
        let addr = &addrs[id as usize - 1].metrics;
        let (code, body) = get(addr, "/health").await?;
        assert_eq!(
            (code, body.as_str()),
            (200, "{\"health\":\"true\",\"reason\":\"\"}\n")
        );
        let (code, text) = get(addr, "/metrics").await?;
        assert_eq!(code, 200);
        let s = samples(&text);
        let is_leader = id == leader;
        assert_eq!(sample(&s, "lattice_server_has_leader")?, 1.0);
        assert_eq!(
            sample(&s, "lattice_server_is_leader")?,
            if is_leader { 1.0 } else { 0.0 }
        );
        assert!(sample(&s, "lattice_server_term")? >= 1.0);
        assert!(sample(&s, "lattice_server_leader_changes_seen_total")? >= 1.0);
        assert!(sample(&s, "lattice_server_proposals_committed_total")? >= 300.0);
        assert!(sample(&s, "lattice_server_proposals_applied_total")? >= 300.0);
        assert_eq!(sample(&s, "lattice_server_proposals_pending")?, 0.0);
        assert!(sample(&s, "lattice_disk_wal_fsync_duration_seconds_count")? >= 1.0);
        assert!(sample(&s, "lattice_disk_wal_append_duration_seconds_count")? >= 1.0);
        // Every 100 entries, a snapshot (the commit index passed 300).
        assert!(sample(&s, "lattice_snapshot_saved_total")? >= 1.0);
        assert!(sample(&s, "lattice_snapshot_save_duration_seconds_count")? >= 1.0);
        let (wal, snap, all) = (
            sample(&s, "lattice_storage_wal_bytes")?,
            sample(&s, "lattice_storage_snapshot_bytes")?,
            sample(&s, "lattice_storage_data_dir_bytes")?,
        );
        assert!(
            wal > 0.0 && snap > 0.0 && all >= wal + snap,
            "{wal} {snap} {all}"
        );
        if is_leader {
            assert!(sample(&s, "lattice_server_proposals_committed_total")? >= 300.0);
            for peer in (1..=3).filter(|&p| p != id) {
                let rtt =
                    format!("lattice_network_peer_round_trip_time_seconds_count{{to=\"{peer}\"}}");
                assert!(sample(&s, &rtt)? >= 100.0, "{rtt}");
            }
        }
        promtool_check(&text)?;
    }

    // Clients that connect and send nothing hold no connection for long
    // (each is a file descriptor the node's WAL may need): the server
    // drops them after its header timeout, and scrapes work again.
    let addr = &addrs[leader as usize - 1].metrics;
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(tokio::net::TcpStream::connect(addr).await?);
    }
    for mut socket in idle {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut byte))
            .await
            .context("an idle metrics connection was kept over 10 s")?;
        assert!(matches!(read, Ok(0) | Err(_)), "closed: {read:?}");
    }
    assert_eq!(get(addr, "/health").await?.0, 200);

    // The leader and another node go: the last one loses its leader within
    // an election timeout, and says so.
    let last = (1..=3).find(|&id| id != leader).expect("a follower");
    for id in (1..=3).filter(|&id| id != last) {
        nodes.remove(&id).expect("running").shutdown().await;
    }
    let addr = &addrs[last as usize - 1].metrics;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (code, body) = loop {
        let (code, body) = get(addr, "/health").await?;
        if code != 200 || tokio::time::Instant::now() > deadline {
            break (code, body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(code, 503, "{body}");
    let reason: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(reason["health"], "false");
    assert_eq!(reason["reason"], "no leader");
    let s = samples(&get(addr, "/metrics").await?.1);
    assert_eq!(sample(&s, "lattice_server_has_leader")?, 0.0);
    let failures: f64 = s
        .iter()
        .filter(|(name, _)| name.starts_with("lattice_network_peer_sent_failures_total"))
        .map(|(_, v)| v)
        .sum();
    assert!(failures >= 1.0, "messages to the stopped peers failed");
    // Anything else is a clear 404 or 405.
    assert_eq!(get(addr, "/").await?.0, 404);
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    assert!(response.contains(" 405 "), "{response}");
    for (_, node) in nodes {
        node.shutdown().await;
    }
    Ok(())
}
