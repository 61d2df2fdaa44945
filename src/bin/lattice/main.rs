//! The `lattice` command: run a node, talk to a cluster, or drive a recording
//! workload against one.
//!
//! ```text
//! lattice node --id 1 --raft-addr 127.0.0.11:7001 --kv-addr 127.0.0.11:7002 \
//!     --peer 2=127.0.0.12:7001,127.0.0.12:7002 --peer 3=127.0.0.13:7001,127.0.0.13:7002 \
//!     --data-dir ./data/node-1
//! lattice node --id 4 --raft-addr 127.0.0.14:7001 --kv-addr 127.0.0.14:7002 \
//!     --join 127.0.0.11:7002,127.0.0.12:7002 --data-dir ./data/node-4
//! lattice member promote 4 --endpoints 127.0.0.11:7002,127.0.0.12:7002
//! lattice kv --endpoints 127.0.0.11:7002,127.0.0.12:7002 put k v
//! lattice workload --endpoints ... --duration-secs 30 --history history.jsonl
//!
//! lattice cert ca --dir certs && lattice cert node --dir certs --id 1 --host 10.0.0.1
//! lattice node ... --cert certs/node-1.pem --key certs/node-1-key.pem \
//!     --peer-cert certs/node-1.pem --peer-key certs/node-1-key.pem --peer-cacert certs/ca.pem
//! lattice kv --cacert certs/ca.pem --endpoints 10.0.0.1:7002 get k
//! ```

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use lattice::raft::ConfChange;
use lattice::tls::{ClientTls, DevCa, DevCaFiles, PeerTls, ServerTls};
use lattice::{
    Client, ClientConfig, ClientError, MemberList, Node, NodeConfig, NodeId, PeerConfig,
};
use serde_json::{json, Value};
use tracing_subscriber::EnvFilter;

/// glibc malloc was 8-11% of a loaded node's CPU (perf); mimalloc costs less
/// per allocation on the RPC path, where tonic and h2 allocate per call.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;

#[derive(Parser)]
#[command(
    name = "lattice",
    version,
    about = "Lattice: a Raft key-value store that proves itself"
)]
struct Cli {
    /// Log format on stderr: `text` (colours only on a terminal) or `json`
    /// (one object per line, for log shippers). RUST_LOG sets the levels
    /// (default: info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node until SIGTERM or Ctrl-C. SIGTERM stops it gracefully: a
    /// leader hands leadership to the most up-to-date voter first, and the
    /// commands it accepted are committed before it exits. Ctrl-C too.
    Node(NodeArgs),
    /// Talk to a cluster: put, get, delete, cas, leader.
    Kv(KvArgs),
    /// Print every endpoint's view: id, role, term, leader, indexes, log
    /// size, voter or learner (the same as `lattice endpoint status`).
    Status(ClusterArgs),
    /// Endpoints (etcdctl endpoint): `lattice endpoint status`.
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Membership (etcdctl member): list, add, promote, remove. Each change
    /// answers once it is committed.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Hand leadership to node ID (etcdctl move-leader); without ID, to the
    /// most up-to-date follower. Waits until the new leader leads.
    MoveLeader(MoveLeaderArgs),
    /// Run concurrent clients on a few keys and record a history for the checker.
    Workload(WorkloadArgs),
    /// Measure throughput and latency with closed-loop clients.
    Bench(bench::BenchArgs),
    /// Make a development CA and node and client certificates (PEM) for
    /// TLS. For development and tests: production clusters use their own CA.
    #[command(subcommand)]
    Cert(CertCommand),
}

