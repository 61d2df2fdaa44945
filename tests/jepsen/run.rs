//! One seed, start to end: the machines, the clients, the operator and the
//! nemesis in one simulation (`run_seed`), then every check on what it
//! recorded: linearizability, liveness after the heal, the white box, each
//! fault window's availability and liveness assertions, removed nodes
//! stopping. A failing seed leaves its history and report on disk.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use checker::search::{check, CheckOptions, Outcome};
use checker::{EventType, KvModel, Recorder};
use lattice::probe::Probe;
use lattice::{Node, NodeId};
use tokio::sync::watch;

use crate::cluster::{
    client_host_name, decommission, host, is_liveness_on, node_config, NodeControl, NodeHarness,
    QuickChange, Variant, OPERATOR,
};
use crate::faults::{
    is_partial_partition, schedule, FaultKind, ScheduledFault, DISK_ERROR_RESTART_AFTER,
    PARTIAL_PARTITION_SERVES_WITHIN,
};
use crate::nemesis::{Controller, Nemesis};
use crate::operator::operator;
use crate::sim::chaos::SimChaos;
use crate::sim::disk::{SimDisk, SimStorage};
use crate::sim::network::TurmoilTransport;
use crate::sim::{now, panics};
use crate::swarm::{swarm, Swarm};
use crate::white_box::{WhiteBox, WhiteBoxObserver};
use crate::workload::{client_host, routing, Routing};
use crate::{CLIENTS, CLIENT_HOSTS, FOUNDERS, HEAL_AT, LIVENESS_BOUND, POOL, WORKLOAD_END};

/// What one seed produced.
pub(crate) struct SeedRun {
    pub(crate) seed: u64,
    pub(crate) schedule: Vec<ScheduledFault>,
    /// The features this seed enabled (`crate::swarm`).
    pub(crate) swarm: Swarm,
    pub(crate) history_jsonl: String,
    pub(crate) counts: [usize; 3], // ok, fail, info
    pub(crate) elections: usize,
    /// Why this seed failed, if it did.
    pub(crate) failures: Vec<String>,
    pub(crate) is_linearizable: bool,
    /// A white-box invariant or the read oracle failed.
    pub(crate) is_white_box_violated: bool,
    /// A node's invariant `assert!` fired (the node panicked).
    pub(crate) is_asserted: bool,
    /// A node refused to start from its own disk (its storage found data
    /// missing or damaged).
    pub(crate) is_restart_refused: bool,
    /// Simulated time at which the first safety violation happened (the
    /// white-box check's, or the failing operation's return).
    pub(crate) detected_at: Option<Duration>,
    pub(crate) stats: RunStats,
    /// Per fault kind: snapshots installed and compactions during its
    /// windows (and the 2 s after each, while nodes catch up).
    pub(crate) snapshots_by_kind: BTreeMap<FaultKind, [u64; 2]>,
    /// Per fault window: what it did to availability.
    pub(crate) windows: Vec<WindowStats>,
    /// A liveness assertion of a fault window failed (PreVote, CheckQuorum).
    pub(crate) is_liveness_violated: bool,
    /// Windows the liveness assertions checked: isolated followers (with a
    /// leader at the start), partial partitions.
    pub(crate) liveness_checked: [u64; 2],
    /// Hits of each coverage marker (`lattice::probe`), in `Probe::ALL`'s
    /// order.
    pub(crate) probes: [u64; Probe::ALL.len()],
}

/// What one fault window did to leadership and availability, from its
/// start to `AFTER_HEAL` after its heal (or the next fault's start).
#[derive(Clone, Copy, Debug)]
pub(crate) struct WindowStats {
    pub(crate) kind: FaultKind,
    pub(crate) leader_changes: u64,
    pub(crate) term_increases: u64,
    /// The longest time with no operation completing successfully.
    pub(crate) longest_unavailable: Duration,
}

/// How long after a heal a window's statistics still count it.
pub(crate) const AFTER_HEAL: Duration = Duration::from_secs(2);

/// Counts of what the nemesis did in a run.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RunStats {
    pub(crate) reads_checked: u64,
    /// Reads served by a leader whose confirmation the white box checked.
    pub(crate) reads_confirmation_checked: u64,
    pub(crate) messages_delayed: u64,
    pub(crate) messages_duplicated: u64,
    pub(crate) snapshots_taken: u64,
    pub(crate) snapshots_installed: u64,
    pub(crate) compactions: u64,
    /// Committed membership changes, as `WhiteBox::config_changes`.
    pub(crate) config_changes: [u64; 5],
    /// Storage errors the disks returned (the disk-error overlay), and
    /// nodes that stopped on one and were restarted.
    pub(crate) disk_errors: u64,
    pub(crate) disk_error_restarts: u64,
}

