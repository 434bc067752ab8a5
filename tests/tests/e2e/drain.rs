//! Issue 3: drain on each host, against a real Apache with mod_status and real
//! keep-alive connections held open. Pass/fail is by counts and ordering only;
//! latency is measured by the `drain_latency` bench.

use std::net::Ipv4Addr;
use std::process::{Child, Stdio};
use std::time::Duration;

use handover_tests::agents::{OneHost, StdoutLines, next_event, output_text, spawn_lines};
use handover_tests::fleet::{HeldConnection, get, hold_connection};

type DrainHost = OneHost;

/// An Apache on `ip` and an agent whose `[health]` and `[app]` point at it.
fn drain_host(ip: Ipv4Addr) -> DrainHost {
    OneHost::start(ip).expect("Apache, agent and coordinator start")
}

/// What the drain tests do with one host.
trait DrainHostExt {
    fn health_status(&self) -> u16;
    fn hold(&self) -> HeldConnection;
    fn spawn_drain_wait(&self, timeout: &str) -> (Child, StdoutLines);
}

impl DrainHostExt for DrainHost {
    fn health_status(&self) -> u16 {
        get(self.apache.addr(), "/health.html", None)
            .expect("GET /health.html")
            .status
    }

    fn hold(&self) -> HeldConnection {
        let held = hold_connection(
            self.apache.addr(),
            "/index.html",
            None,
            Duration::from_secs(120),
        )
        .expect("hold a keep-alive connection");
        assert_eq!(held.first_response().status, 200);
        held
    }

    /// `handover drain web-1 --wait --json ...` running in the background.
    fn spawn_drain_wait(&self, timeout: &str) -> (Child, StdoutLines) {
        spawn_lines(
            self.coordinator
                .command(&["drain", "web-1", "--wait", "--timeout", timeout, "--json"]),
            Stdio::piped(),
        )
        .expect("spawn handover drain --wait")
    }
}

fn is_progress_with(sessions: u64) -> impl Fn(&serde_json::Value) -> bool {
    move |e| e["event"] == "progress" && e["sessions"] == sessions
}

