//! Apply a revision and switch between releases (runbook steps 6 and 7):
//! fetch → resolve → export → link shared → hooks → before_activate → switch →
//! reload → after_activate → verify, and switch back when anything after the
//! switch fails.
//!
//! Crash safety: the release's record is written as `Pending` before its directory
//! appears under its final name, and [`recover`] (run at agent start) removes any
//! pending release that `current` does not point at, plus `.partial-*` leftovers.

use std::ffi::OsStr;
use std::path::Path;
use std::time::SystemTime;

use handover_common::names::{HookName, ReleaseName, RepoUrl, Revision};
use handover_common::proto::deploy::{
    ActivateTarget, DeployProgress, DeployStep, ReleaseOutcome, ReleaseRecord, ResolvedRevision,
};
use handover_common::proto::{Failure, FailureKind, Progress};

use super::command::{RunAs, RunningGroups, Shell};
use super::config::DeployConfig;
use super::git::{GitError, Mirror};
use super::hooks;
use super::releases::{Layout, new_release_name};
use super::state::{DeployState, StateFile, Wanted};
use crate::Agent;
use crate::caller::Reporter;

mod stage;

fn internal(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::new(FailureKind::Internal, format!("{what}: {e}"))
}

fn git_failure(e: GitError) -> Failure {
    let kind = match e {
        GitError::UnknownRevision { .. } => FailureKind::BadRequest,
        _ => FailureKind::Failed,
    };
    Failure::new(kind, e.to_string())
}

/// One deploy action on one host, with what it needs at hand.
pub struct Deployer<'a> {
    agent: &'a Agent,
    config: &'a DeployConfig,
    layout: Layout,
    state: StateFile,
    reporter: Option<&'a Reporter>,
}

impl<'a> Deployer<'a> {
    /// A deployer for `agent`'s `[deploy]`; progress goes to `reporter`.
    pub fn new(agent: &'a Agent, config: &'a DeployConfig, reporter: Option<&'a Reporter>) -> Self {
        Deployer {
            agent,
            config,
            layout: Layout::new(&config.root),
            state: StateFile::new(&deploy_state_dir(agent)),
            reporter,
        }
    }

    async fn step(&self, step: DeployStep, detail: impl Into<String>, output: Vec<String>) {
        let detail = detail.into();
        tracing::info!(step = %step, %detail, "deploy step finished");
        if let Some(r) = self.reporter {
            let _ = r
                .progress(Progress::Deploy(DeployProgress::StepFinished {
                    step,
                    detail,
                    output,
                }))
                .await;
        }
    }

    fn load_state(&self) -> Result<DeployState, Failure> {
        self.state
            .load()
            .map_err(|e| Failure::new(FailureKind::Internal, format!("{e:#}")))
    }

    fn save_state(&self, state: &DeployState) -> Result<(), Failure> {
        self.state
            .save(state)
            .map_err(|e| Failure::new(FailureKind::Internal, format!("{e:#}")))
    }

    fn current(&self) -> Result<Option<ReleaseName>, Failure> {
        self.layout
            .current()
            .map_err(|e| internal("cannot read current", e))
    }

