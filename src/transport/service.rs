//! The two gRPC services. They validate what arrives, hand it to the driver
//! and wait for its answer; they hold no state of their own.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use prost::Message as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{warn, Instrument, Span};

use super::convert::*;
use super::limits::*;
use super::{error_to_proto, error_to_status, Listener};
use crate::kv::{self, Command, Operation, Outcome};
use crate::mailbox::{Input, MemberRole, Members, Status as NodeStatus};
use crate::proto::admin_server::{Admin, AdminServer};
use crate::proto::kv_server::{Kv, KvServer};
use crate::proto::raft_server::{Raft, RaftServer};
use crate::proto::{self};
use crate::raft::{ConfChange, InstallSnapshot, NodeId, Role, Term};
use crate::storage::SnapshotFile;
use crate::tls::{PeerIdentity, ServerTls};
use crate::{Error, Result};

/// The server of one port: HTTP/2 keepalive, a cap on calls per connection,
/// and TLS when configured. Fails (naming the reason) if rustls refuses the
/// TLS configuration.
pub(crate) fn server(tls: Option<&ServerTls>) -> Result<tonic::transport::Server> {
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(1)))
        .http2_keepalive_timeout(Some(Duration::from_secs(2)))
        .concurrency_limit_per_connection(CALLS_PER_CONNECTION_MAX)
        .max_concurrent_streams(Some(CALLS_PER_CONNECTION_MAX as u32));
    match tls {
        Some(tls) => server
            .tls_config(tls.config())
            .map_err(|e| Error::Config(format!("TLS: {e}"))),
        None => Ok(server),
    }
}

/// What the certificate of a request's connection lets its peer speak for.
fn identity_of<T>(request: &Request<T>) -> PeerIdentity {
    let certs = request
        .extensions()
        .get::<tonic::transport::server::TlsConnectInfo<()>>()
        .and_then(|info| info.peer_certs());
    PeerIdentity::of_certificates(certs.as_deref().map(Vec::as_slice))
}

async fn until_shutdown(mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

pub(crate) fn spawn_raft_server(
    server: tonic::transport::Server,
    id: NodeId,
    removed: watch::Receiver<BTreeSet<NodeId>>,
    listener: Listener,
    inbox: mpsc::Sender<Input>,
    shutdown: watch::Receiver<bool>,
    span: Span,
) -> JoinHandle<()> {
    let service = RaftServer::new(RaftService {
        id,
        removed,
        inbox,
        shutdown: shutdown.clone(),
        receiving: Default::default(),
    })
    .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
    .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
    tokio::spawn(
        async move {
            let mut server = server;
            if let Err(e) = server
                .add_service(service)
                .serve_with_incoming_shutdown(listener, until_shutdown(shutdown))
                .await
            {
                warn!(error = %e, "Raft server stopped with an error");
            }
        }
        .instrument(span),
    )
}

/// What the admin service needs besides the driver's inbox.
pub(crate) struct AdminConfig {
    pub id: NodeId,
    pub status: watch::Receiver<NodeStatus>,
    pub transfer_timeout: Duration,
    /// How long a membership change may take to commit.
    pub request_timeout: Duration,
}

/// What the KV service needs besides the driver's inbox.
pub(crate) struct KvConfig {
    /// How long a request may wait for its command to commit.
    pub request_timeout: Duration,
    pub budget: std::sync::Arc<BatchBudget>,
    /// Counts the proposals that time out here.
    pub proposals_failed: prometheus::IntCounter,
}

pub(crate) fn spawn_kv_server(
    server: tonic::transport::Server,
    listener: Listener,
    inbox: mpsc::Sender<Input>,
    kv: KvConfig,
    admin: AdminConfig,
    shutdown: watch::Receiver<bool>,
    span: Span,
) -> JoinHandle<()> {
    let admin = AdminServer::new(AdminService {
        inbox: inbox.clone(),
        config: std::sync::Arc::new(admin),
    });
    let service = KvServer::new(KvService {
        inbox,
        request_timeout: kv.request_timeout,
        budget: kv.budget,
        proposals_failed: kv.proposals_failed,
        shutdown: shutdown.clone(),
    })
    .max_decoding_message_size(KV_MESSAGE_BYTES_MAX)
    .max_encoding_message_size(KV_MESSAGE_BYTES_MAX);
    tokio::spawn(
        async move {
            let mut server = server;
            if let Err(e) = server
                .add_service(service)
                .add_service(admin)
                .serve_with_incoming_shutdown(listener, until_shutdown(shutdown))
                .await
            {
                warn!(error = %e, "KV server stopped with an error");
            }
        }
        .instrument(span),
    )
}

/// AppendEntries a `Replicate` stream may have waiting for the driver. The
/// leader keeps fewer in flight (`inflight_appends_max`); past this the
/// stream is not read until answers leave (HTTP/2 flow control pushes back).
const REPLICATE_PENDING_MAX: usize = 64;

#[derive(Clone)]
struct RaftService {
    id: NodeId,
    /// The nodes whose removal this node applied (the driver keeps it).
    removed: watch::Receiver<BTreeSet<NodeId>>,
    inbox: mpsc::Sender<Input>,
    /// Ends the `Replicate` streams, so an idle one does not hold the
    /// server's graceful shutdown open.
    shutdown: watch::Receiver<bool>,
    /// Peers whose snapshot is arriving: one at a time each (a snapshot is
    /// held in memory until it is whole).
    receiving: std::sync::Arc<std::sync::Mutex<BTreeSet<u64>>>,
}

/// Marks a peer's snapshot as arriving, until dropped.
struct Receiving {
    peers: std::sync::Arc<std::sync::Mutex<BTreeSet<u64>>>,
    peer: u64,
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.peers
            .lock()
            .expect("receiving lock")
            .remove(&self.peer);
    }
}

