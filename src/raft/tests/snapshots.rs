//! Snapshots and compaction: restarts from a snapshot, installs, catch-up by snapshot, compaction limits.

use super::*;

/// A follower restored from a snapshot at (`index`, `term`) with `after`
/// entries (terms) following it.
fn follower_from_snapshot(index: u64, term: u64, after: &[u64], current: u64) -> Raft {
    let entries = after
        .iter()
        .enumerate()
        .map(|(i, &t)| Entry {
            term: Term(t),
            index: LogIndex(index + 1 + i as u64),
            data: vec![t as u8],
        })
        .collect();
    Raft::restore(
        config(2, 3),
        HardState {
            term: Term(current),
            vote: None,
        },
        SnapshotMeta {
            index: LogIndex(index),
            term: Term(term),
        },
        Membership::bootstrap(&config(2, 3).voters),
        entries,
    )
}

/// The configuration of the three-node cluster of these tests.
fn three() -> Membership {
    Membership::bootstrap(&config(1, 3).voters)
}

fn install(term: u64) -> InstallSnapshot {
    InstallSnapshot {
        term: Term(term),
        leader: NodeId(1),
        read_round: 0,
    }
}

fn meta(index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta {
        index: LogIndex(index),
        term: Term(term),
    }
}

#[test]
fn a_restart_from_a_snapshot_starts_committed_and_applied_at_it() {
    let raft = follower_from_snapshot(10, 2, &[2, 3], 3);
    assert_eq!(raft.log().offset(), meta(10, 2));
    assert_eq!(raft.log().commit(), LogIndex(10), "a snapshot is committed");
    assert_eq!(raft.log().last_index(), LogIndex(12));
    assert_eq!(
        raft.log().term(LogIndex(10)),
        Some(Term(2)),
        "the term at the snapshot"
    );
    assert_eq!(raft.log().term(LogIndex(9)), None, "compacted away");
    // Its last term votes correctly even with no entries after the snapshot.
    let bare = follower_from_snapshot(10, 2, &[], 3);
    assert_eq!(bare.log().last_term(), Term(2));
}

#[test]
fn append_entries_anchored_below_the_snapshot_is_re_anchored_at_it() {
    // A late AppendEntries from before the snapshot: entries 6..12 after 5.
    let mut raft = follower_from_snapshot(10, 2, &[], 3);
    let r = raft.handle_append_entries(append(
        3,
        (5, 2),
        &[(6, 2), (7, 2), (8, 2), (9, 2), (10, 2), (11, 3), (12, 3)],
        12,
    ));
    assert!(r.success, "{r:?}");
    assert_eq!(r.match_index, LogIndex(12));
    assert_eq!(raft.log().offset().index, LogIndex(10));
    assert_eq!(raft.log().last_index(), LogIndex(12));
    assert_eq!(raft.log().commit(), LogIndex(12));
    // A heartbeat anchored below the snapshot matches at the snapshot.
    let mut raft = follower_from_snapshot(10, 2, &[3], 3);
    let r = raft.handle_append_entries(append(3, (4, 1), &[], 10));
    assert!(r.success);
    assert_eq!(r.match_index, LogIndex(10));
    assert_eq!(raft.log().last_index(), LogIndex(11), "nothing cut");
}

#[test]
fn a_snapshot_at_or_below_the_commit_index_is_not_installed() {
    let mut raft = follower_from_snapshot(10, 2, &[3, 3], 3);
    raft.handle_append_entries(append(3, (12, 3), &[], 12));
    assert_eq!(raft.log().commit(), LogIndex(12));
    for index in [5, 10, 12] {
        let (r, is_accepted) = raft.handle_install_snapshot(install(3), meta(index, 2), three());
        assert!(!is_accepted, "snapshot at {index}");
        assert!(r.success, "answered as an append at the commit index");
        assert_eq!(r.match_index, LogIndex(12));
        assert_eq!(raft.log().last_index(), LogIndex(12), "nothing cut");
        assert_eq!(raft.log().commit(), LogIndex(12), "commit never moves back");
    }
    assert!(raft.ready().snapshot.is_none());
}