impl SeedRun {
    /// A safety check or a liveness assertion of a fault window failed
    /// (not the general liveness check after the heal).
    pub(crate) fn is_caught(&self) -> bool {
        !self.is_linearizable
            || self.is_white_box_violated
            || self.is_asserted
            || self.is_restart_refused
            || self.is_liveness_violated
    }

    pub(crate) fn caught_by(&self) -> String {
        let checks: Vec<&str> = [
            (!self.is_linearizable, "history"),
            (self.is_white_box_violated, "white-box"),
            (self.is_asserted, "node assertion"),
            (self.is_restart_refused, "restart refused"),
            (self.is_liveness_violated, "liveness assertion"),
        ]
        .into_iter()
        .filter_map(|(is, name)| is.then_some(name))
        .collect();
        if checks.is_empty() {
            "-".into()
        } else {
            checks.join(" and ")
        }
    }
}

/// Log lines stamped with simulated time (`LATTICE_LOG=info` turns them on).
struct SimTimer;

impl tracing_subscriber::fmt::time::FormatTime for SimTimer {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        write!(w, "{:>9.3}s", now().as_secs_f64())
    }
}

/// Runs one seed to the end (or to the first white-box violation) and checks it.
pub(crate) fn run_seed(seed: u64, variant: Variant) -> SeedRun {
    #[cfg(feature = "planted-bugs")]
    lattice::planted::plant(variant.bug);
    #[cfg(not(feature = "planted-bugs"))]
    assert!(
        variant.bug.is_none(),
        "planting a bug needs --features planted-bugs"
    );
    let run = run_seed_planted(seed, variant);
    #[cfg(feature = "planted-bugs")]
    lattice::planted::plant(None);
    run
}

/// What the test holds of each machine: its disk and the handles its node's
/// process shares with the nemesis.
struct Machines {
    disks: BTreeMap<u64, Arc<Mutex<SimDisk>>>,
    pauses: BTreeMap<u64, watch::Sender<bool>>,
    controls: BTreeMap<u64, watch::Sender<NodeControl>>,
    stopped: BTreeMap<u64, Arc<AtomicBool>>,
    removed: BTreeMap<u64, Arc<AtomicBool>>,
    /// Nodes stopped by a storage error and started again by their
    /// supervisor.
    disk_error_restarts: Arc<AtomicUsize>,
}

/// Why a simulation stopped early, and what it found on the way.
struct Simulated<'a> {
    /// The simulation, kept until the seed's checks are done (as before the
    /// split: tearing its hosts down first could record a panic against
    /// this seed); `None` if a panic left it half torn down (leaked).
    sim: Option<turmoil::Sim<'a>>,
    failures: Vec<String>,
    panic_at: Option<Duration>,
    is_restart_refused: bool,
}

/// The checks' findings, gathered as they run.
struct Findings {
    failures: Vec<String>,
    detected_at: Option<Duration>,
    is_liveness_violated: bool,
}

impl Findings {
    /// A violation seen at `at` (the earliest one is kept).
    fn detected(&mut self, at: Duration) {
        self.detected_at = Some(self.detected_at.map_or(at, |d| d.min(at)));
    }
}

