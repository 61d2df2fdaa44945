//! Cluster membership: who votes, who only learns, and how to reach them.
//!
//! A configuration lives in the log as a whole: a configuration entry holds
//! the complete [`Membership`] it puts in force, not a delta, so the newest
//! configuration entry alone says who is in the cluster (and a snapshot
//! carries the one in force at its index). See the module documentation of
//! `crate::raft` for the rules of changing it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::NodeId;

/// The first byte of a configuration entry's data. A state machine command
/// never starts with it (the KV commands are protocol buffers whose first
/// byte is the tag of a field; 0xFF is no valid tag of theirs).
pub const CONFIG_ENTRY_MARKER: u8 = 0xFF;
const FORMAT_VERSION: u8 = 1;
/// Members a configuration may hold.
pub const MEMBERS_MAX: usize = 64;
/// Removed ids a configuration remembers (so that they are never reused).
pub const REMOVED_MAX: usize = u16::MAX as usize;
const ADDR_BYTES_MAX: usize = 256;

/// How to reach a member, and whether it votes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    /// The Raft peer address (`host:port`); empty if only the nodes' own
    /// start-up configuration knows it (a cluster that never changed).
    pub raft_addr: String,
    /// The client (KV and admin) address; empty likewise.
    pub kv_addr: String,
    /// A learner receives the log and snapshots but does not vote and does
    /// not count toward commit.
    pub is_learner: bool,
}

/// A configuration: its members, and the ids removed from the cluster
/// (never reused: a removed node that comes back must not count as the
/// member a new machine with its id became).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Membership {
    pub members: BTreeMap<NodeId, Member>,
    pub removed: BTreeSet<NodeId>,
}

/// One change of membership, as an operator asks for it (etcdctl member
/// add / promote / remove).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ConfChange {
    /// A new member: a learner (to be promoted once caught up), or a voter
    /// at once (it counts toward commit while it is still empty).
    Add {
        id: NodeId,
        raft_addr: String,
        kv_addr: String,
        is_learner: bool,
    },
    /// A learner becomes a voter.
    Promote(NodeId),
    /// A voter or learner leaves.
    Remove(NodeId),
}

impl ConfChange {
    pub fn node(&self) -> NodeId {
        match self {
            ConfChange::Add { id, .. } => *id,
            ConfChange::Promote(id) | ConfChange::Remove(id) => *id,
        }
    }
}

/// Why a membership change was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfChangeRejected {
    /// Only a leader changes the configuration.
    NotLeader(Option<NodeId>),
    /// Another change is in the log and not committed yet (one at a time).
    ChangePending,
    /// This leader has not committed an entry of its own term yet (the
    /// single-server change rule, Ongaro 2015): retry shortly.
    NotReady,
    /// A leadership transfer is under way.
    TransferInProgress,
    /// The id is 0, already a member, or was removed before (ids are never
    /// reused).
    IdTaken(NodeId),
    /// No such member (or, for a promotion, no such learner).
    UnknownNode(NodeId),
    /// A learner is promoted only once its log holds 90% of the leader's.
    LearnerBehind {
        id: NodeId,
        matched: u64,
        leader: u64,
    },
    /// The last voter cannot leave, and no configuration grows past
    /// `MEMBERS_MAX`.
    Invalid(String),
}

impl fmt::Display for ConfChangeRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfChangeRejected::NotLeader(Some(leader)) => {
                write!(f, "not the leader; node {leader} leads")
            }
            ConfChangeRejected::NotLeader(None) => write!(f, "not the leader; no leader known"),
            ConfChangeRejected::ChangePending => write!(
                f,
                "another membership change is not committed yet; one change at a time"
            ),
            ConfChangeRejected::NotReady => write!(
                f,
                "the leader has not committed an entry of its term yet; retry shortly"
            ),
            ConfChangeRejected::TransferInProgress => {
                write!(f, "a leadership transfer is under way; retry shortly")
            }
            ConfChangeRejected::IdTaken(id) => write!(
                f,
                "node id {id} is a member, was removed before, or is 0 (ids are never reused)"
            ),
            ConfChangeRejected::UnknownNode(id) => write!(f, "node {id} is not a member"),
            ConfChangeRejected::LearnerBehind {
                id,
                matched,
                leader,
            } => write!(
                f,
                "learner {id} holds the log up to {matched} of the leader's {leader}: \
                 it is promoted only once it holds 90%; retry when it caught up"
            ),
            ConfChangeRejected::Invalid(reason) => f.write_str(reason),
        }
    }
}

