//! The engine running a surge plan against the scripted fleet, with tokio's
//! paused clock: every decision of the 18 steps and their ways back.

use std::mem::discriminant;

use super::*;
use crate::rollout::fake::{self, Fault, NEW, OLD, Trigger, host};
use crate::rollout::surge::SurgeAction;

const SURGE: &str = "[surge]\nprovider = \"standby\"\nbatch = 2\n[db]\nbackup = \"backup\"\nmigrate = \"migrate\"\ncheck = \"dbcheck\"\n[bake]\nduration = \"10s\"\n[inputs]\nAPP_ENV = \"production\"\n";

use super::bench::Bench;

impl Bench {
    fn surge() -> Self {
        Bench::with_plan(fake::surge_plan(3, SURGE))
    }

    /// What `handover resume --migrated` does: the migration step journaled done.
    fn confirm_migrated(&self) {
        let steps = surge::forward(&self.plan);
        let i = steps
            .iter()
            .position(|s| s.action == Action::Surge(SurgeAction::MigrateDatabase))
            .expect("migrate step");
        let j = self.journal();
        j.step_started(&self.id, Phase::Forward, i, "migrate")
            .expect("journal");
        j.step_ended(
            &self.id,
            Phase::Forward,
            i,
            StepOutcome::Ok,
            BTreeMap::new(),
        )
        .expect("journal");
    }

    fn old() -> Vec<HostName> {
        ["web-1", "web-2", "web-3"].map(host).to_vec()
    }

    fn new_servers() -> Vec<HostName> {
        ["web-4", "web-5", "web-6"].map(host).to_vec()
    }

    /// Old servers serve; new ones are back in the pool (drained, detached).
    fn assert_old_serving_new_gone(&self) {
        let w = self.fake.world();
        for h in Self::old() {
            assert!(
                w.attached.contains(&h) && !w.drained.contains(&h),
                "{h} serves"
            );
            assert_eq!(w.release[&h], OLD, "{h}");
        }
        for h in Self::new_servers() {
            assert!(!w.attached.contains(&h), "{h} detached");
            assert!(w.drained.contains(&h), "{h} drained");
        }
        assert!(w.array_enabled, "the array is enabled again");
        assert!(w.min_up >= 3, "capacity fell to {}", w.min_up);
        assert!(w.cut.is_empty(), "detached while serving: {:?}", w.cut);
    }

    fn assert_handed_over(&self) {
        let w = self.fake.world();
        for h in Self::new_servers() {
            assert!(
                w.attached.contains(&h) && !w.drained.contains(&h),
                "{h} serves"
            );
            assert_eq!(w.release[&h], NEW, "{h}");
        }
        for h in Self::old() {
            assert!(!w.attached.contains(&h), "{h} detached");
            assert!(w.retired.contains(&h), "{h} back in the pool");
        }
        assert!(w.array_enabled);
        assert!(w.min_up >= 3, "capacity fell to {}", w.min_up);
        assert!(w.cut.is_empty(), "detached while serving: {:?}", w.cut);
    }
}

#[tokio::test(start_paused = true)]
async fn a_surge_runs_the_runbook_in_order_and_migrates_once() {
    let bench = Bench::surge();
    let state = bench.run(false).await.expect("ends").expect("runs");
    assert_eq!(state, RolloutState::Succeeded);
    bench.assert_handed_over();
    let w = bench.fake.world();
    assert_eq!((w.backups, w.migrations), (1, 1));
    let order: Vec<&Action> = w.log.iter().map(|(a, _)| a).collect();
    let expected = surge::forward(&bench.plan);
    assert_eq!(
        order,
        expected.iter().map(|s| &s.action).collect::<Vec<_>>()
    );
    assert!(w.builds.values().all(|n| *n == 1), "{:?}", w.builds);
    assert!(
        bench.record().facts.surge.backup.is_some(),
        "artifact journaled"
    );
}

