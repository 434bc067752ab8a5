//! Strategies as step generators. A rollout is a list of steps, each an action on
//! the hosts of one wave, generated the same way every time from the plan and the
//! phase: that is what lets `resume` regenerate the list after a crash and carry on
//! from the journal.

use std::time::Duration;

use handover_common::names::HostName;
use serde::{Deserialize, Serialize};

use crate::plan::Plan;

/// What a step does. The names are the runbook's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Wait until taking the wave out leaves at least `min_healthy` UP in every LB.
    EnsureCapacity,
    /// Rename the health-check file away: HAProxy stops sending new sessions.
    RemoveHealthCheckFile,
    /// Wait until the LBs and the host see no more sessions (or the drain timeout).
    WaitForSessionsToEnd,
    /// Take the servers out of every LB.
    DetachFromLoadBalancers,
    /// Learn the release each host has now, to go back to (runbook step 5: save
    /// the deployment inputs before changing them).
    RecordCurrentRelease,
    /// Deploy the plan's revision (the agent switches, reloads and verifies).
    ApplyRevision,
    /// Put the release the host had before this rollout back in place.
    ActivatePreviousRelease,
    /// Put the health-check file back.
    RestoreHealthCheckFile,
    /// Check the release on the host itself: `[health]` path, `rise` times in a row.
    VerifyHealth,
    /// Put the servers back in every LB and wait for a fresh passing check.
    AttachToLoadBalancers,
    /// Wait before the next wave (after the canary).
    Pause(#[serde(with = "handover_common::duration::serde_human")] Duration),
    /// A step of the surge strategy (see [`super::surge`]).
    Surge(super::surge::SurgeAction),
    /// Before the first wave, on every host of the rollout: build and check the
    /// plan's revision as a release beside `current` (fetch, export, hooks), a
    /// bounded number of hosts at a time, so that each wave's apply only switches.
    /// Nothing serves from it yet: no host leaves service for it.
    StageRelease,
}

/// One step: an action on the hosts of one wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Wave number, from 0.
    pub wave: usize,
    /// What to do.
    pub action: Action,
    /// On which hosts (all at once).
    pub hosts: Vec<HostName>,
}

impl Step {
    /// The line `plan` and the journal show.
    pub fn title(&self, plan: &Plan) -> String {
        let hosts = self
            .hosts
            .iter()
            .map(HostName::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        let r = &plan.file.rollout;
        match &self.action {
            Action::EnsureCapacity => format!(
                "ensure capacity: taking {hosts} out leaves ≥ {} UP in every LB",
                r.min_healthy
            ),
            Action::RemoveHealthCheckFile => format!("remove the health-check file on {hosts}"),
            Action::WaitForSessionsToEnd => format!(
                "wait for sessions to end on {hosts} (timeout {}, then {})",
                handover_common::duration::format(r.drain_timeout),
                match r.on_drain_timeout {
                    crate::plan::OnDrainTimeout::Abort => "abort",
                    crate::plan::OnDrainTimeout::Proceed => "proceed and cut them",
                }
            ),
            Action::DetachFromLoadBalancers => format!("detach {hosts} from every LB"),
            Action::RecordCurrentRelease => {
                format!("record the release on {hosts} (to go back to)")
            }
            Action::ApplyRevision => format!(
                "apply {} @ {} on {hosts}",
                plan.file.revision.repo, plan.file.revision.reference
            ),
            Action::ActivatePreviousRelease => {
                format!("activate the previous release on {hosts}")
            }
            Action::RestoreHealthCheckFile => format!("restore the health-check file on {hosts}"),
            Action::VerifyHealth => format!(
                "verify health of {hosts}: GET {} → {}, {} in a row every {}",
                plan.file.health.path,
                plan.file.health.expect,
                plan.file.health.rise,
                handover_common::duration::format(plan.file.health.interval)
            ),
            Action::AttachToLoadBalancers => {
                format!("attach {hosts} to every LB and wait for a fresh passing check")
            }
            Action::Pause(d) => format!("pause {} (canary)", handover_common::duration::format(*d)),
            Action::StageRelease => format!(
                "stage {} @ {} on {hosts} (fetch and export beside current, {} hosts at a time)",
                plan.file.revision.repo,
                plan.file.revision.reference,
                super::ops::STAGE_CONCURRENCY
            ),
            Action::Surge(a) => {
                let title = super::surge::title(plan, a, &self.hosts);
                match a.runbook() {
                    Some(row) => format!("runbook {row}: {title}"),
                    None => format!("way back: {title}"),
                }
            }
        }
    }

    /// Servers of this wave out of service after the step (for `plan`'s capacity).
    fn out_of_service_after(&self, before: usize) -> usize {
        match self.action {
            Action::RemoveHealthCheckFile => self.hosts.len(),
            Action::AttachToLoadBalancers => 0,
            _ => before,
        }
    }
}

/// The mechanics of one wave: drain → wait → detach → `switch` → restore → verify
/// → attach; an apply is preceded by recording where each host comes from. Every
/// action is idempotent, so the same list also repairs a wave left anywhere in
/// between.
pub fn wave_steps(wave: usize, hosts: &[HostName], switch: Action) -> Vec<Step> {
    let record = (switch == Action::ApplyRevision).then_some(Action::RecordCurrentRelease);
    [
        Action::EnsureCapacity,
        Action::RemoveHealthCheckFile,
        Action::WaitForSessionsToEnd,
        Action::DetachFromLoadBalancers,
    ]
    .into_iter()
    .chain(record)
    .chain([
        switch,
        Action::RestoreHealthCheckFile,
        Action::VerifyHealth,
        Action::AttachToLoadBalancers,
    ])
    .map(|action| Step {
        wave,
        action,
        hosts: hosts.to_vec(),
    })
    .collect()
}

/// Which list of steps runs: the plan's waves, or a way back. Journaled by its
/// key ([`Phase::key`]), which step records carry too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Phase {
    /// The plan's waves.
    Forward,
    /// Wave `wave` (from 0) failed: it and every wave before it go back.
    RollbackFrom {
        /// The failed wave.
        wave: usize,
    },
    /// `handover rollback`: waves 0..=`last_wave`, all serving, go back.
    Undo {
        /// The last wave the undone rollout switched.
        last_wave: usize,
    },
    /// The rollout stopped mid-wave: that wave, out of service, goes back in
    /// service (on its previous release if it had switched).
    Repair {
        /// The wave.
        wave: usize,
    },
    /// The rollout stopped at the canary pause: the canary wave, serving the new
    /// release, goes back to its previous release with the full wave mechanics.
    Withdraw {
        /// The wave.
        wave: usize,
    },
    /// A surge rollout stopped before traffic moved: its new servers go.
    SurgeAbort,
    /// A surge rollout goes back after traffic moved: old servers back in
    /// service, new ones drained, detached, terminated.
    SurgeRollback,
}

