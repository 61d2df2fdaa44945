//! The nemesis: carries out the fault schedule as simulated time passes.
//! The controller plans every window's actions before the run (each kind's
//! `plan`, then the overlays), starts each window with its kind's `start`,
//! calls its `watch` at every step while it lasts, and heals everything at
//! its end. What the kinds do lives in `crate::faults`; the primitives they
//! use (cut, crash, restart, pause) live here.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lattice::NodeId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use crate::cluster::{client_host_name, host, NodeControl, OPERATOR};
use crate::faults::{FaultKind, ScheduledFault, DISK_ERROR_RESTART_AFTER};
use crate::sim::chaos::SimChaos;
use crate::sim::disk::{DiskError, DiskLatency, SimDisk};
use crate::white_box::WhiteBoxObserver;
use crate::{CLIENT_HOSTS, FOUNDERS, POOL};

/// What the controller acts on besides the simulation.
pub(crate) struct Nemesis<'a> {
    pub(crate) observer: &'a WhiteBoxObserver,
    pub(crate) disks: &'a BTreeMap<u64, Arc<Mutex<SimDisk>>>,
    pub(crate) chaos: &'a SimChaos,
    /// Freezes each node's driver (every incarnation of it).
    pub(crate) pauses: &'a BTreeMap<u64, watch::Sender<bool>>,
    /// Stops each node's process gracefully, or starts it.
    pub(crate) controls: &'a BTreeMap<u64, watch::Sender<NodeControl>>,
    /// Which nodes finished the first half of a graceful stop.
    pub(crate) stopped: &'a BTreeMap<u64, Arc<AtomicBool>>,
}

/// Applies the fault schedule as simulated time passes, and heals it.
pub(crate) struct Controller {
    pub(crate) rng: StdRng,
    /// The kind of the window in force (between its start and its heal).
    current: Option<FaultKind>,
    /// (when, action), in time order.
    pub(crate) actions: Vec<(Duration, Action)>,
    pub(crate) next: usize,
    /// The node the current pause froze.
    pub(crate) paused: Option<u64>,
    /// The node the crash overlay killed.
    pub(crate) crashed: Option<u64>,
    /// The node whose disk an error was last armed on, and the one down
    /// after losing power.
    pub(crate) disk_error_node: Option<u64>,
    pub(crate) power_lost: Option<u64>,
    /// The links the current fault cut, as (from, to) node pairs.
    pub(crate) cuts: std::collections::BTreeSet<(u64, u64)>,
    /// StrandNewLeader: the side of the old leader (while the fault waits
    /// for the other side to elect), then the stranded node.
    pub(crate) old_side: Vec<u64>,
    pub(crate) stranded: Option<u64>,
    /// StrandNewLeader before the other three see each other again.
    pub(crate) strand_side: Vec<u64>,
    /// FlappingLink: the link, and whether it is cut now.
    pub(crate) flapping: Option<(u64, u64, bool)>,
    /// RollingRestart: the nodes in the order they restart (the leader last).
    pub(crate) rolling: Vec<u64>,
    /// Per fault window, in order: the leader and its term when it started.
    pub(crate) window_starts: Vec<Option<(NodeId, lattice::Term)>>,
    /// Per fault window, in order: whether its configuration had an odd
    /// number of voters and no learner when it started.
    pub(crate) window_odd_voters: Vec<bool>,
    /// The members of the newest committed configuration, the nodes the
    /// faults pick from (refreshed before each action).
    pub(crate) nodes: Vec<u64>,
    /// Machines whose node was removed: never started again.
    pub(crate) removed: BTreeMap<u64, Arc<AtomicBool>>,
    /// During a MembershipChurn window: the leader (and term) seen last.
    pub(crate) churn_leader: Option<Option<(NodeId, lattice::Term)>>,
}

