//! Issue 12: the surge strategy end to end — the runbook's 18 steps against real
//! HAProxy, Apache, agents and a sqlite db host (the surge fixture), under
//! continuous traffic and cookie-pinned sessions.

use std::time::Duration;

use handover_tests::agents::output_text;
use handover_tests::surge::{
    MIGRATE_HOOK, Misbehave, ProviderKind, SurgeFleet, SurgeLoad, SurgeOptions,
    assert_nobody_noticed,
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
        .write_surge_plan(ProviderKind::Standby, "v2", "")
        .expect("plan");
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

/// The README, which the next tests take as a new user would.
const README: &str = include_str!("../../../README.md");

/// The README's example surge plan (the block after "An example plan, with the
/// standby provider:"), as written but for the repository URL.
fn readme_surge_plan(repo: &str) -> String {
    let after = README
        .split_once("An example plan, with the standby provider:")
        .expect("the README's surge section has an example plan")
        .1;
    let body = after
        .split_once("```toml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("a toml block")
        .0;
    let repo_line = "repo = \"file:///srv/git/shop.git\"";
    assert!(
        body.contains(repo_line),
        "update this test with the README: {body}"
    );
    body.replace(repo_line, &format!("repo = {repo:?}"))
}

/// The README's runbook table: every one of the 18 rows is available.
#[test]
fn the_readme_runbook_table_says_yes_on_every_row() {
    let table = README
        .split_once("## The runbook, step by step")
        .expect("the runbook section")
        .1;
    let rows: Vec<&str> = table
        .lines()
        .skip_while(|l| !l.starts_with("| # |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .collect();
    let first = |r: &&str| r.split('|').nth(1).unwrap_or("").trim().to_owned();
    let covered: Vec<String> = rows.iter().map(first).collect();
    assert_eq!(covered.first().map(String::as_str), Some("1"), "{rows:?}");
    assert_eq!(covered.last().map(String::as_str), Some("18"), "{rows:?}");
    for row in &rows {
        let last = row.trim_end_matches('|').rsplit('|').next().unwrap_or("");
        assert_eq!(last.trim(), "yes", "{row}");
    }
}

/// The README's example surge plan, taken as written (the repository URL aside),
/// against a local fleet with the standby provider: `handover plan` shows the
/// 18 runbook rows, the rollout hands over under traffic with nothing failed or
/// cut, the old servers are out of HAProxy, and `handover inputs export --csv`
/// lists the plan's inputs; importing that export changes nothing.
#[test]
fn the_readme_example_surge_plan_hands_over_and_exports_its_inputs() {
    let fleet = SurgeFleet::start(SurgeOptions::default()).expect("fleet");
    let plan = fleet
        .write_plan("surge.toml", &readme_surge_plan(&fleet.repo))
        .expect("plan");
    let plan = plan.display().to_string();
    let out = fleet.coordinator.run(&["plan", &plan]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows = (1..=7)
        .chain(10..=18)
        .map(|r| r.to_string())
        .chain(["8–9".to_owned()]);
    for row in rows {
        let row = format!("[runbook {row:>4}]");
        assert!(shown.contains(&row), "plan shows {row}: {shown}");
    }

    let load = SurgeLoad::start(&fleet).expect("load starts");
    let out = fleet.coordinator.run(&["rollout", &plan, "--yes"]);
    let (report, sessions) = load.stop();
    assert!(out.status.success(), "{}", text(&out));
    assert_nobody_noticed(&report, &sessions);
    fleet.check_capacity().expect("3 UP at every sample");
    let up = up_names(&fleet);
    assert_eq!(up.len(), 3, "{up:?}");
    for h in &fleet.apps {
        assert!(!up.contains(&h.name), "{} left HAProxy: {up:?}", h.name);
    }
    for h in &fleet.standby {
        assert_eq!(h.version(), "v2", "{}", h.name);
    }

    let out = fleet.coordinator.run(&["inputs", "export", "--csv"]);
    assert!(out.status.success(), "{}", text(&out));
    let csv = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(csv.replace("\r\n", "\n"), "key,value\nAPP_ENV,production\n");
    let file = fleet.dir().join("inputs.csv");
    std::fs::write(&file, &csv).expect("save the export");
    let versions = |fleet: &SurgeFleet| {
        let out = fleet.coordinator.run(&["inputs", "history"]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    let before = versions(&fleet);
    let out = fleet
        .coordinator
        .run(&["inputs", "import", "--csv", &file.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        versions(&fleet),
        before,
        "importing the export made no version"
    );
}

/// A new server fails the DB check: the rollout stops before any traffic moves,
/// the new servers go back to the pool, the old ones never stopped serving.
#[test]
fn a_new_server_failing_the_db_check_stops_the_surge_before_traffic_moves() {
    let fleet = SurgeFleet::start(SurgeOptions::default()).expect("fleet");
    fleet.fail_dbcheck_on("web-5").expect("switch");
    let plan = fleet
        .write_surge_plan(ProviderKind::Standby, "v2", "")
        .expect("plan");
    let load = SurgeLoad::start(&fleet).expect("load starts");
    let out = fleet.coordinator.run(&["rollout", &plan, "--yes"]);
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
        .write_surge_plan(ProviderKind::Standby, "v2", "")
        .expect("plan");
    let load = SurgeLoad::start(&fleet).expect("load starts");
    let rollout = fleet
        .coordinator
        .command(&["rollout", &plan, "--yes"])
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
        .write_surge_plan(ProviderKind::Command, "v2", extra)
        .expect("plan");
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

/// Runs `handover ARGS --json` and SIGKILLs it as soon as step `kill_after`, or
/// a later one, is journaled done (`None`: lets it finish). Returns its exit
/// status text (with its output) and whether it was killed.
fn run_until(fleet: &SurgeFleet, args: &[&str], kill_after: Option<usize>) -> (String, bool) {
    run_until_event(fleet, args, |event| {
        event["event"] == "step-done"
            && kill_after.is_some_and(|k| event["number"].as_u64().is_some_and(|n| n as usize >= k))
    })
}

/// Runs `handover ARGS --json` and SIGKILLs it at the first event `kill_at`
/// picks; returns its exit status text (with its output) and whether it was
/// killed.
fn run_until_event(
    fleet: &SurgeFleet,
    args: &[&str],
    kill_at: impl Fn(&serde_json::Value) -> bool,
) -> (String, bool) {
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
        if kill_at(&event) {
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

/// The steps `handover plan FILE --json` lists for a surge plan, as
/// (number, title): the kill points are made from the engine's own list.
fn planned_steps(fleet: &SurgeFleet, plan: &str) -> Vec<(usize, String)> {
    let out = fleet.coordinator.run(&["plan", plan, "--json"]);
    assert!(out.status.success(), "plan --json: {}", text(&out));
    let steps: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("plan --json prints a list of steps");
    let steps: Vec<(usize, String)> = steps
        .iter()
        .map(|s| {
            let number = s["number"].as_u64().expect("a step number") as usize;
            (number, s["title"].as_str().unwrap_or("").to_owned())
        })
        .collect();
    let numbers: Vec<usize> = steps.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, (1..=steps.len()).collect::<Vec<_>>());
    steps
}

/// The state `handover history --json` gives the one rollout of the fleet.
fn rollout_state(fleet: &SurgeFleet) -> String {
    let out = fleet.coordinator.run(&["history", "--json"]);
    assert!(out.status.success(), "history: {}", text(&out));
    let records: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("a list");
    assert_eq!(records.len(), 1, "one rollout: {records:?}");
    records[0]["state"].as_str().unwrap_or("").to_owned()
}

/// A SIGKILL after step 1 can land once step 2, the migration, has been
/// journaled as started: `resume` then halts rather than migrate twice (the
/// README's rule). The test does what the halt tells the operator: it waits until
/// the hook no longer runs on the db host (the agent finishes a hook it started
/// even when the coordinator is gone), checks the database and, migrated, says so
/// with `--migrated`; not migrated (the hook never ran), it runs the migration by
/// hand first.
fn resume_after_a_halted_migration(
    fleet: &SurgeFleet,
    output: &str,
    kill_after: usize,
) -> (String, bool) {
    assert!(
        output.contains("(runbook 2, the migration)") && output.contains("--migrated"),
        "the halt names the migration and the way on: {output}"
    );
    fleet
        .wait_until_no_migration_runs()
        .expect("the db host settles");
    match fleet.migrate_runs().expect("db") {
        1 => {}
        0 => {
            let out = fleet.coordinator.run(&["hook", "db-1", MIGRATE_HOOK]);
            assert!(out.status.success(), "migrate by hand: {}", text(&out));
        }
        n => panic!("the migration ran {n} times"),
    }
    run_until(fleet, &["resume", "--migrated"], Some(kill_after))
}

/// The coordinator SIGKILLed between every two steps, the boundaries enumerated
/// from `handover plan --json`: the rollout is killed after step 1, then each
/// `handover resume` is killed after the next step, and a last `resume`
/// finishes. The rollout ends on the standby hosts, migrate ran once, no request
/// failed, no session was cut, 3 servers UP at every sample. (Crashes during each
/// step, and in the ways back, are covered by the engine's unit tests against
/// the scripted fleet.)
#[test]
fn sigkill_between_every_two_steps_then_resume_finishes_the_surge_and_migrates_once() {
    let fleet = SurgeFleet::start(SurgeOptions::default()).expect("fleet");
    let plan = fleet
        .write_surge_plan(ProviderKind::Standby, "v2", "")
        .expect("plan");
    let steps = planned_steps(&fleet, &plan);
    assert!(
        steps[1].1.starts_with("runbook 2"),
        "step 2 migrates: {steps:?}"
    );
    let load = SurgeLoad::start(&fleet).expect("load starts");
    let (status, killed) = run_until(&fleet, &["rollout", &plan, "--yes"], Some(1));
    assert!(killed, "killed after step 1: {status}");
    for after in 2..steps.len() {
        if rollout_state(&fleet) == "succeeded" {
            break; // the SIGKILL came after the last step
        }
        let (mut status, mut killed) = run_until(&fleet, &["resume"], Some(after));
        if !killed && status.contains("(runbook 2, the migration)") {
            (status, killed) = resume_after_a_halted_migration(&fleet, &status, after);
        }
        let title = &steps[after - 1].1;
        assert!(killed, "killed after step {after} ({title}): {status}");
    }
    if rollout_state(&fleet) != "succeeded" {
        let (status, killed) = run_until(&fleet, &["resume"], None);
        assert!(!killed && status.starts_with("exit status: 0"), "{status}");
    }
    let (report, sessions) = load.stop();
    assert_eq!(rollout_state(&fleet), "succeeded");
    assert_nobody_noticed(&report, &sessions);
    fleet.check_capacity().expect("3 UP at every sample");
    assert_eq!(fleet.migrate_runs().expect("db"), 1, "migrated once");
    assert_eq!(fleet.backups().expect("db").len(), 1, "backed up once");
    let up = up_names(&fleet);
    for h in &fleet.standby {
        assert_eq!(h.version(), "v2", "{}", h.name);
        assert!(up.contains(&h.name), "{} serves: {up:?}", h.name);
    }
    for h in &fleet.apps {
        assert!(!up.contains(&h.name), "{} left: {up:?}", h.name);
    }
}

/// The coordinator SIGKILLed while the migration (step 2) runs: it cannot know
/// whether the hook finished, so `resume` halts naming the migration and
/// `--migrated`, runs nothing, and migrates nothing; the operator checks the
/// database as the message says, and `resume --migrated` finishes the rollout.
/// Migrate ran once; no request failed, no session was cut.
#[test]
fn a_rollout_killed_during_the_migration_halts_until_the_operator_says_migrated() {
    let fleet = SurgeFleet::start(SurgeOptions::default()).expect("fleet");
    let plan = fleet
        .write_surge_plan(ProviderKind::Standby, "v2", "")
        .expect("plan");
    let load = SurgeLoad::start(&fleet).expect("load starts");
    let (status, killed) = run_until_event(&fleet, &["rollout", &plan, "--yes"], |e| {
        e["event"] == "step-started" && e["number"] == 2
    });
    assert!(killed, "killed during step 2: {status}");
    fleet
        .wait_until_no_migration_runs()
        .expect("the db host settles");
    let migrated_before = fleet.migrate_runs().expect("db");
    eprintln!("the migration had run {migrated_before} time(s) when the SIGKILL landed");
    let (status, killed) = run_until(&fleet, &["resume"], None);
    assert!(!killed && !status.starts_with("exit status: 0"), "{status}");
    assert!(
        !status.contains("step-started"),
        "resume started no step: {status}"
    );
    assert_eq!(rollout_state(&fleet), "halted", "{status}");
    assert_eq!(
        fleet.migrate_runs().expect("db"),
        migrated_before,
        "resume ran no migration: {status}"
    );
    let (status, killed) = resume_after_a_halted_migration(&fleet, &status, usize::MAX);
    assert!(!killed && status.starts_with("exit status: 0"), "{status}");
    let (report, sessions) = load.stop();
    assert_eq!(rollout_state(&fleet), "succeeded");
    assert_nobody_noticed(&report, &sessions);
    assert_eq!(fleet.migrate_runs().expect("db"), 1, "migrated once");
    let up = up_names(&fleet);
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
        .write_surge_plan(ProviderKind::Command, "v2", "")
        .expect("plan");
    let load = SurgeLoad::start(&fleet).expect("load starts");
    let out = fleet.coordinator.run(&["rollout", &plan, "--yes"]);
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
