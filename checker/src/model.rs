//! Sequential specifications the search checks histories against.
//!
//! A [`Model`] says how an operation changes a state and whether an observed
//! output is possible; it may split a history into independent partitions
//! (per key for a KV store), which are checked separately and in parallel.

use std::fmt::Debug;
use std::hash::Hash;

use crate::operation::{Completion, Operation};

/// A sequential specification.
pub trait Model: Sync {
    type State: Clone + Eq + Hash + Send + Sync + Debug;
    type Input: Clone + Eq + Hash + Send + Sync + Debug;
    type Output: Clone + Eq + Hash + Send + Sync + Debug;

    fn init(&self) -> Self::State;

    /// The state after `input` with observed `output`, or `None` if that output
    /// is impossible in `state`. `output` is `None` when the outcome is unknown
    /// (the operation may or may not have happened): then any result goes,
    /// and the step must be `Some` from every state (an operation with an
    /// unknown outcome can always be placed after everything else).
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;

    /// Groups of operation indexes that can be checked independently. The
    /// default is one group with everything.
    fn partition(&self, operations: &[Operation<Self::Input, Self::Output>]) -> Vec<Vec<usize>> {
        vec![(0..operations.len()).collect()]
    }

    /// A name for a partition (the key, for a KV store).
    fn partition_name(
        &self,
        operations: &[Operation<Self::Input, Self::Output>],
        group: &[usize],
    ) -> String {
        let _ = (operations, group);
        "history".to_string()
    }

    /// Whether the operation constrains nothing and changes nothing (a read
    /// with an unknown result): the search leaves it out.
    fn is_inert(&self, input: &Self::Input, output: Option<&Self::Output>) -> bool {
        let _ = (input, output);
        false
    }

    /// A state that stands for every state at once, if the model has one.
    /// From it a step must accept whatever some state accepts, and lead to
    /// the state that step leads to or to this one again. With it, a
    /// partition the search cannot decide at once is also searched in
    /// windows, each from this state: no order of a window from every state
    /// at once means none from the actual one, so a violation is found where
    /// it happens without exploring everything before it. `None`: no windows.
    fn any_state(&self) -> Option<Self::State> {
        None
    }

    /// Whether every valid step of this operation leaves the state as it was
    /// (a read with a known result). The search linearizes such an operation
    /// as soon as it can and never tries it later instead: moving it earlier
    /// changes no state and breaks no real-time order, so nothing is lost.
    fn is_read_only(&self, input: &Self::Input, output: Option<&Self::Output>) -> bool {
        let _ = (input, output);
        false
    }

    /// Whether the step is valid from every state and its resulting state does
    /// not depend on the state (a put or a delete). An operation with an
    /// unknown outcome placed right before one changes nothing, so the search
    /// never places it there.
    fn overwrites(&self, input: &Self::Input, output: Option<&Self::Output>) -> bool {
        let _ = (input, output);
        false
    }

    /// Rewrites one partition's operations (definite failures and inert
    /// operations already left out, in call order) into a problem with the
    /// same verdict that is cheaper to search: e.g. an operation with an
    /// unknown outcome that some read proves happened gets that outcome and a
    /// return no later than the read's. The default changes nothing.
    fn prepare(&self, operations: &mut [Operation<Self::Input, Self::Output>]) {
        let _ = operations;
    }

    /// A direct proof that one partition's prepared operations (as
    /// [`Model::prepare`] left them) have no order, if the model sees one at
    /// a glance: checked before any search. The default sees none.
    fn refute(&self, operations: &[Operation<Self::Input, Self::Output>]) -> Option<Refutation> {
        let _ = operations;
        None
    }

    fn describe_operation(&self, input: &Self::Input, output: Option<&Self::Output>) -> String {
        match output {
            Some(output) => format!("{input:?} -> {output:?}"),
            None => format!("{input:?} -> ?"),
        }
    }

    fn describe_state(&self, state: &Self::State) -> String {
        format!("{state:?}")
    }
}

/// A direct proof that no order exists (see [`Model::refute`]).
#[derive(Clone, Debug)]
pub struct Refutation {
    /// The operation that cannot be placed (an index into the operations given).
    pub operation: usize,
    /// The others the proof names.
    pub witnesses: Vec<usize>,
    /// Why, in words.
    pub reason: String,
}

