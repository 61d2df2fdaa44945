//! What operators do to a running cluster: move leadership every 0.5-1 s
//! (`lattice move-leader`), and change the membership step by step
//! (`lattice member add/promote/remove`, by the operator host of
//! `crate::operator`), while the nodes are cut apart anew or a member is
//! paused.

use std::sync::atomic::Ordering;
use std::time::Duration;

use lattice::NodeId;
use rand::Rng;

use super::partitions::REPARTITION;
use super::FaultSpec;
use crate::cluster::QuickChange;
use crate::nemesis::{Action, Controller, Nemesis, Step};
use crate::{FOUNDERS, POOL, VOTERS_MIN};

pub const MOVE_LEADER_REPEATEDLY: FaultSpec = FaultSpec {
    plan: |rng, fault, actions| {
        let end = fault.at + fault.duration;
        let mut at = fault.at + Duration::from_millis(rng.random_range(200..500));
        while at < end {
            actions.push((at, Action::Step(MOVE_LEADER)));
            at += Duration::from_millis(rng.random_range(500..1000));
        }
    },
    ..FaultSpec::DEFAULT
};

/// Ask the leader to hand over to a random follower.
const MOVE_LEADER: Step = Step::new("MoveLeader", |c, _, nemesis, _| {
    if let Some(leader) = nemesis.observer.leader() {
        let target = c.follower(leader.0);
        nemesis.controls[&leader.0].send_modify(|control| {
            control.transfers += 1;
            control.transfer_to = target;
        });
    }
});

pub const MEMBERSHIP_CHURN: FaultSpec = FaultSpec {
    // Time for a few changes, each of which waits for its commit.
    duration: |rng, _| Duration::from_millis(rng.random_range(6000..8000)),
    plan: |rng, fault, actions| {
        // Half the membership changes happen while the nodes are cut
        // apart anew every second or so.
        let end = fault.at + fault.duration;
        if rng.random_bool(0.5) {
            let mut at = fault.at + Duration::from_millis(rng.random_range(300..1500));
            while at < end {
                actions.push((at, Action::Step(REPARTITION)));
                at += Duration::from_millis(rng.random_range(800..1600));
            }
        }
    },
    start: |c, sim, nemesis| {
        c.churn_leader = Some(nemesis.observer.leader_and_term());
        // A third of the time a member (perhaps the leader, or the
        // node being added) freezes while the membership changes.
        if c.rng.random_bool(0.3) {
            let node = c.any_node();
            c.pause(sim, nemesis, node);
        }
    },
    watch: propose_at_new_leader,
    ..FaultSpec::DEFAULT
};

/// Half the time a new leader is asked for a change as soon as the
/// controller sees it lead: before it has committed an entry of its term
/// (it must refuse: Ongaro's 2015 fix), with perhaps a change of the
/// previous term still uncommitted.
fn propose_at_new_leader(c: &mut Controller, _: &mut turmoil::Sim<'_>, nemesis: &Nemesis<'_>) {
    let Some(seen) = c.churn_leader else {
        return;
    };
    let now = nemesis.observer.leader_and_term();
    if now == seen {
        return;
    }
    c.churn_leader = Some(now);
    let Some((leader, _)) = now else {
        return;
    };
    if !c.rng.random_bool(0.5) {
        return;
    }
    let (_, voters, learners) = nemesis.observer.committed_config();
    let spare = (FOUNDERS + 1..=POOL).find(|&id| {
        !c.removed[&id].load(Ordering::Relaxed)
            && !voters.contains(&NodeId(id))
            && !learners.contains(&NodeId(id))
    });
    let change = match spare {
        Some(spare) if learners.is_empty() && c.rng.random_bool(0.5) => {
            QuickChange::AddLearner(spare)
        }
        _ if voters.len() > VOTERS_MIN => {
            QuickChange::Remove(voters[c.rng.random_range(0..voters.len())].0)
        }
        _ => return,
    };
    nemesis.controls[&leader.0].send_modify(|control| {
        control.changes += 1;
        control.change = change;
    });
}
