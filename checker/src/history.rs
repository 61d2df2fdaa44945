//! The history format (a contract other tools depend on): JSON Lines, one
//! event per line, lines in real-time order:
//!
//! ```text
//! {"process":3,"type":"invoke","f":"put","key":"k1","value":"v7","time":12345}
//! ```
//!
//! - `type`: `invoke`, then one completion: `ok`; `fail` (certainly took no
//!   effect); `info` (unknown: it may have taken effect at any time after its
//!   invocation, or never). An invocation with no completion means `info`. A
//!   process has at most one operation outstanding.
//! - `f`: `get` (`ok` value = the string read, or `null` if absent), `put`,
//!   `delete`, `append`, `cas` (value `{"expected": string-or-null, "new":
//!   string}`; `ok` = swapped; `fail` = the comparison failed, a definite
//!   outcome). `read` / `write` are accepted as `get` / `put`.
//! - `time`: optional nanoseconds, non-decreasing. Unknown fields are ignored.

use std::collections::BTreeMap;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::model::{KvInput, KvOp, KvOutput};
pub use crate::operation::{Completion, Operation};
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// One line of a history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub process: u64,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub f: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default)]
    pub value: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<u64>,
}

/// A parsed history: its operations and what was counted on the way.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub operations: Vec<Operation<KvInput, KvOutput>>,
    pub events: usize,
    pub invokes: usize,
    pub oks: usize,
    pub fails: usize,
    pub infos: usize,
    pub processes: usize,
}

/// One line as the fast parser reads it: borrowed from the text, the value
/// left as raw JSON until the function says what it must be.
#[derive(Deserialize)]
struct RawEvent<'a> {
    process: u64,
    #[serde(rename = "type")]
    kind: EventType,
    #[serde(borrow)]
    f: Cow<'a, str>,
    #[serde(default, borrow)]
    key: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    value: Option<&'a RawValue>,
    #[serde(default)]
    time: Option<u64>,
}

/// A cas value, its fields left as raw JSON.
#[derive(Deserialize)]
struct RawCas<'a> {
    #[serde(default, borrow)]
    expected: Option<&'a RawValue>,
    #[serde(default, borrow)]
    new: Option<&'a RawValue>,
}

/// Parses a JSON Lines history. Any malformed line is an error naming it.
/// Events are read borrowed from `text` and paired as they come: the only
/// allocations are the operations' own keys and values.
pub fn parse_jsonl(text: &str) -> Result<History> {
    let mut pairing = Pairing::default();
    for (number, line) in text.lines().enumerate() {
        let line_number = number + 1;
        if line.trim().is_empty() {
            continue;
        }
        let event: RawEvent = serde_json::from_str(line).map_err(|e| Error::Parse {
            line: line_number,
            reason: format!("not a history event: {e}"),
        })?;
        pairing.push(
            line_number,
            EventRef {
                process: event.process,
                kind: event.kind,
                f: &event.f,
                key: event.key.as_deref(),
                value: event.value.map_or("null", RawValue::get),
                time: event.time,
            },
        )?;
    }
    Ok(pairing.finish())
}

fn parse_error(line: usize, reason: impl Into<String>) -> Error {
    Error::Parse {
        line,
        reason: reason.into(),
    }
}

/// A JSON string (or number, as its text), or `None` for null.
fn string_or_null(raw: &str, line: usize, what: &str) -> Result<Option<String>> {
    let raw = raw.trim();
    if raw == "null" {
        return Ok(None);
    }
    if let Ok(text) = serde_json::from_str::<Cow<str>>(raw) {
        return Ok(Some(text.into_owned()));
    }
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Number(n)) => Ok(Some(n.to_string())),
        _ => Err(parse_error(
            line,
            format!("{what} must be a string or null, not {raw}"),
        )),
    }
}

fn string(raw: &str, line: usize, what: &str) -> Result<String> {
    string_or_null(raw, line, what)?
        .ok_or_else(|| parse_error(line, format!("{what} must be a string, not null")))
}

/// One event, borrowed: from a parsed [`Event`] or straight from a line.
struct EventRef<'a> {
    process: u64,
    kind: EventType,
    f: &'a str,
    key: Option<&'a str>,
    /// The value as JSON text.
    value: &'a str,
    time: Option<u64>,
}

