//! The coordinator's `handover.toml`: any text loads or gives an error, never a
//! panic. Loaded through `CoordinatorConfig::load`, from a file in a private
//! directory.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use handover::config::CoordinatorConfig;
use libfuzzer_sys::fuzz_target;

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = scratch().join(format!("handover-fuzz-coordinator-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a private temp dir");
        dir.join("handover.toml")
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
    let _ = CoordinatorConfig::load(path());
});
