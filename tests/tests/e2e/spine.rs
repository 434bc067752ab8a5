//! Issue 2: the secure spine. Every rejection goes over real QUIC on loopback, and
//! after each one the agent must still serve a legitimate coordinator.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;

use handover_common::names::{HostName, Role};
use handover_common::pki::{self, LeafSpec};
use handover_common::proto::{FailureKind, Reply, Request, Response};
use handover_tests::agents::{Coordinator, HostSpec, Pki, output_text};
use handover_tests::config::AgentSections;
use handover_tests::fleet::OneAgent;
use handover_tests::rawquic;

fn one_agent(ip: Ipv4Addr) -> OneAgent {
    OneAgent::start(ip, &AgentSections::default()).expect("agent and coordinator config")
}

fn assert_still_serves(f: &OneAgent) {
    let (ok, json) = f.coordinator.status_json(&[]).expect("status");
    assert!(ok, "legitimate coordinator must still be served: {json}");
    assert_eq!(json[0]["reachable"], true, "{json}");
}

#[test]
fn status_reports_a_reachable_agent() {
    let f = one_agent(Ipv4Addr::new(127, 0, 1, 1));
    let (ok, json) = f.coordinator.status_json(&["web-1"]).expect("status");
    assert!(ok, "{json}");
    assert_eq!(json[0]["name"], "web-1");
    assert_eq!(json[0]["roles"][0], "app");
    assert_eq!(json[0]["report"]["name"], "web-1");
    assert_eq!(json[0]["report"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        json[0]["report"]["host"]["memory_total"]
            .as_u64()
            .unwrap_or(0)
            > 0
    );

    let text = f.coordinator.run(&["status"]);
    assert!(text.status.success(), "{}", output_text(&text));
    assert!(String::from_utf8_lossy(&text.stdout).contains("web-1"));
}

#[test]
fn unreachable_hosts_are_listed_with_a_reason_and_the_others_still_print() {
    let f = one_agent(Ipv4Addr::new(127, 0, 1, 2));
    let mut hosts = vec![HostSpec::of(&f.agent, &["app"])];
    hosts.push(HostSpec {
        name: "web-2".into(),
        // Nothing listens there.
        address: "127.0.1.250:9".parse().expect("addr"),
        roles: vec!["app".into()],
        app: None,
        extra: String::new(),
    });
    let c = Coordinator::write(&f.fleet.path().join("ops2"), &f.fleet.pki, "ops2", &hosts)
        .expect("config");
    let (ok, json) = c.status_json(&[]).expect("status");
    assert!(!ok, "exit status must be 1 when a host failed");
    assert_eq!(json[0]["reachable"], true, "{json}");
    assert_eq!(json[1]["reachable"], false, "{json}");
    assert!(
        json[1]["error"]
            .as_str()
            .unwrap_or("")
            .contains("no answer"),
        "{json}"
    );
}

#[test]
fn a_coordinator_certificate_from_another_ca_is_refused() {
    let f = one_agent(Ipv4Addr::new(127, 0, 1, 3));
    let other = Pki::init(&f.fleet.path().join("other-ca")).expect("second CA");
    let (cert, key) = other.issue("coordinator", "ops", &[]).expect("issue");
    // Trust our CA for the agent, but present a certificate from the other one.
    let c = Coordinator::write_with(
        &f.fleet.path().join("intruder"),
        &f.fleet.pki.ca(),
        &cert,
        &key,
        &[HostSpec::of(&f.agent, &["app"])],
    )
    .expect("config");
    let (ok, json) = c.status_json(&[]).expect("status");
    assert!(!ok);
    assert_eq!(json[0]["reachable"], false, "{json}");
    assert_still_serves(&f);
    assert!(f.agent.log_text().contains("refused a connection"));
}

#[test]
fn an_agent_certificate_cannot_act_as_coordinator() {
    let f = one_agent(Ipv4Addr::new(127, 0, 1, 4));
    // The coordinator CLI refuses to use it at all...
    let agent_cert = f.fleet.pki.dir.join("web-1.pem");
    let agent_key = f.fleet.pki.dir.join("web-1.key");
    let c = Coordinator::write_with(
        &f.fleet.path().join("as-agent"),
        &f.fleet.pki.ca(),
        &agent_cert,
        &agent_key,
        &[HostSpec::of(&f.agent, &["app"])],
    )
    .expect("config");
    let out = c.run(&["status"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs a coordinator certificate"),
        "{}",
        output_text(&out)
    );
    // ...and the agent refuses it on the wire, even from a client that tries.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let refused = rt.block_on(async {
        let config = rawquic::client_config(&f.fleet.pki.ca(), Some((&agent_cert, &agent_key)))?;
        let (_ep, conn) = rawquic::connect(config, f.agent.addr, "web-1").await?;
        rawquic::request(&conn, Request::Status).await
    });
    assert!(
        refused.is_err(),
        "agent served a client holding an agent certificate: {refused:?}"
    );
    assert_still_serves(&f);
}

