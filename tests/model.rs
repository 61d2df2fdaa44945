//! Model checking the real Raft core (`lattice::raft::Raft`, not a copy)
//! with stateright: every interleaving up to a bound, where the Jepsen
//! simulation samples some.
//!
//! - `cargo test --test model` checks one configuration per feature family
//!   ([`Family`]: elections, the commit rule, replication and snapshots,
//!   reads, PreVote/CheckQuorum/transfers, membership removals, learners),
//!   each breadth-first to the depth its family's planted bugs need; states
//!   and depth are printed per configuration.
//! - `cargo test --features planted-bugs --test model -- --nocapture` also
//!   runs the planted-bug catalogue against the model: each bug that lives in
//!   the core or in the `Ready` contract must be caught under its family's
//!   configuration (the same bounds as the default run: no bug gets bounds
//!   of its own), and its shortest counterexample is printed as a story.
//! - `LATTICE_MODEL=full` (a CI step) runs the broad configurations, where
//!   every feature meets every other in shallower runs;
//!   `scripts/model-check.sh` runs them deeper (`LATTICE_MODEL=deep`).
//!
//! # The model
//! Three nodes, each a real `Raft` plus the driver's duties from `Ready`
//! split into steps (as `src/server/driver.rs` does them): a `Ready`'s writes go to
//! a per-node disk queue; a step `sync` makes the oldest write durable, calls
//! `Raft::persisted` and releases the messages held for it. Answers to peers
//! and the messages of a `Ready` that changed term or vote wait for the
//! newest write handed out; a leader's other messages go at once. A crash
//! loses every write not yet synced and the messages held for them, and the
//! node restarts from its durable hard state, snapshot and log only.
//!
//! Snapshots: a step `snapshot` writes a node's state machine (the entries it
//! applied) as its durable snapshot and compacts its log, in memory and on
//! disk, as far as the core allows (no catch-up tail, so followers need the
//! snapshot as soon as possible). A leader's `InstallSnapshot` carries its
//! durable snapshot at the time it is sent; the follower installs it through
//! the core and its disk queue as the driver does.
//!
//! The network is an unordered multiset: any message may be delivered,
//! dropped (its sender learns the RPC failed) or duplicated. Timeouts and
//! heartbeats are choices, not clocks: a timeout ticks a follower or
//! candidate until it asks for (pre-)votes; a heartbeat ticks a leader once.
//!
//! Two configurations are checked: the base protocol, and the one nodes
//! run, with PreVote and CheckQuorum on (`Bounds::liveness`): a timeout
//! starts a pre-vote, a leader steps down after two heartbeats that no
//! follower answered, and a follower that heard from its leader ignores
//! (pre-)votes until its own timeout fires (time passes for it only then).
//! There a step `transfer` has a leader hand leadership to a peer
//! (`TimeoutNow`). The pre-vote round makes every election longer, so the
//! base protocol keeps its own run to reach as deep into its histories.
//!
//! States are compared up to a permutation of node ids (symmetry reduction):
//! a state's fingerprint is the least over all 6 renamings, computed with
//! `Raft::hash_protocol_state`.

use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use lattice::planted::Bug;
use lattice::raft::{
    AppendEntriesResponse, ConfChange, Config, Entry, HardState, InstallSnapshot, Membership,
    Message, Raft, RequestVoteResponse, Role, SnapshotMeta,
};
use lattice::{LogIndex, NodeId, Term};
use stateright::{Checker, HasDiscoveries, Model, Property};

// Millions of states are cloned and dropped: the allocator is most of a step.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NODES: usize = 3;
const PERMUTATIONS: [[usize; NODES]; 6] = [
    [0, 1, 2],
    [0, 2, 1],
    [1, 0, 2],
    [1, 2, 0],
    [2, 0, 1],
    [2, 1, 0],
];

/// What keeps the state space finite.
#[derive(Clone, Copy, Debug)]
struct Bounds {
    /// Highest term any node may reach (a timeout past it is not taken).
    terms: u64,
    proposals: u8,
    /// Messages in the network at once; states with more are not explored.
    in_flight: usize,
    crashes: u8,
    duplicates: u8,
    reads: u8,
    /// Snapshots taken (by any node).
    snapshots: u8,
    /// Leadership transfers started.
    transfers: u8,
    /// Membership changes proposed (promote the learner, remove a member).
    conf_changes: u8,
    /// The third node starts as a learner (else all three are voters).
    learner: bool,
    /// PreVote and CheckQuorum on (as nodes run).
    liveness: bool,
    /// Entries per AppendEntries (small, so that batches can be reordered).
    append_entries_max: usize,
    /// Steps from the start: every execution of at most this many steps.
    depth: usize,
    /// Breadth-first (the default) or depth-first
    /// (`LATTICE_MODEL_SEARCH=dfs`).
    search: Search,
}

/// How the checker walks the states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Search {
    /// Every execution of at most `depth` steps, and counterexamples of the
    /// fewest steps; the frontier is kept in memory (the states share their
    /// unchanged nodes, which cut it by a third).
    Bfs,
    /// Memory for the visited set and the path only, to hunt deeper; but
    /// with a depth bound it is not exhaustive: stateright marks a state
    /// visited where it first meets it, and a state first met near the
    /// bound is not explored again when a shorter path reaches it. No
    /// configuration of the default run uses it.
    Dfs,
}

impl Bounds {
    /// `LATTICE_MODEL=full` (CI's broad run): 18 steps; 20 with PreVote and
    /// CheckQuorum.
    fn bounded() -> Bounds {
        Bounds {
            terms: 3,
            proposals: 1,
            in_flight: 3,
            crashes: 1,
            duplicates: 1,
            reads: 1,
            snapshots: 1,
            transfers: 0,
            conf_changes: 0,
            learner: false,
            liveness: false,
            append_entries_max: 1,
            depth: 18,
            search: Search::Bfs,
        }
    }

    /// `scripts/model-check.sh`: deeper.
    fn deep() -> Bounds {
        Bounds {
            proposals: 2,
            depth: 19,
            ..Bounds::bounded()
        }
    }

    /// The configurations to check at the level `LATTICE_MODEL` names:
    /// - `quick` (the default, in every `cargo test`): one configuration
    ///   per feature family ([`Family`]), exactly the ones the model
    ///   catalogue uses;
    /// - `full` (a CI step of its own): the broad configurations, where
    ///   every feature meets every other in shallower runs: the base
    ///   protocol (crashes, a duplicate, a read, a snapshot), the one nodes
    ///   run (PreVote, CheckQuorum, a transfer) and membership changes;
    /// - `deep` (`scripts/model-check.sh`): the broad ones, deeper.
    ///
    /// `LATTICE_MODEL_CONFIG=<name>` picks one configuration of the level
    /// (a family's name, or `base`, `liveness`, `membership`).
    fn from_env() -> Vec<(String, Bounds)> {
        let level = std::env::var("LATTICE_MODEL").unwrap_or_default();
        let configs: Vec<(String, Bounds)> = match level.as_str() {
            "" | "quick" => Family::ALL
                .map(|f| (f.name().to_string(), f.bounds()))
                .into(),
            "full" => Bounds::broad(Bounds::bounded()).into(),
            "deep" => Bounds::broad(Bounds::deep()).into(),
            other => panic!("LATTICE_MODEL={other}: expected quick (the default), full or deep"),
        };
        let configs: Vec<(String, Bounds)> = match std::env::var("LATTICE_MODEL_CONFIG") {
            Ok(name) => {
                let names: Vec<String> = configs.iter().map(|(n, _)| n.clone()).collect();
                let picked: Vec<(String, Bounds)> =
                    configs.into_iter().filter(|(n, _)| *n == name).collect();
                assert!(
                    !picked.is_empty(),
                    "LATTICE_MODEL_CONFIG={name}: this level has {names:?}"
                );
                picked
            }
            Err(_) => configs,
        };
        configs
            .into_iter()
            .map(|(name, bounds)| (name, bounds.overridden()))
            .collect()
    }

