//! Elections: at most one leader per term (election safety), a leader holds
//! a quorum of its term's votes from the voters of its configuration, and
//! no node votes twice in a term (its own candidacy included).

use lattice::raft::{NodeId, Role, Term};

use super::WhiteBox;
use crate::sim::now;

pub(super) fn role_changed(w: &mut WhiteBox, node: NodeId, term: Term, role: Role) {
    w.roles.insert(node, (term, role));
    if w.term_rises.last().is_none_or(|&(_, max)| term > max) {
        w.term_rises.push((now(), term));
    }
    if role == Role::Leader {
        // A leader holds a quorum of the votes of its term from the
        // voters of its configuration, its own included.
        let config = w.config_of(node).clone();
        let mut voters = w.votes.get(&(term, node)).cloned().unwrap_or_default();
        voters.insert(node);
        voters.retain(|v| config.is_voter(*v));
        if !config.is_voter(node) || voters.len() < config.quorum() {
            let message = format!(
                "election: node {node} leads term {term} with the votes of {voters:?} only (its configuration's voters are {:?})",
                config.voters().collect::<Vec<_>>()
            );
            w.violate(message);
        }
        match w.leaders.get(&term) {
            Some(&other) if other != node => {
                let message =
                    format!("election safety: nodes {other} and {node} both led term {term}");
                w.violate(message);
            }
            Some(_) => {}
            None => {
                w.leaders.insert(term, node);
                w.elections.push((now(), term, node));
            }
        }
    }
}

pub(super) fn vote_granted(w: &mut WhiteBox, node: NodeId, term: Term, candidate: NodeId) {
    w.votes.entry((term, candidate)).or_default().insert(node);
    // A vote is durable before it leaves: one per node and term, ever.
    match w.voted.get(&(node, term)) {
        Some(&other) if other != candidate => {
            let message = format!(
                "election: node {node} voted for {other} and for {candidate} in term {term}"
            );
            w.violate(message);
        }
        Some(_) => {}
        None => {
            w.voted.insert((node, term), candidate);
        }
    }
}
