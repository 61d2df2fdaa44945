//! Tests of each Raft rule on an in-memory network the test controls message by
//! message, plus a randomized run that checks the safety invariants after every
//! step. The harness (this file) asserts the cross-node invariants (one leader
//! per term, the same entry applied at each index everywhere) on every
//! delivery; the tests are filed by topic, as raft-rs keeps its
//! `integration_cases/`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

mod durability;
mod elections;
mod liveness;
mod membership;
mod randomized;
mod reads;
mod replication;
mod snapshots;
mod transfer;

fn config(id: u64, n: u64) -> Config {
    Config {
        id: NodeId(id),
        voters: (1..=n).map(NodeId).collect(),
        election_timeout_ticks_min: 10,
        election_timeout_ticks_max: 20,
        heartbeat_interval_ticks: 3,
        inflight_appends_max: 4,
        append_entries_max: 64,
        append_bytes_max: 1 << 20,
        seed: 7,
        // The base protocol's rules are tested without them; the tests of
        // PreVote, CheckQuorum and transfers turn them on (`liveness`).
        pre_vote: false,
        check_quorum: false,
    }
}

/// PreVote and CheckQuorum on, as nodes run by default.
fn liveness(config: &mut Config) {
    config.pre_vote = true;
    config.check_quorum = true;
}

#[derive(Debug, Clone)]
enum Envelope {
    Request(NodeId, NodeId, Message),
    VoteResponse(NodeId, NodeId, RequestVoteResponse),
    AppendResponse(NodeId, NodeId, AppendEntriesResponse),
    /// The answer to an InstallSnapshot (its loss fails the snapshot).
    SnapshotResponse(NodeId, NodeId, AppendEntriesResponse),
}

impl Envelope {
    fn route(&self) -> (NodeId, NodeId) {
        match self {
            Envelope::Request(f, t, _)
            | Envelope::VoteResponse(f, t, _)
            | Envelope::AppendResponse(f, t, _)
            | Envelope::SnapshotResponse(f, t, _) => (*f, *t),
        }
    }
}

/// Durable state of a node, as its storage would hold it: the newest
/// snapshot (the state machine is the applied entries up to it) and the log
/// by index (never compacted here: storage's business).
#[derive(Default, Clone)]
struct Disk {
    hard_state: HardState,
    snapshot: SnapshotMeta,
    snapshot_state: Vec<Entry>,
    log: BTreeMap<LogIndex, Entry>,
}

/// The configuration a snapshot of `state` (the entries applied) carries:
/// the newest configuration entry applied, else the bootstrap one.
fn snapshot_membership(config: &Config, state: &[Entry]) -> Membership {
    state
        .iter()
        .rev()
        .find_map(|e| e.membership())
        .map(|decoded| decoded.expect("configuration entries decode"))
        .unwrap_or_else(|| Membership::bootstrap(&config.voters))
}

impl Disk {
    /// The log a restart resumes with (as `storage::resume_log`).
    fn entries_after_snapshot(&self) -> Vec<Entry> {
        let entries = self.log.values().cloned().collect();
        crate::storage::resume_log(self.snapshot, entries, "disk")
            .expect("the test disk never has a gap")
            .0
    }
}

struct Cluster {
    n: u64,
    nodes: BTreeMap<NodeId, Raft>,
    disks: BTreeMap<NodeId, Disk>,
    queue: VecDeque<Envelope>,
    /// Links that drop messages, both ways.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Every entry each node applied, in order.
    applied: BTreeMap<NodeId, Vec<Entry>>,
    /// Term -> the leader seen in it (election safety).
    leaders: BTreeMap<Term, NodeId>,
    /// Index -> the entry first applied there by any node (state machine safety).
    applied_at: BTreeMap<LogIndex, Entry>,
    /// Reads released (context) and dropped, per node.
    reads_released: BTreeMap<NodeId, Vec<u64>>,
    reads_dropped: BTreeMap<NodeId, Vec<u64>>,
    /// A snapshot a node accepted, for its next ready: (meta, state).
    installing: BTreeMap<NodeId, (SnapshotMeta, Vec<Entry>)>,
    /// Snapshots installed, by node.
    installs: BTreeMap<NodeId, usize>,
    delivered: usize,
}

impl Cluster {
    fn new(n: u64) -> Self {
        Self::with(n, |_| {})
    }

