//! What the page shows, as one JSON document: the rollout (from the journal), the
//! hosts and LB servers (from the agents' `status`), and what the server saw
//! over time. Built by pure functions from what was read, so it is tested
//! without processes.

use handover_common::proto::status::StatusReport;
use serde::Serialize;

use crate::journal::{RolloutRecord, StepOutcome, StepRecord};
use crate::rollout::samples::Sample as JournalSample;

/// The schema's version: bumped when a field changes meaning or goes away
/// (fields may be added without a bump).
pub const VERSION: u32 = 1;

/// Everything the page shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// [`VERSION`].
    pub version: u32,
    /// When it was gathered (ms since epoch).
    pub generated_ms: u64,
    /// The current or last rollout, if the journal has one.
    pub rollout: Option<Rollout>,
    /// Its steps, planned ones included, in order.
    pub steps: Vec<Step>,
    /// One per inventory host.
    pub hosts: Vec<Host>,
    /// One per server per backend per load balancer.
    pub lb_servers: Vec<LbServer>,
    /// Servers UP and sessions over time: since the rollout started, from the
    /// samples it journaled; else as sampled while `handover web` ran.
    pub history: Vec<Sample>,
    /// Where `history` comes from: `journal` or `page`.
    pub history_from: &'static str,
    /// The journal's latest events, newest first.
    pub events: Vec<Event>,
}

/// The rollout, as journaled.
#[derive(Debug, Clone, Serialize)]
pub struct Rollout {
    /// Its id.
    pub id: String,
    /// running, succeeded, aborted...
    pub state: String,
    /// The phase whose steps run now.
    pub phase: String,
    /// Who ran it.
    pub owner: String,
    /// Started (ms since epoch).
    pub created_ms: u64,
    /// Last changed (ms since epoch).
    pub updated_ms: u64,
    /// Why it stopped, when it did not succeed.
    pub error: Option<String>,
    /// "REPO @ REF", when the plan could be read.
    pub revision: Option<String>,
    /// Servers that must stay UP in every load balancer.
    pub min_healthy: Option<usize>,
}

/// One step of the runbook as this rollout runs it.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Phase key (`forward`, `rollback-from-wave-1`...).
    pub phase: String,
    /// Position in its phase.
    pub index: usize,
    /// What it does.
    pub title: String,
    /// `pending`, `running`, `done` or `failed`.
    pub status: &'static str,
    /// Whether it is the step under way (or the one that stopped the rollout).
    pub current: bool,
    /// Started, if it did.
    pub started_ms: Option<u64>,
    /// Ended, if it did.
    pub ended_ms: Option<u64>,
    /// The failure, if it failed.
    pub error: Option<String>,
}

/// One host and what its agent said.
#[derive(Debug, Clone, Serialize)]
pub struct Host {
    /// Inventory name.
    pub name: String,
    /// Inventory roles.
    pub roles: Vec<String>,
    /// Whether its agent answered.
    pub reachable: bool,
    /// Why not.
    pub error: Option<String>,
    /// "REV SHA" of its current release.
    pub release: Option<String>,
    /// Whether its health-check file is away.
    pub drained: Option<bool>,
    /// Established connections on its app port.
    pub sessions: Option<u32>,
    /// Who holds them: "ADDR ×N".
    pub holders: Vec<String>,
    /// Requests in flight on it per load balancer (HAProxy scur).
    pub lb_sessions: Vec<LbSessions>,
    /// Its state in the load balancers (UP, NOLB, MAINT...), one per LB.
    pub lb_status: Vec<String>,
    /// Apache workers busy / idle.
    pub apache: Option<(u32, u32)>,
    /// While the running rollout waits for its sessions to end: what the
    /// coordinator's drain wait knows (from the journal).
    pub drain: Option<Drain>,
}

/// What the rollout's drain wait knows of a host, as of `t_ms`.
#[derive(Debug, Clone, Serialize)]
pub struct Drain {
    /// When the coordinator knew it (ms since epoch).
    pub t_ms: u64,
    /// Sessions that hold it, as its agent counts them.
    pub sessions: Option<u32>,
    /// Who holds it: "ADDR (N connections)", "LB BACKEND/SERVER".
    pub holders: Vec<String>,
    /// What holds it, in words.
    pub holds: Vec<String>,
    /// When it should be idle, counted from `generated_ms` (the quiet period
    /// left once nothing holds it; plus its sessions' time at the rate they
    /// fell); null while that cannot be told.
    pub idle_in_ms: Option<u64>,
    /// How long the wait has run, as of `t_ms`.
    pub elapsed_ms: u64,
    /// The wait found it idle (it is detached next).
    pub idle: bool,
}

