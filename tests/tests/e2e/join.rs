//! Join tokens (issue 15): a new host runs `handover-agent join`, the coordinator
//! runs `handover enroll`, and the host then serves `handover status`. A token
//! used twice, an expired one, a wrong secret and a wrong CA hash are refused with
//! a message that names the problem, and nothing is issued.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use handover_tests::agents::{Coordinator, HostSpec, Pki, handover, output_text};
use handover_tests::enroll::JoinAgent;
use handover_tests::fleet::{host_ip, serial};

/// `handover ca token create --json` → (token, ca hash).
fn create_token(pki: &Pki, ttl: &str) -> (String, String) {
    let dir = pki.dir.to_string_lossy().to_string();
    let out = handover(&[
        "ca", "token", "create", "--dir", &dir, "--ttl", ttl, "--json",
    ])
    .expect("token create");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("token JSON");
    let token = json["token"].as_str().expect("token").to_owned();
    let hash = json["ca_hash"].as_str().expect("ca_hash").to_owned();
    assert!(hash.starts_with("sha256:"), "{json}");
    (token, hash)
}

/// A host running `handover-agent join` as `name` on 127.0.1.`n`, with no
/// certificate yet; killed on drop.
fn joining(dir: &Path, name: &str, n: u8, token: &str, ca_hash: &str) -> JoinAgent {
    JoinAgent::start(&dir.join(name), name, host_ip(n), token, ca_hash, "")
        .expect("start handover-agent join")
}

/// The inventory entry of a joining host.
fn host_of(agent: &JoinAgent) -> HostSpec {
    HostSpec {
        name: agent.name.clone(),
        address: agent.addr,
        roles: vec!["app".into()],
        app: None,
        extra: String::new(),
    }
}

fn enroll(coordinator: &Coordinator, pki: &Pki, host: &JoinAgent) -> Output {
    coordinator.run(&[
        "enroll",
        &host.name,
        "--address",
        &host.addr.to_string(),
        "--dir",
        &pki.dir.to_string_lossy(),
        "--wait",
        "20s",
    ])
}

/// Nothing was issued to `name`: no certificate file, no line in the ledger.
fn assert_nothing_issued(pki: &Pki, host: &JoinAgent) {
    assert!(
        !pki.dir.join(format!("{}.pem", host.name)).exists(),
        "a certificate was written for {}",
        host.name
    );
    let ledger = std::fs::read_to_string(pki.dir.join("issued.tsv")).unwrap_or_default();
    assert!(
        !ledger.contains(&format!("\t{}\n", host.name)),
        "{} is in the ledger: {ledger}",
        host.name
    );
    assert!(!host.has_certificate(), "{} holds a certificate", host.name);
}

#[test]
fn a_fresh_agent_enrolls_with_a_token_then_serves_status_and_the_token_is_spent() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::init(&dir.path().join("pki")).expect("ca init");
    let (token, ca_hash) = create_token(&pki, "30m");

    let mut fresh = joining(dir.path(), "joiner-1", 41, &token, &ca_hash);
    let replay = joining(dir.path(), "joiner-2", 42, &token, &ca_hash);
    let coordinator = Coordinator::write(
        &dir.path().join("bastion"),
        &pki,
        "ops",
        &[host_of(&fresh), host_of(&replay)],
    )
    .expect("coordinator");

    let out = enroll(&coordinator, &pki, &fresh);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(fresh.has_certificate());
    fresh.wait_serving().expect("enrolled and serving");
    let (ok, status) = coordinator.status_json(&["joiner-1"]).expect("status");
    assert!(ok, "status failed after enrolling: {status}");
    assert!(
        status.to_string().contains("joiner-1"),
        "status names the host: {status}"
    );

    // The same single-use token, presented by another host.
    let out = enroll(&coordinator, &pki, &replay);
    assert!(
        !out.status.success(),
        "second use accepted: {}",
        output_text(&out)
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("already used"), "{text}");
    assert_nothing_issued(&pki, &replay);

    let list = handover(&[
        "ca",
        "token",
        "list",
        "--dir",
        &pki.dir.to_string_lossy(),
        "--json",
    ])
    .expect("list");
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).expect("list JSON");
    assert_eq!(list[0]["used"], 1, "{list}");
    assert_eq!(list[0]["state"], "used", "{list}");
}

#[test]
fn join_refuses_an_expired_token_a_wrong_secret_and_a_wrong_ca_hash() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::init(&dir.path().join("pki")).expect("ca init");
    let other_ca = Pki::init(&dir.path().join("other-pki")).expect("other ca init");
    let (good, ca_hash) = create_token(&pki, "30m");
    let (expiring, _) = create_token(&pki, "1s");
    let (_, other_hash) = create_token(&other_ca, "30m");

    // Same ID, last character of the secret changed.
    let mut wrong = good.clone();
    let last = wrong.pop().expect("token");
    wrong.push(if last == 'a' { 'b' } else { 'a' });
    let wrong_secret = joining(dir.path(), "joiner-3", 43, &wrong, &ca_hash);
    let expired = joining(dir.path(), "joiner-4", 44, &expiring, &ca_hash);
    let wrong_pin = joining(dir.path(), "joiner-5", 45, &good, &other_hash);
    let coordinator = Coordinator::write(
        &dir.path().join("bastion"),
        &pki,
        "ops",
        &[
            host_of(&wrong_secret),
            host_of(&expired),
            host_of(&wrong_pin),
        ],
    )
    .expect("coordinator");

    let out = enroll(&coordinator, &pki, &wrong_secret);
    assert!(!out.status.success(), "{}", output_text(&out));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("did not prove the secret"), "{text}");
    assert_nothing_issued(&pki, &wrong_secret);

    // Setup, not a timing assertion: the token lives 1 s, and is used after 2 s.
    std::thread::sleep(Duration::from_secs(2));
    let out = enroll(&coordinator, &pki, &expired);
    assert!(!out.status.success(), "{}", output_text(&out));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("expired"), "{text}");
    assert_nothing_issued(&pki, &expired);

    let out = enroll(&coordinator, &pki, &wrong_pin);
    assert!(!out.status.success(), "{}", output_text(&out));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("refused this coordinator"), "{text}");
    assert_nothing_issued(&pki, &wrong_pin);
    assert!(
        wrong_pin.log_text().contains("not the pinned"),
        "the host says why: {}",
        wrong_pin.log_text()
    );

    // The good token was never spent by any of these.
    let list = handover(&[
        "ca",
        "token",
        "list",
        "--dir",
        &pki.dir.to_string_lossy(),
        "--json",
    ])
    .expect("list");
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).expect("list JSON");
    let used: Vec<_> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|t| t["used"].as_u64().unwrap_or(99))
        .collect();
    assert_eq!(used, [0, 0], "{list}");
}
