//! `handover drain HOST... [--wait]` and `handover undrain HOST...`: the ad-hoc
//! single-host drain, and runbook steps 12–13 for the rollout engine to reuse.
//!
//! Each named agent removes its health-check file; with `--wait` it stays on the
//! stream pushing its session count until idle, and every host is watched at once.
//! Whether a host counts as idle is decided in one place, [`host_is_idle`], from
//! [`IdleEvidence`]: today the agent's own verdict; the HAProxy issue adds the load
//! balancers' figures there (scur = 0 and qcur = 0 on every LB, stot not rising
//! for the quiet period) and passes the LBs' addresses as [`DrainWait::exempt`] so
//! their pooled connections, counted by the host but carrying no session, do not
//! hold the agent's wait. That is why holders are kept by remote address.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use handover_common::duration;
use handover_common::proto::drain::{
    ApacheReading, DrainProgress, DrainReply, DrainRequest, DrainStatus, DrainWait, Holder,
    SessionReading,
};
use handover_common::proto::status::StatusReport;
use handover_common::proto::{FailureKind, Progress, Reply, Request};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::{CoordinatorConfig, HostEntry};
use crate::fleet::{Fleet, FleetError};

/// How long past the agent's own timeout the coordinator waits for its answer.
const ANSWER_GRACE: Duration = Duration::from_secs(15);
/// The ETA is estimated from the decay over this much recent history.
const ETA_WINDOW: Duration = Duration::from_secs(30);

/// `handover drain` options.
#[derive(Debug, Clone)]
pub struct DrainOptions {
    /// Wait until every host is idle.
    pub wait: bool,
    /// Give up waiting after this long (hosts stay drained).
    pub timeout: Duration,
    /// Idle = no session for this long; `None` takes each agent's `quiet_period`.
    pub quiet: Option<Duration>,
    /// JSON output.
    pub json: bool,
}

/// Everything known about one host's remaining sessions, for [`host_is_idle`].
#[derive(Debug, Clone, Copy)]
pub struct IdleEvidence<'a> {
    /// The agent saw no blocking session for its quiet period and said so.
    pub agent_idle: bool,
    /// The agent's last sample, if any.
    pub last: Option<&'a DrainProgress>,
    // The HAProxy issue adds here: the LBs' scur/qcur/stot figures for this host.
}

/// The one decision "this host is drained and idle".
pub fn host_is_idle(evidence: &IdleEvidence<'_>) -> bool {
    evidence.agent_idle && evidence.last.is_none_or(|p| p.blocking == 0 && p.drained)
}

/// Load balancer addresses whose connections must not hold a drain. Empty until
/// the HAProxy issue supplies the LB hosts' addresses.
fn exempt_addresses(_config: &CoordinatorConfig) -> Vec<IpAddr> {
    Vec::new()
}

/// How one host's drain ended.
#[derive(Debug)]
enum Outcome {
    /// Drained (and idle, if waited on).
    Drained {
        already: bool,
        waited: Option<Duration>,
        status: DrainStatus,
    },
    /// The wait ran out; the host stays drained.
    TimedOut(String),
    /// Anything else.
    Failed(String),
}

/// One host being watched.
struct Watch {
    host: HostEntry,
    samples: VecDeque<(Duration, u32)>,
    last: Option<DrainProgress>,
    bar: Option<ProgressBar>,
    last_line: String,
}

impl Watch {
    fn record(&mut self, p: DrainProgress) {
        self.samples.push_back((p.elapsed, p.blocking));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| p.elapsed.saturating_sub(*t) > ETA_WINDOW)
        {
            self.samples.pop_front();
        }
        self.last = Some(p);
    }

    fn eta(&self) -> Option<Duration> {
        eta_from_decay(self.samples.iter().copied())
    }
}

/// Time until zero at the rate the count fell over the samples, if it fell.
pub fn eta_from_decay(samples: impl Iterator<Item = (Duration, u32)>) -> Option<Duration> {
    let samples: Vec<(Duration, u32)> = samples.collect();
    let (t0, n0) = *samples.first()?;
    let (t1, n1) = *samples.last()?;
    if n1 == 0 {
        return Some(Duration::ZERO);
    }
    let span = t1.checked_sub(t0)?.as_secs_f64();
    if n1 >= n0 || span <= 0.0 {
        return None;
    }
    let rate = f64::from(n0 - n1) / span;
    Some(Duration::from_secs_f64(f64::from(n1) / rate))
}

