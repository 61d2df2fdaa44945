//! Coverage markers (FoundationDB's `CODE_PROBE`): the rare paths of the node
//! code, each named, so that the simulation can say which of them its seeds
//! reached. A test suite is worth the situations it produces, and a path no
//! seed reaches is a path no seed tests.
//!
//! `probe!(Name)` marks a path; `probe!(Name, if condition)` marks it when
//! the condition holds there. Without the `probes` cargo feature (every
//! normal build) both expand to nothing: no counter, no branch. With it (the
//! test builds: the crate is its own dev-dependency with the feature on),
//! each hit counts in a per-thread table: the simulation runs a whole cluster
//! on one thread, so [`take`] after a seed gives that seed's counts, as
//! planted bugs are per thread.
//!
//! [`Probe::ALL`] is the one list: each marker with why its path matters.
//! `tests/jepsen/main.rs` prints every count over the default seeds and
//! fails if one the seeds are meant to reach was never reached.

/// Marks a rare path (see the module documentation).
#[macro_export]
macro_rules! probe {
    ($name:ident) => {{
        #[cfg(feature = "probes")]
        $crate::probe::hit($crate::probe::Probe::$name);
    }};
    ($name:ident, if $condition:expr) => {{
        #[cfg(feature = "probes")]
        if $condition {
            $crate::probe::hit($crate::probe::Probe::$name);
        }
    }};
}

macro_rules! probes {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// A marked path. Each variant's documentation says why it matters.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Probe {
            $($(#[doc = $doc])* $name,)*
        }

        impl Probe {
            /// Every marker, in the order of the table the simulation prints.
            pub const ALL: [Probe; [$(stringify!($name)),*].len()] = [$(Probe::$name,)*];

            /// Why the path matters: the variant's documentation.
            pub fn why(self) -> &'static str {
                match self {
                    $(Probe::$name => concat!($($doc),*).trim_ascii(),)*
                }
            }
        }
    };
}

probes! {
    /// A leader's reads were confirmed by a quorum round (ReadIndex): the
    /// path every linearizable read takes on a cluster of more than one voter.
    ReadConfirmedByRound,
    /// An AppendEntries answer echoed a read round older than the leader's
    /// current one: it cannot confirm the reads waiting on the newer round,
    /// and a leader that let it would serve stale reads after being deposed.
    ReadRoundAnswerOutdated,
    /// A leader stepped down with reads waiting on a round: they are failed,
    /// never served from a deposed leader's state.
    ReadsDroppedOnStepDown,
    /// An AppendEntries answer arrived after the leadership it answered
    /// changed (an older term, or a node no longer leading): it must confirm
    /// and commit nothing.
    AnswerAfterLeadershipChange,
    /// A retried write was answered from its client's session instead of
    /// being applied again (at-most-once).
    RetryAnsweredFromSession,
    /// A retried write was answered from a session restored from a snapshot
    /// (a restart or an install): the session table must survive snapshots,
    /// or the retry applies twice.
    RetryAnsweredFromRestoredSession,
    /// A follower installed the leader's snapshot and kept its log after it
    /// (the log held the snapshot's last entry).
    SnapshotInstalledKeepingLog,
    /// A follower installed the leader's snapshot and dropped its log (it
    /// did not hold the snapshot's last entry).
    SnapshotInstalledReplacingLog,
    /// A snapshot at or below the follower's commit index was not installed
    /// (installing it would drop acknowledged entries after it).
    SnapshotOlderThanCommitRefused,
    /// A membership change was refused: this node does not lead.
    ConfChangeRefusedNotLeader,
    /// A membership change was refused while a leadership transfer is under way.
    ConfChangeRefusedDuringTransfer,
    /// A membership change was refused before the leader committed an entry
    /// of its own term (Ongaro's 2015 fix).
    ConfChangeRefusedBeforeOwnTermCommit,
    /// A membership change was refused while another one is not committed
    /// (one change at a time).
    ConfChangeRefusedChangePending,
    /// A promotion was refused: the learner has not caught up.
    ConfChangeRefusedLearnerBehind,
    /// A membership change was refused as invalid (a taken id, an unknown
    /// node, a change that leaves no voter).
    ConfChangeRefusedInvalid,
    /// The disk task's sync failed: the node stops (it never retries a
    /// failed fsync, fsyncgate).
    StorageSyncFailed,
    /// The disk task's write failed (ENOSPC): the node stops.
    StorageWriteFailed,
    /// A pre-vote was refused (the candidate's log is behind, or its term).
    PreVoteRefused,
    /// A vote or pre-vote request was ignored under the vote lease: this
    /// node heard from a live leader within the minimum election timeout.
    VoteIgnoredInLease,
    /// A leader stepped down by CheckQuorum: no quorum answered within an
    /// election timeout.
    CheckQuorumStepDown,
    /// A leader sent TimeoutNow to an up-to-date transfer target.
    TransferTimeoutNowSent,
    /// A transfer target campaigned on TimeoutNow.
    TransferTargetCampaigned,
    /// A leadership transfer timed out and was aborted.
    TransferAborted,
    /// A TimeoutNow that is not from the current leader, or for another log
    /// (a late one), was ignored.
    TimeoutNowIgnored,
    /// An AppendEntries of an older term was answered without effect.
    StaleAppendEntriesRefused,
    /// A vote answer of an older term (or for an election no longer running)
    /// was ignored.
    StaleVoteResponseIgnored,
}

#[cfg(feature = "probes")]
thread_local! {
    static COUNTS: std::cell::RefCell<[u64; Probe::ALL.len()]> =
        const { std::cell::RefCell::new([0; Probe::ALL.len()]) };
}

/// Counts one hit of `probe` on this thread (the `probe!` macro calls it).
#[cfg(feature = "probes")]
pub fn hit(probe: Probe) {
    COUNTS.with(|counts| counts.borrow_mut()[probe as usize] += 1);
}

/// This thread's counts since the last call, in [`Probe::ALL`]'s order, and
/// starts them again from zero. Always zero without the `probes` feature.
pub fn take() -> [u64; Probe::ALL.len()] {
    #[cfg(feature = "probes")]
    {
        COUNTS.with(|counts| std::mem::take(&mut *counts.borrow_mut()))
    }
    #[cfg(not(feature = "probes"))]
    {
        [0; Probe::ALL.len()]
    }
}

/// Whether this build counts probes.
pub const IS_COUNTING: bool = cfg!(feature = "probes");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_probe_says_why_it_matters() {
        for probe in Probe::ALL {
            assert!(probe.why().len() > 20, "{probe:?}: {:?}", probe.why());
        }
    }

    #[cfg(feature = "probes")]
    #[test]
    fn hits_are_counted_per_thread_and_taken() {
        take();
        crate::probe!(PreVoteRefused);
        crate::probe!(PreVoteRefused);
        crate::probe!(CheckQuorumStepDown, if 1 + 1 == 3);
        let other = std::thread::spawn(|| {
            crate::probe!(CheckQuorumStepDown);
            take()
        })
        .join()
        .expect("thread");
        let counts = take();
        assert_eq!(counts[Probe::PreVoteRefused as usize], 2);
        assert_eq!(counts[Probe::CheckQuorumStepDown as usize], 0);
        assert_eq!(other[Probe::CheckQuorumStepDown as usize], 1);
        assert_eq!(take().iter().sum::<u64>(), 0, "taken");
    }
}