    /// The broad configurations from `base`'s bounds: the base protocol, the
    /// one nodes run (PreVote, CheckQuorum, a transfer; elections take a
    /// pre-vote round more, so 2 steps deeper, without the crashes,
    /// snapshots and reads the base run covers), and membership changes (a
    /// learner beside two voters, two changes; no crashes, snapshots, reads
    /// or duplicates).
    fn broad(base: Bounds) -> [(String, Bounds); 3] {
        let liveness = Bounds {
            transfers: 1,
            liveness: true,
            crashes: 0,
            snapshots: 0,
            reads: 0,
            depth: base.depth + 2,
            ..base
        };
        let membership = Bounds {
            conf_changes: 2,
            learner: true,
            crashes: 0,
            snapshots: 0,
            reads: 0,
            duplicates: 0,
            depth: 16,
            ..base
        };
        [
            ("base".to_string(), base),
            ("liveness".to_string(), liveness),
            ("membership".to_string(), membership),
        ]
    }

    /// Each bound may be set by `LATTICE_MODEL_<BOUND>` (e.g. `_TERMS=4`).
    fn overridden(mut self) -> Bounds {
        let number = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        macro_rules! set {
            ($($field:ident: $name:literal),*) => {$(
                if let Some(v) = number($name) {
                    self.$field = v as _;
                }
            )*};
        }
        match std::env::var("LATTICE_MODEL_SEARCH").as_deref() {
            Ok("bfs") => self.search = Search::Bfs,
            Ok("dfs") => self.search = Search::Dfs,
            Ok(other) => panic!("LATTICE_MODEL_SEARCH={other}: expected bfs or dfs"),
            Err(_) => {}
        }
        if let Some(v) = number("LATTICE_MODEL_LEARNER") {
            self.learner = v != 0;
        }
        set!(
            terms: "LATTICE_MODEL_TERMS",
            proposals: "LATTICE_MODEL_PROPOSALS",
            in_flight: "LATTICE_MODEL_IN_FLIGHT",
            crashes: "LATTICE_MODEL_CRASHES",
            duplicates: "LATTICE_MODEL_DUPLICATES",
            reads: "LATTICE_MODEL_READS",
            snapshots: "LATTICE_MODEL_SNAPSHOTS",
            transfers: "LATTICE_MODEL_TRANSFERS",
            conf_changes: "LATTICE_MODEL_CONF_CHANGES",
            depth: "LATTICE_MODEL_DEPTH",
            append_entries_max: "LATTICE_MODEL_APPEND_MAX"
        );
        self
    }
}

/// The feature families of the default run, one configuration each and
/// never one per bug: each explores its family's features in small bounds,
/// every interleaving to a depth that reaches its bugs. The model catalogue
/// checks every bug under its family's configuration and no other, so a
/// bug nobody planted gets exactly what `cargo test --test model` gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    /// Votes, terms, durability of votes and entries across a crash.
    Elections,
    /// The commit rule across three terms (figure 8).
    Commit,
    /// Replication of a client's entry, with a message duplicated (so late
    /// and stale AppendEntries) and a snapshot taken, sent and installed.
    Replication,
    /// ReadIndex: a read, two leaders, their no-ops as the writes.
    Reads,
    /// PreVote, CheckQuorum and a leadership transfer.
    Liveness,
    /// Single-server changes, from three voters: two removals.
    Removals,
    /// Single-server changes with a learner beside two voters: promoted,
    /// or removed.
    Learners,
}

impl Family {
    const ALL: [Family; 7] = [
        Family::Elections,
        Family::Commit,
        Family::Replication,
        Family::Reads,
        Family::Liveness,
        Family::Removals,
        Family::Learners,
    ];

    fn name(self) -> &'static str {
        match self {
            Family::Elections => "elections",
            Family::Commit => "commit",
            Family::Reads => "reads",
            Family::Replication => "replication-snapshots",
            Family::Liveness => "prevote-checkquorum-transfer",
            Family::Removals => "membership-removals",
            Family::Learners => "membership-learners",
        }
    }

    fn bounds(self) -> Bounds {
        let small = Bounds {
            terms: 2,
            proposals: 0,
            in_flight: 3,
            crashes: 0,
            duplicates: 0,
            reads: 0,
            snapshots: 0,
            transfers: 0,
            conf_changes: 0,
            learner: false,
            liveness: false,
            append_entries_max: 1,
            depth: 60,
            search: Search::Bfs,
        };
        // Each depth is at least the longest shortest counterexample of the
        // family's planted bugs (tests/README.md), with a step or more to
        // spare where memory allows: the reads' 25 steps are
        // ReadConfirmedByEarlierAnswers' exactly (26 would take 4 GB).
        match self {
            Family::Elections => Bounds {
                crashes: 1,
                depth: 20,
                ..small
            },
            Family::Commit => Bounds {
                terms: 3,
                in_flight: 2,
                depth: 31,
                ..small
            },
            Family::Replication => Bounds {
                proposals: 1,
                snapshots: 1,
                duplicates: 1,
                depth: 18,
                ..small
            },
            Family::Reads => Bounds {
                reads: 1,
                depth: 25,
                ..small
            },
            Family::Liveness => Bounds {
                liveness: true,
                transfers: 1,
                depth: 21,
                ..small
            },
            Family::Removals => Bounds {
                conf_changes: 2,
                depth: 20,
                ..small
            },
            Family::Learners => Bounds {
                conf_changes: 2,
                learner: true,
                depth: 18,
                ..small
            },
        }
    }
}

