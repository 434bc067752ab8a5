//! Issue 12, "Existing fleets": the first rollout on a fleet whose app servers are
//! plain `server` lines in haproxy.cfg (never attached by Handover) drains and
//! detaches them by name, with no attach first, on real HAProxy under traffic.

use std::time::Duration;

use handover_tests::agents::output_text;
use handover_tests::monitor::UpMonitor;
use handover_tests::plain::PlainFleet;
use handover_tests::scenario::BACKEND;
use handover_tests::traffic::{Traffic, TrafficOptions};

fn traffic(f: &PlainFleet) -> Traffic {
    Traffic::start(
        f.haproxy.frontend(),
        TrafficOptions {
            clients: 3,
            pause: Duration::from_millis(25),
            max_duration: Duration::from_secs(240),
            ..TrafficOptions::default()
        },
    )
    .expect("traffic starts")
}

/// The backend's server rows as (name, status).
fn servers(f: &PlainFleet) -> Vec<(String, String)> {
    f.haproxy
        .show_stat()
        .expect("show stat")
        .into_iter()
        .filter(|r| r.pxname == BACKEND && r.is_server())
        .map(|r| (r.svname, r.status))
        .collect()
}

fn run_ok(f: &PlainFleet, args: &[&str]) -> String {
    let out = f.coordinator.run(args);
    assert!(
        out.status.success(),
        "handover {args:?}: {}",
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn an_in_place_rollout_adopts_plain_server_lines_and_drops_no_request() {
    let f = PlainFleet::start(3).expect("plain fleet starts");
    let names = ["web-1", "web-2", "web-3"];
    assert_eq!(
        servers(&f).iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
        names,
        "the fleet starts as three plain server lines"
    );
    let plan = f.in_place_plan("v2", 2).expect("plan");
    let plan = plan.display().to_string();
    run_ok(&f, &["plan", &plan]);

    let monitor = UpMonitor::start(&f.haproxy, &[BACKEND], 2).expect("monitor");
    let load = traffic(&f);
    let out = f.coordinator.run(&["rollout", &plan, "--yes", "--json"]);
    let report = load.stop();
    let up = monitor.stop();
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
    assert!(report.ok > 0);
    assert!(
        up.violations.is_empty(),
        "fewer than 2 UP: {:?}",
        up.violations
    );
    for app in &f.apps {
        assert_eq!(app.version(), "v2", "{} runs the wrong release", app.name);
    }
    // The same three config servers, each detached and attached back in turn:
    // no slot, no dynamic twin beside a plain line.
    f.wait_up(&names.map(String::from)).expect("all UP again");
    assert_eq!(
        servers(&f).iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
        names
    );
    // The journal: each host detached from the LB by the rollout itself.
    let history: serde_json::Value =
        serde_json::from_str(&run_ok(&f, &["history", "--json"])).expect("history");
    let id = history[0]["id"].as_str().expect("rollout id").to_owned();
    let shown: serde_json::Value =
        serde_json::from_str(&run_ok(&f, &["show", &id, "--json"])).expect("show");
    let detached: Vec<&str> = shown["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|s| s["outcome"] == "ok")
        .filter_map(|s| s["title"].as_str())
        .filter(|t| t.starts_with("detach "))
        .collect();
    assert_eq!(detached.len(), 3, "one detach per host: {detached:?}");
}

#[test]
fn a_plain_server_is_drained_detached_and_attached_back_by_host_name() {
    let f = PlainFleet::start(3).expect("plain fleet starts");
    let monitor = UpMonitor::start(&f.haproxy, &[BACKEND], 2).expect("monitor");
    let load = traffic(&f);
    run_ok(&f, &["drain", "web-2", "--wait", "--timeout", "20s"]);
    run_ok(&f, &["detach", "web-2"]);
    let during = servers(&f);
    assert!(
        during.contains(&("web-2".into(), "MAINT".into())),
        "web-2 is out of rotation: {during:?}"
    );
    let before = f.haproxy.server(BACKEND, "web-2").expect("row").stot;
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        f.haproxy.server(BACKEND, "web-2").expect("row").stot,
        before,
        "a detached server takes no new request"
    );
    // status names it by host while it is detached.
    let (_, status) = f.coordinator.status_json(&["lb-1"]).expect("status");
    let text = status.to_string();
    assert!(text.contains("\"host\":\"web-2\""), "{text}");

    run_ok(&f, &["undrain", "web-2"]);
    run_ok(&f, &["attach", "web-2"]);
    f.wait_up(&["web-2".into()]).expect("web-2 UP again");
    let report = load.stop();
    let up = monitor.stop();
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
    assert!(
        up.violations.is_empty(),
        "fewer than 2 UP: {:?}",
        up.violations
    );
    assert_eq!(
        servers(&f).len(),
        3,
        "no second server for web-2: {:?}",
        servers(&f)
    );
}

#[test]
fn a_server_named_otherwise_is_adopted_by_address_on_attach_and_keeps_serving() {
    let f = PlainFleet::start_named(3, |n| format!("app{n}")).expect("plain fleet starts");
    // Adopting must not take app3 out of rotation even for an instant.
    let monitor = UpMonitor::start(&f.haproxy, &[BACKEND], 3).expect("monitor");
    run_ok(&f, &["attach", "web-3"]);
    let up = monitor.stop();
    assert!(
        up.violations.is_empty(),
        "attach took app3 out: {:?}",
        up.violations
    );
    let load = traffic(&f);
    run_ok(&f, &["drain", "web-3", "--wait", "--timeout", "20s"]);
    run_ok(&f, &["detach", "web-3"]);
    assert!(
        servers(&f).contains(&("app3".into(), "MAINT".into())),
        "web-3's line app3 is out of rotation: {:?}",
        servers(&f)
    );
    run_ok(&f, &["undrain", "web-3"]);
    run_ok(&f, &["attach", "web-3"]);
    f.wait_up(&["app3".into()]).expect("app3 UP again");
    let report = load.stop();
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
    assert_eq!(
        servers(&f).iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
        ["app1", "app2", "app3"],
        "no second server for web-3"
    );
}

/// The first surge on a fleet of plain `server web-N` lines, which Handover never
/// attached: the standby hosts come in as dynamic servers, the plain servers are
/// drained and detached by host name (no `handover attach` of them first), with
/// traffic and cookie-pinned sessions on them throughout: nothing failed, no
/// session cut, 3 servers UP at every sample, and the plain servers out of
/// rotation at the end.
#[test]
fn a_first_surge_on_plain_server_lines_hands_over_without_attaching_them_first() {
    use handover_tests::surge::{
        ProviderKind, SurgeFleet, SurgeLoad, SurgeOptions, assert_nobody_noticed,
    };
    let fleet = SurgeFleet::start(SurgeOptions {
        plain_config: true,
        ..SurgeOptions::default()
    })
    .expect("fleet");
    let plan = fleet
        .write_surge_plan(ProviderKind::Standby, "v2", "")
        .expect("plan");
    let load = SurgeLoad::start(&fleet).expect("load starts");
    let out = fleet.coordinator.run(&["rollout", &plan, "--yes"]);
    let (report, sessions) = load.stop();
    assert!(out.status.success(), "{}", output_text(&out));
    assert_nobody_noticed(&report, &sessions);
    fleet.check_capacity().expect("3 UP at every sample");
    let up = fleet.up_addresses().expect("stats");
    for h in &fleet.standby {
        assert!(
            up.contains(&h.apache.addr().to_string()),
            "{} serves: {up:?}",
            h.name
        );
        assert_eq!(h.version(), "v2", "{}", h.name);
    }
    for h in &fleet.apps {
        assert!(
            !up.contains(&h.apache.addr().to_string()),
            "{} left: {up:?}",
            h.name
        );
    }
}
