//! `handover deploy|releases|activate|hook`: ad-hoc revision changes on named
//! hosts (no load-balancer choreography; that is the rollout engine's job).
//!
//! Hosts are checked against the inventory before anything is sent; `deploy` and
//! `activate` are refused on hosts in service (UP in a load balancer, or with
//! their health-check file present: the agent checks that) unless `--force`.
//! Then each host is called concurrently (at most `concurrency` at a time) and its
//! progress printed as it comes, prefixed with its name.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use futures::StreamExt;
use handover_common::duration;
use handover_common::names::{HookName, InputKey, ReleaseName, RepoUrl, Revision};
use handover_common::proto::Progress;
use handover_common::proto::deploy::{
    ActivateTarget, DeployProgress, DeployReply, DeployRequest, HookArtifact, ReleaseList,
    ReleaseRecord,
};
use serde::Serialize;

use crate::config::{CoordinatorConfig, HostEntry};
use crate::drain_wait::{HostResult, WaitOptions, wait_for_sessions_to_end};
use crate::fleet::{Fleet, FleetError, calls};
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
    /// The file a hook reported making, checked by its agent, for `hook`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact: Option<HookArtifact>,
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
        let request = calls::deploy(request.clone());
        async move {
            let name = host.name.to_string();
            let result = fleet
                .ask(host, request, |p| {
                    if let Progress::Deploy(p) = p {
                        println!("{}", progress_line(&name, &p));
                    }
                })
                .await;
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
        artifact: None,
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
            out.artifact = h.artifact;
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
        "refusing to {command} on hosts in service; nothing was changed:\n  {}\nthe switch would serve a release no check has passed to live traffic. Run `handover {command}` again with --drain (each host in turn: drain, wait for its sessions, switch, undrain), or do it by hand: `handover drain {} --wait`, `handover {command}`, `handover undrain {}` (or run a rollout); or pass --force to switch them while they serve",
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
    let hosts = select(config, names)?;
    let fleet = Fleet::new(config)?;
    let results = call_all(&fleet, &hosts, request).await;
    fleet.close().await;
    let outcomes: Vec<HostOutcome> = results
        .into_iter()
        .map(|(host, result)| outcome(&host, result))
        .collect();
    report(&outcomes, json)
}

fn select(config: &CoordinatorConfig, names: &[String]) -> anyhow::Result<Vec<HostEntry>> {
    if names.is_empty() {
        anyhow::bail!("name at least one host (see `handover status` for the inventory)");
    }
    config.select(names)
}

/// What `deploy` and `activate` do with a host in service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InService {
    /// Refuse before anything is sent, naming the safe path.
    Refuse,
    /// `--force`: switch it while it serves.
    Force,
    /// `--drain`: one host at a time, take it out (health-check file removed,
    /// sessions waited out for at most this long), switch, put it back.
    Drain(Duration),
}

/// `--force`, `--drain` and `--drain-timeout` as one choice.
pub fn in_service(force: bool, drain: bool, drain_timeout: Duration) -> InService {
    match (force, drain) {
        (true, _) => InService::Force,
        (false, true) => InService::Drain(drain_timeout),
        (false, false) => InService::Refuse,
    }
}

/// Switches `current` on the named hosts with the request `make(force)` builds,
/// treating hosts in service as `in_service` says. `command` names the command in
/// messages.
async fn switch_hosts(
    config: &CoordinatorConfig,
    names: &[String],
    command: &str,
    in_service: InService,
    make: impl Fn(bool) -> DeployRequest,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let hosts = select(config, names)?;
    let fleet = Fleet::new(config)?;
    let outcomes = match in_service {
        InService::Refuse => match refuse_hosts_in_service(&fleet, config, &hosts, command).await {
            Ok(()) => outcomes(call_all(&fleet, &hosts, make(false)).await),
            Err(e) => {
                fleet.close().await;
                return Err(e);
            }
        },
        InService::Force => outcomes(call_all(&fleet, &hosts, make(true)).await),
        // Drained, the agent needs no force: it checks that the file is gone.
        InService::Drain(timeout) => {
            switch_drained(&fleet, config, &hosts, &make(false), timeout, json).await
        }
    };
    fleet.close().await;
    report(&outcomes, json)
}

fn outcomes(results: Vec<(HostEntry, Result<DeployReply, FleetError>)>) -> Vec<HostOutcome> {
    results
        .into_iter()
        .map(|(host, result)| outcome(&host, result))
        .collect()
}