fn run_seed_planted(seed: u64, variant: Variant) -> SeedRun {
    if std::env::var_os("LATTICE_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("LATTICE_LOG"))
            .with_timer(SimTimer)
            .with_ansi(false)
            .try_init();
    }
    panics::capture_panics();
    panics::take_panics();
    lattice::probe::take();
    let swarm = swarm(seed);
    let faults = schedule(seed, &swarm);
    let mut sim = turmoil::Builder::new()
        .simulation_duration(WORKLOAD_END + Duration::from_secs(30))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(5))
        .repair_rate(0.05)
        .rng_seed(seed)
        .build();
    let founders: Vec<NodeId> = (1..=FOUNDERS).map(NodeId).collect();
    let observer = WhiteBoxObserver::new(&founders);
    let chaos = SimChaos::new(seed ^ 0xC4A0_5000);
    let machines = start_machines(&mut sim, seed, variant, &observer, &chaos);
    let clock: checker::recorder::Clock = Arc::new(|| now().as_nanos() as u64);
    let recorder = Recorder::with_clock(clock);
    for host_index in 0..CLIENT_HOSTS {
        sim.client(
            client_host_name(host_index),
            client_host(
                seed,
                host_index,
                swarm.clone(),
                recorder.clone(),
                observer.clone(),
            ),
        );
    }
    sim.client(OPERATOR, operator(seed, faults.clone()));
    let mut controller = Controller::new(seed, &faults, machines.removed.clone());
    let nemesis = Nemesis {
        observer: &observer,
        disks: &machines.disks,
        chaos: &chaos,
        pauses: &machines.pauses,
        controls: &machines.controls,
        stopped: &machines.stopped,
    };
    let mut simulated = simulate(sim, &mut controller, &nemesis, &observer);
    let simulated_world = simulated.sim.take();
    let probes = lattice::probe::take();
    let panics = panics::take_panics();
    let is_asserted = !panics.is_empty();
    let is_cut_short = observer.has_violations() || is_asserted;
    let mut findings = Findings {
        failures: simulated
            .failures
            .into_iter()
            .chain(panics.iter().map(|p| format!("a node panicked: {p}")))
            .collect(),
        detected_at: None,
        is_liveness_violated: false,
    };

    // Linearizability.
    let events: Vec<(usize, checker::Event)> = recorder
        .events()
        .into_iter()
        .enumerate()
        .map(|(i, e)| (i + 1, e))
        .collect();
    let history = checker::history::from_events(events.clone())
        .expect("the recorder writes well-formed histories");
    let verdict = check_linearizable(&events, &history, &mut findings);
    let is_linearizable = verdict.outcome == Outcome::Linearizable;
    if !is_cut_short {
        check_liveness_after_heal(seed, &events, &observer, &mut findings);
    }
    // White-box invariants.
    let white_box: WhiteBox = std::mem::take(&mut *observer.0.lock().expect("white box"));
    let is_white_box_violated = !white_box.violations.is_empty();
    findings
        .failures
        .extend(white_box.violations.iter().cloned());
    if white_box.applies == 0 {
        findings.failures.push("nothing was ever applied".into());
    }
    for at in white_box
        .first_violation_at
        .into_iter()
        .chain(simulated.panic_at)
    {
        findings.detected(at);
    }
    let chaos_state = chaos.0.lock().expect("chaos");
    let stats = RunStats {
        reads_checked: white_box.reads_checked,
        reads_confirmation_checked: white_box.reads_confirmation_checked,
        messages_delayed: chaos_state.delayed,
        messages_duplicated: chaos_state.duplicated,
        snapshots_taken: white_box.snapshots_taken,
        snapshots_installed: white_box.snapshots_installed,
        compactions: white_box.compactions,
        config_changes: white_box.config_changes,
        disk_errors: machines
            .disks
            .values()
            .map(|d| d.lock().expect("disk").errors_returned as u64)
            .sum(),
        disk_error_restarts: machines.disk_error_restarts.load(Ordering::Relaxed) as u64,
    };
    let snapshots_by_kind = snapshots_by_kind(&faults, &white_box);
    let (windows, liveness_checked) = check_fault_windows(
        seed,
        variant,
        &faults,
        &controller,
        &white_box,
        &events,
        &history,
        is_cut_short,
        &mut findings,
    );
    if !is_cut_short {
        check_removed_nodes_stopped(&white_box, &controller, &mut findings);
    }

    let counts = [history.oks, history.fails, history.infos];
    let run = SeedRun {
        seed,
        schedule: faults,
        swarm,
        history_jsonl: recorder.to_jsonl(),
        counts,
        elections: white_box.leaders.len(),
        failures: findings.failures,
        is_linearizable,
        is_white_box_violated,
        is_asserted,
        is_restart_refused: simulated.is_restart_refused,
        detected_at: findings.detected_at,
        stats,
        snapshots_by_kind,
        windows,
        is_liveness_violated: findings.is_liveness_violated,
        liveness_checked,
        probes,
    };
    if !run.failures.is_empty() {
        write_artifacts(&run, &history, &verdict);
    }
    drop(simulated_world);
    run
}

