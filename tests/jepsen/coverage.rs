//! Which rare paths the seeds reached: the node's coverage markers
//! (`lattice::probe`, FoundationDB's `CODE_PROBE`), counted per seed,
//! printed over the run, and required. A path that no default seed reaches
//! is one no seed tests, and the catalogue of planted bugs cannot say so.

use lattice::probe::{Probe, IS_COUNTING};

use crate::run::SeedRun;

/// Markers the default seeds do not reach yet, each with why: the workload
/// or the faults do not produce the situation. Listed so that the rest are
/// required; the check fails if one of these starts being reached, so the
/// list is never stale.
pub(crate) const NOT_YET_REACHED: [(Probe, &str); 3] = [
    (
        Probe::SnapshotInstalledKeepingLog,
        "a leader sends a snapshot only to a follower behind its compaction point, and no \
         fault leaves a follower holding the snapshot's last entry while its leader believes \
         it behind (acknowledgements lost one way while appends go through, for as long as \
         the leader takes to compact past it)",
    ),
    (
        Probe::ConfChangeRefusedDuringTransfer,
        "no operator asks for a membership change while a transfer is under way: \
         MoveLeaderRepeatedly and MembershipChurn never share a window",
    ),
    (
        Probe::ConfChangeRefusedInvalid,
        "the operator of MembershipChurn only asks for valid changes; an operator's mistake \
         (adding a member twice) is not in any workload",
    ),
];

/// Prints every marker's hits and the seeds that reached it; returns the
/// markers that break the requirement (never reached and required, or
/// reached and listed as not yet), as messages.
pub(crate) fn report(runs: &[SeedRun]) -> Vec<String> {
    println!(
        "coverage markers (lattice::probe), over {} seeds:",
        runs.len()
    );
    println!("| marker | hits | seeds reaching it |");
    println!("|---|---|---|");
    let mut problems = Vec::new();
    if !IS_COUNTING {
        problems.push("the probes are not counted in this build (feature `probes` off)".into());
    }
    for probe in Probe::ALL {
        let hits: u64 = runs.iter().map(|r| r.probes[probe as usize]).sum();
        let seeds = runs.iter().filter(|r| r.probes[probe as usize] > 0).count();
        println!("| {probe:?} | {hits} | {seeds} |");
        let not_yet = NOT_YET_REACHED.iter().find(|(p, _)| *p == probe);
        match (hits, not_yet) {
            (0, None) => problems.push(format!(
                "{probe:?} was never reached ({})",
                probe.why()
            )),
            (1.., Some(_)) => problems.push(format!(
                "{probe:?} is listed as not yet reached, but {seeds} seeds reached it: take it off NOT_YET_REACHED"
            )),
            _ => {}
        }
    }
    problems
}