#[derive(Subcommand)]
enum CertCommand {
    /// A new CA: DIR/ca.pem and DIR/ca-key.pem (the key readable by its
    /// owner only). Refuses to replace a CA already there.
    Ca(CertCommonArgs),
    /// A node's certificate, signed by DIR's CA: DIR/node-ID.pem and
    /// DIR/node-ID-key.pem. Serves both ports and dials peers. Its SAN
    /// names the node (`lattice-node-ID`: peers check it against the id the
    /// node claims), localhost, 127.0.0.1, ::1 and each --host.
    Node {
        #[command(flatten)]
        common: CertCommonArgs,
        #[arg(long)]
        id: u64,
        /// Another IP address or DNS name the node is reached by
        /// (repeat). Clients and peers check the address they dial
        /// against the certificate.
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// A client's certificate, signed by DIR's CA: DIR/client-NAME.pem and
    /// DIR/client-NAME-key.pem, for nodes run with --client-cert-auth.
    Client {
        #[command(flatten)]
        common: CertCommonArgs,
        #[arg(long)]
        name: String,
    },
}

#[derive(Args)]
struct CertCommonArgs {
    /// Where the CA is (or goes) and the certificates go.
    #[arg(long)]
    dir: PathBuf,
    /// Days the certificates are valid.
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// Replace files already there.
    #[arg(long)]
    force: bool,
}

/// TLS for the commands that dial a cluster. Without --cacert: plaintext.
/// Each flag can come from the environment instead (as etcdctl's
/// ETCDCTL_CACERT): `scripts/cluster.sh env` prints them for a TLS cluster.
#[derive(Args, Clone, Default)]
pub(crate) struct ClientTlsArgs {
    /// Dial over TLS, trusting the servers this CA (PEM) signed. Each
    /// server's certificate must name the address dialled.
    #[arg(long, env = "LATTICE_CACERT")]
    cacert: Option<PathBuf>,
    /// Present this certificate (PEM) to servers that require one
    /// (`lattice node --client-cert-auth`). Needs --key and --cacert.
    #[arg(long, requires = "key", env = "LATTICE_CERT")]
    cert: Option<PathBuf>,
    /// The key of --cert (PEM).
    #[arg(long, requires = "cert", env = "LATTICE_KEY")]
    key: Option<PathBuf>,
}

impl ClientTlsArgs {
    pub(crate) fn load(&self) -> Result<Option<ClientTls>> {
        match &self.cacert {
            None if self.cert.is_some() => {
                bail!("--cert needs --cacert: the CA that signed the servers' certificates")
            }
            None => Ok(None),
            Some(ca) => Ok(Some(ClientTls::from_files(
                ca,
                self.cert.as_deref(),
                self.key.as_deref(),
            )?)),
        }
    }
}

#[derive(Args)]
struct NodeArgs {
    /// This node's id (non-zero, unique in the cluster).
    #[arg(long)]
    id: u64,
    /// Address of the Raft peer service (host:port).
    #[arg(long)]
    raft_addr: String,
    /// Address of the KV client service (host:port).
    #[arg(long)]
    kv_addr: String,
    /// Another voter: ID=RAFT_ADDR,KV_ADDR. Repeat for each peer. Only for
    /// the nodes that found a new cluster (every one with the same list);
    /// later nodes join with --join.
    #[arg(long = "peer", value_parser = parse_peer, conflicts_with = "join")]
    peers: Vec<PeerConfig>,
    /// Join a running cluster through these KV endpoints (comma
    /// separated): the node starts knowing no configuration, asks the
    /// cluster to add it as a learner (unless it is a member already), and
    /// learns the configuration from the leader. Promote it with `lattice
    /// member promote ID` once it caught up.
    #[arg(long, value_delimiter = ',')]
    join: Vec<String>,
    /// Directory for the WAL segments, snapshots and hard state (created if
    /// missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// Snapshot the state machine after this many applied entries. 0: never
    /// by count (with --snapshot-bytes 0, never at all: the log grows without
    /// bound).
    #[arg(long, default_value_t = 10_000)]
    snapshot_entries: u64,
    /// ...or once the entries applied since the last snapshot hold this many
    /// bytes. 0: never by size.
    #[arg(long, default_value_t = 64 << 20)]
    snapshot_bytes: u64,
    /// Entries kept below a snapshot, so a follower a little behind catches
    /// up by entries instead of a whole snapshot.
    #[arg(long, default_value_t = 5_000)]
    snapshot_catchup_entries: u64,
    /// Snapshots streamed to followers at once.
    #[arg(long, default_value_t = 2)]
    snapshot_sends: usize,
    /// Dial peers from this local address. `raft` uses the IP of
    /// --raft-addr (nodes on one machine with their own loopback addresses).
    #[arg(long)]
    source_ip: Option<String>,
    /// One raft tick, in milliseconds.
    #[arg(long, default_value_t = 50)]
    tick_ms: u64,
    /// Election timeout range, in ticks.
    #[arg(long, default_value_t = 10)]
    election_ticks_min: u32,
    #[arg(long, default_value_t = 20)]
    election_ticks_max: u32,
    /// Heartbeat interval, in ticks.
    #[arg(long, default_value_t = 2)]
    heartbeat_ticks: u32,
    /// AppendEntries RPCs in flight per follower. Fewer means larger batches
    /// (fewer RPCs and fsyncs per write) at the cost of some latency.
    #[arg(long, default_value_t = 4)]
    inflight_appends: usize,
    /// Turn PreVote off (on by default: a node cut off and healed does not
    /// depose a healthy leader).
    #[arg(long)]
    no_pre_vote: bool,
    /// Serve `/metrics` (Prometheus text format) and `/health` over HTTP
    /// on this address (host:port). `/health` answers 200 only while a
    /// leader is known and the state machine is within 1,000 entries of
    /// the commit index, 503 with the reason otherwise.
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Turn CheckQuorum and the vote lease off (on by default: a leader cut
    /// off from its majority steps down within an election timeout).
    #[arg(long)]
    no_check_quorum: bool,
    /// Serve the KV port over TLS with this certificate (PEM, the leaf
    /// first). It must name the addresses clients dial.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// The key of --cert (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// The CA (PEM) that signed client certificates (--client-cert-auth),
    /// and that --join trusts when it dials the cluster.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// Refuse clients that present no certificate signed by --cacert.
    #[arg(long, requires = "cacert", requires = "cert")]
    client_cert_auth: bool,
    /// Mutual TLS between peers: this node's certificate (PEM), served on
    /// the Raft port and presented when dialling peers. A peer whose
    /// certificate --peer-cacert did not sign is refused, and a certificate
    /// that names a node (`lattice-node-ID`) speaks for that node only.
    #[arg(long, requires_all = ["peer_key", "peer_cacert"])]
    peer_cert: Option<PathBuf>,
    /// The key of --peer-cert (PEM).
    #[arg(long, requires = "peer_cert")]
    peer_key: Option<PathBuf>,
    /// The cluster CA (PEM): peers' certificates must be signed by it.
    #[arg(long, requires = "peer_cert")]
    peer_cacert: Option<PathBuf>,
    /// Listen in plaintext on addresses other than loopback. Without TLS,
    /// anyone who reaches the ports can read everything, write, and (on the
    /// Raft port) take part in the cluster's consensus.
    #[arg(long)]
    insecure: bool,
}

/// Where a cluster is, for the commands that talk to one.
#[derive(Args)]
struct ClusterArgs {
    /// KV endpoints of the cluster, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "[::1]:50152,[::1]:50252,[::1]:50352"
    )]
    endpoints: Vec<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 10)]
    timeout_secs: u64,
    #[command(flatten)]
    tls: ClientTlsArgs,
}