/// What a KV (or register) operation does.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvOp {
    Get,
    Put(String),
    Delete,
    Append(String),
    /// Swap in `new` if the value is `expected` (`None`: the key is absent).
    Cas {
        expected: Option<String>,
        new: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KvInput {
    /// `None` for a register history (one unnamed register).
    pub key: Option<String>,
    pub op: KvOp,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvOutput {
    /// A read's result (`None`: absent).
    Value(Option<String>),
    /// A put, delete or append completed.
    Done,
    /// A compare-and-swap completed: whether it swapped.
    Cas(bool),
}

/// A key-value store (get, put, delete, append, compare-and-swap), checked one
/// key at a time; or, with `by_key` off, a single register (read, write, cas).
#[derive(Clone, Debug)]
pub struct KvModel {
    /// The value of a key nobody wrote: `None` (absent) for Lattice histories,
    /// `Some("")` for Jepsen's KV histories.
    pub initial: Option<String>,
    pub by_key: bool,
}

impl KvModel {
    /// Keys start absent; partitioned by key.
    pub fn kv() -> Self {
        KvModel {
            initial: None,
            by_key: true,
        }
    }
    /// One register that starts absent (Jepsen's etcd histories).
    pub fn register() -> Self {
        KvModel {
            initial: None,
            by_key: false,
        }
    }
    /// Keys start as the empty string (Jepsen's KV histories).
    pub fn empty_string_kv() -> Self {
        KvModel {
            initial: Some(String::new()),
            by_key: true,
        }
    }
}

/// What [`KvModel::prepare`] writes in place of a value that no operation
/// reads or compares against: all such values behave alike.
pub const UNOBSERVED: &str = "\u{0}unobserved";

fn show(value: &Option<String>) -> String {
    match value {
        Some(v) if v == UNOBSERVED => "a value no operation reads".to_string(),
        Some(v) => format!("{v:?}"),
        None => "absent".to_string(),
    }
}

/// The value of the one key (or register) a partition is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvState {
    /// The value (`None`: absent).
    Is(Option<String>),
    /// Every value at once (see [`Model::any_state`]).
    Any,
}

impl KvModel {
    /// A step from [`KvState::Any`]: what it observes becomes the value.
    fn step_from_any(&self, input: &KvInput, output: Option<&KvOutput>) -> Option<KvState> {
        Some(match (&input.op, output) {
            (KvOp::Get, Some(KvOutput::Value(read))) => KvState::Is(read.clone()),
            (KvOp::Put(value), None | Some(KvOutput::Done)) => KvState::Is(Some(value.clone())),
            (KvOp::Delete, None | Some(KvOutput::Done)) => KvState::Is(None),
            (KvOp::Cas { new, .. }, Some(KvOutput::Cas(true))) => KvState::Is(Some(new.clone())),
            (KvOp::Get, None)
            | (KvOp::Append(_), None | Some(KvOutput::Done))
            | (KvOp::Cas { .. }, None | Some(KvOutput::Cas(false))) => KvState::Any,
            _ => return None,
        })
    }
}

impl Model for KvModel {
    type State = KvState;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> Self::State {
        KvState::Is(self.initial.clone())
    }

    fn any_state(&self) -> Option<Self::State> {
        Some(KvState::Any)
    }

    fn step(
        &self,
        state: &Self::State,
        input: &KvInput,
        output: Option<&KvOutput>,
    ) -> Option<Self::State> {
        let state = match state {
            KvState::Is(value) => value,
            KvState::Any => return self.step_from_any(input, output),
        };
        let next = match (&input.op, output) {
            (KvOp::Get, None) => Some(state.clone()),
            (KvOp::Get, Some(KvOutput::Value(read))) => (read == state).then(|| state.clone()),
            (KvOp::Put(value), None | Some(KvOutput::Done)) => Some(Some(value.clone())),
            (KvOp::Delete, None | Some(KvOutput::Done)) => Some(None),
            (KvOp::Append(suffix), None | Some(KvOutput::Done)) => {
                let mut value = state.clone().unwrap_or_default();
                value.push_str(suffix);
                Some(Some(value))
            }
            (KvOp::Cas { expected, new }, None) => Some(if state == expected {
                Some(new.clone())
            } else {
                state.clone()
            }),
            (KvOp::Cas { expected, new }, Some(KvOutput::Cas(true))) => {
                (state == expected).then(|| Some(new.clone()))
            }
            (KvOp::Cas { expected, .. }, Some(KvOutput::Cas(false))) => {
                (state != expected).then(|| state.clone())
            }
            _ => None,
        };
        next.map(KvState::Is)
    }

    fn partition(&self, operations: &[Operation<KvInput, KvOutput>]) -> Vec<Vec<usize>> {
        if !self.by_key {
            return vec![(0..operations.len()).collect()];
        }
        let mut by_key: std::collections::BTreeMap<&Option<String>, Vec<usize>> =
            Default::default();
        for (i, op) in operations.iter().enumerate() {
            by_key.entry(&op.input.key).or_default().push(i);
        }
        by_key.into_values().collect()
    }

    fn partition_name(
        &self,
        operations: &[Operation<KvInput, KvOutput>],
        group: &[usize],
    ) -> String {
        match group
            .first()
            .and_then(|&i| operations[i].input.key.as_ref())
        {
            Some(key) if self.by_key => format!("key {key:?}"),
            _ => "the register".to_string(),
        }
    }

    fn is_inert(&self, input: &KvInput, output: Option<&KvOutput>) -> bool {
        input.op == KvOp::Get && output.is_none()
    }

    fn is_read_only(&self, input: &KvInput, output: Option<&KvOutput>) -> bool {
        matches!(
            (&input.op, output),
            (KvOp::Get, Some(KvOutput::Value(_))) | (KvOp::Cas { .. }, Some(KvOutput::Cas(false)))
        )
    }

    fn overwrites(&self, input: &KvInput, output: Option<&KvOutput>) -> bool {
        matches!(
            (&input.op, output),
            (KvOp::Put(_) | KvOp::Delete, None | Some(KvOutput::Done))
        )
    }

    /// Two rewritings, each keeping the verdict (`checker/README.md` has the
    /// arguments; the property tests check them against stateright):
    /// - a value written by exactly one operation whose outcome is unknown,
    ///   and seen by a read (or a swap that expected it): that operation
    ///   happened, before the earliest such read returned;
    /// - a value no operation reads or expects is replaced by [`UNOBSERVED`]:
    ///   no operation can tell such values apart, so states that differ only
    ///   in them are one state to the search.
    ///
    /// Appends build values from values, so partitions with appends are left
    /// as they are.
    fn prepare(&self, ops: &mut [Operation<KvInput, KvOutput>]) {
        use std::collections::HashMap;
        let mentions_sentinel = |op: &Operation<KvInput, KvOutput>| match &op.input.op {
            KvOp::Put(v) | KvOp::Append(v) => v == UNOBSERVED,
            KvOp::Cas { expected, new } => {
                new == UNOBSERVED || expected.as_deref() == Some(UNOBSERVED)
            }
            _ => matches!(&op.output, Some(KvOutput::Value(Some(v))) if v == UNOBSERVED),
        };
        if ops
            .iter()
            .any(|op| matches!(op.input.op, KvOp::Append(_)) || mentions_sentinel(op))
        {
            return;
        }
        // Per value: its writers (count, the last one) and the earliest
        // return of an operation that definitely saw it.
        struct Seen {
            writers: usize,
            /// The last operation that writes the value; [`NO_WRITER`] for
            /// none, and for the initial value (no operation put it there).
            writer: usize,
            seen_by: u64,
            is_observed: bool,
        }
        const NO_WRITER: usize = usize::MAX;
        fn seen<'a>(values: &'a mut HashMap<String, Seen>, value: &str) -> &'a mut Seen {
            if !values.contains_key(value) {
                values.insert(
                    value.to_string(),
                    Seen {
                        writers: 0,
                        writer: NO_WRITER,
                        seen_by: u64::MAX,
                        is_observed: false,
                    },
                );
            }
            values.get_mut(value).expect("just inserted")
        }
        let mut values: HashMap<String, Seen> = HashMap::new();
        if let Some(initial) = &self.initial {
            // The initial value counts as written, by no operation: a read
            // of it proves nothing (not even when no operation writes it).
            let s = seen(&mut values, initial);
            s.is_observed = true;
            s.writers += 1;
            s.writer = NO_WRITER;
        }
        for (i, op) in ops.iter().enumerate() {
            match (&op.input.op, &op.output) {
                (KvOp::Put(v), _) => {
                    let s = seen(&mut values, v);
                    s.writers += 1;
                    s.writer = i;
                }
                (KvOp::Get, Some(KvOutput::Value(Some(v)))) => {
                    let s = seen(&mut values, v);
                    s.is_observed = true;
                    s.seen_by = s.seen_by.min(op.ret);
                }
                (KvOp::Cas { expected, new }, output) => {
                    let s = seen(&mut values, new);
                    s.writers += 1;
                    s.writer = i;
                    if let Some(e) = expected {
                        let s = seen(&mut values, e);
                        s.is_observed = true;
                        if output == &Some(KvOutput::Cas(true)) {
                            s.seen_by = s.seen_by.min(op.ret);
                        }
                    }
                }
                _ => {}
            }
        }
        // Unknown outcomes proven by a read. A swap proven so is itself a
        // read of the value it expected: repeat until nothing changes.
        loop {
            let mut proven = Vec::new();
            for s in values.values() {
                if s.writers != 1 || s.writer == NO_WRITER || s.seen_by == u64::MAX {
                    continue;
                }
                if ops[s.writer].output.is_none() {
                    proven.push((s.writer, s.seen_by));
                }
            }
            if proven.is_empty() {
                break;
            }
            proven.sort_unstable();
            for (i, seen_by) in proven {
                let op = &mut ops[i];
                op.ret = seen_by;
                op.completion = Completion::Ok;
                if let KvOp::Cas { expected, .. } = &op.input.op {
                    op.output = Some(KvOutput::Cas(true));
                    if let Some(s) = expected.as_deref().and_then(|e| values.get_mut(e)) {
                        s.seen_by = s.seen_by.min(seen_by);
                    }
                } else {
                    op.output = Some(KvOutput::Done);
                }
            }
        }
        for op in ops.iter_mut() {
            match &mut op.input.op {
                KvOp::Put(v) | KvOp::Cas { new: v, .. }
                    if !values.get(v.as_str()).is_some_and(|s| s.is_observed) =>
                {
                    *v = UNOBSERVED.to_string();
                }
                _ => {}
            }
        }
    }

    /// A stale read: it returns a value written by exactly one operation,
    /// and another write certainly took effect after that one completed and
    /// before the read began. The value is gone by then and nothing writes
    /// it again. (A swap that succeeded reads the value it expected too.)
    fn refute(&self, ops: &[Operation<KvInput, KvOutput>]) -> Option<Refutation> {
        use std::collections::HashMap;
        if ops.iter().any(|op| matches!(op.input.op, KvOp::Append(_))) {
            return None;
        }
        // Per value: how many operations write it, and the last of them.
        let mut writers: HashMap<&str, (usize, usize)> = HashMap::new();
        if let Some(initial) = &self.initial {
            writers.insert(initial, (1, usize::MAX));
        }
        for (i, op) in ops.iter().enumerate() {
            if let KvOp::Put(v) | KvOp::Cas { new: v, .. } = &op.input.op {
                let entry = writers.entry(v).or_insert((0, i));
                *entry = (entry.0 + 1, i);
            }
        }
        // Writes that certainly took effect, by call; the earliest return
        // among those called at or after each position.
        let mut overwrites: Vec<usize> = (0..ops.len())
            .filter(|&i| {
                matches!(
                    (&ops[i].input.op, &ops[i].output),
                    (KvOp::Put(_) | KvOp::Delete, Some(KvOutput::Done))
                        | (KvOp::Cas { .. }, Some(KvOutput::Cas(true)))
                )
            })
            .collect();
        overwrites.sort_by_key(|&i| ops[i].call);
        let mut earliest_return_from = vec![usize::MAX; overwrites.len() + 1];
        for at in (0..overwrites.len()).rev() {
            let (i, best) = (overwrites[at], earliest_return_from[at + 1]);
            earliest_return_from[at] = if best == usize::MAX || ops[i].ret < ops[best].ret {
                i
            } else {
                best
            };
        }
        for (r, read) in ops.iter().enumerate() {
            let value = match (&read.input.op, &read.output) {
                (KvOp::Get, Some(KvOutput::Value(Some(v)))) => v,
                (
                    KvOp::Cas {
                        expected: Some(v), ..
                    },
                    Some(KvOutput::Cas(true)),
                ) => v,
                _ => continue,
            };
            let Some(&(1, w)) = writers.get(value.as_str()) else {
                continue;
            };
            if w == usize::MAX || w == r || ops[w].output.is_none() {
                continue;
            }
            let after = overwrites.partition_point(|&x| ops[x].call <= ops[w].ret);
            let x = earliest_return_from[after];
            if x != usize::MAX && ops[x].ret < read.call {
                return Some(Refutation {
                    operation: r,
                    witnesses: vec![w, x],
                    reason: format!(
                        "a stale read: {value:?} is written only by the first operation below, and the second overwrote it after that one completed and before this read began",
                    ),
                });
            }
        }
        None
    }

    fn describe_operation(&self, input: &KvInput, output: Option<&KvOutput>) -> String {
        let key = match &input.key {
            Some(key) if self.by_key => format!(" {key}"),
            _ => String::new(),
        };
        let call = match &input.op {
            KvOp::Get => format!("get{key}"),
            KvOp::Put(v) => format!("put{key} {v:?}"),
            KvOp::Delete => format!("delete{key}"),
            KvOp::Append(v) => format!("append{key} {v:?}"),
            KvOp::Cas { expected, new } => format!("cas{key} {} -> {new:?}", show(expected)),
        };
        let result = match output {
            None => "unknown".to_string(),
            Some(KvOutput::Value(v)) => show(v),
            Some(KvOutput::Done) => "ok".to_string(),
            Some(KvOutput::Cas(true)) => "swapped".to_string(),
            Some(KvOutput::Cas(false)) => "not swapped".to_string(),
        };
        format!("{call} => {result}")
    }

    fn describe_state(&self, state: &Self::State) -> String {
        match state {
            KvState::Is(value) => show(value),
            KvState::Any => "any value".to_string(),
        }
    }
}

