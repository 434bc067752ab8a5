//! Deploy: code revisions, releases and hooks (runbook steps 4, 6, 7).
//!
//! An agent keeps each revision it applies in `releases/<UTC time>-<short sha>` and
//! points `current` at one of them; switching is one rename, so a host is on the old
//! release or the new one, never between. Every string in these requests is a
//! validated newtype: nothing here can become an option or a shell command.
//!
//! Switching a host in service: `current` changing under live traffic serves a
//! release no check has passed yet (the health-check file lives outside the
//! release, so HAProxy keeps the server UP). An agent refuses `Apply` and
//! `Activate` without `force` while its health-check file is present and a release
//! is current. A rollout's engine drains and detaches the host itself first and
//! sends `force`; by hand the safe path is drain (and wait), switch, undrain.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::names::{HookName, InputKey, ReleaseName, RepoUrl, Revision};

/// Most inputs one [`DeployRequest::RunHookWith`] may carry.
pub const MAX_HOOK_INPUTS: usize = 64;

/// Longest value of one hook input, in bytes.
pub const MAX_HOOK_INPUT_BYTES: usize = 4096;

/// Deploy requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DeployRequest {
    /// Fetch `rev` of `repo` (one of the agent's `allowed_repos`), export it as a new
    /// release, run `hooks` (names from the agent's own `[hooks]`) and the release's
    /// own `before_activate`, switch `current`, reload, run `after_activate` and
    /// `verify`; on any failure after the switch, switch back.
    Apply {
        /// Must equal one of the agent's `allowed_repos` exactly.
        repo: RepoUrl,
        /// Branch, tag or commit id.
        rev: Revision,
        /// Agent hooks to run in the new release before it is activated.
        hooks: Vec<HookName>,
        /// Switch even while the host is in service (see the module documentation).
        force: bool,
    },
    /// Point `current` at another release that is still on disk (rollback).
    Activate {
        /// Which one.
        target: ActivateTarget,
        /// Switch even while the host is in service (see the module documentation).
        force: bool,
    },
    /// List the releases on disk.
    Releases,
    /// Say which commit `rev` of `repo` is, changing nothing but the agent's cached
    /// mirror: the same checks and resolution an apply starts with (`allowed_repos`,
    /// fetch, tag / branch / commit id), so a plan is refused before any drain.
    Resolve {
        /// Must equal one of the agent's `allowed_repos` exactly.
        repo: RepoUrl,
        /// Branch, tag or commit id.
        rev: Revision,
    },
    /// Record that `release` failed a check after it was made current (the
    /// coordinator's health gate): `releases` shows it failed and
    /// `activate --previous` skips it. `current` is not changed.
    MarkUnhealthy {
        /// The release that failed.
        release: ReleaseName,
        /// What failed, for the operator (shortened by the agent if long).
        reason: String,
    },
    /// Run one of the agent's own `[hooks]` by name.
    RunHook(HookName),
    /// Run one of the agent's own `[hooks]` with the deployment's inputs: each
    /// reaches the hook as the environment variable `HANDOVER_INPUT_<KEY>`, as
    /// data (never part of the command line). Bounded by [`MAX_HOOK_INPUTS`] and
    /// [`MAX_HOOK_INPUT_BYTES`], no NUL ([`DeployRequest::check`]).
    RunHookWith {
        /// The hook's name in the agent's `[hooks]`.
        name: HookName,
        /// The inputs, by key.
        inputs: BTreeMap<InputKey, String>,
    },
    /// Make `rev` of `repo` ready as a release without touching `current`: fetch,
    /// resolve, export, link shared paths, run `hooks` and the release's own
    /// `before_activate` (everything an [`DeployRequest::Apply`] does before its
    /// switch). A later `Apply` of the same commit with the same hooks reuses it
    /// and only switches; one from the rollout that staged it does not even fetch
    /// again. Idempotent: staging what is already staged answers at once. A rollout
    /// stages every host before its first wave, so a wave only switches.
    Stage {
        /// Must equal one of the agent's `allowed_repos` exactly.
        repo: RepoUrl,
        /// Branch, tag or commit id.
        rev: Revision,
        /// Agent hooks to run in the new release before it is activated.
        hooks: Vec<HookName>,
    },
}

/// What [`DeployRequest::Activate`] switches to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ActivateTarget {
    /// A release by name (see `releases`).
    Release(ReleaseName),
    /// The release that was current before the last switch, unless it failed a
    /// check; then the newest release on disk that did not (the ones skipped are
    /// reported as a [`DeployStep::ChoosePrevious`] step).
    Previous,
}

