//! Join tokens (issue 15): a new host runs `handover-agent join`, the coordinator
//! runs `handover enroll`, and the host then serves `handover status`. A token
//! used twice, an expired one, a wrong secret and a wrong CA hash are refused with
//! a message that names the problem, and nothing is issued.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use handover_tests::agents::{Coordinator, HostSpec, Pki, bin, handover, output_text};
use handover_tests::fleet::{free_udp_port, host_ip, serial};

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

/// A host running `handover-agent join`, with no certificate yet; killed on drop.
struct Joining {
    name: String,
    addr: SocketAddr,
    home: PathBuf,
    log: PathBuf,
    child: Child,
}

impl Joining {
    fn start(dir: &Path, name: &str, n: u8, token: &str, ca_hash: &str) -> Self {
        let ip = host_ip(n);
        let home = dir.join(name);
        std::fs::create_dir_all(&home).expect("home");
        let addr = SocketAddr::new(IpAddr::V4(ip), free_udp_port(ip).expect("port"));
        let path = |f: &str| home.join(f).display().to_string();
        let config = home.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "name = {name:?}\nlisten = \"{addr}\"\nca = {:?}\ncert = {:?}\nkey = {:?}\nstate_dir = {:?}\ncontrol_socket = {:?}\n",
                path("tls/ca.pem"),
                path("tls/agent.pem"),
                path("tls/agent.key"),
                path("state"),
                path("control.sock"),
            ),
        )
        .expect("config");
        let log = home.join("agent.log");
        let child = Command::new(bin("handover-agent"))
            .arg("--config")
            .arg(&config)
            .args(["join", "--ca-hash", ca_hash])
            .env("HANDOVER_JOIN_TOKEN", token)
            .env("HANDOVER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start handover-agent join");
        Joining {
            name: name.to_owned(),
            addr,
            home,
            log,
            child,
        }
    }

    fn host(&self) -> HostSpec {
        HostSpec {
            name: self.name.clone(),
            address: self.addr,
            roles: vec!["app".into()],
            app: None,
            extra: String::new(),
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the agent serves its control socket (enrolled and running).
    fn wait_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("agent exited with {status}: {}", self.log_text());
            }
            if std::os::unix::net::UnixStream::connect(self.home.join("control.sock")).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("agent never served after enrolling: {}", self.log_text());
    }

    fn has_certificate(&self) -> bool {
        self.home.join("tls/agent.pem").exists()
    }
}

impl Drop for Joining {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn enroll(coordinator: &Coordinator, pki: &Pki, host: &Joining) -> Output {
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
fn assert_nothing_issued(pki: &Pki, host: &Joining) {
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

    let mut fresh = Joining::start(dir.path(), "joiner-1", 41, &token, &ca_hash);
    let replay = Joining::start(dir.path(), "joiner-2", 42, &token, &ca_hash);
    let coordinator = Coordinator::write(
        &dir.path().join("bastion"),
        &pki,
        "ops",
        &[fresh.host(), replay.host()],
    )
    .expect("coordinator");

    let out = enroll(&coordinator, &pki, &fresh);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(fresh.has_certificate());
    fresh.wait_serving();
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
    let wrong_secret = Joining::start(dir.path(), "joiner-3", 43, &wrong, &ca_hash);
    let expired = Joining::start(dir.path(), "joiner-4", 44, &expiring, &ca_hash);
    let wrong_pin = Joining::start(dir.path(), "joiner-5", 45, &good, &other_hash);
    let coordinator = Coordinator::write(
        &dir.path().join("bastion"),
        &pki,
        "ops",
        &[wrong_secret.host(), expired.host(), wrong_pin.host()],
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
