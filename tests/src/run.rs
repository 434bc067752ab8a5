//! Driving a [`Scenario`] as an operator does, and checking what it left: a
//! `handover ... --json` run followed event by event ([`Run`]), the journal as
//! `handover history --json` prints it, and the fleet's state after a rollout.
//!
//! One copy for every e2e module: add a helper here rather than in a test file.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use crate::agents::{AgentProcess, Coordinator, StdoutLines, output_text, spawn_lines};
use crate::scenario::{AppHost, Scenario};
use crate::traffic::{HeldConnection, Traffic, TrafficOptions, TrafficReport, hold_connection};

/// How long a coordinator may take to reach a step, or to stop after a fault. A
/// guard against hanging, not a measurement.
pub const BOUND: Duration = Duration::from_secs(120);

/// A `handover ... --json` run whose events arrive on a channel, so the test can
/// act at a given step and still bound every wait.
pub struct Run {
    child: Child,
    events: Receiver<serde_json::Value>,
    seen: Vec<serde_json::Value>,
    started: Instant,
}

/// A [`Run`] SIGKILLed by [`Run::kill`].
#[derive(Debug)]
pub struct Killed {
    /// The process still ran when the signal was sent.
    pub landed: bool,
    /// Every event it printed.
    pub events: Vec<serde_json::Value>,
}

impl Killed {
    /// The rollout's id, from its first `phase` event.
    pub fn rollout(&self) -> Option<String> {
        rollout_id(&self.events)
    }
}

impl Run {
    /// Starts `handover ARGS --json` with the scenario's coordinator config.
    pub fn start(s: &Scenario, args: &[&str]) -> Self {
        Self::start_with(&s.coordinator, args)
    }

