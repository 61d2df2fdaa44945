//! One sender task per peer: takes the driver's messages from a bounded queue,
//! runs each as an RPC (a bounded number at once), and feeds the answers back
//! to the driver. A peer that fails is backed off (messages for it are dropped
//! and reported unreachable) so a dead or slow peer never blocks the driver.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Status;
use tracing::{info, warn, Instrument, Span};

use super::convert::*;
use super::service::RAFT_MESSAGE_BYTES_MAX;
use crate::proto::raft_client::RaftClient;
use crate::raft::{Message, NodeId};
use crate::server::{Input, PeerConfig};

/// Messages queued for one peer; past this the driver drops and re-probes.
const QUEUE_CAPACITY: usize = 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

pub(crate) fn spawn(
    id: NodeId,
    peer: PeerConfig,
    channel: Channel,
    inbox: mpsc::Sender<Input>,
    rpcs_in_flight_max: usize,
    shutdown: watch::Receiver<bool>,
    span: Span,
) -> (mpsc::Sender<Message>, JoinHandle<()>) {
    let (sender, queue) = mpsc::channel(QUEUE_CAPACITY);
    let client = RaftClient::new(channel)
        .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
    let task = tokio::spawn(
        run(
            id,
            peer,
            client,
            queue,
            inbox,
            rpcs_in_flight_max.max(1),
            shutdown,
        )
        .instrument(span),
    );
    (sender, task)
}

async fn run(
    id: NodeId,
    peer: PeerConfig,
    client: RaftClient<Channel>,
    mut queue: mpsc::Receiver<Message>,
    inbox: mpsc::Sender<Input>,
    rpcs_in_flight_max: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut in_flight: JoinSet<Result<Input, Status>> = JoinSet::new();
    let mut backoff = Duration::ZERO;
    let mut retry_at: Option<Instant> = None;
    let mut is_down = false;
    loop {
        let input = tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                match joined {
                    Ok(Ok(input)) => {
                        if is_down {
                            info!(peer = peer.id.0, "Connected to peer {}", peer.raft_addr);
                            is_down = false;
                        }
                        backoff = Duration::ZERO;
                        retry_at = None;
                        input
                    }
                    Ok(Err(status)) => {
                        if !is_down {
                            warn!(peer = peer.id.0, "Failed to connect to peer {}: {}", peer.raft_addr, describe(&status));
                            is_down = true;
                        }
                        backoff = (backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                        retry_at = Some(Instant::now() + backoff);
                        Input::Unreachable { peer: peer.id }
                    }
                    Err(_) => Input::Unreachable { peer: peer.id },
                }
            }
            message = queue.recv(), if in_flight.len() < rpcs_in_flight_max => {
                let Some(message) = message else { return };
                if retry_at.is_some_and(|at| Instant::now() < at) {
                    Input::Unreachable { peer: peer.id }
                } else {
                    in_flight.spawn(call(client.clone(), id, peer.id, message));
                    continue;
                }
            }
        };
        if inbox.send(input).await.is_err() {
            return;
        }
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

async fn call(
    mut client: RaftClient<Channel>,
    from: NodeId,
    to: NodeId,
    message: Message,
) -> Result<Input, Status> {
    match message {
        Message::RequestVote(request) => {
            let response = client
                .request_vote(request_vote_to_proto(from, to, request))
                .await?
                .into_inner();
            check_sender(to, response.from)?;
            Ok(Input::RequestVoteResponse {
                from: to,
                response: request_vote_response_from_proto(response),
            })
        }
        Message::AppendEntries(request) => {
            let response = client
                .append_entries(append_entries_to_proto(from, to, request))
                .await?
                .into_inner();
            check_sender(to, response.from)?;
            Ok(Input::AppendEntriesResponse {
                from: to,
                response: append_entries_response_from_proto(response),
            })
        }
    }
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
