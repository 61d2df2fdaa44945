//! Roles and transitions: `tick`, the `handle_*` inputs, `propose`,
//! `read_index`, `transfer_leadership`; then `ready` hands the driver what to
//! persist, send and apply, and `advance` tells the core it was done.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tracing::{debug, info, warn};

use super::membership::{ConfChange, ConfChangeRejected, Membership};
use super::progress::{Progress, ProgressState};
use super::read_only::ReadOnly;
use super::tracker::Tracker;
use super::{
    AppendEntries, AppendEntriesResponse, Entry, HardState, InstallSnapshot, LogIndex, Message,
    NodeId, RaftLog, RequestVote, RequestVoteResponse, SnapshotMeta, Term, TimeoutNow,
};
use crate::planted::{is_planted, Bug};

/// Everything the core needs to know about its cluster and its pace.
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// The voters of a new cluster, this node included ([`Raft::new`];
    /// [`Raft::restore`] takes the configuration itself). Empty for a node
    /// that joins a running cluster: it learns the configuration from the
    /// leader, and does nothing until then.
    pub voters: Vec<NodeId>,
    /// A follower or candidate starts an election after a random number of
    /// ticks without hearing from a leader, drawn from this inclusive range.
    pub election_timeout_ticks_min: u32,
    pub election_timeout_ticks_max: u32,
    /// A leader sends heartbeats every this many ticks.
    pub heartbeat_interval_ticks: u32,
    /// AppendEntries that may be in flight to one follower while replicating.
    pub inflight_appends_max: usize,
    /// Entries and payload bytes per AppendEntries (the first entry always goes).
    pub append_entries_max: usize,
    pub append_bytes_max: usize,
    /// Seeds this node's RNG (election timeouts): the run replays from it.
    pub seed: u64,
    /// PreVote (thesis 9.6): a node whose election timer fires first asks
    /// whether it could win, without raising its term, and campaigns only if
    /// a majority says yes. A node cut off and healed does not depose a
    /// healthy leader.
    pub pre_vote: bool,
    /// CheckQuorum (thesis 6.2): a leader that has not heard from a majority
    /// within an election timeout steps down. With it comes the vote lease:
    /// a node that heard from a live leader within the minimum election
    /// timeout ignores (pre-)votes, but those of a leadership transfer.
    pub check_quorum: bool,
}

impl Config {
    /// Checks what the core would otherwise assert.
    pub fn validate(&self) -> Result<(), String> {
        if self.id.0 == 0 {
            return Err("node id 0 is reserved".into());
        }
        if !self.voters.is_empty() && !self.voters.contains(&self.id) {
            return Err(format!(
                "node {} is not among the voters {:?}",
                self.id, self.voters
            ));
        }
        let unique: BTreeSet<_> = self.voters.iter().collect();
        if unique.len() != self.voters.len() || self.voters.iter().any(|v| v.0 == 0) {
            return Err(format!(
                "voter ids must be unique and non-zero: {:?}",
                self.voters
            ));
        }
        if self.election_timeout_ticks_min == 0
            || self.election_timeout_ticks_min > self.election_timeout_ticks_max
        {
            return Err("election timeout range must be non-empty and above 0".into());
        }
        if self.heartbeat_interval_ticks == 0
            || self.heartbeat_interval_ticks >= self.election_timeout_ticks_min
        {
            return Err("the heartbeat interval must be shorter than the election timeout".into());
        }
        if self.check_quorum && self.election_timeout_ticks_min < 2 * self.heartbeat_interval_ticks
        {
            return Err(
                "with CheckQuorum the election timeout must hold at least two heartbeats".into(),
            );
        }
        if self.inflight_appends_max == 0 || self.append_entries_max == 0 {
            return Err("in-flight and batch limits must be at least 1".into());
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Follower,
    /// Asking for pre-votes: its term is not raised yet.
    PreCandidate,
    Candidate,
    Leader,
}

/// Why a leadership transfer could not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferRejected {
    NotLeader(NotLeader),
    /// The target is not a voter of this cluster.
    UnknownNode(NodeId),
    /// No follower answered lately (none to pick).
    NoLiveFollower,
    /// A transfer to this node is under way.
    InProgress(NodeId),
}

/// Returned when only a leader could have done what was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotLeader {
    /// The leader this node knows of in its current term, if any.
    pub leader: Option<NodeId>,
}

/// Why a read could not be started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadRejected {
    NotLeader(NotLeader),
    /// A new leader has not yet committed an entry of its term, so it does not
    /// know the cluster's commit index. Retry shortly.
    NotReady,
}

/// A read that may be served once the state machine has applied `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReadState {
    pub context: u64,
    pub index: LogIndex,
}

/// What the driver must do with a `Ready`. Storage may work in the
/// background (etcd's asynchronous storage writes): the core hands each entry
/// to storage once and learns what is durable from [`Raft::persisted`].
/// 1. Hand `hard_state` (if any), `snapshot` (if any) and `entries` to
///    storage, in that order and after every earlier write, and sync.
///    `snapshot` names the snapshot this node received and accepted: storage
///    installs it (durably), keeping its log after it only if the log holds
///    the snapshot's last entry, and the state machine is reset from it
///    (at once: it is committed). Storage first truncates any stored suffix
///    from `entries[0].index`.
/// 2. Send `messages` at once. Hold `persisted_messages` until this write
///    is durable. The core sorts them: a leader's messages of a `Ready`
///    that changes no term or vote go at once (its own copy of the entries
///    need not be durable before its followers get them, thesis 10.2.1:
///    the core counts it only once persisted); every other message (a
///    candidate's RequestVote, anything in a `Ready` that raises the term
///    or casts a vote, anything a node that does not lead sends) depends
///    on the write. Answers to peer requests
///    (`handle_request_vote`, `handle_append_entries`) are held until the
///    first write handed out after they were made (and so every write
///    before it) is durable.
/// 3. Apply `committed` in order (committed means durable on a majority, so
///    this node's own copy need not be durable yet); serve `read_states`
///    once applied; fail the reads in `reads_dropped`.
/// 4. When a write is durable, call [`Raft::persisted`] with its last entry.
///    ([`Raft::advance`] does that for storage that writes synchronously.)
#[derive(Debug, Default)]
pub struct Ready {
    pub hard_state: Option<HardState>,
    pub snapshot: Option<SnapshotMeta>,
    pub entries: Vec<Entry>,
    /// May leave now, before this `Ready`'s write is durable.
    pub messages: Vec<(NodeId, Message)>,
    /// May leave only once this `Ready`'s write (and every earlier one) is
    /// durable.
    pub persisted_messages: Vec<(NodeId, Message)>,
    pub committed: Vec<Entry>,
    pub read_states: Vec<ReadState>,
    pub reads_dropped: Vec<u64>,
}

/// How many (longest) election timeouts a leader keeps replicating to a
/// removed node that has not caught up with its removal.
pub(super) const LEAVING_TICKS_ELECTIONS: u32 = 10;

