//! The fault kinds and the schedule of a seed's fault windows.
//!
//! A fault kind lives in its own place, a [`FaultSpec`] in one of this
//! folder's files, grouped by what it breaks: `partitions` (network cuts),
//! `partial` (partial partitions, whose liveness is asserted), `crashes`
//! (processes killed, disks losing what was not synced), `network`
//! (latency, loss), `processes` (pauses, graceful restarts) and `operators`
//! (leadership moves, membership changes). It is registered once, in
//! `faults!` below, which makes [`FaultKind`] and [`ALL_FAULTS`].
//!
//! The overlays (slow disks, message chaos, leader crashes, disk errors)
//! are drawn per window on their own and compose with every kind but the
//! clean ones; the nemesis (`crate::nemesis`) carries them out.

mod crashes;
mod network;
mod operators;
mod partial;
mod partitions;
mod processes;

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::nemesis::{Action, Controller, Nemesis};
use crate::sim::disk::DiskError;
use crate::swarm::{self, Swarm};
use crate::{FAULTS_FROM, HEAL_AT};

/// What a fault kind is and does. `DEFAULT` has every hook do nothing.
pub struct FaultSpec {
    /// Run without overlays: the liveness assertions about it measure the
    /// fault itself.
    pub is_clean: bool,
    /// A partial partition: a leader must serve within
    /// [`PARTIAL_PARTITION_SERVES_WITHIN`] of the window starting.
    pub is_partial_partition: bool,
    /// The window's length, from the one drawn for every kind (it may draw
    /// more from the schedule's RNG).
    pub duration: fn(&mut StdRng, Duration) -> Duration,
    /// Steps inside the window, planned before the run (from the
    /// controller's RNG).
    pub plan: fn(&mut StdRng, &ScheduledFault, &mut Vec<(Duration, Action)>),
    /// What happens as the window starts.
    pub start: fn(&mut Controller, &mut turmoil::Sim<'_>, &Nemesis<'_>),
    /// Called at every step of the simulation while the window lasts.
    pub watch: fn(&mut Controller, &mut turmoil::Sim<'_>, &Nemesis<'_>),
}

impl FaultSpec {
    pub const DEFAULT: FaultSpec = FaultSpec {
        is_clean: false,
        is_partial_partition: false,
        duration: |_, drawn| drawn,
        plan: |_, _, _| {},
        start: |_, _, _| {},
        watch: |_, _, _| {},
    };
}

