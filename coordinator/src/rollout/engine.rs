//! The loop that runs a rollout: phase by phase, step by step, journaled before
//! and after each step.

use std::collections::BTreeMap;
use std::sync::Arc;

use handover_common::names::{HostName, ReleaseName};
use std::time::Instant;

use anyhow::Context;
use tokio::sync::watch;

use super::facts::Facts;
use super::lease::{Leases, Process, Takeover};
use super::ops::{self, Actions, Done, Live};
use super::steps::{self, Action, Phase};
use super::surge;
use super::ui::{Event, Ui};
use crate::config::CoordinatorConfig;
use crate::fleet::Fleet;
use crate::journal::{
    FORMAT, Journal, RolloutKind, RolloutRecord, RolloutState, StepOutcome, now_ms,
};
use crate::plan::Plan;
use crate::state::DeployLock;

/// A rollout ready to run (new, resumed, or a rollback of an earlier one).
pub struct Engine {
    board: Arc<super::samples::Board>,
    fleet: Arc<Fleet>,
    process: Process,
    runner: Runner,
}

/// The decisions: phases and steps from the journal and the plan, every step
/// journaled before and after, the world reached only through [`Actions`].
struct Runner {
    journal: Journal,
    plan: Plan,
    record: RolloutRecord,
    ui: Arc<Ui>,
    actions: Arc<dyn Actions>,
}

/// A rollout whose process holds its lock and every host's lease: it may run.
pub struct Leased {
    engine: Engine,
    leases: Leases,
    lock: DeployLock,
}

impl Engine {
    /// Connects a fleet carrying `record`'s rollout id and assembles the engine.
    fn assemble(
        config: CoordinatorConfig,
        plan: Plan,
        mut record: RolloutRecord,
        json: bool,
    ) -> anyhow::Result<Self> {
        let mut fleet = Fleet::new(&config)?;
        fleet.set_rollout(Some(record.id.clone()));
        let process = Process::this(fleet.identity.name.as_str())?;
        if record.owner.is_empty() {
            record.owner = process.owner();
        }
        let fleet = Arc::new(fleet);
        let ui = Arc::new(Ui::new(json));
        let board = Arc::new(super::samples::Board::default());
        let actions = Arc::new(Live {
            config: config.clone(),
            fleet: fleet.clone(),
            plan: plan.clone(),
            ui: ui.clone(),
            board: board.clone(),
        });
        Ok(Engine {
            board,
            fleet,
            process,
            runner: Runner {
                journal: Journal::open(&config)?,
                plan,
                record,
                ui,
                actions,
            },
        })
    }

    /// A new rollout of `plan` (read from `plan_path`, text `plan_text`).
    pub fn new_rollout(
        config: CoordinatorConfig,
        plan_path: &std::path::Path,
        plan_text: String,
        plan: Plan,
        json: bool,
    ) -> anyhow::Result<Self> {
        let mut record = new_record(plan_path, plan_text);
        if plan.surge.is_some() {
            // The pool as it is now picks the new servers; `resume` must pick the
            // same ones even after this rollout hands the old ones to the pool.
            record.facts.surge.standby_at_start = Some(
                config
                    .hosts
                    .iter()
                    .filter(|h| h.standby)
                    .map(|h| h.name.clone())
                    .collect(),
            );
        }
        Self::assemble(config, plan, record, json)
    }

    /// An interrupted or stopped rollout, to carry on from its journal. Its plan is
    /// the text journaled when it started, not the file as it is now.
    pub fn resume(
        config: CoordinatorConfig,
        record: RolloutRecord,
        json: bool,
    ) -> anyhow::Result<Self> {
        let config = config_for(config, &record);
        let plan = Plan::parse(&record.plan_text, &config).with_context(|| {
            format!(
                "the plan journaled with {} no longer fits the inventory",
                record.id
            )
        })?;
        let record = to_resume(record)?;
        Self::assemble(config, plan, record, json)
    }

    /// `handover rollback`: the hosts an earlier rollout switched go back to the
    /// release they had before it, wave by wave, newest wave first.
    pub fn rollback_of(
        config: CoordinatorConfig,
        original: &RolloutRecord,
        json: bool,
    ) -> anyhow::Result<Self> {
        let config = config_for(config, original);
        let plan = Plan::parse(&original.plan_text, &config).with_context(|| {
            format!(
                "the plan journaled with {} no longer fits the inventory",
                original.id
            )
        })?;
        if plan.surge.is_some() {
            return Self::surge_rollback_of(config, plan, original, json);
        }
        let facts = original.facts.clone();
        let last_wave = last_switched_wave(&plan, &facts).ok_or_else(|| {
            anyhow::anyhow!(
                "rollout {} never switched a host: there is nothing to roll back",
                original.id
            )
        })?;
        let record = RolloutRecord {
            format: FORMAT,
            id: crate::journal::new_rollout_id(),
            kind: RolloutKind::Rollback {
                of: original.id.clone(),
            },
            // Filled in by `assemble`, from this coordinator's certificate.
            owner: String::new(),
            plan_path: original.plan_path.clone(),
            plan_text: original.plan_text.clone(),
            state: RolloutState::RollingBack,
            phase: Phase::Undo { last_wave },
            created_ms: now_ms(),
            updated_ms: now_ms(),
            error: None,
            facts,
        };
        Self::assemble(config, plan, record, json)
    }

