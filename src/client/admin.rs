//! Administration through the `Admin` service: each endpoint's view of the
//! cluster (`lattice endpoint status`, as etcdctl's), leadership transfer
//! (`lattice move-leader`) and membership (`lattice member list / add /
//! promote / remove`).

use std::time::Duration;

use crate::proto::admin_client::AdminClient;
use crate::proto::{self};
use crate::raft::{ConfChange, LogIndex, Member, Membership, NodeId, Term};
use crate::transport::{self, status_to_error};
use crate::{Error, Result};

use super::Client;

/// One node's view of the cluster, as its `Admin.Status` tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointStatus {
    pub endpoint: String,
    pub id: NodeId,
    /// "follower", "pre-candidate", "candidate" or "leader".
    pub role: String,
    pub term: Term,
    pub leader: Option<NodeId>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_index: u64,
    pub snapshot_index: u64,
    /// "voter", "learner" or "none" (joining, or removed).
    pub membership: String,
    /// Entries held in its log (after compaction).
    pub log_entries: u64,
}

/// The cluster's configuration, as its leader answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberList {
    pub leader: NodeId,
    /// The configuration entry's index (0: the bootstrap configuration).
    pub index: LogIndex,
    pub is_committed: bool,
    pub membership: Membership,
}

impl MemberList {
    fn from_proto(response: proto::MemberListResponse) -> MemberList {
        let mut membership = Membership::default();
        for member in response.members {
            membership.members.insert(
                NodeId(member.id),
                Member {
                    raft_addr: member.raft_addr,
                    kv_addr: member.kv_addr,
                    is_learner: member.learner,
                },
            );
        }
        membership.removed = response.removed.into_iter().map(NodeId).collect();
        MemberList {
            leader: NodeId(response.leader),
            index: LogIndex(response.config_index),
            is_committed: response.committed,
            membership,
        }
    }
}

impl Client {
    fn admin(&self, endpoint: &str) -> Result<AdminClient<tonic::transport::Channel>> {
        let channel = transport::channel(self.transport.clone(), endpoint, &self.channel_config)?;
        Ok(AdminClient::new(channel))
    }

    /// Every endpoint's status, in the order the endpoints were given (an
    /// endpoint that does not answer gives its error).
    pub async fn statuses(&self) -> Vec<(String, Result<EndpointStatus>)> {
        let mut statuses = Vec::new();
        for endpoint in &self.endpoints {
            let addr = endpoint.addr.clone();
            let status = self.status_of(&addr).await;
            statuses.push((addr, status));
        }
        statuses
    }

    async fn status_of(&self, endpoint: &str) -> Result<EndpointStatus> {
        let response = self
            .admin(endpoint)?
            .status(proto::StatusRequest {})
            .await
            .map_err(|s| status_to_error(&s))?
            .into_inner();
        Ok(EndpointStatus {
            endpoint: endpoint.to_string(),
            id: NodeId(response.id),
            role: response.role,
            term: Term(response.term),
            leader: (response.leader != 0).then_some(NodeId(response.leader)),
            commit_index: response.commit_index,
            applied_index: response.applied_index,
            last_index: response.last_index,
            snapshot_index: response.snapshot_index,
            membership: response.membership,
            log_entries: response.log_entries,
        })
    }

    /// The endpoint of the node that says it leads in the highest term.
    async fn leader_status(&self) -> Option<EndpointStatus> {
        self.statuses()
            .await
            .into_iter()
            .filter_map(|(_, status)| status.ok())
            .filter(|s| s.role == "leader")
            .max_by_key(|s| s.term)
    }

    /// Runs `call` against the leader, retrying while no leader is known
    /// or the one asked no longer leads, until `timeout`.
    async fn at_leader<T, F, Fut>(&self, timeout: Duration, call: F) -> Result<T>
    where
        F: Fn(AdminClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut hint: Option<String> = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            // The leader a refusal named (which need not be among the
            // endpoints: a node added since), else the endpoint that says
            // it leads, else each endpoint in turn (a refusal names the
            // leader).
            let target = match hint.take() {
                Some(hint) => Some(hint),
                None => match self.leader_status().await {
                    Some(leader) => Some(leader.endpoint),
                    None => self
                        .endpoints
                        .get(attempt % self.endpoints.len().max(1))
                        .map(|e| e.addr.clone()),
                },
            };
            let error = match target {
                Some(endpoint) => match call(self.admin(&endpoint)?).await {
                    Ok(answer) => return Ok(answer),
                    Err(status) => status_to_error(&status),
                },
                None => Error::Unavailable("no endpoint says it leads".into()),
            };
            if let Error::NotLeader { leader: Some(addr) } = &error {
                hint = Some(addr.clone());
                if tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
            let is_retryable = matches!(error, Error::NotLeader { .. } | Error::Unavailable(_));
            if !is_retryable || tokio::time::Instant::now() >= deadline {
                return Err(error);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The configuration in force, from the leader (etcdctl member list).
    pub async fn members(&self, timeout: Duration) -> Result<MemberList> {
        self.at_leader(timeout, |mut admin| async move {
            let response = admin.member_list(proto::MemberListRequest {}).await?;
            Ok(MemberList::from_proto(response.into_inner()))
        })
        .await
    }

    /// Learns the cluster's endpoints from its member list: every member's
    /// KV address becomes an endpoint of this client (those it had stay).
    /// Returns how many endpoints it has now.
    pub async fn learn_endpoints(&mut self, timeout: Duration) -> Result<usize> {
        let members = self.members(timeout).await?;
        for member in members.membership.members.values() {
            if !member.kv_addr.is_empty() {
                self.endpoint_index(&member.kv_addr)?;
            }
        }
        Ok(self.endpoints.len())
    }

    /// Makes one membership change at the leader; answers once it is
    /// committed, with the configuration then in force. Retries while the
    /// leader is busy (another change pending, a learner still catching
    /// up) until `timeout`.
    pub async fn change_membership(
        &self,
        change: ConfChange,
        timeout: Duration,
    ) -> Result<MemberList> {
        self.at_leader(timeout, |mut admin| {
            let change = change.clone();
            async move {
                let response = match change {
                    ConfChange::Add {
                        id,
                        raft_addr,
                        kv_addr,
                        is_learner,
                    } => {
                        admin
                            .member_add(proto::MemberAddRequest {
                                id: id.0,
                                raft_addr,
                                kv_addr,
                                learner: is_learner,
                            })
                            .await?
                    }
                    ConfChange::Promote(id) => {
                        admin
                            .member_promote(proto::MemberPromoteRequest { id: id.0 })
                            .await?
                    }
                    ConfChange::Remove(id) => {
                        admin
                            .member_remove(proto::MemberRemoveRequest { id: id.0 })
                            .await?
                    }
                };
                Ok(MemberList::from_proto(response.into_inner()))
            }
        })
        .await
    }

    /// Hands leadership to `target` (`None`: the most up-to-date follower).
    /// Finds the leader among the endpoints (the one that says it leads in
    /// the highest term), asks it, and returns who leads after, in which
    /// term. Retries while no leader is known, until `timeout`.
    pub async fn move_leader(
        &self,
        target: Option<NodeId>,
        timeout: Duration,
    ) -> Result<(NodeId, Term)> {
        let request = proto::MoveLeaderRequest {
            target: target.map_or(0, |t| t.0),
        };
        self.at_leader(timeout, |mut admin| async move {
            let response = admin.move_leader(request).await?.into_inner();
            Ok((NodeId(response.leader), Term(response.term)))
        })
        .await
    }
}
