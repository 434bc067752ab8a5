//! The README's first command runs `handover-demo`; these run it as the quick
//! start does, in each of its modes, so the demo a new user meets first cannot
//! quietly rot: it exits 0, ends with "0 failed; sessions cut: 0" (the in-place
//! demo has no pinned sessions: "0 failed"), and leaves no process behind that
//! still uses its work dir.

use std::process::Command;

use handover_tests::agents::{bin, output_text};
use handover_tests::process::command_lines_containing;

/// Runs `handover-demo ARGS` and checks how it ended (its summary line ends
/// with `summary_end`) and what it left.
fn demo_ends_well(args: &[&str], summary_end: &str) {
    let out = Command::new(bin("handover-demo"))
        .args(args)
        .output()
        .expect("the demo runs");
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rfind(|l| l.starts_with("requests: "))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no summary line: {text}"));
    assert!(last.ends_with(summary_end), "{last}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("work dir:"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("the demo names its work dir: {text}"));
    assert!(dir.len() > 5, "{dir}");
    assert_eq!(
        command_lines_containing(dir),
        Vec::<String>::new(),
        "left running"
    );
    assert!(!std::path::Path::new(dir).exists(), "{dir} removed");
}

#[test]
fn the_surge_demo_of_the_quick_start_ends_with_nothing_failed_or_left_running() {
    demo_ends_well(&[], " 0 failed; sessions cut: 0");
}

#[test]
fn the_in_place_demo_ends_with_nothing_failed_or_left_running() {
    demo_ends_well(&["--in-place"], " 0 failed");
}

#[test]
fn the_two_bastion_demo_ends_with_nothing_failed_or_left_running() {
    demo_ends_well(&["--etcd"], " 0 failed; sessions cut: 0");
}
