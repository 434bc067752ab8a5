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
    // The hook's process group outlives the agent; end it here, not in 20 s.
    let pgid: i32 = std::fs::read_to_string(&started)
        .expect("pgid")
        .trim()
        .parse()
        .expect("a pid");
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGKILL,
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
