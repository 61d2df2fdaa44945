//! What a node tells its operator: `/metrics` in the Prometheus text format
//! and `/health`, served over HTTP on `--metrics-addr`.
//!
//! The names follow etcd's where etcd has one (`etcd_server_has_leader`
//! becomes `lattice_server_has_leader`), so the alerts people already run
//! carry over. Each node has its own registry (tests run many nodes in
//! one process). Durations are measured on tokio's clock, as everything
//! else in the node: simulated time in the simulation, real time live.
//! Nothing here feeds back into what a node decides.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::mailbox::Status;
use crate::raft::{NodeId, Role};

/// `/health` fails when the state machine is further behind the commit
/// index than this (etcd's check compares the same two indexes).
pub const HEALTH_APPLY_LAG_MAX: u64 = 1_000;

/// Metrics connections served at once; more are closed at once. Each one
/// is a file descriptor, and a node out of them cannot open its next WAL
/// segment.
const CONNECTIONS_MAX: usize = 32;
/// A client gets this long to send its request headers...
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// ...and a connection this long in all (scrapes take milliseconds).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Every metric of one node.
pub struct Metrics {
    registry: Registry,
    data_dir: Option<PathBuf>,
    // From the node's status, read at each scrape.
    has_leader: IntGauge,
    is_leader: IntGauge,
    term: IntGauge,
    commit_index: IntGauge,
    applied_index: IntGauge,
    log_entries: IntGauge,
    wal_bytes: IntGauge,
    snapshot_bytes: IntGauge,
    data_dir_bytes: IntGauge,
    // Counted as things happen.
    pub(crate) leader_changes: IntCounter,
    pub(crate) proposals_committed: IntCounter,
    pub(crate) proposals_applied: IntCounter,
    pub(crate) proposals_failed: IntCounter,
    pub(crate) proposals_pending: IntGauge,
    pub(crate) batch_bytes_held: IntGauge,
    pub(crate) read_indexes_failed: IntCounter,
    pub(crate) wal_fsync: Histogram,
    pub(crate) wal_append: Histogram,
    pub(crate) snapshots_saved: IntCounter,
    pub(crate) snapshot_save_failures: IntCounter,
    pub(crate) snapshot_save: Histogram,
    pub(crate) snapshots_installed: IntCounter,
    pub(crate) snapshot_install: Histogram,
    peer_round_trip: HistogramVec,
    peer_send_failures: IntCounterVec,
}

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("each metric is registered once, with a unique valid name");
    c
}