/// The machines `n1`..`n7`: each host runs its node's process, which an
/// operator may stop gracefully and start again, and which its supervisor
/// restarts after a storage error.
fn start_machines(
    sim: &mut turmoil::Sim<'_>,
    seed: u64,
    variant: Variant,
    observer: &WhiteBoxObserver,
    chaos: &SimChaos,
) -> Machines {
    let writeback = variant
        .unsafe_options
        .no_fsync
        .then_some(Duration::from_secs(2));
    let disks: BTreeMap<u64, Arc<Mutex<SimDisk>>> = (1..=POOL)
        .map(|id| (id, SimDisk::new(seed ^ (id << 56) ^ 0xD15C, writeback)))
        .collect();
    let disk_error_restarts = Arc::new(AtomicUsize::new(0));
    let mut pauses = BTreeMap::new();
    let mut controls = BTreeMap::new();
    let mut stopped = BTreeMap::new();
    let mut removed = BTreeMap::new();
    for id in 1..=POOL {
        let disk = disks[&id].clone();
        let (pause_tx, pause_rx) = watch::channel(false);
        pauses.insert(id, pause_tx);
        let (control_tx, control_rx) = watch::channel(NodeControl {
            running: true,
            transfers: 0,
            transfer_to: 0,
            changes: 0,
            change: QuickChange::Remove(0),
        });
        controls.insert(id, control_tx);
        let is_stopped = Arc::new(AtomicBool::new(false));
        stopped.insert(id, is_stopped.clone());
        let is_removed = Arc::new(AtomicBool::new(false));
        removed.insert(id, is_removed.clone());
        let harness = NodeHarness {
            observer: observer.clone(),
            chaos: chaos.clone(),
            pause: pause_rx,
            control: control_rx,
            stopped: is_stopped,
            removed: is_removed,
        };
        let incarnations = Arc::new(AtomicUsize::new(0));
        let disk_error_restarts = disk_error_restarts.clone();
        sim.host(host(id), move || {
            let disk = disk.clone();
            let harness = harness.clone();
            let incarnations = incarnations.clone();
            let disk_error_restarts = disk_error_restarts.clone();
            async move {
                // The host is the machine; the node is its process, which
                // an operator may stop gracefully and start again.
                let mut control = harness.control.clone();
                loop {
                    if control.wait_for(|c| c.running).await.is_err() {
                        return Ok(());
                    }
                    let failed = std::mem::take(&mut disk.lock().expect("disk").failed_since_open);
                    if failed {
                        // The last process stopped on a storage error: its
                        // supervisor (systemd's Restart=on-failure) waits.
                        disk_error_restarts.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(DISK_ERROR_RESTART_AFTER).await;
                    }
                    let incarnation = incarnations.fetch_add(1, Ordering::Relaxed) as u64;
                    let config = node_config(id, seed, incarnation, variant, &harness);
                    let storage = SimStorage::open(disk.clone())?;
                    let node = match Node::start_with(
                        config,
                        Box::new(storage),
                        Arc::new(TurmoilTransport),
                    )
                    .await
                    {
                        Ok(node) => node,
                        // Its snapshot says it was removed (it crashed
                        // before it stopped itself): as it should.
                        Err(e) if e.to_string().contains("was removed from the cluster") => {
                            return decommission(&harness).await;
                        }
                        Err(e) => return Err(e.into()),
                    };
                    let mut status = node.watch_status();
                    let (mut transfers, mut changes) = {
                        let now = control.borrow_and_update();
                        (now.transfers, now.changes)
                    };
                    loop {
                        tokio::select! {
                            changed = control.changed() => {
                                if changed.is_err() {
                                    return Ok(());
                                }
                            }
                            // Removed from the cluster, the node stopped
                            // itself: the controller ends the process.
                            is_removed = status.wait_for(|s| s.is_removed) => {
                                if is_removed.is_err() {
                                    // Its disk returned an error: the node
                                    // stopped (it never retries a failed
                                    // fsync). The process exits (the
                                    // controller ends it, as after a
                                    // graceful stop: see `Controller::kill`)
                                    // and its supervisor starts it again.
                                    let failure = node.status().failure;
                                    let is_disk_error =
                                        disk.lock().expect("disk").failed_since_open;
                                    if let (Some(_), true) = (failure, is_disk_error) {
                                        harness.stopped.store(true, Ordering::Relaxed);
                                        std::future::pending::<()>().await;
                                    }
                                    return Err(format!("node {id} stopped, not removed nor asked to").into());
                                }
                                harness.stopped.store(true, Ordering::Relaxed);
                                return decommission(&harness).await;
                            }
                        }
                        let now = *control.borrow_and_update();
                        if !now.running {
                            break;
                        }
                        if now.transfers != transfers {
                            transfers = now.transfers;
                            // Refused unless this node leads: as an operator
                            // who asked a node that just lost leadership.
                            let _ = node
                                .transfer_leadership(Some(NodeId(now.transfer_to)))
                                .await;
                        }
                        if now.changes != changes {
                            changes = now.changes;
                            // Proposed at once; its answer is not awaited
                            // (the operator reads the member list anyway).
                            let change = node.change_membership(now.change.conf_change());
                            let _ = tokio::time::timeout(Duration::from_millis(1), change).await;
                        }
                    }
                    // The process exits once the controller sees it
                    // drained: it cuts the host off first, so the sockets
                    // the exit closes draw nothing from the network's
                    // random numbers (see `Controller::kill`).
                    node.hand_over_and_drain().await;
                    harness.stopped.store(true, Ordering::Relaxed);
                    std::future::pending::<()>().await;
                }
            }
        });
    }
    Machines {
        disks,
        pauses,
        controls,
        stopped,
        removed,
        disk_error_restarts,
    }
}

