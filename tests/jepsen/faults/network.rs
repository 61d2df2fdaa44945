//! The network misbehaving without cuts: every link slower and one node's
//! slower still, and messages lost.

use std::time::Duration;

use rand::Rng;

use super::FaultSpec;
use crate::cluster::host;
use crate::POOL;

pub const LATENCY_SPIKE: FaultSpec = FaultSpec {
    start: |c, sim, _| {
        // Every link slows down, and one node's links three times
        // more (a struggling follower falls behind the others).
        let latency = Duration::from_millis(c.rng.random_range(150..600));
        let slowest = c.any_node();
        for a in 1..=POOL {
            for b in (a + 1)..=POOL {
                let latency = if a == slowest || b == slowest {
                    latency * 3
                } else {
                    latency
                };
                sim.set_link_latency(host(a), host(b), latency);
            }
        }
    },
    ..FaultSpec::DEFAULT
};

pub const MESSAGE_LOSS: FaultSpec = FaultSpec {
    start: |_, sim, _| {
        for a in 1..=POOL {
            for b in (a + 1)..=POOL {
                sim.set_link_fail_rate(host(a), host(b), 0.02);
            }
        }
    },
    ..FaultSpec::DEFAULT
};