fn holders_text(holders: &[Holder]) -> String {
    holders
        .iter()
        .map(|h| format!("{} ×{}", h.remote, h.connections))
        .collect::<Vec<_>>()
        .join(", ")
}

fn apache_text(apache: Option<&ApacheReading>) -> Option<String> {
    let f = apache?.figures()?;
    Some(format!(
        "apache {}/{}",
        f.busy_workers.map_or("?".into(), |v| v.to_string()),
        f.idle_workers.map_or("?".into(), |v| v.to_string())
    ))
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// "3 sessions (127.0.0.1 ×2, 10.0.0.4 ×1)  elapsed 4.2s  ETA 6.0s  apache 2/73".
fn progress_text(p: &DrainProgress, eta: Option<Duration>) -> String {
    let mut text = if p.blocking == 0 {
        format!(
            "no sessions, quiet {} of {}",
            secs(p.quiet_for),
            secs(p.quiet)
        )
    } else {
        let plural = if p.blocking == 1 { "" } else { "s" };
        format!(
            "{} session{plural} ({})",
            p.blocking,
            holders_text(&p.sessions.holders)
        )
    };
    text.push_str(&format!("  elapsed {}", secs(p.elapsed)));
    if p.blocking > 0 {
        match eta {
            Some(eta) => text.push_str(&format!("  ETA {}", secs(eta))),
            None => text.push_str("  ETA ?"),
        }
    }
    if let Some(a) = apache_text(p.apache.as_ref()) {
        text.push_str(&format!("  {a}"));
    }
    text
}

/// One JSON line of `drain --wait --json`.
#[derive(Serialize)]
struct JsonEvent<'a> {
    host: &'a str,
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sessions: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    holders: Option<&'a [Holder]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    elapsed_ms: Option<u128>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eta_ms: Option<u128>,
    #[serde(skip_serializing_if = "Option::is_none")]
    apache_busy: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    apache_idle: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    drained: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    already: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

impl<'a> JsonEvent<'a> {
    fn new(host: &'a str, event: &'a str) -> Self {
        JsonEvent {
            host,
            event,
            sessions: None,
            holders: None,
            elapsed_ms: None,
            eta_ms: None,
            apache_busy: None,
            apache_idle: None,
            drained: None,
            already: None,
            message: None,
        }
    }

    fn print(&self) {
        if let Ok(line) = serde_json::to_string(self) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}

enum Display {
    Bars(MultiProgress),
    Lines,
    Json,
}

impl Display {
    fn show(&self, w: &mut Watch, p: DrainProgress) {
        w.record(p);
        let Some(p) = &w.last else { return };
        let eta = w.eta();
        let name = w.host.name.as_str();
        match self {
            Display::Bars(_) => {
                if let Some(bar) = &w.bar {
                    bar.set_message(progress_text(p, eta));
                }
            }
            Display::Lines => {
                // Only changes, not ten identical lines a second.
                let key = format!("{} {}", p.blocking, holders_text(&p.sessions.holders));
                if key != w.last_line {
                    println!("{name}  {}", progress_text(p, eta));
                    w.last_line = key;
                }
            }
            Display::Json => {
                let figures = p.apache.as_ref().and_then(|a| a.figures());
                JsonEvent {
                    sessions: Some(p.blocking),
                    holders: Some(&p.sessions.holders),
                    elapsed_ms: Some(p.elapsed.as_millis()),
                    eta_ms: eta.map(|e| e.as_millis()),
                    apache_busy: figures.and_then(|f| f.busy_workers),
                    apache_idle: figures.and_then(|f| f.idle_workers),
                    ..JsonEvent::new(name, "progress")
                }
                .print();
            }
        }
    }
}

/// Runs `handover drain`.
pub async fn drain(
    config: &CoordinatorConfig,
    names: &[String],
    options: &DrainOptions,
) -> anyhow::Result<ExitCode> {
    let hosts = config.select(names)?;
    let fleet = Fleet::new(config)?;
    let wait = options.wait.then(|| DrainWait {
        timeout: options.timeout,
        quiet: options.quiet,
        exempt: exempt_addresses(config),
    });
    let display = if options.json {
        Display::Json
    } else if options.wait && std::io::stdout().is_terminal() {
        Display::Bars(MultiProgress::new())
    } else {
        Display::Lines
    };
    let mut watches: Vec<Watch> = hosts
        .iter()
        .map(|host| Watch {
            host: host.clone(),
            samples: VecDeque::new(),
            last: None,
            bar: match &display {
                Display::Bars(multi) => {
                    let bar = multi.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {prefix:<12} {msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.set_prefix(host.name.to_string());
                    bar.set_message("removing the health-check file…");
                    bar.enable_steady_tick(Duration::from_millis(120));
                    Some(bar)
                }
                _ => None,
            },
            last_line: String::new(),
        })
        .collect();

    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, DrainProgress)>();
    let calls = hosts.iter().enumerate().map(|(i, host)| {
        let request = Request::Drain(DrainRequest::Drain { wait: wait.clone() });
        let tx = tx.clone();
        let fleet = &fleet;
        async move {
            let call = fleet.call(host, None, request, move |progress| {
                // Irrefutable until the other features fill their progress enums.
                #[allow(irrefutable_let_patterns)]
                if let Progress::Drain(p) = progress {
                    let _ = tx.send((i, p));
                }
            });
            let limit = options.timeout + ANSWER_GRACE;
            let result = if options.wait {
                tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
                    Err(FleetError::Connection(format!(
                        "no answer within {} (the agent's timeout plus {})",
                        duration::format(limit),
                        duration::format(ANSWER_GRACE)
                    )))
                })
            } else {
                call.await
            };
            (i, outcome(result))
        }
    });
    let calls: Vec<_> = calls.collect();
    // Only the calls hold senders now: the channel closes when they are done.
    drop(tx);
    let all = futures::future::join_all(calls);
    tokio::pin!(all);
    let outcomes = loop {
        tokio::select! {
            Some((i, p)) = rx.recv() => {
                if let Some(w) = watches.get_mut(i) {
                    display.show(w, p);
                }
            }
            outcomes = &mut all => break outcomes,
        }
    };
    // Progress sent just before each answer is still in the channel.
    while let Ok((i, p)) = rx.try_recv() {
        if let Some(w) = watches.get_mut(i) {
            display.show(w, p);
        }
    }
    let mut all_idle = true;
    for (i, outcome) in outcomes {
        let Some(w) = watches.get(i) else { continue };
        let ok = report(w, &outcome, options, &display);
        all_idle &= ok;
    }
    fleet.close().await;
    Ok(if all_idle {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn outcome(result: Result<Reply, FleetError>) -> Outcome {
    match result {
        Ok(Reply::Drain(DrainReply::Drained {
            already,
            waited,
            status,
        })) => Outcome::Drained {
            already,
            waited,
            status,
        },
        Ok(other) => Outcome::Failed(format!("unexpected answer to drain: {other:?}")),
        Err(FleetError::Agent(f)) if f.kind == FailureKind::Timeout => Outcome::TimedOut(f.message),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// Prints one host's result; `true` if it is drained (and idle when waited on).
fn report(w: &Watch, outcome: &Outcome, options: &DrainOptions, display: &Display) -> bool {
    let name = w.host.name.as_str();
    let (ok, event, text) = match outcome {
        Outcome::Drained {
            already, waited, ..
        } => {
            let idle = !options.wait
                || host_is_idle(&IdleEvidence {
                    agent_idle: waited.is_some(),
                    last: w.last.as_ref(),
                });
            let mut text = if *already {
                "already drained (health-check file was removed)".to_string()
            } else {
                "drained: health-check file removed, HAProxy sends no new sessions".to_string()
            };
            if let Some(waited) = waited {
                text.push_str(&format!("; idle after {}", secs(*waited)));
            }
            (idle, if idle { "drained" } else { "not-idle" }, text)
        }
        Outcome::TimedOut(message) => (
            false,
            "timeout",
            format!(
                "TIMED OUT: {message}\n  to put {name} back in service: handover undrain {name}"
            ),
        ),
        Outcome::Failed(message) => (false, "failed", format!("FAILED: {message}")),
    };
    match display {
        Display::Json => {
            let (already, drained) = match outcome {
                Outcome::Drained { already, .. } => (Some(*already), Some(true)),
                Outcome::TimedOut(_) => (None, Some(true)),
                Outcome::Failed(_) => (None, None),
            };
            let last = w.last.as_ref();
            let counted = match outcome {
                Outcome::Drained { status, .. } => status
                    .sessions
                    .as_ref()
                    .and_then(|s| s.count())
                    .map(|c| c.total),
                _ => None,
            };
            JsonEvent {
                sessions: last.map(|p| p.blocking).or(counted),
                holders: last.map(|p| p.sessions.holders.as_slice()),
                elapsed_ms: last.map(|p| p.elapsed.as_millis()),
                drained,
                already,
                message: (!ok).then(|| text.clone()),
                ..JsonEvent::new(name, event)
            }
            .print();
        }
        Display::Bars(_) => {
            if let Some(bar) = &w.bar {
                bar.finish_with_message(if ok {
                    text.clone()
                } else {
                    text.replace('\n', " ")
                });
            }
            if !ok {
                eprintln!("{name}: {text}");
            }
        }
        Display::Lines => {
            if ok {
                println!("{name}: {text}");
            } else {
                eprintln!("{name}: {text}");
            }
        }
    }
    ok
}

/// Runs `handover undrain`.
pub async fn undrain(
    config: &CoordinatorConfig,
    names: &[String],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let hosts = config.select(names)?;
    let fleet = Fleet::new(config)?;
    let results = fleet
        .call_each(&hosts, |_| Request::Drain(DrainRequest::Undrain))
        .await;
    fleet.close().await;
    let mut failed = 0;
    for (host, result) in results {
        let name = host.name.as_str();
        match result {
            Ok(Reply::Drain(DrainReply::Undrained { already, .. })) => {
                if json {
                    JsonEvent {
                        drained: Some(false),
                        already: Some(already),
                        ..JsonEvent::new(name, "undrained")
                    }
                    .print();
                } else if already {
                    println!("{name}: already in service (health-check file in place)");
                } else {
                    println!(
                        "{name}: undrained: health-check file restored, HAProxy will send sessions again"
                    );
                }
            }
            other => {
                failed += 1;
                let message = match other {
                    Err(e) => e.to_string(),
                    Ok(reply) => format!("unexpected answer to undrain: {reply:?}"),
                };
                if json {
                    JsonEvent {
                        message: Some(message),
                        ..JsonEvent::new(name, "failed")
                    }
                    .print();
                } else {
                    eprintln!("{name}: FAILED: {message}");
                }
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The `handover status` cells DRAINED, SESSIONS, APACHE (busy/idle) for a host.
pub fn status_cells(report: &StatusReport) -> [String; 3] {
    let Some(d) = &report.drain else {
        return ["-".into(), "-".into(), "-".into()];
    };
    let drained = match d.drained {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => "-".into(),
    };
    let sessions = match &d.sessions {
        Some(SessionReading::Counted(c)) => c.total.to_string(),
        Some(SessionReading::Unavailable(_)) => "?".into(),
        None => "-".into(),
    };
    let apache = match &d.apache {
        Some(ApacheReading::Figures(f)) => format!(
            "{}/{}",
            f.busy_workers.map_or("?".into(), |v| v.to_string()),
            f.idle_workers.map_or("?".into(), |v| v.to_string())
        ),
        Some(ApacheReading::Unavailable(_)) => "?".into(),
        None => "-".into(),
    };
    [drained, sessions, apache]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn eta_follows_the_observed_decay() {
        // 10 → 6 sessions in 2 s: 2/s, so 3 s to go.
        let eta = eta_from_decay([(ms(0), 10), (ms(1000), 8), (ms(2000), 6)].into_iter());
        assert_eq!(eta, Some(Duration::from_secs(3)));
        assert_eq!(eta_from_decay([(ms(0), 3), (ms(900), 3)].into_iter()), None);
        assert_eq!(eta_from_decay([(ms(0), 3), (ms(900), 4)].into_iter()), None);
        assert_eq!(eta_from_decay(std::iter::empty()), None);
        assert_eq!(
            eta_from_decay([(ms(5), 0)].into_iter()),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn idle_needs_the_agents_verdict_and_a_zero_last_sample() {
        let mut p = DrainProgress {
            sessions: handover_common::proto::drain::SessionCount {
                total: 0,
                holders: vec![],
                source: "test".into(),
            },
            blocking: 0,
            apache: None,
            elapsed: ms(400),
            quiet_for: ms(300),
            quiet: ms(300),
            drained: true,
        };
        assert!(host_is_idle(&IdleEvidence {
            agent_idle: true,
            last: Some(&p)
        }));
        assert!(!host_is_idle(&IdleEvidence {
            agent_idle: false,
            last: Some(&p)
        }));
        p.blocking = 1;
        assert!(!host_is_idle(&IdleEvidence {
            agent_idle: true,
            last: Some(&p)
        }));
    }
}
