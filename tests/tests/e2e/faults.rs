//! Issue 13, "faults proven with traffic running": an agent SIGKILLed in the middle
//! of a step, HAProxy reloaded mid-rollout, the coordinator's state_dir full, the
//! coordinator SIGKILLed at every step boundary of the engine's own step list and
//! resumed. Each
//! runs on the real fleet (HAProxy, Apache, agents over QUIC) with clients going
//! through HAProxy, and the scenario's capacity monitor polling HAProxy every
//! 100 ms for the whole test (it fails the test when UP < min_healthy).
//!
//! What every test checks, whatever the coordinator chose to do about the fault:
//! each host's `current` names a complete release, the old or the new (never
//! between);
//! the coordinator ends within a bound (it never hangs on a dead peer); capacity
//! was kept at every sample; and the fleet can be finished afterwards.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use handover_tests::agents::output_text;
use handover_tests::run::{
    BOUND, Finished, Killed, assert_complete_release, journaled_state, releases_of,
};
// Shared with other e2e modules through `crate::faults` (they may still import
// these from here); the one copy lives in `handover_tests::run`.
pub(crate) use handover_tests::run::{
    Run, assert_no_failed_request, assert_on_one_release, assert_settled, restart_after, traffic,
};
use handover_tests::scenario::{AppHost, Capacity, Scenario, ScenarioOptions};
use handover_tests::traffic::{Traffic, TrafficOptions};

pub(crate) fn scenario(deploy_extra: &str) -> Scenario {
    let defaults = ScenarioOptions::default();
    Scenario::start(ScenarioOptions {
        deploy_extra: format!("{}{deploy_extra}", defaults.deploy_extra),
        ..defaults
    })
    .expect("fleet starts")
}

/// An agent SIGKILLed and restarted mid-step: the coordinator learns it at once
/// (the restarted agent resets the old connection) and either finishes the
/// rollout, puts the wave back in service (rolled back), or halts with capacity
/// kept for a plain `resume` to carry on — never leaves it half-done (`failed`).
fn assert_wave_kept_or_done(run: &Finished) {
    assert!(
        matches!(run.state().as_str(), "succeeded" | "rolled-back" | "halted"),
        "{}",
        run.describe()
    );
}

/// After a fault the fleet is finished with `handover resume` (when the rollout
/// stopped short), or was finished by the rollout itself.
fn finish_fleet(s: &Scenario, run: &Finished) {
    if run.state() != "succeeded" {
        let out = s.coordinator.run(&["resume"]);
        let text = output_text(&out);
        if !out.status.success() && text.contains("nothing to resume") {
            // The rollout ended (rolled back or failed): a new one must work.
            let plan = s.dir().join("plan.toml").display().to_string();
            let out = s.coordinator.run(&["rollout", &plan, "--yes"]);
            assert!(out.status.success(), "a new rollout: {}", output_text(&out));
        } else {
            assert!(out.status.success(), "resume: {text}");
        }
    }
    assert_settled(s, "v2");
}