/// One answer of a `Replicate` stream, in request order.
enum StreamAnswer {
    Pending(oneshot::Receiver<crate::raft::AppendEntriesResponse>),
    /// The request was refused: the stream ends with this status.
    Refused(Status),
}

impl RaftService {
    /// The checks of an AppendEntries, whichever way it came.
    fn check_append(
        &self,
        identity: &PeerIdentity,
        message: &proto::AppendEntriesRequest,
    ) -> Result<(), Status> {
        self.check_route(identity, message.from, message.to, message.term)?;
        if let Some(entry) = message.entries.iter().find(|e| e.term == 0 || e.index == 0) {
            warn!(
                from = message.from,
                index = entry.index,
                "AppendEntries with a zero term or index: rejected"
            );
            return Err(Status::invalid_argument(
                "entries need a non-zero term and index",
            ));
        }
        Ok(())
    }

    /// Reads a `Replicate` stream: each request goes to the driver in order,
    /// and its answer (a receiver, so requests pipeline) goes to `answers`.
    async fn read_stream(
        self,
        identity: PeerIdentity,
        mut requests: tonic::Streaming<proto::AppendEntriesRequest>,
        answers: mpsc::Sender<StreamAnswer>,
    ) {
        let stopping = until_shutdown(self.shutdown.clone());
        tokio::pin!(stopping);
        loop {
            let next = tokio::select! {
                biased;
                _ = &mut stopping => {
                    Err(Status::unavailable("node shutting down"))
                }
                next = requests.message() => next,
            };
            let message = match next {
                Ok(Some(message)) => message,
                // The leader closed the stream.
                Ok(None) => return,
                // The connection broke, a message was malformed or too large,
                // or this node is stopping: say so to the leader.
                Err(status) => {
                    let _ = answers.send(StreamAnswer::Refused(status)).await;
                    return;
                }
            };
            if let Err(status) = self.check_append(&identity, &message) {
                let _ = answers.send(StreamAnswer::Refused(status)).await;
                return;
            }
            let (reply, answer) = oneshot::channel();
            let input = Input::AppendEntries {
                request: append_entries_from_proto(message),
                reply,
            };
            if self.inbox.send(input).await.is_err() {
                let _ = answers
                    .send(StreamAnswer::Refused(Status::unavailable("node stopped")))
                    .await;
                return;
            }
            if answers.send(StreamAnswer::Pending(answer)).await.is_err() {
                return;
            }
        }
    }

    /// Any node may speak, but only to this node, and a node whose removal
    /// this node applied never again. Not only the members this node knows
    /// of: a node that joins knows none, and one that was cut off may not
    /// yet know the configuration that added its new leader (refusing it
    /// would leave it behind for good). Raft's terms decide whom to obey;
    /// who may reach the port at all is for the network (and TLS).
    /// With peer TLS, a certificate that names a node speaks for that node
    /// only (see [`PeerIdentity`]).
    fn check_route(
        &self,
        identity: &PeerIdentity,
        from: u64,
        to: u64,
        term: u64,
    ) -> Result<(), Status> {
        if let Err(reason) = identity.check(from) {
            warn!(from, %reason, "Raft message refused");
            return Err(Status::permission_denied(reason));
        }
        if term > TERM_MAX {
            warn!(from, term, "Raft message with an impossible term: rejected");
            return Err(Status::invalid_argument(format!(
                "term {term} is beyond {TERM_MAX}"
            )));
        }
        if from == 0 || from == self.id.0 {
            warn!(
                from,
                "Raft message from node 0 or from this node's own id: rejected"
            );
            return Err(Status::invalid_argument(format!(
                "node {from} cannot send to node {} (0 is reserved; misconfigured ids?)",
                self.id
            )));
        }
        if self.removed.borrow().contains(&NodeId(from)) {
            warn!(
                from,
                "Raft message from a node removed from the cluster: rejected"
            );
            return Err(Status::permission_denied(super::limits::removed_message(
                NodeId(from),
            )));
        }
        if to != self.id.0 {
            warn!(from, to, "Raft message addressed to another node: rejected");
            return Err(Status::invalid_argument(format!(
                "this is node {}, not node {to}",
                self.id
            )));
        }
        Ok(())
    }

