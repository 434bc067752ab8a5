//! Issue 6: the rollout engine on the real-HAProxy fleet, with client traffic going
//! through HAProxy the whole time and a monitor polling HAProxy every 100 ms.

use std::time::Duration;

use handover_tests::agents::output_text;
use handover_tests::monitor::UpMonitor;
use handover_tests::run::{Run, assert_settled, history, traffic};
use handover_tests::scenario::{BACKEND, Scenario, ScenarioOptions};

fn scenario(apps: u8) -> Scenario {
    Scenario::start(ScenarioOptions {
        apps,
        ..ScenarioOptions::default()
    })
    .expect("fleet starts")
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
    assert_settled(&s, "v2");
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
    assert_settled(&s, "v1");
    let h = history(&s);
    assert_eq!(h[0]["state"], "rolled-back", "{h}");
    assert!(
        h[0]["error"].as_str().unwrap_or("").contains("verify"),
        "the reason names the failed verification: {h}"
    );
}

/// Reaches the step of `wave` whose title starts with `prefix`, lets it get
/// under way, then SIGKILLs the coordinator there.
fn kill_at(mut run: Run, prefix: &str, wave: u64) {
    run.wait_step(prefix, wave);
    std::thread::sleep(Duration::from_millis(150));
    assert!(run.kill().landed, "the run ended before the SIGKILL");
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

    kill_at(
        Run::start(&s, &["rollout", &plan_arg, "--yes"]),
        "wait for sessions",
        1,
    );
    let kills = [("detach", 2), ("apply", 3), ("attach", 4)];
    for (prefix, wave) in kills {
        kill_at(Run::start(&s, &["resume"]), prefix, wave);
    }
    let out = s.coordinator.run(&["resume"]);
    let report = load.stop();
    let up = monitor.stop();
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
    assert!(up.violations.is_empty(), "{:?}", up.violations);
    assert_settled(&s, "v2");
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
    let held = handover_tests::run::hold_direct_client(&s, "web-1", 60);
    let plan = s
        .write_plan("first.toml", &s.in_place_plan("v2", 1, 2))
        .expect("plan");
    let mut first = Run::start(&s, &["rollout", &plan.display().to_string(), "--yes"]);
    // Wait until the first rollout holds the hosts and is draining its canary.
    let id = first.wait_for_step("wait for sessions");

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
    first.signal(nix::sys::signal::Signal::SIGINT);
    let first = first.finish();
    assert_eq!(first.code, Some(1), "an interrupted rollout exits 1");
    assert_settled(&s, "v1");
    let h = history(&s);
    assert_eq!(h[0]["state"], "aborted", "{h}");
    drop(held);

    // The lease went with it: a new rollout may run.
    let out = s
        .coordinator
        .run(&["rollout", &second.display().to_string(), "--yes"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_settled(&s, "v2");
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
    assert_settled(&s, "v2");

    let monitor = UpMonitor::start(&s.haproxy, &[BACKEND], 2).expect("monitor");
    let load = traffic(&s);
    let out = s.coordinator.run(&["rollback", "--yes"]);
    let report = load.stop();
    let up = monitor.stop();
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
    assert!(up.violations.is_empty(), "{:?}", up.violations);
    assert_settled(&s, "v1");
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
        up = s.up_count();
        if up == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(up, 2, "HAProxy never took web-3 out of rotation");
    let mut plan = s.plan("v2", 1, 2);
    plan.rollout.attach_timeout = Some("2s".into());
    let plan_text = plan.render();
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
    assert_settled(&s, "v2");
}