    /// `handover rollback` of a surge rollout: the old servers back in service and
    /// the new ones out, possible until step 18 retired the old servers; after
    /// that, going back is a new rollout of the previous revision.
    fn surge_rollback_of(
        config: CoordinatorConfig,
        plan: Plan,
        original: &RolloutRecord,
        json: bool,
    ) -> anyhow::Result<Self> {
        let journal = Journal::open(&config)?;
        let journaled = journal.steps(&original.id)?;
        let forward = surge::forward(&plan);
        let gone = surge::old_servers_gone(&forward, |i| {
            journal.step_done(&journaled, Phase::Forward, i)
        });
        if gone {
            anyhow::bail!(
                "rollout {} is past runbook step 18: its old servers are terminated (or back in the standby pool), so there is nothing to go back to. A rollback now is a new rollout of the previous revision: run `handover rollout` with a plan whose [revision] ref is the one before",
                original.id
            );
        }
        if original.state.is_unfinished() && original.phase == Phase::SurgeRollback {
            anyhow::bail!(
                "rollout {} is already rolling back: `handover resume {}` finishes it",
                original.id,
                original.id
            );
        }
        // The rollback carries on in the rollout's own record: its new servers
        // (and what a provider launched) are known there.
        let mut record =
            to_resume(original.clone()).or_else(|_| Ok::<_, anyhow::Error>(original.clone()))?;
        record.phase = Phase::SurgeRollback;
        record.state = RolloutState::RollingBack;
        record.error = None;
        Self::assemble(config, plan, record, json)
    }

    /// The rollout's id.
    pub fn id(&self) -> &str {
        &self.runner.record.id
    }

    /// For a surge rollback: what it does, in a line (`None`: not a surge).
    pub fn surge_rollback_summary(&self) -> Option<String> {
        let plan = &self.runner.plan;
        plan.surge.as_ref()?;
        let names = |v: Vec<HostName>| {
            v.iter()
                .map(HostName::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let old = names(plan.hosts.iter().map(|h| h.name.clone()).collect());
        let new = names(surge::new_names(plan, None));
        Some(format!(
            "rollback of surge rollout {}: the old servers ({old}) back in service first, then the new ones ({}) drained, detached and {}\n",
            self.runner.record.id,
            if new.is_empty() { "launched" } else { &new },
            match plan.surge.as_ref().map(|s| s.provider) {
                Some(crate::surge_plan::ProviderKind::Command) => "terminated",
                _ => "handed back to the standby pool",
            }
        ))
    }

    /// What a `rollback` will do: each host the rollout switched, newest wave
    /// first, with the release it goes back to (`None`: it had none).
    pub fn targets(&self) -> Vec<(HostName, Option<ReleaseName>)> {
        let facts = &self.runner.record.facts;
        self.runner
            .plan
            .waves
            .iter()
            .rev()
            .flatten()
            .filter(|h| facts.knows(h))
            .map(|h| (h.clone(), facts.release_before(h).cloned()))
            .collect()
    }

    /// Takes the rollout: its local lock (held by the caller, `lock`), then the
    /// lease on every host it touches. Only then is it journaled, so a refused
    /// rollout leaves no trace. `notice` hears how another holder was dealt with.
    pub async fn take(
        mut self,
        lock: DeployLock,
        takeover: Takeover,
        notice: &(dyn Fn(&str) + Sync),
    ) -> anyhow::Result<Leased> {
        let mut touched = self.runner.plan.hosts.clone();
        touched.extend(self.runner.plan.lbs.iter().cloned());
        if let Some(s) = &self.runner.plan.surge {
            touched.extend(s.standby.iter().chain(&s.db).cloned());
        }
        let leases = match Leases::take(
            self.fleet.clone(),
            touched,
            &self.runner.record.id,
            self.process.clone(),
            takeover,
            notice,
        )
        .await
        {
            Ok(leases) => leases,
            Err(e) => {
                self.fleet.close().await;
                return Err(e);
            }
        };
        let saved = self
            .runner
            .record_inputs()
            .and_then(|()| self.runner.journal.save_rollout(&self.runner.record));
        if let Err(e) = saved {
            leases.release().await;
            self.fleet.close().await;
            return Err(e);
        }
        Ok(Leased {
            engine: self,
            leases,
            lock,
        })
    }
}

/// A new rollout's record (its owner is filled in by `assemble`, from this
/// coordinator's certificate).
fn new_record(plan_path: &std::path::Path, plan_text: String) -> RolloutRecord {
    RolloutRecord {
        format: FORMAT,
        id: crate::journal::new_rollout_id(),
        kind: RolloutKind::Rollout,
        owner: String::new(),
        plan_path: plan_path.to_owned(),
        plan_text,
        state: RolloutState::Running,
        phase: Phase::Forward,
        created_ms: now_ms(),
        updated_ms: now_ms(),
        error: None,
        facts: Facts::default(),
    }
}

/// The inventory as `record`'s rollout saw it: a surge rollout's standby pool
/// from when it started laid over it (blue and green may have traded places
/// since).
pub fn config_for(mut config: CoordinatorConfig, record: &RolloutRecord) -> CoordinatorConfig {
    if let Some(standby) = &record.facts.surge.standby_at_start {
        crate::provider::standby::Pool {
            standby: standby.iter().cloned().collect(),
        }
        .apply(&mut config);
    }
    config
}

/// A journaled rollout made ready to carry on: an aborted one redoes its wave
/// from the first step; one that halted or failed retries the step that stopped it.
fn to_resume(mut record: RolloutRecord) -> anyhow::Result<RolloutRecord> {
    if record.format != FORMAT {
        anyhow::bail!(
            "rollout {} was journaled by another handover version (format {}, this one writes {FORMAT}) whose steps differ: finish it with that version, or `handover rollback {}` and start a new rollout",
            record.id,
            record.format,
            record.id
        );
    }
    match record.state {
        RolloutState::Succeeded | RolloutState::RolledBack => anyhow::bail!(
            "rollout {} already ended ({}): nothing to resume",
            record.id,
            record.state
        ),
        RolloutState::Aborted => record.phase = Phase::Forward,
        RolloutState::Running
        | RolloutState::RollingBack
        | RolloutState::Halted
        | RolloutState::Failed => {}
    }
    record.state = running_state(record.phase);
    record.error = None;
    Ok(record)
}

/// The state a rollout is in while `phase` runs.
fn running_state(phase: Phase) -> RolloutState {
    if phase.is_rollback() {
        RolloutState::RollingBack
    } else {
        RolloutState::Running
    }
}

/// The newest wave with a host the rollout switched (it journaled where from).
fn last_switched_wave(plan: &Plan, facts: &Facts) -> Option<usize> {
    plan.waves
        .iter()
        .rposition(|wave| wave.iter().any(|h| facts.knows(h)))
}

/// What stopped a phase short.
#[derive(Debug, Clone)]
struct StepFailure {
    wave: usize,
    action: Action,
    error: String,
    interrupted: bool,
    unreachable: bool,
}

/// How a phase's run ended.
enum PhaseEnd {
    Done,
    Failed(StepFailure),
    /// Another process took a lease over: stop without touching anything.
    LeaseLost(String),
}

/// What the engine does after a step of `phase` failed.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Stop here in this state; `resume` carries on from the failed step.
    Stop(RolloutState),
    /// Run `phase` next. `undo_wave`: the forward steps of that wave are marked
    /// undone, so a later `resume` redoes the wave from its first step.
    Switch { phase: Phase, undo_wave: bool },
}

/// The decision after a failure: pure, so it is tested without processes.
fn after_failure(phase: Phase, f: &StepFailure, auto_rollback: bool) -> Next {
    if f.unreachable && !f.interrupted {
        // Not the release's fault, and nothing can be put back on a host that does
        // not answer: halt with capacity kept, `resume` retries this step.
        return Next::Stop(RolloutState::Halted);
    }
    if phase != Phase::Forward {
        return Next::Stop(RolloutState::Failed);
    }
    match f.action {
        // Nothing of the wave has changed yet: there is nothing to put back, and
        // without capacity nothing could be rolled back safely either.
        Action::EnsureCapacity => Next::Stop(RolloutState::Aborted),
        // Staging happens beside `current`, before any host left service: a host
        // that could not stage stops the rollout before any drain (`resume`
        // stages again; what is staged already is reused).
        Action::StageRelease => Next::Stop(RolloutState::Aborted),
        // Stopped at the canary pause: the canary serves the new release and goes
        // back to its previous one, as every interrupted wave does.
        Action::Pause(_) => Next::Switch {
            phase: Phase::Withdraw { wave: f.wave },
            undo_wave: true,
        },
        _ if !f.interrupted && auto_rollback => Next::Switch {
            phase: Phase::RollbackFrom { wave: f.wave },
            undo_wave: false,
        },
        _ => Next::Switch {
            phase: Phase::Repair { wave: f.wave },
            undo_wave: true,
        },
    }
}

/// The state a phase that ran to its end leaves the rollout in.
fn end_state(phase: Phase) -> RolloutState {
    match phase {
        Phase::Forward => RolloutState::Succeeded,
        Phase::RollbackFrom { .. } | Phase::Undo { .. } => RolloutState::RolledBack,
        Phase::Repair { .. } | Phase::Withdraw { .. } | Phase::SurgeAbort => RolloutState::Aborted,
        Phase::SurgeRollback => RolloutState::RolledBack,
    }
}

impl Leased {
    /// The rollout's id.
    pub fn id(&self) -> &str {
        self.engine.id()
    }

