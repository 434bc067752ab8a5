//! Code revisions: releases/, atomic `current` switch, hooks, rollback (runbook
//! steps 4, 6, 7).
//!
//! * [`config`]: `[deploy]` in the agent's config.
//! * [`git`]: the cached mirror of each allowed repository; fetch, resolve, export.
//! * [`releases`]: the release tree and the atomic `current` switch.
//! * [`hooks`]: the operator's `[hooks]` and a release's own `handover.toml`.
//! * [`apply`]: the apply / activate pipeline, pruning and crash recovery.
//! * [`state`]: the record of releases in state_dir.
//! * [`cli`]: the local `handover-agent deploy|releases|activate|hook` commands.
//!
//! Deploy actions on one host are serialized by [`crate::Agent::deploy_lock`]: two
//! applies at once must not interleave their switches.

pub mod apply;
pub mod artifact;
pub mod cli;
pub mod command;
pub mod config;
pub mod git;
pub mod hooks;
pub mod releases;
pub mod state;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::Arc;

use handover_common::names::{HookName, InputKey};
use handover_common::proto::deploy::{DeployReply, DeployRequest, HookOutput, ReleaseStatus};
use handover_common::proto::{Failure, FailureKind};

pub use config::DeployConfig;

use crate::Agent;
use crate::caller::{Caller, Reporter};
use apply::{Deployer, check_hook_configured};

/// How long a leftover hook gets after SIGTERM before SIGKILL, at agent start.
const HOOK_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Default limit for a hook when `[deploy]` is not configured.
const DEFAULT_HOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

fn deploy_config(agent: &Agent) -> Result<&DeployConfig, Failure> {
    agent.config.deploy.as_ref().ok_or_else(|| {
        Failure::new(
            FailureKind::NotConfigured,
            "this agent has no [deploy] section: add root and allowed_repos to its config",
        )
    })
}

/// Runs a deploy request outside any rollout.
pub async fn handle(
    agent: &Arc<Agent>,
    caller: &Caller,
    req: DeployRequest,
    reporter: &Reporter,
) -> Result<DeployReply, Failure> {
    handle_in(agent, caller, None, req, reporter).await
}

/// Runs a deploy request of `rollout` (the frame's): a release it staged is
/// applied without fetching again.
pub async fn handle_in(
    agent: &Arc<Agent>,
    caller: &Caller,
    rollout: Option<&str>,
    req: DeployRequest,
    reporter: &Reporter,
) -> Result<DeployReply, Failure> {
    match req {
        DeployRequest::Apply {
            repo,
            rev,
            hooks,
            force,
        } => {
            let config = deploy_config(agent)?;
            let deployer = Deployer::new(agent, config, Some(reporter));
            // Refuse before waiting for the lock: a bad request changes nothing.
            deployer.check_apply(&repo, &hooks)?;
            deployer.check_not_serving(force)?;
            let _guard = agent.deploy_lock.lock().await;
            tracing::info!(%caller, %repo, %rev, "applying a revision");
            deployer
                .apply(&repo, &rev, &hooks, rollout)
                .await
                .map(DeployReply::Applied)
        }
        DeployRequest::Stage { repo, rev, hooks } => {
            let config = deploy_config(agent)?;
            let deployer = Deployer::new(agent, config, Some(reporter));
            deployer.check_apply(&repo, &hooks)?;
            let _guard = agent.deploy_lock.lock().await;
            tracing::info!(%caller, %repo, %rev, "staging a revision");
            deployer
                .stage(&repo, &rev, &hooks, rollout)
                .await
                .map(DeployReply::Staged)
        }
        DeployRequest::Activate { target, force } => {
            let config = deploy_config(agent)?;
            let deployer = Deployer::new(agent, config, Some(reporter));
            deployer.check_not_serving(force)?;
            let _guard = agent.deploy_lock.lock().await;
            tracing::info!(%caller, ?target, "activating a release");
            deployer.activate(&target).await.map(DeployReply::Activated)
        }
        DeployRequest::Resolve { repo, rev } => {
            let config = deploy_config(agent)?;
            let deployer = Deployer::new(agent, config, None);
            deployer.check_apply(&repo, &[])?;
            // The mirror is shared with applies: one git at a time in it.
            let _guard = agent.deploy_lock.lock().await;
            deployer
                .resolve(&repo, &rev)
                .await
                .map(DeployReply::Resolved)
        }
        DeployRequest::MarkUnhealthy { release, reason } => {
            let config = deploy_config(agent)?;
            let _guard = agent.deploy_lock.lock().await;
            tracing::info!(%caller, %release, "marking a release unhealthy");
            Deployer::new(agent, config, None)
                .mark_unhealthy(&release, &reason)
                .map(DeployReply::Marked)
        }
        DeployRequest::Releases => {
            let config = deploy_config(agent)?;
            Deployer::new(agent, config, None)
                .list()
                .map(DeployReply::Releases)
        }
        DeployRequest::RunHook(name) => {
            run_named_hook(agent, caller, &name, &BTreeMap::new()).await
        }
        DeployRequest::RunHookWith { name, inputs } => {
            run_named_hook(agent, caller, &name, &inputs).await
        }
    }
}