fn input_of(event: &EventRef, line: usize) -> Result<KvInput> {
    let op = match event.f {
        "get" | "read" => KvOp::Get,
        "put" | "write" => KvOp::Put(string(event.value, line, "a put's value")?),
        "delete" => KvOp::Delete,
        "append" => KvOp::Append(string(event.value, line, "an append's value")?),
        "cas" => {
            let Ok(fields) = serde_json::from_str::<RawCas>(event.value) else {
                return Err(parse_error(
                    line,
                    "a cas value must be {\"expected\": ..., \"new\": ...}",
                ));
            };
            let expected = string_or_null(
                fields.expected.map_or("null", RawValue::get),
                line,
                "expected",
            )?;
            let new = string(fields.new.map_or("null", RawValue::get), line, "new")?;
            KvOp::Cas { expected, new }
        }
        other => return Err(parse_error(line, format!("unknown function {other:?}"))),
    };
    Ok(KvInput {
        key: event.key.map(str::to_string),
        op,
    })
}

/// Pairs events (with their line numbers) into operations.
pub fn from_events(events: Vec<(usize, Event)>) -> Result<History> {
    let mut pairing = Pairing::default();
    for (line, event) in &events {
        let value = event.value.to_string();
        pairing.push(
            *line,
            EventRef {
                process: event.process,
                kind: event.kind,
                f: &event.f,
                key: event.key.as_deref(),
                value: &value,
                time: event.time,
            },
        )?;
    }
    Ok(pairing.finish())
}

/// Pairs events into operations as they come.
#[derive(Default)]
struct Pairing {
    history: History,
    pending: BTreeMap<u64, usize>,
    processes: std::collections::BTreeSet<u64>,
    last_time: u64,
}

impl Pairing {
    fn finish(mut self) -> History {
        self.history.processes = self.processes.len();
        self.history
    }

    fn push(&mut self, line: usize, event: EventRef) -> Result<()> {
        let position = self.history.events;
        self.history.events += 1;
        let history = &mut self.history;
        if let Some(time) = event.time {
            if time < self.last_time {
                return Err(parse_error(
                    line,
                    format!("time {time} goes backwards (after {})", self.last_time),
                ));
            }
            self.last_time = time;
        }
        self.processes.insert(event.process);
        match event.kind {
            EventType::Invoke => {
                history.invokes += 1;
                if let Some(&open) = self.pending.get(&event.process) {
                    let open_line = history.operations[open].call_line;
                    return Err(parse_error(
                        line,
                        format!("process {} invokes while its operation from line {open_line} is outstanding", event.process),
                    ));
                }
                let input = input_of(&event, line)?;
                self.pending.insert(event.process, history.operations.len());
                history.operations.push(Operation {
                    process: event.process,
                    input,
                    output: None,
                    completion: Completion::Info,
                    call: position as u64,
                    ret: u64::MAX,
                    call_line: line,
                    ret_line: None,
                });
            }
            kind => {
                let Some(index) = self.pending.remove(&event.process) else {
                    return Err(parse_error(
                        line,
                        format!(
                            "process {} completes an operation it never invoked",
                            event.process
                        ),
                    ));
                };
                let op = &mut history.operations[index];
                let invoked_f = &op.input.op;
                let same_f = matches!(
                    (invoked_f, event.f),
                    (KvOp::Get, "get" | "read")
                        | (KvOp::Put(_), "put" | "write")
                        | (KvOp::Delete, "delete")
                        | (KvOp::Append(_), "append")
                        | (KvOp::Cas { .. }, "cas")
                );
                if !same_f {
                    return Err(parse_error(
                        line,
                        format!(
                            "completion {:?} does not match the invoked function",
                            event.f
                        ),
                    ));
                }
                op.ret_line = Some(line);
                match kind {
                    EventType::Ok => {
                        history.oks += 1;
                        op.completion = Completion::Ok;
                        op.ret = position as u64;
                        op.output = Some(match &op.input.op {
                            KvOp::Get => KvOutput::Value(string_or_null(
                                event.value,
                                line,
                                "a get's result",
                            )?),
                            KvOp::Cas { .. } => KvOutput::Cas(true),
                            _ => KvOutput::Done,
                        });
                    }
                    EventType::Fail => {
                        history.fails += 1;
                        op.ret = position as u64;
                        if matches!(op.input.op, KvOp::Cas { .. }) {
                            op.completion = Completion::Ok;
                            op.output = Some(KvOutput::Cas(false));
                        } else {
                            op.completion = Completion::Fail;
                        }
                    }
                    EventType::Info => {
                        history.infos += 1;
                    }
                    EventType::Invoke => unreachable!("handled above"),
                }
            }
        }
        Ok(())
    }
}
