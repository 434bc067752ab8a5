//! Drain detection latency: time from the last held connection's close to
//! `handover drain HOST --wait` returning. Goal: ≤ 500 ms with the default quiet
//! period (300 ms) and 100 ms sampling.
//!
//! Not a pass/fail test: it prints the figures. Run (the binaries must be built
//! in the same profile, hence `--profile dev`):
//!
//! ```sh
//! cargo build -p handover -p handover-agent
//! cargo bench -p handover-tests --bench drain_latency --profile dev
//! ```

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use handover_tests::agents::{OneHost, spawn_lines};
use handover_tests::fleet::hold_connection;

const ROUNDS: usize = 7;

fn main() -> anyhow::Result<()> {
    println!("{}", handover_tests::fanout::machine());
    let host = OneHost::start(Ipv4Addr::new(127, 0, 1, 40))?;
    let (apache, coordinator) = (&host.apache, &host.coordinator);

    let mut figures = Vec::new();
    for round in 0..ROUNDS {
        let held = hold_connection(apache.addr(), "/index.html", None, Duration::from_secs(60))?;
        let (mut child, mut lines) = spawn_lines(
            coordinator.command(&["drain", "web-1", "--wait", "--timeout", "30s", "--json"]),
            Stdio::null(),
        )?;
        // Wait until the agent has seen the held connection.
        loop {
            let line = lines
                .next()
                .ok_or_else(|| anyhow::anyhow!("drain ended before counting the connection"))??;
            let event: serde_json::Value = serde_json::from_str(&line)?;
            if event["event"] == "progress" && event["sessions"] == 1 {
                break;
            }
        }
        let closed = Instant::now();
        drop(held);
        // Read to the end (the child never blocks on a full pipe); note when the
        // final verdict line arrives, apart from when the process has exited.
        let mut verdict = None;
        for line in lines {
            if !line?.contains("\"progress\"") {
                verdict.get_or_insert_with(|| closed.elapsed());
            }
        }
        let status = child.wait()?;
        let latency = closed.elapsed();
        anyhow::ensure!(
            status.success(),
            "round {round}: drain --wait failed: {status}"
        );
        println!(
            "round {round}: {} ms (verdict printed after {} ms)",
            latency.as_millis(),
            verdict.unwrap_or_default().as_millis()
        );
        figures.push(latency);
        let out = coordinator.run(&["undrain", "web-1"]);
        anyhow::ensure!(out.status.success(), "undrain failed");
    }
    figures.sort();
    let ms = |d: Duration| d.as_millis();
    println!(
        "drain detection latency over {ROUNDS} rounds (close of last connection → drain --wait exits): \
         min {} ms, median {} ms, max {} ms (goal ≤ 500 ms; quiet period 300 ms, sampling 100 ms)",
        ms(figures[0]),
        ms(figures[ROUNDS / 2]),
        ms(figures[ROUNDS - 1])
    );
    Ok(())
}
