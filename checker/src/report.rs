//! Verdicts explained for people: a text summary for terminals and a
//! self-contained HTML page with one lane per process, operations as bars
//! coloured by outcome, and the failing window and its reasons highlighted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::model::Model;
use crate::operation::{Completion, Operation};
use crate::search::{Outcome, PartitionReport, Verdict};

/// Operations drawn at most in one timeline; a larger partition is shown
/// around its failure.
const TIMELINE_OPERATIONS_MAX: usize = 240;

fn outcome_text(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Linearizable => "LINEARIZABLE",
        Outcome::NotLinearizable => "NOT LINEARIZABLE",
        Outcome::Unknown => "UNKNOWN (time budget exhausted)",
    }
}

fn lines_of<I, O>(op: &Operation<I, O>) -> String {
    match op.ret_line {
        Some(ret) => format!("lines {}-{}", op.call_line, ret),
        None => format!("line {}-", op.call_line),
    }
}

/// The verdict in a few lines, with the failing window spelled out.
pub fn text<M: Model>(
    model: &M,
    operations: &[Operation<M::Input, M::Output>],
    verdict: &Verdict,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "verdict: {}", outcome_text(verdict.outcome));
    let cancelled = verdict.partitions.iter().filter(|p| p.is_cancelled).count();
    let unknown = verdict
        .partitions
        .iter()
        .filter(|p| p.outcome == Outcome::Unknown)
        .count()
        - cancelled;
    let out_of_memory = verdict
        .partitions
        .iter()
        .filter(|p| p.is_out_of_memory)
        .count();
    if unknown > out_of_memory {
        let _ = writeln!(
            out,
            "  {} partition(s) ran out of time",
            unknown - out_of_memory
        );
    }
    if out_of_memory > 0 {
        let _ = writeln!(
            out,
            "  {out_of_memory} partition(s) ran out of memory (the search space is too large)"
        );
    }
    if cancelled > 0 {
        let _ = writeln!(
            out,
            "  {cancelled} partition(s) not checked to the end: the verdict was already settled"
        );
    }
    if let Some(partition) = verdict.failure() {
        let failure = partition
            .failure
            .as_ref()
            .expect("a failed partition explains itself");
        let _ = writeln!(
            out,
            "\n{} cannot be linearized ({} operations, {} searched).",
            partition.name,
            partition.operations.len(),
            partition.searched
        );
        if let Some(proof) = &failure.proof {
            let _ = writeln!(out, "Proven without a search: {proof}.");
            for (index, what) in &failure.reasons {
                let op = &operations[*index];
                let _ = writeln!(
                    out,
                    "  #{index:<6} process {:<4} {:<14} {what}",
                    op.process,
                    lines_of(op)
                );
            }
            out.push_str(&unknown_outcomes(model, operations, verdict));
            return out;
        }
        if let Some(line) = failure.from_any_state_at {
            let _ = writeln!(
                out,
                "Found in a window of the history from line {line}: starting there from any value at all (what came before ignored, operations in flight at its edges taken as unknown outcomes), no order explains it."
            );
        }
        let _ = writeln!(
            out,
            "The longest linearizable prefix{} has {} operations; after it the value is {}.",
            if failure.from_any_state_at.is_some() {
                " of the window"
            } else {
                ""
            },
            failure.longest_prefix.len(),
            failure.state
        );
        let deadline = &operations[failure.deadline_op];
        let line = deadline.ret_line.unwrap_or(deadline.call_line);
        if failure.window.len() == 1 {
            let _ = writeln!(
                out,
                "Then op #{} must come next (nothing else was pending when it returned at line {line}), and it cannot:",
                failure.deadline_op
            );
        } else {
            let _ = writeln!(
                out,
                "Then one of these {} operations must come next (each was invoked before op #{} returned at line {line}), and none can:",
                failure.window.len(),
                failure.deadline_op
            );
        }
        for (index, reason) in &failure.reasons {
            let op = &operations[*index];
            let _ = writeln!(
                out,
                "  #{index:<6} process {:<4} {:<14} {reason}",
                op.process,
                lines_of(op)
            );
        }
        if failure.open_candidates > 0 {
            let _ = writeln!(
                out,
                "  (and {} operation(s) with unknown outcomes, which may take effect at any time: placing any of them here does not help)",
                failure.open_candidates
            );
        }
        let tail: Vec<String> = failure
            .longest_prefix
            .iter()
            .rev()
            .take(5)
            .rev()
            .map(|&i| {
                format!(
                    "#{i} {}",
                    model.describe_operation(&operations[i].input, operations[i].output.as_ref())
                )
            })
            .collect();
        if !tail.is_empty() {
            let _ = writeln!(out, "The prefix ends with: {}", tail.join("; "));
        }
    }
    out.push_str(&unknown_outcomes(model, operations, verdict));
    out
}

