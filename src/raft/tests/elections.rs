//! Elections: majorities, one vote per term, up-to-date logs, stepping down on a higher term, and timers.

use super::*;

#[test]
fn a_candidate_with_a_majority_becomes_the_only_leader() {
    let mut c = Cluster::new(3);
    c.elect(1);
    assert_eq!(c.node(1).term(), Term(1));
    for id in [2, 3] {
        assert_eq!(c.node(id).role(), Role::Follower);
        assert_eq!(c.node(id).leader(), Some(NodeId(1)));
        assert_eq!(
            c.disks[&NodeId(id)].hard_state.vote,
            Some(NodeId(1)),
            "vote durable"
        );
    }
    // The leader's no-op of term 1 is committed, and applied everywhere once
    // a heartbeat carries the commit index.
    assert_eq!(c.applied[&NodeId(1)].len(), 1);
    c.heartbeat(1);
    for id in 1..=3 {
        assert_eq!(c.applied[&NodeId(id)].len(), 1, "node {id}");
    }
}

#[test]
fn a_candidate_without_a_majority_does_not_lead() {
    let mut c = Cluster::new(5);
    c.isolate(1);
    c.cut.remove(&(NodeId(1), NodeId(2)));
    c.cut.remove(&(NodeId(2), NodeId(1)));
    c.campaign(1);
    c.deliver_all();
    assert_eq!(
        c.node(1).role(),
        Role::Candidate,
        "2 votes of 5 are not a majority"
    );
}

#[test]
fn a_node_votes_at_most_once_per_term() {
    let mut raft = Raft::new(config(1, 3), HardState::default(), Vec::new());
    let ask = |candidate| RequestVote {
        term: Term(5),
        candidate: NodeId(candidate),
        last_log_index: LogIndex(0),
        last_log_term: Term(0),
        pre_vote: false,
        transfer: false,
    };
    assert!(raft.handle_request_vote(ask(2)).vote_granted);
    assert!(
        !raft.handle_request_vote(ask(3)).vote_granted,
        "second candidate, same term"
    );
    assert!(
        raft.handle_request_vote(ask(2)).vote_granted,
        "the same candidate again is fine"
    );
    assert_eq!(
        raft.hard_state(),
        HardState {
            term: Term(5),
            vote: Some(NodeId(2))
        }
    );
}

#[test]
fn votes_go_only_to_candidates_with_up_to_date_logs() {
    let entries = vec![
        Entry {
            term: Term(1),
            index: LogIndex(1),
            data: vec![],
        },
        Entry {
            term: Term(3),
            index: LogIndex(2),
            data: vec![],
        },
    ];
    let state = HardState {
        term: Term(3),
        vote: None,
    };
    let ask = |last_log_term, last_log_index| RequestVote {
        term: Term(4),
        candidate: NodeId(2),
        last_log_index: LogIndex(last_log_index),
        last_log_term: Term(last_log_term),
        pre_vote: false,
        transfer: false,
    };
    let cases = [
        ((2, 9), false, "older last term loses whatever its length"),
        ((3, 1), false, "same last term, shorter log"),
        ((3, 2), true, "same last term, same length"),
        ((3, 3), true, "same last term, longer log"),
        ((4, 1), true, "newer last term wins whatever its length"),
    ];
    for ((term, index), granted, why) in cases {
        let mut raft = Raft::new(config(1, 3), state, entries.clone());
        assert_eq!(
            raft.handle_request_vote(ask(term, index)).vote_granted,
            granted,
            "{why}"
        );
    }
}

#[test]
fn a_stale_log_cannot_win_an_election() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.cut_link(1, 3);
    c.propose(1, "a");
    c.propose(1, "b");
    c.deliver_all();
    assert_eq!(c.node(2).log().last_index(), LogIndex(3));
    assert_eq!(c.node(3).log().last_index(), LogIndex(1));
    c.heal();
    c.isolate(1);
    c.campaign(3);
    c.deliver_all();
    assert_ne!(
        c.node(3).role(),
        Role::Leader,
        "node 2 has entries node 3 lacks"
    );
    c.elect(2);
    assert_eq!(
        c.node(2).log().commit(),
        LogIndex(4),
        "the new leader commits its no-op"
    );
}

#[test]
fn any_message_with_a_higher_term_makes_a_leader_step_down() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let leader = c.node_mut(1);
    leader.handle_append_entries_response(
        NodeId(2),
        AppendEntriesResponse {
            term: Term(9),
            success: false,
            match_index: LogIndex(0),
            conflict_term: Term(0),
            conflict_index: LogIndex(0),
            read_round: 0,
            rejected_index: LogIndex(0),
        },
    );
    assert_eq!(leader.role(), Role::Follower);
    assert_eq!(leader.term(), Term(9));
    assert_eq!(
        leader.hard_state().vote,
        None,
        "a new term starts without a vote"
    );
}

#[test]
fn append_entries_from_a_stale_term_is_rejected_with_the_current_term() {
    let mut raft = Raft::new(
        config(2, 3),
        HardState {
            term: Term(5),
            vote: None,
        },
        Vec::new(),
    );
    let response = raft.handle_append_entries(AppendEntries {
        term: Term(4),
        leader: NodeId(1),
        prev_log_index: LogIndex(0),
        prev_log_term: Term(0),
        entries: vec![Entry {
            term: Term(4),
            index: LogIndex(1),
            data: vec![],
        }],
        leader_commit: LogIndex(1),
        read_round: 0,
    });
    assert!(!response.success);
    assert_eq!(response.term, Term(5));
    assert_eq!(raft.log().last_index(), LogIndex(0));
}

#[test]
fn heartbeats_keep_followers_from_campaigning() {
    let mut c = Cluster::new(3);
    c.elect(1);
    for _ in 0..200 {
        for id in 1..=3 {
            c.node_mut(id).tick();
        }
        c.deliver_all();
    }
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(c.node(1).term(), Term(1), "no election happened");
}

/// Found by the simulation with skewed clocks: a candidate whose log is
/// behind, ticking fast, asked for votes every few ticks with ever higher
/// terms; each refusal restarted the up-to-date nodes' election timers, so
/// none ever campaigned and the cluster had no leader for good.
#[test]
fn refused_vote_requests_do_not_hold_back_an_up_to_date_follower() {
    let entries = vec![Entry {
        term: Term(1),
        index: LogIndex(1),
        data: vec![],
    }];
    let state = HardState {
        term: Term(1),
        vote: None,
    };
    let mut raft = Raft::new(config(1, 3), state, entries);
    let mut term = 1;
    for tick in 0..=20 {
        if tick % 5 == 0 {
            term += 1;
            let response = raft.handle_request_vote(RequestVote {
                term: Term(term),
                candidate: NodeId(2),
                last_log_index: LogIndex(0),
                last_log_term: Term(0),
                pre_vote: false,
                transfer: false,
            });
            assert!(!response.vote_granted, "node 2's log is behind");
        }
        raft.tick();
        if raft.role() == Role::Candidate {
            return;
        }
    }
    panic!("node 1 never campaigned: refused vote requests kept restarting its timer");
}

#[test]
fn an_isolated_follower_campaigns_after_its_timeout() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(3);
    for _ in 0..21 {
        for id in 1..=3 {
            c.node_mut(id).tick();
        }
        c.deliver_all();
    }
    assert_eq!(c.node(3).role(), Role::Candidate);
    assert!(c.node(3).term() > Term(1));
}
