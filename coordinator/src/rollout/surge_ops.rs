//! The surge steps done on the fleet: db hooks on the db host's agent, new
//! servers from the provider, the old servers' drain and detach with the
//! in-place mechanics ([`super::ops`]), the bake from HAProxy's own figures.
//! Every function is idempotent, as `resume` needs.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use handover_common::names::{HookName, HostName, HostRole};
use handover_common::proto::applog::LogCursor;
use handover_common::proto::deploy::{HookOutput, ReleaseOutcome};
use handover_common::proto::lb::StatusKind;

use super::facts::Facts;
use super::ops::{self, Ctx, Done, Outputs};
use super::steps::Step;
use super::surge::{SurgeAction, SurgeFacts, new_names};
use super::surge_enroll;
use crate::config::{CoordinatorConfig, HostEntry};
use crate::fleet::calls;
use crate::plan::Plan;
use crate::provider::standby::Pool;
use crate::provider::{ArrayCommand, Launched, command};
use crate::surge_plan::{Inputs, ProviderKind, ProviderSpec};

/// Runs a surge step. Servers a command provider launched are laid over the
/// inventory and the plan first, so every call below reaches them by name.
pub async fn execute(
    ctx: &Ctx<'_>,
    step: &Step,
    action: &SurgeAction,
    facts: &Facts,
) -> anyhow::Result<Done> {
    let (config, plan) = with_launched(ctx.config, ctx.plan, &facts.surge);
    let ctx = Ctx {
        config: &config,
        fleet: ctx.fleet,
        plan: &plan,
        ui: ctx.ui,
        board: ctx.board,
    };
    run(&ctx, step, action, facts).await
}

/// The inventory and plan with the launched servers in them.
fn with_launched(
    config: &CoordinatorConfig,
    plan: &Plan,
    facts: &SurgeFacts,
) -> (CoordinatorConfig, Plan) {
    let mut config = config.clone();
    let mut plan = plan.clone();
    let entries: Vec<HostEntry> = facts.launched.values().flatten().map(entry).collect();
    for e in &entries {
        config.hosts.add(e.clone());
    }
    if let Some(s) = plan.surge.as_mut() {
        s.launched = entries;
    }
    // Hooks and providers get the inputs version recorded for this rollout (the
    // plan's [inputs] over the current version).
    if let Some(inputs) = &facts.inputs {
        plan.file.inputs = Some(inputs.clone());
    }
    (config, plan)
}

fn entry(l: &Launched) -> HostEntry {
    HostEntry {
        name: l.name.clone(),
        address: l.address.clone(),
        roles: [HostRole::App].into(),
        app: Some(l.app),
        standby: false,
        source: Vec::new(),
    }
}