#[test]
fn a_client_without_a_certificate_is_closed_on_its_first_request() {
    let f = one_agent(Ipv4Addr::new(127, 0, 1, 5));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let result = rt.block_on(async {
        let config = rawquic::client_config(&f.fleet.pki.ca(), None)?;
        // connect() may well succeed: TLS 1.3 refuses the client after its Finished.
        let (_ep, conn) = rawquic::connect(config, f.agent.addr, "web-1").await?;
        rawquic::request(&conn, Request::Status).await
    });
    assert!(
        result.is_err(),
        "first request without a client certificate must fail: {result:?}"
    );
    assert_still_serves(&f);
}

#[test]
fn an_agent_named_otherwise_than_the_inventory_is_refused() {
    let f = one_agent(Ipv4Addr::new(127, 0, 1, 6));
    let mut host = HostSpec::of(&f.agent, &["app"]);
    host.name = "web-9".into();
    let c = Coordinator::write(&f.fleet.path().join("ops-9"), &f.fleet.pki, "ops9", &[host])
        .expect("config");
    let (ok, json) = c.status_json(&[]).expect("status");
    assert!(!ok);
    assert_eq!(json[0]["reachable"], false);
    let error = json[0]["error"].as_str().unwrap_or("");
    assert!(error.contains("web-9"), "{error}");

    // A certificate for web-1 that also lists web-9 as a DNS name is still web-1.
    let mut spec = LeafSpec::new(Role::Agent, HostName::new("web-1").expect("name"), 1);
    spec.dns.push("web-9".into());
    let ca_cert = std::fs::read_to_string(f.fleet.pki.ca()).expect("ca");
    let ca_key = std::fs::read_to_string(f.fleet.pki.dir.join("ca.key")).expect("ca key");
    let (cert, key) = pki::new_leaf(&ca_cert, &ca_key, &spec).expect("leaf");
    std::fs::write(f.fleet.pki.dir.join("web-1.pem"), cert).expect("write");
    pki::write_private(&f.fleet.pki.dir.join("web-1.key"), key.as_bytes()).expect("write");
    let mut agent = f.agent;
    agent.kill();
    agent.spawn().expect("restart with the new certificate");
    let (ok, json) = c.status_json(&[]).expect("status");
    assert!(
        !ok,
        "an agent certificate for web-1 must not pass as web-9: {json}"
    );
}

