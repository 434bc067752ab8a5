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

use serde::{Deserialize, Serialize};

use crate::names::{HookName, ReleaseName, RepoUrl, Revision};

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
