//! The coordinator's `handover.toml`: any text loads or gives an error, never a
//! panic. Loaded through `CoordinatorConfig::load`, from a file in a private
//! directory.
#![no_main]

mod config_file;

use handover::config::CoordinatorConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = CoordinatorConfig::load(config_file::write("coordinator", "handover.toml", data));
});
