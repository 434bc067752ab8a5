//! Issue 17, "rollouts from any bastion": the journal and the deploy lock on a
//! real etcd (Debian's etcd-server on loopback). Two "bastions" are two config
//! files with their own state_dir, both pointing at the same etcd and prefix:
//! one is SIGKILLed mid-rollout and the other finishes it; two started at once,
//! one runs and the other is refused naming the holder; a journal exported from
//! redb and imported into etcd is resumed there.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use handover_tests::agents::{Coordinator, output_text, spawn_lines};
use handover_tests::etcd::Etcd;
use handover_tests::run::releases_of;
use handover_tests::scenario::Scenario;

use crate::faults::{assert_no_failed_request, assert_settled, scenario, traffic};

/// A guard against hanging, not a measurement.
const BOUND: Duration = Duration::from_secs(180);

/// Another bastion: the scenario's coordinator config with its own state_dir
/// (`DIR/NAME/state`) and, when `state` is given, that `[state]` section.
fn bastion(s: &Scenario, name: &str, state: Option<&str>) -> Coordinator {
    s.coordinator
        .another_bastion(&s.dir().join(name), state)
        .expect("another bastion's config")
}

fn state_dir(c: &Coordinator) -> PathBuf {
    c.config
        .parent()
        .map(|d| d.join("state"))
        .expect("config in a dir")
}

/// Every host got exactly one new release since `before`: none was built twice.
fn assert_one_new_release_each(s: &Scenario, before: &[BTreeSet<String>]) {
    for (app, before) in s.apps.iter().zip(before) {
        let new: Vec<_> = releases_of(app).difference(before).cloned().collect();
        assert_eq!(new.len(), 1, "{}: new releases {new:?}", app.name);
    }
}

/// Starts `handover rollout PLAN --yes --json` on `c`, SIGKILLs it once step
/// `number` has started, and returns the rollout's id.
fn kill_at_step(c: &Coordinator, plan: &Path, number: u64) -> String {
    let mut cmd = c.command(&["rollout", &plan.display().to_string(), "--yes", "--json"]);
    cmd.stdin(Stdio::null());
    let (mut child, lines) = spawn_lines(cmd, Stdio::null()).expect("spawn handover");
    let mut rollout = None;
    let deadline = Instant::now() + BOUND;
    for line in lines.map_while(Result::ok) {
        assert!(Instant::now() < deadline, "step {number} never started");
        let Ok(e) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if e["event"] == "phase" {
            rollout = e["rollout"].as_str().map(str::to_owned);
        }
        if e["event"] == "step-started" && e["number"] == number {
            break;
        }
    }
    assert!(
        matches!(child.try_wait(), Ok(None)),
        "it ended before the SIGKILL"
    );
    let _ = child.kill();
    let _ = child.wait();
    rollout.expect("a phase event named the rollout")
}