/// Examples listed per kind in the account of unknown outcomes.
const UNKNOWN_EXAMPLES_MAX: usize = 6;

/// Where each operation stands in the order the search found (linearizable
/// partitions) or in the longest prefix (the failing one): its position and
/// the operation before it.
fn placements(verdict: &Verdict) -> BTreeMap<usize, (usize, Option<usize>)> {
    let mut placed = BTreeMap::new();
    for partition in &verdict.partitions {
        let order = match &partition.failure {
            Some(failure) => &failure.longest_prefix,
            None => &partition.order,
        };
        for (position, &op) in order.iter().enumerate() {
            let before = position.checked_sub(1).map(|p| order[p]);
            placed.insert(op, (position + 1, before));
        }
    }
    placed
}

/// Which operations had unknown outcomes, and what the search made of them:
/// proven by a read, placed (and where), or left out (never took effect).
pub fn unknown_outcomes<M: Model>(
    model: &M,
    operations: &[Operation<M::Input, M::Output>],
    verdict: &Verdict,
) -> String {
    let unknown: Vec<usize> = (0..operations.len())
        .filter(|&i| {
            let op = &operations[i];
            op.completion == Completion::Info && !model.is_inert(&op.input, op.output.as_ref())
        })
        .collect();
    if unknown.is_empty() {
        return String::new();
    }
    let never_completed = unknown
        .iter()
        .filter(|&&i| operations[i].ret_line.is_none())
        .count();
    let placed = placements(verdict);
    let proven: BTreeMap<usize, usize> = verdict
        .partitions
        .iter()
        .flat_map(|p| p.proven.iter().copied())
        .collect();
    let is_decided = |i: usize| {
        verdict.partitions.iter().any(|p| {
            p.operations.binary_search(&i).is_ok()
                && (p.failure.is_some() || p.outcome == Outcome::Linearizable)
        })
    };
    let decided: Vec<usize> = unknown.iter().copied().filter(|&i| is_decided(i)).collect();
    let (took_effect, left_out): (Vec<usize>, Vec<usize>) =
        decided.iter().partition(|i| placed.contains_key(i));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nUnknown outcomes: {} operations that could change a value ({} ended info, {} never completed; reads with unknown outcomes change nothing and are left out).",
        unknown.len(),
        unknown.len() - never_completed,
        never_completed
    );
    let describe = |i: usize| {
        let op = &operations[i];
        format!(
            "#{i} ({}, process {}) {}",
            lines_of(op),
            op.process,
            model.describe_operation(&op.input, op.output.as_ref())
        )
    };
    let (placed_words, left_words) = if verdict.failure().is_some() {
        ("placed in the longest prefix", "not placed in it")
    } else {
        (
            "took effect in the order found",
            "did not take effect in it",
        )
    };
    let _ = writeln!(
        out,
        "  {} {placed_words}, {} {left_words}{}; a read proves {} of them happened.",
        took_effect.len(),
        left_out.len(),
        if decided.len() < unknown.len() {
            format!(
                " ({} in partitions not decided)",
                unknown.len() - decided.len()
            )
        } else {
            String::new()
        },
        proven.len()
    );
    for &i in took_effect.iter().take(UNKNOWN_EXAMPLES_MAX) {
        let (position, before) = placed[&i];
        let after = match before {
            Some(b) => format!("right after #{b} ({})", lines_of(&operations[b])),
            None => "first".to_string(),
        };
        let why = proven
            .get(&i)
            .map(|&r| format!("; proven by the read #{r} ({})", lines_of(&operations[r])))
            .unwrap_or_default();
        let _ = writeln!(out, "    placed {position}, {after}: {}{why}", describe(i));
    }
    if took_effect.len() > UNKNOWN_EXAMPLES_MAX {
        let _ = writeln!(
            out,
            "    ... and {} more placed",
            took_effect.len() - UNKNOWN_EXAMPLES_MAX
        );
    }
    for &i in left_out.iter().take(UNKNOWN_EXAMPLES_MAX) {
        let _ = writeln!(out, "    not placed: {}", describe(i));
    }
    if left_out.len() > UNKNOWN_EXAMPLES_MAX {
        let _ = writeln!(
            out,
            "    ... and {} more not placed",
            left_out.len() - UNKNOWN_EXAMPLES_MAX
        );
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Prefix operations shown before a failure, for context.
const CONTEXT_OPERATIONS: usize = 12;
/// Operations drawn around a failure at most.
const FOCUS_OPERATIONS_MAX: usize = 60;

/// Which operations of a partition to draw. Around a failure: the window, the
/// return that closes it, the last few linearized operations, and whatever
/// overlaps them in time. Otherwise: the start of the partition.
fn visible<I, O>(operations: &[Operation<I, O>], partition: &PartitionReport) -> Vec<usize> {
    let mut ops = partition.operations.clone();
    ops.sort_by_key(|&i| operations[i].call);
    let Some(failure) = partition.failure.as_ref() else {
        ops.truncate(TIMELINE_OPERATIONS_MAX);
        return ops;
    };
    let mut anchor: Vec<usize> = failure.window.clone();
    anchor.push(failure.deadline_op);
    anchor.extend(failure.longest_prefix.iter().rev().take(CONTEXT_OPERATIONS));
    let start = anchor
        .iter()
        .map(|&i| operations[i].call)
        .min()
        .unwrap_or(0);
    let end = anchor
        .iter()
        .map(|&i| operations[i].ret)
        .filter(|&t| t != u64::MAX)
        .max()
        .unwrap_or(u64::MAX);
    let mut shown: Vec<usize> = ops
        .into_iter()
        .filter(|&i| {
            anchor.contains(&i) || (operations[i].call <= end && operations[i].ret >= start)
        })
        .collect();
    if shown.len() > FOCUS_OPERATIONS_MAX {
        // Keep the anchors, then the latest others.
        let mut others: Vec<usize> = shown
            .iter()
            .copied()
            .filter(|i| !anchor.contains(i))
            .collect();
        others.sort_by_key(|&i| std::cmp::Reverse(operations[i].call));
        others.truncate(FOCUS_OPERATIONS_MAX.saturating_sub(anchor.len()));
        shown.retain(|i| anchor.contains(i) || others.contains(i));
    }
    shown
}

/// A self-contained HTML report.
pub fn html<M: Model>(
    model: &M,
    operations: &[Operation<M::Input, M::Output>],
    verdict: &Verdict,
    title: &str,
) -> String {
    let partition = verdict
        .failure()
        .or_else(|| {
            verdict
                .partitions
                .iter()
                .find(|p| p.outcome == Outcome::Unknown)
        })
        .or_else(|| verdict.partitions.iter().max_by_key(|p| p.operations.len()));
    let mut body = String::new();
    let verdict_class = match verdict.outcome {
        Outcome::Linearizable => "good",
        Outcome::NotLinearizable => "bad",
        Outcome::Unknown => "unknown",
    };
    let _ = write!(
        body,
        "<h1>{}</h1><p class=\"verdict {verdict_class}\">{}</p>",
        escape(title),
        outcome_text(verdict.outcome)
    );
    let _ = write!(
        body,
        "<p class=\"stats\">{} operations in {} partition(s); {} states explored in {:.3} s.</p>",
        operations.len(),
        verdict.partitions.len(),
        verdict.states_explored,
        verdict.elapsed.as_secs_f64()
    );

    let mut window = BTreeSet::new();
    let mut prefix_position = BTreeMap::new();
    let mut deadline_op = None;
    if let Some(failure) = verdict.failure().and_then(|p| p.failure.as_ref()) {
        let partition = verdict.failure().expect("failure present");
        window.extend(failure.window.iter().copied());
        deadline_op = Some(failure.deadline_op);
        for (position, &op) in failure.longest_prefix.iter().enumerate() {
            prefix_position.insert(op, position + 1);
        }
        if let Some(proof) = &failure.proof {
            let _ = write!(
                body,
                "<div class=\"explain\"><h2>Why: {} cannot be linearized</h2><p>Proven without a search: {}.</p><ul>",
                escape(&partition.name),
                escape(proof)
            );
            for (op, what) in &failure.reasons {
                let _ = write!(
                    body,
                    "<li><b>#{op}</b> (process {}, {}): {}</li>",
                    operations[*op].process,
                    lines_of(&operations[*op]),
                    escape(what)
                );
            }
            body.push_str("</ul></div>");
        } else {
            let _ = write!(
            body,
            "<div class=\"explain\"><h2>Why: {} cannot be linearized</h2>\
             <p>The search linearized at most <b>{}</b> of its {} operations (numbered 1, 2, 3… on the bars below). \
             After them the value is <b>{}</b>. Operation <b>#{}</b> returned at line {}, so \
             {} invoked before that (outlined in orange) had to come next. It cannot:</p><ul>",
            escape(&partition.name),
            failure.longest_prefix.len(),
            partition.searched,
            escape(&failure.state),
            failure.deadline_op,
            operations[failure.deadline_op].ret_line.unwrap_or(0),
            if failure.window.len() == 1 {
                "the one operation".to_string()
            } else {
                format!("one of the <b>{}</b> operations", failure.window.len())
            }
        );
            for (op, reason) in &failure.reasons {
                let _ = write!(
                    body,
                    "<li><b>#{op}</b> (process {}, {}): {}</li>",
                    operations[*op].process,
                    lines_of(&operations[*op]),
                    escape(reason)
                );
            }
            if failure.open_candidates > 0 {
                let _ = write!(
                body,
                "<li>and {} operation(s) with unknown outcomes, which may take effect at any time: placing any of them here does not help</li>",
                failure.open_candidates
            );
            }
            body.push_str("</ul>");
            if let Some(line) = failure.from_any_state_at {
                let _ = write!(
                body,
                "<p>Found in a window of the history from line {line}: starting there from <b>any value at all</b> \
                 (what came before ignored, operations in flight at its edges taken as unknown outcomes), \
                 no order explains it. The order numbers count from the window's start.</p>"
            );
            }
            // How the value got there: the last linearized operations, replayed
            // (from any value, for a window).
            let mut state = match failure.from_any_state_at {
                Some(_) => model.any_state().unwrap_or_else(|| model.init()),
                None => model.init(),
            };
            let mut trail = Vec::new();
            for &op in &failure.longest_prefix {
                let o = &operations[op];
                if let Some(next) = model.step(&state, &o.input, o.output.as_ref()) {
                    state = next;
                }
                trail.push((op, model.describe_state(&state)));
            }
            let skip = trail.len().saturating_sub(CONTEXT_OPERATIONS);
            let _ = write!(
            body,
            "<h3>How the value got there (last {} of {} linearized operations)</h3>\
             <table><tr><th>order</th><th>op</th><th>process</th><th>lines</th><th>operation</th><th>value after</th></tr>",
            trail.len() - skip,
            trail.len()
        );
            for (position, (op, after)) in trail.iter().enumerate().skip(skip) {
                let o = &operations[*op];
                let _ = write!(
                body,
                "<tr><td>{}</td><td>#{op}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                position + 1,
                o.process,
                lines_of(o),
                escape(&model.describe_operation(&o.input, o.output.as_ref())),
                escape(after)
            );
            }
            body.push_str("</table></div>");
        }
    }

    let unknown = unknown_outcomes(model, operations, verdict);
    if !unknown.is_empty() {
        let _ = write!(
            body,
            "<div class=\"unknown\"><h2>Operations with unknown outcomes</h2><pre>{}</pre></div>",
            escape(unknown.trim())
        );
    }
    if let Some(partition) = partition {
        if partition.failure.is_none() {
            for (position, &op) in partition.order.iter().enumerate() {
                prefix_position.insert(op, position + 1);
            }
        }
        let shown = visible(operations, partition);
        let _ = write!(
            body,
            "<h2>Timeline of {} ({} of {} operations shown{})</h2>",
            escape(&partition.name),
            shown.len(),
            partition.operations.len(),
            if partition.failure.is_some() {
                ", around the failure"
            } else {
                ""
            }
        );
        body.push_str(&timeline(
            model,
            operations,
            &shown,
            &window,
            deadline_op,
            &prefix_position,
        ));
    }
    body.push_str(
        "<p class=\"legend\"><span class=\"sw ok\"></span> ok <span class=\"sw fail\"></span> failed (no effect) \
         <span class=\"sw info\"></span> unknown outcome (may take effect any time after its call) \
         <span class=\"sw window\"></span> the window that cannot be ordered \
         <span class=\"sw deadline\"></span> the return that closes it. Hover a bar for details.</p>",
    );
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{}</title><style>{}</style></head><body>{}</body></html>\n",
        escape(title),
        STYLE,
        body
    )
}

