//! How long the coordinator waits for an agent, by kind of call (issue 13: status,
//! deploy and hook calls had no deadline, so an agent that accepted a call and
//! never answered held the coordinator forever).
//!
//! A deadline bounds the *silence* on a call: the time since it was sent, or since
//! the agent's last progress frame. Long calls that report progress (a deploy
//! step by step, a drain wait) live as long as they keep reporting; a call the
//! agent has stopped working on ends within its deadline either way.

use std::time::Duration;

use handover_common::proto::Request;
use handover_common::proto::deploy::DeployRequest;
use handover_common::proto::drain::DrainRequest;
use handover_common::proto::lb::LbRequest;

/// A quick read or a small change: a healthy agent answers in milliseconds.
const QUICK: Duration = Duration::from_secs(30);
/// Added to a wait the request bounds itself, for the agent's final answer.
const MARGIN: Duration = Duration::from_secs(60);
/// An LB wait whose bound is the agent's own `attach_timeout`/`detach_timeout`
/// (30 s by default), unknown here.
const LB_WAIT: Duration = Duration::from_secs(10 * 60);
/// One deploy step: the agent's own limits are 5 min per git command and
/// 10 min per hook by default.
const DEPLOY_STEP: Duration = Duration::from_secs(15 * 60);

/// The deadline of one call and what the agent was doing, for the error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadline {
    /// The longest silence allowed.
    pub limit: Duration,
    /// What the call asks, as the error says it ("reading its status").
    pub doing: String,
}

fn wait(timeout: Option<Duration>) -> Duration {
    timeout.map_or(LB_WAIT, |t| t.saturating_add(MARGIN))
}

/// The deadline proper to `request`.
pub fn deadline(request: &Request) -> Deadline {
    let (limit, doing) = match request {
        Request::Status => (QUICK, "reading its status".to_string()),
        Request::Lease(_) => (QUICK, "handling the rollout lease".to_string()),
        Request::CheckHealth(check) => (
            check.timeout.saturating_add(MARGIN),
            "checking the release's health".to_string(),
        ),
        Request::Drain(DrainRequest::Drain { wait: None }) => {
            (QUICK, "removing the health-check file".to_string())
        }
        Request::Drain(DrainRequest::Drain { wait: Some(w) }) => (
            w.timeout.saturating_add(MARGIN),
            "waiting for sessions to end".to_string(),
        ),
        Request::Drain(DrainRequest::Undrain) => {
            (QUICK, "restoring the health-check file".to_string())
        }
        Request::Drain(DrainRequest::Sessions) => (QUICK, "counting sessions".to_string()),
        Request::Lb(LbRequest::Attach {
            server, timeout, ..
        }) => (wait(*timeout), format!("attaching {server} to HAProxy")),
        Request::Lb(LbRequest::Detach {
            server, timeout, ..
        }) => (wait(*timeout), format!("detaching {server} from HAProxy")),
        Request::Lb(LbRequest::SetState {
            server, timeout, ..
        }) => (wait(*timeout), format!("setting {server}'s HAProxy state")),
        Request::Lb(LbRequest::Stats { .. }) => (QUICK, "reading HAProxy stats".to_string()),
        Request::Deploy(DeployRequest::Apply { rev, .. }) => {
            (DEPLOY_STEP, format!("deploying {rev}"))
        }
        Request::Deploy(DeployRequest::Stage { rev, .. }) => {
            (DEPLOY_STEP, format!("staging {rev}"))
        }
        Request::Deploy(DeployRequest::Activate { .. }) => {
            (DEPLOY_STEP, "switching releases".to_string())
        }
        Request::Deploy(DeployRequest::Releases) => (QUICK, "listing releases".to_string()),
        // A fetch into the agent's mirror: as long as a deploy's git step.
        Request::Deploy(DeployRequest::Resolve { rev, .. }) => {
            (DEPLOY_STEP, format!("resolving {rev}"))
        }
        Request::Deploy(DeployRequest::MarkUnhealthy { release, .. }) => {
            (QUICK, format!("marking release {release} failed"))
        }
        Request::Deploy(DeployRequest::RunHook(hook))
        | Request::Deploy(DeployRequest::RunHookWith { name: hook, .. }) => {
            (DEPLOY_STEP, format!("running hook {hook}"))
        }
        Request::AppLog(_) => (QUICK, "reading the app's error log".to_string()),
    };
    Deadline { limit, doing }
}

#[cfg(test)]
mod tests {
    use super::*;
    use handover_common::names::{HookName, HostName};
    use handover_common::proto::drain::DrainWait;

    #[test]
    fn reads_are_quick_and_hooks_get_the_agents_own_limit_and_more() {
        assert_eq!(deadline(&Request::Status).limit, QUICK);
        let hook = deadline(&Request::Deploy(DeployRequest::RunHook(
            HookName::new("migrate").expect("name"),
        )));
        assert!(hook.limit > Duration::from_secs(600), "{hook:?}");
        assert_eq!(hook.doing, "running hook migrate");
    }

    #[test]
    fn a_wait_the_request_bounds_gets_that_bound_plus_a_margin_without_overflow() {
        let drain = |timeout| {
            deadline(&Request::Drain(DrainRequest::Drain {
                wait: Some(DrainWait {
                    timeout,
                    quiet: None,
                    exempt: Vec::new(),
                }),
            }))
        };
        assert_eq!(
            drain(Duration::from_secs(600)).limit,
            Duration::from_secs(660)
        );
        assert_eq!(drain(Duration::MAX).limit, Duration::MAX);
        let attach = deadline(&Request::Lb(LbRequest::Attach {
            server: HostName::new("web-1").expect("name"),
            app: "127.0.1.1:80".parse().expect("addr"),
            backend: None,
            timeout: None,
        }));
        assert_eq!(attach.limit, LB_WAIT);
        assert_eq!(attach.doing, "attaching web-1 to HAProxy");
    }
}