struct RaftModel {
    bounds: Bounds,
    /// The planted bug (planted on whichever checker thread runs a step).
    bug: Option<Bug>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Payload {
    Request(Message),
    /// An `InstallSnapshot` with the snapshot the sender's driver streams:
    /// its durable snapshot (end and state) when the message left.
    Snapshot(InstallSnapshot, SnapshotMeta, Vec<Entry>),
    VoteResponse(RequestVoteResponse),
    AppendResponse(AppendEntriesResponse),
    /// The answer to a snapshot (losing it fails the snapshot send).
    SnapshotResponse(AppendEntriesResponse),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Envelope {
    from: usize,
    to: usize,
    payload: Payload,
}

impl Envelope {
    fn renamed(&self, perm: &[usize; NODES]) -> Envelope {
        let rename = |id: NodeId| node_id(perm[index_of(id)]);
        Envelope {
            from: perm[self.from],
            to: perm[self.to],
            payload: match &self.payload {
                Payload::Request(m) => Payload::Request(m.renamed(&rename)),
                Payload::Snapshot(m, meta, data) => {
                    let Message::InstallSnapshot(m) =
                        Message::InstallSnapshot(m.clone()).renamed(&rename)
                    else {
                        unreachable!("renaming keeps the kind")
                    };
                    Payload::Snapshot(m, *meta, data.clone())
                }
                other => other.clone(),
            },
        }
    }

    /// The requester of this RPC (who learns when it fails) and its peer.
    fn requester_and_peer(&self) -> (usize, usize) {
        match self.payload {
            Payload::Request(_) | Payload::Snapshot(..) => (self.from, self.to),
            _ => (self.to, self.from),
        }
    }

    fn is_request(&self) -> bool {
        matches!(self.payload, Payload::Request(_) | Payload::Snapshot(..))
    }

    fn is_snapshot(&self) -> bool {
        matches!(
            self.payload,
            Payload::Snapshot(..) | Payload::SnapshotResponse(_)
        )
    }
}

/// A write handed to a node's disk and not yet durable, with the messages
/// held until it is.
#[derive(Clone, Debug)]
struct Write {
    hard_state: Option<HardState>,
    /// A snapshot from the leader to install (its end and state).
    install: Option<(SnapshotMeta, Vec<Entry>)>,
    entries: Vec<Entry>,
    held: Vec<Envelope>,
}

#[derive(Clone)]
struct Node {
    /// Shared with the states this one came from until a step changes it
    /// (`Arc::make_mut`): a step changes one or two nodes, and the
    /// breadth-first frontier holds millions of states.
    raft: Arc<Raft>,
    durable_hard_state: HardState,
    /// The durable snapshot: its end and the state (applied entries) in it.
    durable_snapshot: (SnapshotMeta, Vec<Entry>),
    /// The durable log by index (compaction removes its start).
    durable_log: std::collections::BTreeMap<LogIndex, Entry>,
    /// The state machine: every entry applied, in order (from a snapshot
    /// after an install or a restart).
    applied: Vec<Entry>,
    /// A snapshot the core accepted, for the next `Ready`.
    install_pending: Option<(SnapshotMeta, Vec<Entry>)>,
    /// Oldest first; they become durable in order.
    writes: VecDeque<Write>,
    /// Ghost: the highest commit index of this incarnation.
    commit_high: LogIndex,
}

/// Ghost: a read started and not yet answered.
#[derive(Clone, Debug, Hash)]
struct ReadGhost {
    node: usize,
    context: u64,
    /// The highest index committed anywhere when the read started.
    required: LogIndex,
}

#[derive(Clone)]
struct State {
    /// Shared with the states this one came from until a step changes the
    /// node (`Arc::make_mut`).
    nodes: Vec<Arc<Node>>,
    network: Vec<Envelope>,
    /// Ghost: the cluster's committed log (the first entry committed at each index).
    committed: Vec<Entry>,
    /// Ghost: every (term, node) that was ever leader.
    elected: Vec<(Term, usize)>,
    reads: Vec<ReadGhost>,
    /// Ghost: a read released below `required`.
    stale_read: Option<String>,
    /// A core assertion failed (a panic in the real code).
    panicked: Option<String>,
    /// Ghost: a snapshot installed at or below the node's commit index.
    stale_install: Option<String>,
    read_released: bool,
    installed: bool,
    /// Ghost: a transfer's target campaigned (on `TimeoutNow`).
    transfer_campaigned: bool,
    proposals: u8,
    reads_started: u8,
    crashes: u8,
    duplicates: u8,
    snapshots: u8,
    transfers: u8,
    conf_changes: u8,
}

fn node_id(index: usize) -> NodeId {
    NodeId(index as u64 + 1)
}

fn index_of(id: NodeId) -> usize {
    (id.0 - 1) as usize
}

/// The configuration the model starts with: three voters, or two and a
/// learner.
fn membership(bounds: &Bounds) -> Membership {
    let mut membership = Membership::bootstrap(&(0..NODES).map(node_id).collect::<Vec<_>>());
    if bounds.learner {
        let learner = membership
            .members
            .get_mut(&node_id(NODES - 1))
            .expect("the third node");
        learner.is_learner = true;
    }
    membership
}

/// The configuration a snapshot of `state` (the entries applied) carries:
/// its newest configuration entry's, else the first.
fn snapshot_membership(bounds: &Bounds, state: &[Entry]) -> Membership {
    state
        .iter()
        .rev()
        .find_map(Entry::membership)
        .map(|decoded| decoded.expect("configuration entries decode"))
        .unwrap_or_else(|| membership(bounds))
}

/// The voters of the newest committed configuration.
fn committed_membership(bounds: &Bounds, s: &State) -> Membership {
    snapshot_membership(bounds, &s.committed)
}

fn raft_config(index: usize, bounds: &Bounds) -> Config {
    Config {
        id: node_id(index),
        // The configuration itself goes to `Raft::restore`.
        voters: Vec::new(),
        election_timeout_ticks_min: 2,
        election_timeout_ticks_max: 2,
        heartbeat_interval_ticks: 1,
        inflight_appends_max: 2,
        append_entries_max: bounds.append_entries_max,
        append_bytes_max: usize::MAX,
        seed: 0,
        pre_vote: bounds.liveness,
        check_quorum: bounds.liveness,
    }
}

impl State {
    fn fingerprint_renamed(&self, perm: &[usize; NODES]) -> u64 {
        let mut inverse = [0; NODES];
        for (old, &new) in perm.iter().enumerate() {
            inverse[new] = old;
        }
        let rename = |id: NodeId| node_id(perm[index_of(id)]);
        let mut h = DefaultHasher::new();
        for &old in &inverse {
            let node = &self.nodes[old];
            node.raft.hash_protocol_state(&mut h, &rename);
            node.durable_hard_state.term.hash(&mut h);
            node.durable_hard_state.vote.map(rename).hash(&mut h);
            node.durable_snapshot.hash(&mut h);
            node.durable_log.hash(&mut h);
            node.applied.len().hash(&mut h);
            node.install_pending.hash(&mut h);
            node.writes.len().hash(&mut h);
            for write in &node.writes {
                write
                    .hard_state
                    .map(|s| (s.term, s.vote.map(rename)))
                    .hash(&mut h);
                write.install.hash(&mut h);
                write.entries.hash(&mut h);
                multiset_hash(write.held.iter().map(|e| e.renamed(perm))).hash(&mut h);
            }
            node.commit_high.hash(&mut h);
        }
        multiset_hash(self.network.iter().map(|e| e.renamed(perm))).hash(&mut h);
        self.committed.hash(&mut h);
        let mut elected: Vec<(Term, usize)> =
            self.elected.iter().map(|&(t, n)| (t, perm[n])).collect();
        elected.sort_unstable();
        elected.hash(&mut h);
        multiset_hash(
            self.reads
                .iter()
                .map(|r| (perm[r.node], r.context, r.required)),
        )
        .hash(&mut h);
        self.stale_read.hash(&mut h);
        self.panicked.hash(&mut h);
        self.stale_install.hash(&mut h);
        (
            self.read_released,
            self.installed,
            self.transfer_campaigned,
            self.proposals,
            self.reads_started,
            self.crashes,
            self.duplicates,
            self.snapshots,
            self.transfers,
            self.conf_changes,
        )
            .hash(&mut h);
        h.finish()
    }

    /// The fingerprint of this state's symmetry class.
    fn canonical(&self) -> u64 {
        PERMUTATIONS
            .iter()
            .map(|perm| self.fingerprint_renamed(perm))
            .min()
            .expect("permutations are not empty")
    }

    /// Messages in the network plus those held for a write.
    fn in_flight(&self) -> usize {
        let held: usize = self
            .nodes
            .iter()
            .flat_map(|node| &node.writes)
            .map(|write| write.held.len())
            .sum();
        self.network.len() + held
    }

    /// A node's entry at `index`: in its log, or in the state it holds
    /// below its log's start (its snapshot's).
    fn log_entry(&self, node: usize, index: u64) -> Option<&Entry> {
        let node = &self.nodes[node];
        match node.raft.log().get(LogIndex(index)) {
            Some(entry) => Some(entry),
            None if index <= node.raft.log().offset().index.0 => {
                node.applied.get(index as usize - 1)
            }
            None => None,
        }
    }
}

fn multiset_hash<T: Hash>(items: impl Iterator<Item = T>) -> Vec<u64> {
    let mut hashes: Vec<u64> = items
        .map(|item| {
            let mut h = DefaultHasher::new();
            item.hash(&mut h);
            h.finish()
        })
        .collect();
    hashes.sort_unstable();
    hashes
}

impl Hash for State {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.canonical());
    }
}

