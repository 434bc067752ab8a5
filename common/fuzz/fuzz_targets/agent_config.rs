//! The agent's config as an operator writes it (`/etc/handover/agent.toml`):
//! any text loads or gives an error, never a panic. Loaded through the same
//! `AgentConfig::load` the daemon uses, from a file in a private directory.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use handover_agent::AgentConfig;
use libfuzzer_sys::fuzz_target;

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = scratch().join(format!("handover-fuzz-agent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a private temp dir");
        dir.join("agent.toml")
    })
}

/// Where the input file goes: memory (/dev/shm) when there is one, since a file
/// write on a disk costs a millisecond and would make this target 30 times slower.
fn scratch() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

fuzz_target!(|data: &[u8]| {
    std::fs::write(path(), data).expect("write the config under test");
    let _ = AgentConfig::load(path());
});