impl Phase {
    /// The journal's name for it (stable: step records are keyed by it).
    pub fn key(self) -> String {
        match self {
            Phase::Forward => "forward".into(),
            Phase::RollbackFrom { wave } => format!("rollback-from-wave-{}", wave + 1),
            Phase::Undo { last_wave } => format!("rollback-waves-1-to-{}", last_wave + 1),
            Phase::Repair { wave } => format!("repair-wave-{}", wave + 1),
            Phase::Withdraw { wave } => format!("withdraw-wave-{}", wave + 1),
            Phase::SurgeAbort => "surge-abort".into(),
            Phase::SurgeRollback => "surge-rollback".into(),
        }
    }

    /// Whether this phase takes hosts back to their previous release for good.
    pub fn is_rollback(self) -> bool {
        matches!(
            self,
            Phase::RollbackFrom { .. } | Phase::Undo { .. } | Phase::SurgeRollback
        )
    }
}

impl std::fmt::Display for Phase {
    /// What an operator reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Phase::Forward => f.write_str("rolling out"),
            Phase::RollbackFrom { wave } => {
                write!(f, "rolling back (wave {} failed)", wave + 1)
            }
            Phase::Undo { last_wave: 0 } => f.write_str("rolling back wave 1"),
            Phase::Undo { last_wave } => write!(f, "rolling back waves 1 to {}", last_wave + 1),
            Phase::Repair { wave } => write!(f, "putting wave {} back in service", wave + 1),
            Phase::Withdraw { wave } => {
                write!(f, "putting wave {} back on its previous release", wave + 1)
            }
            Phase::SurgeAbort => f.write_str("stopping before traffic moved: new servers go"),
            Phase::SurgeRollback => {
                f.write_str("rolling back: old servers back in service, new servers go")
            }
        }
    }
}

impl From<Phase> for String {
    fn from(phase: Phase) -> String {
        phase.key()
    }
}

impl TryFrom<String> for Phase {
    type Error = String;

