//! Linearizable reads (ReadIndex): a read waits for the core to confirm
//! this node still leads (a quorum round begun after the read arrived), then
//! for the state machine to reach the read's index, and is served there.

use tokio::sync::oneshot;

use super::driver::Driver;
use crate::mailbox::ReadValue;
use crate::planted::{is_planted, Bug};
use crate::raft::{self, ReadState, Term};
use crate::{Error, Result};

pub(super) struct PendingRead {
    pub(super) key: Vec<u8>,
    pub(super) reply: oneshot::Sender<Result<ReadValue>>,
    /// The read's ReadIndex context and the term it arrived in (for the
    /// observer, which checks what confirmed it).
    pub(super) context: u64,
    pub(super) term: Term,
}

impl Driver {
    pub(super) fn read(&mut self, key: Vec<u8>, reply: oneshot::Sender<Result<ReadValue>>) {
        if self.unsafe_local_reads {
            let _ = reply.send(Ok(ReadValue {
                value: self.kv.get(&key).map(<[u8]>::to_vec),
                applied_index: self.kv.applied(),
            }));
            return;
        }
        let context = self.read_context_next;
        self.read_context_next += 1;
        match self.raft.read_index(context) {
            Ok(()) => {
                let term = self.raft.term();
                if let Some(observer) = &self.observer {
                    observer.0.read_started(self.raft.id(), term, context);
                }
                self.reads.insert(
                    context,
                    PendingRead {
                        key,
                        reply,
                        context,
                        term,
                    },
                );
            }
            Err(raft::ReadRejected::NotLeader(raft::NotLeader { leader })) => {
                self.metrics.read_indexes_failed.inc();
                let _ = reply.send(Err(Error::NotLeader {
                    leader: leader.and_then(|l| self.kv_addr_of(l)),
                }));
            }
            Err(raft::ReadRejected::NotReady) => {
                self.metrics.read_indexes_failed.inc();
                let _ = reply.send(Err(Error::Unavailable(
                    "new leader has not committed an entry of its term yet".into(),
                )));
            }
        }
    }

    /// The core confirmed some reads (they wait for the state machine to
    /// reach their index) and dropped others (this node stopped leading).
    pub(super) fn reads_confirmed(&mut self, dropped: Vec<u64>, confirmed: Vec<ReadState>) {
        for context in dropped {
            if let Some(read) = self.reads.remove(&context) {
                self.metrics.read_indexes_failed.inc();
                let _ = read.reply.send(Err(self.not_leader()));
            }
        }
        for read_state in confirmed {
            if let Some(read) = self.reads.remove(&read_state.context) {
                self.reads_waiting
                    .entry(read_state.index)
                    .or_default()
                    .push(read);
            }
        }
    }

    /// Answers every confirmed read whose index the state machine reached.
    pub(super) fn serve_reads(&mut self) {
        let applied = self.kv.applied();
        while let Some(entry) = self.reads_waiting.first_entry() {
            if *entry.key() > applied && !is_planted(Bug::ReadServedBeforeApplied) {
                break;
            }
            for read in entry.remove() {
                if let Some(observer) = &self.observer {
                    observer
                        .0
                        .read_served(self.raft.id(), read.term, read.context);
                }
                let value = self.kv.get(&read.key).map(<[u8]>::to_vec);
                let _ = read.reply.send(Ok(ReadValue {
                    value,
                    applied_index: applied,
                }));
            }
        }
    }
}
