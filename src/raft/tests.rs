//! Tests of each Raft rule on an in-memory network the test controls message by
//! message, plus a randomized run that checks the safety invariants after every
//! step. The harness asserts the cross-node invariants (one leader per term,
//! the same entry applied at each index everywhere) on every delivery.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

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
        for (to, message) in ready.messages {
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

#[test]
fn a_candidate_with_a_majority_becomes_the_only_leader() {
    let mut c = Cluster::new(3);
    c.elect(1);
    assert_eq!(c.node(1).term(), Term(1));
    for id in [2, 3] {
        assert_eq!(c.node(id).role(), Role::Follower);
        assert_eq!(c.node(id).leader(), Some(NodeId(1)));
        assert_eq!(
            c.disks[&NodeId(id)].hard_state.vote,
            Some(NodeId(1)),
            "vote durable"
        );
    }
    // The leader's no-op of term 1 is committed, and applied everywhere once
    // a heartbeat carries the commit index.
    assert_eq!(c.applied[&NodeId(1)].len(), 1);
    c.heartbeat(1);
    for id in 1..=3 {
        assert_eq!(c.applied[&NodeId(id)].len(), 1, "node {id}");
    }
}

#[test]
fn a_candidate_without_a_majority_does_not_lead() {
    let mut c = Cluster::new(5);
    c.isolate(1);
    c.cut.remove(&(NodeId(1), NodeId(2)));
    c.cut.remove(&(NodeId(2), NodeId(1)));
    c.campaign(1);
    c.deliver_all();
    assert_eq!(
        c.node(1).role(),
        Role::Candidate,
        "2 votes of 5 are not a majority"
    );
}

#[test]
fn a_node_votes_at_most_once_per_term() {
    let mut raft = Raft::new(config(1, 3), HardState::default(), Vec::new());
    let ask = |candidate| RequestVote {
        term: Term(5),
        candidate: NodeId(candidate),
        last_log_index: LogIndex(0),
        last_log_term: Term(0),
        pre_vote: false,
        transfer: false,
    };
    assert!(raft.handle_request_vote(ask(2)).vote_granted);
    assert!(
        !raft.handle_request_vote(ask(3)).vote_granted,
        "second candidate, same term"
    );
    assert!(
        raft.handle_request_vote(ask(2)).vote_granted,
        "the same candidate again is fine"
    );
    assert_eq!(
        raft.hard_state(),
        HardState {
            term: Term(5),
            vote: Some(NodeId(2))
        }
    );
}

#[test]
fn votes_go_only_to_candidates_with_up_to_date_logs() {
    let entries = vec![
        Entry {
            term: Term(1),
            index: LogIndex(1),
            data: vec![],
        },
        Entry {
            term: Term(3),
            index: LogIndex(2),
            data: vec![],
        },
    ];
    let state = HardState {
        term: Term(3),
        vote: None,
    };
    let ask = |last_log_term, last_log_index| RequestVote {
        term: Term(4),
        candidate: NodeId(2),
        last_log_index: LogIndex(last_log_index),
        last_log_term: Term(last_log_term),
        pre_vote: false,
        transfer: false,
    };
    let cases = [
        ((2, 9), false, "older last term loses whatever its length"),
        ((3, 1), false, "same last term, shorter log"),
        ((3, 2), true, "same last term, same length"),
        ((3, 3), true, "same last term, longer log"),
        ((4, 1), true, "newer last term wins whatever its length"),
    ];
    for ((term, index), granted, why) in cases {
        let mut raft = Raft::new(config(1, 3), state, entries.clone());
        assert_eq!(
            raft.handle_request_vote(ask(term, index)).vote_granted,
            granted,
            "{why}"
        );
    }
}

#[test]
fn a_stale_log_cannot_win_an_election() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.cut_link(1, 3);
    c.propose(1, "a");
    c.propose(1, "b");
    c.deliver_all();
    assert_eq!(c.node(2).log().last_index(), LogIndex(3));
    assert_eq!(c.node(3).log().last_index(), LogIndex(1));
    c.heal();
    c.isolate(1);
    c.campaign(3);
    c.deliver_all();
    assert_ne!(
        c.node(3).role(),
        Role::Leader,
        "node 2 has entries node 3 lacks"
    );
    c.elect(2);
    assert_eq!(
        c.node(2).log().commit(),
        LogIndex(4),
        "the new leader commits its no-op"
    );
}

#[test]
fn any_message_with_a_higher_term_makes_a_leader_step_down() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let leader = c.node_mut(1);
    leader.handle_append_entries_response(
        NodeId(2),
        AppendEntriesResponse {
            term: Term(9),
            success: false,
            match_index: LogIndex(0),
            conflict_term: Term(0),
            conflict_index: LogIndex(0),
            read_round: 0,
            rejected_index: LogIndex(0),
        },
    );
    assert_eq!(leader.role(), Role::Follower);
    assert_eq!(leader.term(), Term(9));
    assert_eq!(
        leader.hard_state().vote,
        None,
        "a new term starts without a vote"
    );
}