/// The steps of an apply, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeployStep {
    /// The cached mirror of the repository is up to date.
    Fetch,
    /// The revision resolved to a commit.
    Resolve,
    /// The commit's files are in the new release directory.
    Export,
    /// Shared paths are linked into the release.
    LinkShared,
    /// A hook ran (an agent hook's name, or `before_activate` / `after_activate`).
    Hook(String),
    /// `current` points at the new release.
    Switch,
    /// The `reload` command ran.
    Reload,
    /// The `verify` command ran.
    Verify,
    /// `current` was switched back after a failure.
    SwitchBack,
    /// Old releases beyond `keep_releases` were removed.
    Prune,
    /// `activate --previous` chose its release (and which failed ones it skipped).
    ChoosePrevious,
    /// A staged release was made ready, or found ready and reused.
    Stage,
}

impl std::fmt::Display for DeployStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeployStep::Fetch => f.write_str("fetch"),
            DeployStep::Resolve => f.write_str("resolve"),
            DeployStep::Export => f.write_str("export"),
            DeployStep::LinkShared => f.write_str("link shared"),
            DeployStep::Hook(name) => write!(f, "hook {name}"),
            DeployStep::Switch => f.write_str("switch"),
            DeployStep::Reload => f.write_str("reload"),
            DeployStep::Verify => f.write_str("verify"),
            DeployStep::SwitchBack => f.write_str("switch back"),
            DeployStep::Prune => f.write_str("prune"),
            DeployStep::ChoosePrevious => f.write_str("previous"),
            DeployStep::Stage => f.write_str("stage"),
        }
    }
}

/// Deploy progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DeployProgress {
    /// One step finished successfully.
    StepFinished {
        /// Which step.
        step: DeployStep,
        /// One line for the operator ("v2 = 1a2b3c4…", "-> releases/…").
        detail: String,
        /// The last lines of the command's output, if a command ran.
        output: Vec<String>,
    },
}

/// Deploy replies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DeployReply {
    /// The new release is current, reloaded and verified.
    Applied(ReleaseRecord),
    /// `current` now points at this release.
    Activated(ReleaseRecord),
    /// The releases on disk, newest first.
    Releases(ReleaseList),
    /// A hook ran and exited 0.
    HookRan(HookOutput),
    /// What [`DeployRequest::Resolve`] found.
    Resolved(ResolvedRevision),
    /// The release is now recorded as unhealthy.
    Marked(ReleaseRecord),
    /// The release is staged (built and checked, not current): the answer to
    /// [`DeployRequest::Stage`].
    Staged(ReleaseRecord),
}

/// Answer to [`DeployRequest::Resolve`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedRevision {
    /// The repository.
    pub repo: RepoUrl,
    /// The revision asked for.
    pub rev: Revision,
    /// The full commit id it names on this agent.
    pub sha: String,
}

/// What happened to a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReleaseOutcome {
    /// Being built or tested; never seen after a finished apply.
    Pending,
    /// Made current (it may have been switched away from since).
    Activated,
    /// A step failed; `current` was left on (or switched back to) the old release.
    Failed(String),
    /// The agent stopped before the apply finished.
    Interrupted,
    /// Made current, then failed a check: the coordinator's health gate, or the
    /// agent's `verify` after an `activate`. `activate --previous` skips it; it can
    /// still be activated by name.
    Unhealthy(String),
    /// Built and checked by a [`DeployRequest::Stage`], never made current yet:
    /// the next `Apply` of its commit switches to it. Kept by pruning.
    Staged,
}

impl ReleaseOutcome {
    /// Whether `activate --previous` may choose a release with this outcome.
    pub fn is_good(&self) -> bool {
        *self == ReleaseOutcome::Activated
    }

    /// Why the release is not good, for tables: `None` when it is.
    pub fn failure(&self) -> Option<&str> {
        match self {
            ReleaseOutcome::Activated => None,
            ReleaseOutcome::Pending => Some("pending"),
            ReleaseOutcome::Interrupted => Some("interrupted"),
            ReleaseOutcome::Staged => Some("staged, not yet current"),
            ReleaseOutcome::Failed(why) | ReleaseOutcome::Unhealthy(why) => Some(why),
        }
    }
}

/// One release as the agent recorded it in its state_dir.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    /// Its directory under `releases/`.
    pub name: ReleaseName,
    /// The repository it came from.
    pub repo: String,
    /// The revision asked for (branch, tag or commit id).
    pub rev: String,
    /// The full commit id.
    pub sha: String,
    /// When it was built, RFC 3339 UTC.
    pub created: String,
    /// How the apply ended.
    pub outcome: ReleaseOutcome,
}

