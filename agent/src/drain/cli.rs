//! The local operator's drain commands (`handover-agent drain|undrain`), which go
//! through the running daemon's control socket so the daemon stays the only
//! writer of the drain state, and how drain state reads in `status`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use handover_common::proto::drain::{
    ApacheReading, DrainProgress, DrainReply, DrainRequest, DrainStatus, DrainWait, SessionReading,
};
use handover_common::proto::{FailureKind, Progress, Reply, Request};

use crate::control::{self, CallError};

/// Exit status when a wait timed out (the host stays drained).
pub const EXIT_TIMEOUT: u8 = 1;

/// `handover-agent drain [--wait] [--timeout DUR] [--quiet DUR] [--json]`.
pub async fn drain(
    socket: &Path,
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
    let mut last_line = String::new();
    let result = control::call(socket, request, |progress| {
        let Progress::Drain(p) = progress else { return };
        if json {
            print_json(&serde_json::json!({"event": "progress", "progress": p}));
        } else {
            let line = progress_line(&p);
            // Ten samples a second: print only what changed.
            if line != last_line {
                println!("{:>6.1}s  {line}", p.elapsed.as_secs_f64());
                last_line = line;
            }
        }
    })
    .await;
    finish(result, json)
}

/// `handover-agent undrain [--json]`.
pub async fn undrain(socket: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let result = control::call(socket, Request::Drain(DrainRequest::Undrain), |_| {}).await;
    finish(result, json)
}

fn finish(result: Result<Reply, CallError>, json: bool) -> anyhow::Result<ExitCode> {
    let reply = match result {
        Ok(Reply::Drain(reply)) => reply,
        Ok(other) => bail!("the agent answered with {other:?}"),
        Err(CallError::Failed(f)) if f.kind == FailureKind::Timeout => {
            if json {
                print_json(&serde_json::json!({"event": "timeout", "message": f.message}));
            }
            eprintln!("handover-agent: drain wait timed out: {}", f.message);
            return Ok(ExitCode::from(EXIT_TIMEOUT));
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        print_json(&serde_json::json!({"event": "done", "reply": reply}));
        return Ok(ExitCode::SUCCESS);
    }
    match &reply {
        DrainReply::Drained {
            already, waited, ..
        } => {
            println!(
                "{}",
                if *already {
                    "already drained: the health-check file was already removed"
                } else {
                    "drained: health-check file removed; HAProxy sends no new sessions"
                }
            );
            if let Some(waited) = waited {
                println!(
                    "idle: no sessions left (waited {})",
                    handover_common::duration::format(round_ms(*waited))
                );
            }
        }
        DrainReply::Undrained { already, .. } => println!(
            "{}",
            if *already {
                "already in service: the health-check file is in place"
            } else {
                "undrained: health-check file restored; HAProxy will send sessions again"
            }
        ),
        DrainReply::Sessions(status) => print!("{}", status_lines(status)),
    }
    Ok(ExitCode::SUCCESS)
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn print_json(value: &serde_json::Value) {
    let mut value = value.clone();
    durations_as_ms(&mut value);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

/// serde writes a `Duration` as `{"secs":..,"nanos":..}`; scripts want one number.
/// Every such field `name` becomes `name_ms`, the same as the coordinator's JSON.
fn durations_as_ms(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let Some(v) = map.get_mut(&key) else { continue };
                let ms = v.as_object().filter(|o| o.len() == 2).and_then(|o| {
                    Some(o.get("secs")?.as_u64()? * 1000 + o.get("nanos")?.as_u64()? / 1_000_000)
                });
                match ms {
                    Some(ms) => {
                        map.remove(&key);
                        map.insert(format!("{key}_ms"), ms.into());
                    }
                    None => durations_as_ms(v),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(durations_as_ms),
        _ => {}
    }
}

/// "2 sessions: 127.0.0.1 (2 connections); Apache busy 1 idle 74".
pub fn progress_line(p: &DrainProgress) -> String {
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
    if let Some(apache) = &p.apache {
        line.push_str("; ");
        line.push_str(&apache_summary(apache));
    }
    line
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
        out.push_str(&if drained {
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
    #[test]
    fn durations_become_milliseconds() {
        let mut v = serde_json::json!({
            "elapsed": {"secs": 2, "nanos": 500_000_000},
            "nested": [{"quiet": {"secs": 0, "nanos": 300_000_000}, "n": 3}],
            "other": {"secs": 1}
        });
        super::durations_as_ms(&mut v);
        assert_eq!(v["elapsed_ms"], 2500);
        assert_eq!(v["nested"][0]["quiet_ms"], 300);
        assert_eq!(v["nested"][0]["n"], 3);
        assert_eq!(v["other"]["secs"], 1);
    }
}