fn timeline<M: Model>(
    model: &M,
    operations: &[Operation<M::Input, M::Output>],
    shown: &[usize],
    window: &BTreeSet<usize>,
    deadline_op: Option<usize>,
    prefix_position: &BTreeMap<usize, usize>,
) -> String {
    let processes: BTreeSet<u64> = shown.iter().map(|&i| operations[i].process).collect();
    let lane: BTreeMap<u64, usize> = processes.iter().enumerate().map(|(i, &p)| (p, i)).collect();
    // Time axis: event positions, compressed to the ones in view.
    let mut times: Vec<u64> = shown
        .iter()
        .flat_map(|&i| [operations[i].call, operations[i].ret])
        .filter(|&t| t != u64::MAX)
        .collect();
    times.sort_unstable();
    times.dedup();
    let column = |t: u64| -> usize {
        if t == u64::MAX {
            times.len()
        } else {
            times.partition_point(|&x| x < t)
        }
    };
    // Fit about 1200 px when possible; never narrower than 18 px a column.
    let step = (1200 / (times.len() + 2).max(1)).clamp(18, 44);
    let (lane_height, label_width) = (34usize, 90usize);
    let width = label_width + (times.len() + 2) * step;
    let height = processes.len() * lane_height + 30;
    let mut svg = format!("<div class=\"scroll\"><svg width=\"{width}\" height=\"{height}\" xmlns=\"http://www.w3.org/2000/svg\">");
    for (&process, &row) in &lane {
        let y = 20 + row * lane_height;
        let _ = write!(
            svg,
            "<text x=\"4\" y=\"{}\" class=\"lane\">process {process}</text><line x1=\"{label_width}\" x2=\"{width}\" y1=\"{}\" y2=\"{}\" class=\"rule\"/>",
            y + 18,
            y + lane_height - 2,
            y + lane_height - 2
        );
    }
    for &i in shown {
        let op = &operations[i];
        let y = 20 + lane[&op.process] * lane_height + 4;
        let x0 = label_width + column(op.call) * step + 2;
        let x1 = label_width + column(op.ret) * step + step - 2;
        let class = match op.completion {
            Completion::Ok => "ok",
            Completion::Fail => "fail",
            Completion::Info => "info",
        };
        let mut classes = class.to_string();
        if window.contains(&i) {
            classes.push_str(" window");
        }
        if deadline_op == Some(i) {
            classes.push_str(" deadline");
        }
        let description = model.describe_operation(&op.input, op.output.as_ref());
        let order = match (prefix_position.get(&i), op.completion) {
            (Some(p), Completion::Info) => format!(" (unknown outcome: took effect, placed {p})"),
            (Some(p), _) => format!(" (linearized {p})"),
            (None, Completion::Info) => " (unknown outcome: not placed, so no effect)".to_string(),
            (None, _) => String::new(),
        };
        let _ = write!(
            svg,
            "<g><title>#{i} process {} {}: {}{}</title><rect x=\"{x0}\" y=\"{y}\" width=\"{}\" height=\"24\" rx=\"4\" class=\"{classes}\"/>\
             <text x=\"{}\" y=\"{}\" class=\"op\">{}{}</text></g>",
            op.process,
            lines_of(op),
            escape(&description),
            order,
            x1.saturating_sub(x0).max(6),
            x0 + 4,
            y + 16,
            prefix_position.get(&i).map(|p| format!("{p}: ")).unwrap_or_default(),
            escape(&shorten(&description, (x1.saturating_sub(x0)) / 7)),
        );
    }
    svg.push_str("</svg></div>");
    svg
}

