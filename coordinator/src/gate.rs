//! What keeps a known-bad revision or release from going live:
//!
//! * [`resolve_revision`]: every target agent resolves the plan's revision (its
//!   `allowed_repos`, a fetch into its cached mirror, tag / branch / commit id)
//!   before `plan` prints and before a rollout's first step, so a typo in a ref or
//!   a repository no agent allows is refused before any host is drained.
//! * [`mark_unhealthy`]: a release that failed the health gate is recorded on its
//!   host, so `activate --previous` skips it after an automatic rollback.
//! * [`hosts_in_service`]: ad-hoc `deploy` / `activate` are refused on hosts the
//!   load balancers still send traffic to (the agent itself refuses while its
//!   health-check file is present).

use handover_common::names::{HostName, ReleaseName, RepoUrl, Revision};
use handover_common::proto::FailureKind;
use handover_common::proto::lb::StatusKind;

use crate::config::{CoordinatorConfig, HostEntry};
use crate::fleet::{Fleet, FleetError, calls};

/// One host's answer to "which commit is this revision?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The host asked.
    pub host: HostName,
    /// The full commit id, or why the host cannot deploy the revision.
    pub sha: Result<String, String>,
}

/// Asks every host in `hosts` which commit `rev` of `repo` is (changing nothing
/// on them but their cached mirror); answers come back in `hosts` order.
pub async fn resolve_on_hosts(
    fleet: &Fleet,
    hosts: &[HostEntry],
    repo: &RepoUrl,
    rev: &Revision,
) -> Vec<Resolution> {
    let results = fleet
        .ask_each(hosts, |_| calls::resolve(repo.clone(), rev.clone()))
        .await;
    results
        .into_iter()
        .map(|(host, result)| Resolution {
            host: host.name,
            sha: result.map(|r| r.sha).map_err(|e| e.to_string()),
        })
        .collect()
}

/// The commit each host resolves `rev` of `repo` to, or an error naming every
/// host that cannot deploy it and why (nothing was changed on any host).
pub async fn resolve_revision(
    config: &CoordinatorConfig,
    hosts: &[HostEntry],
    repo: &RepoUrl,
    rev: &Revision,
) -> anyhow::Result<Vec<Resolution>> {
    let fleet = Fleet::new(config)?;
    let resolved = resolve_on_hosts(&fleet, hosts, repo, rev).await;
    fleet.close().await;
    refuse_unresolved(&resolved, repo, rev)?;
    Ok(resolved)
}

/// Fails naming each host whose agent could not resolve the revision.
pub fn refuse_unresolved(
    resolved: &[Resolution],
    repo: &RepoUrl,
    rev: &Revision,
) -> anyhow::Result<()> {
    let failed: Vec<String> = resolved
        .iter()
        .filter_map(|r| r.sha.as_ref().err().map(|why| format!("{}: {why}", r.host)))
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "revision {rev} of {repo} cannot be deployed on {} of {} host(s); nothing was changed:\n  {}",
        failed.len(),
        resolved.len(),
        failed.join("\n  ")
    )
}

