//! `handover drain HOST... [--wait]` and `handover undrain HOST...`: the ad-hoc
//! single-host drain (runbook steps 12–13).
//!
//! Each named agent removes its health-check file. With `--wait`, whether a host
//! is idle is judged by its agent *and* every load balancer, in
//! [`crate::drain_wait`] (the rollout engine calls the same function); this
//! module only shows the progress and the end. Its JSON lines are
//! [`DrainEvent`]s, the shape `handover-agent drain --json` prints too.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use handover_common::proto::drain::{
    ApacheReading, DrainEvent, DrainEventKind, DrainLbError, DrainProgress, Holder, SessionReading,
    after_timeout, drained_text, millis, undrained_text,
};
use handover_common::proto::status::StatusReport;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::config::{CoordinatorConfig, HostEntry};
use crate::drain_wait::hold::secs;
use crate::drain_wait::{
    HostDrained, HostProgress, HostResult, LbEvidence, WaitOptions, wait_for_sessions_to_end,
};
use crate::fleet::{Fleet, calls};

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

fn holders_text(holders: &[Holder]) -> String {
    holders
        .iter()
        .map(|h| format!("{} ×{}", h.remote, h.connections))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "apache 2/73" (busy/idle); nothing when Apache could not be read (the
/// reason is in `status`, not repeated on every line).
fn apache_text(apache: Option<&ApacheReading>) -> Option<String> {
    let f = apache?.figures()?;
    Some(format!(
        "apache {}/{}",
        f.busy_workers.map_or("?".into(), |v| v.to_string()),
        f.idle_workers.map_or("?".into(), |v| v.to_string())
    ))
}

/// "3 sessions (127.0.0.1 ×2, 10.0.0.4 ×1)  elapsed 4.2s  ETA 6.0s  apache 2/73".
fn progress_text(progress: &HostProgress<'_>) -> String {
    let Some(p) = progress.agent else {
        return format!(
            "removing the health-check file…  elapsed {}",
            secs(progress.elapsed)
        );
    };
    let mut text = if p.blocking == 0 {
        format!(
            "no sessions, quiet {} of {}",
            secs(progress.quiet_for),
            secs(progress.quiet)
        )
    } else {
        let plural = if p.blocking == 1 { "" } else { "s" };
        format!(
            "{} session{plural} ({})",
            p.blocking,
            holders_text(&p.sessions.holders)
        )
    };
    text.push_str(&format!("  elapsed {}", secs(progress.elapsed)));
    if p.blocking > 0 {
        match progress.eta {
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
            secs(s.steady_for())
        ));
    }
    for (lb, _) in &lbs.unreadable {
        text.push_str(&format!("  {lb} unreadable"));
    }
    text
}

/// The LBs' figures in a JSON line.
fn with_lbs(mut event: DrainEvent, lbs: &LbEvidence) -> DrainEvent {
    event.lbs = Some(lbs.servers.clone());
    if !lbs.unreadable.is_empty() {
        event.lb_errors = Some(
            lbs.unreadable
                .iter()
                .map(|(lb, error)| DrainLbError {
                    lb: lb.to_string(),
                    error: error.clone(),
                })
                .collect(),
        );
    }
    event
}

/// A JSON line with the agent's last sample and the LBs' figures.
fn evidence_event(
    host: &str,
    kind: DrainEventKind,
    last: Option<&DrainProgress>,
    lbs: &LbEvidence,
) -> DrainEvent {
    let event = DrainEvent::new(host, kind);
    let event = match last {
        Some(p) => event.with_sample(p),
        None => event,
    };
    with_lbs(event, lbs)
}

fn print_json(event: &DrainEvent) {
    if let Ok(line) = serde_json::to_string(event) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

enum Display {
    Bars(MultiProgress),
    Lines,
    Json,
}

impl Display {
    fn choose(json: bool) -> Self {
        if json {
            Display::Json
        } else if std::io::stdout().is_terminal() {
            Display::Bars(MultiProgress::new())
        } else {
            Display::Lines
        }
    }

    fn bar(&self, host: &HostEntry) -> Option<ProgressBar> {
        let Display::Bars(multi) = self else {
            return None;
        };
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

    fn show(&self, bar: Option<&ProgressBar>, progress: &HostProgress<'_>) {
        let name = progress.host.as_str();
        match self {
            Display::Bars(_) => {
                if let Some(bar) = bar {
                    bar.set_message(format!(
                        "{}{}",
                        progress_text(progress),
                        lbs_text(progress.lbs)
                    ));
                }
            }
            // Only changes, not ten identical lines a second.
            Display::Lines if progress.changed => {
                println!(
                    "{name}  {}{}",
                    progress_text(progress),
                    lbs_text(progress.lbs)
                );
            }
            Display::Lines => {}
            Display::Json => {
                let mut event =
                    evidence_event(name, DrainEventKind::Progress, progress.agent, progress.lbs);
                event.elapsed_ms = Some(millis(progress.elapsed));
                event.eta_ms = progress.eta.map(millis);
                event.quiet_for_ms = Some(millis(progress.quiet_for));
                event.quiet_ms = Some(millis(progress.quiet));
                event.holding = Some(progress.holds.iter().map(ToString::to_string).collect());
                print_json(&event);
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
    let display = Display::choose(options.json);
    let bars: Vec<Option<ProgressBar>> = hosts.iter().map(|h| display.bar(h)).collect();
    let wait = WaitOptions {
        timeout: options.timeout,
        quiet: options.quiet,
    };
    let outcome = wait_for_sessions_to_end(&fleet, config, &hosts, wait, &mut |progress| {
        let i = hosts.iter().position(|h| &h.name == progress.host);
        display.show(i.and_then(|i| bars[i].as_ref()), progress);
    })
    .await;
    fleet.close().await;
    let outcome = outcome?;
    let mut all_idle = true;
    for (bar, drained) in bars.iter().zip(&outcome.hosts) {
        all_idle &= report_wait(bar.as_ref(), drained, options, &display);
    }
    Ok(exit(all_idle))
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `handover drain` without `--wait`: remove the health-check files, report.
async fn drain_now(
    config: &CoordinatorConfig,
    hosts: &[HostEntry],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let fleet = Fleet::new(config)?;
    let results = fleet.ask_each(hosts, |_| calls::drain(None)).await;
    fleet.close().await;
    let mut failed = 0;
    for (host, result) in results {
        let name = host.name.as_str();
        match result {
            Ok(calls::Drained {
                already, status, ..
            }) => {
                if json {
                    let mut event = DrainEvent::new(name, DrainEventKind::Drained);
                    event.sessions = status
                        .sessions
                        .as_ref()
                        .and_then(|s| s.count())
                        .map(|c| c.total);
                    event.drained = Some(true);
                    event.already = Some(already);
                    print_json(&event);
                } else {
                    println!("{name}: {}", drained_text(already, None));
                }
            }
            Err(e) => {
                failed += 1;
                print_failure(name, e.to_string(), json);
            }
        }
    }
    Ok(exit(failed == 0))
}

fn print_failure(name: &str, message: String, json: bool) {
    if json {
        let mut event = DrainEvent::new(name, DrainEventKind::Failed);
        event.message = Some(message);
        print_json(&event);
    } else {
        eprintln!("{name}: FAILED: {message}");
    }
}

/// The end of one host's wait: the JSON event, the line, and whether it is idle.
fn end_of_wait(drained: &HostDrained, options: &DrainOptions) -> (DrainEvent, String, bool) {
    let name = drained.host.name.as_str();
    let (kind, text) = match &drained.result {
        HostResult::Idle { already, waited } => (
            DrainEventKind::Drained,
            format!(
                "{} (host and every load balancer)",
                drained_text(*already, Some(*waited))
            ),
        ),
        HostResult::TimedOut { .. } => (
            DrainEventKind::Timeout,
            format!(
                "TIMED OUT: {}: {}",
                drained
                    .timeout_text(options.timeout)
                    .unwrap_or_else(|| "timed out".into()),
                after_timeout(&format!("handover undrain {name}"))
            ),
        ),
        HostResult::Failed(_, message) => (DrainEventKind::Failed, format!("FAILED: {message}")),
    };
    let mut event = evidence_event(name, kind, drained.last.as_ref(), &drained.lbs);
    match &drained.result {
        HostResult::Idle { already, waited } => {
            event.drained = Some(true);
            event.already = Some(*already);
            event.elapsed_ms = Some(millis(*waited));
            event.holding = Some(Vec::new());
        }
        HostResult::TimedOut { holds, .. } => {
            event.drained = Some(true);
            event.holding = Some(holds.iter().map(ToString::to_string).collect());
            event.message = Some(text.clone());
        }
        HostResult::Failed(..) => event.message = Some(text.clone()),
    }
    (event, text, drained.is_idle())
}

/// Prints one host's end of a wait; `true` if it is drained and idle.
fn report_wait(
    bar: Option<&ProgressBar>,
    drained: &HostDrained,
    options: &DrainOptions,
    display: &Display,
) -> bool {
    let name = drained.host.name.as_str();
    let (event, text, ok) = end_of_wait(drained, options);
    match display {
        Display::Json => print_json(&event),
        Display::Bars(_) => {
            if let Some(bar) = bar {
                bar.finish_with_message(text.clone());
            }
            if !ok {
                eprintln!("{name}: {text}");
            }
        }
        Display::Lines if ok => println!("{name}: {text}"),
        Display::Lines => eprintln!("{name}: {text}"),
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
    let results = fleet.ask_each(&hosts, |_| calls::undrain()).await;
    fleet.close().await;
    let mut failed = 0;
    for (host, result) in results {
        let name = host.name.as_str();
        match result {
            Ok(calls::Undrained { already, .. }) => {
                if json {
                    let mut event = DrainEvent::new(name, DrainEventKind::Undrained);
                    event.drained = Some(false);
                    event.already = Some(already);
                    print_json(&event);
                } else {
                    println!("{name}: {}", undrained_text(already));
                }
            }
            Err(e) => {
                failed += 1;
                print_failure(name, e.to_string(), json);
            }
        }
    }
    Ok(exit(failed == 0))
}

/// The `handover status` cells DRAINED, SESSIONS, APACHE (busy/idle) for a host.
pub fn status_cells(report: &StatusReport) -> [String; 3] {
    let Some(d) = &report.drain else {
        return ["-".into(), "-".into(), "-".into()];
    };
    let drained = match d.drained {
        // Absent and never saved by a drain: not drained, broken.
        _ if d.missing => "missing (never drained)".into(),
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
    use crate::drain_wait::Hold;

    fn web_1() -> HostEntry {
        let toml = r#"
            ca = "ca.pem"
            cert = "ops.pem"
            key = "ops.key"
            state_dir = "state"
            [[hosts]]
            name = "web-1"
            address = "10.0.0.5:7443"
            roles = ["app"]
        "#;
        let config: CoordinatorConfig = toml::from_str(toml).expect("config parses");
        config.hosts.iter().next().expect("one host").clone()
    }

    fn options() -> DrainOptions {
        DrainOptions {
            wait: true,
            timeout: Duration::from_secs(2),
            quiet: None,
            json: true,
        }
    }

    fn ended(result: HostResult) -> HostDrained {
        HostDrained {
            host: web_1(),
            result,
            last: None,
            lbs: LbEvidence::default(),
        }
    }

    #[test]
    fn the_end_of_a_wait_is_one_drained_line_or_the_facts_then_the_advice_once() {
        let (event, text, ok) = end_of_wait(
            &ended(HostResult::Idle {
                already: false,
                waited: Duration::from_millis(1500),
            }),
            &options(),
        );
        assert!(ok);
        assert_eq!(event.event, DrainEventKind::Drained);
        assert!(text.starts_with("drained: "), "{text}");
        assert!(text.contains("no session left after 1.5s"), "{text}");

        let held = ended(HostResult::TimedOut {
            holds: vec![Hold::NotYetQuiet {
                quiet_for: Duration::from_millis(200),
                quiet: Duration::from_secs(1),
            }],
            agent_message: None,
        });
        let (event, text, ok) = end_of_wait(&held, &options());
        assert!(!ok);
        assert_eq!(event.event, DrainEventKind::Timeout);
        assert_eq!(event.message.as_deref(), Some(text.as_str()));
        assert!(
            text.starts_with("TIMED OUT: web-1 is still in use after 2s"),
            "{text}"
        );
        assert!(text.contains("stays drained"), "{text}");
        assert_eq!(text.matches("handover undrain web-1").count(), 1, "{text}");
    }
}