    async fn ask<T>(&self, input: Input, answer: oneshot::Receiver<T>) -> Result<T, Status> {
        self.inbox
            .send(input)
            .await
            .map_err(|_| Status::unavailable("node stopped"))?;
        answer
            .await
            .map_err(|_| Status::unavailable("node stopped"))
    }
}

#[tonic::async_trait]
impl Raft for RaftService {
    async fn request_vote(
        &self,
        request: Request<proto::RequestVoteRequest>,
    ) -> Result<Response<proto::RequestVoteResponse>, Status> {
        let identity = identity_of(&request);
        let message = request.into_inner();
        self.check_route(&identity, message.from, message.to, message.term)?;
        let (reply, answer) = oneshot::channel();
        let input = Input::RequestVote {
            request: request_vote_from_proto(&message),
            reply,
        };
        let response = self.ask(input, answer).await?;
        Ok(Response::new(request_vote_response_to_proto(
            self.id, response,
        )))
    }

    async fn timeout_now(
        &self,
        request: Request<proto::TimeoutNowRequest>,
    ) -> Result<Response<proto::TimeoutNowResponse>, Status> {
        let identity = identity_of(&request);
        let message = request.into_inner();
        self.check_route(&identity, message.from, message.to, message.term)?;
        let input = Input::TimeoutNow {
            request: timeout_now_from_proto(&message),
        };
        self.inbox
            .send(input)
            .await
            .map_err(|_| Status::unavailable("node stopped"))?;
        Ok(Response::new(proto::TimeoutNowResponse { from: self.id.0 }))
    }

    async fn append_entries(
        &self,
        request: Request<proto::AppendEntriesRequest>,
    ) -> Result<Response<proto::AppendEntriesResponse>, Status> {
        let identity = identity_of(&request);
        let message = request.into_inner();
        self.check_append(&identity, &message)?;
        let (reply, answer) = oneshot::channel();
        let input = Input::AppendEntries {
            request: append_entries_from_proto(message),
            reply,
        };
        let response = self.ask(input, answer).await?;
        Ok(Response::new(append_entries_response_to_proto(
            self.id, response,
        )))
    }

    async fn install_snapshot(
        &self,
        request: Request<tonic::Streaming<proto::InstallSnapshotChunk>>,
    ) -> Result<Response<proto::AppendEntriesResponse>, Status> {
        let identity = identity_of(&request);
        let mut chunks = request.into_inner();
        let mut bytes: Vec<u8> = Vec::new();
        let mut first: Option<proto::InstallSnapshotChunk> = None;
        let mut _receiving: Option<Receiving> = None;
        loop {
            let chunk = chunks.message().await?.ok_or_else(|| {
                Status::aborted("the snapshot stream ended before its last chunk")
            })?;
            self.check_route(&identity, chunk.from, chunk.to, chunk.term)?;
            if _receiving.is_none() {
                if !self
                    .receiving
                    .lock()
                    .expect("receiving lock")
                    .insert(chunk.from)
                {
                    return Err(Status::resource_exhausted(format!(
                        "a snapshot from node {} is already arriving",
                        chunk.from
                    )));
                }
                _receiving = Some(Receiving {
                    peers: self.receiving.clone(),
                    peer: chunk.from,
                });
            }
            if let Some(first) = &first {
                if (first.from, first.term) != (chunk.from, chunk.term) {
                    return Err(Status::invalid_argument(
                        "a snapshot's chunks changed sender or term midway",
                    ));
                }
            }
            if chunk.offset != bytes.len() as u64 {
                return Err(Status::invalid_argument(format!(
                    "snapshot chunk at offset {} where {} was expected",
                    chunk.offset,
                    bytes.len()
                )));
            }
            if bytes.len() as u64 + chunk.data.len() as u64 > SNAPSHOT_BYTES_MAX {
                return Err(Status::resource_exhausted(format!(
                    "snapshot larger than {SNAPSHOT_BYTES_MAX} bytes"
                )));
            }
            bytes.extend_from_slice(&chunk.data);
            let is_done = chunk.done;
            if first.is_none() {
                first = Some(proto::InstallSnapshotChunk {
                    data: Vec::new(),
                    ..chunk
                });
            }
            if is_done {
                break;
            }
        }
        let first = first.expect("a chunk arrived");
        let source = format!("the snapshot from node {}", first.from);
        let file = SnapshotFile::decode(bytes, &source).map_err(|e| {
            warn!(from = first.from, error = %e, "damaged snapshot refused");
            Status::data_loss(e.to_string())
        })?;
        let (reply, answer) = oneshot::channel();
        let input = Input::InstallSnapshot {
            request: InstallSnapshot {
                term: Term(first.term),
                leader: NodeId(first.from),
                read_round: first.read_round,
            },
            file: std::sync::Arc::new(file),
            reply,
        };
        let response = self.ask(input, answer).await?;
        Ok(Response::new(append_entries_response_to_proto(
            self.id, response,
        )))
    }