#[test]
fn an_installed_snapshot_keeps_the_log_after_it_only_if_it_matches() {
    // The log holds the snapshot's last entry: what follows it stays.
    let mut raft = follower_with_terms(&[1, 1, 2, 2, 2], 2);
    let (r, is_accepted) = raft.handle_install_snapshot(install(2), meta(3, 2), three());
    assert!(is_accepted && r.success);
    assert_eq!(r.match_index, LogIndex(3));
    assert_eq!(raft.log().offset(), meta(3, 2));
    assert_eq!(raft.log().last_index(), LogIndex(5));
    assert_eq!(raft.log().commit(), LogIndex(3));
    let ready = raft.ready();
    assert_eq!(ready.snapshot, Some(meta(3, 2)));
    assert!(
        ready.committed.is_empty(),
        "the snapshot is applied, not its entries"
    );
    // It holds another term there: the whole log goes.
    let mut raft = follower_with_terms(&[1, 1, 1, 1, 1], 2);
    let (_, is_accepted) = raft.handle_install_snapshot(install(2), meta(3, 2), three());
    assert!(is_accepted);
    assert_eq!(raft.log().last_index(), LogIndex(3));
    assert_eq!(raft.log().last_term(), Term(2));
    // Shorter than the snapshot: the log is emptied and continues after it.
    let mut raft = follower_with_terms(&[1], 2);
    raft.handle_install_snapshot(install(2), meta(30, 2), three());
    assert_eq!(raft.log().offset(), meta(30, 2));
    assert_eq!(raft.log().last_index(), LogIndex(30));
    let r = raft.handle_append_entries(append(2, (30, 2), &[(31, 2)], 31));
    assert!(r.success && r.match_index == LogIndex(31));
}

#[test]
fn a_snapshot_from_a_stale_leader_is_refused() {
    let mut raft = follower_with_terms(&[1], 5);
    let (r, is_accepted) = raft.handle_install_snapshot(install(4), meta(30, 4), three());
    assert!(!is_accepted && !r.success);
    assert_eq!(r.term, Term(5));
    assert_eq!(raft.log().last_index(), LogIndex(1));
}

/// Elects 1, cuts 3 off, commits `count` proposals on 1 and 2, then
/// snapshots and compacts 1 keeping `keep` entries.
fn lagging_follower(count: usize, keep: u64) -> Cluster {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(3);
    c.heal();
    c.cut_link(1, 3);
    c.cut_link(2, 3);
    for i in 0..count {
        c.propose(1, &format!("v{i}"));
        c.deliver_all();
    }
    c.heartbeat(1);
    c.snapshot(1, keep);
    c
}

#[test]
fn a_follower_behind_the_compaction_point_catches_up_by_snapshot() {
    let mut c = lagging_follower(20, 2);
    assert_eq!(c.node(1).log().offset().index, LogIndex(19));
    c.heal();
    c.heartbeat(1);
    c.heartbeat(1);
    assert_eq!(c.installs.get(&NodeId(3)), Some(&1), "one snapshot, once");
    assert_eq!(c.node(3).log().offset().index, LogIndex(21));
    c.propose(1, "after");
    c.deliver_all();
    c.heartbeat(1);
    assert_eq!(c.applied[&NodeId(3)], c.applied[&NodeId(1)]);
    assert_eq!(c.node(3).log().commit(), LogIndex(22));
}

