//! Records a history as clients run: `invoke` returns a handle that is
//! completed with `ok`, `fail` or `info`. Cheap (one short lock per event),
//! thread-safe, never held across an `.await`, so it is async-friendly.
//! A handle dropped without a completion leaves the operation outstanding,
//! which the format reads as `info` (unknown).

use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::history::{Event, EventType};

/// Where event times come from: nanoseconds, non-decreasing. Default: none.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

#[derive(Clone, Default)]
pub struct Recorder {
    events: Arc<Mutex<Vec<Event>>>,
    clock: Option<Clock>,
}

impl Recorder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stamps every event with `clock()` (e.g. simulated time).
    pub fn with_clock(clock: Clock) -> Self {
        Recorder {
            events: Arc::default(),
            clock: Some(clock),
        }
    }

    fn push(&self, process: u64, kind: EventType, f: &str, key: Option<&str>, value: Value) {
        let mut events = self
            .events
            .lock()
            .expect("recorder lock is never poisoned: no panics under it");
        // Stamp under the lock so times are non-decreasing in line order.
        let time = self.clock.as_ref().map(|clock| clock());
        events.push(Event {
            process,
            kind,
            f: f.to_string(),
            key: key.map(str::to_string),
            value,
            time,
        });
    }

    /// Records an invocation. `value` follows the format: `null` for get and
    /// delete, a string for put and append, `{"expected", "new"}` for cas.
    pub fn invoke(&self, process: u64, f: &str, key: Option<&str>, value: Value) -> OpHandle {
        self.push(process, EventType::Invoke, f, key, value);
        OpHandle {
            recorder: self.clone(),
            process,
            f: f.to_string(),
            key: key.map(str::to_string),
        }
    }

    /// Every event so far, in order.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("never poisoned").clone()
    }

    /// The history as JSON Lines.
    pub fn to_jsonl(&self) -> String {
        let events = self.events.lock().expect("never poisoned");
        let mut out = String::with_capacity(events.len() * 64);
        for event in events.iter() {
            out.push_str(&serde_json::to_string(event).expect("events always serialize"));
            out.push('\n');
        }
        out
    }

    pub fn write_jsonl(&self, path: impl AsRef<std::path::Path>) -> std::io::Result<()> {
        std::fs::write(path, self.to_jsonl())
    }
}

/// An invoked operation awaiting its completion.
pub struct OpHandle {
    recorder: Recorder,
    process: u64,
    f: String,
    key: Option<String>,
}

impl OpHandle {
    /// It happened, with this result (the value read for a get; `null` else).
    pub fn ok(self, value: Value) {
        self.recorder.push(
            self.process,
            EventType::Ok,
            &self.f,
            self.key.as_deref(),
            value,
        );
    }
    /// It certainly did not happen (for cas: the comparison failed).
    pub fn fail(self, value: Value) {
        self.recorder.push(
            self.process,
            EventType::Fail,
            &self.f,
            self.key.as_deref(),
            value,
        );
    }
    /// Unknown: it may or may not have happened.
    pub fn info(self) {
        self.recorder.push(
            self.process,
            EventType::Info,
            &self.f,
            self.key.as_deref(),
            Value::Null,
        );
    }
}