/// Waits until `current` on `app` no longer points at `before`: the switch.
fn wait_switched(app: &AppHost, before: &Path) {
    let link = app.root.join("current");
    let deadline = Instant::now() + BOUND;
    while std::fs::read_link(&link).ok().as_deref() == Some(before) {
        assert!(Instant::now() < deadline, "{} never switched", app.name);
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGKILL web-1's agent after it switched `current` and while its (slow) reload
/// runs: the host is on the new release (complete, not yet verified); the
/// coordinator stops or carries on within the bound; capacity holds throughout.
#[test]
fn an_agent_killed_during_apply_leaves_its_host_on_one_release() {
    // A reload that takes a second, like a graceful restart under load: the window
    // between the switch and the agent's answer.
    let mut s = scenario("reload = \"sleep 1\"\n");
    let plan = s
        .write_plan("plan.toml", &s.in_place_plan("v2", 1, 2))
        .expect("plan");
    let load = traffic(&s);
    let before = std::fs::read_link(s.apps[0].root.join("current")).expect("current");

    let mut run = Run::start(&s, &["rollout", &plan.display().to_string(), "--yes"]);
    run.wait_step("apply", 1);
    wait_switched(&s.apps[0], &before);
    s.apps[0].agent.kill();
    assert_eq!(assert_on_one_release(&s.apps[0]), "v2");
    restart_after(&mut s.apps[0].agent, Duration::from_millis(500));
    assert_eq!(assert_on_one_release(&s.apps[0]), "v2");

    let done = run.finish();
    eprintln!("apply killed: {}", done.describe());
    assert_wave_kept_or_done(&done);
    for app in &s.apps {
        assert_on_one_release(app);
    }
    finish_fleet(&s, &done);
    assert_no_failed_request(&load.stop());
    s.check_capacity().expect("capacity kept");
}

/// SIGKILL web-1's agent at the start of its apply, before anything is built (the
/// fetch): nothing on the host changed, or the new release is complete.
#[test]
fn an_agent_killed_as_apply_starts_leaves_its_host_on_one_release() {
    let mut s = scenario("");
    let plan = s
        .write_plan("plan.toml", &s.in_place_plan("v2", 1, 2))
        .expect("plan");
    let load = traffic(&s);

    let mut run = Run::start(&s, &["rollout", &plan.display().to_string(), "--yes"]);
    run.wait_step("apply", 1);
    s.apps[0].agent.kill();
    let on = assert_on_one_release(&s.apps[0]);
    restart_after(&mut s.apps[0].agent, Duration::from_millis(500));
    assert_eq!(assert_on_one_release(&s.apps[0]), on);
    let leftovers: Vec<PathBuf> = std::fs::read_dir(s.apps[0].root.join("releases"))
        .expect("releases/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(".partial-"))
        })
        .collect();
    assert!(
        leftovers.is_empty(),
        "the restarted agent removes partial releases: {leftovers:?}"
    );

    let done = run.finish();
    eprintln!(
        "apply killed at its start (host on {on}): {}",
        done.describe()
    );
    assert_wave_kept_or_done(&done);
    finish_fleet(&s, &done);
    assert_no_failed_request(&load.stop());
    s.check_capacity().expect("capacity kept");
}

/// SIGKILL web-1's agent while the coordinator waits for web-1's sessions to end
/// (a client holds a connection to it, so the wait lasts).
#[test]
fn an_agent_killed_during_the_drain_wait_is_survived_with_capacity_kept() {
    let mut s = scenario("");
    let held = handover_tests::run::hold_direct_client(&s, "web-1", 60);
    let plan = s
        .write_plan("plan.toml", &s.in_place_plan("v2", 1, 2))
        .expect("plan");
    let load = traffic(&s);

    let mut run = Run::start(&s, &["rollout", &plan.display().to_string(), "--yes"]);
    run.wait_step("wait for sessions", 1);
    std::thread::sleep(Duration::from_millis(500));
    s.apps[0].agent.kill();
    restart_after(&mut s.apps[0].agent, Duration::from_millis(500));
    std::thread::sleep(Duration::from_secs(1));
    drop(held);

    let done = run.finish();
    eprintln!("drain wait killed: {}", done.describe());
    assert_wave_kept_or_done(&done);
    for app in &s.apps {
        assert_on_one_release(app);
    }
    finish_fleet(&s, &done);
    assert_no_failed_request(&load.stop());
    s.check_capacity().expect("capacity kept");
}

/// SIGKILL the LB's agent while it attaches web-1 and waits for a fresh passing
/// check: its slot map is on disk, so the restarted agent knows web-1's slot.
#[test]
fn the_lb_agent_killed_during_attach_is_survived_with_capacity_kept() {
    let mut s = scenario("");
    let plan = s
        .write_plan("plan.toml", &s.in_place_plan("v2", 1, 2))
        .expect("plan");
    let load = traffic(&s);

    let mut run = Run::start(&s, &["rollout", &plan.display().to_string(), "--yes"]);
    run.wait_step("attach", 1);
    std::thread::sleep(Duration::from_millis(100));
    s.lb_agent.kill();
    restart_after(&mut s.lb_agent, Duration::from_millis(500));

    let done = run.finish();
    eprintln!("attach killed: {}", done.describe());
    assert_wave_kept_or_done(&done);
    for app in &s.apps {
        assert_on_one_release(app);
    }
    finish_fleet(&s, &done);
    assert_no_failed_request(&load.stop());
    s.check_capacity().expect("capacity kept");
}

/// HAProxy reloaded (`-sf`, the server-state-file carries slot addresses and
/// admin states) twice during a rollout: while wave 1 drains, and while wave 2
/// attaches. The rollout completes, capacity holds and no request fails.
#[test]
fn haproxy_reloaded_mid_rollout_loses_no_request_and_no_server() {
    let mut s = scenario("");
    let plan = s
        .write_plan("plan.toml", &s.in_place_plan("v2", 1, 2))
        .expect("plan");
    let load = traffic(&s);

    let mut run = Run::start(&s, &["rollout", &plan.display().to_string(), "--yes"]);
    run.wait_step("wait for sessions", 1);
    s.haproxy.reload().expect("reload while wave 1 drains");
    run.wait_step("attach", 2);
    s.haproxy.reload().expect("reload while wave 2 attaches");

    let done = run.finish();
    let report = load.stop();
    eprintln!(
        "reloads: {}\ntraffic: {} ok, {} failed {:?}",
        done.describe(),
        report.ok,
        report.failed,
        report.failures
    );
    assert_eq!(done.state(), "succeeded", "{}", done.describe());
    assert_settled(&s, "v2");
    assert_no_failed_request(&report);
    s.check_capacity().expect("capacity kept");
}

/// A tmpfs of `size` mounted at `dir` for the test (unmounted on drop).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).expect("mount point");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(out.status.success(), "mount tmpfs: {}", output_text(&out));
        Tmpfs {
            dir: dir.to_owned(),
        }
    }

    /// Fills the filesystem to the last byte; returns the filler to free later.
    fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let filler = self.dir.join("filler");
        let mut f = std::fs::File::create(&filler).expect("filler");
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.write_all(&[0u8]);
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

