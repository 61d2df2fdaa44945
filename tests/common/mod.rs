//! The simulation seams for the Jepsen test: turmoil's network behind
//! `lattice::transport::Transport`, a simulated disk behind
//! `lattice::storage::Storage` that survives a crash but loses what was not
//! synced, and a white-box observer of every node.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lattice::raft::{Entry, HardState, LogIndex, NodeId, Role, Term};
use lattice::server::Observer;
use lattice::storage::Storage;
use lattice::transport::{BoxFuture, Connection, Listener, Transport};

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
        loop {
            let accepted = listener
                .accept()
                .await
                .map(|(stream, _)| Connection::new(stream));
            if sender.send(accepted).await.is_err() {
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))
}

/// One node's disk: what is durable, and writes not yet synced.
#[derive(Default)]
pub struct SimDisk {
    hard_state: HardState,
    durable: Vec<Entry>,
    /// Unsynced appends, oldest first: (when, entries). Each truncates from
    /// its first index, then extends.
    pending: Vec<(Duration, Vec<Entry>)>,
    /// Appends made durable by the "operating system" this long after they
    /// were written even without a sync (writeback); `None`: only `sync` does.
    writeback_after: Option<Duration>,
}

fn apply_append(log: &mut Vec<Entry>, entries: &[Entry]) {
    if let Some(first) = entries.first() {
        log.truncate(first.index.0 as usize - 1);
        log.extend_from_slice(entries);
    }
}

impl SimDisk {
    pub fn new(writeback_after: Option<Duration>) -> Arc<Mutex<SimDisk>> {
        Arc::new(Mutex::new(SimDisk {
            writeback_after,
            ..SimDisk::default()
        }))
    }

    /// The machine lost power: unsynced writes are gone.
    pub fn crash(&mut self) -> usize {
        let lost = self.pending.iter().map(|(_, e)| e.len()).sum();
        self.pending.clear();
        lost
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
        for (_, entries) in self.pending.drain(..cut) {
            apply_append(&mut self.durable, &entries);
        }
    }

    fn view(&self) -> Vec<Entry> {
        let mut log = self.durable.clone();
        for (_, entries) in &self.pending {
            apply_append(&mut log, entries);
        }
        log
    }
}

/// A node incarnation's handle on its disk.
pub struct SimStorage {
    disk: Arc<Mutex<SimDisk>>,
    last_index: LogIndex,
}

impl SimStorage {
    /// Opens the disk as a restarted process would: durable state only.
    pub fn open(disk: Arc<Mutex<SimDisk>>) -> SimStorage {
        let last_index = {
            let mut d = disk.lock().expect("disk");
            d.crash();
            LogIndex(d.durable.len() as u64)
        };
        SimStorage { disk, last_index }
    }
}

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

impl Storage for SimStorage {
    fn recovered(&mut self) -> (HardState, Vec<Entry>) {
        let d = self.disk.lock().expect("disk");
        (d.hard_state, d.durable.clone())
    }
    fn save_hard_state(&mut self, hard_state: HardState) -> lattice::Result<()> {
        self.disk.lock().expect("disk").hard_state = hard_state;
        Ok(())
    }
    fn append(&mut self, entries: &[Entry]) -> lattice::Result<()> {
        let mut d = self.disk.lock().expect("disk");
        d.flush_older_than(now());
        if let Some(last) = entries.last() {
            self.last_index = last.index;
        }
        d.pending.push((now(), entries.to_vec()));
        Ok(())
    }
    fn sync(&mut self) -> lattice::Result<()> {
        let mut d = self.disk.lock().expect("disk");
        let pending = std::mem::take(&mut d.pending);
        for (_, entries) in pending {
            apply_append(&mut d.durable, &entries);
        }
        Ok(())
    }
    fn last_index(&self) -> LogIndex {
        self.last_index
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
    pub violations: Vec<String>,
    pub applies: u64,
}

/// The observer the nodes report to.
#[derive(Clone, Default)]
pub struct WhiteBoxObserver(pub Arc<Mutex<WhiteBox>>);

impl Observer for WhiteBoxObserver {
    fn applied(&self, node: NodeId, entry: &Entry) {
        let mut w = self.0.lock().expect("white box");
        w.applies += 1;
        let seen = (entry.term, crc(&entry.data));
        match w.applied.get(&entry.index) {
            Some(&first) if first != seen => {
                let message = format!(
                    "state machine safety: node {node} applied (term {}, crc {:08x}) at index {} where (term {}, crc {:08x}) was applied before",
                    entry.term, seen.1, entry.index, first.0, first.1
                );
                w.violations.push(message);
            }
            Some(_) => {}
            None => {
                w.applied.insert(entry.index, seen);
            }
        }
    }

    fn role_changed(&self, node: NodeId, term: Term, role: Role) {
        let mut w = self.0.lock().expect("white box");
        w.roles.insert(node, (term, role));
        if role == Role::Leader {
            match w.leaders.get(&term) {
                Some(&other) if other != node => {
                    let message =
                        format!("election safety: nodes {other} and {node} both led term {term}");
                    w.violations.push(message);
                }
                Some(_) => {}
                None => {
                    w.leaders.insert(term, node);
                }
            }
        }
    }
}

impl WhiteBoxObserver {
    /// The node that most recently reported leading, in the highest term.
    pub fn leader(&self) -> Option<NodeId> {
        let w = self.0.lock().expect("white box");
        w.roles
            .iter()
            .filter(|(_, (_, role))| *role == Role::Leader)
            .max_by_key(|(_, (term, _))| *term)
            .map(|(node, _)| *node)
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