/// One Raft node's consensus state. See the module documentation.
#[derive(Clone)]
pub struct Raft {
    config: Config,
    /// The configurations in the log, oldest first, as (index, term,
    /// configuration): the first is the one in force at the log's start
    /// (the snapshot's, or the bootstrap one at index 0), each later one a
    /// configuration entry. The last is in force: a configuration is in
    /// force as soon as it is in the log (thesis 4.1).
    configs: Vec<(LogIndex, Term, Membership)>,
    /// Every other member (voters and learners), sorted.
    peers: Vec<NodeId>,
    term: Term,
    vote: Option<NodeId>,
    role: Role,
    leader: Option<NodeId>,
    log: RaftLog,
    /// Highest index handed to the driver for application.
    applied: LogIndex,
    /// The newest snapshot storage holds durably (what a leader sends).
    snapshot: SnapshotMeta,
    /// A snapshot accepted from the leader, for the next `Ready`.
    snapshot_accepted: Option<SnapshotMeta>,
    rng: StdRng,
    election_elapsed_ticks: u32,
    election_timeout_ticks: u32,
    heartbeat_elapsed_ticks: u32,
    /// Each follower's progress (leader) and the votes granted (candidate).
    tracker: Tracker,
    /// Leader: ReadIndex rounds and the reads waiting on them.
    read_only: ReadOnly,
    /// Leader: new entries were proposed; send them at the next `ready`.
    is_broadcast_wanted: bool,
    messages: Vec<(NodeId, Message)>,
    read_states: Vec<ReadState>,
    reads_dropped: Vec<u64>,
    /// The hard state as last handed to storage by `ready`.
    hard_state_handed: HardState,
    /// Leader: the follower leadership is being handed to. No proposals are
    /// taken meanwhile; it aborts after an election timeout.
    transfer_target: Option<NodeId>,
    /// A leader's ticks since the configuration in force changed (at
    /// `leaving_index`): a removed node that has not caught up with its
    /// removal by `LEAVING_TICKS_ELECTIONS` election timeouts (it is down,
    /// or cut off) is no longer replicated to.
    leaving_ticks: u32,
    leaving_index: LogIndex,
    transfer_elapsed_ticks: u32,
}

impl Raft {
    /// A node restored from its durable state (empty for a new node), with
    /// no snapshot.
    pub fn new(config: Config, hard_state: HardState, entries: Vec<Entry>) -> Self {
        let membership = Membership::bootstrap(&config.voters);
        Raft::restore(
            config,
            hard_state,
            SnapshotMeta::default(),
            membership,
            entries,
        )
    }

    /// A node restored from its durable state: the hard state, the newest
    /// snapshot (the state machine is restored from it) with the
    /// configuration in force at it (without a snapshot: the bootstrap
    /// configuration, [`Membership::bootstrap`] of the voters, addresses
    /// filled in by the driver), and the log entries after it. A
    /// configuration entry that does not decode is refused.
    pub fn restore(
        config: Config,
        hard_state: HardState,
        snapshot: SnapshotMeta,
        membership: Membership,
        entries: Vec<Entry>,
    ) -> Self {
        if let Err(reason) = config.validate() {
            panic!("invalid raft config (validate before constructing): {reason}");
        }
        let mut configs = vec![(snapshot.index, snapshot.term, membership)];
        // Entries at or below the snapshot (a catch-up tail kept below it)
        // are in the snapshot's configuration already.
        for entry in entries.iter().filter(|e| e.index > snapshot.index) {
            if let Some(decoded) = entry.membership() {
                let membership = decoded.unwrap_or_else(|reason| {
                    panic!(
                        "the log's configuration entry {} does not decode: {reason} \
                         (storage checks entries before they are recovered)",
                        entry.index
                    )
                });
                configs.push((entry.index, entry.term, membership));
            }
        }
        // A snapshot is written beside the disk queue, so it can be durable
        // while the hard state of its term is not yet: the node heard of that
        // term but never answered in it (answers wait for the hard state),
        // so it resumes in that term without a vote.
        let durable_hard_state = hard_state;
        let hard_state = if snapshot.term > hard_state.term {
            HardState {
                term: snapshot.term,
                vote: None,
            }
        } else {
            hard_state
        };
        let rng =
            StdRng::seed_from_u64(config.seed ^ config.id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut raft = Raft {
            configs,
            peers: Vec::new(),
            term: hard_state.term,
            vote: hard_state.vote,
            role: Role::Follower,
            leader: None,
            log: RaftLog::recovered(snapshot, entries),
            applied: snapshot.index,
            snapshot,
            snapshot_accepted: None,
            rng,
            election_elapsed_ticks: 0,
            election_timeout_ticks: 0,
            heartbeat_elapsed_ticks: 0,
            tracker: Tracker::default(),
            read_only: ReadOnly::default(),
            is_broadcast_wanted: false,
            messages: Vec::new(),
            read_states: Vec::new(),
            reads_dropped: Vec::new(),
            // What storage holds: a raised term goes out with the first write.
            hard_state_handed: durable_hard_state,
            transfer_target: None,
            transfer_elapsed_ticks: 0,
            leaving_ticks: 0,
            leaving_index: LogIndex(0),
            config,
        };
        assert!(
            raft.log.last_term() <= raft.term,
            "recovered log has entries of term {} beyond the recovered term {}",
            raft.log.last_term(),
            raft.term
        );
        raft.configuration_changed();
        raft.reset_election_timer();
        raft
    }

    pub fn id(&self) -> NodeId {
        self.config.id
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn term(&self) -> Term {
        self.term
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    /// Leader: the node leadership is being transferred to, if any.
    pub fn transfer_target(&self) -> Option<NodeId> {
        self.transfer_target
    }
    pub fn log(&self) -> &RaftLog {
        &self.log
    }
    /// The newest durable snapshot, as last reported by the driver.
    pub fn snapshot(&self) -> SnapshotMeta {
        self.snapshot
    }
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
        }
    }

    /// The configuration in force: the newest in the log, committed or not.
    pub fn membership(&self) -> &Membership {
        &self
            .configs
            .last()
            .expect("a configuration is always known")
            .2
    }

    /// The index of the newest configuration entry (or of the snapshot or
    /// the bootstrap that holds the configuration in force).
    pub fn membership_index(&self) -> LogIndex {
        self.configs
            .last()
            .expect("a configuration is always known")
            .0
    }

    /// Every node this one talks to: the other members of the
    /// configurations in force and committed, and, on a leader, a node
    /// being removed until it learned of it.
    pub fn peers(&self) -> &[NodeId] {
        &self.peers
    }

    /// Changes whenever the configuration in force or the committed one
    /// does: (index and term of the one in force, index of the committed
    /// one).
    pub fn membership_version(&self) -> (LogIndex, Term, LogIndex) {
        let (index, term, _) = self
            .configs
            .last()
            .expect("a configuration is always known");
        let commit = self.log.commit();
        let committed = self
            .configs
            .iter()
            .rev()
            .find(|(at, _, _)| *at <= commit)
            .map_or(LogIndex(0), |(at, _, _)| *at);
        (*index, *term, committed)
    }

    /// The configuration in force at `index` (what a snapshot ending there
    /// carries). `index` must be at or after the log's start.
    pub fn membership_at(&self, index: LogIndex) -> &Membership {
        &self
            .configs
            .iter()
            .rev()
            .find(|(at, _, _)| *at <= index)
            .unwrap_or(&self.configs[0])
            .2
    }

    fn is_voter(&self) -> bool {
        self.membership().is_voter(self.config.id)
    }

    /// The votes and acknowledgements that make a majority, of voters
    /// only: learners never count.
    fn voter_peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        let membership = self.membership();
        self.peers
            .iter()
            .copied()
            .filter(move |&peer| membership.is_voter(peer))
    }