#[derive(Subcommand)]
enum EndpointCommand {
    /// Every endpoint's view: id, role, term, leader, commit, applied and
    /// last index, snapshot index, log entries, voter or learner.
    Status(ClusterArgs),
}

#[derive(Subcommand)]
enum MemberCommand {
    /// The configuration in force, as the leader sees it.
    List(ClusterArgs),
    /// Add a node: as a voter at once, or with --learner as a learner that
    /// receives the log but does not vote (promote it once caught up). Start
    /// the node itself with `lattice node --join ENDPOINTS` (which adds it
    /// as a learner by itself).
    Add(MemberAddArgs),
    /// Make a learner a voter. Refused until it holds 90% of the leader's log.
    Promote(MemberIdArgs),
    /// Remove a node (a voter or a learner). It stops itself once it
    /// learns of it; its id is never used again.
    Remove(MemberIdArgs),
}

#[derive(Args)]
struct MemberAddArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The new node's id: never one in use or removed before.
    id: u64,
    /// The new node's Raft peer address (host:port).
    #[arg(long)]
    raft_addr: String,
    /// The new node's KV client address (host:port).
    #[arg(long)]
    kv_addr: String,
    /// Add it as a learner.
    #[arg(long)]
    learner: bool,
}

#[derive(Args)]
struct MemberIdArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    id: u64,
}

#[derive(Args)]
struct MoveLeaderArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The node to hand leadership to (default: the most up-to-date follower).
    id: Option<u64>,
}

#[derive(Args)]
struct KvArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(subcommand)]
    operation: KvOperation,
}

#[derive(Subcommand)]
enum KvOperation {
    /// Set KEY to VALUE. Without VALUE, the value is read from stdin as
    /// it is, every byte (`lattice kv put k < file`), as etcdctl does: up
    /// to 1 MiB.
    Put {
        key: String,
        value: Option<String>,
    },
    Get {
        key: String,
    },
    Delete {
        key: String,
    },
    /// Set KEY to NEW if it holds --expected (or is absent with --absent).
    Cas {
        key: String,
        new: String,
        #[arg(long, conflicts_with = "absent")]
        expected: Option<String>,
        #[arg(long)]
        absent: bool,
    },
    /// Print the KV endpoint of the current leader.
    Leader,
}

