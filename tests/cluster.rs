//! In-process clusters over real loopback TCP: the node library end to end.
//! Leader failure mid-writes, restart of every node from its data directory,
//! leader discovery, bad input at both services, and what an operator
//! watches (`/metrics`, `/health`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use lattice::raft::Role;
use lattice::{Client, ClientConfig, ClientError, Node, NodeConfig, NodeId, PeerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

struct Addrs {
    raft: String,
    kv: String,
    /// `/metrics` and `/health`.
    metrics: String,
}

/// Free loopback ports for `n` nodes (bound, read, released).
fn free_addrs(n: usize) -> Vec<Addrs> {
    let listeners: Vec<_> = (0..3 * n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect();
    (0..n)
        .map(|i| Addrs {
            raft: format!("127.0.0.1:{}", ports[3 * i]),
            kv: format!("127.0.0.1:{}", ports[3 * i + 1]),
            metrics: format!("127.0.0.1:{}", ports[3 * i + 2]),
        })
        .collect()
}

fn node_config(id: u64, addrs: &[Addrs], data: &Path) -> NodeConfig {
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
    // Faster than the defaults so the test spends its time on work, not waiting.
    config.tick_interval = Duration::from_millis(10);
    config.election_timeout_ticks_min = 15;
    config.election_timeout_ticks_max = 30;
    config.heartbeat_interval_ticks = 3;
    // Snapshot often, so every test here also compacts and restarts from
    // snapshots on a real disk.
    config.snapshot_entries = 200;
    config.snapshot_catchup_entries = 50;
    config
}

struct TestCluster {
    addrs: Vec<Addrs>,
    data: PathBuf,
    nodes: BTreeMap<u64, Node>,
}

impl TestCluster {
    /// Free ports are found by binding port 0 and letting go, so a test
    /// running beside this one may take one first: then try again with
    /// fresh ports.
    async fn start(data: &Path) -> Result<TestCluster> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            // A fourth pair of addresses for a node that joins later.
            let mut cluster = TestCluster {
                addrs: free_addrs(4),
                data: data.to_path_buf(),
                nodes: BTreeMap::new(),
            };
            let mut started = Ok(());
            for id in 1..=3 {
                started = cluster.start_node(id).await;
                if started.is_err() {
                    break;
                }
            }
            match started {
                Ok(()) => return Ok(cluster),
                Err(e) if attempt < 5 && format!("{e:#}").contains("Address already in use") => {
                    for id in 1..=3 {
                        cluster.stop_node(id).await;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn start_node(&mut self, id: u64) -> Result<()> {
        let node = Node::start(node_config(id, &self.addrs[..3], &self.data))
            .await
            .with_context(|| format!("starting node {id}"))?;
        self.nodes.insert(id, node);
        Ok(())
    }

    /// Node 4, on the spare addresses: it knows no peers and joins.
    async fn start_joining_node(&mut self) -> Result<()> {
        let mut config = node_config(4, &self.addrs, &self.data);
        config.peers.clear();
        config.join = true;
        let node = Node::start(config).await.context("starting node 4")?;
        self.nodes.insert(4, node);
        Ok(())
    }

    async fn stop_node(&mut self, id: u64) {
        if let Some(node) = self.nodes.remove(&id) {
            node.shutdown().await;
        }
    }

    /// The founding nodes' KV endpoints.
    fn endpoints(&self) -> Vec<String> {
        self.addrs[..3].iter().map(|a| a.kv.clone()).collect()
    }

    fn client(&self, client_id: u64) -> Client {
        let config = ClientConfig {
            client_id: Some(client_id),
            operation_timeout: Duration::from_secs(5),
            rpc_timeout: Duration::from_secs(2),
            ..ClientConfig::default()
        };
        Client::with_config(
            &self.endpoints(),
            config,
            Arc::new(lattice::transport::TcpTransport),
        )
        .expect("client")
    }

    /// The leader a majority of running nodes agree on, within `timeout`.
    async fn leader(&self, timeout: Duration) -> Result<u64> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let statuses: Vec<_> = self.nodes.values().map(Node::status).collect();
            if let Some(leader) = statuses
                .iter()
                .filter(|s| s.role == Role::Leader)
                .max_by_key(|s| s.term)
            {
                let agree = statuses
                    .iter()
                    .filter(|s| s.term == leader.term && s.leader == Some(leader.id))
                    .count();
                if agree >= 2 {
                    return Ok(leader.id.0);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("no leader within {timeout:?}: {statuses:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn shutdown(mut self) {
        for id in self.nodes.keys().copied().collect::<Vec<_>>() {
            self.stop_node(id).await;
        }
    }
}

#[derive(Default)]
struct Ledger {
    /// Writes the cluster acknowledged: key -> value.
    acknowledged: BTreeMap<String, String>,
    unknown: usize,
    failed: usize,
}

/// Clients putting unique keys until stopped, each noting what the
/// cluster acknowledged, and what failed or ended unknown.
struct Writers {
    ledger: Arc<Mutex<Ledger>>,
    is_stopping: Arc<std::sync::atomic::AtomicBool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    fn spawn(cluster: &TestCluster, first_client_id: u64, count: u64, prefix: &str) -> Writers {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let is_stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut handles = Vec::new();
        for writer in 0..count {
            let mut client = cluster.client(first_client_id + writer);
            let (ledger, is_stopping) = (ledger.clone(), is_stopping.clone());
            let prefix = prefix.to_string();
            handles.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !is_stopping.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("{prefix}{writer}-{i}");
                    let value = format!("value-{writer}-{i}");
                    let result = client.put(key.as_bytes(), value.as_bytes()).await;
                    let mut ledger = ledger.lock().await;
                    match result {
                        Ok(()) => {
                            ledger.acknowledged.insert(key, value);
                        }
                        Err(ClientError::Unknown(_)) => ledger.unknown += 1,
                        Err(ClientError::Failed(_)) => ledger.failed += 1,
                    }
                    i += 1;
                }
            }));
        }
        Writers {
            ledger,
            is_stopping,
            handles,
        }
    }

    async fn acknowledged(&self) -> usize {
        self.ledger.lock().await.acknowledged.len()
    }

    /// Waits until `more` writes beyond those acknowledged now are.
    async fn wait_for_more(&self, more: usize, timeout: Duration) -> Result<()> {
        let target = self.acknowledged().await + more;
        wait_until(timeout, || self.acknowledged(), |n| n >= target).await
    }

    async fn stop(self) -> Result<Ledger> {
        self.is_stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for handle in self.handles {
            handle.await?;
        }
        Ok(Arc::try_unwrap(self.ledger)
            .ok()
            .expect("writers done")
            .into_inner())
    }
}

/// Checks that every acknowledged write reads back with its value.
async fn verify_acknowledged(client: &mut Client, ledger: &Ledger) -> Result<()> {
    for (key, value) in &ledger.acknowledged {
        let read = client
            .get(key.as_bytes())
            .await
            .with_context(|| format!("reading {key}"))?;
        if read.as_deref() != Some(value.as_bytes()) {
            bail!("acknowledged write {key}={value} lost: read {read:?}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_leader_failure_and_full_restart() -> Result<()> {
    let data = tempfile::tempdir()?;
    let mut cluster = TestCluster::start(data.path()).await?;
    let first_leader = cluster.leader(Duration::from_secs(10)).await?;

    let writers = Writers::spawn(&cluster, 100, 4, "w");
    writers.wait_for_more(100, Duration::from_secs(10)).await?;

    // Stop the leader in the middle of the writes.
    let before_failover = writers.acknowledged().await;
    cluster.stop_node(first_leader).await;
    let new_leader = cluster.leader(Duration::from_secs(10)).await?;
    assert_ne!(
        new_leader, first_leader,
        "a new leader is elected among the survivors"
    );
    wait_until(
        Duration::from_secs(15),
        || writers.acknowledged(),
        |n| n >= before_failover + 100,
    )
    .await?;

    let ledger = writers.stop().await?;
    println!(
        "acknowledged {} writes ({} unknown, {} failed); leader {first_leader} stopped, {new_leader} took over",
        ledger.acknowledged.len(),
        ledger.unknown,
        ledger.failed
    );
    assert!(ledger.acknowledged.len() >= 200);

    let mut reader = cluster.client(900);
    verify_acknowledged(&mut reader, &ledger)
        .await
        .context("after leader failure")?;

    // Restart everything from the data directories, the old leader included.
    let addrs_kept = cluster.shutdown_keep_addrs().await;
    let mut cluster = TestCluster {
        addrs: addrs_kept,
        data: data.path().to_path_buf(),
        nodes: BTreeMap::new(),
    };
    for id in 1..=3 {
        cluster.start_node(id).await?;
    }
    cluster.leader(Duration::from_secs(10)).await?;
    let mut reader = cluster.client(901);
    verify_acknowledged(&mut reader, &ledger)
        .await
        .context("after restarting every node")?;
    cluster.shutdown().await;
    Ok(())
}

impl TestCluster {
    async fn shutdown_keep_addrs(mut self) -> Vec<Addrs> {
        for id in self.nodes.keys().copied().collect::<Vec<_>>() {
            self.stop_node(id).await;
        }
        std::mem::take(&mut self.addrs)
    }
}

/// A raw gRPC channel to `addr`, for speaking the wire protocol directly.
async fn connect(addr: &str) -> Result<tonic::transport::Channel> {
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?,
    )
}

async fn wait_until<F, Fut>(
    timeout: Duration,
    mut probe: F,
    done: impl Fn(usize) -> bool,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let value = probe().await;
        if done(value) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("condition not reached within {timeout:?} (last value {value})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_find_the_leader_and_bad_requests_fail_cleanly() -> Result<()> {
    let data = tempfile::tempdir()?;
    let cluster = TestCluster::start(data.path()).await?;
    let leader = cluster.leader(Duration::from_secs(10)).await?;
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");

    // A client that knows only a follower is redirected by its hint.
    let config = ClientConfig {
        client_id: Some(5),
        ..ClientConfig::default()
    };
    let only_follower = vec![cluster.addrs[follower as usize - 1].kv.clone()];
    let mut client = Client::with_config(
        &only_follower,
        config,
        Arc::new(lattice::transport::TcpTransport),
    )?;
    client.put("k", "v").await?;
    assert_eq!(
        client.leader(),
        Some(cluster.addrs[leader as usize - 1].kv.as_str())
    );
    assert_eq!(client.get("k").await?, Some(b"v".to_vec()));

    // Compare-and-swap and delete say what happened.
    let swapped = client
        .compare_and_swap("k", Some(b"v".to_vec()), "w")
        .await?;
    assert!(swapped.swapped);
    let refused = client
        .compare_and_swap("k", Some(b"v".to_vec()), "x")
        .await?;
    assert!(!refused.swapped);
    assert_eq!(refused.current, Some(b"w".to_vec()));
    assert!(client.delete("k").await?);
    assert!(!client.delete("k").await?);
    assert_eq!(client.get("k").await?, None);

    // Over-limit and empty keys are definite failures; nothing is proposed.
    let commit_before = cluster.nodes[&leader].status().commit_index;
    for (key, value) in [
        (vec![], vec![1]),
        (vec![b'k'; 4097], vec![1]),
        (b"k".to_vec(), vec![0; (1 << 20) + 1]),
    ] {
        match client.put(key, value).await {
            Err(ClientError::Failed(reason)) => assert!(
                reason.contains("key") || reason.contains("value"),
                "{reason}"
            ),
            other => panic!("expected a definite failure, got {other:?}"),
        }
    }
    assert!(matches!(
        client.get(vec![]).await,
        Err(ClientError::Failed(_))
    ));
    assert_eq!(
        cluster.nodes[&leader].status().commit_index,
        commit_before,
        "nothing proposed"
    );

    // Garbage on the wire at both ports: the node shrugs it off.
    for addr in [
        &cluster.addrs[leader as usize - 1].raft,
        &cluster.addrs[leader as usize - 1].kv,
    ] {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET / HTTP/1.1\r\n\r\n\x00\xff garbage \xde\xad\xbe\xef")
            .await?;
        drop(stream);
    }
    // A peer message addressed to another node, or from node 0, is
    // rejected, not obeyed. (Any other sender id is heard: a node cut off
    // while members changed must hear a leader it does not know yet.)
    let channel = connect(&cluster.addrs[leader as usize - 1].raft).await?;
    let mut raft = lattice::proto::raft_client::RaftClient::new(channel);
    let misrouted = lattice::proto::AppendEntriesRequest {
        from: 77,
        to: leader + 100,
        term: 1000,
        ..Default::default()
    };
    let from_zero = lattice::proto::AppendEntriesRequest {
        from: 0,
        to: leader,
        term: 1000,
        ..Default::default()
    };
    for forged in [misrouted, from_zero] {
        let status = raft
            .append_entries(forged.clone())
            .await
            .expect_err("forged");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        // The same on a replication stream: the stream ends with the refusal.
        let mut responses = raft
            .replicate(tokio_stream::iter([forged]))
            .await?
            .into_inner();
        let status = responses.message().await.expect_err("forged");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
    let status = cluster.nodes[&leader].status();
    assert_eq!(
        status.role,
        Role::Leader,
        "the forged higher term did not depose the leader"
    );

    // The Batch stream answers each operation under its id, whatever the
    // others in its message do: a good put next to requests without an
    // operation, with an empty key, without a session.
    {
        use lattice::proto::kv_request::Operation;
        use lattice::proto::kv_response::Result as Answer;
        use lattice::proto::{BatchRequest, GetRequest, KvRequest, PutRequest, Session};
        let channel = connect(&cluster.addrs[leader as usize - 1].kv).await?;
        let mut kv = lattice::proto::kv_client::KvClient::new(channel);
        let put = |session, key: &[u8]| PutRequest {
            session,
            key: key.to_vec(),
            value: b"one".to_vec(),
        };
        let session = Some(Session {
            client_id: 99,
            sequence: 1,
        });
        let requests = vec![
            (7, Some(Operation::Put(put(session, b"batch")))),
            (8, None),
            (9, Some(Operation::Get(GetRequest { key: vec![] }))),
            (10, Some(Operation::Put(put(None, b"batch")))),
        ];
        let batch = BatchRequest {
            requests: requests
                .into_iter()
                .map(|(id, operation)| KvRequest { id, operation })
                .collect(),
        };
        let mut responses = kv.batch(tokio_stream::iter([batch])).await?.into_inner();
        let mut answers = std::collections::BTreeMap::new();
        // Our side closed after one message: the node answers all, then ends.
        while let Some(message) = responses.message().await? {
            for response in message.responses {
                assert!(answers.insert(response.id, response.result).is_none());
            }
        }
        assert_eq!(answers.keys().copied().collect::<Vec<_>>(), [7, 8, 9, 10]);
        assert!(matches!(answers[&7], Some(Answer::Put(_))), "{answers:?}");
        for id in [8, 9, 10] {
            match &answers[&id] {
                Some(Answer::Error(error)) => assert_eq!(error.class, "invalid-argument"),
                other => panic!("request {id}: expected an invalid-argument error, got {other:?}"),
            }
        }
        assert_eq!(client.get("batch").await?, Some(b"one".to_vec()));

        // A message over the operation limit ends its stream, nothing done.
        let too_many = BatchRequest {
            requests: (0..=lattice::transport::limits::BATCH_OPERATIONS_MAX as u64)
                .map(|id| KvRequest {
                    id,
                    operation: Some(Operation::Get(GetRequest {
                        key: b"batch".to_vec(),
                    })),
                })
                .collect(),
        };
        let mut responses = kv.batch(tokio_stream::iter([too_many])).await?.into_inner();
        let status = responses.message().await.expect_err("over the limit");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }

    // Sessions sharing a stream may have large answers ready together: they
    // go in as many messages as the size limit needs, none is lost.
    let big = vec![b'b'; 1 << 20];
    client.put("big", big.clone()).await?;
    let reads = (0..6).map(|_| {
        let mut session = client.new_session();
        async move { session.get("big").await }
    });
    for read in futures_util::future::join_all(reads).await {
        assert_eq!(read?.as_deref(), Some(big.as_slice()));
    }

    client.put("after", "garbage").await?;
    assert_eq!(client.get("after").await?, Some(b"garbage".to_vec()));
    cluster.shutdown().await;
    Ok(())
}

/// Puts `count` keys `prefix-i` through `client`; every one must succeed.
async fn put_all(client: &mut Client, prefix: &str, count: usize) -> Result<()> {
    for i in 0..count {
        let key = format!("{prefix}-{i}");
        client
            .put(key.as_bytes(), format!("value-{i}").as_bytes())
            .await
            .with_context(|| format!("putting {key}"))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_follower_rejoins_by_snapshot() -> Result<()> {
    let data = tempfile::tempdir()?;
    let mut cluster = TestCluster::start(data.path()).await?;
    let leader = cluster.leader(Duration::from_secs(10)).await?;
    let wiped = (1..=3).find(|&id| id != leader).expect("a follower");
    let other = (1..=3)
        .find(|&id| id != leader && id != wiped)
        .expect("another");
    let mut client = cluster.client(7);
    put_all(&mut client, "before", 400).await?;

    // The follower's disk is replaced while it is down; the cluster goes
    // on and compacts its log past everything the follower had.
    cluster.stop_node(wiped).await;
    std::fs::remove_dir_all(data.path().join(format!("node-{wiped}")))?;
    put_all(&mut client, "while-away", 400).await?;
    let leader_status = cluster.nodes[&leader].status();
    assert!(
        leader_status.compacted_index.0 > 0,
        "the leader compacted its log: {leader_status:?}"
    );

    cluster.start_node(wiped).await?;
    let started = std::time::Instant::now();
    let leader_state = cluster.nodes[&leader].state_summary().await?;
    wait_until(
        Duration::from_secs(15),
        || async { cluster.nodes[&wiped].status().applied_index.0 as usize },
        |applied| applied as u64 >= leader_state.applied_index.0,
    )
    .await?;
    let status = cluster.nodes[&wiped].status();
    println!(
        "the wiped follower caught up to index {} in {:?} with {} snapshot install(s)",
        status.applied_index,
        started.elapsed(),
        status.snapshots_installed
    );
    assert!(
        status.snapshots_installed >= 1,
        "it rejoined by snapshot: {status:?}"
    );
    let state = cluster.nodes[&wiped].state_summary().await?;
    let leader_state = cluster.nodes[&leader].state_summary().await?;
    if state.applied_index == leader_state.applied_index {
        assert_eq!(
            state.digest, leader_state.digest,
            "the same state as the leader"
        );
    }

    // Without the other follower, the cluster needs the rejoined one.
    cluster.stop_node(other).await;
    put_all(&mut client, "after", 50).await?;
    for (prefix, count) in [("before", 400), ("while-away", 400), ("after", 50)] {
        for i in (0..count).step_by(37) {
            let key = format!("{prefix}-{i}");
            let value = client.get(key.as_bytes()).await?;
            assert_eq!(
                value.as_deref(),
                Some(format!("value-{i}").as_bytes()),
                "{key}"
            );
        }
    }
    cluster.shutdown().await;
    Ok(())
}

/// `lattice move-leader` and SIGTERM's graceful shutdown on real TCP: the
/// leader moves where it is told (and refuses strangers), then a graceful
/// stop of the new leader hands over again, while writers run: none of
/// their writes fails or ends unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_and_graceful_shutdown_fail_no_client() -> Result<()> {
    let data = tempfile::tempdir()?;
    let mut cluster = TestCluster::start(data.path()).await?;
    let first = cluster.leader(Duration::from_secs(10)).await?;

    let writers = Writers::spawn(&cluster, 300, 4, "m");
    writers.wait_for_more(50, Duration::from_secs(10)).await?;

    // The admin service, as `lattice move-leader` uses it.
    let admin = cluster.client(399);
    let target = if first == 3 { 2 } else { 3 };
    let bad = admin
        .move_leader(Some(NodeId(9)), Duration::from_secs(5))
        .await;
    assert!(
        matches!(bad, Err(lattice::Error::InvalidArgument(_))),
        "a stranger is refused: {bad:?}"
    );
    let (leader, term) = admin
        .move_leader(Some(NodeId(target)), Duration::from_secs(5))
        .await?;
    assert_eq!(leader, NodeId(target));
    assert_eq!(cluster.leader(Duration::from_secs(5)).await?, target);
    let statuses = admin.statuses().await;
    assert_eq!(statuses.len(), 3);
    for (endpoint, status) in &statuses {
        let status = status
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{endpoint}: {e}"))?;
        assert_eq!(status.term, term, "{endpoint}");
        assert_eq!(status.leader, Some(NodeId(target)), "{endpoint}");
    }
    writers.wait_for_more(50, Duration::from_secs(10)).await?;

    // SIGTERM's path on the new leader: it hands over, then stops.
    let node = cluster.nodes.remove(&target).expect("running");
    node.shutdown_gracefully().await;
    let next = cluster.leader(Duration::from_secs(5)).await?;
    assert_ne!(next, target);
    writers.wait_for_more(50, Duration::from_secs(10)).await?;

    let ledger = writers.stop().await?;
    println!(
        "moved {first} -> {target}, stopped {target} -> {next}: {} writes acknowledged, {} unknown, {} failed",
        ledger.acknowledged.len(),
        ledger.unknown,
        ledger.failed
    );
    assert_eq!(
        (ledger.unknown, ledger.failed),
        (0, 0),
        "no client saw a failure"
    );
    let mut reader = cluster.client(901);
    verify_acknowledged(&mut reader, &ledger).await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_as_a_learner_is_promoted_and_the_leader_is_removed_under_writes() -> Result<()>
{
    use lattice::raft::ConfChange;
    use lattice::MemberRole;
    let data = tempfile::tempdir()?;
    let mut cluster = TestCluster::start(data.path()).await?;
    let leader = cluster.leader(Duration::from_secs(10)).await?;
    let mut client = cluster.client(7);
    put_all(&mut client, "before", 300).await?;

    // A writer runs throughout; every write it saw acknowledged must be
    // there at the end.
    let mut all = cluster.endpoints();
    all.push(cluster.addrs[3].kv.clone());
    let writer_client = Client::with_config(
        &all,
        ClientConfig {
            client_id: Some(8),
            operation_timeout: Duration::from_secs(5),
            rpc_timeout: Duration::from_secs(2),
            ..ClientConfig::default()
        },
        Arc::new(lattice::transport::TcpTransport),
    )?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn({
        let stop = stop.clone();
        let mut client = writer_client;
        async move {
            let (mut acked, mut failed) = (Vec::new(), 0);
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("during-{i}");
                match client.put(key.as_bytes(), b"v").await {
                    Ok(()) => acked.push(key),
                    Err(_) => failed += 1,
                }
                i += 1;
            }
            (acked, failed)
        }
    });

    let admin = cluster.client(9);
    let timeout = Duration::from_secs(10);
    cluster.start_joining_node().await?;
    assert_eq!(cluster.nodes[&4].status().membership, MemberRole::None);
    let added = admin
        .change_membership(
            ConfChange::Add {
                id: NodeId(4),
                raft_addr: cluster.addrs[3].raft.clone(),
                kv_addr: cluster.addrs[3].kv.clone(),
                is_learner: true,
            },
            timeout,
        )
        .await?;
    assert!(added.is_committed);
    assert!(added.membership.is_learner(NodeId(4)));
    assert_eq!(added.membership.voters().count(), 3);
    // The learner catches up (by snapshot: the log was compacted).
    let leader_applied = cluster.nodes[&leader].status().applied_index.0 as usize;
    wait_until(
        Duration::from_secs(15),
        || async { cluster.nodes[&4].status().applied_index.0 as usize },
        |applied| applied >= leader_applied,
    )
    .await?;
    assert_eq!(cluster.nodes[&4].status().membership, MemberRole::Learner);
    assert!(cluster.nodes[&4].status().snapshots_installed >= 1);

    let promoted = admin
        .change_membership(ConfChange::Promote(NodeId(4)), timeout)
        .await?;
    assert_eq!(promoted.membership.voters().count(), 4);
    wait_until(
        Duration::from_secs(5),
        || async { usize::from(cluster.nodes[&4].status().membership == MemberRole::Voter) },
        |is_voter| is_voter == 1,
    )
    .await?;

    // Leadership moves to node 4, which is not among the admin client's
    // endpoints: the client follows the refusals' leader hint.
    let (new_leader, _) = admin.move_leader(Some(NodeId(4)), timeout).await?;
    assert_eq!(new_leader, NodeId(4));
    let members = admin.members(timeout).await?;
    assert_eq!(members.leader, NodeId(4));
    // A client given the founders learns node 4 from the member list.
    let mut learner = cluster.client(11);
    assert_eq!(learner.endpoints().len(), 3);
    assert_eq!(learner.learn_endpoints(timeout).await?, 4);
    assert!(learner.endpoints().contains(&cluster.addrs[3].kv.as_str()));
    let (back, _) = admin.move_leader(Some(NodeId(leader)), timeout).await?;
    assert_eq!(back, NodeId(leader));

    // The leader itself leaves: it hands over and stops.
    let removed = admin
        .change_membership(ConfChange::Remove(NodeId(leader)), timeout)
        .await?;
    assert!(!removed.membership.contains(NodeId(leader)));
    assert!(removed.membership.removed.contains(&NodeId(leader)));
    wait_until(
        Duration::from_secs(5),
        || async { usize::from(cluster.nodes[&leader].status().is_removed) },
        |is_removed| is_removed == 1,
    )
    .await?;
    cluster.stop_node(leader).await;
    let members = admin.members(timeout).await?;
    assert_ne!(members.leader, NodeId(leader));
    assert_eq!(members.membership.voters().count(), 3);
    // Its id is never reused.
    let reuse = admin
        .change_membership(
            ConfChange::Add {
                id: NodeId(leader),
                raft_addr: "127.0.0.1:1".into(),
                kv_addr: "127.0.0.1:2".into(),
                is_learner: true,
            },
            timeout,
        )
        .await;
    assert!(
        matches!(reuse, Err(lattice::Error::InvalidArgument(ref m)) if m.contains("never reused")),
        "{reuse:?}"
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acked, failed) = writer.await?;
    println!(
        "writer: {} acknowledged, {failed} failed during the changes",
        acked.len()
    );
    assert!(acked.len() > 5, "the writer made progress: {}", acked.len());
    let mut reader = Client::with_config(
        &all,
        ClientConfig {
            client_id: Some(10),
            operation_timeout: Duration::from_secs(5),
            ..ClientConfig::default()
        },
        Arc::new(lattice::transport::TcpTransport),
    )?;
    for key in acked.iter().step_by(7).chain(acked.last()) {
        assert_eq!(
            reader.get(key.as_bytes()).await?.as_deref(),
            Some(&b"v"[..]),
            "{key} was acknowledged"
        );
    }
    for i in (0..300).step_by(29) {
        let key = format!("before-{i}");
        assert!(reader.get(key.as_bytes()).await?.is_some(), "{key}");
    }
    for node in cluster.nodes.into_values() {
        node.shutdown().await;
    }
    Ok(())
}

/// A node that was down while it was removed (so it never got its removal)
/// comes back with its old configuration: the leader has given up on it,
/// and the first member it asks for a vote refuses it as removed. It stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_removed_while_down_stops_once_a_member_refuses_it() -> Result<()> {
    use lattice::raft::ConfChange;
    let data = tempfile::tempdir()?;
    let mut cluster = TestCluster::start(data.path()).await?;
    let leader = cluster.leader(Duration::from_secs(10)).await?;
    let mut client = cluster.client(7);
    put_all(&mut client, "before", 20).await?;
    let down = (1..=3).find(|&id| id != leader).expect("a follower");
    cluster.stop_node(down).await;

    let admin = cluster.client(9);
    let removed = admin
        .change_membership(ConfChange::Remove(NodeId(down)), Duration::from_secs(10))
        .await?;
    assert!(removed.membership.removed.contains(&NodeId(down)));
    // Ten election timeouts (30 ticks of 10 ms): the leader stops
    // replicating to it, so it cannot learn its removal from the log.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    put_all(&mut client, "after", 20).await?;

    cluster.start_node(down).await?;
    assert!(!cluster.nodes[&down].status().is_removed);
    wait_until(
        Duration::from_secs(10),
        || async { usize::from(cluster.nodes[&down].status().is_removed) },
        |is_removed| is_removed == 1,
    )
    .await
    .context("the removed node stops")?;
    // It never got the entries written after its removal.
    assert!(cluster.nodes[&down].status().applied_index < removed.index);
    cluster.shutdown().await;
    Ok(())
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
    // What an operator watches, on /metrics and /health over HTTP: the
    // metrics say what happened and pass `promtool check metrics`; /health
    // turns 503 once the leader is lost.
    let data = tempfile::tempdir()?;
    let mut cluster = TestCluster::start(data.path()).await?;
    let mut client = cluster.client(1);
    for i in 0..300 {
        client.put(format!("k{i}"), format!("v{i}")).await?;
    }
    assert_eq!(client.get("k7").await?, Some(b"v7".to_vec()));
    let leader = cluster
        .nodes
        .values()
        .find(|n| n.status().role == Role::Leader)
        .map(|n| n.id().0)
        .context("a leader")?;
    // Followers apply what the leader committed (heartbeats carry it).
    for node in cluster.nodes.values() {
        let mut status = node.watch_status();
        tokio::time::timeout(
            Duration::from_secs(10),
            status.wait_for(|s| s.applied_index.0 >= 300 && s.leader.is_some()),
        )
        .await
        .context("every node applies the writes")??;
    }

    for id in 1..=3u64 {
        let addr = &cluster.addrs[id as usize - 1].metrics;
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
    let addr = cluster.addrs[leader as usize - 1].metrics.clone();
    let addr = &addr;
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
        cluster.stop_node(id).await;
    }
    let addr = cluster.addrs[last as usize - 1].metrics.clone();
    let addr = &addr;
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
    cluster.shutdown().await;
    Ok(())
}

/// The certificates of the TLS test: the cluster's development CA, and a
/// stranger's CA that signs look-alikes.
struct Certs {
    cluster: lattice::tls::DevCaFiles,
    stranger: lattice::tls::DevCaFiles,
}

impl Certs {
    fn make(dir: &Path) -> Result<Certs> {
        use lattice::tls::{write_pair, DevCa, DevCaFiles};
        let certs = Certs {
            cluster: DevCaFiles {
                dir: dir.join("cluster"),
            },
            stranger: DevCaFiles {
                dir: dir.join("stranger"),
            },
        };
        for files in [&certs.cluster, &certs.stranger] {
            std::fs::create_dir_all(&files.dir)?;
            let ca = DevCa::generate(1)?;
            ca.write(files)?;
            for id in 1..=3 {
                let (cert, key) = ca.issue_node(id, &[])?;
                let (cert_path, key_path) = files.node(id);
                write_pair(&cert_path, &cert, &key_path, &key)?;
            }
            let (cert, key) = ca.issue_client("alice")?;
            let (cert_path, key_path) = files.client("alice");
            write_pair(&cert_path, &cert, &key_path, &key)?;
        }
        Ok(certs)
    }

    /// Node `id` with `files`' certificates on both ports, trusting the
    /// cluster CA (for peers and for client certificates).
    fn secure(
        &self,
        config: &mut NodeConfig,
        id: u64,
        files: &lattice::tls::DevCaFiles,
    ) -> Result<()> {
        let (cert, key) = files.node(id);
        config.kv_tls = Some(lattice::tls::ServerTls::from_files(
            &cert,
            &key,
            Some(&self.cluster.ca()),
        )?);
        config.peer_tls = Some(lattice::tls::PeerTls::from_files(
            &cert,
            &key,
            &self.cluster.ca(),
        )?);
        Ok(())
    }

    fn client_tls(
        &self,
        ca: &Path,
        identity: Option<(PathBuf, PathBuf)>,
    ) -> Result<lattice::tls::ClientTls> {
        let (cert, key) = identity.unzip();
        Ok(lattice::tls::ClientTls::from_files(
            ca,
            cert.as_deref(),
            key.as_deref(),
        )?)
    }
}

fn tls_client(
    endpoints: &[String],
    tls: Option<lattice::tls::ClientTls>,
    timeout: Duration,
) -> Result<Client> {
    let config = ClientConfig {
        operation_timeout: timeout,
        rpc_timeout: Duration::from_secs(1),
        tls,
        ..ClientConfig::default()
    };
    Ok(Client::with_config(
        endpoints,
        config,
        Arc::new(lattice::transport::TcpTransport),
    )?)
}

/// What node `addr`'s Raft port answers a RequestVote from node `from`,
/// sent over TLS with `tls`'s certificate.
async fn request_vote(
    addr: &str,
    tls: lattice::tls::ClientTls,
    from: u64,
    to: u64,
) -> Result<tonic::Status> {
    let config = lattice::transport::ChannelConfig {
        connect_timeout: Duration::from_secs(1),
        rpc_timeout: Duration::from_secs(2),
        keepalive_interval: Duration::from_secs(1),
        keepalive_timeout: Duration::from_secs(2),
        tls: Some(tls),
    };
    let channel =
        lattice::transport::channel(Arc::new(lattice::transport::TcpTransport), addr, &config)?;
    let mut raft = lattice::proto::raft_client::RaftClient::new(channel);
    let request = lattice::proto::RequestVoteRequest {
        from,
        to,
        term: 1,
        pre_vote: true,
        ..Default::default()
    };
    match raft.request_vote(request).await {
        Ok(_) => Ok(tonic::Status::ok("answered")),
        Err(status) => Ok(status),
    }
}

/// TLS end to end: nodes 1 and 2 hold the cluster's certificates, node 3 a
/// stranger's (its own CA). The cluster runs on 1 and 2 with mutual peer
/// TLS and client-certificate authentication; node 3 is refused by both
/// until it restarts with the cluster's certificate. Clients without a
/// certificate, with a stranger's, or in plaintext are refused; a peer
/// certificate speaks only for the node it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_its_clients_and_refuses_strangers() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = Certs::make(&dir.path().join("certs"))?;
    let addrs = free_addrs(3);
    let config = |id: u64, files: &lattice::tls::DevCaFiles| -> Result<NodeConfig> {
        let mut config = node_config(id, &addrs, dir.path());
        config.metrics_addr = None;
        certs.secure(&mut config, id, files)?;
        Ok(config)
    };
    let mut nodes = BTreeMap::new();
    for id in 1..=2 {
        nodes.insert(id, Node::start(config(id, &certs.cluster)?).await?);
    }
    nodes.insert(3, Node::start(config(3, &certs.stranger)?).await?);
    let endpoints: Vec<String> = addrs.iter().map(|a| a.kv.clone()).collect();

    let alice = Some(certs.cluster.client("alice"));
    let mut client = tls_client(
        &endpoints[..2],
        Some(certs.client_tls(&certs.cluster.ca(), alice.clone())?),
        Duration::from_secs(5),
    )?;
    for i in 0..20 {
        client.put(format!("k{i}"), format!("v{i}")).await?;
    }
    assert_eq!(client.get("k19").await?, Some(b"v19".to_vec()));
    let leader = nodes[&1]
        .status()
        .leader
        .context("node 1 knows the leader")?;
    ensure!(leader.0 == 1 || leader.0 == 2, "leader {leader}");

    // The stranger took no part: it never heard of a leader or an entry.
    let stranger = nodes[&3].status();
    ensure!(
        stranger.leader.is_none() && stranger.commit_index.0 == 0 && stranger.last_index.0 == 0,
        "a node with a stranger's certificate joined in: {stranger:?}"
    );

    // Clients the KV port refuses: each attempt fails, and nothing is written.
    let refused = [
        (
            "no certificate",
            Some(certs.client_tls(&certs.cluster.ca(), None)?),
        ),
        (
            "a stranger's certificate",
            Some(certs.client_tls(&certs.cluster.ca(), Some(certs.stranger.client("alice")))?),
        ),
        (
            "a stranger's CA (the server's certificate fails)",
            Some(certs.client_tls(&certs.stranger.ca(), Some(certs.stranger.client("alice")))?),
        ),
        ("plaintext", None),
    ];
    for (what, tls) in refused {
        let mut client = tls_client(&endpoints[..2], tls, Duration::from_secs(1))?;
        match client.put("intruder", what).await {
            Ok(()) => bail!("a client with {what} wrote"),
            Err(e) => ensure!(
                e.is_definite(),
                "{what}: {e} (a refused client wrote nothing)"
            ),
        }
    }
    ensure!(
        client.get("intruder").await?.is_none(),
        "a refused client's write landed"
    );

    // A peer certificate speaks for its own node only; a client's for none.
    let leader_raft = &addrs[leader.0 as usize - 1].raft;
    let other = 3 - leader.0;
    let (cert, key) = certs.cluster.node(other);
    let as_other = certs.client_tls(&certs.cluster.ca(), Some((cert, key)))?;
    let status = request_vote(leader_raft, as_other.clone(), 3, leader.0).await?;
    ensure!(
        status.code() == tonic::Code::PermissionDenied
            && status
                .message()
                .contains(&format!("node {other}'s, not node 3's")),
        "node {other}'s certificate spoke for node 3: {status:?}"
    );
    let status = request_vote(leader_raft, as_other, other, leader.0).await?;
    ensure!(
        status.code() == tonic::Code::Ok,
        "node {other} speaking for itself: {status:?}"
    );
    let status = request_vote(
        leader_raft,
        certs.client_tls(&certs.cluster.ca(), alice)?,
        other,
        leader.0,
    )
    .await?;
    ensure!(
        status.code() == tonic::Code::PermissionDenied
            && status.message().contains("names no node"),
        "a client's certificate spoke for node {other}: {status:?}"
    );

    // Node 3 with the cluster's certificate catches up.
    nodes.remove(&3).expect("node 3").shutdown().await;
    nodes.insert(3, Node::start(config(3, &certs.cluster)?).await?);
    let node3 = &nodes[&3];
    wait_until(
        Duration::from_secs(10),
        || async { node3.status().applied_index.0 as usize },
        |applied| applied >= 20,
    )
    .await
    .context("node 3 with the cluster's certificate catches up")?;
    let mut pinned = tls_client(
        &endpoints[2..],
        Some(certs.client_tls(&certs.cluster.ca(), Some(certs.cluster.client("alice")))?),
        Duration::from_secs(5),
    )?;
    ensure!(pinned.get("k7").await? == Some(b"v7".to_vec()));
    for node in nodes.into_values() {
        node.shutdown().await;
    }
    Ok(())
}

/// `lattice_server_batch_bytes_held` as the node reports it.
fn batch_bytes_held(node: &Node) -> Result<f64> {
    sample(
        &samples(&node.metrics_text()),
        "lattice_server_batch_bytes_held",
    )
}

/// The node-wide budget of the `Batch` streams: clients that ask for many
/// 1 MiB values and never read the answers hold at most the budget (not
/// 6 × 64 MiB), small writes still fit beside them, and it all comes back
/// when those clients go away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_streams_that_never_read_hold_no_more_than_the_node_budget() -> Result<()> {
    use lattice::proto::kv_request::Operation;
    use lattice::proto::{BatchRequest, GetRequest, KvRequest};
    const BUDGET: usize = 4 << 20;
    let dir = tempfile::tempdir()?;
    let addrs = free_addrs(1);
    let mut config = node_config(1, &addrs, dir.path());
    config.metrics_addr = None;
    config.batch_bytes_max = BUDGET;
    let node = Node::start(config).await?;
    let endpoints = vec![addrs[0].kv.clone()];
    let mut writer = tls_client(&endpoints, None, Duration::from_secs(5))?;
    let big = vec![b'x'; lattice::kv::VALUE_BYTES_MAX];
    writer.put("big", big.clone()).await?;
    ensure!(batch_bytes_held(&node)? == 0.0, "an idle node holds bytes");

    // Six streams, each asking for the big value 64 times and never
    // reading, from a client on a runtime of its own: when that runtime
    // ends, its connection closes, as when a client process goes away.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let kv_addr = addrs[0].kv.clone();
    let greedy = std::thread::spawn(move || -> Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let channel = connect(&kv_addr).await?;
            let mut streams = Vec::new();
            for stream in 0..6u64 {
                let batch = BatchRequest {
                    requests: (0..64)
                        .map(|i| KvRequest {
                            id: stream * 100 + i,
                            operation: Some(Operation::Get(GetRequest {
                                key: b"big".to_vec(),
                            })),
                        })
                        .collect(),
                };
                let requests = tokio_stream::StreamExt::chain(
                    tokio_stream::iter([batch]),
                    tokio_stream::pending(),
                );
                let mut kv = lattice::proto::kv_client::KvClient::new(channel.clone())
                    .max_decoding_message_size(64 << 20);
                streams.push(kv.batch(requests).await?.into_inner());
            }
            let _ = stopped.await;
            Ok(())
        })
    });
    // The answers pile up to the budget, and no further.
    wait_until(
        Duration::from_secs(10),
        || async { batch_bytes_held(&node).unwrap_or(0.0) as usize },
        |held| held >= BUDGET - lattice::kv::VALUE_BYTES_MAX,
    )
    .await
    .context("the unread answers fill the budget")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = batch_bytes_held(&node)? as usize;
    ensure!(
        held <= BUDGET + (64 << 10),
        "the Batch streams hold {held} bytes, over the node's budget of {BUDGET}"
    );
    let process_rss = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .map(str::to_string)
        .unwrap_or_default();
    println!("held {held} bytes with 6 x 64 reads of 1 MiB unread; {process_rss}");

    // No room is left for another 1 MiB answer, but a small write still
    // fits: it goes through, and the reads stay waiting.
    writer.put("small", "v").await?;
    let held = batch_bytes_held(&node)? as usize;
    ensure!(
        held <= BUDGET + (64 << 10),
        "{held} bytes held after a small write"
    );
    // Once the greedy client is gone, all is given back.
    let _ = stop.send(());
    greedy.join().expect("the greedy client's thread")?;
    wait_until(
        Duration::from_secs(10),
        || async { batch_bytes_held(&node).unwrap_or(1.0) as usize },
        |held| held == 0,
    )
    .await
    .context("the budget comes back when the streams end")?;
    ensure!(writer.get("big").await? == Some(big));
    node.shutdown().await;
    Ok(())
}

/// A value larger than the whole `Batch` budget is still read (alone), and
/// writes from many sessions at once all go through: requests waiting to
/// start never block each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_smaller_than_a_value_still_serves_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let addrs = free_addrs(1);
    let mut config = node_config(1, &addrs, dir.path());
    config.metrics_addr = None;
    config.batch_bytes_max = 64 << 10;
    let node = Node::start(config).await?;
    let endpoints = vec![addrs[0].kv.clone()];
    let client = tls_client(&endpoints, None, Duration::from_secs(10))?;
    let big = vec![b'y'; lattice::kv::VALUE_BYTES_MAX];
    client.new_session().put("big", big.clone()).await?;
    let mut tasks = Vec::new();
    for i in 0..32 {
        let mut session = client.new_session();
        let big = big.clone();
        tasks.push(tokio::spawn(async move {
            session.put(format!("k{i}"), vec![b'z'; 48 << 10]).await?;
            let read = session.get("big").await?;
            anyhow::ensure!(read == Some(big), "the big value read back wrong");
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    wait_until(
        Duration::from_secs(5),
        || async { batch_bytes_held(&node).unwrap_or(1.0) as usize },
        |held| held == 0,
    )
    .await
    .context("everything is given back")?;
    node.shutdown().await;
    Ok(())
}
