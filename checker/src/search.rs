//! The linearizability search: Wing & Gong's algorithm with Lowe's
//! memoization, as in Porcupine, written with an explicit stack.
//!
//! A partition's calls and returns are laid out in time order in a doubly
//! linked list. Walking from the head, the search tries to *linearize* the
//! operation of each call it meets: if the model accepts it from the current
//! state, and the pair (set of linearized operations, new state) was never seen
//! before, the call and its return are lifted out of the list and the walk
//! restarts from the head. Meeting a return means that operation had to be
//! linearized before now: the search backtracks (pops the stack, puts the
//! entries back) and tries the next call instead. An empty list is a
//! linearization; backtracking from an empty stack proves there is none.
//!
//! The memo holds every (linearized set, state) pair reached: reaching one again
//! cannot lead anywhere new. Sets are hashed incrementally (one random 64-bit
//! key per operation, XORed in and out) and states are interned to integers.
//! Operations with unknown outcomes return "at infinity": they may be placed
//! anywhere after their call, including after everything (never happened).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::model::Model;
use crate::operation::{Completion, Operation};

#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Give up (verdict `Unknown`) after this long. Never "linearizable".
    pub timeout: Option<Duration>,
    /// Partitions checked at once.
    pub threads: usize,
    /// Stop the other partitions once one is proven not linearizable (the
    /// verdict is settled; they are reported as not checked).
    pub stop_at_first_violation: bool,
    /// Memory the search's memo may use, over all partitions at once; past it
    /// the verdict is `Unknown` (histories with many unknown outcomes on one
    /// key can need exponentially many states).
    pub memory_bytes_max: usize,
    /// Memo entries a partition's full search may use before windows of it
    /// are tried (when the model has `Model::any_state`); then the full
    /// search runs again without this limit. `None`: 64 per operation, at
    /// least 100,000.
    pub full_search_nodes_max: Option<usize>,
    /// Try `Model::refute` before searching (on by default; off to time the
    /// search alone).
    pub use_refutations: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            timeout: None,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            stop_at_first_violation: true,
            memory_bytes_max: 4 << 30,
            full_search_nodes_max: None,
            use_refutations: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Linearizable,
    NotLinearizable,
    /// The time budget ran out first.
    Unknown,
}

/// Where a non-linearizable partition got stuck.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The longest sequence of operations the search could linearize (indexes
    /// into the history's operations), in order.
    pub longest_prefix: Vec<usize>,
    /// The state after that prefix.
    pub state: String,
    /// The operations that could have come next (their calls precede the
    /// earliest pending return): none of them can. The smallest window to read.
    pub window: Vec<usize>,
    /// The operation whose return closes the window: it had to be linearized by then.
    pub deadline_op: usize,
    /// For each window operation, why it cannot come next.
    pub reasons: Vec<(usize, String)>,
    /// Operations with unknown outcomes that could also come next (they
    /// return "at infinity", so they are always candidates); none helps.
    /// Left out of the window.
    pub open_candidates: usize,
    /// Found in a window of the history that starts at this line, from any
    /// value at all: what came before is ignored, and operations in flight
    /// at either edge are treated as having unknown outcomes. No value the
    /// key could have had there explains what follows.
    pub from_any_state_at: Option<usize>,
    /// Proven without a search (`Model::refute`): why. Then the prefix is
    /// empty, the window holds the operations the proof names and the
    /// deadline operation is the one that cannot be placed.
    pub proof: Option<String>,
}

#[derive(Clone, Debug)]
pub struct PartitionReport {
    pub name: String,
    /// Indexes of the history's operations in this partition.
    pub operations: Vec<usize>,
    /// Of those, how many the search had to place (definite failures and reads
    /// with unknown results are left out).
    pub searched: usize,
    pub outcome: Outcome,
    pub states_explored: u64,
    pub failure: Option<Failure>,
    /// Not finished because another partition already failed.
    pub is_cancelled: bool,
    /// Not finished because the memory budget ran out.
    pub is_out_of_memory: bool,
    /// When linearizable: the order found (indexes into the history's
    /// operations). Operations with unknown outcomes that are not in it did
    /// not take effect in that order.
    pub order: Vec<usize>,
    /// Operations with unknown outcomes that a read proves happened, each
    /// with the earliest such read (see `Model::prepare`).
    pub proven: Vec<(usize, usize)>,
}

