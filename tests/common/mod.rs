//! The simulation seams for the Jepsen test: turmoil's network behind
//! `lattice::transport::Transport`, a simulated disk behind
//! `lattice::storage::Storage` that survives a crash but loses what was not
//! synced and takes (seeded, random) time to sync, late and duplicated peer
//! messages behind `lattice::server::MessageChaos`, and a white-box observer
//! of every node.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lattice::raft::{Entry, HardState, LogIndex, Membership, NodeId, Role, SnapshotMeta, Term};
use lattice::server::{ChaosVerdict, MessageChaos, Observer, PeerMessage};
use lattice::storage::{resume_log, MemSnapshots, Recovered, SnapshotFile, SnapshotStore, Storage};
use lattice::transport::{BoxFuture, Connection, Listener, Transport};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// turmoil's TCP. Binds on all addresses of the host at the given port;
/// connects by host name (`n1:7000`).
#[derive(Clone, Copy, Debug, Default)]
pub struct TurmoilTransport;

impl Transport for TurmoilTransport {
    fn bind(&self, addr: &str) -> BoxFuture<io::Result<Listener>> {
        let port = addr.rsplit(':').next().unwrap_or("0").to_string();
        Box::pin(async move {
            let listener = turmoil::net::TcpListener::bind(format!("0.0.0.0:{port}")).await?;
            let stream = futures_stream(listener);
            Ok(stream)
        })
    }

    fn connect(&self, addr: &str) -> BoxFuture<io::Result<Connection>> {
        let addr = addr.to_string();
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(addr).await?;
            Ok(Connection::new(stream))
        })
    }
}

/// Accepted connections as a stream, without pulling in a futures crate.
fn futures_stream(listener: turmoil::net::TcpListener) -> Listener {
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        // Ends (closing the port) as soon as the server drops the stream,
        // so that a node stopped gracefully can start again on its ports.
        loop {
            let accepted = tokio::select! {
                biased;
                _ = sender.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let accepted = accepted.map(|(stream, _)| Connection::new(stream));
            if sender.send(accepted).await.is_err() {
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))
}

/// How long a sync takes: uniform in `[0, sync_max]`, and with
/// `stall_probability` a stall uniform in `stall`.
#[derive(Clone, Copy, Debug)]
pub struct DiskLatency {
    pub sync_max: Duration,
    pub stall_probability: f64,
    pub stall: (Duration, Duration),
}

impl DiskLatency {
    /// A healthy disk: a few milliseconds, so every "before it is durable"
    /// window is open a little.
    pub const BASELINE: DiskLatency = DiskLatency {
        sync_max: Duration::from_millis(3),
        stall_probability: 0.0,
        stall: (Duration::ZERO, Duration::ZERO),
    };
    /// A struggling disk: slow syncs and stalls of 100 ms or more.
    pub const SLOW: DiskLatency = DiskLatency {
        sync_max: Duration::from_millis(40),
        stall_probability: 0.05,
        stall: (Duration::from_millis(100), Duration::from_millis(500)),
    };
    /// A disk that hangs on every sync for a while.
    pub const STALLED: DiskLatency = DiskLatency {
        sync_max: Duration::ZERO,
        stall_probability: 1.0,
        stall: (Duration::from_millis(150), Duration::from_millis(400)),
    };
}

/// One node's disk: what is durable, and writes not yet synced. Snapshots
/// are written atomically (as `FileStorage` does with a rename).
/// A storage error the disk returns once, when armed (the storage-fault
/// nemesis).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskError {
    /// fsync fails with EIO, and the writes it was to make durable never
    /// reach the disk (the 2018 "fsyncgate": Linux marks them clean, so a
    /// retried fsync succeeds and holds nothing). They stay readable, as in
    /// Linux's page cache: a process restarted on the same kernel reads
    /// them back, and a power loss drops them (`SimDisk::cached`).
    SyncEio,
    /// A write fails with ENOSPC: the disk is full, nothing of it is written.
    WriteEnospc,
}

pub struct SimDisk {
    /// Draws sync latencies (seeded per node: the run replays).
    rng: StdRng,
    pub latency: DiskLatency,
    /// The next write or sync (whichever the error is of) fails.
    pub fail_next: Option<DiskError>,
    /// Errors returned so far.
    pub errors_returned: usize,
    /// An error was returned since the disk was last opened (by the
    /// node's current process).
    pub failed_since_open: bool,
    hard_state: HardState,
    snapshots: Arc<MemSnapshots>,
    /// The durable log by index (compaction removes its start).
    durable: BTreeMap<LogIndex, Entry>,
    /// Unsynced appends, oldest first: (when, entries). Each truncates from
    /// its first index, then extends.
    pending: Vec<(Duration, Vec<Entry>)>,
    /// Appends whose fsync failed: in the page cache only, marked clean, so
    /// no later sync writes them. A restarted process reads them over the
    /// durable log (until `Storage::resync_recovered` writes them again); a
    /// power loss drops them.
    cached: BTreeMap<LogIndex, Entry>,
    /// Appends made durable by the "operating system" this long after they
    /// were written even without a sync (writeback); `None`: only `sync` does.
    writeback_after: Option<Duration>,
}