/// Checks any stateright [`SequentialSpec`](stateright::semantics::SequentialSpec)
/// with this crate's search: the spec's value is the state, its `Op` the
/// input, its `Ret` the output.
#[cfg(feature = "stateright")]
pub struct SequentialSpecModel<S> {
    pub initial: S,
}

#[cfg(feature = "stateright")]
impl<S> Model for SequentialSpecModel<S>
where
    S: stateright::semantics::SequentialSpec + Clone + Eq + Hash + Send + Sync + Debug,
    S::Op: Clone + Eq + Hash + Send + Sync + Debug,
    S::Ret: Clone + Eq + Hash + Send + Sync + Debug,
{
    type State = S;
    type Input = S::Op;
    type Output = S::Ret;

    fn init(&self) -> S {
        self.initial.clone()
    }

    fn step(&self, state: &S, input: &S::Op, output: Option<&S::Ret>) -> Option<S> {
        let mut next = state.clone();
        match output {
            Some(ret) => next.is_valid_step(input, ret).then_some(next),
            None => {
                next.invoke(input);
                Some(next)
            }
        }
    }
}

/// The KV model as a stateright [`SequentialSpec`](stateright::semantics::SequentialSpec):
/// the whole map is the state. Lets stateright's own linearizability tester
/// judge the same histories (the property tests compare verdicts), and shows
/// the adapter at work.
#[cfg(feature = "stateright")]
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct KvSpec {
    pub data: std::collections::BTreeMap<Option<String>, String>,
}

#[cfg(feature = "stateright")]
impl stateright::semantics::SequentialSpec for KvSpec {
    type Op = KvInput;
    type Ret = KvOutput;

    fn invoke(&mut self, input: &KvInput) -> KvOutput {
        let key = input.key.clone();
        match &input.op {
            KvOp::Get => KvOutput::Value(self.data.get(&key).cloned()),
            KvOp::Put(value) => {
                self.data.insert(key, value.clone());
                KvOutput::Done
            }
            KvOp::Delete => {
                self.data.remove(&key);
                KvOutput::Done
            }
            KvOp::Append(suffix) => {
                self.data.entry(key).or_default().push_str(suffix);
                KvOutput::Done
            }
            KvOp::Cas { expected, new } => {
                let swapped = self.data.get(&key) == expected.as_ref();
                if swapped {
                    self.data.insert(key, new.clone());
                }
                KvOutput::Cas(swapped)
            }
        }
    }
}
