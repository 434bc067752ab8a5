//! The agent's config as an operator writes it (`/etc/handover/agent.toml`):
//! any text loads or gives an error, never a panic. Loaded through the same
//! `AgentConfig::load` the daemon uses, from a file in a private directory.
#![no_main]

mod config_file;

use handover_agent::AgentConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = AgentConfig::load(config_file::write("agent", "agent.toml", data));
});
