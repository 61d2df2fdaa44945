//! One sender task per peer: takes the driver's messages from a bounded queue,
//! sends them, and feeds the answers back to the driver. AppendEntries go on
//! one long-lived `Replicate` stream (a bounded number in flight, answered in
//! order); RequestVote goes as a unary call. A peer that fails is backed off
//! (messages for it are dropped and reported unreachable) so a dead or slow
//! peer never blocks the driver.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};
use tracing::{info, warn, Instrument, Span};

use super::convert::*;
use super::limits::{removed_message, RAFT_MESSAGE_BYTES_MAX};
use crate::mailbox::{Input, PeerConfig};
use crate::metrics::Metrics;
use crate::planted::{is_planted, Bug};
use crate::proto::raft_client::RaftClient;
use crate::proto::{self};
use crate::raft::{InstallSnapshot, Message, NodeId};
use crate::storage::snapshot::CHUNK_BYTES;
use crate::storage::SnapshotStore;

/// Messages queued for one peer; past this the driver drops and re-probes.
const QUEUE_CAPACITY: usize = 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// RequestVote calls in flight (one per election is the norm).
const VOTES_IN_FLIGHT_MAX: usize = 4;
/// Heartbeats (periodic and ReadIndex rounds) ride the stream beside the
/// appends the core counts against `inflight_appends_max`.
const STREAM_SLACK: usize = 4;

/// The two connections to a peer: `votes` carries unary calls with a
/// deadline each; `replication` carries the `Replicate` stream, which has no
/// call deadline (each AppendEntries on it gets `rpc_timeout` instead).
pub(crate) struct PeerChannels {
    pub votes: Channel,
    pub replication: Channel,
    pub rpc_timeout: Duration,
    /// Where the snapshots to send are read from.
    pub snapshots: Arc<dyn SnapshotStore>,
    /// Snapshot sends allowed at once, shared by all of a node's peers.
    pub snapshot_sends: Arc<tokio::sync::Semaphore>,
    /// Round trips and failures are counted here.
    pub metrics: Arc<Metrics>,
}

pub(crate) fn spawn(
    id: NodeId,
    peer: PeerConfig,
    channels: PeerChannels,
    inbox: mpsc::Sender<Input>,
    appends_in_flight_max: usize,
    shutdown: watch::Receiver<bool>,
    span: Span,
) -> (mpsc::Sender<Message>, JoinHandle<()>) {
    let (sender, queue) = mpsc::channel(QUEUE_CAPACITY);
    let client = |channel| {
        RaftClient::new(channel)
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX)
    };
    let sender_task = PeerSender {
        id,
        peer,
        votes: client(channels.votes),
        replication: client(channels.replication),
        rpc_timeout: channels.rpc_timeout,
        snapshots: channels.snapshots,
        snapshot_sends: channels.snapshot_sends,
        stream_in_flight_max: appends_in_flight_max.max(1) + STREAM_SLACK,
        inbox,
        stream: None,
        stream_backoff: Backoff::default(),
        votes_backoff: Backoff::default(),
        is_down: false,
        is_removed: false,
        metrics: channels.metrics,
    };
    let task = tokio::spawn(sender_task.run(queue, shutdown).instrument(span));
    (sender, task)
}

type Opening =
    Pin<Box<dyn Future<Output = Result<Streaming<proto::AppendEntriesResponse>, Status>> + Send>>;

/// An open (or opening) `Replicate` stream.
struct Stream {
    requests: mpsc::Sender<proto::AppendEntriesRequest>,
    /// Until the peer answered the call: the call itself.
    opening: Option<Opening>,
    responses: Option<Streaming<proto::AppendEntriesResponse>>,
    /// When each AppendEntries in flight was sent, oldest first.
    in_flight: VecDeque<Instant>,
}

/// What woke the sender's loop.
enum Event {
    Shutdown,
    /// A unary call ended: a vote's answer, or nothing (TimeoutNow).
    Vote(Result<Result<Option<Input>, Status>, tokio::task::JoinError>),
    Snapshot(Result<Result<Input, Status>, tokio::task::JoinError>),
    Opened(Result<Streaming<proto::AppendEntriesResponse>, Status>),
    Response(Result<Option<proto::AppendEntriesResponse>, Status>),
    Overdue,
    Queued(Option<Message>),
}

/// After a failure, messages of that kind are dropped until `retry_at`.
#[derive(Default)]
struct Backoff {
    delay: Duration,
    retry_at: Option<Instant>,
}

impl Backoff {
    fn is_waiting(&self) -> bool {
        self.retry_at.is_some_and(|at| Instant::now() < at)
    }

