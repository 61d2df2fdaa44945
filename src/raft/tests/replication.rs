//! Log replication: the consistency check, truncation only on a real conflict, conflict hints, figure 8, commit and apply, batching.

use super::*;

#[test]
fn the_consistency_check_rejects_with_a_conflict_hint() {
    // Log too short: hint is last index + 1, no term.
    let mut raft = follower_with_terms(&[1, 1], 3);
    let r = raft.handle_append_entries(append(3, (5, 3), &[], 0));
    assert!(!r.success);
    assert_eq!((r.conflict_term, r.conflict_index), (Term(0), LogIndex(3)));
    // Term mismatch at prev: hint is that term and its first index.
    let mut raft = follower_with_terms(&[1, 2, 2, 2], 3);
    let r = raft.handle_append_entries(append(3, (4, 3), &[], 0));
    assert!(!r.success);
    assert_eq!((r.conflict_term, r.conflict_index), (Term(2), LogIndex(2)));
    assert_eq!(
        raft.log().last_index(),
        LogIndex(4),
        "a rejection changes nothing"
    );
}

#[test]
fn truncation_happens_only_on_a_real_conflict() {
    let mut raft = follower_with_terms(&[1, 1, 1, 1], 1);
    // A delayed, shorter copy of entries already held: nothing is cut.
    let r = raft.handle_append_entries(append(1, (1, 1), &[(2, 1)], 0));
    assert!(r.success);
    assert_eq!(
        r.match_index,
        LogIndex(2),
        "matches only what the message covered"
    );
    assert_eq!(raft.log().last_index(), LogIndex(4), "entries 3 and 4 kept");
    // A different term at index 3: cut from 3, append.
    let r = raft.handle_append_entries(append(2, (2, 1), &[(3, 2)], 0));
    assert!(r.success);
    assert_eq!(raft.log().last_index(), LogIndex(3));
    assert_eq!(raft.log().term(LogIndex(3)), Some(Term(2)));
}

#[test]
fn a_committed_entry_is_never_overwritten() {
    let mut raft = follower_with_terms(&[1, 1, 1], 1);
    assert!(
        raft.handle_append_entries(append(1, (3, 1), &[], 3))
            .success
    );
    assert_eq!(raft.log().commit(), LogIndex(3));
    // A (buggy or forged) leader tries to replace committed entry 2.
    let r = raft.handle_append_entries(append(2, (1, 1), &[(2, 2)], 3));
    assert!(!r.success, "rejected, not applied");
    assert_eq!(raft.log().term(LogIndex(2)), Some(Term(1)));
    assert_eq!(raft.log().last_index(), LogIndex(3));
}

#[test]
fn malformed_entries_are_rejected_without_harm() {
    let mut raft = follower_with_terms(&[1], 2);
    for bad in [
        append(2, (1, 1), &[(3, 2)], 0),         // gap
        append(2, (1, 1), &[(2, 2), (2, 2)], 0), // repeated index
        append(2, (1, 1), &[(2, 5)], 0),         // term beyond the leader's
        append(2, (1, 1), &[(2, 2), (3, 1)], 0), // term going backwards
    ] {
        assert!(!raft.handle_append_entries(bad).success);
        assert_eq!(raft.log().last_index(), LogIndex(1));
    }
}

#[test]
fn the_leader_skips_a_whole_conflicting_term_per_round_trip() {
    // Node 3 holds 30 entries of a term nobody else has; the leader's log
    // diverges from it at index 2. Backtracking one entry per round trip would
    // take ~30 rejections; the hint makes it one or two.
    let mut c = Cluster::new(3);
    c.elect(1); // index 1, term 1 everywhere
    c.isolate(3);
    c.elect(2); // term 2: index 2 is node 2's no-op
    c.deliver_all();
    let c3 = c.node_mut(3);
    let stray: Vec<Entry> = (2..=31)
        .map(|i| Entry {
            term: Term(1),
            index: LogIndex(i),
            data: vec![9],
        })
        .collect();
    let r = c3.handle_append_entries(AppendEntries {
        term: Term(1),
        leader: NodeId(1),
        prev_log_index: LogIndex(1),
        prev_log_term: Term(1),
        entries: stray,
        leader_commit: LogIndex(1),
        read_round: 0,
    });
    assert!(r.success || c.node(3).term() > Term(1));
    c.process(NodeId(3));
    c.queue.clear();
    let diverged = c.node(3).log().last_index();
    c.heal();
    let rejections = std::cell::Cell::new(0);
    for _ in 0..3 {
        c.node_mut(2).tick();
        c.node_mut(2).tick();
        c.node_mut(2).tick();
        c.deliver_filtered(|e| {
            if let Envelope::AppendResponse(_, _, r) = e {
                if !r.success {
                    rejections.set(rejections.get() + 1);
                }
            }
            true
        });
    }
    assert_eq!(
        c.log_terms(3),
        c.log_terms(2),
        "node 3 converged (it had {diverged} entries)"
    );
    assert!(rejections.get() <= 2, "{} rejections", rejections.get());
}

