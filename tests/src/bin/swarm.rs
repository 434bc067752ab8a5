//! `handover-swarm LIST`: serves the agents whose configs LIST names (one path a
//! line) from this one process, prints `ready`, and runs until its stdin closes.
//! For the fan-out tests and benchmark (see `handover_tests::fanout`).

use std::io::Read;

fn main() -> anyhow::Result<()> {
    let list = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: handover-swarm LIST"))?;
    let text = std::fs::read_to_string(&list)?;
    let configs: Vec<std::path::PathBuf> = text.lines().map(Into::into).collect();
    handover_common::tls::install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let _tasks = handover_tests::fanout::serve_agents(&configs)?;
        println!("ready");
        // Serve until the parent closes our stdin (or dies).
        tokio::task::spawn_blocking(|| {
            let _ = std::io::stdin().read(&mut [0u8; 1]);
        })
        .await?;
        anyhow::Ok(())
    })
}
