//! The KV client. Given a list of endpoints it finds the leader (following
//! `not-leader` hints, caching the answer), retries what is safe to retry with
//! backoff under one deadline per operation, and tells its caller which of
//! three things happened: ok, definitely failed ([`ClientError::Failed`]), or
//! unknown outcome ([`ClientError::Unknown`]: the write may have applied).
//!
//! One `Client` is one session: its operations run one at a time (`&mut
//! self`), each mutation with the next sequence number, reused by its retries,
//! so the cluster applies it at most once. Sessions made with
//! [`Client::new_session`] share one `Batch` stream per endpoint
//! (`batcher`), so many concurrent sessions cost a few messages, not a
//! gRPC call each.

mod admin;
mod batcher;

pub use admin::{EndpointStatus, MemberList};

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::debug;

use self::batcher::Batcher;
use crate::proto::kv_request::Operation;
use crate::proto::kv_response::Result as Answer;
use crate::proto::{self};
use crate::transport::{self, ChannelConfig, TcpTransport, Transport};
use crate::Error;

/// Endpoints learned from hints are capped, so garbage hints cannot grow the list.
const ENDPOINTS_MAX: usize = 64;

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The session id; `None` picks one from the clock and process id.
    pub client_id: Option<u64>,
    /// Everything one operation may take, retries included.
    pub operation_timeout: Duration,
    /// One attempt's deadline (longer than the server's request timeout, so a
    /// server's answer arrives before the client gives up on it).
    pub rpc_timeout: Duration,
    pub connect_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Go where a `not-leader` answer points. Off: stay on the endpoints
    /// given, trying the next one after a failure (a client pinned to one
    /// node, as Jepsen binds its clients, sees that node's answers only).
    pub follow_leader_hints: bool,
    /// Dial the endpoints (and those hints point to) over TLS.
    pub tls: Option<crate::tls::ClientTls>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            client_id: None,
            operation_timeout: Duration::from_secs(10),
            rpc_timeout: Duration::from_secs(4),
            connect_timeout: Duration::from_millis(500),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
            follow_leader_hints: true,
            tls: None,
        }
    }
}

/// Why an operation did not succeed, in the terms a history needs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The operation certainly did not take effect (and never will).
    #[error("failed: {0}")]
    Failed(String),
    /// The operation may have taken effect, or may still.
    #[error("outcome unknown: {0}")]
    Unknown(String),
}

impl ClientError {
    pub fn is_definite(&self) -> bool {
        matches!(self, ClientError::Failed(_))
    }
}

/// The answer of a linearizable read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadResult {
    /// `None` if the key is absent.
    pub value: Option<Vec<u8>>,
    /// The applied index of the state the value was read from: at least the
    /// cluster's commit index when the read was sent.
    pub applied_index: u64,
}

/// The answer of a compare-and-swap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompareAndSwapResult {
    pub swapped: bool,
    /// When not swapped: the value found (`None` if the key was absent).
    pub current: Option<Vec<u8>>,
}

#[derive(Clone)]
struct Endpoint {
    addr: String,
    batcher: Arc<Batcher>,
}

pub struct Client {
    endpoints: Vec<Endpoint>,
    transport: Arc<dyn Transport>,
    channel_config: ChannelConfig,
    config: ClientConfig,
    /// The endpoint believed to lead, if any.
    leader: Option<usize>,
    /// Where to try next when no leader is known.
    next_guess: usize,
    client_id: u64,
    sequence: u64,
}

fn normalize(addr: &str) -> String {
    addr.trim()
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_string()
}

impl Client {
    /// A client over real TCP with default settings.
    pub fn new(endpoints: &[impl AsRef<str>]) -> crate::Result<Client> {
        Client::with_config(endpoints, ClientConfig::default(), Arc::new(TcpTransport))
    }

