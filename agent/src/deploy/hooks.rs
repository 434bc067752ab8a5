//! Hooks: the operator's named commands (`[hooks] NAME = "command"` in the agent's
//! config) and a release's own `handover.toml`:
//!
//! ```toml
//! [hooks]
//! before_activate = "composer install --no-dev"   # in the new release, before the switch
//! after_activate = "php artisan cache:clear"      # after the switch and reload
//! ```
//!
//! A release's hooks come only from repositories in `allowed_repos` (an apply of any
//! other repository is refused before anything is fetched). All hooks run with
//! `sh -c` in the release directory, with a time limit; their last output lines go
//! back to the caller.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use handover_common::proto::{Failure, FailureKind};
use serde::Deserialize;

use super::command;

/// The release's own manifest file, at the top of the repository.
pub const MANIFEST: &str = "handover.toml";

/// `handover.toml` in a release.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseManifest {
    /// The release's hooks.
    #[serde(default)]
    pub hooks: ReleaseHooks,
}

/// `[hooks]` of a release's `handover.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseHooks {
    /// Run in the new release before `current` switches to it; failing keeps the
    /// old release current.
    pub before_activate: Option<String>,
    /// Run after the switch and reload; failing switches back.
    pub after_activate: Option<String>,
}

/// Reads `release/handover.toml`; a release without one has no hooks.
pub fn read_manifest(release: &Path) -> Result<ReleaseManifest, Failure> {
    let path = release.join(MANIFEST);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(ReleaseManifest::default());
        }
        Err(e) => {
            return Err(Failure::new(
                FailureKind::Failed,
                format!("cannot read the release's {MANIFEST}: {e}"),
            ));
        }
    };
    toml::from_str(&text).map_err(|e| {
        Failure::new(
            FailureKind::Failed,
            format!(
                "the release's {MANIFEST} is invalid: {}; it may only hold [hooks] before_activate and after_activate — fix it in the repository",
                handover_common::toml_error::describe(&text, &e)
            ),
        )
    })
}

/// Runs one hook; `Ok` holds its last output lines, `Err` says how it failed and
/// what it printed last.
pub async fn run(
    label: &str,
    command: &str,
    dir: &Path,
    env: &[(&str, &OsStr)],
    timeout: Duration,
) -> Result<Vec<String>, Failure> {
    let done = command::run_shell(command, dir, env, timeout)
        .await
        .map_err(|e| {
            Failure::new(
                FailureKind::Failed,
                format!("cannot start hook {label} with sh: {e}"),
            )
        })?;
    if done.success() {
        return Ok(done.tail);
    }
    let kind = if done.status.is_none() {
        FailureKind::Timeout
    } else {
        FailureKind::Failed
    };
    Err(Failure::new(
        kind,
        format!(
            "hook {label} {}; last output:\n{}",
            done.describe(timeout),
            indent(&done.tail)
        ),
    ))
}

/// Output lines indented for a failure message.
pub fn indent(lines: &[String]) -> String {
    if lines.is_empty() {
        return "  (none)".into();
    }
    lines
        .iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_with_unknown_keys_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(MANIFEST),
            "[hooks]\nbefore_deploy = \"x\"\n",
        )
        .expect("write");
        let err = read_manifest(dir.path()).expect_err("unknown key");
        assert!(err.message.contains("before_activate"), "{}", err.message);
    }

    #[test]
    fn a_release_without_manifest_has_no_hooks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let manifest = read_manifest(dir.path()).expect("no file is fine");
        assert!(manifest.hooks.before_activate.is_none());
    }
}