    /// Starts `handover ARGS --json` with `coordinator`'s config.
    pub fn start_with(coordinator: &Coordinator, args: &[&str]) -> Self {
        let mut cmd = coordinator.command(args);
        cmd.arg("--json");
        let (child, lines) = spawn_lines(cmd, Stdio::piped()).expect("spawn handover");
        let (tx, events) = channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
                    && tx.send(event).is_err()
                {
                    return;
                }
            }
        });
        Run {
            child,
            events,
            seen: Vec::new(),
            started: Instant::now(),
        }
    }

    /// The process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every event seen so far.
    pub fn seen(&self) -> &[serde_json::Value] {
        &self.seen
    }

    /// The last few events, for assertion messages.
    pub fn last_events(&self) -> Vec<&serde_json::Value> {
        self.seen.iter().rev().take(6).collect()
    }

    /// Waits for the start of the step of `wave` (1-based) whose title starts
    /// with `prefix`.
    pub fn wait_step(&mut self, prefix: &str, wave: u64) {
        let found = self.wait_for(BOUND, |e| is_step_started(e, prefix) && e["wave"] == wave);
        assert!(
            found,
            "never reached '{prefix}' in wave {wave}; last events {:#?}",
            self.last_events()
        );
    }

    /// Waits for the start of the first step whose title starts with `prefix`;
    /// returns the rollout's id (from its `phase` event).
    pub fn wait_for_step(&mut self, prefix: &str) -> String {
        let found = self.wait_for(BOUND, |e| is_step_started(e, prefix));
        assert!(
            found,
            "never reached a step starting with {prefix:?}; last events {:#?}",
            self.last_events()
        );
        rollout_id(&self.seen).unwrap_or_else(|| panic!("no phase event: {:#?}", self.seen))
    }

    /// Reads events (within `within`) until one satisfies `pred`; false if the
    /// run ended or the time passed first.
    pub fn wait_for(
        &mut self,
        within: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) => {
                    let hit = pred(&e);
                    self.seen.push(e);
                    if hit {
                        return true;
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return false,
            }
        }
    }

    /// Sends `signal` to the process (SIGINT: Ctrl-C).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, signal).expect("signal the coordinator");
    }

    /// SIGKILLs the process now, as a crash would.
    pub fn kill(mut self) -> Killed {
        let landed = matches!(self.child.try_wait(), Ok(None));
        let _ = self.child.kill();
        let _ = self.child.wait();
        while let Ok(e) = self.events.try_recv() {
            self.seen.push(e);
        }
        Killed {
            landed,
            events: std::mem::take(&mut self.seen),
        }
    }

    /// Waits (within [`BOUND`]) for the coordinator to exit; returns its exit
    /// code, its `finished` event, its stderr and how long the whole run took.
    pub fn finish(mut self) -> Finished {
        let deadline = Instant::now() + BOUND;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the coordinator did not stop within {BOUND:?}; last events {:#?}",
                    self.last_events()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        while let Ok(e) = self.events.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(e);
        }
        let mut stderr = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
        }
        let finished = self
            .seen
            .iter()
            .rev()
            .find(|e| e["event"] == "finished")
            .cloned();
        Finished {
            code: status.code(),
            finished,
            stderr,
            took: self.started.elapsed(),
            events: std::mem::take(&mut self.seen),
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A [`Run`] that exited.
#[derive(Debug)]
pub struct Finished {
    /// Its exit code.
    pub code: Option<i32>,
    /// Its last `finished` event.
    pub finished: Option<serde_json::Value>,
    /// Everything it wrote to stderr.
    pub stderr: String,
    /// From start to exit.
    pub took: Duration,
    /// Every event it printed.
    pub events: Vec<serde_json::Value>,
}

impl Finished {
    /// The state in its `finished` event.
    pub fn state(&self) -> String {
        self.finished
            .as_ref()
            .and_then(|f| f["state"].as_str())
            .unwrap_or("<no finished event>")
            .to_string()
    }

    /// Everything worth printing when an assertion about it fails.
    pub fn describe(&self) -> String {
        format!(
            "exit {:?} after {:?}, state {}, finished {:?}\nstderr: {}\nsteps failed: {:#?}",
            self.code,
            self.took,
            self.state(),
            self.finished,
            self.stderr,
            self.events
                .iter()
                .filter(|e| e["event"] == "step-failed")
                .collect::<Vec<_>>()
        )
    }
}

/// Whether `event` is the start of a step whose title starts with `prefix`.
pub fn is_step_started(event: &serde_json::Value, prefix: &str) -> bool {
    event["event"] == "step-started" && event["title"].as_str().unwrap_or("").starts_with(prefix)
}

/// The rollout id of the first `phase` event among `events`.
pub fn rollout_id(events: &[serde_json::Value]) -> Option<String> {
    events
        .iter()
        .find(|e| e["event"] == "phase")
        .and_then(|e| e["rollout"].as_str())
        .map(str::to_owned)
}

/// Starts `handover ARGS --json` with `coordinator`'s config (stderr discarded);
/// returns the child and its stdout lines.
pub fn spawn_json(coordinator: &Coordinator, args: &[&str]) -> (Child, StdoutLines) {
    let mut cmd = coordinator.command(args);
    cmd.arg("--json");
    spawn_lines(cmd, Stdio::null()).expect("spawn handover")
}

/// Reads JSON events until a step whose title starts with `prefix` starts;
/// returns the rollout id seen in the phase event.
pub fn wait_for_step(lines: &mut StdoutLines, prefix: &str) -> String {
    let mut id = String::new();
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if event["event"] == "phase" {
            id = event["rollout"].as_str().unwrap_or("").to_string();
        }
        if is_step_started(&event, prefix) {
            return id;
        }
    }
    panic!("the rollout never reached a step starting with {prefix:?}");
}

/// `handover history --json`, parsed (newest first).
pub fn history(s: &Scenario) -> serde_json::Value {
    let out = s.coordinator.run(&["history", "--json"]);
    assert!(out.status.success(), "{}", output_text(&out));
    serde_json::from_slice(&out.stdout).expect("history --json")
}

/// The state of `rollout` in `handover history --json`.
pub fn journaled_state(s: &Scenario, rollout: &str) -> String {
    let h = history(s);
    h.as_array()
        .and_then(|records| records.iter().find(|r| r["id"] == rollout))
        .and_then(|r| r["state"].as_str())
        .unwrap_or_else(|| panic!("{rollout} not in history: {h}"))
        .to_owned()
}

/// `handover releases HOST --json`, parsed.
pub fn releases_json(s: &Scenario, host: &str) -> serde_json::Value {
    let out = s.coordinator.run(&["releases", host, "--json"]);
    assert!(out.status.success(), "{}", output_text(&out));
    serde_json::from_slice(&out.stdout).expect("releases --json")
}