#[test]
fn append_entries_from_a_stale_term_is_rejected_with_the_current_term() {
    let mut raft = Raft::new(
        config(2, 3),
        HardState {
            term: Term(5),
            vote: None,
        },
        Vec::new(),
    );
    let response = raft.handle_append_entries(AppendEntries {
        term: Term(4),
        leader: NodeId(1),
        prev_log_index: LogIndex(0),
        prev_log_term: Term(0),
        entries: vec![Entry {
            term: Term(4),
            index: LogIndex(1),
            data: vec![],
        }],
        leader_commit: LogIndex(1),
        read_round: 0,
    });
    assert!(!response.success);
    assert_eq!(response.term, Term(5));
    assert_eq!(raft.log().last_index(), LogIndex(0));
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

#[test]
fn the_consistency_check_rejects_with_a_conflict_hint() {
    // Log too short: hint is last index + 1, no term.
    let mut raft = follower_with_terms(&[1, 1], 3);
    let r = raft.handle_append_entries(append(3, (5, 3), &[], 0));
    assert!(!r.success);
    assert_eq!((r.conflict_term, r.conflict_index), (Term(0), LogIndex(3)));
    // Term mismatch at prev: hint is that term and its first index.
    let mut raft = follower_with_terms(&[1, 2, 2, 2], 3);
    let r = raft.handle_append_entries(append(3, (4, 3), &[], 0));
    assert!(!r.success);
    assert_eq!((r.conflict_term, r.conflict_index), (Term(2), LogIndex(2)));
    assert_eq!(
        raft.log().last_index(),
        LogIndex(4),
        "a rejection changes nothing"
    );
}

#[test]
fn truncation_happens_only_on_a_real_conflict() {
    let mut raft = follower_with_terms(&[1, 1, 1, 1], 1);
    // A delayed, shorter copy of entries already held: nothing is cut.
    let r = raft.handle_append_entries(append(1, (1, 1), &[(2, 1)], 0));
    assert!(r.success);
    assert_eq!(
        r.match_index,
        LogIndex(2),
        "matches only what the message covered"
    );
    assert_eq!(raft.log().last_index(), LogIndex(4), "entries 3 and 4 kept");
    // A different term at index 3: cut from 3, append.
    let r = raft.handle_append_entries(append(2, (2, 1), &[(3, 2)], 0));
    assert!(r.success);
    assert_eq!(raft.log().last_index(), LogIndex(3));
    assert_eq!(raft.log().term(LogIndex(3)), Some(Term(2)));
}

#[test]
fn a_committed_entry_is_never_overwritten() {
    let mut raft = follower_with_terms(&[1, 1, 1], 1);
    assert!(
        raft.handle_append_entries(append(1, (3, 1), &[], 3))
            .success
    );
    assert_eq!(raft.log().commit(), LogIndex(3));
    // A (buggy or forged) leader tries to replace committed entry 2.
    let r = raft.handle_append_entries(append(2, (1, 1), &[(2, 2)], 3));
    assert!(!r.success, "rejected, not applied");
    assert_eq!(raft.log().term(LogIndex(2)), Some(Term(1)));
    assert_eq!(raft.log().last_index(), LogIndex(3));
}

#[test]
fn malformed_entries_are_rejected_without_harm() {
    let mut raft = follower_with_terms(&[1], 2);
    for bad in [
        append(2, (1, 1), &[(3, 2)], 0),         // gap
        append(2, (1, 1), &[(2, 2), (2, 2)], 0), // repeated index
        append(2, (1, 1), &[(2, 5)], 0),         // term beyond the leader's
        append(2, (1, 1), &[(2, 2), (3, 1)], 0), // term going backwards
    ] {
        assert!(!raft.handle_append_entries(bad).success);
        assert_eq!(raft.log().last_index(), LogIndex(1));
    }
}

#[test]
fn the_leader_skips_a_whole_conflicting_term_per_round_trip() {
    // Node 3 holds 30 entries of a term nobody else has; the leader's log
    // diverges from it at index 2. Backtracking one entry per round trip would
    // take ~30 rejections; the hint makes it one or two.
    let mut c = Cluster::new(3);
    c.elect(1); // index 1, term 1 everywhere
    c.isolate(3);
    c.elect(2); // term 2: index 2 is node 2's no-op
    c.deliver_all();
    let c3 = c.node_mut(3);
    let stray: Vec<Entry> = (2..=31)
        .map(|i| Entry {
            term: Term(1),
            index: LogIndex(i),
            data: vec![9],
        })
        .collect();
    let r = c3.handle_append_entries(AppendEntries {
        term: Term(1),
        leader: NodeId(1),
        prev_log_index: LogIndex(1),
        prev_log_term: Term(1),
        entries: stray,
        leader_commit: LogIndex(1),
        read_round: 0,
    });
    assert!(r.success || c.node(3).term() > Term(1));
    c.process(NodeId(3));
    c.queue.clear();
    let diverged = c.node(3).log().last_index();
    c.heal();
    let rejections = std::cell::Cell::new(0);
    for _ in 0..3 {
        c.node_mut(2).tick();
        c.node_mut(2).tick();
        c.node_mut(2).tick();
        c.deliver_filtered(|e| {
            if let Envelope::AppendResponse(_, _, r) = e {
                if !r.success {
                    rejections.set(rejections.get() + 1);
                }
            }
            true
        });
    }
    assert_eq!(
        c.log_terms(3),
        c.log_terms(2),
        "node 3 converged (it had {diverged} entries)"
    );
    assert!(rejections.get() <= 2, "{} rejections", rejections.get());
}

#[test]
fn figure_8_an_old_term_entry_on_a_majority_is_not_committed() {
    // Raft paper figure 8, with no-ops as the entries and crashes as restarts
    // from disk. One entry per message so replication can be stopped exactly.
    let mut c = Cluster::with(5, |c| c.append_entries_max = 1);
    let no_appends =
        |e: &Envelope| !matches!(e, Envelope::Request(_, _, Message::AppendEntries(_)));
    c.elect(1); // term 1: index 1 committed everywhere
                // (a) S1 crashes, restarts and leads term 2; its index 2 reaches only S2.
    c.restart(1);
    c.win(1, |e| !matches!(e, Envelope::Request(_, to, Message::AppendEntries(m)) if to.0 != 2 && !m.entries.is_empty()));
    assert_eq!(c.node(1).term(), Term(2));
    assert_eq!(c.log_terms(2), vec![1, 2]);
    // (b) S1 crashes; S5 leads term 3 with S3 and S4; its index 2 stays on S5.
    c.restart(1);
    c.isolate(1);
    c.win(5, no_appends);
    assert_eq!(c.node(5).term(), Term(3));
    assert_eq!(c.log_terms(5), vec![1, 3]);
    // (c) S5 crashes; S1 comes back and leads term 4.
    c.restart(5);
    c.heal();
    c.isolate(5);
    c.win(1, no_appends);
    assert_eq!(c.node(1).term(), Term(4));
    // S1 replicates its term-2 entry to a majority, but not its term-4 no-op.
    for _ in 0..3 {
        c.node_mut(1).tick();
    }
    c.deliver_where(|c, e| match e {
        // Entry 3 may go only where it would be rejected (prev entry missing).
        Envelope::Request(_, to, Message::AppendEntries(m))
            if m.entries.iter().any(|x| x.index.0 >= 3) =>
        {
            c.nodes[to].log().term(m.prev_log_index) != Some(m.prev_log_term)
        }
        _ => true,
    });
    let holders = (1..=5)
        .filter(|&id| c.log_terms(id).get(1) == Some(&2))
        .count();
    assert!(
        holders >= 3,
        "index 2 (term 2) is on a majority: {holders} nodes"
    );
    assert!(
        c.node(1).log().commit() < LogIndex(2),
        "but it is not committed: it is not of term 4 (commit {})",
        c.node(1).log().commit()
    );
    // (d) S1 crashes; S5 wins term 5 and overwrites index 2 everywhere. Safe,
    // because nobody committed or applied the term-2 entry.
    c.restart(1);
    c.heal();
    c.isolate(1);
    c.win(5, |_| true);
    assert_eq!(c.node(5).term(), Term(5));
    c.heartbeat(5);
    c.heartbeat(5);
    for id in 2..=5 {
        assert_eq!(c.log_terms(id), vec![1, 3, 5], "node {id}");
    }
    assert!(c.node(5).log().commit() >= LogIndex(3));
    assert!(c
        .applied_at
        .get(&LogIndex(2))
        .is_some_and(|e| e.term == Term(3)));
}

#[test]
fn heartbeats_keep_followers_from_campaigning() {
    let mut c = Cluster::new(3);
    c.elect(1);
    for _ in 0..200 {
        for id in 1..=3 {
            c.node_mut(id).tick();
        }
        c.deliver_all();
    }
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(c.node(1).term(), Term(1), "no election happened");
}

/// Found by the simulation with skewed clocks: a candidate whose log is
/// behind, ticking fast, asked for votes every few ticks with ever higher
/// terms; each refusal restarted the up-to-date nodes' election timers, so
/// none ever campaigned and the cluster had no leader for good.
#[test]
fn refused_vote_requests_do_not_hold_back_an_up_to_date_follower() {
    let entries = vec![Entry {
        term: Term(1),
        index: LogIndex(1),
        data: vec![],
    }];
    let state = HardState {
        term: Term(1),
        vote: None,
    };
    let mut raft = Raft::new(config(1, 3), state, entries);
    let mut term = 1;
    for tick in 0..=20 {
        if tick % 5 == 0 {
            term += 1;
            let response = raft.handle_request_vote(RequestVote {
                term: Term(term),
                candidate: NodeId(2),
                last_log_index: LogIndex(0),
                last_log_term: Term(0),
                pre_vote: false,
                transfer: false,
            });
            assert!(!response.vote_granted, "node 2's log is behind");
        }
        raft.tick();
        if raft.role() == Role::Candidate {
            return;
        }
    }
    panic!("node 1 never campaigned: refused vote requests kept restarting its timer");
}

#[test]
fn an_isolated_follower_campaigns_after_its_timeout() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(3);
    for _ in 0..21 {
        for id in 1..=3 {
            c.node_mut(id).tick();
        }
        c.deliver_all();
    }
    assert_eq!(c.node(3).role(), Role::Candidate);
    assert!(c.node(3).term() > Term(1));
}

#[test]
fn entries_commit_once_on_a_majority_and_apply_in_order_everywhere() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.cut_link(1, 3);
    let index = c.propose(1, "x");
    c.deliver_all();
    assert_eq!(
        c.node(1).log().commit(),
        index,
        "leader + node 2 is a majority"
    );
    c.heal();
    c.heartbeat(1);
    c.heartbeat(1);
    for id in 1..=3 {
        let data: Vec<_> = c.applied[&NodeId(id)]
            .iter()
            .map(|e| e.data.clone())
            .collect();
        assert_eq!(data, vec![vec![], b"x".to_vec()], "node {id}");
    }
}

