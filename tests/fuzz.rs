//! Garbage on the wire, fed to a live node: random bytes and damaged real
//! messages as the body of every gRPC method of both ports (unary calls and
//! the Replicate, InstallSnapshot and Batch streams), and raw bytes on the
//! TCP sockets. Seeded, so a failure replays. The node must answer each
//! call (any status), never stop, and keep every acknowledged write.
//!
//! The decoders below the wire (WAL records, snapshots, commands,
//! configurations) are fuzzed in their own modules' tests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bytes::{Buf, BufMut};
use lattice::{proto, Client, ClientConfig, Node, NodeConfig, NodeId};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

#[path = "../src/mutate.rs"]
mod mutate;

/// Sends and receives gRPC message bodies as they are: no protobuf.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

const UNARY: &[&str] = &[
    "/lattice.Raft/RequestVote",
    "/lattice.Raft/AppendEntries",
    "/lattice.Raft/TimeoutNow",
    "/lattice.Admin/Status",
    "/lattice.Admin/MoveLeader",
    "/lattice.Admin/MemberList",
    "/lattice.Admin/MemberAdd",
    "/lattice.Admin/MemberPromote",
    "/lattice.Admin/MemberRemove",
    "/lattice.Kv/Put",
    "/lattice.Kv/Get",
    "/lattice.Kv/Delete",
    "/lattice.Kv/CompareAndSwap",
];

const STREAMS: &[&str] = &[
    "/lattice.Raft/Replicate",
    "/lattice.Raft/InstallSnapshot",
    "/lattice.Kv/Batch",
];

/// Real messages of every kind, encoded: the fuzzer damages these (a
/// random body rarely gets past the protobuf decoder).
fn seeds(me: u64) -> Vec<Vec<u8>> {
    let session = Some(proto::Session {
        client_id: 9,
        sequence: 1,
    });
    let entry = |index, data: &[u8]| proto::Entry {
        term: 1,
        index,
        data: data.to_vec(),
    };
    vec![
        proto::RequestVoteRequest {
            from: 2,
            to: me,
            term: 1,
            last_log_index: 5,
            last_log_term: 1,
            pre_vote: true,
            transfer: false,
        }
        .encode_to_vec(),
        proto::AppendEntriesRequest {
            from: 2,
            to: me,
            term: 1,
            prev_log_index: 1,
            prev_log_term: 1,
            entries: vec![entry(2, b"\x01garbage command"), entry(3, b"")],
            leader_commit: 3,
            read_round: 1,
        }
        .encode_to_vec(),
        proto::InstallSnapshotChunk {
            from: 2,
            to: me,
            term: 1,
            offset: 0,
            data: b"LATTICE-SNAPSHOT\x00\x01 not really".to_vec(),
            done: true,
            ..Default::default()
        }
        .encode_to_vec(),
        proto::TimeoutNowRequest {
            from: 2,
            to: me,
            term: 1,
            last_log_index: 9,
            last_log_term: 1,
        }
        .encode_to_vec(),
        proto::PutRequest {
            session,
            key: b"fuzz".to_vec(),
            value: b"v".to_vec(),
        }
        .encode_to_vec(),
        proto::GetRequest {
            key: b"fuzz".to_vec(),
        }
        .encode_to_vec(),
        proto::CompareAndSwapRequest {
            session,
            key: b"fuzz".to_vec(),
            expected: Some(b"v".to_vec()),
            new_value: b"w".to_vec(),
        }
        .encode_to_vec(),
        proto::BatchRequest {
            requests: vec![
                proto::KvRequest {
                    id: 1,
                    operation: Some(proto::kv_request::Operation::Get(proto::GetRequest {
                        key: b"fuzz".to_vec(),
                    })),
                },
                proto::KvRequest {
                    id: 1,
                    operation: Some(proto::kv_request::Operation::Delete(proto::DeleteRequest {
                        session,
                        key: vec![],
                    })),
                },
            ],
        }
        .encode_to_vec(),
        proto::MemberAddRequest {
            id: 7,
            ..Default::default()
        }
        .encode_to_vec(),
        proto::MemberRemoveRequest { id: me }.encode_to_vec(),
        proto::MoveLeaderRequest { target: 7 }.encode_to_vec(),
    ]
}

/// A damaged real message of any kind.
fn damaged(rng: &mut StdRng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let seed = rng.random_range(0..seeds.len());
    mutate::damaged(rng, &seeds[seed])
}

async fn start_node(dir: &std::path::Path) -> Result<(Node, String, String)> {
    let raft = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    let kv = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    let mut config = NodeConfig::new(NodeId(1), &raft, &kv, Vec::new(), dir.join("node-1"));
    config.tick_interval = Duration::from_millis(10);
    config.election_timeout_ticks_min = 10;
    config.election_timeout_ticks_max = 20;
    config.snapshot_entries = 100;
    config.snapshot_catchup_entries = 20;
    let node = Node::start(config).await?;
    Ok((node, raft, kv))
}

