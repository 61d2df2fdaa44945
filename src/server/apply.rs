//! Client commands: proposing them to the core, applying committed entries
//! to the state machine in order, and answering each proposal made here with
//! its outcome (or with why it will never have one).

use tokio::sync::oneshot;

use super::driver::Driver;
use crate::kv::{Command, Outcome};
use crate::mailbox::Members;
use crate::raft::{self, Term};
use crate::{Error, Result};

pub(super) struct Proposal {
    pub(super) term: Term,
    pub(super) reply: oneshot::Sender<Result<Outcome>>,
}

impl Driver {
    pub(super) fn propose(&mut self, command: Command, reply: oneshot::Sender<Result<Outcome>>) {
        if self.is_draining {
            self.metrics.proposals_failed.inc();
            let leader = self.raft.leader().filter(|&l| l != self.raft.id());
            let _ = reply.send(Err(Error::NotLeader {
                leader: leader.and_then(|l| self.kv_addr_of(l)),
            }));
            return;
        }
        match self.raft.propose(command.encode()) {
            Ok(index) => {
                let proposal = Proposal {
                    term: self.raft.term(),
                    reply,
                };
                if let Some(old) = self.proposals.insert(index, proposal) {
                    // An older proposal at this index was truncated away here,
                    // but another node may still commit it.
                    self.metrics.proposals_failed.inc();
                    let _ = old.reply.send(Err(Error::Indeterminate(
                        "leadership changed while the command was in flight".into(),
                    )));
                }
            }
            // During a leadership transfer, the hint is the target.
            Err(raft::NotLeader { leader }) => {
                self.metrics.proposals_failed.inc();
                let _ = reply.send(Err(Error::NotLeader {
                    leader: leader.and_then(|l| self.kv_addr_of(l)),
                }));
            }
        }
    }

    /// Applies committed entries in order and answers what waited for them:
    /// the proposal made here at each index, and a membership change.
    pub(super) fn apply_committed(&mut self, committed: Vec<raft::Entry>) {
        self.metrics
            .proposals_applied
            .inc_by(committed.len() as u64);
        for entry in committed {
            self.bytes_since_snapshot += entry.data.len() as u64;
            let outcome = self.kv.apply(&entry);
            if let Some(observer) = &self.observer {
                observer.0.applied(self.raft.id(), &entry);
                observer
                    .0
                    .sessions_at(self.raft.id(), entry.index, self.kv.sessions_digest());
            }
            if let Some(waiter) = self.conf_changes.remove(&entry.index) {
                let answer = if waiter.term == entry.term {
                    Ok(Members {
                        leader: self.raft.id(),
                        index: entry.index,
                        is_committed: true,
                        membership: self.kv.membership().cloned().unwrap_or_default(),
                    })
                } else {
                    Err(Error::Unavailable(format!(
                        "the change was overwritten at index {} by a new leader; it did not happen",
                        entry.index
                    )))
                };
                let _ = waiter.reply.send(answer);
            }
            if entry.membership().is_some() {
                self.membership_applied(entry.index);
            }
            if let Some(proposal) = self.proposals.remove(&entry.index) {
                let answer = if proposal.term == entry.term {
                    outcome
                        .ok_or_else(|| Error::Indeterminate("no-op in place of a command".into()))
                } else {
                    self.metrics.proposals_failed.inc();
                    Err(Error::Unavailable(format!(
                        "the command was overwritten at index {} by a new leader and will never apply",
                        entry.index
                    )))
                };
                let _ = proposal.reply.send(answer);
            }
        }
    }
}
