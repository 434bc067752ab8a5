//! Typed fleet calls: each request names the answer it expects, so an agent that
//! answers with another kind is one error ([`FleetError::UnexpectedAnswer`],
//! raised by [`Fleet::ask`]) in one place instead of a match arm at every caller.
//!
//! [`FleetError::UnexpectedAnswer`]: super::FleetError::UnexpectedAnswer
//! [`Fleet::ask`]: super::Fleet::ask

use std::collections::BTreeMap;
use std::time::Duration;

use handover_common::names::{HookName, InputKey, ReleaseName, RepoUrl, Revision};
use handover_common::proto::applog::{AppLogReport, AppLogRequest, LogCursor};
use handover_common::proto::deploy::{
    ActivateTarget, DeployReply, DeployRequest, HookOutput, ReleaseList, ReleaseRecord,
    ResolvedRevision,
};
use handover_common::proto::drain::{DrainReply, DrainRequest, DrainStatus, DrainWait};
use handover_common::proto::health::{HealthCheck, HealthReport};
use handover_common::proto::lb::{LbReply, LbRequest};
use handover_common::proto::lease::{LeaseReply, LeaseRequest};
use handover_common::proto::status::StatusReport;
use handover_common::proto::{Reply, Request};

/// A request and the answer it expects: `A`.
pub struct Call<A> {
    pub(super) request: Request,
    /// What was asked, for the error ("releases", "drain"...).
    pub(super) what: &'static str,
    /// The expected answer out of the reply, or the reply back if it is another.
    pub(super) answer: fn(Reply) -> Result<A, Box<Reply>>,
}

/// The health-check file removed (with a wait for the sessions, if asked).
#[derive(Debug, Clone)]
pub struct Drained {
    /// It was already removed.
    pub already: bool,
    /// How long the agent waited for the sessions (`None`: it was not asked to).
    pub waited: Option<Duration>,
    /// Sessions and file, after.
    pub status: DrainStatus,
}

/// The health-check file restored.
#[derive(Debug, Clone)]
pub struct Undrained {
    /// It was already there.
    pub already: bool,
}

/// The host's status report.
pub fn status() -> Call<Box<StatusReport>> {
    Call {
        request: Request::Status,
        what: "status",
        answer: |r| match r {
            Reply::Status(s) => Ok(s),
            other => Err(Box::new(other)),
        },
    }
}

/// Remove the health-check file; with `wait`, wait for the sessions to end.
pub fn drain(wait: Option<DrainWait>) -> Call<Drained> {
    Call {
        request: Request::Drain(DrainRequest::Drain { wait }),
        what: "drain",
        answer: |r| match r {
            Reply::Drain(DrainReply::Drained {
                already,
                waited,
                status,
            }) => Ok(Drained {
                already,
                waited,
                status,
            }),
            other => Err(Box::new(other)),
        },
    }
}

/// Restore the health-check file.
pub fn undrain() -> Call<Undrained> {
    Call {
        request: Request::Drain(DrainRequest::Undrain),
        what: "undrain",
        answer: |r| match r {
            Reply::Drain(DrainReply::Undrained { already, .. }) => Ok(Undrained { already }),
            other => Err(Box::new(other)),
        },
    }
}

/// The releases on disk.
pub fn releases() -> Call<ReleaseList> {
    Call {
        request: Request::Deploy(DeployRequest::Releases),
        what: "releases",
        answer: |r| match r {
            Reply::Deploy(DeployReply::Releases(list)) => Ok(list),
            other => Err(Box::new(other)),
        },
    }
}

/// Build `rev` of `repo` as a new release and make it current.
pub fn apply(
    repo: RepoUrl,
    rev: Revision,
    hooks: Vec<HookName>,
    force: bool,
) -> Call<ReleaseRecord> {
    Call {
        request: Request::Deploy(DeployRequest::Apply {
            repo,
            rev,
            hooks,
            force,
        }),
        what: "apply",
        answer: |r| match r {
            Reply::Deploy(DeployReply::Applied(record)) => Ok(record),
            other => Err(Box::new(other)),
        },
    }
}

/// Build `rev` of `repo` as a release beside `current`, for a later apply.
pub fn stage(repo: RepoUrl, rev: Revision, hooks: Vec<HookName>) -> Call<ReleaseRecord> {
    Call {
        request: Request::Deploy(DeployRequest::Stage { repo, rev, hooks }),
        what: "stage",
        answer: |r| match r {
            Reply::Deploy(DeployReply::Staged(record)) => Ok(record),
            other => Err(Box::new(other)),
        },
    }
}

/// Make a release on disk current again.
pub fn activate(target: ActivateTarget, force: bool) -> Call<ReleaseRecord> {
    Call {
        request: Request::Deploy(DeployRequest::Activate { target, force }),
        what: "activate",
        answer: |r| match r {
            Reply::Deploy(DeployReply::Activated(record)) => Ok(record),
            other => Err(Box::new(other)),
        },
    }
}

