//! Staging (issue 14): a release built and checked ahead of its switch, so that
//! a rollout's wave only switches `current`. A stage runs everything an apply
//! runs before its switch; the release is recorded as [`ReleaseOutcome::Staged`]
//! only once all of it succeeded, so a staging cut short (a failed hook, a killed
//! agent) is never reused: [`Deployer::recover`] removes it as any pending
//! release, and the next stage or apply builds it again.

use handover_common::names::{HookName, RepoUrl, Revision};
use handover_common::proto::Failure;
use handover_common::proto::deploy::{DeployStep, ReleaseOutcome, ReleaseRecord};

use super::{Deployer, Layout, Wanted};
use crate::deploy::state::Staged;

impl Deployer<'_> {
    /// Makes `rev` of `repo` ready as a release without touching `current` (see
    /// the module documentation); staging what is already staged answers at once.
    pub async fn stage(
        &self,
        repo: &RepoUrl,
        rev: &Revision,
        hook_names: &[HookName],
        rollout: Option<&str>,
    ) -> Result<ReleaseRecord, Failure> {
        let hooks = self.prepare_build(repo, hook_names)?;
        let mut want = Wanted::before_fetch(repo.as_str(), rev.as_str(), &hooks, rollout);
        if let Some(record) = self.staged_record(&want)? {
            return self.already_staged(record, &want).await;
        }
        let mirror = self.mirror(repo);
        let sha = self.fetch_and_resolve(&mirror, repo, rev).await?;
        want.sha = Some(&sha);
        if let Some(record) = self.staged_record(&want)? {
            return self.already_staged(record, &want).await;
        }
        let record = self.new_pending(repo, rev, &sha)?;
        let partial = self.layout.partial_dir(&record.name);
        let dir = self.layout.release_dir(&record.name);
        let built = self
            .build(&mirror, &record, &partial, &dir, hook_names)
            .await;
        let mut state = self.load_state()?;
        if let Err(f) = built {
            let _ = Layout::remove_dir(&partial);
            let _ = Layout::remove_dir(&dir);
            let on_disk = self.layout.on_disk().unwrap_or_default();
            let why = format!("staging failed: {}", f.message);
            super::record_outcome(
                &mut state,
                &record.name,
                ReleaseOutcome::Failed(why),
                &on_disk,
            );
            self.save_state(&state)?;
            return Err(f);
        }
        self.replace_older_stagings(&mut state, &record.name);
        if let Some(r) = state.record_mut(&record.name) {
            r.outcome = ReleaseOutcome::Staged;
        }
        state.staged.push(Staged {
            name: record.name.clone(),
            repo: record.repo.clone(),
            rev: record.rev.clone(),
            sha: record.sha.clone(),
            hooks,
            rollout: rollout.map(str::to_owned),
        });
        self.save_state(&state)?;
        self.step(
            DeployStep::Stage,
            format!("releases/{} ready, current not changed", record.name),
            Vec::new(),
        )
        .await;
        Ok(ReleaseRecord {
            outcome: ReleaseOutcome::Staged,
            ..record
        })
    }

    /// A staged release found again: it now belongs to the rollout asking (so
    /// its apply does not fetch again).
    async fn already_staged(
        &self,
        record: ReleaseRecord,
        want: &Wanted<'_>,
    ) -> Result<ReleaseRecord, Failure> {
        let mut state = self.load_state()?;
        if let Some(s) = state.staged.iter_mut().find(|s| s.name == record.name) {
            s.rollout = want.rollout.map(str::to_owned);
            s.rev = want.rev.to_string();
        }
        self.save_state(&state)?;
        self.step(
            DeployStep::Stage,
            format!("releases/{} already staged", record.name),
            Vec::new(),
        )
        .await;
        Ok(record)
    }

    /// Only one staging is kept: older ones (of another commit, or another
    /// rollout's) are removed with their directories, unless one is current or
    /// the previous release (it cannot be: it was never activated; checked anyway).
    fn replace_older_stagings(
        &self,
        state: &mut crate::deploy::state::DeployState,
        keep: &handover_common::names::ReleaseName,
    ) {
        let current = self.current().ok().flatten();
        let older: Vec<_> = state
            .staged
            .iter()
            .map(|s| s.name.clone())
            .filter(|n| n != keep)
            .collect();
        for name in older {
            state.unstage(&name);
            if Some(&name) == current.as_ref() || Some(&name) == state.previous.as_ref() {
                continue;
            }
            let _ = Layout::remove_dir(&self.layout.release_dir(&name));
            if let Some(r) = state.record_mut(&name) {
                r.outcome = ReleaseOutcome::Failed(format!(
                    "staged, never made current: replaced by staging {keep}"
                ));
            }
        }
    }

    /// The record of the staged release that fits `want`, if its directory is
    /// complete on disk; a staging whose directory is gone is forgotten (and
    /// built again by the caller).
    pub(super) fn staged_record(
        &self,
        want: &Wanted<'_>,
    ) -> Result<Option<ReleaseRecord>, Failure> {
        let mut state = self.load_state()?;
        let Some(staged) = state.staged_fitting(want).cloned() else {
            return Ok(None);
        };
        if self.layout.release_dir(&staged.name).is_dir() {
            return Ok(state.record(&staged.name).cloned());
        }
        tracing::warn!(release = %staged.name, "a staged release's directory is gone: building it again");
        state.unstage(&staged.name);
        if let Some(r) = state.record_mut(&staged.name) {
            r.outcome = ReleaseOutcome::Failed("staged, then its directory vanished".into());
        }
        self.save_state(&state)?;
        Ok(None)
    }

    /// Apply of a staged release: only the switch and what runs with it (reload,
    /// `after_activate`, `verify`), switching back on failure.
    pub(super) async fn switch_to_staged(
        &self,
        record: ReleaseRecord,
    ) -> Result<ReleaseRecord, Failure> {
        self.step(
            DeployStep::Stage,
            format!("using staged releases/{}", record.name),
            Vec::new(),
        )
        .await;
        let dir = self.layout.release_dir(&record.name);
        let result = self.activate_new(&record, &dir).await;
        if result.is_err() && self.current().ok().flatten().as_ref() != Some(&record.name) {
            let _ = Layout::remove_dir(&dir);
        }
        self.finish_apply(record, result).await
    }
}
