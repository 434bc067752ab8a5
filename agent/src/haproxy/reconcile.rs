//! Keeps the membership across HAProxy reloads.
//!
//! A reload starts a new HAProxy process from haproxy.cfg: filled slots are empty
//! again and dynamic servers are gone. Every `reconcile_interval` the agent reads
//! `show info`; when the serving process (Pid + start time) is not the one the
//! membership was last applied to, it re-applies every member — slot address,
//! admin state with a fresh check, dynamic servers re-added — and records the new
//! process. The same path runs after the agent itself restarts, so a reload the
//! agent slept through is caught too. Servers the membership does not name are
//! never touched. See docs/haproxy.md.

use std::sync::Arc;

use handover_common::proto::lb::{ServerKind, ServerState, StatusKind};
use handover_common::proto::{Failure, FailureKind};

use super::balancer::Balancer;
use super::membership::Member;
use super::show::ServerRow;
use crate::Agent;

/// The loop; runs for the agent's lifetime.
pub async fn run(agent: Arc<Agent>) {
    let Ok(lb) = Balancer::of(&agent) else { return };
    let mut last_error: Option<String> = None;
    loop {
        match reconcile_once(&lb).await {
            Ok(()) => {
                if last_error.take().is_some() {
                    tracing::info!("HAProxy reachable again");
                }
            }
            Err(e) => {
                // Logged once per distinct problem, not every second.
                if last_error.as_deref() != Some(e.message.as_str()) {
                    tracing::warn!(error = %e.message, "cannot reconcile HAProxy membership");
                    last_error = Some(e.message);
                }
            }
        }
        tokio::time::sleep(lb.config.reconcile_interval).await;
    }
}

/// What a member needs after HAProxy (re)started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// Still carried as wanted: leave it serving.
    Keep,
    /// Apply it again; `present`: HAProxy has the server.
    Apply {
        /// Whether HAProxy has the server.
        present: bool,
    },
    /// A slot HAProxy's config no longer has: only the operator can fix that.
    Missing,
}

/// Decides the repair of `member` from its row in `show stat`, if any.
pub fn repair(member: &Member, row: Option<&ServerRow>) -> Repair {
    match (member.kind, row) {
        (ServerKind::Dynamic, None) => Repair::Apply { present: false },
        (_, None) => Repair::Missing,
        (_, Some(row)) => {
            let carried = row.addr == member.app.to_string()
                && StatusKind::parse(&row.status) != StatusKind::Maint;
            if member.state == ServerState::Ready && carried {
                Repair::Keep
            } else {
                Repair::Apply { present: true }
            }
        }
    }
}

/// One pass: re-applies the membership if HAProxy is not the process it was
/// applied to.
pub async fn reconcile_once(lb: &Balancer<'_>) -> Result<(), Failure> {
    let (process, _) = lb.read_info().await?;
    let mut guard = lb.members().await?;
    let previous = guard.get().applied_to;
    if previous == Some(process) {
        return Ok(());
    }
    let members = guard.get().backends.clone();
    if !members.is_empty() {
        tracing::info!(?previous, now = ?process, "HAProxy process changed (reload or restart): re-applying membership");
    }
    let stat = lb.read_stat().await?;
    for (backend, hosts) in &members {
        for (host, member) in hosts {
            let result = match repair(member, stat.server(backend, &member.haproxy_name)) {
                Repair::Keep => Ok(()),
                Repair::Apply { present } => lb.apply(backend, member, present).await,
                Repair::Missing => Err(Failure::new(
                    FailureKind::Failed,
                    format!(
                        "{backend}/{} (carrying {host}) is not in HAProxy's config any more: restore the server-template or detach {host}",
                        member.haproxy_name
                    ),
                )),
            };
            if let Err(e) = result {
                tracing::warn!(%host, backend = %backend, error = %e.message, "cannot re-apply member");
                return Err(e);
            }
        }
    }
    guard.get().applied_to = Some(process);
    guard.save()?;
    if previous.is_some() && !members.is_empty() {
        lb.count_reload();
        tracing::info!(?process, "membership re-applied");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::haproxy::show::parse_stat;

    fn member(kind: ServerKind, state: ServerState) -> Member {
        Member {
            haproxy_name: "s".into(),
            kind,
            app: "[::1]:8080".parse().expect("addr"),
            state,
        }
    }

    #[test]
    fn members_are_repaired_only_where_the_new_process_differs() {
        let stat = parse_stat(
            "# pxname,svname,qcur,scur,stot,status,addr\n\
             b,up,0,0,0,UP,[::1]:8080\n\
             b,maint,0,0,0,MAINT,[::1]:8080\n\
             b,moved,0,0,0,UP,127.0.0.1:1\n",
        )
        .expect("valid");
        let ready_slot = member(ServerKind::Slot, ServerState::Ready);
        assert_eq!(repair(&ready_slot, stat.server("b", "up")), Repair::Keep);
        assert_eq!(
            repair(&ready_slot, stat.server("b", "maint")),
            Repair::Apply { present: true }
        );
        assert_eq!(
            repair(&ready_slot, stat.server("b", "moved")),
            Repair::Apply { present: true }
        );
        let drained = member(ServerKind::Slot, ServerState::Drain);
        assert_eq!(
            repair(&drained, stat.server("b", "up")),
            Repair::Apply { present: true }
        );
        assert_eq!(repair(&ready_slot, None), Repair::Missing);
        let dynamic = member(ServerKind::Dynamic, ServerState::Ready);
        assert_eq!(repair(&dynamic, None), Repair::Apply { present: false });
        // An adopted config server that was detached comes back enabled from
        // haproxy.cfg on a reload: it is put back in maintenance.
        let detached = member(ServerKind::Config, ServerState::Maint);
        assert_eq!(
            repair(&detached, stat.server("b", "up")),
            Repair::Apply { present: true }
        );
    }
}