    fn try_from(key: String) -> Result<Self, String> {
        let wave = |prefix: &str| -> Option<usize> {
            key.strip_prefix(prefix)?
                .parse::<usize>()
                .ok()?
                .checked_sub(1)
        };
        match key.as_str() {
            "forward" => return Ok(Phase::Forward),
            "surge-abort" => return Ok(Phase::SurgeAbort),
            "surge-rollback" => return Ok(Phase::SurgeRollback),
            _ => {}
        }
        let phase = wave("rollback-from-wave-")
            .map(|wave| Phase::RollbackFrom { wave })
            .or_else(|| wave("rollback-waves-1-to-").map(|last_wave| Phase::Undo { last_wave }))
            .or_else(|| wave("repair-wave-").map(|wave| Phase::Repair { wave }))
            .or_else(|| wave("withdraw-wave-").map(|wave| Phase::Withdraw { wave }));
        phase.ok_or_else(|| format!("unknown rollout phase {key:?} (written by another version?)"))
    }
}

/// The in-place strategy: the release staged on every host first, then every
/// wave's mechanics with `ApplyRevision` (which switches to the staged release),
/// and the canary pause after the first wave.
pub fn in_place(plan: &Plan) -> Vec<Step> {
    let mut steps = vec![Step {
        wave: 0,
        action: Action::StageRelease,
        hosts: plan.waves.iter().flatten().cloned().collect(),
    }];
    for (i, wave) in plan.waves.iter().enumerate() {
        steps.extend(wave_steps(i, wave, Action::ApplyRevision));
        if plan.is_canary(i)
            && let Some(pause) = plan.file.rollout.pause
            && i + 1 < plan.waves.len()
        {
            steps.push(Step {
                wave: i,
                action: Action::Pause(pause),
                hosts: wave.clone(),
            });
        }
    }
    steps
}

/// Back to the previous release. The failed wave is out of service or about to
/// be (drained, detached, or failing its checks), so it is repaired in place:
/// previous release, health file back, verify, attach. The waves before it are
/// serving the new release, so they go back newest first with the full wave
/// mechanics (no session is cut).
pub fn rollback(plan: &Plan, failed_wave: usize) -> Vec<Step> {
    let failed_wave = failed_wave.min(plan.waves.len().saturating_sub(1));
    let mut steps = repair(plan, failed_wave);
    for i in (0..failed_wave).rev() {
        steps.extend(wave_steps(
            i,
            &plan.waves[i],
            Action::ActivatePreviousRelease,
        ));
    }
    steps
}

/// `handover rollback` of a finished rollout: every wave up to `last_wave` is
/// serving, so each goes back with the full wave mechanics, newest first.
pub fn undo(plan: &Plan, last_wave: usize) -> Vec<Step> {
    let last_wave = last_wave.min(plan.waves.len().saturating_sub(1));
    (0..=last_wave)
        .rev()
        .flat_map(|i| undo_wave(plan, i))
        .collect()
}

/// One serving wave back to its previous release, with the full wave mechanics.
fn undo_wave(plan: &Plan, wave: usize) -> Vec<Step> {
    let hosts = plan.waves.get(wave).cloned().unwrap_or_default();
    wave_steps(wave, &hosts, Action::ActivatePreviousRelease)
}

/// After an abort without rollback: only the current wave goes back in service,
/// on whatever good release it has (the previous one if the switch did not finish).
pub fn repair(plan: &Plan, wave: usize) -> Vec<Step> {
    let hosts = plan.waves.get(wave).cloned().unwrap_or_default();
    [
        Action::ActivatePreviousRelease,
        Action::RestoreHealthCheckFile,
        Action::VerifyHealth,
        Action::AttachToLoadBalancers,
    ]
    .into_iter()
    .map(|action| Step {
        wave,
        action,
        hosts: hosts.clone(),
    })
    .collect()
}

/// The steps of `phase`.
pub fn for_phase(plan: &Plan, phase: Phase) -> Vec<Step> {
    if plan.surge.is_some() {
        return super::surge::for_phase(plan, phase);
    }
    match phase {
        Phase::Forward => in_place(plan),
        Phase::RollbackFrom { wave } => rollback(plan, wave),
        Phase::Undo { last_wave } => undo(plan, last_wave),
        Phase::Repair { wave } => repair(plan, wave),
        Phase::Withdraw { wave } => undo_wave(plan, wave),
        Phase::SurgeAbort | Phase::SurgeRollback => Vec::new(),
    }
}

