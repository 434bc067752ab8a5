//! Proves the harness against the real HAProxy 2.6 and Apache 2.4 of this machine.
//!
//! Every test here can fail: each asserts an observable effect (a status, a server
//! name in a body, a count), never a timing. Waits are bounded polls.

use std::time::Duration;

use handover_tests::fleet::*;

/// Generous bound for a state HAProxy reaches in well under a second with
/// `inter 200ms rise 2 fall 2`; only a broken setup hits it.
const WAIT: Duration = Duration::from_secs(5);

fn two_apaches(wd: &Workdir) -> (Apache, Apache) {
    let opts = |name: &str| ApacheOptions {
        name: Some(name.to_owned()),
        parent: Some(wd.path().to_path_buf()),
        ..ApacheOptions::default()
    };
    let a = Apache::start_with(host_ip(1), opts("web1")).expect("start apache web1");
    let b = Apache::start_with(host_ip(2), opts("web2")).expect("start apache web2");
    (a, b)
}

fn lb(wd: &Workdir, backends: Vec<BackendSpec>) -> Haproxy {
    Haproxy::start(HaproxyOptions {
        backends,
        parent: Some(wd.path().to_path_buf()),
        ..HaproxyOptions::default()
    })
    .expect("start haproxy")
}

fn assert_no_strays(wd: &Workdir) {
    let strays = wd.stray_processes().expect("pgrep");
    assert!(strays.is_empty(), "stray processes: {strays:#?}");
}

#[test]
fn apache_serves_pages_status_and_survives_graceful() {
    let wd = Workdir::new().expect("workdir");
    let (a, _b) = two_apaches(&wd);
    assert_eq!(a.addr().ip(), host_ip(1));

    let index = get(a.addr(), "/", None).expect("GET /");
    assert_eq!((index.status, index.body.as_str()), (200, "web1\n"));
    let health = get(a.addr(), "/health.html", None).expect("GET health");
    assert_eq!((health.status, health.body.as_str()), (200, "OK web1\n"));
    assert!(
        health.header("content-length").is_some(),
        "static files carry Content-Length"
    );
    let status = a.status().expect("server-status");
    assert!(status.contains("BusyWorkers:"), "{status}");
    assert!(status.contains("ConnsTotal:"), "mpm_event status: {status}");
    assert_eq!(
        a.status_url(),
        format!("http://{}/server-status?auto", a.addr())
    );

    a.remove_health().expect("remove health");
    assert_eq!(
        get(a.addr(), "/health.html", None).expect("GET").status,
        404
    );
    a.restore_health().expect("restore health");
    assert_eq!(
        get(a.addr(), "/health.html", None).expect("GET").status,
        200
    );

    let pid = a.pid();
    a.graceful().expect("graceful");
    // After a graceful restart the same parent keeps serving.
    let r = get(a.addr(), "/", None).expect("GET after graceful");
    assert_eq!(r.body, "web1\n");
    assert_eq!(a.pid(), pid);
    let strays = wd.stray_processes().expect("pgrep");
    assert!(
        strays.iter().any(|l| l.contains("apache2")),
        "pgrep must see running apaches, else the stray check proves nothing: {strays:?}"
    );
    drop((a, _b));
    assert_no_strays(&wd);
}

