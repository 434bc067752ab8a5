//! The real `handover-agent` binary: a daemon with a config in a tempdir, driven
//! through its control socket by `handover-agent deploy|releases|activate|hook`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use handover_common::names::{HostName, Role};
use handover_common::pki;
use serde::Serialize;

use crate::fixture::{Options, Repo, names_in, snapshot, write_config};

const AGENT: &str = env!("CARGO_BIN_EXE_handover-agent");

/// A running agent daemon; killed when dropped, even when a test panics.
struct Daemon {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn start(config: &Path, log: &Path) -> Daemon {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("agent log");
        let child = Command::new(AGENT)
            .arg("--config")
            .arg(config)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("agent starts");
        let mut daemon = Daemon {
            child: Some(child),
            config: config.to_owned(),
            log: log.to_owned(),
        };
        daemon.wait_ready();
        daemon
    }

    /// Waits until `handover-agent status` gets an answer (bounded, not timed).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "agent exited with {status}: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if self.cli(&["status"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "agent did not answer within 30s: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(AGENT)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("handover-agent runs")
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A host directory with certificates and a config.
fn host_dir(repo: &Repo) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = dir.path().join("host");
    let pki_dir = host.join("pki");
    std::fs::create_dir_all(&pki_dir).expect("mkdir");
    pki::init_ca(&pki_dir, false, 30).expect("CA");
    let name = HostName::new("web-1").expect("valid");
    pki::issue(
        &pki_dir,
        &pki::LeafSpec::new(Role::Agent, name, 30),
        pki::Existing::Refuse,
    )
    .expect("agent cert");
    let config = write_config(&host, &repo.url, &Options::default());
    (dir, config)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Everything in the host directory but the agent's own socket.
fn tree(host: &Path) -> Vec<(String, String)> {
    snapshot(host)
        .into_iter()
        .filter(|(p, _)| !p.ends_with("control.sock"))
        .collect()
}

#[test]
fn the_cli_refuses_bad_refs_and_repos_before_git_runs_and_writes_nothing() {
    let repo = Repo::new();
    let (dir, config) = host_dir(&repo);
    let host = dir.path().join("host");
    let daemon = Daemon::start(&config, &dir.path().join("agent.log"));

    let ok = daemon.cli(&["deploy", "--repo", &repo.url, "--ref", "v1"]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("current is now"), "{}", text(&ok));
    let before = tree(&host);
    let mirrors = names_in(&host.join("state/deploy/mirrors"));

    let marker = dir.path().join("x");
    let upload_pack = format!("--upload-pack=touch {}", marker.display());
    for bad in [
        upload_pack.as_str(),
        "-h",
        "--output=x",
        "a..b",
        "a b",
        "../x",
    ] {
        for args in [
            vec!["deploy", "--repo", &repo.url, "--ref", bad],
            vec!["deploy", "--repo", &repo.url, &format!("--ref={bad}")],
        ] {
            let out = daemon.cli(&args);
            assert!(
                !out.status.success(),
                "{bad:?} was accepted: {}",
                text(&out)
            );
            assert!(
                text(&out).contains("invalid revision"),
                "{bad:?}: {}",
                text(&out)
            );
        }
    }
    let out = daemon.cli(&[
        "deploy",
        "--repo",
        "file:///elsewhere/app.git",
        "--ref",
        "v2",
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("allowed_repos"), "{}", text(&out));
    let out = daemon.cli(&["hook", "not-configured"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("refused"), "{}", text(&out));

    // The same refs sent straight to the socket, bypassing the CLI's checks.
    for bad in [
        upload_pack.as_str(),
        "-h",
        "--output=x",
        "a..b",
        "a b",
        "../x",
    ] {
        let answer = send_raw_apply(&host.join("state/control.sock"), &repo.url, bad);
        assert!(answer.contains("invalid revision"), "{bad:?}: {answer}");
    }

    assert!(!marker.exists(), "git ran the upload-pack option");
    assert!(!host.join("x").exists() && !Path::new("x").exists());
    assert_eq!(tree(&host), before);
    assert_eq!(names_in(&host.join("state/deploy/mirrors")), mirrors);
    let out = daemon.cli(&["releases"]);
    assert!(text(&out).contains("current "), "{}", text(&out));
}

/// The wire shape of `RequestFrame { Request::Deploy(DeployRequest::Apply) }` with
/// plain strings, so a test can send what the typed API cannot build.
#[derive(Serialize)]
struct RawFrame {
    version: u16,
    rollout: Option<String>,
    request: RawRequest,
}

#[derive(Serialize)]
#[allow(dead_code)]
enum RawRequest {
    Status,
    Drain,
    Lb,
    Deploy(RawDeploy),
}

#[derive(Serialize)]
enum RawDeploy {
    Apply {
        repo: String,
        rev: String,
        hooks: Vec<String>,
        force: bool,
    },
}

/// Sends a raw apply over the control socket; returns the agent's answer as text.
fn send_raw_apply(socket: &Path, repo: &str, rev: &str) -> String {
    let frame = RawFrame {
        version: handover_common::proto::PROTOCOL_VERSION,
        rollout: None,
        request: RawRequest::Deploy(RawDeploy::Apply {
            repo: repo.to_string(),
            rev: rev.to_string(),
            hooks: vec![],
            force: false,
        }),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .expect("control socket");
        let (mut recv, mut send) = stream.into_split();
        handover_common::wire::write_frame(&mut send, &frame)
            .await
            .expect("send");
        match handover_common::wire::read_frame::<_, handover_common::proto::Response>(&mut recv)
            .await
        {
            Ok(Some(handover_common::proto::Response::Failed(f))) => f.to_string(),
            other => format!("unexpected answer {other:?}"),
        }
    })
}

#[test]
fn an_agent_killed_during_a_slow_hook_restarts_on_a_valid_release() {
    let repo = Repo::new();
    let (dir, config) = host_dir(&repo);
    let host = dir.path().join("host");
    let log = dir.path().join("agent.log");
    let mut daemon = Daemon::start(&config, &log);

    let ok = daemon.cli(&["deploy", "--repo", &repo.url, "--ref", "v1"]);
    assert!(ok.status.success(), "{}", text(&ok));
    let releases_before = names_in(&host.join("www/releases"));
    let current_before = std::fs::read_link(host.join("www/current")).expect("current");

    let mut deploy = Command::new(AGENT)
        .arg("--config")
        .arg(&config)
        .args(["deploy", "--repo", &repo.url, "--ref", "slow-hook"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("deploy starts");
    let started = host.join("www/slow-started");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !started.exists() {
        assert!(Instant::now() < deadline, "the slow hook never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The new release is on disk, mid-hook.
    assert_eq!(names_in(&host.join("www/releases")).len(), 2);
    daemon.kill(); // SIGKILL
    let _ = deploy.wait();
    // Issue 13, hole 9: the hook's process group outlived the agent. The kernel
    // now kills the hook's shell with the agent (PDEATHSIG); what it started (the
    // `sleep`) is ended by the restarted agent, which finds the group recorded.
    let pgid: i32 = std::fs::read_to_string(&started)
        .expect("pgid")
        .trim()
        .parse()
        .expect("a pid");
    let shell_gone = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pgid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pgid}/stat")).is_ok_and(|s| s.contains(") Z "))
    {
        assert!(
            Instant::now() < shell_gone,
            "the hook's shell outlived the agent"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        handover_agent::deploy::command::group_is_running(pgid),
        "the hook's child should still run until an agent ends it"
    );

    assert_eq!(
        std::fs::read_link(host.join("www/current")).expect("current"),
        current_before
    );
    assert_eq!(
        std::fs::read_to_string(host.join("www/current/VERSION")).expect("valid"),
        "v1\n"
    );

    let daemon = Daemon::start(&config, &log);
    assert!(
        !handover_agent::deploy::command::group_is_running(pgid),
        "the restarted agent left the hook's group running"
    );
    assert_eq!(names_in(&host.join("www/releases")), releases_before);
    assert_eq!(
        std::fs::read_to_string(host.join("www/current/VERSION")).expect("valid"),
        "v1\n"
    );
    let out = daemon.cli(&["releases", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(list["releases"].as_array().map(Vec::len), Some(1), "{list}");
    // The interrupted apply is on record as such.
    let state = std::fs::read_to_string(host.join("state/deploy/releases.json")).expect("state");
    assert!(state.contains("Interrupted"), "{state}");
}

/// Issue 13, hole 12: `handover-agent drain --wait --timeout` with a huge value
/// panicked. The CLI now refuses a timeout beyond its bound with the fix, before
/// anything is drained, and the agent keeps serving.
#[test]
fn a_huge_drain_timeout_is_refused_not_a_panic() {
    let repo = Repo::new();
    let (dir, config) = host_dir(&repo);
    let host = dir.path().join("host");
    std::fs::write(host.join("health.html"), "OK\n").expect("health file");
    let with_health = std::fs::read_to_string(&config).expect("config").replacen(
        "[deploy]",
        "[health]\nfile = \"health.html\"\n\n[app]\nlisten = \"127.0.0.1:1\"\n\n[deploy]",
        1,
    );
    std::fs::write(&config, with_health).expect("config");
    let log = dir.path().join("agent.log");
    let daemon = Daemon::start(&config, &log);
    for huge in [
        "500000000000y",
        "584542046090y",
        "18446744073709551615s",
        "31d",
    ] {
        let out = daemon.cli(&["drain", "--wait", "--timeout", huge]);
        let said = text(&out);
        assert!(!out.status.success(), "{huge} accepted: {said}");
        assert!(!said.contains("panicked"), "{huge}: {said}");
        assert!(said.contains("at most \"30days\""), "{huge}: {said}");
        assert!(host.join("health.html").exists(), "{huge} drained the host");
    }
    let status = daemon.cli(&["status"]);
    assert!(
        status.status.success(),
        "the agent stopped serving: {}",
        text(&status)
    );
    let agent_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!agent_log.contains("panicked"), "{agent_log}");
}

/// Issue 13, hole 10: access to the control socket was its file mode alone. Now
/// the agent checks every caller with SO_PEERCRED: even with the socket and its
/// directory opened up to everyone (a loosened mode), another user is refused.
#[test]
fn another_user_is_refused_by_peer_credentials_even_through_an_open_socket() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: only root can run the CLI as another user");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .expect("user nobody");
    let repo = Repo::new();
    let (dir, config) = host_dir(&repo);
    let host = dir.path().join("host");
    let log = dir.path().join("agent.log");
    let daemon = Daemon::start(&config, &log);
    let open = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    open(dir.path(), 0o755);
    open(&host, 0o755);
    open(&host.join("state"), 0o755);
    open(&host.join("state/control.sock"), 0o666);
    open(&config, 0o644);

    let out = Command::new(AGENT)
        .arg("--config")
        .arg(&config)
        .args(["releases", "--json"])
        .uid(nobody.uid.as_raw())
        .gid(nobody.gid.as_raw())
        .output()
        .expect("handover-agent runs as nobody");
    let said = text(&out);
    assert!(!out.status.success(), "nobody was served: {said}");
    assert!(
        said.contains(&format!(
            "uid {} may not use this agent's control socket",
            nobody.uid
        )),
        "{said}"
    );
    // Root still is.
    assert!(daemon.cli(&["releases", "--json"]).status.success());
}
