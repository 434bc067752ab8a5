//! Attach, detach, set state and stats — the runbook's steps 11, 13 and 14 on one
//! load balancer.
//!
//! Attach makes the health check fresh before it waits: after `enable server` (or
//! `state ready`) HAProxy reports UP at once, before any check ran. So the server
//! is put in drain, forced `health down` (lost in maintenance, honoured in drain),
//! then set ready: it reads DOWN and can only become UP after `rise` checks that
//! ran after the change.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use handover_common::duration::BeyondClock;
use handover_common::names::{BackendName, HostName};
use handover_common::proto::lb::{
    LbProgress, LbReply, Removed, ServerKind, ServerState, ServerStats, StatusKind,
};
use handover_common::proto::{Failure, FailureKind, Progress};

use super::membership::{Member, Membership};
use super::runtime::{Runtime, cmd};
use super::stats::{ServerRow, Stat, parse_stat};
use super::{Lb, runtime_failure};
use crate::dispatch::Reporter;

/// How often waits read `show stat`.
const POLL: Duration = Duration::from_millis(100);

/// Reads `show stat`.
pub async fn read_stat(runtime: &Runtime) -> Result<Stat, Failure> {
    let text = runtime
        .run(&cmd::show_stat().map_err(runtime_failure)?)
        .await
        .map_err(runtime_failure)?;
    parse_stat(&text).map_err(|e| Failure::new(FailureKind::Failed, e.to_string()))
}

fn backend_server(backend: &str, server: &str) -> String {
    format!("{backend}/{server}")
}

/// Runs a command built from validated names.
async fn run(
    runtime: &Runtime,
    command: Result<super::runtime::Command, super::runtime::RuntimeError>,
) -> Result<(), Failure> {
    let command = command.map_err(runtime_failure)?;
    runtime
        .run(&command)
        .await
        .map(drop)
        .map_err(runtime_failure)
}

/// Drain, `health down`, ready: the server reads DOWN until fresh checks pass.
pub async fn make_check_fresh(runtime: &Runtime, bs: &str) -> Result<(), Failure> {
    run(runtime, cmd::set_state(bs, "drain")).await?;
    run(runtime, cmd::health_down(bs)).await?;
    run(runtime, cmd::set_state(bs, "ready")).await
}

/// Points a slot at `app` and puts it in `state` (ready with a fresh check).
pub async fn apply_slot(runtime: &Runtime, backend: &str, member: &Member) -> Result<(), Failure> {
    let bs = backend_server(backend, &member.haproxy_name);
    run(
        runtime,
        cmd::set_addr(&bs, &member.app.ip().to_string(), member.app.port()),
    )
    .await?;
    run(runtime, cmd::enable_health(&bs)).await?;
    apply_state(runtime, &bs, member.state).await
}

/// Adds a dynamic server for `member` (it starts in maintenance) and puts it in
/// `state`.
pub async fn apply_dynamic(lb: &Lb<'_>, backend: &str, member: &Member) -> Result<(), Failure> {
    let bs = backend_server(backend, &member.haproxy_name);
    let inter = lb
        .config
        .check_inter
        .map(|d| format!("{}ms", d.as_millis()));
    let rise = lb.config.check_rise.map(|n| n.to_string());
    let fall = lb.config.check_fall.map(|n| n.to_string());
    let mut args: Vec<&str> = Vec::new();
    for (word, value) in [("inter", &inter), ("rise", &rise), ("fall", &fall)] {
        if let Some(v) = value {
            args.extend([word, v.as_str()]);
        }
    }
    let app = member.app.to_string();
    run(&lb.runtime, cmd::add_server(&bs, &app, &args)).await?;
    run(&lb.runtime, cmd::enable_health(&bs)).await?;
    apply_state(&lb.runtime, &bs, member.state).await
}

async fn apply_state(runtime: &Runtime, bs: &str, state: ServerState) -> Result<(), Failure> {
    match state {
        ServerState::Ready => make_check_fresh(runtime, bs).await,
        other => run(runtime, cmd::set_state(bs, other.as_str())).await,
    }
}

/// The backends a request is about: the named one (which must be managed) or all.
fn target_backends(
    lb: &Lb<'_>,
    backend: Option<&BackendName>,
) -> Result<Vec<BackendName>, Failure> {
    let managed = lb.config.managed_backends();
    match backend {
        None => Ok(managed),
        Some(b) if managed.contains(b) => Ok(vec![b.clone()]),
        Some(b) => Err(Failure::new(
            FailureKind::BadRequest,
            format!(
                "backend {b} is not managed by this agent (managed: {}): name one of those, or add it to `[haproxy] backends`",
                names(&managed)
            ),
        )),
    }
}