/// The safe path by hand, one host at a time: drain and wait for its sessions to
/// end, switch, undrain (unless it was drained before). A host whose sessions do
/// not end in time is put back without switching, and the hosts after a failure
/// are left alone.
async fn switch_drained(
    fleet: &Fleet,
    config: &CoordinatorConfig,
    hosts: &[HostEntry],
    request: &DeployRequest,
    timeout: Duration,
    json: bool,
) -> Vec<HostOutcome> {
    let mut done = Vec::new();
    for host in hosts {
        let say = |text: String| {
            if !json {
                println!("{}  {text}", host.name);
            }
        };
        let options = WaitOptions {
            timeout,
            quiet: None,
        };
        let wait = wait_for_sessions_to_end(
            fleet,
            config,
            std::slice::from_ref(host),
            options,
            &mut |_| {},
        )
        .await;
        let drained = match wait.map(|mut o| o.hosts.pop()) {
            Ok(Some(d)) => d,
            Ok(None) => {
                done.push(failed(host, "the drain wait reported nothing".into()));
                break;
            }
            Err(e) => {
                done.push(failed(host, format!("cannot drain: {e}")));
                break;
            }
        };
        let was_drained = matches!(drained.result, HostResult::Idle { already: true, .. });
        if let HostResult::Idle { waited, .. } = drained.result {
            say(format!(
                "drained: sessions ended after {}",
                duration::format(waited)
            ));
        } else {
            let why = drained
                .timeout_text(timeout)
                .unwrap_or_else(|| format!("{:?}", drained.result));
            let back = undrain(fleet, host).await;
            done.push(failed(host, format!("not switched: {why}; {back}")));
            break;
        }
        let result = call_all(fleet, std::slice::from_ref(host), request.clone())
            .await
            .pop()
            .map(|(_, r)| r)
            .unwrap_or(Err(FleetError::NoAnswer));
        let mut out = outcome(host, result);
        if !was_drained {
            let back = undrain(fleet, host).await;
            say(back.clone());
            if let Some(e) = &mut out.error {
                e.push_str(&format!("; {back}"));
            }
        }
        let stop = !out.ok;
        done.push(out);
        if stop {
            break;
        }
    }
    done
}

fn failed(host: &HostEntry, error: String) -> HostOutcome {
    HostOutcome {
        host: host.name.to_string(),
        ok: false,
        release: None,
        output: Vec::new(),
        artifact: None,
        error: Some(error),
    }
}

/// Puts `host` back in service; says how that went.
async fn undrain(fleet: &Fleet, host: &HostEntry) -> String {
    match fleet.ask(host, calls::undrain(), |_| {}).await {
        Ok(_) => "undrained: health-check file restored, back in service".into(),
        Err(e) => format!(
            "UNDRAIN FAILED ({e}): the host stays out of service; run `handover undrain {}`",
            host.name
        ),
    }
}

/// `handover deploy HOST... --repo URL --ref REF [--hook NAME]... [--force | --drain]`
pub async fn deploy(
    config: &CoordinatorConfig,
    hosts: &[String],
    repo: RepoUrl,
    rev: Revision,
    hooks: Vec<HookName>,
    in_service: InService,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let make = |force| DeployRequest::Apply {
        repo: repo.clone(),
        rev: rev.clone(),
        hooks: hooks.clone(),
        force,
    };
    switch_hosts(config, hosts, "deploy", in_service, make, json).await
}

/// `handover activate HOST... --previous | --release NAME [--force | --drain]`
pub async fn activate(
    config: &CoordinatorConfig,
    hosts: &[String],
    release: Option<ReleaseName>,
    in_service: InService,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let target = match release {
        Some(name) => ActivateTarget::Release(name),
        None => ActivateTarget::Previous,
    };
    let make = |force| DeployRequest::Activate {
        target: target.clone(),
        force,
    };
    switch_hosts(config, hosts, "activate", in_service, make, json).await
}

/// `KEY=VALUE` of `handover hook --input`.
pub fn parse_input(arg: &str) -> Result<(InputKey, String), String> {
    let Some((key, value)) = arg.split_once('=') else {
        return Err(format!(
            "{arg:?} is not KEY=VALUE: write the input as e.g. APP_ENV=production"
        ));
    };
    let key = InputKey::new(key).map_err(|e| e.to_string())?;
    Ok((key, value.to_string()))
}

/// `handover hook [--input KEY=VALUE]... HOST... NAME`: the last argument is the
/// hook's name.
pub async fn hook(
    config: &CoordinatorConfig,
    args: &[String],
    inputs: BTreeMap<InputKey, String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let Some((name, hosts)) = args.split_last() else {
        anyhow::bail!("usage: handover hook HOST... NAME");
    };
    if hosts.is_empty() {
        anyhow::bail!("usage: handover hook HOST... NAME (name at least one host, then the hook)");
    }
    let name = HookName::new(name.clone())?;
    let request = if inputs.is_empty() {
        DeployRequest::RunHook(name.clone())
    } else {
        DeployRequest::RunHookWith {
            name: name.clone(),
            inputs,
        }
    };
    // Refused here, before any host is dialled, as each agent would refuse it.
    request.check().map_err(anyhow::Error::msg)?;
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
        if let Some(a) = &o.artifact {
            println!(
                "{}  artifact {} ({} bytes, sha256 {})",
                o.host, a.path, a.size, a.sha256
            );
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
    let result = fleet.ask(&host, calls::releases(), |_| {}).await;
    fleet.close().await;
    let list = result?;
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
