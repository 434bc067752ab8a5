//! The two waits of the load balancer, each a state machine with a pure
//! `on_event(show stat, deadline passed?)`: the loops around them only read
//! HAProxy, pass on progress and sleep, so every decision is tested without a
//! socket.
//!
//! * [`UpWait`]: attach (and `ready` from maintenance) made the check fresh
//!   (drain → `health down` → ready); the server now reads DOWN and is in rotation
//!   only once HAProxy reports it exactly UP — after `rise` checks that ran after
//!   the change. `UP 1/3` (going down) is not UP.
//! * [`SessionsWait`]: detach without `--force` waits until no request is in flight
//!   or queued on the host's servers, and refuses, changing nothing, if that does
//!   not happen in time.

use std::collections::BTreeMap;
use std::time::Duration;

use handover_common::names::HostName;
use handover_common::proto::lb::{LbProgress, ServerKind, ServerStats, StatusKind};
use handover_common::proto::{Failure, FailureKind, Progress};

use super::balancer::{Balancer, POLL};
use super::membership::Member;
use super::show::Stat;
use crate::caller::Reporter;

/// One HAProxy server carrying the host in one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The backend.
    pub backend: String,
    /// The HAProxy server (`slot3`, or the host name).
    pub haproxy_name: String,
    /// Slot or dynamic.
    pub kind: ServerKind,
}

impl Target {
    /// The server carrying `member` in `backend`.
    pub fn of(backend: &str, member: &Member) -> Self {
        Target {
            backend: backend.to_string(),
            haproxy_name: member.haproxy_name.clone(),
            kind: member.kind,
        }
    }
}

/// What a wait does after one reading.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The wait is over: the servers are UP (or idle).
    Done,
    /// Not yet: tell the caller these changes, read again after [`POLL`].
    Continue(Vec<LbProgress>),
    /// The wait failed; nothing more will change that.
    Fail(Failure),
}

/// Waiting for every target to read exactly UP.
#[derive(Debug)]
pub struct UpWait {
    host: HostName,
    targets: Vec<Target>,
    timeout: Duration,
    /// The status last reported per target, so progress is sent on change only.
    reported: BTreeMap<usize, String>,
}

impl UpWait {
    /// A wait for `host`'s `targets`, failing after `timeout`.
    pub fn new(host: HostName, targets: Vec<Target>, timeout: Duration) -> Self {
        UpWait {
            host,
            targets,
            timeout,
            reported: BTreeMap::new(),
        }
    }

    /// Whether there is nothing to wait for.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// One reading of `show stat`; `expired` once the deadline has passed.
    pub fn on_event(&mut self, stat: &Stat, expired: bool) -> Step {
        let host = &self.host;
        let mut changes = Vec::new();
        let mut pending = Vec::new();
        for (i, t) in self.targets.iter().enumerate() {
            let (b, name) = (&t.backend, &t.haproxy_name);
            let Some(row) = stat.server(b, name) else {
                return Step::Fail(Failure::new(
                    FailureKind::Failed,
                    format!(
                        "{b}/{name} (carrying {host}) vanished from HAProxy while waiting for it to come UP (was HAProxy reloaded? the agent re-applies it; run attach again)"
                    ),
                ));
            };
            if StatusKind::parse(&row.status) == StatusKind::Up {
                continue;
            }
            let text = format!("{} {}", row.status, row.check_status);
            if self.reported.get(&i) != Some(&text) {
                changes.push(LbProgress::WaitingForUp(row.stats(Some(host), t.kind)));
                self.reported.insert(i, text);
            }
            pending.push(format!(
                "{b}/{name} is {} (last check {})",
                row.status, row.check_status
            ));
        }
        if pending.is_empty() {
            Step::Done
        } else if expired {
            Step::Fail(Failure::new(
                FailureKind::Timeout,
                format!(
                    "{host} is attached but not UP after {}: {} — HAProxy sends it no traffic while it is not UP; check its health file and app server, then run attach again",
                    handover_common::duration::format(self.timeout),
                    pending.join("; ")
                ),
            ))
        } else {
            Step::Continue(changes)
        }
    }

    /// Runs the wait against `lb`, reporting progress.
    pub async fn run(mut self, lb: &Balancer<'_>, reporter: &Reporter) -> Result<(), Failure> {
        let deadline = deadline_after(self.timeout);
        run_wait(lb, reporter, deadline, |stat, expired| {
            self.on_event(stat, expired)
        })
        .await
    }
}