fn shorten(text: &str, chars_max: usize) -> String {
    if text.chars().count() <= chars_max {
        return text.to_string();
    }
    let mut short: String = text.chars().take(chars_max.saturating_sub(1)).collect();
    short.push('…');
    short
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:24px;color:#222}\
h1{font-size:20px;margin:0 0 8px}h2{font-size:16px;margin:18px 0 8px}\
.verdict{font-size:22px;font-weight:700;display:inline-block;padding:4px 12px;border-radius:6px;margin:4px 0}\
.verdict.good{background:#d8f3dc;color:#1b4332}.verdict.bad{background:#ffd6d6;color:#8b0000}.verdict.unknown{background:#eee;color:#444}\
.stats{color:#555}.unknown{background:#f2f2f7;border-radius:8px;padding:4px 16px;margin:12px 0}.explain{background:#fff8e6;border:2px solid #f0a020;border-radius:8px;padding:8px 16px}\
.explain li{margin:4px 0;font-family:ui-monospace,monospace;font-size:13px}\
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #e0c890;padding:2px 8px;text-align:left}\
td:nth-child(5),td:nth-child(6){font-family:ui-monospace,monospace}h3{font-size:14px;margin:12px 0 4px}\
.scroll{overflow-x:auto;border:1px solid #ddd;border-radius:6px}\
rect.ok{fill:#95d5b2;stroke:#2d6a4f}rect.fail{fill:#f4a6a6;stroke:#a4161a}\
rect.info{fill:#d9d9d9;stroke:#777;stroke-dasharray:4 2}\
rect.window{stroke:#f08c00;stroke-width:4}rect.deadline{stroke:#d00000;stroke-width:4}\
text.op{font:11px ui-monospace,monospace;pointer-events:none}text.lane{font:12px sans-serif;fill:#555}\
line.rule{stroke:#eee}.legend{color:#555;font-size:13px}\
.sw{display:inline-block;width:14px;height:10px;border-radius:2px;margin:0 2px 0 10px;vertical-align:middle}\
.sw.ok{background:#95d5b2}.sw.fail{background:#f4a6a6}.sw.info{background:#d9d9d9}\
.sw.window{border:3px solid #f08c00}.sw.deadline{border:3px solid #d00000}";