    /// Refuses a repository outside `allowed_repos` and hook names outside
    /// `[hooks]`, before anything runs or is written.
    pub fn check_apply(&self, repo: &RepoUrl, hooks: &[HookName]) -> Result<(), Failure> {
        if !self.config.allows(repo) {
            return Err(Failure::new(
                FailureKind::Refused,
                format!(
                    "repository {repo} is not in this agent's [deploy] allowed_repos: add it there (exact URL) or deploy one of: {}",
                    self.config
                        .allowed_repos
                        .iter()
                        .map(|r| r.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        for hook in hooks {
            check_hook_configured(self.agent, hook)?;
        }
        Ok(())
    }

    /// Refuses to switch `current` under live traffic: while the health-check file
    /// is present HAProxy keeps sending this host requests, and a switch would serve
    /// a release no check has passed. `force` (a rollout's engine, which has taken
    /// the host out itself, or an operator who means it) skips the check. A host
    /// without `[health]` or without a current release is not serving.
    pub fn check_not_serving(&self, force: bool) -> Result<(), Failure> {
        if force {
            return Ok(());
        }
        let Some(health) = &self.agent.config.health else {
            return Ok(());
        };
        let file =
            crate::drain::health::HealthFile::new(&health.file, &self.agent.config.state_dir);
        let drained = file
            .is_drained()
            .map_err(|e| internal("cannot read the health-check file", e))?;
        let Some(current) = self.current()? else {
            return Ok(());
        };
        if drained {
            return Ok(());
        }
        let name = &self.agent.config.name;
        Err(Failure::new(
            FailureKind::Refused,
            format!(
                "{name} is in service: its health-check file {} is present, so the load balancers send it traffic, and switching from {current} now would serve a release no check has passed. Take it out first (`handover drain {name} --wait`, or `handover-agent drain --wait` on the host), switch, then undrain it; or pass --force to switch it while it serves",
                health.file.display()
            ),
        ))
    }

    /// Which commit `rev` of `repo` names here, after the same checks and fetch an
    /// apply starts with; changes nothing but the cached mirror.
    pub async fn resolve(
        &self,
        repo: &RepoUrl,
        rev: &Revision,
    ) -> Result<ResolvedRevision, Failure> {
        self.check_apply(repo, &[])?;
        let mirror = Mirror::new(
            &deploy_state_dir(self.agent).join("mirrors"),
            repo,
            self.config.git_timeout,
        );
        mirror.fetch().await.map_err(git_failure)?;
        let sha = mirror.resolve(rev).await.map_err(git_failure)?;
        Ok(ResolvedRevision {
            repo: repo.clone(),
            rev: rev.clone(),
            sha,
        })
    }

    /// Records that `name` failed a check after it was made current (the
    /// coordinator's health gate); `current` is not changed.
    pub fn mark_unhealthy(
        &self,
        name: &ReleaseName,
        reason: &str,
    ) -> Result<ReleaseRecord, Failure> {
        let mut state = self.load_state()?;
        let record = state.mark_unhealthy(name, reason).cloned().ok_or_else(|| {
            Failure::new(
                FailureKind::BadRequest,
                format!("this host has no record of release {name}: pick one listed by `releases`"),
            )
        })?;
        self.save_state(&state)?;
        tracing::warn!(release = %name, %reason, "release marked unhealthy: activate --previous will skip it");
        Ok(record)
    }

    /// Applies `rev` of `repo`: see the module documentation for the steps. A
    /// release staged for the same commit and hooks is switched to instead of
    /// built again (see [`DeployRequest::Stage`]); `rollout` is the caller's.
    ///
    /// [`DeployRequest::Stage`]: handover_common::proto::deploy::DeployRequest::Stage
    pub async fn apply(
        &self,
        repo: &RepoUrl,
        rev: &Revision,
        hook_names: &[HookName],
        rollout: Option<&str>,
    ) -> Result<ReleaseRecord, Failure> {
        let hooks = self.prepare_build(repo, hook_names)?;
        let mut want = Wanted::before_fetch(repo.as_str(), rev.as_str(), &hooks, rollout);
        if let Some(record) = self.staged_record(&want)? {
            return self.switch_to_staged(record).await;
        }
        let mirror = self.mirror(repo);
        let sha = self.fetch_and_resolve(&mirror, repo, rev).await?;
        want.sha = Some(&sha);
        if let Some(record) = self.staged_record(&want)? {
            return self.switch_to_staged(record).await;
        }
        let record = self.new_pending(repo, rev, &sha)?;
        let result = self.build_and_activate(&mirror, &record, hook_names).await;
        self.finish_apply(record, result).await
    }

    /// The cached mirror of `repo`.
    fn mirror(&self, repo: &RepoUrl) -> Mirror {
        Mirror::new(
            &deploy_state_dir(self.agent).join("mirrors"),
            repo,
            self.config.git_timeout,
        )
    }

    /// Brings the mirror up to date and says which commit `rev` is.
    async fn fetch_and_resolve(
        &self,
        mirror: &Mirror,
        repo: &RepoUrl,
        rev: &Revision,
    ) -> Result<String, Failure> {
        let fetched = mirror.fetch().await.map_err(git_failure)?;
        self.step(DeployStep::Fetch, repo.to_string(), fetched.tail)
            .await;
        let sha = mirror.resolve(rev).await.map_err(git_failure)?;
        self.step(DeployStep::Resolve, format!("{rev} = {sha}"), Vec::new())
            .await;
        Ok(sha)
    }

    /// Names a new release of `sha` and records it as pending before its
    /// directory exists (so a crash leaves nothing [`Self::recover`] misses).
    fn new_pending(
        &self,
        repo: &RepoUrl,
        rev: &Revision,
        sha: &str,
    ) -> Result<ReleaseRecord, Failure> {
        let name = new_release_name(SystemTime::now(), sha, |n| {
            self.layout.release_dir(n).exists() || self.layout.partial_dir(n).exists()
        })
        .map_err(|e| internal("cannot name the release", e))?;
        let record = ReleaseRecord {
            name,
            repo: repo.to_string(),
            rev: rev.to_string(),
            sha: sha.to_string(),
            created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            outcome: ReleaseOutcome::Pending,
        };
        let mut state = self.load_state()?;
        state.releases.push(record.clone());
        self.save_state(&state)?;
        Ok(record)
    }

    /// Records how an apply of `record` ended (a staged release is no longer
    /// staged either way) and prunes old releases after a success.
    async fn finish_apply(
        &self,
        record: ReleaseRecord,
        result: Result<Option<ReleaseName>, Failure>,
    ) -> Result<ReleaseRecord, Failure> {
        let mut state = self.load_state()?;
        let outcome = match &result {
            Ok(previous) => {
                // An apply redone after a crash that had already switched finds
                // its own release current: the previous one stays as it was.
                if previous.as_ref() != Some(&record.name) {
                    state.previous = previous.clone();
                }
                ReleaseOutcome::Activated
            }
            Err(f) => ReleaseOutcome::Failed(f.message.clone()),
        };
        state.unstage(&record.name);
        let on_disk = self.layout.on_disk().unwrap_or_default();
        record_outcome(&mut state, &record.name, outcome.clone(), &on_disk);
        self.save_state(&state)?;
        result?;
        self.prune(&mut state).await?;
        Ok(ReleaseRecord { outcome, ..record })
    }

    /// Builds the release and makes it current; returns the release it replaced.
    /// On failure, the new release directory is removed and `current` is where it
    /// was before.
    async fn build_and_activate(
        &self,
        mirror: &Mirror,
        record: &ReleaseRecord,
        hook_names: &[HookName],
    ) -> Result<Option<ReleaseName>, Failure> {
        let name = &record.name;
        let partial = self.layout.partial_dir(name);
        let dir = self.layout.release_dir(name);
        let built = self.build(mirror, record, &partial, &dir, hook_names).await;
        let result = match built {
            Ok(()) => self.activate_new(record, &dir).await,
            Err(f) => Err(f),
        };
        if result.is_err() {
            let _ = Layout::remove_dir(&partial);
            if self.current().ok().flatten().as_ref() != Some(name) {
                let _ = Layout::remove_dir(&dir);
            }
        }
        result
    }

    async fn build(
        &self,
        mirror: &Mirror,
        record: &ReleaseRecord,
        partial: &Path,
        dir: &Path,
        hook_names: &[HookName],
    ) -> Result<(), Failure> {
        std::fs::create_dir(partial)
            .map_err(|e| internal(&format!("cannot create {}", partial.display()), e))?;
        mirror
            .export(&record.sha, partial)
            .await
            .map_err(git_failure)?;
        self.step(
            DeployStep::Export,
            format!("{} → releases/{}", record.short_sha(), record.name),
            Vec::new(),
        )
        .await;
        let manifest = hooks::read_manifest(partial)?;
        let release_user = manifest.run_as(self.config.release_hooks.as_ref())?;
        self.layout
            .link_shared(partial, &self.config.shared)
            .map_err(|e| internal("cannot link shared paths", e))?;
        self.step(
            DeployStep::LinkShared,
            format!("{} shared path(s)", self.config.shared.len()),
            Vec::new(),
        )
        .await;
        std::fs::rename(partial, dir)
            .map_err(|e| internal(&format!("cannot move the release to {}", dir.display()), e))?;
        // Only now, with shared paths linked by root, the release's hook user gets it.
        if let Some(user) = release_user {
            hooks::give_to(dir, user).map_err(|e| {
                internal(
                    &format!("cannot give the release's files to {}", user.name()),
                    e,
                )
            })?;
        }

        for hook in hook_names {
            let command = check_hook_configured(self.agent, hook)?;
            let output = self
                .run_hook(hook.as_str(), &command, dir, record, None)
                .await?;
            self.step(DeployStep::Hook(hook.to_string()), "ok", output)
                .await;
        }
        if let Some(command) = &manifest.hooks.before_activate {
            let output = self
                .run_hook("before_activate", command, dir, record, release_user)
                .await
                .map_err(|f| with_suffix(f, "current was not changed"))?;
            self.step(DeployStep::Hook("before_activate".into()), "ok", output)
                .await;
        }
        Ok(())
    }

    /// Runs a hook in the release: the operator's as the agent (`run_as` `None`), a
    /// release's own as the configured user.
    async fn run_hook(
        &self,
        label: &str,
        command: &str,
        dir: &Path,
        record: &ReleaseRecord,
        run_as: Option<&RunAs>,
    ) -> Result<Vec<String>, Failure> {
        let env: [(&str, &OsStr); 6] = [
            ("HANDOVER_RELEASE", OsStr::new(record.name.as_str())),
            ("HANDOVER_RELEASE_DIR", dir.as_os_str()),
            ("HANDOVER_ROOT", self.config.root.as_os_str()),
            ("HANDOVER_REPO", OsStr::new(&record.repo)),
            ("HANDOVER_REV", OsStr::new(&record.rev)),
            ("HANDOVER_SHA", OsStr::new(&record.sha)),
        ];
        let groups = RunningGroups::new(&self.agent.config.state_dir);
        let shell = Shell {
            command,
            dir,
            env: &env,
            run_as,
            timeout: self.config.hook_timeout,
            groups: Some(&groups),
        };
        hooks::run(label, &shell).await
    }

    /// Switch → reload → after_activate → verify; switches back on failure.
    async fn activate_new(
        &self,
        record: &ReleaseRecord,
        dir: &Path,
    ) -> Result<Option<ReleaseName>, Failure> {
        let old = self.current()?;
        self.switch(&record.name).await?;
        let checked = async {
            self.reload().await?;
            let manifest = hooks::read_manifest(dir)?;
            let release_user = manifest.run_as(self.config.release_hooks.as_ref())?;
            if let Some(command) = &manifest.hooks.after_activate {
                let output = self
                    .run_hook("after_activate", command, dir, record, release_user)
                    .await?;
                self.step(DeployStep::Hook("after_activate".into()), "ok", output)
                    .await;
            }
            self.verify(dir).await
        }
        .await;
        match checked {
            Ok(()) => Ok(old),
            Err(f) => Err(self.switch_back(old.as_ref(), f).await),
        }
    }

    async fn switch(&self, name: &ReleaseName) -> Result<(), Failure> {
        self.layout
            .switch_to(name)
            .map_err(|e| internal(&format!("cannot switch current to {name}"), e))?;
        self.step(DeployStep::Switch, format!("current → {name}"), Vec::new())
            .await;
        Ok(())
    }

    /// Puts `current` back on `old` (or removes it when there was none), reloads,
    /// and returns `failure` telling what happened.
    async fn switch_back(&self, old: Option<&ReleaseName>, failure: Failure) -> Failure {
        let switched = match old {
            Some(old) => self.layout.switch_to(old),
            None => self.layout.clear_current(),
        };
        let target = old.map_or("(none)".to_string(), |n| n.to_string());
        if let Err(e) = switched {
            return with_suffix(
                failure,
                &format!(
                    "switching back to {target} ALSO failed: {e}; fix {} by hand",
                    self.layout.current_link().display()
                ),
            );
        }
        self.step(
            DeployStep::SwitchBack,
            format!("current → {target}"),
            Vec::new(),
        )
        .await;
        let reloaded = match self.reload().await {
            Ok(()) => String::new(),
            Err(e) => format!(
                "; the reload after switching back failed too: {}",
                e.message
            ),
        };
        with_suffix(failure, &format!("switched back to {target}{reloaded}"))
    }

    async fn reload(&self) -> Result<(), Failure> {
        self.config_command("reload", self.config.reload.as_deref(), DeployStep::Reload)
            .await
    }

    async fn verify(&self, _dir: &Path) -> Result<(), Failure> {
        self.config_command("verify", self.config.verify.as_deref(), DeployStep::Verify)
            .await
    }

    async fn config_command(
        &self,
        label: &str,
        command: Option<&str>,
        step: DeployStep,
    ) -> Result<(), Failure> {
        let Some(command) = command else {
            return Ok(());
        };
        let dir = self.layout.current_link();
        let dir = if dir.is_dir() {
            dir
        } else {
            self.config.root.clone()
        };
        let env: [(&str, &OsStr); 2] = [
            ("HANDOVER_ROOT", self.config.root.as_os_str()),
            ("HANDOVER_RELEASE_DIR", dir.as_os_str()),
        ];
        let groups = RunningGroups::new(&self.agent.config.state_dir);
        let shell = Shell {
            command,
            dir: &dir,
            env: &env,
            run_as: None,
            timeout: self.config.command_timeout,
            groups: Some(&groups),
        };
        let output = hooks::run(label, &shell).await?;
        self.step(step, "ok", output).await;
        Ok(())
    }

    /// Switches `current` to another release on disk, then reloads and verifies;
    /// switches back if either fails, and records the release as unhealthy.
    pub async fn activate(&self, target: &ActivateTarget) -> Result<ReleaseRecord, Failure> {
        let mut state = self.load_state()?;
        let old = self.current()?;
        let name = match target {
            ActivateTarget::Release(name) => name.clone(),
            ActivateTarget::Previous => self.choose_previous(&state, old.as_ref()).await?,
        };
        let record = state.record(&name).cloned();
        // By name, a release that failed a check later may go live again (the
        // operator named it); one whose apply never finished may not.
        let usable = record.as_ref().is_some_and(|r| {
            matches!(
                r.outcome,
                ReleaseOutcome::Activated | ReleaseOutcome::Unhealthy(_)
            )
        });
        if !usable || !self.layout.release_dir(&name).is_dir() {
            return Err(Failure::new(
                FailureKind::BadRequest,
                format!(
                    "release {name} is not a complete release on this host: pick one listed by `releases`"
                ),
            ));
        }
        let record = record.ok_or_else(|| internal("release record", "vanished"))?;
        if old.as_ref() == Some(&name) {
            return Ok(record);
        }
        self.switch(&name).await?;
        let checked = async {
            self.reload().await?;
            self.verify(&self.layout.release_dir(&name)).await
        }
        .await;
        if let Err(f) = checked {
            let reason = format!("failed after activate: {}", f.message);
            let failure = self.switch_back(old.as_ref(), f).await;
            state.mark_unhealthy(&name, &reason);
            self.save_state(&state)?;
            return Err(failure);
        }
        state.previous = old;
        self.save_state(&state)?;
        Ok(record)
    }

    /// The release `activate --previous` goes to, reporting the failed ones it
    /// skipped; an error naming them when none is left.
    async fn choose_previous(
        &self,
        state: &DeployState,
        current: Option<&ReleaseName>,
    ) -> Result<ReleaseName, Failure> {
        let on_disk = self.on_disk_oldest_first(state)?;
        let choice = state.choose_previous(current, &on_disk);
        let skipped = choice.describe_skipped();
        let Some(name) = choice.release else {
            let why = if skipped.is_empty() {
                String::new()
            } else {
                format!(" (skipped, because they failed a check: {skipped})")
            };
            return Err(Failure::new(
                FailureKind::BadRequest,
                format!(
                    "there is no good previous release to go back to{why}: name one with --release (see `releases`)"
                ),
            ));
        };
        let detail = if skipped.is_empty() {
            format!("{name}")
        } else {
            format!("{name} (skipped {skipped})")
        };
        self.step(DeployStep::ChoosePrevious, detail, Vec::new())
            .await;
        Ok(name)
    }

    /// Releases on disk, oldest first: in the order they were built (releases built
    /// within one second share a time stamp, so names alone do not say), with
    /// directories the record does not know first.
    fn on_disk_oldest_first(&self, state: &DeployState) -> Result<Vec<ReleaseName>, Failure> {
        let mut on_disk = self
            .layout
            .on_disk()
            .map_err(|e| internal("cannot list releases", e))?;
        on_disk.sort_by_key(|name| {
            (
                state.releases.iter().position(|r| &r.name == name),
                name.clone(),
            )
        });
        Ok(on_disk)
    }

    /// Removes the oldest releases beyond `keep_releases`, never the current or
    /// the previous one (nor the one `--previous` would choose instead), nor a
    /// staged one (a rollout staged it for a wave still to come).
    async fn prune(&self, state: &mut DeployState) -> Result<(), Failure> {
        let current = self.current()?;
        let on_disk = self.on_disk_oldest_first(state)?;
        // What `--previous` would choose stays too, when the last previous failed.
        let fallback = state.choose_previous(current.as_ref(), &on_disk).release;
        let mut left = on_disk.len();
        let mut removed = Vec::new();
        for name in &on_disk {
            if left <= self.config.keep_releases {
                break;
            }
            if Some(name) == current.as_ref()
                || Some(name) == state.previous.as_ref()
                || Some(name) == fallback.as_ref()
                || state.is_staged(name)
            {
                continue;
            }
            Layout::remove_dir(&self.layout.release_dir(name))
                .map_err(|e| internal(&format!("cannot remove release {name}"), e))?;
            removed.push(name.to_string());
            left -= 1;
        }
        if !removed.is_empty() {
            let on_disk = self.layout.on_disk().unwrap_or_default();
            state.trim(&on_disk);
            self.save_state(state)?;
            self.step(
                DeployStep::Prune,
                format!("removed {}", removed.join(", ")),
                Vec::new(),
            )
            .await;
        }
        Ok(())
    }

    /// Cleans up after a killed agent; see the module documentation.
    pub fn recover(&self) -> anyhow::Result<()> {
        for path in self.layout.remove_leftovers()? {
            tracing::warn!(path = %path.display(), "removed a partial release left by an interrupted deploy");
        }
        let mut state = self.state.load()?;
        let current = self.layout.current()?;
        let mut changed = false;
        for record in &mut state.releases {
            if record.outcome != ReleaseOutcome::Pending {
                continue;
            }
            changed = true;
            record.outcome = ReleaseOutcome::Interrupted;
            if current.as_ref() == Some(&record.name) {
                tracing::warn!(release = %record.name, "an interrupted deploy had already switched current; it stays current (run verify, or activate --previous)");
            } else {
                Layout::remove_dir(&self.layout.release_dir(&record.name))?;
                tracing::warn!(release = %record.name, "removed a release whose deploy was interrupted");
            }
        }
        if changed {
            self.state.save(&state)?;
        }
        if let Some(name) = current
            && !self.layout.release_dir(&name).is_dir()
        {
            tracing::error!(release = %name, "current points at a missing release: activate another one");
        }
        Ok(())
    }

    /// The releases on disk (newest first), which is current, and which one
    /// `activate --previous` would choose (never one that failed a check).
    pub fn list(&self) -> Result<handover_common::proto::deploy::ReleaseList, Failure> {
        let state = self.load_state()?;
        let on_disk = self.on_disk_oldest_first(&state)?;
        let current = self.current()?;
        let previous = state.choose_previous(current.as_ref(), &on_disk).release;
        let releases = on_disk
            .iter()
            .rev()
            .filter_map(|n| state.record(n).cloned())
            .collect();
        Ok(handover_common::proto::deploy::ReleaseList {
            releases,
            current,
            previous,
        })
    }

    /// The current release's record and the number of releases on disk.
    pub fn status(&self) -> handover_common::proto::deploy::ReleaseStatus {
        let state = self.state.load().unwrap_or_default();
        let current = self
            .layout
            .current()
            .ok()
            .flatten()
            .and_then(|n| state.record(&n).cloned());
        let releases = self.layout.on_disk().map(|d| d.len()).unwrap_or(0);
        handover_common::proto::deploy::ReleaseStatus {
            current,
            releases: u32::try_from(releases).unwrap_or(u32::MAX),
        }
    }
}

/// `state_dir/deploy`: mirrors and the release record.
pub fn deploy_state_dir(agent: &Agent) -> std::path::PathBuf {
    agent.config.state_dir.join("deploy")
}

/// The command configured for `hook`, or a `Refused` failure naming the fix.
pub fn check_hook_configured(agent: &Agent, hook: &HookName) -> Result<String, Failure> {
    agent.config.hooks.get(hook).cloned().ok_or_else(|| {
        let known: Vec<&str> = agent.config.hooks.keys().map(HookName::as_str).collect();
        Failure::new(
            FailureKind::Refused,
            format!(
                "hook {hook} is not in this agent's [hooks]: add `{hook} = \"command\"` there, or use one of: {}",
                if known.is_empty() {
                    "(none configured)".to_string()
                } else {
                    known.join(", ")
                }
            ),
        )
    })
}

/// Sets how `name`'s apply ended and bounds the record: every failed apply adds
/// one whose release is gone, so without trimming here releases.json grew on
/// every failure (issue 13, hole 12).
fn record_outcome(
    state: &mut DeployState,
    name: &ReleaseName,
    outcome: ReleaseOutcome,
    on_disk: &[ReleaseName],
) {
    if let Some(r) = state.record_mut(name) {
        r.outcome = outcome;
    }
    state.trim(on_disk);
}

/// Hook names as the staged record keeps them.
impl Deployer<'_> {
    /// What every build (an apply or a stage) starts with: the request's checks
    /// and the release tree; returns the agent hooks' names as the records keep them.
    fn prepare_build(
        &self,
        repo: &RepoUrl,
        hook_names: &[HookName],
    ) -> Result<Vec<String>, Failure> {
        self.check_apply(repo, hook_names)?;
        self.layout
            .ensure()
            .map_err(|e| internal("cannot create the release tree", e))?;
        Ok(hook_strings(hook_names))
    }
}

fn hook_strings(hooks: &[HookName]) -> Vec<String> {
    hooks.iter().map(ToString::to_string).collect()
}

fn with_suffix(failure: Failure, suffix: &str) -> Failure {
    Failure::new(failure.kind, format!("{}; {suffix}", failure.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 13, hole 12: releases.json grew by one record on every failed apply.
    #[test]
    fn failed_applies_do_not_grow_the_record_without_bound() {
        let mut state = DeployState::default();
        let kept = ReleaseName::new("20260101T000000Z-aaaaaaa").expect("name");
        for i in 0..500 {
            let name = ReleaseName::new(format!("20260102T000000Z-bbbbbbb-{i}")).expect("name");
            let on_disk = [kept.clone(), name.clone()];
            state.releases.push(ReleaseRecord {
                name: name.clone(),
                repo: "file:///repo.git".into(),
                rev: "broken".into(),
                sha: "b".repeat(40),
                created: "2026-01-02T00:00:00Z".into(),
                outcome: ReleaseOutcome::Pending,
            });
            record_outcome(
                &mut state,
                &name,
                ReleaseOutcome::Failed("boom".into()),
                &on_disk,
            );
        }
        assert!(
            state.releases.len() <= 101,
            "{} records",
            state.releases.len()
        );
        let last = state.releases.last().expect("the newest stays");
        assert_eq!(last.name.as_str(), "20260102T000000Z-bbbbbbb-499");
        assert_eq!(last.outcome, ReleaseOutcome::Failed("boom".into()));
    }
}