/// Waiting until the host's servers have no request in flight or queued.
#[derive(Debug)]
pub struct SessionsWait {
    host: HostName,
    targets: Vec<Target>,
    /// (scur, qcur) of the first busy server when last reported.
    reported: Option<(u64, u64)>,
}

impl SessionsWait {
    /// A wait for `host`'s `targets`.
    pub fn new(host: HostName, targets: Vec<Target>) -> Self {
        SessionsWait {
            host,
            targets,
            reported: None,
        }
    }

    /// One reading of `show stat`; `expired` once the deadline has passed. A server
    /// missing from HAProxy holds no session.
    pub fn on_event(&mut self, stat: &Stat, expired: bool) -> Step {
        let busy: Vec<ServerStats> = self
            .targets
            .iter()
            .filter_map(|t| {
                stat.server(&t.backend, &t.haproxy_name)
                    .map(|row| row.stats(Some(&self.host), t.kind))
            })
            .filter(|s| s.scur > 0 || s.qcur > 0)
            .collect();
        let Some(first) = busy.first() else {
            return Step::Done;
        };
        if expired {
            let held: Vec<String> = busy
                .iter()
                .map(|s| {
                    format!(
                        "{}/{} has scur {} qcur {}",
                        s.backend, s.haproxy_name, s.scur, s.qcur
                    )
                })
                .collect();
            return Step::Fail(Failure::new(
                FailureKind::Refused,
                format!(
                    "{} still has sessions: {}; nothing was changed: drain it and wait longer, or detach with --force to cut them",
                    self.host,
                    held.join("; ")
                ),
            ));
        }
        let now = (first.scur, first.qcur);
        if self.reported == Some(now) {
            return Step::Continue(Vec::new());
        }
        self.reported = Some(now);
        Step::Continue(vec![LbProgress::WaitingForSessions(first.clone())])
    }

    /// Runs the wait against `lb` until `deadline`, reporting progress.
    pub async fn run(
        mut self,
        lb: &Balancer<'_>,
        reporter: &Reporter,
        deadline: tokio::time::Instant,
    ) -> Result<(), Failure> {
        run_wait(lb, reporter, deadline, |stat, expired| {
            self.on_event(stat, expired)
        })
        .await
    }
}

