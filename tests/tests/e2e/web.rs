//! Issue 16: the agents' Prometheus metrics scraped by a real Prometheus, and the
//! alert rules shipped in packaging/ checked by promtool.

use std::time::Duration;

use std::net::SocketAddr;

use handover_tests::agents::{
    AgentProcess, AgentSpec, Coordinator, HostSpec, OneHost, Pki, output_text,
};
use handover_tests::fleet::hold_connection;
use handover_tests::haproxy::{Haproxy, HaproxyOptions};
use handover_tests::ports::host_ip;
use handover_tests::scenario::{Scenario, ScenarioOptions};
use handover_tests::web::{
    Browser, Prometheus, WebPage, enable_metrics, promtool, scrape, status_of,
};

/// How long Prometheus gets to see a change (it scrapes every 500 ms).
const SEEN_WITHIN: Duration = Duration::from_secs(30);

/// An app host (web-1) and an LB agent (lb-1, with HAProxy), both with
/// `[metrics]`: their output passes `promtool check metrics`, and a real
/// Prometheus scraping both sees web-1 drained and its sessions fall to 0 once
/// the last client leaves.
#[test]
fn prometheus_sees_a_drained_hosts_sessions_fall_to_zero() {
    let mut host = OneHost::start(host_ip(161)).expect("app host starts");
    let web = enable_metrics(&mut host.agent).expect("web-1 restarts with [metrics]");
    let dir = tempfile::tempdir().expect("tempdir");
    let lb_ip = host_ip(162);
    let haproxy = Haproxy::start(HaproxyOptions {
        ip: lb_ip,
        parent: Some(dir.path().to_owned()),
        ..HaproxyOptions::default()
    })
    .expect("haproxy starts");
    let mut lb_agent = AgentProcess::start(
        dir.path(),
        &host.pki,
        AgentSpec {
            name: "lb-1",
            ip: lb_ip,
            extra: format!(
                "\n[haproxy]\nsocket = {:?}\nbackend = \"be_app\"\n",
                haproxy.admin_socket().display().to_string()
            ),
        },
    )
    .expect("lb agent starts");
    let lb = enable_metrics(&mut lb_agent).expect("lb-1 restarts with [metrics]");

    for (name, addr) in [("web-1", web), ("lb-1", lb)] {
        let text = scrape(addr).expect("scrape");
        promtool(&["check", "metrics"], Some(&text))
            .unwrap_or_else(|e| panic!("{name}'s metrics fail promtool: {e:#}\n{text}"));
    }
    let lb_text = scrape(lb).expect("scrape lb-1");
    assert!(
        lb_text.contains("handover_lb_server_state{backend=\"be_app\",server=\"slot1\""),
        "{lb_text}"
    );

    let prometheus = Prometheus::start(
        &dir.path().join("prometheus"),
        lb_ip,
        &[("web-1", web), ("lb-1", lb)],
    )
    .expect("prometheus starts");
    for name in ["web-1", "lb-1"] {
        prometheus
            .wait_for(&format!("up{{host=\"{name}\"}}"), SEEN_WITHIN, |v| v == 1.0)
            .expect("Prometheus scrapes the agent");
    }
    prometheus
        .wait_for("handover_lb_haproxy_up{host=\"lb-1\"}", SEEN_WITHIN, |v| {
            v == 1.0
        })
        .expect("lb-1 reads HAProxy");

    let held = hold_connection(
        host.apache.addr(),
        "/index.html",
        None,
        Duration::from_secs(120),
    )
    .expect("hold a keep-alive connection");
    let out = host.coordinator.run(&["drain", "web-1"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let sessions = "handover_host_sessions{host=\"web-1\"}";
    prometheus
        .wait_for("handover_host_drained{host=\"web-1\"}", SEEN_WITHIN, |v| {
            v == 1.0
        })
        .expect("Prometheus sees web-1 drained");
    prometheus
        .wait_for(sessions, SEEN_WITHIN, |v| v >= 1.0)
        .expect("Prometheus sees the held session");
    drop(held);
    prometheus
        .wait_for(sessions, SEEN_WITHIN, |v| v == 0.0)
        .expect("Prometheus sees the sessions fall to 0");
    let before = prometheus
        .query(&format!("max_over_time({sessions}[5m])"))
        .expect("query history");
    assert!(
        matches!(before.as_slice(), [(_, max)] if *max >= 1.0),
        "the history keeps the session before the fall: {before:?}"
    );
    prometheus
        .wait_for(
            "handover_agent_requests_total{host=\"web-1\",kind=\"drain\",result=\"ok\",channel=\"quic\"}",
            SEEN_WITHIN,
            |v| v >= 1.0,
        )
        .expect("the drain request is counted");
    for expr in dashboard_queries() {
        prometheus
            .query(&expr)
            .unwrap_or_else(|e| panic!("the Grafana dashboard's {expr} fails: {e:#}"));
    }
}

/// Every PromQL query of packaging/grafana/handover.json, `$host` taken as all.
fn dashboard_queries() -> Vec<String> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/grafana/handover.json");
    let text = std::fs::read_to_string(&path).expect("read the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let queries: Vec<String> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(|e| e.replace("$host", ".*")))
        .collect();
    assert!(queries.len() >= 10, "{queries:?}");
    queries
}

/// The alert rules under packaging/prometheus/ load (`promtool check rules`) and
/// fire as their unit tests say: agent down, a host drained too long, an LB
/// server DOWN (`promtool test rules`).
#[test]
fn the_alert_rules_pass_promtool_check_and_test() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/prometheus");
    let rules = dir.join("handover-alerts.yml");
    let out = promtool(&["check", "rules", &rules.display().to_string()], None)
        .expect("promtool check rules");
    assert!(out.contains("SUCCESS: 3 rules found"), "{out}");
    let tests = dir.join("handover-alerts.test.yml");
    let out = promtool(&["test", "rules", &tests.display().to_string()], None)
        .expect("promtool test rules");
    assert!(out.contains("SUCCESS"), "{out}");
}

/// `handover web` binds plain HTTP to loopback only: anything else is refused
/// with the fix, before the config is read, and nothing listens (issue 16).
#[test]
fn the_page_refuses_a_non_loopback_address() {
    let port = handover_tests::ports::free_tcp_port(std::net::Ipv4Addr::LOCALHOST).expect("port");
    let listen = format!("0.0.0.0:{port}");
    let out = std::process::Command::new(handover_tests::agents::bin("handover"))
        .args(["web", "--listen", &listen])
        .output()
        .expect("run handover");
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("binds only to loopback"), "{text}");
    assert!(
        text.contains(&format!("ssh -L {port}:127.0.0.1:{port}")),
        "{text}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "something listens on {port} after the refusal"
    );
}

