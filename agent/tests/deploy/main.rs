//! Deploy on one host with real git: an agent built in-process from a config file,
//! driven through `deploy::handle` exactly as the dispatcher does; and the real
//! agent binary, driven through its control socket (see `process.rs`).

mod fixture;
mod process;
mod stage;

use std::path::PathBuf;
use std::sync::Arc;

use fixture::{Options, Repo, names_in, snapshot, write_config};
use handover_agent::caller::{Caller, Reporter};
use handover_agent::{Agent, AgentConfig, deploy};
use handover_common::names::{HookName, ReleaseName, RepoUrl, Revision};
use handover_common::proto::deploy::{
    ActivateTarget, DeployProgress, DeployReply, DeployRequest, ReleaseRecord,
};
use handover_common::proto::{Failure, FailureKind, Progress, Response};

struct Host {
    dir: tempfile::TempDir,
    agent: Arc<Agent>,
    repo: RepoUrl,
}

impl Host {
    fn new(repo: &Repo, options: &Options<'_>) -> Host {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(dir.path(), &repo.url, options);
        let config = AgentConfig::load(&path).expect("config loads");
        let agent = Agent::new(config);
        Host {
            dir,
            agent,
            repo: RepoUrl::new(repo.url.clone()).expect("url"),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("www")
    }

    fn current_file(&self, path: &str) -> String {
        std::fs::read_to_string(self.root().join("current").join(path))
            .unwrap_or_else(|e| panic!("current/{path}: {e}"))
    }

    fn current_release(&self) -> Option<String> {
        std::fs::read_link(self.root().join("current"))
            .ok()
            .map(|t| t.display().to_string())
    }

    async fn call(
        &self,
        req: DeployRequest,
    ) -> (Result<DeployReply, Failure>, Vec<DeployProgress>) {
        let (tx, mut rx) = tokio::sync::mpsc::channel(256);
        let reporter = Reporter::new(tx);
        let result = deploy::handle(&self.agent, &Caller::Local, req, &reporter).await;
        drop(reporter);
        let mut progress = Vec::new();
        while let Some(r) = rx.recv().await {
            if let Response::Progress(Progress::Deploy(p)) = r {
                progress.push(p);
            }
        }
        (result, progress)
    }

    async fn apply_with(&self, rev: &str, hooks: &[&str]) -> Result<ReleaseRecord, Failure> {
        let req = DeployRequest::Apply {
            repo: self.repo.clone(),
            rev: Revision::new(rev).expect("valid revision"),
            hooks: hooks
                .iter()
                .map(|h| HookName::new(*h).expect("valid hook name"))
                .collect(),
            force: false,
        };
        match self.call(req).await.0? {
            DeployReply::Applied(r) => Ok(r),
            other => panic!("unexpected reply {other:?}"),
        }
    }

    async fn apply(&self, rev: &str) -> ReleaseRecord {
        self.apply_with(rev, &[])
            .await
            .unwrap_or_else(|f| panic!("apply {rev} failed: {f}"))
    }

    async fn activate(&self, target: ActivateTarget) -> Result<ReleaseRecord, Failure> {
        match self
            .call(DeployRequest::Activate {
                target,
                force: false,
            })
            .await
            .0?
        {
            DeployReply::Activated(r) => Ok(r),
            other => panic!("unexpected reply {other:?}"),
        }
    }

    fn releases_on_disk(&self) -> Vec<String> {
        names_in(&self.root().join("releases"))
    }
}

fn steps(progress: &[DeployProgress]) -> Vec<String> {
    progress
        .iter()
        .map(|DeployProgress::StepFinished { step, .. }| step.to_string())
        .collect()
}

#[tokio::test]
async fn apply_by_tag_branch_full_sha_and_short_sha() {
    let repo = Repo::new();
    let host = Host::new(&repo, &Options::default());

    let r = host.apply("v1").await;
    assert_eq!(host.current_file("VERSION"), "v1\n");
    assert_eq!(r.sha, repo.v1);
    assert_eq!(r.rev, "v1");
    assert!(r.name.as_str().ends_with(&repo.v1[..7]), "{}", r.name);

    // An annotated tag peels to its commit.
    let r = host.apply("v2").await;
    assert_eq!(host.current_file("VERSION"), "v2\n");
    assert_eq!(r.sha, repo.v2);

    host.apply("feature").await;
    assert_eq!(host.current_file("VERSION"), "feature\n");

    let r = host.apply(&repo.v1).await;
    assert_eq!(host.current_file("VERSION"), "v1\n");
    assert_eq!(r.sha, repo.v1);

    let r = host.apply(&repo.v2[..7]).await;
    assert_eq!(host.current_file("VERSION"), "v2\n");
    assert_eq!(r.sha, repo.v2);

    let status = deploy::status(&host.agent)
        .await
        .expect("deploy configured");
    let current = status.current.expect("a current release");
    assert_eq!(current.sha, repo.v2);
    assert_eq!(current.short_sha(), &repo.v2[..7]);
}

#[tokio::test]
async fn an_apply_reports_every_step_in_order() {
    let repo = Repo::new();
    let host = Host::new(
        &repo,
        &Options {
            verify: Some("test -f VERSION"),
            ..Options::default()
        },
    );
    let req = DeployRequest::Apply {
        repo: host.repo.clone(),
        rev: Revision::new("with-hooks").expect("valid"),
        hooks: vec![HookName::new("warm").expect("valid")],
        force: false,
    };
    let (result, progress) = host.call(req).await;
    result.expect("apply succeeds");
    assert_eq!(
        steps(&progress),
        [
            "fetch",
            "resolve",
            "export",
            "link shared",
            "hook warm",
            "hook before_activate",
            "switch",
            "hook after_activate",
            "verify"
        ]
    );
    let DeployProgress::StepFinished { output, .. } = &progress[5];
    assert_eq!(output, &["hook-said-hi".to_string()]);
    assert_eq!(host.current_file("before.txt"), "before\n");
    assert_eq!(host.current_file("warmed"), "");
    assert_eq!(
        std::fs::read_to_string(host.root().join("after.log")).expect("after_activate ran"),
        "after\n"
    );
}

/// The exact files of a release: everything under `current/` but the shared link.
fn release_files(host: &Host) -> Vec<(String, String)> {
    snapshot(
        &host
            .root()
            .join("current")
            .canonicalize()
            .expect("current resolves"),
    )
}

#[tokio::test]
async fn v1_then_v2_then_previous_gives_the_exact_files_of_each() {
    let repo = Repo::new();
    let host = Host::new(&repo, &Options::default());
    let shared = (
        "storage".to_string(),
        format!("-> {}", host.root().join("shared/storage").display()),
    );
    let v1_files = vec![
        ("VERSION".to_string(), "v1\n".to_string()),
        ("app.txt".to_string(), "one\n".to_string()),
        shared.clone(),
    ];
    let v2_files = vec![
        ("VERSION".to_string(), "v2\n".to_string()),
        ("app.txt".to_string(), "two\n".to_string()),
        ("lib/new.txt".to_string(), "new\n".to_string()),
        shared,
    ];

    let first = host.apply("v1").await;
    assert_eq!(release_files(&host), v1_files);
    let second = host.apply("v2").await;
    assert_eq!(release_files(&host), v2_files);

    let back = host
        .activate(ActivateTarget::Previous)
        .await
        .expect("rollback");
    assert_eq!(back.name, first.name);
    assert_eq!(release_files(&host), v1_files);
    // `--previous` again goes forward to the release just left.
    let forward = host
        .activate(ActivateTarget::Previous)
        .await
        .expect("roll forward");
    assert_eq!(forward.name, second.name);
    assert_eq!(release_files(&host), v2_files);
    // And by name.
    host.activate(ActivateTarget::Release(first.name.clone()))
        .await
        .expect("activate by name");
    assert_eq!(host.current_file("VERSION"), "v1\n");

    let unknown = ReleaseName::new("20990101T000000Z-0000000").expect("valid");
    let err = host
        .activate(ActivateTarget::Release(unknown))
        .await
        .expect_err("no such release");
    assert_eq!(err.kind, FailureKind::BadRequest);
    assert_eq!(host.current_file("VERSION"), "v1\n");
}

#[tokio::test]
async fn shared_paths_survive_a_switch() {
    let repo = Repo::new();
    let host = Host::new(&repo, &Options::default());
    host.apply("v1").await;
    std::fs::write(host.root().join("current/storage/upload.txt"), "user data").expect("write");
    host.apply("v2").await;
    assert_eq!(host.current_file("storage/upload.txt"), "user data");
    assert!(
        host.root()
            .join("current/storage")
            .symlink_metadata()
            .expect("exists")
            .file_type()
            .is_symlink()
    );
}

#[tokio::test]
async fn keep_releases_prunes_the_oldest_but_never_current_or_previous() {
    let repo = Repo::new();
    let host = Host::new(
        &repo,
        &Options {
            keep: 3,
            ..Options::default()
        },
    );
    let mut applied = Vec::new();
    for rev in ["v1", "v2", "feature", "v1", "v2"] {
        applied.push(host.apply(rev).await.name.to_string());
    }
    let mut kept = applied[2..].to_vec();
    kept.sort();
    assert_eq!(host.releases_on_disk(), kept);

    // Go back to the oldest kept release: the next apply makes it "previous", and
    // it must stay although it is the oldest; the next oldest goes instead.
    host.activate(ActivateTarget::Release(
        ReleaseName::new(applied[2].clone()).expect("valid"),
    ))
    .await
    .expect("activate");
    let newest = host.apply("feature").await.name.to_string();
    let mut kept = vec![applied[2].clone(), applied[4].clone(), newest.clone()];
    kept.sort();
    assert_eq!(host.releases_on_disk(), kept);

    let DeployReply::Releases(list) = host.call(DeployRequest::Releases).await.0.expect("list")
    else {
        panic!("unexpected reply");
    };
    let listed: Vec<String> = list.releases.iter().map(|r| r.name.to_string()).collect();
    // Newest first, in the order they were built.
    assert_eq!(
        listed,
        [newest.clone(), applied[4].clone(), applied[2].clone()]
    );
    assert_eq!(
        list.previous.map(|n| n.to_string()),
        Some(applied[2].clone())
    );
    assert_eq!(list.current.map(|n| n.to_string()), Some(newest));
}

/// Everything under the agent's directory, to prove a refusal wrote nothing.
fn whole_tree(host: &Host) -> Vec<(String, String)> {
    snapshot(host.dir.path())
}

#[tokio::test]
async fn a_repo_outside_allowed_repos_is_refused_before_anything_runs() {
    let repo = Repo::new();
    let host = Host::new(&repo, &Options::default());
    let before = whole_tree(&host);
    let other = Repo::new();
    let (result, progress) = host
        .call(DeployRequest::Apply {
            repo: RepoUrl::new(other.url.clone()).expect("url"),
            rev: Revision::new("v1").expect("valid"),
            hooks: vec![],
            force: false,
        })
        .await;
    let err = result.expect_err("refused");
    assert_eq!(err.kind, FailureKind::Refused);
    assert!(err.message.contains("allowed_repos"), "{}", err.message);
    assert!(progress.is_empty());
    assert_eq!(whole_tree(&host), before);
    assert!(!host.dir.path().join("state/deploy").exists());
}

#[tokio::test]
async fn a_hook_not_in_config_is_refused_before_anything_runs() {
    let repo = Repo::new();
    let host = Host::new(&repo, &Options::default());
    host.apply("v1").await;
    let before = whole_tree(&host);

    let err = host
        .apply_with("v2", &["rm-rf"])
        .await
        .expect_err("refused");
    assert_eq!(err.kind, FailureKind::Refused);
    assert!(err.message.contains("[hooks]"), "{}", err.message);
    assert_eq!(whole_tree(&host), before);

    let (result, _) = host
        .call(DeployRequest::RunHook(
            HookName::new("rm-rf").expect("valid"),
        ))
        .await;
    assert_eq!(result.expect_err("refused").kind, FailureKind::Refused);
    assert_eq!(whole_tree(&host), before);

    let (result, _) = host
        .call(DeployRequest::RunHook(
            HookName::new("warm").expect("valid"),
        ))
        .await;
    let DeployReply::HookRan(out) = result.expect("configured hook runs") else {
        panic!("unexpected reply");
    };
    assert_eq!(out.output, ["warming"]);
}

#[tokio::test]
async fn an_unknown_revision_fails_and_leaves_current_alone() {
    let repo = Repo::new();
    let host = Host::new(&repo, &Options::default());
    host.apply("v1").await;
    let releases = host.releases_on_disk();
    for rev in ["v9", "no-such-branch", "abcdef1"] {
        let err = host.apply_with(rev, &[]).await.expect_err(rev);
        assert_eq!(err.kind, FailureKind::BadRequest, "{rev}: {err}");
        assert!(err.message.contains("not a branch, tag or commit"), "{err}");
    }
    assert_eq!(host.current_file("VERSION"), "v1\n");
    assert_eq!(host.releases_on_disk(), releases);
}

#[tokio::test]
async fn a_failing_before_activate_hook_leaves_current_untouched() {
    let repo = Repo::new();
    let host = Host::new(&repo, &Options::default());
    host.apply("v1").await;
    let current = host.current_release();
    let releases = host.releases_on_disk();

    let err = host
        .apply_with("bad-hook", &[])
        .await
        .expect_err("hook fails");
    assert_eq!(err.kind, FailureKind::Failed);
    assert!(err.message.contains("before_activate"), "{err}");
    assert!(err.message.contains("exit status 3"), "{err}");
    assert!(err.message.contains("boom"), "{err}");
    assert!(err.message.contains("current was not changed"), "{err}");

    assert_eq!(host.current_release(), current);
    assert_eq!(host.current_file("VERSION"), "v1\n");
    assert_eq!(host.releases_on_disk(), releases);
}

/// Issue 13, hole 3: a release's own hooks ran as root for any ref of an allowed
/// repository. Without `[deploy.release_hooks]` such a release is refused before
/// its hook runs or `current` moves.
#[tokio::test]
async fn release_hooks_are_refused_when_the_agent_does_not_allow_them() {
    let repo = Repo::new();
    let host = Host::new(
        &repo,
        &Options {
            release_hooks: false,
            ..Options::default()
        },
    );
    host.apply("v1").await;
    let current = host.current_release();
    let releases = host.releases_on_disk();

    let err = host
        .apply_with("with-hooks", &[])
        .await
        .expect_err("release hooks are off");
    assert_eq!(err.kind, FailureKind::Refused);
    assert!(err.message.contains("[deploy.release_hooks]"), "{err}");
    assert_eq!(host.current_release(), current);
    assert_eq!(host.releases_on_disk(), releases);
    assert!(
        !host.root().join("after.log").exists(),
        "a release hook ran"
    );
}

#[tokio::test]
async fn a_failing_verify_switches_back() {
    let repo = Repo::new();
    let host = Host::new(
        &repo,
        &Options {
            verify: Some("grep -q v1 VERSION || { echo unhealthy: $(cat VERSION); exit 1; }"),
            ..Options::default()
        },
    );
    host.apply("v1").await;
    let current = host.current_release();
    let releases = host.releases_on_disk();

    let req = DeployRequest::Apply {
        repo: host.repo.clone(),
        rev: Revision::new("v2").expect("valid"),
        hooks: vec![],
        force: false,
    };
    let (result, progress) = host.call(req).await;
    let err = result.expect_err("verify fails");
    assert!(err.message.contains("hook verify exit status 1"), "{err}");
    assert!(err.message.contains("unhealthy: v2"), "{err}");
    assert!(err.message.contains("switched back to"), "{err}");
    let steps = steps(&progress);
    assert_eq!(steps[steps.len() - 2..], ["switch", "switch back"]);

    assert_eq!(host.current_release(), current);
    assert_eq!(host.current_file("VERSION"), "v1\n");
    assert_eq!(host.releases_on_disk(), releases);
    // The failed release is not a rollback target.
    let DeployReply::Releases(list) = host.call(DeployRequest::Releases).await.0.expect("list")
    else {
        panic!("unexpected reply");
    };
    assert_eq!(list.releases.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_applies_at_once_do_not_interleave() {
    let repo = Repo::new();
    let host = Arc::new(Host::new(&repo, &Options::default()));
    let a = {
        let host = host.clone();
        tokio::spawn(async move { host.apply_with("v1", &["log"]).await })
    };
    let b = {
        let host = host.clone();
        tokio::spawn(async move { host.apply_with("v2", &["log"]).await })
    };
    let a = a.await.expect("task").expect("apply v1");
    let b = b.await.expect("task").expect("apply v2");
    let log = std::fs::read_to_string(host.dir.path().join("hooks.log")).expect("hooks ran");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 4, "{log}");
    // Each hook's start is followed by its own end.
    for pair in lines.chunks(2) {
        let started = pair[0].strip_prefix("start ").expect("start line");
        let ended = pair[1].strip_prefix("end ").expect("end line");
        assert_eq!(started, ended, "{log}");
    }
    assert_ne!(a.name, b.name);
}

/// Issue 18: an ad-hoc switch of a host in service (health-check file present,
/// a release current) is refused without `force` and changes nothing; drained,
/// or with `force`, it goes ahead.
#[tokio::test]
async fn a_switch_on_a_host_in_service_needs_force_or_a_drain() {
    let repo = Repo::new();
    let host = Host::new(
        &repo,
        &Options {
            health: true,
            ..Options::default()
        },
    );
    // Nothing is current yet: the first deploy serves nothing it could break.
    let v1 = host.apply("v1").await;
    let before = whole_tree(&host);

    let err = host.apply_with("v2", &[]).await.expect_err("refused");
    assert_eq!(err.kind, FailureKind::Refused, "{err}");
    assert!(
        err.message.contains("health-check file")
            && err.message.contains("drain web-1")
            && err.message.contains("--force"),
        "{err}"
    );
    let err = host
        .activate(ActivateTarget::Previous)
        .await
        .expect_err("refused");
    assert_eq!(err.kind, FailureKind::Refused, "{err}");
    assert_eq!(whole_tree(&host), before, "a refusal must change nothing");

    let (result, _) = host
        .call(DeployRequest::Apply {
            repo: host.repo.clone(),
            rev: Revision::new("v2").expect("valid"),
            hooks: vec![],
            force: true,
        })
        .await;
    result.expect("forced apply");
    assert_eq!(host.current_file("VERSION"), "v2\n");

    // Drained (the file renamed away), the switch needs no force.
    std::fs::remove_file(host.dir.path().join("health.html")).expect("drain");
    let back = host
        .activate(ActivateTarget::Previous)
        .await
        .expect("activate");
    assert_eq!(back.name, v1.name);
}

/// Issue 18: a release the coordinator's health gate failed is shown failed and
/// `activate --previous` skips it (saying so) for the good one before it.
#[tokio::test]
async fn activate_previous_skips_a_release_marked_unhealthy_and_says_so() {
    let repo = Repo::new();
    let host = Host::new(&repo, &Options::default());
    let v1 = host.apply("v1").await;
    let v2 = host.apply("v2").await;
    let bad = host.apply("feature").await;
    let (marked, _) = host
        .call(DeployRequest::MarkUnhealthy {
            release: bad.name.clone(),
            reason: "GET /VERSION answered 500".into(),
        })
        .await;
    assert!(matches!(marked, Ok(DeployReply::Marked(_))), "{marked:?}");
    // The automatic rollback goes back to v2 by name: `feature` is now the
    // release before the last switch.
    host.activate(ActivateTarget::Release(v2.name.clone()))
        .await
        .expect("rollback to v2");

    let DeployReply::Releases(list) = host.call(DeployRequest::Releases).await.0.expect("list")
    else {
        panic!("unexpected reply");
    };
    assert_eq!(list.previous.as_ref(), Some(&v1.name), "{list:?}");
    let shown = list
        .releases
        .iter()
        .find(|r| r.name == bad.name)
        .expect("listed");
    assert_eq!(
        shown.outcome.failure(),
        Some("GET /VERSION answered 500"),
        "{shown:?}"
    );
    assert!(deploy::cli::render_releases(&list).contains("failed: GET /VERSION answered 500"));

    let (result, progress) = host
        .call(DeployRequest::Activate {
            target: ActivateTarget::Previous,
            force: false,
        })
        .await;
    let DeployReply::Activated(record) = result.expect("activate --previous") else {
        panic!("unexpected reply");
    };
    assert_eq!(record.name, v1.name);
    assert_eq!(host.current_file("VERSION"), "v1\n");
    let DeployProgress::StepFinished { detail, .. } = &progress[0];
    assert!(
        detail.contains(&format!("skipped {}", bad.name)),
        "{detail}"
    );

    let (unknown, _) = host
        .call(DeployRequest::MarkUnhealthy {
            release: ReleaseName::new("20990101T000000Z-fffffff").expect("valid"),
            reason: "x".into(),
        })
        .await;
    assert_eq!(unknown.expect_err("unknown").kind, FailureKind::BadRequest);
}

/// Issue 18: an activate whose verify fails switches back and marks the release,
/// so a later `--previous` does not offer it again.
#[tokio::test]
async fn an_activate_that_fails_verify_marks_the_release_unhealthy() {
    let repo = Repo::new();
    let host = Host::new(
        &repo,
        &Options {
            verify: Some("test ! -e \"$HANDOVER_ROOT/../refuse-v1\" || ! grep -q v1 VERSION"),
            ..Options::default()
        },
    );
    let v1 = host.apply("v1").await;
    host.apply("v2").await;
    std::fs::write(host.dir.path().join("refuse-v1"), "").expect("write");
    let err = host
        .activate(ActivateTarget::Previous)
        .await
        .expect_err("verify fails");
    assert!(err.message.contains("switched back to"), "{err}");
    assert_eq!(host.current_file("VERSION"), "v2\n");
    let DeployReply::Releases(list) = host.call(DeployRequest::Releases).await.0.expect("list")
    else {
        panic!("unexpected reply");
    };
    assert_eq!(list.previous, None, "{list:?}");
    let err = host
        .activate(ActivateTarget::Previous)
        .await
        .expect_err("nothing good left");
    assert!(
        err.message.contains("no good previous release") && err.message.contains(v1.name.as_str()),
        "{err}"
    );
}

/// Issue 18: resolving a revision names its commit (an annotated tag peeled) and
/// refuses a missing ref or a foreign repository, without building a release.
#[tokio::test]
async fn resolve_names_the_commit_and_builds_nothing() {
    let repo = Repo::new();
    let host = Host::new(&repo, &Options::default());
    let resolve = |repo: RepoUrl, rev: &str| DeployRequest::Resolve {
        repo,
        rev: Revision::new(rev).expect("valid"),
    };
    let (result, _) = host.call(resolve(host.repo.clone(), "v2")).await;
    let DeployReply::Resolved(found) = result.expect("resolves") else {
        panic!("unexpected reply");
    };
    assert_eq!(found.sha, repo.v2);

    let (result, _) = host.call(resolve(host.repo.clone(), "v9")).await;
    let err = result.expect_err("missing ref");
    assert_eq!(err.kind, FailureKind::BadRequest);
    assert!(err.message.contains("\"v9\""), "{err}");

    let other = Repo::new();
    let foreign = RepoUrl::new(other.url.clone()).expect("url");
    let (result, _) = host.call(resolve(foreign, "v1")).await;
    let err = result.expect_err("foreign repo");
    assert_eq!(err.kind, FailureKind::Refused);
    assert!(err.message.contains("allowed_repos"), "{err}");

    assert!(host.releases_on_disk().is_empty());
    assert_eq!(host.current_release(), None);
}
