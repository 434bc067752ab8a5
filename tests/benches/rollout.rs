//! Rollout overhead (issue 14): Handover's own time per wave of an in-place
//! rollout on a loopback fleet of 10 Apache hosts behind real HAProxy, read from
//! the timing summary (`handover show ID --timings`) and split as it splits:
//! waits the plan asked for (quiet period, health rise), HAProxy's fresh checks
//! after attach (the LB's rise × inter), sessions ending, and Handover's own
//! time. Goal: own ≤ 0.15 s per wave.
//!
//! Not a pass/fail test: it prints the machine and the medians. Run (the
//! binaries must be built in the same profile as the bench):
//!
//! ```sh
//! cargo build -p handover -p handover-agent
//! cargo bench -p handover-tests --bench rollout --profile dev
//! # ROLLOUT_APPS=10 ROLLOUT_BATCH=1 ROLLOUT_RUNS=3 are the defaults
//! ```

use std::time::{Duration, Instant};

use handover_tests::agents::output_text;
use handover_tests::scenario::{Capacity, Scenario, ScenarioOptions};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One block of the summary: `NAME: T (plan P, lb checks L, sessions S, own O)`.
#[derive(Debug, Clone, Copy, Default)]
struct Block {
    took: f64,
    plan: f64,
    lb: f64,
    sessions: f64,
    own: f64,
}

/// Parses a block line's figures ("2.40s (plan 2.00s, lb checks 0.40s, ...)").
fn block(line: &str) -> Option<Block> {
    let (_, rest) = line.split_once(": ")?;
    let secs = |s: &str| {
        s.trim()
            .trim_end_matches([')', ','])
            .trim_end_matches('s')
            .parse::<f64>()
            .ok()
    };
    let (took, rest) = rest.split_once(" (")?;
    let mut b = Block {
        took: secs(took)?,
        ..Block::default()
    };
    for part in rest.split(", ") {
        let (name, value) = part.rsplit_once(' ')?;
        let value = secs(value)?;
        match name {
            "plan" => b.plan = value,
            "lb checks" => b.lb = value,
            "sessions" => b.sessions = value,
            "own" => b.own = value,
            _ => {}
        }
    }
    Some(b)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One rollout to a new tag; returns its wave blocks, its staging block and
/// how long the `handover rollout` process took.
fn one_run(
    s: &Scenario,
    tag: &str,
    batch: usize,
    min: usize,
) -> anyhow::Result<(Vec<Block>, Option<Block>, Duration)> {
    s.tag_revision(tag)?;
    let plan = s.write_plan(
        &format!("plan-{tag}.toml"),
        &s.in_place_plan(tag, batch, min),
    )?;
    let started = Instant::now();
    let out = s
        .coordinator
        .run(&["rollout", &plan.display().to_string(), "--yes"]);
    let took = started.elapsed();
    anyhow::ensure!(
        out.status.success(),
        "rollout {tag} failed: {}",
        output_text(&out)
    );
    let history = s.coordinator.run(&["history", "--json"]);
    let history: serde_json::Value = serde_json::from_slice(&history.stdout)?;
    // Oldest first: this run's rollout is the last.
    let id = history
        .as_array()
        .and_then(|all| all.last())
        .and_then(|r| r["id"].as_str())
        .ok_or_else(|| anyhow::anyhow!("no rollout in history"))?;
    let shown = s.coordinator.run(&["show", id, "--timings"]);
    anyhow::ensure!(
        shown.status.success(),
        "show --timings: {}",
        output_text(&shown)
    );
    let text = String::from_utf8_lossy(&shown.stdout).to_string();
    let waves: Vec<Block> = text
        .lines()
        .filter(|l| l.starts_with("wave "))
        .filter_map(block)
        .collect();
    let staging = text
        .lines()
        .find(|l| l.starts_with("staging"))
        .and_then(block);
    if std::env::var_os("ROLLOUT_VERBOSE").is_some() {
        println!("{text}");
    }
    Ok((waves, staging, took))
}

fn main() -> anyhow::Result<()> {
    let apps = env_or("ROLLOUT_APPS", 10);
    let batch = env_or("ROLLOUT_BATCH", 1);
    let runs = env_or("ROLLOUT_RUNS", 3);
    let min = apps.saturating_sub(batch).max(1);
    println!("{}", handover_tests::fanout::machine());
    let s = Scenario::start(ScenarioOptions {
        apps: u8::try_from(apps)?,
        capacity: Capacity::MinHealthy(min),
        ..ScenarioOptions::default()
    })?;
    println!(
        "fleet: {apps} Apache hosts behind HAProxy (loopback), in-place batch {batch}, min_healthy {min}, quiet 500ms, health rise 2 every 200ms; {runs} runs"
    );
    let mut all = Vec::new();
    let mut stagings = Vec::new();
    let mut wall = Vec::new();
    for run in 0..runs {
        let (waves, staging, took) = one_run(&s, &format!("bench{run}"), batch, min)?;
        let own: Vec<f64> = waves.iter().map(|b| b.own).collect();
        println!(
            "run {}: {:.2}s, {} waves, own per wave median {:.3}s (min {:.3}s, max {:.3}s), staging {:.2}s",
            run + 1,
            took.as_secs_f64(),
            waves.len(),
            median(own.clone()),
            own.iter().copied().fold(f64::INFINITY, f64::min),
            own.iter().copied().fold(0.0, f64::max),
            staging.map_or(0.0, |b| b.took)
        );
        stagings.push(staging.map_or(0.0, |b| b.took));
        wall.push(took.as_secs_f64());
        all.extend(waves);
    }
    let m = |f: fn(&Block) -> f64| median(all.iter().map(f).collect());
    println!(
        "per wave over {} waves (median): took {:.3}s = plan {:.3}s + lb checks {:.3}s + sessions {:.3}s + own {:.3}s (goal: own ≤ 0.150s)",
        all.len(),
        m(|b| b.took),
        m(|b| b.plan),
        m(|b| b.lb),
        m(|b| b.sessions),
        m(|b| b.own)
    );
    println!(
        "staging before wave 1 (median): {:.2}s; whole rollout (median): {:.2}s",
        median(stagings),
        median(wall)
    );
    Ok(())
}