#[derive(Args)]
struct WorkloadArgs {
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    #[arg(long, default_value_t = 5)]
    clients: u64,
    #[arg(long, default_value_t = 5)]
    keys: u64,
    #[arg(long, default_value_t = 30)]
    duration_secs: u64,
    /// Where to write the history (JSON Lines, the checker's format).
    #[arg(long)]
    history: PathBuf,
    /// Seeds the clients' choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also run one client pinned to each endpoint, which never follows
    /// leader hints (as Jepsen binds clients to nodes): a deposed or paused
    /// leader keeps its clients, and stale answers reach the history.
    #[arg(long)]
    pinned: bool,
    #[command(flatten)]
    tls: ClientTlsArgs,
}

fn parse_peer(text: &str) -> Result<PeerConfig, String> {
    let (id, addrs) = text
        .split_once('=')
        .ok_or("expected ID=RAFT_ADDR,KV_ADDR")?;
    let (raft_addr, kv_addr) = addrs
        .split_once(',')
        .ok_or("expected ID=RAFT_ADDR,KV_ADDR")?;
    let id: u64 = id.parse().map_err(|_| format!("bad peer id {id:?}"))?;
    if id == 0 || raft_addr.is_empty() || kv_addr.is_empty() {
        return Err("peer ids are non-zero and both addresses are needed".into());
    }
    Ok(PeerConfig {
        id: NodeId(id),
        raft_addr: raft_addr.to_string(),
        kv_addr: kv_addr.to_string(),
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: log files and pipes stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().with_current_span(false).init(),
    }
    match cli.command {
        Command::Node(args) => run_node(args).await,
        Command::Kv(args) => run_kv(args).await,
        Command::Status(args) | Command::Endpoint(EndpointCommand::Status(args)) => {
            run_status(args).await
        }
        Command::Member(command) => run_member(command).await,
        Command::MoveLeader(args) => run_move_leader(args).await,
        Command::Workload(args) => run_workload(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Cert(command) => run_cert(command),
    }
}

async fn run_node(args: NodeArgs) -> Result<()> {
    let mut config = NodeConfig::new(
        NodeId(args.id),
        &args.raft_addr,
        &args.kv_addr,
        args.peers,
        &args.data_dir,
    );
    config.join = !args.join.is_empty();
    config.tick_interval = Duration::from_millis(args.tick_ms);
    config.election_timeout_ticks_min = args.election_ticks_min;
    config.election_timeout_ticks_max = args.election_ticks_max;
    config.heartbeat_interval_ticks = args.heartbeat_ticks;
    config.inflight_appends_max = args.inflight_appends;
    config.pre_vote = !args.no_pre_vote;
    config.metrics_addr = args.metrics_addr.clone();
    config.check_quorum = !args.no_check_quorum;
    config.kv_tls = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            let client_ca = args
                .client_cert_auth
                .then_some(args.cacert.as_deref())
                .flatten();
            Some(ServerTls::from_files(cert, key, client_ca).context("--cert/--key")?)
        }
        _ => None,
    };
    config.peer_tls = match (&args.peer_cert, &args.peer_key, &args.peer_cacert) {
        (Some(cert), Some(key), Some(ca)) => Some(
            PeerTls::from_files(cert, key, ca).context("--peer-cert/--peer-key/--peer-cacert")?,
        ),
        _ => None,
    };
    for (addr, is_tls, flags, also) in [
        (
            &args.kv_addr,
            config.kv_tls.is_some(),
            "--cert and --key",
            "",
        ),
        (
            &args.raft_addr,
            config.peer_tls.is_some(),
            "--peer-cert, --peer-key and --peer-cacert",
            " and take part in the cluster's consensus",
        ),
    ] {
        if !is_tls && !args.insecure && !lattice::tls::is_loopback(addr) {
            bail!(
                "refusing to listen in plaintext on {addr}, which is not a loopback address: \
                 anyone who reaches it could read and write every key{also}. Give {flags} \
                 (`lattice cert` makes a development CA), or --insecure to accept that"
            );
        }
    }
    if config.kv_tls.is_some()
        && !args.client_cert_auth
        && !lattice::tls::is_loopback(&args.kv_addr)
    {
        tracing::warn!(
            kv_addr = %args.kv_addr,
            "the KV port encrypts but asks clients for no certificate: anyone who reaches it can \
             read and write (give --client-cert-auth with --cacert)"
        );
    }
    if args.insecure && (config.kv_tls.is_none() || config.peer_tls.is_none()) {
        tracing::warn!(
            "--insecure: a port serves plaintext; anyone who reaches it can read and write"
        );
    }
    // --join dials the cluster's KV port as a client, with the node's own
    // certificate if the cluster asks clients for one.
    let join_tls = ClientTlsArgs {
        cacert: args.cacert.clone(),
        cert: args.cert.clone().filter(|_| args.cacert.is_some()),
        key: args.key.clone().filter(|_| args.cacert.is_some()),
    }
    .load()?;
    let never_if_zero = |n: u64| if n == 0 { u64::MAX } else { n };
    config.snapshot_entries = never_if_zero(args.snapshot_entries);
    config.snapshot_bytes = never_if_zero(args.snapshot_bytes);
    config.snapshot_catchup_entries = args.snapshot_catchup_entries;
    config.snapshot_sends_max = args.snapshot_sends;
    config.source_ip = match args.source_ip.as_deref() {
        None => None,
        Some("raft") => {
            let addr: std::net::SocketAddr = args
                .raft_addr
                .parse()
                .context("--source-ip raft needs --raft-addr to be IP:PORT")?;
            Some(addr.ip())
        }
        Some(ip) => Some(
            ip.parse::<IpAddr>()
                .with_context(|| format!("bad --source-ip {ip:?}"))?,
        ),
    };
    let needs_add = if args.join.is_empty() {
        false
    } else {
        join_needs_add(NodeId(args.id), &args.join, &args.data_dir, &join_tls).await?
    };
    let started = std::time::Instant::now();
    let node = Node::start(config).await.context("starting the node")?;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "node started: storage recovered, services listening"
    );
    if needs_add {
        join(&node, &args.join, &args.raft_addr, &args.kv_addr, &join_tls).await?;
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing SIGTERM")?;
    let mut status = node.watch_status();
    let stopped = status.wait_for(|s| s.is_removed || s.failure.is_some());
    tokio::select! {
        biased;
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting down gracefully"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: shutting down gracefully"),
        stopped = stopped => {
            let status = stopped.map(|s| s.clone()).ok();
            node.shutdown().await;
            match status {
                Some(s) if s.is_removed => {
                    tracing::info!("removed from the cluster: exiting");
                    return Ok(());
                }
                Some(s) => bail!("the node stopped: {}", s.failure.unwrap_or_default()),
                None => bail!("the node stopped"),
            }
        }
    }
    let started = std::time::Instant::now();
    node.shutdown_gracefully().await;
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "stopped");
    Ok(())
}

