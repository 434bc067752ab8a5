//! Issue 4: attach, drain, detach and reload survival on a real HAProxy 2.6, with
//! a slot backend (cookie persistence) and a dynamic one, driven through the
//! `handover` CLI and an `lb` agent.

use std::time::Duration;

use handover_tests::agents::{AgentProcess, Coordinator, HostSpec, output_text};
use handover_tests::apache::{Apache, ApacheOptions};
use handover_tests::config::{AgentSections, Lb};
use handover_tests::fleet::Fleet;
use handover_tests::haproxy::{BackendSpec, Haproxy, HaproxyOptions};
use handover_tests::{http, ports};

const WAIT: Duration = Duration::from_secs(15);

struct LbFleet {
    _fleet: Fleet,
    web: Vec<Apache>,
    haproxy: Haproxy,
    lb: AgentProcess,
    coordinator: Coordinator,
}

fn lb_fleet() -> LbFleet {
    let fleet = Fleet::new().expect("fleet directory and CA");
    let web: Vec<Apache> = [("web-1", 41), ("web-2", 42)]
        .into_iter()
        .map(|(name, n)| {
            Apache::start_with(
                ports::host_ip(n),
                ApacheOptions {
                    name: Some(name.to_owned()),
                    parent: Some(fleet.path().to_owned()),
                    ..Default::default()
                },
            )
            .expect("apache starts")
        })
        .collect();
    let haproxy = Haproxy::start(HaproxyOptions {
        backends: vec![
            BackendSpec::slots("be_app", 4),
            BackendSpec::dynamic("be_dyn"),
        ],
        parent: Some(fleet.path().to_owned()),
        ..Default::default()
    })
    .expect("haproxy starts");
    let sections = AgentSections {
        haproxy: Some(Lb::fast(
            haproxy.admin_socket().to_owned(),
            &["be_app", "be_dyn"],
        )),
        ..AgentSections::default()
    };
    let lb = fleet
        .agent("lb-1", ports::host_ip(40), &sections)
        .expect("lb agent starts");
    let mut hosts = vec![HostSpec::of(&lb, &["lb"])];
    for w in &web {
        let mut h = HostSpec::of(&lb, &["app"]);
        h.name = w.name().to_owned();
        h.app = Some(w.addr());
        hosts.push(h);
    }
    let coordinator = fleet.coordinator(&hosts).expect("coordinator config");
    LbFleet {
        _fleet: fleet,
        web,
        haproxy,
        lb,
        coordinator,
    }
}

