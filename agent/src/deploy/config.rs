//! `[deploy]` in the agent's config: where releases live, which repositories the
//! agent will fetch from, and the operator's own reload / verify commands.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use handover_common::duration::serde_human;
use handover_common::names::RepoUrl;
use serde::Deserialize;

/// `[deploy]`: where releases live and what may be deployed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployConfig {
    /// Holds `releases/`, `shared/` and the `current` symlink.
    pub root: PathBuf,
    /// The exact repository URLs the agent will fetch from; anything else is refused.
    pub allowed_repos: Vec<RepoUrl>,
    /// How many releases to keep on disk (the current and previous ones always stay).
    #[serde(default = "default_keep_releases")]
    pub keep_releases: usize,
    /// Paths (relative to a release) linked from `shared/` into every release, so
    /// uploads, logs or local config survive a switch.
    #[serde(default)]
    pub shared: Vec<SharedPath>,
    /// Command run (with `sh -c`) after every switch, e.g. `apache2ctl graceful`.
    pub reload: Option<String>,
    /// Command run (with `sh -c`) after the reload; failing means "not healthy" and
    /// switches back.
    pub verify: Option<String>,
    /// Whether a release's own `handover.toml` hooks run, and as whom: absent, they
    /// do not (a release that has any is refused); see [`super::hooks`].
    #[serde(default)]
    pub release_hooks: Option<super::hooks::ReleaseHooksConfig>,
    /// Limit for each hook (agent hooks and the release's own).
    #[serde(default = "default_hook_timeout", with = "serde_human")]
    pub hook_timeout: Duration,
    /// Limit for `reload` and `verify`.
    #[serde(default = "default_command_timeout", with = "serde_human")]
    pub command_timeout: Duration,
    /// Limit for each git command (fetch can be slow on a first clone).
    #[serde(default = "default_git_timeout", with = "serde_human")]
    pub git_timeout: Duration,
}

fn default_keep_releases() -> usize {
    5
}

fn default_hook_timeout() -> Duration {
    Duration::from_secs(600)
}

fn default_command_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_git_timeout() -> Duration {
    Duration::from_secs(300)
}

impl DeployConfig {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if self.root.is_relative() {
            self.root = base.join(&self.root);
        }
        if self.keep_releases < 2 {
            // The current and previous releases are never pruned, so fewer than two
            // would be a promise the agent cannot keep; say so in the log, keep two.
            tracing::warn!(
                keep_releases = self.keep_releases,
                "[deploy] keep_releases below 2 is treated as 2 (current and previous always stay)"
            );
            self.keep_releases = 2;
        }
    }

    /// Whether `repo` is one of `allowed_repos`, compared exactly.
    pub fn allows(&self, repo: &RepoUrl) -> bool {
        self.allowed_repos.iter().any(|r| r == repo)
    }
}

/// A path inside a release: relative, plain components only (no `..`, no `/` at
/// the start), so `shared/<path>` and `releases/<name>/<path>` stay inside `root`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct SharedPath(PathBuf);

impl SharedPath {
    /// The relative path.
    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

impl TryFrom<String> for SharedPath {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        let path = PathBuf::from(&value);
        let plain = !value.is_empty()
            && !value.starts_with('-')
            && path.components().all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(format!(
                "invalid shared path {value:?}: write a path relative to the release, like \"storage\" or \"config/app.env\" (no '..', no leading '/' or '-')"
            ));
        }
        Ok(SharedPath(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_paths_stay_inside_the_release() {
        assert!(SharedPath::try_from("storage".to_string()).is_ok());
        assert!(SharedPath::try_from("config/app.env".to_string()).is_ok());
        for bad in ["", "../etc", "/etc", "a/../../b", "-x", "./a"] {
            assert!(SharedPath::try_from(bad.to_string()).is_err(), "{bad:?}");
        }
    }
}