impl PartialEq for State {
    fn eq(&self, other: &Self) -> bool {
        self.canonical() == other.canonical()
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, node) in self.nodes.iter().enumerate() {
            writeln!(f, "n{}: {}", i + 1, describe_node(node))?;
        }
        write!(f, "network: {} messages", self.network.len())
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Action {
    Deliver(Envelope),
    Drop(Envelope),
    Duplicate(Envelope),
    Timeout(usize),
    Heartbeat(usize),
    Propose(usize),
    Read(usize),
    Sync(usize),
    Snapshot(usize),
    Crash(usize),
    /// A leader hands leadership to a peer.
    Transfer(usize, usize),
    /// A leader promotes a learner, or removes a member.
    Promote(usize, usize),
    Remove(usize, usize),
}

impl RaftModel {
    /// Hands out a node's `Ready` as the driver does (`process_ready`).
    fn process_ready(&self, state: &mut State, n: usize, answer: Option<Envelope>) {
        let node = Arc::make_mut(&mut state.nodes[n]);
        let ready = Arc::make_mut(&mut node.raft).ready();
        let mut held: Vec<Envelope> = answer.into_iter().collect();
        // The core says which messages may leave before the write.
        let sent_now = ready.messages.len();
        let messages = ready.messages.into_iter().chain(ready.persisted_messages);
        for (position, (to, message)) in messages.enumerate() {
            let payload = match message {
                // The driver streams its durable snapshot.
                Message::InstallSnapshot(m) => {
                    let (meta, data) = node.durable_snapshot.clone();
                    Payload::Snapshot(m, meta, data)
                }
                message => Payload::Request(message),
            };
            let envelope = Envelope {
                from: n,
                to: index_of(to),
                payload,
            };
            if position < sent_now {
                state.network.push(envelope);
            } else {
                held.push(envelope);
            }
        }
        let install = ready.snapshot.map(|meta| {
            let (held_meta, data) = node
                .install_pending
                .take()
                .expect("the core accepts only a snapshot the driver holds");
            assert_eq!(held_meta, meta);
            node.applied = data.clone();
            (meta, data)
        });
        node.applied.extend(ready.committed);
        if ready.hard_state.is_some() || !ready.entries.is_empty() || install.is_some() {
            node.writes.push_back(Write {
                hard_state: ready.hard_state,
                install,
                entries: ready.entries,
                held: Vec::new(),
            });
        }
        if !held.is_empty() {
            // Held until the newest write handed out is durable (at once if
            // every write is): the driver's `held` queue.
            match node.writes.back_mut() {
                Some(write) if !self.is_planted(Bug::AnswerBeforeDurable) => {
                    write.held.extend(held)
                }
                _ => state.network.extend(held),
            }
        }
        for read in ready.read_states {
            let Some(position) = state
                .reads
                .iter()
                .position(|r| r.node == n && r.context == read.context)
            else {
                continue;
            };
            let ghost = state.reads.remove(position);
            state.read_released = true;
            if read.index < ghost.required {
                state.stale_read = Some(format!(
                    "n{} released read {} at index {}, but index {} was committed when it started",
                    n + 1,
                    read.context,
                    read.index,
                    ghost.required
                ));
            }
        }
        for context in ready.reads_dropped {
            state
                .reads
                .retain(|r| !(r.node == n && r.context == context));
        }
    }

    fn is_planted(&self, bug: Bug) -> bool {
        self.bug == Some(bug)
    }