/// What the controller does at a moment of the run.
#[derive(Clone, Debug)]
pub(crate) enum Action {
    /// Starts a fault window: its overlays, then its kind.
    Start(ScheduledFault),
    /// Ends the current fault: repair every link, restore latency and loss,
    /// restart crashed nodes, resume a paused one, calm the disks and the
    /// messages.
    Heal,
    /// A step of a fault kind inside its window (planned by its `plan`).
    Step(Step),
    /// The crash overlay: kill -9 the leader, losing unsynced writes.
    CrashLeader,
    /// The crash overlay: restart the node it killed.
    RestartCrashed,
    /// The disk-error overlay: the leader's disk fails its next write or
    /// sync.
    DiskError(DiskError),
    /// The machine whose disk failed last loses power (and is down).
    PowerLossAfterDiskError,
    /// It comes back.
    RestartPowerLost,
    /// Repair every node link (the disks, latency and message chaos stay).
    HealCuts,
}

/// What a step of a fault kind does, with its argument.
pub(crate) type StepFn = fn(&mut Controller, &mut turmoil::Sim<'_>, &Nemesis<'_>, usize);

/// A step of a fault kind: a named function of the controller and an
/// argument (which node of an order, for instance).
#[derive(Clone, Copy)]
pub(crate) struct Step {
    name: &'static str,
    pub(crate) run: StepFn,
    pub(crate) arg: usize,
}

impl Step {
    pub(crate) const fn new(name: &'static str, run: StepFn) -> Step {
        Step { name, run, arg: 0 }
    }

    /// The same step with another argument.
    pub(crate) const fn with(self, arg: usize) -> Step {
        Step { arg, ..self }
    }
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({})", self.name, self.arg)
    }
}

