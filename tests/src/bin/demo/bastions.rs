//! The two-bastion demo (`--etcd`, issue 17): the surge fleet of the quick start,
//! a real etcd on loopback, and two coordinator configs ("bastions" A and B, each
//! with its own state_dir) whose `[state]` points at it. A starts the rollout and
//! is SIGKILLed mid-way, as if the bastion died; B runs `handover resume` and
//! finishes it. Then A and B start the next rollout at the same moment: one runs,
//! the other is refused, naming the holder. Clients and pinned sessions run
//! throughout; the demo ends with the quick start's summary line.

use std::process::{Output, Stdio};
use std::time::Duration;

use handover_tests::agents::Coordinator;
use handover_tests::etcd::Etcd;
use handover_tests::run::{BOUND, Run};
use handover_tests::surge::{ProviderKind, SurgeFleet, SurgeLoad, SurgeOptions};

use super::surge_demo::what_was_seen;
use super::{interrupted, step};

/// The step after which bastion A is killed: the first new server is deployed.
const KILL_AFTER_STEP: u64 = 6;

/// Runs the demo; `Ok(true)` when it went as described and nobody noticed.
pub fn run() -> anyhow::Result<bool> {
    step(
        "starting the quick start's fleet (web-1..3 in HAProxy, web-4..6 standby, db-1, lb-1) \
         and an etcd on loopback",
    );
    let fleet = SurgeFleet::start(SurgeOptions::default())?;
    let etcd = Etcd::start(&fleet.dir().join("etcd"))?;
    let state = etcd.state_section("/handover/demo");
    let a = fleet
        .coordinator
        .another_bastion(&fleet.dir().join("bastion-a"), Some(&state))?;
    let b = fleet
        .coordinator
        .another_bastion(&fleet.dir().join("bastion-b"), Some(&state))?;
    println!("    work dir:   {}", fleet.dir().display());
    println!("    bastion A:  {}", a.config.display());
    println!("    bastion B:  {}", b.config.display());
    println!("    both end with:{}", state.replace('\n', "\n      "));
    interrupted()?;

    let plan = fleet.write_plan(
        "plan.toml",
        &fleet.surge_plan(ProviderKind::Standby, "v2", ""),
    )?;
    let plan = plan.display().to_string();
    step("clients start: 3 keep-alive clients and 3 sessions pinned to the old servers");
    let load = SurgeLoad::start(&fleet)?;

    let killed = rollout_on_a_until_it_dies(&a, &plan)?;
    interrupted()?;
    step("bastion B: handover history (A's journal is in etcd, not on A's disk)");
    print_output(&b.run(&["history"]));
    step("bastion B: handover resume");
    let resumed = b.command(&["resume"]).stdin(Stdio::null()).status()?;
    interrupted()?;

    let (ran, refusal) = both_start_the_next_rollout(&fleet, &a, &b)?;
    std::thread::sleep(Duration::from_millis(500));
    let (report, sessions) = load.stop();
    let capacity = fleet.check_capacity();
    step("what the clients, the sessions and HAProxy saw");
    let seen = what_was_seen(&fleet, &report, &sessions, &capacity)?;
    let migrations = fleet.migrate_runs()?;
    println!("    db-1: migrate ran {migrations} time(s), once for each of the 2 rollouts");
    step("bastion A: handover history");
    print_output(&a.run(&["history"]));

    println!("\n{}", seen.summary());
    let good = killed
        && resumed.success()
        && ran == 1
        && refusal
        && migrations == 2
        && seen.nobody_noticed();
    if good {
        step(
            "done: B finished what A started, one of two simultaneous rollouts ran, \
             no request failed, no session was cut",
        );
    } else {
        step("the demo did not go as it should: see above");
    }
    Ok(good)
}

/// `handover rollout` on A, its steps printed as they end, SIGKILLed once step
/// [`KILL_AFTER_STEP`] is done. Whether the kill landed while A still ran.
fn rollout_on_a_until_it_dies(a: &Coordinator, plan: &str) -> anyhow::Result<bool> {
    step(&format!(
        "bastion A: handover rollout plan.toml --yes (killed with SIGKILL after step {KILL_AFTER_STEP})"
    ));
    let mut run = Run::start_with(a, &["rollout", plan, "--yes"]);
    let reached = run.wait_for(BOUND, |e| {
        if e["event"] == "step-done" {
            println!(
                "    A: step {} done: {}",
                e["number"],
                e["title"].as_str().unwrap_or("")
            );
        }
        e["event"] == "step-done" && e["number"] == KILL_AFTER_STEP
    });
    let pid = run.pid();
    let killed = run.kill();
    println!("    kill -9 {pid}: bastion A is gone");
    Ok(reached && killed.landed)
}

/// A and B start a rollout of the same fleet at the same moment (back to v1,
/// as a new rollout: the old servers are in the standby pool now). Returns how
/// many ran and whether the other's refusal named the holder.
fn both_start_the_next_rollout(
    fleet: &SurgeFleet,
    a: &Coordinator,
    b: &Coordinator,
) -> anyhow::Result<(usize, bool)> {
    let plan = fleet.write_plan(
        "plan-v1.toml",
        &fleet.surge_plan(ProviderKind::Standby, "v1", ""),
    )?;
    let plan = plan.display().to_string();
    step("bastions A and B both run `handover rollout plan-v1.toml --yes` at the same moment");
    let start = |c: &Coordinator| {
        c.command(&["rollout", &plan, "--yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    };
    let (ca, cb) = (start(a)?, start(b)?);
    let outs = [("A", ca.wait_with_output()?), ("B", cb.wait_with_output()?)];
    let mut ran = 0;
    let mut refusal = false;
    for (name, out) in &outs {
        if out.status.success() {
            ran += 1;
            let text = String::from_utf8_lossy(&out.stdout);
            let result = text
                .lines()
                .rfind(|l| l.starts_with("rollout r-"))
                .unwrap_or("(no result line)");
            println!("    {name} ran it: {result}");
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            refusal |= err.contains("held by rollout");
            println!("    {name} was refused: {}", err.trim());
        }
    }
    Ok((ran, refusal))
}

fn print_output(out: &Output) {
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
}