#[test]
fn held_connection_stays_open_in_apache_keepalive() {
    let wd = Workdir::new().expect("workdir");
    let (a, _b) = two_apaches(&wd);
    let held = hold_connection(a.addr(), "/", None, Duration::from_secs(30)).expect("hold");
    assert_eq!(held.first_response().body, "web1\n");
    std::thread::sleep(Duration::from_millis(1500));
    // Still usable after an idle second: KeepAliveTimeout is long.
    assert_eq!(held.get("/", None).expect("second request").body, "web1\n");
    assert!(held.is_held());
    assert_eq!(established_connections(a.addr()).expect("count"), 1);
    drop(held);
    // Closed on drop: Apache's side of the connection goes away.
    let mut n = usize::MAX;
    for _ in 0..50 {
        n = established_connections(a.addr()).expect("count");
        if n == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(n, 0, "held connection not closed on drop");
}

#[test]
fn slots_attach_serve_drain_and_survive_reload() {
    let wd = Workdir::new().expect("workdir");
    let (a, b) = two_apaches(&wd);
    let mut lb = lb(&wd, vec![BackendSpec::slots("be_app", 4)]);

    // Slots start disabled at 0.0.0.0:0.
    let s1 = lb.server("be_app", "slot1").expect("slot1");
    assert_eq!(s1.status, "MAINT");
    let stats = lb.show_stat().expect("show stat");
    assert_eq!(
        stats
            .iter()
            .filter(|s| s.pxname == "be_app" && s.is_server())
            .count(),
        4
    );

    lb.attach_slot("be_app", "slot1", a.addr())
        .expect("attach slot1");
    lb.attach_slot("be_app", "slot2", b.addr())
        .expect("attach slot2");
    let s1 = lb
        .wait_status("be_app", "slot1", "UP", WAIT)
        .expect("slot1 UP");
    let s2 = lb
        .wait_status("be_app", "slot2", "UP", WAIT)
        .expect("slot2 UP");
    assert_eq!(s1.addr, a.addr().to_string());
    assert_eq!(s2.addr, b.addr().to_string());
    // Dynamic cookies are derived from the address: present and distinct.
    assert!(!s1.cookie.is_empty() && !s2.cookie.is_empty());
    assert_ne!(s1.cookie, s2.cookie);

    // Both servers answer, nothing fails.
    let t = Traffic::start(
        lb.frontend(),
        TrafficOptions {
            clients: 2,
            max_requests: 40,
            ..TrafficOptions::default()
        },
    )
    .expect("traffic");
    std::thread::sleep(Duration::from_secs(1));
    let rep = t.stop();
    assert_eq!(rep.failed, 0, "{:?}", rep.failures);
    assert!(rep.ok >= 4, "{rep:?}");
    assert_eq!(rep.servers(), vec!["web1".to_owned(), "web2".to_owned()]);

    // A session pinned to web1 by its cookie.
    let first = (0..4)
        .map(|_| get(lb.frontend(), "/", None).expect("GET"))
        .find(|r| r.body == "web1\n")
        .expect("round robin reaches web1");
    let cookie = first.server_cookie().expect("SERVERID set");
    assert_eq!(
        cookie, s1.cookie,
        "cookie in response = cookie in show stat"
    );
    let pinned = Traffic::start(
        lb.frontend(),
        TrafficOptions {
            clients: 1,
            pinned: true,
            max_requests: 200,
            ..TrafficOptions::default()
        },
    )
    .expect("pinned traffic");

    // Drain web1 via the health file: NOLB, pinned clients stay, new ones go to web2.
    a.remove_health().expect("remove health");
    lb.wait_status("be_app", "slot1", "NOLB", WAIT)
        .expect("slot1 NOLB");
    let pinned_before = pinned.snapshot().sequence[0].len();
    for _ in 0..6 {
        let r = get(lb.frontend(), "/", Some(&cookie)).expect("pinned GET");
        assert_eq!(r.body, "web1\n", "pinned client must stay on draining web1");
        let r = get(lb.frontend(), "/", None).expect("new client GET");
        assert_eq!(r.body, "web2\n", "new clients must avoid NOLB web1");
    }
    std::thread::sleep(Duration::from_millis(300));
    let prep = pinned.stop();
    assert_eq!(prep.failed, 0, "{:?}", prep.failures);
    assert!(
        prep.sequence[0].len() > pinned_before,
        "pinned client made progress"
    );
    // The pinned client learnt a cookie from its first answer and kept its server.
    let pinned_servers = prep.servers_since(&[1]);
    assert_eq!(
        pinned_servers[0].len(),
        1,
        "pinned client switched: {prep:?}"
    );

    // Reload: slot addresses and admin states come back from the server-state-file.
    lb.runtime("set server be_app/slot2 state drain")
        .expect("drain slot2");
    lb.wait_status("be_app", "slot2", "DRAIN", WAIT)
        .expect("slot2 DRAIN");
    let old_pid = lb.pid();
    lb.reload().expect("reload");
    assert_ne!(lb.pid(), old_pid);
    let state = std::fs::read_to_string(lb.state_file()).expect("read state file");
    assert!(state.contains("slot1"), "{state}");
    let cookie_before = s1.cookie.clone();
    let s1 = lb.server("be_app", "slot1").expect("slot1 after reload");
    assert_eq!(s1.cookie, cookie_before, "dynamic cookie changed in reload");
    let s2 = lb.server("be_app", "slot2").expect("slot2 after reload");
    assert_eq!(
        s1.addr,
        a.addr().to_string(),
        "slot1 address lost in reload"
    );
    assert_eq!(
        s2.addr,
        b.addr().to_string(),
        "slot2 address lost in reload"
    );
    // Right after the reload it reads `DRAIN 1/2` while checks settle.
    assert!(
        s2.status.starts_with("DRAIN"),
        "admin drain lost in reload: {s2:?}"
    );
    lb.wait_status("be_app", "slot2", "DRAIN", WAIT)
        .expect("slot2 DRAIN after reload");
    assert_eq!(lb.server("be_app", "slot3").expect("slot3").status, "MAINT");
    // web1 still has no health file: it goes back to NOLB, never to plain UP.
    lb.wait_status("be_app", "slot1", "NOLB", WAIT)
        .expect("slot1 NOLB after reload");
    lb.runtime("set server be_app/slot2 state ready")
        .expect("ready slot2");
    lb.wait_status("be_app", "slot2", "UP", WAIT)
        .expect("slot2 UP");
    let r = get(lb.frontend(), "/", None).expect("new client after reload");
    assert_eq!(r.body, "web2\n", "new clients go to web2 after reload");
    let r = get(lb.frontend(), "/", Some(&cookie)).expect("pinned after reload");
    assert_eq!(
        r.body,
        "web1\n",
        "cookie still maps to web1 after reload; {:#?}\n{}",
        lb.show_stat()
            .expect("stat")
            .iter()
            .filter(|s| s.pxname == "be_app")
            .collect::<Vec<_>>(),
        lb.logs()
    );

    drop((lb, a, b));
    assert_no_strays(&wd);
}

#[test]
fn dynamic_servers_come_up_and_vanish_on_reload() {
    let wd = Workdir::new().expect("workdir");
    let (a, _b) = two_apaches(&wd);
    let mut lb = lb(
        &wd,
        vec![
            BackendSpec::slots("be_app", 2),
            BackendSpec::dynamic("be_dyn"),
        ],
    );
    let fe = lb.frontend_for("be_dyn").expect("be_dyn frontend");

    // 2.6 refuses cookies on dynamic servers.
    let refused = lb
        .runtime(&format!(
            "add server be_dyn/web1 {} check cookie web1",
            a.addr()
        ))
        .expect("runtime");
    assert!(
        refused.contains("not accepted for dynamic server"),
        "{refused:?}"
    );

    let added = lb
        .runtime(&format!("add server be_dyn/web1 {} check", a.addr()))
        .expect("add server");
    assert!(added.contains("New server registered"), "{added:?}");
    assert_eq!(lb.server("be_dyn", "web1").expect("web1").status, "MAINT");
    assert_eq!(
        get(fe, "/", None).expect("GET").status,
        503,
        "no server yet"
    );
    assert_eq!(
        lb.runtime("enable health be_dyn/web1").expect("rt").trim(),
        ""
    );
    assert_eq!(
        lb.runtime("enable server be_dyn/web1").expect("rt").trim(),
        ""
    );
    let s = lb
        .wait_server("be_dyn", "web1", WAIT, |s| {
            s.status == "UP" && s.check_status.contains("L7OK")
        })
        .expect("web1 UP after a check");
    assert_eq!(s.addr, a.addr().to_string());
    let r = get(fe, "/", None).expect("GET via be_dyn");
    assert_eq!(r.body, "web1\n");
    // HAProxy still inserts the cookie, with an empty value: no persistence.
    assert_eq!(r.server_cookie().as_deref(), Some(""), "{:?}", r.headers);

    lb.reload().expect("reload");
    assert!(
        lb.server("be_dyn", "web1").is_err(),
        "dynamic server survived reload"
    );
    assert_eq!(get(fe, "/", None).expect("GET").status, 503);
    drop((lb, a, _b));
    assert_no_strays(&wd);
}

#[test]
fn up_monitor_records_capacity_dips() {
    let wd = Workdir::new().expect("workdir");
    let (a, b) = two_apaches(&wd);
    let lb = lb(&wd, vec![BackendSpec::slots("be_app", 3)]);
    lb.attach_slot("be_app", "slot1", a.addr()).expect("attach");
    lb.attach_slot("be_app", "slot2", b.addr()).expect("attach");
    lb.wait_status("be_app", "slot1", "UP", WAIT).expect("UP");
    lb.wait_status("be_app", "slot2", "UP", WAIT).expect("UP");

    let mon = UpMonitor::start(&lb, &["be_app"], 2).expect("monitor");
    std::thread::sleep(Duration::from_millis(400));
    let calm = mon.snapshot();
    assert!(calm.samples >= 1 && calm.violations.is_empty(), "{calm:?}");
    assert_eq!(calm.min_up.get("be_app"), Some(&2));

    // NOLB is not up.
    b.remove_health().expect("remove health");
    lb.wait_status("be_app", "slot2", "NOLB", WAIT)
        .expect("NOLB");
    std::thread::sleep(Duration::from_millis(300));
    b.restore_health().expect("restore");
    lb.wait_status("be_app", "slot2", "UP", WAIT)
        .expect("UP again");
    std::thread::sleep(Duration::from_millis(300));
    let rep = mon.stop();
    assert_eq!(rep.min_up.get("be_app"), Some(&1), "{rep:?}");
    assert!(!rep.violations.is_empty());
    assert!(
        rep.violations
            .iter()
            .all(|v| v.up == 1 && v.backend == "be_app")
    );
    assert!(
        rep.violations[0].statuses.iter().any(|s| s == "slot2=NOLB"),
        "{:?}",
        rep.violations[0]
    );
    assert!(rep.samples > calm.samples);
    assert!(is_up_status("UP 1/2") && !is_up_status("DOWN 1/2") && !is_up_status("DRAIN"));
}

#[test]
fn traffic_counts_failures() {
    let wd = Workdir::new().expect("workdir");
    // No server attached: HAProxy answers 503, which must count as failure.
    let lb = lb(&wd, vec![BackendSpec::slots("be_app", 1)]);
    let t = Traffic::start(
        lb.frontend(),
        TrafficOptions {
            clients: 1,
            max_requests: 5,
            ..TrafficOptions::default()
        },
    )
    .expect("traffic");
    let rep = t.wait();
    assert_eq!((rep.ok, rep.failed), (0, 5), "{rep:?}");
    assert!(rep.failures[0].contains("HTTP 503"), "{:?}", rep.failures);

    // Nothing listening: connect errors.
    let port = free_tcp_port(host_ip(3)).expect("port");
    let addr = std::net::SocketAddr::from((host_ip(3), port));
    let rep = Traffic::start(
        addr,
        TrafficOptions {
            clients: 2,
            max_requests: 3,
            ..TrafficOptions::default()
        },
    )
    .expect("traffic")
    .wait();
    assert_eq!((rep.ok, rep.failed), (0, 6), "{rep:?}");
    assert!(rep.failures[0].contains("connect"), "{:?}", rep.failures);

    // Only loopback.
    assert!(
        Traffic::start(
            "192.0.2.1:80".parse().expect("addr"),
            TrafficOptions::default()
        )
        .is_err()
    );
}

#[test]
fn panicking_test_leaves_no_processes() {
    let wd = Workdir::new().expect("workdir");
    let parent = wd.path().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    let joined = std::thread::spawn(move || {
        let _a = Apache::start_with(
            host_ip(1),
            ApacheOptions {
                parent: Some(parent.clone()),
                ..ApacheOptions::default()
            },
        )
        .expect("apache");
        let _lb = Haproxy::start(HaproxyOptions {
            parent: Some(parent.clone()),
            ..HaproxyOptions::default()
        })
        .expect("haproxy");
        tx.send(stray_processes(&parent).expect("pgrep"))
            .expect("send");
        panic!("deliberate panic with apache and haproxy running");
    })
    .join();
    assert!(joined.is_err(), "thread should have panicked");
    let running = rx.recv().expect("process list from the panicking thread");
    assert!(running.iter().any(|l| l.contains("apache2")), "{running:?}");
    assert!(running.iter().any(|l| l.contains("haproxy")), "{running:?}");
    assert_no_strays(&wd);
}

#[test]
fn ip_only_slot_template_loses_addresses_on_reload() {
    // Pins down why SLOT_SERVER uses a host name: with the literal 0.0.0.0 template
    // a reload restores port and admin state from the server-state-file, not the IP.
    let wd = Workdir::new().expect("workdir");
    let mut lb = Haproxy::start(HaproxyOptions {
        backends: vec![BackendSpec::slots("be_app", 2)],
        parent: Some(wd.path().to_path_buf()),
        slot_server: SLOT_SERVER_IP_ONLY.to_owned(),
        ..HaproxyOptions::default()
    })
    .expect("haproxy");
    let port = free_tcp_port(host_ip(1)).expect("port");
    let target = std::net::SocketAddr::from((host_ip(1), port));
    lb.attach_slot("be_app", "slot1", target).expect("attach");
    assert_eq!(
        lb.server("be_app", "slot1").expect("slot1").addr,
        target.to_string()
    );
    lb.reload().expect("reload");
    let s1 = lb.server("be_app", "slot1").expect("slot1");
    assert_eq!(s1.addr, format!("0.0.0.0:{port}"));
    // Still enabled (admin state kept), but pointing nowhere.
    assert_ne!(s1.status, "MAINT");
    assert_eq!(lb.server("be_app", "slot2").expect("slot2").status, "MAINT");
}
