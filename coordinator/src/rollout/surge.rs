//! The surge strategy as a step generator: the runbook's 18 steps in its own
//! order, and the two ways back — before any traffic moved (terminate the new
//! servers, re-enable the array) and after (old servers back, new ones out).
//!
//! The point of no return is step 14 (detach the old servers): before it, a
//! rollback puts the old servers back in service; after it, a rollback still
//! can (they exist, detached, until 18); after 18 they are gone (or back in the
//! standby pool), and going back is a new rollout of the previous revision.

use std::collections::BTreeMap;
use std::time::Duration;

use handover_common::names::{HookName, HostName};
use serde::{Deserialize, Serialize};

use super::steps::{Action, Phase, Step};
use crate::journal::RolloutState;
use crate::plan::Plan;
use crate::provider::Launched;
use crate::surge_plan::ProviderKind;

/// A surge step's action, named as the runbook names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SurgeAction {
    /// 1: snapshot the database (the `[db] backup` hook on the db host).
    BackupDatabase,
    /// 2: the `[db] migrate` hook, once per rollout.
    MigrateDatabase,
    /// 3 (8 for later batches): new servers from the provider, agents answering.
    LaunchNewServers {
        /// Batch, from 0.
        batch: usize,
    },
    /// 4: the `[surge] system` hooks on each new server.
    RunSystemHooks {
        /// Batch, from 0.
        batch: usize,
    },
    /// 5: the deployment inputs recorded (once, before the first deploy).
    SaveInputs,
    /// 6 (9): the plan's revision deployed on the new servers.
    DeployRevision {
        /// Batch, from 0.
        batch: usize,
    },
    /// 7 (9): `[health]` on each new server, and the `[db] check` hook.
    VerifyNewServers {
        /// Batch, from 0.
        batch: usize,
    },
    /// 10: provider `array disable`.
    DisableArray,
    /// 11: health file on, attached to every LB, a fresh check passed.
    AttachNewServers,
    /// 12: the old servers' health-check file removed.
    RemoveHealthCheckFileOnOld,
    /// 13: the old servers' sessions waited out.
    WaitForSessionsToEndOnOld,
    /// 14: the old servers detached (the point of no return).
    DetachOldServers,
    /// 15: provider `array update`.
    UpdateArray,
    /// 16: provider `array enable`.
    EnableArray,
    /// 17: smoke check through each LB, then the bake.
    SmokeCheckAndBake,
    /// 18: old servers terminated (standby: handed back to the pool).
    TerminateOldServers,
    /// Way back: old servers' health file restored, attached again, UP.
    ReattachOldServers,
    /// Way back: new servers' health file removed, sessions waited out.
    DrainNewServers,
    /// Way back: new servers detached from every LB.
    DetachNewServers,
    /// Way back: new servers terminated (standby: back in the pool).
    TerminateNewServers,
    /// 3 (8): each launched server enrolled with its join token (`[surge]
    /// enroll = true`), before its agent is waited for.
    EnrollNewServers {
        /// Batch, from 0.
        batch: usize,
    },
}

impl SurgeAction {
    /// The runbook row it is (`8–9` for batches after the first).
    pub fn runbook(&self) -> Option<&'static str> {
        use SurgeAction::*;
        let later = |batch: &usize, first: &'static str| if *batch == 0 { first } else { "8–9" };
        Some(match self {
            BackupDatabase => "1",
            MigrateDatabase => "2",
            LaunchNewServers { batch } | EnrollNewServers { batch } => later(batch, "3"),
            RunSystemHooks { batch } => later(batch, "4"),
            SaveInputs => "5",
            DeployRevision { batch } => later(batch, "6"),
            VerifyNewServers { batch } => later(batch, "7"),
            DisableArray => "10",
            AttachNewServers => "11",
            RemoveHealthCheckFileOnOld => "12",
            WaitForSessionsToEndOnOld => "13",
            DetachOldServers => "14",
            UpdateArray => "15",
            EnableArray => "16",
            SmokeCheckAndBake => "17",
            TerminateOldServers => "18",
            ReattachOldServers | DrainNewServers | DetachNewServers | TerminateNewServers => {
                return None;
            }
        })
    }

    /// Whether running it again after it may have run is unsafe: it runs once
    /// per rollout, and a start without a journaled end stops the rollout.
    pub fn runs_once(&self) -> bool {
        matches!(self, SurgeAction::MigrateDatabase)
    }
}

