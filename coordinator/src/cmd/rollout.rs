//! `handover plan | rollout | resume | rollback | history | show`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde::Serialize;

use handover_common::names::{HostName, ReleaseName};

use crate::config::CoordinatorConfig;
use crate::journal::{Journal, RolloutKind, RolloutRecord, RolloutState, StepOutcome, format_ms};
use crate::output::Table;
use crate::plan::Plan;
use crate::rollout::engine::{Engine, Leased};
pub use crate::rollout::lease::Takeover;
use crate::rollout::steps;
use crate::state::{DeployLock, Holder};

/// `handover plan PLAN`: validate, resolve the revision on every target host
/// (unless `offline`), and print the numbered steps with capacity.
pub async fn plan(
    config: &CoordinatorConfig,
    path: &Path,
    offline: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let config = &crate::provider::standby::current(config.clone())?;
    let plan = Plan::load(path, config)?;
    for warning in crate::advice::plan_warnings(&plan) {
        eprintln!("warning: {warning}");
    }
    let resolved = if offline {
        None
    } else {
        Some(resolve_plan_revision(config, &plan).await?)
    };
    let steps = steps::for_phase(&plan, steps::Phase::Forward);
    if json {
        #[derive(Serialize)]
        struct Line<'a> {
            number: usize,
            wave: usize,
            title: String,
            action: &'a steps::Action,
            hosts: Vec<String>,
        }
        let lines: Vec<Line<'_>> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| Line {
                number: i + 1,
                wave: s.wave + 1,
                title: s.title(&plan),
                action: &s.action,
                hosts: s.hosts.iter().map(|h| h.to_string()).collect(),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&lines)?);
    } else {
        print!("{}", describe(&plan));
        match &resolved {
            Some(resolved) => {
                println!("revision resolved by each host's agent:");
                print!(
                    "{}",
                    crate::gate::render_resolutions(resolved, &plan.revision().1)
                );
            }
            None => println!("revision not checked on the agents (--offline)"),
        }
        print!("{}", render(&plan, &steps));
    }
    Ok(ExitCode::SUCCESS)
}

/// Every target host's agent resolves the plan's revision, or the plan is refused
/// naming each host and why — before anything on any host changes.
async fn resolve_plan_revision(
    config: &CoordinatorConfig,
    plan: &Plan,
) -> anyhow::Result<Vec<crate::gate::Resolution>> {
    let (repo, rev) = plan.revision();
    // A surge plan deploys on its new servers: standby hosts are asked; servers
    // a provider launches do not exist yet.
    let targets = match &plan.surge {
        Some(s) => &s.standby,
        None => &plan.hosts,
    };
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    crate::gate::resolve_revision(config, targets, &repo, &rev).await
}

/// The numbered steps with capacity, as the plan's strategy lays them out.
fn render(plan: &Plan, steps: &[steps::Step]) -> String {
    if plan.surge.is_some() {
        crate::rollout::surge::render(plan, steps)
    } else {
        steps::render(plan, steps)
    }
}

/// Whether resuming `record` still has the plan's revision to apply on some host
/// (its forward phase will run and an apply step is not done yet).
fn revision_still_to_apply(
    config: &CoordinatorConfig,
    record: &RolloutRecord,
    plan: &Plan,
) -> anyhow::Result<bool> {
    // An aborted or halted rollout redoes (or carries on with) its wave forward.
    let forward_runs = record.phase == steps::Phase::Forward
        || matches!(record.state, RolloutState::Aborted | RolloutState::Halted);
    if record.kind != RolloutKind::Rollout || !forward_runs {
        return Ok(false);
    }
    let journal = Journal::open(config)?;
    let journaled = journal.steps(&record.id)?;
    let forward = steps::for_phase(plan, steps::Phase::Forward);
    Ok(forward.iter().enumerate().any(|(i, step)| {
        matches!(
            step.action,
            steps::Action::ApplyRevision
                | steps::Action::Surge(crate::rollout::surge::SurgeAction::DeployRevision { .. })
        ) && !journal.step_done(&journaled, steps::Phase::Forward, i)
    }))
}

