//! Agent footprint (issue 14): a real app agent and a real LB agent (with its
//! HAProxy), idle: resident memory (`VmRSS`) and CPU time over a window; then
//! again after a few rollouts through them. Goal: ≤ 8 MiB RSS, CPU ≈ 0 idle,
//! package ≤ 10 MB.
//!
//! Not a pass/fail test: it prints the machine and the figures. Run:
//!
//! ```sh
//! cargo build -p handover -p handover-agent
//! cargo bench -p handover-tests --bench agent_footprint --profile dev
//! # FOOTPRINT_SECS=60 (the window) and FOOTPRINT_ROLLOUTS=3 are the defaults
//! ```
//!
//! The agents are the binaries of the profile the bench runs in: the dev
//! profile's are unoptimised and larger; build and run with `--release` for the
//! figures a package gives.

use std::path::Path;
use std::time::Duration;

use handover_tests::agents::output_text;
use handover_tests::scenario::{Capacity, Scenario, ScenarioOptions};
use handover_tests::speed::{Footprint, pid_of_config, watch};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn line(what: &str, f: Option<Footprint>) -> String {
    match f {
        Some(f) => format!(
            "{what:<28} RSS {:>6.2} MiB   CPU {:>6.1} ms over {:.0}s ({:.2} ms/min)",
            f.rss_kib as f64 / 1024.0,
            f.cpu.as_secs_f64() * 1000.0,
            f.window.as_secs_f64(),
            f.cpu.as_secs_f64() * 1000.0 * 60.0 / f.window.as_secs_f64().max(0.001)
        ),
        None => format!("{what:<28} (process not found)"),
    }
}

/// Both agents measured at once over `window` (two threads).
fn measure(app: u32, lb: u32, window: Duration) -> (Option<Footprint>, Option<Footprint>) {
    let a = std::thread::spawn(move || watch(app, window));
    let l = watch(lb, window);
    (a.join().ok().flatten(), l)
}

fn package_size(root: &Path) -> String {
    let dir = root.join("target/packages");
    let found = std::fs::read_dir(&dir).ok().and_then(|d| {
        d.filter_map(Result::ok).find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("handover-agent_")
        })
    });
    match found.and_then(|e| Some((e.file_name(), e.metadata().ok()?.len()))) {
        Some((name, len)) => format!(
            "package: {} is {:.2} MB (goal ≤ 10 MB)",
            name.to_string_lossy(),
            len as f64 / 1e6
        ),
        None => format!(
            "package: no handover-agent_*.deb in {}: `scripts/package.sh --deb-only` builds it (release profile), then run this again",
            dir.display()
        ),
    }
}

fn main() -> anyhow::Result<()> {
    let window = Duration::from_secs(env_or("FOOTPRINT_SECS", 60));
    let rollouts = env_or("FOOTPRINT_ROLLOUTS", 3);
    println!("{}", handover_tests::fanout::machine());
    let s = Scenario::start(ScenarioOptions {
        apps: 2,
        capacity: Capacity::MinHealthy(1),
        ..ScenarioOptions::default()
    })?;
    let app = pid_of_config(&s.apps[0].agent.config)
        .ok_or_else(|| anyhow::anyhow!("web-1's agent process not found"))?;
    let lb = pid_of_config(&s.lb_agent.config)
        .ok_or_else(|| anyhow::anyhow!("lb-1's agent process not found"))?;
    // Let start-up settle (first deploy, attach) before the idle window.
    std::thread::sleep(Duration::from_secs(2));
    let (a, l) = measure(app, lb, window);
    println!("{}", line("app agent, idle", a));
    println!("{}", line("LB agent, idle", l));
    for i in 0..rollouts {
        let tag = format!("fp{i}");
        s.tag_revision(&tag)?;
        let plan = s.write_plan(&format!("plan-{tag}.toml"), &s.in_place_plan(&tag, 1, 1))?;
        let out = s
            .coordinator
            .run(&["rollout", &plan.display().to_string(), "--yes"]);
        anyhow::ensure!(out.status.success(), "rollout {tag}: {}", output_text(&out));
    }
    std::thread::sleep(Duration::from_secs(2));
    let (a, l) = measure(app, lb, window);
    println!(
        "{}",
        line(&format!("app agent, after {rollouts} rollouts"), a)
    );
    println!(
        "{}",
        line(&format!("LB agent, after {rollouts} rollouts"), l)
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    println!("{}", package_size(&root));
    Ok(())
}
