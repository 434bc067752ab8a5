//! Agents and the coordinator as a user runs them: the real binaries, real
//! certificates from `handover ca`, config files in a temporary directory.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::ports::free_udp_port;

/// Path of a workspace binary (`handover`, `handover-agent`), next to the test
/// executable's `deps/` directory (`cargo test --workspace` builds them), or in
/// `HANDOVER_BIN_DIR` when set (a benchmark of the release binaries run from a
/// dev-profile harness).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    if let Some(over) = std::env::var_os("HANDOVER_BIN_DIR") {
        dir = PathBuf::from(over);
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo test --workspace builds it)",
        path.display()
    );
    path
}

/// Runs `handover` with `args` (no config) and fails on a non-zero exit.
pub fn handover(args: &[&str]) -> anyhow::Result<Output> {
    let out = Command::new(bin("handover"))
        .args(args)
        .output()
        .context("running handover")?;
    if !out.status.success() {
        bail!(
            "handover {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// A private CA made with `handover ca init`, issuing with `handover ca issue`.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The directory holding ca.pem, ca.key and issued files.
    pub dir: PathBuf,
}

impl Pki {
    /// `handover ca init --dir DIR`.
    pub fn init(dir: &Path) -> anyhow::Result<Self> {
        handover(&["ca", "init", "--dir", &dir.to_string_lossy()])?;
        Ok(Pki {
            dir: dir.to_owned(),
        })
    }

    /// `handover ca issue` for `name`; returns (cert, key) paths.
    pub fn issue(
        &self,
        role: &str,
        name: &str,
        ips: &[IpAddr],
    ) -> anyhow::Result<(PathBuf, PathBuf)> {
        let dir = self.dir.to_string_lossy().to_string();
        let mut args = vec!["ca", "issue", "--dir", &dir, "--role", role, "--name", name];
        let ip_texts: Vec<String> = ips.iter().map(ToString::to_string).collect();
        for ip in &ip_texts {
            args.push("--ip");
            args.push(ip);
        }
        handover(&args)?;
        Ok((
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        ))
    }

    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
}

/// How to start one agent.
pub struct AgentSpec<'a> {
    /// Host name (inventory name, certificate name).
    pub name: &'a str,
    /// Its loopback address, 127.0.1.N.
    pub ip: Ipv4Addr,
    /// Extra TOML appended to the config: feature sections, rendered with
    /// [`crate::config::AgentSections::render`].
    pub extra: String,
}

/// A running `handover-agent run`, killed on drop.
pub struct AgentProcess {
    /// Host name.
    pub name: String,
    /// The QUIC address it listens on.
    pub addr: SocketAddr,
    /// Its config file.
    pub config: PathBuf,
    /// Its control socket.
    pub control_socket: PathBuf,
    /// Its state_dir.
    pub state_dir: PathBuf,
    /// Its log (stderr).
    pub log: PathBuf,
    child: Option<Child>,
    /// The fleet lock, held from the start until the agent is dropped.
    _serial: crate::fleet::SerialGuard,
}

impl AgentProcess {
    /// Writes a config under `dir/<name>/`, issues a certificate, starts the agent
    /// and waits until it serves its control socket. Takes the fleet lock first
    /// (see [`crate::fleet`]).
    pub fn start(dir: &Path, pki: &Pki, spec: AgentSpec<'_>) -> anyhow::Result<Self> {
        let serial = crate::fleet::serial();
        let home = dir.join(spec.name);
        std::fs::create_dir_all(&home)?;
        let (cert, key) = pki.issue("agent", spec.name, &[IpAddr::V4(spec.ip)])?;
        let port = free_udp_port(spec.ip)?;
        let addr = SocketAddr::new(IpAddr::V4(spec.ip), port);
        let state_dir = home.join("state");
        let control_socket = home.join("control.sock");
        let mut text = crate::config::AgentConfig {
            name: spec.name.to_owned(),
            listen: addr,
            ca: pki.ca(),
            cert,
            key,
            state_dir: state_dir.clone(),
            control_socket: control_socket.clone(),
        }
        .render();
        text.push_str(&spec.extra);
        let config = home.join("agent.toml");
        std::fs::write(&config, text)?;
        let mut agent = AgentProcess {
            name: spec.name.to_owned(),
            addr,
            config,
            control_socket,
            state_dir,
            log: home.join("agent.log"),
            child: None,
            _serial: serial,
        };
        agent.spawn()?;
        Ok(agent)
    }

    /// Starts the process (again) and waits until it is ready.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(bin("handover-agent"))
            .args(["run", "--config"])
            .arg(&self.config)
            .env("HANDOVER_LOG", "info,handover_agent=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting handover-agent")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "agent {} exited with {status}: {}",
                    self.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if std::os::unix::net::UnixStream::connect(&self.control_socket).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "agent {} did not become ready: {}",
            self.name,
            self.log_text()
        )
    }

    /// The agent's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("agent {} is not running", self.name)
        };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        bail!("agent {} did not stop on SIGTERM", self.name)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// `handover-agent SUBCOMMAND ...` against this agent's config.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("handover-agent"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run handover-agent: {e}"))
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One `[[hosts]]` entry of a coordinator config.
#[derive(Clone)]
pub struct HostSpec {
    /// Inventory name.
    pub name: String,
    /// Agent's QUIC address.
    pub address: SocketAddr,
    /// Roles.
    pub roles: Vec<String>,
    /// App server address as the LBs reach it.
    pub app: Option<SocketAddr>,
    /// Extra TOML lines for this entry.
    pub extra: String,
}