    /// Runs to the end (success, rollback, abort, halt) and returns the final state.
    pub async fn run(self) -> anyhow::Result<RolloutState> {
        let Leased {
            mut engine,
            leases,
            lock,
        } = self;
        let runner = &mut engine.runner;
        let (interrupts, _watcher) = watch_signals(runner.record.id.clone());
        let (lost, _either) = crate::state::either_lost(leases.lost(), lock.lost());
        // Beside the steps, for `handover web`: samples of the rollout in the
        // journal (the sampler never ends; the rollout's end stops it).
        let (lbs, journal, id) = (
            runner.plan.lbs.clone(),
            runner.journal.clone(),
            runner.record.id.clone(),
        );
        let sampler = super::samples::record(&engine.fleet, &lbs, &journal, &id, &engine.board);
        let result = tokio::select! {
            result = runner.run_phases(interrupts, lost) => result,
            never = sampler => match never {},
        };
        // One more, where the rollout left the fleet (not waiting on a dead LB).
        let last = super::samples::sample_once(&engine.fleet, &lbs, &journal, &id, &engine.board);
        let _ = tokio::time::timeout(super::samples::EVERY * 2, last).await;
        leases.release().await;
        // Last: while it is held no other bastion starts on these hosts.
        drop(lock);
        engine.fleet.close().await;
        result
    }
}

impl Runner {
    /// Runbook steps 5–6, before a surge rollout starts: the plan's `[inputs]`
    /// over the current inputs become a numbered version tied to this rollout
    /// (on `resume`, the version it recorded then).
    fn record_inputs(&mut self) -> anyhow::Result<()> {
        if self.plan.surge.is_none() || self.record.kind != RolloutKind::Rollout {
            return Ok(());
        }
        let plan_inputs = self.plan.file.inputs.clone().unwrap_or_default();
        let (version, inputs) = crate::inputs::record_for_rollout(
            &self.journal,
            &self.record.plan_path,
            &plan_inputs,
            &self.record.id,
        )?;
        self.record.facts.surge.inputs_version = Some(version.0);
        self.record.facts.surge.inputs = Some(inputs);
        Ok(())
    }

