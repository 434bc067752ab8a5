//! The local operator's drain commands (`handover-agent drain|undrain`), which go
//! through the running daemon's control socket so the daemon stays the only
//! writer of the drain state, and how drain state reads in `status`.
//!
//! `--json` prints [`DrainEvent`] lines: the same shape as `handover drain
//! --json` (README, "Draining a host"); the wording of the lines is shared with
//! the coordinator too.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use handover_common::proto::drain::{
    ApacheReading, DrainEvent, DrainEventKind, DrainProgress, DrainReply, DrainRequest,
    DrainStatus, DrainWait, SessionReading, after_timeout, drained_text, millis, undrained_text,
};
use handover_common::proto::{FailureKind, Progress, Reply, Request};

use crate::control::{self, CallError};

/// Exit status when a wait timed out (the host stays drained).
pub const EXIT_TIMEOUT: u8 = 1;

/// `handover-agent drain [--wait] [--timeout DUR] [--quiet DUR] [--json]` on
/// host `host`.
pub async fn drain(
    socket: &Path,
    host: &str,
    wait: bool,
    timeout: Duration,
    quiet: Option<Duration>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let request = Request::Drain(DrainRequest::Drain {
        wait: wait.then(|| DrainWait {
            timeout,
            quiet,
            exempt: Vec::new(),
        }),
    });
    let mut lines = Lines::default();
    let result = control::call(socket, request, |progress| {
        let Progress::Drain(p) = progress else { return };
        if json {
            print_json(&DrainEvent::new(host, DrainEventKind::Progress).with_sample(&p));
        } else if let Some(line) = lines.next(&p) {
            println!("{:>6.1}s  {line}", p.elapsed.as_secs_f64());
        }
    })
    .await;
    finish(result, host, json)
}

/// `handover-agent undrain [--json]` on host `host`.
pub async fn undrain(socket: &Path, host: &str, json: bool) -> anyhow::Result<ExitCode> {
    let result = control::call(socket, Request::Drain(DrainRequest::Undrain), |_| {}).await;
    finish(result, host, json)
}