/// Makes the registry: the enum of kinds (its order is the order of the
/// summary's tables), the list of all of them, and each one's spec.
macro_rules! faults {
    ($($(#[$doc:meta])* $kind:ident => $spec:path,)*) => {
        /// The faults the schedule draws from.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
        pub enum FaultKind {
            $($(#[$doc])* $kind,)*
        }

        pub const ALL_FAULTS: [FaultKind; [$(stringify!($kind)),*].len()] =
            [$(FaultKind::$kind,)*];

        impl FaultKind {
            pub fn spec(self) -> &'static FaultSpec {
                match self {
                    $(FaultKind::$kind => &$spec,)*
                }
            }
        }
    };
}

faults! {
    PartitionHalves => partitions::HALVES,
    IsolateLeader => partitions::ISOLATE_LEADER,
    MajoritiesRing => partitions::MAJORITIES_RING,
    Bridge => partitions::BRIDGE,
    OneWay => partitions::ONE_WAY,
    CrashRestartOne => crashes::CRASH_RESTART_ONE,
    CrashRestartAll => crashes::CRASH_RESTART_ALL,
    KillLeaderRepeatedly => crashes::KILL_LEADER_REPEATEDLY,
    LatencySpike => network::LATENCY_SPIKE,
    MessageLoss => network::MESSAGE_LOSS,
    CrashLosingUnsynced => crashes::CRASH_LOSING_UNSYNCED,
    PauseLeader => processes::PAUSE_LEADER,
    Churn => partitions::CHURN,
    CutThenCrashLeader => crashes::CUT_THEN_CRASH_LEADER,
    StrandNewLeader => partitions::STRAND_NEW_LEADER,
    /// A follower is cut off or down until the leader has compacted its log
    /// past it: it must catch up by snapshot.
    LaggingNode => crashes::LAGGING_NODE,
    /// A follower is cut off from everyone and healed. Asserted: neither
    /// the leader nor the term changes (PreVote).
    IsolateFollower => partial::ISOLATE_FOLLOWER,
    /// Partial partitions (each asserted: a leader serves within 5 s of the
    /// fault starting). A follower that can reach only the leader.
    FollowerOnlyLeader => partial::FOLLOWER_ONLY_LEADER,
    /// The leader reaches one follower; the followers all see each other.
    LeaderOneFollower => partial::LEADER_ONE_FOLLOWER,
    /// A follower that can reach only one other follower.
    NodeOnlyFollower => partial::NODE_ONLY_FOLLOWER,
    /// openraft #2080: the leader reaches only one follower (the bridge),
    /// which sees two more; the fifth node is cut off. The three need the
    /// bridge's vote, which the old leader's heartbeats would hold forever
    /// without CheckQuorum.
    LeaderBehindBridge => partial::LEADER_BEHIND_BRIDGE,
    /// The link between the leader and one follower goes down and up every
    /// 100-400 ms.
    FlappingLink => partial::FLAPPING_LINK,
    /// Every node in turn is stopped gracefully (SIGTERM: a leader hands
    /// leadership over first) and started again.
    RollingRestart => processes::ROLLING_RESTART,
    /// Every 0.5-1 s an operator moves leadership to a random follower
    /// (`lattice move-leader`), under the overlays like any other fault.
    MoveLeaderRepeatedly => operators::MOVE_LEADER_REPEATEDLY,
    /// An operator changes the membership step by step (`lattice member
    /// add/promote/remove`): adds a spare machine as a learner (or at once
    /// as a voter), promotes it, removes a voter (the leader too), keeping
    /// 3 to 5 voters; meanwhile the nodes are cut apart anew every second
    /// or a member is paused, and the overlays (crashes, slow disks, late
    /// messages) compose with it.
    MembershipChurn => operators::MEMBERSHIP_CHURN,
}

/// The kinds the liveness assertions are about: run without overlays, so
/// that what they measure is the partition itself.
pub fn is_clean(kind: FaultKind) -> bool {
    kind.spec().is_clean
}

/// The partial-partition shapes: a leader must serve within
/// [`PARTIAL_PARTITION_SERVES_WITHIN`] of the fault starting.
pub fn is_partial_partition(kind: FaultKind) -> bool {
    kind.spec().is_partial_partition
}
pub const PARTIAL_PARTITION_SERVES_WITHIN: Duration = Duration::from_secs(5);

/// One fault window: a network or process fault, and the conditions laid
/// over it (each drawn on its own, so they compose with every kind).
#[derive(Clone, Copy, Debug)]
pub struct ScheduledFault {
    pub at: Duration,
    pub duration: Duration,
    pub kind: FaultKind,
    /// Every disk syncs slowly and sometimes stalls
    /// ([`DiskLatency::SLOW`](crate::sim::disk::DiskLatency::SLOW)).
    pub slow_disk: bool,
    /// Peer messages arrive late, after newer ones, and twice
    /// ([`SimChaos`](crate::sim::chaos::SimChaos)).
    pub chaos: bool,
    /// Kill -9 the leader this long into the window (losing what its disk
    /// had not synced), and restart it `.1` later: crashes composed with
    /// every other fault.
    pub crash_leader: Option<(Duration, Duration)>,
    /// The leader's disk fails its next sync (EIO: the writes it was to
    /// make durable stay readable until power is lost) or write (ENOSPC)
    /// this long into the window: the node must stop, lose no acknowledged
    /// write, and come back when its supervisor restarts it. With `.2`, that
    /// machine loses power this long after the error (once it is back), and
    /// restarts: what it read back after the error must have been made
    /// durable.
    pub disk_error: Option<(Duration, DiskError, Option<Duration>)>,
}

/// How likely the disk-error overlay is in a fault window (drawn from an
/// RNG of its own, so the rest of each seed's schedule is as it was), and
/// in a seed whose swarm enables it.
const DISK_ERROR_P: f64 = 0.2;
const DISK_ERROR_SWARM_P: f64 = 0.25;

/// How long a node stopped by a storage error stays down before its
/// supervisor (systemd's `Restart=on-failure`) starts it again.
pub const DISK_ERROR_RESTART_AFTER: Duration = Duration::from_millis(500);

/// How likely each overlay is in a fault window, and in a seed whose swarm
/// enables it (about half the seeds enable each, so a window draws it about
/// as often as before swarm testing, but the seeds differ more).
const OVERLAY_P: f64 = 0.4;
const OVERLAY_SWARM_P: f64 = 0.5;

/// The fault schedule of a seed, from the kinds and overlays its swarm
/// enables. The first fault cycles through every kind across consecutive
/// seeds, so any 25 seeds draw each kind at least once.
pub fn schedule(seed: u64, swarm: &Swarm) -> Vec<ScheduledFault> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xFA17_5C4E_D01E);
    let mut disk_rng = StdRng::seed_from_u64(seed ^ 0xD15C_E220);
    let (overlay_p, disk_error_p) = if swarm::is_on() {
        (OVERLAY_SWARM_P, DISK_ERROR_SWARM_P)
    } else {
        (OVERLAY_P, DISK_ERROR_P)
    };
    let mut faults = Vec::new();
    let mut at = FAULTS_FROM;
    while at < HEAL_AT - Duration::from_secs(2) {
        let kind = if faults.is_empty() {
            Swarm::first_kind(seed)
        } else {
            swarm.kinds[rng.random_range(0..swarm.kinds.len())]
        };
        let duration = Duration::from_millis(rng.random_range(1000..4000));
        let duration = (kind.spec().duration)(&mut rng, duration);
        let duration = duration.min(HEAL_AT - at);
        // Each draw is made whether or not the swarm enables the overlay,
        // so that the rest of the schedule does not depend on it.
        let slow_disk = rng.random_bool(overlay_p) && swarm.slow_disk && !is_clean(kind);
        let chaos = rng.random_bool(overlay_p) && swarm.chaos && !is_clean(kind);
        let crash_leader = (rng.random_bool(overlay_p) && !is_clean(kind)).then(|| {
            (
                duration.mul_f64(rng.random_range(0.2..0.9)),
                Duration::from_millis(rng.random_range(100..1500)),
            )
        });
        let crash_leader = crash_leader.filter(|_| swarm.crash_leader);
        let disk_error = (disk_rng.random_bool(disk_error_p) && !is_clean(kind)).then(|| {
            let error = if disk_rng.random_bool(0.5) {
                DiskError::SyncEio
            } else {
                DiskError::WriteEnospc
            };
            let after = duration.mul_f64(disk_rng.random_range(0.1..0.8));
            let power_loss = disk_rng.random_bool(0.5).then(|| {
                DISK_ERROR_RESTART_AFTER + Duration::from_millis(disk_rng.random_range(1000..3000))
            });
            (after, error, power_loss)
        });
        let disk_error = disk_error.filter(|_| swarm.disk_error);
        faults.push(ScheduledFault {
            at,
            duration,
            kind,
            slow_disk,
            chaos,
            crash_leader,
            disk_error,
        });
        at += duration + Duration::from_millis(rng.random_range(500..2000));
    }
    faults
}