#[derive(Clone, Debug)]
pub struct Verdict {
    pub outcome: Outcome,
    pub partitions: Vec<PartitionReport>,
    pub states_explored: u64,
    pub elapsed: Duration,
}

impl Verdict {
    /// The first non-linearizable partition, if any.
    pub fn failure(&self) -> Option<&PartitionReport> {
        self.partitions
            .iter()
            .find(|p| p.outcome == Outcome::NotLinearizable)
    }
}

/// Checks a history against a model: per partition, in parallel.
pub fn check<M: Model>(
    model: &M,
    operations: &[Operation<M::Input, M::Output>],
    options: &CheckOptions,
) -> Verdict {
    let start = Instant::now();
    let deadline = options.timeout.map(|t| start + t);
    let groups = model.partition(operations);
    // Largest first, so one big partition does not start last.
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by_key(|&g| std::cmp::Reverse(groups[g].len()));
    let results: Vec<Mutex<Option<PartitionReport>>> =
        groups.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let threads = options.threads.clamp(1, groups.len().max(1));
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(&g) = order.get(i) else { break };
        let memory_bytes_max = options.memory_bytes_max / threads;
        let report = check_partition(
            model,
            operations,
            &groups[g],
            deadline,
            &stop,
            memory_bytes_max,
            options,
        );
        if report.outcome == Outcome::NotLinearizable && options.stop_at_first_violation {
            stop.store(true, Ordering::Relaxed);
        }
        *results[g].lock().expect("no panics while holding it") = Some(report);
    };
    if threads == 1 {
        work();
    } else {
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(work);
            }
        });
    }
    let partitions: Vec<PartitionReport> = results
        .into_iter()
        .map(|r| {
            r.into_inner()
                .expect("not poisoned")
                .expect("every partition was checked")
        })
        .collect();
    let outcome = if partitions
        .iter()
        .any(|p| p.outcome == Outcome::NotLinearizable)
    {
        Outcome::NotLinearizable
    } else if partitions.iter().any(|p| p.outcome == Outcome::Unknown) {
        Outcome::Unknown
    } else {
        Outcome::Linearizable
    };
    Verdict {
        outcome,
        states_explored: partitions.iter().map(|p| p.states_explored).sum(),
        partitions,
        elapsed: start.elapsed(),
    }
}

const NIL: u32 = u32::MAX;
const HEAD: u32 = 0;
/// Step results kept in the dense table (entries of 4 bytes).
const DENSE_TRANSITIONS_MAX: usize = 1 << 20;
/// How often (in steps) the deadline is looked at.
const DEADLINE_CHECK_STEPS: u64 = 1 << 12;

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A fast hasher for small keys (multiply-rotate, as in rustc's FxHash).
#[derive(Default)]
struct FastHasher(u64);
impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        // Avalanche, so that keys differing only in high bits spread over buckets.
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        x ^ (x >> 33)
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517C_C1B7_2722_0A95);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }
}
type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// The memo: every node reached, as its set of linearized operations and its
/// state, in an open addressing table over a flat arena (no allocation per
/// entry).
///
/// Nodes are grouped by their state and their operations with known
/// outcomes; within a group a node is pruned if one already reached placed a
/// subset of its unknown-outcome operations. Leaving one of those unplaced is
/// never worse (it can still go last, as if it never happened), and the
/// search's rule for equal ones (the earliest unplaced goes first) makes
/// "fewer of a kind" a subset too. So the earlier node's search covers the
/// later one's, and a node that only adds unknown-outcome operations to a
/// node already explored is not explored again.
///
/// Each table slot holds the group key's high 32 bits as a tag beside the
/// index of the group's newest entry, so a probe touches the arena only when
/// the tags match.
struct Memo {
    words: usize,
    /// Which set bits are operations with unknown outcomes.
    open_mask: Vec<u64>,
    /// `tag << 32 | (entry + 1)` per position; 0 is empty. A power of two long.
    table: Vec<u64>,
    /// Per entry: the group key (for growing), the state, the previous entry
    /// of its group (+1; 0: none), then `words` words of the set.
    arena: Vec<u64>,
    len: usize,
}

impl Memo {
    fn new(open_mask: Vec<u64>) -> Self {
        Memo {
            words: open_mask.len(),
            open_mask,
            table: vec![0; 1024],
            arena: Vec::new(),
            len: 0,
        }
    }

