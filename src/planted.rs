//! The catalogue of planted bugs: classic consensus mistakes that the test
//! suite must catch. Each is a one-line deviation at its place in the code,
//! guarded by [`is_planted`].
//!
//! Without the `planted-bugs` cargo feature (every normal build),
//! [`is_planted`] is the constant `false` and the compiler removes each
//! guarded branch: the shipped code has no trace of them. With the feature,
//! a test plants one bug for the current thread (`plant`); the simulation
//! runs a whole cluster on one thread, so seeds running side by side on
//! other threads are not affected.
//!
//! `tests/jepsen/catalogue.rs` (`planted_bugs_are_caught`) runs the default seeds with
//! each bug planted in turn and fails unless every one is caught;
//! `tests/README.md` has the table of what caught each, and when.

/// One classic bug. The names say what the buggy code does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bug {
    /// A leader answers a read at its commit index without a majority round
    /// (no ReadIndex confirmation): a deposed leader serves stale reads.
    ReadWithoutQuorumRound,
    /// A new leader answers reads before it has committed an entry of its own
    /// term (its commit index may be behind the cluster's).
    ReadBeforeOwnTermCommit,
    /// A leader commits an entry of an older term by counting replicas
    /// (Raft figure 8).
    CommitOlderTermByCounting,
    /// A candidate counts a vote granted in an earlier term of its own.
    StaleVoteCounted,
    /// A leader counts its own entries toward the quorum before its disk
    /// has made them durable.
    OwnUnsyncedEntriesCounted,
    /// A follower drops the entries after a stale or duplicated
    /// AppendEntries, though it had acknowledged them.
    TruncateOnStaleAppend,
    /// A node grants two votes in one term.
    TwoVotesInOneTerm,
    /// A node votes for a candidate whose log is older than its own.
    VoteForOlderLog,
    /// A follower commits up to the leader's commit index, past what it
    /// verified matches the leader's log.
    CommitPastVerifiedMatch,
    /// The state machine applies a retried write twice (no session dedup).
    RetriedWriteAppliedTwice,
    /// Term and vote are not persisted (a restart forgets its vote).
    HardStateNotPersisted,
    /// The driver answers peers (vote grants, AppendEntries acknowledgements)
    /// before the disk has made what they promise durable.
    AnswerBeforeDurable,
    /// A follower installs a snapshot at or below its commit index and, as
    /// figure 13's step 7 says for a snapshot it does not hold, discards its
    /// whole log: acknowledged entries after the snapshot are lost.
    InstallSnapshotOlderThanCommit,
    /// The driver compacts the log (deletes WAL segments) as soon as it
    /// starts writing a snapshot, before the snapshot is durable: a crash in
    /// between leaves the older snapshot and a log that no longer continues
    /// it (segments still needed are gone).
    CompactBeforeSnapshotDurable,
    /// The snapshot file is written in place (no temporary file and rename):
    /// a crash in the middle leaves neither the old snapshot nor the new one.
    NonAtomicSnapshotWrite,
    /// A pre-candidate that won its pre-vote keeps the pre-votes as votes
    /// of the real election: two nodes that both won a pre-vote (pre-votes
    /// bind nobody) both lead the next term.
    PreVotesCountedInElection,
    /// The target of a leadership transfer campaigns in the term it is in
    /// instead of the next: its vote of that term is cast a second time,
    /// for itself, and two nodes lead the same term.
    TransferCampaignsInSameTerm,
    /// CheckQuorum never steps a leader down: one that reaches only one
    /// follower keeps renewing that follower's vote lease, and the others
    /// cannot elect without it (openraft #2080).
    CheckQuorumNeverStepsDown,
    /// A leader appends a membership change before it has committed an
    /// entry of its own term (the single-server change bug Ongaro reported
    /// in 2015): its change and an uncommitted one of an earlier leader can
    /// be two servers apart, and their majorities need not meet.
    ConfChangeWithoutOwnTermCommit,
    /// A leader appends a membership change while the last one is not
    /// committed: two changes from the committed configuration, whose
    /// majorities need not meet (three voters, two removed: one node
    /// commits alone while the other two elect each other).
    TwoConfChangesPending,
    /// A leader counts a learner's acknowledgement toward commit: an entry
    /// held by fewer than a majority of the voters is committed.
    LearnerCountedInCommit,
    /// A node that a member refuses as removed goes on: one that missed its
    /// removal (down or cut off when it committed) runs forever with its
    /// old configuration, campaigning, or leading an old term to itself.
    RemovedNodeIgnoresRefusal,
    /// A node whose fsync failed tries it again, and on success goes on as
    /// if its writes were durable (the 2018 "fsyncgate" mistake: Linux had
    /// dropped them, so the second fsync had nothing left to write).
    FsyncRetriedAfterError,
    /// A node starts from the log it read back without making it durable
    /// first: after a failed fsync, the pages Linux could not write stay
    /// readable until power is lost, so a process restarted on the same
    /// kernel votes and acknowledges with entries its disk does not hold.
    RecoveredLogNotResynced,
    /// A leader counts any answer of its term toward a read round, also one
    /// sent before the round began (even before the read arrived): a late
    /// answer from before a partition confirms a read after it, and a
    /// deposed leader serves stale reads.
    ReadConfirmedByEarlierAnswers,
    /// Snapshot data leaves the session table out: a node that restarts from
    /// a snapshot, or installs one, forgets which writes it applied, and a
    /// retried write applies twice.
    SessionsLeftOutOfSnapshot,
    /// A read is served once its round is confirmed, before the state
    /// machine has applied up to its read index. Harmless while the driver
    /// applies synchronously (it always has by then); a live bug the day
    /// applying moves to its own task.
    ReadServedBeforeApplied,
    /// `Ready` lets every message leave before the write is durable, not
    /// only a leader's of a `Ready` that changes no term or vote: a
    /// candidate's RequestVote leaves before its own vote is on disk, and a
    /// crash then lets it vote again in that term.
    MessagesSentBeforeDurable,
    /// A leader that steps down serves the reads waiting on a round, as if
    /// confirmed, instead of failing them: a deposed leader answers with
    /// what it had committed, stale once another leader has committed more.
    PendingReadsServedOnStepDown,
}