#[test]
fn expired_certificates_are_refused_on_both_sides() {
    let f = one_agent(Ipv4Addr::new(127, 0, 1, 7));
    let ca_cert = std::fs::read_to_string(f.fleet.pki.ca()).expect("ca");
    let ca_key = std::fs::read_to_string(f.fleet.pki.dir.join("ca.key")).expect("ca key");
    let past = |role, name: &str| {
        let mut spec = LeafSpec::new(role, HostName::new(name).expect("name"), 1);
        spec.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(10);
        spec.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        pki::new_leaf(&ca_cert, &ca_key, &spec).expect("leaf")
    };
    // An expired coordinator certificate.
    let (cert, key) = past(Role::Coordinator, "old-ops");
    let dir = f.fleet.path().join("expired");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("old-ops.pem"), cert).expect("write");
    pki::write_private(&dir.join("old-ops.key"), key.as_bytes()).expect("write");
    let c = Coordinator::write_with(
        &dir,
        &f.fleet.pki.ca(),
        &dir.join("old-ops.pem"),
        &dir.join("old-ops.key"),
        &[HostSpec::of(&f.agent, &["app"])],
    )
    .expect("config");
    let (ok, json) = c.status_json(&[]).expect("status");
    assert!(!ok, "{json}");
    assert_still_serves(&f);

    // An expired agent certificate.
    let (cert, key) = past(Role::Agent, "web-1");
    std::fs::write(f.fleet.pki.dir.join("web-1.pem"), cert).expect("write");
    pki::write_private(&f.fleet.pki.dir.join("web-1.key"), key.as_bytes()).expect("write");
    let mut agent = f.agent;
    agent.kill();
    agent.spawn().expect("restart with the expired certificate");
    let (ok, json) = f.coordinator.status_json(&[]).expect("status");
    assert!(!ok);
    let error = json[0]["error"].as_str().unwrap_or("");
    assert!(error.to_lowercase().contains("expired"), "{error}");
}

#[test]
fn malformed_frames_close_only_their_stream() {
    let f = one_agent(Ipv4Addr::new(127, 0, 1, 8));
    let coordinator_cert = f.fleet.pki.dir.join("ops.pem");
    let coordinator_key = f.fleet.pki.dir.join("ops.key");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let config = rawquic::client_config(
            &f.fleet.pki.ca(),
            Some((&coordinator_cert, &coordinator_key)),
        )
        .expect("client config");
        let (_ep, conn) = rawquic::connect(config, f.agent.addr, "web-1")
            .await
            .expect("connect");

        let good = handover_common::wire::encode(&handover_common::proto::RequestFrame::new(
            Request::Status,
        ))
        .expect("encode");
        let mut trailing = good.clone();
        let len = u32::from_be_bytes(good[..4].try_into().expect("4")) + 3;
        trailing[..4].copy_from_slice(&len.to_be_bytes());
        trailing.extend_from_slice(&[0, 0, 0]);
        let mut unknown_tag = good.clone();
        // version (u16 varint 1), rollout None (0), then the Request tag: make it 99.
        let tag_at = 4 + 2;
        unknown_tag[tag_at] = 99;
        let random: Vec<u8> = (0..64u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let mut random_frame = (random.len() as u32).to_be_bytes().to_vec();
        random_frame.extend_from_slice(&random);

        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("over the limit", (2u32 << 20).to_be_bytes().to_vec()),
            ("truncated", good[..good.len() - 1].to_vec()),
            ("random bytes", random_frame),
            ("trailing bytes", trailing),
            ("unknown enum tag", unknown_tag),
        ];
        for (what, bytes) in cases {
            let responses = rawquic::send_raw(&conn, &bytes).await;
            match responses {
                Ok(responses) => {
                    assert!(
                        matches!(
                            responses.as_slice(),
                            [Response::Failed(f)] if f.kind == FailureKind::BadRequest
                        ),
                        "{what}: expected one BadRequest, got {responses:?}"
                    );
                }
                Err(e) => panic!("{what}: the agent must answer with an error, got {e:#}"),
            }
            // The same connection still serves a good request on a new stream.
            let ok = rawquic::request(&conn, Request::Status)
                .await
                .expect("status after bad frame");
            assert!(
                matches!(ok.as_slice(), [Response::Done(Reply::Status(_))]),
                "{what}: {ok:?}"
            );
        }
    });
    assert_still_serves(&f);
}