#[tokio::test(start_paused = true)]
async fn resume_after_a_crash_at_any_step_boundary_finishes_and_never_migrates_twice() {
    let total = surge::forward(&fake::surge_plan(3, SURGE)).len();
    for crash in [Fault::CrashBefore, Fault::CrashAfter] {
        for at in 0..total {
            let bench = Bench::surge();
            bench.fake.inject(Trigger::Call(at), crash);
            assert!(bench.run(false).await.is_none(), "crashed at step {at}");
            let mut state = bench.run(true).await.expect("ends").expect("runs");
            if state == RolloutState::Halted {
                // Only the migration halts: it may have run, so it is not run
                // again until the operator says it finished.
                let record = bench.record();
                let error = record.error.unwrap_or_default();
                assert!(
                    error.contains("not run twice") && error.contains("--migrated"),
                    "{error}"
                );
                bench.confirm_migrated();
                state = bench.run(true).await.expect("ends").expect("runs");
            }
            assert_eq!(state, RolloutState::Succeeded, "{crash:?} at step {at}");
            bench.assert_handed_over();
            let w = bench.fake.world();
            assert!(
                w.migrations <= 1,
                "{crash:?} at {at}: migrated {}",
                w.migrations
            );
            assert!(
                w.builds.values().all(|n| *n == 1),
                "{crash:?} at {at}: {:?}",
                w.builds
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_new_server_failing_the_db_check_is_retired_before_any_traffic_moves() {
    let bench = Bench::surge();
    bench.fake.world().db_check_fails.insert(host("web-6"));
    let state = bench.run(false).await.expect("ends").expect("runs");
    assert_eq!(state, RolloutState::Aborted);
    bench.assert_old_serving_new_gone();
    {
        let w = bench.fake.world();
        assert!(
            !w.log
                .iter()
                .any(|(a, _)| *a == Action::Surge(SurgeAction::AttachNewServers)),
            "no traffic moved"
        );
        assert!(w.retired.contains(&host("web-4")), "the whole surge went");
    }
    // Fixed: resume launches again, keeps the migration done.
    bench.fake.world().db_check_fails.clear();
    let state = bench.run(true).await.expect("ends").expect("runs");
    assert_eq!(state, RolloutState::Succeeded);
    let w = bench.fake.world();
    assert_eq!(w.migrations, 1);
}

#[tokio::test(start_paused = true)]
async fn a_failure_once_the_array_is_disabled_enables_it_again() {
    let bench = Bench::surge();
    let at = Trigger::Surge(discriminant(&SurgeAction::AttachNewServers));
    bench.fake.inject(at, Fault::Fail);
    let state = bench.run(false).await.expect("ends").expect("runs");
    assert_eq!(state, RolloutState::RolledBack);
    bench.assert_old_serving_new_gone();
}

#[tokio::test(start_paused = true)]
async fn a_5xx_burst_in_the_bake_puts_the_old_servers_back() {
    let bench = Bench::surge();
    bench.fake.world().burst = true;
    let state = bench.run(false).await.expect("ends").expect("runs");
    assert_eq!(state, RolloutState::RolledBack);
    bench.assert_old_serving_new_gone();
    let w = bench.fake.world();
    assert!(
        !w.log
            .iter()
            .any(|(a, _)| *a == Action::Surge(SurgeAction::TerminateOldServers)),
        "the old servers were kept"
    );
    assert!(w.retired.iter().all(|h| Bench::new_servers().contains(h)));
}

#[tokio::test(start_paused = true)]
async fn a_failure_at_every_step_before_the_handover_leaves_the_old_servers_serving() {
    let steps = surge::forward(&fake::surge_plan(3, SURGE));
    for (i, step) in steps.iter().enumerate() {
        let Action::Surge(a) = &step.action else {
            continue;
        };
        if matches!(
            a,
            SurgeAction::UpdateArray | SurgeAction::EnableArray | SurgeAction::TerminateOldServers
        ) {
            continue;
        }
        let bench = Bench::surge();
        bench.fake.inject(Trigger::Call(i), Fault::Fail);
        let state = bench.run(false).await.expect("ends").expect("runs");
        assert!(
            matches!(state, RolloutState::Aborted | RolloutState::RolledBack),
            "{a:?}: {state}"
        );
        bench.assert_old_serving_new_gone();
    }
}

#[tokio::test(start_paused = true)]
async fn after_step_18_there_is_no_way_back_to_the_old_servers() {
    let bench = Bench::surge();
    let at = Trigger::Surge(discriminant(&SurgeAction::TerminateOldServers));
    bench.fake.inject(at, Fault::Fail);
    let state = bench.run(false).await.expect("ends").expect("runs");
    assert_eq!(
        state,
        RolloutState::Failed,
        "retried by resume, not rolled back"
    );
    let state = bench.run(true).await.expect("ends").expect("runs");
    assert_eq!(state, RolloutState::Succeeded);
    bench.assert_handed_over();
    let steps = surge::forward(&bench.plan);
    let journal = bench.journal();
    let journaled = journal.steps(&bench.id).expect("steps");
    assert!(surge::old_servers_gone(&steps, |i| journal.step_done(
        &journaled,
        Phase::Forward,
        i
    )));
}

/// A command-provider plan whose launched servers enroll with join tokens
/// (`[surge] enroll = true`, `[enroll] ca_dir` in the inventory).
fn enroll_plan() -> Plan {
    let mut inv = String::from(
        "ca = \"a\"\ncert = \"b\"\nkey = \"c\"\nstate_dir = \"d\"\n[enroll]\nca_dir = \"/pki\"\n",
    );
    for i in 1..=3 {
        inv.push_str(&format!(
            "[[hosts]]\nname = \"web-{i}\"\naddress = \"127.0.1.{i}:7443\"\nroles = [\"app\"]\napp = \"127.0.1.{i}:80\"\n"
        ));
    }
    inv.push_str("[[hosts]]\nname = \"lb-1\"\naddress = \"127.0.1.99:7443\"\nroles = [\"lb\"]\n");
    inv.push_str("[[hosts]]\nname = \"db-1\"\naddress = \"127.0.1.98:7443\"\nroles = [\"db\"]\n");
    let config = toml::from_str(&inv).expect("inventory");
    let text = "strategy = \"surge\"\nroles = [\"app\"]\n[revision]\nrepo = \"file:///r.git\"\nref = \"v2\"\n[surge]\nprovider = \"command\"\nenroll = true\nbatch = 2\n[provider]\nlaunch = \"/l\"\nterminate = \"/t\"\narray = \"/a\"\n[db]\nmigrate = \"migrate\"\n";
    Plan::parse(text, &config).expect("plan")
}

#[tokio::test(start_paused = true)]
async fn launched_servers_are_enrolled_right_after_each_launch_and_a_failed_enroll_aborts() {
    let plan = enroll_plan();
    let steps = surge::forward(&plan);
    let actions: Vec<&Action> = steps.iter().map(|s| &s.action).collect();
    for batch in [0, 1] {
        let launch = actions
            .iter()
            .position(|a| **a == Action::Surge(SurgeAction::LaunchNewServers { batch }))
            .expect("launch");
        assert_eq!(
            actions[launch + 1],
            &Action::Surge(SurgeAction::EnrollNewServers { batch }),
            "enroll right after launch {batch}"
        );
        assert_eq!(
            actions[launch + 2],
            &Action::Surge(SurgeAction::RunSystemHooks { batch }),
            "then the agents are waited for"
        );
    }
    let title = steps
        .iter()
        .find(|s| s.action == Action::Surge(SurgeAction::EnrollNewServers { batch: 0 }))
        .expect("enroll step")
        .title(&plan);
    assert!(
        title.starts_with("runbook 3: enroll 2 new server(s) with their join tokens (CA /pki)"),
        "{title}"
    );

    // The second batch's servers never enroll: the way back runs, nothing of
    // the handover happened, and the migration is not undone.
    let bench = Bench::with_plan(plan);
    let at = Trigger::Surge(discriminant(&SurgeAction::EnrollNewServers { batch: 0 }));
    bench.fake.inject(at, Fault::Fail);
    let state = bench.run(false).await.expect("ends").expect("runs");
    assert_eq!(state, RolloutState::Aborted);
    let w = bench.fake.world();
    let order: Vec<Action> = w.log.iter().map(|(a, _)| a.clone()).collect();
    use SurgeAction::*;
    assert_eq!(
        order,
        [
            BackupDatabase,
            MigrateDatabase,
            LaunchNewServers { batch: 0 },
            EnrollNewServers { batch: 0 },
            TerminateNewServers,
            EnableArray,
        ]
        .map(Action::Surge)
    );
    assert_eq!(w.migrations, 1);
}

/// A coordinator killed while enrolling: `resume` runs the enroll step again
/// (it finds enrolled servers serving and enrolls the rest) and never launches
/// that batch again, so no second set of tokens or servers is made.
#[tokio::test(start_paused = true)]
async fn a_crash_while_enrolling_resumes_the_enroll_step_without_launching_again() {
    let bench = Bench::with_plan(enroll_plan());
    let at = Trigger::Surge(discriminant(&SurgeAction::EnrollNewServers { batch: 0 }));
    bench.fake.inject(at, Fault::CrashAfter);
    assert!(bench.run(false).await.is_none(), "crashed");
    let state = bench.run(true).await.expect("ends").expect("runs");
    assert_eq!(state, RolloutState::Succeeded);
    let w = bench.fake.world();
    let count = |a: SurgeAction| {
        w.log
            .iter()
            .filter(|(x, _)| *x == Action::Surge(a.clone()))
            .count()
    };
    assert_eq!(count(SurgeAction::LaunchNewServers { batch: 0 }), 1);
    assert_eq!(count(SurgeAction::EnrollNewServers { batch: 0 }), 2);
    assert_eq!(count(SurgeAction::EnrollNewServers { batch: 1 }), 1);
}