    fn with(n: u64, tune: impl Fn(&mut Config)) -> Self {
        let mut cluster = Cluster {
            n,
            nodes: BTreeMap::new(),
            disks: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            applied: BTreeMap::new(),
            leaders: BTreeMap::new(),
            applied_at: BTreeMap::new(),
            reads_released: BTreeMap::new(),
            reads_dropped: BTreeMap::new(),
            installing: BTreeMap::new(),
            installs: BTreeMap::new(),
            delivered: 0,
        };
        for id in 1..=n {
            let mut c = config(id, n);
            tune(&mut c);
            cluster
                .nodes
                .insert(NodeId(id), Raft::new(c, HardState::default(), Vec::new()));
            cluster.disks.insert(NodeId(id), Disk::default());
            cluster.applied.insert(NodeId(id), Vec::new());
        }
        cluster
    }

    fn node(&self, id: u64) -> &Raft {
        &self.nodes[&NodeId(id)]
    }

    fn node_mut(&mut self, id: u64) -> &mut Raft {
        self.nodes.get_mut(&NodeId(id)).expect("node exists")
    }

    /// Cuts every link of `id` (as if it crashed, but keeping its memory).
    fn isolate(&mut self, id: u64) {
        for other in 1..=self.n {
            if other != id {
                self.cut_link(id, other);
            }
        }
    }