async fn run(
    ctx: &Ctx<'_>,
    step: &Step,
    action: &SurgeAction,
    facts: &Facts,
) -> anyhow::Result<Done> {
    use SurgeAction::*;
    let old = &step.hosts;
    let out = match action {
        BackupDatabase => return backup_database(ctx).await,
        MigrateDatabase => db_hook(ctx, |d| d.migrate.clone()).await,
        LaunchNewServers { batch } => return launch_new_servers(ctx, *batch, facts).await,
        EnrollNewServers { batch } => {
            let servers = ctx.entries(&new_hosts(ctx, facts, Some(*batch)))?;
            let ids = facts
                .surge
                .join_tokens
                .get(batch)
                .cloned()
                .unwrap_or_default();
            surge_enroll::enroll_new_servers(ctx, *batch, &servers, &ids).await
        }
        RunSystemHooks { batch } => {
            run_system_hooks(ctx, &new_hosts(ctx, facts, Some(*batch))).await
        }
        SaveInputs => Ok(save_inputs(inputs(ctx), facts.surge.inputs_version)),
        DeployRevision { batch } => {
            deploy_revision(ctx, &new_hosts(ctx, facts, Some(*batch))).await
        }
        VerifyNewServers { batch } => {
            verify_new_servers(ctx, &new_hosts(ctx, facts, Some(*batch))).await
        }
        DisableArray => {
            let out = array(ctx, ArrayCommand::Disable).await?;
            let mut done = Done::from(out);
            done.learned.surge.array_disabled = true;
            return Ok(done);
        }
        AttachNewServers => {
            let new = new_hosts(ctx, facts, None);
            let mut out = ops::restore_health_check_file(ctx, &new).await?;
            out.extend(ops::attach_to_load_balancers(ctx, &new).await?);
            Ok(out)
        }
        RemoveHealthCheckFileOnOld => ops::remove_health_check_file(ctx, old).await,
        WaitForSessionsToEndOnOld => ops::wait_for_sessions_to_end(ctx, old).await,
        DetachOldServers => {
            let out = ops::detach_from_load_balancers(ctx, old).await?;
            let mut done = Done::from(out);
            done.learned.surge.detached_ms = Some(crate::journal::now_ms());
            return Ok(done);
        }
        UpdateArray => array(ctx, ArrayCommand::Update).await,
        EnableArray => array(ctx, ArrayCommand::Enable).await,
        SmokeCheckAndBake => smoke_check_and_bake(ctx, &new_hosts(ctx, facts, None)).await,
        TerminateOldServers => terminate_old_servers(ctx, old, facts).await,
        ReattachOldServers => {
            let mut out = ops::restore_health_check_file(ctx, old).await?;
            out.extend(ops::attach_to_load_balancers(ctx, old).await?);
            Ok(out)
        }
        DrainNewServers => {
            let new = new_hosts(ctx, facts, None);
            let mut out = ops::remove_health_check_file(ctx, &new).await?;
            out.extend(ops::wait_for_sessions_to_end(ctx, &new).await?);
            Ok(out)
        }
        DetachNewServers => {
            ops::detach_from_load_balancers(ctx, &new_hosts(ctx, facts, None)).await
        }
        TerminateNewServers => return terminate_new_servers(ctx, facts).await,
    };
    out.map(Done::from)
}

/// The new servers of `batch` (all: `None`): standby hosts by name, or those a
/// command provider launched (journaled).
fn new_hosts(ctx: &Ctx<'_>, facts: &Facts, batch: Option<usize>) -> Vec<HostName> {
    match ctx.plan.surge.as_ref().map(|s| s.provider) {
        Some(ProviderKind::Command) => facts
            .surge
            .launched
            .iter()
            .filter(|(b, _)| batch.is_none_or(|want| **b == want))
            .flat_map(|(_, servers)| servers.iter().map(|s| s.name.clone()))
            .collect(),
        _ => new_names(ctx.plan, batch),
    }
}

fn inputs<'a>(ctx: &'a Ctx<'_>) -> &'a Inputs {
    static EMPTY: Inputs = Inputs::new();
    ctx.plan.file.inputs.as_ref().unwrap_or(&EMPTY)
}

fn provider<'a>(ctx: &'a Ctx<'_>) -> Option<&'a ProviderSpec> {
    ctx.plan.file.provider.as_ref()
}

/// Runs hook `name` on `host`'s agent with the plan's inputs (each as
/// `HANDOVER_INPUT_<KEY>`, passed as data).
async fn hook(ctx: &Ctx<'_>, host: &HostName, name: &HookName) -> anyhow::Result<HookOutput> {
    ops::ask(
        ctx,
        host,
        calls::run_hook(name.clone(), inputs(ctx).clone()),
    )
    .await
    .with_context(|| format!("hook {name} on {host}"))
}

/// Its output lines.
async fn run_hook(ctx: &Ctx<'_>, host: &HostName, name: &HookName) -> anyhow::Result<Vec<String>> {
    Ok(hook(ctx, host, name).await?.output)
}

