//! Histories generated from a real sequential execution, for tests and the
//! benchmark: clients invoke operations, each takes effect at one instant
//! between its invocation and its completion (so intervals overlap widely),
//! some complete as `fail` (never happened), `info` or not at all (outcome
//! unknown: taken effect at any time after the invocation, or never).
//! Linearizable by construction; [`make_read_stale`] breaks that on purpose.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::history::{Event, EventType};

/// A small deterministic RNG (SplitMix64): no dependency, same on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub clients: u64,
    pub keys: u64,
    pub operations: u64,
    /// Percent of operations that end `info` (outcome unknown), and that end
    /// `fail` (no effect).
    pub info_percent: u64,
    pub fail_percent: u64,
    /// Percent of operations whose process crashes: no completion line at
    /// all, and a new process takes the client's place.
    pub crash_percent: u64,
    /// Of the operations with unknown outcomes (info or crashed), the percent
    /// that take effect: at once, or any time later (even after the `info`
    /// line, as a request still in flight can). The rest never do.
    pub unknown_applied_percent: u64,
    /// Percent of compare-and-swaps that expect the key's current value (the
    /// rest expect some earlier value, or absent).
    pub cas_current_percent: u64,
}

impl Shape {
    /// Few unknown outcomes, all of them applied.
    pub fn tame(clients: u64, keys: u64, operations: u64) -> Shape {
        Shape {
            clients,
            keys,
            operations,
            info_percent: 2,
            fail_percent: 3,
            crash_percent: 0,
            unknown_applied_percent: 100,
            cas_current_percent: 50,
        }
    }

    /// What a Jepsen test with crashes records: 5% of operations end `info`,
    /// 3% never complete, half of those unknown outcomes took effect, and
    /// compare-and-swaps mostly expect the current value.
    pub fn with_crashes(clients: u64, keys: u64, operations: u64) -> Shape {
        Shape {
            clients,
            keys,
            operations,
            info_percent: 5,
            fail_percent: 2,
            crash_percent: 3,
            unknown_applied_percent: 50,
            cas_current_percent: 80,
        }
    }
}

/// How an invoked operation will end, decided at invocation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    Ok,
    /// `fail`: it never takes effect.
    Fail,
    /// `info`; whether it takes effect is `applies`.
    Info,
    /// No completion line; whether it takes effect is `applies`.
    Crash,
}

struct Outstanding {
    f: &'static str,
    key: String,
    value: Value,
    /// The result once it has taken effect.
    result: Option<Value>,
    ending: Ending,
    /// Whether it takes effect at all.
    applies: bool,
}

/// Applies an operation to the data and returns its result.
fn apply(data: &mut BTreeMap<String, String>, op: &Outstanding) -> Value {
    match op.f {
        "get" => data.get(&op.key).map_or(Value::Null, |v| json!(v)),
        "put" => {
            data.insert(
                op.key.clone(),
                op.value.as_str().expect("put value").to_string(),
            );
            Value::Null
        }
        "delete" => {
            data.remove(&op.key);
            Value::Null
        }
        _ => {
            let expected = op.value["expected"].as_str().map(str::to_string);
            let swapped = data.get(&op.key) == expected.as_ref();
            if swapped {
                data.insert(
                    op.key.clone(),
                    op.value["new"].as_str().expect("new").to_string(),
                );
            }
            json!(swapped)
        }
    }
}

