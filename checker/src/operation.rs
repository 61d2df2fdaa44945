//! An operation of a history: an invocation paired with its completion,
//! generic over what a model takes and returns. The history format
//! (`history`) makes them, the models (`model`) and the search consume them:
//! a module below both, so neither imports the other.

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    Ok,
    /// Certainly took no effect (a failed compare-and-swap is `Ok` with
    /// "not swapped" instead: a definite outcome the checker verifies).
    Fail,
    /// Unknown: may have taken effect any time after its invocation, or never.
    Info,
}

/// An invocation paired with its completion.
#[derive(Clone, Debug)]
pub struct Operation<I, O> {
    pub process: u64,
    pub input: I,
    /// `None` when the outcome is unknown (and for definite failures).
    pub output: Option<O>,
    pub completion: Completion,
    /// Position of the invocation among the history's events.
    pub call: u64,
    /// Position of the completion; `u64::MAX` if unknown (info).
    pub ret: u64,
    /// The line numbers (1-based) of the invocation and completion.
    pub call_line: usize,
    pub ret_line: Option<usize>,
}
