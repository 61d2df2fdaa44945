//! The node around the raft core: one driver task owns the core, ticks it,
//! feeds it peer messages and client requests, and carries out each `Ready`
//! in the order the core states it; a disk task syncs writes in the
//! background, once for many. [`Node::start`] wires a node together.
//!
//! One file per concern:
//! - `config`: [`NodeConfig`], its defaults and validation;
//! - `node`: the assembly ([`Node::start_with`]) and the handle a process
//!   holds ([`Node`]);
//! - `driver`: the loop and the `Ready` it carries out;
//! - `apply`: client commands proposed, applied and answered;
//! - `reads`: linearizable reads (ReadIndex);
//! - `membership`: configuration changes, peer tasks, a removed node
//!   stopping;
//! - `snapshots`: taking, installing and compacting;
//! - `disk`: the disk task (writes and syncs off the driver);
//! - `hooks`: the simulation's [`Observer`] and [`MessageChaos`].
//!
//! What the driver is asked and what it tells (its inbox's inputs, its
//! status, the request helpers) is [`crate::mailbox`], which the transport
//! and the metrics import instead of this module.

mod apply;
mod config;
mod disk;
mod driver;
mod hooks;
mod membership;
mod node;
mod reads;
mod snapshots;

pub use crate::mailbox::{MemberRole, Members, PeerConfig, StateSummary, Status};
pub use config::NodeConfig;
pub use hooks::{ChaosHandle, ChaosVerdict, MessageChaos, Observer, ObserverHandle, PeerMessage};
pub use node::Node;