/// The coordinator's state_dir (a small tmpfs) fills up while wave 1 drains: the
/// rollout stops with an error that names the journal and the lack of space, the
/// journal stays readable (nothing half-written), capacity holds, and once space
/// is freed `handover resume` finishes the rollout.
#[test]
fn a_full_state_dir_stops_the_rollout_cleanly_and_resume_finishes_it() {
    let s = scenario("");
    let state_dir = s.dir().join("ops").join("state");
    // Whatever the scenario's setup journaled moves onto the tmpfs.
    let saved = s.dir().join("ops").join("state.before");
    if state_dir.exists() {
        std::fs::rename(&state_dir, &saved).expect("move state_dir aside");
    }
    let fs = Tmpfs::mount(&state_dir, "8m");
    if saved.exists() {
        for entry in std::fs::read_dir(&saved).expect("saved state") {
            let entry = entry.expect("entry");
            std::fs::copy(entry.path(), state_dir.join(entry.file_name())).expect("copy state");
        }
    }
    let held = handover_tests::run::hold_direct_client(&s, "web-1", 60);
    let plan = s
        .write_plan("plan.toml", &s.in_place_plan("v2", 1, 2))
        .expect("plan");
    let load = traffic(&s);

    let mut run = Run::start(&s, &["rollout", &plan.display().to_string(), "--yes"]);
    run.wait_step("wait for sessions", 1);
    let filler = fs.fill();
    drop(held);
    let done = run.finish();
    eprintln!("state_dir full: {}", done.describe());
    assert_ne!(
        done.code,
        Some(0),
        "a rollout that cannot journal must not go on"
    );
    // The error names the cause, the file and the way on (not a bare "I/O error").
    let said = format!("{}{:?}", done.stderr, done.finished);
    for expected in ["No space left", "journal.redb", "handover resume"] {
        assert!(
            said.contains(expected),
            "the error names {expected:?}: {said}"
        );
    }
    for app in &s.apps {
        assert_on_one_release(app);
    }

    // Nothing half-written: with space again, the journal reads and resumes.
    std::fs::remove_file(&filler).expect("free the space");
    let out = s.coordinator.run(&["history", "--json"]);
    assert!(out.status.success(), "history: {}", output_text(&out));
    finish_fleet(&s, &done);
    assert_no_failed_request(&load.stop());
    s.check_capacity().expect("capacity kept");
    drop(fs);
}