impl Membership {
    /// The configuration of a new cluster, from its nodes' start-up voter
    /// list (addresses are then known to each node's own configuration).
    pub fn bootstrap(voters: &[NodeId]) -> Membership {
        Membership {
            members: voters
                .iter()
                .map(|&id| {
                    (
                        id,
                        Member {
                            raft_addr: String::new(),
                            kv_addr: String::new(),
                            is_learner: false,
                        },
                    )
                })
                .collect(),
            removed: BTreeSet::new(),
        }
    }

    pub fn voters(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .filter(|(_, m)| !m.is_learner)
            .map(|(&id, _)| id)
    }

    pub fn learners(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .filter(|(_, m)| m.is_learner)
            .map(|(&id, _)| id)
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.members.get(&id).is_some_and(|m| !m.is_learner)
    }

    pub fn is_learner(&self, id: NodeId) -> bool {
        self.members.get(&id).is_some_and(|m| m.is_learner)
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.members.contains_key(&id)
    }

    /// Votes (or acknowledgements) that make a majority of the voters.
    pub fn quorum(&self) -> usize {
        self.voters().count() / 2 + 1
    }

    /// The configuration `change` leads to, or why it may not be made.
    /// (Whether it may be made now, the leader decides: see
    /// `Raft::propose_conf_change`.)
    pub fn changed(&self, change: &ConfChange) -> Result<Membership, ConfChangeRejected> {
        let mut next = self.clone();
        match change {
            ConfChange::Add {
                id,
                raft_addr,
                kv_addr,
                is_learner,
            } => {
                if id.0 == 0 || self.contains(*id) || self.removed.contains(id) {
                    return Err(ConfChangeRejected::IdTaken(*id));
                }
                if self.members.len() >= MEMBERS_MAX {
                    return Err(ConfChangeRejected::Invalid(format!(
                        "a cluster has at most {MEMBERS_MAX} members"
                    )));
                }
                validate_addr(raft_addr)?;
                validate_addr(kv_addr)?;
                next.members.insert(
                    *id,
                    Member {
                        raft_addr: raft_addr.clone(),
                        kv_addr: kv_addr.clone(),
                        is_learner: *is_learner,
                    },
                );
            }
            ConfChange::Promote(id) => match next.members.get_mut(id) {
                Some(member) if member.is_learner => member.is_learner = false,
                Some(_) => {
                    return Err(ConfChangeRejected::Invalid(format!(
                        "node {id} is a voter already"
                    )))
                }
                None => return Err(ConfChangeRejected::UnknownNode(*id)),
            },
            ConfChange::Remove(id) => {
                if next.members.remove(id).is_none() {
                    return Err(ConfChangeRejected::UnknownNode(*id));
                }
                if next.voters().next().is_none() {
                    return Err(ConfChangeRejected::Invalid(format!(
                        "node {id} is the last voter; it cannot be removed"
                    )));
                }
                if next.removed.len() >= REMOVED_MAX {
                    return Err(ConfChangeRejected::Invalid(format!(
                        "a cluster remembers at most {REMOVED_MAX} removed ids"
                    )));
                }
                next.removed.insert(*id);
            }
        }
        Ok(next)
    }

