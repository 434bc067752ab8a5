//! Issue 12, the agent side of the surge runbook on the surge fixture: the db
//! host's hooks (backup with a checked artifact, migrate with inputs, dbcheck and
//! its switch), the app error log read through rotation on a real Apache, and the
//! test provider's contract.

use std::io::Write as _;
use std::process::{Command, Stdio};

use handover_common::proto::applog::{AppLogReport, AppLogRequest, LogCursor};
use handover_common::proto::{Reply, Request, Response};
use handover_tests::agents::{Coordinator, HostSpec, output_text};
use handover_tests::http::get;
use handover_tests::rawquic;
use handover_tests::surge::{Misbehave, SurgeFleet, SurgeOptions};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runbook steps 1, 2 and 7's DB check, through `handover hook` to real agents.
#[test]
fn db_hooks_back_up_with_a_checked_artifact_migrate_with_inputs_and_check_the_db() {
    let fleet = SurgeFleet::start(SurgeOptions::default()).expect("surge fleet");
    let c = &fleet.coordinator;

    let out = c.run(&["hook", "db-1", "backup"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let backups = fleet.backups().expect("backups");
    assert_eq!(backups.len(), 1, "{backups:?}");
    let file = backups[0].display().to_string();
    let sum = Command::new("sha256sum")
        .arg(&file)
        .output()
        .expect("sha256sum");
    let sum = stdout(&sum);
    let sum = sum.split_whitespace().next().expect("a sum");
    let artifact_line = stdout(&out)
        .lines()
        .find(|l| l.contains("artifact"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no artifact line: {}", output_text(&out)));
    assert!(artifact_line.contains(&file), "{artifact_line}");
    assert!(artifact_line.contains(sum), "{artifact_line}");
    let out = c.run(&["hook", "--json", "db-1", "backup"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(stdout(&out).contains("\"sha256\""), "{}", output_text(&out));

    assert_eq!(fleet.migrate_runs().expect("runs"), 0);
    let value = "prod; echo injected $(id -u)";
    for run in 1..=2 {
        let input = format!("APP_ENV={value}");
        let out = c.run(&["hook", "--input", &input, "db-1", "migrate"]);
        assert!(out.status.success(), "{}", output_text(&out));
        assert!(
            stdout(&out).contains(&format!("migrated for {value} (run {run})")),
            "{}",
            output_text(&out)
        );
        assert_eq!(fleet.migrate_runs().expect("runs"), run);
    }
    let out = c.run(&["hook", "--input", "app_env=x", "db-1", "migrate"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("APP_ENV"),
        "{}",
        output_text(&out)
    );
    assert_eq!(
        fleet.migrate_runs().expect("runs"),
        2,
        "a refused call ran nothing"
    );

    let out = c.run(&["hook", "web-4", "dbcheck"]);
    assert!(out.status.success(), "{}", output_text(&out));
    fleet.fail_dbcheck_on("web-4").expect("switch");
    let out = c.run(&["hook", "web-4", "web-5", "dbcheck"]);
    assert!(!out.status.success());
    let text = output_text(&out);
    assert!(text.contains("web-4 cannot reach the database"), "{text}");
    assert!(text.contains("web-5 reaches the database"), "{text}");
}

async fn app_errors(
    fleet: &SurgeFleet,
    host: &str,
    addr: std::net::SocketAddr,
    since: Option<LogCursor>,
) -> AppLogReport {
    let config = rawquic::client_config(
        &fleet.pki.ca(),
        Some((
            &fleet.pki.dir.join("ops.pem"),
            &fleet.pki.dir.join("ops.key"),
        )),
    )
    .expect("client config");
    let (_ep, conn) = rawquic::connect(config, addr, host).await.expect("connect");
    let responses = rawquic::request(&conn, Request::AppLog(AppLogRequest::Errors { since }))
        .await
        .expect("request");
    match responses.as_slice() {
        [Response::Done(Reply::AppLog(report))] => report.clone(),
        other => panic!("unexpected answer {other:?}"),
    }
}

/// Runbook step 17's log watch on a real Apache: a broken release's errors are
/// counted (Apache writes them at `alert` level), a rotated log is followed, and
/// the broken host answers 500 while HAProxy's check keeps it UP.
#[test]
fn the_agent_counts_a_real_apaches_error_lines_and_follows_rotation() {
    let fleet = SurgeFleet::start(SurgeOptions::default()).expect("surge fleet");
    let host = &fleet.standby[0];
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let start = rt.block_on(app_errors(&fleet, &host.name, host.agent.addr, None));
    assert_eq!(start.errors, 0);

    fleet.break_app(&host.name).expect("break");
    for _ in 0..3 {
        let r = get(host.apache.addr(), "/", None).expect("GET /");
        assert_eq!(r.status, 500, "{r:?}");
    }
    let health = get(host.apache.addr(), "/health.html", None).expect("GET health");
    assert_eq!(health.status, 200);
    let seen = rt.block_on(app_errors(
        &fleet,
        &host.name,
        host.agent.addr,
        Some(start.cursor),
    ));
    assert!(seen.errors >= 3, "{seen:?}");
    assert!(
        seen.last
            .iter()
            .any(|l| l.contains("ThisIsNotAnApacheDirective")),
        "{seen:?}"
    );

    // Rotated: the old file moved away, Apache told to reopen its log.
    let log = host.apache.error_log().to_owned();
    std::fs::rename(&log, log.with_extension("log.1")).expect("rotate");
    host.apache.graceful().expect("graceful");
    fleet.repair_app(&host.name).expect("repair");
    let r = get(host.apache.addr(), "/", None).expect("GET /");
    assert_eq!(r.status, 200, "{r:?}");
    let after = rt.block_on(app_errors(
        &fleet,
        &host.name,
        host.agent.addr,
        Some(seen.cursor),
    ));
    assert!(after.restarted, "{after:?}");
    assert_ne!(after.cursor.ino, seen.cursor.ino);
}

fn provider(fleet: &SurgeFleet, op: &str, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(fleet.provider_dir.join(op))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the provider");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

/// The test provider keeps the contract the surge engine relies on: launched
/// hosts run (with agents a coordinator can reach under their names), terminate
/// stops them, array calls are recorded, misbehaviour on request.
#[test]
fn the_test_provider_launches_reachable_hosts_terminates_them_and_misbehaves_on_request() {
    let fleet = SurgeFleet::start(SurgeOptions::default()).expect("surge fleet");
    let request = r#"{"like": "web-1", "count": 2, "inputs": {"APP_ENV": "test"}}"#;
    let out = provider(&fleet, "launch", &[], request);
    assert!(out.status.success(), "{}", output_text(&out));
    let launched: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let launched = launched.as_array().expect("a list").clone();
    assert_eq!(launched.len(), 2, "{launched:?}");
    let names: Vec<String> = launched
        .iter()
        .map(|h| h["name"].as_str().expect("name").to_owned())
        .collect();

    let mut specs = Vec::new();
    for h in &launched {
        let app: std::net::SocketAddr = h["app"].as_str().expect("app").parse().expect("addr");
        let r = get(app, "/VERSION", None).expect("GET /VERSION");
        assert_eq!(r.body.trim(), "v1");
        specs.push(HostSpec {
            name: h["name"].as_str().expect("name").to_owned(),
            address: h["address"]
                .as_str()
                .expect("address")
                .parse()
                .expect("addr"),
            roles: vec!["app".into()],
            app: Some(app),
            extra: String::new(),
        });
    }
    let ops = Coordinator::write_with(
        &fleet.dir().join("ops-launched"),
        &fleet.pki.ca(),
        &fleet.pki.dir.join("ops.pem"),
        &fleet.pki.dir.join("ops.key"),
        &specs,
    )
    .expect("coordinator config");
    let mut args = vec!["hook"];
    args.extend(names.iter().map(String::as_str));
    args.push("dbcheck");
    let out = ops.run(&args);
    assert!(out.status.success(), "{}", output_text(&out));

    let mut args: Vec<&str> = names.iter().map(String::as_str).collect();
    let out = provider(&fleet, "terminate", &args, "");
    assert!(out.status.success(), "{}", output_text(&out));
    for h in &fleet.launched().expect("launched") {
        assert!(h.terminated, "{h:?}");
        assert!(
            get(h.app, "/VERSION", None).is_err(),
            "{} still serves",
            h.name
        );
        let left = handover_tests::workdir::stray_processes(&h.dir).expect("pgrep");
        assert!(left.is_empty(), "{left:?}");
    }
    for command in ["disable", "update", "enable"] {
        let out = provider(&fleet, "array", &[command], "");
        assert!(out.status.success(), "{}", output_text(&out));
    }
    args.insert(0, "terminate");
    assert_eq!(
        fleet.provider_calls(),
        vec![
            "launch like=web-1 count=2 inputs=APP_ENV".to_owned(),
            args.join(" "),
            "array disable".into(),
            "array update".into(),
            "array enable".into(),
        ]
    );

    fleet
        .provider_misbehaves("array", Some(Misbehave::Fail))
        .expect("switch");
    let out = provider(&fleet, "array", &["disable"], "");
    assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("failed on purpose"));
    fleet
        .provider_misbehaves("launch", Some(Misbehave::Garbage))
        .expect("switch");
    let out = provider(&fleet, "launch", &[], request);
    assert!(out.status.success());
    assert!(serde_json::from_slice::<serde_json::Value>(&out.stdout).is_err());
    assert_eq!(
        fleet.launched().expect("launched").len(),
        2,
        "garbage launched nothing"
    );
}