/// Generates a linearizable history of KV operations (get, put, delete, cas)
/// with unique values. Events carry `time` (their position).
pub fn kv_history(seed: u64, shape: Shape) -> Vec<Event> {
    let mut rng = Rng::new(seed);
    let mut data: BTreeMap<String, String> = BTreeMap::new();
    let mut outstanding: BTreeMap<u64, Outstanding> = BTreeMap::new();
    // Operations with unknown outcomes that completed (or crashed) before
    // taking the effect they will take.
    let mut in_flight: Vec<Outstanding> = Vec::new();
    let mut events = Vec::new();
    let mut invoked = 0u64;
    let mut next_value = 0u64;
    let mut process_of_client: Vec<u64> = (0..shape.clients).collect();
    let mut next_process = shape.clients;
    let event = |events: &Vec<Event>, process, kind, f: &str, key: &str, value| Event {
        process,
        kind,
        f: f.to_string(),
        key: Some(key.to_string()),
        value,
        time: Some(events.len() as u64),
    };
    while invoked < shape.operations || !outstanding.is_empty() {
        if !in_flight.is_empty() && rng.chance(5) {
            let op = in_flight.swap_remove(rng.below(in_flight.len() as u64) as usize);
            apply(&mut data, &op);
        }
        let client = rng.below(shape.clients);
        let process = process_of_client[client as usize];
        match outstanding.get_mut(&process) {
            None if invoked < shape.operations => {
                invoked += 1;
                let key = format!("k{}", rng.below(shape.keys));
                next_value += 1;
                let (f, value) = match rng.below(10) {
                    0..=3 => ("get", Value::Null),
                    4..=6 => ("put", json!(format!("v{next_value}"))),
                    7 => ("delete", Value::Null),
                    _ => {
                        let expected = if rng.chance(shape.cas_current_percent) {
                            data.get(&key).cloned()
                        } else if rng.chance(20) {
                            None
                        } else {
                            Some(format!("v{}", rng.below(next_value + 1)))
                        };
                        (
                            "cas",
                            json!({"expected": expected, "new": format!("v{next_value}")}),
                        )
                    }
                };
                // Only put and delete can "certainly not happen": a failed cas
                // means "compared and did not swap" in the format.
                let roll = rng.below(100);
                let ending = if roll < shape.info_percent {
                    Ending::Info
                } else if roll < shape.info_percent + shape.crash_percent {
                    Ending::Crash
                } else if (f == "put" || f == "delete") && rng.chance(shape.fail_percent) {
                    Ending::Fail
                } else {
                    Ending::Ok
                };
                let applies = match ending {
                    Ending::Ok => true,
                    Ending::Fail => false,
                    Ending::Info | Ending::Crash => rng.chance(shape.unknown_applied_percent),
                };
                events.push(event(
                    &events,
                    process,
                    EventType::Invoke,
                    f,
                    &key,
                    value.clone(),
                ));
                outstanding.insert(
                    process,
                    Outstanding {
                        f,
                        key,
                        value,
                        result: None,
                        ending,
                        applies,
                    },
                );
            }
            None => {}
            Some(op) if op.result.is_none() && op.applies && rng.chance(50) => {
                // It takes effect now.
                op.result = Some(apply(&mut data, op));
            }
            Some(op) if op.result.is_some() || op.ending != Ending::Ok => {
                if !rng.chance(40) {
                    continue;
                }
                let op = outstanding.remove(&process).expect("present");
                match op.ending {
                    Ending::Fail => events.push(event(
                        &events,
                        process,
                        EventType::Fail,
                        op.f,
                        &op.key,
                        Value::Null,
                    )),
                    Ending::Info | Ending::Crash => {
                        if op.ending == Ending::Info {
                            events.push(event(
                                &events,
                                process,
                                EventType::Info,
                                op.f,
                                &op.key,
                                Value::Null,
                            ));
                        }
                        // The process is done (as in Jepsen): a new one takes its place.
                        process_of_client[client as usize] = next_process;
                        next_process += 1;
                        if op.applies && op.result.is_none() {
                            in_flight.push(op);
                        }
                    }
                    Ending::Ok => {
                        let result = op.result.expect("took effect");
                        let (kind, value) = match (op.f, &result) {
                            ("cas", Value::Bool(false)) => (EventType::Fail, op.value),
                            ("get", _) => (EventType::Ok, result),
                            _ => (EventType::Ok, op.value),
                        };
                        events.push(event(&events, process, kind, op.f, &op.key, value));
                    }
                }
            }
            Some(_) => {}
        }
    }
    events
}

/// Makes one successful read return a value that was overwritten before the
/// read began: no order can explain it. Returns the read's event index, or
/// `None` if the history has no such read.
pub fn make_read_stale(events: &mut [Event], seed: u64) -> Option<usize> {
    // For each key: completed puts as (invoke index, completion index, value).
    let mut invoked_at: BTreeMap<u64, usize> = BTreeMap::new();
    let mut puts: BTreeMap<String, Vec<(usize, usize, String)>> = BTreeMap::new();
    let mut candidates = Vec::new();
    for (i, e) in events.iter().enumerate() {
        match e.kind {
            EventType::Invoke => {
                invoked_at.insert(e.process, i);
            }
            EventType::Ok => {
                let call = invoked_at[&e.process];
                let key = e.key.clone().unwrap_or_default();
                if e.f == "put" {
                    puts.entry(key).or_default().push((
                        call,
                        i,
                        e.value.as_str().unwrap_or_default().to_string(),
                    ));
                } else if e.f == "get" {
                    // A put P overwritten by a put Q, both complete before this read began.
                    let key_puts = puts.get(&key).map(Vec::as_slice).unwrap_or(&[]);
                    let stale = key_puts
                        .iter()
                        .find(|p| key_puts.iter().any(|q| q.0 > p.1 && q.1 < call));
                    if let Some(stale) = stale {
                        if e.value.as_str() != Some(&stale.2) {
                            candidates.push((i, stale.2.clone()));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if candidates.is_empty() {
        return None;
    }
    let (index, value) =
        candidates[(Rng::new(seed).below(candidates.len() as u64)) as usize].clone();
    events[index].value = json!(value);
    Some(index)
}