    /// The data of the configuration entry that puts this in force:
    /// [`CONFIG_ENTRY_MARKER`], a version, then little endian: member
    /// count: u16, per member id: u64, learner: u8, raft address and KV
    /// address (each length: u16, bytes); removed count: u16, ids: u64.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![CONFIG_ENTRY_MARKER, FORMAT_VERSION];
        out.extend_from_slice(&(self.members.len() as u16).to_le_bytes());
        for (id, member) in &self.members {
            out.extend_from_slice(&id.0.to_le_bytes());
            out.push(u8::from(member.is_learner));
            for addr in [&member.raft_addr, &member.kv_addr] {
                out.extend_from_slice(&(addr.len() as u16).to_le_bytes());
                out.extend_from_slice(addr.as_bytes());
            }
        }
        out.extend_from_slice(&(self.removed.len() as u16).to_le_bytes());
        for id in &self.removed {
            out.extend_from_slice(&id.0.to_le_bytes());
        }
        out
    }

    /// Whether `data` is a configuration entry's (decoded or not).
    pub fn is_config_entry(data: &[u8]) -> bool {
        data.first() == Some(&CONFIG_ENTRY_MARKER)
    }

    /// Reads what [`Membership::encode`] wrote. Anything malformed is an
    /// error, never a panic.
    pub fn decode(data: &[u8]) -> Result<Membership, String> {
        let mut reader = Reader { data, at: 0 };
        if reader.u8()? != CONFIG_ENTRY_MARKER {
            return Err("not a configuration entry".into());
        }
        let version = reader.u8()?;
        if version != FORMAT_VERSION {
            return Err(format!("configuration format version {version} is unknown"));
        }
        let mut membership = Membership::default();
        let members = reader.u16()? as usize;
        if members == 0 || members > MEMBERS_MAX {
            return Err(format!("{members} members"));
        }
        for _ in 0..members {
            let id = NodeId(reader.u64()?);
            let is_learner = match reader.u8()? {
                0 => false,
                1 => true,
                other => return Err(format!("learner flag {other}")),
            };
            let raft_addr = reader.string()?;
            let kv_addr = reader.string()?;
            let member = Member {
                raft_addr,
                kv_addr,
                is_learner,
            };
            if id.0 == 0 || membership.members.insert(id, member).is_some() {
                return Err(format!("member id {id} is 0 or repeated"));
            }
        }
        if membership.voters().next().is_none() {
            return Err("a configuration without voters".into());
        }
        let removed = reader.u16()? as usize;
        for _ in 0..removed {
            let id = NodeId(reader.u64()?);
            if membership.contains(id) || !membership.removed.insert(id) {
                return Err(format!("removed id {id} is a member or repeated"));
            }
        }
        if reader.at != data.len() {
            return Err(format!(
                "{} bytes after the configuration",
                data.len() - reader.at
            ));
        }
        Ok(membership)
    }
}

impl fmt::Display for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let voters: Vec<String> = self.voters().map(|id| id.to_string()).collect();
        let learners: Vec<String> = self.learners().map(|id| id.to_string()).collect();
        write!(f, "voters {{{}}}", voters.join(","))?;
        if !learners.is_empty() {
            write!(f, " learners {{{}}}", learners.join(","))?;
        }
        Ok(())
    }
}