    pub fn with_config(
        endpoints: &[impl AsRef<str>],
        config: ClientConfig,
        transport: Arc<dyn Transport>,
    ) -> crate::Result<Client> {
        if endpoints.is_empty() {
            return Err(Error::Config("a client needs at least one endpoint".into()));
        }
        let channel_config = ChannelConfig {
            connect_timeout: config.connect_timeout,
            rpc_timeout: config.rpc_timeout,
            keepalive_interval: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(2),
            tls: config.tls.clone(),
        };
        let client_id = config.client_id.unwrap_or_else(default_client_id);
        if client_id == 0 {
            return Err(Error::Config("client id 0 is reserved".into()));
        }
        let mut client = Client {
            endpoints: Vec::new(),
            transport,
            channel_config,
            config,
            leader: None,
            next_guess: 0,
            client_id,
            sequence: 0,
        };
        for endpoint in endpoints {
            client.endpoint_index(endpoint.as_ref())?;
        }
        Ok(client)
    }

    /// A new session (its own client id and sequence numbers) over this
    /// client's connections: many sessions share one `Batch` stream per
    /// endpoint, and their operations travel together.
    pub fn new_session(&self) -> Client {
        self.new_session_with_id(default_client_id())
            .expect("default client ids are never 0")
    }

    /// [`Client::new_session`] with a chosen session id (unique across the
    /// cluster's clients; 0 is reserved).
    pub fn new_session_with_id(&self, client_id: u64) -> crate::Result<Client> {
        if client_id == 0 {
            return Err(Error::Config("client id 0 is reserved".into()));
        }
        Ok(Client {
            endpoints: self.endpoints.clone(),
            transport: self.transport.clone(),
            channel_config: self.channel_config.clone(),
            config: self.config.clone(),
            leader: self.leader,
            next_guess: self.next_guess,
            client_id,
            sequence: 0,
        })
    }

    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// The endpoints this client knows: those it was given, those leader
    /// hints pointed to, and those [`Client::learn_endpoints`] learned.
    pub fn endpoints(&self) -> Vec<&str> {
        self.endpoints.iter().map(|e| e.addr.as_str()).collect()
    }

    /// The endpoint currently believed to lead.
    pub fn leader(&self) -> Option<&str> {
        self.leader.map(|i| self.endpoints[i].addr.as_str())
    }

    /// Sends the next operation to endpoint `index` (modulo their number)
    /// first, whoever leads.
    pub fn prefer_endpoint(&mut self, index: usize) {
        self.leader = Some(index % self.endpoints.len());
    }

    fn endpoint_index(&mut self, addr: &str) -> crate::Result<usize> {
        let addr = normalize(addr);
        if let Some(i) = self.endpoints.iter().position(|e| e.addr == addr) {
            return Ok(i);
        }
        if self.endpoints.len() >= ENDPOINTS_MAX {
            return Err(Error::Config("too many endpoints".into()));
        }
        let channel =
            transport::stream_channel(self.transport.clone(), &addr, &self.channel_config)?;
        let batcher = Arc::new(Batcher::new(channel, self.channel_config.rpc_timeout));
        self.endpoints.push(Endpoint { addr, batcher });
        Ok(self.endpoints.len() - 1)
    }

