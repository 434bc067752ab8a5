//! The binary as the coordinator runs it, where no AWS is needed: bad input is
//! refused before any call, and a call that cannot reach AWS names itself and
//! what to check. (The calls themselves are tested against moto_server in the
//! e2e suite, tests/tests/e2e/aws.rs.)

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn run(args: &[&str], settings: Option<String>, stdin: &str) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_handover-provider-aws"));
    cmd.args(args)
        .env_remove("HANDOVER_AWS_SETTINGS")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/handover-tests")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/handover-tests")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(s) = settings {
        cmd.env("HANDOVER_AWS_SETTINGS", s);
    }
    let mut child = cmd.spawn().expect("runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write");
    child.wait_with_output().expect("exits")
}

fn settings(port: u16) -> String {
    format!(
        r#"{{"aws": {{"fleet": "shop", "region": "eu-west-1", "endpoint": "http://127.0.0.1:{port}", "max_attempts": 1}}, "revision": "v2"}}"#
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn without_settings_it_says_where_they_come_from() {
    let out = run(&["array", "disable"], None, "");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no settings"), "{}", stderr(&out));
    let out = run(&["array", "disable"], Some("{\"aws\": {}}".into()), "");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("fleet"), "{}", stderr(&out));
}

#[test]
fn a_bad_launch_request_is_refused_before_any_call() {
    let port = closed_port();
    let out = run(&["launch"], Some(settings(port)), "launch two please");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("stdin is not a launch request"),
        "{}",
        stderr(&out)
    );
    let two_servers_one_token = format!(
        r#"{{"like": "web-1", "count": 2, "inputs": {{}}, "join": {{"ca_hash": "sha256:{}", "tokens": ["abc123.0123456789abcdef"]}}}}"#,
        "ab".repeat(32)
    );
    let out = run(&["launch"], Some(settings(port)), &two_servers_one_token);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("1 join token(s) for 2 server(s)"),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn a_call_that_cannot_reach_aws_names_the_call_and_what_to_check() {
    let out = run(&["terminate", "web-1"], Some(settings(closed_port())), "");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("ec2:DescribeInstances failed") && err.contains("check the region"),
        "{err}"
    );
}
