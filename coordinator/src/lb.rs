//! The load balancers as the coordinator sees them: every `lb` host's HAProxy,
//! asked through its agent. [`lb_view`] is what drain waits and the rollout engine
//! judge by ("drained = scur 0 and qcur 0 on every LB, stot not rising for the
//! quiet period"); [`attach`] and [`detach`] are runbook steps 11 and 14.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use handover_common::names::{HostName, HostRole};
use handover_common::proto::Progress;
use handover_common::proto::lb::{LbProgress, LbReply, LbRequest, ServerState, ServerStats};
use serde::Serialize;

use crate::config::{CoordinatorConfig, HostEntry};
use crate::fleet::{Fleet, FleetError, calls};

/// One app host's servers in one LB (one entry per backend), or why the LB could
/// not be read.
pub type LbReading = Result<Vec<ServerStats>, String>;

/// app host → LB host → its servers there. An app host absent from an LB's
/// answer reads `Ok(vec![])`: not attached there.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LbView {
    /// By app host, then by LB host.
    pub hosts: BTreeMap<HostName, BTreeMap<HostName, LbReading>>,
}

impl LbView {}

/// The `lb` hosts: those named, or every one in the inventory.
pub fn lb_hosts(config: &CoordinatorConfig, names: &[String]) -> anyhow::Result<Vec<HostEntry>> {
    if names.is_empty() {
        let all = config.with_role(HostRole::Lb);
        if all.is_empty() {
            bail!(
                "the inventory has no host with roles = [\"lb\"]: add your load balancers to [[hosts]]"
            );
        }
        return Ok(all);
    }
    let hosts = config.select(names)?;
    for h in &hosts {
        if !h.roles.contains(&HostRole::Lb) {
            bail!(
                "{} is not a load balancer (its roles are {}): name an `lb` host with --lb",
                h.name,
                h.roles_text()
            );
        }
    }
    Ok(hosts)
}

/// Asks every LB for the servers of `hosts` (all attached servers when empty).
pub async fn lb_view(fleet: &Fleet, config: &CoordinatorConfig, hosts: &[HostName]) -> LbView {
    let lbs = config.with_role(HostRole::Lb);
    let results = fleet
        .ask_each(&lbs, |_| {
            calls::lb(LbRequest::Stats {
                servers: hosts.to_vec(),
            })
        })
        .await;
    let mut view = LbView::default();
    for h in hosts {
        view.hosts.insert(h.clone(), BTreeMap::new());
    }
    for (lb, result) in results {
        let reading: Result<Vec<ServerStats>, String> = match result {
            Ok(LbReply::Servers(servers)) => Ok(servers),
            Ok(other) => Err(format!(
                "{} answered a stats request with {other:?}: is its handover-agent the same version as this coordinator?",
                lb.name
            )),
            Err(e) => Err(e.to_string()),
        };
        let mut names: Vec<HostName> = hosts.to_vec();
        if names.is_empty()
            && let Ok(servers) = &reading
        {
            names = servers.iter().filter_map(|s| s.host.clone()).collect();
        }
        for h in names {
            let entry = match &reading {
                Ok(servers) => Ok(servers
                    .iter()
                    .filter(|s| s.host.as_ref() == Some(&h))
                    .cloned()
                    .collect()),
                Err(e) => Err(e.clone()),
            };
            view.hosts
                .entry(h)
                .or_default()
                .insert(lb.name.clone(), entry);
        }
    }
    view
}

/// The app address of `host` as the LBs reach it (inventory `app`).
pub fn app_address(host: &HostEntry) -> anyhow::Result<SocketAddr> {
    host.app.with_context(|| {
        format!("{} has no `app = \"ADDR:PORT\"` in [[hosts]]: say where the load balancers reach its app server", host.name)
    })
}

/// One line of progress from a load balancer, for people (the caller says which LB).
pub fn describe_progress(progress: &Progress) -> Option<String> {
    let Progress::Lb(p) = progress else {
        return None;
    };
    Some(match p {
        LbProgress::WaitingForUp(s) => format!(
            "{} in {}/{} is {} (check {}), waiting for UP",
            s.host.as_ref().map(HostName::as_str).unwrap_or("?"),
            s.backend,
            s.haproxy_name,
            s.status,
            s.check_status
        ),
        LbProgress::WaitingForSessions(s) => format!(
            "{} in {}/{} still has scur {} qcur {}, waiting",
            s.host.as_ref().map(HostName::as_str).unwrap_or("?"),
            s.backend,
            s.haproxy_name,
            s.scur,
            s.qcur
        ),
    })
}