    /// Feeds the protocol state into `state`, with every node id passed
    /// through `rename`: the model checker (`tests/model.rs`) tells states
    /// apart by it, up to a permutation of node ids. Left out: the identity
    /// and configuration (the model knows them by position), and the timers
    /// and their RNG (the model fires timeouts as its own choices).
    pub fn hash_protocol_state<H: Hasher>(&self, state: &mut H, rename: &dyn Fn(NodeId) -> NodeId) {
        self.term.hash(state);
        self.vote.map(rename).hash(state);
        self.role.hash(state);
        self.leader.map(rename).hash(state);
        self.log.hash(state);
        self.applied.hash(state);
        self.snapshot.hash(state);
        self.snapshot_accepted.hash(state);
        let mut votes: Vec<NodeId> = self.tracker.votes.iter().copied().map(rename).collect();
        votes.sort_unstable();
        votes.hash(state);
        let mut progress: Vec<(NodeId, &Progress)> = self
            .tracker
            .progress
            .iter()
            .map(|(&peer, progress)| (rename(peer), progress))
            .collect();
        progress.sort_unstable_by_key(|&(peer, _)| peer);
        progress.hash(state);
        self.read_only.hash(state);
        self.is_broadcast_wanted.hash(state);
        let mut messages: Vec<(NodeId, Message)> = self
            .messages
            .iter()
            .map(|(to, message)| (rename(*to), message.renamed(rename)))
            .collect();
        messages.sort_unstable_by_key(|(to, _)| *to);
        messages.hash(state);
        self.read_states.hash(state);
        self.reads_dropped.hash(state);
        self.hard_state_handed.term.hash(state);
        self.hard_state_handed.vote.map(rename).hash(state);
        self.transfer_target.map(rename).hash(state);
        for (index, term, membership) in &self.configs {
            (index, term).hash(state);
            let mut members: Vec<(NodeId, bool)> = membership
                .members
                .iter()
                .map(|(&id, member)| (rename(id), member.is_learner))
                .collect();
            members.sort_unstable();
            members.hash(state);
            let mut removed: Vec<NodeId> = membership.removed.iter().copied().map(rename).collect();
            removed.sort_unstable();
            removed.hash(state);
        }
    }

    fn quorum(&self) -> usize {
        self.membership().quorum()
    }

    /// The configuration in force changed (appended, truncated, installed,
    /// or committed), or a node being removed caught up: who to talk to,
    /// and a leader's view of them. Peers are the members of the
    /// configuration in force and of the committed one, and, on a leader,
    /// a removed node until it holds its removal and the leader has told it
    /// the removal committed (so it learns of it, and stops). Only the
    /// voters in force count.
    fn configuration_changed(&mut self) {
        let id = self.config.id;
        if self.leaving_index != self.membership_index() {
            self.leaving_index = self.membership_index();
            self.leaving_ticks = 0;
        }
        let is_leaving_expired = self.leaving_ticks >= self.leaving_ticks_max();
        let committed = self.membership_at(self.log.commit());
        let mut peers: Vec<NodeId> = self
            .membership()
            .members
            .keys()
            .chain(committed.members.keys())
            .copied()
            .filter(|&member| member != id)
            .collect();
        if self.role == Role::Leader {
            let index = self.membership_index();
            let is_committed = index <= self.log.commit();
            let leaving: Vec<(NodeId, bool)> = self
                .tracker
                .progress
                .iter()
                .filter(|(peer, _)| !peers.contains(peer))
                .map(|(&peer, p)| (peer, is_committed && p.match_index >= index))
                .collect();
            for (peer, is_done) in leaving {
                if is_done {
                    // Its last message: it holds the removal, and this says
                    // the removal committed.
                    self.send_heartbeat(peer);
                } else if is_leaving_expired {
                    // It learns of its removal from the first member it
                    // talks to (which refuses it), or never talks again.
                    warn!(
                        peer = peer.0,
                        "a removed node did not catch up with its removal: no longer replicating to it"
                    );
                } else {
                    peers.push(peer);
                }
            }
        }
        peers.sort_unstable();
        peers.dedup();
        self.peers = peers;
        if self.role == Role::Leader {
            let next = self.log.last_index().next();
            let inflight_max = self.config.inflight_appends_max;
            let peers = &self.peers;
            self.tracker.progress.retain(|peer, _| peers.contains(peer));
            for &peer in &self.peers {
                self.tracker
                    .progress
                    .entry(peer)
                    .or_insert_with(|| Progress::new(next, inflight_max));
            }
            if let Some(target) = self.transfer_target {
                if !self.membership().is_voter(target) {
                    self.transfer_target = None;
                }
            }
        }
    }

    fn leaving_ticks_max(&self) -> u32 {
        LEAVING_TICKS_ELECTIONS * self.config.election_timeout_ticks_max
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed_ticks = 0;
        self.election_timeout_ticks = self.rng.random_range(
            self.config.election_timeout_ticks_min..=self.config.election_timeout_ticks_max,
        );
    }

    // ------------------------------------------------------------ time

    /// One unit of logical time passed.
    pub fn tick(&mut self) {
        match self.role {
            Role::Leader => {
                self.heartbeat_elapsed_ticks += 1;
                if self.heartbeat_elapsed_ticks >= self.config.heartbeat_interval_ticks {
                    self.heartbeat_elapsed_ticks = 0;
                    self.broadcast_heartbeat();
                }
                if self.transfer_target.is_some() {
                    self.transfer_elapsed_ticks += 1;
                    if self.transfer_elapsed_ticks >= self.config.election_timeout_ticks_min {
                        warn!(
                            target = self.transfer_target.map_or(0, |t| t.0),
                            "leadership transfer timed out: aborted, taking proposals again"
                        );
                        crate::probe!(TransferAborted);
                        self.transfer_target = None;
                    }
                }
                self.leaving_ticks = self.leaving_ticks.saturating_add(1);
                if self.leaving_ticks == self.leaving_ticks_max() {
                    self.configuration_changed();
                }
                // The leader's election timer counts toward its CheckQuorum.
                self.election_elapsed_ticks += 1;
                if self.election_elapsed_ticks >= self.config.election_timeout_ticks_min {
                    self.election_elapsed_ticks = 0;
                    self.check_quorum();
                }
            }
            Role::Follower | Role::PreCandidate | Role::Candidate => {
                self.election_elapsed_ticks += 1;
                if self.election_elapsed_ticks >= self.election_timeout_ticks && !self.is_voter() {
                    // A learner, a node removed or one still joining: it
                    // never campaigns.
                    self.role = Role::Follower;
                    self.reset_election_timer();
                    self.probe_removal();
                    return;
                }
                if self.election_elapsed_ticks >= self.election_timeout_ticks {
                    if self.config.pre_vote {
                        self.pre_campaign();
                    } else {
                        self.campaign(false);
                    }
                }
            }
        }
    }

    /// Every election timeout: who answered in it. With CheckQuorum, steps
    /// down unless a majority (counting us) did; its clients are then told
    /// to go elsewhere.
    fn check_quorum(&mut self) {
        let active = usize::from(self.is_voter())
            + self
                .voter_peers()
                .filter(|peer| {
                    self.tracker
                        .progress
                        .get(peer)
                        .is_some_and(|p| p.recent_active)
                })
                .count();
        for progress in self.tracker.progress.values_mut() {
            progress.was_active = progress.recent_active;
            progress.recent_active = false;
        }
        if self.config.check_quorum
            && active < self.quorum()
            && !is_planted(Bug::CheckQuorumNeverStepsDown)
        {
            warn!(
                term = self.term.0,
                active,
                quorum = self.quorum(),
                "CheckQuorum: a majority has not answered within an election timeout: stepping down"
            );
            crate::probe!(CheckQuorumStepDown);
            self.become_follower(self.term, None);
        }
    }

    // ------------------------------------------------------------ roles

    /// The vote lease: this node heard from a live leader (or is one) within
    /// the minimum election timeout, so a vote or pre-vote for someone else
    /// would only disrupt it. Needs CheckQuorum: a leader that lost its
    /// majority steps down and stops renewing leases (else a leader that
    /// reaches only one follower keeps that follower from ever voting: the
    /// deadlock of openraft #2080).
    fn is_in_lease(&self) -> bool {
        self.config.check_quorum
            && self.leader.is_some()
            && self.election_elapsed_ticks < self.config.election_timeout_ticks_min
    }