fn apply_append(log: &mut BTreeMap<LogIndex, Entry>, entries: &[Entry]) {
    if let Some(first) = entries.first() {
        log.split_off(&first.index);
        log.extend(entries.iter().map(|e| (e.index, e.clone())));
    }
}

impl SimDisk {
    pub fn new(seed: u64, writeback_after: Option<Duration>) -> Arc<Mutex<SimDisk>> {
        Arc::new(Mutex::new(SimDisk {
            rng: StdRng::seed_from_u64(seed),
            latency: DiskLatency::BASELINE,
            fail_next: None,
            errors_returned: 0,
            failed_since_open: false,
            hard_state: HardState::default(),
            snapshots: Arc::new(MemSnapshots::default()),
            durable: BTreeMap::new(),
            pending: Vec::new(),
            cached: BTreeMap::new(),
            writeback_after,
        }))
    }

    fn sync_delay(&mut self) -> Duration {
        let latency = self.latency;
        if latency.stall_probability > 0.0 && self.rng.random_bool(latency.stall_probability) {
            return self.rng.random_range(latency.stall.0..=latency.stall.1);
        }
        self.rng.random_range(Duration::ZERO..=latency.sync_max)
    }

    /// The machine lost power: unsynced writes are gone, and so are the
    /// pages a failed fsync left in the cache.
    pub fn crash(&mut self) -> usize {
        let lost = self.pending.iter().map(|(_, e)| e.len()).sum::<usize>() + self.cached.len();
        self.pending.clear();
        self.cached.clear();
        lost
    }

    /// Entries whose fsync failed, still readable (tests).
    pub fn cached_entries(&self) -> usize {
        self.cached.len()
    }

    /// Durable entries from `entries[0].index` on are replaced, and cached
    /// ones too (their pages now hold the new bytes).
    fn make_durable(&mut self, entries: &[Entry]) {
        if let Some(first) = entries.first() {
            self.cached.split_off(&first.index);
        }
        apply_append(&mut self.durable, entries);
    }

    fn flush_older_than(&mut self, now: Duration) {
        let Some(after) = self.writeback_after else {
            return;
        };
        let cut = self
            .pending
            .iter()
            .take_while(|(at, _)| *at + after <= now)
            .count();
        for (_, entries) in self.pending.drain(..cut).collect::<Vec<_>>() {
            self.make_durable(&entries);
        }
    }

    /// The disk is wiped (a replaced machine): nothing survives.
    pub fn wipe(&mut self) {
        self.pending.clear();
        self.cached.clear();
        self.durable.clear();
        self.hard_state = HardState::default();
        self.snapshots = Arc::new(MemSnapshots::default());
    }
}

/// A node incarnation's handle on its disk.
pub struct SimStorage {
    disk: Arc<Mutex<SimDisk>>,
    last_index: LogIndex,
    /// The snapshot the log continues (as `FileStorage`'s log base).
    log_base: LogIndex,
    recovered: Option<Recovered>,
}

impl SimStorage {
    /// Opens the disk as a restarted process would: what is durable, with
    /// what a failed fsync left in the cache read over it (a process restart
    /// keeps the kernel's cache; unsynced writes it drops, as if they never
    /// made it). A gap between the snapshot and the log fails, as
    /// `FileStorage` does.
    pub fn open(disk: Arc<Mutex<SimDisk>>) -> lattice::Result<SimStorage> {
        let recovered = {
            let mut d = disk.lock().expect("disk");
            d.pending.clear();
            d.failed_since_open = false;
            let snapshot = d.snapshots.get().map(|s| (*s).clone());
            let meta = snapshot
                .as_ref()
                .map_or(SnapshotMeta::default(), SnapshotFile::meta);
            // The cache's pages over the disk's; the log is read up to its
            // first hole (as `FileStorage` stops at the first record that
            // does not decode), so a hole a power loss left shortens it.
            let mut visible = d.durable.clone();
            visible.extend(d.cached.iter().map(|(i, e)| (*i, e.clone())));
            let mut entries: Vec<Entry> = Vec::new();
            for entry in visible.into_values() {
                if entries
                    .last()
                    .is_some_and(|last| last.index.next() != entry.index)
                {
                    break;
                }
                entries.push(entry);
            }
            let (entries, is_reset) = resume_log(meta, entries, "the simulated disk")?;
            if is_reset {
                d.durable.clear();
                d.cached.clear();
            }
            if let Some(last) = entries.last().filter(|e| e.term > d.hard_state.term) {
                return Err(lattice::Error::Storage {
                    path: "the simulated disk".into(),
                    offset: None,
                    reason: format!(
                        "last entry has term {} beyond the saved term {}",
                        last.term, d.hard_state.term
                    ),
                });
            }
            Recovered {
                hard_state: d.hard_state,
                snapshot,
                entries,
            }
        };
        let last_index = recovered
            .entries
            .last()
            .map_or(recovered.snapshot_meta().index, |e| e.index);
        Ok(SimStorage {
            disk,
            last_index,
            log_base: recovered.snapshot_meta().index,
            recovered: Some(recovered),
        })
    }
}

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