impl Controller {
    pub(crate) fn new(
        seed: u64,
        faults: &[ScheduledFault],
        removed: BTreeMap<u64, Arc<AtomicBool>>,
    ) -> Controller {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xC4_0A11);
        let mut actions = Vec::new();
        for fault in faults {
            actions.push((fault.at, Action::Start(*fault)));
            let end = fault.at + fault.duration;
            (fault.kind.spec().plan)(&mut rng, fault, &mut actions);
            if let Some((after, error, power_loss)) = fault.disk_error {
                actions.push((fault.at + after, Action::DiskError(error)));
                if let Some(later) = power_loss {
                    let at = fault.at + after + later;
                    actions.push((at, Action::PowerLossAfterDiskError));
                    actions.push((at + DISK_ERROR_RESTART_AFTER, Action::RestartPowerLost));
                }
            }
            if let Some((after, down)) = fault.crash_leader {
                actions.push((fault.at + after, Action::CrashLeader));
                actions.push(((fault.at + after + down).min(end), Action::RestartCrashed));
            }
            actions.push((fault.at + fault.duration, Action::Heal));
        }
        actions.sort_by_key(|(at, _)| *at);
        Controller {
            rng: StdRng::seed_from_u64(seed ^ 0x7A26_E7ED),
            current: None,
            actions,
            next: 0,
            paused: None,
            crashed: None,
            disk_error_node: None,
            power_lost: None,
            cuts: Default::default(),
            old_side: Vec::new(),
            stranded: None,
            strand_side: Vec::new(),
            flapping: None,
            rolling: Vec::new(),
            window_starts: Vec::new(),
            window_odd_voters: Vec::new(),
            nodes: (1..=FOUNDERS).collect(),
            removed,
            churn_leader: None,
        }
    }

    /// Carries out what is due: the current window's watch, then every
    /// action whose time has come.
    pub(crate) fn apply_due(&mut self, sim: &mut turmoil::Sim<'_>, nemesis: &Nemesis<'_>) {
        self.end_stopped_processes(sim, nemesis);
        if let Some(kind) = self.current {
            (kind.spec().watch)(self, sim, nemesis);
        }
        while let Some((at, action)) = self.actions.get(self.next).cloned() {
            if sim.elapsed() < at {
                return;
            }
            self.next += 1;
            self.nodes = nemesis.observer.members().iter().map(|n| n.0).collect();
            self.apply(action, sim, nemesis);
        }
    }

    /// Every node but the leader, shuffled.
    pub(crate) fn followers(&mut self, leader: u64) -> Vec<u64> {
        let mut nodes = self.shuffled_nodes();
        nodes.retain(|&n| n != leader);
        nodes
    }

    /// A follower (not the leader), at random.
    pub(crate) fn follower(&mut self, leader: u64) -> u64 {
        self.followers(leader)[0]
    }

    /// Cuts `node` from every other machine but those in `keep`.
    pub(crate) fn cut_all_but(&mut self, sim: &turmoil::Sim<'_>, node: u64, keep: &[u64]) {
        for other in (1..=POOL).filter(|&o| o != node && !keep.contains(&o)) {
            self.cut(sim, node, other);
        }
    }

    /// A member, at random.
    pub(crate) fn any_node(&mut self) -> u64 {
        self.nodes[self.rng.random_range(0..self.nodes.len())]
    }

    /// The members, shuffled.
    pub(crate) fn shuffled_nodes(&mut self) -> Vec<u64> {
        let mut nodes = self.nodes.clone();
        for i in (1..nodes.len()).rev() {
            let j = self.rng.random_range(0..=i);
            nodes.swap(i, j);
        }
        nodes
    }

    pub(crate) fn leader_or_any(&mut self, observer: &WhiteBoxObserver) -> u64 {
        observer.leader().map_or_else(|| self.any_node(), |l| l.0)
    }

    pub(crate) fn cut(&mut self, sim: &turmoil::Sim<'_>, a: u64, b: u64) {
        self.cut_oneway(sim, a, b);
        self.cut_oneway(sim, b, a);
    }

    pub(crate) fn cut_oneway(&mut self, sim: &turmoil::Sim<'_>, from: u64, to: u64) {
        self.cuts.insert((from, to));
        sim.partition_oneway(host(from), host(to));
    }

    pub(crate) fn repair_all(&mut self, sim: &turmoil::Sim<'_>) {
        self.cuts.clear();
        for a in 1..=POOL {
            for b in (a + 1)..=POOL {
                sim.repair(host(a), host(b));
            }
        }
    }

    /// kill -9, losing what the disk had not synced.
    pub(crate) fn crash(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        disks: &BTreeMap<u64, Arc<Mutex<SimDisk>>>,
        node: u64,
    ) {
        if self.kill(sim, node) {
            disks[&node].lock().expect("disk").crash();
        }
    }

    /// Ends the node's process (its disk keeps what it wrote); false if it
    /// was not running. The node is cut off first, so the connections the
    /// exit closes vanish from the network without a trace (its peers learn
    /// from silence). Otherwise the order tokio closes them in (by task id,
    /// a counter of the whole process) would draw the network's random
    /// numbers in a different order in each process, and a seed would not
    /// replay.
    pub(crate) fn kill(&mut self, sim: &mut turmoil::Sim<'_>, node: u64) -> bool {
        if !sim.is_host_running(host(node)) {
            return false;
        }
        for other in Self::others(node) {
            sim.partition(host(node), other);
        }
        sim.crash(host(node));
        true
    }

    /// The second half of a graceful stop: a node that handed over and
    /// drained exits, and starts again at once if it was asked to meanwhile.
    pub(crate) fn end_stopped_processes(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        nemesis: &Nemesis<'_>,
    ) {
        for (&node, stopped) in nemesis.stopped {
            if stopped.swap(false, Ordering::Relaxed) {
                self.kill(sim, node);
                if nemesis.controls[&node].borrow().running {
                    self.restart(sim, node);
                }
            }
        }
    }

    /// Restarts a crashed node, with the links the current fault gives it.
    pub(crate) fn restart(&mut self, sim: &mut turmoil::Sim<'_>, node: u64) {
        if sim.is_host_running(host(node)) || self.removed[&node].load(Ordering::Relaxed) {
            return;
        }
        sim.bounce(host(node));
        for other in Self::others(node) {
            sim.repair(host(node), other);
        }
        for &(from, to) in &self.cuts {
            if from == node || to == node {
                sim.partition_oneway(host(from), host(to));
            }
        }
    }

    /// Every other host: the other machines, the clients and the operator.
    pub(crate) fn others(node: u64) -> Vec<String> {
        (1..=POOL)
            .filter(|&o| o != node)
            .map(host)
            .chain((0..CLIENT_HOSTS).map(client_host_name))
            .chain([OPERATOR.to_string()])
            .collect()
    }

    /// Cuts the nodes into two sides at random: one or two nodes (the
    /// leader among them half the time) against the rest.
    pub(crate) fn repartition(&mut self, sim: &turmoil::Sim<'_>, observer: &WhiteBoxObserver) {
        self.repair_all(sim);
        let mut nodes = self.shuffled_nodes();
        if self.rng.random_bool(0.5) {
            // The leader the observer saw may be a node a membership change
            // has removed since: then no member leads yet.
            let leader = self.leader_or_any(observer);
            if let Some(at) = nodes.iter().position(|&n| n == leader) {
                nodes.swap(0, at);
            }
        }
        let small = self.rng.random_range(1..=2);
        let (a, b) = nodes.split_at(small);
        for &x in a {
            for &y in b {
                self.cut(sim, x, y);
            }
        }
    }

    /// Freezes a node's driver, as SIGSTOP would, until the heal.
    pub(crate) fn pause(&mut self, sim: &turmoil::Sim<'_>, nemesis: &Nemesis<'_>, node: u64) {
        nemesis.pauses[&node].send_replace(true);
        for other in Self::others(node) {
            sim.hold(host(node), other);
        }
        self.paused = Some(node);
    }

    fn apply(&mut self, action: Action, sim: &mut turmoil::Sim<'_>, nemesis: &Nemesis<'_>) {
        let observer = nemesis.observer;
        let disks = nemesis.disks;
        match action {
            Action::Start(fault) => {
                self.window_starts.push(observer.leader_and_term());
                let (_, voters, learners) = observer.committed_config();
                self.window_odd_voters
                    .push(voters.len() % 2 == 1 && learners.is_empty());
                if fault.slow_disk {
                    for disk in disks.values() {
                        disk.lock().expect("disk").latency = DiskLatency::SLOW;
                    }
                }
                nemesis.chaos.set_active(fault.chaos);
                self.current = Some(fault.kind);
                (fault.kind.spec().start)(self, sim, nemesis);
            }
            Action::Step(step) => (step.run)(self, sim, nemesis, step.arg),
            Action::HealCuts => self.repair_all(sim),
            Action::CrashLeader => {
                let leader = self.leader_or_any(observer);
                if sim.is_host_running(host(leader)) && self.paused != Some(leader) {
                    self.crash(sim, disks, leader);
                    self.crashed = Some(leader);
                }
            }
            Action::RestartCrashed => {
                if let Some(node) = self.crashed.take() {
                    self.restart(sim, node);
                }
            }
            Action::DiskError(error) => {
                let node = self.leader_or_any(observer);
                disks[&node].lock().expect("disk").fail_next = Some(error);
                self.disk_error_node = Some(node);
            }
            Action::PowerLossAfterDiskError => {
                if let Some(node) = self.disk_error_node.take() {
                    if sim.is_host_running(host(node)) && self.paused != Some(node) {
                        self.crash(sim, disks, node);
                        self.power_lost = Some(node);
                    }
                }
            }
            Action::RestartPowerLost => {
                if let Some(node) = self.power_lost.take() {
                    self.restart(sim, node);
                }
            }
            Action::Heal => {
                self.current = None;
                self.churn_leader = None;
                self.old_side.clear();
                self.strand_side.clear();
                self.flapping = None;
                self.rolling.clear();
                for control in nemesis.controls.values() {
                    control.send_if_modified(|c| {
                        let was_stopped = !c.running;
                        c.running = true;
                        was_stopped
                    });
                }
                if let Some(node) = self.stranded.take() {
                    for other in (1..=POOL).filter(|&o| o != node) {
                        sim.release(host(node), host(other));
                    }
                }
                if let Some(node) = self.paused.take() {
                    for other in Self::others(node) {
                        sim.release(host(node), other);
                    }
                    nemesis.pauses[&node].send_replace(false);
                }
                for disk in disks.values() {
                    disk.lock().expect("disk").latency = DiskLatency::BASELINE;
                }
                nemesis.chaos.set_active(false);
                self.repair_all(sim);
                for a in 1..=POOL {
                    for b in 1..=POOL {
                        if a != b {
                            sim.set_link_fail_rate(host(a), host(b), 0.0);
                            sim.set_link_latency(host(a), host(b), Duration::from_millis(1));
                            sim.set_link_max_message_latency(
                                host(a),
                                host(b),
                                Duration::from_millis(5),
                            );
                        }
                    }
                }
                for node in 1..=POOL {
                    self.restart(sim, node);
                }
            }
        }
    }
}