    /// Records the node (`known_hash`: the hash of its operations with known
    /// outcomes; `state`: its state id and flags); false if it was already
    /// there or is dominated by one that is.
    fn insert(&mut self, known_hash: u64, state: u64, set: &[u64]) -> bool {
        let key = known_hash ^ splitmix64(state);
        let tag = key >> 32;
        let stride = self.words + 3;
        let mask = self.table.len() - 1;
        let mut position = (key as usize) & mask;
        let mut group = 0u64;
        loop {
            let slot = self.table[position];
            if slot == 0 {
                break;
            }
            if slot >> 32 == tag {
                let at = ((slot & 0xFFFF_FFFF) as usize - 1) * stride;
                let entry = &self.arena[at..at + stride];
                let is_same_group = entry[1] == state
                    && entry[3..]
                        .iter()
                        .zip(set)
                        .zip(&self.open_mask)
                        .all(|((a, b), open)| (a ^ b) & !open == 0);
                if is_same_group {
                    group = slot & 0xFFFF_FFFF;
                    break;
                }
            }
            position = (position + 1) & mask;
        }
        let mut member = group;
        while member != 0 {
            let at = (member as usize - 1) * stride;
            let entry = &self.arena[at..at + stride];
            if entry[3..].iter().zip(set).all(|(a, b)| a & !b == 0) {
                return false;
            }
            member = entry[2];
        }
        self.len += 1;
        self.table[position] = (tag << 32) | self.len as u64;
        self.arena.push(key);
        self.arena.push(state);
        self.arena.push(group);
        self.arena.extend_from_slice(set);
        if group == 0 && self.len * 2 > self.table.len() {
            self.grow();
        }
        true
    }

    fn bytes(&self) -> usize {
        (self.arena.capacity() + self.table.len()) * 8
    }

    fn grow(&mut self) {
        let mut table = vec![0u64; self.table.len() * 2];
        let mask = table.len() - 1;
        for &slot in self.table.iter().filter(|&&slot| slot != 0) {
            let entry = (slot & 0xFFFF_FFFF) as usize - 1;
            let key = self.arena[entry * (self.words + 3)];
            let mut position = (key as usize) & mask;
            while table[position] != 0 {
                position = (position + 1) & mask;
            }
            table[position] = slot;
        }
        self.table = table;
    }
}

fn check_partition<M: Model>(
    model: &M,
    all: &[Operation<M::Input, M::Output>],
    group: &[usize],
    deadline: Option<Instant>,
    stop: &AtomicBool,
    memory_bytes_max: usize,
    options: &CheckOptions,
) -> PartitionReport {
    let name = model.partition_name(all, group);
    let ops: Vec<usize> = group
        .iter()
        .copied()
        .filter(|&i| {
            all[i].completion != Completion::Fail
                && !model.is_inert(&all[i].input, all[i].output.as_ref())
        })
        .collect();
    let n = ops.len();
    let mut report = PartitionReport {
        name,
        operations: group.to_vec(),
        searched: n,
        outcome: Outcome::Linearizable,
        states_explored: 0,
        failure: None,
        is_cancelled: false,
        is_out_of_memory: false,
        order: Vec::new(),
        proven: Vec::new(),
    };
    if n == 0 {
        return report;
    }
    if stop.load(Ordering::Relaxed) {
        report.outcome = Outcome::Unknown;
        report.is_cancelled = true;
        return report;
    }
    assert!(n < (u32::MAX / 2) as usize, "partition too large");
    // The search works on a prepared copy (see `Model::prepare`); reports
    // describe the operations as recorded.
    let mut prepared: Vec<Operation<M::Input, M::Output>> =
        ops.iter().map(|&g| all[g].clone()).collect();
    model.prepare(&mut prepared);
    {
        let mut returning_at: FastMap<u64, usize> = FastMap::default();
        for (local, op) in prepared.iter().enumerate() {
            if all[ops[local]].ret == op.ret && op.ret != u64::MAX {
                returning_at.insert(op.ret, ops[local]);
            }
        }
        for (local, op) in prepared.iter().enumerate() {
            if all[ops[local]].output.is_none() && op.output.is_some() {
                if let Some(&reader) = returning_at.get(&op.ret) {
                    report.proven.push((ops[local], reader));
                }
            }
        }
    }

    let limits = Limits {
        deadline,
        stop,
        memory_bytes_max,
    };
    if let Some(refutation) = model.refute(&prepared).filter(|_| options.use_refutations) {
        let op = ops[refutation.operation];
        let mut window: Vec<usize> = refutation.witnesses.iter().map(|&w| ops[w]).collect();
        window.push(op);
        report.outcome = Outcome::NotLinearizable;
        report.failure = Some(Failure {
            longest_prefix: Vec::new(),
            state: String::new(),
            reasons: window
                .iter()
                .map(|&i| {
                    (
                        i,
                        model.describe_operation(&all[i].input, all[i].output.as_ref()),
                    )
                })
                .collect(),
            window,
            deadline_op: op,
            open_candidates: 0,
            from_any_state_at: None,
            proof: Some(refutation.reason),
        });
        return report;
    }

    // With a state that stands for every state, the full search first runs
    // on a budget; past it, the violation (if any) is looked for in windows.
    let any = model.any_state();
    let budget = any.as_ref().map(|_| {
        options
            .full_search_nodes_max
            .unwrap_or((FULL_NODES_PER_OPERATION * n).max(FULL_NODES_MIN))
    });
    let mut full = search(model, &prepared, model.init(), &limits, budget, false);
    let mut window_states = 0;
    if full.is_over_budget {
        let any = any.expect("a budget only with a state for windows");
        let (failure, states) = search_windows(model, all, &ops, &prepared, any, &limits, &full);
        window_states = states;
        if let Some(failure) = failure {
            report.states_explored = full.states + window_states;
            report.outcome = Outcome::NotLinearizable;
            report.failure = Some(failure);
            return report;
        }
        full = search(model, &prepared, model.init(), &limits, None, false);
    }
    report.states_explored = full.states + window_states;
    report.outcome = full.outcome;
    report.is_cancelled = full.is_cancelled;
    report.is_out_of_memory = full.is_out_of_memory;
    match full.outcome {
        Outcome::Linearizable => {
            report.order = full.order.iter().map(|&local| ops[local]).collect();
        }
        Outcome::NotLinearizable => {
            report.failure = Some(describe_dead_end(model, all, &ops, &prepared, &full, None));
        }
        Outcome::Unknown => {}
    }
    report
}

