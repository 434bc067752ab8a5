//! The messages between a coordinator (or a local operator) and an agent.
//!
//! One stream carries one exchange: the caller sends one [`RequestFrame`] and
//! finishes its side; the agent answers with zero or more [`Response::Progress`]
//! and then exactly one [`Response::Done`] or [`Response::Failed`]. Long actions
//! (a drain wait, a deploy) push progress on the open stream instead of being
//! polled.
//!
//! There is one enum per direction, and the agent dispatches on the enum: there is
//! no string-to-handler table and no way to name a command the agent does not
//! already know.

use serde::{Deserialize, Serialize};

pub mod applog;
pub mod deploy;
pub mod drain;
pub mod health;
pub mod lb;
pub mod lease;
pub mod status;

/// Bumped whenever the encoding of these types changes. 3: `lb::ServerStats`
/// gained `fresh_check`, `deploy::DeployRequest::Stage` and its answer (issue 14).
pub const PROTOCOL_VERSION: u16 = 3;

/// What the caller sends first on a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestFrame {
    /// The caller's [`PROTOCOL_VERSION`].
    pub version: u16,
    /// The rollout this call belongs to, for calls that change a host.
    pub rollout: Option<String>,
    /// What to do.
    pub request: Request,
}

impl RequestFrame {
    /// Checks the free strings a frame carries beyond its typed names (the rollout
    /// id, and a lease's id, token and holder); the agent calls it on every
    /// decoded frame, before anything is logged or kept.
    pub fn check_strings(&self) -> Result<(), String> {
        if let Some(rollout) = self.rollout.as_deref() {
            crate::names::RolloutId::new(rollout).map_err(|e| e.to_string())?;
        }
        match &self.request {
            Request::Lease(lease) => lease.check()?,
            Request::Deploy(deploy) => deploy.check()?,
            _ => {}
        }
        Ok(())
    }

    /// A request outside any rollout.
    pub fn new(request: Request) -> Self {
        RequestFrame {
            version: PROTOCOL_VERSION,
            rollout: None,
            request,
        }
    }
}

/// Caller → agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Host stats and the state of everything this agent manages.
    Status,
    /// Health-check file and session counting (runbook steps 12–13).
    Drain(drain::DrainRequest),
    /// HAProxy runtime API on `lb` hosts (runbook steps 11 and 14).
    Lb(lb::LbRequest),
    /// Code revisions and hooks (runbook steps 4, 6, 7).
    Deploy(deploy::DeployRequest),
    /// The rollout lease.
    Lease(lease::LeaseRequest),
    /// Check the release on this host before it is attached.
    CheckHealth(health::HealthCheck),
    /// The app server's error log (runbook step 17: watch the logs during the bake).
    AppLog(applog::AppLogRequest),
}

impl Request {
    /// Whether this request changes the host, and so must respect the rollout lease.
    /// Reads (status, session counts, stats, release lists) never wait on a lease.
    pub fn changes_host(&self) -> bool {
        match self {
            Request::Status | Request::Lease(_) | Request::CheckHealth(_) | Request::AppLog(_) => {
                false
            }
            Request::Drain(r) => r.changes_host(),
            Request::Lb(r) => r.changes_host(),
            Request::Deploy(r) => r.changes_host(),
        }
    }
}

/// Agent → caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Interim news about a long action.
    Progress(Progress),
    /// The action finished; the stream ends after this.
    Done(Reply),
    /// The action was refused or failed; the stream ends after this.
    Failed(Failure),
}

/// Interim news, per feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Progress {
    /// Sessions still on a draining host.
    Drain(drain::DrainProgress),
    /// A deploy step finished.
    Deploy(deploy::DeployProgress),
    /// A load-balancer action is waiting on HAProxy.
    Lb(lb::LbProgress),
}

/// Final answers, per feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// Answer to [`Request::Status`].
    Status(Box<status::StatusReport>),
    /// Answer to a [`Request::Drain`].
    Drain(drain::DrainReply),
    /// Answer to a [`Request::Lb`].
    Lb(lb::LbReply),
    /// Answer to a [`Request::Deploy`].
    Deploy(deploy::DeployReply),
    /// Answer to a [`Request::Lease`].
    Lease(lease::LeaseReply),
    /// Answer to a [`Request::CheckHealth`].
    Health(health::HealthReport),
    /// Answer to a [`Request::AppLog`].
    AppLog(applog::AppLogReport),
}

/// Why an action did not happen, with a message that names the problem and the fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Failure {
    /// What kind of failure, so callers can react without parsing text.
    pub kind: FailureKind,
    /// For the operator.
    pub message: String,
}

/// A deadline past the clock, asked for by a caller: its request was bad.
impl From<crate::duration::BeyondClock> for Failure {
    fn from(e: crate::duration::BeyondClock) -> Self {
        Failure::new(FailureKind::BadRequest, e.to_string())
    }
}

impl Failure {
    /// A failure of `kind` with `message`.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Failure {
            kind,
            message: message.into(),
        }
    }
}

/// The kinds of [`Failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// The request itself is malformed or names something invalid.
    BadRequest,
    /// The caller speaks another protocol version.
    VersionMismatch,
    /// This agent's config does not enable the feature asked for.
    NotConfigured,
    /// The agent's own policy refuses it (repo not allowed, hook not configured).
    Refused,
    /// Another rollout holds this host.
    Leased,
    /// A wait ran out of time; the host is left as the message says.
    Timeout,
    /// The action was attempted and failed.
    Failed,
    /// Something inside the agent went wrong.
    Internal,
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FailureKind::BadRequest => "bad request",
            FailureKind::VersionMismatch => "protocol version mismatch",
            FailureKind::NotConfigured => "not configured",
            FailureKind::Refused => "refused",
            FailureKind::Leased => "held by another rollout",
            FailureKind::Timeout => "timed out",
            FailureKind::Failed => "failed",
            FailureKind::Internal => "internal error",
        })
    }
}

#[cfg(test)]
mod check_strings_tests {
    use super::lease::LeaseRequest;
    use super::*;

    fn acquire(rollout: &str, owner: &str) -> RequestFrame {
        RequestFrame::new(Request::Lease(LeaseRequest::Acquire {
            rollout: rollout.into(),
            holder: lease::LeaseHolder {
                name: owner.into(),
                host: "bastion".into(),
                user: None,
                pid: 1,
            },
            token: "00112233445566778899aabbccddeeff".into(),
            ttl_secs: 60,
            break_existing: false,
        }))
    }

    /// Issue 13: the agent took lease owners and rollout ids as they came.
    #[test]
    fn frames_with_bad_rollout_ids_or_owners_are_refused() {
        assert!(
            acquire("r-20261203-112233-ab12", "ops (alice@bastion)")
                .check_strings()
                .is_ok()
        );
        let err = acquire("r-1\nforged", "ops")
            .check_strings()
            .expect_err("newline");
        assert!(err.to_string().contains("rollout id"), "{err}");
        let err = acquire("r-1", "ops\u{1b}[2J")
            .check_strings()
            .expect_err("escape");
        assert!(err.contains("lease holder"), "{err}");
        let mut frame = RequestFrame::new(Request::Status);
        frame.rollout = Some("../../etc".into());
        assert!(frame.check_strings().is_err());
        let release = RequestFrame::new(Request::Lease(LeaseRequest::Release {
            rollout: String::new(),
            token: "00112233445566778899aabbccddeeff".into(),
        }));
        assert!(release.check_strings().is_err());
    }
}