#[test]
fn many_proposals_share_one_message() {
    let mut c = Cluster::new(3);
    c.elect(1);
    for i in 0..100 {
        c.node_mut(1).propose(vec![i]).expect("leader");
    }
    c.process(NodeId(1));
    let appends = c
        .queue
        .iter()
        .filter(|e| matches!(e, Envelope::Request(_, _, Message::AppendEntries(m)) if !m.entries.is_empty()))
        .count();
    assert_eq!(
        appends, 2,
        "one AppendEntries per follower for 100 proposals"
    );
    c.deliver_all();
    assert_eq!(c.node(1).log().commit(), LogIndex(101));
}

#[test]
fn a_read_is_released_only_after_a_majority_confirms_the_leader() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(1);
    c.node_mut(1).read_index(7).expect("leader");
    c.deliver_all();
    assert_eq!(
        c.reads_released[&NodeId(1)],
        Vec::<u64>::new(),
        "no majority answered"
    );
    c.heal();
    c.node_mut(1).read_index(8).expect("leader");
    c.deliver_all();
    assert_eq!(
        c.reads_released[&NodeId(1)],
        Vec::<u64>::new(),
        "round 1 is still out (its heartbeats were lost): read 8 waits for round 2"
    );
    c.heartbeat(1);
    assert_eq!(
        c.reads_released[&NodeId(1)],
        vec![7, 8],
        "the periodic heartbeat retries round 1, then round 2 confirms read 8"
    );
    // With one follower cut, the other still makes a majority.
    c.cut_link(1, 3);
    c.node_mut(1).read_index(9).expect("leader");
    c.deliver_all();
    assert_eq!(c.reads_released[&NodeId(1)], vec![7, 8, 9]);
}

#[test]
fn reads_arriving_during_a_round_share_the_next_one() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.deliver_all();
    let heartbeats = |c: &Cluster| {
        c.queue
            .iter()
            .filter(|e| matches!(e, Envelope::Request(_, _, Message::AppendEntries(m)) if m.entries.is_empty()))
            .count()
    };
    c.node_mut(1).read_index(1).expect("leader");
    c.process(NodeId(1));
    assert_eq!(heartbeats(&c), 2, "round 1: one heartbeat per follower");
    for context in 2..=50 {
        c.node_mut(1).read_index(context).expect("leader");
        c.process(NodeId(1));
    }
    assert_eq!(heartbeats(&c), 2, "no new round while round 1 is out");
    c.deliver_all();
    assert_eq!(
        c.reads_released[&NodeId(1)],
        (1..=50).collect::<Vec<u64>>(),
        "round 1 released read 1, one round 2 the other 49"
    );
}

#[test]
fn a_deposed_leader_drops_its_pending_reads() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(1);
    c.node_mut(1).read_index(1).expect("leader");
    c.deliver_all();
    c.elect(2);
    c.heal();
    c.heartbeat(2);
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_eq!(c.reads_dropped[&NodeId(1)], vec![1]);
    assert!(
        c.reads_released[&NodeId(1)].is_empty(),
        "a deposed leader never answers the read"
    );
    assert_eq!(
        c.node_mut(1).read_index(2),
        Err(ReadRejected::NotLeader(NotLeader {
            leader: Some(NodeId(2))
        }))
    );
}

#[test]
fn a_new_leader_serves_reads_only_after_committing_in_its_term() {
    let mut c = Cluster::new(3);
    c.campaign(1);
    c.deliver_filtered(|e| !matches!(e, Envelope::Request(_, _, Message::AppendEntries(_))));
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(c.node_mut(1).read_index(1), Err(ReadRejected::NotReady));
    c.node_mut(1).tick();
    c.node_mut(1).tick();
    c.node_mut(1).tick();
    c.deliver_all();
    assert_eq!(c.node_mut(1).read_index(2), Ok(()));
}

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        term: Term(term),
        index: LogIndex(index),
        data: vec![],
    }
}

/// Storage works in the background: a late report about entries that a
/// newer leader has since replaced must not mark the new ones durable.
#[test]
fn a_late_durability_report_about_replaced_entries_is_ignored() {
    let mut log = RaftLog::default();
    for index in 1..=3 {
        log.push(entry(1, index));
    }
    assert_eq!(log.take_unpersisted().len(), 3, "the first write");
    log.merge(vec![entry(2, 2), entry(2, 3)]);
    assert_eq!(
        log.persisting(),
        LogIndex(1),
        "the truncation reaches storage next"
    );
    let second = log.take_unpersisted();
    assert_eq!(second.first().map(|e| e.index), Some(LogIndex(2)));
    log.persisted_to(LogIndex(3), Term(1));
    assert_eq!(
        log.persisted(),
        LogIndex(0),
        "the first write's report names entries that are gone"
    );
    log.persisted_to(LogIndex(3), Term(2));
    assert_eq!(log.persisted(), LogIndex(3));
    log.persisted_to(LogIndex(2), Term(2));
    assert_eq!(log.persisted(), LogIndex(3), "never backwards");
}

/// A leader sends its entries before its own disk has them (thesis 10.2.1),
/// so it must not count its own copy until the disk says it is durable.
#[test]
fn a_leader_counts_its_own_entries_only_once_durable() {
    let mut leader = Raft::new(config(1, 3), HardState::default(), Vec::new());
    for _ in 0..=20 {
        leader.tick();
        if leader.role() == Role::Candidate {
            break;
        }
    }
    let votes = leader.ready();
    assert!(votes.hard_state.is_some());
    leader.advance();
    leader.handle_request_vote_response(
        NodeId(2),
        RequestVoteResponse {
            term: leader.term(),
            vote_granted: true,
            pre_vote: false,
        },
    );
    assert_eq!(leader.role(), Role::Leader);
    let ready = leader.ready();
    let no_op = ready.entries.last().expect("the no-op").clone();
    // Follower 2 acknowledges the no-op; the leader's own write is not
    // durable yet: one copy of three is not a majority.
    leader.handle_append_entries_response(
        NodeId(2),
        AppendEntriesResponse {
            term: leader.term(),
            success: true,
            match_index: no_op.index,
            conflict_term: Term(0),
            conflict_index: LogIndex(0),
            read_round: 0,
            rejected_index: LogIndex(0),
        },
    );
    assert_eq!(
        leader.log().commit(),
        LogIndex(0),
        "own copy not durable yet"
    );
    leader.persisted(no_op.index, no_op.term);
    assert_eq!(leader.log().commit(), no_op.index, "now two of three");
}

#[test]
fn restart_from_durable_state_keeps_term_vote_and_log() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, "a");
    c.deliver_all();
    let disk = c.disks[&NodeId(2)].clone();
    let restarted = Raft::new(config(2, 3), disk.hard_state, disk.entries_after_snapshot());
    assert_eq!(restarted.term(), Term(1));
    assert_eq!(restarted.hard_state().vote, Some(NodeId(1)));
    assert_eq!(restarted.log().last_index(), LogIndex(2));
    assert_eq!(
        restarted.log().commit(),
        LogIndex(0),
        "commit is relearned from the leader"
    );
}

