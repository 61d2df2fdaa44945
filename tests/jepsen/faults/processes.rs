//! Processes stopped without being killed: the leader frozen past an
//! election timeout (SIGSTOP, Jepsen's pause nemesis), and a rolling restart
//! by graceful stops (SIGTERM: a leader hands over first).

use std::time::Duration;

use rand::Rng;

use super::FaultSpec;
use crate::nemesis::{Action, Step};
use crate::FOUNDERS;

pub const PAUSE_LEADER: FaultSpec = FaultSpec {
    start: |c, sim, nemesis| {
        // Jepsen's pause nemesis: freeze (mostly) the leader, as
        // SIGSTOP would. What it sends and what is sent to it waits
        // in the network; it wakes up with its old beliefs.
        let node = if c.rng.random_bool(0.8) {
            c.leader_or_any(nemesis.observer)
        } else {
            c.any_node()
        };
        c.pause(sim, nemesis, node);
    },
    ..FaultSpec::DEFAULT
};

pub const ROLLING_RESTART: FaultSpec = FaultSpec {
    is_clean: true,
    // 1.2 s per node.
    duration: |_, _| Duration::from_millis(1200 * FOUNDERS + 600),
    plan: |_, fault, actions| {
        for i in 0..FOUNDERS as usize {
            let stop = fault.at + Duration::from_millis(1200 * i as u64 + 100);
            actions.push((stop, Action::Step(ROLLING_STOP.with(i))));
            actions.push((
                stop + Duration::from_millis(600),
                Action::Step(ROLLING_START.with(i)),
            ));
        }
    },
    start: |c, _, nemesis| {
        // Followers first, the leader last, as an operator would.
        let leader = c.leader_or_any(nemesis.observer);
        let mut order = c.followers(leader);
        order.push(leader);
        c.rolling = order;
    },
    ..FaultSpec::DEFAULT
};

/// Stop the `arg`th node of the order gracefully.
const ROLLING_STOP: Step = Step::new("RollingStop", |c, _, nemesis, i| {
    if let Some(&node) = c.rolling.get(i) {
        nemesis.controls[&node].send_modify(|control| control.running = false);
    }
});

/// Start it again.
const ROLLING_START: Step = Step::new("RollingStart", |c, sim, nemesis, i| {
    if let Some(&node) = c.rolling.get(i) {
        nemesis.controls[&node].send_modify(|control| control.running = true);
        // Unless it is still draining (it then starts as it exits).
        c.restart(sim, node);
    }
});
