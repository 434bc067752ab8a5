//! Real git repositories for tests: a bare repository served over file://, with
//! tagged revisions whose files say which they are.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// Runs git in `dir` with a fixed identity; returns its trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Handover Test",
            "-c",
            "user.email=t@example.invalid",
            "-c",
            "commit.gpgSign=false",
            "-c",
            "tag.gpgSign=false",
        ])
        .args(args)
        .output()
        .context("running git")?;
    if !out.status.success() {
        bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One revision to commit and tag: its tag and its files (path, contents).
pub struct Revision<'a> {
    /// The tag.
    pub tag: &'a str,
    /// Files written (over the previous revision's) before the commit.
    pub files: Vec<(&'a str, String)>,
}

/// Creates `dir/app.git` (bare) holding `revisions` in order, each tagged, and
/// returns its file:// URL.
pub fn bare_repo(dir: &Path, revisions: &[Revision<'_>]) -> anyhow::Result<String> {
    let work = dir.join("app-work");
    std::fs::create_dir_all(&work)?;
    git(&work, &["init", "-q", "-b", "main"])?;
    for rev in revisions {
        for (path, contents) in &rev.files {
            let file = work.join(path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&file, contents)?;
        }
        git(&work, &["add", "-A"])?;
        git(&work, &["commit", "-q", "--allow-empty", "-m", rev.tag])?;
        git(&work, &["tag", rev.tag])?;
    }
    let bare = dir.join("app.git");
    git(
        dir,
        &[
            "clone",
            "-q",
            "--bare",
            "--",
            "app-work",
            &bare.display().to_string(),
        ],
    )?;
    Ok(format!("file://{}", bare.display()))
}

/// The usual test repository: v1 and v2 (`VERSION` and `index.html` say so), and
/// `v3-broken`, whose VERSION says "broken" (an agent `verify` can refuse it).
pub fn versions_repo(dir: &Path) -> anyhow::Result<String> {
    let page = |v: &str| format!("<html><body>shop {v}</body></html>\n");
    bare_repo(
        dir,
        &[
            Revision {
                tag: "v1",
                files: vec![("VERSION", "v1\n".into()), ("index.html", page("v1"))],
            },
            Revision {
                tag: "v2",
                files: vec![("VERSION", "v2\n".into()), ("index.html", page("v2"))],
            },
            Revision {
                tag: "v3-broken",
                files: vec![("VERSION", "broken\n".into()), ("index.html", page("v3"))],
            },
        ],
    )
}
