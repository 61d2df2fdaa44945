//! Message chaos: peer messages delivered late, after newer ones, and twice,
//! behind `lattice::server::MessageChaos`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lattice::raft::NodeId;
use lattice::server::{ChaosVerdict, MessageChaos, PeerMessage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Late, reordered and duplicated peer messages, while `active`.
pub struct ChaosState {
    rng: StdRng,
    pub active: bool,
    pub delayed: u64,
    pub duplicated: u64,
}

/// The Jepsen test's [`MessageChaos`]: while active, each peer message is
/// held back (arriving after later ones) with probability `DELAY_P` and
/// delivered once more, later, with probability `DUPLICATE_P` (`VOTE_P`
/// each for vote requests and responses).
#[derive(Clone)]
pub struct SimChaos(pub Arc<Mutex<ChaosState>>);

impl SimChaos {
    const DELAY_P: f64 = 0.05;
    const DUPLICATE_P: f64 = 0.05;
    const VOTE_P: f64 = 0.3;
    const DELAY_MAX: Duration = Duration::from_millis(1500);

    pub fn new(seed: u64) -> SimChaos {
        SimChaos(Arc::new(Mutex::new(ChaosState {
            rng: StdRng::seed_from_u64(seed),
            active: false,
            delayed: 0,
            duplicated: 0,
        })))
    }

    pub fn set_active(&self, active: bool) {
        self.0.lock().expect("chaos").active = active;
    }
}

impl MessageChaos for SimChaos {
    fn arrived(&self, _node: NodeId, message: &PeerMessage) -> ChaosVerdict {
        let mut c = self.0.lock().expect("chaos");
        let mut verdict = ChaosVerdict::default();
        if !c.active {
            return verdict;
        }
        // Votes are few and their timing is what elections hinge on, and
        // snapshots are few and arrive late or twice only under load: shake
        // them harder.
        let is_vote = matches!(
            message,
            PeerMessage::RequestVote(_)
                | PeerMessage::RequestVoteResponse { .. }
                | PeerMessage::InstallSnapshot(..)
        );
        let p = if is_vote { Self::VOTE_P } else { Self::DELAY_P };
        if c.rng.random_bool(p) {
            c.delayed += 1;
            verdict.delay = Some(
                c.rng
                    .random_range(Duration::from_millis(10)..Self::DELAY_MAX),
            );
        }
        let p = if is_vote {
            Self::VOTE_P
        } else {
            Self::DUPLICATE_P
        };
        if c.rng.random_bool(p) {
            c.duplicated += 1;
            let after = c
                .rng
                .random_range(Duration::from_millis(10)..Self::DELAY_MAX);
            verdict.copies.push((after, message.clone()));
        }
        verdict
    }
}