/// A host's sessions as one load balancer counts them.
#[derive(Debug, Clone, Serialize)]
pub struct LbSessions {
    /// The load balancer.
    pub lb: String,
    /// scur + qcur.
    pub sessions: u64,
}

/// One server in one backend of one load balancer.
#[derive(Debug, Clone, Serialize)]
pub struct LbServer {
    /// The load balancer's inventory name.
    pub lb: String,
    /// The backend.
    pub backend: String,
    /// HAProxy's server name.
    pub server: String,
    /// The app host it carries, when the agent manages it.
    pub host: Option<String>,
    /// HAProxy's status text.
    pub status: String,
    /// Requests in flight.
    pub scur: u64,
    /// Requests queued.
    pub qcur: u64,
    /// Sessions so far.
    pub stot: u64,
    /// 5xx answers so far.
    pub hrsp_5xx: u64,
}

/// One point of the charts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// When (ms since epoch).
    pub t_ms: u64,
    /// The fewest servers UP in any one backend of any load balancer.
    pub up: usize,
    /// Sessions on drained hosts (what a drain waits for).
    pub draining_sessions: u64,
}

/// One line of the journal.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// When (ms since epoch).
    pub t_ms: u64,
    /// What happened.
    pub text: String,
    /// `ok`, `failed` or `started`.
    pub kind: &'static str,
}

/// The rollout part of a record.
pub fn rollout(record: &RolloutRecord, plan: Option<&crate::plan::Plan>) -> Rollout {
    Rollout {
        id: record.id.clone(),
        state: record.state.as_str().to_owned(),
        phase: record.phase.key(),
        owner: record.owner.clone(),
        created_ms: record.created_ms,
        updated_ms: record.updated_ms,
        error: record.error.clone(),
        revision: plan.map(|p| format!("{} @ {}", p.file.revision.repo, p.file.revision.reference)),
        min_healthy: plan.map(|p| p.file.rollout.min_healthy.get()),
    }
}

/// The steps: the plan's forward steps (pending ones included) with what the
/// journal says of each, then every journaled step of other phases.
pub fn steps(planned: &[String], journaled: &[StepRecord], running: bool) -> Vec<Step> {
    let forward = crate::rollout::steps::Phase::Forward.key();
    let record_of = |phase: &str, index: usize| {
        journaled
            .iter()
            .find(|r| r.phase.key() == phase && r.index == index)
    };
    let mut out: Vec<Step> = planned
        .iter()
        .enumerate()
        .map(|(i, title)| step(&forward, i, title, record_of(&forward, i)))
        .collect();
    for r in journaled {
        let phase = r.phase.key();
        if phase == forward && r.index < planned.len() {
            continue;
        }
        out.push(step(&phase, r.index, &r.title, Some(r)));
    }
    mark_current(&mut out, running);
    out
}

fn step(phase: &str, index: usize, title: &str, record: Option<&StepRecord>) -> Step {
    let (status, error) = match record.and_then(|r| r.outcome.as_ref()) {
        Some(StepOutcome::Ok) => ("done", None),
        Some(StepOutcome::Failed(why)) => ("failed", Some(why.clone())),
        None if record.is_some() => ("running", None),
        None => ("pending", None),
    };
    Step {
        phase: phase.to_owned(),
        index,
        title: title.to_owned(),
        status,
        current: false,
        started_ms: record.map(|r| r.started_ms),
        ended_ms: record.and_then(|r| r.ended_ms),
        error,
    }
}

/// The current step: the one under way; else, in a running rollout, the first
/// not done; else the last that failed.
fn mark_current(steps: &mut [Step], running: bool) {
    let at = steps
        .iter()
        .rposition(|s| s.status == "running")
        .or_else(|| {
            running
                .then(|| steps.iter().position(|s| s.status == "pending"))
                .flatten()
        })
        .or_else(|| steps.iter().rposition(|s| s.status == "failed"));
    if let Some(i) = at {
        steps[i].current = true;
    }
}

