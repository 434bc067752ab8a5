//! Each runbook action, done on a wave's hosts through their agents. Every
//! function is idempotent: run again after a crash, it finds the work done and
//! says so, or finishes it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::future::{LocalBoxFuture, join_all};
use handover_common::names::HostName;
use handover_common::proto::Progress;
use handover_common::proto::deploy::{ActivateTarget, DeployProgress, ReleaseList, ReleaseOutcome};
use handover_common::proto::lb::StatusKind;

use super::facts::Facts;
use super::steps::{Action, Step};
use super::ui::{Event, Ui};
use crate::config::{CoordinatorConfig, HostEntry};
use crate::drain_wait::{FailCause, HostProgress, HostResult};
use crate::fleet::{Call, Fleet, FleetError, calls};
use crate::plan::{OnDrainTimeout, Plan};

/// What a step produced, kept in the journal.
pub type Outputs = BTreeMap<String, String>;

/// A step's result: what it produced, and what it learnt for later steps.
#[derive(Debug, Default)]
pub struct Done {
    /// For the journal and the operator.
    pub outputs: Outputs,
    /// For later steps (and a later `handover rollback`).
    pub learned: Facts,
}

impl From<Outputs> for Done {
    fn from(outputs: Outputs) -> Done {
        Done {
            outputs,
            learned: Facts::default(),
        }
    }
}

/// The engine's one way to the world: run one step's action on its hosts, given
/// what earlier steps learnt. [`Live`] does it through the agents; unit tests
/// script a fake.
pub trait Actions {
    /// Runs `step`; idempotent, so it may be run again after a crash.
    fn run<'a>(
        &'a self,
        step: &'a Step,
        facts: &'a Facts,
    ) -> LocalBoxFuture<'a, anyhow::Result<Done>>;
}

/// The real fleet: agents over QUIC, HAProxy through the LB agents.
pub struct Live {
    /// The coordinator's config (inventory).
    pub config: CoordinatorConfig,
    /// Connections to the agents, carrying the rollout id.
    pub fleet: Arc<Fleet>,
    /// The validated plan.
    pub plan: Plan,
    /// Progress display.
    pub ui: Arc<Ui>,
    /// What the drain wait knows, for the samples `handover web` reads.
    pub board: Arc<super::samples::Board>,
}

impl Actions for Live {
    fn run<'a>(
        &'a self,
        step: &'a Step,
        facts: &'a Facts,
    ) -> LocalBoxFuture<'a, anyhow::Result<Done>> {
        Box::pin(async move {
            let ctx = Ctx {
                config: &self.config,
                fleet: &self.fleet,
                plan: &self.plan,
                ui: &self.ui,
                board: &self.board,
            };
            execute(&ctx, step, facts).await
        })
    }
}

/// Everything a step needs.
pub struct Ctx<'a> {
    /// The coordinator's config (inventory).
    pub config: &'a CoordinatorConfig,
    /// Connections to the agents, carrying the rollout id.
    pub fleet: &'a Fleet,
    /// The validated plan.
    pub plan: &'a Plan,
    /// Progress display.
    pub ui: &'a Ui,
    /// What the drain wait knows, for the samples `handover web` reads.
    pub board: &'a super::samples::Board,
}

impl Ctx<'_> {
    pub(super) fn progress(&self, host: &HostName, text: impl Into<String>) {
        self.ui.show(Event::Progress {
            host: host.to_string(),
            text: text.into(),
        });
    }

    pub(super) fn entries(&self, hosts: &[HostName]) -> anyhow::Result<Vec<HostEntry>> {
        hosts.iter().map(|h| self.plan.host(h).cloned()).collect()
    }
}

