//! Randomized runs: elections, proposals, partitions, drops, reorderings and restarts, with the safety invariants checked on every step.

use super::*;

/// Random elections, proposals, partitions, drops, reorderings and restarts
/// from durable state; the harness checks election and state machine safety on
/// every step, and this checks log matching and leader completeness at the end.
#[test]
fn randomized_runs_keep_the_safety_invariants() {
    let (mut installs, mut compacted) = (0, 0);
    for seed in 0..40u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = if seed % 2 == 0 { 3 } else { 5 };
        let mut c = Cluster::with(n, |cfg| {
            cfg.seed = seed;
            cfg.append_entries_max = 3;
            // Half the runs with PreVote and CheckQuorum, as nodes run.
            cfg.pre_vote = seed % 4 < 2;
            cfg.check_quorum = seed % 4 < 2;
        });
        let mut proposed = 0u32;
        for _step in 0..3000 {
            match rng.random_range(0..100) {
                0..=39 => {
                    let id = rng.random_range(1..=n);
                    c.node_mut(id).tick();
                    c.process(NodeId(id));
                }
                40..=54 => {
                    for id in 1..=n {
                        if c.node(id).role() == Role::Leader {
                            proposed += 1;
                            let _ = c.node_mut(id).propose(proposed.to_be_bytes().to_vec());
                            c.process(NodeId(id));
                        }
                    }
                }
                55..=84 => {
                    if !c.queue.is_empty() {
                        // Reordering: take any queued envelope, not just the oldest.
                        let i = rng.random_range(0..c.queue.len());
                        let envelope = c.queue.remove(i).expect("in range");
                        if rng.random_range(0..10) > 0 {
                            c.deliver(envelope);
                        } else {
                            c.drop_envelope(envelope);
                        }
                    }
                }
                85..=91 => {
                    let (a, b) = (rng.random_range(1..=n), rng.random_range(1..=n));
                    if a != b {
                        c.cut_link(a, b);
                    }
                }
                92..=95 => c.heal(),
                96 => {
                    // A leader hands over to a random node.
                    for id in 1..=n {
                        if c.node(id).role() == Role::Leader {
                            let target = NodeId(rng.random_range(1..=n));
                            let _ = c.node_mut(id).transfer_leadership(Some(target));
                            c.process(NodeId(id));
                        }
                    }
                }
                97 => {
                    // Snapshot and compact a node, keeping 0-4 entries.
                    let id = rng.random_range(1..=n);
                    c.snapshot(id, rng.random_range(0..5));
                }
                _ => {
                    // Crash and restart a node from its disk.
                    let id = rng.random_range(1..=n);
                    c.restart(id);
                }
            }
        }
        // Log matching: same index and term => identical prefixes.
        let ids: Vec<u64> = (1..=n).collect();
        for &a in &ids {
            for &b in &ids {
                let (la, lb) = (c.node(a).log(), c.node(b).log());
                let last = la.last_index().min(lb.last_index());
                let first = la.offset().index.max(lb.offset().index).0 + 1;
                let mut is_matched = false;
                for i in (first..=last.0).rev() {
                    let i = LogIndex(i);
                    if is_matched {
                        assert_eq!(
                            la.get(i),
                            lb.get(i),
                            "seed {seed}: log matching at {i} ({a} vs {b})"
                        );
                    } else if la.term(i) == lb.term(i) {
                        is_matched = true;
                        assert_eq!(
                            la.get(i),
                            lb.get(i),
                            "seed {seed}: same index+term, same entry"
                        );
                    }
                }
            }
        }
        // Leader completeness: a leader holds every entry anyone applied.
        for id in 1..=n {
            if c.node(id).role() == Role::Leader {
                let offset = c.node(id).log().offset().index;
                for (index, entry) in c.applied_at.range(offset.next()..) {
                    assert_eq!(
                        c.node(id).log().get(*index),
                        Some(entry),
                        "seed {seed}: leader {id} lacks {index}"
                    );
                }
            }
        }
        assert!(c.delivered > 100, "seed {seed}: the run did something");
        assert!(!c.applied_at.is_empty(), "seed {seed}: something committed");
        installs += c.installs.values().sum::<usize>();
        compacted += (1..=n)
            .filter(|&id| c.node(id).log().offset().index.0 > 0)
            .count();
    }
    assert!(
        installs > 0 && compacted > 0,
        "snapshots were installed ({installs}) and logs compacted ({compacted})"
    );
}