    type ReplicateStream = ReceiverStream<Result<proto::AppendEntriesResponse, Status>>;

    async fn replicate(
        &self,
        request: Request<tonic::Streaming<proto::AppendEntriesRequest>>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        let (answers_tx, mut answers) = mpsc::channel(REPLICATE_PENDING_MAX);
        let (responses_tx, responses) = mpsc::channel(REPLICATE_PENDING_MAX);
        let identity = identity_of(&request);
        tokio::spawn(
            self.clone()
                .read_stream(identity, request.into_inner(), answers_tx)
                .in_current_span(),
        );
        let id = self.id;
        tokio::spawn(
            async move {
                while let Some(answer) = answers.recv().await {
                    let response = match answer {
                        StreamAnswer::Pending(answer) => match answer.await {
                            Ok(response) => Ok(append_entries_response_to_proto(id, response)),
                            Err(_) => Err(Status::unavailable("node stopped")),
                        },
                        StreamAnswer::Refused(status) => Err(status),
                    };
                    let is_last = response.is_err();
                    if responses_tx.send(response).await.is_err() || is_last {
                        return;
                    }
                }
            }
            .in_current_span(),
        );
        Ok(Response::new(ReceiverStream::new(responses)))
    }
}

#[derive(Clone)]
struct KvService {
    inbox: mpsc::Sender<Input>,
    request_timeout: Duration,
    /// Bytes all `Batch` streams of the node hold.
    budget: std::sync::Arc<BatchBudget>,
    /// Proposals that timed out here (`lattice_server_proposals_failed_total`,
    /// which the driver counts for those it refused or lost).
    proposals_failed: prometheus::IntCounter,
    /// Ends the `Batch` streams, so an idle one does not hold the server's
    /// graceful shutdown open.
    shutdown: watch::Receiver<bool>,
}

const BATCH_PENDING_BYTES_MAX: usize = 4 * KV_MESSAGE_BYTES_MAX;
/// One answer message's bytes, beyond its first answer (which always fits:
/// no answer is larger than a request can be).
const BATCH_ANSWER_BYTES_MAX: usize = KV_MESSAGE_BYTES_MAX / 2;

/// The bytes all `Batch` streams of a node hold: requests read and not
/// answered, and answers not yet sent. An operation starts only once the
/// operations started node-wide (in progress, or answered and unsent) leave
/// room for its largest answer (a read's: the largest value the store may
/// hold, `BatchBudget::note_value_bytes_bound`), or when none are: so
/// requests read but not started never block each other, and something can
/// always start. When its answer lands, the answer's bytes take the place of
/// that bound, and they are given back as the answer leaves. No stream reads
/// a new message while the node holds its limit or more, requests waiting
/// to start included. The node can go over the limit by the messages read
/// at once while it was under (one per stream, at most
/// [`KV_MESSAGE_BYTES_MAX`] each), by an operation started when none were,
/// and by answers larger than their bound (a value written after the read
/// started). An idle stream holds nothing.
pub struct BatchBudget {
    limit: usize,
    /// Everything held: requests waiting to start, and what `started` holds.
    held: AtomicUsize,
    /// Operations started: their bounds while in progress, their answers
    /// until sent.
    started: AtomicUsize,
    /// Streams waiting for room: releases wake them only if there are any
    /// (sequentially consistent with the counters: a release either sees a
    /// new waiter, or that waiter sees the release).
    waiting: AtomicUsize,
    released: tokio::sync::Notify,
    /// No value in the store is larger (the driver keeps it).
    value_bytes_bound: AtomicUsize,
    /// What the node holds now (`lattice_server_batch_bytes_held`).
    gauge: Option<prometheus::IntGauge>,
}

impl BatchBudget {
    pub fn new(limit: usize, gauge: Option<prometheus::IntGauge>) -> Self {
        BatchBudget {
            limit,
            held: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            released: tokio::sync::Notify::new(),
            value_bytes_bound: AtomicUsize::new(0),
            gauge,
        }
    }

    fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }

    /// The largest value the store may hold now (it only grows).
    pub(crate) fn note_value_bytes_bound(&self, bytes: usize) {
        self.value_bytes_bound.fetch_max(bytes, Ordering::Relaxed);
    }

    /// The most an operation's answer can take: a read (or a
    /// compare-and-swap that did not swap) answers with a value.
    fn answer_bound(&self, request: &proto::KvRequest) -> usize {
        use proto::kv_request::Operation as Op;
        const FRAMING: usize = 64;
        match &request.operation {
            Some(Op::Get(_)) | Some(Op::CompareAndSwap(_)) => {
                self.value_bytes_bound.load(Ordering::Relaxed) + FRAMING
            }
            _ => FRAMING,
        }
    }

    /// Whether an operation whose answer may take `bound` can start.
    fn fits(&self, started: usize, bound: usize) -> bool {
        started + bound <= self.limit || started == 0
    }

    /// Waits until `ready()` (it takes nothing). Cancel-safe.
    async fn wait_until(&self, ready: impl Fn() -> bool) {
        if ready() {
            return;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        struct Leave<'a>(&'a AtomicUsize);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _leave = Leave(&self.waiting);
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if ready() {
                return;
            }
            released.await;
        }
    }

    /// Waits until an operation whose answer may take `bound` can start.
    async fn room_for(&self, bound: usize) {
        self.wait_until(|| self.fits(self.started(), bound)).await
    }

    /// Waits until the node holds less than its limit.
    async fn under_limit(&self) {
        self.wait_until(|| self.held() < self.limit).await
    }

    /// Adds to (or, negative, takes from) both counters.
    fn add(&self, held: isize, started: isize) {
        let apply = |counter: &AtomicUsize, delta: isize| {
            if delta >= 0 {
                counter.fetch_add(delta as usize, Ordering::SeqCst) + delta as usize
            } else {
                counter.fetch_sub(delta.unsigned_abs(), Ordering::SeqCst) - delta.unsigned_abs()
            }
        };
        if started != 0 {
            apply(&self.started, started);
        }
        let now = apply(&self.held, held);
        if let Some(gauge) = &self.gauge {
            gauge.set(now as i64);
        }
        if (held < 0 || started < 0) && self.waiting.load(Ordering::SeqCst) > 0 {
            self.released.notify_waiters();
        }
    }
}

/// What one stream holds of the node's budget; given back when dropped.
struct Held<'a> {
    budget: &'a BatchBudget,
    /// All it holds, and the part of it its started operations hold.
    held: usize,
    started: usize,
}

impl Held<'_> {
    /// A request was read.
    fn read(&mut self, request_bytes: usize) {
        self.budget.add(request_bytes as isize, 0);
        self.held += request_bytes;
    }

    /// Starts an operation (its request read, its answer up to `bound`) if
    /// the budget has room for it.
    fn try_start(&mut self, request_bytes: usize, bound: usize) -> bool {
        let budget = self.budget;
        let taken = budget
            .started
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |started| {
                budget.fits(started, bound).then_some(started + bound)
            });
        if taken.is_err() {
            return false;
        }
        self.started += bound;
        // The request's bytes become part of the bound.
        let more = bound as isize - request_bytes as isize;
        budget.add(more, 0);
        self.held = (self.held as isize + more) as usize;
        true
    }

    /// An answer of `answer` bytes landed in place of `bound`.
    fn land(&mut self, bound: usize, answer: usize) {
        let delta = answer as isize - bound as isize;
        self.budget.add(delta, delta);
        self.held = (self.held as isize + delta) as usize;
        self.started = (self.started as isize + delta) as usize;
    }

    /// An answer of `answer` bytes left.
    fn sent(&mut self, answer: usize) {
        self.budget.add(-(answer as isize), -(answer as isize));
        self.held -= answer;
        self.started -= answer;
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.budget
            .add(-(self.held as isize), -(self.started as isize));
    }
}

fn session_of(session: Option<proto::Session>) -> Result<(u64, u64)> {
    let session = session
        .ok_or_else(|| Error::InvalidArgument("a mutating request needs a session".into()))?;
    Ok((session.client_id, session.sequence))
}

fn mismatch(outcome: Outcome) -> Error {
    Error::Indeterminate(format!(
        "the session's sequence number was already used for another operation ({outcome:?})"
    ))
}