/// Random elections, proposals, partitions, drops, reorderings and restarts
/// from durable state; the harness checks election and state machine safety on
/// every step, and this checks log matching and leader completeness at the end.
#[test]
fn randomized_runs_keep_the_safety_invariants() {
    let (mut installs, mut compacted) = (0, 0);
    for seed in 0..40u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = if seed % 2 == 0 { 3 } else { 5 };
        let mut c = Cluster::with(n, |cfg| {
            cfg.seed = seed;
            cfg.append_entries_max = 3;
            // Half the runs with PreVote and CheckQuorum, as nodes run.
            cfg.pre_vote = seed % 4 < 2;
            cfg.check_quorum = seed % 4 < 2;
        });
        let mut proposed = 0u32;
        for _step in 0..3000 {
            match rng.random_range(0..100) {
                0..=39 => {
                    let id = rng.random_range(1..=n);
                    c.node_mut(id).tick();
                    c.process(NodeId(id));
                }
                40..=54 => {
                    for id in 1..=n {
                        if c.node(id).role() == Role::Leader {
                            proposed += 1;
                            let _ = c.node_mut(id).propose(proposed.to_be_bytes().to_vec());
                            c.process(NodeId(id));
                        }
                    }
                }
                55..=84 => {
                    if !c.queue.is_empty() {
                        // Reordering: take any queued envelope, not just the oldest.
                        let i = rng.random_range(0..c.queue.len());
                        let envelope = c.queue.remove(i).expect("in range");
                        if rng.random_range(0..10) > 0 {
                            c.deliver(envelope);
                        } else {
                            c.drop_envelope(envelope);
                        }
                    }
                }
                85..=91 => {
                    let (a, b) = (rng.random_range(1..=n), rng.random_range(1..=n));
                    if a != b {
                        c.cut_link(a, b);
                    }
                }
                92..=95 => c.heal(),
                96 => {
                    // A leader hands over to a random node.
                    for id in 1..=n {
                        if c.node(id).role() == Role::Leader {
                            let target = NodeId(rng.random_range(1..=n));
                            let _ = c.node_mut(id).transfer_leadership(Some(target));
                            c.process(NodeId(id));
                        }
                    }
                }
                97 => {
                    // Snapshot and compact a node, keeping 0-4 entries.
                    let id = rng.random_range(1..=n);
                    c.snapshot(id, rng.random_range(0..5));
                }
                _ => {
                    // Crash and restart a node from its disk.
                    let id = rng.random_range(1..=n);
                    c.restart(id);
                }
            }
        }
        // Log matching: same index and term => identical prefixes.
        let ids: Vec<u64> = (1..=n).collect();
        for &a in &ids {
            for &b in &ids {
                let (la, lb) = (c.node(a).log(), c.node(b).log());
                let last = la.last_index().min(lb.last_index());
                let first = la.offset().index.max(lb.offset().index).0 + 1;
                let mut is_matched = false;
                for i in (first..=last.0).rev() {
                    let i = LogIndex(i);
                    if is_matched {
                        assert_eq!(
                            la.get(i),
                            lb.get(i),
                            "seed {seed}: log matching at {i} ({a} vs {b})"
                        );
                    } else if la.term(i) == lb.term(i) {
                        is_matched = true;
                        assert_eq!(
                            la.get(i),
                            lb.get(i),
                            "seed {seed}: same index+term, same entry"
                        );
                    }
                }
            }
        }
        // Leader completeness: a leader holds every entry anyone applied.
        for id in 1..=n {
            if c.node(id).role() == Role::Leader {
                let offset = c.node(id).log().offset().index;
                for (index, entry) in c.applied_at.range(offset.next()..) {
                    assert_eq!(
                        c.node(id).log().get(*index),
                        Some(entry),
                        "seed {seed}: leader {id} lacks {index}"
                    );
                }
            }
        }
        assert!(c.delivered > 100, "seed {seed}: the run did something");
        assert!(!c.applied_at.is_empty(), "seed {seed}: something committed");
        installs += c.installs.values().sum::<usize>();
        compacted += (1..=n)
            .filter(|&id| c.node(id).log().offset().index.0 > 0)
            .count();
    }
    assert!(
        installs > 0 && compacted > 0,
        "snapshots were installed ({installs}) and logs compacted ({compacted})"
    );
}

// ------------------------------------------------------------ snapshots

/// A follower restored from a snapshot at (`index`, `term`) with `after`
/// entries (terms) following it.
fn follower_from_snapshot(index: u64, term: u64, after: &[u64], current: u64) -> Raft {
    let entries = after
        .iter()
        .enumerate()
        .map(|(i, &t)| Entry {
            term: Term(t),
            index: LogIndex(index + 1 + i as u64),
            data: vec![t as u8],
        })
        .collect();
    Raft::restore(
        config(2, 3),
        HardState {
            term: Term(current),
            vote: None,
        },
        SnapshotMeta {
            index: LogIndex(index),
            term: Term(term),
        },
        Membership::bootstrap(&config(2, 3).voters),
        entries,
    )
}

/// The configuration of the three-node cluster of these tests.
fn three() -> Membership {
    Membership::bootstrap(&config(1, 3).voters)
}

fn install(term: u64) -> InstallSnapshot {
    InstallSnapshot {
        term: Term(term),
        leader: NodeId(1),
        read_round: 0,
    }
}

fn meta(index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta {
        index: LogIndex(index),
        term: Term(term),
    }
}

#[test]
fn a_restart_from_a_snapshot_starts_committed_and_applied_at_it() {
    let raft = follower_from_snapshot(10, 2, &[2, 3], 3);
    assert_eq!(raft.log().offset(), meta(10, 2));
    assert_eq!(raft.log().commit(), LogIndex(10), "a snapshot is committed");
    assert_eq!(raft.log().last_index(), LogIndex(12));
    assert_eq!(
        raft.log().term(LogIndex(10)),
        Some(Term(2)),
        "the term at the snapshot"
    );
    assert_eq!(raft.log().term(LogIndex(9)), None, "compacted away");
    // Its last term votes correctly even with no entries after the snapshot.
    let bare = follower_from_snapshot(10, 2, &[], 3);
    assert_eq!(bare.log().last_term(), Term(2));
}

#[test]
fn append_entries_anchored_below_the_snapshot_is_re_anchored_at_it() {
    // A late AppendEntries from before the snapshot: entries 6..12 after 5.
    let mut raft = follower_from_snapshot(10, 2, &[], 3);
    let r = raft.handle_append_entries(append(
        3,
        (5, 2),
        &[(6, 2), (7, 2), (8, 2), (9, 2), (10, 2), (11, 3), (12, 3)],
        12,
    ));
    assert!(r.success, "{r:?}");
    assert_eq!(r.match_index, LogIndex(12));
    assert_eq!(raft.log().offset().index, LogIndex(10));
    assert_eq!(raft.log().last_index(), LogIndex(12));
    assert_eq!(raft.log().commit(), LogIndex(12));
    // A heartbeat anchored below the snapshot matches at the snapshot.
    let mut raft = follower_from_snapshot(10, 2, &[3], 3);
    let r = raft.handle_append_entries(append(3, (4, 1), &[], 10));
    assert!(r.success);
    assert_eq!(r.match_index, LogIndex(10));
    assert_eq!(raft.log().last_index(), LogIndex(11), "nothing cut");
}

#[test]
fn a_snapshot_at_or_below_the_commit_index_is_not_installed() {
    let mut raft = follower_from_snapshot(10, 2, &[3, 3], 3);
    raft.handle_append_entries(append(3, (12, 3), &[], 12));
    assert_eq!(raft.log().commit(), LogIndex(12));
    for index in [5, 10, 12] {
        let (r, is_accepted) = raft.handle_install_snapshot(install(3), meta(index, 2), three());
        assert!(!is_accepted, "snapshot at {index}");
        assert!(r.success, "answered as an append at the commit index");
        assert_eq!(r.match_index, LogIndex(12));
        assert_eq!(raft.log().last_index(), LogIndex(12), "nothing cut");
        assert_eq!(raft.log().commit(), LogIndex(12), "commit never moves back");
    }
    assert!(raft.ready().snapshot.is_none());
}

