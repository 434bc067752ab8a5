//! The input file of the config targets: a config is loaded from a file, as the
//! binaries load it, so the input is written to one in a private directory.

use std::path::PathBuf;
use std::sync::OnceLock;

/// `NAME` in this process's own scratch directory (`handover-fuzz-LABEL-PID`).
pub fn path(label: &str, name: &str) -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = scratch().join(format!("handover-fuzz-{label}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a private temp dir");
        dir.join(name)
    })
}

/// Where the input file goes: memory (/dev/shm) when there is one, since a file
/// write on a disk costs a millisecond and would make these targets 30 times slower.
fn scratch() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

/// Writes the fuzzer's input as the config file under test and returns its path.
pub fn write(label: &str, name: &str, data: &[u8]) -> &'static PathBuf {
    let path = path(label, name);
    std::fs::write(path, data).expect("write the config under test");
    path
}
