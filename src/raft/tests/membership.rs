//! Membership changes: learners, one change at a time, removals, configurations through compaction.

use super::*;

fn add_learner(id: u64) -> ConfChange {
    ConfChange::Add {
        id: NodeId(id),
        raft_addr: format!("127.0.0.{id}:7001"),
        kv_addr: format!("127.0.0.{id}:7002"),
        is_learner: true,
    }
}

fn voters(raft: &Raft) -> Vec<u64> {
    raft.membership().voters().map(|v| v.0).collect()
}

#[test]
fn a_learner_catches_up_without_voting_and_is_promoted_only_once_caught_up() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, "a");
    c.deliver_all();
    let learner = c.add_joining_node();
    let at = c.change(1, add_learner(learner)).expect("added");
    c.heartbeat(1);
    assert!(c.node(1).log().commit() >= at, "the change committed");
    for id in 1..=4 {
        assert!(c.node(id).membership().is_learner(NodeId(4)), "node {id}");
        assert_eq!(voters(c.node(id)), [1, 2, 3], "node {id}");
    }
    assert_eq!(
        c.node(4).log().commit(),
        c.node(1).log().commit(),
        "it caught up"
    );
    // A learner never campaigns, however long it hears nothing.
    c.isolate(4);
    for _ in 0..100 {
        c.node_mut(4).tick();
    }
    assert_eq!(c.node(4).role(), Role::Follower);
    assert_eq!(c.node(4).term(), c.node(1).term());
    // Behind: not promoted, with a clear reason.
    for i in 0..30 {
        c.propose(1, &format!("v{i}"));
    }
    c.deliver_all();
    assert!(matches!(
        c.node_mut(1)
            .propose_conf_change(&ConfChange::Promote(NodeId(4))),
        Err(ConfChangeRejected::LearnerBehind { .. })
    ));
    c.heal();
    c.heartbeat(1);
    c.heartbeat(1);
    let at = c
        .change(1, ConfChange::Promote(NodeId(4)))
        .expect("promoted");
    c.heartbeat(1);
    assert!(c.node(1).log().commit() >= at);
    assert_eq!(voters(c.node(4)), [1, 2, 3, 4]);
    // Four voters: a majority is three, so two nodes cannot commit.
    c.isolate(3);
    c.isolate(4);
    let index = c.propose(1, "needs three");
    c.deliver_all();
    c.heartbeat(1);
    assert!(
        c.node(1).log().commit() < index,
        "two of four voters do not commit"
    );
    c.heal();
    c.heartbeat(1);
    assert!(c.node(1).log().commit() >= index);
}

#[test]
fn a_learner_does_not_count_toward_commit() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let learner = c.add_joining_node();
    c.change(1, add_learner(learner)).expect("added");
    c.heartbeat(1);
    // Only the leader and the learner hear each other.
    c.isolate(2);
    c.isolate(3);
    let index = c.propose(1, "x");
    c.deliver_all();
    c.heartbeat(1);
    assert_eq!(c.node(4).log().last_index(), index, "the learner has it");
    assert!(
        c.node(1).log().commit() < index,
        "a leader and a learner are not a majority of three voters"
    );
    // Nor does it vote: a candidate needs two of the three voters.
    assert_eq!(
        c.node(1).membership().quorum(),
        2,
        "the learner is not in the quorum"
    );
}

#[test]
fn one_change_at_a_time_and_only_after_a_commit_of_the_leaders_term() {
    let mut c = Cluster::new(3);
    c.campaign(1);
    // Elected, but nothing of its term committed yet: its no-op is out.
    c.deliver_filtered(|e| {
        matches!(
            e,
            Envelope::Request(_, _, Message::RequestVote(_)) | Envelope::VoteResponse(..)
        )
    });
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(
        c.node_mut(1).propose_conf_change(&add_learner(4)),
        Err(ConfChangeRejected::NotReady)
    );
    c.heartbeat(1);
    c.isolate(2);
    c.isolate(3);
    c.node_mut(1)
        .propose_conf_change(&add_learner(4))
        .expect("first change");
    assert_eq!(
        c.node_mut(1).propose_conf_change(&add_learner(5)),
        Err(ConfChangeRejected::ChangePending),
        "the first is not committed"
    );
    assert_eq!(
        c.node_mut(2).propose_conf_change(&add_learner(5)),
        Err(ConfChangeRejected::NotLeader(Some(NodeId(1))))
    );
    // Ids are never reused.
    c.heal();
    c.heartbeat(1);
    c.change(1, ConfChange::Remove(NodeId(4))).expect("removed");
    c.heartbeat(1);
    assert_eq!(
        c.node_mut(1).propose_conf_change(&add_learner(4)),
        Err(ConfChangeRejected::IdTaken(NodeId(4)))
    );
}

#[test]
fn a_removed_leader_leads_until_the_removal_commits_then_steps_down() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(2);
    c.isolate(3);
    let at = c
        .node_mut(1)
        .propose_conf_change(&ConfChange::Remove(NodeId(1)))
        .expect("proposed");
    c.process(NodeId(1));
    assert_eq!(c.node(1).role(), Role::Leader, "not committed yet");
    assert_eq!(voters(c.node(1)), [2, 3], "in force once in the log");
    c.heal();
    c.deliver_all();
    c.heartbeat(1);
    assert!(c.node(2).log().commit() >= at || c.node(1).log().commit() >= at);
    assert_eq!(c.node(1).role(), Role::Follower, "stepped down");
    // It never campaigns again; the others elect among themselves.
    for _ in 0..100 {
        c.node_mut(1).tick();
    }
    assert_eq!(c.node(1).role(), Role::Follower);
    c.isolate(1);
    c.run_rounds(60);
    let leader = (2..=3).find(|&id| c.node(id).role() == Role::Leader);
    assert!(leader.is_some(), "2 and 3 elect a leader");
    let leader = leader.unwrap();
    let index = c.propose(leader, "after");
    c.deliver_all();
    c.heartbeat(leader);
    assert!(
        c.node(leader).log().commit() >= index,
        "two of two voters commit"
    );
}

