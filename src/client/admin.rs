//! Administration through the `Admin` service: each endpoint's view of the
//! cluster (`lattice status`, etcdctl's `endpoint status`) and leadership
//! transfer (`lattice move-leader`, etcdctl's `move-leader`).

use std::time::Duration;

use crate::proto::admin_client::AdminClient;
use crate::proto::{self};
use crate::raft::{NodeId, Term};
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
}

impl Client {
    fn admin(&self, endpoint: &str) -> Result<AdminClient<tonic::transport::Channel>> {
        let channel = transport::channel(self.transport.clone(), endpoint, self.channel_config)?;
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
        })
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
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let leader = self
                .statuses()
                .await
                .into_iter()
                .filter_map(|(_, status)| status.ok())
                .filter(|s| s.role == "leader")
                .max_by_key(|s| s.term);
            let error = match leader {
                Some(leader) if Some(leader.id) == target => {
                    return Ok((leader.id, leader.term));
                }
                Some(leader) => {
                    let request = proto::MoveLeaderRequest {
                        target: target.map_or(0, |t| t.0),
                    };
                    match self.admin(&leader.endpoint)?.move_leader(request).await {
                        Ok(response) => {
                            let response = response.into_inner();
                            return Ok((NodeId(response.leader), Term(response.term)));
                        }
                        Err(status) => status_to_error(&status),
                    }
                }
                None => Error::Unavailable("no endpoint says it leads".into()),
            };
            let is_retryable = matches!(error, Error::NotLeader { .. } | Error::Unavailable(_));
            if !is_retryable || tokio::time::Instant::now() >= deadline {
                return Err(error);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