/// `handover plan`: numbered steps with the servers UP in every LB after each.
pub fn render(plan: &Plan, steps: &[Step]) -> String {
    let mut out = String::new();
    let total = plan.servers_in_lb;
    let mut out_of_service = 0;
    let mut wave = usize::MAX;
    for (i, step) in steps.iter().enumerate() {
        if step.wave != wave {
            wave = step.wave;
            let canary = if plan.is_canary(wave) {
                " (canary)"
            } else {
                ""
            };
            out.push_str(&format!(
                "wave {}{canary}: {}\n",
                wave + 1,
                step.hosts
                    .iter()
                    .map(HostName::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        out_of_service = step.out_of_service_after(out_of_service);
        out.push_str(&format!(
            "  {:>3}. {:<90} UP {}/{}\n",
            i + 1,
            step.title(plan),
            total - out_of_service.min(total),
            total
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str, n: usize) -> Plan {
        let mut inv = String::from("ca = \"a\"\ncert = \"b\"\nkey = \"c\"\nstate_dir = \"d\"\n");
        for i in 1..=n {
            inv.push_str(&format!(
                "[[hosts]]\nname = \"web-{i}\"\naddress = \"127.0.1.{i}:7443\"\nroles = [\"app\"]\napp = \"127.0.1.{i}:80\"\n"
            ));
        }
        inv.push_str(
            "[[hosts]]\nname = \"lb-1\"\naddress = \"127.0.1.99:7443\"\nroles = [\"lb\"]\n",
        );
        let config = toml::from_str(&inv).expect("inventory");
        Plan::parse(text, &config).expect("plan")
    }

    const PLAN: &str = "strategy = \"in-place\"\nroles = [\"app\"]\n[revision]\nrepo = \"file:///r.git\"\nref = \"v2\"\n[rollout]\nbatch = 1\nmin_healthy = 2\n";

    #[test]
    fn every_wave_drains_before_detaching_and_verifies_before_attaching() {
        let plan = plan(PLAN, 3);
        let steps = in_place(&plan);
        assert_eq!(steps.len(), 1 + 3 * 9);
        for wave in steps[1..].chunks(9) {
            let order: Vec<&Action> = wave.iter().map(|s| &s.action).collect();
            assert_eq!(order[1], &Action::RemoveHealthCheckFile);
            assert_eq!(order[3], &Action::DetachFromLoadBalancers);
            assert_eq!(order[4], &Action::RecordCurrentRelease);
            assert_eq!(order[5], &Action::ApplyRevision);
            assert_eq!(order[7], &Action::VerifyHealth);
            assert_eq!(order[8], &Action::AttachToLoadBalancers);
        }
    }

    /// Issue 14: every host is staged in one step before the first wave takes
    /// any host out, so a wave's apply only switches.
    #[test]
    fn the_release_is_staged_on_every_host_before_the_first_drain() {
        let plan = plan(PLAN, 3);
        let steps = in_place(&plan);
        assert_eq!(steps[0].action, Action::StageRelease);
        assert_eq!(steps[0].hosts.len(), 3);
        let first_drain = steps
            .iter()
            .position(|s| s.action == Action::RemoveHealthCheckFile)
            .expect("a drain");
        assert!(first_drain > 0);
        assert_eq!(
            steps
                .iter()
                .filter(|s| s.action == Action::StageRelease)
                .count(),
            1
        );
        // No way back stages anything.
        for phase in [Phase::RollbackFrom { wave: 1 }, Phase::Repair { wave: 0 }] {
            assert!(
                for_phase(&plan, phase)
                    .iter()
                    .all(|s| s.action != Action::StageRelease)
            );
        }
    }

    #[test]
    fn rendering_shows_capacity_never_below_min_healthy() {
        let plan = plan(PLAN, 3);
        let text = render(&plan, &in_place(&plan));
        assert!(text.contains("UP 2/3"), "{text}");
        assert!(!text.contains("UP 1/3"), "{text}");
    }

    #[test]
    fn rollback_undoes_the_failed_wave_first_then_earlier_ones() {
        let plan = plan(PLAN, 3);
        let steps = rollback(&plan, 1);
        let waves: Vec<usize> = steps.iter().map(|s| s.wave).collect();
        assert_eq!(waves.first(), Some(&1));
        assert_eq!(waves.last(), Some(&0));
        assert!(steps.iter().all(|s| s.action != Action::ApplyRevision));
        assert_eq!(for_phase(&plan, Phase::RollbackFrom { wave: 1 }), steps);
    }

    #[test]
    fn phases_keep_their_journal_names_and_refuse_unknown_ones() {
        for phase in [
            Phase::Forward,
            Phase::RollbackFrom { wave: 1 },
            Phase::Undo { last_wave: 2 },
            Phase::Repair { wave: 0 },
            Phase::Withdraw { wave: 0 },
            Phase::SurgeAbort,
            Phase::SurgeRollback,
        ] {
            assert_eq!(Phase::try_from(phase.key()), Ok(phase));
        }
        // Journals written before phases were types keep reading the same.
        assert_eq!(
            Phase::try_from("rollback-from-wave-2".to_string()),
            Ok(Phase::RollbackFrom { wave: 1 })
        );
        assert!(Phase::try_from("nonsense".to_string()).is_err());
        assert!(Phase::try_from("repair-wave-0".to_string()).is_err());
    }
}
