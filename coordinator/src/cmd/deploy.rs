//! `handover deploy|releases|activate|hook`: ad-hoc revision changes on named
//! hosts (no load-balancer choreography; that is the rollout engine's job).
//!
//! Hosts are checked against the inventory before anything is sent; `deploy` and
//! `activate` are refused on hosts in service (UP in a load balancer, or with
//! their health-check file present: the agent checks that) unless `--force`.
//! Then each host is called concurrently (at most `concurrency` at a time) and its
//! progress printed as it comes, prefixed with its name.

use std::process::ExitCode;

use futures::StreamExt;
use handover_common::names::{HookName, ReleaseName, RepoUrl, Revision};
use handover_common::proto::deploy::{
    ActivateTarget, DeployProgress, DeployReply, DeployRequest, ReleaseList, ReleaseRecord,
};
use handover_common::proto::{Progress, Reply, Request};
use serde::Serialize;

use crate::config::{CoordinatorConfig, HostEntry};
use crate::fleet::{Fleet, FleetError};
use crate::output::Table;

/// One host's outcome of a mutating deploy command.
#[derive(Debug, Serialize)]
pub struct HostOutcome {
    /// Inventory name.
    pub host: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// The release now current, when it did.
    pub release: Option<ReleaseRecord>,
    /// A hook's last output lines, for `hook`.
    pub output: Vec<String>,
    /// Why not, when it did not.
    pub error: Option<String>,
}

fn progress_line(host: &str, progress: &DeployProgress) -> String {
    let DeployProgress::StepFinished {
        step,
        detail,
        output,
    } = progress;
    let mut text = format!("{host}  {:<14} {detail}", step.to_string());
    for line in output {
        text.push_str(&format!("\n{host}    | {line}"));
    }
    text
}

/// Sends `request` to every host in `hosts` (bounded fan-out), printing progress.
async fn call_all(
    fleet: &Fleet,
    hosts: &[HostEntry],
    request: DeployRequest,
) -> Vec<(HostEntry, Result<DeployReply, FleetError>)> {
    let calls = hosts.iter().enumerate().map(|(i, host)| {
        let request = Request::Deploy(request.clone());
        async move {
            let name = host.name.to_string();
            let result = fleet
                .call(host, request, |p| {
                    if let Progress::Deploy(p) = p {
                        println!("{}", progress_line(&name, &p));
                    }
                })
                .await
                .and_then(|reply| match reply {
                    Reply::Deploy(r) => Ok(r),
                    other => Err(FleetError::Connection(format!(
                        "unexpected answer to a deploy request: {other:?}"
                    ))),
                });
            (i, host.clone(), result)
        }
    });
    let mut results: Vec<_> = futures::stream::iter(calls)
        .buffer_unordered(fleet.concurrency)
        .collect()
        .await;
    results.sort_by_key(|(i, _, _)| *i);
    results.into_iter().map(|(_, h, r)| (h, r)).collect()
}

fn outcome(host: &HostEntry, result: Result<DeployReply, FleetError>) -> HostOutcome {
    let mut out = HostOutcome {
        host: host.name.to_string(),
        ok: false,
        release: None,
        output: Vec::new(),
        error: None,
    };
    match result {
        Ok(DeployReply::Applied(r))
        | Ok(DeployReply::Activated(r))
        | Ok(DeployReply::Marked(r)) => {
            out.ok = true;
            out.release = Some(r);
        }
        Ok(DeployReply::HookRan(h)) => {
            out.ok = true;
            out.output = h.output;
        }
        Ok(other) => out.error = Some(format!("unexpected answer: {other:?}")),
        Err(e) => out.error = Some(e.to_string()),
    }
    out
}