    fn step(&self, state: &mut State, action: Action) -> bool {
        match action {
            Action::Deliver(envelope) => {
                remove_one(&mut state.network, &envelope);
                let from = node_id(envelope.from);
                let raft = Arc::make_mut(&mut Arc::make_mut(&mut state.nodes[envelope.to]).raft);
                let answer = match envelope.payload {
                    Payload::Request(Message::RequestVote(request)) => {
                        Some(Payload::VoteResponse(raft.handle_request_vote(request)))
                    }
                    Payload::Request(Message::AppendEntries(request)) => {
                        Some(Payload::AppendResponse(raft.handle_append_entries(request)))
                    }
                    Payload::Request(Message::TimeoutNow(request)) => {
                        raft.handle_timeout_now(request);
                        if raft.role() == Role::Candidate {
                            state.transfer_campaigned = true;
                        }
                        None
                    }
                    Payload::Snapshot(request, meta, data) => {
                        let commit = raft.log().commit();
                        let membership = snapshot_membership(&self.bounds, &data);
                        let (response, is_accepted) =
                            raft.handle_install_snapshot(request, meta, membership);
                        if is_accepted {
                            if meta.index <= commit {
                                state.stale_install = Some(format!(
                                    "n{} installed a snapshot at {} with its commit index at {}",
                                    envelope.to + 1,
                                    meta.index,
                                    commit
                                ));
                            }
                            state.installed = true;
                            Arc::make_mut(&mut state.nodes[envelope.to]).install_pending =
                                Some((meta, data));
                        }
                        Some(Payload::SnapshotResponse(response))
                    }
                    Payload::Request(Message::InstallSnapshot(_)) => {
                        unreachable!("snapshots travel as Payload::Snapshot")
                    }
                    Payload::VoteResponse(response) => {
                        raft.handle_request_vote_response(from, response);
                        None
                    }
                    Payload::AppendResponse(response) | Payload::SnapshotResponse(response) => {
                        raft.handle_append_entries_response(from, response);
                        None
                    }
                };
                let answer = answer.map(|payload| Envelope {
                    from: envelope.to,
                    to: envelope.from,
                    payload,
                });
                self.process_ready(state, envelope.to, answer);
            }
            Action::Drop(envelope) => {
                remove_one(&mut state.network, &envelope);
                let (requester, peer) = envelope.requester_and_peer();
                let raft = Arc::make_mut(&mut Arc::make_mut(&mut state.nodes[requester]).raft);
                if envelope.is_snapshot() {
                    raft.report_snapshot_failed(node_id(peer));
                } else {
                    raft.report_unreachable(node_id(peer));
                }
                self.process_ready(state, requester, None);
            }
            Action::Duplicate(envelope) => {
                state.network.push(envelope);
                state.duplicates += 1;
            }
            Action::Timeout(n) => {
                // Until it asks for pre-votes (or votes): then it has
                // messages to send.
                let raft = Arc::make_mut(&mut Arc::make_mut(&mut state.nodes[n]).raft);
                let mut ticks = 0;
                while !raft.has_ready() {
                    raft.tick();
                    ticks += 1;
                    assert!(ticks < 100, "an election timeout never fired");
                }
                self.process_ready(state, n, None);
            }
            Action::Transfer(n, target) => {
                if Arc::make_mut(&mut Arc::make_mut(&mut state.nodes[n]).raft)
                    .transfer_leadership(Some(node_id(target)))
                    .is_err()
                {
                    return false;
                }
                state.transfers += 1;
                self.process_ready(state, n, None);
            }
            Action::Heartbeat(n) => {
                Arc::make_mut(&mut Arc::make_mut(&mut state.nodes[n]).raft).tick();
                self.process_ready(state, n, None);
            }
            Action::Promote(n, member) | Action::Remove(n, member) => {
                let change = match action {
                    Action::Promote(..) => ConfChange::Promote(node_id(member)),
                    _ => ConfChange::Remove(node_id(member)),
                };
                if Arc::make_mut(&mut Arc::make_mut(&mut state.nodes[n]).raft)
                    .propose_conf_change(&change)
                    .is_err()
                {
                    return false;
                }
                state.conf_changes += 1;
                self.process_ready(state, n, None);
            }
            Action::Propose(n) => {
                let value = vec![b'a' + state.proposals];
                if Arc::make_mut(&mut Arc::make_mut(&mut state.nodes[n]).raft)
                    .propose(value)
                    .is_err()
                {
                    return false;
                }
                state.proposals += 1;
                self.process_ready(state, n, None);
            }
            Action::Read(n) => {
                let context = u64::from(state.reads_started) + 1;
                if Arc::make_mut(&mut Arc::make_mut(&mut state.nodes[n]).raft)
                    .read_index(context)
                    .is_err()
                {
                    return false;
                }
                state.reads_started += 1;
                state.reads.push(ReadGhost {
                    node: n,
                    context,
                    required: LogIndex(state.committed.len() as u64),
                });
                self.process_ready(state, n, None);
            }
            Action::Sync(n) => {
                let is_hard_state_lost = self.is_planted(Bug::HardStateNotPersisted);
                let node = Arc::make_mut(&mut state.nodes[n]);
                let write = node.writes.pop_front().expect("sync offered with a write");
                if let (Some(hard_state), false) = (write.hard_state, is_hard_state_lost) {
                    node.durable_hard_state = hard_state;
                }
                if let Some((meta, data)) = write.install {
                    // Storage keeps the log after the snapshot only if it
                    // holds the snapshot's last entry.
                    if node.durable_log.get(&meta.index).map(|e| e.term) != Some(meta.term) {
                        node.durable_log.clear();
                    }
                    node.durable_snapshot = (meta, data);
                    Arc::make_mut(&mut node.raft).snapshot_saved(meta);
                }
                if let (Some(first), Some(last)) = (write.entries.first(), write.entries.last()) {
                    node.durable_log.split_off(&first.index);
                    let last = (last.index, last.term);
                    node.durable_log
                        .extend(write.entries.into_iter().map(|e| (e.index, e)));
                    Arc::make_mut(&mut node.raft).persisted(last.0, last.1);
                }
                state.network.extend(write.held);
                self.process_ready(state, n, None);
            }
            Action::Snapshot(n) => {
                let node = Arc::make_mut(&mut state.nodes[n]);
                let Some(last) = node.applied.last() else {
                    return false;
                };
                let meta = SnapshotMeta {
                    index: last.index,
                    term: last.term,
                };
                if meta.index <= node.durable_snapshot.0.index {
                    return false;
                }
                node.durable_snapshot = (meta, node.applied.clone());
                let raft = Arc::make_mut(&mut node.raft);
                raft.snapshot_saved(meta);
                let to = raft.compact(0);
                node.durable_log = node.durable_log.split_off(&to.next());
                state.snapshots += 1;
                self.process_ready(state, n, None);
            }
            Action::Crash(n) => {
                let node = Arc::make_mut(&mut state.nodes[n]);
                let (meta, data) = node.durable_snapshot.clone();
                let entries = node.durable_log.values().cloned().collect();
                let (entries, is_reset) = lattice::storage::resume_log(meta, entries, "model")
                    .expect("the durable log continues the snapshot");
                if is_reset {
                    node.durable_log.clear();
                }
                node.raft = Arc::new(Raft::restore(
                    raft_config(n, &self.bounds),
                    node.durable_hard_state,
                    meta,
                    snapshot_membership(&self.bounds, &data),
                    entries,
                ));
                node.applied = data;
                node.install_pending = None;
                node.writes.clear();
                node.commit_high = LogIndex(0);
                state.reads.retain(|r| r.node != n);
                state.crashes += 1;
                self.process_ready(state, n, None);
            }
        }
        true
    }

