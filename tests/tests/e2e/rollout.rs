//! Issue 6: the rollout engine on the real-HAProxy fleet, with client traffic going
//! through HAProxy the whole time and a monitor polling HAProxy every 100 ms.

use std::process::{Child, Stdio};
use std::time::Duration;

use handover_tests::agents::{StdoutLines, output_text, spawn_lines};
use handover_tests::monitor::UpMonitor;
use handover_tests::scenario::{BACKEND, Scenario, ScenarioOptions};
use handover_tests::traffic::{Traffic, TrafficOptions};

fn scenario(apps: u8) -> Scenario {
    Scenario::start(ScenarioOptions {
        apps,
        ..ScenarioOptions::default()
    })
    .expect("fleet starts")
}

fn traffic(s: &Scenario) -> Traffic {
    Traffic::start(
        s.frontend(),
        TrafficOptions {
            clients: 3,
            pause: Duration::from_millis(25),
            max_duration: Duration::from_secs(240),
            ..TrafficOptions::default()
        },
    )
    .expect("traffic starts")
}

/// Every host on `version`, its health file in place, and UP in HAProxy.
fn assert_fleet_settled(s: &Scenario, version: &str) {
    for app in &s.apps {
        assert_eq!(
            app.version(),
            version,
            "{} runs the wrong release",
            app.name
        );
        assert!(app.health_file_present(), "{} was left drained", app.name);
    }
    let stats = s.haproxy.show_stat().expect("show stat");
    let up: Vec<String> = stats
        .iter()
        .filter(|r| r.pxname == BACKEND && r.is_server() && r.is_up())
        .map(|r| r.addr.clone())
        .collect();
    assert_eq!(
        up.len(),
        s.apps.len(),
        "every app host must be attached and UP: {stats:?}"
    );
}

fn history(s: &Scenario) -> serde_json::Value {
    let out = s.coordinator.run(&["history", "--json"]);
    assert!(out.status.success(), "{}", output_text(&out));
    serde_json::from_slice(&out.stdout).expect("history --json")
}

fn run_in_place(apps: u8, batch: usize, min_healthy: usize) {
    let s = scenario(apps);
    let plan = s
        .write_plan("plan.toml", &s.in_place_plan("v2", batch, min_healthy))
        .expect("plan");
    let plan_arg = plan.display().to_string();

    let shown = s.coordinator.run(&["plan", &plan_arg]);
    assert!(shown.status.success(), "{}", output_text(&shown));

    let monitor = UpMonitor::start(&s.haproxy, &[BACKEND], min_healthy).expect("monitor");
    let load = traffic(&s);
    let started = std::time::Instant::now();
    let out = s.coordinator.run(&["rollout", &plan_arg, "--yes"]);
    // Reported, not asserted (issue 14: a drain wait costs one quiet period).
    eprintln!(
        "measured: rollout of {apps} hosts in batches of {batch} took {:.2}s",
        started.elapsed().as_secs_f64()
    );
    let report = load.stop();
    let up = monitor.stop();
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
    assert!(report.ok > 0);
    assert!(
        up.violations.is_empty(),
        "fewer than {min_healthy} UP: {:?}",
        up.violations
    );
    assert!(up.samples > 0);
    assert_fleet_settled(&s, "v2");
    let h = history(&s);
    assert_eq!(h[0]["state"], "succeeded", "{h}");
}

#[test]
fn in_place_batch_1_keeps_capacity_and_drops_no_request() {
    run_in_place(4, 1, 3);
}

#[test]
fn in_place_batch_2_keeps_capacity_and_drops_no_request() {
    run_in_place(4, 2, 2);
}

#[test]
fn a_revision_that_fails_verification_is_rolled_back_automatically() {
    let s = scenario(3);
    let plan = s
        .write_plan("plan.toml", &s.in_place_plan("v3-broken", 1, 2))
        .expect("plan");
    let monitor = UpMonitor::start(&s.haproxy, &[BACKEND], 2).expect("monitor");
    let load = traffic(&s);
    let out = s
        .coordinator
        .run(&["rollout", &plan.display().to_string(), "--yes"]);
    let report = load.stop();
    let up = monitor.stop();
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
    assert!(up.violations.is_empty(), "{:?}", up.violations);
    assert_fleet_settled(&s, "v1");
    let h = history(&s);
    assert_eq!(h[0]["state"], "rolled-back", "{h}");
    assert!(
        h[0]["error"].as_str().unwrap_or("").contains("verify"),
        "the reason names the failed verification: {h}"
    );
}

/// Starts `handover ARGS --json` and returns the child and its stdout lines.
fn spawn_json(s: &Scenario, args: &[&str]) -> (Child, StdoutLines) {
    let mut cmd = s.coordinator.command(args);
    cmd.arg("--json");
    spawn_lines(cmd, Stdio::null()).expect("spawn handover")
}

