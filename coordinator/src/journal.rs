//! The journal: every rollout, its plan, and every step with start, end, outcome
//! and outputs, as records in the [`Store`] the config names: the embedded redb
//! under the coordinator's state_dir by default, or etcd (`[state]`).
//!
//! A step is written when it starts and again when it ends, so after a crash the
//! journal tells exactly which step was under way; steps are idempotent, so
//! `handover resume` simply runs that one again and carries on.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::CoordinatorConfig;
use crate::rollout::facts::Facts;
use crate::rollout::steps::Phase;
use crate::state::{DeployLock, Holder, LockHeld, Store};

/// The collection of rollout records, keyed by rollout id.
pub const ROLLOUTS: &str = "rollouts";
/// The collection of step records, keyed `ID/PHASE/NNNNNN`.
pub const STEPS: &str = "steps";
/// The collection of deployment inputs versions (crate::inputs), keyed by the
/// version number, zero-padded so key order is number order.
pub const INPUTS: &str = "inputs";
/// The collection holding the standby pool (crate::provider::standby), one
/// record: which app hosts are standby now, shared by every bastion.
pub const STANDBY: &str = "standby";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// RFC 3339 time for a journal timestamp.
pub fn format_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The shape of the records this version writes. Records written before the field
/// existed are format 1 (eight steps a wave, facts as `before/HOST` strings): they
/// read fine for `history` and `rollback`, but `resume` refuses them, since their
/// step numbers mean other steps now. A record of a newer format is refused with a
/// clear error rather than misread. Format 2 had no staging step before the
/// first wave (issue 14), so its in-place step numbers are one lower: `resume`
/// refuses it too.
pub const FORMAT: u32 = 3;

fn format_1() -> u32 {
    1
}

/// Where a rollout stands. One spelling everywhere: the kebab-case names below,
/// in `history`, `show`, JSON and messages alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutState {
    /// Under way (or its coordinator died: `resume` continues it).
    Running,
    /// Stopped because a host did not answer; nothing was undone, capacity kept.
    /// A plain `resume` continues from the step that failed.
    Halted,
    /// Every host is on the new release and attached.
    Succeeded,
    /// A wave failed health; upgraded hosts are being put back.
    RollingBack,
    /// The upgraded hosts are back on their previous release.
    RolledBack,
    /// Stopped on an error or by the operator; hosts were put back as they were.
    Aborted,
    /// Stopped and could not put everything back: see the error.
    Failed,
}

impl RolloutState {
    /// Whether a plain `resume` (no id) picks it up.
    pub fn is_unfinished(self) -> bool {
        matches!(
            self,
            RolloutState::Running | RolloutState::RollingBack | RolloutState::Halted
        )
    }

    /// Whether it stopped short and `resume ID` can carry it on.
    pub fn is_stopped(self) -> bool {
        matches!(self, RolloutState::Aborted | RolloutState::Failed)
    }

    /// Its one spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Halted => "halted",
            RolloutState::Succeeded => "succeeded",
            RolloutState::RollingBack => "rolling-back",
            RolloutState::RolledBack => "rolled-back",
            RolloutState::Aborted => "aborted",
            RolloutState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for RolloutState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutKind {
    /// A plan's revision, rolled out.
    Rollout,
    /// `handover rollback`: hosts of an earlier rollout back to their previous release.
    Rollback {
        /// The rollout being undone.
        of: String,
    },
}

/// One rollout as journaled.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutRecord {
    /// The record's format ([`FORMAT`]).
    #[serde(default = "format_1")]
    pub format: u32,
    /// Its id (`r-YYYYMMDD-HHMMSS-xxxx`).
    pub id: String,
    /// Rollout or rollback.
    pub kind: RolloutKind,
    /// Who ran it (coordinator certificate name and local user).
    pub owner: String,
    /// The plan file's path when it started.
    pub plan_path: PathBuf,
    /// The plan text, verbatim: `resume` uses this, not the file, which may have
    /// changed since.
    pub plan_text: String,
    /// Where it stands.
    pub state: RolloutState,
    /// The phase whose steps run now.
    pub phase: Phase,
    /// Created (ms since epoch).
    pub created_ms: u64,
    /// Last changed (ms since epoch).
    pub updated_ms: u64,
    /// Why it stopped, when it did not succeed.
    pub error: Option<String>,
    /// Facts later steps need: the release each host had before.
    pub facts: Facts,
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepOutcome {
    /// Done.
    Ok,
    /// Failed with this message.
    Failed(String),
}

/// One step as journaled.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    /// The record's format ([`FORMAT`]).
    #[serde(default = "format_1")]
    pub format: u32,
    /// Phase it belongs to (journaled by its key).
    pub phase: Phase,
    /// Position in the phase.
    pub index: usize,
    /// What it does, as printed.
    pub title: String,
    /// Started (ms since epoch).
    pub started_ms: u64,
    /// Ended, if it did.
    pub ended_ms: Option<u64>,
    /// How it ended, if it did.
    pub outcome: Option<StepOutcome>,
    /// Outputs (release ids, shas, session counts...).
    pub outputs: BTreeMap<String, String>,
}