#[test]
fn a_configuration_entry_cut_from_the_log_is_forgotten() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(1);
    c.node_mut(1)
        .propose_conf_change(&add_learner(4))
        .expect("proposed");
    c.process(NodeId(1));
    assert!(c.node(1).membership().contains(NodeId(4)));
    c.elect(2);
    c.propose(2, "overwrites");
    c.deliver_all();
    c.heal();
    c.heartbeat(2);
    c.heartbeat(2);
    assert_eq!(c.node(1).role(), Role::Follower);
    assert!(
        !c.node(1).membership().contains(NodeId(4)),
        "the uncommitted change was truncated away with its entry"
    );
    assert_eq!(c.node(1).log().last_index(), c.node(2).log().last_index());
}

#[test]
fn the_configuration_survives_compaction_and_restart_and_reaches_a_learner_by_snapshot() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let learner = c.add_joining_node();
    c.change(1, add_learner(learner)).expect("added");
    c.heartbeat(1);
    c.change(1, ConfChange::Remove(NodeId(3))).expect("removed");
    c.heartbeat(1);
    for i in 0..10 {
        c.propose(1, &format!("v{i}"));
    }
    c.heartbeat(1);
    for id in 1..=2 {
        c.snapshot(id, 0);
        c.restart(id);
        assert_eq!(voters(c.node(id)), [1, 2], "node {id} after restart");
        assert!(c.node(id).membership().is_learner(NodeId(4)));
        assert!(c.node(id).membership().removed.contains(&NodeId(3)));
    }
    c.elect(1);
    // A second learner joins after compaction: it gets the snapshot, and
    // with it the configuration.
    c.heartbeat(1);
    c.snapshot(1, 0);
    let late = c.add_joining_node();
    c.change(1, add_learner(late)).expect("added");
    c.heartbeat(1);
    c.heartbeat(1);
    assert_eq!(
        c.installs.get(&NodeId(late)),
        Some(&1),
        "caught up by snapshot"
    );
    assert_eq!(voters(c.node(late)), [1, 2]);
    assert!(c.node(late).membership().is_learner(NodeId(late)));
    assert_eq!(c.node(late).log().commit(), c.node(1).log().commit());
}

#[test]
fn a_removed_follower_hears_of_its_removal() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let at = c.change(1, ConfChange::Remove(NodeId(3))).expect("removed");
    c.heartbeat(1);
    assert!(c.node(1).log().commit() >= at);
    assert!(
        c.node(3).log().commit() >= at,
        "node 3 learned that its removal committed (it then stops)"
    );
    assert!(c.applied[&NodeId(3)].iter().any(|e| e.index == at));
    // Then the leader no longer talks to it.
    let delivered = c.delivered;
    c.heartbeat(1);
    assert!(c.delivered > delivered);
    assert!(
        c.queue.iter().all(|e| e.route().1 != NodeId(3)),
        "nothing more for node 3"
    );
}

#[test]
fn a_leader_gives_up_on_a_removed_node_that_never_catches_up() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(3);
    let at = c.change(1, ConfChange::Remove(NodeId(3))).expect("removed");
    c.heartbeat(1);
    assert!(c.node(1).log().commit() >= at);
    assert!(
        c.node(1).peers().contains(&NodeId(3)),
        "still replicated to, so that it learns of its removal"
    );
    let timeouts =
        super::node::LEAVING_TICKS_ELECTIONS * c.node(1).config().election_timeout_ticks_max;
    for _ in 0..timeouts {
        c.node_mut(1).tick();
        c.deliver_all();
    }
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(
        c.node(1).peers(),
        [NodeId(2)],
        "given up after ten election timeouts"
    );
}

#[test]
fn a_node_its_log_removes_asks_the_members_and_never_campaigns() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.change(1, ConfChange::Remove(NodeId(3))).expect("removed");
    c.heartbeat(1);
    c.queue.clear();
    let term = c.node(3).term();
    // No leader heard for an election timeout (the leader no longer talks
    // to it): it asks the members, as a pre-vote it will not use.
    for _ in 0..=c.node(3).config().election_timeout_ticks_max {
        c.node_mut(3).tick();
    }
    c.process(NodeId(3));
    let asked: Vec<NodeId> = c
        .queue
        .iter()
        .filter_map(|e| match e {
            Envelope::Request(from, to, Message::RequestVote(r)) if from.0 == 3 => {
                assert!(r.pre_vote, "only ever a pre-vote: {r:?}");
                Some(*to)
            }
            _ => None,
        })
        .collect();
    assert_eq!(asked, [NodeId(1), NodeId(2)]);
    c.deliver_all();
    assert_eq!(c.node(3).role(), Role::Follower, "it never campaigns");
    assert_eq!(c.node(3).term(), term);
    assert_eq!(c.node(1).role(), Role::Leader, "nobody is disturbed");
}