fn describe(plan: &Plan) -> String {
    let f = &plan.file;
    if let Some(s) = &plan.surge {
        let enroll = s.enroll.as_ref().map_or_else(String::new, |e| {
            format!(
                "; launched servers enroll with single-use join tokens (CA {})",
                e.ca_dir.display()
            )
        });
        return format!(
            "surge rollout of {} @ {}: {} new server(s) ({}) replace {} in batches of {}; load balancers: {}{enroll}\n",
            f.revision.repo,
            f.revision.reference,
            s.count,
            match (s.provider, crate::provider::aws::settings(plan)) {
                (_, Some(_)) => "EC2 clones, handover-provider-aws",
                (crate::surge_plan::ProviderKind::Standby, _) => "standby pool",
                _ => "provider command",
            },
            plan.hosts
                .iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            s.batch,
            plan.lbs
                .iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    format!(
        "in-place rollout of {} @ {} to {} host(s) in {} wave(s); load balancers: {}; {} of {} servers must stay UP\n",
        f.revision.repo,
        f.revision.reference,
        plan.hosts.len(),
        plan.waves.len(),
        plan.lbs
            .iter()
            .map(|h| h.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        f.rollout.min_healthy,
        plan.servers_in_lb,
    )
}

fn exit_for(state: RolloutState) -> ExitCode {
    match state {
        RolloutState::Succeeded => ExitCode::SUCCESS,
        RolloutState::RolledBack | RolloutState::Aborted => ExitCode::from(1),
        _ => ExitCode::from(2),
    }
}

fn confirm(question: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!("not on a terminal: pass --yes to run without a prompt");
    }
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// Takes the rollout's lock and leases, then announces it: an id and a resume
/// hint appear only for a rollout that `history` will list.
async fn take(
    engine: Engine,
    lock: DeployLock,
    takeover: Takeover,
    json: bool,
) -> anyhow::Result<Leased> {
    let notice = |text: &str| eprintln!("handover: {text}");
    let leased = engine.take(lock, takeover, &notice).await?;
    if !json {
        eprintln!(
            "rollout {} (if this terminal goes away: `handover resume {}`)",
            leased.id(),
            leased.id()
        );
    }
    Ok(leased)
}

/// `handover rollout PLAN [--yes]`.
pub async fn rollout(
    config: CoordinatorConfig,
    path: &Path,
    yes: bool,
    json: bool,
    break_lease: bool,
) -> anyhow::Result<ExitCode> {
    let config = crate::provider::standby::current(config)?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read plan {}", path.display()))?;
    let plan =
        Plan::parse(&text, &config).with_context(|| format!("invalid plan {}", path.display()))?;
    resolve_plan_revision(&config, &plan).await?;
    if !yes {
        print!("{}", describe(&plan));
        let steps = steps::for_phase(&plan, steps::Phase::Forward);
        print!("{}", render(&plan, &steps));
        if !confirm("Run this rollout?")? {
            println!("nothing was changed");
            return Ok(ExitCode::from(1));
        }
    }
    let for_timings = config.clone();
    let journal = Journal::open(&config)?;
    let engine = Engine::new_rollout(config, path, text, plan, json)?;
    let takeover = if break_lease {
        Takeover::Break
    } else {
        Takeover::Refuse
    };
    let lock = lock(&journal, engine.id(), takeover).await?;
    let leased = take(engine, lock, takeover, json).await?;
    let id = leased.id().to_owned();
    let state = leased.run().await?;
    if !json {
        print_timings(&for_timings, &id)?;
    }
    Ok(exit_for(state))
}

/// `handover resume [ROLLOUT] [--takeover | --break-lease]`.
pub async fn resume(
    config: CoordinatorConfig,
    id: Option<&str>,
    json: bool,
    takeover: Takeover,
    migrated: bool,
) -> anyhow::Result<ExitCode> {
    let journal = Journal::open(&config)?;
    let record = journal.find(id)?;
    let lock = lock(&journal, &record.id, takeover).await?;
    // Read again under the lock: a process that just exited changed it.
    let record = journal.find(Some(&record.id))?;
    if migrated {
        mark_migrated(&journal, &record, &config)?;
    }
    let seen = crate::rollout::engine::config_for(config.clone(), &record);
    if let Ok(plan) = Plan::parse(&record.plan_text, &seen)
        && revision_still_to_apply(&config, &record, &plan)?
    {
        resolve_plan_revision(&config, &plan).await?;
    }
    let for_timings = config.clone();
    let engine = Engine::resume(config, record, json)?;
    let leased = take(engine, lock, takeover, json).await?;
    let id = leased.id().to_owned();
    let state = leased.run().await?;
    if !json {
        print_timings(&for_timings, &id)?;
    }
    Ok(exit_for(state))
}

/// `resume --migrated`: the operator checked that the surge rollout's migration,
/// started by an earlier run without a journaled end, did finish; its step is
/// journaled done so it is not run a second time.
fn mark_migrated(
    journal: &Journal,
    record: &RolloutRecord,
    config: &CoordinatorConfig,
) -> anyhow::Result<()> {
    use crate::rollout::surge::SurgeAction;
    let config = crate::rollout::engine::config_for(config.clone(), record);
    let plan = Plan::parse(&record.plan_text, &config)?;
    let forward = steps::for_phase(&plan, steps::Phase::Forward);
    let Some(i) = forward
        .iter()
        .position(|s| s.action == steps::Action::Surge(SurgeAction::MigrateDatabase))
    else {
        bail!(
            "rollout {} has no migration step: --migrated is for surge rollouts",
            record.id
        );
    };
    let title = forward[i].title(&plan);
    journal.step_started(&record.id, steps::Phase::Forward, i, &title)?;
    journal.step_ended(
        &record.id,
        steps::Phase::Forward,
        i,
        StepOutcome::Ok,
        [(
            "migrate".to_string(),
            "done, as the operator confirmed (--migrated)".to_string(),
        )]
        .into(),
    )
}

/// `handover rollback [ROLLOUT]`: the newest rollout when none is named.
pub async fn rollback(
    config: CoordinatorConfig,
    id: Option<&str>,
    yes: bool,
    json: bool,
    break_lease: bool,
) -> anyhow::Result<ExitCode> {
    let journal = Journal::open(&config)?;
    let original = match id {
        Some(id) => journal.find(Some(id))?,
        None => journal
            .rollouts()?
            .into_iter()
            .rev()
            .find(|r| r.kind == RolloutKind::Rollout)
            .ok_or_else(|| anyhow::anyhow!("the journal holds no rollout to roll back"))?,
    };
    if original.kind != RolloutKind::Rollout {
        bail!(
            "{} is itself a rollback: name the rollout to undo",
            original.id
        );
    }
    let engine = Engine::rollback_of(config, &original, json)?;
    if !yes {
        match engine.surge_rollback_summary() {
            Some(summary) => print!("{summary}"),
            None => print!("{}", describe_rollback(&original, &engine.targets())),
        }
        if !confirm(&format!(
            "Put these hosts of {} back on their previous release?",
            original.id
        ))? {
            println!("nothing was changed");
            return Ok(ExitCode::from(1));
        }
    }
    let takeover = if break_lease {
        Takeover::Break
    } else {
        Takeover::Refuse
    };
    let lock = lock(&journal, engine.id(), takeover).await?;
    let leased = take(engine, lock, takeover, json).await?;
    let state = leased.run().await?;
    Ok(if state == RolloutState::RolledBack {
        ExitCode::SUCCESS
    } else {
        exit_for(state)
    })
}

/// Takes the deploy lock for `rollout` (on this bastion for redb, fleet-wide on
/// etcd), waiting for a gone holder (`--takeover`) or breaking it (`--break-lease`).
async fn lock(journal: &Journal, rollout: &str, takeover: Takeover) -> anyhow::Result<DeployLock> {
    let holder = Holder::this(rollout, &crate::rollout::lease::who());
    if takeover == Takeover::Break {
        return journal.break_lock(&holder);
    }
    match journal.try_lock(&holder)? {
        Ok(lock) => Ok(lock),
        Err(held) if takeover == Takeover::Wait => {
            eprintln!(
                "handover: waiting for {} to let go of {rollout}",
                held.holder
            );
            let lock = journal.wait_lock(&holder).await?;
            eprintln!("handover: {} is gone: its lock is free", held.holder);
            Ok(lock)
        }
        Err(held) => Err(held.into()),
    }
}

/// What `rollback` will do, as `rollout` shows its plan: the hosts, newest wave
/// first, each with the release it goes back to.
fn describe_rollback(
    original: &RolloutRecord,
    targets: &[(HostName, Option<ReleaseName>)],
) -> String {
    let mut out = format!(
        "rollback of {} ({}), wave by wave with drain → detach → switch → verify → attach:\n",
        original.id,
        revision_of(&original.plan_text)
    );
    for (host, release) in targets {
        let target = match release {
            None => "had no release before: left as it is".to_string(),
            Some(release) => format!("back to {release}"),
        };
        out.push_str(&format!("  {:<20} {target}\n", host.as_str()));
    }
    out
}

/// "repo@ref" of a journaled plan.
fn revision_of(plan_text: &str) -> String {
    toml::from_str::<crate::plan::PlanFile>(plan_text)
        .map(|p| format!("{}@{}", p.revision.repo, p.revision.reference))
        .unwrap_or_default()
}

#[derive(Serialize)]
struct HistoryLine<'a> {
    #[serde(flatten)]
    record: &'a RolloutRecord,
    created: String,
    updated: String,
}

/// `handover history`.
pub fn history(config: &CoordinatorConfig, json: bool) -> anyhow::Result<ExitCode> {
    let records = Journal::open(config)?.rollouts()?;
    if json {
        let lines: Vec<HistoryLine<'_>> = records
            .iter()
            .map(|r| HistoryLine {
                record: r,
                created: format_ms(r.created_ms),
                updated: format_ms(r.updated_ms),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&lines)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        "ROLLOUT", "KIND", "STATE", "STARTED", "REVISION", "OWNER", "ERROR",
    ]);
    for r in &records {
        let revision = match &r.kind {
            RolloutKind::Rollout => revision_of(&r.plan_text),
            // Where a rollback went: the releases the hosts had before the rollout.
            RolloutKind::Rollback { .. } => back_to(r),
        };
        table.row(vec![
            r.id.clone(),
            match &r.kind {
                RolloutKind::Rollout => "rollout".into(),
                RolloutKind::Rollback { of } => format!("rollback of {of}"),
            },
            r.state.to_string(),
            format_ms(r.created_ms),
            revision,
            r.owner.clone(),
            r.error.clone().unwrap_or_default(),
        ]);
    }
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}

/// "back to 20261126T050301Z-1a2b3c4": the releases a rollback put back.
fn back_to(record: &RolloutRecord) -> String {
    let mut releases: Vec<&str> = record
        .facts
        .before
        .values()
        .flatten()
        .map(|r| r.as_str())
        .collect();
    releases.sort_unstable();
    releases.dedup();
    if releases.is_empty() {
        String::new()
    } else {
        format!("back to {}", releases.join(", "))
    }
}

/// `handover show ROLLOUT`.
pub fn show(config: &CoordinatorConfig, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let journal = Journal::open(config)?;
    let record = journal.find(Some(id))?;
    let steps = journal.steps(id)?;
    if json {
        #[derive(Serialize)]
        struct Show<'a> {
            rollout: &'a RolloutRecord,
            steps: &'a [crate::journal::StepRecord],
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&Show {
                rollout: &record,
                steps: &steps
            })?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("rollout  {}", record.id);
    println!("state    {}  ({})", record.state, record.phase);
    println!("owner    {}", record.owner);
    println!("plan     {}", record.plan_path.display());
    println!("started  {}", format_ms(record.created_ms));
    println!("updated  {}", format_ms(record.updated_ms));
    if let Some(e) = &record.error {
        println!("error    {e}");
    }
    let mut table = Table::new(&["PHASE", "#", "STEP", "STARTED", "TOOK", "OUTCOME"]);
    for s in &steps {
        table.row(vec![
            s.phase.to_string(),
            (s.index + 1).to_string(),
            s.title.clone(),
            format_ms(s.started_ms),
            s.ended_ms
                .map(|e| format!("{:.1}s", e.saturating_sub(s.started_ms) as f64 / 1000.0))
                .unwrap_or_else(|| "-".into()),
            match &s.outcome {
                Some(StepOutcome::Ok) => "ok".into(),
                Some(StepOutcome::Failed(e)) => format!("failed: {e}"),
                None => "under way".into(),
            },
        ]);
    }
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}

/// The timing summary of rollout `id` (after `rollout` and `resume`).
fn print_timings(config: &CoordinatorConfig, id: &str) -> anyhow::Result<()> {
    let journal = Journal::open(config)?;
    let record = journal.find(Some(id))?;
    print!("{}", timings_of(config, &journal, &record)?);
    Ok(())
}

fn timings_of(
    config: &CoordinatorConfig,
    journal: &Journal,
    record: &RolloutRecord,
) -> anyhow::Result<String> {
    let steps = journal.steps(&record.id)?;
    // The plan as journaled with the rollout (the file may have changed since).
    let plan = Plan::parse(&record.plan_text, config).with_context(|| {
        format!(
            "the plan journaled with {} no longer fits this inventory, so its waves cannot be told apart",
            record.id
        )
    })?;
    let timings = crate::rollout::timings::timings(&plan, &steps);
    Ok(crate::rollout::timings::render(&timings))
}

/// `handover show ROLLOUT --timings`: where the rollout's time went.
pub fn show_timings(config: &CoordinatorConfig, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        !json,
        "--timings prints text; for the raw times use `handover show {id} --json` (each step's started_ms and ended_ms)"
    );
    let journal = Journal::open(config)?;
    let record = journal.find(Some(id))?;
    print!("{}", timings_of(config, &journal, &record)?);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_shows_where_a_rollback_went() {
        let mut record = RolloutRecord {
            format: crate::journal::FORMAT,
            id: "r-2".into(),
            kind: RolloutKind::Rollback { of: "r-1".into() },
            owner: "ops (bastion)".into(),
            plan_path: "plan.toml".into(),
            plan_text: String::new(),
            state: RolloutState::RolledBack,
            phase: steps::Phase::Undo { last_wave: 1 },
            created_ms: 0,
            updated_ms: 0,
            error: None,
            facts: Default::default(),
        };
        assert_eq!(back_to(&record), "");
        let rel = "20260101T000000Z-aaaaaaa";
        for (host, release) in [("web-1", Some(rel)), ("web-2", Some(rel)), ("web-3", None)] {
            let host = handover_common::names::HostName::new(host.to_string()).expect("host");
            let release = release
                .map(|r| handover_common::names::ReleaseName::new(r.to_string()).expect("release"));
            record.facts.before.insert(host, release);
        }
        assert_eq!(back_to(&record), format!("back to {rel}"));
    }

    #[test]
    fn the_rollback_prompt_lists_each_host_and_its_target_release() {
        let record = RolloutRecord {
            format: crate::journal::FORMAT,
            id: "r-1".into(),
            kind: RolloutKind::Rollout,
            owner: "ops (bastion)".into(),
            plan_path: "plan.toml".into(),
            plan_text: "strategy = \"in-place\"\nroles = [\"app\"]\n[revision]\nrepo = \"file:///r.git\"\nref = \"v2\"\n".into(),
            state: RolloutState::Succeeded,
            phase: steps::Phase::Forward,
            created_ms: 0,
            updated_ms: 0,
            error: None,
            facts: Default::default(),
        };
        let host = |h: &str| HostName::new(h.to_string()).expect("host");
        let rel = ReleaseName::new("20260101T000000Z-aaaaaaa".to_string()).expect("release");
        let text = describe_rollback(
            &record,
            &[(host("web-2"), Some(rel)), (host("web-1"), None)],
        );
        assert!(
            text.contains("rollback of r-1 (file:///r.git@v2)"),
            "{text}"
        );
        assert!(
            text.contains("web-2                back to 20260101T000000Z-aaaaaaa"),
            "{text}"
        );
        assert!(
            text.contains("web-1                had no release before"),
            "{text}"
        );
    }

    use std::collections::BTreeMap;

    fn config(state_dir: &Path) -> CoordinatorConfig {
        let mut text =
            String::from("ca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"c.key\"\nstate_dir = \"s\"\n");
        for i in 1..=3 {
            text.push_str(&format!(
                "[[hosts]]\nname = \"web-{i}\"\naddress = \"127.0.1.{i}:7443\"\nroles = [\"app\"]\napp = \"127.0.1.{i}:80\"\n"
            ));
        }
        text.push_str(
            "[[hosts]]\nname = \"lb-1\"\naddress = \"127.0.1.100:7443\"\nroles = [\"lb\"]\n",
        );
        let mut config: CoordinatorConfig = toml::from_str(&text).expect("inventory");
        config.state_dir = state_dir.to_owned();
        config
    }

    const PLAN: &str = "strategy = \"in-place\"\nhosts = [\"web-1\", \"web-2\"]\n[revision]\nrepo = \"file:///srv/git/shop.git\"\nref = \"v2\"\n[rollout]\nbatch = 1\nmin_healthy = 1\n";

    fn record(phase: steps::Phase, state: RolloutState) -> RolloutRecord {
        RolloutRecord {
            format: crate::journal::FORMAT,
            id: "r-test".into(),
            kind: RolloutKind::Rollout,
            owner: String::new(),
            plan_path: "plan.toml".into(),
            plan_text: PLAN.into(),
            state,
            phase,
            created_ms: 0,
            updated_ms: 0,
            error: None,
            facts: Default::default(),
        }
    }

    /// Issue 18: `resume` checks the revision again only while some host still
    /// has it to apply; a rollout past its last apply, or rolling back, is not
    /// stopped by a ref deleted since.
    #[test]
    fn resume_resolves_the_revision_only_while_an_apply_is_still_to_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        let plan = Plan::parse(PLAN, &config).expect("plan");
        let steps = steps::in_place(&plan);
        let last_apply = steps
            .iter()
            .rposition(|s| s.action == steps::Action::ApplyRevision)
            .expect("an apply step");
        let journal = Journal::new(&config.state_dir);
        let forward = record(steps::Phase::Forward, RolloutState::Running);
        journal.save_rollout(&forward).expect("save");
        let to_apply =
            |r: &RolloutRecord| revision_still_to_apply(&config, r, &plan).expect("read");

        assert!(to_apply(&forward), "nothing done yet");
        for i in 0..last_apply {
            journal
                .step_started(&forward.id, steps::Phase::Forward, i, "step")
                .expect("start");
            journal
                .step_ended(
                    &forward.id,
                    steps::Phase::Forward,
                    i,
                    StepOutcome::Ok,
                    BTreeMap::new(),
                )
                .expect("end");
        }
        assert!(to_apply(&forward), "the last wave's apply is still to run");
        let aborted = record(steps::Phase::Repair { wave: 1 }, RolloutState::Aborted);
        assert!(to_apply(&aborted), "an aborted rollout redoes its wave");
        let rolling_back = record(
            steps::Phase::RollbackFrom { wave: 1 },
            RolloutState::RollingBack,
        );
        assert!(!to_apply(&rolling_back), "a rollback applies nothing");

        journal
            .step_started(&forward.id, steps::Phase::Forward, last_apply, "apply")
            .expect("start");
        journal
            .step_ended(
                &forward.id,
                steps::Phase::Forward,
                last_apply,
                StepOutcome::Ok,
                BTreeMap::new(),
            )
            .expect("end");
        assert!(!to_apply(&forward), "every host has the revision");
    }
}