/// The full search's budget, in memo entries, before windows are tried: at
/// least this many, and this many per operation.
const FULL_NODES_MIN: usize = 100_000;
const FULL_NODES_PER_OPERATION: usize = 64;
/// Window sizes (operations): first ending where the full search got stuck,
/// then sliding over the whole partition (by half a window).
const STUCK_WINDOWS: [usize; 5] = [4, 16, 64, 256, 1024];
const SLIDING_WINDOWS: [usize; 4] = [8, 64, 256, 1024];
/// A window's search budget: this many memo entries per operation, plus a floor.
const WINDOW_NODES_PER_OPERATION: usize = 64;
const WINDOW_NODES_MIN: usize = 10_000;

/// Looks for a violation in windows of a partition, each searched from the
/// state that stands for every state (`Model::any_state`). Returns the first
/// failure found, and the memo entries spent.
///
/// A window `[from, to]` (event positions) keeps the operations invoked by
/// `to` and not completed before `from`. Those invoked before `from` or
/// completing after `to` get unknown outcomes. Each change only allows more:
/// an operation completed before `from` took effect before every operation
/// invoked after it, so its effect is in the state at `from`, which any
/// state covers; an operation in flight at an edge may take effect inside
/// or not at all; and an operation invoked after `to` takes effect after
/// every operation completed by `to`, so dropping it and those after it
/// leaves a valid order of the rest. So if no order explains a window, none
/// explains the partition.
fn search_windows<M: Model>(
    model: &M,
    all: &[Operation<M::Input, M::Output>],
    ops: &[usize],
    prepared: &[Operation<M::Input, M::Output>],
    any: M::State,
    limits: &Limits,
    full: &Searched<M::State>,
) -> (Option<Failure>, u64) {
    let n = prepared.len();
    let calls: Vec<u64> = prepared.iter().map(|op| op.call).collect();
    // (from, to, size, the first operation invoked at `from`)
    let mut windows: Vec<(u64, u64, usize, usize)> = Vec::new();
    if let Some(stuck) = full.best_deadline {
        let stuck_at = prepared[stuck].ret;
        let end = calls.partition_point(|&call| call <= stuck_at);
        for size in STUCK_WINDOWS {
            let start = end.saturating_sub(size);
            windows.push((calls[start], stuck_at, size, start));
        }
    }
    for size in SLIDING_WINDOWS {
        for start in (0..n).step_by(size / 2) {
            let end = (start + size).min(n - 1);
            windows.push((calls[start], calls[end], size, start));
        }
    }
    let mut spent = 0;
    for (from, to, size, start) in windows {
        let (window_ops, window): (Vec<usize>, Vec<OperationOf<M>>) = prepared
            .iter()
            .enumerate()
            .filter(|(_, op)| op.call <= to && (op.ret == u64::MAX || op.ret >= from))
            .filter_map(|(local, op)| {
                let mut op = op.clone();
                if op.call < from || op.ret > to {
                    op.output = None;
                    op.completion = Completion::Info;
                    op.ret = u64::MAX;
                    if model.is_inert(&op.input, None) {
                        return None;
                    }
                }
                Some((ops[local], op))
            })
            .unzip();
        if window.len() == n || window.iter().all(|op| op.ret == u64::MAX) {
            continue;
        }
        let nodes_max = (WINDOW_NODES_PER_OPERATION * size).max(WINDOW_NODES_MIN);
        let searched = search(model, &window, any.clone(), limits, Some(nodes_max), true);
        spent += searched.states;
        match searched.outcome {
            Outcome::NotLinearizable => {
                let first_line = all[ops[start]].call_line;
                let failure = describe_dead_end(
                    model,
                    all,
                    &window_ops,
                    &window,
                    &searched,
                    Some(first_line),
                );
                return (Some(failure), spent);
            }
            Outcome::Unknown if !searched.is_over_budget => return (None, spent),
            _ => {}
        }
    }
    (None, spent)
}

