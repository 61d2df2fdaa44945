//! The white box: every node reports what it applies, writes, answers and
//! how its role changes (`lattice::server::Observer`), and the invariants
//! across nodes are checked as the reports arrive, one file per invariant
//! family: `elections`, `log` (state machine safety, the same session table
//! at each index, leader completeness, durability, the commit rule),
//! `snapshots`, `membership` and `reads` (the read oracle, and what confirmed
//! each read a leader served). A violation records the simulated time it was found.

mod elections;
mod log;
mod membership;
mod reads;
mod snapshots;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lattice::raft::{Entry, LogIndex, Membership, NodeId, Role, SnapshotMeta, Term};
use lattice::server::Observer;

use crate::sim::now;

/// Everything observed across nodes during a run, and the invariants checked
/// as it arrives.
#[derive(Default)]
pub struct WhiteBox {
    /// term -> the node that led it.
    pub leaders: BTreeMap<Term, NodeId>,
    /// index -> (term, data) of the entry applied there first.
    pub applied: BTreeMap<LogIndex, (Term, u32)>,
    /// The latest role each node reported.
    pub roles: BTreeMap<NodeId, (Term, Role)>,
    /// The highest commit index any node has reported.
    pub commit_max: LogIndex,
    pub violations: Vec<String>,
    /// Simulated time of the first violation.
    pub first_violation_at: Option<Duration>,
    pub applies: u64,
    /// Reads checked by the read oracle.
    pub reads_checked: u64,
    /// The voters every node starts with (the bootstrap configuration).
    pub initial: Membership,
    /// Per node: the configuration entries of its log, by index (as for
    /// `logs`: below a snapshot, the committed ones). A node's
    /// configuration is its last one (or `initial`).
    pub configs: BTreeMap<NodeId, BTreeMap<LogIndex, Membership>>,
    /// The configuration entries applied, by index: the committed history.
    pub committed_configs: BTreeMap<LogIndex, Membership>,
    /// Committed changes: members added (as learners, as voters),
    /// learners promoted, voters removed, learners removed.
    pub config_changes: [u64; 5],
    /// (term, candidate) -> the nodes whose granting answers left them.
    pub votes: BTreeMap<(Term, NodeId), std::collections::BTreeSet<NodeId>>,
    /// (node, term) -> whom its vote (granted, or its own as a candidate)
    /// went to.
    pub voted: BTreeMap<(NodeId, Term), NodeId>,
    /// Per node: the highest index it acknowledged, in the latest term it
    /// acknowledged anything.
    pub acknowledged: BTreeMap<NodeId, (Term, LogIndex)>,
    /// Per node: the term of each entry of its log (index i at i - 1), as
    /// handed to its disk (or recovered from it); below a snapshot, the
    /// committed terms.
    pub logs: BTreeMap<NodeId, Vec<Term>>,
    /// Snapshot index -> the digest of the state there, and who took it
    /// first: every snapshot at one index, taken or installed, must agree.
    pub snapshot_digests: BTreeMap<LogIndex, (u32, NodeId)>,
    /// Per node (this incarnation): the index its state machine is at.
    pub state_at: BTreeMap<NodeId, LogIndex>,
    pub snapshots_taken: u64,
    pub snapshots_installed: u64,
    pub compactions: u64,
    /// When (simulated) each snapshot was installed, and each compaction.
    pub installed_at: Vec<Duration>,
    pub compacted_at: Vec<Duration>,
    /// When each (term, leader) first reported leading.
    pub elections: Vec<(Duration, Term, NodeId)>,
    /// When some node first reached each higher term.
    pub term_rises: Vec<(Duration, Term)>,
    /// (leader, term, context) -> when each read it started arrived, and
    /// the leader's configuration then.
    pub reads_started: BTreeMap<(NodeId, Term, u64), (Duration, Membership)>,
    /// (node, term) -> when its last answer to that term's leader left it.
    pub last_answer: BTreeMap<(NodeId, Term), Duration>,
    /// Reads whose confirmation the white box checked.
    pub reads_confirmation_checked: u64,
    /// Index -> the digest of the session table there, and who reported it
    /// first: every node at an index must have the same table.
    pub sessions_at: BTreeMap<LogIndex, (u64, NodeId)>,
}

impl WhiteBox {
    pub(super) fn violate(&mut self, message: String) {
        self.first_violation_at.get_or_insert_with(now);
        self.violations.push(message);
    }
}

/// The observer the nodes report to.
#[derive(Clone, Default)]
pub struct WhiteBoxObserver(pub Arc<Mutex<WhiteBox>>);

impl Observer for WhiteBoxObserver {
    fn applied(&self, node: NodeId, entry: &Entry) {
        log::applied(&mut self.0.lock().expect("white box"), node, entry);
    }

