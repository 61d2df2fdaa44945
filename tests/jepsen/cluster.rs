//! The simulated cluster: seven machines (five founders, two spares a
//! membership change may add), each node's configuration for a seed, the
//! harness a node's process shares with the test (pause, graceful stop,
//! operator requests), and the per-seed choices (batch size, election
//! timeouts, clock skew, PreVote and CheckQuorum).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lattice::planted::Bug;
use lattice::raft::ConfChange;
use lattice::server::{ChaosHandle, ObserverHandle};
use lattice::{NodeConfig, NodeId, PeerConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use crate::sim::chaos::SimChaos;
use crate::white_box::WhiteBoxObserver;
use crate::workload::kv_endpoint;
use crate::{FOUNDERS, KV_PORT, RAFT_PORT, SNAPSHOT_ENTRIES, TICK};

/// Entries per AppendEntries: small, so a follower's match index moves a few
/// entries at a time and more interleavings are reachable (figure 8's needs
/// old-term entries acknowledged before the new leader's own): one by one in
/// a quarter of the seeds, four in another quarter, sixteen in the rest.
pub(crate) fn append_entries_max(seed: u64) -> usize {
    match seed % 4 {
        1 => 1,
        3 => 4,
        _ => 16,
    }
}

/// Election timeouts of this seed, in ticks: every third seed draws them
/// from a narrow range, so candidates often run at once and split votes.
pub(crate) fn election_timeout_ticks(seed: u64) -> (u32, u32) {
    if seed.is_multiple_of(3) {
        (10, 12)
    } else {
        (10, 20)
    }
}

/// Whether the nodes' clocks run at different rates in this seed (half the
/// seeds), and node `id`'s tick in its `incarnation`: 0.5x to 2x the rate.
pub(crate) fn tick_interval(seed: u64, id: u64, incarnation: u64) -> Duration {
    if !is_clock_skewed(seed) {
        return TICK;
    }
    let mut rng = StdRng::seed_from_u64(seed ^ (id << 40) ^ (incarnation << 48) ^ 0xC10C);
    // A rate of 2^x for x in [-1, 1]: 0.5x to 2x, as likely slow as fast.
    let rate = 2f64.powf(rng.random_range(-1.0..=1.0));
    TICK.div_f64(rate)
}

pub(crate) fn is_clock_skewed(seed: u64) -> bool {
    seed.is_multiple_of(2)
}

/// Whether PreVote and CheckQuorum are on in this seed: in about half the
/// seeds, drawn by a hash of the seed (so that it does not follow the
/// first fault's kind, the clock skew or the batch size). Both are
/// configurations a user may run (`--no-pre-vote`, `--no-check-quorum`),
/// and each hides bugs from the other: the pre-vote round keeps a candidate
/// with a stale log from ever asking for real votes. The liveness
/// assertions hold in the seeds that have them on.
pub(crate) fn is_liveness_on(seed: u64) -> bool {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 63 == 0
}

/// Options a user could turn on that give up safety: the suite must catch them.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Unsafe {
    pub(crate) local_reads: bool,
    pub(crate) no_fsync: bool,
}

/// What runs in a seed besides the fault schedule: unsafe options, or a
/// planted bug of the catalogue.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Variant {
    pub(crate) unsafe_options: Unsafe,
    pub(crate) bug: Option<Bug>,
    /// PreVote and CheckQuorum off: the negative control of the liveness
    /// assertions (they must fail).
    pub(crate) liveness_off: bool,
}

/// The host name of machine `id`.
pub(crate) fn host(id: u64) -> String {
    format!("n{id}")
}

/// The host of the operator who changes the membership.
pub(crate) const OPERATOR: &str = "op";

pub(crate) fn client_host_name(index: u64) -> String {
    format!("c{index}")
}

/// Per node, what every incarnation of it shares with the test.
#[derive(Clone)]
pub(crate) struct NodeHarness {
    pub(crate) observer: WhiteBoxObserver,
    pub(crate) chaos: SimChaos,
    pub(crate) pause: watch::Receiver<bool>,
    pub(crate) control: watch::Receiver<NodeControl>,
    /// Set by the node's host once a graceful stop has handed over and
    /// drained: the controller then ends the process (see `Controller::kill`).
    pub(crate) stopped: Arc<AtomicBool>,
    /// Set by the node's host once the node stopped itself, removed from
    /// the cluster (or refused to start for that reason): the machine is
    /// decommissioned, and never started again.
    pub(crate) removed: Arc<AtomicBool>,
}