/// Steps the simulation, with the nemesis acting as time passes, until the
/// end, a white-box violation, or a node's panic.
fn simulate<'a>(
    mut sim: turmoil::Sim<'a>,
    controller: &mut Controller,
    nemesis: &Nemesis<'_>,
    observer: &WhiteBoxObserver,
) -> Simulated<'a> {
    let mut failures = Vec::new();
    let mut panic_at = None;
    let mut is_restart_refused = false;
    loop {
        controller.apply_due(&mut sim, nemesis);
        // A white-box violation is final: stop here, and check the history
        // recorded so far.
        if observer.has_violations() {
            break;
        }
        if panics::panic_count() > 0 {
            panic_at = Some(sim.elapsed());
            break;
        }
        // A node task that panics (an invariant's assert) shuts its host's
        // runtime down, and that panic comes out of `step`: stop it here,
        // so the simulation is not torn down while unwinding.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.step())) {
            Ok(Ok(true)) => break,
            Ok(Ok(false)) => {}
            Ok(Err(e)) if e.to_string().starts_with("operator:") => {
                // The operator saw a change accepted that must be refused.
                failures.push(e.to_string());
                panic_at.get_or_insert(sim.elapsed());
                break;
            }
            Ok(Err(e)) => {
                // A node's host fails only when its node does not start.
                is_restart_refused = true;
                failures.push(format!("a node could not restart: {e}"));
                panic_at.get_or_insert(sim.elapsed());
                break;
            }
            Err(_) => {
                panic_at.get_or_insert(sim.elapsed());
                // Its hosts may be half torn down: leak it rather than run
                // their destructors outside the simulation.
                std::mem::forget(sim);
                return Simulated {
                    sim: None,
                    failures,
                    panic_at,
                    is_restart_refused,
                };
            }
        }
    }
    Simulated {
        sim: Some(sim),
        failures,
        panic_at,
        is_restart_refused,
    }
}

/// The whole history, per key, by the checker; a failure names the window
/// and when the operation that could not be placed returned.
fn check_linearizable(
    events: &[(usize, checker::Event)],
    history: &checker::History,
    findings: &mut Findings,
) -> checker::Verdict {
    let options = CheckOptions {
        timeout: Some(Duration::from_secs(120)),
        threads: 1,
        ..CheckOptions::default()
    };
    let verdict = check(&KvModel::kv(), &history.operations, &options);
    match verdict.outcome {
        Outcome::Linearizable => {}
        Outcome::NotLinearizable => {
            // The operation whose return the failing window could not meet.
            findings.detected_at = verdict
                .failure()
                .and_then(|p| p.failure.as_ref())
                .and_then(|f| history.operations[f.deadline_op].ret_line)
                .and_then(|line| events.get(line - 1))
                .and_then(|(_, e)| e.time)
                .map(Duration::from_nanos);
            findings.failures.push(format!(
                "not linearizable:\n{}",
                checker::report::text(&KvModel::kv(), &history.operations, &verdict)
            ))
        }
        Outcome::Unknown => findings
            .failures
            .push("the checker ran out of time or memory".into()),
    }
    verdict
}