#[test]
fn an_installed_snapshot_keeps_the_log_after_it_only_if_it_matches() {
    // The log holds the snapshot's last entry: what follows it stays.
    let mut raft = follower_with_terms(&[1, 1, 2, 2, 2], 2);
    let (r, is_accepted) = raft.handle_install_snapshot(install(2), meta(3, 2), three());
    assert!(is_accepted && r.success);
    assert_eq!(r.match_index, LogIndex(3));
    assert_eq!(raft.log().offset(), meta(3, 2));
    assert_eq!(raft.log().last_index(), LogIndex(5));
    assert_eq!(raft.log().commit(), LogIndex(3));
    let ready = raft.ready();
    assert_eq!(ready.snapshot, Some(meta(3, 2)));
    assert!(
        ready.committed.is_empty(),
        "the snapshot is applied, not its entries"
    );
    // It holds another term there: the whole log goes.
    let mut raft = follower_with_terms(&[1, 1, 1, 1, 1], 2);
    let (_, is_accepted) = raft.handle_install_snapshot(install(2), meta(3, 2), three());
    assert!(is_accepted);
    assert_eq!(raft.log().last_index(), LogIndex(3));
    assert_eq!(raft.log().last_term(), Term(2));
    // Shorter than the snapshot: the log is emptied and continues after it.
    let mut raft = follower_with_terms(&[1], 2);
    raft.handle_install_snapshot(install(2), meta(30, 2), three());
    assert_eq!(raft.log().offset(), meta(30, 2));
    assert_eq!(raft.log().last_index(), LogIndex(30));
    let r = raft.handle_append_entries(append(2, (30, 2), &[(31, 2)], 31));
    assert!(r.success && r.match_index == LogIndex(31));
}

#[test]
fn a_snapshot_from_a_stale_leader_is_refused() {
    let mut raft = follower_with_terms(&[1], 5);
    let (r, is_accepted) = raft.handle_install_snapshot(install(4), meta(30, 4), three());
    assert!(!is_accepted && !r.success);
    assert_eq!(r.term, Term(5));
    assert_eq!(raft.log().last_index(), LogIndex(1));
}

/// Elects 1, cuts 3 off, commits `count` proposals on 1 and 2, then
/// snapshots and compacts 1 keeping `keep` entries.
fn lagging_follower(count: usize, keep: u64) -> Cluster {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(3);
    c.heal();
    c.cut_link(1, 3);
    c.cut_link(2, 3);
    for i in 0..count {
        c.propose(1, &format!("v{i}"));
        c.deliver_all();
    }
    c.heartbeat(1);
    c.snapshot(1, keep);
    c
}

#[test]
fn a_follower_behind_the_compaction_point_catches_up_by_snapshot() {
    let mut c = lagging_follower(20, 2);
    assert_eq!(c.node(1).log().offset().index, LogIndex(19));
    c.heal();
    c.heartbeat(1);
    c.heartbeat(1);
    assert_eq!(c.installs.get(&NodeId(3)), Some(&1), "one snapshot, once");
    assert_eq!(c.node(3).log().offset().index, LogIndex(21));
    c.propose(1, "after");
    c.deliver_all();
    c.heartbeat(1);
    assert_eq!(c.applied[&NodeId(3)], c.applied[&NodeId(1)]);
    assert_eq!(c.node(3).log().commit(), LogIndex(22));
}

#[test]
fn while_a_snapshot_is_out_nothing_else_is_sent_and_a_failure_probes_again() {
    let mut c = lagging_follower(10, 0);
    c.heal();
    // Hold back everything to 3 but count what the leader sends it.
    let sent_to_3 = |c: &Cluster| {
        c.queue
            .iter()
            .filter(
                |e| matches!(e, Envelope::Request(_, to, Message::InstallSnapshot(_)) if to.0 == 3),
            )
            .count()
    };
    for _ in 0..3 {
        c.node_mut(1).tick();
        c.node_mut(1).tick();
        c.node_mut(1).tick();
        c.process(NodeId(1));
        // Deliver only heartbeats to 3 (its answers are rejections: it lacks
        // the anchor) and nothing from 2.
        let queue: Vec<Envelope> = c.queue.drain(..).collect();
        for e in queue {
            match &e {
                Envelope::Request(_, to, Message::AppendEntries(_)) if to.0 == 3 => c.deliver(e),
                _ => c.queue.push_back(e),
            }
        }
        let responses: Vec<Envelope> = c
            .queue
            .iter()
            .filter(|e| matches!(e, Envelope::AppendResponse(from, _, _) if from.0 == 3))
            .cloned()
            .collect();
        c.queue
            .retain(|e| !matches!(e, Envelope::AppendResponse(from, _, _) if from.0 == 3));
        for r in responses {
            c.deliver(r);
        }
    }
    assert_eq!(
        sent_to_3(&c),
        1,
        "one snapshot in flight, not one per heartbeat"
    );
    // The snapshot is lost: the leader hears of it and sends it again.
    let lost = c
        .queue
        .iter()
        .position(|e| matches!(e, Envelope::Request(_, _, Message::InstallSnapshot(_))))
        .expect("the snapshot is queued");
    let lost = c.queue.remove(lost).expect("in range");
    c.drop_envelope(lost);
    // Not at once, nor on every later reason to send (a proposal): only
    // after the next heartbeat interval.
    c.node_mut(1).propose(b"more".to_vec()).expect("leader");
    c.process(NodeId(1));
    assert_eq!(sent_to_3(&c), 0, "a failed snapshot is retried at once");
    c.heartbeat(1);
    assert_eq!(c.installs.get(&NodeId(3)), Some(&1));
    assert_eq!(c.applied[&NodeId(3)], c.applied[&NodeId(1)]);
}

#[test]
fn compaction_stops_at_a_snapshot_being_sent_and_at_the_durable_snapshot() {
    let mut c = lagging_follower(10, 0);
    c.heal();
    c.node_mut(1).tick();
    c.node_mut(1).tick();
    c.node_mut(1).tick();
    c.process(NodeId(1));
    // The snapshot is on its way to 3 (held here, neither delivered nor lost).
    let position = c
        .queue
        .iter()
        .position(|e| matches!(e, Envelope::Request(_, _, Message::InstallSnapshot(_))))
        .expect("a snapshot is sent");
    let in_flight = c.queue.remove(position).expect("in range");
    let pending = c.node(1).snapshot().index;
    c.isolate(3);
    for i in 0..5 {
        c.propose(1, &format!("w{i}"));
        c.deliver_all();
    }
    c.heartbeat(1);
    c.heal();
    let offset = c.snapshot(1, 0);
    assert!(c.node(1).snapshot().index > pending);
    assert_eq!(
        offset, pending,
        "the follower installing {pending} needs what follows it"
    );
    // It arrives, and the follower catches up by entries from there.
    c.deliver(in_flight);
    c.deliver_all();
    c.heartbeat(1);
    assert_eq!(c.installs.get(&NodeId(3)), Some(&1));
    assert_eq!(c.applied[&NodeId(3)], c.applied[&NodeId(1)]);
    // Compaction never passes the durable snapshot, whatever is asked.
    let mut c = lagging_follower(5, 0);
    let snapshot = c.node(1).snapshot().index;
    c.propose(1, "x");
    c.deliver_all();
    assert_eq!(c.node_mut(1).compact(0), snapshot);
}

#[test]
fn a_restart_keeps_the_catch_up_tail_below_its_snapshot() {
    // Storage kept entries 6..=12 (compaction left a tail below the
    // snapshot at 10): they stay, so followers a little behind catch up by
    // entries after a restart too.
    let entries: Vec<Entry> = (6..=12).map(|i| entry(1, i)).collect();
    let raft = Raft::restore(
        config(1, 3),
        HardState {
            term: Term(1),
            vote: None,
        },
        meta(10, 1),
        Membership::bootstrap(&config(1, 3).voters),
        entries,
    );
    assert_eq!(raft.log().offset(), meta(6, 1));
    assert_eq!(raft.log().commit(), LogIndex(10));
    assert_eq!(raft.log().term(LogIndex(7)), Some(Term(1)));
    assert_eq!(raft.log().last_index(), LogIndex(12));
    assert_eq!(
        raft.log()
            .slice(LogIndex(7), LogIndex(12), usize::MAX, usize::MAX)
            .len(),
        6,
        "a follower at 6 gets entries, not a snapshot"
    );
}

// ------------------------------------------------------------ PreVote, CheckQuorum, transfer