    fn failed(&mut self) {
        self.delay = (self.delay * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
        self.retry_at = Some(Instant::now() + self.delay);
    }

    fn succeeded(&mut self) {
        *self = Backoff::default();
    }
}

struct PeerSender {
    id: NodeId,
    peer: PeerConfig,
    votes: RaftClient<Channel>,
    replication: RaftClient<Channel>,
    rpc_timeout: Duration,
    snapshots: Arc<dyn SnapshotStore>,
    snapshot_sends: Arc<tokio::sync::Semaphore>,
    /// Messages in flight on the stream; one more is a stalled stream.
    stream_in_flight_max: usize,
    inbox: mpsc::Sender<Input>,
    stream: Option<Stream>,
    stream_backoff: Backoff,
    votes_backoff: Backoff,
    /// Logged once per outage.
    is_down: bool,
    /// The peer refused a message because it applied this node's removal.
    is_removed: bool,
    metrics: Arc<Metrics>,
}

impl PeerSender {
    async fn run(
        mut self,
        mut queue: mpsc::Receiver<Message>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut votes: JoinSet<Result<Option<Input>, Status>> = JoinSet::new();
        let mut snapshot_sends: JoinSet<Result<Input, Status>> = JoinSet::new();
        // One timer for the oldest AppendEntries in flight, moved only when
        // that message changes (not re-armed on every wake-up).
        let overdue = tokio::time::sleep(self.rpc_timeout);
        tokio::pin!(overdue);
        let mut overdue_armed: Option<Instant> = None;
        loop {
            let overdue_at = self
                .stream
                .as_ref()
                .and_then(|s| s.in_flight.front())
                .map(|sent| *sent + self.rpc_timeout);
            if let Some(at) = overdue_at.filter(|at| overdue_armed != Some(*at)) {
                overdue.as_mut().reset(at);
                overdue_armed = Some(at);
            }
            let event = tokio::select! {
                biased;
                _ = shutdown.changed() => Event::Shutdown,
                Some(joined) = votes.join_next(), if !votes.is_empty() => Event::Vote(joined),
                Some(joined) = snapshot_sends.join_next(), if !snapshot_sends.is_empty() => {
                    Event::Snapshot(joined)
                }
                event = stream_event(&mut self.stream) => event,
                _ = &mut overdue, if overdue_at.is_some() => Event::Overdue,
                message = queue.recv(), if votes.len() < VOTES_IN_FLIGHT_MAX => Event::Queued(message),
            };
            let input = match event {
                Event::Shutdown | Event::Queued(None) => return,
                Event::Vote(Ok(Ok(answer))) => {
                    self.votes_backoff.succeeded();
                    self.mark_up();
                    match answer {
                        Some(input) => input,
                        None => continue,
                    }
                }
                Event::Vote(Ok(Err(status))) => {
                    self.votes_backoff.failed();
                    self.mark_down(&status);
                    Input::Unreachable { peer: self.peer.id }
                }
                Event::Vote(Err(_)) => Input::Unreachable { peer: self.peer.id },
                Event::Snapshot(Ok(Ok(input))) => {
                    self.mark_up();
                    input
                }
                Event::Snapshot(Ok(Err(status))) => {
                    self.check_removed(&status);
                    self.metrics.peer_send_failed(self.peer.id);
                    warn!(
                        peer = self.peer.id.0,
                        "sending the snapshot failed: {}",
                        describe(&status)
                    );
                    Input::SnapshotFailed { peer: self.peer.id }
                }
                Event::Snapshot(Err(_)) => Input::SnapshotFailed { peer: self.peer.id },
                Event::Queued(Some(Message::InstallSnapshot(request))) => {
                    let permit = self.snapshot_sends.clone().try_acquire_owned();
                    match permit {
                        Ok(permit) if snapshot_sends.is_empty() => {
                            let send = send_snapshot(
                                self.replication.clone(),
                                self.snapshots.clone(),
                                self.id,
                                self.peer.id,
                                request,
                                self.rpc_timeout,
                            );
                            snapshot_sends.spawn(
                                async move {
                                    let result = send.await;
                                    drop(permit);
                                    result
                                }
                                .in_current_span(),
                            );
                            continue;
                        }
                        // Too many snapshots out: the core probes again later.
                        _ => Input::SnapshotFailed { peer: self.peer.id },
                    }
                }
                Event::Opened(Ok(responses)) => {
                    if let Some(stream) = &mut self.stream {
                        stream.responses = Some(responses);
                    }
                    continue;
                }
                Event::Opened(Err(status)) | Event::Response(Err(status)) => {
                    self.close_stream(&status)
                }
                Event::Response(Ok(None)) => {
                    self.close_stream(&Status::unavailable("the peer ended the stream"))
                }
                Event::Response(Ok(Some(response))) => match self.answer(response) {
                    Ok(input) => input,
                    Err(status) => self.close_stream(&status),
                },
                Event::Overdue => {
                    overdue_armed = None;
                    self.close_stream(&Status::deadline_exceeded(format!(
                        "no answer to an AppendEntries within {:?}",
                        self.rpc_timeout
                    )))
                }
                Event::Queued(Some(Message::RequestVote(request))) => {
                    if self.votes_backoff.is_waiting() {
                        Input::Unreachable { peer: self.peer.id }
                    } else {
                        let message = request_vote_to_proto(self.id, self.peer.id, request);
                        votes.spawn(request_vote(self.votes.clone(), self.peer.id, message));
                        continue;
                    }
                }
                Event::Queued(Some(Message::TimeoutNow(request))) => {
                    // Fire and forget: a lost one only lets the transfer
                    // time out (the leader sends it again on each answer).
                    let message = timeout_now_to_proto(self.id, self.peer.id, request);
                    // The votes channel gives the call its deadline.
                    let mut client = self.votes.clone();
                    votes.spawn(
                        async move {
                            if let Err(status) = client.timeout_now(message).await {
                                warn!("TimeoutNow was not delivered: {}", describe(&status));
                            }
                            Ok(None)
                        }
                        .in_current_span(),
                    );
                    continue;
                }
                Event::Queued(Some(Message::AppendEntries(request))) => {
                    if self.stream_backoff.is_waiting() {
                        Input::Unreachable { peer: self.peer.id }
                    } else {
                        let message = append_entries_to_proto(self.id, self.peer.id, request);
                        match self.send_append(message) {
                            Ok(()) => continue,
                            Err(status) => self.close_stream(&status),
                        }
                    }
                }
            };
            if self.inbox.send(input).await.is_err() {
                return;
            }
            if std::mem::take(&mut self.is_removed) {
                let removed = Input::RemovedByPeer { peer: self.peer.id };
                if self.inbox.send(removed).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Notes a refusal that says this node was removed from the cluster
    /// (the peer applied the committed configuration that removed it, and
    /// ids are never reused): the node then stops, as etcd's does.
    fn check_removed(&mut self, status: &Status) {
        if status.code() == tonic::Code::PermissionDenied
            && status.message() == removed_message(self.id)
            && !is_planted(Bug::RemovedNodeIgnoresRefusal)
        {
            self.is_removed = true;
        }
    }

    /// Sends one AppendEntries on the stream, opening it if needed. The
    /// message waits in the stream's queue while the call connects. A stream
    /// with more in flight than the core ever sends is stalled: an error.
    fn send_append(&mut self, message: proto::AppendEntriesRequest) -> Result<(), Status> {
        if self
            .stream
            .as_ref()
            .is_some_and(|s| s.in_flight.len() >= self.stream_in_flight_max)
        {
            return Err(Status::deadline_exceeded(
                "the replication stream is stalled (too many AppendEntries unanswered)",
            ));
        }
        if self.stream.is_none() {
            let (requests, outgoing) = mpsc::channel(self.stream_in_flight_max);
            let mut client = self.replication.clone();
            let opening: Opening = Box::pin(async move {
                let response = client.replicate(ReceiverStream::new(outgoing)).await?;
                Ok(response.into_inner())
            });
            self.stream = Some(Stream {
                requests,
                opening: Some(opening),
                responses: None,
                in_flight: VecDeque::new(),
            });
        }
        let stream = self.stream.as_mut().expect("opened above");
        stream
            .requests
            .try_send(message)
            .map_err(|_| Status::unavailable("the replication stream is closed"))?;
        stream.in_flight.push_back(Instant::now());
        Ok(())
    }

    /// The answer to the oldest AppendEntries in flight.
    fn answer(&mut self, response: proto::AppendEntriesResponse) -> Result<Input, Status> {
        check_sender(self.peer.id, response.from)?;
        let stream = self
            .stream
            .as_mut()
            .expect("a response comes from a stream");
        let Some(sent) = stream.in_flight.pop_front() else {
            return Err(Status::internal("an answer to no AppendEntries"));
        };
        self.metrics
            .peer_round_trip(self.peer.id, sent.elapsed().as_secs_f64());
        self.stream_backoff.succeeded();
        self.mark_up();
        Ok(Input::AppendEntriesResponse {
            from: self.peer.id,
            response: append_entries_response_from_proto(response),
        })
    }

    /// Drops the stream (the AppendEntries in flight on it are lost; the core
    /// re-probes on `Unreachable`) and backs off before the next attempt.
    fn close_stream(&mut self, status: &Status) -> Input {
        self.stream = None;
        self.stream_backoff.failed();
        self.mark_down(status);
        Input::Unreachable { peer: self.peer.id }
    }

    fn mark_up(&mut self) {
        if self.is_down {
            info!(
                peer = self.peer.id.0,
                "Connected to peer {}", self.peer.raft_addr
            );
            self.is_down = false;
        }
    }

    fn mark_down(&mut self, status: &Status) {
        self.check_removed(status);
        self.metrics.peer_send_failed(self.peer.id);
        if !self.is_down {
            warn!(
                peer = self.peer.id.0,
                "Failed to connect to peer {}: {}",
                self.peer.raft_addr,
                describe(status)
            );
            self.is_down = true;
        }
    }
}

/// The stream's next event: its call answered, then each response. Pending
/// without a stream. Cancel-safe: the state lives in `stream`.
async fn stream_event(stream: &mut Option<Stream>) -> Event {
    let Some(stream) = stream.as_mut() else {
        return std::future::pending().await;
    };
    if let Some(opening) = stream.opening.as_mut() {
        let opened = opening.await;
        stream.opening = None;
        return Event::Opened(opened);
    }
    match stream.responses.as_mut() {
        Some(responses) => Event::Response(responses.message().await),
        None => std::future::pending().await,
    }
}

/// The root cause of a failed RPC, once ("Connection refused (os error 111)").
fn describe(status: &Status) -> String {
    let mut root: &dyn std::error::Error = status;
    while let Some(source) = root.source() {
        root = source;
    }
    if std::ptr::addr_eq(root, status as &dyn std::error::Error) {
        return status.message().to_string();
    }
    root.to_string()
}

/// Streams the newest snapshot to `to` in chunks and returns its answer. The
/// whole send gets `rpc_timeout` per chunk plus a few for the install.
async fn send_snapshot(
    mut client: RaftClient<Channel>,
    snapshots: Arc<dyn SnapshotStore>,
    from: NodeId,
    to: NodeId,
    request: InstallSnapshot,
    rpc_timeout: Duration,
) -> Result<Input, Status> {
    let mut reader = snapshots
        .open_latest()
        .map_err(|e| Status::internal(format!("opening the snapshot: {e}")))?
        .ok_or_else(|| Status::failed_precondition("no snapshot to send"))?;
    let meta = reader.meta();
    let total = reader.file_bytes();
    let chunk_count = total.div_ceil(CHUNK_BYTES as u64).max(1);
    info!(
        peer = to.0,
        index = meta.index.0,
        bytes = total,
        "sending snapshot"
    );
    let (chunks, outgoing) = mpsc::channel(2);
    tokio::spawn(
        async move {
            let mut offset = 0u64;
            loop {
                let data = match reader.read_chunk(CHUNK_BYTES) {
                    Ok(data) => data,
                    Err(e) => {
                        // Ending without a last chunk aborts the call.
                        warn!(error = %e, "reading the snapshot to send failed");
                        return;
                    }
                };
                let next = offset + data.len() as u64;
                let done = next >= total || data.is_empty();
                let chunk = proto::InstallSnapshotChunk {
                    from: from.0,
                    to: to.0,
                    term: request.term.0,
                    read_round: request.read_round,
                    offset,
                    data,
                    done,
                };
                if chunks.send(chunk).await.is_err() || done {
                    return;
                }
                offset = next;
            }
        }
        .in_current_span(),
    );
    let chunks = ReceiverStream::new(outgoing);
    let deadline = rpc_timeout * (4 + chunk_count as u32);
    let response = tokio::time::timeout(deadline, client.install_snapshot(chunks))
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!("no answer to the snapshot in {deadline:?}"))
        })??
        .into_inner();
    check_sender(to, response.from)?;
    let response = append_entries_response_from_proto(response);
    if !response.success && response.term <= request.term {
        // Refused in our own term: a failed send (the core probes again).
        // A refusal from a newer term goes to the core, which steps down.
        return Err(Status::failed_precondition(format!(
            "the snapshot was refused at term {}",
            response.term
        )));
    }
    Ok(Input::AppendEntriesResponse { from: to, response })
}

async fn request_vote(
    mut client: RaftClient<Channel>,
    to: NodeId,
    message: proto::RequestVoteRequest,
) -> Result<Option<Input>, Status> {
    let response = client.request_vote(message).await?.into_inner();
    check_sender(to, response.from)?;
    Ok(Some(Input::RequestVoteResponse {
        from: to,
        response: request_vote_response_from_proto(response),
    }))
}

/// The address we dialled must be the node we meant.
fn check_sender(expected: NodeId, actual: u64) -> Result<(), Status> {
    if actual != expected.0 {
        warn!(
            expected = expected.0,
            actual, "a peer address answers as another node: check the configuration"
        );
        return Err(Status::failed_precondition(format!(
            "expected node {expected}, reached node {actual}"
        )));
    }
    Ok(())
}