    /// Runs phase after phase until the rollout ends, halts or loses its lease.
    async fn run_phases(
        &mut self,
        interrupts: watch::Receiver<u32>,
        lost: watch::Receiver<Option<String>>,
    ) -> anyhow::Result<RolloutState> {
        let state = self.phases(interrupts, lost).await?;
        self.ui.show(Event::Finished {
            rollout: self.record.id.clone(),
            state: state.to_string(),
            error: self.record.error.clone(),
        });
        Ok(state)
    }

    async fn phases(
        &mut self,
        interrupts: watch::Receiver<u32>,
        lost: watch::Receiver<Option<String>>,
    ) -> anyhow::Result<RolloutState> {
        let mut reason: Option<String> = None;
        loop {
            let phase = self.record.phase;
            let steps = steps::for_phase(&self.plan, phase);
            let journaled = self.journal.steps(&self.record.id)?;
            let done = (0..steps.len())
                .filter(|i| self.journal.step_done(&journaled, phase, *i))
                .count();
            self.ui.show(Event::Phase {
                rollout: self.record.id.clone(),
                phase: phase.key(),
                title: phase.to_string(),
                steps: steps.len(),
                done,
                reason: reason.take(),
            });
            let end = self
                .run_steps(phase, &steps, &journaled, interrupts.clone(), lost.clone())
                .await?;
            let f = match end {
                PhaseEnd::Done => {
                    self.record.state = end_state(phase);
                    self.journal.save_rollout(&self.record)?;
                    return Ok(self.record.state);
                }
                PhaseEnd::LeaseLost(why) => {
                    anyhow::bail!("rollout {} stopped: {why}", self.record.id)
                }
                PhaseEnd::Failed(f) => f,
            };
            match self.decide(phase, &f, &steps) {
                Next::Stop(state) => {
                    self.record.error = Some(match self.record.error.take() {
                        Some(first) if phase != Phase::Forward => {
                            format!("{first}; then, while {phase}: {}", f.error)
                        }
                        _ => f.error.clone(),
                    });
                    self.record.state = state;
                    self.journal.save_rollout(&self.record)?;
                    return Ok(state);
                }
                Next::Switch {
                    phase: next,
                    undo_wave,
                } => {
                    if undo_wave {
                        // Staging stays done: it changed nothing a wave undoes.
                        let undone: Vec<usize> = steps
                            .iter()
                            .enumerate()
                            .filter(|(_, s)| s.wave == f.wave && s.action != Action::StageRelease)
                            .map(|(i, _)| i)
                            .collect();
                        self.journal.mark_undone(&self.record.id, phase, &undone)?;
                    }
                    if self.plan.surge.is_some() {
                        // A way back run before (an earlier abort of this
                        // rollout) runs again in full.
                        let all: Vec<usize> =
                            (0..steps::for_phase(&self.plan, next).len()).collect();
                        self.journal.mark_undone(&self.record.id, next, &all)?;
                    }
                    self.record.error = Some(f.error.clone());
                    self.record.phase = next;
                    self.record.state = running_state(next);
                    reason = Some(f.error);
                    self.journal.save_rollout(&self.record)?;
                }
            }
        }
    }

    /// The next phase after a failed step: the in-place decision, or surge's.
    fn decide(&self, phase: Phase, f: &StepFailure, steps: &[steps::Step]) -> Next {
        let auto_rollback = self.plan.file.rollout.auto_rollback;
        if self.plan.surge.is_none() {
            return after_failure(phase, f, auto_rollback);
        }
        match surge::after_failure(
            phase,
            &f.action,
            f.interrupted,
            f.unreachable,
            auto_rollback,
        ) {
            surge::SurgeNext::Stop(state) => Next::Stop(state),
            surge::SurgeNext::Switch {
                phase,
                undo_new_servers,
            } => {
                // Old servers already gone (step 18 ran): nothing to go back to.
                let journaled = self.journal.steps(&self.record.id).unwrap_or_default();
                let gone = surge::old_servers_gone(steps, |i| {
                    self.journal.step_done(&journaled, Phase::Forward, i)
                });
                if gone {
                    return Next::Stop(RolloutState::Failed);
                }
                Next::Switch {
                    phase,
                    undo_wave: undo_new_servers,
                }
            }
        }
    }

    /// A step that must not run twice (the migration) and was started by an
    /// earlier run without a journaled end may have run: the rollout halts and
    /// says so rather than running it again blindly.
    fn refuse_to_run_twice(
        &mut self,
        journaled: &[crate::journal::StepRecord],
        phase: Phase,
        i: usize,
        step: &steps::Step,
    ) -> anyhow::Result<Option<StepFailure>> {
        let steps::Action::Surge(a) = &step.action else {
            return Ok(None);
        };
        // Any earlier attempt that did not end well: the hook may have run
        // (started without an end), or stopped part-way (failed).
        let tried = journaled.iter().any(|r| r.phase == phase && r.index == i);
        if !a.runs_once() || !tried {
            return Ok(None);
        }
        let db = step
            .hosts
            .first()
            .map_or_else(|| "the db host".to_owned(), |h| h.to_string());
        let hook = self
            .plan
            .file
            .db
            .as_ref()
            .and_then(|d| d.migrate.as_ref())
            .map_or_else(|| "migrate".to_owned(), |h| h.to_string());
        let id = &self.record.id;
        let error = format!(
            "step {} (runbook 2, the migration) was tried by an earlier run that did not end well, so it may have run (in part): it is not run twice. The agent on {db} finishes a hook it started even when the coordinator is gone: once hook {hook} no longer runs there, check the database. Migrated: `handover resume {id} --migrated` records it done. Not migrated at all: `handover hook {db} {hook}`, then the same. Stopped part-way: restore the backup recorded in step 1 and start a new rollout",
            i + 1,
        );
        self.journal.step_ended(
            &self.record.id,
            phase,
            i,
            StepOutcome::Failed(error.clone()),
            BTreeMap::new(),
        )?;
        // Halted, as for a host that does not answer: nothing is undone, and
        // `resume` carries on once the operator has decided.
        Ok(Some(StepFailure {
            wave: step.wave,
            action: step.action.clone(),
            error,
            interrupted: false,
            unreachable: true,
        }))
    }