#[test]
fn the_agent_refuses_to_start_with_another_hosts_certificate() {
    let f = one_agent(Ipv4Addr::new(127, 0, 1, 9));
    f.fleet
        .pki
        .issue("agent", "web-2", &[])
        .expect("issue web-2");
    let text = std::fs::read_to_string(&f.agent.config).expect("config");
    let other = f.fleet.path().join("web-2.toml");
    std::fs::write(
        &other,
        text.replace("web-1.pem", "web-2.pem")
            .replace("web-1.key", "web-2.key")
            .replace("control.sock", "control-2.sock")
            .replace(&f.agent.addr.port().to_string(), "0"),
    )
    .expect("write");
    let out = std::process::Command::new(handover_tests::agents::bin("handover-agent"))
        .args(["run", "--config"])
        .arg(&other)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("certificate of \"web-2\"") && err.contains("\"web-1\""),
        "{err}"
    );
}

#[test]
fn config_errors_name_the_file_and_the_fix() {
    let f = one_agent(Ipv4Addr::new(127, 0, 1, 10));
    let run = |config: &std::path::Path| {
        std::process::Command::new(handover_tests::agents::bin("handover-agent"))
            .args(["run", "--config"])
            .arg(config)
            .output()
            .expect("run")
    };
    let base = std::fs::read_to_string(&f.agent.config).expect("config");

    let unknown = f.fleet.path().join("unknown-key.toml");
    std::fs::write(&unknown, format!("{base}\nlisten_port = 9\n")).expect("write");
    let err = String::from_utf8_lossy(&run(&unknown).stderr).to_string();
    assert!(
        err.contains("unknown field `listen_port`") && err.contains("unknown-key.toml"),
        "{err}"
    );

    let missing = f.fleet.path().join("nope.toml");
    let err = String::from_utf8_lossy(&run(&missing).stderr).to_string();
    assert!(
        err.contains("nope.toml") && err.contains("--config"),
        "{err}"
    );

    let open_key = f.fleet.path().join("open-key.toml");
    let key_copy = f.fleet.path().join("open.key");
    std::fs::copy(f.fleet.pki.dir.join("web-1.key"), &key_copy).expect("copy");
    std::fs::set_permissions(&key_copy, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let key_line = format!(
        "key = {:?}",
        f.fleet.pki.dir.join("web-1.key").display().to_string()
    );
    let new_line = format!("key = {:?}", key_copy.display().to_string());
    std::fs::write(&open_key, base.replace(&key_line, &new_line)).expect("write");
    let err = String::from_utf8_lossy(&run(&open_key).stderr).to_string();
    assert!(
        err.contains("chmod 600") && err.contains("open.key"),
        "{err}"
    );

    let garbage_key = f.fleet.path().join("garbage.key");
    pki::write_private(&garbage_key, b"not a key").expect("write");
    let garbage = f.fleet.path().join("garbage-key.toml");
    let new_line = format!("key = {:?}", garbage_key.display().to_string());
    std::fs::write(&garbage, base.replace(&key_line, &new_line)).expect("write");
    let err = String::from_utf8_lossy(&run(&garbage).stderr).to_string();
    assert!(
        err.contains("garbage.key") && err.contains("private key"),
        "{err}"
    );

    // `ca issue` refuses a CA key others can read, and writes nothing.
    std::fs::set_permissions(
        f.fleet.pki.dir.join("ca.key"),
        std::fs::Permissions::from_mode(0o640),
    )
    .expect("chmod");
    let out = std::process::Command::new(handover_tests::agents::bin("handover"))
        .args(["ca", "issue", "--dir"])
        .arg(&f.fleet.pki.dir)
        .args(["--role", "agent", "--name", "web-3"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600") && err.contains("ca.key"), "{err}");
    assert!(!f.fleet.pki.dir.join("web-3.pem").exists());

    // The agent that was running throughout is untouched.
    assert_still_serves(&f);
}

#[test]
fn sigterm_stops_the_agent_cleanly() {
    let f = one_agent(Ipv4Addr::new(127, 0, 1, 11));
    let mut agent = f.agent;
    let status = agent.stop().expect("stop");
    assert!(status.success(), "{status}");
    assert!(!agent.control_socket.exists(), "control socket left behind");
    let out = agent.cli(&["status"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is handover-agent running"),
        "{}",
        output_text(&out)
    );
}