/// The operations, as both the unary calls and the `Batch` stream serve them.
impl KvService {
    /// Proposes a command and waits for its outcome, within the request timeout.
    async fn propose(&self, command: Command) -> Result<Outcome> {
        command.validate()?;
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let (reply, answer) = oneshot::channel();
        match tokio::time::timeout_at(deadline, self.inbox.send(Input::Propose { command, reply }))
            .await
        {
            Err(_) => {
                self.proposals_failed.inc();
                return Err(Error::Unavailable("node overloaded".into()));
            }
            Ok(Err(_)) => return Err(Error::Unavailable("node stopped".into())),
            Ok(Ok(())) => {}
        }
        let outcome = match tokio::time::timeout_at(deadline, answer).await {
            Err(_) => {
                self.proposals_failed.inc();
                Err(Error::Indeterminate(
                    "timed out waiting for the command to commit".into(),
                ))
            }
            Ok(Err(_)) => Err(Error::Indeterminate(
                "node stopped with the command in flight".into(),
            )),
            Ok(Ok(outcome)) => outcome,
        }?;
        match outcome {
            Outcome::Rejected(reason) => Err(Error::Indeterminate(reason)),
            outcome => Ok(outcome),
        }
    }

    async fn put(&self, message: proto::PutRequest) -> Result<proto::PutResponse> {
        let (client_id, sequence) = session_of(message.session)?;
        let command = Command {
            client_id,
            sequence,
            operation: Operation::Put {
                key: message.key,
                value: message.value,
            },
        };
        match self.propose(command).await? {
            Outcome::Put => Ok(proto::PutResponse {}),
            other => Err(mismatch(other)),
        }
    }

    async fn get(&self, message: proto::GetRequest) -> Result<proto::GetResponse> {
        kv::validate_key(&message.key)?;
        let (reply, answer) = oneshot::channel();
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let input = Input::Read {
            key: message.key,
            reply,
        };
        let read = match tokio::time::timeout_at(deadline, self.inbox.send(input)).await {
            Err(_) => Err(Error::Unavailable("node overloaded".into())),
            Ok(Err(_)) => Err(Error::Unavailable("node stopped".into())),
            Ok(Ok(())) => match tokio::time::timeout_at(deadline, answer).await {
                Err(_) => Err(Error::Unavailable(
                    "timed out confirming leadership for the read".into(),
                )),
                Ok(Err(_)) => Err(Error::Unavailable("node stopped".into())),
                Ok(Ok(value)) => value,
            },
        }?;
        Ok(proto::GetResponse {
            found: read.value.is_some(),
            value: read.value.unwrap_or_default(),
            applied_index: read.applied_index.0,
        })
    }

    async fn delete(&self, message: proto::DeleteRequest) -> Result<proto::DeleteResponse> {
        let (client_id, sequence) = session_of(message.session)?;
        let command = Command {
            client_id,
            sequence,
            operation: Operation::Delete { key: message.key },
        };
        match self.propose(command).await? {
            Outcome::Delete { existed } => Ok(proto::DeleteResponse { existed }),
            other => Err(mismatch(other)),
        }
    }

    async fn compare_and_swap(
        &self,
        message: proto::CompareAndSwapRequest,
    ) -> Result<proto::CompareAndSwapResponse> {
        let (client_id, sequence) = session_of(message.session)?;
        let command = Command {
            client_id,
            sequence,
            operation: Operation::CompareAndSwap {
                key: message.key,
                expected: message.expected,
                new_value: message.new_value,
            },
        };
        match self.propose(command).await? {
            Outcome::CompareAndSwap { swapped, current } => {
                Ok(proto::CompareAndSwapResponse { swapped, current })
            }
            other => Err(mismatch(other)),
        }
    }

    /// One operation of a `Batch` stream, answered under its id.
    async fn answer(&self, request: proto::KvRequest) -> proto::KvResponse {
        use proto::kv_request::Operation as Op;
        use proto::kv_response::Result as Answer;
        let result = match request.operation {
            Some(Op::Put(message)) => self.put(message).await.map(Answer::Put),
            Some(Op::Get(message)) => self.get(message).await.map(Answer::Get),
            Some(Op::Delete(message)) => self.delete(message).await.map(Answer::Delete),
            Some(Op::CompareAndSwap(message)) => self
                .compare_and_swap(message)
                .await
                .map(Answer::CompareAndSwap),
            None => Err(Error::InvalidArgument(
                "a request needs an operation (an unknown one, from a newer client?)".into(),
            )),
        };
        proto::KvResponse {
            id: request.id,
            result: Some(result.unwrap_or_else(|e| Answer::Error(error_to_proto(&e)))),
        }
    }

