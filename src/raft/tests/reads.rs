//! Linearizable reads (ReadIndex): confirmation by a quorum round, shared rounds, dropped reads, the own-term commit.

use super::*;

#[test]
fn a_read_is_released_only_after_a_majority_confirms_the_leader() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(1);
    c.node_mut(1).read_index(7).expect("leader");
    c.deliver_all();
    assert_eq!(
        c.reads_released[&NodeId(1)],
        Vec::<u64>::new(),
        "no majority answered"
    );
    c.heal();
    c.node_mut(1).read_index(8).expect("leader");
    c.deliver_all();
    assert_eq!(
        c.reads_released[&NodeId(1)],
        Vec::<u64>::new(),
        "round 1 is still out (its heartbeats were lost): read 8 waits for round 2"
    );
    c.heartbeat(1);
    assert_eq!(
        c.reads_released[&NodeId(1)],
        vec![7, 8],
        "the periodic heartbeat retries round 1, then round 2 confirms read 8"
    );
    // With one follower cut, the other still makes a majority.
    c.cut_link(1, 3);
    c.node_mut(1).read_index(9).expect("leader");
    c.deliver_all();
    assert_eq!(c.reads_released[&NodeId(1)], vec![7, 8, 9]);
}

#[test]
fn reads_arriving_during_a_round_share_the_next_one() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.deliver_all();
    let heartbeats = |c: &Cluster| {
        c.queue
            .iter()
            .filter(|e| matches!(e, Envelope::Request(_, _, Message::AppendEntries(m)) if m.entries.is_empty()))
            .count()
    };
    c.node_mut(1).read_index(1).expect("leader");
    c.process(NodeId(1));
    assert_eq!(heartbeats(&c), 2, "round 1: one heartbeat per follower");
    for context in 2..=50 {
        c.node_mut(1).read_index(context).expect("leader");
        c.process(NodeId(1));
    }
    assert_eq!(heartbeats(&c), 2, "no new round while round 1 is out");
    c.deliver_all();
    assert_eq!(
        c.reads_released[&NodeId(1)],
        (1..=50).collect::<Vec<u64>>(),
        "round 1 released read 1, one round 2 the other 49"
    );
}

#[test]
fn a_deposed_leader_drops_its_pending_reads() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(1);
    c.node_mut(1).read_index(1).expect("leader");
    c.deliver_all();
    c.elect(2);
    c.heal();
    c.heartbeat(2);
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_eq!(c.reads_dropped[&NodeId(1)], vec![1]);
    assert!(
        c.reads_released[&NodeId(1)].is_empty(),
        "a deposed leader never answers the read"
    );
    assert_eq!(
        c.node_mut(1).read_index(2),
        Err(ReadRejected::NotLeader(NotLeader {
            leader: Some(NodeId(2))
        }))
    );
}

#[test]
fn a_new_leader_serves_reads_only_after_committing_in_its_term() {
    let mut c = Cluster::new(3);
    c.campaign(1);
    c.deliver_filtered(|e| !matches!(e, Envelope::Request(_, _, Message::AppendEntries(_))));
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(c.node_mut(1).read_index(1), Err(ReadRejected::NotReady));
    c.node_mut(1).tick();
    c.node_mut(1).tick();
    c.node_mut(1).tick();
    c.deliver_all();
    assert_eq!(c.node_mut(1).read_index(2), Ok(()));
}