    pub async fn put(
        &mut self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<(), ClientError> {
        let operation = Operation::Put(proto::PutRequest {
            session: Some(self.next_session()),
            key: key.into(),
            value: value.into(),
        });
        self.call(true, operation, |answer| match answer {
            Answer::Put(_) => Some(()),
            _ => None,
        })
        .await
    }

    /// A linearizable read: `None` if the key is absent.
    pub async fn get(&mut self, key: impl Into<Vec<u8>>) -> Result<Option<Vec<u8>>, ClientError> {
        Ok(self.read(key).await?.value)
    }

    /// A linearizable read, with the applied index it was served at.
    pub async fn read(&mut self, key: impl Into<Vec<u8>>) -> Result<ReadResult, ClientError> {
        let operation = Operation::Get(proto::GetRequest { key: key.into() });
        self.call(false, operation, |answer| match answer {
            Answer::Get(response) => Some(ReadResult {
                value: response.found.then_some(response.value),
                applied_index: response.applied_index,
            }),
            _ => None,
        })
        .await
    }

    /// Deletes a key; says whether it existed.
    pub async fn delete(&mut self, key: impl Into<Vec<u8>>) -> Result<bool, ClientError> {
        let operation = Operation::Delete(proto::DeleteRequest {
            session: Some(self.next_session()),
            key: key.into(),
        });
        self.call(true, operation, |answer| match answer {
            Answer::Delete(response) => Some(response.existed),
            _ => None,
        })
        .await
    }

    /// Sets `key` to `new_value` if its value is `expected` (`None`: absent).
    pub async fn compare_and_swap(
        &mut self,
        key: impl Into<Vec<u8>>,
        expected: Option<Vec<u8>>,
        new_value: impl Into<Vec<u8>>,
    ) -> Result<CompareAndSwapResult, ClientError> {
        let operation = Operation::CompareAndSwap(proto::CompareAndSwapRequest {
            session: Some(self.next_session()),
            key: key.into(),
            expected,
            new_value: new_value.into(),
        });
        self.call(true, operation, |answer| match answer {
            Answer::CompareAndSwap(response) => Some(CompareAndSwapResult {
                swapped: response.swapped,
                current: response.current,
            }),
            _ => None,
        })
        .await
    }

    fn next_session(&mut self) -> proto::Session {
        self.sequence += 1;
        proto::Session {
            client_id: self.client_id,
            sequence: self.sequence,
        }
    }

    /// Sends `operation` to the leader until it succeeds, fails for certain,
    /// or the operation deadline passes. `read` takes the value out of an
    /// answer of the right kind.
    async fn call<T>(
        &mut self,
        is_mutation: bool,
        operation: Operation,
        read: impl Fn(Answer) -> Option<T>,
    ) -> Result<T, ClientError> {
        let deadline = Instant::now() + self.config.operation_timeout;
        let mut maybe_applied = false;
        let mut backoff = self.config.backoff_min;
        let mut hops_without_backoff = 0usize;
        let mut last_error = String::from("no attempt was made");
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let is_guess = self.leader.is_none();
            let target = self
                .leader
                .unwrap_or(self.next_guess % self.endpoints.len());
            let rpc_deadline = (now + self.config.rpc_timeout).min(deadline);
            let batcher = self.endpoints[target].batcher.clone();
            let attempt = batcher.call(operation.clone());
            let error = match tokio::time::timeout_at(rpc_deadline, attempt).await {
                Ok(Ok(answer)) => match read(answer) {
                    Some(value) => {
                        self.leader = Some(target);
                        return Ok(value);
                    }
                    None => Error::Indeterminate("the node answered another operation".into()),
                },
                Ok(Err(error)) => error,
                Err(_) => Error::Indeterminate("the attempt timed out".into()),
            };
            debug!(endpoint = %self.endpoints[target].addr, %error, "attempt failed");
            last_error = format!("{}: {error}", self.endpoints[target].addr);
            self.leader = None;
            let mut is_hint = false;
            match error {
                Error::InvalidArgument(reason) if maybe_applied => {
                    return Err(ClientError::Unknown(reason))
                }
                Error::InvalidArgument(reason) => return Err(ClientError::Failed(reason)),
                Error::NotLeader { leader: Some(hint) } if self.config.follow_leader_hints => {
                    if let Ok(i) = self.endpoint_index(&hint) {
                        if i != target {
                            self.leader = Some(i);
                            is_hint = true;
                        }
                    }
                }
                Error::Indeterminate(_) => maybe_applied |= is_mutation,
                _ => {}
            }
            // The guesses go round the endpoints; a leader that failed (a
            // cached one, or a hint) does not move them, so a stale hint
            // (from a node that was cut off or removed) pointing at a dead
            // node cannot send the client round the same few endpoints.
            if is_guess || self.next_guess % self.endpoints.len() == target {
                self.next_guess = (target + 1) % self.endpoints.len();
            }
            hops_without_backoff += 1;
            if is_hint && hops_without_backoff <= self.endpoints.len() {
                continue;
            }
            hops_without_backoff = 0;
            let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(self.config.backoff_max);
        }
        if maybe_applied {
            Err(ClientError::Unknown(last_error))
        } else {
            Err(ClientError::Failed(last_error))
        }
    }
}

/// A session id for a client that was not given one: unique enough across
/// processes and restarts (clock and process id), and within a process (a
/// counter). Never used by node logic.
fn default_client_id() -> u64 {
    static CREATED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let created = CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let seed = nanos ^ (u64::from(std::process::id()) << 32) ^ created.rotate_right(16);
    // A bijective mix, so distinct seeds give distinct ids.
    let mut x = seed;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (x ^ (x >> 31)).max(1)
}