/// A record's format, read before the rest so that a record from another version
/// is named, not misread.
#[derive(Deserialize)]
struct Format {
    #[serde(default = "format_1")]
    format: u32,
}

/// The journal, in the store the config names.
#[derive(Clone)]
pub struct Journal {
    store: Arc<dyn Store>,
}

fn step_key(id: &str, phase: Phase, index: usize) -> String {
    format!("{id}/{}/{index:06}", phase.key())
}

impl Journal {
    /// The journal in `state_dir` (redb, created on first write), for tests:
    /// commands open the journal where the config's `[state]` says
    /// ([`Journal::open`]), or a bastion on etcd reads and writes its own disk.
    #[cfg(test)]
    pub fn new(state_dir: &std::path::Path) -> Self {
        Journal {
            store: Arc::new(crate::state::redb::RedbStore::new(state_dir)),
        }
    }

    /// The journal where `config`'s `[state]` says (its state_dir by default).
    pub fn open(config: &CoordinatorConfig) -> anyhow::Result<Self> {
        Ok(Journal {
            store: crate::state::open(&config.state, &config.state_dir)?,
        })
    }

    /// The journal in `store`.
    pub fn with_store(store: Arc<dyn Store>) -> Self {
        Journal { store }
    }

    /// The store, for messages ("journal /var/lib/handover/journal.redb").
    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// Takes the deploy lock for `holder`'s rollout, or says who holds it.
    pub fn try_lock(&self, holder: &Holder) -> anyhow::Result<Result<DeployLock, LockHeld>> {
        self.store.try_lock(holder)
    }

    /// Waits until the deploy lock's holder is gone, then takes it (`--takeover`).
    pub async fn wait_lock(&self, holder: &Holder) -> anyhow::Result<DeployLock> {
        self.store.wait_lock(holder).await
    }

    /// Takes the deploy lock from its holder now (`--break-lease`).
    pub fn break_lock(&self, holder: &Holder) -> anyhow::Result<DeployLock> {
        self.store.break_lock(holder)
    }

    /// Record `key` of `collection`, raw.
    pub fn read(&self, collection: &str, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        self.store.get(collection, key).with_context(|| {
            format!(
                "cannot read {collection}/{key} from the {}",
                self.describe()
            )
        })
    }

    /// Decodes a record of this version's format, or says whose it is.
    pub(crate) fn decode<T: DeserializeOwned>(&self, key: &str, bytes: &[u8]) -> anyhow::Result<T> {
        let format = serde_json::from_slice::<Format>(bytes)
            .with_context(|| format!("journal record {key} in {} is damaged", self.describe()))?
            .format;
        if format > FORMAT {
            bail!(
                "journal record {key} in {} has format {format}, written by a newer handover version; this one reads formats up to {FORMAT}: use the version that wrote it, or move the journal away",
                self.describe()
            );
        }
        serde_json::from_slice(bytes)
            .with_context(|| format!("journal record {key} in {} cannot be read", self.describe()))
    }

    /// Writes record `key` of `collection`, as one transaction: when it fails (a
    /// full disk, etcd gone), the journal still holds everything up to the last
    /// step recorded, which is where `resume` carries on.
    pub fn write(&self, collection: &str, key: &str, bytes: &[u8]) -> anyhow::Result<()> {
        self.store.put(collection, key, bytes).with_context(|| {
            format!(
                "cannot write the {}: the rollout stopped here; fix what the error names (free space in state_dir, etcd's health), then run `handover resume`",
                self.describe()
            )
        })
    }

