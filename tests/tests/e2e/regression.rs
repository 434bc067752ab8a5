//! One test per bug fixed from now on, each named after what it guards and
//! carrying, in its doc comment, the issue that found it. Write the test first, see
//! it fail, then fix the code.

#[allow(unused_imports)]
use handover_tests::fleet;

// --- drainwait ---

mod drainwait {
    use std::net::Ipv4Addr;
    use std::process::Stdio;
    use std::time::Duration;

    use handover_tests::agents::{OneHost, next_event, output_text, spawn_lines};
    use handover_tests::fleet::hold_connection;

    /// Issue 18: `status` showed DRAINED=yes for a health-check file that never
    /// existed, and then `undrain` failed ("missing and no drain saved it").
    #[test]
    fn a_health_file_that_never_existed_reads_missing_not_drained() {
        let h = OneHost::start(Ipv4Addr::new(127, 0, 1, 36)).expect("one host");
        std::fs::remove_file(h.apache.health_file()).expect("remove the health file");

        let (_, json) = h.coordinator.status_json(&["web-1"]).expect("status");
        assert_eq!(json[0]["report"]["drain"]["missing"], true, "{json}");
        let table = h.coordinator.run(&["status"]);
        let table = String::from_utf8_lossy(&table.stdout);
        assert!(table.contains("missing (never drained)"), "{table}");

        let local = h.agent.cli(&["status"]);
        let text = output_text(&local);
        assert!(
            text.contains("health file missing (never drained)"),
            "{text}"
        );
    }

    /// Issue 18: `handover-agent drain --wait` printed a line per sample while
    /// the quiet period counted up, and the "drained:" line was followed by
    /// another; now a line per change, and the drained line last.
    #[test]
    fn local_drain_progress_is_a_line_per_change_and_ends_with_the_drained_line() {
        let h = OneHost::start(Ipv4Addr::new(127, 0, 1, 38)).expect("one host");
        let out = h
            .agent
            .cli(&["drain", "--wait", "--quiet", "1s", "--timeout", "30s"]);
        let text = output_text(&out);
        assert!(out.status.success(), "{text}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        assert!(
            lines
                .last()
                .is_some_and(|l| l.starts_with("drained: ") && l.contains("no session left")),
            "{stdout}"
        );
        // Ten samples over the 1 s quiet period, nothing changing: one line
        // (two or three if a leftover connection closed meanwhile).
        assert!(lines.len() <= 4, "a line per sample: {stdout}");
    }

    /// Issue 11: an undrain during `drain --wait` left the wait running until its
    /// timeout while HAProxy sent the host new clients again; it ends the wait.
    #[test]
    fn an_undrain_during_a_drain_wait_ends_the_wait() {
        let h = OneHost::start(Ipv4Addr::new(127, 0, 1, 37)).expect("one host");
        let held = hold_connection(
            h.apache.addr(),
            "/index.html",
            None,
            Duration::from_secs(120),
        )
        .expect("hold a connection");
        let (mut child, mut lines) = spawn_lines(
            h.coordinator
                .command(&["drain", "web-1", "--wait", "--timeout", "120s", "--json"]),
            Stdio::piped(),
        )
        .expect("spawn drain --wait");
        let mut seen = Vec::new();
        next_event(&mut lines, &mut seen, |e| {
            e["event"] == "progress" && e["sessions"] == 1
        });
        let out = h.coordinator.run(&["undrain", "web-1"]);
        assert!(out.status.success(), "{}", output_text(&out));

        let end = next_event(&mut lines, &mut seen, |e| e["event"] != "progress");
        let status = child.wait().expect("wait for drain");
        assert_eq!(end["event"], "failed", "{end}");
        assert!(
            end["message"]
                .as_str()
                .is_some_and(|m| m.contains("undrained during the wait")),
            "{end}"
        );
        assert_eq!(status.code(), Some(1), "{end}");
        assert!(held.is_held(), "nothing was cut");
    }
}