fn validate_addr(addr: &str) -> Result<(), ConfChangeRejected> {
    if addr.is_empty() || addr.len() > ADDR_BYTES_MAX || addr.chars().any(char::is_whitespace) {
        return Err(ConfChangeRejected::Invalid(format!(
            "address {addr:?} must be host:port, 1 to {ADDR_BYTES_MAX} bytes, no spaces"
        )));
    }
    Ok(())
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.data.len())
            .ok_or_else(|| format!("configuration truncated at byte {}", self.at))?;
        let bytes = &self.data[self.at..end];
        self.at = end;
        Ok(bytes)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn string(&mut self) -> Result<String, String> {
        let len = self.u16()? as usize;
        if len > ADDR_BYTES_MAX {
            return Err(format!("an address of {len} bytes"));
        }
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| "an address is not UTF-8".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(id: u64) -> ConfChange {
        ConfChange::Add {
            id: NodeId(id),
            raft_addr: format!("127.0.0.{id}:7001"),
            kv_addr: format!("127.0.0.{id}:7002"),
            is_learner: true,
        }
    }

    #[test]
    fn add_promote_remove_and_ids_are_never_reused() {
        let m = Membership::bootstrap(&[NodeId(1), NodeId(2), NodeId(3)]);
        assert_eq!(m.quorum(), 2);
        let m = m.changed(&add(4)).unwrap();
        assert!(m.is_learner(NodeId(4)));
        assert_eq!(m.quorum(), 2, "a learner does not count");
        assert_eq!(
            m.changed(&add(4)),
            Err(ConfChangeRejected::IdTaken(NodeId(4)))
        );
        let m = m.changed(&ConfChange::Promote(NodeId(4))).unwrap();
        assert_eq!(m.quorum(), 3);
        let m = m.changed(&ConfChange::Remove(NodeId(1))).unwrap();
        assert_eq!(
            m.voters().collect::<Vec<_>>(),
            [NodeId(2), NodeId(3), NodeId(4)]
        );
        assert_eq!(
            m.changed(&add(1)),
            Err(ConfChangeRejected::IdTaken(NodeId(1)))
        );
        assert_eq!(
            m.changed(&ConfChange::Remove(NodeId(1))),
            Err(ConfChangeRejected::UnknownNode(NodeId(1)))
        );
        assert_eq!(
            m.changed(&ConfChange::Promote(NodeId(9))),
            Err(ConfChangeRejected::UnknownNode(NodeId(9)))
        );
        let last = Membership::bootstrap(&[NodeId(7)]);
        assert!(matches!(
            last.changed(&ConfChange::Remove(NodeId(7))),
            Err(ConfChangeRejected::Invalid(_))
        ));
    }

    #[test]
    fn encoding_round_trips_and_garbage_is_an_error() {
        let m = Membership::bootstrap(&[NodeId(1), NodeId(2)])
            .changed(&add(3))
            .unwrap()
            .changed(&ConfChange::Remove(NodeId(1)))
            .unwrap();
        let bytes = m.encode();
        assert!(Membership::is_config_entry(&bytes));
        assert_eq!(Membership::decode(&bytes).unwrap(), m);
        // Every truncation and every single-byte corruption is an error or
        // another valid configuration, never a panic.
        for len in 0..bytes.len() {
            assert!(
                Membership::decode(&bytes[..len]).is_err(),
                "truncated at {len}"
            );
        }
        let mut errors = Vec::new();
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x5A;
            if Membership::decode(&bad).is_err() {
                errors.push(at);
            }
        }
        // The marker, the version and the counts are checked; an address
        // byte may change into another valid address.
        assert!(errors.starts_with(&[0, 1, 2, 3]), "refused at {errors:?}");
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Membership::decode(&longer).is_err());
        assert!(Membership::decode(&[CONFIG_ENTRY_MARKER, 9]).is_err());
    }

    #[test]
    fn damaged_configurations_are_errors_or_valid_configurations() {
        use rand::{rngs::StdRng, SeedableRng};
        let valid = Membership::bootstrap(&[NodeId(1), NodeId(2)])
            .changed(&add(3))
            .unwrap()
            .changed(&ConfChange::Remove(NodeId(1)))
            .unwrap()
            .encode();
        let mut rng = StdRng::seed_from_u64(21);
        let (mut errors, mut decoded) = (0, 0);
        for case in 0..20_000 {
            let damaged = crate::mutate::damaged(&mut rng, &valid);
            match Membership::decode(&damaged) {
                Ok(m) => {
                    assert_eq!(Membership::decode(&m.encode()), Ok(m), "case {case}");
                    decoded += 1;
                }
                Err(_) => errors += 1,
            }
        }
        assert!(errors > 15_000 && decoded > 0, "{errors} / {decoded}");
    }
}