/// `--join`, before the node starts: whether to ask the cluster behind
/// `endpoints` to add this node (not if it is a member already: a
/// restart). Refuses a removed id, and a member id on an empty data
/// directory: that node would vote and count as the member that
/// acknowledged entries it no longer holds, and committed entries could be
/// lost.
async fn join_needs_add(
    id: NodeId,
    endpoints: &[String],
    data_dir: &std::path::Path,
    tls: &Option<ClientTls>,
) -> Result<bool> {
    let timeout = Duration::from_secs(30);
    let members = client(endpoints, timeout, tls.clone())?
        .members(timeout)
        .await
        .context("asking the cluster to join for its members")?;
    if members.membership.removed.contains(&id) {
        bail!("node id {id} was removed from this cluster and ids are never reused: start with a new id and an empty data directory");
    }
    if !members.membership.contains(id) {
        return Ok(true);
    }
    let is_empty = std::fs::read_dir(data_dir).map_or(true, |mut entries| entries.next().is_none());
    if is_empty {
        bail!(
            "node {id} is a member of this cluster already, but its data directory {} is empty: \
             a member that lost its data must not come back under its id. Remove it \
             (`lattice member remove {id}`) and join with a new id",
            data_dir.display()
        );
    }
    tracing::info!(%id, "already a member: starting from its data directory");
    Ok(false)
}

/// `--join`, once the node runs: asks the cluster to add it as a learner.
async fn join(
    node: &Node,
    endpoints: &[String],
    raft_addr: &str,
    kv_addr: &str,
    tls: &Option<ClientTls>,
) -> Result<()> {
    let id = node.id();
    let timeout = Duration::from_secs(30);
    let change = ConfChange::Add {
        id,
        raft_addr: raft_addr.to_string(),
        kv_addr: kv_addr.to_string(),
        is_learner: true,
    };
    let members = client(endpoints, timeout, tls.clone())?
        .change_membership(change, timeout)
        .await
        .context("asking the cluster to add this node as a learner")?;
    tracing::info!(
        %id,
        index = members.index.0,
        "joined as a learner: promote it with `lattice member promote {id}` once it caught up"
    );
    Ok(())
}

