//! The system `git`, driven with argument vectors only: every command puts
//! `--end-of-options` (or `--`) before anything that came from a request, on top of
//! the names having been validated already.
//!
//! Each allowed repository has a cached bare mirror under
//! `state_dir/deploy/mirrors/`, so a deploy fetches only what changed, and a
//! release is exported from it with `git archive | tar -x` (no working tree, no
//! `.git` inside the release).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use handover_common::names::{RepoUrl, Revision};
use tokio::process::Command;

use super::command::{self, Finished};

/// Why a git step failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// git (or tar) could not be started.
    #[error("cannot run {program}: {source} — is it installed and on PATH?")]
    Spawn {
        /// Which program.
        program: &'static str,
        /// What exec said.
        source: std::io::Error,
    },
    /// A git command failed.
    #[error("git {step} failed ({how}): {output}")]
    Failed {
        /// Which step.
        step: &'static str,
        /// Exit status or timeout.
        how: String,
        /// The last lines it printed.
        output: String,
    },
    /// The revision names nothing in the repository.
    #[error(
        "{rev:?} is not a branch, tag or commit of {repo} (or a short commit id matching several): check the name with `git ls-remote {repo}`, or give more hex digits"
    )]
    UnknownRevision {
        /// The revision asked for.
        rev: String,
        /// The repository.
        repo: String,
    },
    /// Creating the mirror directory failed.
    #[error("cannot prepare the mirror {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A bare mirror of one repository.
pub struct Mirror {
    dir: PathBuf,
    url: RepoUrl,
    timeout: Duration,
}

impl Mirror {
    /// The mirror of `url` under `mirrors_dir` (not created yet).
    pub fn new(mirrors_dir: &Path, url: &RepoUrl, timeout: Duration) -> Self {
        Mirror {
            dir: mirrors_dir.join(mirror_dir_name(url)),
            url: url.clone(),
            timeout,
        }
    }

    fn git(&self) -> Command {
        let mut cmd = Command::new("git");
        cmd.arg("--git-dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "true")
            .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
        cmd
    }

    async fn run(
        &self,
        step: &'static str,
        cmd: Command,
        keep_stdout: bool,
    ) -> Result<Finished, GitError> {
        let done = command::run(cmd, self.timeout, keep_stdout)
            .await
            .map_err(|source| GitError::Spawn {
                program: "git",
                source,
            })?;
        if !done.success() {
            return Err(GitError::Failed {
                step,
                how: done.describe(self.timeout),
                output: done.tail.join(" | "),
            });
        }
        Ok(done)
    }

    /// Creates the mirror on first use, then fetches every branch and tag.
    pub async fn fetch(&self) -> Result<Finished, GitError> {
        if !self.dir.join("HEAD").exists() {
            std::fs::create_dir_all(&self.dir).map_err(|source| GitError::Io {
                path: self.dir.clone(),
                source,
            })?;
            let mut init = Command::new("git");
            init.args(["init", "--bare", "--quiet", "--"])
                .arg(&self.dir)
                .stdin(Stdio::null());
            self.run("init", init, false).await?;
        }
        let mut fetch = self.git();
        fetch
            .args([
                "fetch",
                "--quiet",
                "--force",
                "--prune",
                "--no-recurse-submodules",
                "--end-of-options",
            ])
            .arg(self.url.as_str())
            .args(["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]);
        self.run("fetch", fetch, false).await
    }

    /// The full commit id `rev` names: a tag, then a branch, then a commit id.
    pub async fn resolve(&self, rev: &Revision) -> Result<String, GitError> {
        let mut candidates = Vec::new();
        if rev.as_str().starts_with("refs/") {
            candidates.push(rev.as_str().to_string());
        } else {
            candidates.push(format!("refs/tags/{rev}"));
            candidates.push(format!("refs/heads/{rev}"));
        }
        for candidate in candidates {
            if let Some(sha) = self.rev_parse(&candidate).await? {
                return Ok(sha);
            }
        }
        if rev.is_commit_id()
            && let Some(sha) = self.rev_parse(rev.as_str()).await?
        {
            return Ok(sha);
        }
        Err(self.unknown(rev))
    }

    fn unknown(&self, rev: &Revision) -> GitError {
        GitError::UnknownRevision {
            rev: rev.to_string(),
            repo: self.url.to_string(),
        }
    }

    /// The commit `name` peels to, or `None` when it names no commit.
    async fn rev_parse(&self, name: &str) -> Result<Option<String>, GitError> {
        let mut cmd = self.git();
        cmd.args(["rev-parse", "--verify", "--quiet", "--end-of-options"])
            .arg(format!("{name}^{{commit}}"));
        let done = command::run(cmd, self.timeout, true)
            .await
            .map_err(|source| GitError::Spawn {
                program: "git",
                source,
            })?;
        if !done.success() {
            return Ok(None);
        }
        let sha = String::from_utf8_lossy(&done.stdout).trim().to_string();
        Ok((sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit())).then_some(sha))
    }

    /// Writes the files of commit `sha` into the existing, empty directory `dest`.
    pub async fn export(&self, sha: &str, dest: &Path) -> Result<(), GitError> {
        let mut archive = self.git();
        archive
            .args(["archive", "--format=tar", "--end-of-options"])
            .arg(sha)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut archive = archive.spawn().map_err(|source| GitError::Spawn {
            program: "git",
            source,
        })?;
        let tar_input: Stdio = archive
            .stdout
            .take()
            .and_then(|out| out.try_into().ok())
            .ok_or_else(|| GitError::Failed {
                step: "archive",
                how: "no output pipe".into(),
                output: String::new(),
            })?;
        let mut tar = Command::new("tar");
        tar.args(["-x", "--no-same-owner", "-f", "-", "-C"])
            .arg(dest)
            .stdin(tar_input);
        let untar = command::run(tar, self.timeout, false);
        let archived = async {
            let out = archive.wait_with_output().await;
            out.map(|o| {
                (
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim().to_string(),
                )
            })
        };
        let (untar, archived) = tokio::join!(untar, archived);
        let untar = untar.map_err(|source| GitError::Spawn {
            program: "tar",
            source,
        })?;
        let (status, stderr) = archived.map_err(|source| GitError::Spawn {
            program: "git",
            source,
        })?;
        if !status.success() {
            return Err(GitError::Failed {
                step: "archive",
                how: status.to_string(),
                output: stderr,
            });
        }
        if !untar.success() {
            return Err(GitError::Failed {
                step: "archive | tar",
                how: untar.describe(self.timeout),
                output: untar.tail.join(" | "),
            });
        }
        Ok(())
    }
}

/// A directory name for the mirror of `url`: readable, and unique per URL (a
/// stable FNV-1a hash of the exact text, since two URLs may read alike).
fn mirror_dir_name(url: &RepoUrl) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in url.as_str().bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let readable: String = url
        .as_str()
        .rsplit('/')
        .find(|s| !s.is_empty())
        .unwrap_or("repo")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .take(40)
        .collect::<String>()
        .replace("..", "");
    format!("{hash:016x}-{readable}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_names_differ_for_urls_that_read_alike() {
        let a = RepoUrl::new("file:///srv/a/app.git").expect("valid");
        let b = RepoUrl::new("file:///srv/b/app.git").expect("valid");
        assert_ne!(mirror_dir_name(&a), mirror_dir_name(&b));
        assert!(mirror_dir_name(&a).ends_with("-app.git"));
        let dots = RepoUrl::new("file:///srv/..").expect("valid");
        assert!(!mirror_dir_name(&dots).contains(".."));
    }
}