/// What a surge rollout learnt, journaled with the rollout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SurgeFacts {
    /// The standby pool when the rollout started (so `resume` picks the same
    /// new servers even after the pool changed).
    #[serde(default)]
    pub standby_at_start: Option<Vec<HostName>>,
    /// The servers each batch launched (command provider).
    #[serde(default)]
    pub launched: BTreeMap<usize, Vec<Launched>>,
    /// Set by a step that terminated the new servers: `launched` is forgotten.
    #[serde(default)]
    pub forget_launched: bool,
    /// The backup's artifact line, as the hook reported it.
    #[serde(default)]
    pub backup: Option<String>,
    /// The array was disabled by this rollout (re-enabled on the way back).
    #[serde(default)]
    pub array_disabled: bool,
    /// When the old servers were detached (ms since epoch): `terminate_after`
    /// counts from here.
    #[serde(default)]
    pub detached_ms: Option<u64>,
    /// The inputs version recorded for this rollout before it started
    /// (`handover inputs history` lists it).
    #[serde(default)]
    pub inputs_version: Option<u64>,
    /// That version's inputs: what hooks and providers get.
    #[serde(default)]
    pub inputs: Option<crate::surge_plan::Inputs>,
    /// The join tokens each batch's launch carried (IDs only: the secrets went
    /// to the provider and nowhere else), so that enrolling accepts only them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub join_tokens: BTreeMap<usize, Vec<handover_common::pki::tokens::TokenId>>,
}

impl SurgeFacts {
    /// Adds what a step learnt.
    pub fn learn(&mut self, learned: SurgeFacts) {
        if learned.forget_launched {
            self.launched.clear();
            self.join_tokens.clear();
        }
        self.standby_at_start = self.standby_at_start.take().or(learned.standby_at_start);
        for (batch, servers) in learned.launched {
            self.launched.entry(batch).or_insert(servers);
        }
        self.backup = self.backup.take().or(learned.backup);
        self.array_disabled |= learned.array_disabled;
        self.detached_ms = self.detached_ms.or(learned.detached_ms);
        self.inputs_version = self.inputs_version.or(learned.inputs_version);
        self.inputs = self.inputs.take().or(learned.inputs);
        for (batch, ids) in learned.join_tokens {
            self.join_tokens.entry(batch).or_insert(ids);
        }
    }
}

/// The new servers of `batch` (all batches: `None`) as the steps name them:
/// standby hosts by name; a command provider's are named once launched.
pub fn new_names(plan: &Plan, batch: Option<usize>) -> Vec<HostName> {
    let Some(surge) = &plan.surge else {
        return Vec::new();
    };
    let names: Vec<HostName> = surge.standby.iter().map(|h| h.name.clone()).collect();
    match batch {
        None => names,
        Some(b) => names
            .chunks(surge.batch.max(1))
            .nth(b)
            .map(<[HostName]>::to_vec)
            .unwrap_or_default(),
    }
}

fn step(wave: usize, action: SurgeAction, hosts: Vec<HostName>) -> Step {
    Step {
        wave,
        action: Action::Surge(action),
        hosts,
    }
}

/// The old servers' "wave": the steps before it (the db) are wave 0, every step
/// from the first launch on is wave 1, so an abort can mark the launches undone
/// (resume launches again) and keep the migration done (never run twice).
pub const NEW_SERVERS_WAVE: usize = 1;

