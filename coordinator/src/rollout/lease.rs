//! Holding the agents' leases for the length of a rollout: taken on every host the
//! rollout touches before the first step, renewed while it runs, given back at the
//! end. A coordinator killed mid-way leaves leases that expire by themselves; its
//! own `resume` (same rollout id) takes them straight back.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use handover_common::proto::lease::{LeaseReply, LeaseRequest};
use handover_common::proto::{Reply, Request};
use tokio::task::JoinHandle;

use crate::config::HostEntry;
use crate::fleet::Fleet;

/// How long a lease lives without renewal.
const TTL: Duration = Duration::from_secs(60);
/// How often it is renewed.
const RENEW_EVERY: Duration = Duration::from_secs(15);

/// Leases held on a set of hosts; renewed in the background until released.
pub struct Leases {
    fleet: Arc<Fleet>,
    hosts: Vec<HostEntry>,
    rollout: String,
    renewer: JoinHandle<()>,
}

fn acquire(rollout: &str, owner: &str, break_existing: bool) -> Request {
    Request::Lease(LeaseRequest::Acquire {
        rollout: rollout.to_owned(),
        owner: owner.to_owned(),
        ttl_secs: TTL.as_secs(),
        break_existing,
    })
}

impl Leases {
    /// Takes the lease on every host, or none: on any refusal the leases already
    /// taken are given back and the refusals are named.
    pub async fn take(
        fleet: Arc<Fleet>,
        hosts: Vec<HostEntry>,
        rollout: &str,
        owner: &str,
        break_existing: bool,
    ) -> anyhow::Result<Self> {
        let results = fleet
            .call_each(&hosts, |_| acquire(rollout, owner, break_existing))
            .await;
        let mut refused = Vec::new();
        for (host, result) in &results {
            match result {
                Ok(Reply::Lease(LeaseReply::Held(_))) => {}
                Ok(other) => refused.push(format!("{}: unexpected answer {other:?}", host.name)),
                Err(e) => refused.push(format!("{}: {e}", host.name)),
            }
        }
        if !refused.is_empty() {
            let held: Vec<HostEntry> = results
                .iter()
                .filter(|(_, r)| matches!(r, Ok(Reply::Lease(LeaseReply::Held(_)))))
                .map(|(h, _)| h.clone())
                .collect();
            release_on(&fleet, &held, rollout).await;
            bail!(
                "cannot take the rollout lease, nothing was changed: {}",
                refused.join("; ")
            );
        }
        let renewer = {
            let fleet = fleet.clone();
            let hosts = hosts.clone();
            let rollout = rollout.to_owned();
            let owner = owner.to_owned();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(RENEW_EVERY).await;
                    for host in &hosts {
                        let request = acquire(&rollout, &owner, false);
                        if let Err(e) = fleet.call(host, request, |_| {}).await {
                            tracing::warn!(host = %host.name, error = %e, "lease renewal failed");
                        }
                    }
                }
            })
        };
        Ok(Leases {
            fleet,
            hosts,
            rollout: rollout.to_owned(),
            renewer,
        })
    }

    /// Stops renewing and gives every lease back.
    pub async fn release(self) {
        self.renewer.abort();
        release_on(&self.fleet, &self.hosts, &self.rollout).await;
    }
}

async fn release_on(fleet: &Fleet, hosts: &[HostEntry], rollout: &str) {
    let results = fleet
        .call_each(hosts, |_| {
            Request::Lease(LeaseRequest::Release {
                rollout: rollout.to_owned(),
            })
        })
        .await;
    for (host, result) in results {
        if let Err(e) = result {
            tracing::warn!(host = %host.name, error = %e, "lease release failed; it expires by itself");
        }
    }
}