/// The commit `rev` of `repo` resolves to on the host.
pub fn resolve(repo: RepoUrl, rev: Revision) -> Call<ResolvedRevision> {
    Call {
        request: Request::Deploy(DeployRequest::Resolve { repo, rev }),
        what: "resolve",
        answer: |r| match r {
            Reply::Deploy(DeployReply::Resolved(resolved)) => Ok(resolved),
            other => Err(Box::new(other)),
        },
    }
}

/// Record that `release` failed a check.
pub fn mark_unhealthy(release: ReleaseName, reason: String) -> Call<ReleaseRecord> {
    Call {
        request: Request::Deploy(DeployRequest::MarkUnhealthy { release, reason }),
        what: "mark unhealthy",
        answer: |r| match r {
            Reply::Deploy(DeployReply::Marked(record)) => Ok(record),
            other => Err(Box::new(other)),
        },
    }
}

/// Run the host agent's own hook `name` with the deployment's `inputs` (each as
/// `HANDOVER_INPUT_<KEY>`); the answer holds its last output lines and the file it
/// reported making (a database backup), checked by the agent.
pub fn run_hook(name: HookName, inputs: BTreeMap<InputKey, String>) -> Call<HookOutput> {
    Call {
        request: Request::Deploy(DeployRequest::RunHookWith { name, inputs }),
        what: "a hook",
        answer: |r| match r {
            Reply::Deploy(DeployReply::HookRan(output)) => Ok(output),
            other => Err(Box::new(other)),
        },
    }
}

/// The error lines the app's error log gained since `since` (none yet, and a
/// cursor at its end, when `None`): the bake's log watch.
pub fn app_errors(since: Option<LogCursor>) -> Call<AppLogReport> {
    Call {
        request: Request::AppLog(AppLogRequest::Errors { since }),
        what: "the app's error log",
        answer: |r| match r {
            Reply::AppLog(report) => Ok(report),
            other => Err(Box::new(other)),
        },
    }
}

/// Any deploy request, for the commands that pass one through (each of its
/// answers is a `DeployReply`).
pub fn deploy(request: DeployRequest) -> Call<DeployReply> {
    Call {
        request: Request::Deploy(request),
        what: "a deploy request",
        answer: |r| match r {
            Reply::Deploy(reply) => Ok(reply),
            other => Err(Box::new(other)),
        },
    }
}

/// Check the release on the host.
pub fn check_health(check: HealthCheck) -> Call<HealthReport> {
    Call {
        request: Request::CheckHealth(check),
        what: "a health check",
        answer: |r| match r {
            Reply::Health(report) => Ok(report),
            other => Err(Box::new(other)),
        },
    }
}

/// A load balancer request.
pub fn lb(request: LbRequest) -> Call<LbReply> {
    Call {
        request: Request::Lb(request),
        what: "a load balancer request",
        answer: |r| match r {
            Reply::Lb(reply) => Ok(reply),
            other => Err(Box::new(other)),
        },
    }
}

/// A lease request.
pub fn lease(request: LeaseRequest) -> Call<LeaseReply> {
    Call {
        request: Request::Lease(request),
        what: "a lease request",
        answer: |r| match r {
            Reply::Lease(reply) => Ok(reply),
            other => Err(Box::new(other)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_takes_its_own_answer_and_hands_back_any_other() {
        let c = releases();
        let list = ReleaseList {
            current: None,
            releases: Vec::new(),
            previous: None,
        };
        let reply = Reply::Deploy(DeployReply::Releases(list.clone()));
        assert_eq!((c.answer)(reply).expect("its answer"), list);
        let other = Reply::Lease(LeaseReply::Released);
        assert_eq!(*(c.answer)(other.clone()).expect_err("another"), other);
    }

    /// Drain and undrain answers share a reply enum: each call takes only its own.
    #[test]
    fn drain_and_undrain_do_not_take_each_others_answer() {
        let status = DrainStatus {
            drained: Some(true),
            missing: false,
            health_file: None,
            sessions: None,
            apache: None,
        };
        let drained = Reply::Drain(DrainReply::Drained {
            already: true,
            waited: None,
            status: status.clone(),
        });
        let undrained = Reply::Drain(DrainReply::Undrained {
            already: false,
            status,
        });
        assert!(
            (drain(None).answer)(drained.clone())
                .expect("drained")
                .already
        );
        assert!((undrain().answer)(drained).is_err());
        assert!(
            !(undrain().answer)(undrained.clone())
                .expect("undrained")
                .already
        );
        assert!((drain(None).answer)(undrained).is_err());
        assert!((super::status().answer)(Reply::Lease(LeaseReply::Released)).is_err());
    }
}