    /// The records of `collection` whose key starts with `prefix`, raw, in key
    /// order (`journal export`).
    pub fn records(
        &self,
        collection: &str,
        prefix: &str,
    ) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        self.store.scan(collection, prefix)
    }

    /// Saves (creates or replaces) a rollout record.
    pub fn save_rollout(&self, record: &RolloutRecord) -> anyhow::Result<()> {
        let mut record = record.clone();
        record.updated_ms = now_ms();
        self.write(ROLLOUTS, &record.id, &serde_json::to_vec(&record)?)
            .context("writing the journal")
    }

    /// A rollout by id.
    pub fn rollout(&self, id: &str) -> anyhow::Result<Option<RolloutRecord>> {
        match self.store.get(ROLLOUTS, id)? {
            Some(v) => Ok(Some(self.decode(id, &v)?)),
            None => Ok(None),
        }
    }

    /// Every rollout, oldest first.
    pub fn rollouts(&self) -> anyhow::Result<Vec<RolloutRecord>> {
        let mut out = Vec::new();
        for (k, v) in self.store.scan(ROLLOUTS, "")? {
            out.push(self.decode::<RolloutRecord>(&k, &v)?);
        }
        out.sort_by_key(|r| r.created_ms);
        Ok(out)
    }

    /// The rollout `id`, or the newest unfinished one when `id` is None.
    pub fn find(&self, id: Option<&str>) -> anyhow::Result<RolloutRecord> {
        match id {
            Some(id) => self.rollout(id)?.ok_or_else(|| {
                anyhow::anyhow!("no rollout {id:?} in the journal: `handover history` lists them")
            }),
            None => {
                let unfinished: Vec<_> = self
                    .rollouts()?
                    .into_iter()
                    .filter(|r| r.state.is_unfinished())
                    .collect();
                match unfinished.as_slice() {
                    [] => bail!("{}", self.nothing_to_resume()?),
                    [one] => Ok(one.clone()),
                    many => bail!(
                        "several unfinished rollouts ({}): name the one to resume",
                        many.iter()
                            .map(|r| r.id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }
            }
        }
    }

    /// Why a plain `resume` has nothing to pick up, naming the stopped rollouts
    /// (newest first) that `resume ID` could carry on.
    fn nothing_to_resume(&self) -> anyhow::Result<String> {
        let stopped: Vec<String> = self
            .rollouts()?
            .into_iter()
            .rev()
            .filter(|r| r.state.is_stopped())
            .take(5)
            .map(|r| match &r.error {
                Some(e) => format!("{} ({}: {e})", r.id, r.state),
                None => format!("{} ({})", r.id, r.state),
            })
            .collect();
        Ok(if stopped.is_empty() {
            "no unfinished rollout in the journal: nothing to resume".into()
        } else {
            format!(
                "no rollout is under way; stopped rollouts, newest first (`handover resume ID` carries one on): {}",
                stopped.join("; ")
            )
        })
    }

    /// Records a step as started (or restarted); returns the record, for
    /// [`Journal::step_finished`].
    pub fn step_started(
        &self,
        id: &str,
        phase: Phase,
        index: usize,
        title: &str,
    ) -> anyhow::Result<StepRecord> {
        let record = StepRecord {
            format: FORMAT,
            phase,
            index,
            title: title.to_owned(),
            started_ms: now_ms(),
            ended_ms: None,
            outcome: None,
            outputs: BTreeMap::new(),
        };
        self.write(
            STEPS,
            &step_key(id, phase, index),
            &serde_json::to_vec(&record)?,
        )?;
        Ok(record)
    }

    /// Records how the step `started` (as [`Journal::step_started`] returned it)
    /// ended. Unlike [`Journal::step_ended`] it reads nothing back: every read
    /// opens the journal again (~12 ms each in a dev build), and a rollout ends
    /// nine steps per wave (issue 14).
    pub fn step_finished(
        &self,
        id: &str,
        mut started: StepRecord,
        outcome: StepOutcome,
        outputs: BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        started.ended_ms = Some(now_ms());
        started.outcome = Some(outcome);
        started.outputs = outputs;
        let key = step_key(id, started.phase, started.index);
        self.write(STEPS, &key, &serde_json::to_vec(&started)?)
    }

    /// Records how a step ended.
    pub fn step_ended(
        &self,
        id: &str,
        phase: Phase,
        index: usize,
        outcome: StepOutcome,
        outputs: BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        let key = step_key(id, phase, index);
        let mut record = self
            .steps(id)?
            .into_iter()
            .find(|s| s.phase == phase && s.index == index)
            .ok_or_else(|| anyhow::anyhow!("journal: step {key} ended but never started"))?;
        record.ended_ms = Some(now_ms());
        record.outcome = Some(outcome);
        record.outputs = outputs;
        self.write(STEPS, &key, &serde_json::to_vec(&record)?)
    }

    /// Marks steps as undone (their work was reversed by a repair), keeping their
    /// history: `resume` runs them again.
    pub fn mark_undone(&self, id: &str, phase: Phase, indices: &[usize]) -> anyhow::Result<()> {
        for step in self.steps(id)? {
            if step.phase == phase
                && indices.contains(&step.index)
                && step.outcome == Some(StepOutcome::Ok)
            {
                let mut step = step;
                step.outcome = Some(StepOutcome::Failed(
                    "undone: the wave was put back in service when the rollout stopped".into(),
                ));
                self.write(
                    STEPS,
                    &step_key(id, phase, step.index),
                    &serde_json::to_vec(&step)?,
                )?;
            }
        }
        Ok(())
    }

    /// Every step of a rollout, in order.
    pub fn steps(&self, id: &str) -> anyhow::Result<Vec<StepRecord>> {
        let mut out = Vec::new();
        for (k, v) in self.store.scan(STEPS, &format!("{id}/"))? {
            out.push(self.decode::<StepRecord>(&k, &v)?);
        }
        Ok(out)
    }

    /// Whether step `index` of `phase` ended well.
    pub fn step_done(&self, steps: &[StepRecord], phase: Phase, index: usize) -> bool {
        steps
            .iter()
            .any(|s| s.phase == phase && s.index == index && s.outcome == Some(StepOutcome::Ok))
    }
}

/// Deployment inputs versions, stored as opaque records: `crate::inputs` decides
/// what they hold, the journal only numbers them and keeps appends atomic.
impl Journal {
    /// Every inputs version record, oldest first, as (number, bytes).
    pub(crate) fn input_records(&self) -> anyhow::Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        for (key, bytes) in self.store.scan(INPUTS, "")? {
            let number = key.parse::<u64>().with_context(|| {
                format!("inputs record {key:?} in {} is damaged", self.describe())
            })?;
            out.push((number, bytes));
        }
        Ok(out)
    }

    /// Appends the next inputs version, so two processes (or two bastions) can
    /// never write the same number: `next` sees the number the new record would
    /// get and every record so far, and returns its answer plus the record's bytes
    /// (or None to write nothing). The record is created only if its number is
    /// still free; if another process took it meanwhile, `next` is asked again
    /// with the records as they are now.
    pub(crate) fn append_input_record<T>(
        &self,
        mut next: impl FnMut(u64, &[(u64, Vec<u8>)]) -> anyhow::Result<(T, Option<Vec<u8>>)>,
    ) -> anyhow::Result<T> {
        for _ in 0..8 {
            let records = self.input_records()?;
            let number = records.last().map_or(1, |(n, _)| n + 1);
            let (answer, bytes) = next(number, &records)?;
            let Some(bytes) = bytes else {
                return Ok(answer);
            };
            let written = self
                .store
                .create(INPUTS, &format!("{number:012}"), &bytes)
                .with_context(|| {
                    format!(
                        "cannot write inputs version {number} to {}",
                        self.describe()
                    )
                })?;
            if written {
                return Ok(answer);
            }
        }
        bail!(
            "inputs version numbers in {} kept being taken by other writers: try again",
            self.describe()
        )
    }
}