fn client(kv: &str) -> Result<Client> {
    let config = ClientConfig {
        operation_timeout: Duration::from_secs(20),
        ..ClientConfig::default()
    };
    Ok(Client::with_config(
        &[kv.to_string()],
        config,
        Arc::new(lattice::transport::TcpTransport),
    )?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_at_every_method_and_socket_loses_nothing() -> Result<()> {
    // A panic in a request handler would only cost its connection, and
    // look like one more error status: count every panic in the process.
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    let dir = tempfile::tempdir()?;
    let (node, raft, kv) = start_node(dir.path()).await?;
    let mut writer = client(&kv)?;
    for i in 0..150 {
        writer.put(format!("key-{i}"), format!("value-{i}")).await?;
    }

    let seeds = seeds(1);
    let mut rng = StdRng::seed_from_u64(20261202);
    let mut answered = [0usize; 2]; // [ok, error status]
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    for round in 0..3000 {
        let unary = rng.random_ratio(3, 4);
        let path = if unary {
            UNARY[rng.random_range(0..UNARY.len())]
        } else {
            STREAMS[rng.random_range(0..STREAMS.len())]
        };
        let addr = if path.starts_with("/lattice.Raft/") {
            &raft
        } else {
            &kv
        };
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .with_context(|| format!("round {round}: the node stopped listening"))?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await?;
        let result = if unary {
            let body = damaged(&mut rng, &seeds);
            grpc.unary(
                tonic::Request::new(body),
                http::uri::PathAndQuery::from_static(path),
                RawCodec,
            )
            .await
            .map(|_| ())
        } else {
            let bodies: Vec<Vec<u8>> = (0..rng.random_range(1..6))
                .map(|_| damaged(&mut rng, &seeds))
                .collect();
            match grpc
                .streaming(
                    tonic::Request::new(tokio_stream::iter(bodies)),
                    http::uri::PathAndQuery::from_static(path),
                    RawCodec,
                )
                .await
            {
                Ok(response) => {
                    let mut answers = response.into_inner();
                    loop {
                        match answers.message().await {
                            Ok(Some(_)) => {}
                            Ok(None) => break Ok(()),
                            Err(status) => break Err(status),
                        }
                    }
                }
                Err(status) => Err(status),
            }
        };
        match result {
            Ok(()) => answered[0] += 1,
            Err(status) => {
                ensure!(
                    status.code() != tonic::Code::DeadlineExceeded,
                    "round {round}: no answer within 10 s ({status})"
                );
                answered[1] += 1;
                let seen = codes.entry(format!("{:?}", status.code())).or_default();
                if *seen == 0 {
                    eprintln!("first {:?}: {} ({path})", status.code(), status.message());
                }
                *seen += 1;
            }
        }
    }
    eprintln!(
        "3000 calls: {} answered OK, refused: {codes:?}",
        answered[0]
    );
    // Both kinds of answer, so the bodies reached the services' checks and
    // were neither all accepted nor all refused at the door.
    ensure!(answered[0] >= 100, "answers {answered:?}");
    ensure!(answered[1] >= 1000, "answers {answered:?}");
    // Refused for what they say, not only because they do not decode.
    ensure!(
        codes.get("InvalidArgument").copied().unwrap_or(0) >= 100,
        "refused by the services' own checks: {codes:?}"
    );
    ensure!(
        !codes.contains_key("Unimplemented"),
        "every path exists: {codes:?}"
    );

    // Raw bytes on the sockets: not HTTP/2, or the preface then garbage.
    for round in 0..200 {
        let addr = if round % 2 == 0 { &raft } else { &kv };
        let mut socket = tokio::net::TcpStream::connect(addr).await?;
        let mut bytes: Vec<u8> = if rng.random_bool(0.5) {
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()
        } else {
            Vec::new()
        };
        let len = rng.random_range(0..512);
        bytes.extend((0..len).map(|_| rng.random::<u8>()));
        let _ = socket.write_all(&bytes).await;
        let mut sink = [0u8; 1024];
        // The node answers (a GOAWAY) or hangs up; either way it lets go.
        let _ = tokio::time::timeout(Duration::from_millis(200), socket.read(&mut sink)).await;
    }

    // Still serving, with everything acknowledged before the garbage.
    let status = node.status();
    ensure!(
        status.failure.is_none(),
        "the node failed: {:?}",
        status.failure
    );
    let mut reader = client(&kv)?;
    for i in 0..150 {
        let value = reader.get(format!("key-{i}")).await?;
        ensure!(
            value.as_deref() == Some(format!("value-{i}").as_bytes()),
            "key-{i} reads {value:?}"
        );
    }
    reader.put("after", "garbage").await?;
    ensure!(reader.get("after").await?.as_deref() == Some(&b"garbage"[..]));
    node.shutdown().await;
    let panics = PANICS.load(Ordering::SeqCst);
    ensure!(panics == 0, "{panics} panics (see above)");
    Ok(())
}
