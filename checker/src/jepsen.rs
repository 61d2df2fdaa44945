//! Parsers for two Jepsen history formats (see the Porcupine corpus README):
//!
//! - `jepsen-etcd`: `INFO  jepsen.util - <process> <type> <f> <value>` lines of
//!   a compare-and-set register (`:read`, `:write`, `:cas [expected new]`);
//! - `jepsen-kv`: EDN maps, `{:process 0, :type :invoke, :f :append, :key "0",
//!   :value "x 0 0 y"}`, of a KV store with get / put / append.
//!
//! Both become ordinary [`Event`]s; every line must parse, or the line is named.

use serde_json::{json, Value};

use crate::history::{from_events, Event, EventType, History};
use crate::{Error, Result};

fn parse_error(line: usize, reason: impl Into<String>) -> Error {
    Error::Parse {
        line,
        reason: reason.into(),
    }
}

fn event_type(token: &str, line: usize) -> Result<EventType> {
    Ok(match token {
        ":invoke" => EventType::Invoke,
        ":ok" => EventType::Ok,
        ":fail" => EventType::Fail,
        ":info" => EventType::Info,
        other => return Err(parse_error(line, format!("unknown event type {other:?}"))),
    })
}

/// Jepsen's etcd register logs.
pub fn parse_etcd(text: &str) -> Result<History> {
    let mut events = Vec::new();
    for (number, raw) in text.lines().enumerate() {
        let line = number + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let tokens: Vec<&str> = raw.split_whitespace().collect();
        if tokens.len() < 7 || tokens[0] != "INFO" || tokens[1] != "jepsen.util" || tokens[2] != "-"
        {
            return Err(parse_error(
                line,
                "expected `INFO jepsen.util - <process> <type> <f> <value>`",
            ));
        }
        let process: u64 = tokens[3]
            .parse()
            .map_err(|_| parse_error(line, format!("bad process {:?}", tokens[3])))?;
        let kind = event_type(tokens[4], line)?;
        let value_tokens = &tokens[6..];
        let integer = |token: &str| -> Result<Value> {
            token
                .parse::<i64>()
                .map(|n| Value::String(n.to_string()))
                .map_err(|_| parse_error(line, format!("bad integer {token:?}")))
        };
        let (f, value) = match tokens[5] {
            ":read" => {
                let value = match (kind, value_tokens) {
                    (_, ["nil"]) | (EventType::Fail | EventType::Info, [":timed-out"]) => {
                        Value::Null
                    }
                    (EventType::Ok, [n]) => integer(n)?,
                    _ => {
                        return Err(parse_error(
                            line,
                            format!("bad read value {value_tokens:?}"),
                        ))
                    }
                };
                ("read", value)
            }
            ":write" => {
                let value = match value_tokens {
                    [":timed-out"] if kind == EventType::Info => Value::Null,
                    [n] => integer(n)?,
                    _ => {
                        return Err(parse_error(
                            line,
                            format!("bad write value {value_tokens:?}"),
                        ))
                    }
                };
                ("write", value)
            }
            ":cas" => {
                let value = match value_tokens {
                    [":timed-out"] if kind == EventType::Info => Value::Null,
                    [a, b] if a.starts_with('[') && b.ends_with(']') => json!({
                        "expected": integer(&a[1..])?,
                        "new": integer(&b[..b.len() - 1])?,
                    }),
                    _ => return Err(parse_error(line, format!("bad cas value {value_tokens:?}"))),
                };
                ("cas", value)
            }
            other => return Err(parse_error(line, format!("unknown function {other:?}"))),
        };
        events.push((
            line,
            Event {
                process,
                kind,
                f: f.to_string(),
                key: None,
                value,
                time: None,
            },
        ));
    }
    from_events(events)
}

/// One EDN token of the flat maps Jepsen's KV histories use.
#[derive(Debug, PartialEq)]
enum Token {
    Keyword(String),
    Str(String),
    Int(i64),
    Nil,
}

fn edn_map(raw: &str, line: usize) -> Result<Vec<(String, Token)>> {
    let body = raw
        .trim()
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or_else(|| parse_error(line, "expected an EDN map {...}"))?;
    let mut chars = body.chars().peekable();
    let mut tokens = Vec::new();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let Some(&c) = chars.peek() else { break };
        let token = if c == '"' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('n') => s.push('\n'),
                        Some('t') => s.push('\t'),
                        Some(other) => s.push(other),
                        None => return Err(parse_error(line, "unterminated string")),
                    },
                    Some(other) => s.push(other),
                    None => return Err(parse_error(line, "unterminated string")),
                }
            }
            Token::Str(s)
        } else {
            let mut word = String::new();
            while chars
                .peek()
                .is_some_and(|c| !c.is_whitespace() && *c != ',')
            {
                word.push(chars.next().expect("peeked"));
            }
            if let Some(keyword) = word.strip_prefix(':') {
                Token::Keyword(keyword.to_string())
            } else if word == "nil" {
                Token::Nil
            } else {
                Token::Int(
                    word.parse()
                        .map_err(|_| parse_error(line, format!("unexpected {word:?}")))?,
                )
            }
        };
        tokens.push(token);
    }
    if tokens.len() % 2 != 0 {
        return Err(parse_error(line, "an EDN map needs key/value pairs"));
    }
    let mut pairs = Vec::new();
    let mut it = tokens.into_iter();
    while let (Some(key), Some(value)) = (it.next(), it.next()) {
        let Token::Keyword(key) = key else {
            return Err(parse_error(
                line,
                format!("map keys must be keywords, not {key:?}"),
            ));
        };
        pairs.push((key, value));
    }
    Ok(pairs)
}

/// Jepsen's EDN KV histories.
pub fn parse_kv(text: &str) -> Result<History> {
    let mut events = Vec::new();
    for (number, raw) in text.lines().enumerate() {
        let line = number + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let (mut process, mut kind, mut f, mut key, mut value) =
            (None, None, None, None, Value::Null);
        for (name, token) in edn_map(raw, line)? {
            match (name.as_str(), token) {
                ("process", Token::Int(p)) if p >= 0 => process = Some(p as u64),
                ("type", Token::Keyword(t)) => kind = Some(event_type(&format!(":{t}"), line)?),
                ("f", Token::Keyword(name)) => f = Some(name),
                ("key", Token::Str(k)) => key = Some(k),
                ("key", Token::Int(k)) => key = Some(k.to_string()),
                ("value", Token::Str(v)) => value = Value::String(v),
                ("value", Token::Int(v)) => value = Value::String(v.to_string()),
                ("value", Token::Nil) => value = Value::Null,
                ("process" | "type" | "f" | "key" | "value", token) => {
                    return Err(parse_error(
                        line,
                        format!(":{name} has an unexpected value {token:?}"),
                    ))
                }
                _ => {}
            }
        }
        let process = process.ok_or_else(|| parse_error(line, "missing :process"))?;
        let kind = kind.ok_or_else(|| parse_error(line, "missing :type"))?;
        let f = f.ok_or_else(|| parse_error(line, "missing :f"))?;
        events.push((
            line,
            Event {
                process,
                kind,
                f,
                key,
                value,
                time: None,
            },
        ));
    }
    from_events(events)
}