/// A new rollout id: time-ordered and unique enough for one bastion.
pub fn new_rollout_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let now = SystemTime::now();
    let stamp = humantime::format_rfc3339_seconds(now).to_string();
    let compact: String = stamp.chars().filter(|c| c.is_ascii_digit()).collect();
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms());
    h.write_u32(std::process::id());
    format!(
        "r-{}-{}-{:04x}",
        &compact[..8.min(compact.len())],
        &compact[8.min(compact.len())..],
        h.finish() & 0xffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> RolloutRecord {
        RolloutRecord {
            format: FORMAT,
            id: id.into(),
            kind: RolloutKind::Rollout,
            owner: "ops".into(),
            plan_path: "plan.toml".into(),
            plan_text: "strategy = \"in-place\"".into(),
            state: RolloutState::Running,
            phase: Phase::Forward,
            created_ms: now_ms(),
            updated_ms: 0,
            error: None,
            facts: Facts::default(),
        }
    }

    #[test]
    fn steps_survive_reopening_and_tell_what_was_under_way() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::new(dir.path());
        journal.save_rollout(&record("r-1")).expect("save");
        journal
            .step_started("r-1", Phase::Forward, 0, "drain web-1")
            .expect("start");
        journal
            .step_ended("r-1", Phase::Forward, 0, StepOutcome::Ok, BTreeMap::new())
            .expect("end");
        journal
            .step_started("r-1", Phase::Forward, 1, "wait web-1")
            .expect("start");

        let journal = Journal::new(dir.path());
        let steps = journal.steps("r-1").expect("steps");
        assert_eq!(steps.len(), 2);
        assert!(journal.step_done(&steps, Phase::Forward, 0));
        assert!(!journal.step_done(&steps, Phase::Forward, 1));
        assert_eq!(journal.find(None).expect("unfinished").id, "r-1");
        // Another rollout's steps are not mixed in.
        journal.save_rollout(&record("r-10")).expect("save");
        journal
            .step_started("r-10", Phase::Forward, 0, "x")
            .expect("start");
        assert_eq!(journal.steps("r-1").expect("steps").len(), 2);
    }

    #[test]
    fn every_state_has_one_spelling() {
        use RolloutState::*;
        for state in [
            Running,
            Halted,
            Succeeded,
            RollingBack,
            RolledBack,
            Aborted,
            Failed,
        ] {
            let json = serde_json::to_string(&state).expect("json");
            assert_eq!(json, format!("\"{state}\""));
        }
        assert_eq!(RolledBack.to_string(), "rolled-back");
    }

    #[test]
    fn a_record_of_another_format_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::new(dir.path());
        let mut value = serde_json::to_value(record("r-9")).expect("json");
        value["format"] = 99.into();
        journal
            .write(ROLLOUTS, "r-9", &serde_json::to_vec(&value).expect("bytes"))
            .expect("write");
        let err = format!("{:#}", journal.rollouts().expect_err("refused"));
        assert!(err.contains("r-9") && err.contains("format 99"), "{err}");
        // A record written before formats existed reads as format 1 (and `resume`
        // refuses it: see the engine).
        value.as_object_mut().expect("object").remove("format");
        journal
            .write(ROLLOUTS, "r-9", &serde_json::to_vec(&value).expect("bytes"))
            .expect("write");
        assert_eq!(journal.rollouts().expect("read")[0].format, 1);
    }

    #[test]
    fn a_plain_resume_with_nothing_under_way_lists_the_stopped_rollouts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::new(dir.path());
        let mut done = record("r-1");
        done.state = RolloutState::Succeeded;
        journal.save_rollout(&done).expect("save");
        assert!(
            format!("{:#}", journal.find(None).expect_err("none")).contains("nothing to resume")
        );
        let mut stopped = record("r-2");
        stopped.state = RolloutState::Aborted;
        stopped.error = Some("interrupted by the operator".into());
        journal.save_rollout(&stopped).expect("save");
        let err = format!("{:#}", journal.find(None).expect_err("none under way"));
        assert!(
            err.contains("r-2 (aborted: interrupted by the operator)"),
            "{err}"
        );
        assert!(!err.contains("r-1"), "{err}");
        let mut halted = record("r-3");
        halted.state = RolloutState::Halted;
        journal.save_rollout(&halted).expect("save");
        assert_eq!(journal.find(None).expect("halted is picked").id, "r-3");
    }

    #[test]
    fn ids_are_distinct_and_safe() {
        let a = new_rollout_id();
        let b = new_rollout_id();
        assert_ne!(a, b);
        assert!(a.starts_with("r-") && a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }
}
