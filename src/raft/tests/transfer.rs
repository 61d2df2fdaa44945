//! Leadership transfer (TimeoutNow).

use super::*;

/// Elects 1 with node 3 behind by a few entries.
fn cluster_with_lagging_3() -> Cluster {
    let mut c = Cluster::with(3, liveness);
    c.elect(1);
    c.cut_link(1, 3);
    for i in 0..5 {
        c.propose(1, &format!("v{i}"));
        c.deliver_all();
    }
    c.heartbeat(1);
    c.heal();
    assert!(c.node(3).log().last_index() < c.node(1).log().last_index());
    c
}

#[test]
fn a_transfer_brings_the_target_up_to_date_then_hands_over() {
    let mut c = cluster_with_lagging_3();
    let term = c.node(1).term();
    let last = c.node(1).log().last_index();
    assert_eq!(
        c.node_mut(1).transfer_leadership(Some(NodeId(3))),
        Ok(NodeId(3))
    );
    assert_eq!(
        c.node_mut(1).propose(b"during".to_vec()),
        Err(NotLeader {
            leader: Some(NodeId(3))
        }),
        "proposals are refused with the target as the hint"
    );
    // The probe to 3 went unanswered while the link was cut: the next
    // heartbeat sends 3 what it lacks, and its answer brings TimeoutNow.
    c.heartbeat(1);
    assert_eq!(c.leader(), Some(3));
    assert_eq!(c.node(3).term(), Term(term.0 + 1), "one election");
    assert!(
        c.node(3).log().last_index() > last,
        "its no-op follows all of 1's log"
    );
    c.heartbeat(3);
    assert_eq!(c.node(1).leader(), Some(NodeId(3)));
    assert_eq!(c.node(1).transfer_target(), None);
    assert!(c.node_mut(3).propose(b"after".to_vec()).is_ok());
}

#[test]
fn a_transfer_picks_the_most_up_to_date_follower_and_rejects_strangers() {
    let mut c = cluster_with_lagging_3();
    assert_eq!(
        c.node_mut(1).transfer_leadership(Some(NodeId(9))),
        Err(TransferRejected::UnknownNode(NodeId(9)))
    );
    assert_eq!(
        c.node_mut(2).transfer_leadership(None),
        Err(TransferRejected::NotLeader(NotLeader {
            leader: Some(NodeId(1))
        }))
    );
    assert_eq!(c.node_mut(1).transfer_leadership(None), Ok(NodeId(2)));
    c.deliver_all();
    assert_eq!(c.leader(), Some(2));
}

#[test]
fn a_transfer_aborts_after_an_election_timeout() {
    let mut c = Cluster::with(3, liveness);
    c.elect(1);
    c.isolate(3);
    c.propose(1, "x");
    c.deliver_all();
    c.node_mut(1)
        .transfer_leadership(Some(NodeId(3)))
        .expect("leader");
    assert!(c.node_mut(1).propose(b"y".to_vec()).is_err());
    for _ in 0..10 {
        c.node_mut(1).tick();
        c.deliver_all();
    }
    assert_eq!(c.node(1).transfer_target(), None);
    assert_eq!(c.leader(), Some(1));
    assert!(
        c.node_mut(1).propose(b"z".to_vec()).is_ok(),
        "proposals again"
    );
}

#[test]
fn timeout_now_from_anyone_but_the_current_leader_is_ignored() {
    let mut c = Cluster::with(3, liveness);
    c.elect(1);
    c.heartbeat(1);
    let term = c.node(2).term();
    let (last, last_log_term) = (c.node(2).log().last_index(), c.node(2).log().last_term());
    // From another node, from an older term, or for a log other than ours
    // (late: the transfer was aborted and the leader appended more).
    for (from, at, last) in [
        (3, term.0, last),
        (1, term.0 - 1, last),
        (1, term.0, last.next()),
    ] {
        c.node_mut(2).handle_timeout_now(TimeoutNow {
            term: Term(at),
            leader: NodeId(from),
            last_log_index: last,
            last_log_term,
        });
        assert_eq!(c.node(2).role(), Role::Follower);
        assert_eq!(c.node(2).term(), term);
    }
    c.node_mut(2).handle_timeout_now(TimeoutNow {
        term,
        leader: NodeId(1),
        last_log_index: last,
        last_log_term,
    });
    assert_eq!(c.node(2).role(), Role::Candidate, "the real one is obeyed");
}

#[test]
fn a_transfer_goes_only_to_a_follower_heard_from_lately_and_one_at_a_time() {
    let mut c = Cluster::with(3, liveness);
    c.elect(1);
    c.heartbeat(1);
    // Node 2 dies with a full match; 3 keeps answering.
    c.isolate(2);
    for _ in 0..2 * 10 {
        c.node_mut(1).tick();
        c.deliver_all();
    }
    assert_eq!(c.node_mut(1).transfer_leadership(None), Ok(NodeId(3)));
    assert_eq!(
        c.node_mut(1).transfer_leadership(Some(NodeId(2))),
        Err(TransferRejected::InProgress(NodeId(3)))
    );
}
