//! The loop that runs a rollout: phase by phase, step by step, journaled before
//! and after each step.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio::sync::watch;

use super::lease::Leases;
use super::ops::{self, Ctx};
use super::steps::{self, Action, phase};
use super::ui::{Event, Ui};
use crate::config::CoordinatorConfig;
use crate::fleet::Fleet;
use crate::journal::{Journal, RolloutKind, RolloutRecord, RolloutState, StepOutcome, now_ms};
use crate::plan::Plan;

/// A rollout ready to run (new, resumed, or a rollback of an earlier one).
pub struct Engine {
    config: CoordinatorConfig,
    fleet: Arc<Fleet>,
    journal: Journal,
    plan: Plan,
    record: RolloutRecord,
    ui: Ui,
}

/// Who runs it, for lease messages: the certificate's name and the local user.
fn owner(fleet: &Fleet) -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    format!("{} ({user}@{host})", fleet.identity.name)
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
        if record.owner.is_empty() {
            record.owner = owner(&fleet);
        }
        Ok(Engine {
            journal: Journal::new(&config.state_dir),
            fleet: Arc::new(fleet),
            plan,
            record,
            ui: Ui::new(json),
            config,
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
        let record = RolloutRecord {
            id: crate::journal::new_rollout_id(),
            kind: RolloutKind::Rollout,
            // Filled in by `assemble`, from this coordinator's certificate.
            owner: String::new(),
            plan_path: plan_path.to_owned(),
            plan_text,
            state: RolloutState::Running,
            phase: phase::FORWARD.to_string(),
            created_ms: now_ms(),
            updated_ms: now_ms(),
            error: None,
            facts: BTreeMap::new(),
        };
        Self::assemble(config, plan, record, json)
    }

    /// An interrupted or stopped rollout, to carry on from its journal. Its plan is
    /// the text journaled when it started, not the file as it is now.
    pub fn resume(
        config: CoordinatorConfig,
        mut record: RolloutRecord,
        json: bool,
    ) -> anyhow::Result<Self> {
        let plan = Plan::parse(&record.plan_text, &config).with_context(|| {
            format!(
                "the plan journaled with {} no longer fits the inventory",
                record.id
            )
        })?;
        match record.state {
            RolloutState::Succeeded | RolloutState::RolledBack => anyhow::bail!(
                "rollout {} already ended ({:?}): nothing to resume",
                record.id,
                record.state
            ),
            // Stopped by the operator: its current wave was put back in service and
            // is redone from its first step.
            RolloutState::Aborted => {
                record.phase = phase::FORWARD.to_string();
                record.state = RolloutState::Running;
                record.error = None;
            }
            RolloutState::Running | RolloutState::RollingBack | RolloutState::Failed => {}
        }
        if record.state == RolloutState::Failed {
            record.state = if record.phase.starts_with("rollback") {
                RolloutState::RollingBack
            } else {
                RolloutState::Running
            };
        }
        Self::assemble(config, plan, record, json)
    }

    /// `handover rollback`: the hosts an earlier rollout switched go back to the
    /// release they had before it, wave by wave, newest wave first.
    pub fn rollback_of(
        config: CoordinatorConfig,
        original: &RolloutRecord,
        json: bool,
    ) -> anyhow::Result<Self> {
        let plan = Plan::parse(&original.plan_text, &config).with_context(|| {
            format!(
                "the plan journaled with {} no longer fits the inventory",
                original.id
            )
        })?;
        let facts: BTreeMap<String, String> = original
            .facts
            .iter()
            .filter(|(k, _)| k.starts_with("before/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let last_wave = plan
            .waves
            .iter()
            .rposition(|wave| {
                wave.iter()
                    .any(|h| facts.contains_key(&format!("before/{h}")))
            })
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "rollout {} never switched a host: there is nothing to roll back",
                    original.id
                )
            })?;
        let record = RolloutRecord {
            id: crate::journal::new_rollout_id(),
            kind: RolloutKind::Rollback {
                of: original.id.clone(),
            },
            // Filled in by `assemble`, from this coordinator's certificate.
            owner: String::new(),
            plan_path: original.plan_path.clone(),
            plan_text: original.plan_text.clone(),
            state: RolloutState::RollingBack,
            phase: phase::undo(last_wave),
            created_ms: now_ms(),
            updated_ms: now_ms(),
            error: None,
            facts,
        };
        Self::assemble(config, plan, record, json)
    }

    /// The rollout's id.
    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// Runs to the end (success, rollback, abort) and returns the final state.
    pub async fn run(mut self, break_lease: bool) -> anyhow::Result<RolloutState> {
        let mut touched = self.plan.hosts.clone();
        touched.extend(self.plan.lbs.iter().cloned());
        let leases = Leases::take(
            self.fleet.clone(),
            touched,
            &self.record.id,
            &self.record.owner,
            break_lease,
        )
        .await?;
        self.journal.save_rollout(&self.record)?;
        let (interrupts, _watcher) = watch_signals();
        let result = self.run_phases(interrupts).await;
        leases.release().await;
        self.fleet.close().await;
        let state = result?;
        self.ui.show(Event::Finished {
            rollout: self.record.id.clone(),
            state: format!("{state:?}").to_lowercase(),
            error: self.record.error.clone(),
        });
        Ok(state)
    }

    async fn run_phases(
        &mut self,
        interrupts: watch::Receiver<u32>,
    ) -> anyhow::Result<RolloutState> {
        let mut reason: Option<String> = None;
        loop {
            let phase_name = self.record.phase.clone();
            let steps = steps::for_phase(&self.plan, &phase_name).ok_or_else(|| {
                anyhow::anyhow!(
                    "journal: unknown phase {phase_name:?} in rollout {}",
                    self.record.id
                )
            })?;
            let journaled = self.journal.steps(&self.record.id)?;
            let done = (0..steps.len())
                .filter(|i| self.journal.step_done(&journaled, &phase_name, *i))
                .count();
            self.ui.show(Event::Phase {
                rollout: self.record.id.clone(),
                phase: phase_name.clone(),
                steps: steps.len(),
                done,
                reason: reason.take(),
            });
            let forward = phase_name == phase::FORWARD;
            let failure = self
                .run_steps(&phase_name, &steps, &journaled, forward, interrupts.clone())
                .await?;
            match failure {
                None => {
                    self.record.state = if forward {
                        RolloutState::Succeeded
                    } else if phase_name.starts_with("rollback") {
                        RolloutState::RolledBack
                    } else {
                        RolloutState::Aborted
                    };
                    self.journal.save_rollout(&self.record)?;
                    return Ok(self.record.state);
                }
                Some(f)
                    if forward && matches!(f.action, Action::EnsureCapacity | Action::Pause(_)) =>
                {
                    // Nothing of the wave has changed yet (capacity), or the wave is
                    // complete (the canary pause): there is nothing to put back, and
                    // without capacity nothing could be rolled back safely either.
                    // `handover resume ID` carries on from this step.
                    self.record.error = Some(f.error.clone());
                    self.record.state = RolloutState::Aborted;
                    self.journal.save_rollout(&self.record)?;
                    return Ok(RolloutState::Aborted);
                }
                Some(f) if forward => {
                    self.record.error = Some(f.error.clone());
                    if !f.interrupted && self.plan.file.rollout.auto_rollback {
                        self.record.phase = phase::rollback(f.wave);
                        self.record.state = RolloutState::RollingBack;
                        reason = Some(format!("rolling back: {}", f.error));
                    } else {
                        // The wave goes back in service; a later `resume` redoes it.
                        let undone: Vec<usize> = steps
                            .iter()
                            .enumerate()
                            .filter(|(_, s)| s.wave == f.wave)
                            .map(|(i, _)| i)
                            .collect();
                        self.journal
                            .mark_undone(&self.record.id, &phase_name, &undone)?;
                        self.record.phase = phase::repair(f.wave);
                        reason = Some(format!(
                            "putting wave {} back in service: {}",
                            f.wave + 1,
                            f.error
                        ));
                    }
                    self.journal.save_rollout(&self.record)?;
                }
                Some(f) => {
                    let first = self.record.error.take();
                    self.record.error = Some(match first {
                        Some(first) => format!(
                            "{first}; then, while putting hosts back ({phase_name}): {}",
                            f.error
                        ),
                        None => format!("{phase_name}: {}", f.error),
                    });
                    self.record.state = RolloutState::Failed;
                    self.journal.save_rollout(&self.record)?;
                    return Ok(RolloutState::Failed);
                }
            }
        }
    }

    async fn run_steps(
        &mut self,
        phase_name: &str,
        steps: &[steps::Step],
        journaled: &[crate::journal::StepRecord],
        forward: bool,
        mut interrupts: watch::Receiver<u32>,
    ) -> anyhow::Result<Option<StepFailure>> {
        let id = self.record.id.clone();
        for (i, step) in steps.iter().enumerate() {
            if self.journal.step_done(journaled, phase_name, i) {
                continue;
            }
            if forward && *interrupts.borrow() > 0 {
                return Ok(Some(StepFailure {
                    wave: step.wave,
                    action: step.action.clone(),
                    error: "interrupted by the operator".into(),
                    interrupted: true,
                }));
            }
            let title = step.title(&self.plan);
            let ctx = Ctx {
                config: &self.config,
                fleet: &self.fleet,
                plan: &self.plan,
                ui: &self.ui,
            };
            if step.action == Action::ApplyRevision {
                // Journaled before the switch, so a rollback knows where to go back
                // even if the coordinator dies during the apply.
                let mut facts = self.record.facts.clone();
                ops::record_releases_before(&ctx, &step.hosts, &mut facts).await?;
                self.record.facts = facts;
                self.journal.save_rollout(&self.record)?;
            }
            self.journal.step_started(&id, phase_name, i, &title)?;
            self.ui.show(Event::StepStarted {
                number: i + 1,
                of: steps.len(),
                wave: step.wave + 1,
                title: title.clone(),
            });
            let started = Instant::now();
            let ctx = Ctx {
                config: &self.config,
                fleet: &self.fleet,
                plan: &self.plan,
                ui: &self.ui,
            };
            let facts = self.record.facts.clone();
            let (result, interrupted) = tokio::select! {
                r = ops::execute(&ctx, step, &facts) => (r, false),
                () = interrupted(&mut interrupts, forward) => {
                    (Err(anyhow::anyhow!("interrupted by the operator")), true)
                }
            };
            match result {
                Ok(outputs) => {
                    self.journal.step_ended(
                        &id,
                        phase_name,
                        i,
                        StepOutcome::Ok,
                        outputs.clone(),
                    )?;
                    self.ui.show(Event::StepDone {
                        number: i + 1,
                        title,
                        elapsed_ms: u64::try_from(started.elapsed().as_millis())
                            .unwrap_or(u64::MAX),
                        outputs,
                    });
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    self.journal.step_ended(
                        &id,
                        phase_name,
                        i,
                        StepOutcome::Failed(error.clone()),
                        BTreeMap::new(),
                    )?;
                    self.ui.show(Event::StepFailed {
                        number: i + 1,
                        title,
                        error: error.clone(),
                    });
                    return Ok(Some(StepFailure {
                        wave: step.wave,
                        action: step.action.clone(),
                        error,
                        interrupted,
                    }));
                }
            }
        }
        Ok(None)
    }
}

struct StepFailure {
    wave: usize,
    action: Action,
    error: String,
    interrupted: bool,
}

/// Resolves on the first interrupt in the forward phase; never otherwise (putting
/// hosts back is not interrupted by a single Ctrl-C).
async fn interrupted(rx: &mut watch::Receiver<u32>, forward: bool) {
    if !forward {
        return std::future::pending().await;
    }
    let _ = rx.wait_for(|n| *n > 0).await;
}

/// Counts SIGINT/SIGTERM. The first stops the forward phase (the current wave is
/// put back in service); the second exits at once, leaving the journal for
/// `handover resume`.
fn watch_signals() -> (watch::Receiver<u32>, tokio::task::JoinHandle<()>) {
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
                    "handover: stopping: the current wave is put back in service (press Ctrl-C again to exit at once; `handover resume` finishes from the journal)"
                );
            } else {
                eprintln!("handover: exiting now; run `handover resume` to finish");
                std::process::exit(130);
            }
            let _ = tx.send(count);
        }
    });
    (rx, handle)
}