/// The page never changes anything: every mutating method on every path is
/// answered 405 (with `Allow: GET, HEAD`), while GET serves the page and state.
#[test]
fn the_page_answers_405_to_every_mutating_method() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::init(&dir.path().join("pki")).expect("CA");
    let nobody = SocketAddr::from((host_ip(163), 9));
    let host = HostSpec {
        name: "web-1".into(),
        address: nobody,
        roles: vec!["app".into()],
        app: None,
        extra: String::new(),
    };
    let coordinator =
        Coordinator::write(&dir.path().join("ops"), &pki, "ops", &[host]).expect("config");
    let page = WebPage::start(&coordinator, host_ip(163), dir.path()).expect("handover web starts");
    for path in ["/", "/api/state", "/events", "/no-such-page"] {
        for method in ["POST", "PUT", "PATCH", "DELETE"] {
            let code = status_of(page.addr, method, path).expect("answer");
            assert_eq!(code, 405, "{method} {path}");
        }
    }
    assert_eq!(status_of(page.addr, "GET", "/").expect("answer"), 200);
    let state = page.state().expect("state");
    assert_eq!(state["version"], 1, "{state}");
    assert!(state["rollout"].is_null(), "{state}");
}

/// What the test reads off the page, in the browser, without reloading it.
const READ_PAGE: &str = r#"
  const current = document.getElementById("current-step");
  return {
    marker: window.__handoverTestMarker === 1,
    state: document.getElementById("rollout-state").textContent,
    current: current ? current.textContent : null,
    hosts: [...document.querySelectorAll("tr[data-host]")].map((tr) => ({
      name: tr.dataset.host,
      drained: tr.textContent.includes("drained"),
      sessions: tr.querySelector("td[data-sessions]").dataset.sessions,
    })),
  };
"#;

