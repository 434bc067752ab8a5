//! Issue 14: `handover status` to many agents at once — real agents over QUIC and
//! mTLS, each on its own address with its own certificate (served from one
//! `handover-swarm` process). Counts and ordering only, never timings.

use std::net::{SocketAddr, UdpSocket};

use handover_tests::agents::{HostSpec, output_text};
use handover_tests::fanout::{Swarm, swarm_ip};
use handover_tests::fleet::{Workdir, serial};

/// Before issue 14, status to 300 agents at concurrency 300 called 93–141 healthy
/// agents unreachable (the handshake burst overflowed the coordinator's socket).
#[test]
fn status_to_three_hundred_agents_all_at_once_reports_every_one_reachable() {
    const AGENTS: usize = 300;
    let _guard = serial();
    let work = Workdir::new().expect("workdir");
    let swarm = Swarm::start(&work.path().join("swarm"), AGENTS).expect("swarm starts");
    let coordinator = swarm
        .files
        .coordinator(&work.path().join("coordinator"), AGENTS, &[])
        .expect("coordinator config");
    for round in 0..3 {
        let (ok, json) = coordinator.status_json(&[]).expect("status");
        let hosts = json.as_array().expect("an array of hosts");
        let unreachable: Vec<_> = hosts
            .iter()
            .filter(|h| h["reachable"] != true)
            .map(|h| format!("{}: {}", h["name"], h["error"]))
            .collect();
        assert_eq!(hosts.len(), AGENTS, "round {round}");
        assert!(unreachable.is_empty(), "round {round}: {unreachable:#?}");
        assert!(ok, "round {round}: exit status 0 when all answered");
    }
}

/// A silent host is reported unreachable, and every other host's row is printed
/// before it: rows come as hosts answer, so a slow host hides no one.
#[test]
fn a_silent_host_is_reported_last_and_hides_none_of_the_others() {
    const AGENTS: usize = 12;
    let _guard = serial();
    let work = Workdir::new().expect("workdir");
    let swarm = Swarm::start(&work.path().join("swarm"), AGENTS).expect("swarm starts");
    // A UDP port that receives and never answers: packets vanish, as for a host
    // whose agent hangs.
    let silent = UdpSocket::bind(SocketAddr::new(swarm_ip(249).into(), 0)).expect("bind");
    let address = silent.local_addr().expect("address");
    // Listed first in the inventory: printed in inventory order, it would come first.
    let extra = HostSpec {
        name: "silent".into(),
        address,
        roles: vec!["app".into()],
        app: None,
        extra: String::new(),
    };
    let coordinator = swarm
        .files
        .coordinator(&work.path().join("coordinator"), AGENTS + 1, &[extra])
        .expect("coordinator config");
    let out = coordinator.run(&["status", "--timeout", "2s"]);
    let text = output_text(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // (host, REACHABLE) of each host row, in the order printed.
    let rows: Vec<(&str, &str)> = stdout
        .lines()
        .filter_map(|l| {
            let mut cells = l.split_whitespace();
            let name = cells.next()?;
            let reachable = cells.nth(1)?;
            (name.starts_with("agent-") || name == "silent").then_some((name, reachable))
        })
        .collect();
    let yes = rows.iter().filter(|(_, r)| *r == "yes").count();
    assert_eq!(yes, AGENTS, "{text}");
    assert_eq!(rows.last(), Some(&("silent", "NO")), "{text}");
    assert!(text.contains("error: silent: no answer from"), "{text}");
    assert_eq!(out.status.code(), Some(1), "{text}");
}

/// Issue 14: `handover rollout` ends with where its time went, one block per
/// wave, and `handover show ID --timings` prints the same summary from the
/// journal. Structure only: the figures themselves are never asserted.
#[test]
fn a_rollout_ends_with_its_timing_summary_and_show_prints_it_again() {
    use handover_tests::scenario::{Scenario, ScenarioOptions};
    let s = Scenario::start(ScenarioOptions::default()).expect("fleet starts");
    let plan = s
        .write_plan("plan.toml", &s.in_place_plan("v2", 1, 2))
        .expect("plan");
    let out = s
        .coordinator
        .run(&["rollout", &plan.display().to_string(), "--yes"]);
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    let blocks = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("timings: ") || l.starts_with("wave "))
            .map(|l| l.split(':').next().unwrap_or_default().to_string())
            .collect()
    };
    let expected = ["timings", "wave 1", "wave 2", "wave 3"];
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Reported, not asserted.
    let summary = stdout.find("timings: ").map_or("", |at| &stdout[at..]);
    eprintln!("measured:\n{summary}");
    assert_eq!(blocks(&stdout), expected, "{text}");
    // Each wave lists its steps, the drain wait among them.
    assert!(
        stdout.lines().filter(|l| l.contains(" sessions ")).count() >= 3,
        "{text}"
    );

    let history = s.coordinator.run(&["history", "--json"]);
    let history: serde_json::Value = serde_json::from_slice(&history.stdout).expect("history");
    let id = history[0]["id"].as_str().expect("a rollout id");
    let shown = s.coordinator.run(&["show", id, "--timings"]);
    assert!(shown.status.success(), "{}", output_text(&shown));
    assert_eq!(
        blocks(&String::from_utf8_lossy(&shown.stdout)),
        expected,
        "{}",
        output_text(&shown)
    );
}
