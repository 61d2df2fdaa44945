//! Network partitions of the members: halves, an isolated leader, a ring of
//! majorities, a bridge, one-way cuts, churn (a new cut every 0.3-0.8 s),
//! and figure 8's setting (a new leader stranded before its first entries
//! leave it).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;

use super::{FaultSpec, ScheduledFault};
use crate::cluster::host;
use crate::nemesis::{Action, Controller, Nemesis, Step};
use crate::POOL;

pub const HALVES: FaultSpec = FaultSpec {
    start: halves,
    ..FaultSpec::DEFAULT
};

fn halves(c: &mut Controller, sim: &mut turmoil::Sim<'_>, _: &Nemesis<'_>) {
    let nodes = c.shuffled_nodes();
    let (a, b) = nodes.split_at(2);
    for &x in a {
        for &y in b {
            c.cut(sim, x, y);
        }
    }
}

pub const ISOLATE_LEADER: FaultSpec = FaultSpec {
    start: isolate_leader,
    ..FaultSpec::DEFAULT
};

fn isolate_leader(c: &mut Controller, sim: &mut turmoil::Sim<'_>, nemesis: &Nemesis<'_>) {
    let leader = c.leader_or_any(nemesis.observer);
    c.cut_all_but(sim, leader, &[]);
}

pub const MAJORITIES_RING: FaultSpec = FaultSpec {
    start: majorities_ring,
    ..FaultSpec::DEFAULT
};

fn majorities_ring(c: &mut Controller, sim: &mut turmoil::Sim<'_>, _: &Nemesis<'_>) {
    // Each node keeps its two ring neighbours: it sees 3 of 5 (a
    // majority), and no two nodes see the same majority.
    let ring = c.shuffled_nodes();
    let n = ring.len();
    for i in 0..n {
        c.cut(sim, ring[i], ring[(i + 2) % n]);
    }
}

pub const BRIDGE: FaultSpec = FaultSpec {
    start: bridge,
    ..FaultSpec::DEFAULT
};

fn bridge(c: &mut Controller, sim: &mut turmoil::Sim<'_>, _: &Nemesis<'_>) {
    // Two halves that only the bridge node (ring[2]) connects.
    let ring = c.shuffled_nodes();
    for &x in &ring[..2] {
        for &y in &ring[3..] {
            c.cut(sim, x, y);
        }
    }
}

pub const ONE_WAY: FaultSpec = FaultSpec {
    start: one_way,
    ..FaultSpec::DEFAULT
};

fn one_way(c: &mut Controller, sim: &mut turmoil::Sim<'_>, nemesis: &Nemesis<'_>) {
    let node = c.leader_or_any(nemesis.observer);
    let is_outbound = c.rng.random_bool(0.5);
    for other in c.nodes.clone().into_iter().filter(|&o| o != node) {
        if is_outbound {
            c.cut_oneway(sim, node, other);
        } else {
            c.cut_oneway(sim, other, node);
        }
    }
}

pub const CHURN: FaultSpec = FaultSpec {
    plan: plan_churn,
    start: repartition,
    ..FaultSpec::DEFAULT
};

fn plan_churn(rng: &mut StdRng, fault: &ScheduledFault, actions: &mut Vec<(Duration, Action)>) {
    let end = fault.at + fault.duration;
    let mut at = fault.at + Duration::from_millis(rng.random_range(300..800));
    while at < end {
        actions.push((at, Action::Step(REPARTITION)));
        at += Duration::from_millis(rng.random_range(300..800));
    }
}

/// Heal the node links and cut them anew (churn, and half the membership
/// churn windows).
pub const REPARTITION: Step = Step::new("Repartition", |c, sim, nemesis, _| {
    c.repartition(sim, nemesis.observer)
});

fn repartition(c: &mut Controller, sim: &mut turmoil::Sim<'_>, nemesis: &Nemesis<'_>) {
    c.repartition(sim, nemesis.observer);
}

pub const STRAND_NEW_LEADER: FaultSpec = FaultSpec {
    // Stranding a new leader takes three elections: the longest window.
    duration: |_, _| Duration::from_millis(6500),
    plan: plan_strand,
    start: strand,
    watch: watch_strand,
    ..FaultSpec::DEFAULT
};

fn plan_strand(rng: &mut StdRng, fault: &ScheduledFault, actions: &mut Vec<(Duration, Action)>) {
    let end = fault.at + fault.duration;
    let at = fault.at + Duration::from_millis(rng.random_range(800..1200));
    actions.push((at.min(end), Action::Step(JOIN_OTHER_SIDE)));
}

fn strand(c: &mut Controller, sim: &mut turmoil::Sim<'_>, nemesis: &Nemesis<'_>) {
    // The leader and one follower are cut from the other three,
    // which cannot see each other either: nobody can elect, and
    // the leader goes on appending what its pinned clients send,
    // entries that will not commit.
    let leader = c.leader_or_any(nemesis.observer);
    let follower = c.follower(leader);
    let side = [leader, follower];
    for a in 1..=POOL {
        for b in (a + 1)..=POOL {
            if !(side.contains(&a) && side.contains(&b)) {
                c.cut(sim, a, b);
            }
        }
    }
    c.strand_side = side.to_vec();
}

/// The three nodes away from the old leader's side see each other again,
/// and will elect.
const JOIN_OTHER_SIDE: Step = Step::new("JoinOtherSide", |c, sim, _, _| {
    let side = std::mem::take(&mut c.strand_side);
    if side.is_empty() {
        return;
    }
    let others: Vec<u64> = (1..=POOL).filter(|n| !side.contains(n)).collect();
    for &a in &others {
        for &b in &others {
            if a < b {
                c.cuts.remove(&(a, b));
                c.cuts.remove(&(b, a));
                sim.repair(host(a), host(b));
            }
        }
    }
    // From now on, the first leader the three elect is stranded.
    c.old_side = side;
});

/// Once the other side has elected a leader: its first entries (its no-op
/// at least) conflict with the old side's, and it has only just sent them.
/// Strand it before they reach anyone (`hold` keeps what is in flight too),
/// and let the old side reach the rest: one of the old side wins (its log
/// is ahead) and replicates its old-term entries, while the stranded node
/// holds newer-term ones at the same indexes (Raft's figure 8).
fn watch_strand(c: &mut Controller, sim: &mut turmoil::Sim<'_>, nemesis: &Nemesis<'_>) {
    if c.old_side.is_empty() {
        return;
    }
    let Some(new) = nemesis.observer.leader().map(|l| l.0) else {
        return;
    };
    if c.old_side.contains(&new) {
        return;
    }
    c.old_side.clear();
    for other in (1..=POOL).filter(|&o| o != new) {
        sim.hold(host(new), host(other));
    }
    c.stranded = Some(new);
    let rest: Vec<u64> = c.nodes.iter().copied().filter(|&n| n != new).collect();
    for &a in &rest {
        for &b in &rest {
            if a < b {
                c.cuts.remove(&(a, b));
                c.cuts.remove(&(b, a));
                sim.repair(host(a), host(b));
            }
        }
    }
}