#[test]
fn figure_8_an_old_term_entry_on_a_majority_is_not_committed() {
    // Raft paper figure 8, with no-ops as the entries and crashes as restarts
    // from disk. One entry per message so replication can be stopped exactly.
    let mut c = Cluster::with(5, |c| c.append_entries_max = 1);
    let no_appends =
        |e: &Envelope| !matches!(e, Envelope::Request(_, _, Message::AppendEntries(_)));
    c.elect(1); // term 1: index 1 committed everywhere
                // (a) S1 crashes, restarts and leads term 2; its index 2 reaches only S2.
    c.restart(1);
    c.win(1, |e| !matches!(e, Envelope::Request(_, to, Message::AppendEntries(m)) if to.0 != 2 && !m.entries.is_empty()));
    assert_eq!(c.node(1).term(), Term(2));
    assert_eq!(c.log_terms(2), vec![1, 2]);
    // (b) S1 crashes; S5 leads term 3 with S3 and S4; its index 2 stays on S5.
    c.restart(1);
    c.isolate(1);
    c.win(5, no_appends);
    assert_eq!(c.node(5).term(), Term(3));
    assert_eq!(c.log_terms(5), vec![1, 3]);
    // (c) S5 crashes; S1 comes back and leads term 4.
    c.restart(5);
    c.heal();
    c.isolate(5);
    c.win(1, no_appends);
    assert_eq!(c.node(1).term(), Term(4));
    // S1 replicates its term-2 entry to a majority, but not its term-4 no-op.
    for _ in 0..3 {
        c.node_mut(1).tick();
    }
    c.deliver_where(|c, e| match e {
        // Entry 3 may go only where it would be rejected (prev entry missing).
        Envelope::Request(_, to, Message::AppendEntries(m))
            if m.entries.iter().any(|x| x.index.0 >= 3) =>
        {
            c.nodes[to].log().term(m.prev_log_index) != Some(m.prev_log_term)
        }
        _ => true,
    });
    let holders = (1..=5)
        .filter(|&id| c.log_terms(id).get(1) == Some(&2))
        .count();
    assert!(
        holders >= 3,
        "index 2 (term 2) is on a majority: {holders} nodes"
    );
    assert!(
        c.node(1).log().commit() < LogIndex(2),
        "but it is not committed: it is not of term 4 (commit {})",
        c.node(1).log().commit()
    );
    // (d) S1 crashes; S5 wins term 5 and overwrites index 2 everywhere. Safe,
    // because nobody committed or applied the term-2 entry.
    c.restart(1);
    c.heal();
    c.isolate(1);
    c.win(5, |_| true);
    assert_eq!(c.node(5).term(), Term(5));
    c.heartbeat(5);
    c.heartbeat(5);
    for id in 2..=5 {
        assert_eq!(c.log_terms(id), vec![1, 3, 5], "node {id}");
    }
    assert!(c.node(5).log().commit() >= LogIndex(3));
    assert!(c
        .applied_at
        .get(&LogIndex(2))
        .is_some_and(|e| e.term == Term(3)));
}

#[test]
fn entries_commit_once_on_a_majority_and_apply_in_order_everywhere() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.cut_link(1, 3);
    let index = c.propose(1, "x");
    c.deliver_all();
    assert_eq!(
        c.node(1).log().commit(),
        index,
        "leader + node 2 is a majority"
    );
    c.heal();
    c.heartbeat(1);
    c.heartbeat(1);
    for id in 1..=3 {
        let data: Vec<_> = c.applied[&NodeId(id)]
            .iter()
            .map(|e| e.data.clone())
            .collect();
        assert_eq!(data, vec![vec![], b"x".to_vec()], "node {id}");
    }
}

#[test]
fn many_proposals_share_one_message() {
    let mut c = Cluster::new(3);
    c.elect(1);
    for i in 0..100 {
        c.node_mut(1).propose(vec![i]).expect("leader");
    }
    c.process(NodeId(1));
    let appends = c
        .queue
        .iter()
        .filter(|e| matches!(e, Envelope::Request(_, _, Message::AppendEntries(m)) if !m.entries.is_empty()))
        .count();
    assert_eq!(
        appends, 2,
        "one AppendEntries per follower for 100 proposals"
    );
    c.deliver_all();
    assert_eq!(c.node(1).log().commit(), LogIndex(101));
}
