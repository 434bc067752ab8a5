//! Where a rollout's time went, like `systemd-analyze blame` (issue 14): per wave,
//! each step's time split into the waits the plan asked for, the time clients
//! kept their sessions, and Handover's own time — what is left, and what a faster
//! Handover could shorten. Built from the journal alone (each step's start, end
//! and outputs) and the plan journaled with the rollout, so `handover show ID
//! --timings` prints the same summary as the end of `handover rollout`.

use std::collections::BTreeMap;
use std::time::Duration;

use handover_common::duration;

use crate::journal::{StepOutcome, StepRecord};
use crate::plan::Plan;
use crate::rollout::steps::{self, Action, Phase};

/// The waits a plan asks for, whatever Handover does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asked {
    /// `[rollout] quiet`: a drained host stays idle this long before it is called
    /// drained.
    pub quiet: Duration,
    /// `[health]`: `rise` passes `interval` apart, the first at once.
    pub health_rise: Duration,
}

impl Asked {
    /// The waits `plan` asks for.
    pub fn of(plan: &Plan) -> Self {
        let h = &plan.file.health;
        Asked {
            quiet: plan.file.rollout.quiet,
            health_rise: h.interval.saturating_mul(h.rise.get().saturating_sub(1)),
        }
    }
}

/// One step's time, split. `took = plan + lb + sessions + own`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Split {
    /// From start to end.
    pub took: Duration,
    /// Waits the plan asked for (quiet period, health rise × interval, a pause).
    pub plan: Duration,
    /// HAProxy's fresh checks after an attach (`rise` × `inter`, as each LB
    /// agent reported it): a wait the LBs' own config asks for.
    pub lb: Duration,
    /// Clients still holding sessions on a draining host.
    pub sessions: Duration,
    /// Handover's own time: calls, checks, switching.
    pub own: Duration,
}

/// How `took` of a step doing `action` splits, given what its outputs say.
pub fn split(
    action: &Action,
    took: Duration,
    outputs: &BTreeMap<String, String>,
    asked: Asked,
) -> Split {
    let plan = match action {
        Action::WaitForSessionsToEnd => asked.quiet,
        Action::VerifyHealth => asked.health_rise,
        Action::Pause(pause) => *pause,
        _ => Duration::ZERO,
    }
    .min(took);
    let lb = match action {
        // The LBs check at once, each on its own: the slowest one's checks.
        Action::AttachToLoadBalancers => longest(outputs, "checks/", "").min(took - plan),
        _ => Duration::ZERO,
    };
    let sessions = match action {
        // The agent's own wait until idle, quiet period included, for the host
        // that waited longest: beyond the quiet period, clients were still there.
        Action::WaitForSessionsToEnd => longest(outputs, "sessions/", "idle after ")
            .saturating_sub(asked.quiet)
            .min(took - plan - lb),
        _ => Duration::ZERO,
    };
    Split {
        took,
        plan,
        lb,
        sessions,
        own: took - plan - lb - sessions,
    }
}

/// The longest duration among outputs whose key starts with `key` and whose
/// value is `prefix` then a duration ("idle after 2s 100ms", "400ms").
fn longest(outputs: &BTreeMap<String, String>, key: &str, prefix: &str) -> Duration {
    outputs
        .iter()
        .filter(|(k, _)| k.starts_with(key))
        .filter_map(|(_, v)| duration::parse(v.strip_prefix(prefix)?).ok())
        .max()
        .unwrap_or_default()
}

/// Where a step's time is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Group {
    /// Staging the release on every host, before the first wave.
    Staging,
    /// A wave (from 0) of the plan's forward steps.
    Wave(usize),
    /// The steps of a rollback or a repair.
    Other,
}

/// One journaled step's timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepTiming {
    /// Where it is shown.
    pub group: Group,
    /// What it did, as journaled.
    pub title: String,
    /// Its time, split.
    pub split: Split,
}

/// The timing of every step of `records` that ended well.
pub fn timings(plan: &Plan, records: &[StepRecord]) -> Vec<StepTiming> {
    let forward = steps::in_place(plan);
    let asked = Asked::of(plan);
    records
        .iter()
        .filter(|r| r.outcome == Some(StepOutcome::Ok))
        .filter_map(|r| {
            let took = Duration::from_millis(r.ended_ms?.saturating_sub(r.started_ms));
            let step = (r.phase == Phase::Forward)
                .then(|| forward.get(r.index))
                .flatten();
            let split = match step {
                Some(s) => split(&s.action, took, &r.outputs, asked),
                None => Split {
                    took,
                    own: took,
                    ..Split::default()
                },
            };
            let group = match step {
                Some(s) if s.action == Action::StageRelease => Group::Staging,
                Some(s) => Group::Wave(s.wave),
                None => Group::Other,
            };
            Some(StepTiming {
                group,
                title: r.title.clone(),
                split,
            })
        })
        .collect()
}