/// The runbook, steps 1 to 18, in its order.
pub fn forward(plan: &Plan) -> Vec<Step> {
    use SurgeAction::*;
    let old: Vec<HostName> = plan.hosts.iter().map(|h| h.name.clone()).collect();
    let db: Vec<HostName> = plan
        .surge
        .iter()
        .flat_map(|s| s.db.iter().map(|h| h.name.clone()))
        .collect();
    let w = NEW_SERVERS_WAVE;
    let mut steps = vec![
        step(0, BackupDatabase, db.clone()),
        step(0, MigrateDatabase, db),
    ];
    let batches = plan.surge.as_ref().map(|s| s.batches()).unwrap_or_default();
    let enroll = plan.surge.as_ref().is_some_and(|s| s.enroll.is_some());
    for batch in 0..batches.len() {
        let new = new_names(plan, Some(batch));
        steps.push(step(w, LaunchNewServers { batch }, new.clone()));
        if enroll {
            steps.push(step(w, EnrollNewServers { batch }, new.clone()));
        }
        steps.push(step(w, RunSystemHooks { batch }, new.clone()));
        if batch == 0 {
            steps.push(step(w, SaveInputs, Vec::new()));
        }
        steps.push(step(w, DeployRevision { batch }, new.clone()));
        steps.push(step(w, VerifyNewServers { batch }, new));
    }
    let new = new_names(plan, None);
    steps.extend([
        step(w, DisableArray, Vec::new()),
        step(w, AttachNewServers, new.clone()),
        step(w, RemoveHealthCheckFileOnOld, old.clone()),
        step(w, WaitForSessionsToEndOnOld, old.clone()),
        step(w, DetachOldServers, old.clone()),
        step(w, UpdateArray, Vec::new()),
        step(w, EnableArray, Vec::new()),
        step(w, SmokeCheckAndBake, new),
        step(w, TerminateOldServers, old),
    ]);
    steps
}

/// Before any traffic moved: the new servers go (terminated, or back to the
/// pool), the array is enabled again if this rollout disabled it.
pub fn abort(plan: &Plan) -> Vec<Step> {
    let new = new_names(plan, None);
    vec![
        step(NEW_SERVERS_WAVE, SurgeAction::TerminateNewServers, new),
        step(NEW_SERVERS_WAVE, SurgeAction::EnableArray, Vec::new()),
    ]
}

/// After traffic moved (and before 18): the old servers back in service first,
/// then the new ones drained, detached and terminated; the array enabled.
pub fn rollback(plan: &Plan) -> Vec<Step> {
    use SurgeAction::*;
    let old: Vec<HostName> = plan.hosts.iter().map(|h| h.name.clone()).collect();
    let new = new_names(plan, None);
    let w = NEW_SERVERS_WAVE;
    vec![
        step(w, ReattachOldServers, old),
        step(w, DrainNewServers, new.clone()),
        step(w, DetachNewServers, new.clone()),
        step(w, TerminateNewServers, new),
        step(w, EnableArray, Vec::new()),
    ]
}

/// The steps of `phase` in a surge plan.
pub fn for_phase(plan: &Plan, phase: Phase) -> Vec<Step> {
    match phase {
        Phase::SurgeAbort => abort(plan),
        Phase::SurgeRollback => rollback(plan),
        _ => forward(plan),
    }
}

/// What the engine does after a surge step failed (pure, tested without
/// processes).
#[derive(Debug, PartialEq, Eq)]
pub enum SurgeNext {
    /// Stop in this state; `resume` carries on from the failed step.
    Stop(RolloutState),
    /// Run `phase`; `undo_new_servers`: the forward steps from the first launch
    /// on are marked undone (a later `resume` launches again; the database steps
    /// stay done).
    Switch {
        /// The way back.
        phase: Phase,
        /// See above.
        undo_new_servers: bool,
    },
}

