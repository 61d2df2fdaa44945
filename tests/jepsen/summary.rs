//! What a run prints: a failing seed's report (its failures, its fault
//! schedule with overlays, the replay command), and the availability table
//! per fault kind.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::cluster::is_clock_skewed;
use crate::faults::{FaultKind, ALL_FAULTS};
use crate::run::{artifacts_dir, SeedRun, WindowStats, AFTER_HEAL};

pub(crate) fn report_failure(run: &SeedRun) {
    eprintln!("\n=== seed {} FAILED ===", run.seed);
    for failure in &run.failures {
        eprintln!("{failure}");
    }
    if crate::swarm::is_on() {
        eprintln!("swarm: {}", run.swarm.describe());
    }
    eprintln!("fault schedule:");
    for fault in &run.schedule {
        let mut overlays = String::new();
        if fault.slow_disk {
            overlays += " +SlowDisk";
        }
        if fault.chaos {
            overlays += " +MessageChaos";
        }
        if let Some((after, down)) = fault.crash_leader {
            overlays += &format!(
                " +CrashLeader(at +{:.2}s, down {:.2}s)",
                after.as_secs_f64(),
                down.as_secs_f64()
            );
        }
        if let Some((after, error, power_loss)) = fault.disk_error {
            overlays += &format!(" +{error:?}(at +{:.2}s)", after.as_secs_f64());
            if let Some(later) = power_loss {
                overlays += &format!(" +PowerLoss(at +{:.2}s)", (after + later).as_secs_f64());
            }
        }
        eprintln!(
            "  at {:>6.2}s for {:.2}s: {:?}{overlays}",
            fault.at.as_secs_f64(),
            fault.duration.as_secs_f64(),
            fault.kind
        );
    }
    eprintln!(
        "clock skew: {}",
        if is_clock_skewed(run.seed) {
            "on"
        } else {
            "off"
        }
    );
    eprintln!(
        "replay: LATTICE_SEED={} cargo test --test jepsen -- jepsen_seeds",
        run.seed
    );
    eprintln!("history and report: {}", artifacts_dir(run.seed).display());
}

/// Per fault kind, over every window of every run (from its start to 2 s
/// after its heal): leader changes and term increases per window, and the
/// longest time no operation completed (median and worst window).
pub(crate) fn print_availability(runs: &[&SeedRun], is_on: bool) {
    let mut by_kind: BTreeMap<FaultKind, Vec<WindowStats>> = BTreeMap::new();
    for window in runs.iter().flat_map(|r| &r.windows) {
        by_kind.entry(window.kind).or_default().push(*window);
    }
    println!(
        "availability by fault kind, PreVote and CheckQuorum {} ({} seeds; from the fault to {}s after its heal):",
        if is_on { "on" } else { "OFF" },
        runs.len(),
        AFTER_HEAL.as_secs()
    );
    println!(
        "| fault | windows | leader changes / window | term increases / window | longest unavailability: median | max |"
    );
    println!("|---|---|---|---|---|---|");
    for kind in ALL_FAULTS {
        let Some(windows) = by_kind.get(&kind) else {
            continue;
        };
        let n = windows.len() as f64;
        let changes: u64 = windows.iter().map(|w| w.leader_changes).sum();
        let terms: u64 = windows.iter().map(|w| w.term_increases).sum();
        let mut gaps: Vec<Duration> = windows.iter().map(|w| w.longest_unavailable).collect();
        gaps.sort();
        println!(
            "| {kind:?} | {} | {:.2} | {:.2} | {:.2}s | {:.2}s |",
            windows.len(),
            changes as f64 / n,
            terms as f64 / n,
            gaps[gaps.len() / 2].as_secs_f64(),
            gaps[gaps.len() - 1].as_secs_f64()
        );
    }
}
