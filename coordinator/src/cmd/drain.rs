//! `handover drain HOST... [--wait]` and `handover undrain HOST...`: the ad-hoc
//! single-host drain (runbook steps 12–13).
//!
//! Each named agent removes its health-check file. With `--wait`, whether a host
//! is idle is judged by its agent *and* every load balancer, in
//! [`crate::drain_wait`] (the rollout engine calls the same function); this
//! module only shows the progress and the end.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use handover_common::proto::drain::{
    ApacheReading, DrainProgress, DrainReply, DrainRequest, Holder, SessionReading,
};
use handover_common::proto::status::StatusReport;
use handover_common::proto::{Reply, Request};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::config::{CoordinatorConfig, HostEntry};
use crate::drain_wait::{
    Hold, HostDrained, HostProgress, HostResult, LbEvidence, WaitOptions, wait_for_sessions_to_end,
};
pub use crate::drain_wait::{IdleEvidence, host_is_idle};
use crate::fleet::Fleet;

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

/// One host being watched.
struct Watch {
    host: HostEntry,
    samples: VecDeque<(Duration, u32)>,
    last_elapsed: Option<Duration>,
    bar: Option<ProgressBar>,
    last_line: String,
}

impl Watch {
    fn record(&mut self, p: &DrainProgress) {
        if self.last_elapsed == Some(p.elapsed) {
            return;
        }
        self.last_elapsed = Some(p.elapsed);
        self.samples.push_back((p.elapsed, p.blocking));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| p.elapsed.saturating_sub(*t) > ETA_WINDOW)
        {
            self.samples.pop_front();
        }
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

/// "  lb-1 be_app/slot1 NOLB scur 0 qcur 0 stot +12 (0.1s ago)" per LB server.
fn lbs_text(lbs: &LbEvidence) -> String {
    let mut text = String::new();
    for s in &lbs.servers {
        text.push_str(&format!(
            "  {} {}/{} {} scur {} qcur {} stot +{} ({} ago)",
            s.lb,
            s.backend,
            s.server,
            s.status,
            s.scur,
            s.qcur,
            s.arrived,
            secs(s.steady_for)
        ));
    }
    for (lb, _) in &lbs.unreadable {
        text.push_str(&format!("  {lb} unreadable"));
    }
    text
}

/// One LB server in the JSON lines.
#[derive(Serialize)]
struct JsonLbServer<'a> {
    lb: &'a str,
    backend: &'a str,
    server: &'a str,
    status: &'a str,
    scur: u64,
    qcur: u64,
    stot: u64,
    arrived: u64,
    steady_ms: u128,
}