/// Where a failure at `action` leads. Before traffic moves (1–10) the new
/// servers go and the rollout stops, aborted; from 11 to 17 the old servers are
/// put back (they still exist) unless the plan turned `auto_rollback` off; an
/// array call after the handover (15, 16) and step 18 are retried by `resume`.
pub fn after_failure(
    phase: Phase,
    action: &Action,
    interrupted: bool,
    unreachable: bool,
    auto_rollback: bool,
) -> SurgeNext {
    use SurgeAction::*;
    if unreachable && !interrupted {
        return SurgeNext::Stop(RolloutState::Halted);
    }
    if phase != Phase::Forward {
        return SurgeNext::Stop(RolloutState::Failed);
    }
    let Action::Surge(a) = action else {
        return SurgeNext::Stop(RolloutState::Failed);
    };
    let back = SurgeNext::Switch {
        phase: Phase::SurgeRollback,
        undo_new_servers: true,
    };
    match a {
        BackupDatabase | MigrateDatabase => SurgeNext::Stop(RolloutState::Aborted),
        LaunchNewServers { .. }
        | EnrollNewServers { .. }
        | RunSystemHooks { .. }
        | SaveInputs
        | DeployRevision { .. }
        | VerifyNewServers { .. }
        | DisableArray => SurgeNext::Switch {
            phase: Phase::SurgeAbort,
            undo_new_servers: true,
        },
        UpdateArray | EnableArray | TerminateOldServers if !interrupted => {
            SurgeNext::Stop(RolloutState::Failed)
        }
        TerminateOldServers => SurgeNext::Stop(RolloutState::Halted),
        _ if interrupted || auto_rollback => back,
        _ => SurgeNext::Stop(RolloutState::Failed),
    }
}

/// Whether the old servers are past the point where putting them back is
/// possible: step 18 ran (terminated, or handed to the pool).
pub fn old_servers_gone(steps: &[Step], done: impl Fn(usize) -> bool) -> bool {
    steps
        .iter()
        .position(|s| s.action == Action::Surge(SurgeAction::TerminateOldServers))
        .is_some_and(done)
}

/// A step's title.
pub fn title(plan: &Plan, action: &SurgeAction, hosts: &[HostName]) -> String {
    let words = Words::new(plan, hosts);
    new_server_title(&words, action).unwrap_or_else(|| handover_title(&words, action))
}

/// What a step title is made of: the plan, the step's hosts and the provider.
struct Words<'a> {
    plan: &'a Plan,
    hosts: &'a [HostName],
    /// A command provider launches and terminates; the standby pool lends and
    /// takes back.
    command: bool,
}

impl<'a> Words<'a> {
    fn new(plan: &'a Plan, hosts: &'a [HostName]) -> Self {
        let command = plan
            .surge
            .as_ref()
            .is_some_and(|s| s.provider == ProviderKind::Command);
        Words {
            plan,
            hosts,
            command,
        }
    }

    /// `[surge] enroll = true`: the CA directory and the boot wait.
    fn enroll(&self) -> Option<&'a crate::enroll::EnrollConfig> {
        self.plan.surge.as_ref().and_then(|s| s.enroll.as_ref())
    }

    fn list(&self) -> String {
        let names: Vec<&str> = self.hosts.iter().map(HostName::as_str).collect();
        names.join(", ")
    }

    /// The new servers of `batch` (all when None): their names once known, else
    /// how many (a command provider names them only when it launches them).
    fn new_servers(&self, batch: Option<usize>) -> String {
        if !self.command && !self.hosts.is_empty() {
            return self.list();
        }
        let n = match (batch, self.plan.surge.as_ref()) {
            (Some(b), Some(s)) => s.batches().get(b).copied().unwrap_or(0),
            (None, Some(s)) => s.count,
            _ => 0,
        };
        format!("{n} new server(s)")
    }

    fn hook(&self, hook: Option<&HookName>, what: &str) -> String {
        match hook {
            Some(h) => format!("{what}: hook {h} on {}", self.list()),
            None => format!("{what}: no hook in [db], skipped"),
        }
    }

    fn array(&self, verb: &str) -> String {
        match self
            .plan
            .file
            .provider
            .as_ref()
            .and_then(|p| p.array.as_ref())
        {
            Some(exe) => format!("{verb} the server array ({exe} {verb})"),
            None => format!("{verb} the server array: no [provider] array, skipped"),
        }
    }

    fn retire(&self, whom: String) -> String {
        let verb = if self.command {
            "terminate"
        } else {
            "hand back to the standby pool"
        };
        format!("{verb} {whom}")
    }
}

