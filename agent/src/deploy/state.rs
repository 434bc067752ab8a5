//! The agent's record of releases, in `state_dir/deploy/releases.json`: which
//! revision each release came from, how its apply ended (or that it failed a
//! check later), and which release was current before the last switch (what
//! `activate --previous` goes back to, unless that one failed).
//!
//! Written whole to a temporary file and renamed over the old one, so a crash
//! leaves either the old record or the new one.

use std::io::Write;
use std::path::{Path, PathBuf};

use handover_common::names::ReleaseName;
use handover_common::proto::deploy::{ReleaseOutcome, ReleaseRecord};
use serde::{Deserialize, Serialize};

/// Records of releases no longer on disk are kept up to this many, for history.
const MAX_RECORDS: usize = 100;
/// Longest reason kept for a release that failed a check.
const MAX_REASON: usize = 500;

/// Everything the agent remembers about releases.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct DeployState {
    /// Every release built, oldest first.
    pub releases: Vec<ReleaseRecord>,
    /// The release that was current before the last switch.
    pub previous: Option<ReleaseName>,
    /// Releases built by a `stage` and not made current yet (see [`Staged`]).
    #[serde(default)]
    pub staged: Vec<Staged>,
}

/// A release a `stage` built and checked: the next apply of its commit with the
/// same hooks switches to it instead of building again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    /// Its directory under `releases/`.
    pub name: ReleaseName,
    /// The repository, as asked for.
    pub repo: String,
    /// The revision asked for (branch, tag or commit id).
    pub rev: String,
    /// The commit it resolved to.
    pub sha: String,
    /// The agent hooks that ran in it, in order.
    pub hooks: Vec<String>,
    /// The rollout that staged it, if any.
    pub rollout: Option<String>,
}

/// What an apply (or another stage) asks for, to find a staged release that fits.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    /// The repository.
    pub repo: &'a str,
    /// The revision asked for.
    pub rev: &'a str,
    /// The commit it resolves to now, once fetched; `None` before fetching.
    pub sha: Option<&'a str>,
    /// The agent hooks to run.
    pub hooks: &'a [String],
    /// The rollout asking, if any.
    pub rollout: Option<&'a str>,
}

impl<'a> Wanted<'a> {
    /// What a request asks for before anything is fetched (no commit known yet).
    pub fn before_fetch(
        repo: &'a str,
        rev: &'a str,
        hooks: &'a [String],
        rollout: Option<&'a str>,
    ) -> Self {
        Wanted {
            repo,
            rev,
            sha: None,
            hooks,
            rollout,
        }
    }
}

impl Staged {
    /// Whether this staged release is what `want` asks for. Same repository and
    /// hooks, and the same commit: known once fetched; before fetching, only the
    /// rollout that staged it may take it on its word (the same revision, which
    /// it resolved when it staged: a branch that moved since is not fetched
    /// again in the middle of a rollout, so every host gets the same commit).
    pub fn fits(&self, want: &Wanted<'_>) -> bool {
        if self.repo != want.repo || self.hooks != want.hooks {
            return false;
        }
        match want.sha {
            Some(sha) => self.sha == sha,
            None => {
                want.rollout.is_some()
                    && self.rollout.as_deref() == want.rollout
                    && self.rev == want.rev
            }
        }
    }
}

impl DeployState {
    /// The record of `name`.
    pub fn record(&self, name: &ReleaseName) -> Option<&ReleaseRecord> {
        self.releases.iter().rev().find(|r| &r.name == name)
    }

    /// The record of `name`, to change it.
    pub fn record_mut(&mut self, name: &ReleaseName) -> Option<&mut ReleaseRecord> {
        self.releases.iter_mut().rev().find(|r| &r.name == name)
    }

    /// Records that `name` failed a check after it was made current. Returns the
    /// updated record, or `None` when no release of that name was ever recorded.
    pub fn mark_unhealthy(&mut self, name: &ReleaseName, reason: &str) -> Option<&ReleaseRecord> {
        let record = self.record_mut(name)?;
        let mut reason = reason.trim().to_string();
        if reason.len() > MAX_REASON {
            let cut = (0..=MAX_REASON)
                .rev()
                .find(|i| reason.is_char_boundary(*i))
                .unwrap_or(0);
            reason.truncate(cut);
            reason.push('…');
        }
        record.outcome = ReleaseOutcome::Unhealthy(reason);
        Some(record)
    }

