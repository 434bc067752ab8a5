//! One scrape: the status report as metrics, plus the counters.

use handover_common::proto::drain::{ApacheFigures, DrainStatus};
use handover_common::proto::lb::{LbStatus, ServerStats, StatusKind};
use handover_common::proto::status::StatusReport;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Counters;

/// The text a scrape answers: `report` (read just now) and `counters`.
pub fn encode(report: &StatusReport, counters: &Counters) -> String {
    let mut root = Registry::default();
    let handover = root.sub_registry_with_prefix("handover");
    let agent = handover.sub_registry_with_prefix("agent");
    agent.register(
        "build_info",
        "The agent's version (always 1)",
        info(vec![("version", report.version.clone())]),
    );
    agent.register(
        "uptime_seconds",
        "Seconds since the agent started",
        gauge(report.uptime_secs as i64),
    );
    counters.register(agent);
    if let Some(drain) = &report.drain {
        register_host(handover, drain);
    }
    if let Some(current) = report.release.as_ref().and_then(|r| r.current.as_ref()) {
        handover.register(
            "release_info",
            "The release `current` points at on this host (always 1)",
            info(vec![
                ("release", current.name.to_string()),
                ("rev", current.rev.clone()),
                ("sha", current.sha.clone()),
            ]),
        );
    }
    if let Some(lb) = &report.lb {
        register_lb(handover.sub_registry_with_prefix("lb"), lb);
    }
    let mut text = String::new();
    // Writing to a String cannot fail; an encoder error would be a bug in a label.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &root) {
        tracing::error!("cannot encode metrics: {e}");
    }
    text
}