    async fn run_steps(
        &mut self,
        phase: Phase,
        steps: &[steps::Step],
        journaled: &[crate::journal::StepRecord],
        mut interrupts: watch::Receiver<u32>,
        mut lost: watch::Receiver<Option<String>>,
    ) -> anyhow::Result<PhaseEnd> {
        let id = self.record.id.clone();
        let forward = phase == Phase::Forward;
        for (i, step) in steps.iter().enumerate() {
            if self.journal.step_done(journaled, phase, i) {
                continue;
            }
            if let Some(holders) = lost.borrow().clone() {
                return Ok(PhaseEnd::LeaseLost(holders));
            }
            if forward && *interrupts.borrow() > 0 {
                return Ok(PhaseEnd::Failed(StepFailure {
                    wave: step.wave,
                    action: step.action.clone(),
                    error: "interrupted by the operator".into(),
                    interrupted: true,
                    unreachable: false,
                }));
            }
            let title = step.title(&self.plan);
            if let Some(failure) = self.refuse_to_run_twice(journaled, phase, i, step)? {
                return Ok(PhaseEnd::Failed(failure));
            }
            let record = self.journal.step_started(&id, phase, i, &title)?;
            self.ui.show(Event::StepStarted {
                number: i + 1,
                of: steps.len(),
                wave: step.wave + 1,
                title: title.clone(),
            });
            let started = Instant::now();
            let actions = self.actions.clone();
            let facts = self.record.facts.clone();
            let ui = self.ui.clone();
            let (result, interrupted) = tokio::select! {
                r = run_retrying(actions.as_ref(), step, &facts, &ui) => (r, false),
                () = interrupted(&mut interrupts, forward) => {
                    (Err(anyhow::anyhow!("interrupted by the operator")), true)
                }
                holders = lease_lost(&mut lost) => return Ok(PhaseEnd::LeaseLost(holders)),
            };
            let mark = (record, title, started);
            if let Some(failure) = self.journal_end(mark, step, result, interrupted)? {
                return Ok(PhaseEnd::Failed(failure));
            }
        }
        Ok(PhaseEnd::Done)
    }

    /// Journals how step `i` of phase `key` ended (what it learnt first, so it is
    /// never lost to a crash), shows it, and returns the failure if it failed.
    fn journal_end(
        &mut self,
        (record, title, started): (crate::journal::StepRecord, String, Instant),
        step: &steps::Step,
        result: anyhow::Result<Done>,
        interrupted: bool,
    ) -> anyhow::Result<Option<StepFailure>> {
        let id = self.record.id.clone();
        let i = record.index;
        match result {
            Ok(Done { outputs, learned }) => {
                if learned != Facts::default() {
                    self.record.facts.learn(learned);
                    self.journal.save_rollout(&self.record)?;
                }
                self.journal
                    .step_finished(&id, record, StepOutcome::Ok, outputs.clone())?;
                self.ui.show(Event::StepDone {
                    number: i + 1,
                    title,
                    elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    outputs,
                });
                Ok(None)
            }
            Err(e) => {
                let error = format!("{e:#}");
                let outcome = StepOutcome::Failed(error.clone());
                self.journal
                    .step_finished(&id, record, outcome, BTreeMap::new())?;
                self.ui.show(Event::StepFailed {
                    number: i + 1,
                    title,
                    error: error.clone(),
                });
                Ok(Some(StepFailure {
                    wave: step.wave,
                    action: step.action.clone(),
                    error,
                    interrupted,
                    unreachable: ops::is_unreachable(&e),
                }))
            }
        }
    }
}

/// How often a step whose host did not answer is tried again before the rollout
/// halts, and the pause before each try: a restarted agent (systemd restarts it
/// within seconds) is back by then, and every step is idempotent, so trying
/// again is safe. Past that, the rollout halts with capacity kept for `resume`.
const UNREACHABLE_RETRIES: u32 = 3;
/// See [`UNREACHABLE_RETRIES`].
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_secs(3);

/// Runs `step`, trying again (after [`RETRY_PAUSE`]) while its host did not
/// answer, at most [`UNREACHABLE_RETRIES`] times; any other failure ends it.
async fn run_retrying(
    actions: &dyn Actions,
    step: &steps::Step,
    facts: &Facts,
    ui: &Ui,
) -> anyhow::Result<Done> {
    let mut tried = 0;
    loop {
        match actions.run(step, facts).await {
            Err(e) if ops::is_unreachable(&e) && tried < UNREACHABLE_RETRIES => {
                tried += 1;
                let hosts: Vec<&str> = step.hosts.iter().map(|h| h.as_str()).collect();
                ui.show(Event::Progress {
                    host: hosts.join(", "),
                    text: format!(
                        "no answer ({e:#}); trying again in {} ({tried} of {UNREACHABLE_RETRIES})",
                        handover_common::duration::format(RETRY_PAUSE)
                    ),
                });
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            result => return result,
        }
    }
}

/// Resolves on the first interrupt in the forward phase; never otherwise (putting
/// hosts back is not interrupted by a single Ctrl-C).
async fn interrupted(rx: &mut watch::Receiver<u32>, forward: bool) {
    if !forward {
        return std::future::pending().await;
    }
    let _ = rx.wait_for(|n| *n > 0).await;
}

/// Resolves with the new holders once another process takes a lease over.
async fn lease_lost(rx: &mut watch::Receiver<Option<String>>) -> String {
    match rx.wait_for(Option::is_some).await {
        Ok(holders) => holders.clone().unwrap_or_default(),
        // The renewer is gone without news: nothing was lost.
        Err(_) => std::future::pending().await,
    }
}

/// Counts SIGINT/SIGTERM. The first stops the forward phase (the current wave is
/// put back); the second exits at once, leaving the journal for `handover resume`.
fn watch_signals(id: String) -> (watch::Receiver<u32>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(0u32);
    let handle = tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        let mut count = 0u32;
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            count += 1;
            if count == 1 {
                eprintln!(
                    "handover: stopping rollout {id}: the current wave goes back to its previous release and in service; then `handover resume {id}` redoes that wave and carries on (Ctrl-C again exits at once)"
                );
            } else {
                eprintln!(
                    "handover: exiting now; `handover resume {id}` finishes from the journal"
                );
                std::process::exit(130);
            }
            let _ = tx.send(count);
        }
    });
    (rx, handle)
}