    fn log_recovered(&self, node: NodeId, snapshot: SnapshotMeta, entries: &[Entry]) {
        log::log_recovered(
            &mut self.0.lock().expect("white box"),
            node,
            snapshot,
            entries,
        );
    }

    fn snapshot_taken(&self, node: NodeId, meta: SnapshotMeta, digest: u32) {
        snapshots::snapshot_taken(&mut self.0.lock().expect("white box"), node, meta, digest);
    }

    fn snapshot_installed(&self, node: NodeId, meta: SnapshotMeta, digest: u32) {
        snapshots::snapshot_installed(&mut self.0.lock().expect("white box"), node, meta, digest);
    }

    fn compacted(&self, _node: NodeId, _index: LogIndex) {
        snapshots::compacted(&mut self.0.lock().expect("white box"), _node, _index);
    }

    fn log_written(&self, node: NodeId, entries: &[Entry]) {
        log::log_written(&mut self.0.lock().expect("white box"), node, entries);
    }

    fn leader_appended(&self, node: NodeId, term: Term, commit: LogIndex, entries: &[Entry]) {
        membership::leader_appended(
            &mut self.0.lock().expect("white box"),
            node,
            term,
            commit,
            entries,
        );
    }

    fn vote_granted(&self, node: NodeId, term: Term, candidate: NodeId) {
        elections::vote_granted(
            &mut self.0.lock().expect("white box"),
            node,
            term,
            candidate,
        );
    }

    fn acknowledged(&self, node: NodeId, term: Term, match_index: LogIndex) {
        log::acknowledged(
            &mut self.0.lock().expect("white box"),
            node,
            term,
            match_index,
        );
    }

    fn log_changed(&self, node: NodeId, term: Term, last_index: LogIndex) {
        log::log_changed(
            &mut self.0.lock().expect("white box"),
            node,
            term,
            last_index,
        );
    }

    fn answered_leader(&self, node: NodeId, term: Term) {
        reads::answered_leader(&mut self.0.lock().expect("white box"), node, term);
    }

    fn read_started(&self, node: NodeId, term: Term, context: u64) {
        reads::read_started(&mut self.0.lock().expect("white box"), node, term, context);
    }

    fn read_served(&self, node: NodeId, term: Term, context: u64) {
        reads::read_served(&mut self.0.lock().expect("white box"), node, term, context);
    }

    fn sessions_at(&self, node: NodeId, index: LogIndex, digest: u64) {
        log::sessions_at(&mut self.0.lock().expect("white box"), node, index, digest);
    }

    fn committed(&self, node: NodeId, index: LogIndex, led: Option<Term>) {
        log::committed(&mut self.0.lock().expect("white box"), node, index, led);
    }

    fn role_changed(&self, node: NodeId, term: Term, role: Role) {
        elections::role_changed(&mut self.0.lock().expect("white box"), node, term, role);
    }
}

impl WhiteBoxObserver {
    /// An observer of a cluster that starts with these voters.
    pub fn new(voters: &[NodeId]) -> WhiteBoxObserver {
        let observer = WhiteBoxObserver::default();
        observer.0.lock().expect("white box").initial = Membership::bootstrap(voters);
        observer
    }

    /// The members (voters and learners) of the newest committed
    /// configuration.
    pub fn members(&self) -> Vec<NodeId> {
        let w = self.0.lock().expect("white box");
        let config = w
            .committed_configs
            .last_key_value()
            .map_or(&w.initial, |(_, c)| c);
        config.members.keys().copied().collect()
    }

    /// The newest committed configuration's (index, voters, learners).
    pub fn committed_config(&self) -> (LogIndex, Vec<NodeId>, Vec<NodeId>) {
        let w = self.0.lock().expect("white box");
        let (index, config) = w
            .committed_configs
            .last_key_value()
            .map_or((LogIndex(0), &w.initial), |(i, c)| (*i, c));
        (
            index,
            config.voters().collect(),
            config.learners().collect(),
        )
    }

    /// The highest index committed anywhere so far.
    pub fn commit_max(&self) -> LogIndex {
        self.0.lock().expect("white box").commit_max
    }

    pub fn has_violations(&self) -> bool {
        !self.0.lock().expect("white box").violations.is_empty()
    }

    /// The leader of the highest term and that term, if a node reports leading.
    pub fn leader_and_term(&self) -> Option<(NodeId, Term)> {
        let w = self.0.lock().expect("white box");
        w.roles
            .iter()
            .filter(|(_, (_, role))| *role == Role::Leader)
            .max_by_key(|(_, (term, _))| *term)
            .map(|(node, (term, _))| (*node, *term))
    }

    /// The node that reports leading in the highest term.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader_and_term().map(|(node, _)| node)
    }
}

fn crc(data: &[u8]) -> u32 {
    // A small FNV-1a: enough to tell commands apart.
    let mut hash = 0x811C_9DC5u32;
    for &b in data {
        hash = (hash ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    hash
}