/// Runs `step`. `facts` holds what earlier steps learnt (the release each host had
/// before the rollout); what this step learns comes back in [`Done::learned`].
async fn execute(ctx: &Ctx<'_>, step: &Step, facts: &Facts) -> anyhow::Result<Done> {
    let hosts = &step.hosts;
    let outputs = match &step.action {
        Action::EnsureCapacity => ensure_capacity(ctx, hosts).await,
        Action::RemoveHealthCheckFile => remove_health_check_file(ctx, hosts).await,
        Action::WaitForSessionsToEnd => wait_for_sessions_to_end(ctx, hosts).await,
        Action::DetachFromLoadBalancers => detach_from_load_balancers(ctx, hosts).await,
        Action::RecordCurrentRelease => return record_current_release(ctx, hosts, facts).await,
        Action::ApplyRevision => apply_revision(ctx, hosts, facts).await,
        Action::ActivatePreviousRelease => activate_previous_release(ctx, hosts, facts).await,
        Action::RestoreHealthCheckFile => restore_health_check_file(ctx, hosts).await,
        Action::VerifyHealth => verify_health(ctx, hosts).await,
        Action::AttachToLoadBalancers => attach_to_load_balancers(ctx, hosts).await,
        Action::Pause(d) => pause(ctx, hosts, *d).await,
        Action::Surge(a) => return super::surge_ops::execute(ctx, step, a, facts).await,
        Action::StageRelease => stage_release(ctx, hosts).await,
    };
    outputs.map(Done::from)
}

/// A host did not answer (no handshake, connection lost, stream broken): not the
/// release's fault, so the engine halts for `resume` rather than rolling back.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(pub String);

/// Whether `error` comes from a host that did not answer.
pub fn is_unreachable(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        e.is::<Unreachable>()
            || e.downcast_ref::<FleetError>()
                .is_some_and(FleetError::is_unreachable)
    })
}

