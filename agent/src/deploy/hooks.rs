//! Hooks: the operator's named commands (`[hooks] NAME = "command"` in the agent's
//! config) and a release's own `handover.toml`:
//!
//! ```toml
//! [hooks]
//! before_activate = "composer install --no-dev"   # in the new release, before the switch
//! after_activate = "php artisan cache:clear"      # after the switch and reload
//! ```
//!
//! The operator's hooks run as the agent (root): they come from its own config. A
//! release's hooks come from whoever can push to an allowed repository, any ref of
//! it, so they run only where the agent's config says so (issue 13, hole 3):
//! `[deploy.release_hooks] run_as = "USER"` turns them on, as that unprivileged user,
//! who is given the new release's files first; without it a release that carries
//! hooks is refused before anything switches. All hooks run with `sh -c` in the
//! release directory, with a time limit and a cleared environment (see
//! [`command`]); their last output lines go back to the caller.
//!
//! The manifest is read as hostile input (hole 8): opened without following a link,
//! only as a regular file directly inside the release, size-limited, and an error
//! about it never quotes the file (a line may hold a secret, and the error travels
//! to the coordinator and into `releases.json`).

use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;

use handover_common::proto::{Failure, FailureKind};
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstat};
use serde::Deserialize;

use super::command::{self, RunAs, Shell};

/// The release's own manifest file, at the top of the repository.
pub const MANIFEST: &str = "handover.toml";

/// A manifest larger than this is refused (it holds two command lines).
const MANIFEST_MAX_BYTES: u64 = 64 * 1024;

/// `[deploy.release_hooks]` in the agent's config: a release's own hooks run, as
/// `run_as`. Absent: they do not run, and a release that has any is refused.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseHooksConfig {
    /// The unprivileged user a release's hooks run as.
    pub run_as: RunAs,
}

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

impl ReleaseManifest {
    /// Whether the release carries any hook.
    pub fn has_hooks(&self) -> bool {
        self.hooks.before_activate.is_some() || self.hooks.after_activate.is_some()
    }

    /// The user its hooks run as; a release with hooks is refused when the agent
    /// does not run release hooks, so nothing has run or switched.
    pub fn run_as<'a>(
        &self,
        policy: Option<&'a ReleaseHooksConfig>,
    ) -> Result<Option<&'a RunAs>, Failure> {
        match policy {
            Some(policy) => Ok(Some(&policy.run_as)),
            None if self.has_hooks() => Err(Failure::new(
                FailureKind::Refused,
                format!(
                    "the release's {MANIFEST} has hooks (before_activate/after_activate), but this agent does not run a release's own hooks: \
                     allow them in agent.toml with `[deploy.release_hooks]` `run_as = \"deploy\"` (an unprivileged user), \
                     or remove them from the repository; current was not changed"
                ),
            )),
            None => Ok(None),
        }
    }
}

fn manifest_failure(why: impl std::fmt::Display) -> Failure {
    Failure::new(
        FailureKind::Failed,
        format!(
            "the release's {MANIFEST} {why}; fix it in the repository (current was not changed)"
        ),
    )
}

/// Reads `release/handover.toml`; a release without one has no hooks.
pub fn read_manifest(release: &Path) -> Result<ReleaseManifest, Failure> {
    let Some(text) = read_manifest_text(release)? else {
        return Ok(ReleaseManifest::default());
    };
    toml::from_str(&text).map_err(|e| {
        // The line number only: toml's message may quote the value at fault.
        let line = e
            .span()
            .and_then(|span| text.get(..span.start))
            .map(|before| before.matches('\n').count() + 1);
        let at = line.map(|l| format!(" at line {l}")).unwrap_or_default();
        manifest_failure(format_args!(
            "is invalid{at}: it may only hold [hooks] before_activate and after_activate, each a string (its content is not shown here)"
        ))
    })
}

/// The manifest's text: `None` when there is none; refused when it is a link, not
/// a regular file, too large or not UTF-8.
fn read_manifest_text(release: &Path) -> Result<Option<String>, Failure> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let dir = nix::fcntl::open(release, flags, Mode::empty()).map_err(|e| {
        manifest_failure(format_args!(
            "cannot be read: the release directory cannot be opened ({e})"
        ))
    })?;
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let fd = match openat(dir.as_fd(), MANIFEST, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP) => {
            return Err(manifest_failure(
                "is a symbolic link: it must be a plain file in the repository",
            ));
        }
        Err(e) => return Err(manifest_failure(format_args!("cannot be opened: {e}"))),
    };
    let stat =
        fstat(fd.as_fd()).map_err(|e| manifest_failure(format_args!("cannot be read: {e}")))?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(manifest_failure("is not a regular file"));
    }
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(MANIFEST_MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| manifest_failure(format_args!("cannot be read: {e}")))?;
    if bytes.len() as u64 > MANIFEST_MAX_BYTES {
        return Err(manifest_failure(format_args!(
            "is larger than {} KiB",
            MANIFEST_MAX_BYTES / 1024
        )));
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| manifest_failure("is not UTF-8 text"))
}