async fn run_member(command: MemberCommand) -> Result<()> {
    let (cluster, change) = match command {
        MemberCommand::List(cluster) => {
            let timeout = Duration::from_secs(cluster.timeout_secs);
            let members = client(&cluster.endpoints, timeout, cluster.tls.load()?)?
                .members(timeout)
                .await
                .context("listing the members")?;
            print_members(&members);
            return Ok(());
        }
        MemberCommand::Add(args) => {
            let change = ConfChange::Add {
                id: NodeId(nonzero_id(args.id)?),
                raft_addr: args.raft_addr,
                kv_addr: args.kv_addr,
                is_learner: args.learner,
            };
            (args.cluster, change)
        }
        MemberCommand::Promote(args) => (
            args.cluster,
            ConfChange::Promote(NodeId(nonzero_id(args.id)?)),
        ),
        MemberCommand::Remove(args) => (
            args.cluster,
            ConfChange::Remove(NodeId(nonzero_id(args.id)?)),
        ),
    };
    let timeout = Duration::from_secs(cluster.timeout_secs);
    let members = client(&cluster.endpoints, timeout, cluster.tls.load()?)?
        .change_membership(change.clone(), timeout)
        .await
        .with_context(|| format!("{change:?}"))?;
    println!("committed at index {}", members.index);
    print_members(&members);
    Ok(())
}

fn nonzero_id(id: u64) -> Result<u64> {
    if id == 0 {
        bail!("node id 0 is reserved");
    }
    Ok(id)
}

fn print_members(members: &MemberList) {
    println!(
        "configuration at index {} ({}), leader {}",
        members.index,
        if members.is_committed {
            "committed"
        } else {
            "not committed yet"
        },
        members.leader
    );
    println!(
        "{:>4} {:<8} {:<24} {:<24}",
        "id", "status", "raft address", "kv address"
    );
    for (id, member) in &members.membership.members {
        let or_dash = |a: &str| {
            if a.is_empty() {
                "-".to_string()
            } else {
                a.to_string()
            }
        };
        println!(
            "{:>4} {:<8} {:<24} {:<24}",
            id.0,
            if member.is_learner {
                "learner"
            } else {
                "voter"
            },
            or_dash(&member.raft_addr),
            or_dash(&member.kv_addr)
        );
    }
    if !members.membership.removed.is_empty() {
        let removed: Vec<String> = members
            .membership
            .removed
            .iter()
            .map(|id| id.0.to_string())
            .collect();
        println!("removed (ids never reused): {}", removed.join(", "));
    }
}

fn client(endpoints: &[String], timeout: Duration, tls: Option<ClientTls>) -> Result<Client> {
    let config = ClientConfig {
        operation_timeout: timeout,
        tls,
        ..ClientConfig::default()
    };
    Ok(Client::with_config(
        endpoints,
        config,
        Arc::new(lattice::transport::TcpTransport),
    )?)
}

fn show(value: &Option<Vec<u8>>) -> String {
    value.as_ref().map_or("(not found)".to_string(), |v| {
        String::from_utf8_lossy(v).into_owned()
    })
}

async fn run_status(args: ClusterArgs) -> Result<()> {
    let client = client(
        &args.endpoints,
        Duration::from_secs(args.timeout_secs),
        args.tls.load()?,
    )?;
    println!(
        "{:<24} {:>4} {:<13} {:>6} {:>6} {:>10} {:>10} {:>10} {:>10} {:>8} {:<7}",
        "endpoint",
        "id",
        "role",
        "term",
        "leader",
        "commit",
        "applied",
        "last",
        "snapshot",
        "log",
        "member"
    );
    let mut answered = 0;
    for (endpoint, status) in client.statuses().await {
        match status {
            Ok(s) => {
                answered += 1;
                println!(
                    "{:<24} {:>4} {:<13} {:>6} {:>6} {:>10} {:>10} {:>10} {:>10} {:>8} {:<7}",
                    endpoint,
                    s.id.0,
                    s.role,
                    s.term.0,
                    s.leader.map_or("-".to_string(), |l| l.0.to_string()),
                    s.commit_index,
                    s.applied_index,
                    s.last_index,
                    s.snapshot_index,
                    s.log_entries,
                    s.membership
                );
            }
            Err(e) => println!("{endpoint:<24} error: {e}"),
        }
    }
    if answered == 0 {
        bail!("no endpoint answered");
    }
    Ok(())
}

