//! Stats (runbook step 13): what HAProxy reports for the app hosts this agent
//! attached, named by host; and the load-balancer part of `status`.

use handover_common::names::HostName;
use handover_common::proto::Failure;
use handover_common::proto::lb::{LbReply, LbStatus, ServerStats};

use handover_common::proto::lb::ServerKind;

use super::adopt::host_by_name;
use super::balancer::Balancer;

/// Stats of the named hosts (every attached host when empty).
pub async fn stats(lb: &Balancer<'_>, servers: &[HostName]) -> Result<LbReply, Failure> {
    let mut members = lb.members().await?;
    let stat = lb.read_stat().await?;
    for host in servers {
        // A server that cannot be adopted is reported as not attached; detach and
        // attach, which need it, say why.
        if let Err(e) = lb.adopt(&mut members, &stat, host, None) {
            tracing::warn!(%host, error = %e.message, "not adopting");
        }
    }
    let members = members.get();
    let hosts: Vec<HostName> = if servers.is_empty() {
        members.hosts()
    } else {
        servers.to_vec()
    };
    Ok(LbReply::Servers(
        hosts
            .iter()
            .flat_map(|h| members.stats_of_host(&stat, h))
            .collect(),
    ))
}

/// Every server of every managed backend, named by host where it is ours.
pub async fn all_servers(lb: &Balancer<'_>) -> Result<Vec<ServerStats>, Failure> {
    let mut members = lb.members().await?;
    let stat = lb.read_stat().await?;
    let members = members.get();
    let managed = lb.config.managed_backends();
    Ok(stat
        .servers
        .iter()
        .filter(|r| managed.iter().any(|b| b.as_str() == r.backend))
        .map(|r| {
            match (
                members.host_of(&r.backend, &r.server),
                host_by_name(lb.config, r),
            ) {
                (None, Some(host)) => r.stats(Some(&host), ServerKind::Config),
                _ => members.stats_of_row(r),
            }
        })
        .collect())
}

/// The load-balancer part of `status`: HAProxy's identity and every server of the
/// managed backends, or why HAProxy could not be read.
pub async fn status(lb: &Balancer<'_>, reloads_seen: u64) -> LbStatus {
    let mut status = LbStatus {
        socket: lb.endpoint(),
        haproxy: None,
        error: None,
        servers: Vec::new(),
        reloads_seen,
    };
    match lb.read_info().await {
        Ok((_, info)) => status.haproxy = Some(info),
        Err(e) => {
            status.error = Some(e.to_string());
            return status;
        }
    }
    match all_servers(lb).await {
        Ok(servers) => status.servers = servers,
        Err(e) => status.error = Some(e.message),
    }
    status
}