impl LbFleet {
    /// The HAProxy server carrying `host` in `backend`, from `handover status --json`.
    fn server_of(&self, host: &str, backend: &str) -> String {
        let (_, json) = self.coordinator.status_json(&["lb-1"]).expect("status");
        let servers = json[0]["report"]["lb"]["servers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        servers
            .iter()
            .find(|s| s["host"] == host && s["backend"] == backend)
            .and_then(|s| s["haproxy_name"].as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("{host} not in {backend}: {json}"))
    }
}

#[test]
fn attach_drain_detach_and_reload_on_slot_and_dynamic_backends() {
    let mut f = lb_fleet();

    // Attach: UP only after a fresh check (progress shows it was not UP first).
    let out = f.coordinator.run(&["attach", "web-1", "web-2"]);
    let text = output_text(&out);
    assert!(
        out.status.success(),
        "attach failed: {text}\n{}",
        f.lb.log_text()
    );
    for host in ["web-1", "web-2"] {
        for backend in ["be_app", "be_dyn"] {
            assert!(
                text.contains(&format!("{host} in {backend}/")) && text.contains("waiting for UP"),
                "attach must report {host} not UP in {backend} before the fresh check: {text}"
            );
            let server = f.server_of(host, backend);
            let row = f.haproxy.server(backend, &server).expect("row");
            assert_eq!(row.status, "UP", "{host} in {backend}: {row:?}");
            // "* L7OK" while the next check is running.
            assert_eq!(row.check_status.trim_start_matches("* "), "L7OK", "{row:?}");
        }
    }
    assert_eq!(
        f.server_of("web-2", "be_dyn"),
        "web-2",
        "dynamic servers carry the host name"
    );
    assert!(f.server_of("web-1", "be_app").starts_with("slot"));

    // Both receive traffic on both backends.
    for backend in ["be_app", "be_dyn"] {
        let frontend = f.haproxy.frontend_for(backend).expect("frontend");
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..6 {
            let r = http::get(frontend, "/", None).expect("request");
            assert!(r.is_success(), "{backend}: {r:?}");
            seen.insert(r.served_by());
        }
        assert_eq!(seen.len(), 2, "{backend} should spread over both: {seen:?}");
    }

    // A client pinned to web-1 by its cookie before the drain.
    let app = f.haproxy.frontend_for("be_app").expect("frontend");
    let pinned = (0..6)
        .filter_map(|_| http::get(app, "/", None).ok())
        .find(|r| r.served_by() == "web-1")
        .and_then(|r| r.server_cookie())
        .expect("a response from web-1 with a persistence cookie");

    // Drain (health file removed) → NOLB; new clients go to web-2, pinned stays.
    f.web[0].remove_health().expect("remove health file");
    let slot1 = f.server_of("web-1", "be_app");
    f.haproxy
        .wait_status("be_app", &slot1, "NOLB", WAIT)
        .expect("NOLB");
    for _ in 0..4 {
        assert_eq!(
            http::get(app, "/", None).expect("new client").served_by(),
            "web-2"
        );
    }
    let r = http::get(app, "/", Some(&pinned)).expect("pinned client");
    assert_eq!(
        r.served_by(),
        "web-1",
        "a pinned client is still served by the draining server"
    );

    // Detach web-1: gone from both; the slot is free again; web-2 untouched.
    let out = f.coordinator.run(&["detach", "web-1"]);
    assert!(out.status.success(), "detach: {}", output_text(&out));
    assert_eq!(
        f.haproxy.server("be_app", &slot1).expect("slot row").status,
        "MAINT"
    );
    assert!(
        f.haproxy.server("be_dyn", "web-1").is_err(),
        "dynamic web-1 must be deleted"
    );
    let slot2 = f.server_of("web-2", "be_app");
    assert_eq!(
        f.haproxy.server("be_app", &slot2).expect("row").status,
        "UP"
    );

    // Reload (-sf): the dynamic server is gone from the new process; the agent
    // re-applies it, and the slot keeps its address.
    f.haproxy.reload().expect("reload");
    f.haproxy
        .wait_status("be_dyn", "web-2", "UP", WAIT)
        .expect("web-2 re-added after reload");
    f.haproxy
        .wait_status("be_app", &slot2, "UP", WAIT)
        .expect("web-2 slot UP after reload");
    assert_eq!(
        f.haproxy.server("be_app", &slot1).expect("slot row").status,
        "MAINT"
    );
    assert!(
        f.haproxy.server("be_dyn", "web-1").is_err(),
        "detached stays detached"
    );
    let (_, json) = f.coordinator.status_json(&["lb-1"]).expect("status");
    assert_eq!(json[0]["report"]["lb"]["reloads_seen"], 1, "{json}");
}

#[test]
fn bad_names_unknown_hosts_and_a_missing_socket_are_clear_errors() {
    let f = lb_fleet();
    let out = f.coordinator.run(&["attach", "web;1"]);
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("unknown host"),
        "{}",
        output_text(&out)
    );
    let out = f.coordinator.run(&["attach", "web-1", "--lb", "web-2"]);
    assert!(
        output_text(&out).contains("is not a load balancer"),
        "{}",
        output_text(&out)
    );
    let out = f.coordinator.run(&["lb-state", "web-1", "up"]);
    assert!(
        output_text(&out).contains("ready, drain or maint"),
        "{}",
        output_text(&out)
    );
    let out = f.coordinator.run(&["lb-state", "web-1", "drain"]);
    assert!(
        output_text(&out).contains("not attached"),
        "{}",
        output_text(&out)
    );

    // Nothing above reached HAProxy: every slot is still free.
    let stat = f.haproxy.show_stat().expect("stat");
    assert!(
        stat.iter()
            .filter(|s| s.pxname == "be_app" && s.is_server())
            .all(|s| s.status == "MAINT")
    );

    // HAProxy gone: the error names the socket and the fix.
    drop(f.haproxy);
    let out = f.coordinator.run(&["attach", "web-1"]);
    let text = output_text(&out);
    assert!(!out.status.success());
    assert!(
        text.contains("cannot reach HAProxy's runtime API") && text.contains("[haproxy] socket"),
        "{text}"
    );
}
