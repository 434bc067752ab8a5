//! Fan-out: what `handover status` does — a status call to every agent — to 10,
//! 100 and 1,000 agents, cold (a new endpoint: every handshake included) and warm
//! (the same connections asked again). Goal on 2 cores (issue 14): 1,000 agents
//! ≤ 1 s cold, ≤ 100 ms warm, 0 false unreachable at any concurrency.
//!
//! The agents are the real agent code over real QUIC + mTLS, each with its own
//! address and certificate, served from one child process (`handover-swarm`) so
//! that their CPU time is counted apart from the coordinator's (this process).
//! Not a pass/fail test: it prints the figures. Run:
//!
//! ```sh
//! cargo build --release -p handover   # to time the `handover status` process too
//! cargo bench -p handover-tests --bench fanout
//! FANOUT_AGENTS=10000 FANOUT_RUNS=1 FANOUT_CONCURRENCY=1000 cargo bench -p handover-tests --bench fanout
//! ```
//!
//! (`--profile dev`, with `cargo build -p handover`, runs the debug build.)
//!
//! `FANOUT_AGENTS` (default `10,100,1000`), `FANOUT_CONCURRENCY` (default
//! `32,all`: the config's default, then every agent at once) and `FANOUT_RUNS`
//! (default 5) choose what runs.

use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use handover::config::{CoordinatorConfig, HostEntry};
use handover::fleet::{Fleet, calls};
use handover_tests::fanout::{Swarm, process_cpu};

/// One fan-out's figures.
#[derive(Debug, Clone, Copy)]
struct Figures {
    wall: Duration,
    /// This process's CPU (the coordinator).
    coordinator: Duration,
    /// The swarm's CPU (every agent).
    agents: Duration,
    unreachable: usize,
}

fn main() -> anyhow::Result<()> {
    let counts = list("FANOUT_AGENTS", "10,100,1000")?;
    let runs: usize = std::env::var("FANOUT_RUNS")
        .unwrap_or_else(|_| "5".into())
        .parse()?;
    let concurrencies = std::env::var("FANOUT_CONCURRENCY").unwrap_or_else(|_| "32,all".into());
    print_machine();
    handover_common::tls::install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new()?;
    println!(
        "{:>6} {:>6} {:>5}  {:>10} {:>12} {:>12} {:>6}  {:>10} {:>12} {:>12} {:>6}  {:>8}",
        "agents",
        "conc",
        "runs",
        "cold",
        "coord/agent",
        "agent/agent",
        "unrch",
        "warm",
        "coord/agent",
        "agent/agent",
        "unrch",
        "close"
    );
    for count in counts {
        let dir = tempfile::tempdir()?;
        let swarm = Swarm::start(dir.path(), count)?;
        let coordinator = swarm
            .files
            .coordinator(&dir.path().join("coordinator"), 32, &[])?;
        let mut config = CoordinatorConfig::load(&coordinator.config)?;
        let hosts: Vec<HostEntry> = config.hosts.iter().cloned().collect();
        for conc in concurrencies.split(',') {
            let conc = if conc == "all" { count } else { conc.parse()? };
            config.concurrency = NonZeroUsize::new(conc.clamp(1, count.max(1)))
                .ok_or_else(|| anyhow::anyhow!("concurrency 0"))?;
            let (mut cold, mut warm, mut close) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..runs {
                let (c, w, cl) = runtime.block_on(one_run(&config, &hosts, &swarm))?;
                cold.push(c);
                warm.push(w);
                close.push(cl);
                // Let the agents forget the closed connections between runs.
                std::thread::sleep(Duration::from_millis(200));
            }
            print_row(count, config.concurrency.get(), &cold, &warm, &close);
        }
        cli_runs(&coordinator.config, count, runs)?;
    }
    Ok(())
}