/// What one LB did for one app host.
#[derive(Debug, Clone, Serialize)]
pub struct LbOutcome {
    /// The app host.
    pub host: HostName,
    /// The LB.
    pub lb: HostName,
    /// The answer, or the failure's text.
    pub result: Result<LbReply, String>,
    /// The LB did not answer ([`FleetError::is_unreachable`]): a rollout halts
    /// for `resume` rather than rolling back.
    #[serde(skip)]
    pub unreachable: bool,
}

/// Sends `make(app host)` to every LB for every app host, concurrently, printing
/// progress through `on_progress`.
pub async fn call_lbs(
    fleet: &Fleet,
    lbs: &[HostEntry],
    hosts: &[HostEntry],
    make: impl Fn(&HostEntry) -> LbRequest,
    on_progress: &(dyn Fn(&HostName, &Progress) + Sync),
) -> Vec<LbOutcome> {
    use futures::StreamExt;
    let calls = hosts
        .iter()
        .flat_map(|h| lbs.iter().map(move |lb| (h, lb)))
        .map(|(h, lb)| {
            let request = calls::lb(make(h));
            async move {
                let result = fleet.ask(lb, request, |p| on_progress(&lb.name, &p)).await;
                LbOutcome {
                    host: h.name.clone(),
                    lb: lb.name.clone(),
                    unreachable: result.as_ref().is_err_and(FleetError::is_unreachable),
                    result: result.map_err(|e| e.to_string()),
                }
            }
        });
    futures::stream::iter(calls)
        .buffer_unordered(fleet.concurrency)
        .collect()
        .await
}

/// Runbook step 11: attach `hosts` to `lbs` and wait until each reports them UP
/// after a fresh health check.
pub async fn attach(
    fleet: &Fleet,
    lbs: &[HostEntry],
    hosts: &[HostEntry],
    timeout: Option<Duration>,
    on_progress: &(dyn Fn(&HostName, &Progress) + Sync),
) -> anyhow::Result<Vec<LbOutcome>> {
    let apps: BTreeMap<HostName, SocketAddr> = hosts
        .iter()
        .map(|h| Ok((h.name.clone(), app_address(h)?)))
        .collect::<anyhow::Result<_>>()?;
    Ok(call_lbs(
        fleet,
        lbs,
        hosts,
        |h| LbRequest::Attach {
            server: h.name.clone(),
            app: apps[&h.name],
            backend: None,
            timeout,
        },
        on_progress,
    )
    .await)
}

/// Runbook step 14: detach `hosts` from `lbs` (refused while sessions remain,
/// unless `force`).
pub async fn detach(
    fleet: &Fleet,
    lbs: &[HostEntry],
    hosts: &[HostEntry],
    force: bool,
    timeout: Option<Duration>,
    on_progress: &(dyn Fn(&HostName, &Progress) + Sync),
) -> Vec<LbOutcome> {
    call_lbs(
        fleet,
        lbs,
        hosts,
        |h| LbRequest::Detach {
            server: h.name.clone(),
            force,
            timeout,
        },
        on_progress,
    )
    .await
}

/// Sets `hosts`' admin state in `lbs`.
pub async fn set_state(
    fleet: &Fleet,
    lbs: &[HostEntry],
    hosts: &[HostEntry],
    state: ServerState,
    on_progress: &(dyn Fn(&HostName, &Progress) + Sync),
) -> Vec<LbOutcome> {
    call_lbs(
        fleet,
        lbs,
        hosts,
        |h| LbRequest::SetState {
            server: h.name.clone(),
            state,
            timeout: None,
        },
        on_progress,
    )
    .await
}

/// The `handover status` section: each app host's state in every LB that
/// reported (status, scur, qcur), from the LBs' own status reports.
pub fn render_status_section<'a>(
    lbs: impl Iterator<Item = (&'a str, &'a handover_common::proto::lb::LbStatus)>,
) -> String {
    let mut table = crate::output::Table::new(&[
        "APP HOST", "LB", "BACKEND", "SERVER", "STATUS", "SCUR", "QCUR", "STOT",
    ]);
    let mut problems = Vec::new();
    let mut rows = 0;
    for (lb, status) in lbs {
        if let Some(e) = &status.error {
            problems.push(format!("error: {lb}: HAProxy: {e}\n"));
        }
        for s in status.servers.iter().filter(|s| s.host.is_some()) {
            rows += 1;
            table.row(vec![
                s.host.as_ref().map(|h| h.to_string()).unwrap_or_default(),
                lb.to_string(),
                s.backend.clone(),
                s.haproxy_name.clone(),
                s.status.clone(),
                s.scur.to_string(),
                s.qcur.to_string(),
                s.stot.to_string(),
            ]);
        }
    }
    let mut out = String::new();
    if rows > 0 {
        out.push('\n');
        out.push_str(&table.render());
    }
    out.extend(problems);
    out
}