/// How many releases of `rev` `host`'s agent lists.
pub fn releases_of_rev(s: &Scenario, host: &str, rev: &str) -> usize {
    let list = releases_json(s, host);
    list["releases"]
        .as_array()
        .expect("releases array")
        .iter()
        .filter(|r| r["rev"] == rev)
        .count()
}

/// The complete releases under `app`'s `releases/` (not `.partial-` ones).
pub fn releases_of(app: &AppHost) -> BTreeSet<String> {
    std::fs::read_dir(app.root.join("releases"))
        .expect("releases/")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect()
}

/// Clients through HAProxy for the whole test: 3 of them, a request each 25 ms.
pub fn traffic(s: &Scenario) -> Traffic {
    Traffic::start(
        s.frontend(),
        TrafficOptions {
            clients: 3,
            pause: Duration::from_millis(25),
            max_duration: Duration::from_secs(300),
            ..TrafficOptions::default()
        },
    )
    .expect("traffic starts")
}

/// Traffic went through and not one request failed.
pub fn assert_no_failed_request(report: &TrafficReport) {
    assert!(report.ok > 0, "no traffic went through");
    assert_eq!(
        report.failed, 0,
        "failed requests ({} ok): {:?}",
        report.ok, report.failures
    );
}

/// Every app host on `version`, its health file in place (not checked: HAProxy).
pub fn assert_all_on(s: &Scenario, version: &str) {
    for app in &s.apps {
        assert_eq!(
            app.version(),
            version,
            "{} runs the wrong release",
            app.name
        );
        assert!(app.health_file_present(), "{} was left drained", app.name);
    }
}

/// Every app host on a complete release of `version`, its health file in place,
/// and UP in HAProxy.
pub fn assert_settled(s: &Scenario, version: &str) {
    for app in &s.apps {
        assert_eq!(assert_complete_release(app).1, version, "{}", app.name);
        assert!(app.health_file_present(), "{} left drained", app.name);
    }
    let up = s.up_count();
    assert_eq!(
        up,
        s.apps.len(),
        "every app host must be attached and UP: {:?}",
        s.haproxy.show_stat()
    );
}

/// `current` on `app` names a complete release (see [`assert_complete_release`])
/// on v1 or v2; returns its version.
pub fn assert_on_one_release(app: &AppHost) -> String {
    let (_, version) = assert_complete_release(app);
    assert!(
        version == "v1" || version == "v2",
        "{}: on {version:?}, neither the old release nor the new",
        app.name
    );
    version
}

/// `current` on `app` names a complete release (a directory under `releases/`
/// that is not a `.partial-` one and holds the revision's files); returns its
/// name and version.
pub fn assert_complete_release(app: &AppHost) -> (String, String) {
    let link = app.root.join("current");
    let target = std::fs::read_link(&link)
        .unwrap_or_else(|e| panic!("{}: current is not a symlink: {e}", app.name));
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_else(|| panic!("{}: current → {}", app.name, target.display()));
    assert!(
        !name.starts_with('.'),
        "{}: current → a partial release {name}",
        app.name
    );
    assert_eq!(
        target.parent(),
        Some(Path::new("releases")),
        "{}: current → {} is not a release",
        app.name,
        target.display()
    );
    let dir = app.root.join(&target);
    assert!(dir.is_dir(), "{}: current → missing {name}", app.name);
    for file in ["VERSION", "index.html"] {
        assert!(
            dir.join(file).is_file(),
            "{}: release {name} lacks {file}: it is half-made",
            app.name
        );
    }
    (name.to_owned(), app.version())
}

/// A client connected straight to `host`'s Apache (not through HAProxy), held
/// open for up to `secs` seconds: it keeps a drain wait of `host` going until
/// dropped.
pub fn hold_direct_client(s: &Scenario, host: &str, secs: u64) -> HeldConnection {
    hold_connection(
        s.app(host).apache.addr(),
        "/",
        None,
        Duration::from_secs(secs),
    )
    .unwrap_or_else(|e| panic!("hold a connection to {host}: {e:#}"))
}

/// Restarts a killed agent after `delay`, as systemd's `Restart=on-failure` would.
pub fn restart_after(agent: &mut AgentProcess, delay: Duration) {
    std::thread::sleep(delay);
    agent.spawn().expect("the agent starts again after SIGKILL");
}