/// Liveness: after healing, every session that may go to any node
/// completes an operation in time, and so does one pinned session (the
/// one pinned to the leader).
fn check_liveness_after_heal(
    seed: u64,
    events: &[(usize, checker::Event)],
    observer: &WhiteBoxObserver,
    findings: &mut Findings,
) {
    let heal = HEAL_AT.as_nanos() as u64;
    let bound = (HEAL_AT + LIVENESS_BOUND).as_nanos() as u64;
    let is_live = |index: u64| {
        events.iter().any(|(_, e)| {
            e.process == index
                && e.kind == EventType::Ok
                && e.time.is_some_and(|t| t >= heal && t <= bound)
        })
    };
    let (pinned, free): (Vec<u64>, Vec<u64>) =
        (0..CLIENTS).partition(|&i| matches!(routing(seed, i), Routing::Pinned(_)));
    for index in free.into_iter().filter(|&i| !is_live(i)) {
        findings.failures.push(format!(
            "liveness: client {index} ({:?}) completed nothing within {LIVENESS_BOUND:?} of healing",
            routing(seed, index)
        ));
    }
    // The pinned sessions are bound to the founders: one of them is
    // live if a founder leads (membership changes may have replaced
    // the founders that lead).
    let leader_after_heal = {
        let w = observer.0.lock().expect("white box");
        w.elections
            .iter()
            .filter(|(t, _, _)| *t <= HEAL_AT + LIVENESS_BOUND)
            .max_by_key(|(_, term, _)| *term)
            .map(|(_, _, node)| node.0)
    };
    let is_founder_leading = leader_after_heal.is_some_and(|l| l <= FOUNDERS);
    if is_founder_leading && !pinned.iter().any(|&i| is_live(i)) {
        findings.failures.push(format!(
            "liveness: no pinned client completed anything within {LIVENESS_BOUND:?} of healing"
        ));
    }
}

/// Per fault kind: snapshots installed and compactions during its windows
/// (and the 2 s after each).
fn snapshots_by_kind(
    faults: &[ScheduledFault],
    white_box: &WhiteBox,
) -> BTreeMap<FaultKind, [u64; 2]> {
    let mut snapshots_by_kind: BTreeMap<FaultKind, [u64; 2]> = BTreeMap::new();
    for fault in faults {
        let window = fault.at..fault.at + fault.duration + Duration::from_secs(2);
        let counts = snapshots_by_kind.entry(fault.kind).or_default();
        counts[0] += white_box
            .installed_at
            .iter()
            .filter(|&&t| window.contains(&t))
            .count() as u64;
        counts[1] += white_box
            .compacted_at
            .iter()
            .filter(|&&t| window.contains(&t))
            .count() as u64;
    }
    snapshots_by_kind
}

