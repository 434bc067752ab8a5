//! Staging (issue 14): a release made ready beside `current`, then applied by
//! switching only; reused only when it is complete and what the apply asks for.

use std::sync::Arc;

use handover_agent::caller::{Caller, Reporter};
use handover_agent::{Agent, AgentConfig, deploy};
use handover_common::names::{HookName, Revision};
use handover_common::proto::deploy::{
    DeployProgress, DeployReply, DeployRequest, ReleaseOutcome, ReleaseRecord,
};
use handover_common::proto::{Failure, Progress, Response};

use super::fixture::{Options, Repo};
use super::{Host, steps};

/// Calls `req` as a coordinator of `rollout` would (the frame's rollout id).
async fn call_in(
    agent: &Arc<Agent>,
    rollout: Option<&str>,
    req: DeployRequest,
) -> (Result<DeployReply, Failure>, Vec<DeployProgress>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let reporter = Reporter::new(tx);
    let caller = Caller::Coordinator("bastion".into());
    let result = deploy::handle_in(agent, &caller, rollout, req, &reporter).await;
    drop(reporter);
    let mut progress = Vec::new();
    while let Some(r) = rx.recv().await {
        if let Response::Progress(Progress::Deploy(p)) = r {
            progress.push(p);
        }
    }
    (result, progress)
}

fn hooks(names: &[&str]) -> Vec<HookName> {
    names
        .iter()
        .map(|h| HookName::new(*h).expect("hook name"))
        .collect()
}

async fn stage(
    host: &Host,
    rollout: Option<&str>,
    rev: &str,
    hook_names: &[&str],
) -> (Result<ReleaseRecord, Failure>, Vec<String>) {
    let req = DeployRequest::Stage {
        repo: host.repo.clone(),
        rev: Revision::new(rev).expect("revision"),
        hooks: hooks(hook_names),
    };
    let (result, progress) = call_in(&host.agent, rollout, req).await;
    let result = result.map(|reply| match reply {
        DeployReply::Staged(r) => r,
        other => panic!("unexpected reply {other:?}"),
    });
    (result, steps(&progress))
}

async fn apply_in(
    host: &Host,
    rollout: Option<&str>,
    rev: &str,
    hook_names: &[&str],
) -> (ReleaseRecord, Vec<String>) {
    let req = DeployRequest::Apply {
        repo: host.repo.clone(),
        rev: Revision::new(rev).expect("revision"),
        hooks: hooks(hook_names),
        force: true,
    };
    let (result, progress) = call_in(&host.agent, rollout, req).await;
    match result {
        Ok(DeployReply::Applied(r)) => (r, steps(&progress)),
        other => panic!("apply {rev}: {other:?}"),
    }
}

/// A staged release (hooks and `before_activate` run at staging) is applied by
/// the rollout that staged it with the switch and what runs at switch time
/// only: no fetch, no export, no second release.
#[tokio::test]
async fn a_staged_release_is_applied_by_switching_only() {
    let repo = Repo::new();
    let host = Host::new(&repo, &Options::default());
    host.apply("v1").await;
    let (staged, done) = stage(&host, Some("r-1"), "with-hooks", &["warm"]).await;
    let staged = staged.expect("stages");
    assert_eq!(
        done,
        [
            "fetch",
            "resolve",
            "export",
            "link shared",
            "hook warm",
            "hook before_activate",
            "stage"
        ]
    );
    assert_eq!(staged.outcome, ReleaseOutcome::Staged);
    assert_eq!(host.current_file("VERSION"), "v1\n", "current did not move");
    assert!(!host.root().join("after.log").exists());
    assert_eq!(host.releases_on_disk().len(), 2);

    let (applied, done) = apply_in(&host, Some("r-1"), "with-hooks", &["warm"]).await;
    assert_eq!(done, ["stage", "switch", "hook after_activate"]);
    assert_eq!(applied.name, staged.name);
    assert_eq!(applied.outcome, ReleaseOutcome::Activated);
    assert_eq!(host.current_file("before.txt"), "before\n");
    assert_eq!(host.current_file("warmed"), "");
    assert_eq!(host.releases_on_disk().len(), 2, "no second build");
}

