//! Detach (runbook step 14): take an app host out of every managed backend it is
//! in. Without `force` it first waits for its sessions to end ([`SessionsWait`])
//! and refuses, changing nothing, if they do not; with `force` it cuts them.
//! A slot is put in maintenance (free for the next attach); a dynamic server is
//! deleted once HAProxy lets go of its connections.

use std::time::Duration;

use handover_common::names::{BackendName, HostName};
use handover_common::proto::lb::{LbReply, Removed, ServerKind, ServerState};
use handover_common::proto::{Failure, FailureKind};

use super::balancer::{Balancer, Members, server_path};
use super::membership::Member;
use super::wait::{SessionsWait, Target, deadline_after};
use crate::caller::Reporter;

/// Detach `server` from every managed backend it is in.
pub async fn detach(
    lb: &Balancer<'_>,
    server: &HostName,
    force: bool,
    timeout: Option<Duration>,
    reporter: &Reporter,
) -> Result<LbReply, Failure> {
    let deadline = deadline_after(timeout.unwrap_or(lb.config.detach_timeout));
    let carried = {
        let mut members = lb.members().await?;
        let stat = lb.read_stat().await?;
        lb.adopt(&mut members, &stat, server, None)?;
        members.get().of_host(server)
    };
    if carried.is_empty() {
        return Ok(LbReply::Detached(Vec::new()));
    }
    if !force {
        let targets = carried.iter().map(|(b, m)| Target::of(b, m)).collect();
        SessionsWait::new(server.clone(), targets)
            .run(lb, reporter, deadline)
            .await?;
    }
    let mut members = lb.members().await?;
    let mut removed = Vec::new();
    for (backend, member) in &carried {
        let taken = take_out(lb, &mut members, server, backend, member, force, deadline).await?;
        removed.push(taken);
    }
    Ok(LbReply::Detached(removed))
}

/// Takes `server` out of one backend: recorded as maintenance first (so a crash
/// half-way leaves it out of rotation), then HAProxy, then forgotten.
async fn take_out(
    lb: &Balancer<'_>,
    members: &mut Members<'_>,
    server: &HostName,
    backend: &str,
    member: &Member,
    force: bool,
    deadline: tokio::time::Instant,
) -> Result<Removed, Failure> {
    let bs = server_path(backend, &member.haproxy_name);
    members.get().set_state(backend, server, ServerState::Maint);
    members.save()?;
    let stat = lb.read_stat().await?;
    let mut sessions_cut = 0;
    let row = stat.server(backend, &member.haproxy_name);
    if let Some(row) = row {
        lb.set_admin_state(&bs, ServerState::Maint).await?;
        if force && (row.scur > 0 || row.qcur > 0) {
            lb.cut_sessions(&bs).await?;
            sessions_cut = row.scur;
        }
        if member.kind == ServerKind::Dynamic {
            lb.delete_when_idle(&bs, deadline).await?;
        }
    }
    // A config server stays in haproxy.cfg: it is kept as a member in
    // maintenance, so a reload (which enables it again) is put right.
    if member.kind != ServerKind::Config || row.is_none() {
        members.get().remove(backend, server);
        members.save()?;
    }
    tracing::info!(%server, %backend, haproxy_name = %member.haproxy_name, force, "detached");
    Ok(Removed {
        backend: BackendName::new(backend)
            .map_err(|e| Failure::new(FailureKind::Internal, e.to_string()))?,
        server: server.clone(),
        haproxy_name: member.haproxy_name.clone(),
        sessions_cut,
    })
}