type OperationOf<M> = Operation<<M as Model>::Input, <M as Model>::Output>;

/// What the search is allowed to spend.
struct Limits<'a> {
    deadline: Option<Instant>,
    stop: &'a AtomicBool,
    memory_bytes_max: usize,
}

/// How a search ended.
struct Searched<S> {
    outcome: Outcome,
    is_cancelled: bool,
    is_out_of_memory: bool,
    /// Gave up at `nodes_max` memo entries.
    is_over_budget: bool,
    /// Nodes in the memo at the end.
    states: u64,
    /// When linearizable: the order (local indexes).
    order: Vec<usize>,
    /// The deepest dead end (when not linearizable; for `Unknown`, only
    /// the blocking operation, if any): the prefix placed (local indexes),
    /// the state after it, and the operation whose return blocked it.
    best_prefix: Vec<usize>,
    best_state: S,
    best_deadline: Option<usize>,
}

/// Wing & Gong's search over one partition's prepared operations (local
/// indexes are positions in `prepared`), from `init`. `nodes_max`: give up
/// (`Unknown`) past this many memo entries. `from_any`: `init` is the state
/// that stands for every state (`Model::any_state`), from which a read
/// does change the state (it learns the value).
fn search<M: Model>(
    model: &M,
    prepared: &[Operation<M::Input, M::Output>],
    init: M::State,
    limits: &Limits,
    nodes_max: Option<usize>,
    from_any: bool,
) -> Searched<M::State> {
    let n = prepared.len();
    let mut result = Searched {
        outcome: Outcome::Linearizable,
        is_cancelled: false,
        is_out_of_memory: false,
        is_over_budget: false,
        states: 0,
        order: Vec::new(),
        best_prefix: Vec::new(),
        best_state: init.clone(),
        best_deadline: None,
    };

    // The entry list: 0 is the head; calls and returns in time order after it.
    let mut timeline: Vec<(u64, u32, bool)> = Vec::with_capacity(2 * n);
    for (local, op) in prepared.iter().enumerate() {
        timeline.push((op.call, local as u32, true));
        timeline.push((op.ret, local as u32, false));
    }
    timeline.sort_unstable_by_key(|&(time, local, is_call)| (time, !is_call, local));
    let entries = timeline.len() + 1;
    let mut next = vec![NIL; entries];
    let mut prev = vec![NIL; entries];
    let mut op_of = vec![0u32; entries];
    let mut is_call = vec![false; entries];
    let mut return_of = vec![0u32; n];
    for (position, &(_, local, call)) in timeline.iter().enumerate() {
        let e = position as u32 + 1;
        op_of[e as usize] = local;
        is_call[e as usize] = call;
        prev[e as usize] = e - 1;
        next[e as usize - 1] = e;
        if !call {
            return_of[local as usize] = e;
        }
    }

    // States are interned to ids, and each (state, operation) step is asked of
    // the model once: the search revisits the same pairs over and over.
    let mut states: Vec<M::State> = Vec::new();
    let mut state_ids: FastMap<M::State, u32> = FastMap::default();
    let mut intern = |state: M::State, states: &mut Vec<M::State>| -> u32 {
        if let Some(&id) = state_ids.get(&state) {
            return id;
        }
        let id = states.len() as u32;
        states.push(state.clone());
        state_ids.insert(state, id);
        id
    };
    // Step results: dense for the first states (a register has a handful),
    // hashed beyond (an append-only value can have very many).
    const UNASKED: u32 = NIL - 1;
    let dense_states_max = (DENSE_TRANSITIONS_MAX / n.max(1)) as u32;
    let mut dense_transitions: Vec<u32> = Vec::new();
    let mut transitions: FastMap<u64, u32> = FastMap::default();

    // Operations with unknown outcomes return "at infinity". Four rules keep
    // them from multiplying the search, each keeping it complete (the
    // arguments are in checker/README.md):
    // - done: once every operation with a known outcome is placed, the rest
    //   can go last, in any state;
    // - no-op: one is never placed where it leaves the state as it is;
    // - useless before an overwrite: one is never placed right before a put
    //   or a delete (`Model::overwrites`), which would erase its effect;
    // - twins: of those with equal inputs, which all return at infinity and
    //   so are interchangeable, only the earliest called not yet placed is
    //   tried (so those placed are always the earliest of their kind).
    let is_open_ended: Vec<bool> = prepared.iter().map(|op| op.ret == u64::MAX).collect();
    let mut known_left = is_open_ended.iter().filter(|&&o| !o).count();
    let overwrites: Vec<bool> = prepared
        .iter()
        .map(|op| model.overwrites(&op.input, op.output.as_ref()))
        .collect();
    let mut twin_class = vec![NIL; n];
    let mut twin_rank = vec![0u32; n];
    let mut twins_placed: Vec<u32> = Vec::new();
    {
        let mut classes: FastMap<(&M::Input, Option<&M::Output>), u32> = FastMap::default();
        for (local, op) in prepared.iter().enumerate() {
            if !is_open_ended[local] {
                continue;
            }
            let class = *classes
                .entry((&op.input, op.output.as_ref()))
                .or_insert_with(|| {
                    twins_placed.push(0);
                    twins_placed.len() as u32 - 1
                });
            twin_class[local] = class;
            // Counted in call order: `prepared` is in call order.
            twin_rank[local] = twins_placed[class as usize];
            twins_placed[class as usize] += 1;
        }
        twins_placed.iter_mut().for_each(|count| *count = 0);
    }

    // The memo's hash covers the operations with known outcomes only (see `Memo`).
    let zobrist: Vec<u64> = (0..n)
        .map(|i| {
            if is_open_ended[i] {
                0
            } else {
                splitmix64(i as u64 ^ 0x005E_ED0F_1A77_1CE5)
            }
        })
        .collect();
    let words = n.div_ceil(64);
    let mut open_mask = vec![0u64; words];
    for (local, _) in is_open_ended.iter().enumerate().filter(|(_, &o)| o) {
        open_mask[local / 64] |= 1 << (local % 64);
    }
    let mut memo = Memo::new(open_mask);
    let mut set = vec![0u64; words];
    let mut set_hash = 0u64;
    let mut state = intern(init, &mut states);
    // Read-only operations are not read-only from the state that stands for
    // every state: their rule (below) does not apply there.
    let any_state = if from_any { state } else { NIL };
    // Whether the operation placed last had an unknown outcome: then the
    // next may not overwrite. Part of the memo's key.
    let mut after_open = false;
    // (call entry linearized | flags of the node it left, state before it)
    let mut stack: Vec<(u32, u32)> = Vec::with_capacity(n);
    // The deepest dead end so far: the stack, the state, the blocking return.
    let mut best_depth: Option<usize> = None;
    let mut best_stack: Vec<(u32, u32)> = Vec::new();
    let mut best_state = state;
    let mut best_deadline = HEAD;
    let mut entry = next[HEAD as usize];
    let mut steps = 0u64;

    macro_rules! unlink {
        ($e:expr) => {{
            let e = $e as usize;
            next[prev[e] as usize] = next[e];
            if next[e] != NIL {
                prev[next[e] as usize] = prev[e];
            }
        }};
    }
    macro_rules! relink {
        ($e:expr) => {{
            let e = $e as usize;
            next[prev[e] as usize] = e as u32;
            if next[e] != NIL {
                prev[next[e] as usize] = e as u32;
            }
        }};
    }

    // Operations with unknown outcomes are tried at a node only after every
    // operation with a known outcome failed there: they rarely need to go
    // early. Each node still tries every candidate, so the search stays
    // complete. `is_open_pass` says which kind the scan is trying; a stack
    // frame keeps it in its top bit.
    let has_open_ended = is_open_ended.iter().any(|&o| o);
    let mut is_open_pass = false;
    const OPEN_PASS_BIT: u32 = 1 << 31;
    const AFTER_OPEN_BIT: u32 = 1 << 30;
    const FRAME_ENTRY: u32 = AFTER_OPEN_BIT - 1;
    // A read-only operation that can go now goes now; if that fails, so does
    // the node (see `Model::is_read_only`), so its frame backtracks straight on.
    let is_read_only: Vec<bool> = prepared
        .iter()
        .map(|op| model.is_read_only(&op.input, op.output.as_ref()))
        .collect();

    'search: while known_left > 0 {
        steps += 1;
        if steps.is_multiple_of(DEADLINE_CHECK_STEPS)
            && (limits.deadline.is_some_and(|d| Instant::now() >= d)
                || limits.stop.load(Ordering::Relaxed))
        {
            result.outcome = Outcome::Unknown;
            result.is_cancelled = limits.stop.load(Ordering::Relaxed);
            result.states = memo.len as u64;
            return result;
        }
        // A budgeted search keeps three quarters of the memory for what comes next.
        let bytes_max = match nodes_max {
            Some(_) => limits.memory_bytes_max / 4,
            None => limits.memory_bytes_max,
        };
        if memo.bytes() > bytes_max || nodes_max.is_some_and(|m| memo.len > m) {
            result.outcome = Outcome::Unknown;
            result.is_over_budget = nodes_max.is_some();
            result.is_out_of_memory = !result.is_over_budget;
            result.states = memo.len as u64;
            if best_depth.is_some() {
                result.best_deadline = Some(op_of[best_deadline as usize] as usize);
            }
            return result;
        }
        let e = entry as usize;
        if is_call[e] {
            let local = op_of[e] as usize;
            let open = is_open_ended[local];
            if (has_open_ended && open != is_open_pass)
                || (after_open && overwrites[local])
                || (open && twin_rank[local] != twins_placed[twin_class[local] as usize])
            {
                entry = next[e];
                continue;
            }
            let known = if state < dense_states_max {
                let at = state as usize * n + local;
                if at >= dense_transitions.len() {
                    dense_transitions.resize((state as usize + 1) * n, UNASKED);
                }
                dense_transitions[at]
            } else {
                transitions
                    .get(&((u64::from(state) << 32) | local as u64))
                    .copied()
                    .unwrap_or(UNASKED)
            };
            let new_state = if known != UNASKED {
                known
            } else {
                let op = &prepared[local];
                let next = match model.step(&states[state as usize], &op.input, op.output.as_ref())
                {
                    Some(next) => intern(next, &mut states),
                    None => NIL,
                };
                if state < dense_states_max {
                    dense_transitions[state as usize * n + local] = next;
                } else {
                    transitions.insert((u64::from(state) << 32) | local as u64, next);
                }
                next
            };
            let mut is_node_failed = false;
            if new_state != NIL && !(open && new_state == state) {
                set[local / 64] |= 1 << (local % 64);
                let new_hash = set_hash ^ zobrist[local];
                let memo_state = u64::from(new_state) << 1 | u64::from(open);
                if memo.insert(new_hash, memo_state, &set) {
                    let mut frame = entry;
                    if is_open_pass {
                        frame |= OPEN_PASS_BIT;
                    }
                    if after_open {
                        frame |= AFTER_OPEN_BIT;
                    }
                    stack.push((frame, state));
                    is_open_pass = false;
                    after_open = open;
                    if open {
                        twins_placed[twin_class[local] as usize] += 1;
                    } else {
                        known_left -= 1;
                    }
                    state = new_state;
                    set_hash = new_hash;
                    unlink!(entry);
                    unlink!(return_of[local]);
                    entry = next[HEAD as usize];
                    continue;
                }
                set[local / 64] &= !(1 << (local % 64));
                // Seen before and failed: for a read-only operation that
                // means this whole node fails.
                is_node_failed = is_read_only[local] && state != any_state;
            }
            if !is_node_failed {
                entry = next[e];
                continue;
            }
        } else if !is_open_pass && has_open_ended {
            // Known outcomes are exhausted here: now try the unknown ones.
            is_open_pass = true;
            entry = next[HEAD as usize];
            continue;
        }
        // A dead end: a return whose operation is not linearized yet, or a
        // read-only operation that could go now but leads nowhere.
        if best_depth.is_none_or(|d| stack.len() > d) {
            best_depth = Some(stack.len());
            best_stack.clear();
            best_stack.extend_from_slice(&stack);
            best_state = state;
            best_deadline = entry;
        }
        loop {
            let Some((frame, before)) = stack.pop() else {
                result.outcome = Outcome::NotLinearizable;
                break 'search;
            };
            is_open_pass = frame & OPEN_PASS_BIT != 0;
            after_open = frame & AFTER_OPEN_BIT != 0;
            let call = frame & FRAME_ENTRY;
            let local = op_of[call as usize] as usize;
            if is_open_ended[local] {
                twins_placed[twin_class[local] as usize] -= 1;
            } else {
                known_left += 1;
            }
            state = before;
            set_hash ^= zobrist[local];
            set[local / 64] &= !(1 << (local % 64));
            relink!(return_of[local]);
            relink!(call);
            entry = next[call as usize];
            if !is_read_only[local] || before == any_state {
                break;
            }
        }
    }
    result.states = memo.len as u64;
    let local_of = |frame: u32| op_of[(frame & FRAME_ENTRY) as usize] as usize;
    match result.outcome {
        Outcome::Linearizable => {
            result.order = stack.iter().map(|&(frame, _)| local_of(frame)).collect();
        }
        Outcome::NotLinearizable => {
            result.best_prefix = best_stack
                .iter()
                .map(|&(frame, _)| local_of(frame))
                .collect();
            result.best_state = states[best_state as usize].clone();
            result.best_deadline = Some(op_of[best_deadline as usize] as usize);
        }
        Outcome::Unknown => {}
    }
    result
}

