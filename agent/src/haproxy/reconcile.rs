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

use handover_common::proto::lb::{HaproxyInfo, ServerKind, ServerState, StatusKind};
use handover_common::proto::{Failure, FailureKind};

use super::attach::{apply_dynamic, apply_slot, make_check_fresh, read_stat};
use super::runtime::{Runtime, cmd};
use super::stats::{ProcessId, parse_info};
use super::{Lb, runtime_failure};
use crate::Agent;

/// Reads `show info`.
pub async fn read_info(runtime: &Runtime) -> Result<(ProcessId, HaproxyInfo), Failure> {
    let text = runtime
        .run(&cmd::show_info().map_err(runtime_failure)?)
        .await
        .map_err(runtime_failure)?;
    parse_info(&text).map_err(|e| Failure::new(FailureKind::Failed, e.to_string()))
}

/// The loop; runs for the agent's lifetime.
pub async fn run(agent: Arc<Agent>) {
    let Ok(lb) = Lb::of(&agent) else { return };
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

/// One pass: re-applies the membership if HAProxy is not the process it was
/// applied to.
pub async fn reconcile_once(lb: &Lb<'_>) -> Result<(), Failure> {
    let (process, _) = read_info(&lb.runtime).await?;
    let mut guard = lb.lock().await?;
    let previous = guard.get().applied_to;
    if previous == Some(process) {
        return Ok(());
    }
    let members = guard.get().backends.clone();
    if !members.is_empty() {
        tracing::info!(?previous, now = ?process, "HAProxy process changed (reload or restart): re-applying membership");
    }
    let stat = read_stat(&lb.runtime).await?;
    for (backend, hosts) in &members {
        for (host, member) in hosts {
            let bs = format!("{backend}/{}", member.haproxy_name);
            let row = stat.server(backend, &member.haproxy_name);
            let result = match (member.kind, row) {
                (ServerKind::Dynamic, None) => apply_dynamic(lb, backend, member).await,
                (_, None) => Err(Failure::new(
                    FailureKind::Failed,
                    format!(
                        "{bs} (carrying {host}) is not in HAProxy's config any more: restore the server-template or detach {host}"
                    ),
                )),
                (_, Some(row)) => {
                    let kind = StatusKind::parse(&row.status);
                    let addr_ok = row.addr == member.app.to_string();
                    match member.state {
                        // Still (or again) carried as wanted: leave it serving.
                        ServerState::Ready if addr_ok && kind != StatusKind::Maint => Ok(()),
                        ServerState::Ready if member.kind == ServerKind::Dynamic => {
                            make_check_fresh(&lb.runtime, &bs).await
                        }
                        _ if member.kind == ServerKind::Slot => {
                            apply_slot(&lb.runtime, backend, member).await
                        }
                        state => {
                            let c = cmd::set_state(&bs, state.as_str()).map_err(runtime_failure)?;
                            lb.runtime.run(&c).await.map(drop).map_err(runtime_failure)
                        }
                    }
                }
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