/// Prints the outcomes (a table, or JSON) and returns 1 if any host failed.
fn report(outcomes: &[HostOutcome], json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(outcomes)?);
    } else {
        let mut table = Table::new(&["HOST", "RESULT", "RELEASE", "REF", "SHA"]);
        for o in outcomes {
            match (&o.release, &o.error) {
                (Some(r), _) => table.row(vec![
                    o.host.clone(),
                    "ok".into(),
                    r.name.to_string(),
                    r.rev.clone(),
                    r.short_sha().to_string(),
                ]),
                (None, None) => table.row(vec![o.host.clone(), "ok".into()]),
                (None, Some(_)) => table.row(vec![o.host.clone(), "FAILED".into()]),
            }
        }
        print!("{}", table.render());
        for o in outcomes {
            if let Some(e) = &o.error {
                eprintln!("error: {}: {e}", o.host);
            }
        }
    }
    Ok(if outcomes.iter().any(|o| !o.ok) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Refuses, before anything is sent, when a host is UP in a load balancer.
async fn refuse_hosts_in_service(
    fleet: &Fleet,
    config: &CoordinatorConfig,
    hosts: &[HostEntry],
    command: &str,
) -> anyhow::Result<()> {
    let serving = crate::gate::hosts_in_service(fleet, config, hosts).await;
    if serving.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = serving
        .iter()
        .map(|(host, why)| format!("{host}: {why}"))
        .collect();
    let names: Vec<&str> = serving.iter().map(|(h, _)| h.as_str()).collect();
    anyhow::bail!(
        "refusing to {command} on hosts in service; nothing was changed:\n  {}\nthe switch would serve a release no check has passed to live traffic. Take them out first: `handover drain {} --wait`, then `handover {command}` again, then `handover undrain {}` (or run a rollout); or pass --force to switch them while they serve",
        lines.join("\n  "),
        names.join(" "),
        names.join(" ")
    )
}

async fn run_on_hosts(
    config: &CoordinatorConfig,
    names: &[String],
    request: DeployRequest,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if names.is_empty() {
        anyhow::bail!("name at least one host (see `handover status` for the inventory)");
    }
    let hosts = config.select(names)?;
    let fleet = Fleet::new(config)?;
    let in_service = match &request {
        DeployRequest::Apply { force: false, .. } => Some("deploy"),
        DeployRequest::Activate { force: false, .. } => Some("activate"),
        _ => None,
    };
    if let Some(command) = in_service
        && let Err(e) = refuse_hosts_in_service(&fleet, config, &hosts, command).await
    {
        fleet.close().await;
        return Err(e);
    }
    let results = call_all(&fleet, &hosts, request).await;
    fleet.close().await;
    let outcomes: Vec<HostOutcome> = results
        .into_iter()
        .map(|(host, result)| outcome(&host, result))
        .collect();
    report(&outcomes, json)
}

/// `handover deploy HOST... --repo URL --ref REF [--hook NAME]... [--force]`
pub async fn deploy(
    config: &CoordinatorConfig,
    hosts: &[String],
    repo: RepoUrl,
    rev: Revision,
    hooks: Vec<HookName>,
    force: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let request = DeployRequest::Apply {
        repo,
        rev,
        hooks,
        force,
    };
    run_on_hosts(config, hosts, request, json).await
}

/// `handover activate HOST... --previous | --release NAME [--force]`
pub async fn activate(
    config: &CoordinatorConfig,
    hosts: &[String],
    release: Option<ReleaseName>,
    force: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let target = match release {
        Some(name) => ActivateTarget::Release(name),
        None => ActivateTarget::Previous,
    };
    run_on_hosts(
        config,
        hosts,
        DeployRequest::Activate { target, force },
        json,
    )
    .await
}

/// `handover hook HOST... NAME`: the last argument is the hook's name.
pub async fn hook(
    config: &CoordinatorConfig,
    args: &[String],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let Some((name, hosts)) = args.split_last() else {
        anyhow::bail!("usage: handover hook HOST... NAME");
    };
    if hosts.is_empty() {
        anyhow::bail!("usage: handover hook HOST... NAME (name at least one host, then the hook)");
    }
    let name = HookName::new(name.clone())?;
    let request = DeployRequest::RunHook(name.clone());
    if json {
        return run_on_hosts(config, hosts, request, true).await;
    }
    let selected = config.select(hosts)?;
    let fleet = Fleet::new(config)?;
    let results = call_all(&fleet, &selected, request).await;
    fleet.close().await;
    let outcomes: Vec<HostOutcome> = results
        .into_iter()
        .map(|(host, result)| outcome(&host, result))
        .collect();
    for o in &outcomes {
        for line in &o.output {
            println!("{}  | {line}", o.host);
        }
    }
    report(&outcomes, false)
}

/// `handover releases HOST [--json]`
pub async fn releases(
    config: &CoordinatorConfig,
    host: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let host = config.host(host)?.clone();
    let fleet = Fleet::new(config)?;
    let result = fleet
        .call(&host, Request::Deploy(DeployRequest::Releases), |_| {})
        .await;
    fleet.close().await;
    let list = match result? {
        Reply::Deploy(DeployReply::Releases(list)) => list,
        other => anyhow::bail!("{} answered `releases` with {other:?}", host.name),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        print!("{}", render_releases(&list));
    }
    Ok(ExitCode::SUCCESS)
}

fn render_releases(list: &ReleaseList) -> String {
    if list.releases.is_empty() {
        return "no releases yet\n".into();
    }
    let mut table = Table::new(&["", "RELEASE", "REF", "SHA", "CREATED", "REPO", "FAILED"]);
    for r in &list.releases {
        let mark = if Some(&r.name) == list.current.as_ref() {
            "current"
        } else if Some(&r.name) == list.previous.as_ref() {
            "previous"
        } else if r.outcome.failure().is_some() {
            "failed"
        } else {
            ""
        };
        table.row(vec![
            mark.into(),
            r.name.to_string(),
            r.rev.clone(),
            r.short_sha().to_string(),
            r.created.clone(),
            r.repo.clone(),
            r.outcome.failure().unwrap_or("").to_string(),
        ]);
    }
    table.render()
}