/// Reads events until a step whose title starts with `prefix` starts in `wave`,
/// then SIGKILLs the coordinator there. Returns whether it found one.
fn kill_at(mut child: Child, lines: &mut StdoutLines, prefix: &str, wave: u64) -> bool {
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if event["event"] == "step-started"
            && event["wave"] == wave
            && event["title"].as_str().unwrap_or("").starts_with(prefix)
        {
            // Let the step get under way before the crash.
            std::thread::sleep(Duration::from_millis(150));
            let _ = child.kill();
            let _ = child.wait();
            return true;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

#[test]
fn a_coordinator_killed_at_any_kind_of_step_is_finished_by_resume() {
    let s = scenario(4);
    let plan = s
        .write_plan("plan.toml", &s.in_place_plan("v2", 1, 2))
        .expect("plan");
    let plan_arg = plan.display().to_string();
    let monitor = UpMonitor::start(&s.haproxy, &[BACKEND], 2).expect("monitor");
    let load = traffic(&s);

    let (child, mut lines) = spawn_json(&s, &["rollout", &plan_arg, "--yes"]);
    assert!(
        kill_at(child, &mut lines, "wait for sessions", 1),
        "never reached the drain wait"
    );
    let kills = [("detach", 2), ("apply", 3), ("attach", 4)];
    for (prefix, wave) in kills {
        let (child, mut lines) = spawn_json(&s, &["resume"]);
        assert!(
            kill_at(child, &mut lines, prefix, wave),
            "resume never reached '{prefix}' in wave {wave}"
        );
    }
    let out = s.coordinator.run(&["resume"]);
    let report = load.stop();
    let up = monitor.stop();
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
    assert!(up.violations.is_empty(), "{:?}", up.violations);
    assert_fleet_settled(&s, "v2");
    let h = history(&s);
    assert_eq!(
        h.as_array().map(Vec::len),
        Some(1),
        "one rollout, resumed: {h}"
    );
    assert_eq!(h[0]["state"], "succeeded", "{h}");
}

#[test]
fn a_second_rollout_is_refused_by_the_lease_and_ctrl_c_puts_the_wave_back() {
    let s = scenario(3);
    // A client connected straight to web-1 keeps the first rollout in its first
    // drain wait for as long as the test needs.
    let held = handover_tests::traffic::hold_connection(
        s.app("web-1").apache.addr(),
        "/",
        None,
        Duration::from_secs(60),
    )
    .expect("hold a connection to web-1");
    let plan = s
        .write_plan("first.toml", &s.in_place_plan("v2", 1, 2))
        .expect("plan");
    let (mut first, mut lines) = spawn_json(&s, &["rollout", &plan.display().to_string(), "--yes"]);
    // Wait until the first rollout holds the hosts and is draining its canary.
    let mut id = String::new();
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if event["event"] == "phase" {
            id = event["rollout"].as_str().unwrap_or("").to_string();
        }
        if event["event"] == "step-started"
            && event["title"]
                .as_str()
                .unwrap_or("")
                .starts_with("wait for sessions")
        {
            break;
        }
    }
    assert!(!id.is_empty(), "the first rollout never started");

    let second = s
        .write_plan("second.toml", &s.in_place_plan("v2", 1, 2))
        .expect("plan");
    let out = s
        .coordinator
        .run(&["rollout", &second.display().to_string(), "--yes"]);
    assert!(!out.status.success(), "{}", output_text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&id) && err.contains("held by rollout"),
        "{err}"
    );
    assert!(err.contains("nothing was changed"), "{err}");

    // Ctrl-C: the first rollout stops and puts its wave back in service.
    assert!(held.is_held(), "the direct client must still be connected");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(first.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let status = first.wait().expect("wait");
    assert_eq!(status.code(), Some(1), "an interrupted rollout exits 1");
    assert_fleet_settled(&s, "v1");
    let h = history(&s);
    assert_eq!(h[0]["state"], "aborted", "{h}");
    drop(held);

    // The lease went with it: a new rollout may run.
    let out = s
        .coordinator
        .run(&["rollout", &second.display().to_string(), "--yes"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_fleet_settled(&s, "v2");
}

#[test]
fn handover_rollback_puts_every_host_back_without_dropping_a_request() {
    let s = scenario(3);
    let plan = s
        .write_plan("plan.toml", &s.in_place_plan("v2", 1, 2))
        .expect("plan");
    let out = s
        .coordinator
        .run(&["rollout", &plan.display().to_string(), "--yes"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_fleet_settled(&s, "v2");

    let monitor = UpMonitor::start(&s.haproxy, &[BACKEND], 2).expect("monitor");
    let load = traffic(&s);
    let out = s.coordinator.run(&["rollback", "--yes"]);
    let report = load.stop();
    let up = monitor.stop();
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
    assert!(up.violations.is_empty(), "{:?}", up.violations);
    assert_fleet_settled(&s, "v1");
    let h = history(&s);
    assert_eq!(h[1]["state"], "rolled-back", "{h}");
    assert_eq!(h[1]["kind"]["rollback"]["of"], h[0]["id"], "{h}");
}

#[test]
fn a_bad_plan_is_refused_naming_the_key_and_nothing_is_journaled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = handover_tests::agents::Pki::init(&dir.path().join("pki")).expect("ca");
    let mut hosts = Vec::new();
    for n in 1..=3u8 {
        hosts.push(handover_tests::agents::HostSpec {
            name: format!("web-{n}"),
            address: format!("127.0.1.{n}:7443").parse().expect("addr"),
            roles: vec!["app".into()],
            app: Some(format!("127.0.1.{n}:8080").parse().expect("addr")),
            extra: String::new(),
        });
    }
    hosts.push(handover_tests::agents::HostSpec {
        name: "lb-1".into(),
        address: "127.0.1.100:7443".parse().expect("addr"),
        roles: vec!["lb".into()],
        app: None,
        extra: String::new(),
    });
    let ops = dir.path().join("ops");
    let c = handover_tests::agents::Coordinator::write(&ops, &pki, "ops", &hosts).expect("config");
    let good = "strategy = \"in-place\"\nhosts = [\"web-1\", \"web-2\", \"web-3\"]\n[revision]\nrepo = \"file:///srv/git/shop.git\"\nref = \"v2\"\n[rollout]\nbatch = 1\nmin_healthy = 2\n";
    let cases = [
        (good.replace("web-3", "web-9"), "unknown host \"web-9\""),
        (
            good.replace("\"v2\"", "\"--upload-pack=touch /tmp/x\""),
            "[revision] ref",
        ),
        (
            good.replace("min_healthy = 2", "min_healthy = 3"),
            "min_healthy = 3",
        ),
        (good.replace("batch = 1", "batch = 1\nbacth = 2"), "bacth"),
        (good.replace("in-place", "blue-green"), "strategy"),
    ];
    let path = dir.path().join("plan.toml");
    std::fs::write(&path, good).expect("write");
    // No agent runs here: check the file only.
    let out = c.run(&["plan", "--offline", &path.display().to_string()]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("UP 2/3"));
    for (text, expected) in cases {
        std::fs::write(&path, &text).expect("write");
        for cmd in ["plan", "rollout"] {
            let out = c.run(
                &[cmd, &path.display().to_string(), "--yes"][..if cmd == "plan" { 2 } else { 3 }],
            );
            assert_eq!(out.status.code(), Some(2), "{cmd}: {}", output_text(&out));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains(expected),
                "{cmd} should name {expected:?}: {err}"
            );
        }
    }
    assert!(
        !ops.join("state").join("journal.redb").exists(),
        "a refused plan must leave no journal entry"
    );
}

#[test]
fn a_wave_does_not_start_without_capacity_and_resume_carries_on_once_it_is_back() {
    let s = scenario(3);
    // web-3 fails its health check in HAProxy (drained: NOLB), so it counts
    // against the budget: taking web-1 out would leave 1 UP, below min_healthy 2.
    let out = s.coordinator.run(&["drain", "web-3"]);
    assert!(out.status.success(), "{}", output_text(&out));
    // HAProxy sees it after `fall` failed checks.
    let mut up = usize::MAX;
    for _ in 0..100 {
        up = s
            .haproxy
            .show_stat()
            .expect("show stat")
            .iter()
            .filter(|r| r.pxname == BACKEND && r.is_server() && r.is_up())
            .count();
        if up == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(up, 2, "HAProxy never took web-3 out of rotation");
    let plan_text = s
        .in_place_plan("v2", 1, 2)
        .replace("attach_timeout = \"20s\"", "attach_timeout = \"2s\"");
    let plan = s.write_plan("plan.toml", &plan_text).expect("plan");
    let out = s
        .coordinator
        .run(&["rollout", &plan.display().to_string(), "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("capacity: need 2 UP besides the wave"),
        "{text}"
    );
    // Nothing was changed on any host.
    for name in ["web-1", "web-2"] {
        let app = s.app(name);
        assert_eq!(app.version(), "v1");
        assert!(app.health_file_present(), "{name} was drained");
    }
    let h = history(&s);
    assert_eq!(h[0]["state"], "aborted", "{h}");
    let id = h[0]["id"].as_str().expect("id").to_string();

    let out = s.coordinator.run(&["undrain", "web-3"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let out = s.coordinator.run(&["resume", &id]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_fleet_settled(&s, "v2");
}