/// Gives the release's files to `user`, links themselves and never what they point
/// to (a link into shared/ is not followed), so its hooks can build in it.
///
/// Children before their directory: a directory is still root's while its
/// entries are handled, so the user (who may already run processes, e.g. as the
/// web server) cannot swap an entry for a link that this walk would then follow.
pub fn give_to(release: &Path, user: &RunAs) -> std::io::Result<()> {
    let (uid, gid) = (Some(user.uid().as_raw()), Some(user.gid().as_raw()));
    for entry in std::fs::read_dir(release)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            give_to(&path, user)?;
        } else {
            std::os::unix::fs::lchown(&path, uid, gid)?;
        }
    }
    std::os::unix::fs::lchown(release, uid, gid)
}

/// Runs one hook; `Ok` holds its last output lines, `Err` says how it failed and
/// what it printed last.
pub async fn run(label: &str, shell: &Shell<'_>) -> Result<Vec<String>, Failure> {
    run_reporting(label, shell).await.map(|(tail, _)| tail)
}

/// Runs one hook like [`run`]; `Ok` also holds the last non-empty line of its
/// stdout, where a hook reports what it made (see [`super::artifact`]).
pub async fn run_reporting(
    label: &str,
    shell: &Shell<'_>,
) -> Result<(Vec<String>, Option<String>), Failure> {
    let done = command::run_shell(shell).await.map_err(|e| {
        Failure::new(
            FailureKind::Failed,
            format!("cannot start hook {label} with sh: {e}"),
        )
    })?;
    if done.success() {
        return Ok((done.tail, done.last_stdout_line));
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
            done.describe(shell.timeout),
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

    /// Issue 13, hole 8: the manifest read followed a symlinked handover.toml out
    /// of the release.
    #[test]
    fn a_symlinked_manifest_is_refused_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = dir.path().join("secret.toml");
        std::fs::write(
            &outside,
            "[hooks]\nbefore_activate = \"echo from outside\"\n",
        )
        .expect("write");
        let release = dir.path().join("release");
        std::fs::create_dir(&release).expect("mkdir");
        std::os::unix::fs::symlink(&outside, release.join(MANIFEST)).expect("link");
        let err = read_manifest(&release).expect_err("a link");
        assert!(err.message.contains("symbolic link"), "{}", err.message);

        std::fs::remove_file(release.join(MANIFEST)).expect("rm");
        std::fs::create_dir(release.join(MANIFEST)).expect("a directory instead");
        let err = read_manifest(&release).expect_err("a directory");
        assert!(
            err.message.contains("not a regular file"),
            "{}",
            err.message
        );
    }

    /// Issue 13, hole 8: a TOML error echoed the line at fault, which carried a
    /// secret back to the coordinator and into releases.json.
    #[test]
    fn a_manifest_error_never_quotes_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        for text in [
            "[hooks]\nbefore_activate = \"ok\"\ndb_password = \"hunter2-secret\"\n",
            "[hooks]\nbefore_activate = \"hunter2-secret\n",
            "[hooks]\nbefore_activate = [\"hunter2-secret\"]\n",
            "hunter2-secret\n",
        ] {
            std::fs::write(dir.path().join(MANIFEST), text).expect("write");
            let err = read_manifest(dir.path()).expect_err("invalid");
            assert!(!err.message.contains("hunter2"), "{}", err.message);
            assert!(err.message.contains("line"), "{}", err.message);
        }
    }

    /// Issue 13, hole 3: a release's hooks ran as root for any ref of an allowed
    /// repository; without `[deploy.release_hooks]` they are refused.
    #[test]
    fn release_hooks_are_refused_unless_the_agent_names_a_user() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(MANIFEST),
            "[hooks]\nafter_activate = \"id\"\n",
        )
        .expect("write");
        let manifest = read_manifest(dir.path()).expect("valid");
        let err = manifest.run_as(None).expect_err("off by default");
        assert_eq!(err.kind, FailureKind::Refused);
        assert!(err.message.contains("run_as"), "{}", err.message);
        let policy: ReleaseHooksConfig =
            toml::from_str("run_as = \"nobody\"").expect("nobody exists");
        assert_eq!(
            manifest.run_as(Some(&policy)).expect("on").map(RunAs::name),
            Some("nobody")
        );
        assert!(
            ReleaseManifest::default()
                .run_as(None)
                .expect("no hooks")
                .is_none()
        );
    }

    /// Issue 13, hole 3: the release is given to the hook user without following
    /// a link out of it (a shared/ link, or one the repository ships).
    #[test]
    fn giving_a_release_away_never_follows_its_links() {
        use std::os::unix::fs::MetadataExt;
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: only root can give files to another user");
            return;
        }
        let nobody = RunAs::try_from("nobody".to_string()).expect("nobody exists");
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).expect("outside");
        std::fs::write(outside.join("secret"), "x").expect("secret");
        let release = dir.path().join("release");
        std::fs::create_dir_all(release.join("lib")).expect("release");
        std::fs::write(release.join("lib/app.php"), "x").expect("file");
        std::os::unix::fs::symlink(&outside, release.join("lib/escape")).expect("link");
        give_to(&release, &nobody).expect("give");
        let owner = |p: &Path| std::fs::symlink_metadata(p).expect("meta").uid();
        for p in [
            release.clone(),
            release.join("lib"),
            release.join("lib/app.php"),
            release.join("lib/escape"),
        ] {
            assert_eq!(owner(&p), nobody.uid().as_raw(), "{}", p.display());
        }
        assert_eq!(owner(&outside), 0);
        assert_eq!(owner(&outside.join("secret")), 0);
    }
}