/// An info metric as Prometheus' own text format has it: a gauge named `*_info`
/// whose labels carry the facts and whose value is 1 (the OpenMetrics `info`
/// type is not understood by `promtool check metrics` 2.42, Debian 12's).
fn info(labels: Vec<(&'static str, String)>) -> Family<Vec<(&'static str, String)>, Gauge> {
    let family = Family::<Vec<(&'static str, String)>, Gauge>::default();
    family.get_or_create(&labels).set(1);
    family
}

fn gauge(value: i64) -> Gauge {
    let g = Gauge::default();
    g.set(value);
    g
}

/// Drained, sessions and Apache's workers, each only when the agent can tell.
fn register_host(registry: &mut Registry, drain: &DrainStatus) {
    let host = registry.sub_registry_with_prefix("host");
    if let Some(drained) = drain.drained {
        host.register(
            "drained",
            "1 while the health-check file is away (HAProxy sends no new clients), else 0",
            gauge(i64::from(drained)),
        );
    }
    if let Some(count) = drain.sessions.as_ref().and_then(|s| s.count()) {
        host.register(
            "sessions",
            "Established connections on the app port",
            gauge(i64::from(count.total)),
        );
    }
    if let Some(apache) = drain.apache.as_ref().and_then(|a| a.figures()) {
        register_apache(registry.sub_registry_with_prefix("apache"), apache);
    }
}

fn register_apache(registry: &mut Registry, apache: &ApacheFigures) {
    if let Some(busy) = apache.busy_workers {
        registry.register(
            "busy_workers",
            "Apache workers serving a request (mod_status)",
            gauge(i64::from(busy)),
        );
    }
    if let Some(idle) = apache.idle_workers {
        registry.register(
            "idle_workers",
            "Apache workers waiting for a request (mod_status)",
            gauge(i64::from(idle)),
        );
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ServerLabels {
    backend: String,
    server: String,
    /// The app host the server carries ("" for servers the agent does not manage).
    /// Not `host`: that is the label a scrape config gives the agent itself.
    app_host: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabels {
    backend: String,
    server: String,
    app_host: String,
    state: &'static str,
}

/// Every state a server can be in, as the `state` label: one series each, 1 for
/// the current one, so an alert can say `state="DOWN"` and a graph can stack them.
const STATES: [(StatusKind, &str); 9] = [
    (StatusKind::Up, "UP"),
    (StatusKind::GoingDown, "GOING_DOWN"),
    (StatusKind::Down, "DOWN"),
    (StatusKind::GoingUp, "GOING_UP"),
    (StatusKind::Nolb, "NOLB"),
    (StatusKind::Drain, "DRAIN"),
    (StatusKind::Maint, "MAINT"),
    (StatusKind::NoCheck, "NO_CHECK"),
    (StatusKind::Other, "OTHER"),
];

fn labels(server: &ServerStats) -> ServerLabels {
    ServerLabels {
        backend: server.backend.clone(),
        server: server.haproxy_name.clone(),
        app_host: server
            .host
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
    }
}

/// HAProxy's view, per backend and server (on `lb` agents).
fn register_lb(registry: &mut Registry, lb: &LbStatus) {
    registry.register(
        "haproxy_up",
        "1 when HAProxy's runtime API answered this scrape, else 0",
        gauge(i64::from(lb.error.is_none())),
    );
    let state = Family::<StateLabels, Gauge>::default();
    let sessions = Family::<ServerLabels, Gauge>::default();
    let queued = Family::<ServerLabels, Gauge>::default();
    // Fresh families each scrape: `inc_by` from zero sets HAProxy's own counter.
    let total = Family::<ServerLabels, Counter>::default();
    let errors = Family::<ServerLabels, Counter>::default();
    for server in &lb.servers {
        let l = labels(server);
        let kind = server.status_kind();
        for (each, name) in STATES {
            state
                .get_or_create(&StateLabels {
                    backend: l.backend.clone(),
                    server: l.server.clone(),
                    app_host: l.app_host.clone(),
                    state: name,
                })
                .set(i64::from(each == kind));
        }
        sessions.get_or_create(&l).set(clamp(server.scur));
        queued.get_or_create(&l).set(clamp(server.qcur));
        total.get_or_create(&l).inc_by(server.stot);
        errors.get_or_create(&l).inc_by(server.hrsp_5xx);
    }
    registry.register(
        "server_state",
        "1 for the state HAProxy reports for the server (scraped through its runtime API)",
        state,
    );
    registry.register(
        "server_sessions",
        "Requests in flight on the server (HAProxy scur)",
        sessions,
    );
    registry.register(
        "server_queued_requests",
        "Requests queued for the server (HAProxy qcur)",
        queued,
    );
    registry.register(
        "server_handled_sessions",
        "Sessions the server has had since HAProxy started (HAProxy stot)",
        total,
    );
    registry.register(
        "server_http_5xx_responses",
        "HTTP 5xx answers from the server (HAProxy hrsp_5xx)",
        errors,
    );
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use handover_common::names::{HostName, ReleaseName};
    use handover_common::proto::deploy::{ReleaseOutcome, ReleaseRecord, ReleaseStatus};
    use handover_common::proto::drain::{ApacheReading, SessionCount, SessionReading};
    use handover_common::proto::lb::ServerKind;
    use handover_common::proto::status::HostStats;
    use handover_common::proto::{Failure, FailureKind, Request, Response};

    use super::*;
    use crate::caller::Caller;
    use crate::metrics::RequestKind;

    fn server(name: &str, host: Option<&str>, status: &str, scur: u64) -> ServerStats {
        ServerStats {
            backend: "app".into(),
            host: host.map(|h| HostName::new(h).expect("valid")),
            haproxy_name: name.into(),
            kind: ServerKind::Slot,
            addr: "127.0.1.2:8080".into(),
            status: status.into(),
            scur,
            qcur: 1,
            stot: 42,
            check_status: "L7OK".into(),
            hrsp_5xx: 3,
            fresh_check: None,
        }
    }

    /// A drained app host that is also an LB, with a release and Apache figures.
    fn report() -> StatusReport {
        StatusReport {
            name: "web-1".into(),
            version: "0.1.0".into(),
            uptime_secs: 5,
            host: HostStats {
                host_uptime_secs: 1,
                load: [0.0; 3],
                cpu_percent: 0.0,
                cpus: 2,
                memory_total: 1,
                memory_used: 1,
                agent_rss: 1,
            },
            drain: Some(DrainStatus {
                drained: Some(true),
                missing: false,
                health_file: None,
                sessions: Some(SessionReading::Counted(SessionCount {
                    total: 7,
                    holders: vec![],
                    source: "netlink".into(),
                })),
                apache: Some(ApacheReading::Figures(ApacheFigures {
                    busy_workers: Some(2),
                    idle_workers: Some(48),
                    graceful_workers: None,
                    conns_total: None,
                    conns_keep_alive: None,
                    total_accesses: None,
                })),
            }),
            release: Some(ReleaseStatus {
                current: Some(ReleaseRecord {
                    name: ReleaseName::new("20261203-v2").expect("valid"),
                    repo: "file:///r".into(),
                    rev: "v2".into(),
                    sha: "abc".into(),
                    created: "now".into(),
                    outcome: ReleaseOutcome::Activated,
                }),
                releases: 2,
            }),
            lb: Some(LbStatus {
                socket: "/s".into(),
                haproxy: None,
                error: None,
                servers: vec![
                    server("slot1", Some("web-1"), "NOLB", 4),
                    server("static", None, "DOWN", 0),
                ],
                reloads_seen: 0,
            }),
        }
    }

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    /// Each figure of the status report comes out under its conventional name,
    /// with the value the report has (issue 16).
    #[test]
    fn a_scrape_says_what_status_says() {
        let text = encode(&report(), &Counters::default());
        for (series, value) in [
            ("handover_host_drained ", "1"),
            ("handover_host_sessions ", "7"),
            ("handover_apache_busy_workers ", "2"),
            ("handover_apache_idle_workers ", "48"),
            ("handover_lb_haproxy_up ", "1"),
            (
                "handover_lb_server_sessions{backend=\"app\",server=\"slot1\",app_host=\"web-1\"} ",
                "4",
            ),
            (
                "handover_lb_server_state{backend=\"app\",server=\"slot1\",app_host=\"web-1\",state=\"NOLB\"} ",
                "1",
            ),
            (
                "handover_lb_server_state{backend=\"app\",server=\"slot1\",app_host=\"web-1\",state=\"UP\"} ",
                "0",
            ),
            (
                "handover_lb_server_state{backend=\"app\",server=\"static\",app_host=\"\",state=\"DOWN\"} ",
                "1",
            ),
            (
                "handover_lb_server_handled_sessions_total{backend=\"app\",server=\"slot1\",app_host=\"web-1\"} ",
                "42",
            ),
            (
                "handover_lb_server_http_5xx_responses_total{backend=\"app\",server=\"slot1\",app_host=\"web-1\"} ",
                "3",
            ),
        ] {
            let found = line(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
            assert_eq!(&found[series.len()..], value, "{found}");
        }
        assert!(
            text.contains(
                "handover_release_info{release=\"20261203-v2\",rev=\"v2\",sha=\"abc\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("handover_agent_build_info{version=\"0.1.0\"} 1"),
            "{text}"
        );
    }

    /// An agent without `[health]`, `[app]`, `[deploy]` or `[haproxy]` exports none
    /// of their series (absent, not a misleading 0).
    #[test]
    fn unconfigured_features_export_nothing() {
        let mut bare = report();
        (bare.drain, bare.release, bare.lb) = (None, None, None);
        let text = encode(&bare, &Counters::default());
        for absent in [
            "handover_host_",
            "handover_apache_",
            "handover_lb_",
            "handover_release",
        ] {
            assert!(line(&text, absent).is_none(), "{absent} in\n{text}");
        }
        assert!(line(&text, "handover_agent_build_info").is_some(), "{text}");
    }

    /// Requests are counted by kind, result and channel; a hook's time lands in
    /// the hook histogram, in seconds.
    #[test]
    fn counters_count_by_kind_and_result() {
        let counters = Counters::default();
        let failed = Response::Failed(Failure::new(FailureKind::Leased, "held"));
        let coordinator = Caller::Coordinator("bastion".into());
        counters.request(
            &coordinator,
            RequestKind::of(&Request::Status),
            &failed,
            Duration::ZERO,
        );
        counters.request(
            &coordinator,
            RequestKind::of(&Request::Status),
            &failed,
            Duration::ZERO,
        );
        let hook = handover_common::proto::deploy::DeployRequest::RunHook(
            handover_common::names::HookName::new("backup").expect("valid"),
        );
        counters.request(
            &Caller::Local,
            RequestKind::of(&Request::Deploy(hook)),
            &failed,
            Duration::from_millis(1500),
        );
        let text = encode(&report(), &counters);
        assert!(
            text.contains("handover_agent_requests_total{kind=\"status\",result=\"leased\",channel=\"quic\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("handover_agent_hook_duration_seconds_sum{result=\"leased\"} 1.5"),
            "{text}"
        );
        assert!(
            text.contains(
                "handover_agent_hook_duration_seconds_bucket{le=\"2.5\",result=\"leased\"} 1"
            ),
            "{text}"
        );
    }
}
