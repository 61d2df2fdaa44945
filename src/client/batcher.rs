//! One `Batch` stream per endpoint, shared by every session of a client: each
//! operation goes to the stream's task through a queue; the task sends
//! everything waiting as one message and routes each answer back by its id.
//! Under load this turns many small gRPC calls into a few large messages
//! (TiKV's BatchCommands idea); with one operation at a time it costs one
//! queue hop more than a unary call.
//!
//! What an operation's fate is when things break: an operation never handed
//! to a stream definitely did not happen (`Unavailable`); one handed to a
//! stream that then broke may have (`Indeterminate`).

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;
use tracing::debug;

use crate::proto::kv_client::KvClient;
use crate::proto::kv_request::Operation;
use crate::proto::kv_response::Result as Answer;
use crate::proto::{self};
use crate::transport::limits::{BATCH_OPERATIONS_MAX, KV_MESSAGE_BYTES_MAX};
use crate::transport::{error_from_proto, status_to_error};
use crate::Error;

/// Operations queued for the stream's task before callers wait to queue.
const QUEUE_CAPACITY: usize = 1024;
/// Operations sent and not yet answered; past this the task sends no more
/// until answers arrive.
const PENDING_MAX: usize = 4 * BATCH_OPERATIONS_MAX;
/// One message's bytes, unless it holds a single operation.
const BATCH_BYTES_MAX: usize = KV_MESSAGE_BYTES_MAX / 4;
/// Messages handed to the stream and not yet written. Small, so that what
/// arrives meanwhile waits to join the next message.
const MESSAGES_IN_FLIGHT: usize = 2;

struct Queued {
    operation: Operation,
    reply: oneshot::Sender<Result<Answer, Error>>,
}

pub(super) struct Batcher {
    client: KvClient<Channel>,
    /// Opening a stream and, beyond the server's own deadline, waiting for
    /// an answer: past it the stream is taken for stuck and replaced.
    rpc_timeout: Duration,
    /// The queue to the stream's task, started on first use (it needs a
    /// runtime) and again if it stopped.
    queue: Mutex<Option<mpsc::Sender<Queued>>>,
}

impl Batcher {
    /// `channel` must have no per-call deadline (the stream is long-lived).
    pub(super) fn new(channel: Channel, rpc_timeout: Duration) -> Batcher {
        let client = KvClient::new(channel)
            .max_decoding_message_size(KV_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(KV_MESSAGE_BYTES_MAX);
        Batcher {
            client,
            rpc_timeout,
            queue: Mutex::new(None),
        }
    }

    /// Sends one operation and waits for its answer (the caller bounds the wait).
    pub(super) async fn call(&self, operation: Operation) -> Result<Answer, Error> {
        let queue = self.queue();
        let (reply, answer) = oneshot::channel();
        if queue.send(Queued { operation, reply }).await.is_err() {
            return Err(Error::Unavailable(
                "the client's stream task stopped".into(),
            ));
        }
        answer.await.unwrap_or_else(|_| {
            Err(Error::Indeterminate(
                "the client's stream task stopped with the operation".into(),
            ))
        })
    }

    fn queue(&self) -> mpsc::Sender<Queued> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = queue.as_ref().filter(|s| !s.is_closed()) {
            return sender.clone();
        }
        let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(run(self.client.clone(), self.rpc_timeout, receiver));
        *queue = Some(sender.clone());
        sender
    }
}

fn fail_all(
    operations: impl IntoIterator<Item = oneshot::Sender<Result<Answer, Error>>>,
    error: &Error,
) {
    for reply in operations {
        let _ = reply.send(Err(match error {
            Error::Unavailable(reason) => Error::Unavailable(reason.clone()),
            other => Error::Indeterminate(other.to_string()),
        }));
    }
}

/// The stream's task: opens a stream when there is work, serves it until it
/// breaks, and starts over; ends when every `Batcher` handle is gone.
async fn run(
    mut client: KvClient<Channel>,
    rpc_timeout: Duration,
    mut queue: mpsc::Receiver<Queued>,
) {
    let mut waiting: Vec<Queued> = Vec::new();
    loop {
        if waiting.is_empty() {
            match queue.recv().await {
                Some(operation) => waiting.push(operation),
                None => return,
            }
        }
        let (requests, outgoing) = mpsc::channel(MESSAGES_IN_FLIGHT);
        let opening = client.batch(ReceiverStream::new(outgoing));
        // Nothing was sent yet: whatever fails here definitely did not happen.
        let responses = match tokio::time::timeout(rpc_timeout, opening).await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => {
                let error = Error::Unavailable(format!(
                    "cannot open a stream: {}",
                    status_to_error(&status)
                ));
                fail_all(waiting.drain(..).map(|q| q.reply), &error);
                continue;
            }
            Err(_) => {
                let error = Error::Unavailable("timed out opening a stream".into());
                fail_all(waiting.drain(..).map(|q| q.reply), &error);
                continue;
            }
        };
        if !serve(&mut queue, &mut waiting, requests, responses, rpc_timeout).await {
            return;
        }
    }
}

