//! Durability and `Ready`: background storage reports, the sending rule, a leader counting its own copy only once durable, restarts.

use super::*;

/// Storage works in the background: a late report about entries that a
/// newer leader has since replaced must not mark the new ones durable.
#[test]
fn a_late_durability_report_about_replaced_entries_is_ignored() {
    let mut log = RaftLog::default();
    for index in 1..=3 {
        log.push(entry(1, index));
    }
    assert_eq!(log.take_unpersisted().len(), 3, "the first write");
    log.merge(vec![entry(2, 2), entry(2, 3)]);
    assert_eq!(
        log.persisting(),
        LogIndex(1),
        "the truncation reaches storage next"
    );
    let second = log.take_unpersisted();
    assert_eq!(second.first().map(|e| e.index), Some(LogIndex(2)));
    log.persisted_to(LogIndex(3), Term(1));
    assert_eq!(
        log.persisted(),
        LogIndex(0),
        "the first write's report names entries that are gone"
    );
    log.persisted_to(LogIndex(3), Term(2));
    assert_eq!(log.persisted(), LogIndex(3));
    log.persisted_to(LogIndex(2), Term(2));
    assert_eq!(log.persisted(), LogIndex(3), "never backwards");
}

/// `Ready` states the sending rule: a candidate's RequestVote (its term and
/// own vote not yet durable) waits for the write; a leader's AppendEntries
/// in a `Ready` that changes no term or vote leaves at once.
#[test]
fn ready_sorts_messages_by_whether_they_wait_for_the_write() {
    let mut node = Raft::new(config(1, 3), HardState::default(), Vec::new());
    for _ in 0..=20 {
        node.tick();
        if node.role() == Role::Candidate {
            break;
        }
    }
    assert_eq!(node.role(), Role::Candidate);
    let campaign = node.ready();
    assert!(campaign.hard_state.is_some(), "the new term and own vote");
    assert!(campaign.messages.is_empty(), "nothing leaves before them");
    assert_eq!(
        campaign.persisted_messages.len(),
        2,
        "one RequestVote per peer"
    );
    assert!(campaign
        .persisted_messages
        .iter()
        .all(|(_, m)| matches!(m, Message::RequestVote(_))));
    node.advance();
    node.handle_request_vote_response(
        NodeId(2),
        RequestVoteResponse {
            term: node.term(),
            vote_granted: true,
            pre_vote: false,
        },
    );
    assert_eq!(node.role(), Role::Leader);
    let leading = node.ready();
    assert!(leading.hard_state.is_none());
    assert!(leading.persisted_messages.is_empty());
    assert_eq!(leading.messages.len(), 2, "the no-op to each follower");
    assert!(leading
        .messages
        .iter()
        .all(|(_, m)| matches!(m, Message::AppendEntries(_))));
}

/// A leader sends its entries before its own disk has them (thesis 10.2.1),
/// so it must not count its own copy until the disk says it is durable.
#[test]
fn a_leader_counts_its_own_entries_only_once_durable() {
    let mut leader = Raft::new(config(1, 3), HardState::default(), Vec::new());
    for _ in 0..=20 {
        leader.tick();
        if leader.role() == Role::Candidate {
            break;
        }
    }
    let votes = leader.ready();
    assert!(votes.hard_state.is_some());
    leader.advance();
    leader.handle_request_vote_response(
        NodeId(2),
        RequestVoteResponse {
            term: leader.term(),
            vote_granted: true,
            pre_vote: false,
        },
    );
    assert_eq!(leader.role(), Role::Leader);
    let ready = leader.ready();
    let no_op = ready.entries.last().expect("the no-op").clone();
    // Follower 2 acknowledges the no-op; the leader's own write is not
    // durable yet: one copy of three is not a majority.
    leader.handle_append_entries_response(
        NodeId(2),
        AppendEntriesResponse {
            term: leader.term(),
            success: true,
            match_index: no_op.index,
            conflict_term: Term(0),
            conflict_index: LogIndex(0),
            read_round: 0,
            rejected_index: LogIndex(0),
        },
    );
    assert_eq!(
        leader.log().commit(),
        LogIndex(0),
        "own copy not durable yet"
    );
    leader.persisted(no_op.index, no_op.term);
    assert_eq!(leader.log().commit(), no_op.index, "now two of three");
}

#[test]
fn restart_from_durable_state_keeps_term_vote_and_log() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, "a");
    c.deliver_all();
    let disk = c.disks[&NodeId(2)].clone();
    let restarted = Raft::new(config(2, 3), disk.hard_state, disk.entries_after_snapshot());
    assert_eq!(restarted.term(), Term(1));
    assert_eq!(restarted.hard_state().vote, Some(NodeId(1)));
    assert_eq!(restarted.log().last_index(), LogIndex(2));
    assert_eq!(
        restarted.log().commit(),
        LogIndex(0),
        "commit is relearned from the leader"
    );
}