/// Titles of runbook steps 1–9: the database and the new servers.
fn new_server_title(w: &Words<'_>, action: &SurgeAction) -> Option<String> {
    use SurgeAction::*;
    let file = &w.plan.file;
    let db = file.db.as_ref();
    Some(match action {
        BackupDatabase => w.hook(db.and_then(|d| d.backup.as_ref()), "back up the database"),
        MigrateDatabase => w.hook(
            db.and_then(|d| d.migrate.as_ref()),
            "migrate the database (once)",
        ),
        LaunchNewServers { batch } if crate::provider::aws::settings(w.plan).is_some() => {
            crate::provider::aws::clones(w.plan, &w.new_servers(Some(*batch))).unwrap_or_default()
        }
        LaunchNewServers { batch } => format!(
            "launch {} ({}), wait for their agents",
            w.new_servers(Some(*batch)),
            match (w.command, w.enroll()) {
                (true, Some(_)) => "provider launch, one single-use join token each",
                (true, None) => "provider launch",
                _ => "standby pool",
            }
        ),
        EnrollNewServers { batch } => match w.enroll() {
            Some(e) => format!(
                "enroll {} with their join tokens (CA {}), waiting up to {} for each to boot",
                w.new_servers(Some(*batch)),
                e.ca_dir.display(),
                handover_common::duration::format(e.wait)
            ),
            None => format!("enroll {}: not asked for", w.new_servers(Some(*batch))),
        },
        RunSystemHooks { batch } => format!("system hooks on {}", w.new_servers(Some(*batch))),
        SaveInputs => format!(
            "save the deployment inputs ({} key(s))",
            file.inputs.as_ref().map_or(0, |i| i.len())
        ),
        DeployRevision { batch } => format!(
            "deploy {} @ {} on {}",
            file.revision.repo,
            file.revision.reference,
            w.new_servers(Some(*batch))
        ),
        VerifyNewServers { batch } => format!(
            "verify {}: GET {} → {}{}",
            w.new_servers(Some(*batch)),
            file.health.path,
            file.health.expect,
            match db.and_then(|d| d.check.as_ref()) {
                Some(h) => format!(", db check hook {h}"),
                None => String::new(),
            }
        ),
        _ => return None,
    })
}

/// Titles of runbook steps 10–18 and of the ways back.
fn handover_title(w: &Words<'_>, action: &SurgeAction) -> String {
    use SurgeAction::*;
    let file = &w.plan.file;
    let bake = file.bake.clone().unwrap_or_default();
    match action {
        DisableArray => w.array("disable"),
        AttachNewServers => format!("attach {} to every LB, wait for UP", w.new_servers(None)),
        RemoveHealthCheckFileOnOld => format!("remove the health-check file on {}", w.list()),
        WaitForSessionsToEndOnOld => format!(
            "wait for sessions to end on {} (timeout {})",
            w.list(),
            handover_common::duration::format(file.rollout.drain_timeout)
        ),
        DetachOldServers => format!("detach {} from every LB (point of no return)", w.list()),
        UpdateArray => w.array("update"),
        EnableArray => w.array("enable"),
        SmokeCheckAndBake => format!(
            "smoke check through every LB, bake {} (5xx ratio ≤ {})",
            handover_common::duration::format(bake.duration.unwrap_or(Duration::ZERO)),
            bake.max_5xx_ratio
        ),
        TerminateOldServers => w.retire(w.list()),
        ReattachOldServers => format!("put {} back in service on every LB", w.list()),
        DrainNewServers => format!("drain {} and wait for their sessions", w.new_servers(None)),
        DetachNewServers => format!("detach {} from every LB", w.new_servers(None)),
        TerminateNewServers => w.retire(w.new_servers(None)),
        BackupDatabase
        | MigrateDatabase
        | LaunchNewServers { .. }
        | EnrollNewServers { .. }
        | RunSystemHooks { .. }
        | SaveInputs
        | DeployRevision { .. }
        | VerifyNewServers { .. } => new_server_title(w, action).unwrap_or_default(),
    }
}

/// Servers in service after each step, counting old and new (for `plan`).
fn in_service_after(action: &SurgeAction, old: usize, new: usize, before: usize) -> usize {
    match action {
        SurgeAction::AttachNewServers => old + new,
        SurgeAction::RemoveHealthCheckFileOnOld => new,
        _ => before,
    }
}