    /// Updates the ghosts after a step.
    fn observe(state: &mut State) {
        for n in 0..NODES {
            let raft = &state.nodes[n].raft;
            if raft.role() == Role::Leader && !state.elected.contains(&(raft.term(), n)) {
                state.elected.push((raft.term(), n));
                state.elected.sort_unstable();
            }
            let commit = raft.log().commit();
            while (state.committed.len() as u64) < commit.0 {
                let index = state.committed.len() as u64 + 1;
                let entry = state
                    .log_entry(n, index)
                    .expect("committed entries are in the log or the snapshot")
                    .clone();
                state.committed.push(entry);
            }
            if commit > state.nodes[n].commit_high {
                Arc::make_mut(&mut state.nodes[n]).commit_high = commit;
            }
        }
    }
}

fn remove_one(network: &mut Vec<Envelope>, envelope: &Envelope) {
    let position = network
        .iter()
        .position(|e| e == envelope)
        .expect("the action's message is in the network");
    network.swap_remove(position);
}

impl Model for RaftModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let nodes = (0..NODES)
            .map(|n| {
                Arc::new(Node {
                    raft: Arc::new(Raft::restore(
                        raft_config(n, &self.bounds),
                        HardState::default(),
                        SnapshotMeta::default(),
                        membership(&self.bounds),
                        Vec::new(),
                    )),
                    durable_hard_state: HardState::default(),
                    durable_snapshot: (SnapshotMeta::default(), Vec::new()),
                    durable_log: std::collections::BTreeMap::new(),
                    applied: Vec::new(),
                    install_pending: None,
                    writes: VecDeque::new(),
                    commit_high: LogIndex(0),
                })
            })
            .collect();
        vec![State {
            nodes,
            network: Vec::new(),
            committed: Vec::new(),
            elected: Vec::new(),
            reads: Vec::new(),
            stale_read: None,
            panicked: None,
            stale_install: None,
            read_released: false,
            installed: false,
            transfer_campaigned: false,
            proposals: 0,
            reads_started: 0,
            crashes: 0,
            duplicates: 0,
            snapshots: 0,
            transfers: 0,
            conf_changes: 0,
        }]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        if state.panicked.is_some() || state.stale_read.is_some() {
            return;
        }
        let is_duplicate_allowed =
            state.duplicates < self.bounds.duplicates && state.in_flight() < self.bounds.in_flight;
        for (i, envelope) in state.network.iter().enumerate() {
            if state.network[..i].contains(envelope) {
                continue;
            }
            actions.push(Action::Deliver(envelope.clone()));
            actions.push(Action::Drop(envelope.clone()));
            if is_duplicate_allowed {
                actions.push(Action::Duplicate(envelope.clone()));
            }
        }
        for (n, node) in state.nodes.iter().enumerate() {
            if !node.writes.is_empty() {
                actions.push(Action::Sync(n));
            }
            if state.snapshots < self.bounds.snapshots
                && node.applied.len() as u64 > node.durable_snapshot.0.index.0
            {
                actions.push(Action::Snapshot(n));
            }
            if node.raft.role() == Role::Leader {
                // A heartbeat interval is long next to a message's flight:
                // it fires when none of this leader's requests is out.
                let is_quiet = !state.network.iter().any(|e| e.from == n && e.is_request());
                if is_quiet {
                    actions.push(Action::Heartbeat(n));
                }
                if state.proposals < self.bounds.proposals {
                    actions.push(Action::Propose(n));
                }
                if state.reads_started < self.bounds.reads {
                    actions.push(Action::Read(n));
                }
                if state.transfers < self.bounds.transfers {
                    for target in (0..NODES).filter(|&t| t != n) {
                        actions.push(Action::Transfer(n, target));
                    }
                }
                if state.conf_changes < self.bounds.conf_changes {
                    for (&member, m) in &node.raft.membership().members {
                        if m.is_learner {
                            actions.push(Action::Promote(n, index_of(member)));
                        }
                        actions.push(Action::Remove(n, index_of(member)));
                    }
                }
            } else if node.raft.term().0 < self.bounds.terms
                && node.raft.membership().is_voter(node_id(n))
            {
                // Learners and removed nodes never campaign.
                actions.push(Action::Timeout(n));
            }
            if state.crashes < self.bounds.crashes {
                actions.push(Action::Crash(n));
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut state = last.clone();
        #[cfg(feature = "planted-bugs")]
        lattice::planted::plant(self.bug);
        IN_STEP.with(|in_step| in_step.set(true));
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let is_taken = self.step(&mut state, action);
            if is_taken {
                RaftModel::observe(&mut state);
            }
            is_taken
        }));
        IN_STEP.with(|in_step| in_step.set(false));
        match outcome {
            Ok(true) => {}
            Ok(false) => return None,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into());
                state.panicked = Some(message);
            }
        }
        Some(state)
    }

    fn within_boundary(&self, state: &State) -> bool {
        state.in_flight() <= self.bounds.in_flight
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut properties = vec![
            Property::always("election safety", |_, s: &State| {
                s.elected.windows(2).all(|w| w[0].0 != w[1].0)
            }),
            Property::always("log matching", |_, s: &State| {
                (0..NODES).all(|a| (a + 1..NODES).all(|b| logs_match(s, a, b)))
            }),
            Property::always("leader completeness", leader_completeness),
            Property::always("state machine safety", |_, s: &State| {
                (0..NODES).all(|n| {
                    let commit = s.nodes[n].raft.log().commit().0;
                    (1..=commit.min(s.committed.len() as u64))
                        .all(|i| s.log_entry(n, i) == Some(&s.committed[i as usize - 1]))
                })
            }),
            Property::always("commit index never decreases", |_, s: &State| {
                s.nodes
                    .iter()
                    .all(|node| node.raft.log().commit() >= node.commit_high)
            }),
            Property::always(
                "committed entries stay durable on a quorum of a configuration in force",
                committed_entries_durable,
            ),
            Property::always("read safety", |_, s: &State| s.stale_read.is_none()),
            Property::always(
                "a snapshot is never installed at or below the commit index",
                |_, s: &State| s.stale_install.is_none(),
            ),
            Property::always(
                "every snapshot and state machine is a committed prefix",
                |_, s: &State| {
                    s.nodes.iter().all(|node| {
                        let is_prefix = |entries: &[Entry]| {
                            entries.len() <= s.committed.len()
                                && entries == &s.committed[..entries.len()]
                        };
                        is_prefix(&node.durable_snapshot.1) && is_prefix(&node.applied)
                    })
                },
            ),
            Property::always("no core assertion fails", |_, s: &State| {
                s.panicked.is_none()
            }),
            Property::sometimes("a leader is elected", |_, s: &State| !s.elected.is_empty()),
        ];
        if self.bounds.proposals > 0 {
            properties.push(Property::sometimes(
                "a client's entry is committed",
                |_, s: &State| s.committed.iter().any(|e| !e.data.is_empty()),
            ));
        }
        if self.bounds.reads > 0 {
            properties.push(Property::sometimes("a read is released", |_, s: &State| {
                s.read_released
            }));
        }
        if self.bounds.crashes > 0 {
            properties.push(Property::sometimes("a node restarts", |_, s: &State| {
                s.crashes > 0
            }));
        }
        if self.bounds.snapshots > 0 {
            properties.push(Property::sometimes(
                "a follower installs a snapshot",
                |_, s: &State| s.installed,
            ));
        }
        if self.bounds.liveness {
            properties.extend([
                Property::sometimes("two leaders in one run", |_, s: &State| {
                    s.elected.len() >= 2
                }),
                Property::sometimes("a transfer's target campaigns", |_, s: &State| {
                    s.transfer_campaigned
                }),
            ]);
        } else if self.bounds.crashes > 0 {
            properties.push(Property::sometimes(
                "two leaders and a restart in one run",
                |_, s: &State| s.crashes > 0 && s.elected.len() >= 2,
            ));
        }
        if self.bounds.conf_changes > 0 {
            properties.push(Property::sometimes(
                "a membership change commits, and another node leads after it",
                |_, s: &State| {
                    s.committed.iter().any(|e| e.membership().is_some()) && s.elected.len() >= 2
                },
            ));
        }
        properties
    }
}

/// Log matching: two logs with an entry of the same index and term are
/// identical up to it.
fn logs_match(s: &State, a: usize, b: usize) -> bool {
    let (log_a, log_b) = (s.nodes[a].raft.log(), s.nodes[b].raft.log());
    let last = log_a.last_index().min(log_b.last_index()).0;
    let first = log_a.offset().index.max(log_b.offset().index).0 + 1;
    let Some(agreed) = (first..=last)
        .rev()
        .find(|&i| log_a.term(LogIndex(i)) == log_b.term(LogIndex(i)))
    else {
        return true;
    };
    (first..=agreed).all(|i| s.log_entry(a, i) == s.log_entry(b, i))
}

/// Leader completeness as a state invariant: a node that a quorum could elect
/// (its log at least as up to date as each member's, itself included) holds
/// every committed entry. This is what makes every future leader complete.
/// Every committed entry is durable on a quorum of the voters of the
/// committed configuration, or of a configuration in force on some node
/// (a leader commits by the one in force in its log, which may be newer
/// than the committed one: a leader removing itself counts the others).
fn committed_entries_durable(model: &RaftModel, s: &State) -> bool {
    let mut configurations = vec![committed_membership(&model.bounds, s)];
    configurations.extend(s.nodes.iter().map(|node| node.raft.membership().clone()));
    s.committed.iter().all(|entry| {
        let holders: Vec<usize> = (0..NODES)
            .filter(|&n| {
                let node = &s.nodes[n];
                node.durable_log.get(&entry.index) == Some(entry)
                    || node.durable_snapshot.1.get(entry.index.0 as usize - 1) == Some(entry)
            })
            .collect();
        configurations.iter().any(|membership| {
            holders
                .iter()
                .filter(|&&n| membership.is_voter(node_id(n)))
                .count()
                >= membership.quorum()
        })
    })
}