/// The journal's latest `limit` events, newest first.
pub fn events(journaled: &[StepRecord], limit: usize) -> Vec<Event> {
    let mut out = Vec::new();
    for r in journaled {
        out.push(Event {
            t_ms: r.started_ms,
            text: format!("started: {}", r.title),
            kind: "started",
        });
        if let (Some(end), Some(outcome)) = (r.ended_ms, &r.outcome) {
            let (text, kind) = match outcome {
                StepOutcome::Ok => (format!("done: {}", r.title), "ok"),
                StepOutcome::Failed(why) => (format!("failed: {}: {why}", r.title), "failed"),
            };
            out.push(Event {
                t_ms: end,
                text,
                kind,
            });
        }
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.t_ms));
    out.truncate(limit);
    out
}

/// What an agent answered, or why not.
pub type Answer = Result<StatusReport, String>;

/// Hosts and LB servers from the agents' answers; `lbs` names the load
/// balancers among `answers`.
pub fn fleet(answers: &[(String, Vec<String>, Answer)]) -> (Vec<Host>, Vec<LbServer>) {
    let mut servers = Vec::new();
    for (name, _, answer) in answers {
        let Some(lb) = answer.as_ref().ok().and_then(|r| r.lb.as_ref()) else {
            continue;
        };
        for s in &lb.servers {
            servers.push(LbServer {
                lb: name.clone(),
                backend: s.backend.clone(),
                server: s.haproxy_name.clone(),
                host: s.host.as_ref().map(ToString::to_string),
                status: s.status.clone(),
                scur: s.scur,
                qcur: s.qcur,
                stot: s.stot,
                hrsp_5xx: s.hrsp_5xx,
            });
        }
    }
    let hosts = answers
        .iter()
        .map(|(name, roles, answer)| host(name, roles, answer, &servers))
        .collect();
    (hosts, servers)
}

fn host(name: &str, roles: &[String], answer: &Answer, servers: &[LbServer]) -> Host {
    let mine: Vec<&LbServer> = servers
        .iter()
        .filter(|s| s.host.as_deref() == Some(name))
        .collect();
    let mut host = Host {
        name: name.to_owned(),
        roles: roles.to_vec(),
        reachable: answer.is_ok(),
        error: answer.as_ref().err().cloned(),
        release: None,
        drained: None,
        sessions: None,
        holders: Vec::new(),
        lb_sessions: mine
            .iter()
            .map(|s| LbSessions {
                lb: s.lb.clone(),
                sessions: s.scur + s.qcur,
            })
            .collect(),
        lb_status: mine
            .iter()
            .map(|s| format!("{} {}", s.lb, s.status))
            .collect(),
        apache: None,
        drain: None,
    };
    let Ok(report) = answer else { return host };
    host.release = report
        .release
        .as_ref()
        .and_then(|r| r.current.as_ref())
        .map(|c| format!("{} {}", c.rev, c.short_sha()));
    if let Some(drain) = &report.drain {
        host.drained = drain.drained;
        if let Some(count) = drain.sessions.as_ref().and_then(|s| s.count()) {
            host.sessions = Some(count.total);
            host.holders = count
                .holders
                .iter()
                .map(|h| format!("{} ×{}", h.remote, h.connections))
                .collect();
        }
        if let Some(f) = drain.apache.as_ref().and_then(|a| a.figures()) {
            host.apache = Some((f.busy_workers.unwrap_or(0), f.idle_workers.unwrap_or(0)));
        }
    }
    host
}

/// Samples older than this are not shown as the drain wait's current facts.
const FRESH_MS: u64 = 5_000;

/// The chart from the rollout's journaled samples, at most `max` points
/// (evenly thinned, the newest always kept).
pub fn history(samples: &[JournalSample], max: usize) -> Vec<Sample> {
    let points: Vec<Sample> = samples
        .iter()
        .filter_map(|s| {
            Some(Sample {
                t_ms: s.t_ms,
                up: s.up?,
                draining_sessions: s
                    .drains
                    .iter()
                    .map(|d| u64::from(d.sessions.unwrap_or(0)))
                    .sum(),
            })
        })
        .collect();
    let step = points.len().div_ceil(max.max(1)).max(1);
    let last = points.len().saturating_sub(1);
    points
        .into_iter()
        .enumerate()
        .filter(|(i, _)| (last - i).is_multiple_of(step))
        .map(|(_, p)| p)
        .collect()
}

