//! Issue 12: the surge strategy end to end — the runbook's 18 steps against real
//! HAProxy, Apache, agents and a sqlite db host (the surge fixture), under
//! continuous traffic and cookie-pinned sessions.

use std::time::Duration;

use handover_tests::agents::output_text;
use handover_tests::surge::{
    Misbehave, ProviderKind, SurgeFleet, SurgeLoad, SurgeOptions, assert_nobody_noticed,
};
use handover_tests::traffic::{Traffic, TrafficOptions};

/// The names HAProxy has UP now.
fn up_names(fleet: &SurgeFleet) -> Vec<String> {
    let up = fleet.up_addresses().expect("stats");
    fleet
        .apps
        .iter()
        .chain(&fleet.standby)
        .filter(|h| up.contains(&h.apache.addr().to_string()))
        .map(|h| h.name.clone())
        .collect()
}

fn text(out: &std::process::Output) -> String {
    output_text(out)
}

/// Surge 3 → 3 with the standby provider under continuous traffic: the standby
/// hosts take over on v2, the old servers leave HAProxy only after their pinned
/// sessions ended and go back to the pool, backup and migrate ran once, the
/// inputs version was recorded, and nobody noticed.
#[test]
fn surge_hands_over_to_standby_hosts_with_no_failed_request_and_no_cut_session() {
    let fleet = SurgeFleet::start(SurgeOptions::default()).expect("fleet");
    let plan = fleet
        .write_plan(
            "surge.toml",
            &fleet.surge_plan(ProviderKind::Standby, "v2", ""),
        )
        .expect("plan");
    let plan = plan.display().to_string();
    let out = fleet.coordinator.run(&["plan", &plan, "--offline"]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    for row in [
        "runbook    1",
        "runbook    2",
        "runbook   14",
        "runbook   18",
    ] {
        assert!(shown.contains(row), "plan shows {row}: {shown}");
    }

    let load = SurgeLoad::start(&fleet).expect("load starts");
    let out = fleet
        .coordinator
        .run(&["rollout", &plan, "--yes", "--json"]);
    let (report, sessions) = load.stop();
    assert!(out.status.success(), "{}", text(&out));
    assert_nobody_noticed(&report, &sessions);
    assert!(
        sessions.iter().any(|s| s.while_draining > 0),
        "a pinned session was served while its server drained: {sessions:?}"
    );
    fleet.check_capacity().expect("3 UP at every sample");

    let up = up_names(&fleet);
    for h in &fleet.standby {
        assert_eq!(h.version(), "v2", "{}", h.name);
        assert!(up.contains(&h.name), "{} serves: {up:?}", h.name);
    }
    for h in &fleet.apps {
        assert!(!up.contains(&h.name), "{} left HAProxy: {up:?}", h.name);
        assert_eq!(h.version(), "v1", "{} kept as it was, in the pool", h.name);
    }
    assert_eq!(fleet.migrate_runs().expect("db"), 1, "migrated once");
    assert_eq!(fleet.backups().expect("db").len(), 1, "backed up once");

    // The journal names the artifact and the inputs version; the live progress
    // named runbook steps.
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(
        json.contains("runbook 13"),
        "progress names the runbook step"
    );
    let out = fleet.coordinator.run(&["inputs", "history"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = fleet.coordinator.run(&["inputs", "export", "--csv"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("APP_ENV"),
        "{}",
        text(&out)
    );

    // Blue and green trade places: the next plan replaces the new servers with
    // the old ones, now in the pool.
    let out = fleet.coordinator.run(&["plan", &plan, "--offline"]);
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(shown.contains("replace web-4, web-5, web-6"), "{shown}");
    let rollback = fleet.coordinator.run(&["rollback", "--yes"]);
    assert!(!rollback.status.success());
    assert!(
        text(&rollback).contains("new rollout of the previous revision"),
        "{}",
        text(&rollback)
    );
}

/// A new server fails the DB check: the rollout stops before any traffic moves,
/// the new servers go back to the pool, the old ones never stopped serving.
#[test]
fn a_new_server_failing_the_db_check_stops_the_surge_before_traffic_moves() {
    let fleet = SurgeFleet::start(SurgeOptions::default()).expect("fleet");
    fleet.fail_dbcheck_on("web-5").expect("switch");
    let plan = fleet
        .write_plan(
            "surge.toml",
            &fleet.surge_plan(ProviderKind::Standby, "v2", ""),
        )
        .expect("plan");
    let load = SurgeLoad::start(&fleet).expect("load starts");
    let out = fleet
        .coordinator
        .run(&["rollout", &plan.display().to_string(), "--yes"]);
    let (report, sessions) = load.stop();
    assert_eq!(out.status.code(), Some(1), "aborted: {}", text(&out));
    assert!(text(&out).contains("web-5"), "{}", text(&out));
    assert_nobody_noticed(&report, &sessions);
    let up = up_names(&fleet);
    for h in &fleet.apps {
        assert!(up.contains(&h.name), "{} still serves", h.name);
        assert!(h.health_file_present(), "{} untouched", h.name);
    }
    for h in &fleet.standby {
        assert!(!up.contains(&h.name), "{} never attached", h.name);
    }
    assert_eq!(fleet.migrate_runs().expect("db"), 1);
}

/// The bake sees a 5xx burst on a new server: automatic rollback, the old
/// servers back in service before the new ones leave. The burst is on one page
/// of web-4 only (`/boom/`, a broken `.htaccess` put there once web-4 is
/// attached), hit by its own client; the client loop and the pinned sessions,
/// on `/`, see no failure.
#[test]
fn a_5xx_burst_during_the_bake_rolls_back_with_no_failed_request() {
    let fleet = SurgeFleet::start(SurgeOptions::default()).expect("fleet");
    let plan = fleet
        .write_plan(
            "surge.toml",
            &fleet.surge_plan(ProviderKind::Standby, "v2", ""),
        )
        .expect("plan");
    let load = SurgeLoad::start(&fleet).expect("load starts");
    let rollout = fleet
        .coordinator
        .command(&["rollout", &plan.display().to_string(), "--yes"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("rollout runs");
    // Once web-4 is attached (runbook step 11), its /boom/ page breaks.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !up_names(&fleet).contains(&"web-4".to_string()) {
        assert!(std::time::Instant::now() < deadline, "web-4 never attached");
        std::thread::sleep(Duration::from_millis(50));
    }
    let root = fleet.deploy_root("web-4").expect("root");
    let boom = root.join("current/boom");
    std::fs::create_dir_all(&boom).expect("boom dir");
    std::fs::write(boom.join(".htaccess"), "ThisIsNotAnApacheDirective on\n").expect("break");
    let burst = Traffic::start(
        fleet.frontend(),
        TrafficOptions {
            clients: 2,
            keep_alive: false,
            pause: Duration::from_millis(10),
            path: "/boom/".to_owned(),
            max_duration: Duration::from_secs(120),
            ..TrafficOptions::default()
        },
    )
    .expect("burst");
    let out = rollout.wait_with_output().expect("rollout ends");
    let _ = burst.stop();
    let (report, sessions) = load.stop();
    assert_eq!(out.status.code(), Some(1), "rolled back: {}", text(&out));
    assert!(text(&out).contains("5xx"), "{}", text(&out));
    assert_nobody_noticed(&report, &sessions);
    fleet.check_capacity().expect("3 UP at every sample");
    let up = up_names(&fleet);
    for h in &fleet.apps {
        assert!(up.contains(&h.name), "{} back in service: {up:?}", h.name);
        assert_eq!(h.version(), "v1", "{}", h.name);
    }
    for h in &fleet.standby {
        assert!(!up.contains(&h.name), "{} out: {up:?}", h.name);
    }
}

/// A provider that hangs, fails or prints garbage: the launch step fails with
/// a message naming the provider and the step; nothing is attached.
#[test]
fn a_misbehaving_provider_is_named_with_the_step_and_nothing_moves() {
    let fleet = SurgeFleet::start(SurgeOptions::default()).expect("fleet");
    let extra = "timeout = \"3s\"\n";
    let plan = fleet
        .write_plan(
            "surge.toml",
            &fleet.surge_plan(ProviderKind::Command, "v2", extra),
        )
        .expect("plan");
    let plan = plan.display().to_string();
    for (how, says) in [
        (Misbehave::Fail, "failed"),
        (Misbehave::Garbage, "no JSON list"),
        (Misbehave::Hang, "did not finish within 3s"),
    ] {
        fleet
            .provider_misbehaves("launch", Some(how))
            .expect("switch");
        let out = fleet.coordinator.run(&["rollout", &plan, "--yes"]);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{how:?}: {all}");
        assert!(
            all.contains("provider launch") && all.contains(says),
            "{how:?}: {all}"
        );
        let up = up_names(&fleet);
        assert_eq!(up.len(), 3, "{how:?}: only the old servers serve: {up:?}");
    }
    fleet.provider_misbehaves("launch", None).expect("switch");
}

/// Runs `handover ARGS --json` and SIGKILLs it as soon as step `kill_after`
/// is journaled done (`None`: lets it finish). Returns its exit status text and
/// whether it was killed.
fn run_until(fleet: &SurgeFleet, args: &[&str], kill_after: Option<usize>) -> (String, bool) {
    use std::io::BufRead as _;
    let mut child = fleet
        .coordinator
        .command(args)
        .arg("--json")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("handover runs");
    let stdout = child.stdout.take().expect("stdout");
    let mut seen = String::new();
    let mut killed = false;
    for line in std::io::BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        seen.push_str(&line);
        seen.push('\n');
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let done = event["event"] == "step-done"
            && event["number"].as_u64().map(|n| n as usize) == kill_after;
        if done {
            // SIGKILL: no chance to tidy up, as when a bastion dies.
            let _ = child.kill();
            killed = true;
            break;
        }
    }
    let out = child.wait_with_output().expect("ends");
    seen.push_str(&String::from_utf8_lossy(&out.stderr));
    (format!("{} {seen}", out.status), killed)
}

/// The coordinator SIGKILLed between two steps, at boundaries across the
/// runbook (after the migration, a deploy, the attach, the wait for sessions,
/// the bake), each time `handover resume` carries on: the rollout finishes,
/// migrate ran once, no request failed, no session was cut. (Every boundary,
/// with both "before" and "after" crashes, is covered by the engine's unit
/// tests against the scripted fleet.)
#[test]
fn sigkill_between_steps_then_resume_finishes_the_surge_and_migrates_once() {
    let fleet = SurgeFleet::start(SurgeOptions::default()).expect("fleet");
    let plan = fleet
        .write_plan(
            "surge.toml",
            &fleet.surge_plan(ProviderKind::Standby, "v2", ""),
        )
        .expect("plan");
    let plan = plan.display().to_string();
    let load = SurgeLoad::start(&fleet).expect("load starts");
    // Steps (batch = 1, three new servers): 1 backup, 2 migrate, 3–7 first
    // batch, 8–15 the others, 16 array, 17 attach, 18 drain old, 19 wait,
    // 20 detach, 21–22 array, 23 bake, 24 retire the old servers.
    let (status, killed) = run_until(&fleet, &["rollout", &plan, "--yes"], Some(2));
    assert!(killed, "killed after step 2: {status}");
    for kill_after in [4, 15, 17, 19] {
        let (status, killed) = run_until(&fleet, &["resume"], Some(kill_after));
        assert!(killed, "killed after step {kill_after}: {status}");
    }
    let (status, killed) = run_until(&fleet, &["resume"], None);
    let (report, sessions) = load.stop();
    assert!(!killed);
    assert!(status.starts_with("exit status: 0"), "{status}");
    assert_nobody_noticed(&report, &sessions);
    fleet.check_capacity().expect("3 UP at every sample");
    assert_eq!(fleet.migrate_runs().expect("db"), 1, "migrated once");
    let up = up_names(&fleet);
    for h in &fleet.standby {
        assert_eq!(h.version(), "v2", "{}", h.name);
        assert!(up.contains(&h.name), "{} serves: {up:?}", h.name);
    }
    for h in &fleet.apps {
        assert!(!up.contains(&h.name), "{} left: {up:?}", h.name);
    }
}

/// With the command provider, a launched server failing the DB check: the
/// rollout stops before any traffic moves, every server it launched is
/// terminated through the provider, the array is enabled again, the old
/// servers never stopped serving.
#[test]
fn a_launched_server_failing_the_db_check_is_terminated_and_the_array_enabled() {
    let fleet = SurgeFleet::start(SurgeOptions::default()).expect("fleet");
    // The test provider names its hosts web-20, web-21... in launch order.
    fleet.fail_dbcheck_on("web-21").expect("switch");
    let plan = fleet
        .write_plan(
            "surge.toml",
            &fleet.surge_plan(ProviderKind::Command, "v2", ""),
        )
        .expect("plan");
    let load = SurgeLoad::start(&fleet).expect("load starts");
    let out = fleet
        .coordinator
        .run(&["rollout", &plan.display().to_string(), "--yes"]);
    let (report, sessions) = load.stop();
    assert_eq!(out.status.code(), Some(1), "aborted: {}", text(&out));
    assert!(text(&out).contains("web-21"), "{}", text(&out));
    assert_nobody_noticed(&report, &sessions);
    let calls = fleet.provider_calls();
    let launched = fleet.launched().expect("launched");
    let names: Vec<&str> = launched.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["web-20", "web-21"], "{calls:?}");
    assert!(launched.iter().all(|h| h.terminated), "{launched:?}");
    assert!(
        calls.iter().any(|c| c == "terminate web-20 web-21"),
        "{calls:?}"
    );
    let disable = calls.iter().position(|c| c == "array disable");
    assert!(disable.is_none(), "the array was never disabled: {calls:?}");
    assert_eq!(
        calls.last().map(String::as_str),
        Some("array enable"),
        "{calls:?}"
    );
    assert_eq!(up_names(&fleet).len(), 3);
    assert_eq!(fleet.migrate_runs().expect("db"), 1);
}