fn finish(result: Result<Reply, CallError>, host: &str, json: bool) -> anyhow::Result<ExitCode> {
    let reply = match result {
        Ok(Reply::Drain(reply)) => reply,
        Ok(other) => bail!("the agent answered with {other:?}"),
        Err(CallError::Failed(f)) if f.kind == FailureKind::Timeout => {
            let text = format!("{}: {}", f.message, after_timeout("handover-agent undrain"));
            if json {
                let mut event = DrainEvent::new(host, DrainEventKind::Timeout);
                event.drained = Some(true);
                event.message = Some(text.clone());
                print_json(&event);
            }
            eprintln!("handover-agent: drain wait timed out: {text}");
            return Ok(ExitCode::from(EXIT_TIMEOUT));
        }
        Err(e) => return Err(e.into()),
    };
    let (event, text) = match &reply {
        DrainReply::Drained {
            already, waited, ..
        } => {
            let mut event = DrainEvent::new(host, DrainEventKind::Drained);
            event.drained = Some(true);
            event.already = Some(*already);
            event.elapsed_ms = waited.map(millis);
            (event, drained_text(*already, *waited))
        }
        DrainReply::Undrained { already, .. } => {
            let mut event = DrainEvent::new(host, DrainEventKind::Undrained);
            event.drained = Some(false);
            event.already = Some(*already);
            (event, undrained_text(*already).to_string())
        }
        DrainReply::Sessions(status) => {
            print!("{}", status_lines(status));
            return Ok(ExitCode::SUCCESS);
        }
    };
    if json {
        print_json(&event);
    } else {
        println!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}

fn print_json(event: &DrainEvent) {
    if let Ok(line) = serde_json::to_string(event) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Plain progress lines: one per change of who holds the host, not one per
/// sample; Apache's error in full only when it first appears or changes.
#[derive(Default)]
struct Lines {
    key: Option<String>,
    apache_error: Option<String>,
}

impl Lines {
    /// The line to print for `p`, if it says something new.
    fn next(&mut self, p: &DrainProgress) -> Option<String> {
        let error = match &p.apache {
            Some(ApacheReading::Unavailable(why)) => Some(why.clone()),
            _ => None,
        };
        let new_error = error.is_some() && error != self.apache_error;
        self.apache_error = error;
        let holders: Vec<String> = p.sessions.holders.iter().map(|h| h.to_string()).collect();
        let key = format!("{} {} {}", p.blocking, holders.join(","), p.drained);
        if Some(&key) == self.key.as_ref() && !new_error {
            return None;
        }
        self.key = Some(key);
        Some(progress_line(p, new_error))
    }
}

/// "2 sessions: 127.0.0.1 (2 connections); Apache busy 1 idle 74".
pub fn progress_line(p: &DrainProgress, apache_error: bool) -> String {
    let mut line = if p.blocking == 0 {
        format!(
            "no sessions (quiet {} of {})",
            handover_common::duration::format(round_ms(p.quiet_for)),
            handover_common::duration::format(p.quiet)
        )
    } else {
        let holders: Vec<String> = p.sessions.holders.iter().map(|h| h.to_string()).collect();
        let plural = if p.blocking == 1 { "" } else { "s" };
        format!("{} session{plural}: {}", p.blocking, holders.join(", "))
    };
    match &p.apache {
        Some(ApacheReading::Unavailable(_)) if !apache_error => line.push_str("; Apache ?"),
        Some(apache) => {
            line.push_str("; ");
            line.push_str(&apache_summary(apache));
        }
        None => {}
    }
    line
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(millis(d))
}

/// "busy 1 idle 74" or why it is unknown.
pub fn apache_summary(apache: &ApacheReading) -> String {
    match apache {
        ApacheReading::Figures(f) => {
            let n = |v: Option<u32>| v.map_or("?".to_string(), |v| v.to_string());
            format!(
                "Apache busy {} idle {}",
                n(f.busy_workers),
                n(f.idle_workers)
            )
        }
        ApacheReading::Unavailable(why) => format!("Apache unavailable: {why}"),
    }
}

/// The drain lines of `handover-agent status`.
pub fn status_lines(status: &DrainStatus) -> String {
    let mut out = String::new();
    if let Some(drained) = status.drained {
        let file = status.health_file.as_deref().unwrap_or("?");
        out.push_str(&if status.missing {
            format!(
                "drained   no: health file missing (never drained): {file} does not exist and \
                 no drain saved it; create it with the content HAProxy's check expects\n"
            )
        } else if drained {
            format!("drained   yes ({file} removed; `handover-agent undrain` restores it)\n")
        } else {
            format!("drained   no ({file} in place)\n")
        });
    }
    match &status.sessions {
        Some(SessionReading::Counted(c)) => {
            let holders: Vec<String> = c.holders.iter().map(|h| h.to_string()).collect();
            out.push_str(&format!(
                "sessions  {}{}\n",
                c.total,
                if holders.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", holders.join(", "))
                }
            ));
        }
        Some(SessionReading::Unavailable(why)) => {
            out.push_str(&format!("sessions  unknown: {why}\n"));
        }
        None => {}
    }
    if let Some(apache) = &status.apache {
        out.push_str(&format!("apache    {}\n", apache_summary(apache)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use handover_common::proto::drain::{Holder, SessionCount};

    fn sample(blocking: u32, quiet_for_ms: u64, apache: Option<ApacheReading>) -> DrainProgress {
        DrainProgress {
            sessions: SessionCount {
                total: blocking,
                holders: (blocking > 0)
                    .then(|| Holder {
                        remote: "192.0.2.7".parse().expect("literal"),
                        connections: blocking,
                    })
                    .into_iter()
                    .collect(),
                source: "test".into(),
            },
            blocking,
            apache,
            elapsed: Duration::from_millis(quiet_for_ms),
            quiet_for: Duration::from_millis(quiet_for_ms),
            quiet: Duration::from_secs(1),
            drained: true,
        }
    }

    #[test]
    fn progress_prints_a_line_per_change_and_apaches_error_once() {
        let down = || {
            Some(ApacheReading::Unavailable(
                "connection refused (os error 111)".into(),
            ))
        };
        let mut lines = Lines::default();
        let printed: Vec<String> = [
            sample(2, 0, down()),
            sample(2, 0, down()),
            sample(1, 0, down()),
            sample(0, 100, down()),
            sample(0, 200, down()),
            sample(0, 300, down()),
        ]
        .iter()
        .filter_map(|p| lines.next(p))
        .collect();
        assert_eq!(printed.len(), 3, "{printed:#?}");
        assert_eq!(
            printed
                .iter()
                .filter(|l| l.contains("connection refused"))
                .count(),
            1,
            "{printed:#?}"
        );
        assert!(printed[1].ends_with("; Apache ?"), "{printed:#?}");
    }

    #[test]
    fn a_health_file_that_never_existed_reads_missing_not_drained() {
        let status = DrainStatus {
            drained: Some(true),
            missing: true,
            health_file: Some("/var/www/html/health.html".into()),
            sessions: None,
            apache: None,
        };
        let text = status_lines(&status);
        assert!(
            text.contains("health file missing (never drained)"),
            "{text}"
        );
        assert!(!text.contains("yes"), "{text}");
    }
}