/// `handover plan` for a surge plan: every step with its runbook row, the hosts
/// it touches and the servers in service after it.
pub fn render(plan: &Plan, steps: &[Step]) -> String {
    let old = plan.hosts.len();
    let new = plan.surge.as_ref().map_or(0, |s| s.count);
    let mut up = old;
    let mut out = String::new();
    for (i, s) in steps.iter().enumerate() {
        let Action::Surge(a) = &s.action else {
            continue;
        };
        up = in_service_after(a, old, new, up);
        out.push_str(&format!(
            "  {:>3}. [runbook {:>4}] {:<84} in service {up}\n",
            i + 1,
            a.runbook().unwrap_or("-"),
            title(plan, a, &s.hosts),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SURGE: &str = "[surge]\nprovider = \"standby\"\nbatch = 2\n[db]\nbackup = \"backup\"\nmigrate = \"migrate\"\ncheck = \"dbcheck\"\n[bake]\nduration = \"10s\"\n[inputs]\nAPP_ENV = \"production\"\n";

    #[test]
    fn the_steps_follow_the_runbook_order_from_1_to_18() {
        let plan = crate::rollout::fake::surge_plan(3, SURGE);
        let steps = forward(&plan);
        let rows: Vec<&str> = steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::Surge(a) => a.runbook(),
                _ => None,
            })
            .collect();
        assert_eq!(
            rows,
            [
                "1", "2", "3", "4", "5", "6", "7", "8–9", "8–9", "8–9", "8–9", "10", "11", "12",
                "13", "14", "15", "16", "17", "18"
            ]
        );
        let text = render(&plan, &steps);
        assert!(text.contains("web-4, web-5"), "{text}");
        assert!(text.contains("in service 6"), "{text}");
        assert!(!text.contains("in service 0"), "{text}");
        let at = |a: SurgeAction| {
            steps
                .iter()
                .position(|s| s.action == Action::Surge(a.clone()))
        };
        assert!(at(SurgeAction::AttachNewServers) < at(SurgeAction::RemoveHealthCheckFileOnOld));
        assert!(at(SurgeAction::WaitForSessionsToEndOnOld) < at(SurgeAction::DetachOldServers));
    }

    #[test]
    fn a_failure_before_traffic_moves_aborts_and_after_it_puts_the_old_servers_back() {
        let f =
            |a: SurgeAction| after_failure(Phase::Forward, &Action::Surge(a), false, false, true);
        let abort = SurgeNext::Switch {
            phase: Phase::SurgeAbort,
            undo_new_servers: true,
        };
        assert_eq!(f(SurgeAction::VerifyNewServers { batch: 1 }), abort);
        assert_eq!(f(SurgeAction::DisableArray), abort);
        assert_eq!(
            f(SurgeAction::MigrateDatabase),
            SurgeNext::Stop(RolloutState::Aborted)
        );
        let back = SurgeNext::Switch {
            phase: Phase::SurgeRollback,
            undo_new_servers: true,
        };
        for a in [
            SurgeAction::AttachNewServers,
            SurgeAction::WaitForSessionsToEndOnOld,
            SurgeAction::DetachOldServers,
            SurgeAction::SmokeCheckAndBake,
        ] {
            assert_eq!(f(a.clone()), back, "{a:?}");
        }
        assert_eq!(
            f(SurgeAction::TerminateOldServers),
            SurgeNext::Stop(RolloutState::Failed)
        );
        let unreachable = after_failure(
            Phase::Forward,
            &Action::Surge(SurgeAction::SmokeCheckAndBake),
            false,
            true,
            true,
        );
        assert_eq!(unreachable, SurgeNext::Stop(RolloutState::Halted));
        let manual = after_failure(
            Phase::Forward,
            &Action::Surge(SurgeAction::SmokeCheckAndBake),
            false,
            false,
            false,
        );
        assert_eq!(manual, SurgeNext::Stop(RolloutState::Failed));
    }
}