/// `handover status --json` as a user runs it (a new process each time: cold),
/// at concurrency = every agent; skipped when the binary is not built.
fn cli_runs(config: &std::path::Path, count: usize, runs: usize) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let Some(handover) = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("handover"))
        .filter(|p| p.exists())
    else {
        println!(
            "(handover binary not built in this profile: `cargo build -p handover` to time the command too)"
        );
        return Ok(());
    };
    let text = std::fs::read_to_string(config)?;
    let all = config.with_file_name("handover-all.toml");
    std::fs::write(
        &all,
        text.replacen("concurrency = 32", &format!("concurrency = {count}"), 1),
    )?;
    let (mut walls, mut unreachable) = (Vec::new(), 0);
    for _ in 0..runs {
        let began = Instant::now();
        let out = std::process::Command::new(&handover)
            .arg("--config")
            .arg(&all)
            .args(["status", "--json"])
            .output()?;
        walls.push(began.elapsed());
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let down = json.as_array().map_or(count, |a| {
            a.iter().filter(|h| h["reachable"] != true).count()
        });
        unreachable = unreachable.max(down);
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "{count:>6} {count:>6} {runs:>5}  `handover status` (process, cold): {:.1} ms, {unreachable} unreachable",
        median(walls.into_iter()).as_secs_f64() * 1000.0
    );
    Ok(())
}

/// A cold fan-out (new fleet, so every handshake), a warm one on the same
/// connections, and the close.
async fn one_run(
    config: &CoordinatorConfig,
    hosts: &[HostEntry],
    swarm: &Swarm,
) -> anyhow::Result<(Figures, Figures, Duration)> {
    let cold = measure(swarm, async {
        let fleet = Fleet::new(config)?;
        let unreachable = status_of_all(&fleet, hosts).await;
        anyhow::Ok((fleet, unreachable))
    })
    .await?;
    let (fleet, cold) = cold;
    let (_, warm) = measure(swarm, async {
        anyhow::Ok(((), status_of_all(&fleet, hosts).await))
    })
    .await?;
    let began = Instant::now();
    fleet.close().await;
    Ok((cold, warm, began.elapsed()))
}

async fn status_of_all(fleet: &Fleet, hosts: &[HostEntry]) -> usize {
    let results = fleet.ask_each(hosts, |_| calls::status()).await;
    let failed: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
    if let Some((host, Err(e))) = failed.first() {
        eprintln!("{} unreachable, e.g. {}: {e}", failed.len(), host.name);
    }
    failed.len()
}

async fn measure<T>(
    swarm: &Swarm,
    work: impl std::future::Future<Output = anyhow::Result<(T, usize)>>,
) -> anyhow::Result<(T, Figures)> {
    let (coordinator, agents) = (process_cpu("/proc/self"), swarm.cpu());
    let began = Instant::now();
    let (value, unreachable) = work.await?;
    let figures = Figures {
        wall: began.elapsed(),
        coordinator: process_cpu("/proc/self").saturating_sub(coordinator),
        agents: swarm.cpu().saturating_sub(agents),
        unreachable,
    };
    Ok((value, figures))
}

fn print_row(count: usize, conc: usize, cold: &[Figures], warm: &[Figures], close: &[Duration]) {
    let per = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0 / count as f64);
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    let cells = |f: &[Figures]| {
        format!(
            "{:>10} {:>12} {:>12} {:>6}",
            ms(median(f.iter().map(|x| x.wall))),
            per(median(f.iter().map(|x| x.coordinator))),
            per(median(f.iter().map(|x| x.agents))),
            f.iter().map(|x| x.unreachable).max().unwrap_or(0)
        )
    };
    println!(
        "{count:>6} {conc:>6} {:>5}  {}  {}  {:>8}",
        cold.len(),
        cells(cold),
        cells(warm),
        ms(median(close.iter().copied()))
    );
}

fn median(values: impl Iterator<Item = Duration>) -> Duration {
    let mut v: Vec<Duration> = values.collect();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn list(var: &str, default: &str) -> anyhow::Result<Vec<usize>> {
    let text = std::env::var(var).unwrap_or_else(|_| default.into());
    text.split(',')
        .map(|n| {
            n.trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("{var}: {n:?}: {e}"))
        })
        .collect()
}

/// The machine, and how to read the columns.
fn print_machine() {
    println!("{}", handover_tests::fanout::machine());
    println!(
        "per-agent CPU is the median run's CPU time divided by the agents asked; unrch = the most unreachable in any run"
    );
}