/// Explains a dead end: the prefix linearized (local indexes, in order), and
/// the window of operations that could have come next, each with its reason.
/// `ops` maps the searched operations (`prepared`) to the history's.
fn describe_dead_end<M: Model>(
    model: &M,
    all: &[Operation<M::Input, M::Output>],
    ops: &[usize],
    prepared: &[Operation<M::Input, M::Output>],
    searched: &Searched<M::State>,
    from_any_state_at: Option<usize>,
) -> Failure {
    let (prefix, state) = (&searched.best_prefix, &searched.best_state);
    let deadline_local = searched
        .best_deadline
        .expect("a search that proves no order names where it got stuck");
    let mut is_linearized = vec![false; ops.len()];
    for &local in prefix.iter() {
        is_linearized[local] = true;
    }
    let deadline_time = prepared[deadline_local].ret;
    let candidates: Vec<usize> = (0..ops.len())
        .filter(|&local| !is_linearized[local] && prepared[local].call < deadline_time)
        .collect();
    let open_candidates = candidates
        .iter()
        .filter(|&&local| prepared[local].ret == u64::MAX)
        .count();
    let mut window: Vec<usize> = candidates
        .into_iter()
        .filter(|&local| prepared[local].ret != u64::MAX)
        .map(|local| ops[local])
        .collect();
    window.sort_by_key(|&global| all[global].call);
    let reasons = window
        .iter()
        .map(|&global| {
            let op = &all[global];
            let what = model.describe_operation(&op.input, op.output.as_ref());
            let local = ops.binary_search(&global).expect("a partition operation");
            let searched = &prepared[local];
            let reason = match model.step(state, &searched.input, searched.output.as_ref()) {
                None => format!(
                    "{what}: impossible when the value is {}",
                    model.describe_state(state)
                ),
                Some(after) => format!(
                    "{what}: possible (the value becomes {}), but then the rest cannot be ordered",
                    model.describe_state(&after)
                ),
            };
            (global, reason)
        })
        .collect();
    Failure {
        longest_prefix: prefix.iter().map(|&local| ops[local]).collect(),
        state: model.describe_state(state),
        window,
        deadline_op: ops[deadline_local],
        reasons,
        open_candidates,
        from_any_state_at,
        proof: None,
    }
}