async fn run_move_leader(args: MoveLeaderArgs) -> Result<()> {
    let timeout = Duration::from_secs(args.cluster.timeout_secs);
    let client = client(&args.cluster.endpoints, timeout, args.cluster.tls.load()?)?;
    if args.id == Some(0) {
        bail!("node id 0 is reserved");
    }
    let (leader, term) = client
        .move_leader(args.id.map(NodeId), timeout)
        .await
        .context("moving the leader")?;
    println!("leader is node {leader} in term {term}");
    Ok(())
}

async fn run_kv(args: KvArgs) -> Result<()> {
    let mut client = client(
        &args.cluster.endpoints,
        Duration::from_secs(args.cluster.timeout_secs),
        args.cluster.tls.load()?,
    )?;
    match args.operation {
        KvOperation::Put { key, value } => {
            let value = match value {
                Some(value) => value.into_bytes(),
                None => value_from_stdin()?,
            };
            client.put(key, value).await?;
            println!("OK");
        }
        KvOperation::Get { key } => println!("{}", show(&client.get(key).await?)),
        KvOperation::Delete { key } => {
            let existed = client.delete(key).await?;
            println!("{}", if existed { "deleted" } else { "(not found)" });
        }
        KvOperation::Cas {
            key,
            new,
            expected,
            absent,
        } => {
            if expected.is_none() && !absent {
                bail!("cas needs --expected VALUE or --absent");
            }
            let result = client
                .compare_and_swap(key, expected.map(String::into_bytes), new)
                .await?;
            if result.swapped {
                println!("swapped");
            } else {
                println!("not swapped: the value is {}", show(&result.current));
                std::process::exit(1);
            }
        }
        KvOperation::Leader => {
            client.get("lattice:leader-probe").await?;
            println!("{}", client.leader().unwrap_or("unknown"));
        }
    }
    Ok(())
}

/// `lattice kv put KEY` without VALUE: every byte of stdin, refused past
/// the largest value a node takes (before anything is sent) and when stdin
/// is a terminal (nothing to wait for).
fn value_from_stdin() -> Result<Vec<u8>> {
    use std::io::{IsTerminal, Read};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        bail!("no VALUE given and stdin is a terminal: give VALUE, or pipe the value in (lattice kv put KEY < FILE)");
    }
    let max = lattice::kv::VALUE_BYTES_MAX;
    let mut value = Vec::new();
    stdin
        .lock()
        .take(max as u64 + 1)
        .read_to_end(&mut value)
        .context("reading the value from stdin")?;
    if value.len() > max {
        bail!("the value on stdin is larger than {max} bytes, the largest a node takes");
    }
    Ok(value)
}