/// A `[db]` hook on the db host; skipped when the plan names none.
async fn db_hook(
    ctx: &Ctx<'_>,
    which: impl Fn(&crate::surge_plan::DbSpec) -> Option<HookName>,
) -> anyhow::Result<Outputs> {
    let hook = ctx.plan.file.db.as_ref().and_then(which);
    let db = ctx.plan.surge.as_ref().and_then(|s| s.db.as_ref());
    let (Some(hook), Some(db)) = (hook, db) else {
        return Ok(Outputs::from([(
            "skipped".into(),
            "no hook in [db]".into(),
        )]));
    };
    let lines = run_hook(ctx, &db.name, &hook).await?;
    Ok(Outputs::from([(
        format!("hook/{hook}/{}", db.name),
        lines.last().cloned().unwrap_or_default(),
    )]))
}

/// Runbook step 1: the artifact the hook reported (its last stdout line, JSON
/// `{path, size, sha256}`, checked against the file by the agent) is journaled,
/// as an output and a fact.
async fn backup_database(ctx: &Ctx<'_>) -> anyhow::Result<Done> {
    let hook_name = ctx.plan.file.db.as_ref().and_then(|d| d.backup.clone());
    let db = ctx.plan.surge.as_ref().and_then(|s| s.db.as_ref());
    let (Some(name), Some(db)) = (hook_name, db) else {
        return Ok(Done::from(Outputs::from([(
            "skipped".into(),
            "no backup hook in [db]".into(),
        )])));
    };
    let out = hook(ctx, &db.name, &name).await?;
    let Some(artifact) = out.artifact else {
        bail!(
            "backup hook {name} on {} reported no artifact: its last stdout line must be one JSON object {{\"path\": ..., \"size\": ..., \"sha256\": ...}} naming the snapshot",
            db.name
        );
    };
    let line = serde_json::to_string(&artifact)?;
    let mut done = Done::from(Outputs::from([
        ("artifact/path".into(), artifact.path.clone()),
        ("artifact/size".into(), artifact.size.to_string()),
        ("artifact/sha256".into(), artifact.sha256.clone()),
    ]));
    done.learned.surge.backup = Some(line);
    Ok(done)
}