impl Bug {
    pub const ALL: [Bug; 29] = [
        Bug::ReadWithoutQuorumRound,
        Bug::ReadBeforeOwnTermCommit,
        Bug::CommitOlderTermByCounting,
        Bug::StaleVoteCounted,
        Bug::OwnUnsyncedEntriesCounted,
        Bug::TruncateOnStaleAppend,
        Bug::TwoVotesInOneTerm,
        Bug::VoteForOlderLog,
        Bug::CommitPastVerifiedMatch,
        Bug::RetriedWriteAppliedTwice,
        Bug::HardStateNotPersisted,
        Bug::AnswerBeforeDurable,
        Bug::InstallSnapshotOlderThanCommit,
        Bug::CompactBeforeSnapshotDurable,
        Bug::NonAtomicSnapshotWrite,
        Bug::PreVotesCountedInElection,
        Bug::TransferCampaignsInSameTerm,
        Bug::CheckQuorumNeverStepsDown,
        Bug::ConfChangeWithoutOwnTermCommit,
        Bug::TwoConfChangesPending,
        Bug::LearnerCountedInCommit,
        Bug::RemovedNodeIgnoresRefusal,
        Bug::FsyncRetriedAfterError,
        Bug::RecoveredLogNotResynced,
        Bug::ReadConfirmedByEarlierAnswers,
        Bug::SessionsLeftOutOfSnapshot,
        Bug::ReadServedBeforeApplied,
        Bug::MessagesSentBeforeDurable,
        Bug::PendingReadsServedOnStepDown,
    ];
}

#[cfg(feature = "planted-bugs")]
thread_local! {
    static PLANTED: std::cell::Cell<Option<Bug>> = const { std::cell::Cell::new(None) };
}

/// Whether `bug` is planted on this thread. Always `false` (a constant)
/// without the `planted-bugs` feature.
#[inline(always)]
pub fn is_planted(bug: Bug) -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        PLANTED.with(|planted| planted.get() == Some(bug))
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        let _ = bug;
        false
    }
}

/// Plants `bug` (or none) for the code that runs on this thread.
#[cfg(feature = "planted-bugs")]
pub fn plant(bug: Option<Bug>) {
    PLANTED.with(|planted| planted.set(bug));
}