/// What an operator does to a node's process (the host keeps running):
/// stop it gracefully (SIGTERM) or start it again, or ask it to hand
/// leadership to `transfer_to` (each request counted in `transfers`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NodeControl {
    pub(crate) running: bool,
    pub(crate) transfers: u64,
    pub(crate) transfer_to: u64,
    /// Proposals of `change` asked for (see `Controller::propose_at_new_leader`).
    pub(crate) changes: u64,
    pub(crate) change: QuickChange,
}

/// A membership change the controller asks a node for directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum QuickChange {
    AddLearner(u64),
    Remove(u64),
}

impl QuickChange {
    pub(crate) fn conf_change(self) -> ConfChange {
        match self {
            QuickChange::AddLearner(id) => add_change(id, true),
            QuickChange::Remove(id) => ConfChange::Remove(NodeId(id)),
        }
    }
}

/// Adding machine `id` (`lattice member add`), as a learner or a voter.
pub(crate) fn add_change(id: u64, is_learner: bool) -> ConfChange {
    ConfChange::Add {
        id: NodeId(id),
        raft_addr: format!("{}:{RAFT_PORT}", host(id)),
        kv_addr: kv_endpoint(id),
        is_learner,
    }
}

pub(crate) fn node_config(
    id: u64,
    seed: u64,
    incarnation: u64,
    variant: Variant,
    harness: &NodeHarness,
) -> NodeConfig {
    // A founder knows the others; a spare machine joins with no peers and
    // learns the configuration once an operator adds it.
    let is_spare = id > FOUNDERS;
    let peers = (1..=FOUNDERS)
        .filter(|&p| p != id && !is_spare)
        .map(|p| PeerConfig {
            id: NodeId(p),
            raft_addr: format!("{}:{RAFT_PORT}", host(p)),
            kv_addr: format!("{}:{KV_PORT}", host(p)),
        })
        .collect();
    let mut config = NodeConfig::new(
        NodeId(id),
        format!("{}:{RAFT_PORT}", host(id)),
        format!("{}:{KV_PORT}", host(id)),
        peers,
        "/unused-in-simulation",
    );
    config.join = is_spare;
    config.seed = seed
        .wrapping_mul(31)
        .wrapping_add(id)
        .wrapping_add(incarnation << 32);
    config.tick_interval = tick_interval(seed, id, incarnation);
    (
        config.election_timeout_ticks_min,
        config.election_timeout_ticks_max,
    ) = election_timeout_ticks(seed);
    config.append_entries_max = append_entries_max(seed);
    // Snapshot every ~100 entries, keeping 20 for catch-up: every seed
    // compacts many times, and a follower a second behind needs a snapshot.
    config.snapshot_entries = SNAPSHOT_ENTRIES;
    config.snapshot_catchup_entries = 20;
    config.snapshot_on_blocking_thread = false;
    config.request_timeout = Duration::from_secs(2);
    config.peer_channel.rpc_timeout = Duration::from_secs(1);
    config.peer_channel.connect_timeout = Duration::from_millis(300);
    config.observer = Some(ObserverHandle(Arc::new(harness.observer.clone())));
    config.chaos = Some(ChaosHandle(Arc::new(harness.chaos.clone())));
    config.pause = Some(harness.pause.clone());
    config.unsafe_local_reads = variant.unsafe_options.local_reads;
    config.unsafe_no_fsync = variant.unsafe_options.no_fsync;
    let is_on = is_liveness_on(seed) && !variant.liveness_off;
    config.pre_vote = is_on;
    config.check_quorum = is_on;
    config
}

/// A removed node's machine: marked so that the controller never starts it
/// again, and idle until the end.
pub(crate) async fn decommission(harness: &NodeHarness) -> turmoil::Result {
    harness.removed.store(true, Ordering::Relaxed);
    std::future::pending::<()>().await;
    Ok(())
}
