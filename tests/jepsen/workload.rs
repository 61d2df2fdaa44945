//! The clients: eight sessions on four client hosts run get / put / delete /
//! compare-and-swap on five keys with unique values, recorded for the
//! checker. Two follow the leader, five are pinned one to each founder (as
//! Jepsen binds its clients), one picks a node at random per operation.
//! Every read that succeeds goes to the white box's read oracle.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use checker::Recorder;
use lattice::{Client, ClientConfig, ClientError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::cluster::host;
use crate::sim::network::TurmoilTransport;
use crate::sim::now;
use crate::swarm::Swarm;
use crate::white_box::WhiteBoxObserver;
use crate::{FOUNDERS, KV_PORT, POOL, SESSIONS_PER_HOST, WORKLOAD_END};

/// How a session picks the node for each attempt.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Routing {
    /// Follows `not-leader` hints and caches the leader (the default client).
    Leader,
    /// Talks to this node only, as Jepsen binds a client to a node: a deposed
    /// leader keeps its clients.
    Pinned(u64),
    /// A random node first for every operation, then the next ones in turn.
    Random,
}

/// Session `index`'s routing: host 0's two sessions follow the leader (and
/// share their connections); the next five are pinned one to each node (in
/// an order drawn from the seed); the last picks at random.
pub(crate) fn routing(seed: u64, index: u64) -> Routing {
    let mut nodes: Vec<u64> = (1..=FOUNDERS).collect();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x0B1D);
    for i in (1..nodes.len()).rev() {
        nodes.swap(i, rng.random_range(0..=i));
    }
    match index {
        0 | 1 => Routing::Leader,
        i if i < 2 + FOUNDERS => Routing::Pinned(nodes[(i - 2) as usize]),
        _ => Routing::Random,
    }
}

pub(crate) fn kv_endpoint(node: u64) -> String {
    format!("{}:{KV_PORT}", host(node))
}

/// One client host: its sessions run side by side. Sessions that follow the
/// leader share one `Client`'s connections (so its `Batch` stream to each
/// node); the others have their own, with short attempt deadlines.
pub(crate) async fn client_host(
    seed: u64,
    host_index: u64,
    swarm: Swarm,
    recorder: Recorder,
    observer: WhiteBoxObserver,
) -> turmoil::Result {
    let all: Vec<String> = (1..=POOL).map(kv_endpoint).collect();
    let first = host_index * SESSIONS_PER_HOST;
    let leader_config = ClientConfig {
        client_id: Some(1000 + first),
        operation_timeout: Duration::from_secs(3),
        rpc_timeout: Duration::from_millis(2500),
        connect_timeout: Duration::from_millis(300),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(400),
        follow_leader_hints: true,
        tls: None,
    };
    let shared = Client::with_config(&all, leader_config.clone(), Arc::new(TurmoilTransport))?;
    let mut sessions = Vec::new();
    for index in first..first + SESSIONS_PER_HOST {
        let routing = routing(seed, index);
        let direct = ClientConfig {
            client_id: Some(1000 + index),
            operation_timeout: Duration::from_millis(1500),
            rpc_timeout: Duration::from_millis(700),
            follow_leader_hints: false,
            ..leader_config.clone()
        };
        let client = match routing {
            Routing::Leader => shared.new_session_with_id(1000 + index)?,
            Routing::Pinned(node) => {
                Client::with_config(&[kv_endpoint(node)], direct, Arc::new(TurmoilTransport))?
            }
            Routing::Random => Client::with_config(&all, direct, Arc::new(TurmoilTransport))?,
        };
        sessions.push(session_workload(
            seed,
            index,
            routing,
            &swarm,
            client,
            recorder.clone(),
            observer.clone(),
        ));
    }
    for result in futures_util::future::join_all(sessions).await {
        result?;
    }
    Ok(())
}

/// One session: random operations on few keys with unique values, recorded.
/// Every read it completes goes to the read oracle.
pub(crate) async fn session_workload(
    seed: u64,
    index: u64,
    routing: Routing,
    swarm: &Swarm,
    mut client: Client,
    recorder: Recorder,
    observer: WhiteBoxObserver,
) -> turmoil::Result {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(7919).wrapping_add(index));
    let mut last_seen: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut n = 0u64;
    while now() < WORKLOAD_END {
        n += 1;
        if let Routing::Random = routing {
            client.prefer_endpoint(rng.random_range(0..POOL as usize));
        }
        let key = format!("k{}", rng.random_range(0..swarm.keys));
        let value = format!("c{index}-{n}");
        let mix = swarm.mix;
        let draw = rng.random_range(0..mix.total());
        let is_failed = match draw {
            d if d < mix.get => {
                let commit_at_invoke = observer.commit_max();
                let op = recorder.invoke(index, "get", Some(&key), Value::Null);
                match client.read(key.as_bytes()).await {
                    Ok(read) => {
                        observer.check_read(index, &key, commit_at_invoke, read.applied_index);
                        let value = read.value.map(|v| String::from_utf8_lossy(&v).into_owned());
                        last_seen.insert(key, value.clone());
                        op.ok(json!(value));
                        false
                    }
                    // A read has no effect: failed and unknown are alike.
                    Err(_) => {
                        op.fail(Value::Null);
                        true
                    }
                }
            }
            d if d < mix.get + mix.put => {
                let op = recorder.invoke(index, "put", Some(&key), json!(value));
                match client.put(key.as_bytes(), value.as_bytes()).await {
                    Ok(()) => {
                        op.ok(json!(value));
                        false
                    }
                    Err(ClientError::Failed(_)) => {
                        op.fail(json!(value));
                        true
                    }
                    Err(ClientError::Unknown(_)) => {
                        op.info();
                        true
                    }
                }
            }
            d if d < mix.get + mix.put + mix.delete => {
                let op = recorder.invoke(index, "delete", Some(&key), Value::Null);
                match client.delete(key.as_bytes()).await {
                    Ok(_) => {
                        op.ok(Value::Null);
                        false
                    }
                    Err(ClientError::Failed(_)) => {
                        op.fail(Value::Null);
                        true
                    }
                    Err(ClientError::Unknown(_)) => {
                        op.info();
                        true
                    }
                }
            }
            _ => {
                let expected = last_seen.get(&key).cloned().flatten();
                let argument = json!({"expected": expected, "new": value});
                let op = recorder.invoke(index, "cas", Some(&key), argument.clone());
                match client
                    .compare_and_swap(
                        key.as_bytes(),
                        expected.map(String::into_bytes),
                        value.as_bytes(),
                    )
                    .await
                {
                    Ok(result) if result.swapped => op.ok(argument),
                    // A definite "compared and did not swap".
                    Ok(_) => op.fail(argument),
                    // It certainly did not run, but in the history a failed cas
                    // means "did not swap": unknown is the honest weaker record.
                    Err(_) => op.info(),
                }
                false
            }
        };
        // A session pinned to a follower is told "not the leader" at once:
        // pause as a real client would, rather than spin.
        if is_failed && !matches!(routing, Routing::Leader) {
            tokio::time::sleep(Duration::from_millis(rng.random_range(50..250))).await;
        }
    }
    Ok(())
}