/// The monitor every scenario runs can fail a test: two of three hosts drained
/// leave one UP, below the default min_healthy of 2, and `check_capacity` names
/// the samples. A test opts out with a reason (this one, after the fact).
#[test]
fn the_scenario_monitor_sees_capacity_below_min_healthy() {
    let mut s = scenario("");
    for name in ["web-1", "web-2"] {
        let out = s.coordinator.run(&["drain", name]);
        assert!(out.status.success(), "drain {name}: {}", output_text(&out));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.check_capacity().is_ok() {
        assert!(
            Instant::now() < deadline,
            "two drained hosts never showed as a violation"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let err = s
        .stop_checking_capacity("this test breaks capacity on purpose")
        .expect_err("violations seen");
    assert!(
        err.to_string()
            .contains("fewer UP servers than min_healthy"),
        "{err:#}"
    );
    assert!(s.check_capacity().is_err(), "no longer checked: says so");
}

/// Where the coordinator is SIGKILLed, read from its own event stream. The engine
/// prints each event right after the journal record it reports, so an event seen
/// is a record on disk: `step-started` N follows step N's start record (its action
/// then runs), `step-done` N follows its end record (step N+1 not yet started).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillAt {
    /// The rollout is journaled, no step has started (the `phase` event).
    BeforeFirstStep,
    /// Step N (1-based) is journaled as started and its action runs.
    During(usize),
    /// Step N is journaled as done; the next has not started.
    After(usize),
}

impl KillAt {
    /// Every kill point of a plan of `steps` steps: before the first, and during
    /// and after each.
    fn all(steps: usize) -> Vec<KillAt> {
        std::iter::once(KillAt::BeforeFirstStep)
            .chain((1..=steps).flat_map(|n| [KillAt::During(n), KillAt::After(n)]))
            .collect()
    }

    fn is_reached_by(self, e: &serde_json::Value) -> bool {
        match self {
            KillAt::BeforeFirstStep => e["event"] == "phase",
            KillAt::During(n) => e["event"] == "step-started" && e["number"] == n,
            KillAt::After(n) => e["event"] == "step-done" && e["number"] == n,
        }
    }

    /// Steps the journal holds as done once the event was printed: at least these
    /// (a step may finish before the SIGKILL lands, never fewer).
    fn done_at_least(self) -> usize {
        match self {
            KillAt::BeforeFirstStep => 0,
            KillAt::During(n) => n - 1,
            KillAt::After(n) => n,
        }
    }
}

/// One step of `handover plan --offline --json`.
#[derive(Debug, serde::Deserialize)]
struct PlannedStep {
    number: usize,
    wave: usize,
    title: String,
}

/// The engine's own step list for `plan`: what the kill points are made from.
fn planned_steps(s: &Scenario, plan: &Path) -> Vec<PlannedStep> {
    let plan = plan.display().to_string();
    let out = s.coordinator.run(&["plan", &plan, "--offline", "--json"]);
    assert!(out.status.success(), "plan --json: {}", output_text(&out));
    let steps: Vec<PlannedStep> =
        serde_json::from_slice(&out.stdout).expect("plan --json prints a list of steps");
    let numbers: Vec<usize> = steps.iter().map(|s| s.number).collect();
    assert_eq!(
        numbers,
        (1..=steps.len()).collect::<Vec<_>>(),
        "steps numbered from 1"
    );
    assert!(steps.len() > 2, "a two-wave plan has steps: {steps:?}");
    steps
}

/// Tags a revision no host has had yet.
fn tag_revision(s: &Scenario, tag: &str) {
    s.tag_revision(tag).expect("tag a revision");
}

/// What a SIGKILL interrupted.
struct KilledRollout {
    /// The rollout's id (its `phase` event).
    rollout: String,
    /// The process still ran when the signal was sent.
    landed: bool,
}

/// Every host on `tag`'s release, exactly one new release each (the one `current`
/// names) since `before`, health files back, all UP, capacity kept so far.
fn assert_on_new_release(
    s: &Scenario,
    tag: &str,
    before: &[std::collections::BTreeSet<String>],
    when: &str,
) {
    for (app, before) in s.apps.iter().zip(before) {
        let (current, version) = assert_complete_release(app);
        assert_eq!(version, tag, "{when}: {}", app.name);
        let new: Vec<_> = releases_of(app).difference(before).cloned().collect();
        assert_eq!(
            new,
            vec![current],
            "{when}: {} got exactly one new release, the current one",
            app.name
        );
        assert!(
            app.health_file_present(),
            "{when}: {} left drained",
            app.name
        );
    }
    assert_eq!(s.up_count(), s.apps.len(), "{when}: every app host UP");
    s.check_capacity()
        .unwrap_or_else(|e| panic!("{when}: capacity: {e:#}"));
}

/// SIGKILLs `run` as soon as `at` is seen (checking each step it starts is the
/// planned one).
fn kill_at(run: Run, at: KillAt, steps: &[PlannedStep]) -> KilledRollout {
    kill_in_phase(run, false, at, Some(steps))
}

/// SIGKILLs `run` at `at` in its first phase, or (`undoing`) in the phase it
/// switched to after a failure; checks the steps it starts against `steps` when
/// given.
fn kill_in_phase(
    mut run: Run,
    undoing: bool,
    at: KillAt,
    steps: Option<&[PlannedStep]>,
) -> KilledRollout {
    if undoing {
        let switched = run.wait_for(BOUND, |e| e["event"] == "phase" && !e["reason"].is_null());
        assert!(switched, "no rollback phase: {:#?}", run.seen());
    }
    let found = run.wait_for(BOUND, |e| at.is_reached_by(e));
    assert!(
        found,
        "never reached {at:?}; last events {:#?}",
        run.last_events()
    );
    let Killed { landed, events } = run.kill();
    if let Some(steps) = steps {
        for e in events.iter().filter(|e| e["event"] == "step-started") {
            let planned = e["number"]
                .as_u64()
                .and_then(|n| steps.get(usize::try_from(n).ok()?.checked_sub(1)?));
            let planned = planned.unwrap_or_else(|| panic!("an unplanned step {e}"));
            assert_eq!(e["title"], planned.title.as_str(), "{e}");
            assert_eq!(e["wave"], planned.wave, "{e}");
        }
    }
    let rollout = handover_tests::run::rollout_id(&events)
        .unwrap_or_else(|| panic!("{at:?}: no phase event naming the rollout"));
    KilledRollout { rollout, landed }
}

/// A fleet of two hosts, batch 1, min_healthy 1, clients running throughout: the
/// coordinator is SIGKILLed at every kill point of the engine's own step list
/// (before the first step, then during and after each), each time rolling to a
/// revision no host has had, and a plain `handover resume` finishes it. Every run
/// ends with both hosts on the new release (exactly one new release each, the
/// one `current` names), health files back, both UP; no request failed; UP never
/// fell below min_healthy (the scenario's monitor, every 100 ms).
#[test]
fn the_coordinator_killed_at_every_step_boundary_is_resumed_to_the_new_release() {
    let s = Scenario::start(ScenarioOptions {
        apps: 2,
        capacity: Capacity::MinHealthy(1),
        ..ScenarioOptions::default()
    })
    .expect("fleet starts");
    let load = Traffic::start(
        s.frontend(),
        TrafficOptions {
            clients: 2,
            pause: Duration::from_millis(25),
            max_duration: Duration::from_secs(1200),
            ..TrafficOptions::default()
        },
    )
    .expect("traffic starts");
    let first = s
        .write_plan("plan-v2.toml", &s.in_place_plan("v2", 1, 1))
        .expect("plan");
    let steps = planned_steps(&s, &first);
    let points = KillAt::all(steps.len());
    eprintln!("{} steps, {} kill points:", steps.len(), points.len());
    for step in &steps {
        eprintln!("  {:>2}. wave {}: {}", step.number, step.wave, step.title);
    }

    for (i, at) in points.iter().enumerate() {
        let tag = format!("r{}", i + 1);
        tag_revision(&s, &tag);
        let plan = s
            .write_plan(&format!("plan-{tag}.toml"), &s.in_place_plan(&tag, 1, 1))
            .expect("plan");
        // The same steps, titled with this revision.
        let this = planned_steps(&s, &plan);
        assert_eq!(this.len(), steps.len(), "{tag}: {this:?}");
        let before: Vec<_> = s.apps.iter().map(releases_of).collect();
        let started = Instant::now();

        let run = Run::start(&s, &["rollout", &plan.display().to_string(), "--yes"]);
        let killed = kill_at(run, *at, &this);
        let resumed = Run::start(&s, &["resume"]).finish();
        let phase = resumed
            .events
            .iter()
            .find(|e| e["event"] == "phase")
            .cloned();
        eprintln!(
            "{tag} killed at {at:?} (landed: {}); resume: {} after {:?}, journal had {:?} of {} done",
            killed.landed,
            resumed.state(),
            started.elapsed(),
            phase.as_ref().map(|p| &p["done"]),
            steps.len()
        );
        if *at == KillAt::After(steps.len()) && resumed.code == Some(2) {
            // The last step's end record is followed at once by the rollout's own
            // `succeeded` record, with no event between: a SIGKILL after it finds
            // the rollout over, and resume says there is nothing to do.
            assert!(
                resumed.stderr.contains("nothing to resume"),
                "{at:?}: {}",
                resumed.describe()
            );
            assert_eq!(journaled_state(&s, &killed.rollout), "succeeded", "{at:?}");
        } else {
            assert!(
                killed.landed,
                "{at:?}: the rollout ended before the SIGKILL"
            );
            assert_eq!(
                resumed.state(),
                "succeeded",
                "{at:?}: {}",
                resumed.describe()
            );
            let phase = phase.unwrap_or_else(|| panic!("{at:?}: resume ran no phase"));
            assert_eq!(phase["rollout"], killed.rollout.as_str(), "{at:?}: {phase}");
            assert_eq!(phase["steps"], steps.len(), "{at:?}: {phase}");
            let done = phase["done"].as_u64().unwrap_or(0);
            assert!(
                done >= u64::try_from(at.done_at_least()).unwrap_or(u64::MAX),
                "{at:?}: the journal lost a record the events reported: {phase}"
            );
            // Resume carries on from the first step not done: the interrupted one.
            let first = resumed.events.iter().find(|e| e["event"] == "step-started");
            if done < u64::try_from(steps.len()).unwrap_or(u64::MAX) {
                let first = first.unwrap_or_else(|| panic!("{at:?}: resume ran no step"));
                assert_eq!(first["number"], done + 1, "{at:?}: {first}");
            } else {
                assert!(first.is_none(), "{at:?}: a done step ran again: {first:?}");
            }
        }

        assert_on_new_release(&s, &tag, &before, &format!("{at:?}"));
    }
    let report = load.stop();
    let capacity = s.check_capacity().expect("capacity kept");
    eprintln!(
        "traffic: {} ok, {} failed; UP at least {:?} in {} samples",
        report.ok, report.failed, capacity.min_up, capacity.samples
    );
    assert_no_failed_request(&report);
}

/// The coordinator that resumes is killed too: one rollout, SIGKILLed during its
/// first step, then each `handover resume` SIGKILLed during the next step, up to
/// the last; then the same with each process killed right after its step's end
/// record. A final plain resume finishes each rollout, with the same checks as
/// above (one new release per host, all UP, no failed request, capacity kept).
#[test]
fn a_coordinator_killed_at_every_step_of_one_rollout_in_turn_is_resumed_to_the_end() {
    let s = Scenario::start(ScenarioOptions {
        apps: 2,
        capacity: Capacity::MinHealthy(1),
        ..ScenarioOptions::default()
    })
    .expect("fleet starts");
    let load = traffic(&s);
    let chains = [
        ("during", KillAt::During as fn(usize) -> KillAt),
        ("after", KillAt::After),
    ];
    for (tag, kill_at_step) in chains {
        tag_revision(&s, tag);
        let plan = s
            .write_plan(&format!("plan-{tag}.toml"), &s.in_place_plan(tag, 1, 1))
            .expect("plan");
        let steps = planned_steps(&s, &plan);
        let before: Vec<_> = s.apps.iter().map(releases_of).collect();

        let run = Run::start(&s, &["rollout", &plan.display().to_string(), "--yes"]);
        let first = kill_at(run, kill_at_step(1), &steps);
        assert!(first.landed, "{tag}: the rollout ended before the SIGKILL");
        for n in 2..=steps.len() {
            let killed = kill_at(Run::start(&s, &["resume"]), kill_at_step(n), &steps);
            assert_eq!(killed.rollout, first.rollout, "{tag}: resume took another");
            assert!(
                killed.landed || n == steps.len(),
                "{tag}: the resume ended before the SIGKILL at {:?}",
                kill_at_step(n)
            );
        }
        let last = Run::start(&s, &["resume"]).finish();
        eprintln!("{tag}: the last resume: {}", last.describe());
        if last.code == Some(2) {
            // Killed after the last step: the rollout may already be recorded done.
            assert!(
                last.stderr.contains("nothing to resume"),
                "{}",
                last.describe()
            );
        } else {
            assert_eq!(last.state(), "succeeded", "{tag}: {}", last.describe());
        }
        assert_eq!(journaled_state(&s, &first.rollout), "succeeded", "{tag}");
        assert_on_new_release(&s, tag, &before, tag);
    }
    let report = load.stop();
    eprintln!("traffic: {} ok, {} failed", report.ok, report.failed);
    assert_no_failed_request(&report);
    s.check_capacity().expect("capacity kept");
}

/// A revision the agents' `verify` refuses fails wave 1's apply and the engine
/// puts the wave back (its rollback phase). The coordinator is SIGKILLed during
/// and after each step of that phase (its steps counted from the engine's own
/// `phase` event of an uncut run), and a plain `handover resume` finishes the
/// rollback: every host on the release it had, health files back, all UP, no
/// request failed, capacity kept.
#[test]
fn the_coordinator_killed_at_every_step_of_a_rollback_is_resumed_to_the_old_release() {
    let s = Scenario::start(ScenarioOptions {
        apps: 2,
        capacity: Capacity::MinHealthy(1),
        ..ScenarioOptions::default()
    })
    .expect("fleet starts");
    let load = traffic(&s);
    let broken = |n: usize| {
        let tag = format!("broken-{n}");
        tag_revision(&s, &tag);
        s.write_plan(&format!("plan-{tag}.toml"), &s.in_place_plan(&tag, 1, 1))
            .expect("plan")
            .display()
            .to_string()
    };
    let currents = || -> Vec<String> {
        s.apps
            .iter()
            .map(|a| assert_complete_release(a).0)
            .collect()
    };
    let before = currents();

    // An uncut run: how many steps the rollback phase has, in the engine's words.
    let plan = broken(0);
    let uncut = Run::start(&s, &["rollout", &plan, "--yes"]).finish();
    assert_eq!(uncut.state(), "rolled-back", "{}", uncut.describe());
    let undo_steps = uncut
        .events
        .iter()
        .find(|e| e["event"] == "phase" && !e["reason"].is_null())
        .and_then(|e| e["steps"].as_u64())
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or_else(|| panic!("no rollback phase: {}", uncut.describe()));
    assert!(undo_steps > 0, "an empty rollback phase");
    let switch = uncut
        .events
        .iter()
        .position(|e| e["event"] == "phase" && !e["reason"].is_null())
        .unwrap_or(0);
    eprintln!("the rollback phase has {undo_steps} steps:");
    for e in uncut.events[switch..]
        .iter()
        .filter(|e| e["event"] == "step-started")
    {
        eprintln!("  {}. {}", e["number"], e["title"]);
    }

    let points = (1..=undo_steps).flat_map(|n| [KillAt::During(n), KillAt::After(n)]);
    for (i, at) in points.enumerate() {
        let plan = broken(i + 1);
        let killed = kill_in_phase(Run::start(&s, &["rollout", &plan, "--yes"]), true, at, None);
        let resumed = Run::start(&s, &["resume"]).finish();
        eprintln!(
            "rollback killed at {at:?} (landed: {}); resume: {}",
            killed.landed,
            resumed.state()
        );
        if at == KillAt::After(undo_steps) && resumed.code == Some(2) {
            // As in the forward phase: the last step's record is followed at once
            // by the rollout's own.
            assert!(
                resumed.stderr.contains("nothing to resume"),
                "{}",
                resumed.describe()
            );
        } else {
            assert!(
                killed.landed,
                "{at:?}: the rollout ended before the SIGKILL"
            );
            assert_eq!(
                resumed.state(),
                "rolled-back",
                "{at:?}: {}",
                resumed.describe()
            );
            let phase = resumed.events.iter().find(|e| e["event"] == "phase");
            let phase = phase.unwrap_or_else(|| panic!("{at:?}: resume ran no phase"));
            assert!(
                phase["phase"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("rollback"),
                "{at:?}: resume carries on with the rollback: {phase}"
            );
            assert_eq!(phase["steps"], undo_steps, "{at:?}: {phase}");
        }
        assert_eq!(
            journaled_state(&s, &killed.rollout),
            "rolled-back",
            "{at:?}"
        );
        assert_eq!(currents(), before, "{at:?}: every host back on its release");
        for app in &s.apps {
            assert!(
                app.health_file_present(),
                "{at:?}: {} left drained",
                app.name
            );
        }
        assert_eq!(s.up_count(), s.apps.len(), "{at:?}: every app host UP");
        s.check_capacity()
            .unwrap_or_else(|e| panic!("{at:?}: capacity: {e:#}"));
    }
    let report = load.stop();
    eprintln!("traffic: {} ok, {} failed", report.ok, report.failed);
    assert_no_failed_request(&report);
    s.check_capacity().expect("capacity kept");
}