    /// PreVote (thesis 9.6): asks whether a majority would vote for us in the
    /// next term, changing nothing durable. Forgets the leader, so that this
    /// node grants pre-votes as readily as it asks for them (etcd PR #8334:
    /// two followers of a dead leader, each still "in lease" for the other,
    /// would refuse each other forever).
    fn pre_campaign(&mut self) {
        self.role = Role::PreCandidate;
        self.leader = None;
        self.drop_leader_state();
        self.tracker.votes = BTreeSet::from([self.config.id]);
        self.reset_election_timer();
        info!(term = self.term.0, "election timeout: asking for pre-votes");
        if self.tracker.is_vote_won(self.quorum()) {
            self.campaign(false);
            return;
        }
        self.request_votes(Term(self.term.0.saturating_add(1)), true, false);
    }

    /// Campaigns in the next term. `transfer`: the leader handed over
    /// (`TimeoutNow`): no pre-vote, and the others' lease does not apply.
    fn campaign(&mut self, transfer: bool) {
        let is_same_term = transfer && is_planted(Bug::TransferCampaignsInSameTerm);
        if !is_same_term {
            self.term = Term(
                self.term
                    .0
                    .checked_add(1)
                    .expect("terms stay far below u64::MAX: the transport refuses larger ones"),
            );
        }
        self.vote = Some(self.config.id);
        self.role = Role::Candidate;
        self.leader = None;
        self.drop_leader_state();
        if !is_planted(Bug::PreVotesCountedInElection) {
            self.tracker.votes.clear();
        }
        self.tracker.votes.insert(self.config.id);
        self.reset_election_timer();
        info!(term = self.term.0, transfer, "campaigning");
        if self.tracker.is_vote_won(self.quorum()) {
            self.become_leader();
            return;
        }
        self.request_votes(self.term, false, transfer);
    }

    /// A node that is no voter (a learner, or one its log removes) heard no
    /// leader for an election timeout: it may have been removed without
    /// learning it (the leader that was telling it gave up, or a new one
    /// does not know it). It asks the members of its configuration for a
    /// pre-vote it never uses (it stays a follower, and a pre-vote binds
    /// nobody): a member that applied its removal refuses it as removed,
    /// and it stops (the transport and the driver); one that did not
    /// answers as to any pre-vote. A joining node knows no members yet.
    fn probe_removal(&mut self) {
        let request = self.vote_request(Term(self.term.0.saturating_add(1)), true, false);
        let members: Vec<NodeId> = self
            .membership()
            .members
            .keys()
            .copied()
            .filter(|&m| m != self.config.id)
            .collect();
        debug!(
            ?members,
            "no voter and no leader heard: asking the members whether this node was removed"
        );
        for member in members {
            self.messages
                .push((member, Message::RequestVote(request.clone())));
        }
    }

    fn vote_request(&self, term: Term, pre_vote: bool, transfer: bool) -> RequestVote {
        RequestVote {
            term,
            candidate: self.config.id,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            pre_vote,
            transfer,
        }
    }