/// Concurrent clients with unique values on few keys, recorded for the checker.
async fn run_workload(args: WorkloadArgs) -> Result<()> {
    if args.clients == 0 || args.keys == 0 {
        bail!("--clients and --keys must be positive");
    }
    let tls = args.tls.load()?;
    // Wall-clock start, advanced by a monotonic clock: times never go back.
    let epoch_ns = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    let started = Instant::now();
    let clock: checker::recorder::Clock =
        Arc::new(move || epoch_ns + started.elapsed().as_nanos() as u64);
    let recorder = checker::Recorder::with_clock(clock);
    let deadline = started + Duration::from_secs(args.duration_secs);
    let oks = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let pinned = if args.pinned {
        args.endpoints.len() as u64
    } else {
        0
    };
    for index in 0..args.clients + pinned {
        let pin = index.checked_sub(args.clients);
        let endpoints = match pin {
            Some(i) => vec![args.endpoints[i as usize].clone()],
            None => args.endpoints.clone(),
        };
        let recorder = recorder.clone();
        let oks = oks.clone();
        let keys = args.keys;
        let seed = args.seed;
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            let config = match pin {
                None => ClientConfig {
                    operation_timeout: Duration::from_secs(3),
                    rpc_timeout: Duration::from_millis(2500),
                    tls: tls.clone(),
                    ..ClientConfig::default()
                },
                Some(_) => ClientConfig {
                    operation_timeout: Duration::from_millis(1500),
                    rpc_timeout: Duration::from_millis(700),
                    follow_leader_hints: false,
                    tls: tls.clone(),
                    ..ClientConfig::default()
                },
            };
            let mut client = Client::with_config(
                &endpoints,
                config,
                Arc::new(lattice::transport::TcpTransport),
            )?;
            if pin.is_none() {
                // Every member, also those added since the endpoints were
                // written down (best effort: hints lead there anyway).
                let _ = client.learn_endpoints(Duration::from_secs(2)).await;
            }
            let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (index + 1);
            let mut random = move |n: u64| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state % n
            };
            let mut n = 0u64;
            let mut last_seen: Option<String> = None;
            while Instant::now() < deadline {
                n += 1;
                let key = format!("k{}", random(keys));
                let value = format!("c{index}-{n}");
                let choice = random(10);
                let is_ok = if choice < 4 {
                    let op = recorder.invoke(index, "get", Some(&key), Value::Null);
                    match client.get(key.as_bytes()).await {
                        Ok(read) => {
                            let read = read.map(|v| String::from_utf8_lossy(&v).into_owned());
                            last_seen = read.clone();
                            op.ok(json!(read));
                            true
                        }
                        Err(_) => {
                            op.fail(Value::Null);
                            false
                        }
                    }
                } else if choice < 8 {
                    let op = recorder.invoke(index, "put", Some(&key), json!(value));
                    match client.put(key.as_bytes(), value.as_bytes()).await {
                        Ok(()) => {
                            op.ok(json!(value));
                            true
                        }
                        Err(ClientError::Failed(_)) => {
                            op.fail(json!(value));
                            false
                        }
                        Err(ClientError::Unknown(_)) => {
                            op.info();
                            false
                        }
                    }
                } else {
                    let argument = json!({"expected": last_seen, "new": value});
                    let op = recorder.invoke(index, "cas", Some(&key), argument.clone());
                    let expected = last_seen.clone().map(String::into_bytes);
                    match client
                        .compare_and_swap(key.as_bytes(), expected, value.as_bytes())
                        .await
                    {
                        Ok(result) if result.swapped => {
                            op.ok(argument);
                            true
                        }
                        Ok(_) => {
                            op.fail(argument);
                            true
                        }
                        Err(_) => {
                            op.info();
                            false
                        }
                    }
                };
                if is_ok {
                    oks.fetch_add(1, Ordering::Relaxed);
                } else if pin.is_some() {
                    // Pinned to a follower: told "not the leader" at once.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await.context("a client task panicked")??;
    }
    recorder
        .write_jsonl(&args.history)
        .with_context(|| format!("writing {}", args.history.display()))?;
    let events = recorder.events();
    let count = |kind: checker::EventType| events.iter().filter(|e| e.kind == kind).count();
    println!(
        "workload: {} operations (ok {}, fail {}, info {}) in {}s; history {}",
        count(checker::EventType::Invoke),
        count(checker::EventType::Ok),
        count(checker::EventType::Fail),
        count(checker::EventType::Info),
        args.duration_secs,
        args.history.display()
    );
    Ok(())
}

fn run_cert(command: CertCommand) -> Result<()> {
    let refuse_existing = |paths: &[&std::path::Path], force: bool| -> Result<()> {
        for path in paths {
            if !force && path.exists() {
                bail!("{} exists: give --force to replace it", path.display());
            }
        }
        Ok(())
    };
    match command {
        CertCommand::Ca(common) => {
            std::fs::create_dir_all(&common.dir)
                .with_context(|| format!("creating {}", common.dir.display()))?;
            let files = DevCaFiles { dir: common.dir };
            refuse_existing(&[&files.ca(), &files.ca_key()], common.force)
                .context("a CA is there already (certificates it signed would no longer verify)")?;
            DevCa::generate(common.days)?.write(&files)?;
            println!(
                "wrote {} and {}",
                files.ca().display(),
                files.ca_key().display()
            );
        }
        CertCommand::Node { common, id, hosts } => {
            let id = nonzero_id(id)?;
            let files = DevCaFiles { dir: common.dir };
            let ca = DevCa::load(&files, common.days)
                .context("loading the CA (make one with `lattice cert ca --dir DIR`)")?;
            let (cert_path, key_path) = files.node(id);
            refuse_existing(&[&cert_path, &key_path], common.force)?;
            let (cert, key) = ca.issue_node(id, &hosts)?;
            lattice::tls::write_pair(&cert_path, &cert, &key_path, &key)?;
            println!("wrote {} and {}", cert_path.display(), key_path.display());
        }
        CertCommand::Client { common, name } => {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                bail!("a client name is letters, digits and '-', not {name:?}");
            }
            let files = DevCaFiles { dir: common.dir };
            let ca = DevCa::load(&files, common.days)
                .context("loading the CA (make one with `lattice cert ca --dir DIR`)")?;
            let (cert_path, key_path) = files.client(&name);
            refuse_existing(&[&cert_path, &key_path], common.force)?;
            let (cert, key) = ca.issue_client(&name)?;
            lattice::tls::write_pair(&cert_path, &cert, &key_path, &key)?;
            println!("wrote {} and {}", cert_path.display(), key_path.display());
        }
    }
    Ok(())
}