impl HostSpec {
    /// An entry for a running agent.
    pub fn of(agent: &AgentProcess, roles: &[&str]) -> Self {
        HostSpec {
            name: agent.name.clone(),
            address: agent.addr,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            app: None,
            extra: String::new(),
        }
    }
}

/// A coordinator config and a way to run `handover` with it.
pub struct Coordinator {
    /// The config file.
    pub config: PathBuf,
}

impl Coordinator {
    /// Issues a coordinator certificate `name` and writes `dir/handover.toml`.
    pub fn write(dir: &Path, pki: &Pki, name: &str, hosts: &[HostSpec]) -> anyhow::Result<Self> {
        let (cert, key) = pki.issue("coordinator", name, &[])?;
        Self::write_with(dir, &pki.ca(), &cert, &key, hosts)
    }

    /// Writes `dir/handover.toml` with explicit credential files.
    pub fn write_with(
        dir: &Path,
        ca: &Path,
        cert: &Path,
        key: &Path,
        hosts: &[HostSpec],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut entries = Vec::new();
        for h in hosts {
            let extra: toml::Table = h
                .extra
                .parse()
                .with_context(|| format!("extra TOML of host {}: {:?}", h.name, h.extra))?;
            entries.push(crate::config::HostEntry {
                name: h.name.clone(),
                address: h.address,
                roles: h.roles.clone(),
                app: h.app,
                extra,
            });
        }
        let text = crate::config::CoordinatorConfig {
            ca: ca.to_owned(),
            cert: cert.to_owned(),
            key: key.to_owned(),
            state_dir: dir.join("state"),
            hosts: entries,
        }
        .render();
        let config = dir.join("handover.toml");
        std::fs::write(&config, text)?;
        Ok(Coordinator { config })
    }

    /// `dir/ops/handover.toml` with one app host, `web-1`, at `ip` port 9 where
    /// nothing answers: for commands that need a valid config and no fleet
    /// (`handover web`, `inputs`, `journal`, a log line).
    pub fn with_one_quiet_host(
        dir: &Path,
        pki: &Pki,
        ip: std::net::Ipv4Addr,
    ) -> anyhow::Result<Self> {
        let host = HostSpec {
            name: "web-1".into(),
            address: SocketAddr::from((ip, 9)),
            roles: vec!["app".into()],
            app: None,
            extra: String::new(),
        };
        Self::write(&dir.join("ops"), pki, "ops", &[host])
    }