fn pre_vote(term: u64, candidate: u64, last: (u64, u64)) -> RequestVote {
    RequestVote {
        term: Term(term),
        candidate: NodeId(candidate),
        last_log_index: LogIndex(last.0),
        last_log_term: Term(last.1),
        pre_vote: true,
        transfer: false,
    }
}

#[test]
fn a_pre_vote_changes_nothing_on_the_receiver() {
    let mut raft = follower_with_terms(&[1, 1, 2], 2);
    let before = raft.hard_state();
    let granted = raft.handle_request_vote(pre_vote(3, 3, (3, 2)));
    assert!(granted.vote_granted && granted.pre_vote);
    assert_eq!(granted.term, Term(3), "a grant carries the request's term");
    assert_eq!(raft.hard_state(), before, "no term raised, no vote cast");
    assert!(!raft.has_ready(), "nothing to persist");
    // An older log, or a term not above ours, is refused with our term.
    let older = raft.handle_request_vote(pre_vote(3, 3, (9, 1)));
    assert!(!older.vote_granted);
    assert_eq!(older.term, Term(2));
    let same_term = raft.handle_request_vote(pre_vote(2, 3, (3, 2)));
    assert!(!same_term.vote_granted);
    assert_eq!(raft.hard_state(), before);
}

#[test]
fn prevote_an_isolated_follower_keeps_its_term_and_rejoins_without_disruption() {
    let mut c = Cluster::with(3, liveness);
    c.elect(1);
    let term = c.node(1).term();
    c.isolate(3);
    c.run_rounds(200);
    assert_eq!(c.node(3).term(), term, "pre-votes never raise the term");
    assert_eq!(c.node(3).role(), Role::PreCandidate);
    assert_eq!(c.leader(), Some(1));
    c.heal();
    c.run_rounds(30);
    assert_eq!(c.leader(), Some(1), "the leader was not deposed");
    assert_eq!(c.node(1).term(), term);
    assert_eq!(c.node(3).role(), Role::Follower);
    assert_eq!(c.node(3).leader(), Some(NodeId(1)));
}

#[test]
fn without_prevote_an_isolated_follower_deposes_the_leader_on_rejoining() {
    // The negative control of the test above.
    let mut c = Cluster::new(3);
    c.elect(1);
    let term = c.node(1).term();
    c.isolate(3);
    c.run_rounds(60);
    assert!(c.node(3).term() > term);
    c.heal();
    c.run_rounds(60);
    assert!(c.node(1).term() > term, "the old leader's term was raised");
}

#[test]
fn check_quorum_steps_down_a_leader_cut_off_from_its_majority() {
    let mut c = Cluster::with(3, liveness);
    c.elect(1);
    c.node_mut(1).read_index(7).expect("a leader takes reads");
    c.isolate(1);
    for _ in 0..2 * 10 {
        c.node_mut(1).tick();
        c.deliver_all();
    }
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_eq!(
        c.node(1).leader(),
        None,
        "its clients are told to go elsewhere"
    );
    assert_eq!(c.reads_dropped[&NodeId(1)], vec![7]);
    // A leader that hears from its majority stays.
    let mut c = Cluster::with(3, liveness);
    c.elect(1);
    c.isolate(3);
    c.run_rounds(100);
    assert_eq!(c.leader(), Some(1));
}

#[test]
fn a_node_in_lease_ignores_votes_but_not_those_of_a_transfer() {
    let mut c = Cluster::with(3, liveness);
    c.elect(1);
    c.heartbeat(1);
    let term = c.node(2).term();
    let mut vote = pre_vote(term.0 + 1, 3, (9, 9));
    for pre in [true, false] {
        vote.pre_vote = pre;
        let response = c.node_mut(2).handle_request_vote(vote.clone());
        assert!(!response.vote_granted, "in lease (pre-vote: {pre})");
        assert_eq!(c.node(2).term(), term, "and its term is unchanged");
        assert_eq!(c.node(2).leader(), Some(NodeId(1)));
    }
    vote.transfer = true;
    assert!(c.node_mut(2).handle_request_vote(vote).vote_granted);
    assert_eq!(c.node(2).term(), Term(term.0 + 1));
}

#[test]
fn a_pre_candidate_forgets_its_leader_etcd_pr_8334() {
    // The leader dies. Node 2 times out first: 3, which still heard from
    // the leader recently, ignores its pre-vote. Then 3 times out: 2 must
    // grant it, though 2's timer restarted when it asked: a pre-candidate
    // that kept its leader would count itself in lease and refuse.
    let mut c = Cluster::with(3, liveness);
    c.elect(1);
    c.heartbeat(1);
    c.isolate(1);
    c.campaign(2);
    c.deliver_all();
    assert_eq!(c.node(2).role(), Role::PreCandidate, "3 was in lease");
    assert_eq!(c.node(2).leader(), None);
    c.campaign(3);
    c.deliver_all();
    assert_eq!(c.leader(), Some(3));
}

#[test]
fn a_pre_vote_rejection_teaches_the_higher_term_etcd_8501_openraft_1796() {
    // Node 2 has the longer log on a lower term; node 1 is on a higher term
    // with a shorter log (a candidate that lost). Each refuses the other;
    // the refusal carries node 1's term, so node 2 moves up to it and its
    // next pre-vote (and vote) succeeds.
    let mut long_low = follower_with_terms(&[1, 1, 1], 1);
    let mut short_high = Raft::new(
        {
            let mut c = config(1, 3);
            liveness(&mut c);
            c
        },
        HardState {
            term: Term(4),
            vote: Some(NodeId(1)),
        },
        vec![entry(1, 1)],
    );
    let refusal = short_high.handle_request_vote(pre_vote(2, 2, (3, 1)));
    assert!(!refusal.vote_granted);
    assert_eq!(refusal.term, Term(4));
    // Node 2 as a pre-candidate hears it and follows term 4.
    for _ in 0..40 {
        long_low.tick();
    }
    long_low.handle_request_vote_response(NodeId(1), refusal);
    assert_eq!(long_low.term(), Term(4));
    let ask = pre_vote(5, 2, (3, 1));
    assert!(short_high.handle_request_vote(ask).vote_granted);
}

#[test]
fn a_lower_term_append_is_answered_at_the_current_term_etcd_8243() {
    // CheckQuorum without PreVote: node 3, cut off, raised its term; the
    // others' lease ignores its votes, and its log is behind. It rejects the
    // leader's lower-term appends *with its term*, so the leader steps down
    // and a new election at a higher term takes node 3 back in.
    let mut c = Cluster::with(3, |cfg| cfg.check_quorum = true);
    c.elect(1);
    c.propose(1, "a");
    c.deliver_all();
    c.isolate(3);
    c.propose(1, "b");
    c.run_rounds(80);
    let stuck = c.node(3).term();
    assert!(stuck > c.node(1).term());
    let leader_term = c.node(1).term().0;
    let response = c
        .node_mut(3)
        .handle_append_entries(append(leader_term, (0, 0), &[], 0));
    assert_eq!(response.term, stuck, "answered at the current term");
    c.heal();
    c.run_rounds(100);
    let leader = c.leader().expect("a leader again");
    assert!(c.node(leader).term() >= stuck);
    assert_eq!(c.node(3).term(), c.node(leader).term());
    assert_eq!(c.node(3).leader(), Some(NodeId(leader)));
}

#[test]
fn a_leader_reaching_one_follower_steps_down_openraft_2080_cockroach_107060() {
    // Five voters. The old leader 1 reaches only 2 (the bridge); 2, 3 and 4
    // see each other; 5 is cut off. 3 and 4 need 2's vote, and 2 hears from
    // 1: only 1 stepping down (CheckQuorum) ends 2's lease. (CockroachDB
    // #107060 is this lease at work: followers hearing a leader that could
    // not serve would not elect another.)
    let mut c = Cluster::with(5, liveness);
    c.elect(1);
    c.heartbeat(1);
    let term = c.node(1).term();
    for other in [3, 4, 5] {
        c.cut_link(1, other);
    }
    for other in [2, 3, 4] {
        c.cut_link(5, other);
    }
    c.run_rounds(120);
    let leader = c.leader().expect("a leader");
    assert!([2, 3, 4].contains(&leader), "node {leader} leads");
    assert!(c.node(leader).term() > term);
    assert_ne!(c.node(1).role(), Role::Leader);
}