/// Serves one open stream. `true` when it broke (pending operations were
/// failed as of unknown outcome; `waiting` ones stay for the next stream);
/// `false` when the queue closed and nothing is left to answer.
async fn serve(
    queue: &mut mpsc::Receiver<Queued>,
    waiting: &mut Vec<Queued>,
    requests: mpsc::Sender<proto::BatchRequest>,
    mut responses: Streaming<proto::BatchResponse>,
    rpc_timeout: Duration,
) -> bool {
    let mut pending: BTreeMap<u64, oneshot::Sender<Result<Answer, Error>>> = BTreeMap::new();
    let mut next_id = 1u64;
    let mut is_queue_open = true;
    // The server answers every operation within its request timeout, which is
    // shorter than `rpc_timeout`: operations waiting with nothing heard for
    // longer than this mean a stuck stream.
    let stuck_after = rpc_timeout + Duration::from_secs(1);
    let mut heard_at = Instant::now();
    let mut stuck_check = tokio::time::interval(Duration::from_secs(1));
    stuck_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let broken = loop {
        if !is_queue_open && waiting.is_empty() && pending.is_empty() {
            return false;
        }
        tokio::select! {
            biased;
            message = responses.message() => match message {
                Ok(Some(batch)) => {
                    heard_at = Instant::now();
                    for response in batch.responses {
                        if let Some(reply) = pending.remove(&response.id) {
                            let answer = match response.result {
                                Some(Answer::Error(error)) => Err(error_from_proto(error)),
                                Some(answer) => Ok(answer),
                                None => Err(Error::Indeterminate("an empty answer".into())),
                            };
                            let _ = reply.send(answer);
                        }
                    }
                }
                Ok(None) => break Error::Indeterminate("the node ended the stream".into()),
                Err(status) => break Error::Indeterminate(format!(
                    "the stream broke: {}",
                    status_to_error(&status)
                )),
            },
            permit = requests.reserve(), if !waiting.is_empty() && pending.len() < PENDING_MAX => {
                let Ok(permit) = permit else {
                    break Error::Indeterminate("the stream closed".into());
                };
                let mut taken = 0;
                let mut bytes = 0;
                for queued in waiting.iter() {
                    let size = queued.operation.encoded_len() + 16;
                    let is_full = taken == BATCH_OPERATIONS_MAX || pending.len() + taken == PENDING_MAX;
                    if taken > 0 && (is_full || bytes + size > BATCH_BYTES_MAX) {
                        break;
                    }
                    taken += 1;
                    bytes += size;
                }
                if pending.is_empty() {
                    heard_at = Instant::now();
                }
                let mut batch = Vec::with_capacity(taken);
                for queued in waiting.drain(..taken) {
                    // Its caller gave up: do not send it.
                    if queued.reply.is_closed() {
                        continue;
                    }
                    let id = next_id;
                    next_id += 1;
                    pending.insert(id, queued.reply);
                    batch.push(proto::KvRequest { id, operation: Some(queued.operation) });
                }
                if !batch.is_empty() {
                    permit.send(proto::BatchRequest { requests: batch });
                }
            },
            queued = queue.recv(), if is_queue_open && waiting.len() < BATCH_OPERATIONS_MAX => {
                match queued {
                    Some(queued) => {
                        waiting.push(queued);
                        while waiting.len() < BATCH_OPERATIONS_MAX {
                            match queue.try_recv() {
                                Ok(queued) => waiting.push(queued),
                                Err(_) => break,
                            }
                        }
                    }
                    None => is_queue_open = false,
                }
            },
            _ = stuck_check.tick() => {
                if !pending.is_empty() && heard_at.elapsed() > stuck_after {
                    break Error::Indeterminate("no answer in time: the stream is stuck".into());
                }
            },
        }
    };
    debug!(error = %broken, pending = pending.len(), "KV stream ended");
    fail_all(pending.into_values(), &broken);
    true
}