    /// Serves one `Batch` stream: reads a message while a whole one more
    /// fits under [`BATCH_PENDING_MAX`] and [`BATCH_PENDING_BYTES_MAX`] and
    /// the node is under its [`BatchBudget`], starts each operation once the
    /// budget has room for its largest answer, and sends the answers that
    /// are ready, as few messages as fit, whenever the stream can take one.
    async fn serve_batch(
        self,
        mut requests: tonic::Streaming<proto::BatchRequest>,
        responses: mpsc::Sender<Result<proto::BatchResponse, Status>>,
    ) {
        let stopping = until_shutdown(self.shutdown.clone());
        tokio::pin!(stopping);
        // Operations read and not started yet, with their request's bytes.
        let mut waiting: VecDeque<(proto::KvRequest, usize)> = VecDeque::new();
        let mut in_progress = FuturesUnordered::new();
        let mut ready: VecDeque<(proto::KvResponse, usize)> = VecDeque::new();
        // Bytes of the requests waiting and in progress and of the answers
        // unsent.
        let mut pending_bytes = 0;
        // What the node's budget holds for this stream: the same, with each
        // operation in progress counted at its largest answer.
        let mut held = Held {
            budget: &self.budget,
            held: 0,
            started: 0,
        };
        let mut is_reading = true;
        // Until the client has closed its side and had every answer.
        while is_reading || !waiting.is_empty() || !in_progress.is_empty() || !ready.is_empty() {
            let operations = waiting.len() + in_progress.len() + ready.len();
            let has_room = operations + BATCH_OPERATIONS_MAX <= BATCH_PENDING_MAX
                && pending_bytes + KV_MESSAGE_BYTES_MAX <= BATCH_PENDING_BYTES_MAX;
            let next_bound = waiting.front().map_or(0, |(request, bytes)| {
                self.budget.answer_bound(request).max(*bytes)
            });
            tokio::select! {
                biased;
                _ = &mut stopping => {
                    // Operations still in progress may yet commit: the
                    // client reports them as of unknown outcome.
                    let _ = responses.try_send(Err(Status::unavailable("node shutting down")));
                    return;
                }
                // The client went away while nothing here can notice (no
                // answer to send or to come: the stream may be waiting on
                // the budget): whatever it holds goes.
                () = responses.closed(), if ready.is_empty() && in_progress.is_empty() => return,
                Some((answer, request_bytes, charged)) = in_progress.next(), if !in_progress.is_empty() => {
                    let answer_bytes = proto::KvResponse::encoded_len(&answer);
                    pending_bytes = pending_bytes - request_bytes + answer_bytes;
                    // The answer takes the place of what its start charged
                    // (more, if a larger value was written since).
                    held.land(charged, answer_bytes);
                    ready.push_back((answer, answer_bytes));
                }
                permit = responses.reserve(), if !ready.is_empty() => match permit {
                    Ok(permit) => {
                        let mut message = proto::BatchResponse::default();
                        let mut bytes = 0;
                        while let Some((answer, answer_bytes)) = ready.pop_front() {
                            bytes += answer_bytes + 8;
                            if !message.responses.is_empty() && bytes > BATCH_ANSWER_BYTES_MAX {
                                ready.push_front((answer, answer_bytes));
                                break;
                            }
                            pending_bytes -= answer_bytes;
                            held.sent(answer_bytes);
                            message.responses.push(answer);
                        }
                        permit.send(Ok(message));
                    }
                    // The client went away.
                    Err(_) => return,
                },
                // Start the operations the budget has room for, in order.
                () = self.budget.room_for(next_bound), if !waiting.is_empty() => {
                    while let Some((request, request_bytes)) = waiting.pop_front() {
                        let bound = self.budget.answer_bound(&request).max(request_bytes);
                        if !held.try_start(request_bytes, bound) {
                            waiting.push_front((request, request_bytes));
                            break;
                        }
                        let answer = self.answer(request);
                        in_progress.push(async move { (answer.await, request_bytes, bound) });
                    }
                }
                // A message is read only while the node holds less than its
                // budget (both awaits are cancel-safe).
                next = async {
                    self.budget.under_limit().await;
                    requests.message().await
                }, if is_reading && has_room => {
                    match next {
                        Ok(Some(batch)) if batch.requests.len() > BATCH_OPERATIONS_MAX => {
                            warn!(operations = batch.requests.len(), "Batch message over the limit: stream ended");
                            let _ = responses.try_send(Err(Status::invalid_argument(format!(
                                "a Batch message carries at most {BATCH_OPERATIONS_MAX} operations, not {}",
                                batch.requests.len()
                            ))));
                            return;
                        }
                        Ok(Some(batch)) => {
                            for request in batch.requests {
                                let request_bytes = request.encoded_len();
                                pending_bytes += request_bytes;
                                held.read(request_bytes);
                                waiting.push_back((request, request_bytes));
                            }
                        }
                        // The client closed its side: finish what it asked.
                        Ok(None) => is_reading = false,
                        // The connection broke, or a message was malformed
                        // or too large: say so, and end the stream.
                        Err(status) => {
                            let _ = responses.try_send(Err(status));
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// A unary call's answer: the operation's result, its error as a status.
fn unary<T>(result: Result<T>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(|e| error_to_status(&e))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn put(
        &self,
        request: Request<proto::PutRequest>,
    ) -> Result<Response<proto::PutResponse>, Status> {
        unary(KvService::put(self, request.into_inner()).await)
    }

    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::GetResponse>, Status> {
        unary(KvService::get(self, request.into_inner()).await)
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::DeleteResponse>, Status> {
        unary(KvService::delete(self, request.into_inner()).await)
    }

    async fn compare_and_swap(
        &self,
        request: Request<proto::CompareAndSwapRequest>,
    ) -> Result<Response<proto::CompareAndSwapResponse>, Status> {
        unary(KvService::compare_and_swap(self, request.into_inner()).await)
    }

    type BatchStream = ReceiverStream<Result<proto::BatchResponse, Status>>;

    async fn batch(
        &self,
        request: Request<tonic::Streaming<proto::BatchRequest>>,
    ) -> Result<Response<Self::BatchStream>, Status> {
        // A few messages of answers: more would only queue behind HTTP/2.
        let (responses_tx, responses) = mpsc::channel(4);
        tokio::spawn(
            self.clone()
                .serve_batch(request.into_inner(), responses_tx)
                .in_current_span(),
        );
        Ok(Response::new(ReceiverStream::new(responses)))
    }
}

/// The admin service: status and leadership transfer.
#[derive(Clone)]
struct AdminService {
    inbox: mpsc::Sender<Input>,
    config: std::sync::Arc<AdminConfig>,
}

impl AdminService {
    async fn change(
        &self,
        change: ConfChange,
    ) -> Result<Response<proto::MemberListResponse>, Status> {
        let result =
            crate::mailbox::change_membership(&self.inbox, change, self.config.request_timeout)
                .await;
        unary(result.map(members_response))
    }
}

fn members_response(members: Members) -> proto::MemberListResponse {
    proto::MemberListResponse {
        members: members
            .membership
            .members
            .iter()
            .map(|(id, member)| proto::Member {
                id: id.0,
                raft_addr: member.raft_addr.clone(),
                kv_addr: member.kv_addr.clone(),
                learner: member.is_learner,
            })
            .collect(),
        leader: members.leader.0,
        config_index: members.index.0,
        committed: members.is_committed,
        removed: members.membership.removed.iter().map(|id| id.0).collect(),
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Follower => "follower",
        Role::PreCandidate => "pre-candidate",
        Role::Candidate => "candidate",
        Role::Leader => "leader",
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        _request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        let status = self.config.status.borrow().clone();
        Ok(Response::new(proto::StatusResponse {
            id: status.id.0,
            role: role_name(status.role).into(),
            term: status.term.0,
            leader: status.leader.map_or(0, |l| l.0),
            commit_index: status.commit_index.0,
            applied_index: status.applied_index.0,
            last_index: status.last_index.0,
            snapshot_index: status.snapshot_index.0,
            membership: match status.membership {
                MemberRole::Voter => "voter",
                MemberRole::Learner => "learner",
                MemberRole::None => "none",
            }
            .into(),
            log_entries: status.last_index.0.saturating_sub(status.compacted_index.0),
        }))
    }

    async fn member_list(
        &self,
        _request: Request<proto::MemberListRequest>,
    ) -> Result<Response<proto::MemberListResponse>, Status> {
        unary(
            crate::mailbox::members(&self.inbox)
                .await
                .map(members_response),
        )
    }

    async fn member_add(
        &self,
        request: Request<proto::MemberAddRequest>,
    ) -> Result<Response<proto::MemberListResponse>, Status> {
        let request = request.into_inner();
        self.change(ConfChange::Add {
            id: NodeId(request.id),
            raft_addr: request.raft_addr,
            kv_addr: request.kv_addr,
            is_learner: request.learner,
        })
        .await
    }

    async fn member_promote(
        &self,
        request: Request<proto::MemberPromoteRequest>,
    ) -> Result<Response<proto::MemberListResponse>, Status> {
        self.change(ConfChange::Promote(NodeId(request.into_inner().id)))
            .await
    }

    async fn member_remove(
        &self,
        request: Request<proto::MemberRemoveRequest>,
    ) -> Result<Response<proto::MemberListResponse>, Status> {
        self.change(ConfChange::Remove(NodeId(request.into_inner().id)))
            .await
    }

    async fn move_leader(
        &self,
        request: Request<proto::MoveLeaderRequest>,
    ) -> Result<Response<proto::MoveLeaderResponse>, Status> {
        let target = request.into_inner().target;
        let target = (target != 0).then_some(NodeId(target));
        let result = crate::mailbox::transfer_leadership(
            self.config.id,
            &self.inbox,
            self.config.status.clone(),
            target,
            self.config.transfer_timeout,
        )
        .await;
        unary(result.map(|(leader, term)| proto::MoveLeaderResponse {
            leader: leader.0,
            term: term.0,
        }))
    }
}