fn add(a: Split, b: Split) -> Split {
    Split {
        took: a.took + b.took,
        plan: a.plan + b.plan,
        lb: a.lb + b.lb,
        sessions: a.sessions + b.sessions,
        own: a.own + b.own,
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// The summary: per wave its total, then its steps longest first.
pub fn render(timings: &[StepTiming]) -> String {
    let mut groups: BTreeMap<Group, Vec<&StepTiming>> = BTreeMap::new();
    for t in timings {
        groups.entry(t.group).or_default().push(t);
    }
    let mut out = headline(timings, &groups);
    for (group, mut steps) in groups {
        let sum = steps.iter().map(|t| t.split).fold(Split::default(), add);
        let name = match group {
            Group::Staging => "staging (before wave 1)".to_string(),
            Group::Wave(w) => format!("wave {}", w + 1),
            Group::Other => "other phases".to_string(),
        };
        out.push_str(&format!(
            "{name}: {} (plan {}, lb checks {}, sessions {}, own {})\n",
            secs(sum.took),
            secs(sum.plan),
            secs(sum.lb),
            secs(sum.sessions),
            secs(sum.own)
        ));
        steps.sort_by_key(|t| std::cmp::Reverse(t.split.took));
        for t in steps {
            let s = t.split;
            out.push_str(&format!(
                "  {:>8}  plan {:>7}  lb {:>7}  sessions {:>7}  own {:>7}  {}\n",
                secs(s.took),
                secs(s.plan),
                secs(s.lb),
                secs(s.sessions),
                secs(s.own),
                t.title
            ));
        }
    }
    out
}

/// The first line: the whole time split, and Handover's own time per wave (the
/// waves' own time only: staging and ways back are shown apart).
fn headline(timings: &[StepTiming], groups: &BTreeMap<Group, Vec<&StepTiming>>) -> String {
    let total = timings.iter().map(|t| t.split).fold(Split::default(), add);
    let in_waves: Vec<Duration> = groups
        .iter()
        .filter(|(g, _)| matches!(g, Group::Wave(_)))
        .map(|(_, steps)| steps.iter().map(|t| t.split.own).sum())
        .collect();
    let waves = u32::try_from(in_waves.len().max(1)).unwrap_or(u32::MAX);
    let per_wave = in_waves.iter().sum::<Duration>() / waves;
    format!(
        "timings: {} in all = {} waits the plan asked for + {} HAProxy's fresh checks (the LBs' rise × inter) + {} sessions ending + {} Handover's own ({} own per wave)\n",
        secs(total.took),
        secs(total.plan),
        secs(total.lb),
        secs(total.sessions),
        secs(total.own),
        secs(per_wave),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const ASKED: Asked = Asked {
        quiet: Duration::from_secs(2),
        health_rise: Duration::from_secs(1),
    };

    #[test]
    fn a_drain_wait_splits_into_the_quiet_period_the_sessions_and_our_own_time() {
        let outputs = BTreeMap::from([
            (
                "sessions/web-1".to_string(),
                "idle after 3s 500ms".to_string(),
            ),
            (
                "sessions/web-2".to_string(),
                "idle after 2s 100ms".to_string(),
            ),
        ]);
        let s = split(&Action::WaitForSessionsToEnd, ms(3_700), &outputs, ASKED);
        assert_eq!(
            s,
            Split {
                took: ms(3_700),
                plan: ms(2_000),
                lb: ms(0),
                sessions: ms(1_500),
                own: ms(200)
            }
        );
    }

    #[test]
    fn a_step_shorter_than_its_asked_wait_is_all_wait_and_never_negative() {
        let s = split(
            &Action::WaitForSessionsToEnd,
            ms(1_000),
            &BTreeMap::new(),
            ASKED,
        );
        assert_eq!(
            s,
            Split {
                took: ms(1_000),
                plan: ms(1_000),
                lb: ms(0),
                sessions: ms(0),
                own: ms(0)
            }
        );
        let outputs = BTreeMap::from([("sessions/web-1".to_string(), "idle after 9s".to_string())]);
        let s = split(&Action::WaitForSessionsToEnd, ms(2_500), &outputs, ASKED);
        assert_eq!(s.plan + s.sessions + s.own, s.took);
        assert_eq!(s.own, ms(0));
    }

    #[test]
    fn health_rise_and_pauses_are_asked_the_rest_is_our_own() {
        let none = BTreeMap::new();
        let verify = split(&Action::VerifyHealth, ms(1_300), &none, ASKED);
        assert_eq!((verify.plan, verify.own), (ms(1_000), ms(300)));
        let pause = split(&Action::Pause(ms(5_000)), ms(5_010), &none, ASKED);
        assert_eq!((pause.plan, pause.own), (ms(5_000), ms(10)));
        let apply = split(&Action::ApplyRevision, ms(250), &none, ASKED);
        assert_eq!((apply.plan, apply.own), (ms(0), ms(250)));
    }

    #[test]
    fn the_summary_gives_each_wave_its_total_and_its_steps_longest_first() {
        let step = |wave: Option<usize>, title: &str, took, plan| StepTiming {
            group: wave.map_or(Group::Staging, Group::Wave),
            title: title.into(),
            split: Split {
                took: ms(took),
                plan: ms(plan),
                lb: ms(0),
                sessions: ms(0),
                own: ms(took - plan),
            },
        };
        let text = render(&[
            step(Some(0), "apply", 300, 0),
            step(Some(0), "wait", 2_100, 2_000),
            step(Some(1), "apply", 200, 0),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("timings: 2.60s in all = 2.00s waits"),
            "{text}"
        );
        assert!(lines[0].contains("(0.30s own per wave)"), "{text}");
        assert_eq!(
            lines[1],
            "wave 1: 2.40s (plan 2.00s, lb checks 0.00s, sessions 0.00s, own 0.40s)"
        );
        assert!(
            lines[2].ends_with("wait") && lines[3].ends_with("apply"),
            "{text}"
        );
        assert_eq!(
            lines[4],
            "wave 2: 0.20s (plan 0.00s, lb checks 0.00s, sessions 0.00s, own 0.20s)"
        );
    }

    /// Issue 14: HAProxy's fresh checks after an attach (rise × inter, as the LB
    /// agents reported them) are a wait the LBs' config asks for, not our own;
    /// the slowest LB counts, and never more than the step took.
    #[test]
    fn an_attach_splits_into_the_lbs_fresh_checks_and_our_own_time() {
        let outputs = BTreeMap::from([
            ("attached/lb-1".to_string(), "web-1".to_string()),
            ("checks/lb-1".to_string(), "400ms".to_string()),
            ("checks/lb-2".to_string(), "600ms".to_string()),
        ]);
        let s = split(&Action::AttachToLoadBalancers, ms(750), &outputs, ASKED);
        assert_eq!(
            (s.plan, s.lb, s.sessions, s.own),
            (ms(0), ms(600), ms(0), ms(150))
        );
        let s = split(&Action::AttachToLoadBalancers, ms(500), &outputs, ASKED);
        assert_eq!((s.lb, s.own), (ms(500), ms(0)));
        // An LB agent that did not report its checks: all of it is ours, as before.
        let s = split(
            &Action::AttachToLoadBalancers,
            ms(500),
            &BTreeMap::new(),
            ASKED,
        );
        assert_eq!((s.lb, s.own), (ms(0), ms(500)));
        // Only an attach has LB checks.
        let s = split(&Action::ApplyRevision, ms(700), &outputs, ASKED);
        assert_eq!((s.lb, s.own), (ms(0), ms(700)));
    }

    /// Staging is shown before the waves and kept out of the own time per wave.
    #[test]
    fn staging_is_shown_apart_and_not_counted_per_wave() {
        let step = |group, took| StepTiming {
            group,
            title: "x".into(),
            split: Split {
                took: ms(took),
                own: ms(took),
                ..Split::default()
            },
        };
        let text = render(&[
            step(Group::Wave(0), 100),
            step(Group::Staging, 900),
            step(Group::Wave(1), 300),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("(0.20s own per wave)"), "{text}");
        assert!(
            lines[1].starts_with("staging (before wave 1): 0.90s"),
            "{text}"
        );
        assert!(lines[3].starts_with("wave 1: 0.10s"), "{text}");
    }
}
