//! Processes killed (kill -9: the disk loses what it had not synced): one
//! node, all of them, the leader again and again, the leader holding the
//! newest writes, the leader of a bare majority while its disk hangs, and a
//! follower kept away until the others compacted past it.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;

use super::{FaultSpec, ScheduledFault};
use crate::nemesis::{Action, Controller, Nemesis, Step};
use crate::sim::disk::DiskLatency;

pub const CRASH_RESTART_ONE: FaultSpec = FaultSpec {
    start: |c, sim, nemesis| {
        let node = c.any_node();
        c.crash(sim, nemesis.disks, node);
    },
    ..FaultSpec::DEFAULT
};

pub const CRASH_RESTART_ALL: FaultSpec = FaultSpec {
    plan: |_, fault, actions| {
        actions.push((
            fault.at + fault.duration / 2,
            Action::Step(RESTART_ALL_BUT_ONE),
        ));
    },
    start: |c, sim, nemesis| {
        for node in c.nodes.clone() {
            c.crash(sim, nemesis.disks, node);
        }
    },
    ..FaultSpec::DEFAULT
};

/// All but one node come back halfway through the window; the last one only
/// at the heal, behind.
const RESTART_ALL_BUT_ONE: Step = Step::new("RestartAllButOne", |c, sim, _, _| {
    let late = c.any_node();
    for node in c.nodes.clone().into_iter().filter(|&n| n != late) {
        c.restart(sim, node);
    }
});

pub const KILL_LEADER_REPEATEDLY: FaultSpec = FaultSpec {
    plan: plan_kills,
    start: kill_leader,
    ..FaultSpec::DEFAULT
};

fn plan_kills(_: &mut StdRng, fault: &ScheduledFault, actions: &mut Vec<(Duration, Action)>) {
    let end = fault.at + fault.duration;
    let mut at = fault.at + Duration::from_millis(1200);
    while at + Duration::from_millis(400) < end {
        actions.push((at, Action::Step(KILL_LEADER)));
        at += Duration::from_millis(1200);
    }
}

const KILL_LEADER: Step = Step::new("KillLeader", |c, sim, nemesis, _| {
    kill_leader(c, sim, nemesis)
});

fn kill_leader(c: &mut Controller, sim: &mut turmoil::Sim<'_>, nemesis: &Nemesis<'_>) {
    let leader = c.leader_or_any(nemesis.observer);
    c.crash(sim, nemesis.disks, leader);
    // Back quickly: the next kill picks whoever leads then.
    c.restart(sim, leader);
}

pub const CRASH_LOSING_UNSYNCED: FaultSpec = FaultSpec {
    start: |c, sim, nemesis| {
        // The leader holds the newest writes: crash it, losing whatever
        // its disk had not synced.
        let leader = c.leader_or_any(nemesis.observer);
        c.crash(sim, nemesis.disks, leader);
    },
    ..FaultSpec::DEFAULT
};

pub const CUT_THEN_CRASH_LEADER: FaultSpec = FaultSpec {
    plan: |rng, fault, actions| {
        // The minority cut starts the window; then the leader, its
        // disk hung, dies; it comes back, and the cut heals.
        let crash = fault.at + Duration::from_millis(rng.random_range(50..300));
        let back = crash + Duration::from_millis(rng.random_range(50..300));
        actions.push((crash, Action::CrashLeader));
        actions.push((back, Action::RestartCrashed));
        actions.push((back, Action::HealCuts));
    },
    start: |c, sim, nemesis| {
        // Two followers lose the cluster; the leader goes on with the
        // other two, a bare majority, while its disk hangs: whatever
        // it acknowledges now is durable on those two alone.
        let leader = c.leader_or_any(nemesis.observer);
        let followers = c.followers(leader);
        for &cut in &followers[..2] {
            c.cut_all_but(sim, cut, &[]);
        }
        nemesis.disks[&leader].lock().expect("disk").latency = DiskLatency::STALLED;
    },
    ..FaultSpec::DEFAULT
};

pub const LAGGING_NODE: FaultSpec = FaultSpec {
    // Away long enough for several snapshots.
    duration: |rng, _| Duration::from_millis(rng.random_range(3000..4500)),
    start: |c, sim, nemesis| {
        // A follower goes away (crashed, or cut off and still
        // running) while the others go on and compact past it.
        let leader = c.leader_or_any(nemesis.observer);
        let node = c.follower(leader);
        if c.rng.random_bool(0.5) {
            c.crash(sim, nemesis.disks, node);
        } else {
            c.cut_all_but(sim, node, &[]);
        }
    },
    ..FaultSpec::DEFAULT
};