    fn cut_link(&mut self, a: u64, b: u64) {
        self.cut.insert((NodeId(a), NodeId(b)));
        self.cut.insert((NodeId(b), NodeId(a)));
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    /// Carries out a node's ready like the driver: persist, queue, apply, advance.
    fn process(&mut self, id: NodeId) {
        let raft = self.nodes.get_mut(&id).expect("node exists");
        if !raft.has_ready() {
            return;
        }
        let ready = raft.ready();
        let disk = self.disks.get_mut(&id).expect("disk exists");
        if let Some(hs) = ready.hard_state {
            disk.hard_state = hs;
        }
        if let Some(meta) = ready.snapshot {
            let (held, state) = self.installing.remove(&id).expect("an accepted snapshot");
            assert_eq!(held, meta);
            if disk.log.get(&meta.index).map(|e| e.term) != Some(meta.term) {
                disk.log.clear();
            }
            disk.snapshot = meta;
            disk.snapshot_state = state.clone();
            *self.installs.entry(id).or_default() += 1;
            self.applied.insert(id, state);
        }
        if let Some(first) = ready.entries.first() {
            disk.log.split_off(&first.index);
            disk.log
                .extend(ready.entries.iter().map(|e| (e.index, e.clone())));
        }
        for (to, message) in ready.messages.into_iter().chain(ready.persisted_messages) {
            self.queue.push_back(Envelope::Request(id, to, message));
        }
        for entry in ready.committed {
            let applied = self.applied.get_mut(&id).expect("applied exists");
            assert_eq!(entry.index.0, applied.len() as u64 + 1, "applied in order");
            match self.applied_at.get(&entry.index) {
                Some(first) => assert_eq!(
                    first, &entry,
                    "state machine safety: node {id} applied a different entry at {}",
                    entry.index
                ),
                None => {
                    self.applied_at.insert(entry.index, entry.clone());
                }
            }
            applied.push(entry);
        }
        self.reads_released
            .entry(id)
            .or_default()
            .extend(ready.read_states.iter().map(|r| r.context));
        self.reads_dropped
            .entry(id)
            .or_default()
            .extend(ready.reads_dropped);
        raft.advance();
        self.check_leaders();
    }

    fn check_leaders(&mut self) {
        for (id, raft) in &self.nodes {
            if raft.role() == Role::Leader {
                let leader = *self.leaders.entry(raft.term()).or_insert(*id);
                assert_eq!(
                    leader,
                    *id,
                    "election safety: two leaders in term {}",
                    raft.term()
                );
            }
        }
    }

    fn process_all(&mut self) {
        for id in self.nodes.keys().copied().collect::<Vec<_>>() {
            self.process(id);
        }
    }

    /// Delivers one envelope, or drops it if its link is cut.
    fn deliver(&mut self, envelope: Envelope) {
        let (from, to) = envelope.route();
        // A member added to the configuration whose machine is not up yet.
        if self.cut.contains(&(from, to)) || !self.nodes.contains_key(&to) {
            self.drop_envelope(envelope);
            return;
        }
        self.delivered += 1;
        let raft = self.nodes.get_mut(&to).expect("node exists");
        match envelope {
            Envelope::Request(_, _, Message::RequestVote(m)) => {
                let response = raft.handle_request_vote(m);
                self.process(to);
                self.queue
                    .push_back(Envelope::VoteResponse(to, from, response));
            }
            Envelope::Request(_, _, Message::AppendEntries(m)) => {
                let response = raft.handle_append_entries(m);
                self.process(to);
                self.queue
                    .push_back(Envelope::AppendResponse(to, from, response));
            }
            Envelope::Request(_, _, Message::TimeoutNow(m)) => {
                raft.handle_timeout_now(m);
                self.process(to);
            }
            Envelope::Request(_, _, Message::InstallSnapshot(m)) => {
                // The driver streams the sender's newest durable snapshot.
                let disk = &self.disks[&from];
                let (meta, state) = (disk.snapshot, disk.snapshot_state.clone());
                let membership = snapshot_membership(raft.config(), &state);
                let (response, is_accepted) = raft.handle_install_snapshot(m, meta, membership);
                if is_accepted {
                    self.installing.insert(to, (meta, state));
                }
                self.process(to);
                self.queue
                    .push_back(Envelope::SnapshotResponse(to, from, response));
            }
            Envelope::VoteResponse(_, _, r) => {
                raft.handle_request_vote_response(from, r);
                self.process(to);
            }
            Envelope::AppendResponse(_, _, r) | Envelope::SnapshotResponse(_, _, r) => {
                raft.handle_append_entries_response(from, r);
                self.process(to);
            }
        }
    }

    /// A lost request or response fails the RPC: the driver reports the peer
    /// unreachable to the requester, and so does the harness.
    fn drop_envelope(&mut self, envelope: Envelope) {
        let is_snapshot = matches!(
            envelope,
            Envelope::Request(_, _, Message::InstallSnapshot(_)) | Envelope::SnapshotResponse(..)
        );
        let (requester, peer) = match envelope {
            Envelope::Request(from, to, _) => (from, to),
            Envelope::VoteResponse(from, to, _)
            | Envelope::AppendResponse(from, to, _)
            | Envelope::SnapshotResponse(from, to, _) => (to, from),
        };
        let raft = self.nodes.get_mut(&requester).expect("node exists");
        if is_snapshot {
            raft.report_snapshot_failed(peer);
        } else {
            raft.report_unreachable(peer);
        }
        self.process(requester);
    }

    /// Delivers until quiet, dropping what `keep` refuses. Returns how many went.
    fn deliver_filtered(&mut self, keep: impl Fn(&Envelope) -> bool) -> usize {
        self.deliver_where(|_, e| keep(e))
    }

    /// Like `deliver_filtered`, with the cluster's state visible to the filter.
    fn deliver_where(&mut self, keep: impl Fn(&Cluster, &Envelope) -> bool) -> usize {
        self.process_all();
        let before = self.delivered;
        let mut steps = 0;
        while let Some(envelope) = self.queue.pop_front() {
            steps += 1;
            assert!(steps < 100_000, "the network never went quiet");
            if keep(self, &envelope) {
                self.deliver(envelope);
            } else {
                self.drop_envelope(envelope);
            }
        }
        self.delivered - before
    }

    fn deliver_all(&mut self) -> usize {
        self.deliver_filtered(|_| true)
    }

    /// Ticks every node once and delivers until quiet, `rounds` times.
    fn run_rounds(&mut self, rounds: usize) {
        for _ in 0..rounds {
            for id in 1..=self.n {
                self.node_mut(id).tick();
            }
            self.deliver_all();
        }
    }

    /// The node that leads in the highest term, if any.
    fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .filter(|(_, raft)| raft.role() == Role::Leader)
            .max_by_key(|(_, raft)| raft.term())
            .map(|(id, _)| id.0)
    }

    /// Ticks `id` alone until it campaigns, then delivers everything.
    fn campaign(&mut self, id: u64) {
        let raft = self.node_mut(id);
        let term = raft.term();
        let is_campaigning = |raft: &Raft| raft.term() > term || raft.role() == Role::PreCandidate;
        for _ in 0..100 {
            raft.tick();
            if is_campaigning(raft) {
                break;
            }
        }
        assert!(is_campaigning(self.node(id)), "node {id} never campaigned");
    }

    fn elect(&mut self, id: u64) {
        self.campaign(id);
        self.deliver_all();
        assert_eq!(
            self.node(id).role(),
            Role::Leader,
            "node {id} was not elected"
        );
    }

    /// Ticks the leader `id` through one heartbeat interval and delivers.
    fn heartbeat(&mut self, id: u64) {
        self.heartbeat_filtered(id, |_| true);
    }

