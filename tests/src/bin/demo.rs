//! The quick-start demo: a local fleet on loopback upgraded from v1 to v2 with
//! `handover rollout` while clients keep sending requests through a real HAProxy.
//!
//! * `--surge`: the runbook itself (issue 12) — three Apache app hosts, three
//!   standby hosts, a db host with sqlite backup / migrate hooks; the standbys get
//!   v2, are attached, the old servers drain (sessions pinned to them by the
//!   persistence cookie are served until they end) and are handed back to the pool.
//!   Ends with `requests: N ok, M failed; sessions cut: K`.
//! * `--in-place`: three app servers upgraded in waves (drain, switch, attach).
//! * `--etcd`: two bastions sharing the journal on a real etcd: the first is
//!   SIGKILLed mid-rollout and the second finishes it; then both start the next
//!   rollout at once and one is refused (issue 17).
//!
//! At the end it prints what the clients saw and what HAProxy reported, and exits
//! non-zero if a request failed or a session was cut.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use handover_tests::monitor::UpMonitor;
use handover_tests::scenario::{BACKEND, Scenario, ScenarioOptions};
use handover_tests::traffic::{Traffic, TrafficOptions};

#[path = "demo/bastions.rs"]
mod bastions_demo;
#[path = "demo/surge.rs"]
mod surge_demo;

/// Which runbook runs without a flag.
const DEFAULT_SURGE: bool = true;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let demo = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] if DEFAULT_SURGE => surge_demo::run,
        [] => run,
        ["--surge"] => surge_demo::run,
        ["--in-place"] => run,
        ["--etcd"] => bastions_demo::run,
        _ => {
            eprintln!("usage: handover-demo [--surge | --in-place | --etcd]");
            return ExitCode::from(2);
        }
    };
    stop_cleanly_on_ctrl_c();
    let result = demo();
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("demo: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Set by Ctrl-C: the demo then stops its fleet instead of dying with it running.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Ctrl-C no longer kills the demo at once (Apache and HAProxy run in their own
/// process groups and would be left running): the coordinator, in the terminal's
/// group, stops; the demo skips what is left and stops everything it started.
fn stop_cleanly_on_ctrl_c() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            while tokio::signal::ctrl_c().await.is_ok() {
                INTERRUPTED.store(true, Ordering::SeqCst);
                eprintln!("\ninterrupted: stopping the fleet (nothing will be left running)");
            }
        });
    });
}

/// Whether Ctrl-C was pressed; the demo checks before each long step.
fn interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        anyhow::bail!("interrupted");
    }
    Ok(())
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn run() -> anyhow::Result<bool> {
    step("starting a fleet on loopback: web-1..web-3 (Apache + agent), lb-1 (HAProxy + agent)");
    let s = Scenario::start(ScenarioOptions::default())?;
    println!("    work dir:  {}", s.dir().display());
    println!("    HAProxy:   http://{}/", s.frontend());
    for app in &s.apps {
        println!(
            "    {}:     Apache on {}, release {}, agent on udp {}",
            app.name,
            app.apache.addr(),
            app.version(),
            app.agent.addr
        );
    }
    println!("    config:    {}", s.coordinator.config.display());

    step("handover status");
    let out = s.coordinator.run(&["status"]);
    print!("{}", String::from_utf8_lossy(&out.stdout));

    let plan_text = s.in_place_plan("v2", 1, 2);
    let plan = s.write_plan("plan.toml", &plan_text)?;
    step(&format!("the rollout plan ({})", plan.display()));
    print!("{plan_text}");
    step("handover plan plan.toml");
    let out = s.coordinator.run(&["plan", &plan.display().to_string()]);
    print!("{}", String::from_utf8_lossy(&out.stdout));

    step("clients start sending requests through HAProxy (3 clients, keep-alive)");
    let monitor = UpMonitor::start(&s.haproxy, &[BACKEND], 2)?;
    let load = Traffic::start(
        s.frontend(),
        TrafficOptions {
            clients: 3,
            pause: Duration::from_millis(20),
            max_duration: Duration::from_secs(300),
            ..TrafficOptions::default()
        },
    )?;
    std::thread::sleep(Duration::from_millis(500));

    interrupted()?;
    step("handover rollout plan.toml --yes");
    let status = s
        .coordinator
        .command(&["rollout", &plan.display().to_string(), "--yes"])
        .status()?;
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    let up = monitor.stop();

    step("what the clients and HAProxy saw");
    println!("    requests ok:      {}", report.ok);
    println!("    requests failed:  {}", report.failed);
    for f in &report.failures {
        println!("      {f}");
    }
    println!(
        "    fewest servers UP in {BACKEND} at any 100 ms sample: {} (min_healthy = 2, {} samples)",
        up.min_up.get(BACKEND).copied().unwrap_or(0),
        up.samples
    );
    for app in &s.apps {
        println!("    {} now runs {}", app.name, app.version());
    }
    step("handover history");
    let out = s.coordinator.run(&["history"]);
    print!("{}", String::from_utf8_lossy(&out.stdout));

    println!("\nrequests: {} ok, {} failed", report.ok, report.failed);
    let ok = status.success()
        && report.failed == 0
        && up.violations.is_empty()
        && s.apps.iter().all(|a| a.version() == "v2");
    if ok {
        step("done: every host on v2, no request failed, capacity never below min_healthy");
    } else {
        step("the demo did not go as it should: see above");
    }
    Ok(ok)
}