impl Metrics {
    /// A node's metrics; `data_dir` is measured at each scrape (a missing
    /// one measures 0).
    pub fn new(data_dir: Option<&Path>) -> Arc<Metrics> {
        let r = Registry::new();
        let gauge =
            |name: &str, help: &str| register(&r, IntGauge::new(name, help).expect("valid gauge"));
        let counter = |name: &str, help: &str| {
            register(&r, IntCounter::new(name, help).expect("valid counter"))
        };
        let histogram = |name: &str, help: &str, start: f64, count: usize| {
            let buckets = exponential_buckets(start, 2.0, count).expect("valid buckets");
            let opts = HistogramOpts::new(name, help).buckets(buckets);
            register(&r, Histogram::with_opts(opts).expect("valid histogram"))
        };
        let metrics = Metrics {
            data_dir: data_dir.map(Path::to_path_buf),
            has_leader: gauge(
                "lattice_server_has_leader",
                "Whether a leader is known in the current term (1) or not (0).",
            ),
            is_leader: gauge(
                "lattice_server_is_leader",
                "Whether this node is the leader (1) or not (0).",
            ),
            term: gauge("lattice_server_term", "The current Raft term."),
            commit_index: gauge(
                "lattice_server_commit_index",
                "The highest log index known to be committed.",
            ),
            applied_index: gauge(
                "lattice_server_applied_index",
                "The highest log index applied to the state machine.",
            ),
            log_entries: gauge(
                "lattice_server_log_entries",
                "Log entries held after the last compaction.",
            ),
            wal_bytes: gauge(
                "lattice_storage_wal_bytes",
                "Bytes of the write-ahead log segments on disk.",
            ),
            snapshot_bytes: gauge(
                "lattice_storage_snapshot_bytes",
                "Bytes of the snapshot files on disk.",
            ),
            data_dir_bytes: gauge(
                "lattice_storage_data_dir_bytes",
                "Bytes of every file in the data directory.",
            ),
            leader_changes: counter(
                "lattice_server_leader_changes_seen_total",
                "Times this node saw a new leader.",
            ),
            proposals_committed: counter(
                "lattice_server_proposals_committed_total",
                "Log entries this node saw committed since it started.",
            ),
            proposals_applied: counter(
                "lattice_server_proposals_applied_total",
                "Log entries this node applied since it started.",
            ),
            proposals_failed: counter(
                "lattice_server_proposals_failed_total",
                "Commands proposed here that failed: refused (not the leader, shutting down, \
                 overloaded), lost to a new leader, or timed out before they committed.",
            ),
            proposals_pending: gauge(
                "lattice_server_proposals_pending",
                "Commands proposed here that wait to be applied.",
            ),
            batch_bytes_held: gauge(
                "lattice_server_batch_bytes_held",
                "Bytes the Batch streams hold: requests in progress and answers not yet sent.",
            ),
            read_indexes_failed: counter(
                "lattice_server_read_indexes_failed_total",
                "Linearizable reads that could not be confirmed (leadership lost or not yet \
                 established).",
            ),
            wal_fsync: histogram(
                "lattice_disk_wal_fsync_duration_seconds",
                "How long one fsync of the write-ahead log took.",
                0.0001,
                16,
            ),
            wal_append: histogram(
                "lattice_disk_wal_append_duration_seconds",
                "How long writing one Ready's entries to the write-ahead log took (before \
                 the fsync that makes a batch of them durable).",
                0.0001,
                16,
            ),
            snapshots_saved: counter(
                "lattice_snapshot_saved_total",
                "Snapshots of the state machine written here.",
            ),
            snapshot_save_failures: counter(
                "lattice_snapshot_save_failures_total",
                "Snapshots that failed to be written (the log is kept whole).",
            ),
            snapshot_save: histogram(
                "lattice_snapshot_save_duration_seconds",
                "How long writing one snapshot took, to durable.",
                0.001,
                16,
            ),
            snapshots_installed: counter(
                "lattice_snapshot_installed_total",
                "Snapshots received from a leader and installed.",
            ),
            snapshot_install: histogram(
                "lattice_snapshot_install_duration_seconds",
                "How long loading a leader's snapshot into the state machine took.",
                0.001,
                16,
            ),
            peer_round_trip: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "lattice_network_peer_round_trip_time_seconds",
                        "Round trip of an AppendEntries to a peer and its answer.",
                    )
                    .buckets(exponential_buckets(0.0001, 2.0, 16).expect("valid buckets")),
                    &["to"],
                )
                .expect("valid histogram"),
            ),
            peer_send_failures: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "lattice_network_peer_sent_failures_total",
                        "Failures sending to a peer: a vote or snapshot call, or the replication stream (opening, breaking, or an answer overdue), each counted once however many messages it carried.",
                    ),
                    &["to"],
                )
                .expect("valid counter"),
            ),
            registry: r,
        };
        Arc::new(metrics)
    }

    pub(crate) fn peer_round_trip(&self, to: NodeId, seconds: f64) {
        self.peer_round_trip
            .with_label_values(&[&to.0.to_string()])
            .observe(seconds);
    }

    pub(crate) fn peer_send_failed(&self, to: NodeId) {
        self.peer_send_failures
            .with_label_values(&[&to.0.to_string()])
            .inc();
    }

    /// Counts a change of leader (a new one known, not the loss of one),
    /// the way etcd does.
    pub(crate) fn status_changed(&self, before: &Status, after: &Status) {
        if after.leader.is_some() && after.leader != before.leader {
            self.leader_changes.inc();
        }
        let committed = after.commit_index.0.saturating_sub(before.commit_index.0);
        if committed > 0 {
            self.proposals_committed.inc_by(committed);
        }
    }

    /// The text exposition of every metric, as of now.
    pub fn render(&self, status: &Status) -> String {
        self.has_leader.set(status.leader.is_some() as i64);
        self.is_leader.set((status.role == Role::Leader) as i64);
        self.term.set(status.term.0 as i64);
        self.commit_index.set(status.commit_index.0 as i64);
        self.applied_index.set(status.applied_index.0 as i64);
        self.log_entries
            .set(status.last_index.0.saturating_sub(status.compacted_index.0) as i64);
        if let Some(dir) = &self.data_dir {
            let wal = dir_bytes(&dir.join("log"));
            let snap = dir_bytes(&dir.join("snap"));
            self.wal_bytes.set(wal as i64);
            self.snapshot_bytes.set(snap as i64);
            self.data_dir_bytes.set(dir_bytes(dir) as i64);
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("the text encoder writes to memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// Bytes of the regular files under `dir`, recursively (0 if it is gone:
/// files come and go while a node runs).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&entry.path()),
            Ok(t) if t.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// Whether the node is healthy, and if not, why (etcd's `/health`: a
/// leader is known, and the state machine keeps up with the log).
pub fn health(status: &Status) -> Result<(), String> {
    if let Some(failure) = &status.failure {
        return Err(format!("the node stopped: {failure}"));
    }
    if status.is_removed {
        return Err("the node was removed from the cluster".into());
    }
    if status.leader.is_none() {
        return Err("no leader".into());
    }
    let lag = status.commit_index.0.saturating_sub(status.applied_index.0);
    if lag > HEALTH_APPLY_LAG_MAX {
        return Err(format!(
            "applied index {} is {lag} behind commit index {} (more than {HEALTH_APPLY_LAG_MAX})",
            status.applied_index, status.commit_index
        ));
    }
    Ok(())
}

/// Serves `/metrics` and `/health` on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    status: watch::Receiver<Status>,
    mut shutdown: watch::Receiver<bool>,
) {
    if let Ok(addr) = listener.local_addr() {
        info!("metrics and health served on http://{addr}/metrics and /health");
    }
    let connections = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    loop {
        let stream = tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "accepting a metrics connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            warn!("{CONNECTIONS_MAX} metrics connections open already: one refused");
            continue;
        };
        let (metrics, status) = (metrics.clone(), status.clone());
        let service = hyper::service::service_fn(move |request| {
            // A copy: the driver publishes while a scrape walks the disk.
            let status = status.borrow().clone();
            let answer = answer(&metrics, &status, &request);
            async move { Ok::<_, Infallible>(answer) }
        });
        let mut stopping = shutdown.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            // A client that sends garbage, hangs up or dawdles only ends
            // its own connection.
            let serving = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(io, service);
            tokio::select! {
                _ = tokio::time::timeout(CONNECTION_TIMEOUT, serving) => {}
                _ = stopping.changed() => {}
            }
            drop(permit);
        });
    }
}

fn answer(
    metrics: &Metrics,
    status: &Status,
    request: &Request<Incoming>,
) -> Response<Full<bytes::Bytes>> {
    let reply = |code: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(code)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(bytes::Bytes::from(body)))
            .expect("a valid response")
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
    }
    match request.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(status),
        ),
        "/health" => match health(status) {
            Ok(()) => reply(
                StatusCode::OK,
                "application/json",
                "{\"health\":\"true\",\"reason\":\"\"}\n".into(),
            ),
            Err(reason) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json",
                format!(
                    "{}\n",
                    serde_json::json!({"health": "false", "reason": reason})
                ),
            ),
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics or /health\n".into(),
        ),
    }
}
