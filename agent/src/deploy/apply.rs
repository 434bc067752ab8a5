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
    ActivateTarget, DeployProgress, DeployStep, ReleaseOutcome, ReleaseRecord,
};
use handover_common::proto::{Failure, FailureKind, Progress};

use super::config::DeployConfig;
use super::git::{GitError, Mirror};
use super::hooks;
use super::releases::{Layout, new_release_name};
use super::state::{DeployState, StateFile};
use crate::Agent;
use crate::dispatch::Reporter;

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

    /// Applies `rev` of `repo`: see the module documentation for the steps.
    pub async fn apply(
        &self,
        repo: &RepoUrl,
        rev: &Revision,
        hook_names: &[HookName],
    ) -> Result<ReleaseRecord, Failure> {
        self.check_apply(repo, hook_names)?;
        self.layout
            .ensure()
            .map_err(|e| internal("cannot create the release tree", e))?;

        let mirror = Mirror::new(
            &deploy_state_dir(self.agent).join("mirrors"),
            repo,
            self.config.git_timeout,
        );
        let fetched = mirror.fetch().await.map_err(git_failure)?;
        self.step(DeployStep::Fetch, repo.to_string(), fetched.tail)
            .await;
        let sha = mirror.resolve(rev).await.map_err(git_failure)?;
        self.step(DeployStep::Resolve, format!("{rev} = {sha}"), Vec::new())
            .await;

        let name = new_release_name(SystemTime::now(), &sha, |n| {
            self.layout.release_dir(n).exists() || self.layout.partial_dir(n).exists()
        })
        .map_err(|e| internal("cannot name the release", e))?;
        let record = ReleaseRecord {
            name: name.clone(),
            repo: repo.to_string(),
            rev: rev.to_string(),
            sha: sha.clone(),
            created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            outcome: ReleaseOutcome::Pending,
        };
        let mut state = self.load_state()?;
        state.releases.push(record.clone());
        self.save_state(&state)?;

        let result = self.build_and_activate(&mirror, &record, hook_names).await;
        let mut state = self.load_state()?;
        let outcome = match &result {
            Ok(previous) => {
                state.previous = previous.clone();
                ReleaseOutcome::Activated
            }
            Err(f) => ReleaseOutcome::Failed(f.message.clone()),
        };
        if let Some(r) = state.record_mut(&name) {
            r.outcome = outcome.clone();
        }
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

        for hook in hook_names {
            let command = check_hook_configured(self.agent, hook)?;
            let output = self.run_hook(hook.as_str(), &command, dir, record).await?;
            self.step(DeployStep::Hook(hook.to_string()), "ok", output)
                .await;
        }
        if let Some(command) = &manifest.hooks.before_activate {
            let output = self
                .run_hook("before_activate", command, dir, record)
                .await
                .map_err(|f| with_suffix(f, "current was not changed"))?;
            self.step(DeployStep::Hook("before_activate".into()), "ok", output)
                .await;
        }
        Ok(())
    }

    async fn run_hook(
        &self,
        label: &str,
        command: &str,
        dir: &Path,
        record: &ReleaseRecord,
    ) -> Result<Vec<String>, Failure> {
        let env: [(&str, &OsStr); 6] = [
            ("HANDOVER_RELEASE", OsStr::new(record.name.as_str())),
            ("HANDOVER_RELEASE_DIR", dir.as_os_str()),
            ("HANDOVER_ROOT", self.config.root.as_os_str()),
            ("HANDOVER_REPO", OsStr::new(&record.repo)),
            ("HANDOVER_REV", OsStr::new(&record.rev)),
            ("HANDOVER_SHA", OsStr::new(&record.sha)),
        ];
        hooks::run(label, command, dir, &env, self.config.hook_timeout).await
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
            if let Some(command) = &manifest.hooks.after_activate {
                let output = self
                    .run_hook("after_activate", command, dir, record)
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
        let output = hooks::run(label, command, &dir, &env, self.config.command_timeout).await?;
        self.step(step, "ok", output).await;
        Ok(())
    }

    /// Switches `current` to another release on disk, then reloads and verifies;
    /// switches back if either fails.
    pub async fn activate(&self, target: &ActivateTarget) -> Result<ReleaseRecord, Failure> {
        let mut state = self.load_state()?;
        let old = self.current()?;
        let name = match target {
            ActivateTarget::Release(name) => name.clone(),
            ActivateTarget::Previous => state.previous.clone().ok_or_else(|| {
                Failure::new(
                    FailureKind::BadRequest,
                    "there is no previous release to go back to: name one (see `releases`)",
                )
            })?,
        };
        let record = state.record(&name).cloned();
        let usable = record
            .as_ref()
            .is_some_and(|r| r.outcome == ReleaseOutcome::Activated);
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
            return Err(self.switch_back(old.as_ref(), f).await);
        }
        state.previous = old;
        self.save_state(&state)?;
        Ok(record)
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
    /// the previous one.
    async fn prune(&self, state: &mut DeployState) -> Result<(), Failure> {
        let current = self.current()?;
        let on_disk = self.on_disk_oldest_first(state)?;
        let mut left = on_disk.len();
        let mut removed = Vec::new();
        for name in &on_disk {
            if left <= self.config.keep_releases {
                break;
            }
            if Some(name) == current.as_ref() || Some(name) == state.previous.as_ref() {
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

    /// The releases on disk (newest first), and which are current and previous.
    pub fn list(&self) -> Result<handover_common::proto::deploy::ReleaseList, Failure> {
        let state = self.load_state()?;
        let on_disk = self.on_disk_oldest_first(&state)?;
        let releases = on_disk
            .iter()
            .rev()
            .filter_map(|n| state.record(n).cloned())
            .collect();
        Ok(handover_common::proto::deploy::ReleaseList {
            releases,
            current: self.current()?,
            previous: state.previous.clone(),
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

fn with_suffix(failure: Failure, suffix: &str) -> Failure {
    Failure::new(failure.kind, format!("{}; {suffix}", failure.message))
}