/// Runs a hook named in this agent's own `[hooks]`, in the current release (or the
/// deploy root before the first one), with the agent's hook timeout. Each input
/// reaches it as `HANDOVER_INPUT_<KEY>` (data in its environment, never part of
/// the command line). A file it reports on its last stdout line is checked
/// against the disk and returned (see [`artifact`]).
async fn run_named_hook(
    agent: &Arc<Agent>,
    caller: &Caller,
    name: &HookName,
    inputs: &BTreeMap<InputKey, String>,
) -> Result<DeployReply, Failure> {
    let command = check_hook_configured(agent, name)?;
    let _guard = agent.deploy_lock.lock().await;
    tracing::info!(%caller, hook = %name, inputs = inputs.len(), "running a hook");
    let (dir, timeout) = hook_dir_and_timeout(agent);
    let env = hook_env(name, inputs);
    let env: Vec<(&str, &OsStr)> = env
        .iter()
        .map(|(k, v)| (k.as_str(), OsStr::new(v.as_str())))
        .collect();
    let groups = command::RunningGroups::new(&agent.config.state_dir);
    let shell = command::Shell {
        command: &command,
        dir: &dir,
        env: &env,
        run_as: None,
        timeout,
        groups: Some(&groups),
    };
    let (output, last) = hooks::run_reporting(name.as_str(), &shell).await?;
    let artifact = artifact::checked(name.as_str(), last.as_deref()).await?;
    Ok(DeployReply::HookRan(HookOutput {
        name: name.to_string(),
        output,
        artifact,
    }))
}

/// Where an agent hook runs (the current release, else the deploy root, else `/`)
/// and its time limit.
fn hook_dir_and_timeout(agent: &Agent) -> (std::path::PathBuf, std::time::Duration) {
    let (dir, timeout) = match &agent.config.deploy {
        Some(d) => {
            let current = releases::Layout::new(&d.root).current_link();
            let dir = if current.is_dir() {
                current
            } else {
                d.root.clone()
            };
            (dir, d.hook_timeout)
        }
        None => (std::path::PathBuf::from("/"), DEFAULT_HOOK_TIMEOUT),
    };
    if dir.is_dir() {
        (dir, timeout)
    } else {
        (std::path::PathBuf::from("/"), timeout)
    }
}

/// A hook's `HANDOVER_*` environment: its name, and each input as
/// `HANDOVER_INPUT_<KEY>` (keys are upper-case environment names by type).
fn hook_env(name: &HookName, inputs: &BTreeMap<InputKey, String>) -> Vec<(String, String)> {
    std::iter::once(("HANDOVER_HOOK".to_string(), name.to_string()))
        .chain(inputs.iter().map(|(k, v)| (k.env_name(), v.clone())))
        .collect()
}

/// The release part of `status`.
pub async fn status(agent: &Arc<Agent>) -> Option<ReleaseStatus> {
    let config = agent.config.deploy.as_ref()?;
    Some(Deployer::new(agent, config, None).status())
}

/// Cleans up after an agent killed mid-deploy; call once at start, before serving.
pub fn recover(agent: &Agent) -> anyhow::Result<()> {
    // First end what a hook of the killed agent left running (its group), so
    // nothing still works in a release that recovery is about to remove.
    let groups = command::RunningGroups::new(&agent.config.state_dir);
    for pgid in groups.end_leftovers(HOOK_GRACE)? {
        tracing::warn!(
            pgid,
            "ended the process group of a hook left running by an interrupted agent"
        );
    }
    let Some(config) = agent.config.deploy.as_ref() else {
        return Ok(());
    };
    Deployer::new(agent, config, None).recover()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs reach a hook as data: a value full of shell syntax is printed, not run.
    #[tokio::test]
    async fn hook_inputs_are_environment_data_never_shell_code() {
        let name = HookName::new("migrate").expect("name");
        let inputs: BTreeMap<InputKey, String> = [(
            InputKey::new("APP_ENV").expect("key"),
            "prod; echo injected $(echo twice)".to_string(),
        )]
        .into_iter()
        .collect();
        let env = hook_env(&name, &inputs);
        assert_eq!(env[1].0, "HANDOVER_INPUT_APP_ENV");
        let env: Vec<(&str, &OsStr)> = env
            .iter()
            .map(|(k, v)| (k.as_str(), OsStr::new(v.as_str())))
            .collect();
        let dir = std::env::temp_dir();
        let shell = command::Shell {
            command: "printf '%s|%s\\n' \"$HANDOVER_HOOK\" \"$HANDOVER_INPUT_APP_ENV\"",
            dir: &dir,
            env: &env,
            run_as: None,
            timeout: std::time::Duration::from_secs(30),
            groups: None,
        };
        let (tail, last) = hooks::run_reporting("migrate", &shell).await.expect("runs");
        assert_eq!(
            tail,
            vec!["migrate|prod; echo injected $(echo twice)".to_string()]
        );
        assert_eq!(last.as_deref(), Some(tail[0].as_str()));
    }
}
