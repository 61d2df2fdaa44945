//! Snapshots: every snapshot at an index, taken or installed, has one state
//! digest; an installed one is one some node took; no state machine moves
//! back.

use lattice::raft::{LogIndex, NodeId, SnapshotMeta};

use super::WhiteBox;
use crate::sim::now;

pub(super) fn snapshot_taken(w: &mut WhiteBox, node: NodeId, meta: SnapshotMeta, digest: u32) {
    w.snapshots_taken += 1;
    w.check_snapshot_digest(node, meta, digest, "took");
}

/// An installed snapshot must be one some node took, with the same
/// state, and never older than the state it replaces.
pub(super) fn snapshot_installed(w: &mut WhiteBox, node: NodeId, meta: SnapshotMeta, digest: u32) {
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

pub(super) fn compacted(w: &mut WhiteBox, _node: NodeId, _index: LogIndex) {
    w.compactions += 1;
    w.compacted_at.push(now());
}

impl WhiteBox {
    /// A snapshot's digest against every other one at its index.
    pub(super) fn check_snapshot_digest(
        &mut self,
        node: NodeId,
        meta: SnapshotMeta,
        digest: u32,
        what: &str,
    ) {
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
}