impl Storage for SimStorage {
    fn recovered(&mut self) -> Recovered {
        self.recovered.take().unwrap_or_default()
    }
    /// What the cache held is written again and synced: durable now.
    fn resync_recovered(&mut self) -> lattice::Result<()> {
        let mut d = self.disk.lock().expect("disk");
        let cached: Vec<Entry> = std::mem::take(&mut d.cached).into_values().collect();
        d.make_durable(&cached);
        Ok(())
    }
    fn save_hard_state(&mut self, hard_state: HardState) -> lattice::Result<()> {
        self.disk.lock().expect("disk").hard_state = hard_state;
        Ok(())
    }
    fn append(&mut self, entries: &[Entry]) -> lattice::Result<()> {
        let mut d = self.disk.lock().expect("disk");
        d.flush_older_than(now());
        if d.fail_next == Some(DiskError::WriteEnospc) {
            d.fail_next = None;
            d.errors_returned += 1;
            d.failed_since_open = true;
            return Err(lattice::Error::io(
                "appending to the simulated disk",
                io::Error::from_raw_os_error(libc::ENOSPC),
            ));
        }
        if let Some(first) = entries.first() {
            assert!(
                first.index > self.log_base && first.index <= self.last_index.next(),
                "append must not leave a gap or rewrite the snapshot: first {} with last {} and base {}",
                first.index,
                self.last_index,
                self.log_base
            );
        }
        if let Some(last) = entries.last() {
            self.last_index = last.index;
        }
        d.pending.push((now(), entries.to_vec()));
        Ok(())
    }
    fn sync(&mut self) -> lattice::Result<()> {
        let mut d = self.disk.lock().expect("disk");
        if d.fail_next == Some(DiskError::SyncEio) {
            d.fail_next = None;
            d.errors_returned += 1;
            d.failed_since_open = true;
            // Never written, but readable until power is lost; the
            // truncation each append made of the entries it replaced did
            // happen.
            for (_, entries) in std::mem::take(&mut d.pending) {
                if let Some(first) = entries.first() {
                    d.durable.split_off(&first.index);
                }
                apply_append(&mut d.cached, &entries);
            }
            return Err(lattice::Error::io(
                "syncing the simulated disk",
                io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        let pending = std::mem::take(&mut d.pending);
        for (_, entries) in pending {
            d.make_durable(&entries);
        }
        Ok(())
    }
    fn last_index(&self) -> LogIndex {
        self.last_index
    }
    fn sync_delay(&mut self) -> Duration {
        self.disk.lock().expect("disk").sync_delay()
    }
    fn install_snapshot(&mut self, file: &SnapshotFile) -> lattice::Result<()> {
        let mut d = self.disk.lock().expect("disk");
        // Durable on return, log reset included (the earlier unsynced
        // appends are written out first, as a sync would).
        let pending = std::mem::take(&mut d.pending);
        for (_, entries) in pending {
            d.make_durable(&entries);
        }
        let meta = file.meta();
        if d.durable.get(&meta.index).map(|e| e.term) != Some(meta.term) {
            d.durable.clear();
            d.cached.clear();
            self.last_index = meta.index;
        }
        self.log_base = meta.index;
        d.snapshots.set(file.clone());
        Ok(())
    }
    fn compact(&mut self, index: LogIndex) -> lattice::Result<()> {
        let mut d = self.disk.lock().expect("disk");
        d.durable = d.durable.split_off(&index.next());
        d.cached = d.cached.split_off(&index.next());
        Ok(())
    }
    fn snapshot_store(&self) -> Arc<dyn SnapshotStore> {
        let d = self.disk.lock().expect("disk");
        Arc::new(SimSnapshots {
            snapshots: d.snapshots.clone(),
            rng: Mutex::new(StdRng::seed_from_u64(d.rng.clone().random())),
        })
    }
}

/// The simulated disk's snapshots: saved atomically, after a seeded delay of
/// up to 30 ms (writing a snapshot takes time; a crash can fall in it).
struct SimSnapshots {
    snapshots: Arc<MemSnapshots>,
    rng: Mutex<StdRng>,
}

impl SnapshotStore for SimSnapshots {
    fn open_latest(&self) -> lattice::Result<Option<Box<dyn lattice::storage::SnapshotReader>>> {
        self.snapshots.open_latest()
    }
    fn latest(&self) -> SnapshotMeta {
        self.snapshots.latest()
    }
    fn save(
        &self,
        meta: SnapshotMeta,
        write: lattice::storage::SnapshotWriter,
    ) -> lattice::Result<u64> {
        self.snapshots.save(meta, write)
    }
    fn save_delay(&self) -> Duration {
        let mut rng = self.rng.lock().expect("rng");
        rng.random_range(Duration::ZERO..=Duration::from_millis(30))
    }
}

/// Everything observed across nodes during a run, and the invariants checked
/// as it arrives.
#[derive(Default)]
pub struct WhiteBox {
    /// term -> the node that led it.
    pub leaders: BTreeMap<Term, NodeId>,
    /// index -> (term, data) of the entry applied there first.
    pub applied: BTreeMap<LogIndex, (Term, u32)>,
    /// The latest role each node reported.
    pub roles: BTreeMap<NodeId, (Term, Role)>,
    /// The highest commit index any node has reported.
    pub commit_max: LogIndex,
    pub violations: Vec<String>,
    /// Simulated time of the first violation.
    pub first_violation_at: Option<Duration>,
    pub applies: u64,
    /// Reads checked by the read oracle.
    pub reads_checked: u64,
    /// The voters every node starts with (the bootstrap configuration).
    pub initial: Membership,
    /// Per node: the configuration entries of its log, by index (as for
    /// `logs`: below a snapshot, the committed ones). A node's
    /// configuration is its last one (or `initial`).
    pub configs: BTreeMap<NodeId, BTreeMap<LogIndex, Membership>>,
    /// The configuration entries applied, by index: the committed history.
    pub committed_configs: BTreeMap<LogIndex, Membership>,
    /// Committed changes: members added (as learners, as voters),
    /// learners promoted, voters removed, learners removed.
    pub config_changes: [u64; 5],
    /// (term, candidate) -> the nodes whose granting answers left them.
    pub votes: BTreeMap<(Term, NodeId), std::collections::BTreeSet<NodeId>>,
    /// (node, term) -> whom its vote (granted, or its own as a candidate)
    /// went to.
    pub voted: BTreeMap<(NodeId, Term), NodeId>,
    /// Per node: the highest index it acknowledged, in the latest term it
    /// acknowledged anything.
    pub acknowledged: BTreeMap<NodeId, (Term, LogIndex)>,
    /// Per node: the term of each entry of its log (index i at i - 1), as
    /// handed to its disk (or recovered from it); below a snapshot, the
    /// committed terms.
    pub logs: BTreeMap<NodeId, Vec<Term>>,
    /// Snapshot index -> the digest of the state there, and who took it
    /// first: every snapshot at one index, taken or installed, must agree.
    pub snapshot_digests: BTreeMap<LogIndex, (u32, NodeId)>,
    /// Per node (this incarnation): the index its state machine is at.
    pub state_at: BTreeMap<NodeId, LogIndex>,
    pub snapshots_taken: u64,
    pub snapshots_installed: u64,
    pub compactions: u64,
    /// When (simulated) each snapshot was installed, and each compaction.
    pub installed_at: Vec<Duration>,
    pub compacted_at: Vec<Duration>,
    /// When each (term, leader) first reported leading.
    pub elections: Vec<(Duration, Term, NodeId)>,
    /// When some node first reached each higher term.
    pub term_rises: Vec<(Duration, Term)>,
}

impl WhiteBox {
    fn violate(&mut self, message: String) {
        self.first_violation_at.get_or_insert_with(now);
        self.violations.push(message);
    }

    /// The configuration node `node` is in: the last of its log.
    pub fn config_of(&self, node: NodeId) -> &Membership {
        self.configs
            .get(&node)
            .and_then(|configs| configs.last_key_value())
            .map_or(&self.initial, |(_, config)| config)
    }

    /// Leader completeness, as a state invariant: no node that lacks the
    /// newest committed entry could win an election, that is, fewer than a
    /// quorum of the voters of its own configuration (itself included)
    /// have logs no more up to date than its own. True in every state of
    /// correct Raft (the committed entry is on a majority of a configuration
    /// in force, each of which refuses such a candidate, and single-server
    /// changes keep the majorities of consecutive configurations
    /// overlapping), so a bad commit is caught when it happens, not only
    /// once a leader loses it. Learners, removed and joining nodes do not
    /// campaign.
    fn check_leader_completeness(&mut self) {
        let Some((&index, &(term, _))) = self.applied.last_key_value() else {
            return;
        };
        let position = (index.0 - 1) as usize;
        let last = |log: &Vec<Term>| (log.last().copied().unwrap_or_default(), log.len());
        let mut found = None;
        for (node, log) in &self.logs {
            if log.get(position) == Some(&term) {
                continue;
            }
            let config = self.config_of(*node);
            if !config.is_voter(*node) {
                continue;
            }
            let empty = Vec::new();
            let voters: Vec<NodeId> = config
                .voters()
                .filter(|voter| last(self.logs.get(voter).unwrap_or(&empty)) <= last(log))
                .collect();
            if voters.len() >= config.quorum() {
                found = Some(format!(
                    "leader completeness: node {node} lacks committed entry {index} (term {term}), yet nodes {voters:?} of its configuration would vote for it"
                ));
                break;
            }
        }
        if let Some(message) = found {
            self.violate(message);
        }
    }

    /// The committed terms of indexes 1..=index (what a snapshot there holds).
    fn committed_terms(&self, index: LogIndex) -> Vec<Term> {
        (1..=index.0)
            .map(|i| {
                self.applied
                    .get(&LogIndex(i))
                    .map_or(Term(0), |&(term, _)| term)
            })
            .collect()
    }

    /// A snapshot's digest against every other one at its index.
    fn check_snapshot_digest(&mut self, node: NodeId, meta: SnapshotMeta, digest: u32, what: &str) {
        match self.snapshot_digests.get(&meta.index) {
            Some(&(first, by)) if first != digest => {
                let message = format!(
                    "snapshot digest: node {node} {what} a snapshot at {} with digest {digest:08x}; node {by}'s there is {first:08x}",
                    meta.index
                );
                self.violate(message);
            }
            Some(_) => {}
            None => {
                self.snapshot_digests.insert(meta.index, (digest, node));
            }
        }
    }

    fn write_log(&mut self, node: NodeId, entries: &[Entry]) {
        let log = self.logs.entry(node).or_default();
        let Some(first) = entries.first() else {
            return;
        };
        log.truncate((first.index.0 - 1) as usize);
        log.extend(entries.iter().map(|e| e.term));
        let mut configs = self.configs.remove(&node).unwrap_or_default();
        configs.split_off(&first.index);
        for entry in entries {
            match entry.membership() {
                Some(Ok(config)) => {
                    let before = configs
                        .last_key_value()
                        .map_or(&self.initial, |(_, c)| c)
                        .clone();
                    self.check_one_change(&before, &config, || {
                        format!("node {node}'s log at {}", entry.index)
                    });
                    configs.insert(entry.index, config);
                }
                Some(Err(e)) => self.violate(format!(
                    "configuration: node {node} wrote an undecodable configuration entry at {}: {e}",
                    entry.index
                )),
                None => {}
            }
        }
        self.configs.insert(node, configs);
    }

    /// No two disjoint majorities: a configuration differs from the one
    /// before it by one voter at most (single-server changes), so every
    /// majority of one meets every majority of the other.
    fn check_one_change(
        &mut self,
        before: &Membership,
        after: &Membership,
        at: impl Fn() -> String,
    ) {
        let old: std::collections::BTreeSet<NodeId> = before.voters().collect();
        let new: std::collections::BTreeSet<NodeId> = after.voters().collect();
        let changed = old.symmetric_difference(&new).count();
        if changed > 1 {
            let message = format!(
                "configuration: {} changes {changed} voters at once ({old:?} -> {new:?}): their majorities may be disjoint",
                at()
            );
            self.violate(message);
        }
    }

    /// After a snapshot at `index` (installed or recovered), a node's
    /// configurations up to it are the committed ones.
    fn reset_configs(&mut self, node: NodeId, index: LogIndex) {
        let committed: BTreeMap<LogIndex, Membership> = self
            .committed_configs
            .range(..=index)
            .map(|(i, c)| (*i, c.clone()))
            .collect();
        self.configs.insert(node, committed);
    }

    /// A node applied the configuration entry at `index`: the committed
    /// history gains it, one voter from the previous one at most, and the
    /// node's own history up to it (from its log) is exactly the committed
    /// one (every node's configurations are a prefix of one history).
    fn config_applied(&mut self, node: NodeId, index: LogIndex, config: Membership) {
        if !self.committed_configs.contains_key(&index) {
            let before = self
                .committed_configs
                .range(..index)
                .next_back()
                .map_or(&self.initial, |(_, c)| c)
                .clone();
            self.check_one_change(&before, &config, || {
                format!("the committed configuration at {index}")
            });
            for (id, member) in &config.members {
                match before.members.get(id) {
                    None if member.is_learner => self.config_changes[0] += 1,
                    None => self.config_changes[1] += 1,
                    Some(old) if old.is_learner && !member.is_learner => {
                        self.config_changes[2] += 1
                    }
                    Some(_) => {}
                }
            }
            for (id, member) in &before.members {
                if !config.members.contains_key(id) {
                    self.config_changes[if member.is_learner { 4 } else { 3 }] += 1;
                }
            }
            self.committed_configs.insert(index, config);
        }
        let own: Vec<(LogIndex, Vec<NodeId>)> = self
            .configs
            .get(&node)
            .into_iter()
            .flat_map(|c| c.range(..=index))
            .map(|(i, c)| (*i, c.voters().collect()))
            .collect();
        let committed: Vec<(LogIndex, Vec<NodeId>)> = self
            .committed_configs
            .range(..=index)
            .map(|(i, c)| (*i, c.voters().collect()))
            .collect();
        // A node that installed a snapshot holds the committed history
        // below it; a node restarted from a snapshot too.
        if own != committed {
            let message = format!(
                "configuration: node {node} applied the configuration at {index} with the history {own:?} in its log; the committed history is {committed:?}"
            );
            self.violate(message);
        }
    }
}

/// The observer the nodes report to.
#[derive(Clone, Default)]
pub struct WhiteBoxObserver(pub Arc<Mutex<WhiteBox>>);

impl Observer for WhiteBoxObserver {
    fn applied(&self, node: NodeId, entry: &Entry) {
        let mut w = self.0.lock().expect("white box");
        w.applies += 1;
        w.state_at.insert(node, entry.index);
        if let Some(Ok(config)) = entry.membership() {
            w.config_applied(node, entry.index, config);
        }
        let seen = (entry.term, crc(&entry.data));
        match w.applied.get(&entry.index) {
            Some(&first) if first != seen => {
                let message = format!(
                    "state machine safety: node {node} applied (term {}, crc {:08x}) at index {} where (term {}, crc {:08x}) was applied before",
                    entry.term, seen.1, entry.index, first.0, first.1
                );
                w.violate(message);
            }
            Some(_) => {}
            None => {
                w.applied.insert(entry.index, seen);
                w.check_leader_completeness();
            }
        }
    }

    fn log_recovered(&self, node: NodeId, snapshot: SnapshotMeta, entries: &[Entry]) {
        let mut w = self.0.lock().expect("white box");
        let committed = w.committed_terms(snapshot.index);
        w.logs.insert(node, committed);
        w.reset_configs(node, snapshot.index);
        w.state_at.insert(node, snapshot.index);
        w.write_log(node, entries);
        w.check_leader_completeness();
    }

    fn snapshot_taken(&self, node: NodeId, meta: SnapshotMeta, digest: u32) {
        let mut w = self.0.lock().expect("white box");
        w.snapshots_taken += 1;
        w.check_snapshot_digest(node, meta, digest, "took");
    }

    /// An installed snapshot must be one some node took, with the same
    /// state, and never older than the state it replaces.
    fn snapshot_installed(&self, node: NodeId, meta: SnapshotMeta, digest: u32) {
        let mut w = self.0.lock().expect("white box");
        w.snapshots_installed += 1;
        w.installed_at.push(now());
        if !w.snapshot_digests.contains_key(&meta.index) {
            let message = format!(
                "snapshot: node {node} installed a snapshot at {} that no node took",
                meta.index
            );
            w.violate(message);
        }
        w.check_snapshot_digest(node, meta, digest, "installed");
        let state_at = w.state_at.get(&node).copied().unwrap_or_default();
        if meta.index <= state_at {
            let message = format!(
                "snapshot: node {node} installed a snapshot at {} over its state at {state_at} (state machines never go back)",
                meta.index
            );
            w.violate(message);
        }
        w.state_at.insert(node, meta.index);
        let committed = w.committed_terms(meta.index);
        let log = w.logs.entry(node).or_default();
        let position = (meta.index.0 - 1) as usize;
        if log.get(position) == Some(&meta.term) {
            log[..=position].copy_from_slice(&committed);
            let after = w
                .configs
                .get_mut(&node)
                .map(|c| c.split_off(&LogIndex(meta.index.0 + 1)))
                .unwrap_or_default();
            w.reset_configs(node, meta.index);
            w.configs.entry(node).or_default().extend(after);
        } else {
            *log = committed;
            w.reset_configs(node, meta.index);
        }
        w.check_leader_completeness();
    }

    fn compacted(&self, _node: NodeId, _index: LogIndex) {
        let mut w = self.0.lock().expect("white box");
        w.compactions += 1;
        w.compacted_at.push(now());
    }

    fn log_written(&self, node: NodeId, entries: &[Entry]) {
        let mut w = self.0.lock().expect("white box");
        w.write_log(node, entries);
        w.check_leader_completeness();
    }

    /// The rules of single-server changes, as a leader appends: one
    /// change at a time, a configuration only once the one before it in
    /// its log is committed (two pending ones may together change two
    /// voters, and majorities of the committed configuration and of the
    /// newest one may not meet); and only after an entry of its own term
    /// committed.
    fn leader_appended(&self, node: NodeId, term: Term, commit: LogIndex, entries: &[Entry]) {
        let mut w = self.0.lock().expect("white box");
        for entry in entries.iter().filter(|e| e.term == term) {
            if entry.membership().is_none() {
                continue;
            }
            let before = w
                .configs
                .get(&node)
                .and_then(|c| c.range(..entry.index).next_back())
                .map_or(LogIndex(0), |(i, _)| *i);
            // Ongaro's 2015 fix: and only once an entry of its own term
            // is committed (else a configuration appended by a deposed
            // leader, never committed, may combine with this one).
            let commit_term = w
                .logs
                .get(&node)
                .and_then(|log| log.get((commit.0 as usize).checked_sub(1)?))
                .copied();
            if commit_term != Some(term) {
                let message = format!(
                    "configuration: leader {node} of term {term} appended a configuration at {} before committing an entry of its term (its commit index {commit} is of term {commit_term:?})",
                    entry.index
                );
                w.violate(message);
            }
            if before > commit {
                let message = format!(
                    "configuration: leader {node} of term {term} appended a configuration at {} while the one at {before} was not committed (its commit index {commit}): two changes pending",
                    entry.index
                );
                w.violate(message);
            }
        }
    }

    fn vote_granted(&self, node: NodeId, term: Term, candidate: NodeId) {
        let mut w = self.0.lock().expect("white box");
        w.votes.entry((term, candidate)).or_default().insert(node);
        // A vote is durable before it leaves: one per node and term, ever.
        match w.voted.get(&(node, term)) {
            Some(&other) if other != candidate => {
                let message = format!(
                    "election: node {node} voted for {other} and for {candidate} in term {term}"
                );
                w.violate(message);
            }
            Some(_) => {}
            None => {
                w.voted.insert((node, term), candidate);
            }
        }
    }

    fn acknowledged(&self, node: NodeId, term: Term, match_index: LogIndex) {
        let mut w = self.0.lock().expect("white box");
        let entry = w.acknowledged.entry(node).or_insert((term, match_index));
        if term > entry.0 {
            *entry = (term, match_index);
        } else if term == entry.0 {
            entry.1 = entry.1.max(match_index);
        }
    }

    /// What a node acknowledged to its term's leader it keeps for as long as
    /// that term lasts (only a newer leader may make it cut entries), crash
    /// and restart included: the leader counted on it to commit.
    fn log_changed(&self, node: NodeId, term: Term, last_index: LogIndex) {
        let mut w = self.0.lock().expect("white box");
        let Some(&(acked_term, acked_index)) = w.acknowledged.get(&node) else {
            return;
        };
        if term == acked_term && last_index < acked_index {
            let message = format!(
                "durability: node {node} acknowledged index {acked_index} in term {term}, but its log now ends at {last_index} in that term"
            );
            w.violate(message);
        }
    }

    /// The commit rule as a leader commits (Raft 5.4.2, figure 8): it
    /// counts replicas only for an entry of its own term, and older ones
    /// commit with it. An index a leader commits is of its term. Checked
    /// when the node led the same term before and after the move (a
    /// follower's commit and its election in one step of the driver are
    /// not told apart, and skipped).
    fn committed(&self, node: NodeId, index: LogIndex, led: Option<Term>) {
        let mut w = self.0.lock().expect("white box");
        w.commit_max = w.commit_max.max(index);
        if let Some(term) = led {
            let entry_term = w
                .logs
                .get(&node)
                .and_then(|log| log.get((index.0 as usize).checked_sub(1)?))
                .copied()
                .filter(|&t| t != Term(0));
            if let Some(entry_term) = entry_term.filter(|&t| t != term) {
                let message = format!(
                    "commit rule: leader {node} of term {term} committed index {index}, an entry of term {entry_term} (a leader counts replicas only for entries of its own term)"
                );
                w.violate(message);
            }
        }
    }

    fn role_changed(&self, node: NodeId, term: Term, role: Role) {
        let mut w = self.0.lock().expect("white box");
        w.roles.insert(node, (term, role));
        if w.term_rises.last().is_none_or(|&(_, max)| term > max) {
            w.term_rises.push((now(), term));
        }
        if role == Role::Leader {
            // A leader holds a quorum of the votes of its term from the
            // voters of its configuration, its own included.
            let config = w.config_of(node).clone();
            let mut voters = w.votes.get(&(term, node)).cloned().unwrap_or_default();
            voters.insert(node);
            voters.retain(|v| config.is_voter(*v));
            if !config.is_voter(node) || voters.len() < config.quorum() {
                let message = format!(
                    "election: node {node} leads term {term} with the votes of {voters:?} only (its configuration's voters are {:?})",
                    config.voters().collect::<Vec<_>>()
                );
                w.violate(message);
            }
            match w.leaders.get(&term) {
                Some(&other) if other != node => {
                    let message =
                        format!("election safety: nodes {other} and {node} both led term {term}");
                    w.violate(message);
                }
                Some(_) => {}
                None => {
                    w.leaders.insert(term, node);
                    w.elections.push((now(), term, node));
                }
            }
        }
    }
}

impl WhiteBoxObserver {
    /// An observer of a cluster that starts with these voters.
    pub fn new(voters: &[NodeId]) -> WhiteBoxObserver {
        let observer = WhiteBoxObserver::default();
        observer.0.lock().expect("white box").initial = Membership::bootstrap(voters);
        observer
    }

    /// The members (voters and learners) of the newest committed
    /// configuration.
    pub fn members(&self) -> Vec<NodeId> {
        let w = self.0.lock().expect("white box");
        let config = w
            .committed_configs
            .last_key_value()
            .map_or(&w.initial, |(_, c)| c);
        config.members.keys().copied().collect()
    }

    /// The newest committed configuration's (index, voters, learners).
    pub fn committed_config(&self) -> (LogIndex, Vec<NodeId>, Vec<NodeId>) {
        let w = self.0.lock().expect("white box");
        let (index, config) = w
            .committed_configs
            .last_key_value()
            .map_or((LogIndex(0), &w.initial), |(i, c)| (*i, c));
        (
            index,
            config.voters().collect(),
            config.learners().collect(),
        )
    }

    /// The highest index committed anywhere so far.
    pub fn commit_max(&self) -> LogIndex {
        self.0.lock().expect("white box").commit_max
    }

    /// The read oracle: a read invoked when `commit_at_invoke` was committed
    /// somewhere must reflect at least that index.
    pub fn check_read(&self, client: u64, key: &str, commit_at_invoke: LogIndex, applied: u64) {
        let mut w = self.0.lock().expect("white box");
        w.reads_checked += 1;
        if applied < commit_at_invoke.0 {
            let message = format!(
                "stale read: client {client} read {key} at applied index {applied}, but index {commit_at_invoke} was committed when the read was invoked"
            );
            w.violate(message);
        }
    }

    pub fn has_violations(&self) -> bool {
        !self.0.lock().expect("white box").violations.is_empty()
    }

    /// The leader of the highest term and that term, if a node reports leading.
    pub fn leader_and_term(&self) -> Option<(NodeId, Term)> {
        let w = self.0.lock().expect("white box");
        w.roles
            .iter()
            .filter(|(_, (_, role))| *role == Role::Leader)
            .max_by_key(|(_, (term, _))| *term)
            .map(|(node, (term, _))| (*node, *term))
    }

    /// The node that reports leading in the highest term.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader_and_term().map(|(node, _)| node)
    }
}

fn crc(data: &[u8]) -> u32 {
    // A small FNV-1a: enough to tell commands apart.
    let mut hash = 0x811C_9DC5u32;
    for &b in data {
        hash = (hash ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    hash
}

/// Late, reordered and duplicated peer messages, while `active`.
pub struct ChaosState {
    rng: StdRng,
    pub active: bool,
    pub delayed: u64,
    pub duplicated: u64,
}

/// The Jepsen test's [`MessageChaos`]: while active, each peer message is
/// held back (arriving after later ones) with probability `DELAY_P` and
/// delivered once more, later, with probability `DUPLICATE_P` (`VOTE_P`
/// each for vote requests and responses).
#[derive(Clone)]
pub struct SimChaos(pub Arc<Mutex<ChaosState>>);

impl SimChaos {
    const DELAY_P: f64 = 0.05;
    const DUPLICATE_P: f64 = 0.05;
    const VOTE_P: f64 = 0.3;
    const DELAY_MAX: Duration = Duration::from_millis(1500);

    pub fn new(seed: u64) -> SimChaos {
        SimChaos(Arc::new(Mutex::new(ChaosState {
            rng: StdRng::seed_from_u64(seed),
            active: false,
            delayed: 0,
            duplicated: 0,
        })))
    }

    pub fn set_active(&self, active: bool) {
        self.0.lock().expect("chaos").active = active;
    }
}

impl MessageChaos for SimChaos {
    fn arrived(&self, _node: NodeId, message: &PeerMessage) -> ChaosVerdict {
        let mut c = self.0.lock().expect("chaos");
        let mut verdict = ChaosVerdict::default();
        if !c.active {
            return verdict;
        }
        // Votes are few and their timing is what elections hinge on, and
        // snapshots are few and arrive late or twice only under load: shake
        // them harder.
        let is_vote = matches!(
            message,
            PeerMessage::RequestVote(_)
                | PeerMessage::RequestVoteResponse { .. }
                | PeerMessage::InstallSnapshot(..)
        );
        let p = if is_vote { Self::VOTE_P } else { Self::DELAY_P };
        if c.rng.random_bool(p) {
            c.delayed += 1;
            verdict.delay = Some(
                c.rng
                    .random_range(Duration::from_millis(10)..Self::DELAY_MAX),
            );
        }
        let p = if is_vote {
            Self::VOTE_P
        } else {
            Self::DUPLICATE_P
        };
        if c.rng.random_bool(p) {
            c.duplicated += 1;
            let after = c
                .rng
                .random_range(Duration::from_millis(10)..Self::DELAY_MAX);
            verdict.copies.push((after, message.clone()));
        }
        verdict
    }
}

thread_local! {
    /// Panics on this thread since the last [`take_panics`]: the simulation
    /// runs a whole cluster on one thread, and a node's task that panics
    /// (an invariant's `assert!`) would otherwise die unseen inside tokio.
    static PANICS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Records every panic of the process per thread (and still prints it).
pub fn capture_panics() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = match info.payload().downcast_ref::<&str>() {
                Some(s) => (*s).to_string(),
                None => info
                    .payload()
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_default(),
            };
            let place = info
                .location()
                .map_or(String::new(), |l| format!(" at {}:{}", l.file(), l.line()));
            PANICS.with(|p| p.borrow_mut().push(format!("{message}{place}")));
            default(info);
        }));
    });
}

/// How many panics this thread recorded since the last [`take_panics`].
pub fn panic_count() -> usize {
    PANICS.with(|p| p.borrow().len())
}

/// The panics recorded on this thread since the last call.
pub fn take_panics() -> Vec<String> {
    PANICS.with(|p| std::mem::take(&mut *p.borrow_mut()))
}