fn leader_completeness(_: &RaftModel, s: &State) -> bool {
    incomplete_electable(s).is_none()
}

/// A node a quorum could elect that lacks a committed entry, and the entry.
fn incomplete_electable(s: &State) -> Option<(usize, &Entry)> {
    let up_to_date = |n: usize| {
        let log = s.nodes[n].raft.log();
        (log.last_term(), log.last_index())
    };
    (0..NODES).find_map(|n| {
        // A candidate counts the votes of the voters of its own
        // configuration (any node grants one to an up-to-date log).
        let membership = s.nodes[n].raft.membership();
        if !membership.is_voter(node_id(n)) {
            return None;
        }
        let electors = (0..NODES)
            .filter(|&v| membership.is_voter(node_id(v)) && up_to_date(n) >= up_to_date(v))
            .count();
        if electors < membership.quorum() {
            return None;
        }
        s.committed
            .iter()
            .find(|entry| s.log_entry(n, entry.index.0) != Some(entry))
            .map(|entry| (n, entry))
    })
}

fn describe_node(node: &Node) -> String {
    let raft = &node.raft;
    let log = raft.log();
    let entries: Vec<String> = (log.offset().index.0 + 1..=log.last_index().0)
        .map(|i| {
            let entry = log.get(LogIndex(i)).expect("within the log");
            if entry.data.is_empty() {
                format!("{i}:t{}", entry.term)
            } else if let Some(Ok(membership)) = entry.membership() {
                format!("{i}:t{}=({membership})", entry.term)
            } else {
                format!(
                    "{i}:t{}={}",
                    entry.term,
                    String::from_utf8_lossy(&entry.data)
                )
            }
        })
        .collect();
    let snapshot = if log.offset().index.0 > 0 || node.durable_snapshot.0.index.0 > 0 {
        format!(
            "snapshot {}@t{} (durable {}) ",
            log.offset().index,
            log.offset().term,
            node.durable_snapshot.0.index
        )
    } else {
        String::new()
    };
    format!(
        "{:?} term {} vote {} {snapshot}log [{}] commit {} durable {}/{} (term {} vote {})",
        raft.role(),
        raft.term(),
        describe_vote(raft.hard_state().vote),
        entries.join(" "),
        log.commit(),
        node.durable_log.keys().next_back().map_or(0, |i| i.0),
        log.last_index(),
        node.durable_hard_state.term,
        describe_vote(node.durable_hard_state.vote),
    )
}

fn describe_vote(vote: Option<NodeId>) -> String {
    vote.map_or("-".to_string(), |v| format!("n{v}"))
}

fn describe_envelope(e: &Envelope) -> String {
    let what = match &e.payload {
        Payload::Request(Message::RequestVote(m)) => format!(
            "{}(term {}, last entry {}@t{}{})",
            if m.pre_vote { "PreVote" } else { "RequestVote" },
            m.term,
            m.last_log_index,
            m.last_log_term,
            if m.transfer { ", transfer" } else { "" }
        ),
        Payload::Request(Message::TimeoutNow(m)) => format!("TimeoutNow(term {})", m.term),
        Payload::Request(Message::AppendEntries(m)) => {
            let entries: Vec<String> = m
                .entries
                .iter()
                .map(|e| format!("{}:t{}", e.index, e.term))
                .collect();
            format!(
                "AppendEntries(term {}, after {}@t{}, entries [{}], commit {})",
                m.term,
                m.prev_log_index,
                m.prev_log_term,
                entries.join(" "),
                m.leader_commit
            )
        }
        Payload::Request(Message::InstallSnapshot(m)) | Payload::Snapshot(m, ..) => {
            let end = match &e.payload {
                Payload::Snapshot(_, meta, _) => format!(" of {}@t{}", meta.index, meta.term),
                _ => String::new(),
            };
            format!("InstallSnapshot(term {}{end})", m.term)
        }
        Payload::SnapshotResponse(r) => format!(
            "snapshot answer: {} up to {} (term {})",
            if r.success { "ok" } else { "refused" },
            r.match_index,
            r.term
        ),
        Payload::VoteResponse(r) => format!(
            "{}vote {} (term {})",
            if r.pre_vote { "pre-" } else { "" },
            if r.vote_granted { "granted" } else { "refused" },
            r.term
        ),
        Payload::AppendResponse(r) => {
            if r.success {
                format!("append ok up to {} (term {})", r.match_index, r.term)
            } else {
                format!("append refused at {} (term {})", r.rejected_index, r.term)
            }
        }
    };
    format!("n{}->n{} {what}", e.from + 1, e.to + 1)
}

fn describe_action(action: &Action) -> String {
    match action {
        Action::Deliver(e) => format!("deliver {}", describe_envelope(e)),
        Action::Drop(e) => format!("drop {}", describe_envelope(e)),
        Action::Duplicate(e) => format!("duplicate {}", describe_envelope(e)),
        Action::Timeout(n) => format!("n{}: election timeout", n + 1),
        Action::Heartbeat(n) => format!("n{}: heartbeat", n + 1),
        Action::Propose(n) => format!("n{}: a client proposes a value", n + 1),
        Action::Read(n) => format!("n{}: a client starts a read", n + 1),
        Action::Sync(n) => format!("n{}: disk syncs its oldest write", n + 1),
        Action::Snapshot(n) => format!("n{}: snapshots its state machine, compacts", n + 1),
        Action::Crash(n) => format!("n{}: CRASH, restarts from its durable state", n + 1),
        Action::Transfer(n, target) => format!(
            "n{}: an operator moves leadership to n{}",
            n + 1,
            target + 1
        ),
        Action::Promote(n, member) => {
            format!("n{}: an operator promotes learner n{}", n + 1, member + 1)
        }
        Action::Remove(n, member) => {
            format!("n{}: an operator removes n{}", n + 1, member + 1)
        }
    }
}

/// The counterexample as a story: each action, then the nodes it changed.
fn story(path: stateright::Path<State, Action>) -> String {
    let steps = path.into_vec();
    let mut out = String::new();
    for (i, window) in steps.windows(2).enumerate() {
        let (before, action) = (&window[0].0, window[0].1.as_ref());
        let after = &window[1].0;
        let Some(action) = action else { continue };
        let _ = writeln!(out, "{:>3}. {}", i + 1, describe_action(action));
        for n in 0..NODES {
            let (was, is) = (
                describe_node(&before.nodes[n]),
                describe_node(&after.nodes[n]),
            );
            if was != is {
                let _ = writeln!(out, "       n{}: {is}", n + 1);
            }
        }
    }
    if let Some(last) = steps.last() {
        let s = &last.0;
        if let Some(read) = &s.stale_read {
            let _ = writeln!(out, "     => {read}");
        }
        if let Some((n, entry)) = incomplete_electable(s) {
            let _ = writeln!(
                out,
                "     => n{} lacks committed entry {}:t{}, yet a quorum would elect it",
                n + 1,
                entry.index,
                entry.term
            );
        }
        if let Some(install) = &s.stale_install {
            let _ = writeln!(out, "     => {install}");
        }
        if let Some(panic) = &s.panicked {
            let _ = writeln!(out, "     => a core assertion failed: {panic}");
        }
        let committed: Vec<String> = s
            .committed
            .iter()
            .map(|e| format!("{}:t{}", e.index, e.term))
            .collect();
        let _ = writeln!(
            out,
            "     committed in the cluster: [{}]",
            committed.join(" ")
        );
    }
    out
}