/// Staging again answers at once; outside the rollout that staged it, an apply
/// fetches first and reuses the release only for the same commit and hooks.
#[tokio::test]
async fn staging_is_idempotent_and_other_callers_reuse_only_the_same_commit_and_hooks() {
    let repo = Repo::new();
    let host = Host::new(&repo, &Options::default());
    host.apply("v1").await;
    let (first, _) = stage(&host, Some("r-1"), "v2", &[]).await;
    let first = first.expect("stages");
    let (again, done) = stage(&host, Some("r-1"), "v2", &[]).await;
    assert_eq!(again.expect("stages").name, first.name);
    assert_eq!(done, ["stage"], "nothing fetched or built again");

    // Other hooks: not what was staged, so it is built afresh.
    let (other, done) = apply_in(&host, Some("r-1"), "v2", &["warm"]).await;
    assert_ne!(other.name, first.name);
    assert!(done.contains(&"export".to_string()), "{done:?}");

    let (second, _) = stage(&host, Some("r-2"), "feature", &[]).await;
    let second = second.expect("stages");
    let (applied, done) = apply_in(&host, None, "feature", &[]).await;
    assert_eq!(applied.name, second.name);
    assert_eq!(done, ["fetch", "resolve", "stage", "switch"]);
    assert_eq!(host.current_file("VERSION"), "feature\n");
}

/// A staged release whose directory went away is built again, never half-used;
/// a staging that failed leaves nothing behind and `current` where it was.
#[tokio::test]
async fn a_vanished_or_failed_staging_is_never_used() {
    let repo = Repo::new();
    let host = Host::new(&repo, &Options::default());
    host.apply("v1").await;
    let (staged, _) = stage(&host, Some("r-1"), "v2", &[]).await;
    let staged = staged.expect("stages");
    std::fs::remove_dir_all(host.root().join("releases").join(staged.name.as_str()))
        .expect("remove the staged directory");
    let (applied, done) = apply_in(&host, Some("r-1"), "v2", &[]).await;
    assert!(
        done.contains(&"export".to_string()),
        "built again: {done:?}"
    );
    assert_eq!(applied.outcome, ReleaseOutcome::Activated);
    assert_eq!(host.current_file("VERSION"), "v2\n");

    let before = host.releases_on_disk();
    let (failed, _) = stage(&host, Some("r-2"), "bad-hook", &[]).await;
    let failed = failed.expect_err("before_activate fails at staging");
    assert!(failed.message.contains("before_activate"), "{failed}");
    assert_eq!(host.releases_on_disk(), before, "nothing left behind");
    assert_eq!(host.current_file("VERSION"), "v2\n");
}

/// An agent killed mid-staging (here: the staging dropped while its hook runs,
/// then the agent started again) removes the half-built release at start; the
/// next stage builds it again.
#[tokio::test]
async fn a_staging_cut_short_is_removed_at_start_and_built_again() {
    let repo = Repo::new();
    let host = Host::new(&repo, &Options::default());
    host.apply("v1").await;
    let before = host.releases_on_disk();
    let slow = stage(&host, Some("r-1"), "slow-hook", &[]);
    let started = host.root().join("slow-started");
    tokio::select! {
        _ = slow => panic!("the slow hook finished"),
        () = async {
            while !started.exists() {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        } => {}
    }
    assert_eq!(
        host.releases_on_disk().len(),
        before.len() + 1,
        "half-built"
    );
    let config = AgentConfig::load(&host.dir.path().join("agent.toml")).expect("config");
    let restarted = Agent::new(config);
    deploy::recover(&restarted).expect("recovers");
    assert_eq!(
        host.releases_on_disk(),
        before,
        "the half-built release is gone"
    );
    let host = Host {
        agent: restarted,
        ..host
    };
    let (staged, done) = stage(&host, Some("r-1"), "v2", &[]).await;
    staged.expect("stages again");
    assert!(done.contains(&"export".to_string()), "{done:?}");
}

/// Pruning keeps a staged release (a wave still to come will use it) as well as
/// `current` and the previous release.
#[tokio::test]
async fn pruning_never_removes_a_staged_release() {
    let repo = Repo::new();
    let host = Host::new(
        &repo,
        &Options {
            keep: 2,
            ..Options::default()
        },
    );
    host.apply("v1").await;
    host.apply("feature").await;
    let (staged, _) = stage(&host, Some("r-1"), "v2", &[]).await;
    let staged = staged.expect("stages");
    // Another apply while v2 waits for its wave: current, previous and the
    // staged one stay, although that is more than keep_releases.
    let newest = host.apply("v1").await;
    let on_disk = host.releases_on_disk();
    assert!(on_disk.contains(&staged.name.to_string()), "{on_disk:?}");
    assert!(on_disk.contains(&newest.name.to_string()), "{on_disk:?}");
    assert_eq!(on_disk.len(), 3, "{on_disk:?}");
    let (applied, done) = apply_in(&host, Some("r-1"), "v2", &[]).await;
    assert_eq!(applied.name, staged.name);
    assert_eq!(done[0], "stage");
}