/// Elects 1 with node 3 behind by a few entries.
fn cluster_with_lagging_3() -> Cluster {
    let mut c = Cluster::with(3, liveness);
    c.elect(1);
    c.cut_link(1, 3);
    for i in 0..5 {
        c.propose(1, &format!("v{i}"));
        c.deliver_all();
    }
    c.heartbeat(1);
    c.heal();
    assert!(c.node(3).log().last_index() < c.node(1).log().last_index());
    c
}

#[test]
fn a_transfer_brings_the_target_up_to_date_then_hands_over() {
    let mut c = cluster_with_lagging_3();
    let term = c.node(1).term();
    let last = c.node(1).log().last_index();
    assert_eq!(
        c.node_mut(1).transfer_leadership(Some(NodeId(3))),
        Ok(NodeId(3))
    );
    assert_eq!(
        c.node_mut(1).propose(b"during".to_vec()),
        Err(NotLeader {
            leader: Some(NodeId(3))
        }),
        "proposals are refused with the target as the hint"
    );
    // The probe to 3 went unanswered while the link was cut: the next
    // heartbeat sends 3 what it lacks, and its answer brings TimeoutNow.
    c.heartbeat(1);
    assert_eq!(c.leader(), Some(3));
    assert_eq!(c.node(3).term(), Term(term.0 + 1), "one election");
    assert!(
        c.node(3).log().last_index() > last,
        "its no-op follows all of 1's log"
    );
    c.heartbeat(3);
    assert_eq!(c.node(1).leader(), Some(NodeId(3)));
    assert_eq!(c.node(1).transfer_target(), None);
    assert!(c.node_mut(3).propose(b"after".to_vec()).is_ok());
}

#[test]
fn a_transfer_picks_the_most_up_to_date_follower_and_rejects_strangers() {
    let mut c = cluster_with_lagging_3();
    assert_eq!(
        c.node_mut(1).transfer_leadership(Some(NodeId(9))),
        Err(TransferRejected::UnknownNode(NodeId(9)))
    );
    assert_eq!(
        c.node_mut(2).transfer_leadership(None),
        Err(TransferRejected::NotLeader(NotLeader {
            leader: Some(NodeId(1))
        }))
    );
    assert_eq!(c.node_mut(1).transfer_leadership(None), Ok(NodeId(2)));
    c.deliver_all();
    assert_eq!(c.leader(), Some(2));
}

#[test]
fn a_transfer_aborts_after_an_election_timeout() {
    let mut c = Cluster::with(3, liveness);
    c.elect(1);
    c.isolate(3);
    c.propose(1, "x");
    c.deliver_all();
    c.node_mut(1)
        .transfer_leadership(Some(NodeId(3)))
        .expect("leader");
    assert!(c.node_mut(1).propose(b"y".to_vec()).is_err());
    for _ in 0..10 {
        c.node_mut(1).tick();
        c.deliver_all();
    }
    assert_eq!(c.node(1).transfer_target(), None);
    assert_eq!(c.leader(), Some(1));
    assert!(
        c.node_mut(1).propose(b"z".to_vec()).is_ok(),
        "proposals again"
    );
}

#[test]
fn timeout_now_from_anyone_but_the_current_leader_is_ignored() {
    let mut c = Cluster::with(3, liveness);
    c.elect(1);
    c.heartbeat(1);
    let term = c.node(2).term();
    let (last, last_log_term) = (c.node(2).log().last_index(), c.node(2).log().last_term());
    // From another node, from an older term, or for a log other than ours
    // (late: the transfer was aborted and the leader appended more).
    for (from, at, last) in [
        (3, term.0, last),
        (1, term.0 - 1, last),
        (1, term.0, last.next()),
    ] {
        c.node_mut(2).handle_timeout_now(TimeoutNow {
            term: Term(at),
            leader: NodeId(from),
            last_log_index: last,
            last_log_term,
        });
        assert_eq!(c.node(2).role(), Role::Follower);
        assert_eq!(c.node(2).term(), term);
    }
    c.node_mut(2).handle_timeout_now(TimeoutNow {
        term,
        leader: NodeId(1),
        last_log_index: last,
        last_log_term,
    });
    assert_eq!(c.node(2).role(), Role::Candidate, "the real one is obeyed");
}

#[test]
fn a_transfer_goes_only_to_a_follower_heard_from_lately_and_one_at_a_time() {
    let mut c = Cluster::with(3, liveness);
    c.elect(1);
    c.heartbeat(1);
    // Node 2 dies with a full match; 3 keeps answering.
    c.isolate(2);
    for _ in 0..2 * 10 {
        c.node_mut(1).tick();
        c.deliver_all();
    }
    assert_eq!(c.node_mut(1).transfer_leadership(None), Ok(NodeId(3)));
    assert_eq!(
        c.node_mut(1).transfer_leadership(Some(NodeId(2))),
        Err(TransferRejected::InProgress(NodeId(3)))
    );
}

// ------------------------------------------------------------ membership

fn add_learner(id: u64) -> ConfChange {
    ConfChange::Add {
        id: NodeId(id),
        raft_addr: format!("127.0.0.{id}:7001"),
        kv_addr: format!("127.0.0.{id}:7002"),
        is_learner: true,
    }
}

fn voters(raft: &Raft) -> Vec<u64> {
    raft.membership().voters().map(|v| v.0).collect()
}

#[test]
fn a_learner_catches_up_without_voting_and_is_promoted_only_once_caught_up() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, "a");
    c.deliver_all();
    let learner = c.add_joining_node();
    let at = c.change(1, add_learner(learner)).expect("added");
    c.heartbeat(1);
    assert!(c.node(1).log().commit() >= at, "the change committed");
    for id in 1..=4 {
        assert!(c.node(id).membership().is_learner(NodeId(4)), "node {id}");
        assert_eq!(voters(c.node(id)), [1, 2, 3], "node {id}");
    }
    assert_eq!(
        c.node(4).log().commit(),
        c.node(1).log().commit(),
        "it caught up"
    );
    // A learner never campaigns, however long it hears nothing.
    c.isolate(4);
    for _ in 0..100 {
        c.node_mut(4).tick();
    }
    assert_eq!(c.node(4).role(), Role::Follower);
    assert_eq!(c.node(4).term(), c.node(1).term());
    // Behind: not promoted, with a clear reason.
    for i in 0..30 {
        c.propose(1, &format!("v{i}"));
    }
    c.deliver_all();
    assert!(matches!(
        c.node_mut(1)
            .propose_conf_change(&ConfChange::Promote(NodeId(4))),
        Err(ConfChangeRejected::LearnerBehind { .. })
    ));
    c.heal();
    c.heartbeat(1);
    c.heartbeat(1);
    let at = c
        .change(1, ConfChange::Promote(NodeId(4)))
        .expect("promoted");
    c.heartbeat(1);
    assert!(c.node(1).log().commit() >= at);
    assert_eq!(voters(c.node(4)), [1, 2, 3, 4]);
    // Four voters: a majority is three, so two nodes cannot commit.
    c.isolate(3);
    c.isolate(4);
    let index = c.propose(1, "needs three");
    c.deliver_all();
    c.heartbeat(1);
    assert!(
        c.node(1).log().commit() < index,
        "two of four voters do not commit"
    );
    c.heal();
    c.heartbeat(1);
    assert!(c.node(1).log().commit() >= index);
}

