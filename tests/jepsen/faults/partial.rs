//! Partial partitions, where some nodes see each other and others do not,
//! and the liveness assertions that go with them (PreVote, CheckQuorum):
//! an isolated follower healed deposes nobody; under each partial shape a
//! leader serves within 5 s. Clean: no overlays, so the assertions measure
//! the partition itself.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;

use super::{FaultSpec, ScheduledFault};
use crate::cluster::host;
use crate::nemesis::{Action, Controller, Nemesis, Step};

/// A partial partition lasts past the 5 s its leader has to serve in.
fn partial_duration(rng: &mut StdRng, _: Duration) -> Duration {
    Duration::from_millis(rng.random_range(6000..7000))
}

/// An isolated follower and a flapping link: several election timeouts.
fn several_elections(rng: &mut StdRng, _: Duration) -> Duration {
    Duration::from_millis(rng.random_range(3000..5000))
}

const PARTIAL: FaultSpec = FaultSpec {
    is_clean: true,
    is_partial_partition: true,
    duration: partial_duration,
    ..FaultSpec::DEFAULT
};

pub const ISOLATE_FOLLOWER: FaultSpec = FaultSpec {
    is_clean: true,
    duration: several_elections,
    start: |c, sim, nemesis| {
        let leader = c.leader_or_any(nemesis.observer);
        let node = c.follower(leader);
        c.cut_all_but(sim, node, &[]);
    },
    ..FaultSpec::DEFAULT
};

pub const FOLLOWER_ONLY_LEADER: FaultSpec = FaultSpec {
    start: |c, sim, nemesis| {
        let leader = c.leader_or_any(nemesis.observer);
        let node = c.follower(leader);
        c.cut_all_but(sim, node, &[leader]);
    },
    ..PARTIAL
};

pub const LEADER_ONE_FOLLOWER: FaultSpec = FaultSpec {
    start: |c, sim, nemesis| {
        let leader = c.leader_or_any(nemesis.observer);
        let bridge = c.follower(leader);
        c.cut_all_but(sim, leader, &[bridge]);
    },
    ..PARTIAL
};

pub const NODE_ONLY_FOLLOWER: FaultSpec = FaultSpec {
    start: |c, sim, nemesis| {
        let leader = c.leader_or_any(nemesis.observer);
        let nodes = c.followers(leader);
        c.cut_all_but(sim, nodes[0], &[nodes[1]]);
    },
    ..PARTIAL
};

pub const LEADER_BEHIND_BRIDGE: FaultSpec = FaultSpec {
    start: |c, sim, nemesis| {
        let leader = c.leader_or_any(nemesis.observer);
        let nodes = c.followers(leader);
        let (bridge, isolated) = (nodes[0], nodes[1]);
        c.cut_all_but(sim, leader, &[bridge]);
        c.cut_all_but(sim, isolated, &[]);
    },
    ..PARTIAL
};

pub const FLAPPING_LINK: FaultSpec = FaultSpec {
    is_clean: true,
    duration: several_elections,
    plan: plan_flaps,
    start: flapping_link,
    ..FaultSpec::DEFAULT
};

fn plan_flaps(rng: &mut StdRng, fault: &ScheduledFault, actions: &mut Vec<(Duration, Action)>) {
    let end = fault.at + fault.duration;
    let mut at = fault.at + Duration::from_millis(rng.random_range(100..400));
    while at < end {
        actions.push((at, Action::Step(FLAP)));
        at += Duration::from_millis(rng.random_range(100..400));
    }
}

fn flapping_link(c: &mut Controller, sim: &mut turmoil::Sim<'_>, nemesis: &Nemesis<'_>) {
    let leader = c.leader_or_any(nemesis.observer);
    let follower = c.follower(leader);
    c.cut(sim, leader, follower);
    c.flapping = Some((leader, follower, true));
}

/// Cut the link if it is up, repair it if not.
const FLAP: Step = Step::new("Flap", |c, sim, _, _| {
    if let Some((a, b, is_cut)) = c.flapping {
        if is_cut {
            c.cuts.remove(&(a, b));
            c.cuts.remove(&(b, a));
            sim.repair(host(a), host(b));
        } else {
            c.cut(sim, a, b);
        }
        c.flapping = Some((a, b, !is_cut));
    }
});
