//! A real git repository served over file://, and an agent config around it.
//!
//! A thin layer over the e2e harness (`handover-tests`, a dev-dependency): git runs
//! through `handover_tests::git` and the config is rendered by
//! `handover_tests::config`, so both have one copy. What stays here is what only
//! these tests need: a repository with branches whose hooks misbehave, and an
//! agent that runs in-process (from a config with relative paths) or as a daemon
//! with certificates made by `handover_common::pki` — the e2e harness's
//! `AgentProcess` needs the `handover` binary to issue them, which an agent-only
//! build does not have.

use std::path::{Path, PathBuf};

use handover_tests::config::{AgentConfig, AgentSections, Deploy, Health, ReleaseHooks};

/// Runs git in `dir` and returns its trimmed stdout; panics with git's stderr.
pub fn git(dir: &Path, args: &[&str]) -> String {
    handover_tests::git::git(dir, args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A bare repository with:
/// * tag `v1` (VERSION says v1) and annotated tag `v2` (VERSION says v2) on `main`;
/// * branch `feature` (VERSION says feature);
/// * branch `with-hooks`: a `handover.toml` whose hooks leave files behind;
/// * branch `bad-hook`: `before_activate` prints "boom" and exits 3;
/// * branch `slow-hook`: `before_activate` writes its process group id to
///   `$HANDOVER_ROOT/slow-started` and sleeps.
pub struct Repo {
    /// Keeps the files.
    pub _dir: tempfile::TempDir,
    /// `file:///…/app.git`.
    pub url: String,
    /// Full commit ids.
    pub v1: String,
    /// Full commit id of v2.
    pub v2: String,
}

fn commit_files(work: &Path, files: &[(&str, &str)], message: &str) -> String {
    for (path, text) in files {
        let p = work.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(p, text).expect("write");
    }
    git(work, &["add", "-A"]);
    git(work, &["commit", "-q", "-m", message]);
    git(work, &["rev-parse", "HEAD"])
}

impl Repo {
    /// Builds the repository.
    pub fn new() -> Repo {
        let dir = tempfile::tempdir().expect("tempdir");
        let work = dir.path().join("work");
        std::fs::create_dir(&work).expect("mkdir");
        git(&work, &["init", "-q", "-b", "main"]);
        let v1 = commit_files(&work, &[("VERSION", "v1\n"), ("app.txt", "one\n")], "v1");
        git(&work, &["tag", "v1"]);
        let v2 = commit_files(
            &work,
            &[
                ("VERSION", "v2\n"),
                ("app.txt", "two\n"),
                ("lib/new.txt", "new\n"),
            ],
            "v2",
        );
        git(&work, &["tag", "-a", "v2", "-m", "release v2"]);
        let branch = |name: &str, files: &[(&str, &str)]| {
            git(&work, &["checkout", "-q", "-b", name, "main"]);
            commit_files(&work, files, name);
            git(&work, &["checkout", "-q", "main"]);
        };
        branch("feature", &[("VERSION", "feature\n")]);
        branch(
            "with-hooks",
            &[(
                "handover.toml",
                "[hooks]\nbefore_activate = \"echo before > before.txt; echo hook-said-hi\"\nafter_activate = \"echo after >> \\\"$HANDOVER_ROOT/after.log\\\"\"\n",
            )],
        );
        branch(
            "bad-hook",
            &[(
                "handover.toml",
                "[hooks]\nbefore_activate = \"echo boom; exit 3\"\n",
            )],
        );
        branch(
            "slow-hook",
            &[(
                "handover.toml",
                "[hooks]\nbefore_activate = \"echo $$ > \\\"$HANDOVER_ROOT/slow.tmp\\\" && mv \\\"$HANDOVER_ROOT/slow.tmp\\\" \\\"$HANDOVER_ROOT/slow-started\\\"; sleep 20\"\n",
            )],
        );
        let bare = dir.path().join("app.git");
        git(
            dir.path(),
            &[
                "clone",
                "-q",
                "--bare",
                "--",
                "work",
                &bare.display().to_string(),
            ],
        );
        let url = format!("file://{}", bare.display());
        Repo {
            _dir: dir,
            url,
            v1,
            v2,
        }
    }
}

/// What goes into the agent's config besides the repository.
pub struct Options<'a> {
    /// `[deploy] verify`.
    pub verify: Option<&'a str>,
    /// `[deploy] keep_releases`.
    pub keep: usize,
    /// UDP listen address (for agents run as a process).
    pub listen: &'a str,
    /// `[deploy.release_hooks] run_as` = the user running the tests; `false` leaves
    /// a release's own hooks off (the default of a real agent).
    pub release_hooks: bool,
    /// `[health] file = "health.html"` (written, so the host is in service).
    pub health: bool,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            verify: None,
            keep: 5,
            listen: "127.0.0.1:0",
            release_hooks: true,
            health: false,
        }
    }
}

/// Writes `dir/agent.toml` for `repo_url` and returns its path. Certificates are
/// expected at `dir/pki/` (only the daemon reads them).
pub fn write_config(dir: &Path, repo_url: &str, options: &Options<'_>) -> PathBuf {
    let release_hooks = options.release_hooks.then(|| {
        let me = nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .expect("the test user has a name");
        ReleaseHooks { run_as: me.name }
    });
    let health = options.health.then(|| {
        std::fs::write(dir.join("health.html"), "OK\n").expect("write health file");
        Health {
            file: "health.html".into(),
        }
    });
    let top = AgentConfig {
        name: "web-1".into(),
        listen: options.listen.parse().expect("listen address"),
        ca: "pki/ca.pem".into(),
        cert: "pki/web-1.pem".into(),
        key: "pki/web-1.key".into(),
        state_dir: "state".into(),
        control_socket: "state/control.sock".into(),
    };
    let sections = AgentSections {
        health,
        deploy: Some(Deploy {
            keep_releases: Some(options.keep),
            shared: vec!["storage".into()],
            hook_timeout: Some("60s".into()),
            verify: options.verify.map(str::to_owned),
            release_hooks,
            ..Deploy::new("www".into(), repo_url)
        }),
        hooks: [
            (
                "warm".into(),
                "echo warming; touch \"$HANDOVER_RELEASE_DIR/warmed\"".into(),
            ),
            (
                "log".into(),
                "echo start $HANDOVER_RELEASE >> \"$HANDOVER_ROOT/../hooks.log\"; sleep 0.3; echo end $HANDOVER_RELEASE >> \"$HANDOVER_ROOT/../hooks.log\"".into(),
            ),
        ]
        .into(),
        ..AgentSections::default()
    };
    let path = dir.join("agent.toml");
    std::fs::write(&path, format!("{}{}", top.render(), sections.render()))
        .expect("write agent.toml");
    path
}

/// Every file under `dir` (following no links), relative, sorted, with contents;
/// symlinks appear as `-> target`.
pub fn snapshot(dir: &Path) -> Vec<(String, String)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry"))
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let rel = path
                .strip_prefix(base)
                .expect("inside")
                .display()
                .to_string();
            let ft = e.file_type().expect("file type");
            if std::os::unix::fs::FileTypeExt::is_socket(&ft) {
                out.push((rel, "(socket)".into()));
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path).expect("readlink");
                out.push((rel, format!("-> {}", target.display())));
            } else if ft.is_dir() {
                walk(base, &path, out);
            } else {
                let bytes = std::fs::read(&path).expect("read");
                out.push((rel, String::from_utf8_lossy(&bytes).into_owned()));
            }
        }
    }
    let mut out = Vec::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out
}

/// Names in `dir` (empty when it does not exist).
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}
