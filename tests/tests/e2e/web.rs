//! Issue 16: the agents' Prometheus metrics scraped by a real Prometheus, and the
//! alert rules shipped in packaging/ checked by promtool.

use std::time::Duration;

use handover_tests::agents::{AgentProcess, AgentSpec, OneHost, output_text};
use handover_tests::fleet::hold_connection;
use handover_tests::haproxy::{Haproxy, HaproxyOptions};
use handover_tests::ports::host_ip;
use handover_tests::web::{Prometheus, enable_metrics, promtool, scrape};

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