/// "  web-1  v2 = 1a2b3c4…" lines for `plan`.
pub fn render_resolutions(resolved: &[Resolution], rev: &Revision) -> String {
    let width = resolved
        .iter()
        .map(|r| r.host.as_str().len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for r in resolved {
        let sha = match &r.sha {
            Ok(sha) => sha.as_str(),
            Err(why) => why.as_str(),
        };
        out.push_str(&format!("  {:<width$}  {rev} = {sha}\n", r.host.as_str()));
    }
    out
}

/// Records on `host` that its current release failed the health gate (`reason`),
/// so `activate --previous` skips it. Returns the release marked.
pub async fn mark_unhealthy(
    fleet: &Fleet,
    host: &HostEntry,
    reason: &str,
) -> anyhow::Result<ReleaseName> {
    let list = fleet.ask(host, calls::releases(), |_| {}).await?;
    let release = list
        .current
        .ok_or_else(|| anyhow::anyhow!("{} has no current release to mark", host.name))?;
    let mark = calls::mark_unhealthy(release.clone(), reason.to_string());
    fleet.ask(host, mark, |_| {}).await?;
    Ok(release)
}

/// What the host said when a check ran there and failed (so the release is to
/// blame); `None` when the call failed otherwise (host unreachable, refused).
pub fn failed_check(error: &anyhow::Error) -> Option<&str> {
    error
        .downcast_ref::<FleetError>()
        .and_then(FleetError::agent_failure)
        .filter(|f| f.kind == FailureKind::Failed)
        .map(|f| f.message.as_str())
}

/// Hosts among `hosts` that some load balancer reports UP, with where; an LB that
/// cannot be read counts against every host (unknown is not "out of service").
pub async fn hosts_in_service(
    fleet: &Fleet,
    config: &CoordinatorConfig,
    hosts: &[HostEntry],
) -> Vec<(HostName, String)> {
    let names: Vec<HostName> = hosts.iter().map(|h| h.name.clone()).collect();
    let view = crate::lb::lb_view(fleet, config, &names).await;
    let mut serving = Vec::new();
    for (host, lbs) in &view.hosts {
        let mut where_up = Vec::new();
        for (lb, reading) in lbs {
            match reading {
                Ok(servers) => where_up.extend(
                    servers
                        .iter()
                        .filter(|s| s.status_kind() == StatusKind::Up)
                        .map(|s| format!("UP in {lb}/{}", s.backend)),
                ),
                Err(e) => where_up.push(format!("{lb} cannot be read ({e})")),
            }
        }
        if !where_up.is_empty() {
            serving.push((host.clone(), where_up.join(", ")));
        }
    }
    serving
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> HostName {
        HostName::new(name).expect("valid host name")
    }

    #[test]
    fn a_plan_is_refused_naming_every_host_that_cannot_resolve_and_why() {
        let repo = RepoUrl::new("file:///srv/git/shop.git").expect("url");
        let rev = Revision::new("v9").expect("rev");
        let resolved = vec![
            Resolution {
                host: host("web-1"),
                sha: Ok("1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d".into()),
            },
            Resolution {
                host: host("web-2"),
                sha: Err("bad request: \"v9\" is not a branch, tag or commit".into()),
            },
        ];
        let err = refuse_unresolved(&resolved, &repo, &rev)
            .expect_err("refused")
            .to_string();
        assert!(err.contains("1 of 2 host(s)"), "{err}");
        assert!(err.contains("web-2: bad request"), "{err}");
        assert!(!err.contains("web-1"), "{err}");
        assert!(err.contains("nothing was changed"), "{err}");
        let shown = render_resolutions(&resolved[..1], &rev);
        assert_eq!(
            shown,
            "  web-1  v9 = 1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d\n"
        );
        assert!(refuse_unresolved(&resolved[..1], &repo, &rev).is_ok());
    }

    #[test]
    fn only_a_check_that_ran_and_failed_blames_the_release() {
        use handover_common::proto::Failure;
        let failed = anyhow::Error::new(FleetError::Agent(Failure::new(
            FailureKind::Failed,
            "GET /health answered 500",
        )));
        assert_eq!(failed_check(&failed), Some("GET /health answered 500"));
        let refused = anyhow::Error::new(FleetError::Agent(Failure::new(
            FailureKind::NotConfigured,
            "no [app]",
        )));
        assert_eq!(failed_check(&refused), None);
        let unreachable = anyhow::Error::new(FleetError::NoAnswer);
        assert_eq!(failed_check(&unreachable), None);
        let wrapped = anyhow::Error::new(FleetError::Agent(Failure::new(FailureKind::Failed, "x")))
            .context("web-1");
        assert_eq!(failed_check(&wrapped), Some("x"));
    }
}