/// During a rollout on the loopback fleet the page, opened once in headless
/// Chromium, shows every host, its current step advances without a reload, and
/// a drained host's sessions count down to zero (a held client, let go once the
/// page shows it); it ends showing the rollout succeeded. Screenshots at desktop
/// and phone width are saved under target/web-screenshots/.
#[test]
fn the_page_follows_a_rollout_live_in_a_browser() {
    let s = Scenario::start(ScenarioOptions::default()).expect("fleet starts");
    let page = WebPage::start(&s.coordinator, host_ip(164), s.dir()).expect("handover web starts");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let browser = Browser::start(s.dir(), 1400, 1000)
            .await
            .expect("chromium starts");
        let url = format!("http://{}/", page.addr);
        browser.client.goto(&url).await.expect("open the page");
        browser
            .eval("window.__handoverTestMarker = 1;")
            .await
            .expect("mark the page");
        let seen = watch_rollout(&s, &browser).await;
        let mut hosts: Vec<&str> = seen.hosts.iter().map(String::as_str).collect();
        hosts.sort_unstable();
        assert_eq!(
            hosts,
            ["lb-1", "web-1", "web-2", "web-3"],
            "every host shown"
        );
        assert!(
            seen.steps.len() >= 3,
            "the current step advanced without a reload: {:?}",
            seen.steps
        );
        assert!(
            seen.held_shown,
            "the held session was shown on drained web-1"
        );
        assert!(
            seen.zero_shown,
            "web-1's sessions were shown falling to 0: {:#?}",
            seen.trace
        );
        assert_eq!(seen.final_state, "succeeded", "{}", page.log_text());
        browser
            .screenshot("rollout-desktop-done")
            .await
            .expect("screenshot");
        browser
            .client
            .set_window_size(390, 844)
            .await
            .expect("phone width");
        tokio::time::sleep(Duration::from_millis(300)).await;
        browser
            .screenshot("rollout-phone-done")
            .await
            .expect("screenshot");
        browser.close().await.expect("close");
    });
}

/// What the browser showed over the rollout.
#[derive(Default)]
struct Seen {
    hosts: Vec<String>,
    steps: Vec<String>,
    held_shown: bool,
    zero_shown: bool,
    final_state: String,
    /// What web-1's row and the current step read, each change once (for a failure).
    trace: Vec<String>,
}

/// Starts the rollout, then reads the page every 250 ms until the rollout ends.
async fn watch_rollout(s: &Scenario, browser: &Browser) -> Seen {
    let web1 = s.app("web-1").apache.addr();
    let mut held =
        Some(hold_connection(web1, "/VERSION", None, Duration::from_secs(120)).expect("hold"));
    let plan = s
        .write_plan(
            "plan.toml",
            // A quiet period of a few seconds, as operators set it: the host
            // stays drained at 0 sessions that long before it is detached,
            // which the page (polling once a second) shows.
            &s.in_place_plan("v2", 1, 2)
                .replace("quiet = \"500ms\"", "quiet = \"3s\""),
        )
        .expect("plan");
    let mut rollout = s
        .coordinator
        .command(&["rollout", &plan.display().to_string(), "--yes"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the rollout");
    let mut seen = Seen::default();
    let mut ended_reads = 0;
    // Bounded: a rollout of three hosts takes well under this.
    for _ in 0..1200 {
        let v = browser.eval(READ_PAGE).await.expect("read the page");
        assert_eq!(v["marker"], true, "the page was reloaded");
        if let Some(step) = v["current"].as_str()
            && seen.steps.last().map(String::as_str) != Some(step)
        {
            seen.steps.push(step.to_owned());
        }
        let hosts = v["hosts"].as_array().cloned().unwrap_or_default();
        seen.hosts = hosts
            .iter()
            .filter_map(|h| h["name"].as_str().map(String::from))
            .collect();
        let web1 = hosts.iter().find(|h| h["name"] == "web-1");
        let drained = web1.is_some_and(|h| h["drained"] == true);
        let sessions = web1.and_then(|h| h["sessions"].as_str()).unwrap_or("");
        if drained && held.is_some() && sessions.parse::<u32>().is_ok_and(|n| n >= 1) {
            seen.held_shown = true;
            browser
                .screenshot("rollout-desktop-draining")
                .await
                .expect("screenshot");
            held = None;
        }
        let line = format!(
            "web-1 drained={drained} sessions={sessions:?} step={:?}",
            v["current"]
        );
        if seen.trace.last() != Some(&line) {
            seen.trace.push(line);
        }
        if drained && seen.held_shown && sessions == "0" {
            seen.zero_shown = true;
        }
        seen.final_state = v["state"].as_str().unwrap_or("").to_owned();
        if rollout.try_wait().expect("wait").is_some() {
            // A couple more reads after the process ends: the page follows the journal.
            ended_reads += 1;
            if ended_reads > 8 && seen.final_state != "running" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = rollout.kill();
    drop(held);
    seen
}
