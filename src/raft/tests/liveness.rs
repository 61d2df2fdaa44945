//! PreVote, CheckQuorum and the vote lease, with the etcd and openraft bugs they prevent.

use super::*;

fn pre_vote(term: u64, candidate: u64, last: (u64, u64)) -> RequestVote {
    RequestVote {
        term: Term(term),
        candidate: NodeId(candidate),
        last_log_index: LogIndex(last.0),
        last_log_term: Term(last.1),
        pre_vote: true,
        transfer: false,
    }
}

#[test]
fn a_pre_vote_changes_nothing_on_the_receiver() {
    let mut raft = follower_with_terms(&[1, 1, 2], 2);
    let before = raft.hard_state();
    let granted = raft.handle_request_vote(pre_vote(3, 3, (3, 2)));
    assert!(granted.vote_granted && granted.pre_vote);
    assert_eq!(granted.term, Term(3), "a grant carries the request's term");
    assert_eq!(raft.hard_state(), before, "no term raised, no vote cast");
    assert!(!raft.has_ready(), "nothing to persist");
    // An older log, or a term not above ours, is refused with our term.
    let older = raft.handle_request_vote(pre_vote(3, 3, (9, 1)));
    assert!(!older.vote_granted);
    assert_eq!(older.term, Term(2));
    let same_term = raft.handle_request_vote(pre_vote(2, 3, (3, 2)));
    assert!(!same_term.vote_granted);
    assert_eq!(raft.hard_state(), before);
}

#[test]
fn prevote_an_isolated_follower_keeps_its_term_and_rejoins_without_disruption() {
    let mut c = Cluster::with(3, liveness);
    c.elect(1);
    let term = c.node(1).term();
    c.isolate(3);
    c.run_rounds(200);
    assert_eq!(c.node(3).term(), term, "pre-votes never raise the term");
    assert_eq!(c.node(3).role(), Role::PreCandidate);
    assert_eq!(c.leader(), Some(1));
    c.heal();
    c.run_rounds(30);
    assert_eq!(c.leader(), Some(1), "the leader was not deposed");
    assert_eq!(c.node(1).term(), term);
    assert_eq!(c.node(3).role(), Role::Follower);
    assert_eq!(c.node(3).leader(), Some(NodeId(1)));
}

#[test]
fn without_prevote_an_isolated_follower_deposes_the_leader_on_rejoining() {
    // The negative control of the test above.
    let mut c = Cluster::new(3);
    c.elect(1);
    let term = c.node(1).term();
    c.isolate(3);
    c.run_rounds(60);
    assert!(c.node(3).term() > term);
    c.heal();
    c.run_rounds(60);
    assert!(c.node(1).term() > term, "the old leader's term was raised");
}

#[test]
fn check_quorum_steps_down_a_leader_cut_off_from_its_majority() {
    let mut c = Cluster::with(3, liveness);
    c.elect(1);
    c.node_mut(1).read_index(7).expect("a leader takes reads");
    c.isolate(1);
    for _ in 0..2 * 10 {
        c.node_mut(1).tick();
        c.deliver_all();
    }
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_eq!(
        c.node(1).leader(),
        None,
        "its clients are told to go elsewhere"
    );
    assert_eq!(c.reads_dropped[&NodeId(1)], vec![7]);
    // A leader that hears from its majority stays.
    let mut c = Cluster::with(3, liveness);
    c.elect(1);
    c.isolate(3);
    c.run_rounds(100);
    assert_eq!(c.leader(), Some(1));
}

#[test]
fn a_node_in_lease_ignores_votes_but_not_those_of_a_transfer() {
    let mut c = Cluster::with(3, liveness);
    c.elect(1);
    c.heartbeat(1);
    let term = c.node(2).term();
    let mut vote = pre_vote(term.0 + 1, 3, (9, 9));
    for pre in [true, false] {
        vote.pre_vote = pre;
        let response = c.node_mut(2).handle_request_vote(vote.clone());
        assert!(!response.vote_granted, "in lease (pre-vote: {pre})");
        assert_eq!(c.node(2).term(), term, "and its term is unchanged");
        assert_eq!(c.node(2).leader(), Some(NodeId(1)));
    }
    vote.transfer = true;
    assert!(c.node_mut(2).handle_request_vote(vote).vote_granted);
    assert_eq!(c.node(2).term(), Term(term.0 + 1));
}