impl ReleaseRecord {
    /// The commit id abbreviated to 7 characters.
    pub fn short_sha(&self) -> &str {
        self.sha.get(..7).unwrap_or(&self.sha)
    }
}

/// Answer to [`DeployRequest::Releases`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseList {
    /// Releases on disk, newest first.
    pub releases: Vec<ReleaseRecord>,
    /// The one `current` points at.
    pub current: Option<ReleaseName>,
    /// The one `activate --previous` would switch to (never a failed one).
    pub previous: Option<ReleaseName>,
}

/// What a hook printed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookOutput {
    /// The hook's name.
    pub name: String,
    /// The last lines of its stdout and stderr, interleaved as they came.
    pub output: Vec<String>,
    /// The file the hook reported making (a database backup), checked by the
    /// agent: the hook's last stdout line was a JSON object
    /// `{"path": ..., "size": ..., "sha256": ...}` and the file on disk matched.
    pub artifact: Option<HookArtifact>,
}

/// A file a hook made, as it reported it and the agent checked it (runbook step
/// 1: the database snapshot the journal records).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookArtifact {
    /// Where it is, on the host that ran the hook (an absolute path).
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, 64 lower-case hex digits.
    pub sha256: String,
}

/// Deploy part of the status report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseStatus {
    /// The release `current` points at (none before the first apply).
    pub current: Option<ReleaseRecord>,
    /// How many releases are on disk.
    pub releases: u32,
}

impl DeployRequest {
    /// Checks the free strings a request carries beyond its typed names (a hook's
    /// input values): at most [`MAX_HOOK_INPUTS`] inputs, each at most
    /// [`MAX_HOOK_INPUT_BYTES`] long and without NUL (an environment variable
    /// cannot hold one).
    pub fn check(&self) -> Result<(), String> {
        let DeployRequest::RunHookWith { name, inputs } = self else {
            return Ok(());
        };
        if inputs.len() > MAX_HOOK_INPUTS {
            return Err(format!(
                "hook {name}: {} inputs, at most {MAX_HOOK_INPUTS} may be passed to a hook; pass fewer inputs (or one holding a file's path)",
                inputs.len()
            ));
        }
        for (key, value) in inputs {
            if value.len() > MAX_HOOK_INPUT_BYTES {
                return Err(format!(
                    "hook {name}: input {key} is {} bytes, at most {MAX_HOOK_INPUT_BYTES} may be passed; shorten it (or pass a file's path)",
                    value.len()
                ));
            }
            if value.contains('\0') {
                return Err(format!(
                    "hook {name}: input {key} contains a NUL byte, which an environment variable cannot hold; remove it"
                ));
            }
        }
        Ok(())
    }

    /// Whether this request changes the host (see [`super::Request::changes_host`]).
    /// Listing releases and resolving a revision do not; applying, activating,
    /// marking and running a hook do.
    pub fn changes_host(&self) -> bool {
        !matches!(
            self,
            DeployRequest::Releases | DeployRequest::Resolve { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_inputs(inputs: &[(&str, &str)]) -> DeployRequest {
        DeployRequest::RunHookWith {
            name: HookName::new("migrate").expect("name"),
            inputs: inputs
                .iter()
                .map(|(k, v)| (InputKey::new(*k).expect("key"), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn hook_inputs_are_bounded_and_free_of_nul() {
        assert!(
            with_inputs(&[("APP_ENV", "production; rm -rf /")])
                .check()
                .is_ok()
        );
        let long = "x".repeat(MAX_HOOK_INPUT_BYTES + 1);
        let err = with_inputs(&[("BIG", &long)])
            .check()
            .expect_err("too long");
        assert!(
            err.contains("input BIG") && err.contains("at most"),
            "{err}"
        );
        let err = with_inputs(&[("NUL", "a\0b")]).check().expect_err("NUL");
        assert!(
            err.contains("input NUL") && err.contains("NUL byte"),
            "{err}"
        );
        let keys: Vec<String> = (0..=MAX_HOOK_INPUTS).map(|i| format!("K{i}")).collect();
        let many: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "v")).collect();
        let err = with_inputs(&many).check().expect_err("too many");
        assert!(err.contains("inputs"), "{err}");
        let frame =
            crate::proto::RequestFrame::new(crate::proto::Request::Deploy(with_inputs(&[(
                "NUL", "\0",
            )])));
        assert!(frame.check_strings().is_err());
    }
}
