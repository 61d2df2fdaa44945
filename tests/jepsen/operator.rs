//! The operator host: during the `MembershipChurn` windows it changes the
//! membership through the client library, as `lattice member` does.

use std::sync::Arc;
use std::time::Duration;

use lattice::raft::ConfChange;
use lattice::{Client, ClientConfig, NodeId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::add_change;
use crate::faults::{FaultKind, ScheduledFault};
use crate::sim::network::TurmoilTransport;
use crate::sim::now;
use crate::workload::kv_endpoint;
use crate::{FOUNDERS, POOL, VOTERS_MAX, VOTERS_MIN};

pub(crate) fn log_change(change: &ConfChange, result: &lattice::Result<()>) {
    match result {
        Ok(()) => tracing::info!(?change, "operator: membership changed"),
        Err(e) => tracing::info!(?change, error = %e, "operator: membership change failed"),
    }
}

/// An operator changing the membership during the `MembershipChurn`
/// windows of `faults`, one change at a time as `lattice member` does
/// (each answers once committed), keeping 3 to 5 voters: adds a spare
/// machine as a learner (sometimes at once as a voter), promotes a learner
/// (refused until it has caught up: it retries), removes a learner or a
/// voter (the leader too). It reads the member list before each step, so
/// a change whose outcome it did not learn is seen (or not) in the next.
pub(crate) async fn operator(seed: u64, faults: Vec<ScheduledFault>) -> turmoil::Result {
    let all: Vec<String> = (1..=POOL).map(kv_endpoint).collect();
    let config = ClientConfig {
        client_id: Some(999),
        operation_timeout: Duration::from_secs(3),
        rpc_timeout: Duration::from_millis(1000),
        connect_timeout: Duration::from_millis(300),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(400),
        follow_leader_hints: true,
        tls: None,
    };
    let client = Client::with_config(&all, config, Arc::new(TurmoilTransport))?;
    let mut rng = StdRng::seed_from_u64(seed ^ 0x0FE4_A702);
    let mut mistakes = StdRng::seed_from_u64(seed ^ 0x0FE4_0BAD);
    // An operator's mistakes are part of the swarm schedule only
    // (`crate::swarm`): in the default one they move the two seeds that
    // catch StaleVoteCounted, and it is missed.
    let is_mistaken = crate::swarm::is_on();
    for fault in faults.iter().filter(|f| {
        f.kind == FaultKind::MembershipChurn
            || (is_mistaken && f.kind == FaultKind::MoveLeaderRepeatedly)
    }) {
        let end = fault.at + fault.duration;
        tokio::time::sleep(fault.at.saturating_sub(now())).await;
        if fault.kind == FaultKind::MoveLeaderRepeatedly {
            mistaken_promotions(&client, &mut mistakes, end).await?;
            continue;
        }
        while now() + Duration::from_millis(500) < end {
            let timeout = (end - now()).min(Duration::from_secs(3));
            let Ok(list) = client.members(timeout).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let membership = &list.membership;
            let voters: Vec<NodeId> = membership.voters().collect();
            let learners: Vec<NodeId> = membership.learners().collect();
            let spare = (FOUNDERS + 1..=POOL)
                .map(NodeId)
                .find(|id| !membership.contains(*id) && !membership.removed.contains(id));
            // (weight, change)
            let mut options: Vec<(u32, ConfChange)> = Vec::new();
            if let Some(&learner) = learners.first() {
                if voters.len() < VOTERS_MAX {
                    options.push((4, ConfChange::Promote(learner)));
                }
                options.push((1, ConfChange::Remove(learner)));
            } else if let Some(spare) = spare {
                options.push((4, add_change(spare.0, true)));
                if voters.len() < VOTERS_MAX {
                    options.push((1, add_change(spare.0, false)));
                }
            }
            if voters.len() > VOTERS_MIN {
                let voter = voters[rng.random_range(0..voters.len())];
                // The leader half the time: it leads until its removal
                // commits, then hands over.
                let voter = if rng.random_bool(0.5) {
                    list.leader
                } else {
                    voter
                };
                options.push((3, ConfChange::Remove(voter)));
            }
            // An operator's mistake now and then: promoting a voter (it
            // must be refused as invalid, and change nothing).
            if is_mistaken && mistakes.random_bool(0.1) {
                if let Some(&voter) = voters.first() {
                    let change = ConfChange::Promote(voter);
                    let result = client.change_membership(change.clone(), timeout).await;
                    log_change(&change, &result.map(|_| ()));
                }
            }
            let total: u32 = options.iter().map(|(w, _)| w).sum();
            // Past the window's end only after a mistake's request (the
            // default schedule never gets here past it).
            if total == 0 || (is_mistaken && now() >= end) {
                break;
            }
            let timeout = (end - now()).min(Duration::from_secs(3));
            // Sometimes two operators at once: one grows the voters (or
            // adds a learner), the other removes one, so the count stays
            // in bounds whichever lands first. The second must wait for
            // the first to commit (one change at a time).
            let grow = options
                .iter()
                .find(|(_, c)| !matches!(c, ConfChange::Remove(_)))
                .map(|(_, c)| c.clone());
            let shrink = options
                .iter()
                .find(|(_, c)| matches!(c, ConfChange::Remove(id) if voters.contains(id)))
                .map(|(_, c)| c.clone());
            if let (Some(grow), Some(shrink), true) = (grow, shrink, rng.random_bool(0.3)) {
                let (a, b) = tokio::join!(
                    client.change_membership(grow.clone(), timeout),
                    client.change_membership(shrink.clone(), timeout)
                );
                for (change, result) in [(grow, a), (shrink, b)] {
                    log_change(&change, &result.map(|_| ()));
                }
            } else {
                let mut pick = rng.random_range(0..total);
                let change = options
                    .into_iter()
                    .find(|(w, _)| {
                        let is_it = pick < *w;
                        pick = pick.saturating_sub(*w);
                        is_it
                    })
                    .map(|(_, c)| c)
                    .expect("a change");
                let result = client.change_membership(change.clone(), timeout).await;
                log_change(&change, &result.map(|_| ()));
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(100..500))).await;
        }
    }
    Ok(())
}

/// While leadership moves every 0.5-1 s (`MoveLeaderRepeatedly`), an
/// operator promotes a founder that is a voter already (or was removed),
/// every 30-100 ms: a mistake that must be refused, as invalid, or as
/// unavailable while a transfer is under way (the leader takes no change
/// then), and must change nothing.
async fn mistaken_promotions(client: &Client, rng: &mut StdRng, end: Duration) -> turmoil::Result {
    while now() + Duration::from_millis(100) < end {
        let change = ConfChange::Promote(NodeId(rng.random_range(1..=FOUNDERS)));
        let result = client
            .change_membership(change.clone(), Duration::from_millis(300))
            .await;
        if result.is_ok() {
            return Err(
                format!("operator: the promotion of a voter was accepted: {change:?}").into(),
            );
        }
        log_change(&change, &result.map(|_| ()));
        tokio::time::sleep(Duration::from_millis(rng.random_range(30..100))).await;
    }
    Ok(())
}