#[test]
fn a_pre_candidate_forgets_its_leader_etcd_pr_8334() {
    // The leader dies. Node 2 times out first: 3, which still heard from
    // the leader recently, ignores its pre-vote. Then 3 times out: 2 must
    // grant it, though 2's timer restarted when it asked: a pre-candidate
    // that kept its leader would count itself in lease and refuse.
    let mut c = Cluster::with(3, liveness);
    c.elect(1);
    c.heartbeat(1);
    c.isolate(1);
    c.campaign(2);
    c.deliver_all();
    assert_eq!(c.node(2).role(), Role::PreCandidate, "3 was in lease");
    assert_eq!(c.node(2).leader(), None);
    c.campaign(3);
    c.deliver_all();
    assert_eq!(c.leader(), Some(3));
}

#[test]
fn a_pre_vote_rejection_teaches_the_higher_term_etcd_8501_openraft_1796() {
    // Node 2 has the longer log on a lower term; node 1 is on a higher term
    // with a shorter log (a candidate that lost). Each refuses the other;
    // the refusal carries node 1's term, so node 2 moves up to it and its
    // next pre-vote (and vote) succeeds.
    let mut long_low = follower_with_terms(&[1, 1, 1], 1);
    let mut short_high = Raft::new(
        {
            let mut c = config(1, 3);
            liveness(&mut c);
            c
        },
        HardState {
            term: Term(4),
            vote: Some(NodeId(1)),
        },
        vec![entry(1, 1)],
    );
    let refusal = short_high.handle_request_vote(pre_vote(2, 2, (3, 1)));
    assert!(!refusal.vote_granted);
    assert_eq!(refusal.term, Term(4));
    // Node 2 as a pre-candidate hears it and follows term 4.
    for _ in 0..40 {
        long_low.tick();
    }
    long_low.handle_request_vote_response(NodeId(1), refusal);
    assert_eq!(long_low.term(), Term(4));
    let ask = pre_vote(5, 2, (3, 1));
    assert!(short_high.handle_request_vote(ask).vote_granted);
}

#[test]
fn a_lower_term_append_is_answered_at_the_current_term_etcd_8243() {
    // CheckQuorum without PreVote: node 3, cut off, raised its term; the
    // others' lease ignores its votes, and its log is behind. It rejects the
    // leader's lower-term appends *with its term*, so the leader steps down
    // and a new election at a higher term takes node 3 back in.
    let mut c = Cluster::with(3, |cfg| cfg.check_quorum = true);
    c.elect(1);
    c.propose(1, "a");
    c.deliver_all();
    c.isolate(3);
    c.propose(1, "b");
    c.run_rounds(80);
    let stuck = c.node(3).term();
    assert!(stuck > c.node(1).term());
    let leader_term = c.node(1).term().0;
    let response = c
        .node_mut(3)
        .handle_append_entries(append(leader_term, (0, 0), &[], 0));
    assert_eq!(response.term, stuck, "answered at the current term");
    c.heal();
    c.run_rounds(100);
    let leader = c.leader().expect("a leader again");
    assert!(c.node(leader).term() >= stuck);
    assert_eq!(c.node(3).term(), c.node(leader).term());
    assert_eq!(c.node(3).leader(), Some(NodeId(leader)));
}

#[test]
fn a_leader_reaching_one_follower_steps_down_openraft_2080_cockroach_107060() {
    // Five voters. The old leader 1 reaches only 2 (the bridge); 2, 3 and 4
    // see each other; 5 is cut off. 3 and 4 need 2's vote, and 2 hears from
    // 1: only 1 stepping down (CheckQuorum) ends 2's lease. (CockroachDB
    // #107060 is this lease at work: followers hearing a leader that could
    // not serve would not elect another.)
    let mut c = Cluster::with(5, liveness);
    c.elect(1);
    c.heartbeat(1);
    let term = c.node(1).term();
    for other in [3, 4, 5] {
        c.cut_link(1, other);
    }
    for other in [2, 3, 4] {
        c.cut_link(5, other);
    }
    c.run_rounds(120);
    let leader = c.leader().expect("a leader");
    assert!([2, 3, 4].contains(&leader), "node {leader} leads");
    assert!(c.node(leader).term() > term);
    assert_ne!(c.node(1).role(), Role::Leader);
}