    /// Another "bastion" with this one's inventory and credentials: its config
    /// in `dir`, its own state_dir (`dir/state`), and `state` (a `[state]`
    /// section, e.g. [`crate::etcd::Etcd::state_section`]) appended when given.
    pub fn another_bastion(&self, dir: &Path, state: Option<&str>) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(&self.config)
            .with_context(|| format!("read {}", self.config.display()))?;
        std::fs::create_dir_all(dir)?;
        let mut out: String = text
            .lines()
            .map(|line| {
                if line.starts_with("state_dir = ") {
                    format!(
                        "state_dir = {:?}\n",
                        dir.join("state").display().to_string()
                    )
                } else {
                    format!("{line}\n")
                }
            })
            .collect();
        out.push_str(state.unwrap_or(""));
        let config = dir.join("handover.toml");
        std::fs::write(&config, out)?;
        Ok(Coordinator { config })
    }

    /// Runs `handover --config CONFIG args...`.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run handover: {e}"))
    }

    /// The command, for callers that need to spawn it.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("handover"));
        cmd.arg("--config").arg(&self.config).args(args);
        cmd
    }

    /// `handover status --json HOSTS...`, parsed.
    pub fn status_json(&self, hosts: &[&str]) -> anyhow::Result<(bool, serde_json::Value)> {
        let mut args = vec!["status", "--json"];
        args.extend_from_slice(hosts);
        let out = self.run(&args);
        let value: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "status --json printed no JSON: stdout {:?} stderr {:?}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        Ok((out.status.success(), value))
    }
}

/// Text of a process's stdout and stderr, for assertion messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A spawned command's stdout, line by line.
pub type StdoutLines = std::io::Lines<std::io::BufReader<std::process::ChildStdout>>;

/// Spawns `cmd` with stdout piped (stderr as given) and returns it with its lines.
pub fn spawn_lines(mut cmd: Command, stderr: Stdio) -> anyhow::Result<(Child, StdoutLines)> {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .context("spawning handover")?;
    let stdout = child.stdout.take().context("stdout is not piped")?;
    Ok((child, std::io::BufReader::new(stdout).lines()))
}

/// Reads JSON lines until one satisfies `pred`, keeping every event in `seen`;
/// panics (with the last events) if the stream ends first.
pub fn next_event(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    seen: &mut Vec<serde_json::Value>,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    for line in lines.by_ref() {
        let line = line.expect("read the command's output");
        let event: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        seen.push(event.clone());
        if pred(&event) {
            return event;
        }
    }
    panic!(
        "output ended before the expected event; last events {:#?}",
        seen.iter().rev().take(5).collect::<Vec<_>>()
    );
}

/// One app host on its own: an Apache on `ip` and an agent whose `[health]` and
/// `[app]` point at it, plus a coordinator config naming it `web-1`.
pub struct OneHost {
    /// The agent.
    pub agent: AgentProcess,
    /// The coordinator config.
    pub coordinator: Coordinator,
    /// The Apache.
    pub apache: crate::apache::Apache,
    /// The CA.
    pub pki: Pki,
    _fleet: crate::fleet::Fleet,
}

impl OneHost {
    /// Starts it (the fleet lock is held for its lifetime).
    pub fn start(ip: Ipv4Addr) -> anyhow::Result<Self> {
        let fleet = crate::fleet::Fleet::new()?;
        let apache = crate::apache::Apache::start_with(
            ip,
            crate::apache::ApacheOptions {
                parent: Some(fleet.path().to_owned()),
                ..crate::apache::ApacheOptions::default()
            },
        )?;
        let sections = crate::config::AgentSections {
            health: Some(crate::config::Health {
                file: apache.health_file().to_owned(),
            }),
            app: Some(crate::config::App::apache(apache.addr())),
            ..Default::default()
        };
        let agent = fleet.agent("web-1", ip, &sections)?;
        let coordinator = fleet.coordinator(&[HostSpec::of(&agent, &["app"])])?;
        Ok(OneHost {
            agent,
            coordinator,
            apache,
            pki: fleet.pki.clone(),
            _fleet: fleet,
        })
    }
}