#[test]
fn drain_makes_the_health_check_404_and_undrain_restores_the_same_bytes() {
    let h = drain_host(Ipv4Addr::new(127, 0, 1, 31));
    let original = std::fs::read(h.apache.health_file()).expect("read health file");
    assert_eq!(h.health_status(), 200);

    let out = h.coordinator.run(&["drain", "web-1"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(
        h.health_status(),
        404,
        "drained host must answer the check with 404"
    );
    assert!(!h.apache.health_file().exists());

    // Idempotent, and status says so.
    let again = h.coordinator.run(&["drain", "web-1"]);
    assert!(again.status.success(), "{}", output_text(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("already drained"));
    let (ok, json) = h.coordinator.status_json(&["web-1"]).expect("status");
    assert!(ok, "{json}");
    assert_eq!(json[0]["report"]["drain"]["drained"], true, "{json}");
    let table = h.coordinator.run(&["status"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("DRAINED"), "{table}");

    let out = h.coordinator.run(&["undrain", "web-1"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let back = get(h.apache.addr(), "/health.html", None).expect("GET /health.html");
    assert_eq!(back.status, 200);
    assert_eq!(back.body.as_bytes(), original.as_slice());
    assert_eq!(
        std::fs::read(h.apache.health_file()).expect("read"),
        original
    );

    let again = h.coordinator.run(&["undrain", "web-1"]);
    assert!(again.status.success(), "{}", output_text(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("already in service"));
}

#[test]
fn drain_wait_returns_only_after_the_last_held_connection_closes() {
    let h = drain_host(Ipv4Addr::new(127, 0, 1, 32));
    let first = h.hold();
    let second = h.hold();
    let (mut child, mut lines) = h.spawn_drain_wait("60s");
    let mut seen = Vec::new();

    let two = next_event(&mut lines, &mut seen, is_progress_with(2));
    let holder = first.local_addr().expect("held address").ip().to_string();
    assert_eq!(two["holders"][0]["remote"], holder.as_str(), "{two}");
    assert_eq!(h.health_status(), 404, "the wait starts after the drain");

    drop(first);
    next_event(&mut lines, &mut seen, is_progress_with(1));
    // One connection is still held: the wait cannot have finished.
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "drain --wait returned while a connection was still open: {seen:#?}"
    );

    drop(second);
    let done = next_event(&mut lines, &mut seen, |e| e["event"] != "progress");
    let status = child.wait().expect("wait for handover");
    assert!(status.success(), "exit {status}; events {seen:#?}");
    assert_eq!(done["event"], "drained", "{done}");
    assert_eq!(done["sessions"], 0, "{done}");

    // The counts only went down: 2 … 1 … 0.
    let counts: Vec<u64> = seen
        .iter()
        .filter(|e| e["event"] == "progress")
        .filter_map(|e| e["sessions"].as_u64())
        .collect();
    assert!(counts.windows(2).all(|w| w[0] >= w[1]), "{counts:?}");
    assert_eq!(counts.last(), Some(&0), "{counts:?}");
}

#[test]
fn a_drain_wait_that_times_out_names_the_holder_and_leaves_the_host_drained() {
    let h = drain_host(Ipv4Addr::new(127, 0, 1, 33));
    let held = h.hold();
    let holder = held.local_addr().expect("held address").ip().to_string();

    let out = h
        .coordinator
        .run(&["drain", "web-1", "--wait", "--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TIMED OUT"), "{stderr}");
    assert!(stderr.contains(&format!("held by {holder}")), "{stderr}");
    assert!(stderr.contains("stays drained"), "{stderr}");
    assert!(held.is_held(), "the session must not be cut");
    assert_eq!(
        h.health_status(),
        404,
        "a timed-out drain leaves the host drained"
    );

    // The local CLI says the same through the control socket.
    let local = h.agent.cli(&["drain", "--wait", "--timeout", "1s"]);
    assert_eq!(local.status.code(), Some(1), "{}", output_text(&local));
    assert!(
        String::from_utf8_lossy(&local.stderr).contains(&holder),
        "{}",
        output_text(&local)
    );
    // The held connection still works: draining cut nothing.
    assert_eq!(
        held.get("/index.html", None)
            .expect("request on held")
            .status,
        200
    );
}

#[test]
fn a_restarted_agent_still_knows_it_is_drained_and_undrain_restores_the_file() {
    let mut h = drain_host(Ipv4Addr::new(127, 0, 1, 34));
    let original = std::fs::read(h.apache.health_file()).expect("read health file");

    let out = h.agent.cli(&["drain"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(h.health_status(), 404);

    h.agent.stop().expect("agent stops");
    // Without the daemon the CLI says so, and changes nothing.
    let down = h.agent.cli(&["undrain"]);
    assert_eq!(down.status.code(), Some(2), "{}", output_text(&down));
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("is handover-agent running?"),
        "{}",
        output_text(&down)
    );
    assert_eq!(h.health_status(), 404);

    h.agent.spawn().expect("agent restarts");
    let status = h.agent.cli(&["status", "--json"]);
    assert!(status.status.success(), "{}", output_text(&status));
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(json["drain"]["drained"], true, "{json}");

    let out = h.agent.cli(&["undrain"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(h.health_status(), 200);
    assert_eq!(
        std::fs::read(h.apache.health_file()).expect("read"),
        original
    );
}

#[test]
fn status_reads_sessions_and_apache_workers_from_the_live_server() {
    let h = drain_host(Ipv4Addr::new(127, 0, 1, 35));
    let _a = h.hold();
    let _b = h.hold();
    let _c = h.hold();
    let (ok, json) = h.coordinator.status_json(&["web-1"]).expect("status");
    assert!(ok, "{json}");
    let drain = &json[0]["report"]["drain"];
    assert_eq!(drain["drained"], false, "{json}");
    assert_eq!(drain["sessions"]["Counted"]["total"], 3, "{json}");
    // mod_status of a live event-MPM Apache, parsed by key: the worker figures
    // are there, and the status request itself is one busy worker.
    let figures = &drain["apache"]["Figures"];
    assert!(figures["busy_workers"].as_u64().unwrap_or(0) >= 1, "{json}");
    assert!(figures["idle_workers"].as_u64().is_some(), "{json}");
    assert!(
        figures["total_accesses"].as_u64().unwrap_or(0) >= 3,
        "{json}"
    );
}