#[cfg(test)]
#[path = "engine_bench.rs"]
mod bench;

#[cfg(test)]
#[path = "surge_engine_tests.rs"]
mod surge_tests;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn failure(action: Action) -> StepFailure {
        StepFailure {
            wave: 1,
            action,
            error: "boom".into(),
            interrupted: false,
            unreachable: false,
        }
    }

    #[test]
    fn a_failed_wave_rolls_back_or_is_repaired_as_the_plan_says() {
        let f = failure(Action::VerifyHealth);
        assert_eq!(
            after_failure(Phase::Forward, &f, true),
            Next::Switch {
                phase: Phase::RollbackFrom { wave: 1 },
                undo_wave: false
            }
        );
        assert_eq!(
            after_failure(Phase::Forward, &f, false),
            Next::Switch {
                phase: Phase::Repair { wave: 1 },
                undo_wave: true
            }
        );
        // A failure while putting hosts back stops there.
        assert_eq!(
            after_failure(Phase::RollbackFrom { wave: 1 }, &f, true),
            Next::Stop(RolloutState::Failed)
        );
    }

    #[test]
    fn an_interrupt_puts_the_wave_back_even_at_the_canary_pause() {
        let mut f = failure(Action::DetachFromLoadBalancers);
        f.interrupted = true;
        assert_eq!(
            after_failure(Phase::Forward, &f, true),
            Next::Switch {
                phase: Phase::Repair { wave: 1 },
                undo_wave: true
            }
        );
        let mut f = failure(Action::Pause(Duration::from_secs(30)));
        f.interrupted = true;
        assert_eq!(
            after_failure(Phase::Forward, &f, true),
            Next::Switch {
                phase: Phase::Withdraw { wave: 1 },
                undo_wave: true
            }
        );
        assert_eq!(
            end_state(Phase::Withdraw { wave: 1 }),
            RolloutState::Aborted
        );
    }

    #[test]
    fn an_unreachable_host_halts_the_rollout_for_resume_instead_of_rolling_back() {
        for phase in [Phase::Forward, Phase::RollbackFrom { wave: 0 }] {
            let mut f = failure(Action::ApplyRevision);
            f.unreachable = true;
            assert_eq!(
                after_failure(phase, &f, true),
                Next::Stop(RolloutState::Halted)
            );
            assert!(RolloutState::Halted.is_unfinished());
        }
    }

    #[test]
    fn without_capacity_nothing_is_touched() {
        assert_eq!(
            after_failure(Phase::Forward, &failure(Action::EnsureCapacity), true),
            Next::Stop(RolloutState::Aborted)
        );
    }

    mod scripted {
        //! The engine against a scripted fleet, with tokio's paused clock: no
        //! process, no socket, no waiting.

        use std::mem::discriminant;
        use std::time::Duration;

        use tokio::sync::watch;

        use super::super::*;
        use crate::rollout::fake::{self, Fault, NEW, OLD, Trigger, host};

        const THREE: &str = "batch = 1\nmin_healthy = 2";

        use crate::rollout::engine::bench::Bench;

        impl Bench {
            fn in_place(rollout: &str) -> Self {
                Bench::with_plan(fake::plan(3, rollout))
            }

            fn assert_all_on(&self, release: &str) {
                let w = self.fake.world();
                for h in self.plan.hosts.iter().map(|h| &h.name) {
                    assert_eq!(w.release[h], release, "{h}");
                    assert!(
                        w.attached.contains(h) && !w.drained.contains(h),
                        "{h} serves"
                    );
                }
                assert!(w.min_up >= 2, "capacity fell to {}", w.min_up);
            }
        }

        #[tokio::test(start_paused = true)]
        async fn waves_run_in_order_and_capacity_never_falls_below_min_healthy() {
            let bench = Bench::in_place(THREE);
            let state = bench.run(false).await.expect("ends").expect("runs");
            assert_eq!(state, RolloutState::Succeeded);
            bench.assert_all_on(NEW);
            let w = bench.fake.world();
            let order: Vec<&str> = w.log.iter().map(|(_, h)| h.as_str()).collect();
            let mut waves = order.clone();
            waves.dedup();
            assert_eq!(
                waves,
                ["web-1", "web-2", "web-3"],
                "one wave after the other"
            );
            assert!(w.builds.values().all(|n| *n == 1));
            let facts = bench
                .journal()
                .rollout(&bench.id)
                .expect("read")
                .expect("rec")
                .facts;
            assert_eq!(
                facts.release_before(&host("web-2")).map(|r| r.as_str()),
                Some(OLD)
            );
        }

        /// Issue 14: a host that cannot stage stops the rollout before any host
        /// leaves service; `resume` stages again and carries on.
        #[tokio::test(start_paused = true)]
        async fn a_staging_failure_stops_before_any_drain_and_resume_carries_on() {
            let bench = Bench::in_place(&format!("{THREE}\nauto_rollback = true"));
            let at = Trigger::Step(discriminant(&Action::StageRelease), host("web-2"));
            bench.fake.inject(at, Fault::Fail);
            let state = bench.run(false).await.expect("ends").expect("runs");
            assert_eq!(state, RolloutState::Aborted, "nothing to roll back");
            {
                let w = bench.fake.world();
                let actions: Vec<&Action> = w.log.iter().map(|(a, _)| a).collect();
                assert_eq!(
                    actions,
                    [&Action::StageRelease],
                    "no drain, no capacity check"
                );
                assert!(w.drained.is_empty() && w.attached.len() == 3);
            }
            let state = bench.run(true).await.expect("ends").expect("runs");
            assert_eq!(state, RolloutState::Succeeded);
            let w = bench.fake.world();
            let first_drain = w
                .log
                .iter()
                .position(|(a, _)| *a == Action::RemoveHealthCheckFile)
                .expect("a drain");
            let last_stage = w
                .log
                .iter()
                .rposition(|(a, _)| *a == Action::StageRelease)
                .expect("staged");
            assert!(last_stage < first_drain, "{:?}", w.log);
            assert_eq!(w.staged.len(), 3);
            drop(w);
            bench.assert_all_on(NEW);
        }

        #[tokio::test(start_paused = true)]
        async fn a_wave_without_capacity_changes_nothing_and_resume_starts_it_again() {
            let bench = Bench::in_place(THREE);
            bench.fake.world().drained.insert(host("web-3"));
            let state = bench.run(false).await.expect("ends").expect("runs");
            assert_eq!(state, RolloutState::Aborted);
            assert_eq!(
                bench.fake.world().log.len(),
                2,
                "only staging (beside current) and the capacity check ran"
            );
            bench.fake.world().drained.remove(&host("web-3"));
            let state = bench.run(true).await.expect("ends").expect("runs");
            assert_eq!(state, RolloutState::Succeeded);
            bench.assert_all_on(NEW);
        }

        #[tokio::test(start_paused = true)]
        async fn the_canary_pause_waits_and_an_interrupt_there_puts_the_canary_back() {
            let bench = Bench::in_place("batch = 2\nmin_healthy = 1\ncanary = 1\npause = \"60s\"");
            let (itx, irx) = watch::channel(0u32);
            let (_ltx, lrx) = watch::channel(None);
            let mut runner = bench.runner(false);
            let started = tokio::time::Instant::now();
            let interrupt = async {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let paused = bench
                        .fake
                        .world()
                        .log
                        .iter()
                        .any(|(a, _)| matches!(a, Action::Pause(_)));
                    if paused {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        let _ = itx.send(1);
                        return;
                    }
                }
            };
            let (state, ()) = tokio::join!(runner.run_phases(irx, lrx), interrupt);
            assert_eq!(state.expect("runs"), RolloutState::Aborted);
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "stopped inside the pause"
            );
            {
                let w = bench.fake.world();
                assert_eq!(w.release[&host("web-1")], OLD, "the canary went back");
                assert!(w.attached.contains(&host("web-1")) && !w.drained.contains(&host("web-1")));
                assert_eq!(
                    w.release[&host("web-2")],
                    OLD,
                    "the next wave never started"
                );
            }
            // `resume ID` redoes the canary wave from its first step, pause and all.
            let before = bench.fake.world().log.len();
            let started = tokio::time::Instant::now();
            let state = bench.run(true).await.expect("ends").expect("runs");
            assert_eq!(state, RolloutState::Succeeded);
            assert!(
                started.elapsed() >= Duration::from_secs(60),
                "the pause was waited"
            );
            let w = bench.fake.world();
            assert_eq!(w.log[before], (Action::EnsureCapacity, host("web-1")));
            assert_eq!(w.release[&host("web-1")], NEW);
            assert_eq!(w.builds[&host("web-1")], 2, "the redone wave applied again");
        }

        #[tokio::test(start_paused = true)]
        async fn a_failure_at_any_step_of_a_wave_rolls_every_host_back_with_capacity_kept() {
            let actions = steps::wave_steps(1, &[host("web-2")], Action::ApplyRevision);
            for step in actions.iter().skip(1) {
                let bench = Bench::in_place(&format!("{THREE}\nauto_rollback = true"));
                let at = Trigger::Step(discriminant(&step.action), host("web-2"));
                bench.fake.inject(at, Fault::Fail);
                let state = bench.run(false).await.expect("ends").expect("runs");
                assert_eq!(
                    state,
                    RolloutState::RolledBack,
                    "failure at {:?}",
                    step.action
                );
                bench.assert_all_on(OLD);
                let w = bench.fake.world();
                assert_eq!(w.release[&host("web-3")], OLD);
                assert!(
                    !w.log.iter().any(|(_, h)| h.as_str() == "web-3"),
                    "wave 3 never ran"
                );
            }
        }

        #[tokio::test(start_paused = true)]
        async fn resume_after_a_crash_at_any_step_boundary_finishes_with_one_build_per_host() {
            let total = steps::in_place(&fake::plan(3, THREE)).len();
            for crash in [Fault::CrashBefore, Fault::CrashAfter] {
                for at in 0..total {
                    let bench = Bench::in_place(THREE);
                    bench.fake.inject(Trigger::Call(at), crash);
                    assert!(bench.run(false).await.is_none(), "crashed at step {at}");
                    let state = bench.run(true).await.expect("ends").expect("runs");
                    assert_eq!(state, RolloutState::Succeeded, "{crash:?} at step {at}");
                    bench.assert_all_on(NEW);
                    let w = bench.fake.world();
                    assert!(
                        w.builds.values().all(|n| *n == 1),
                        "{crash:?} at {at}: {:?}",
                        w.builds
                    );
                }
            }
        }

        /// Issue 13: an agent restarted mid-step (SIGKILL + systemd) made the step
        /// fail at once; a host back within the retries now finishes the step.
        #[tokio::test(start_paused = true)]
        async fn a_host_that_answers_again_within_the_retries_finishes_the_rollout() {
            let bench = Bench::in_place(THREE);
            let at = Trigger::Step(discriminant(&Action::WaitForSessionsToEnd), host("web-2"));
            for _ in 0..UNREACHABLE_RETRIES {
                bench.fake.inject(at.clone(), Fault::Unreachable);
            }
            let state = bench.run(false).await.expect("ends").expect("runs");
            assert_eq!(state, RolloutState::Succeeded);
            bench.assert_all_on(NEW);
            let w = bench.fake.world();
            assert!(
                !w.log
                    .iter()
                    .any(|(a, _)| matches!(a, Action::ActivatePreviousRelease)),
                "nothing rolled back"
            );
        }

        #[tokio::test(start_paused = true)]
        async fn an_unreachable_host_halts_and_a_plain_resume_carries_on() {
            let bench = Bench::in_place(THREE);
            let at = Trigger::Step(discriminant(&Action::RemoveHealthCheckFile), host("web-2"));
            for _ in 0..=UNREACHABLE_RETRIES {
                bench.fake.inject(at.clone(), Fault::Unreachable);
            }
            let state = bench.run(false).await.expect("ends").expect("runs");
            assert_eq!(state, RolloutState::Halted);
            assert_eq!(
                bench.fake.world().release[&host("web-1")],
                NEW,
                "nothing undone"
            );
            assert_eq!(bench.journal().find(None).expect("picked").id, bench.id);
            let state = bench.run(true).await.expect("ends").expect("runs");
            assert_eq!(state, RolloutState::Succeeded);
            bench.assert_all_on(NEW);
        }

        /// The LB and drain-wait steps reach the engine through `lb_outcomes` and
        /// `judge_wait`, which keep "did not answer" typed (ops tests): at each of
        /// them the rollout halts, undoes nothing, and `resume` finishes.
        #[tokio::test(start_paused = true)]
        async fn an_unreachable_host_at_the_wait_or_an_lb_step_halts_with_capacity_kept() {
            for action in [
                Action::WaitForSessionsToEnd,
                Action::DetachFromLoadBalancers,
                Action::AttachToLoadBalancers,
            ] {
                let bench = Bench::in_place(THREE);
                let at = Trigger::Step(discriminant(&action), host("web-2"));
                for _ in 0..=UNREACHABLE_RETRIES {
                    bench.fake.inject(at.clone(), Fault::Unreachable);
                }
                let state = bench.run(false).await.expect("ends").expect("runs");
                assert_eq!(state, RolloutState::Halted, "{action:?}");
                {
                    let w = bench.fake.world();
                    assert!(w.min_up >= 2, "{action:?}: capacity fell to {}", w.min_up);
                    assert!(
                        !w.log
                            .iter()
                            .any(|(a, _)| matches!(a, Action::ActivatePreviousRelease)),
                        "{action:?}: nothing rolled back"
                    );
                    assert_eq!(w.release[&host("web-1")], NEW, "{action:?}: wave 1 kept");
                    assert!(
                        !w.log.iter().any(|(_, h)| h.as_str() == "web-3"),
                        "{action:?}: wave 3 never ran"
                    );
                }
                let state = bench.run(true).await.expect("ends").expect("runs");
                assert_eq!(state, RolloutState::Succeeded, "{action:?}");
                bench.assert_all_on(NEW);
            }
        }

        #[tokio::test(start_paused = true)]
        async fn a_lost_lease_stops_the_rollout_without_touching_anything_more() {
            let bench = Bench::in_place(THREE);
            bench.fake.inject(Trigger::Call(2), Fault::CrashBefore);
            let (_itx, irx) = watch::channel(0u32);
            let (ltx, lrx) = watch::channel(None);
            let mut runner = bench.runner(false);
            let lose = async {
                tokio::time::sleep(Duration::from_secs(20)).await;
                let _ = ltx.send(Some(
                    "another coordinator process took its lease over (web-1: held by pid 9)"
                        .to_string(),
                ));
            };
            let (result, ()) = tokio::join!(runner.run_phases(irx, lrx), lose);
            let err = format!("{:#}", result.expect_err("stops"));
            assert!(
                err.contains("took its lease over") && err.contains("pid 9"),
                "{err}"
            );
            assert_eq!(bench.fake.world().log.len(), 3, "no step after the loss");
            let record = bench
                .journal()
                .rollout(&bench.id)
                .expect("read")
                .expect("rec");
            assert_eq!(
                record.state,
                RolloutState::Running,
                "the new holder carries on"
            );
        }
    }
}