fn names(list: &[BackendName]) -> String {
    list.iter()
        .map(BackendName::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_backend_exists(stat: &Stat, backend: &str) -> Result<(), Failure> {
    if stat.has_backend(backend) {
        Ok(())
    } else {
        Err(Failure::new(
            FailureKind::Failed,
            format!(
                "HAProxy has no backend {backend:?} (it has: {}): fix `[haproxy] backend` in the agent config or haproxy.cfg",
                stat.backends.join(", ")
            ),
        ))
    }
}

/// Whether `name` is a `server-template` slot (`slot` + digits).
fn is_slot(prefix: &str, name: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// A free slot: ours to take only if no member holds it and it sits in MAINT
/// (anything else was enabled by someone else, and is not ours to touch).
fn free_slot(lb: &Lb<'_>, stat: &Stat, members: &Membership, backend: &str) -> Option<String> {
    let mut free: Vec<&ServerRow> = stat
        .servers
        .iter()
        .filter(|r| r.backend == backend && is_slot(&lb.config.slot_prefix, &r.server))
        .filter(|r| members.host_of(backend, &r.server).is_none())
        .filter(|r| StatusKind::parse(&r.status) == StatusKind::Maint)
        .collect();
    free.sort_by_key(|r| {
        r.server[lb.config.slot_prefix.len()..]
            .parse::<u64>()
            .unwrap_or(u64::MAX)
    });
    free.first().map(|r| r.server.clone())
}

fn has_slots(lb: &Lb<'_>, stat: &Stat, backend: &str) -> bool {
    stat.servers
        .iter()
        .any(|r| r.backend == backend && is_slot(&lb.config.slot_prefix, &r.server))
}

/// Stats of one row, named by host.
fn to_stats(row: &ServerRow, member: Option<(&HostName, &Member)>) -> ServerStats {
    let kind = member.map(|(_, m)| m.kind).unwrap_or(ServerKind::Other);
    stats_of(row, member.map(|(h, _)| h), kind)
}

fn stats_of(row: &ServerRow, host: Option<&HostName>, kind: ServerKind) -> ServerStats {
    ServerStats {
        backend: row.backend.clone(),
        host: host.cloned(),
        haproxy_name: row.server.clone(),
        kind,
        addr: row.addr.clone(),
        status: row.status.clone(),
        scur: row.scur,
        qcur: row.qcur,
        stot: row.stot,
        check_status: row.check_status.clone(),
        hrsp_5xx: row.hrsp_5xx,
    }
}

/// Stats of `host`'s servers (in `backends`), by the membership.
fn host_stats(stat: &Stat, members: &Membership, host: &HostName) -> Vec<ServerStats> {
    members
        .backends
        .iter()
        .filter_map(|(b, m)| m.get(host).map(|member| (b, member)))
        .filter_map(|(b, member)| {
            stat.server(b, &member.haproxy_name)
                .map(|row| to_stats(row, Some((host, member))))
        })
        .collect()
}

/// Attach `server` at `app`: fill a slot or add a dynamic server, make the check
/// fresh, and wait until HAProxy reports it UP in every target backend.
pub async fn attach(
    lb: &Lb<'_>,
    server: &HostName,
    app: SocketAddr,
    backend: Option<&BackendName>,
    timeout: Option<Duration>,
    reporter: &Reporter,
) -> Result<LbReply, Failure> {
    let backends = target_backends(lb, backend)?;
    let mut wanted: Vec<(String, String)> = Vec::new();
    {
        let mut guard = lb.lock().await?;
        let stat = read_stat(&lb.runtime).await?;
        for b in &backends {
            check_backend_exists(&stat, b.as_str())?;
        }
        for b in &backends {
            let b = b.as_str();
            let members = guard.get();
            if let Some(existing) = members.get(b, server).cloned() {
                if existing.app != app {
                    return Err(Failure::new(
                        FailureKind::Refused,
                        format!(
                            "{server} is attached to {b} at {}, not {app}: detach it first (handover detach {server})",
                            existing.app
                        ),
                    ));
                }
                let row = stat.server(b, &existing.haproxy_name);
                let up = row.is_some_and(|r| StatusKind::parse(&r.status) == StatusKind::Up);
                if !up || existing.state != ServerState::Ready {
                    // Re-attach (resume, or it was drained): the same fresh-check path.
                    let member = Member {
                        state: ServerState::Ready,
                        ..existing.clone()
                    };
                    members.insert(b, server.clone(), member.clone());
                    guard.save()?;
                    match (member.kind, row) {
                        (ServerKind::Dynamic, None) => apply_dynamic(lb, b, &member).await?,
                        (ServerKind::Dynamic, Some(_)) => {
                            make_check_fresh(&lb.runtime, &backend_server(b, &member.haproxy_name))
                                .await?
                        }
                        _ => apply_slot(&lb.runtime, b, &member).await?,
                    }
                }
                wanted.push((b.to_string(), existing.haproxy_name));
                continue;
            }
            let member = if has_slots(lb, &stat, b) {
                let slot = free_slot(lb, &stat, members, b).ok_or_else(|| {
                    Failure::new(
                        FailureKind::Failed,
                        format!(
                            "every {}N slot of backend {b} is taken: detach a server, or raise the count in `server-template {}` in haproxy.cfg",
                            lb.config.slot_prefix, lb.config.slot_prefix
                        ),
                    )
                })?;
                Member {
                    haproxy_name: slot,
                    kind: ServerKind::Slot,
                    app,
                    state: ServerState::Ready,
                }
            } else {
                if stat.server(b, server.as_str()).is_some() {
                    return Err(Failure::new(
                        FailureKind::Refused,
                        format!(
                            "backend {b} already has a server named {server} that this agent did not add: it is left alone; remove it from haproxy.cfg or rename the host"
                        ),
                    ));
                }
                Member {
                    haproxy_name: server.to_string(),
                    kind: ServerKind::Dynamic,
                    app,
                    state: ServerState::Ready,
                }
            };
            // Recorded first: if the agent dies half-way, the reconciler finishes it.
            members.insert(b, server.clone(), member.clone());
            guard.save()?;
            let applied = match member.kind {
                ServerKind::Slot => apply_slot(&lb.runtime, b, &member).await,
                _ => apply_dynamic(lb, b, &member).await,
            };
            if let Err(e) = applied {
                guard.get().remove(b, server);
                guard.save()?;
                if member.kind == ServerKind::Slot {
                    let bs = backend_server(b, &member.haproxy_name);
                    let _ = run(&lb.runtime, cmd::set_state(&bs, "maint")).await;
                }
                return Err(e);
            }
            tracing::info!(%server, backend = b, haproxy_name = %member.haproxy_name, %app, "attached; waiting for a fresh UP");
            wanted.push((b.to_string(), member.haproxy_name));
        }
    }
    let timeout = timeout.unwrap_or(lb.config.attach_timeout);
    wait_until_up(lb, server, &wanted, timeout, reporter).await?;
    let mut guard = lb.lock().await?;
    let stat = read_stat(&lb.runtime).await?;
    Ok(LbReply::Servers(host_stats(&stat, guard.get(), server)))
}

/// Waits until every `(backend, haproxy_name)` reads exactly UP.
async fn wait_until_up(
    lb: &Lb<'_>,
    server: &HostName,
    wanted: &[(String, String)],
    timeout: Duration,
    reporter: &Reporter,
) -> Result<(), Failure> {
    let deadline = tokio::time::Instant::now()
        .checked_add(timeout)
        .ok_or(BeyondClock::new("attach", timeout))?;
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let stat = read_stat(&lb.runtime).await?;
        let mut pending = Vec::new();
        for (b, name) in wanted {
            let Some(row) = stat.server(b, name) else {
                return Err(Failure::new(
                    FailureKind::Failed,
                    format!(
                        "{b}/{name} (carrying {server}) vanished from HAProxy while waiting for it to come UP (was HAProxy reloaded? the agent re-applies it; run attach again)"
                    ),
                ));
            };
            if StatusKind::parse(&row.status) != StatusKind::Up {
                let text = format!("{} {}", row.status, row.check_status);
                if last.get(b) != Some(&text) {
                    let kind = if is_slot(&lb.config.slot_prefix, name) {
                        ServerKind::Slot
                    } else {
                        ServerKind::Dynamic
                    };
                    let stats = stats_of(row, Some(server), kind);
                    if !reporter
                        .progress(Progress::Lb(LbProgress::WaitingForUp(stats)))
                        .await
                    {
                        return Err(Failure::new(FailureKind::Failed, "the caller went away"));
                    }
                    last.insert(b.clone(), text);
                }
                pending.push(format!(
                    "{b}/{name} is {} (last check {})",
                    row.status, row.check_status
                ));
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Failure::new(
                FailureKind::Timeout,
                format!(
                    "{server} is attached but not UP after {}: {} — HAProxy sends it no traffic while it is not UP; check its health file and app server, then run attach again",
                    handover_common::duration::format(timeout),
                    pending.join("; ")
                ),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Detach `server` from every managed backend it is in.
pub async fn detach(
    lb: &Lb<'_>,
    server: &HostName,
    force: bool,
    timeout: Option<Duration>,
    reporter: &Reporter,
) -> Result<LbReply, Failure> {
    let timeout = timeout.unwrap_or(lb.config.detach_timeout);
    let deadline = tokio::time::Instant::now()
        .checked_add(timeout)
        .ok_or(BeyondClock::new("detach", timeout))?;
    let targets: Vec<(String, Member)> = {
        let mut guard = lb.lock().await?;
        guard
            .get()
            .backends
            .iter()
            .filter_map(|(b, m)| m.get(server).map(|member| (b.clone(), member.clone())))
            .collect()
    };
    if targets.is_empty() {
        return Ok(LbReply::Detached(Vec::new()));
    }
    if !force {
        // Refuse, changing nothing, while sessions remain.
        wait_for_sessions(lb, server, &targets, deadline, reporter).await.map_err(|f| {
            if f.kind == FailureKind::Timeout {
                Failure::new(
                    FailureKind::Refused,
                    format!("{}; nothing was changed: drain it and wait longer, or detach with --force to cut them", f.message),
                )
            } else {
                f
            }
        })?;
    }
    let mut removed = Vec::new();
    let mut guard = lb.lock().await?;
    for (b, member) in &targets {
        let bs = backend_server(b, &member.haproxy_name);
        if let Some(m) = guard
            .get()
            .backends
            .get_mut(b)
            .and_then(|m| m.get_mut(server))
        {
            m.state = ServerState::Maint;
        }
        guard.save()?;
        let stat = read_stat(&lb.runtime).await?;
        let present = stat.server(b, &member.haproxy_name).cloned();
        let mut sessions_cut = 0;
        if let Some(row) = &present {
            run(&lb.runtime, cmd::set_state(&bs, "maint")).await?;
            if force && (row.scur > 0 || row.qcur > 0) {
                run(&lb.runtime, cmd::shutdown_sessions(&bs)).await?;
                sessions_cut = row.scur;
            }
            if member.kind == ServerKind::Dynamic {
                delete_when_idle(lb, &bs, deadline).await?;
            }
        }
        guard.get().remove(b, server);
        guard.save()?;
        tracing::info!(%server, backend = %b, haproxy_name = %member.haproxy_name, force, "detached");
        removed.push(Removed {
            backend: BackendName::new(b.clone())
                .map_err(|e| Failure::new(FailureKind::Internal, e.to_string()))?,
            server: server.clone(),
            haproxy_name: member.haproxy_name.clone(),
            sessions_cut,
        });
    }
    Ok(LbReply::Detached(removed))
}

/// Waits until the host's servers have no request in flight or queued.
async fn wait_for_sessions(
    lb: &Lb<'_>,
    server: &HostName,
    targets: &[(String, Member)],
    deadline: tokio::time::Instant,
    reporter: &Reporter,
) -> Result<(), Failure> {
    let mut last = None;
    loop {
        let stat = read_stat(&lb.runtime).await?;
        let busy: Vec<ServerStats> = targets
            .iter()
            .filter_map(|(b, m)| {
                stat.server(b, &m.haproxy_name)
                    .map(|r| to_stats(r, Some((server, m))))
            })
            .filter(|s| s.scur > 0 || s.qcur > 0)
            .collect();
        let Some(first) = busy.first() else {
            return Ok(());
        };
        let now = (first.scur, first.qcur);
        if last != Some(now) {
            if !reporter
                .progress(Progress::Lb(LbProgress::WaitingForSessions(first.clone())))
                .await
            {
                return Err(Failure::new(FailureKind::Failed, "the caller went away"));
            }
            last = Some(now);
        }
        if tokio::time::Instant::now() >= deadline {
            let held: Vec<String> = busy
                .iter()
                .map(|s| {
                    format!(
                        "{}/{} has scur {} qcur {}",
                        s.backend, s.haproxy_name, s.scur, s.qcur
                    )
                })
                .collect();
            return Err(Failure::new(
                FailureKind::Timeout,
                format!("{server} still has sessions: {}", held.join("; ")),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `del server` once HAProxy lets go of the server's connections.
async fn delete_when_idle(
    lb: &Lb<'_>,
    bs: &str,
    deadline: tokio::time::Instant,
) -> Result<(), Failure> {
    loop {
        match lb
            .runtime
            .run(&cmd::del_server(bs).map_err(runtime_failure)?)
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if e.answer().is_some_and(|a| a.contains("No such server")) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(Failure::new(
                    FailureKind::Timeout,
                    format!(
                        "{bs} is in maintenance but could not be deleted: {e}; it serves no new requests — run detach again later"
                    ),
                ));
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// Set `server`'s admin state in every managed backend it is in.
pub async fn set_state(
    lb: &Lb<'_>,
    server: &HostName,
    state: ServerState,
    timeout: Option<Duration>,
    reporter: &Reporter,
) -> Result<LbReply, Failure> {
    let mut wanted = Vec::new();
    {
        let mut guard = lb.lock().await?;
        let targets: Vec<(String, Member)> = guard
            .get()
            .backends
            .iter()
            .filter_map(|(b, m)| m.get(server).map(|member| (b.clone(), member.clone())))
            .collect();
        if targets.is_empty() {
            return Err(Failure::new(
                FailureKind::BadRequest,
                format!(
                    "{server} is not attached to this load balancer: attach it first (handover attach {server})"
                ),
            ));
        }
        let stat = read_stat(&lb.runtime).await?;
        for (b, member) in targets {
            if let Some(m) = guard
                .get()
                .backends
                .get_mut(&b)
                .and_then(|m| m.get_mut(server))
            {
                m.state = state;
            }
            guard.save()?;
            let bs = backend_server(&b, &member.haproxy_name);
            let in_maint = stat
                .server(&b, &member.haproxy_name)
                .is_some_and(|r| StatusKind::parse(&r.status) == StatusKind::Maint);
            if state == ServerState::Ready && in_maint {
                // From maintenance, ready means UP at once without a check: make it fresh.
                make_check_fresh(&lb.runtime, &bs).await?;
                wanted.push((b.clone(), member.haproxy_name.clone()));
            } else {
                run(&lb.runtime, cmd::set_state(&bs, state.as_str())).await?;
            }
        }
    }
    if !wanted.is_empty() {
        wait_until_up(
            lb,
            server,
            &wanted,
            timeout.unwrap_or(lb.config.attach_timeout),
            reporter,
        )
        .await?;
    }
    let mut guard = lb.lock().await?;
    let stat = read_stat(&lb.runtime).await?;
    Ok(LbReply::Servers(host_stats(&stat, guard.get(), server)))
}

/// Stats of the named hosts (every attached host when empty).
pub async fn stats(lb: &Lb<'_>, servers: &[HostName]) -> Result<LbReply, Failure> {
    let mut guard = lb.lock().await?;
    let stat = read_stat(&lb.runtime).await?;
    let members = guard.get();
    let mut out = Vec::new();
    if servers.is_empty() {
        let hosts: std::collections::BTreeSet<&HostName> =
            members.backends.values().flat_map(|m| m.keys()).collect();
        for h in hosts {
            out.extend(host_stats(&stat, members, h));
        }
    } else {
        for h in servers {
            out.extend(host_stats(&stat, members, h));
        }
    }
    Ok(LbReply::Servers(out))
}

/// Every server of every managed backend, named by host where it is ours.
pub async fn all_servers(lb: &Lb<'_>) -> Result<Vec<ServerStats>, Failure> {
    let mut guard = lb.lock().await?;
    let stat = read_stat(&lb.runtime).await?;
    let members = guard.get();
    let managed = lb.config.managed_backends();
    Ok(stat
        .servers
        .iter()
        .filter(|r| managed.iter().any(|b| b.as_str() == r.backend))
        .map(|r| to_stats(r, members.host_of(&r.backend, &r.server)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_prefix_and_digits() {
        assert!(is_slot("slot", "slot1"));
        assert!(is_slot("slot", "slot12"));
        assert!(!is_slot("slot", "slot"));
        assert!(!is_slot("slot", "slotx"));
        assert!(!is_slot("slot", "web-1"));
    }
}