#[test]
fn while_a_snapshot_is_out_nothing_else_is_sent_and_a_failure_probes_again() {
    let mut c = lagging_follower(10, 0);
    c.heal();
    // Hold back everything to 3 but count what the leader sends it.
    let sent_to_3 = |c: &Cluster| {
        c.queue
            .iter()
            .filter(
                |e| matches!(e, Envelope::Request(_, to, Message::InstallSnapshot(_)) if to.0 == 3),
            )
            .count()
    };
    for _ in 0..3 {
        c.node_mut(1).tick();
        c.node_mut(1).tick();
        c.node_mut(1).tick();
        c.process(NodeId(1));
        // Deliver only heartbeats to 3 (its answers are rejections: it lacks
        // the anchor) and nothing from 2.
        let queue: Vec<Envelope> = c.queue.drain(..).collect();
        for e in queue {
            match &e {
                Envelope::Request(_, to, Message::AppendEntries(_)) if to.0 == 3 => c.deliver(e),
                _ => c.queue.push_back(e),
            }
        }
        let responses: Vec<Envelope> = c
            .queue
            .iter()
            .filter(|e| matches!(e, Envelope::AppendResponse(from, _, _) if from.0 == 3))
            .cloned()
            .collect();
        c.queue
            .retain(|e| !matches!(e, Envelope::AppendResponse(from, _, _) if from.0 == 3));
        for r in responses {
            c.deliver(r);
        }
    }
    assert_eq!(
        sent_to_3(&c),
        1,
        "one snapshot in flight, not one per heartbeat"
    );
    // The snapshot is lost: the leader hears of it and sends it again.
    let lost = c
        .queue
        .iter()
        .position(|e| matches!(e, Envelope::Request(_, _, Message::InstallSnapshot(_))))
        .expect("the snapshot is queued");
    let lost = c.queue.remove(lost).expect("in range");
    c.drop_envelope(lost);
    // Not at once, nor on every later reason to send (a proposal): only
    // after the next heartbeat interval.
    c.node_mut(1).propose(b"more".to_vec()).expect("leader");
    c.process(NodeId(1));
    assert_eq!(sent_to_3(&c), 0, "a failed snapshot is retried at once");
    c.heartbeat(1);
    assert_eq!(c.installs.get(&NodeId(3)), Some(&1));
    assert_eq!(c.applied[&NodeId(3)], c.applied[&NodeId(1)]);
}

#[test]
fn compaction_stops_at_a_snapshot_being_sent_and_at_the_durable_snapshot() {
    let mut c = lagging_follower(10, 0);
    c.heal();
    c.node_mut(1).tick();
    c.node_mut(1).tick();
    c.node_mut(1).tick();
    c.process(NodeId(1));
    // The snapshot is on its way to 3 (held here, neither delivered nor lost).
    let position = c
        .queue
        .iter()
        .position(|e| matches!(e, Envelope::Request(_, _, Message::InstallSnapshot(_))))
        .expect("a snapshot is sent");
    let in_flight = c.queue.remove(position).expect("in range");
    let pending = c.node(1).snapshot().index;
    c.isolate(3);
    for i in 0..5 {
        c.propose(1, &format!("w{i}"));
        c.deliver_all();
    }
    c.heartbeat(1);
    c.heal();
    let offset = c.snapshot(1, 0);
    assert!(c.node(1).snapshot().index > pending);
    assert_eq!(
        offset, pending,
        "the follower installing {pending} needs what follows it"
    );
    // It arrives, and the follower catches up by entries from there.
    c.deliver(in_flight);
    c.deliver_all();
    c.heartbeat(1);
    assert_eq!(c.installs.get(&NodeId(3)), Some(&1));
    assert_eq!(c.applied[&NodeId(3)], c.applied[&NodeId(1)]);
    // Compaction never passes the durable snapshot, whatever is asked.
    let mut c = lagging_follower(5, 0);
    let snapshot = c.node(1).snapshot().index;
    c.propose(1, "x");
    c.deliver_all();
    assert_eq!(c.node_mut(1).compact(0), snapshot);
}

#[test]
fn a_restart_keeps_the_catch_up_tail_below_its_snapshot() {
    // Storage kept entries 6..=12 (compaction left a tail below the
    // snapshot at 10): they stay, so followers a little behind catch up by
    // entries after a restart too.
    let entries: Vec<Entry> = (6..=12).map(|i| entry(1, i)).collect();
    let raft = Raft::restore(
        config(1, 3),
        HardState {
            term: Term(1),
            vote: None,
        },
        meta(10, 1),
        Membership::bootstrap(&config(1, 3).voters),
        entries,
    );
    assert_eq!(raft.log().offset(), meta(6, 1));
    assert_eq!(raft.log().commit(), LogIndex(10));
    assert_eq!(raft.log().term(LogIndex(7)), Some(Term(1)));
    assert_eq!(raft.log().last_index(), LogIndex(12));
    assert_eq!(
        raft.log()
            .slice(LogIndex(7), LogIndex(12), usize::MAX, usize::MAX)
            .len(),
        6,
        "a follower at 6 gets entries, not a snapshot"
    );
}
