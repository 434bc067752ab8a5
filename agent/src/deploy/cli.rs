//! `handover-agent deploy|releases|activate|hook`: the local operator's commands,
//! sent to the running daemon through its control socket (the same requests a
//! coordinator sends).

use std::path::Path;
use std::process::ExitCode;

use handover_common::names::{HookName, ReleaseName, RepoUrl, Revision};
use handover_common::proto::deploy::{
    ActivateTarget, DeployProgress, DeployReply, DeployRequest, ReleaseList, ReleaseRecord,
};
use handover_common::proto::{Progress, Reply, Request};

use crate::control;

/// One progress line, as both CLIs print it.
pub fn progress_line(progress: &DeployProgress) -> String {
    let DeployProgress::StepFinished {
        step,
        detail,
        output,
    } = progress;
    let mut text = format!("{step:<14} {detail}");
    for line in output {
        text.push_str(&format!("\n    | {line}"));
    }
    text
}

async fn call(socket: &Path, request: DeployRequest) -> anyhow::Result<DeployReply> {
    let reply = control::call(socket, Request::Deploy(request), |p| {
        if let Progress::Deploy(p) = p {
            println!("{}", progress_line(&p));
        }
    })
    .await?;
    match reply {
        Reply::Deploy(reply) => Ok(reply),
        other => anyhow::bail!("the agent answered a deploy request with {other:?}"),
    }
}

/// `handover-agent deploy --repo URL --ref REF [--hook NAME]... [--force]`
pub async fn deploy(
    socket: &Path,
    repo: RepoUrl,
    rev: Revision,
    hooks: Vec<HookName>,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let request = DeployRequest::Apply {
        repo,
        rev,
        hooks,
        force,
    };
    let reply = call(socket, request).await?;
    if let DeployReply::Applied(record) = reply {
        println!(
            "current is now {} ({} {})",
            record.name,
            record.rev,
            record.short_sha()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `handover-agent activate RELEASE|--previous [--force]`
pub async fn activate(
    socket: &Path,
    release: Option<ReleaseName>,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let target = match release {
        Some(name) => ActivateTarget::Release(name),
        None => ActivateTarget::Previous,
    };
    let reply = call(socket, DeployRequest::Activate { target, force }).await?;
    if let DeployReply::Activated(record) = reply {
        println!(
            "current is now {} ({} {})",
            record.name,
            record.rev,
            record.short_sha()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `handover-agent releases [--json]`
pub async fn releases(socket: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let reply = call(socket, DeployRequest::Releases).await?;
    let DeployReply::Releases(list) = reply else {
        anyhow::bail!("the agent answered `releases` with {reply:?}");
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        print!("{}", render_releases(&list));
    }
    Ok(ExitCode::SUCCESS)
}

/// `handover-agent hook NAME`
pub async fn hook(socket: &Path, name: HookName) -> anyhow::Result<ExitCode> {
    let reply = call(socket, DeployRequest::RunHook(name)).await?;
    if let DeployReply::HookRan(out) = reply {
        for line in &out.output {
            println!("{line}");
        }
        if let Some(a) = &out.artifact {
            println!(
                "artifact {} ({} bytes, sha256 {})",
                a.path, a.size, a.sha256
            );
        }
        println!("hook {} ok", out.name);
    }
    Ok(ExitCode::SUCCESS)
}

/// The releases as a table: marker, name, ref, short sha, created, repo, and why
/// a release failed (`activate --previous` skips those).
pub fn render_releases(list: &ReleaseList) -> String {
    let mut out = String::new();
    if list.releases.is_empty() {
        out.push_str("no releases yet\n");
        return out;
    }
    for r in &list.releases {
        out.push_str(&release_row(r, list));
        out.push('\n');
    }
    out
}

fn release_row(r: &ReleaseRecord, list: &ReleaseList) -> String {
    let mark = release_mark(r, list);
    let mut row = format!(
        "{mark:<8}  {}  {}  {}  {}  {}",
        r.name,
        r.rev,
        r.short_sha(),
        r.created,
        r.repo
    );
    if let Some(why) = r.outcome.failure() {
        row.push_str(&format!("\n          failed: {why}"));
    }
    row
}

/// `current`, `previous` (what `activate --previous` would choose), `failed`
/// (a check failed: never chosen by `--previous`), or nothing. A failed release
/// that is still current reads `current`, its failure on the line below.
pub fn release_mark(r: &ReleaseRecord, list: &ReleaseList) -> &'static str {
    if Some(&r.name) == list.current.as_ref() {
        "current"
    } else if Some(&r.name) == list.previous.as_ref() {
        "previous"
    } else if r.outcome.failure().is_some() {
        "failed"
    } else {
        ""
    }
}