    fn request_votes(&mut self, term: Term, pre_vote: bool, transfer: bool) {
        let request = self.vote_request(term, pre_vote, transfer);
        let voters: Vec<NodeId> = self.voter_peers().collect();
        for peer in voters {
            self.messages
                .push((peer, Message::RequestVote(request.clone())));
        }
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        assert!(term >= self.term, "terms never go backwards");
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        if self.role != Role::Follower || self.leader != leader {
            info!(
                term = term.0,
                leader = %leader.map_or("unknown".to_string(), |l| l.to_string()),
                "following"
            );
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.drop_leader_state();
        self.reset_election_timer();
    }

    fn become_leader(&mut self) {
        assert!(
            self.role == Role::Candidate && self.vote == Some(self.config.id),
            "election safety: only a candidate that voted for itself in term {} may lead",
            self.term
        );
        self.role = Role::Leader;
        self.leader = Some(self.config.id);
        self.heartbeat_elapsed_ticks = 0;
        self.leaving_ticks = 0;
        self.election_elapsed_ticks = 0;
        let next = self.log.last_index().next();
        let inflight_max = self.config.inflight_appends_max;
        self.tracker.progress = self
            .peers
            .iter()
            .map(|&peer| (peer, Progress::new(next, inflight_max)))
            .collect();
        info!(
            term = self.term.0,
            last_index = self.log.last_index().0,
            "became leader"
        );
        // The no-op of this term: lets the leader commit (figure 8) and serve reads.
        self.log.push(Entry {
            term: self.term,
            index: next,
            data: Vec::new(),
        });
        self.is_broadcast_wanted = true;
        self.maybe_commit();
    }

    /// Forgets what only a leader keeps; reads waiting on a round are dropped.
    fn drop_leader_state(&mut self) {
        self.tracker.progress.clear();
        self.transfer_target = None;
        self.is_broadcast_wanted = false;
        if is_planted(Bug::PendingReadsServedOnStepDown) {
            self.read_only.release(u64::MAX, &mut self.read_states);
        }
        self.read_only.drop_all(&mut self.reads_dropped);
    }

    // ------------------------------------------------------------ voting

    /// A candidate asks for our vote (or pre-vote). The response must be
    /// sent only after the next `Ready` is persisted (it may carry a new term
    /// and vote).
    pub fn handle_request_vote(&mut self, request: RequestVote) -> RequestVoteResponse {
        let reject = |term| RequestVoteResponse {
            term,
            vote_granted: false,
            pre_vote: request.pre_vote,
        };
        if request.term > self.term && !request.transfer && self.is_in_lease() {
            // Ignored: answered at our own (lower) term, which the
            // candidate discards, so nothing here changes.
            debug!(
                candidate = request.candidate.0,
                term = request.term.0,
                pre_vote = request.pre_vote,
                "vote requested while a leader is live: ignored (vote lease)"
            );
            crate::probe!(VoteIgnoredInLease);
            return reject(self.term);
        }
        if request.pre_vote {
            // Never changes our term, vote or timer. A rejection carries our
            // term: a pre-candidate behind it learns it and can campaign
            // above it next time (etcd #8501 and openraft #1796: else a
            // longer log on a lower term and a shorter one on a higher term
            // refuse each other forever).
            let granted = request.term > self.term && self.is_log_up_to_date(&request);
            crate::probe!(PreVoteRefused, if !granted);
            debug!(
                candidate = request.candidate.0,
                term = request.term.0,
                granted,
                "pre-vote requested"
            );
            return RequestVoteResponse {
                term: if granted { request.term } else { self.term },
                vote_granted: granted,
                pre_vote: true,
            };
        }
        if request.term > self.term {
            // A follower or candidate keeps its election timer: only a vote
            // granted or a leader heard restarts it (Raft figure 2). Else a
            // candidate whose log is behind, on a fast clock, would keep
            // every up-to-date node from ever campaigning.
            let timer = (self.election_elapsed_ticks, self.election_timeout_ticks);
            let is_leader = self.role == Role::Leader;
            self.become_follower(request.term, None);
            if !is_leader {
                (self.election_elapsed_ticks, self.election_timeout_ticks) = timer;
            }
        }
        let vote_granted = request.term == self.term
            && (self.vote.is_none_or(|v| v == request.candidate)
                || is_planted(Bug::TwoVotesInOneTerm))
            && self.is_log_up_to_date(&request);
        if vote_granted {
            self.vote = Some(request.candidate);
            if self.role == Role::PreCandidate {
                // It helps elect another in its own term: it follows now,
                // rather than campaign past the one it voted for.
                self.role = Role::Follower;
            }
            self.reset_election_timer();
        }
        debug!(
            candidate = request.candidate.0,
            term = request.term.0,
            vote_granted,
            "vote requested"
        );
        RequestVoteResponse {
            term: self.term,
            vote_granted,
            pre_vote: false,
        }
    }

    /// The candidate's log is at least as up to date as ours (5.4.1: a
    /// higher last term wins, equal last terms compare last indexes). One
    /// rule for votes and pre-votes alike.
    fn is_log_up_to_date(&self, request: &RequestVote) -> bool {
        (request.last_log_term, request.last_log_index)
            >= (self.log.last_term(), self.log.last_index())
            || is_planted(Bug::VoteForOlderLog)
    }

    pub fn handle_request_vote_response(&mut self, from: NodeId, response: RequestVoteResponse) {
        // A granted pre-vote carries the term we would campaign in.
        let is_pre_vote_grant = response.pre_vote && response.vote_granted;
        if response.term > self.term && !is_pre_vote_grant {
            self.become_follower(response.term, None);
            return;
        }
        if !response.vote_granted {
            return;
        }
        let is_counted = if response.pre_vote {
            self.role == Role::PreCandidate && response.term == Term(self.term.0 + 1)
        } else {
            self.role == Role::Candidate
                && (response.term == self.term || is_planted(Bug::StaleVoteCounted))
        };
        if !is_counted {
            crate::probe!(StaleVoteResponseIgnored);
            return;
        }
        if from == self.config.id || !self.membership().is_voter(from) {
            warn!(
                from = from.0,
                "vote from a node that is not a voter: ignored"
            );
            return;
        }
        self.tracker.votes.insert(from);
        if self.tracker.is_vote_won(self.quorum()) {
            if self.role == Role::PreCandidate {
                self.campaign(false);
            } else {
                self.become_leader();
            }
        }
    }

    // ------------------------------------------------------------ replication

    /// A leader's AppendEntries. The response must be sent only after the next
    /// `Ready` is persisted (it acknowledges entries and may carry a new term).
    pub fn handle_append_entries(&mut self, request: AppendEntries) -> AppendEntriesResponse {
        let mut response = AppendEntriesResponse {
            term: self.term,
            success: false,
            match_index: LogIndex(0),
            conflict_term: Term(0),
            conflict_index: LogIndex(0),
            read_round: request.read_round,
            rejected_index: request.prev_log_index,
        };
        if request.term < self.term {
            crate::probe!(StaleAppendEntriesRefused);
            return response;
        }
        if request.term == self.term && self.role == Role::Leader {
            warn!(
                other = request.leader.0,
                term = self.term.0,
                "AppendEntries from another leader of my own term: rejected (misconfigured ids?)"
            );
            return response;
        }
        if request.term > self.term
            || self.role != Role::Follower
            || self.leader != Some(request.leader)
        {
            self.become_follower(request.term, Some(request.leader));
        }
        self.election_elapsed_ticks = 0;
        response.term = self.term;

        let mut request = request;
        let offset = self.log.offset();
        if request.prev_log_index < offset.index {
            // Anchored inside our snapshot (a late message, or a leader that
            // does not know we installed one). Everything up to the snapshot
            // is committed, so the leader holds it too: re-anchor there.
            request.entries.retain(|e| e.index > offset.index);
            request.prev_log_index = offset.index;
            request.prev_log_term = offset.term;
        }
        let prev = request.prev_log_index;
        match self.log.term(prev) {
            None => {
                response.conflict_index = self.log.last_index().next();
                return response;
            }
            Some(term) if term != request.prev_log_term => {
                response.conflict_term = term;
                response.conflict_index = self.log.first_index_of_term_at(prev);
                return response;
            }
            Some(_) => {}
        }
        let configs = match self.validate_entries(&request) {
            Ok(configs) => configs,
            Err(reason) => {
                warn!(leader = request.leader.0, %reason, "malformed AppendEntries: rejected");
                response.conflict_index = self.log.commit().next();
                return response;
            }
        };
        let last_given = self.log.merge(request.entries).unwrap_or(prev);
        self.reconcile_configs(configs);
        if is_planted(Bug::CommitPastVerifiedMatch) {
            self.log
                .commit_to(request.leader_commit.min(self.log.last_index()));
        }
        self.log.commit_to(request.leader_commit.min(last_given));
        response.success = true;
        response.match_index = last_given;
        response
    }

    /// The leader sent its snapshot, ending at `snapshot`. Installed only if
    /// it is past this node's commit index (an older one, late or duplicated,
    /// would move the state machine back and cut acknowledged entries).
    /// Returns the answer, held like an AppendEntries answer until the next
    /// `Ready` is persisted, and whether it was accepted: then the next
    /// `Ready` carries it, and the driver installs the data it received.
    pub fn handle_install_snapshot(
        &mut self,
        request: InstallSnapshot,
        snapshot: SnapshotMeta,
        membership: Membership,
    ) -> (AppendEntriesResponse, bool) {
        let append = AppendEntries {
            term: request.term,
            leader: request.leader,
            prev_log_index: self.log.commit(),
            prev_log_term: self.log.term(self.log.commit()).unwrap_or_default(),
            entries: Vec::new(),
            leader_commit: LogIndex(0),
            read_round: request.read_round,
        };
        // The term checks and the step down are AppendEntries' own: an
        // empty one anchored at our commit index (always present, always
        // matching a current leader's log) answers "I hold up to my commit".
        let mut response = self.handle_append_entries(append);
        if !response.success {
            return (response, false);
        }
        let is_older = snapshot.index <= self.log.commit();
        if is_older && !is_planted(Bug::InstallSnapshotOlderThanCommit) {
            crate::probe!(SnapshotOlderThanCommitRefused);
            debug!(
                index = snapshot.index.0,
                commit = self.log.commit().0,
                "snapshot at or below the commit index: not installed"
            );
            return (response, false);
        }
        if snapshot.term > self.term || snapshot.index.0 == 0 {
            warn!(
                index = snapshot.index.0,
                term = snapshot.term.0,
                "snapshot from the future or empty: refused"
            );
            response.success = false;
            response.rejected_index = LogIndex(0);
            return (response, false);
        }
        info!(
            index = snapshot.index.0,
            term = snapshot.term.0,
            commit = self.log.commit().0,
            "installing the leader's snapshot"
        );
        crate::probe!(
            SnapshotInstalledKeepingLog,
            if self.log.term(snapshot.index) == Some(snapshot.term)
        );
        crate::probe!(
            SnapshotInstalledReplacingLog,
            if self.log.term(snapshot.index) != Some(snapshot.term)
        );
        self.log.install(snapshot);
        let log = &self.log;
        self.configs
            .retain(|(index, term, _)| *index > snapshot.index && log.term(*index) == Some(*term));
        self.configs
            .insert(0, (snapshot.index, snapshot.term, membership));
        self.configuration_changed();
        self.applied = snapshot.index;
        self.snapshot_accepted = Some(snapshot);
        response.match_index = snapshot.index;
        (response, true)
    }

    /// Bad input never reaches the log: entries must follow `prev` one by one,
    /// with terms that never decrease and never pass the leader's, and must not
    /// contradict a committed entry; configuration entries must decode.
    /// Returns the configurations among them.
    fn validate_entries(
        &self,
        request: &AppendEntries,
    ) -> Result<Vec<(LogIndex, Term, Membership)>, String> {
        let mut configs = Vec::new();
        let mut expected_index = request.prev_log_index.next();
        let mut term_min = request.prev_log_term;
        for entry in &request.entries {
            if entry.index != expected_index {
                return Err(format!(
                    "entry index {} where {} was expected",
                    entry.index, expected_index
                ));
            }
            if entry.term < term_min || entry.term > request.term {
                return Err(format!(
                    "entry {} has out-of-order term {}",
                    entry.index, entry.term
                ));
            }
            if entry.index <= self.log.commit() && self.log.term(entry.index) != Some(entry.term) {
                return Err(format!(
                    "entry {} of term {} contradicts a committed entry",
                    entry.index, entry.term
                ));
            }
            if let Some(decoded) = entry.membership() {
                let membership = decoded.map_err(|reason| {
                    format!(
                        "configuration entry {} does not decode: {reason}",
                        entry.index
                    )
                })?;
                configs.push((entry.index, entry.term, membership));
            }
            term_min = entry.term;
            expected_index = expected_index.next();
        }
        Ok(configs)
    }

    /// After the log changed on a follower: forgets the configurations
    /// whose entries were truncated away, and adds `appended` (the
    /// configuration entries just given, which may or may not be new).
    fn reconcile_configs(&mut self, appended: Vec<(LogIndex, Term, Membership)>) {
        let version = |configs: &[(LogIndex, Term, Membership)]| {
            configs.last().map(|(index, term, _)| (*index, *term))
        };
        let before = version(&self.configs);
        let offset = self.log.offset().index;
        let log = &self.log;
        // The first is at or before the log's start: always kept.
        self.configs
            .retain(|(index, term, _)| *index <= offset || log.term(*index) == Some(*term));
        for (index, term, membership) in appended {
            if index > self.membership_index() && self.log.term(index) == Some(term) {
                self.configs.push((index, term, membership));
            }
        }
        // The index alone may stay: a truncated configuration replaced by
        // another at the same index.
        if version(&self.configs) != before {
            info!(
                index = self.membership_index().0,
                configuration = %self.membership(),
                "configuration changed"
            );
            self.configuration_changed();
        }
    }

    pub fn handle_append_entries_response(
        &mut self,
        from: NodeId,
        response: AppendEntriesResponse,
    ) {
        if response.term > self.term {
            self.become_follower(response.term, None);
            return;
        }
        if self.role != Role::Leader || response.term != self.term {
            crate::probe!(AnswerAfterLeadershipChange);
            return;
        }
        let last_index = self.log.last_index();
        let Some(progress) = self.tracker.progress.get_mut(&from) else {
            warn!(
                from = from.0,
                "AppendEntries response from a node that is not a peer: ignored"
            );
            return;
        };
        // Any answer in our term proves `from` accepted us as leader then.
        crate::probe!(
            ReadRoundAnswerOutdated,
            if self
                .read_only
                .oldest_waiting_round()
                .is_some_and(|round| response.read_round < round)
        );
        progress.read_round_acked = if is_planted(Bug::ReadConfirmedByEarlierAnswers) {
            self.read_only.round()
        } else {
            progress
                .read_round_acked
                .max(response.read_round.min(self.read_only.round()))
        };
        progress.recent_active = true;
        if progress.snapshot_pending().is_some()
            && (!response.success || response.match_index < self.log.offset().index)
        {
            // A snapshot is out: answers to heartbeats meanwhile say nothing
            // new (resending the snapshot on each is hashicorp/raft #212's
            // loop). Only the snapshot's own answer, or a failure, moves on.
            if response.success {
                progress.acknowledge_match(response.match_index);
            }
            self.release_reads();
            return;
        }
        if response.success {
            if response.match_index > last_index {
                warn!(
                    from = from.0,
                    match_index = response.match_index.0,
                    "match index beyond my log: ignored"
                );
                return;
            }
            if progress.acknowledge(response.match_index) {
                self.maybe_commit();
                if !self.membership().contains(from) && self.role == Role::Leader {
                    // A node being removed: done once it holds the removal.
                    self.configuration_changed();
                }
                // Sent once, when the target's log first matches ours.
                if self.transfer_target == Some(from) {
                    self.maybe_send_timeout_now();
                }
            }
        } else if response.rejected_index < progress.match_index {
            // A rejection of an old message overtaken by later successes.
            return;
        } else {
            if response.rejected_index == progress.match_index && progress.match_index.0 > 0 {
                // It refused the very entry it had acknowledged: it lost
                // durable data (a replaced disk) or a message was reordered.
                warn!(
                    from = from.0,
                    match_index = progress.match_index.0,
                    "follower rejected entries it had acknowledged: probing back below its match index"
                );
                progress.forget_match();
            }
            let next = if response.conflict_term.0 > 0 {
                self.log
                    .last_index_of_term(response.conflict_term)
                    .map_or(response.conflict_index, |i| i.next())
            } else {
                response.conflict_index
            };
            let next = next.min(last_index.next()).max(LogIndex(1));
            debug!(
                from = from.0,
                next_index = next.0,
                "AppendEntries rejected: probing back"
            );
            progress.probe_from(next);
        }
        self.send_append(from);
        self.release_reads();
    }

    /// The driver could not deliver a message to `peer` (or got no answer).
    /// A snapshot being sent is not affected: it has its own report,
    /// [`Raft::report_snapshot_failed`].
    pub fn report_unreachable(&mut self, peer: NodeId) {
        if let Some(progress) = self.tracker.progress.get_mut(&peer) {
            if progress.state == ProgressState::Replicate {
                let next = progress.match_index.next();
                progress.probe_from(next);
            }
        }
    }

    /// Sending the snapshot to `peer` failed (or its answer was lost): probe
    /// again, which sends a snapshot again if it still needs one, but not
    /// before the next heartbeat interval (as etcd does): a peer that refuses
    /// connections was otherwise sent snapshots as fast as the leader had
    /// reasons to send (thousands a second under writes, seen live).
    pub fn report_snapshot_failed(&mut self, peer: NodeId) {
        if let Some(progress) = self.tracker.progress.get_mut(&peer) {
            if progress.snapshot_pending().is_some() {
                let next = progress.match_index.next();
                progress.probe_from(next);
                progress.is_probe_sent = true;
            }
        }
    }

    /// Sends entries to `peer` if there are any and it is not paused. Returns
    /// whether a message was queued.
    fn send_append(&mut self, peer: NodeId) -> bool {
        let last_index = self.log.last_index();
        let Some(progress) = self.tracker.progress.get_mut(&peer) else {
            return false;
        };
        if progress.is_paused() {
            return false;
        }
        let next = progress.next_index;
        if progress.state == ProgressState::Replicate && next > last_index {
            return false;
        }
        let prev = next.prev();
        let Some(prev_term) = self.log.term(prev) else {
            // Compacted away: the follower needs the snapshot.
            assert!(
                prev < self.log.offset().index,
                "next index is at most last index + 1"
            );
            debug!(
                to = peer.0,
                next_index = next.0,
                snapshot = self.snapshot.index.0,
                "follower's next entry is compacted away: sending the snapshot"
            );
            progress.snapshot_sent(self.snapshot.index);
            self.messages.push((
                peer,
                Message::InstallSnapshot(InstallSnapshot {
                    term: self.term,
                    leader: self.config.id,
                    read_round: self.read_only.round(),
                }),
            ));
            return true;
        };
        let entries = self.log.slice(
            next,
            last_index,
            self.config.append_entries_max,
            self.config.append_bytes_max,
        );
        let last_sent = entries.last().map_or(prev, |e| e.index);
        progress.sent(last_sent);
        self.messages.push((
            peer,
            Message::AppendEntries(AppendEntries {
                term: self.term,
                leader: self.config.id,
                prev_log_index: prev,
                prev_log_term: prev_term,
                entries,
                leader_commit: self.log.commit(),
                read_round: self.read_only.round(),
            }),
        ));
        true
    }

    /// An empty AppendEntries anchored at what `peer` is known to hold, so it
    /// always succeeds on a healthy follower (or, if that was compacted away,
    /// at the compaction point).
    fn send_heartbeat(&mut self, peer: NodeId) {
        let Some(progress) = self.tracker.progress.get(&peer) else {
            return;
        };
        let prev = progress.match_index.max(self.log.offset().index);
        let prev_term = self
            .log
            .term(prev)
            .expect("a follower's match index is in the leader's log");
        self.messages.push((
            peer,
            Message::AppendEntries(AppendEntries {
                term: self.term,
                leader: self.config.id,
                prev_log_index: prev,
                prev_log_term: prev_term,
                entries: Vec::new(),
                leader_commit: self.log.commit(),
                read_round: self.read_only.round(),
            }),
        ));
    }

    fn broadcast_heartbeat(&mut self) {
        for peer in self.peers.clone() {
            if let Some(progress) = self.tracker.progress.get_mut(&peer) {
                progress.heartbeat();
            }
            if !self.send_append(peer) {
                self.send_heartbeat(peer);
            }
        }
    }

    // ------------------------------------------------------------ leadership transfer

    /// Hands leadership to `target` (thesis 3.10), or, if `None`, to the
    /// most up-to-date follower. Proposals are refused meanwhile (clients
    /// retry: nothing is lost); the target is brought up to date and then
    /// told to campaign at once (`TimeoutNow`). Aborts after an election
    /// timeout. Returns the target.
    pub fn transfer_leadership(
        &mut self,
        target: Option<NodeId>,
    ) -> Result<NodeId, TransferRejected> {
        if self.role != Role::Leader {
            return Err(TransferRejected::NotLeader(NotLeader {
                leader: self.leader,
            }));
        }
        if self.voter_peers().next().is_none() {
            return Ok(self.config.id);
        }
        let membership = self.membership();
        let target = match target {
            Some(target) => target,
            // The most up-to-date voter heard from lately (the lowest id
            // among equals): a crashed one may still show a full match.
            None => match self
                .tracker
                .progress
                .iter()
                .filter(|(&peer, p)| membership.is_voter(peer) && (p.recent_active || p.was_active))
                .max_by_key(|(&peer, p)| (p.match_index, std::cmp::Reverse(peer)))
            {
                Some((&peer, _)) => peer,
                None => return Err(TransferRejected::NoLiveFollower),
            },
        };
        if target == self.config.id {
            return Ok(target);
        }
        if !self.membership().is_voter(target) {
            return Err(TransferRejected::UnknownNode(target));
        }
        match self.transfer_target {
            Some(pending) if pending == target => return Ok(target),
            Some(pending) => return Err(TransferRejected::InProgress(pending)),
            None => {}
        }
        info!(
            target = target.0,
            term = self.term.0,
            "transferring leadership: proposals paused"
        );
        self.transfer_target = Some(target);
        self.transfer_elapsed_ticks = 0;
        self.maybe_send_timeout_now();
        Ok(target)
    }

    /// During a transfer: tells the target to campaign if its log matches
    /// ours, else sends it what it lacks.
    fn maybe_send_timeout_now(&mut self) {
        let Some(target) = self.transfer_target else {
            return;
        };
        let Some(progress) = self.tracker.progress.get(&target) else {
            return;
        };
        if progress.match_index == self.log.last_index() {
            debug!(
                target = target.0,
                "transfer target is up to date: TimeoutNow"
            );
            crate::probe!(TransferTimeoutNowSent);
            self.messages.push((
                target,
                Message::TimeoutNow(TimeoutNow {
                    term: self.term,
                    leader: self.config.id,
                    last_log_index: self.log.last_index(),
                    last_log_term: self.log.last_term(),
                }),
            ));
        } else {
            self.send_append(target);
        }
    }

    /// Our leader hands us leadership: campaign now, in the next term,
    /// skipping the pre-vote (the others' lease does not apply to it).
    pub fn handle_timeout_now(&mut self, request: TimeoutNow) {
        if request.term != self.term
            || self.role != Role::Follower
            || self.leader != Some(request.leader)
            || !self.is_voter()
        {
            debug!(
                from = request.leader.0,
                term = request.term.0,
                "TimeoutNow from a node that is not my current leader: ignored"
            );
            crate::probe!(TimeoutNowIgnored);
            return;
        }
        if (self.log.last_index(), self.log.last_term())
            != (request.last_log_index, request.last_log_term)
        {
            debug!(
                from = request.leader.0,
                "TimeoutNow for a log other than mine (a late one): ignored"
            );
            crate::probe!(TimeoutNowIgnored);
            return;
        }
        info!(
            from = request.leader.0,
            term = self.term.0,
            "leadership handed to me: campaigning"
        );
        crate::probe!(TransferTargetCampaigned);
        self.campaign(true);
    }

    // ------------------------------------------------------------ snapshots

    /// Storage holds a snapshot ending at `snapshot` durably (taken here or
    /// installed from the leader): a leader sends it from now on.
    pub fn snapshot_saved(&mut self, snapshot: SnapshotMeta) {
        if snapshot.index > self.snapshot.index {
            self.snapshot = snapshot;
        }
        // An installed snapshot is the log's durable start.
        self.log.persisted_to(snapshot.index, snapshot.term);
    }

    /// Drops the log from memory up to `keep` entries below the newest
    /// durable snapshot, but never past a snapshot still being sent (its
    /// follower needs the entries after it). Returns where the log now starts
    /// after: the driver compacts storage to the same point.
    pub fn compact(&mut self, keep: u64) -> LogIndex {
        let mut to = LogIndex(self.snapshot.index.0.saturating_sub(keep));
        for progress in self.tracker.progress.values() {
            if let Some(pending) = progress.snapshot_pending() {
                to = to.min(pending);
            }
        }
        let to = to.min(self.log.persisting()).min(self.log.commit());
        self.log.compact_to(to);
        let offset = self.log.offset().index;
        // The configuration in force at the new start becomes the first
        // (the log may start below the first one: a tail kept below a
        // snapshot).
        let first_kept = self
            .configs
            .iter()
            .rposition(|(index, _, _)| *index <= offset)
            .unwrap_or(0);
        self.configs.drain(..first_kept);
        offset
    }

    /// Commits the highest index stored on a majority, if it is of our term
    /// (Raft figure 8: older entries commit only indirectly).
    /// Only voters count, the leader itself only while it is one (a leader
    /// removing itself leads until the removal commits, thesis 4.2.2, then
    /// steps down).
    fn maybe_commit(&mut self) -> bool {
        let own = if is_planted(Bug::OwnUnsyncedEntriesCounted) {
            self.log.last_index()
        } else {
            self.log.persisted()
        };
        let membership = self.membership();
        let is_learner_counted = is_planted(Bug::LearnerCountedInCommit);
        let counted = self.peers.iter().copied().filter(|&peer| {
            membership.is_voter(peer) || (is_learner_counted && membership.is_learner(peer))
        });
        let own = self.is_voter().then_some(own);
        let Some(candidate) = self.tracker.committed_index(counted, own, self.quorum()) else {
            return false;
        };
        if candidate > self.log.commit()
            && (self.log.term(candidate) == Some(self.term)
                || is_planted(Bug::CommitOlderTermByCounting))
        {
            let was_pending = self.membership_index() > self.log.commit();
            self.log.commit_to(candidate);
            if was_pending && self.membership_index() <= self.log.commit() {
                if !self.membership().contains(self.config.id) {
                    self.step_down_removed();
                } else {
                    self.configuration_changed();
                }
            }
            return true;
        }
        false
    }

    /// This leader's removal committed: it hands leadership to a voter
    /// whose log matches its own (as a transfer: no election timeout to
    /// wait out; the new leader's first commit carries the removal's), or,
    /// with none, tells the others the commit index; then it steps down.
    fn step_down_removed(&mut self) {
        let last = self.log.last_index();
        let membership = self.membership();
        let successor = self
            .tracker
            .progress
            .iter()
            .filter(|(&peer, p)| membership.is_voter(peer) && p.match_index == last)
            .map(|(&peer, _)| peer)
            .next();
        info!(
            term = self.term.0,
            index = self.membership_index().0,
            successor = successor.map_or(0, |s| s.0),
            "my removal from the cluster committed: stepping down"
        );
        if successor.is_none() {
            self.broadcast_heartbeat();
        }
        if let Some(successor) = successor {
            self.messages.push((
                successor,
                Message::TimeoutNow(TimeoutNow {
                    term: self.term,
                    leader: self.config.id,
                    last_log_index: last,
                    last_log_term: self.log.last_term(),
                }),
            ));
        }
        self.become_follower(self.term, None);
    }

    // ------------------------------------------------------------ clients

    /// Appends a command to the log (leader only). It is sent with the next
    /// `Ready`, so many proposals share one append, one sync and one message.
    /// While leadership is being transferred, proposals are refused with
    /// the target as the hint (it will lead shortly; clients retry there).
    pub fn propose(&mut self, data: Vec<u8>) -> Result<LogIndex, NotLeader> {
        if self.role != Role::Leader {
            return Err(NotLeader {
                leader: self.leader,
            });
        }
        if let Some(target) = self.transfer_target {
            return Err(NotLeader {
                leader: Some(target),
            });
        }
        debug_assert!(
            !Membership::is_config_entry(&data),
            "a command must not look like a configuration entry"
        );
        let index = self.log.last_index().next();
        self.log.push(Entry {
            term: self.term,
            index,
            data,
        });
        self.is_broadcast_wanted = true;
        Ok(index)
    }

    /// Appends a configuration change (leader only), one server at a time
    /// (thesis 4.1). It is in force as soon as it is in the log. Refused
    /// while another change is not committed, and until this leader has
    /// committed an entry of its own term (Ongaro, raft-dev 2015: else a
    /// change appended by a new leader can meet an uncommitted change of
    /// an old one, and two majorities that do not overlap elect two
    /// leaders). A learner is promoted only once it holds 90% of the
    /// leader's log (etcd). Returns the entry's index: the change is done
    /// once that commits.
    pub fn propose_conf_change(
        &mut self,
        change: &ConfChange,
    ) -> Result<LogIndex, ConfChangeRejected> {
        if self.role != Role::Leader {
            return Err(ConfChangeRejected::NotLeader(self.leader));
        }
        if self.transfer_target.is_some() {
            return Err(ConfChangeRejected::TransferInProgress);
        }
        if self.log.term(self.log.commit()) != Some(self.term)
            && !is_planted(Bug::ConfChangeWithoutOwnTermCommit)
        {
            return Err(ConfChangeRejected::NotReady);
        }
        if self.membership_index() > self.log.commit() && !is_planted(Bug::TwoConfChangesPending) {
            return Err(ConfChangeRejected::ChangePending);
        }
        let membership = self.membership().changed(change)?;
        if let ConfChange::Promote(id) = change {
            let matched = self.tracker.progress.get(id).map_or(0, |p| p.match_index.0);
            let leader = self.log.last_index().0;
            if matched.saturating_mul(10) < leader.saturating_mul(9) {
                return Err(ConfChangeRejected::LearnerBehind {
                    id: *id,
                    matched,
                    leader,
                });
            }
        }
        let index = self.log.last_index().next();
        info!(
            index = index.0,
            change = ?change,
            configuration = %membership,
            "proposing a configuration change"
        );
        self.log.push(Entry {
            term: self.term,
            index,
            data: membership.encode(),
        });
        self.configs.push((index, self.term, membership));
        self.configuration_changed();
        self.is_broadcast_wanted = true;
        // A change that leaves a single voter commits at once.
        self.maybe_commit();
        Ok(index)
    }

    /// Starts a linearizable read identified by `context`. It comes back in a
    /// `Ready`'s `read_states` once a majority confirmed this node still leads,
    /// or in `reads_dropped` if it stops leading first.
    pub fn read_index(&mut self, context: u64) -> Result<(), ReadRejected> {
        if self.role != Role::Leader {
            return Err(ReadRejected::NotLeader(NotLeader {
                leader: self.leader,
            }));
        }
        if let Some(target) = self.transfer_target {
            // As proposals: it is about to step down.
            return Err(ReadRejected::NotLeader(NotLeader {
                leader: Some(target),
            }));
        }
        if self.log.term(self.log.commit()) != Some(self.term)
            && !is_planted(Bug::ReadBeforeOwnTermCommit)
        {
            return Err(ReadRejected::NotReady);
        }
        let index = self.log.commit();
        let is_sole_voter = self.is_voter() && self.voter_peers().next().is_none();
        if is_sole_voter || is_planted(Bug::ReadWithoutQuorumRound) {
            self.read_states.push(ReadState { context, index });
            return Ok(());
        }
        self.read_only.add(context, index);
        Ok(())
    }

    /// Releases every read whose round a majority (counting us) acknowledged.
    fn release_reads(&mut self) {
        if !self.read_only.has_pending() {
            return;
        }
        let confirmed =
            self.tracker
                .read_round_confirmed(self.voter_peers(), self.is_voter(), self.quorum());
        if let Some(confirmed) = confirmed {
            self.read_only.release(confirmed, &mut self.read_states);
        }
    }

    // ------------------------------------------------------------ ready / advance

    pub fn has_ready(&self) -> bool {
        self.hard_state() != self.hard_state_handed
            || self.snapshot_accepted.is_some()
            || self.log.persisting() < self.log.last_index()
            || self.applied < self.log.commit()
            || !self.messages.is_empty()
            || !self.read_states.is_empty()
            || !self.reads_dropped.is_empty()
            || self.is_broadcast_wanted
            || self.is_read_round_startable()
    }

    /// A leader whose reads wait for a round, none in flight (see
    /// [`ReadOnly::is_round_startable`]).
    fn is_read_round_startable(&self) -> bool {
        self.role == Role::Leader && self.read_only.is_round_startable()
    }

    /// Hands out what to persist, send and apply (see [`Ready`]); each entry
    /// and hard state is handed out once.
    pub fn ready(&mut self) -> Ready {
        let is_read_round_starting = self.is_read_round_startable();
        if self.role == Role::Leader {
            let mut is_sent = BTreeSet::new();
            if is_read_round_starting {
                self.read_only.start_round();
            }
            if self.is_broadcast_wanted {
                for peer in self.peers.clone() {
                    if self.send_append(peer) {
                        is_sent.insert(peer);
                    }
                }
            }
            if is_read_round_starting {
                for peer in self.peers.clone() {
                    if !is_sent.contains(&peer) {
                        self.send_heartbeat(peer);
                    }
                }
            }
        }
        self.is_broadcast_wanted = false;
        if is_read_round_starting || self.role != Role::Leader {
            self.read_only.clear_wanted();
        }

        let hard_state = self.hard_state();
        let commit = self.log.commit();
        assert!(
            commit >= self.applied,
            "applied index never passes the commit index"
        );
        let committed = self
            .log
            .slice(self.applied.next(), commit, usize::MAX, usize::MAX);
        self.applied = commit;
        let hard_state_changed = (hard_state != self.hard_state_handed).then_some(hard_state);
        self.hard_state_handed = hard_state;
        // The sending rule (see `Ready`): only a leader's messages that
        // depend on no new term or vote may leave before the write.
        let messages = std::mem::take(&mut self.messages);
        let (messages, persisted_messages) = if (hard_state_changed.is_none()
            && self.role == Role::Leader)
            || is_planted(Bug::MessagesSentBeforeDurable)
        {
            (messages, Vec::new())
        } else {
            (Vec::new(), messages)
        };
        Ready {
            hard_state: hard_state_changed,
            snapshot: self.snapshot_accepted.take(),
            entries: self.log.take_unpersisted(),
            messages,
            persisted_messages,
            committed,
            read_states: std::mem::take(&mut self.read_states),
            reads_dropped: std::mem::take(&mut self.reads_dropped),
        }
    }

    /// Storage made its log durable up to the entry (`index`, `term`) (the
    /// last entry of a completed write). A leader may now count its own copy.
    pub fn persisted(&mut self, index: LogIndex, term: Term) {
        self.log.persisted_to(index, term);
        if self.role == Role::Leader {
            self.maybe_commit();
        }
    }

    /// Everything handed out so far is durable: for storage that writes
    /// synchronously while the `Ready` is processed (and for tests).
    pub fn advance(&mut self) {
        let index = self.log.persisting();
        if let Some(term) = self.log.term(index) {
            self.persisted(index, term);
        }
    }
}