struct Outcome {
    /// Each violated property, the length of its path and its story.
    failures: Vec<(&'static str, usize, String)>,
    missing_sometimes: Vec<&'static str>,
    states: usize,
    unique: usize,
    depth: usize,
    seconds: f64,
}

fn check(bounds: Bounds, bug: Option<Bug>, threads: usize) -> Outcome {
    quiet_checker_panics();
    let depth = bounds.depth;
    let bounds_search = bounds.search;
    let model = RaftModel { bounds, bug };
    let properties = model.properties();
    let finish_when = if bug.is_some() {
        HasDiscoveries::AnyFailures
    } else {
        HasDiscoveries::All
    };
    let started = Instant::now();
    let mut builder = model
        .checker()
        .threads(threads)
        .finish_when(finish_when)
        .target_max_depth(depth + 2); // depth counts the initial state as 1
    if let Some(count) = std::env::var("LATTICE_MODEL_MAX_STATES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        builder = builder.target_state_count(count);
    }
    match bounds_search {
        Search::Bfs => outcome(&builder.spawn_bfs().join(), &properties, started),
        Search::Dfs => outcome(&builder.spawn_dfs().join(), &properties, started),
    }
}

fn outcome(
    checker: &impl Checker<RaftModel>,
    properties: &[Property<RaftModel>],
    started: Instant,
) -> Outcome {
    let seconds = started.elapsed().as_secs_f64();
    let mut failures = Vec::new();
    let mut missing_sometimes = Vec::new();
    for property in properties {
        let discovery = checker.discovery(property.name);
        match (property.expectation.clone(), discovery) {
            (stateright::Expectation::Always, Some(path)) => {
                let steps = path.clone().into_actions().len();
                failures.push((property.name, steps, story(path)))
            }
            (stateright::Expectation::Sometimes, None) => missing_sometimes.push(property.name),
            _ => {}
        }
    }
    Outcome {
        failures,
        missing_sometimes,
        states: checker.state_count(),
        unique: checker.unique_state_count(),
        depth: checker.max_depth(),
        seconds,
    }
}

thread_local! {
    /// Set while a model step runs the real code (also when a path is
    /// rebuilt for a story, on the test's own thread).
    static IN_STEP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A panic inside a step is a finding (a core assertion failed), reported as
/// a property; the default hook would print each one on stderr.
fn quiet_checker_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_STEP.with(|in_step| in_step.get()) {
                default(info);
            }
        }));
    });
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[test]
fn raft_core_is_safe_in_every_interleaving_within_bounds() {
    // One configuration after the other: each takes most of the memory.
    for (name, bounds) in Bounds::from_env() {
        check_configuration(&name, bounds);
    }
}

fn check_configuration(name: &str, bounds: Bounds) {
    println!("model bounds ({name}): {bounds:?}");
    let outcome = check(bounds, None, threads());
    // Straight to stderr, past the test harness's capture: the counts show
    // in a plain `cargo test`.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "model checked ({name}, {:?}): {} states generated, {} unique up to symmetry, max depth {}, {:.1} s",
        bounds.search,
        outcome.states,
        outcome.unique,
        outcome.depth,
        outcome.seconds
    );
    for (name, steps, story) in &outcome.failures {
        println!("PROPERTY VIOLATED: {name}, after {steps} steps\n{story}");
    }
    assert!(
        outcome.failures.is_empty(),
        "properties violated: {:?}",
        outcome.failures.iter().map(|f| f.0).collect::<Vec<_>>()
    );
    assert!(
        outcome.missing_sometimes.is_empty(),
        "nothing interesting happened for: {:?} (the bounds are too tight to mean anything)",
        outcome.missing_sometimes
    );
    assert!(
        outcome.unique > 1000,
        "too few states explored: {}",
        outcome.unique
    );
}

/// The bugs of `lattice::planted` that live in the core or in the `Ready`
/// contract the model's driver honours, each with the family whose
/// configuration of the default run must catch it (no bug has bounds of
/// its own: a bug nobody planted gets the same). Not here:
/// - `RetriedWriteAppliedTwice` and `SessionsLeftOutOfSnapshot` live in
///   the KV state machine, which the model leaves out, and
///   `ReadServedBeforeApplied` in the driver;
/// - `CommitPastVerifiedMatch` needs a follower holding a stale entry past
///   an index the leader has verified, with the leader's commit beyond it:
///   no path within 3 terms, 1 proposal, 1 duplicate and 32 steps (3
///   million states). The Jepsen simulation catches them.
#[cfg(feature = "planted-bugs")]
fn model_catalogue() -> Vec<(Bug, Family)> {
    vec![
        (Bug::StaleVoteCounted, Family::Elections),
        (Bug::TwoVotesInOneTerm, Family::Elections),
        (Bug::VoteForOlderLog, Family::Elections),
        (Bug::HardStateNotPersisted, Family::Elections),
        (Bug::MessagesSentBeforeDurable, Family::Elections),
        (Bug::AnswerBeforeDurable, Family::Elections),
        (Bug::OwnUnsyncedEntriesCounted, Family::Elections),
        // Figure 8 needs three terms; the leaders' no-ops are entries enough.
        (Bug::CommitOlderTermByCounting, Family::Commit),
        (Bug::TruncateOnStaleAppend, Family::Replication),
        (Bug::ReadWithoutQuorumRound, Family::Reads),
        (Bug::ReadBeforeOwnTermCommit, Family::Reads),
        (Bug::ReadConfirmedByEarlierAnswers, Family::Reads),
        (Bug::PendingReadsServedOnStepDown, Family::Reads),
        // A duplicated snapshot arrives after the first one was installed.
        (Bug::InstallSnapshotOlderThanCommit, Family::Replication),
        (Bug::PreVotesCountedInElection, Family::Liveness),
        (Bug::TransferCampaignsInSameTerm, Family::Liveness),
        (Bug::TwoConfChangesPending, Family::Removals),
        (Bug::LearnerCountedInCommit, Family::Learners),
    ]
}

/// Runs the catalogue against the model: each bug must break a property,
/// and its shortest counterexample is printed. `LATTICE_BUG=Name` runs one.
#[cfg(feature = "planted-bugs")]
#[test]
fn planted_bugs_are_caught_by_the_model() {
    let only = std::env::var("LATTICE_BUG").ok();
    let mut missed = Vec::new();
    for (bug, family) in model_catalogue() {
        let bounds = family.bounds();
        if only
            .as_ref()
            .is_some_and(|names| !names.split(',').any(|name| name == format!("{bug:?}")))
        {
            continue;
        }
        // Breadth-first: the counterexample is a shortest one (with one
        // thread exactly; with more, at most a few steps longer).
        let bounds = bounds.overridden();
        let outcome = check(bounds, Some(bug), threads());
        let Some((property, steps, story)) = outcome.failures.first() else {
            println!(
                "planted {bug:?}: NOT caught ({} states, depth {}, {:.1} s, {bounds:?})",
                outcome.unique, outcome.depth, outcome.seconds
            );
            missed.push(bug);
            continue;
        };
        println!(
            "planted {bug:?}: caught in the {} configuration, {property:?} violated after {steps} steps ({} states, {:.1} s)\n{story}",
            family.name(), outcome.unique, outcome.seconds
        );
    }
    assert!(
        missed.is_empty(),
        "planted bugs the model checker missed: {missed:?}"
    );
}