/// `timeout` from now; a timeout too large to add means "no deadline" in effect,
/// not a panic.
pub fn deadline_after(timeout: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// The loop shared by both waits: read, decide, report, sleep.
async fn run_wait(
    lb: &Balancer<'_>,
    reporter: &Reporter,
    deadline: tokio::time::Instant,
    mut on_event: impl FnMut(&Stat, bool) -> Step,
) -> Result<(), Failure> {
    loop {
        let stat = lb.read_stat().await?;
        let expired = tokio::time::Instant::now() >= deadline;
        match on_event(&stat, expired) {
            Step::Done => return Ok(()),
            Step::Fail(failure) => return Err(failure),
            Step::Continue(changes) => {
                for change in changes {
                    if !reporter.progress(Progress::Lb(change)).await {
                        return Err(Failure::new(FailureKind::Failed, "the caller went away"));
                    }
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::haproxy::show::parse_stat;

    const HEADER: &str = "# pxname,svname,qcur,scur,stot,status,check_status,hrsp_5xx,addr\n";

    fn stat(rows: &[&str]) -> Stat {
        parse_stat(&format!("{HEADER}{}\n", rows.join("\n"))).expect("valid stat")
    }

    fn host() -> HostName {
        HostName::new("web-1").expect("valid")
    }

    fn slot(backend: &str, name: &str) -> Target {
        Target {
            backend: backend.into(),
            haproxy_name: name.into(),
            kind: ServerKind::Slot,
        }
    }

    fn statuses(changes: &[LbProgress]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                LbProgress::WaitingForUp(s) | LbProgress::WaitingForSessions(s) => {
                    format!("{}/{} {}", s.backend, s.haproxy_name, s.status)
                }
            })
            .collect()
    }

    #[test]
    fn up_waits_through_a_fresh_check_reporting_each_change_once() {
        let mut wait = UpWait::new(
            host(),
            vec![slot("web", "slot1"), slot("api", "slot1")],
            Duration::from_secs(5),
        );
        let down = stat(&[
            "web,slot1,0,0,0,DOWN,L7OK,0,",
            "api,slot1,0,0,0,DOWN,L7OK,0,",
        ]);
        let Step::Continue(first) = wait.on_event(&down, false) else {
            panic!("both DOWN: keep waiting");
        };
        assert_eq!(statuses(&first), ["web/slot1 DOWN", "api/slot1 DOWN"]);
        assert_eq!(wait.on_event(&down, false), Step::Continue(Vec::new()));
        let one_up = stat(&[
            "web,slot1,0,0,0,UP,L7OK,0,",
            "api,slot1,0,0,0,DOWN 1/2,L7OK,0,",
        ]);
        let Step::Continue(second) = wait.on_event(&one_up, false) else {
            panic!("api still rising");
        };
        assert_eq!(statuses(&second), ["api/slot1 DOWN 1/2"]);
        let both = stat(&["web,slot1,0,0,0,UP,L7OK,0,", "api,slot1,0,0,0,UP,L7OK,0,"]);
        assert_eq!(
            wait.on_event(&both, true),
            Step::Done,
            "UP wins over the deadline"
        );
    }

    #[test]
    fn going_down_is_not_up_and_the_deadline_names_what_is_pending() {
        let mut wait = UpWait::new(host(), vec![slot("web", "slot1")], Duration::from_secs(5));
        let going_down = stat(&["web,slot1,0,0,0,UP 1/3,L7STS,0,"]);
        assert!(matches!(
            wait.on_event(&going_down, false),
            Step::Continue(_)
        ));
        let Step::Fail(f) = wait.on_event(&going_down, true) else {
            panic!("deadline passed");
        };
        assert_eq!(f.kind, FailureKind::Timeout);
        assert!(
            f.message.contains("web/slot1 is UP 1/3 (last check L7STS)"),
            "{f}"
        );
        assert!(f.message.contains("after 5s"), "{f}");
    }

    #[test]
    fn a_server_that_vanishes_while_waiting_for_up_fails_at_once() {
        let mut wait = UpWait::new(host(), vec![slot("web", "slot1")], Duration::from_secs(5));
        let Step::Fail(f) = wait.on_event(&stat(&["web,slot2,0,0,0,UP,L7OK,0,"]), false) else {
            panic!("vanished");
        };
        assert_eq!(f.kind, FailureKind::Failed);
        assert!(
            f.message.contains("web/slot1 (carrying web-1) vanished"),
            "{f}"
        );
    }

    #[test]
    fn sessions_wait_reports_changes_and_ends_when_idle() {
        let mut wait = SessionsWait::new(host(), vec![slot("web", "slot1")]);
        let busy = stat(&["web,slot1,0,2,9,NOLB,L7OK,0,"]);
        let Step::Continue(first) = wait.on_event(&busy, false) else {
            panic!("busy");
        };
        assert_eq!(statuses(&first), ["web/slot1 NOLB"]);
        assert_eq!(wait.on_event(&busy, false), Step::Continue(Vec::new()));
        let queued = stat(&["web,slot1,1,0,9,NOLB,L7OK,0,"]);
        assert!(matches!(wait.on_event(&queued, false), Step::Continue(c) if c.len() == 1));
        let idle = stat(&["web,slot1,0,0,9,NOLB,L7OK,0,"]);
        assert_eq!(wait.on_event(&idle, true), Step::Done);
        assert_eq!(
            SessionsWait::new(host(), vec![slot("web", "slot1")]).on_event(&stat(&[]), false),
            Step::Done,
            "a server HAProxy no longer has holds no session"
        );
    }

    #[test]
    fn sessions_left_at_the_deadline_are_a_refusal_that_changed_nothing() {
        let mut wait = SessionsWait::new(host(), vec![slot("web", "slot1")]);
        let Step::Fail(f) = wait.on_event(&stat(&["web,slot1,0,3,9,NOLB,L7OK,0,"]), true) else {
            panic!("deadline passed");
        };
        assert_eq!(f.kind, FailureKind::Refused);
        assert!(f.message.contains("web/slot1 has scur 3 qcur 0"), "{f}");
        assert!(f.message.contains("nothing was changed"), "{f}");
    }

    #[test]
    fn a_huge_timeout_is_a_far_deadline_not_a_panic() {
        let far = deadline_after(Duration::MAX);
        assert!(far > tokio::time::Instant::now() + Duration::from_secs(3600));
    }
}