    fn heartbeat_filtered(&mut self, id: u64, keep: impl Fn(&Envelope) -> bool) {
        for _ in 0..3 {
            self.node_mut(id).tick();
        }
        self.deliver_filtered(keep);
    }

    /// Campaigns until `id` leads (a few terms at most), delivering what `keep` allows.
    fn win(&mut self, id: u64, keep: impl Fn(&Envelope) -> bool) {
        for _ in 0..5 {
            self.campaign(id);
            self.deliver_filtered(&keep);
            if self.node(id).role() == Role::Leader {
                return;
            }
        }
        panic!("node {id} could not win an election");
    }

    /// Crashes `id` and restarts it from its disk: memory (commit index, role,
    /// state machine) is lost; term, vote and log survive.
    fn restart(&mut self, id: u64) {
        let id = NodeId(id);
        let disk = self.disks[&id].clone();
        let mut cfg = self.nodes[&id].config().clone();
        cfg.seed = cfg.seed.wrapping_add(1);
        let entries = disk.entries_after_snapshot();
        self.nodes.insert(
            id,
            Raft::restore(
                cfg.clone(),
                disk.hard_state,
                disk.snapshot,
                snapshot_membership(&cfg, &disk.snapshot_state),
                entries,
            ),
        );
        self.applied.insert(id, disk.snapshot_state.clone());
        self.installing.remove(&id);
        self.queue.retain(|e| e.route().1 != id);
    }

    /// Snapshots `id`'s state machine at its applied index (durably), then
    /// compacts its log keeping `keep` entries below the snapshot.
    fn snapshot(&mut self, id: u64, keep: u64) -> LogIndex {
        let node = NodeId(id);
        let state = self.applied[&node].clone();
        let Some(last) = state.last() else {
            return LogIndex(0);
        };
        let meta = SnapshotMeta {
            index: last.index,
            term: last.term,
        };
        let disk = self.disks.get_mut(&node).expect("disk exists");
        if meta.index > disk.snapshot.index {
            disk.snapshot = meta;
            disk.snapshot_state = state;
        }
        let raft = self.node_mut(id);
        raft.snapshot_saved(meta);
        raft.compact(keep)
    }

    /// A node that joins a running cluster: it knows no configuration and
    /// learns it from the leader once added.
    fn add_joining_node(&mut self) -> u64 {
        self.n += 1;
        let id = self.n;
        let mut config = config(id, 1);
        config.voters.clear();
        self.nodes.insert(
            NodeId(id),
            Raft::new(config, HardState::default(), Vec::new()),
        );
        self.disks.insert(NodeId(id), Disk::default());
        self.applied.insert(NodeId(id), Vec::new());
        id
    }

    /// Proposes a configuration change at the leader `id` and delivers.
    fn change(&mut self, id: u64, change: ConfChange) -> Result<LogIndex, ConfChangeRejected> {
        let index = self.node_mut(id).propose_conf_change(&change)?;
        self.process(NodeId(id));
        self.deliver_all();
        Ok(index)
    }

    fn propose(&mut self, id: u64, data: &str) -> LogIndex {
        let index = self
            .node_mut(id)
            .propose(data.as_bytes().to_vec())
            .expect("leader");
        self.process(NodeId(id));
        index
    }

    fn log_terms(&self, id: u64) -> Vec<u64> {
        let log = self.node(id).log();
        (log.offset().index.0 + 1..=log.last_index().0)
            .map(|i| log.term(LogIndex(i)).expect("in log").0)
            .collect()
    }
}

fn follower_with_terms(terms: &[u64], current: u64) -> Raft {
    let entries = terms
        .iter()
        .enumerate()
        .map(|(i, &t)| Entry {
            term: Term(t),
            index: LogIndex(i as u64 + 1),
            data: vec![t as u8],
        })
        .collect();
    Raft::new(
        config(2, 3),
        HardState {
            term: Term(current),
            vote: None,
        },
        entries,
    )
}

fn append(term: u64, prev: (u64, u64), entries: &[(u64, u64)], commit: u64) -> AppendEntries {
    AppendEntries {
        term: Term(term),
        leader: NodeId(1),
        prev_log_index: LogIndex(prev.0),
        prev_log_term: Term(prev.1),
        entries: entries
            .iter()
            .map(|&(index, t)| Entry {
                term: Term(t),
                index: LogIndex(index),
                data: vec![t as u8],
            })
            .collect(),
        leader_commit: LogIndex(commit),
        read_round: 0,
    }
}

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        term: Term(term),
        index: LogIndex(index),
        data: vec![],
    }
}