/// Lays the drain wait's facts of the newest sample over the hosts, when it is
/// fresh (the rollout is waiting now), its countdown moved on to `now_ms`.
pub fn attach_drains(hosts: &mut [Host], latest: Option<&JournalSample>, now_ms: u64) {
    let Some(sample) = latest.filter(|s| now_ms.saturating_sub(s.t_ms) <= FRESH_MS) else {
        return;
    };
    let age = now_ms.saturating_sub(sample.t_ms);
    for facts in &sample.drains {
        if let Some(host) = hosts.iter_mut().find(|h| h.name == facts.host) {
            host.drain = Some(Drain {
                t_ms: sample.t_ms,
                sessions: facts.sessions,
                holders: facts.holders.clone(),
                holds: facts.holds.clone(),
                idle_in_ms: facts.idle_in_ms.map(|ms| ms.saturating_sub(age)),
                elapsed_ms: facts.elapsed_ms,
                idle: facts.idle,
            });
        }
    }
}

/// The charts' point for this moment: the fewest servers UP in any backend of
/// any LB, and the sessions left on drained hosts.
pub fn sample(t_ms: u64, hosts: &[Host], servers: &[LbServer]) -> Sample {
    let mut up_per_backend: std::collections::BTreeMap<(&str, &str), usize> = Default::default();
    for s in servers {
        let up = usize::from(s.status.trim() == "UP");
        *up_per_backend.entry((&s.lb, &s.backend)).or_default() += up;
    }
    let draining_sessions = hosts
        .iter()
        .filter(|h| h.drained == Some(true))
        .map(|h| u64::from(h.sessions.unwrap_or(0)))
        .sum();
    Sample {
        t_ms,
        up: up_per_backend.values().copied().min().unwrap_or(0),
        draining_sessions,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::rollout::steps::Phase;

    fn record(phase: Phase, index: usize, outcome: Option<StepOutcome>) -> StepRecord {
        StepRecord {
            format: crate::journal::FORMAT,
            phase,
            index,
            title: format!("step {index}"),
            started_ms: 1000 + index as u64,
            ended_ms: outcome.as_ref().map(|_| 2000 + index as u64),
            outcome,
            outputs: BTreeMap::new(),
        }
    }

    fn planned(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("step {i}")).collect()
    }

    fn statuses(steps: &[Step]) -> Vec<(&str, bool)> {
        steps.iter().map(|s| (s.status, s.current)).collect()
    }

    /// The step under way is current; the planned ones after it are pending.
    #[test]
    fn the_running_step_is_current_and_the_rest_pending() {
        let journaled = [
            record(Phase::Forward, 0, Some(StepOutcome::Ok)),
            record(Phase::Forward, 1, None),
        ];
        let steps = steps(&planned(3), &journaled, true);
        assert_eq!(
            statuses(&steps),
            [("done", false), ("running", true), ("pending", false)]
        );
    }

    /// Between two steps of a running rollout the next one is current; a stopped
    /// rollout points at the step that failed, and its rollback steps follow.
    #[test]
    fn between_steps_the_next_is_current_and_a_failure_stays_visible() {
        let journaled = [record(Phase::Forward, 0, Some(StepOutcome::Ok))];
        assert_eq!(
            statuses(&steps(&planned(2), &journaled, true)),
            [("done", false), ("pending", true)]
        );
        let journaled = [
            record(Phase::Forward, 0, Some(StepOutcome::Ok)),
            record(Phase::Forward, 1, Some(StepOutcome::Failed("no".into()))),
            record(Phase::RollbackFrom { wave: 0 }, 0, Some(StepOutcome::Ok)),
        ];
        let steps = steps(&planned(3), &journaled, false);
        assert_eq!(
            statuses(&steps),
            [
                ("done", false),
                ("failed", true),
                ("pending", false),
                ("done", false)
            ]
        );
        assert_eq!(steps[3].phase, "rollback-from-wave-1");
        assert_eq!(steps[1].error.as_deref(), Some("no"));
    }

    /// Events come newest first, each end after its start, cut to the limit.
    #[test]
    fn events_are_newest_first() {
        let journaled = [
            record(Phase::Forward, 0, Some(StepOutcome::Ok)),
            record(Phase::Forward, 1, None),
        ];
        let events = events(&journaled, 2);
        let texts: Vec<&str> = events.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(texts, ["done: step 0", "started: step 1"]);
    }

    fn server(lb: &str, host: &str, status: &str) -> LbServer {
        LbServer {
            lb: lb.into(),
            backend: "be_app".into(),
            server: format!("slot-{host}"),
            host: Some(host.into()),
            status: status.into(),
            scur: 1,
            qcur: 0,
            stot: 5,
            hrsp_5xx: 0,
        }
    }

    /// The chart counts settled UP only (not `UP 1/3`, not NOLB), takes the
    /// weakest backend, and sums sessions on drained hosts only.
    #[test]
    fn a_sample_takes_the_weakest_backend_and_drained_sessions() {
        let servers = [
            server("lb-1", "web-1", "UP"),
            server("lb-1", "web-2", "NOLB"),
            server("lb-2", "web-1", "UP"),
            server("lb-2", "web-2", "UP 1/3"),
            server("lb-2", "web-3", "UP"),
        ];
        let host = |name: &str, drained: bool, sessions: u32| Host {
            name: name.into(),
            roles: vec![],
            reachable: true,
            error: None,
            release: None,
            drained: Some(drained),
            sessions: Some(sessions),
            holders: vec![],
            lb_sessions: vec![],
            lb_status: vec![],
            apache: None,
            drain: None,
        };
        let hosts = [host("web-1", false, 9), host("web-2", true, 3)];
        let s = sample(7, &hosts, &servers);
        assert_eq!(
            s,
            Sample {
                t_ms: 7,
                up: 1,
                draining_sessions: 3
            }
        );
    }

    fn journaled(t_ms: u64, up: Option<usize>, drains: &[(&str, u32, u64)]) -> JournalSample {
        JournalSample {
            format: crate::journal::FORMAT,
            t_ms,
            up,
            drains: drains
                .iter()
                .map(
                    |(host, sessions, idle_in)| crate::rollout::samples::DrainFacts {
                        host: (*host).into(),
                        sessions: Some(*sessions),
                        holders: vec!["127.0.0.1 (1 connection)".into()],
                        holds: vec![],
                        idle_in_ms: Some(*idle_in),
                        elapsed_ms: 0,
                        idle: false,
                    },
                )
                .collect(),
        }
    }

    /// The chart is the rollout's own samples (a sample without an LB reading
    /// is left out), thinned evenly to the limit with the newest kept.
    #[test]
    fn the_chart_comes_from_the_journaled_samples() {
        let samples: Vec<JournalSample> = (0..10)
            .map(|t| {
                journaled(
                    t,
                    (t != 3).then_some(2),
                    &[("web-1", 4, 0), ("web-2", 1, 0)],
                )
            })
            .collect();
        let all = history(&samples, 100);
        assert_eq!(all.len(), 9);
        assert_eq!(
            all[0],
            Sample {
                t_ms: 0,
                up: 2,
                draining_sessions: 5
            }
        );
        let thin = history(&samples, 3);
        let times: Vec<u64> = thin.iter().map(|p| p.t_ms).collect();
        assert_eq!(times, [2, 6, 9]);
    }

    /// A fresh sample's drain facts go on their host, the countdown moved on by
    /// the sample's age; a stale one (the wait is over) shows nothing.
    #[test]
    fn fresh_drain_facts_go_on_their_host_with_the_countdown_moved_on() {
        let host = |name: &str| Host {
            name: name.into(),
            roles: vec![],
            reachable: true,
            error: None,
            release: None,
            drained: Some(true),
            sessions: None,
            holders: vec![],
            lb_sessions: vec![],
            lb_status: vec![],
            apache: None,
            drain: None,
        };
        let mut hosts = vec![host("web-1"), host("web-2")];
        let sample = journaled(10_000, Some(1), &[("web-1", 1, 3_000)]);
        attach_drains(&mut hosts, Some(&sample), 11_000);
        let drain = hosts[0].drain.as_ref().expect("web-1 drains");
        assert_eq!(drain.idle_in_ms, Some(2_000));
        assert_eq!(drain.holders, ["127.0.0.1 (1 connection)"]);
        assert!(hosts[1].drain.is_none());
        let mut hosts = vec![host("web-1")];
        attach_drains(&mut hosts, Some(&sample), 10_000 + FRESH_MS + 1);
        assert!(
            hosts[0].drain.is_none(),
            "a stale sample is not the wait's news"
        );
        let sample = journaled(10_000, Some(1), &[("web-1", 1, 500)]);
        attach_drains(&mut hosts, Some(&sample), 12_000);
        assert_eq!(hosts[0].drain.as_ref().and_then(|d| d.idle_in_ms), Some(0));
    }
}
