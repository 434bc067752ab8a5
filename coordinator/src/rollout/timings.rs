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

/// One step's time, split. `took = plan + sessions + own`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Split {
    /// From start to end.
    pub took: Duration,
    /// Waits the plan asked for (quiet period, health rise × interval, a pause).
    pub plan: Duration,
    /// Clients still holding sessions on a draining host.
    pub sessions: Duration,
    /// Handover's own time: calls, checks, HAProxy's fresh checks on attach.
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
    let sessions = match action {
        // The agent's own wait until idle, quiet period included, for the host
        // that waited longest: beyond the quiet period, clients were still there.
        Action::WaitForSessionsToEnd => longest_idle_wait(outputs)
            .saturating_sub(asked.quiet)
            .min(took - plan),
        _ => Duration::ZERO,
    };
    Split {
        took,
        plan,
        sessions,
        own: took - plan - sessions,
    }
}

/// The longest "idle after X" among a wait step's `sessions/HOST` outputs.
fn longest_idle_wait(outputs: &BTreeMap<String, String>) -> Duration {
    outputs
        .iter()
        .filter(|(k, _)| k.starts_with("sessions/"))
        .filter_map(|(_, v)| duration::parse(v.strip_prefix("idle after ")?).ok())
        .max()
        .unwrap_or_default()
}

/// One journaled step's timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepTiming {
    /// Its wave (from 0) in the plan's forward steps; `None` for the steps of a
    /// rollback or a repair, shown apart.
    pub wave: Option<usize>,
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
            Some(StepTiming {
                wave: step.map(|s| s.wave),
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
        sessions: a.sessions + b.sessions,
        own: a.own + b.own,
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// The summary: per wave its total, then its steps longest first.
pub fn render(timings: &[StepTiming]) -> String {
    let mut waves: BTreeMap<Option<usize>, Vec<&StepTiming>> = BTreeMap::new();
    for t in timings {
        waves.entry(t.wave).or_default().push(t);
    }
    let total = timings.iter().map(|t| t.split).fold(Split::default(), add);
    let forward_waves = waves.keys().filter(|w| w.is_some()).count().max(1);
    let mut out = format!(
        "timings: {} in all = {} waits the plan asked for + {} sessions ending + {} Handover's own ({} own per wave)\n",
        secs(total.took),
        secs(total.plan),
        secs(total.sessions),
        secs(total.own),
        secs(total.own / u32::try_from(forward_waves).unwrap_or(u32::MAX)),
    );
    for (wave, mut steps) in waves {
        let sum = steps.iter().map(|t| t.split).fold(Split::default(), add);
        let name = wave.map_or("other phases".to_string(), |w| format!("wave {}", w + 1));
        out.push_str(&format!(
            "{name}: {} (plan {}, sessions {}, own {})\n",
            secs(sum.took),
            secs(sum.plan),
            secs(sum.sessions),
            secs(sum.own)
        ));
        steps.sort_by_key(|t| std::cmp::Reverse(t.split.took));
        for t in steps {
            let s = t.split;
            out.push_str(&format!(
                "  {:>8}  plan {:>7}  sessions {:>7}  own {:>7}  {}\n",
                secs(s.took),
                secs(s.plan),
                secs(s.sessions),
                secs(s.own),
                t.title
            ));
        }
    }
    out
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
        let step = |wave, title: &str, took, plan| StepTiming {
            wave,
            title: title.into(),
            split: Split {
                took: ms(took),
                plan: ms(plan),
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
            "wave 1: 2.40s (plan 2.00s, sessions 0.00s, own 0.40s)"
        );
        assert!(
            lines[2].ends_with("wait") && lines[3].ends_with("apply"),
            "{text}"
        );
        assert_eq!(
            lines[4],
            "wave 2: 0.20s (plan 0.00s, sessions 0.00s, own 0.20s)"
        );
    }
}