#[test]
fn a_learner_does_not_count_toward_commit() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let learner = c.add_joining_node();
    c.change(1, add_learner(learner)).expect("added");
    c.heartbeat(1);
    // Only the leader and the learner hear each other.
    c.isolate(2);
    c.isolate(3);
    let index = c.propose(1, "x");
    c.deliver_all();
    c.heartbeat(1);
    assert_eq!(c.node(4).log().last_index(), index, "the learner has it");
    assert!(
        c.node(1).log().commit() < index,
        "a leader and a learner are not a majority of three voters"
    );
    // Nor does it vote: a candidate needs two of the three voters.
    assert_eq!(
        c.node(1).membership().quorum(),
        2,
        "the learner is not in the quorum"
    );
}

#[test]
fn one_change_at_a_time_and_only_after_a_commit_of_the_leaders_term() {
    let mut c = Cluster::new(3);
    c.campaign(1);
    // Elected, but nothing of its term committed yet: its no-op is out.
    c.deliver_filtered(|e| {
        matches!(
            e,
            Envelope::Request(_, _, Message::RequestVote(_)) | Envelope::VoteResponse(..)
        )
    });
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(
        c.node_mut(1).propose_conf_change(&add_learner(4)),
        Err(ConfChangeRejected::NotReady)
    );
    c.heartbeat(1);
    c.isolate(2);
    c.isolate(3);
    c.node_mut(1)
        .propose_conf_change(&add_learner(4))
        .expect("first change");
    assert_eq!(
        c.node_mut(1).propose_conf_change(&add_learner(5)),
        Err(ConfChangeRejected::ChangePending),
        "the first is not committed"
    );
    assert_eq!(
        c.node_mut(2).propose_conf_change(&add_learner(5)),
        Err(ConfChangeRejected::NotLeader(Some(NodeId(1))))
    );
    // Ids are never reused.
    c.heal();
    c.heartbeat(1);
    c.change(1, ConfChange::Remove(NodeId(4))).expect("removed");
    c.heartbeat(1);
    assert_eq!(
        c.node_mut(1).propose_conf_change(&add_learner(4)),
        Err(ConfChangeRejected::IdTaken(NodeId(4)))
    );
}

#[test]
fn a_removed_leader_leads_until_the_removal_commits_then_steps_down() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(2);
    c.isolate(3);
    let at = c
        .node_mut(1)
        .propose_conf_change(&ConfChange::Remove(NodeId(1)))
        .expect("proposed");
    c.process(NodeId(1));
    assert_eq!(c.node(1).role(), Role::Leader, "not committed yet");
    assert_eq!(voters(c.node(1)), [2, 3], "in force once in the log");
    c.heal();
    c.deliver_all();
    c.heartbeat(1);
    assert!(c.node(2).log().commit() >= at || c.node(1).log().commit() >= at);
    assert_eq!(c.node(1).role(), Role::Follower, "stepped down");
    // It never campaigns again; the others elect among themselves.
    for _ in 0..100 {
        c.node_mut(1).tick();
    }
    assert_eq!(c.node(1).role(), Role::Follower);
    c.isolate(1);
    c.run_rounds(60);
    let leader = (2..=3).find(|&id| c.node(id).role() == Role::Leader);
    assert!(leader.is_some(), "2 and 3 elect a leader");
    let leader = leader.unwrap();
    let index = c.propose(leader, "after");
    c.deliver_all();
    c.heartbeat(leader);
    assert!(
        c.node(leader).log().commit() >= index,
        "two of two voters commit"
    );
}

#[test]
fn a_configuration_entry_cut_from_the_log_is_forgotten() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(1);
    c.node_mut(1)
        .propose_conf_change(&add_learner(4))
        .expect("proposed");
    c.process(NodeId(1));
    assert!(c.node(1).membership().contains(NodeId(4)));
    c.elect(2);
    c.propose(2, "overwrites");
    c.deliver_all();
    c.heal();
    c.heartbeat(2);
    c.heartbeat(2);
    assert_eq!(c.node(1).role(), Role::Follower);
    assert!(
        !c.node(1).membership().contains(NodeId(4)),
        "the uncommitted change was truncated away with its entry"
    );
    assert_eq!(c.node(1).log().last_index(), c.node(2).log().last_index());
}

#[test]
fn the_configuration_survives_compaction_and_restart_and_reaches_a_learner_by_snapshot() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let learner = c.add_joining_node();
    c.change(1, add_learner(learner)).expect("added");
    c.heartbeat(1);
    c.change(1, ConfChange::Remove(NodeId(3))).expect("removed");
    c.heartbeat(1);
    for i in 0..10 {
        c.propose(1, &format!("v{i}"));
    }
    c.heartbeat(1);
    for id in 1..=2 {
        c.snapshot(id, 0);
        c.restart(id);
        assert_eq!(voters(c.node(id)), [1, 2], "node {id} after restart");
        assert!(c.node(id).membership().is_learner(NodeId(4)));
        assert!(c.node(id).membership().removed.contains(&NodeId(3)));
    }
    c.elect(1);
    // A second learner joins after compaction: it gets the snapshot, and
    // with it the configuration.
    c.heartbeat(1);
    c.snapshot(1, 0);
    let late = c.add_joining_node();
    c.change(1, add_learner(late)).expect("added");
    c.heartbeat(1);
    c.heartbeat(1);
    assert_eq!(
        c.installs.get(&NodeId(late)),
        Some(&1),
        "caught up by snapshot"
    );
    assert_eq!(voters(c.node(late)), [1, 2]);
    assert!(c.node(late).membership().is_learner(NodeId(late)));
    assert_eq!(c.node(late).log().commit(), c.node(1).log().commit());
}

#[test]
fn a_removed_follower_hears_of_its_removal() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let at = c.change(1, ConfChange::Remove(NodeId(3))).expect("removed");
    c.heartbeat(1);
    assert!(c.node(1).log().commit() >= at);
    assert!(
        c.node(3).log().commit() >= at,
        "node 3 learned that its removal committed (it then stops)"
    );
    assert!(c.applied[&NodeId(3)].iter().any(|e| e.index == at));
    // Then the leader no longer talks to it.
    let delivered = c.delivered;
    c.heartbeat(1);
    assert!(c.delivered > delivered);
    assert!(
        c.queue.iter().all(|e| e.route().1 != NodeId(3)),
        "nothing more for node 3"
    );
}

#[test]
fn a_leader_gives_up_on_a_removed_node_that_never_catches_up() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(3);
    let at = c.change(1, ConfChange::Remove(NodeId(3))).expect("removed");
    c.heartbeat(1);
    assert!(c.node(1).log().commit() >= at);
    assert!(
        c.node(1).peers().contains(&NodeId(3)),
        "still replicated to, so that it learns of its removal"
    );
    let timeouts =
        super::node::LEAVING_TICKS_ELECTIONS * c.node(1).config().election_timeout_ticks_max;
    for _ in 0..timeouts {
        c.node_mut(1).tick();
        c.deliver_all();
    }
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(
        c.node(1).peers(),
        [NodeId(2)],
        "given up after ten election timeouts"
    );
}

#[test]
fn a_node_its_log_removes_asks_the_members_and_never_campaigns() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.change(1, ConfChange::Remove(NodeId(3))).expect("removed");
    c.heartbeat(1);
    c.queue.clear();
    let term = c.node(3).term();
    // No leader heard for an election timeout (the leader no longer talks
    // to it): it asks the members, as a pre-vote it will not use.
    for _ in 0..=c.node(3).config().election_timeout_ticks_max {
        c.node_mut(3).tick();
    }
    c.process(NodeId(3));
    let asked: Vec<NodeId> = c
        .queue
        .iter()
        .filter_map(|e| match e {
            Envelope::Request(from, to, Message::RequestVote(r)) if from.0 == 3 => {
                assert!(r.pre_vote, "only ever a pre-vote: {r:?}");
                Some(*to)
            }
            _ => None,
        })
        .collect();
    assert_eq!(asked, [NodeId(1), NodeId(2)]);
    c.deliver_all();
    assert_eq!(c.node(3).role(), Role::Follower, "it never campaigns");
    assert_eq!(c.node(3).term(), term);
    assert_eq!(c.node(1).role(), Role::Leader, "nobody is disturbed");
}