/// Runs `f` on every host at once; fails naming every host that failed.
pub(super) async fn on_each<'h, F, Fut>(hosts: &'h [HostName], f: F) -> anyhow::Result<Outputs>
where
    F: Fn(&'h HostName) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Outputs>>,
{
    let f = &f;
    gather(join_all(hosts.iter().map(|h| async move { (h, f(h).await) })).await)
}

/// Runs `f` on every host, at most `limit` at a time; fails naming every host
/// that failed (after all were tried).
pub(super) async fn on_each_bounded<'h, F, Fut>(
    hosts: &'h [HostName],
    limit: usize,
    f: F,
) -> anyhow::Result<Outputs>
where
    F: Fn(&'h HostName) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Outputs>>,
{
    use futures::StreamExt;
    let f = &f;
    let results = futures::stream::iter(hosts.iter().map(|h| async move { (h, f(h).await) }))
        .buffer_unordered(limit.max(1))
        .collect::<Vec<_>>()
        .await;
    gather(results)
}

/// Each host's outputs together, or an error naming every host that failed
/// ([`Unreachable`] when one of them did not answer).
fn gather(results: Vec<(&HostName, anyhow::Result<Outputs>)>) -> anyhow::Result<Outputs> {
    let mut outputs = Outputs::new();
    let mut failures = Vec::new();
    let mut unreachable = false;
    for (host, result) in results {
        match result {
            Ok(o) => outputs.extend(o),
            Err(e) => {
                unreachable |= is_unreachable(&e);
                failures.push(format!("{host}: {e:#}"));
            }
        }
    }
    failures.sort();
    match (failures.is_empty(), unreachable) {
        (true, _) => Ok(outputs),
        (false, true) => Err(Unreachable(failures.join("; ")).into()),
        (false, false) => bail!("{}", failures.join("; ")),
    }
}

pub(super) async fn ask<A>(ctx: &Ctx<'_>, host: &HostName, call: Call<A>) -> anyhow::Result<A> {
    let entry = ctx
        .config
        .host(host.as_str())
        .with_context(|| format!("{host} left the inventory"))?;
    Ok(ctx
        .fleet
        .ask(entry, call, |p| report_progress(ctx, host, &p))
        .await?)
}

fn report_progress(ctx: &Ctx<'_>, host: &HostName, progress: &Progress) {
    let text = match progress {
        Progress::Drain(p) => format!(
            "{} session(s){}",
            p.sessions.total,
            if p.sessions.holders.is_empty() {
                String::new()
            } else {
                format!(
                    " held by {}",
                    p.sessions
                        .holders
                        .iter()
                        .map(|h| format!("{} ({})", h.remote, h.connections))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        ),
        Progress::Deploy(DeployProgress::StepFinished { step, detail, .. }) => {
            format!("{step}: {detail}")
        }
        Progress::Lb(_) => match crate::lb::describe_progress(progress) {
            Some(text) => text,
            None => return,
        },
    };
    ctx.progress(host, text);
}

/// Servers UP per (LB, backend), as each LB's HAProxy reports now, not counting
/// `excluded`; only backends that hold one of the rollout's hosts.
async fn capacity(
    ctx: &Ctx<'_>,
    excluded: &BTreeSet<&HostName>,
) -> anyhow::Result<Vec<(HostName, String, usize, usize)>> {
    let rollout_hosts: BTreeSet<&HostName> = ctx.plan.hosts.iter().map(|h| &h.name).collect();
    let results = ctx.fleet.ask_each(&ctx.plan.lbs, |_| calls::status()).await;
    let mut out = Vec::new();
    for (lb, result) in results {
        let report = match result {
            Ok(report) => report,
            Err(e) => bail!("cannot read load balancer {}: {e}", lb.name),
        };
        let Some(status) = report.lb else {
            bail!(
                "{} has no [haproxy] section in its agent config, but the inventory says it is an lb",
                lb.name
            );
        };
        if let Some(e) = status.error {
            bail!("{}: HAProxy cannot be read: {e}", lb.name);
        }
        let mut backends: BTreeMap<String, (usize, usize, bool)> = BTreeMap::new();
        for s in &status.servers {
            let entry = backends.entry(s.backend.clone()).or_default();
            let ours = s.host.as_ref().is_some_and(|h| rollout_hosts.contains(h));
            entry.2 |= ours;
            if s.status_kind() == StatusKind::Up {
                entry.0 += 1;
                if !s.host.as_ref().is_some_and(|h| excluded.contains(h)) {
                    entry.1 += 1;
                }
            }
        }
        for (backend, (up, up_without, relevant)) in backends {
            if relevant {
                out.push((lb.name.clone(), backend, up, up_without));
            }
        }
    }
    Ok(out)
}

/// Waits until taking `hosts` out leaves at least `min_healthy` UP in every
/// backend of every LB — as HAProxy reports it now.
async fn ensure_capacity(ctx: &Ctx<'_>, hosts: &[HostName]) -> anyhow::Result<Outputs> {
    let min = ctx.plan.file.rollout.min_healthy.get();
    let excluded: BTreeSet<&HostName> = hosts.iter().collect();
    let wait = ctx.plan.file.rollout.attach_timeout;
    let deadline = tokio::time::Instant::now().checked_add(wait).ok_or(
        handover_common::duration::BeyondClock::new("capacity wait", wait),
    )?;
    loop {
        let reading = capacity(ctx, &excluded).await;
        let why = match &reading {
            Ok(rows) if rows.is_empty() => {
                "no load balancer backend holds any of this rollout's hosts: attach them first (handover attach)".to_string()
            }
            Ok(rows) => {
                let short: Vec<String> = rows
                    .iter()
                    .filter(|(_, _, _, without)| *without < min)
                    .map(|(lb, b, up, without)| {
                        format!("{lb}/{b}: {up} UP, {without} without this wave")
                    })
                    .collect();
                if short.is_empty() {
                    let mut outputs = Outputs::new();
                    for (lb, b, up, without) in rows {
                        outputs.insert(format!("up/{lb}/{b}"), format!("{up} ({without} without the wave)"));
                    }
                    return Ok(outputs);
                }
                format!("need {min} UP besides the wave: {}", short.join("; "))
            }
            Err(e) => format!("{e:#}"),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "capacity: {why} (waited {}); bring servers back UP or lower [rollout] min_healthy",
                handover_common::duration::format(ctx.plan.file.rollout.attach_timeout)
            );
        }
        if let Some(h) = hosts.first() {
            ctx.progress(h, format!("waiting for capacity: {why}"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub(super) async fn remove_health_check_file(
    ctx: &Ctx<'_>,
    hosts: &[HostName],
) -> anyhow::Result<Outputs> {
    on_each(hosts, |h| async move {
        let drained = ask(ctx, h, calls::drain(None)).await?;
        Ok(Outputs::from([(
            format!("drained/{h}"),
            if drained.already { "already" } else { "now" }.to_string(),
        )]))
    })
    .await
}

/// Runbook step 13: the same decision as `handover drain --wait` — idle on the
/// host (no direct connection) and on every LB (scur and qcur 0, stot not rising)
/// at the same moment, for the quiet period.
pub(super) async fn wait_for_sessions_to_end(
    ctx: &Ctx<'_>,
    hosts: &[HostName],
) -> anyhow::Result<Outputs> {
    use crate::drain_wait::WaitOptions;
    let r = &ctx.plan.file.rollout;
    let entries = ctx.entries(hosts)?;
    let outcome = crate::drain_wait::wait_for_sessions_to_end(
        ctx.fleet,
        ctx.config,
        &entries,
        WaitOptions {
            timeout: r.drain_timeout,
            quiet: Some(r.quiet),
        },
        &mut |p| {
            ctx.board.waiting(super::samples::DrainFacts::of(p));
            if let Some(text) = wait_line(p) {
                ctx.progress(p.host, text);
            }
        },
    )
    .await;
    let outcome = outcome.inspect_err(|_| {
        for h in hosts {
            ctx.board.ended(h.as_str(), false);
        }
    })?;
    for h in &outcome.hosts {
        ctx.board.ended(h.host.name.as_str(), h.is_idle());
    }
    let ends = outcome
        .hosts
        .iter()
        .map(|h| {
            let end = match &h.result {
                HostResult::Idle { waited, .. } => WaitEnd::Idle(*waited),
                HostResult::TimedOut { .. } => WaitEnd::TimedOut(
                    h.timeout_text(r.drain_timeout)
                        .unwrap_or_else(|| format!("{:?}", h.result)),
                ),
                HostResult::Failed(cause, message) => {
                    WaitEnd::Failed(*cause, format!("{}: {message}", h.host.name))
                }
            };
            (h.host.name.clone(), end)
        })
        .collect();
    judge_wait(ends, r.on_drain_timeout)
}

/// The progress line for a host's wait: one per change of what holds it (who,
/// or which hold), not one per tick of its counters; `None` when nothing changed.
fn wait_line(p: &HostProgress<'_>) -> Option<String> {
    if !p.changed {
        return None;
    }
    let mut text = if p.holds.is_empty() {
        "idle, waiting out the quiet period".to_string()
    } else {
        p.holds
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    };
    if let Some(eta) = p.eta {
        text.push_str(&format!(" — ETA ~{}s", eta.as_secs().max(1)));
    }
    Some(text)
}

/// How one host's wait for its sessions ended, as the rollout judges it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum WaitEnd {
    /// Idle after this long.
    Idle(Duration),
    /// The timeout ran out; why, for the operator.
    TimedOut(String),
    /// The wait itself failed: why, and its text.
    Failed(FailCause, String),
}

/// The wave's verdict after the wait: pure, so it is tested without processes.
/// Only a timeout may go on under `on_drain_timeout = "proceed"`: a wait that
/// failed stops the wave before it is detached — halted when an agent did not
/// answer (as for every direct call), aborted when someone undrained a host.
fn judge_wait(ends: Vec<(HostName, WaitEnd)>, policy: OnDrainTimeout) -> anyhow::Result<Outputs> {
    let mut outputs = Outputs::new();
    let mut held = Vec::new();
    let mut failed = Vec::new();
    let mut unreachable = Vec::new();
    for (host, end) in ends {
        match end {
            WaitEnd::Idle(waited) => {
                outputs.insert(
                    format!("sessions/{host}"),
                    format!("idle after {}", handover_common::duration::format(waited)),
                );
            }
            WaitEnd::TimedOut(why) => held.push((host, why)),
            WaitEnd::Failed(FailCause::Unreachable, why) => unreachable.push(why),
            WaitEnd::Failed(FailCause::Undrained, _) => failed.push(format!(
                "{host} was undrained during the wait (its health-check file is back), \
                 so its sessions were not waited out and it is not detached; \
                 find out who is working on it before a new rollout"
            )),
            WaitEnd::Failed(FailCause::Other, why) => failed.push(why),
        }
    }
    if !unreachable.is_empty() {
        return Err(Unreachable(unreachable.join("; ")).into());
    }
    if !failed.is_empty() {
        bail!("the wait for sessions to end failed: {}", failed.join("; "));
    }
    if held.is_empty() {
        return Ok(outputs);
    }
    let text: Vec<String> = held.iter().map(|(_, why)| why.clone()).collect();
    match policy {
        OnDrainTimeout::Abort => bail!(
            "sessions did not end: {} ([rollout] on_drain_timeout = \"abort\")",
            text.join("; ")
        ),
        OnDrainTimeout::Proceed => {
            for (h, why) in held {
                outputs.insert(format!("cut/{h}"), why);
            }
            Ok(outputs)
        }
    }
}

pub(super) async fn detach_from_load_balancers(
    ctx: &Ctx<'_>,
    hosts: &[HostName],
) -> anyhow::Result<Outputs> {
    let entries = ctx.entries(hosts)?;
    // Sessions past the drain timeout are cut only when the plan says proceed: the
    // wait step then recorded them, and detach may force.
    let force = ctx.plan.file.rollout.on_drain_timeout == OnDrainTimeout::Proceed;
    let outcomes = crate::lb::detach(
        ctx.fleet,
        &ctx.plan.lbs,
        &entries,
        force,
        Some(
            ctx.plan
                .file
                .rollout
                .drain_timeout
                .min(Duration::from_secs(60)),
        ),
        &|lb, p| report_progress(ctx, lb, p),
    )
    .await;
    lb_outcomes("detached", outcomes)
}

/// The LBs' answers as a step's outputs; a failure names every (host, LB) that
/// failed, and is [`Unreachable`] when one of those LBs did not answer.
fn lb_outcomes(what: &str, outcomes: Vec<crate::lb::LbOutcome>) -> anyhow::Result<Outputs> {
    let mut outputs = Outputs::new();
    let mut failures = Vec::new();
    let mut unreachable = false;
    for o in outcomes {
        match o.result {
            Ok(_) => {
                outputs.insert(format!("{what}/{}/{}", o.host, o.lb), "ok".into());
            }
            Err(e) => {
                unreachable |= o.unreachable;
                failures.push(format!("{} on {}: {e}", o.host, o.lb));
            }
        }
    }
    match (failures.is_empty(), unreachable) {
        (true, _) => Ok(outputs),
        (false, true) => Err(Unreachable(failures.join("; ")).into()),
        (false, false) => bail!("{}", failures.join("; ")),
    }
}

/// The releases on `host`.
pub async fn releases(ctx: &Ctx<'_>, host: &HostName) -> anyhow::Result<ReleaseList> {
    ask(ctx, host, calls::releases()).await
}

/// Learns, for each host not yet recorded, the release it has before the rollout
/// switches it, so a rollback knows where to go back even if the coordinator dies
/// during the apply that follows.
async fn record_current_release(
    ctx: &Ctx<'_>,
    hosts: &[HostName],
    facts: &Facts,
) -> anyhow::Result<Done> {
    let mut done = Done::default();
    for host in hosts.iter().filter(|h| !facts.knows(h)) {
        let current = releases(ctx, host).await?.current;
        done.outputs.insert(
            format!("before/{host}"),
            current.as_ref().map_or("-".into(), ToString::to_string),
        );
        done.learned.before.insert(host.clone(), current);
    }
    Ok(done)
}

/// How many hosts fetch and export a staged release at once: bounded so that a
/// large fleet does not hit the repository (and the bastion's connections) all
/// at once, wide enough that staging ten hosts takes about as long as one.
pub const STAGE_CONCURRENCY: usize = 8;

/// Stages the plan's revision on every host (beside `current`, which does not
/// change), [`STAGE_CONCURRENCY`] at a time. Idempotent: a host that has it
/// staged already answers at once.
async fn stage_release(ctx: &Ctx<'_>, hosts: &[HostName]) -> anyhow::Result<Outputs> {
    let (repo, rev) = ctx.plan.revision();
    on_each_bounded(hosts, STAGE_CONCURRENCY, |h| {
        let (repo, rev) = (repo.clone(), rev.clone());
        async move {
            let record = ask(ctx, h, calls::stage(repo, rev, Vec::new()))
                .await
                .context("could not stage the release (no host has left service)")?;
            Ok(Outputs::from([
                (format!("staged/{h}"), record.name.to_string()),
                (format!("sha/{h}"), record.sha),
            ]))
        }
    })
    .await
}

async fn apply_revision(
    ctx: &Ctx<'_>,
    hosts: &[HostName],
    facts: &Facts,
) -> anyhow::Result<Outputs> {
    let (repo, rev) = ctx.plan.revision();
    on_each(hosts, |h| {
        let (repo, rev) = (repo.clone(), rev.clone());
        async move {
            // Resumed after the switch? Then the host already runs it.
            let list = releases(ctx, h).await?;
            let before = facts.before.get(h);
            if let Some(current) = &list.current
                && before.is_some_and(|b| b.as_ref() != Some(current))
                && let Some(record) = list.releases.iter().find(|r| &r.name == current)
                && record.repo == repo.as_str()
                && record.rev == rev.as_str()
                && record.outcome == ReleaseOutcome::Activated
            {
                return Ok(Outputs::from([
                    (format!("release/{h}"), record.name.to_string()),
                    (format!("sha/{h}"), record.sha.clone()),
                ]));
            }
            // The wave is drained and detached: nothing serves from it.
            let record = ask(ctx, h, calls::apply(repo, rev, Vec::new(), true)).await?;
            Ok(Outputs::from([
                (format!("release/{h}"), record.name.to_string()),
                (format!("sha/{h}"), record.sha),
            ]))
        }
    })
    .await
}

async fn activate_previous_release(
    ctx: &Ctx<'_>,
    hosts: &[HostName],
    facts: &Facts,
) -> anyhow::Result<Outputs> {
    on_each(hosts, |h| async move {
        let Some(before) = facts.release_before(h) else {
            // The rollout never switched this host (or it had no release before).
            return Ok(Outputs::from([(
                format!("activated/{h}"),
                "unchanged".into(),
            )]));
        };
        let list = releases(ctx, h).await?;
        if list.current.as_ref() == Some(before) {
            return Ok(Outputs::from([(
                format!("activated/{h}"),
                before.to_string(),
            )]));
        }
        let target = ActivateTarget::Release(before.clone());
        // The wave is detached (or failing its checks): nothing serves from it.
        let record = ask(ctx, h, calls::activate(target, true)).await?;
        Ok(Outputs::from([(
            format!("activated/{h}"),
            record.name.to_string(),
        )]))
    })
    .await
}

pub(super) async fn restore_health_check_file(
    ctx: &Ctx<'_>,
    hosts: &[HostName],
) -> anyhow::Result<Outputs> {
    on_each(hosts, |h| async move {
        let undrained = ask(ctx, h, calls::undrain()).await?;
        Ok(Outputs::from([(
            format!("undrained/{h}"),
            if undrained.already { "already" } else { "now" }.to_string(),
        )]))
    })
    .await
}

pub(super) async fn verify_health(ctx: &Ctx<'_>, hosts: &[HostName]) -> anyhow::Result<Outputs> {
    let check = ctx.plan.health_check();
    on_each(hosts, |h| {
        let check = check.clone();
        async move {
            let answer = ask(ctx, h, calls::check_health(check)).await;
            if let Err(e) = &answer
                && let Some(why) = crate::gate::failed_check(e)
            {
                mark_unhealthy(ctx, h, why).await;
            }
            let report = answer?;
            Ok(Outputs::from([(
                format!("health/{h}"),
                format!("{} after {} checks", report.last, report.checks),
            )]))
        }
    })
    .await
}

/// Records on `host` that its current release failed the health gate, so
/// `activate --previous` skips it after the rollback; a failure to record is shown,
/// not fatal (the rollback matters more).
async fn mark_unhealthy(ctx: &Ctx<'_>, host: &HostName, why: &str) {
    let reason = format!("health check failed: {why}");
    let marked = match ctx.config.host(host.as_str()) {
        Ok(entry) => crate::gate::mark_unhealthy(ctx.fleet, entry, &reason).await,
        Err(e) => Err(e),
    };
    match marked {
        Ok(release) => ctx.progress(host, format!("release {release} marked unhealthy")),
        Err(e) => ctx.progress(host, format!("could not mark the release unhealthy: {e:#}")),
    }
}

pub(super) async fn attach_to_load_balancers(
    ctx: &Ctx<'_>,
    hosts: &[HostName],
) -> anyhow::Result<Outputs> {
    let entries = ctx.entries(hosts)?;
    let outcomes = crate::lb::attach(
        ctx.fleet,
        &ctx.plan.lbs,
        &entries,
        Some(ctx.plan.file.rollout.attach_timeout),
        &|lb, p| report_progress(ctx, lb, p),
    )
    .await?;
    let checks = fresh_checks(&outcomes);
    let mut outputs = lb_outcomes("attached", outcomes)?;
    outputs.extend(checks);
    Ok(outputs)
}

/// `checks/LB` = the longest wait for HAProxy's fresh checks that LB reported
/// for this wave (a wait its config asks for; the timing summary counts it so).
fn fresh_checks(outcomes: &[crate::lb::LbOutcome]) -> Outputs {
    let mut longest: BTreeMap<String, Duration> = BTreeMap::new();
    for o in outcomes {
        let Ok(handover_common::proto::lb::LbReply::Servers(servers)) = &o.result else {
            continue;
        };
        for wait in servers.iter().filter_map(|s| s.fresh_check) {
            let entry = longest.entry(format!("checks/{}", o.lb)).or_default();
            *entry = (*entry).max(wait);
        }
    }
    longest
        .into_iter()
        .map(|(k, d)| (k, handover_common::duration::format(d)))
        .collect()
}

async fn pause(ctx: &Ctx<'_>, hosts: &[HostName], d: Duration) -> anyhow::Result<Outputs> {
    let end = tokio::time::Instant::now().checked_add(d).ok_or(
        handover_common::duration::BeyondClock::new("canary pause", d),
    )?;
    while tokio::time::Instant::now() < end {
        let left = end - tokio::time::Instant::now();
        if let Some(h) = hosts.first() {
            ctx.progress(
                h,
                format!(
                    "canary pause, {} left",
                    handover_common::duration::format(Duration::from_secs(left.as_secs()))
                ),
            );
        }
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
    }
    Ok(Outputs::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::fake::host;

    fn failed(cause: FailCause) -> WaitEnd {
        WaitEnd::Failed(cause, "web-2: it went wrong".into())
    }

    #[test]
    fn proceed_cuts_only_sessions_that_outlived_the_timeout() {
        let ends = vec![
            (host("web-1"), WaitEnd::Idle(Duration::from_secs(2))),
            (
                host("web-2"),
                WaitEnd::TimedOut("web-2 is still in use".into()),
            ),
        ];
        let out = judge_wait(ends.clone(), OnDrainTimeout::Proceed).expect("proceeds");
        assert_eq!(out["cut/web-2"], "web-2 is still in use");
        assert!(out.contains_key("sessions/web-1"));
        let err = judge_wait(ends, OnDrainTimeout::Abort).expect_err("aborts");
        assert!(format!("{err:#}").contains("on_drain_timeout"), "{err:#}");
    }

    /// Issue: the rollout printed a drain line at every tick of the quiet
    /// period ("0.3s of 0.5s"); it prints one per change, as `drain --wait` does.
    #[test]
    fn a_drain_line_is_shown_once_per_change_not_per_tick() {
        let h = host("web-1");
        let lbs = crate::drain_wait::LbEvidence::default();
        let ticks: Vec<(u64, bool)> = vec![(100, true), (200, false), (300, false), (400, true)];
        let lines: Vec<String> = ticks
            .iter()
            .filter_map(|(ms, changed)| {
                let holds = [crate::drain_wait::Hold::NotYetQuiet {
                    quiet_for: Duration::from_millis(*ms),
                    quiet: Duration::from_millis(500),
                }];
                wait_line(&HostProgress {
                    host: &h,
                    agent: None,
                    lbs: &lbs,
                    holds: &holds,
                    elapsed: Duration::from_millis(*ms),
                    eta: None,
                    quiet_for: Duration::from_millis(*ms),
                    quiet: Duration::from_millis(500),
                    changed: *changed,
                })
            })
            .collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
    }

    fn outcome(lb: &str, result: Result<(), &str>, unreachable: bool) -> crate::lb::LbOutcome {
        crate::lb::LbOutcome {
            host: host("web-1"),
            lb: host(lb),
            result: result
                .map(|()| handover_common::proto::lb::LbReply::Detached(Vec::new()))
                .map_err(str::to_string),
            unreachable,
        }
    }

    /// An LB that does not answer halts the rollout (resume retries); an LB that
    /// refuses fails the step (the rollback path).
    #[test]
    fn an_unreachable_lb_halts_and_a_refusing_one_fails() {
        let ok = outcome("lb-1", Ok(()), false);
        let out = lb_outcomes("detached", vec![ok.clone()]).expect("ok");
        assert_eq!(out["detached/web-1/lb-1"], "ok");

        let silent = outcome("lb-2", Err("no answer from 127.0.1.98:7443"), true);
        let err = lb_outcomes("detached", vec![ok.clone(), silent]).expect_err("fails");
        assert!(is_unreachable(&err), "{err:#}");
        assert!(format!("{err:#}").contains("web-1 on lb-2"), "{err:#}");

        let refusing = outcome("lb-2", Err("sessions remain"), false);
        let err = lb_outcomes("detached", vec![ok, refusing]).expect_err("fails");
        assert!(!is_unreachable(&err), "{err:#}");
    }

    /// A failed wait is no timeout: `proceed` must not detach (and cut) the host.
    #[test]
    fn a_failed_wait_stops_the_wave_even_when_the_plan_says_proceed() {
        for policy in [OnDrainTimeout::Proceed, OnDrainTimeout::Abort] {
            let ends = vec![(host("web-2"), failed(FailCause::Unreachable))];
            let err = judge_wait(ends, policy).expect_err("stops");
            assert!(is_unreachable(&err), "an unreachable agent halts: {err:#}");

            let ends = vec![
                (
                    host("web-1"),
                    WaitEnd::TimedOut("web-1 is still in use".into()),
                ),
                (host("web-2"), failed(FailCause::Undrained)),
            ];
            let err = judge_wait(ends, policy).expect_err("stops");
            assert!(!is_unreachable(&err), "{err:#}");
            let text = format!("{err:#}");
            assert!(
                text.contains("web-2") && text.contains("undrained"),
                "{text}"
            );

            let ends = vec![(host("web-2"), failed(FailCause::Other))];
            let err = judge_wait(ends, policy).expect_err("stops");
            assert!(!is_unreachable(&err), "{err:#}");
        }
    }
}