/// An LB that could not be read, in the JSON lines.
#[derive(Serialize)]
struct JsonLbError<'a> {
    lb: &'a str,
    error: &'a str,
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
    lbs: Option<Vec<JsonLbServer<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lb_errors: Option<Vec<JsonLbError<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    holding: Option<Vec<String>>,
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
            lbs: None,
            lb_errors: None,
            holding: None,
            drained: None,
            already: None,
            message: None,
        }
    }

    /// The agent's last sample and the LBs' figures.
    fn with_evidence(mut self, last: Option<&'a DrainProgress>, lbs: &'a LbEvidence) -> Self {
        if let Some(p) = last {
            let figures = p.apache.as_ref().and_then(|a| a.figures());
            self.sessions = Some(p.blocking);
            self.holders = Some(&p.sessions.holders);
            self.elapsed_ms = Some(p.elapsed.as_millis());
            self.apache_busy = figures.and_then(|f| f.busy_workers);
            self.apache_idle = figures.and_then(|f| f.idle_workers);
        }
        self.lbs = Some(
            lbs.servers
                .iter()
                .map(|s| JsonLbServer {
                    lb: s.lb.as_str(),
                    backend: &s.backend,
                    server: &s.server,
                    status: &s.status,
                    scur: s.scur,
                    qcur: s.qcur,
                    stot: s.stot,
                    arrived: s.arrived,
                    steady_ms: s.steady_for.as_millis(),
                })
                .collect(),
        );
        if !lbs.unreadable.is_empty() {
            self.lb_errors = Some(
                lbs.unreadable
                    .iter()
                    .map(|(lb, error)| JsonLbError {
                        lb: lb.as_str(),
                        error,
                    })
                    .collect(),
            );
        }
        self
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
    fn show(&self, w: &mut Watch, progress: &HostProgress<'_>) {
        if let Some(p) = progress.agent {
            w.record(p);
        }
        let eta = w.eta();
        let name = w.host.name.as_str();
        let host_text = match progress.agent {
            Some(p) => progress_text(p, eta),
            None => format!(
                "removing the health-check file…  elapsed {}",
                secs(progress.elapsed)
            ),
        };
        let text = format!("{host_text}{}", lbs_text(progress.lbs));
        match self {
            Display::Bars(_) => {
                if let Some(bar) = &w.bar {
                    bar.set_message(text);
                }
            }
            Display::Lines => {
                // Only changes, not ten identical lines a second.
                let key = format!(
                    "{} {} | {}",
                    progress.agent.map_or(0, |p| p.blocking),
                    progress
                        .agent
                        .map(|p| holders_text(&p.sessions.holders))
                        .unwrap_or_default(),
                    progress
                        .holds
                        .iter()
                        .map(Hold::label)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                if key != w.last_line {
                    println!("{name}  {text}");
                    w.last_line = key;
                }
            }
            Display::Json => {
                let mut event =
                    JsonEvent::new(name, "progress").with_evidence(progress.agent, progress.lbs);
                event.eta_ms = eta.map(|e| e.as_millis());
                event.elapsed_ms = Some(progress.elapsed.as_millis());
                event.holding = Some(progress.holds.iter().map(ToString::to_string).collect());
                event.print();
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
    if !options.wait {
        return drain_now(config, &hosts, options.json).await;
    }
    let fleet = Fleet::new(config)?;
    let display = if options.json {
        Display::Json
    } else if std::io::stdout().is_terminal() {
        Display::Bars(MultiProgress::new())
    } else {
        Display::Lines
    };
    let mut watches: Vec<Watch> = hosts
        .iter()
        .map(|host| Watch {
            host: host.clone(),
            samples: VecDeque::new(),
            last_elapsed: None,
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
    let wait = WaitOptions {
        timeout: options.timeout,
        quiet: options.quiet,
    };
    let outcome = wait_for_sessions_to_end(&fleet, config, &hosts, wait, &mut |progress| {
        if let Some(w) = watches.iter_mut().find(|w| &w.host.name == progress.host) {
            display.show(w, progress);
        }
    })
    .await;
    fleet.close().await;
    let outcome = outcome?;
    let mut all_idle = true;
    for (w, drained) in watches.iter().zip(&outcome.hosts) {
        all_idle &= report_wait(w, drained, options, &display);
    }
    Ok(if all_idle {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `handover drain` without `--wait`: remove the health-check files, report.
async fn drain_now(
    config: &CoordinatorConfig,
    hosts: &[HostEntry],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let fleet = Fleet::new(config)?;
    let results = fleet
        .call_each(hosts, |_| {
            Request::Drain(DrainRequest::Drain { wait: None })
        })
        .await;
    fleet.close().await;
    let mut failed = 0;
    for (host, result) in results {
        let name = host.name.as_str();
        match result {
            Ok(Reply::Drain(DrainReply::Drained {
                already, status, ..
            })) => {
                if json {
                    JsonEvent {
                        sessions: status
                            .sessions
                            .as_ref()
                            .and_then(|s| s.count())
                            .map(|c| c.total),
                        drained: Some(true),
                        already: Some(already),
                        ..JsonEvent::new(name, "drained")
                    }
                    .print();
                } else {
                    println!("{name}: {}", drained_text(already));
                }
            }
            other => {
                failed += 1;
                let message = match other {
                    Err(e) => e.to_string(),
                    Ok(reply) => format!("unexpected answer to drain: {reply:?}"),
                };
                print_failure(name, message, json);
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn drained_text(already: bool) -> &'static str {
    if already {
        "already drained (health-check file was removed)"
    } else {
        "drained: health-check file removed, HAProxy sends no new sessions"
    }
}

fn print_failure(name: &str, message: String, json: bool) {
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

/// Prints one host's end of a wait; `true` if it is drained and idle.
fn report_wait(
    w: &Watch,
    drained: &HostDrained,
    options: &DrainOptions,
    display: &Display,
) -> bool {
    let name = w.host.name.as_str();
    let (ok, event, text) = match &drained.result {
        HostResult::Idle { already, waited } => (
            true,
            "drained",
            format!(
                "{}; idle after {} (host and every load balancer)",
                drained_text(*already),
                secs(*waited)
            ),
        ),
        HostResult::TimedOut { .. } => (
            false,
            "timeout",
            format!(
                "TIMED OUT: {}\n  to put {name} back in service: handover undrain {name}",
                drained
                    .timeout_text(options.timeout)
                    .unwrap_or_else(|| "timed out".into())
            ),
        ),
        HostResult::Failed(message) => (false, "failed", format!("FAILED: {message}")),
    };
    match display {
        Display::Json => {
            let mut event =
                JsonEvent::new(name, event).with_evidence(drained.last.as_ref(), &drained.lbs);
            match &drained.result {
                HostResult::Idle { already, waited } => {
                    event.drained = Some(true);
                    event.already = Some(*already);
                    event.elapsed_ms = Some(waited.as_millis());
                    event.holding = Some(Vec::new());
                }
                HostResult::TimedOut { holds, .. } => {
                    event.drained = Some(true);
                    event.holding = Some(holds.iter().map(ToString::to_string).collect());
                    event.message = Some(text.clone());
                }
                HostResult::Failed(_) => event.message = Some(text.clone()),
            }
            event.print();
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
                print_failure(name, message, json);
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
}