/// Runbook step 3: new servers. Standby hosts exist already (their agents must
/// answer); a command provider launches them once (journaled, so a resumed
/// rollout does not launch twice).
async fn launch_new_servers(ctx: &Ctx<'_>, batch: usize, facts: &Facts) -> anyhow::Result<Done> {
    let Some(surge) = &ctx.plan.surge else {
        bail!("not a surge plan");
    };
    if surge.provider == ProviderKind::Standby || facts.surge.launched.contains_key(&batch) {
        let hosts = new_hosts(ctx, facts, Some(batch));
        return Ok(Done::from(Outputs::from([(
            format!("batch/{}", batch + 1),
            hosts
                .iter()
                .map(HostName::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        )])));
    }
    let Some(p) = provider(ctx) else {
        bail!("[surge] provider = \"command\" without [provider]");
    };
    let Some(launch) = &p.launch else {
        bail!("[provider] launch is not set");
    };
    let count = surge.batches().get(batch).copied().unwrap_or(0);
    let like = ctx
        .plan
        .hosts
        .first()
        .map(|h| h.name.clone())
        .context("no old server to clone")?;
    let tokens = match &surge.enroll {
        Some(e) => {
            let rollout = surge_enroll::rollout_id(ctx.fleet)?;
            Some(surge_enroll::tokens_for_launch(
                e, rollout, batch, count, p.timeout,
            )?)
        }
        None => None,
    };
    let join = tokens.as_ref().map(|t| &t.join);
    let launched = command::launch(launch, &like, count, inputs(ctx), join, p.timeout).await;
    let servers = match launched {
        Ok(servers) => servers,
        Err(err) => {
            // Nothing was launched that could use them.
            if let Some(e) = &surge.enroll {
                let rollout = surge_enroll::rollout_id(ctx.fleet)?;
                surge_enroll::revoke_unused(e, rollout, Some(batch))?;
            }
            return Err(err.into());
        }
    };
    let mut done = Done::from(Outputs::from([(
        format!("batch/{}", batch + 1),
        servers
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    )]));
    done.learned.surge.launched.insert(batch, servers);
    if let Some(t) = tokens {
        done.outputs.insert(
            format!("join-tokens/{}", batch + 1),
            t.ids
                .iter()
                .map(|id| id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        );
        done.learned.surge.join_tokens.insert(batch, t.ids);
    }
    Ok(done)
}

/// Runbook step 4: each new server's agent answers (a launched one may still be
/// booting), then the `[surge] system` hooks run on it in order.
async fn run_system_hooks(ctx: &Ctx<'_>, hosts: &[HostName]) -> anyhow::Result<Outputs> {
    let hooks = ctx
        .plan
        .file
        .surge
        .as_ref()
        .map(|s| s.system.clone())
        .unwrap_or_default();
    ops::on_each(hosts, |h| {
        let hooks = hooks.clone();
        async move {
            wait_for_agent(ctx, h).await?;
            let mut out = Outputs::new();
            for hook in &hooks {
                let lines = run_hook(ctx, h, hook).await?;
                out.insert(
                    format!("hook/{hook}/{h}"),
                    lines.last().cloned().unwrap_or_default(),
                );
            }
            out.insert(format!("agent/{h}"), "answers".into());
            Ok(out)
        }
    })
    .await
}

/// Waits until `host`'s agent answers, up to `[rollout] attach_timeout`.
async fn wait_for_agent(ctx: &Ctx<'_>, host: &HostName) -> anyhow::Result<()> {
    let wait = ctx.plan.file.rollout.attach_timeout;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match ops::ask(ctx, host, calls::status()).await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e.context(format!(
                    "the agent of new server {host} did not answer within {}",
                    handover_common::duration::format(wait)
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Runbook step 5: the inputs this rollout deploys with. They were recorded as
/// a numbered version before the rollout started (`handover inputs history`);
/// the step journals which, and the values.
fn save_inputs(inputs: &Inputs, version: Option<u64>) -> Outputs {
    let mut out: Outputs = inputs
        .iter()
        .map(|(k, v)| (format!("input/{}", k.as_str()), v.clone()))
        .collect();
    out.insert(
        "inputs/version".into(),
        version.map_or_else(|| "-".into(), |v| v.to_string()),
    );
    out
}

/// Runbook step 6: the revision on each new server (nothing serves from it yet,
/// so the switch is forced); one that has it already is left alone.
async fn deploy_revision(ctx: &Ctx<'_>, hosts: &[HostName]) -> anyhow::Result<Outputs> {
    let (repo, rev) = ctx.plan.revision();
    ops::on_each(hosts, |h| {
        let (repo, rev) = (repo.clone(), rev.clone());
        async move {
            let list = ops::releases(ctx, h).await?;
            if let Some(current) = &list.current
                && let Some(r) = list.releases.iter().find(|r| &r.name == current)
                && r.repo == repo.as_str()
                && r.rev == rev.as_str()
                && r.outcome == ReleaseOutcome::Activated
            {
                return Ok(Outputs::from([(
                    format!("release/{h}"),
                    r.name.to_string(),
                )]));
            }
            let record = ops::ask(ctx, h, calls::apply(repo, rev, Vec::new(), true)).await?;
            Ok(Outputs::from([
                (format!("release/{h}"), record.name.to_string()),
                (format!("sha/{h}"), record.sha),
            ]))
        }
    })
    .await
}

/// Runbook step 7: `[health]` on each new server, then the `[db] check` hook on
/// it (its DB connectivity).
async fn verify_new_servers(ctx: &Ctx<'_>, hosts: &[HostName]) -> anyhow::Result<Outputs> {
    let mut out = ops::verify_health(ctx, hosts).await?;
    if let Some(check) = ctx.plan.file.db.as_ref().and_then(|d| d.check.clone()) {
        out.extend(
            ops::on_each(hosts, |h| {
                let check = check.clone();
                async move {
                    let lines = run_hook(ctx, h, &check).await.with_context(|| {
                        format!("new server {h} failed the [db] check (DB connectivity)")
                    })?;
                    Ok(Outputs::from([(
                        format!("dbcheck/{h}"),
                        lines.last().cloned().unwrap_or_else(|| "ok".into()),
                    )]))
                }
            })
            .await?,
        );
    }
    Ok(out)
}

/// Runbook steps 10, 15, 16 (and the array back on, on the way back).
async fn array(ctx: &Ctx<'_>, cmd: ArrayCommand) -> anyhow::Result<Outputs> {
    let Some((p, exe)) = provider(ctx).and_then(|p| p.array.as_ref().map(|e| (p, e))) else {
        return Ok(Outputs::from([(
            format!("array/{}", cmd.as_str()),
            "no [provider] array: skipped".into(),
        )]));
    };
    command::array(exe, cmd, inputs(ctx), p.timeout).await?;
    Ok(Outputs::from([(
        format!("array/{}", cmd.as_str()),
        "ok".into(),
    )]))
}

/// One LB's figures for the new servers: (host → (UP on every backend, 5xx, stot)).
type Figures = BTreeMap<HostName, (bool, u64, u64)>;

/// Every LB's figures for `hosts`, summed per host.
async fn figures(ctx: &Ctx<'_>, hosts: &[HostName]) -> anyhow::Result<Figures> {
    let mut out: Figures = hosts.iter().map(|h| (h.clone(), (true, 0, 0))).collect();
    let mut seen: BTreeMap<HostName, usize> = BTreeMap::new();
    for (lb, result) in ctx.fleet.ask_each(&ctx.plan.lbs, |_| calls::status()).await {
        let report =
            result.map_err(|e| anyhow::anyhow!("cannot read load balancer {}: {e}", lb.name))?;
        let status = report
            .lb
            .with_context(|| format!("{} has no [haproxy] section", lb.name))?;
        if let Some(e) = status.error {
            bail!("{}: HAProxy cannot be read: {e}", lb.name);
        }
        for s in &status.servers {
            let Some(h) = s.host.as_ref() else { continue };
            if let Some(f) = out.get_mut(h) {
                f.0 &= s.status_kind() == StatusKind::Up;
                f.1 += s.hrsp_5xx;
                f.2 += s.stot;
                *seen.entry(h.clone()).or_default() += 1;
            }
        }
    }
    for (h, f) in out.iter_mut() {
        f.0 &= seen.get(h).is_some_and(|n| *n >= ctx.plan.lbs.len());
    }
    Ok(out)
}

/// The bake's verdict on one sample (pure): `Err` names the first new server
/// whose 5xx answers since the start, over its sessions, passed `max`.
pub fn judge_bake(start: &Figures, now: &Figures, max: f64) -> Result<(), String> {
    for (h, (_, fives, stot)) in now {
        let (_, fives0, stot0) = start.get(h).copied().unwrap_or((true, 0, 0));
        let errors = fives.saturating_sub(fives0);
        let total = stot.saturating_sub(stot0).max(errors).max(1);
        #[allow(clippy::cast_precision_loss)]
        let ratio = errors as f64 / total as f64;
        if errors > 0 && ratio > max {
            return Err(format!(
                "{h} answered {errors} 5xx over {total} session(s) during the bake (ratio {ratio:.3} > [bake] max_5xx_ratio {max})"
            ));
        }
    }
    Ok(())
}

/// The bake's watch on the new servers' error logs: a cursor per host whose
/// agent watches one, and the error lines counted so far.
struct LogWatch {
    cursors: BTreeMap<HostName, LogCursor>,
    errors: BTreeMap<HostName, (u64, Vec<String>)>,
    unwatched: Outputs,
}

impl LogWatch {
    /// Takes a cursor at the end of each host's error log (counting nothing old).
    async fn start(ctx: &Ctx<'_>, hosts: &[HostName]) -> LogWatch {
        let mut watch = LogWatch {
            cursors: BTreeMap::new(),
            errors: BTreeMap::new(),
            unwatched: Outputs::new(),
        };
        for h in hosts {
            match ops::ask(ctx, h, calls::app_errors(None)).await {
                Ok(report) => {
                    watch.cursors.insert(h.clone(), report.cursor);
                }
                Err(e) => {
                    watch
                        .unwatched
                        .insert(format!("errorlog/{h}"), format!("not watched: {e:#}"));
                }
            }
        }
        watch
    }

    /// Reads what each log gained; `Err` names a host past `max`.
    async fn sample(&mut self, ctx: &Ctx<'_>, max: Option<u64>) -> anyhow::Result<()> {
        for (h, cursor) in self.cursors.iter_mut() {
            let report = ops::ask(ctx, h, calls::app_errors(Some(*cursor))).await?;
            *cursor = report.cursor;
            let seen = self.errors.entry(h.clone()).or_default();
            seen.0 += report.errors;
            if !report.last.is_empty() {
                seen.1 = report.last;
            }
            if let Some(max) = max
                && seen.0 > max
            {
                bail!(
                    "bake: {h} logged {} error line(s) in its [app] error_log, more than [bake] max_error_lines = {max}; last: {}",
                    seen.0,
                    seen.1.join(" | ")
                );
            }
        }
        Ok(())
    }
}

/// Runbook step 17: every new server UP on every LB (the smoke check, as HAProxy
/// itself sees it), then the bake: HAProxy's 5xx count per new server and the
/// error lines of its `[app] error_log`, sampled each second; past a threshold
/// the step fails and the rollout goes back.
async fn smoke_check_and_bake(ctx: &Ctx<'_>, hosts: &[HostName]) -> anyhow::Result<Outputs> {
    let start = figures(ctx, hosts).await?;
    if let Some((h, _)) = start.iter().find(|(_, f)| !f.0) {
        bail!("smoke check: new server {h} is not UP on every load balancer");
    }
    let bake = ctx.plan.file.bake.clone().unwrap_or_default();
    let mut logs = LogWatch::start(ctx, hosts).await;
    let duration = bake.duration.unwrap_or(Duration::ZERO);
    let end = tokio::time::Instant::now() + duration;
    let mut last = start.clone();
    while tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1).min(end - tokio::time::Instant::now())).await;
        last = figures(ctx, hosts).await?;
        judge_bake(&start, &last, bake.max_5xx_ratio)
            .map_err(|why| anyhow::anyhow!("bake: {why}"))?;
        logs.sample(ctx, bake.max_error_lines).await?;
        if let Some(h) = hosts.first() {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            ctx.progress(h, format!("baking, {}s left", left.as_secs()));
        }
    }
    let mut out: Outputs = last
        .iter()
        .map(|(h, (_, fives, stot))| {
            let (_, f0, s0) = start[h];
            (
                format!("bake/{h}"),
                format!(
                    "{} 5xx in {} session(s)",
                    fives - f0.min(*fives),
                    stot - s0.min(*stot)
                ),
            )
        })
        .collect();
    for (h, (n, _)) in &logs.errors {
        out.insert(format!("errorlog/{h}"), format!("{n} error line(s)"));
    }
    out.extend(logs.unwatched);
    Ok(out)
}

/// Runbook step 18: the old servers, detached with no sessions left on any LB
/// (or past `[surge] terminate_after` since their detach), are terminated — or,
/// with the standby provider, handed back to the pool, running.
async fn terminate_old_servers(
    ctx: &Ctx<'_>,
    old: &[HostName],
    facts: &Facts,
) -> anyhow::Result<Outputs> {
    let ttl = ctx.plan.file.surge.as_ref().and_then(|s| s.terminate_after);
    let deadline = ttl.and_then(|ttl| {
        let detached = facts.surge.detached_ms?;
        let elapsed = crate::journal::now_ms().saturating_sub(detached);
        Some(Duration::from_millis(
            u64::try_from(ttl.as_millis())
                .unwrap_or(u64::MAX)
                .saturating_sub(elapsed),
        ))
    });
    let until =
        tokio::time::Instant::now() + deadline.unwrap_or(ctx.plan.file.rollout.drain_timeout);
    loop {
        let busy = serving(ctx, old).await?;
        if busy.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= until {
            if deadline.is_some() {
                break;
            }
            bail!(
                "old servers still attached or in use, not terminated: {}",
                busy.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    match ctx.plan.surge.as_ref().map(|s| s.provider) {
        Some(ProviderKind::Command) => {
            let p = provider(ctx).context("no [provider]")?;
            let exe = p.terminate.as_ref().context("no [provider] terminate")?;
            command::terminate(exe, old, inputs(ctx), p.timeout).await?;
            Ok(Outputs::from([("terminated".into(), names(old))]))
        }
        _ => {
            let new = new_names(ctx.plan, None);
            let journal = crate::journal::Journal::open(ctx.config)?;
            Pool::after_handover(ctx.config, old, &new).save(&journal, &ctx.config.state_dir)?;
            Ok(Outputs::from([("standby".into(), names(old))]))
        }
    }
}

/// The old servers some LB still has in rotation or with sessions.
async fn serving(ctx: &Ctx<'_>, hosts: &[HostName]) -> anyhow::Result<Vec<String>> {
    let mut busy = Vec::new();
    for (lb, result) in ctx.fleet.ask_each(&ctx.plan.lbs, |_| calls::status()).await {
        let report =
            result.map_err(|e| anyhow::anyhow!("cannot read load balancer {}: {e}", lb.name))?;
        for s in report.lb.map(|l| l.servers).unwrap_or_default() {
            let Some(h) = s.host.as_ref().filter(|h| hosts.contains(h)) else {
                continue;
            };
            let up = matches!(s.status_kind(), StatusKind::Up);
            if up || s.scur > 0 || s.qcur > 0 {
                busy.push(format!(
                    "{h} on {} ({}, {} in flight)",
                    lb.name, s.status, s.scur
                ));
            }
        }
    }
    Ok(busy)
}

/// The way back: the new servers terminated (command provider: those launched,
/// as journaled) or drained and handed back to the pool, running.
async fn terminate_new_servers(ctx: &Ctx<'_>, facts: &Facts) -> anyhow::Result<Done> {
    let new = new_hosts(ctx, facts, None);
    let mut done = Done::default();
    match ctx.plan.surge.as_ref().map(|s| s.provider) {
        Some(ProviderKind::Command) => {
            if !new.is_empty() {
                let p = provider(ctx).context("no [provider]")?;
                let exe = p.terminate.as_ref().context("no [provider] terminate")?;
                command::terminate(exe, &new, inputs(ctx), p.timeout).await?;
            }
            done.outputs.insert("terminated".into(), names(&new));
            done.learned.surge.forget_launched = true;
            // Tokens of a launch that never got as far as enrolling.
            if let Some(e) = ctx.plan.surge.as_ref().and_then(|s| s.enroll.as_ref()) {
                let rollout = surge_enroll::rollout_id(ctx.fleet)?;
                let revoked = surge_enroll::revoke_unused(e, rollout, None)?;
                if !revoked.is_empty() {
                    done.outputs.insert(
                        "tokens/revoked-unused".into(),
                        revoked
                            .iter()
                            .map(|id| id.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    );
                }
            }
        }
        _ => {
            done.outputs = ops::remove_health_check_file(ctx, &new).await?;
            done.outputs.insert("standby".into(), names(&new));
        }
    }
    Ok(done)
}

fn names(hosts: &[HostName]) -> String {
    hosts
        .iter()
        .map(HostName::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::fake::host;

    #[test]
    fn the_bake_rolls_back_past_the_5xx_ratio_only() {
        let start: Figures = [(host("web-4"), (true, 2, 100))].into();
        let calm: Figures = [(host("web-4"), (true, 2, 400))].into();
        assert!(judge_bake(&start, &calm, 0.01).is_ok());
        let burst: Figures = [(host("web-4"), (true, 30, 200))].into();
        let err = judge_bake(&start, &burst, 0.01).expect_err("rolls back");
        assert!(err.contains("web-4") && err.contains("28 5xx"), "{err}");
        let one: Figures = [(host("web-4"), (true, 3, 1100))].into();
        assert!(
            judge_bake(&start, &one, 0.01).is_ok(),
            "1 in 1000 is within 0.01"
        );
    }
}
