//! What an operator sees while a rollout runs: a live line per step on a terminal
//! (indicatif), plain lines when piped, JSON lines with `--json`.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// One thing that happened.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The rollout (or a resumed one) starts running a phase.
    Phase {
        /// Rollout id.
        rollout: String,
        /// Phase, as the journal names it.
        phase: String,
        /// Phase, as an operator reads it.
        title: String,
        /// Steps in the phase.
        steps: usize,
        /// Steps already done (resume).
        done: usize,
        /// Why this phase (rollback, repair), if not the first.
        reason: Option<String>,
    },
    /// A step starts.
    StepStarted {
        /// 1-based number in the phase.
        number: usize,
        /// Steps in the phase.
        of: usize,
        /// Wave, 1-based.
        wave: usize,
        /// What it does.
        title: String,
    },
    /// News while a step runs (sessions falling, LB waiting...).
    Progress {
        /// The host it is about.
        host: String,
        /// What is going on.
        text: String,
    },
    /// A step ended well.
    StepDone {
        /// 1-based number.
        number: usize,
        /// What it did.
        title: String,
        /// How long it took, in ms.
        elapsed_ms: u64,
        /// What it produced.
        outputs: std::collections::BTreeMap<String, String>,
    },
    /// A step failed.
    StepFailed {
        /// 1-based number.
        number: usize,
        /// What it tried.
        title: String,
        /// Why it failed.
        error: String,
    },
    /// The rollout stopped.
    Finished {
        /// Rollout id.
        rollout: String,
        /// Its final state.
        state: String,
        /// Why, when it did not succeed.
        error: Option<String>,
    },
}

/// Where events go.
pub struct Ui {
    mode: Mode,
    bar: Mutex<Option<ProgressBar>>,
    /// When each host's progress was last printed as a plain line.
    last_plain: Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

/// Plain lines for one host's progress: at most one a second, so a log stays
/// readable while a drain is watched every 100 ms.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(1);

enum Mode {
    Terminal,
    Plain,
    Json,
}

impl Ui {
    /// JSON lines with `json`, a live display on a terminal, plain lines otherwise.
    pub fn new(json: bool) -> Self {
        let mode = if json {
            Mode::Json
        } else if std::io::stdout().is_terminal() {
            Mode::Terminal
        } else {
            Mode::Plain
        };
        Ui {
            mode,
            bar: Mutex::new(None),
            last_plain: Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn println(&self, line: &str) {
        let bar = self.bar.lock().ok().and_then(|b| b.clone());
        match bar {
            Some(bar) => bar.println(line),
            None => println!("{line}"),
        }
    }

    /// Shows `event`.
    pub fn show(&self, event: Event) {
        match self.mode {
            Mode::Json => {
                if let Some(line) = json_line(&event) {
                    println!("{line}");
                }
            }
            Mode::Plain => {
                if let Event::Progress { host, .. } = &event
                    && let Ok(mut last) = self.last_plain.lock()
                {
                    let now = std::time::Instant::now();
                    if last
                        .get(host)
                        .is_some_and(|t| now.duration_since(*t) < PLAIN_PROGRESS_EVERY)
                    {
                        return;
                    }
                    last.insert(host.clone(), now);
                }
                if let Some(line) = plain(&event) {
                    println!("{line}");
                }
            }
            Mode::Terminal => self.terminal(event),
        }
    }

    fn terminal(&self, event: Event) {
        match &event {
            Event::StepStarted { .. } => {
                let bar = ProgressBar::new_spinner();
                let style = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner());
                bar.set_style(style);
                bar.enable_steady_tick(Duration::from_millis(120));
                bar.set_message(plain(&event).unwrap_or_default());
                if let Ok(mut slot) = self.bar.lock()
                    && let Some(old) = slot.replace(bar)
                {
                    old.finish_and_clear();
                }
            }
            Event::Progress { host, text } => {
                let bar = self.bar.lock().ok().and_then(|b| b.clone());
                if let Some(bar) = bar {
                    let current = bar.message();
                    let head = current.split("  ·  ").next().unwrap_or("").to_string();
                    bar.set_message(format!("{head}  ·  {host}: {text}"));
                }
            }
            Event::StepDone { .. } | Event::StepFailed { .. } | Event::Finished { .. } => {
                let bar = self.bar.lock().ok().and_then(|mut b| b.take());
                if let Some(bar) = bar {
                    bar.finish_and_clear();
                }
                if let Some(line) = plain(&event) {
                    self.println(&line);
                }
            }
            Event::Phase { .. } => {
                if let Some(line) = plain(&event) {
                    self.println(&line);
                }
            }
        }
    }
}

/// The `--json` schema's version (docs/events.md): bumped when a field changes
/// meaning or goes away; fields and events may be added without a bump.
pub const EVENTS_VERSION: u32 = 1;

/// One `--json` line: the event's fields plus the schema's `version`.
fn json_line(event: &Event) -> Option<String> {
    let serde_json::Value::Object(fields) = serde_json::to_value(event).ok()? else {
        return None;
    };
    let mut line = serde_json::Map::new();
    line.insert("version".into(), EVENTS_VERSION.into());
    line.extend(fields);
    serde_json::to_string(&line).ok()
}

fn plain(event: &Event) -> Option<String> {
    Some(match event {
        Event::Phase {
            rollout,
            title,
            steps,
            done,
            reason,
            ..
        } => {
            let mut line = format!("rollout {rollout}: {title}, {steps} steps");
            if *done > 0 {
                line.push_str(&format!(" ({done} already done)"));
            }
            if let Some(reason) = reason {
                line.push_str(&format!(" — {reason}"));
            }
            line
        }
        Event::StepStarted {
            number,
            of,
            wave,
            title,
        } => format!("[{number}/{of}] wave {wave}: {title}"),
        Event::Progress { host, text } => format!("      {host}: {text}"),
        Event::StepDone {
            number,
            title,
            elapsed_ms,
            ..
        } => format!(
            "  ok  {number}. {title} ({:.1}s)",
            *elapsed_ms as f64 / 1000.0
        ),
        Event::StepFailed {
            number,
            title,
            error,
        } => format!("  FAILED {number}. {title}: {error}"),
        Event::Finished {
            rollout,
            state,
            error,
        } => match error {
            Some(e) => format!("rollout {rollout}: {state}: {e}"),
            None => format!("rollout {rollout}: {state}"),
        },
    })
}

#[cfg(test)]
mod json_tests {
    use super::*;

    /// Every `--json` line names its schema version and its event (issue 16).
    #[test]
    fn a_json_line_carries_the_schema_version_and_the_event() {
        let line = json_line(&Event::Finished {
            rollout: "r-1".into(),
            state: "succeeded".into(),
            error: None,
        })
        .expect("serializes");
        let value: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(value["version"], EVENTS_VERSION);
        assert_eq!(value["event"], "finished");
        assert_eq!(value["rollout"], "r-1");
    }
}