/// Leadership and availability per fault window, and the liveness
/// assertions of the partial partitions and the isolated follower. Returns
/// each window's statistics and how many windows each assertion checked.
#[allow(clippy::too_many_arguments)]
fn check_fault_windows(
    seed: u64,
    variant: Variant,
    faults: &[ScheduledFault],
    controller: &Controller,
    white_box: &WhiteBox,
    events: &[(usize, checker::Event)],
    history: &checker::History,
    is_cut_short: bool,
    findings: &mut Findings,
) -> (Vec<WindowStats>, [u64; 2]) {
    let time_of = |line: usize| {
        events
            .get(line - 1)
            .and_then(|(_, e)| e.time)
            .map(Duration::from_nanos)
    };
    // (invoked, completed) of every operation that completed ok, by completion.
    let mut oks: Vec<(Duration, Duration)> = history
        .operations
        .iter()
        .filter(|op| op.completion == checker::history::Completion::Ok)
        .filter_map(|op| Some((time_of(op.call_line)?, time_of(op.ret_line?)?)))
        .collect();
    oks.sort_by_key(|&(_, done)| done);
    let mut windows = Vec::new();
    let mut liveness_checked = [0u64; 2];
    for (i, (fault, start_leader)) in faults.iter().zip(&controller.window_starts).enumerate() {
        let start = fault.at;
        let heal = fault.at + fault.duration;
        // Until the next fault starts, at the latest.
        let next = faults.get(i + 1).map_or(Duration::MAX, |f| f.at);
        let end = (heal + AFTER_HEAL).min(next);
        let during = |t: &Duration| (start..end).contains(t);
        let leader_changes = white_box
            .elections
            .iter()
            .filter(|(t, _, _)| during(t))
            .count() as u64;
        let term_at = |at: Duration| {
            white_box
                .term_rises
                .iter()
                .take_while(|(t, _)| *t < at)
                .last()
                .map_or(0, |(_, term)| term.0)
        };
        let term_increases = term_at(end).saturating_sub(term_at(start));
        let mut longest_unavailable = Duration::ZERO;
        let mut last = start;
        for &(_, done) in oks.iter().filter(|(_, done)| during(done)) {
            longest_unavailable = longest_unavailable.max(done - last);
            last = done;
        }
        longest_unavailable = longest_unavailable.max(end - last);
        windows.push(WindowStats {
            kind: fault.kind,
            leader_changes,
            term_increases,
            longest_unavailable,
        });
        if is_cut_short || !(is_liveness_on(seed) || variant.liveness_off) {
            continue;
        }
        if fault.kind == FaultKind::IsolateFollower && start_leader.is_some() {
            liveness_checked[0] += 1;
            if leader_changes > 0 || term_increases > 0 {
                findings.is_liveness_violated = true;
                findings.detected(end);
                findings.failures.push(format!(
                    "liveness: isolating a follower at {:.2}s and healing it at {:.2}s changed the leader {leader_changes} time(s) and raised the term by {term_increases} (leader and term at the start: {start_leader:?})",
                    start.as_secs_f64(),
                    heal.as_secs_f64()
                ));
            }
        }
        // With an even number of voters a partial partition may leave no
        // majority connected, and so may a learner as the bridge: asserted
        // with 3 or 5 voters and no learner.
        let is_odd = controller.window_odd_voters[i];
        if is_partial_partition(fault.kind)
            && fault.duration >= PARTIAL_PARTITION_SERVES_WITHIN
            && is_odd
        {
            liveness_checked[1] += 1;
            let deadline = start + PARTIAL_PARTITION_SERVES_WITHIN;
            let is_served = oks
                .iter()
                .any(|&(invoked, done)| invoked >= start && done <= deadline);
            if !is_served {
                findings.is_liveness_violated = true;
                findings.detected(deadline);
                findings.failures.push(format!(
                    "liveness: under {:?} from {:.2}s no operation invoked after the fault started completed within {PARTIAL_PARTITION_SERVES_WITHIN:?}",
                    fault.kind,
                    start.as_secs_f64()
                ));
            }
        }
    }
    (windows, liveness_checked)
}

/// Removed nodes stop: every member a committed configuration removed
/// has stopped by the end, 10 s after the heal (one that missed its
/// removal learns it from the first member it asks for a vote, which
/// refuses it). Not asserted: a spare removed before it learned any
/// configuration (it knows nobody to ask).
fn check_removed_nodes_stopped(
    white_box: &WhiteBox,
    controller: &Controller,
    findings: &mut Findings,
) {
    let mut before = &white_box.initial;
    for (index, config) in &white_box.committed_configs {
        for (&id, member) in before
            .members
            .iter()
            .filter(|(id, _)| !config.contains(**id))
        {
            let knew_members =
                white_box.configs.get(&id).is_some_and(|c| !c.is_empty()) || id.0 <= FOUNDERS;
            if knew_members && !controller.removed[&id.0].load(Ordering::Relaxed) {
                let what = if member.is_learner {
                    "learner"
                } else {
                    "voter"
                };
                findings.is_liveness_violated = true;
                findings.detected_at.get_or_insert(WORKLOAD_END);
                findings.failures.push(format!(
                    "liveness: node {id}, a {what} removed by the configuration at {index}, was still running at the end"
                ));
            }
        }
        before = config;
    }
}

pub(crate) fn artifacts_dir(seed: u64) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("jepsen").join(seed.to_string())
}

fn write_artifacts(run: &SeedRun, history: &checker::History, verdict: &checker::Verdict) {
    let dir = artifacts_dir(run.seed);
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("history.jsonl"), &run.history_jsonl);
    let title = format!("Lattice Jepsen seed {}", run.seed);
    let _ = std::fs::write(
        dir.join("report.html"),
        checker::report::html(&KvModel::kv(), &history.operations, verdict, &title),
    );
    let _ = std::fs::write(dir.join("failures.txt"), run.failures.join("\n\n"));
}