    /// What `activate --previous` switches to: the release current before the last
    /// switch, unless it failed a check (or is gone); then the newest release in
    /// `on_disk` (oldest first) that never failed. Never `current`.
    pub fn choose_previous(
        &self,
        current: Option<&ReleaseName>,
        on_disk: &[ReleaseName],
    ) -> PreviousChoice {
        let mut choice = PreviousChoice::default();
        let candidates = self.previous.iter().chain(on_disk.iter().rev());
        for name in candidates {
            if Some(name) == current
                || !on_disk.contains(name)
                || choice.skipped.iter().any(|(n, _)| n == name)
            {
                continue;
            }
            match self.record(name).map(|r| &r.outcome) {
                Some(outcome) if outcome.is_good() => {
                    choice.release = Some(name.clone());
                    return choice;
                }
                Some(outcome) => choice.skipped.push((
                    name.clone(),
                    outcome.failure().unwrap_or("failed").to_string(),
                )),
                None => {}
            }
        }
        choice
    }

    /// The staged release that fits `want`, if its record still says it is
    /// staged (a record that says otherwise was used, or failed, since).
    pub fn staged_fitting(&self, want: &Wanted<'_>) -> Option<&Staged> {
        self.staged.iter().rev().find(|s| {
            s.fits(want)
                && self
                    .record(&s.name)
                    .is_some_and(|r| r.outcome == ReleaseOutcome::Staged)
        })
    }

    /// Whether `name` is a staged release (pruning keeps it).
    pub fn is_staged(&self, name: &ReleaseName) -> bool {
        self.staged.iter().any(|s| &s.name == name)
    }

    /// Forgets `name` as staged (it was made current, or failed, or is gone).
    pub fn unstage(&mut self, name: &ReleaseName) {
        self.staged.retain(|s| &s.name != name);
    }

    /// Drops the oldest records beyond [`MAX_RECORDS`] whose release is gone.
    pub fn trim(&mut self, on_disk: &[ReleaseName]) {
        while self.releases.len() > MAX_RECORDS {
            let Some(i) = self
                .releases
                .iter()
                .position(|r| !on_disk.contains(&r.name))
            else {
                break;
            };
            self.releases.remove(i);
        }
    }
}

/// The answer of [`DeployState::choose_previous`].
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PreviousChoice {
    /// The release to switch to, if any is left.
    pub release: Option<ReleaseName>,
    /// Newer candidates passed over, with why (they failed a check).
    pub skipped: Vec<(ReleaseName, String)>,
}

