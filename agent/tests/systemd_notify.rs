//! The packaged unit is `Type=notify`: systemd considers the agent started only
//! when it says READY=1, and the agent must say it once it is listening, then
//! STOPPING=1 when it begins to shut down. Here the test plays systemd: it binds
//! the datagram socket named by NOTIFY_SOCKET and runs the real binary.

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use handover_common::names::{HostName, Role};
use handover_common::pki::{self, LeafSpec};

/// Kills the agent if the test fails before it stops on its own.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The next notification; on silence, fails with what the agent logged.
fn receive(socket: &UnixDatagram, log: &std::path::Path) -> String {
    let mut buf = [0u8; 512];
    match socket.recv(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(e) => panic!(
            "the agent sent nothing to NOTIFY_SOCKET ({e}); its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        ),
    }
}

#[test]
fn the_agent_tells_systemd_when_it_is_ready_and_when_it_stops() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let pki_dir = dir.join("pki");
    pki::init_ca(&pki_dir, false, 1).expect("make a CA");
    let name = HostName::new("web-1".to_string()).expect("valid name");
    let files = pki::issue(
        &pki_dir,
        &LeafSpec::new(Role::Agent, name, 1),
        pki::Existing::Refuse,
    )
    .expect("issue");
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"web-1\"\nlisten = \"127.0.0.1:0\"\nca = \"pki/ca.pem\"\ncert = {:?}\nkey = {:?}\nstate_dir = \"state\"\ncontrol_socket = \"state/control.sock\"\n",
            files.cert, files.key
        ),
    )
    .expect("write agent.toml");

    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind NOTIFY_SOCKET");
    // A safety net so a silent agent fails the test instead of hanging it.
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("set timeout");

    let log = dir.join("agent.log");
    let child = Command::new(env!("CARGO_BIN_EXE_handover-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .env("NO_COLOR", "1")
        .stderr(std::fs::File::create(&log).expect("create the agent's log"))
        .spawn()
        .expect("start handover-agent");
    let mut agent = Agent(child);

    assert_eq!(receive(&notify, &log), "READY=1\n");
    assert!(
        dir.join("state/control.sock").exists(),
        "READY=1 came before the control socket was bound"
    );

    let pid = nix::unistd::Pid::from_raw(i32::try_from(agent.0.id()).expect("pid fits"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("send SIGTERM");
    assert_eq!(receive(&notify, &log), "STOPPING=1\n");
    let status = agent.0.wait().expect("wait for the agent");
    assert!(
        status.success(),
        "the agent exited with {status} after SIGTERM"
    );
}