/// The JSON events of a finished `--json` run.
fn events(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn finished_state(out: &Output) -> String {
    events(out)
        .iter()
        .rev()
        .find(|e| e["event"] == "finished")
        .and_then(|e| e["state"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no finished event: {}", output_text(out)))
}

/// The rollouts `handover history --json` lists on `c`, as (id, state).
fn history(c: &Coordinator) -> Vec<(String, String)> {
    let out = c.run(&["history", "--json"]);
    assert!(out.status.success(), "history: {}", output_text(&out));
    let records: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("history --json is a list");
    records
        .iter()
        .map(|r| {
            let text = |k: &str| r[k].as_str().unwrap_or("").to_owned();
            (text("id"), text("state"))
        })
        .collect()
}

/// Bastion A is SIGKILLed mid-rollout; bastion B, with its own state_dir and a
/// config pointing at the same etcd, runs `handover resume`: it takes A's etcd
/// lock and agents' leases over, carries on from the journal and finishes. Clients ran throughout: no request failed; every host got exactly
/// one new release; `history` on A (which has no journal of its own) reads the
/// same succeeded rollout from etcd.
#[test]
fn a_rollout_killed_on_one_bastion_is_finished_from_another() {
    let s = scenario("");
    let etcd = Etcd::start(&s.dir().join("etcd")).expect("etcd starts");
    let state = etcd.state_section("/handover/e2e");
    let a = bastion(&s, "bastion-a", Some(&state));
    let b = bastion(&s, "bastion-b", Some(&state));
    let load = traffic(&s);
    let before: Vec<_> = s.apps.iter().map(releases_of).collect();
    let plan = s
        .write_plan("plan-v2.toml", &s.in_place_plan("v2", 1, 2))
        .expect("plan");

    let rollout = kill_at_step(&a, &plan, 3);
    let started = Instant::now();
    // Both "bastions" are this machine, so B sees A's pid is gone and takes its
    // etcd lock and agents' leases over at once (from another machine,
    // `--takeover` waits for them to lapse: docs/etcd.md).
    let out = b.run(&["resume", "--json"]);
    eprintln!("bastion B finished after {:?}", started.elapsed());
    assert!(out.status.success(), "resume on B: {}", output_text(&out));
    assert_eq!(finished_state(&out), "succeeded", "{}", output_text(&out));
    let phase = events(&out)
        .into_iter()
        .find(|e| e["event"] == "phase")
        .expect("a phase");
    assert_eq!(phase["rollout"], rollout.as_str(), "B resumed A's rollout");
    assert!(
        phase["done"].as_u64().is_some_and(|d| d >= 2),
        "B carried on from the journal: {phase}"
    );

    let report = load.stop();
    assert_no_failed_request(&report);
    assert_settled(&s, "v2");
    assert_one_new_release_each(&s, &before);
    assert_eq!(history(&a), vec![(rollout, "succeeded".to_string())]);
    assert!(
        !state_dir(&a).join("journal.redb").exists()
            && !state_dir(&b).join("journal.redb").exists(),
        "the journal lives in etcd, not on a bastion"
    );
}

/// Bastions A and B start a rollout of the same fleet at once: exactly one runs
/// (and succeeds); the other is refused before touching anything, naming the
/// holder (its rollout, owner, host and pid).
#[test]
fn two_bastions_starting_at_once_run_exactly_one_rollout() {
    let s = scenario("");
    let etcd = Etcd::start(&s.dir().join("etcd")).expect("etcd starts");
    let state = etcd.state_section("/handover/e2e");
    let a = bastion(&s, "bastion-a", Some(&state));
    let b = bastion(&s, "bastion-b", Some(&state));
    let plan = s
        .write_plan("plan-v2.toml", &s.in_place_plan("v2", 1, 2))
        .expect("plan")
        .display()
        .to_string();
    let start = |c: &Coordinator| -> Child {
        c.command(&["rollout", &plan, "--yes", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn handover")
    };
    let (ca, cb) = (start(&a), start(&b));
    let outs = [ca, cb].map(|c| c.wait_with_output().expect("wait"));
    let ran: Vec<&Output> = outs.iter().filter(|o| o.status.success()).collect();
    let refused: Vec<&Output> = outs.iter().filter(|o| !o.status.success()).collect();
    assert_eq!(
        (ran.len(), refused.len()),
        (1, 1),
        "A: {}\nB: {}",
        output_text(&outs[0]),
        output_text(&outs[1])
    );
    assert_eq!(finished_state(ran[0]), "succeeded");
    let err = String::from_utf8_lossy(&refused[0].stderr);
    assert!(
        err.contains("deploy lock") && err.contains("held by rollout r-") && err.contains("pid "),
        "the refusal names the holder: {err}"
    );
    assert!(
        events(refused[0])
            .iter()
            .all(|e| e["event"] != "step-started"),
        "the refused one ran no step"
    );
    assert_eq!(history(&a).len(), 1, "one rollout in the journal");
    assert_settled(&s, "v2");
}

/// A rollout journaled in redb is SIGKILLed mid-way; `handover journal export`
/// on that bastion, `journal import` into etcd, and `handover resume` with the
/// etcd config (the same bastion: the dead process's agent leases are proved
/// gone at once) finishes it; each host got exactly one new release.
#[test]
fn a_journal_exported_from_redb_and_imported_into_etcd_is_resumed_there() {
    let s = scenario("");
    let etcd = Etcd::start(&s.dir().join("etcd")).expect("etcd starts");
    let local = bastion(&s, "bastion-redb", None);
    let shared = bastion(
        &s,
        "bastion-etcd",
        Some(&etcd.state_section("/handover/e2e")),
    );
    let before: Vec<_> = s.apps.iter().map(releases_of).collect();
    let plan = s
        .write_plan("plan-v2.toml", &s.in_place_plan("v2", 1, 2))
        .expect("plan");
    let rollout = kill_at_step(&local, &plan, 3);

    let export = s.dir().join("journal.jsonl");
    let out = local.run(&["journal", "export", "--out", &export.display().to_string()]);
    assert!(out.status.success(), "export: {}", output_text(&out));
    let out = shared.run(&["journal", "import", &export.display().to_string()]);
    assert!(out.status.success(), "import: {}", output_text(&out));
    assert_eq!(
        history(&shared),
        vec![(rollout.clone(), "running".to_string())]
    );

    let out = shared.run(&["resume", "--json"]);
    assert!(
        out.status.success(),
        "resume from etcd: {}",
        output_text(&out)
    );
    assert_eq!(finished_state(&out), "succeeded", "{}", output_text(&out));
    assert_settled(&s, "v2");
    assert_one_new_release_each(&s, &before);
    assert_eq!(history(&shared), vec![(rollout, "succeeded".to_string())]);
}

/// etcd stops while a rollout runs: the coordinator stops (its next journal write
/// fails, or its lock's lease cannot be kept alive) with a message naming etcd,
/// and does nothing more; once etcd is back, `handover resume` carries on from the
/// last recorded step and finishes, each host with exactly one new release and no
/// request failed.
#[test]
fn etcd_down_stops_the_rollout_and_resume_finishes_once_it_is_back() {
    let s = scenario("");
    let mut etcd = Etcd::start(&s.dir().join("etcd")).expect("etcd starts");
    let a = bastion(&s, "bastion-a", Some(&etcd.state_section("/handover/e2e")));
    let load = traffic(&s);
    let before: Vec<_> = s.apps.iter().map(releases_of).collect();
    let plan = s
        .write_plan("plan-v2.toml", &s.in_place_plan("v2", 1, 2))
        .expect("plan");

    let mut cmd = a.command(&["rollout", &plan.display().to_string(), "--yes", "--json"]);
    cmd.stdin(Stdio::null());
    let (mut child, lines) = spawn_lines(cmd, Stdio::piped()).expect("spawn handover");
    let mut started_after_stop = 0;
    let mut stopped = false;
    for line in lines.map_while(Result::ok) {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if e["event"] == "step-started" {
            if stopped {
                started_after_stop += 1;
            } else if e["number"] == 2 {
                etcd.stop();
                stopped = true;
            }
        }
    }
    let status = child.wait().expect("wait");
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
    }
    assert!(stopped, "never reached step 2: {stderr}");
    assert!(!status.success(), "it cannot finish without etcd: {stderr}");
    assert!(stderr.contains("etcd"), "the message names etcd: {stderr}");
    assert!(
        started_after_stop <= 1,
        "at most the step under way when etcd went could follow; {started_after_stop} did: {stderr}"
    );

    etcd.restart().expect("etcd starts again");
    let out = a.run(&["resume", "--json"]);
    assert!(out.status.success(), "resume: {}", output_text(&out));
    assert_eq!(finished_state(&out), "succeeded", "{}", output_text(&out));
    let report = load.stop();
    assert_no_failed_request(&report);
    assert_settled(&s, "v2");
    assert_one_new_release_each(&s, &before);
}

/// A three-member etcd cluster on 127.0.2.1-3: its leader is SIGKILLed while a
/// rollout runs. The two others elect a new leader; the coordinator's requests
/// and its lock's keep-alives are retried meanwhile, and the rollout carries on
/// to the end: each host with exactly one new release, no request failed.
#[test]
fn the_etcd_leader_killed_mid_rollout_does_not_stop_it() {
    use handover_tests::etcd::Cluster;
    let s = scenario("");
    let mut cluster = Cluster::start(&s.dir().join("etcd")).expect("cluster starts");
    let a = bastion(
        &s,
        "bastion-a",
        Some(&cluster.state_section("/handover/e2e")),
    );
    let load = traffic(&s);
    let before: Vec<_> = s.apps.iter().map(releases_of).collect();
    let plan = s
        .write_plan("plan-v2.toml", &s.in_place_plan("v2", 1, 2))
        .expect("plan");

    let mut cmd = a.command(&["rollout", &plan.display().to_string(), "--yes", "--json"]);
    cmd.stdin(Stdio::null());
    let (mut child, lines) = spawn_lines(cmd, Stdio::piped()).expect("spawn handover");
    let mut killed = None;
    let mut seen = Vec::new();
    for line in lines.map_while(Result::ok) {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if killed.is_none() && e["event"] == "step-started" && e["number"] == 2 {
            let leader = cluster.leader().expect("a leader");
            cluster.kill(leader);
            killed = Some(leader);
        }
        seen.push(e);
    }
    let status = child.wait().expect("wait");
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
    }
    eprintln!(
        "killed member m{} (the leader)",
        killed.map_or(0, |i| i + 1)
    );
    assert!(killed.is_some(), "never reached step 2: {stderr}");
    let finished = seen
        .iter()
        .rev()
        .find(|e| e["event"] == "finished")
        .cloned();
    assert!(
        status.success() && finished.as_ref().is_some_and(|f| f["state"] == "succeeded"),
        "the rollout carried on: {status:?} {finished:?}\n{stderr}"
    );
    let report = load.stop();
    assert_no_failed_request(&report);
    assert_settled(&s, "v2");
    assert_one_new_release_each(&s, &before);
}