impl PreviousChoice {
    /// "skipped X (why), Y (why)", or empty.
    pub fn describe_skipped(&self) -> String {
        self.skipped
            .iter()
            .map(|(name, why)| format!("{name} ({why})"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Where [`DeployState`] is kept.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// `deploy_state_dir/releases.json`.
    pub fn new(deploy_state_dir: &Path) -> Self {
        StateFile {
            path: deploy_state_dir.join("releases.json"),
        }
    }

    /// Reads the state; a missing file is an empty state, a damaged one an error
    /// (silently starting over would forget which release is the previous one).
    pub fn load(&self) -> anyhow::Result<DeployState> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(DeployState::default());
            }
            Err(e) => {
                return Err(anyhow::anyhow!("cannot read {}: {e}", self.path.display()));
            }
        };
        serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{} is damaged ({e}): fix it or move it away (the releases on disk stay)",
                self.path.display()
            )
        })
    }

    /// Writes the state durably (temporary file, fsync, rename).
    pub fn save(&self, state: &DeployState) -> anyhow::Result<()> {
        let dir = self
            .path
            .parent()
            .ok_or_else(|| anyhow::anyhow!("{} has no parent", self.path.display()))?;
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(state)?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            super::releases::sync_dir(dir)
        };
        write().map_err(|e| anyhow::anyhow!("cannot write {}: {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ReleaseName {
        ReleaseName::new(s).expect("valid release name")
    }

    fn record(n: &str, outcome: ReleaseOutcome) -> ReleaseRecord {
        ReleaseRecord {
            name: name(n),
            repo: "file:///srv/app.git".into(),
            rev: "v".into(),
            sha: "1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d".into(),
            created: "2026-12-03T00:00:00Z".into(),
            outcome,
        }
    }

    const V1: &str = "20261201T000000Z-aaaaaaa";
    const V2: &str = "20261202T000000Z-bbbbbbb";
    const V3: &str = "20261203T000000Z-ccccccc";

    /// v1 → v2 → v3, v3 failed the health gate and the rollout went back to v2:
    /// `previous` is v3, the one `--previous` must not pick.
    fn after_automatic_rollback() -> DeployState {
        let mut state = DeployState {
            releases: vec![
                record(V1, ReleaseOutcome::Activated),
                record(V2, ReleaseOutcome::Activated),
                record(V3, ReleaseOutcome::Activated),
            ],
            previous: Some(name(V3)),
            staged: Vec::new(),
        };
        state.mark_unhealthy(&name(V3), "GET /health answered 500");
        state
    }

    #[test]
    fn previous_skips_a_release_that_failed_the_health_gate_and_says_so() {
        let state = after_automatic_rollback();
        let on_disk = [name(V1), name(V2), name(V3)];
        let choice = state.choose_previous(Some(&name(V2)), &on_disk);
        assert_eq!(choice.release, Some(name(V1)));
        assert_eq!(
            choice.skipped,
            vec![(name(V3), "GET /health answered 500".to_string())]
        );
        assert!(choice.describe_skipped().contains(V3));
    }

    #[test]
    fn previous_is_the_release_before_the_last_switch_when_it_is_good() {
        let state = DeployState {
            releases: vec![
                record(V1, ReleaseOutcome::Activated),
                record(V2, ReleaseOutcome::Activated),
                record(V3, ReleaseOutcome::Activated),
            ],
            // The operator went back from v3 to v1: v3 is previous, not v2.
            previous: Some(name(V3)),
            staged: Vec::new(),
        };
        let on_disk = [name(V1), name(V2), name(V3)];
        let choice = state.choose_previous(Some(&name(V1)), &on_disk);
        assert_eq!(choice.release, Some(name(V3)));
        assert!(choice.skipped.is_empty());
    }

    #[test]
    fn no_previous_when_every_other_release_failed_or_is_gone() {
        let mut state = after_automatic_rollback();
        state.releases.push(record(
            "20261204T000000Z-ddddddd",
            ReleaseOutcome::Failed("verify failed".into()),
        ));
        // v1 was pruned; v4 failed its apply (its directory is gone too).
        let on_disk = [name(V2), name(V3)];
        let choice = state.choose_previous(Some(&name(V2)), &on_disk);
        assert_eq!(choice.release, None);
        assert_eq!(choice.skipped.len(), 1, "{choice:?}");
    }

    #[test]
    fn a_long_reason_is_shortened_on_a_character_boundary() {
        let mut state = after_automatic_rollback();
        let long = "é".repeat(400);
        let record = state.mark_unhealthy(&name(V1), &long).expect("recorded");
        let ReleaseOutcome::Unhealthy(kept) = &record.outcome else {
            panic!("not unhealthy: {record:?}");
        };
        assert!(kept.len() <= MAX_REASON + '…'.len_utf8(), "{}", kept.len());
        assert!(
            state
                .mark_unhealthy(&name("20990101T000000Z-fffffff"), "x")
                .is_none()
        );
    }

    fn staged(rollout: Option<&str>) -> Staged {
        Staged {
            name: name(V3),
            repo: "file:///srv/app.git".into(),
            rev: "main".into(),
            sha: "c".repeat(40),
            hooks: vec!["assets".into()],
            rollout: rollout.map(str::to_owned),
        }
    }

    fn want<'a>(sha: Option<&'a str>, hooks: &'a [String], rollout: Option<&'a str>) -> Wanted<'a> {
        Wanted {
            repo: "file:///srv/app.git",
            rev: "main",
            sha,
            hooks,
            rollout,
        }
    }

    /// Issue 14: a staged release is reused only for the same commit and hooks;
    /// before fetching, only by the rollout that staged it.
    #[test]
    fn a_staged_release_fits_the_same_commit_and_hooks_and_before_a_fetch_only_its_rollout() {
        let hooks = vec!["assets".to_string()];
        let sha = "c".repeat(40);
        let other = "d".repeat(40);
        let s = staged(Some("r-1"));
        assert!(s.fits(&want(None, &hooks, Some("r-1"))));
        assert!(
            !s.fits(&want(None, &hooks, Some("r-2"))),
            "another rollout fetches first"
        );
        assert!(
            !s.fits(&want(None, &hooks, None)),
            "a plain apply fetches first"
        );
        assert!(s.fits(&want(Some(&sha), &hooks, None)));
        assert!(
            !s.fits(&want(Some(&other), &hooks, Some("r-1"))),
            "the branch moved"
        );
        assert!(!s.fits(&want(Some(&sha), &[], Some("r-1"))), "other hooks");
        assert!(!staged(None).fits(&want(None, &hooks, None)));
    }

    /// A staged release whose record says it was used (or failed) since is not
    /// reused: only a complete, unused staging is.
    #[test]
    fn only_a_release_still_recorded_as_staged_is_reused() {
        let hooks = vec!["assets".to_string()];
        let mut state = DeployState {
            releases: vec![record(V3, ReleaseOutcome::Staged)],
            previous: None,
            staged: vec![staged(Some("r-1"))],
        };
        let w = want(None, &hooks, Some("r-1"));
        assert_eq!(state.staged_fitting(&w).map(|s| &s.name), Some(&name(V3)));
        assert!(state.is_staged(&name(V3)));
        state.releases[0].outcome = ReleaseOutcome::Interrupted;
        assert!(state.staged_fitting(&w).is_none());
        state.unstage(&name(V3));
        assert!(!state.is_staged(&name(V3)));
    }
}
