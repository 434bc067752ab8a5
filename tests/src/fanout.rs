//! Many real agents on one machine, for the fan-out tests and benchmark (issue 14).
//!
//! Each agent is the real agent code (`handover_agent`'s QUIC server, its
//! admission gate, its status action) with its own loopback address
//! 127.0.(100 + i / 250).(1 + i % 250) — away from the fleet tests' 127.0.1.N —
//! and its own certificate from one private CA. Hundreds of agent processes would
//! measure process start-up and memory, not fan-out, so they share one process:
//! `handover-swarm`, started as a child so that the agents' CPU time is counted
//! apart from the coordinator's.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use handover_common::names::{HostName, Role};
use handover_common::pki::{self, Existing, LeafSpec};

use crate::agents::{Coordinator, HostSpec, bin};
use crate::ports::free_udp_port;

/// The most agents [`swarm_ip`] can address.
pub const MAX_AGENTS: usize = 250 * 100;

/// The loopback address of swarm agent `i` (0-based).
pub fn swarm_ip(i: usize) -> Ipv4Addr {
    let third = u8::try_from(100 + i / 250).unwrap_or(u8::MAX);
    let fourth = u8::try_from(1 + i % 250).unwrap_or(u8::MAX);
    Ipv4Addr::new(127, 0, third, fourth)
}

/// The name of swarm agent `i`.
pub fn swarm_name(i: usize) -> String {
    format!("agent-{i:05}")
}

/// The files of a swarm: one config per agent and a coordinator config naming
/// them all.
pub struct SwarmFiles {
    /// Where everything lives.
    pub dir: PathBuf,
    /// Each agent's config file.
    pub agents: Vec<PathBuf>,
    /// Each agent's inventory entry.
    pub hosts: Vec<HostSpec>,
    /// The coordinator's CA, certificate and key.
    pub coordinator_creds: (PathBuf, PathBuf, PathBuf),
}

impl SwarmFiles {
    /// Makes a CA in `dir`, a certificate and config for each of `count` agents
    /// (all on one free UDP port, each on its own address), and a coordinator
    /// certificate.
    pub fn write(dir: &Path, count: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(
            count <= MAX_AGENTS,
            "at most {MAX_AGENTS} agents (one address each)"
        );
        let pki_dir = dir.join("pki");
        std::fs::create_dir_all(&pki_dir)?;
        pki::init_ca(&pki_dir, false, 30).context("making the swarm's CA")?;
        let port = free_udp_port(swarm_ip(0))?;
        let mut agents = Vec::with_capacity(count);
        let mut hosts = Vec::with_capacity(count);
        for i in 0..count {
            let name = swarm_name(i);
            let addr = SocketAddr::new(IpAddr::V4(swarm_ip(i)), port);
            agents.push(write_agent(dir, &pki_dir, &name, addr)?);
            hosts.push(HostSpec {
                name,
                address: addr,
                roles: vec!["app".into()],
                app: None,
                extra: String::new(),
            });
        }
        let mut spec = LeafSpec::new(Role::Coordinator, HostName::new("bench-coordinator")?, 30);
        spec.ips = Vec::new();
        let files = pki::issue(&pki_dir, &spec, Existing::Replace)?;
        let ca = pki::ca_files(&pki_dir).cert;
        Ok(SwarmFiles {
            dir: dir.to_owned(),
            agents,
            hosts,
            coordinator_creds: (ca, files.cert, files.key),
        })
    }

    /// A coordinator config in `dir` for `extra` hosts then these agents, that
    /// talks to `concurrency` agents at once.
    pub fn coordinator(
        &self,
        dir: &Path,
        concurrency: usize,
        extra: &[HostSpec],
    ) -> anyhow::Result<Coordinator> {
        let (ca, cert, key) = &self.coordinator_creds;
        let mut hosts = extra.to_vec();
        hosts.extend_from_slice(&self.hosts);
        let coordinator = Coordinator::write_with(dir, ca, cert, key, &hosts)?;
        // Top-level keys must come before the first [[hosts]] table.
        let text = std::fs::read_to_string(&coordinator.config)?;
        std::fs::write(
            &coordinator.config,
            format!("concurrency = {concurrency}\n{text}"),
        )?;
        Ok(coordinator)
    }
}

fn write_agent(
    dir: &Path,
    pki_dir: &Path,
    name: &str,
    addr: SocketAddr,
) -> anyhow::Result<PathBuf> {
    let mut spec = LeafSpec::new(Role::Agent, HostName::new(name)?, 30);
    spec.ips = vec![addr.ip()];
    let files = pki::issue(pki_dir, &spec, Existing::Replace)
        .with_context(|| format!("issuing {name}'s certificate"))?;
    let home = dir.join("agents").join(name);
    std::fs::create_dir_all(&home)?;
    let text = format!(
        "name = {name:?}\nlisten = \"{addr}\"\nca = {:?}\ncert = {:?}\nkey = {:?}\nstate_dir = {:?}\ncontrol_socket = {:?}\n",
        pki::ca_files(pki_dir).cert.display().to_string(),
        files.cert.display().to_string(),
        files.key.display().to_string(),
        home.join("state").display().to_string(),
        home.join("control.sock").display().to_string(),
    );
    let config = home.join("agent.toml");
    std::fs::write(&config, text)?;
    Ok(config)
}

/// Serves every agent config in `configs` from this process, each with its own
/// QUIC endpoint, until the returned tasks are aborted or the runtime ends.
pub fn serve_agents(configs: &[PathBuf]) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::with_capacity(configs.len());
    for path in configs {
        let config = handover_agent::AgentConfig::load(path)?;
        config.ensure_state_dir()?;
        let creds = config.credentials()?;
        let agent = handover_agent::Agent::new(config);
        let server = handover_agent::server::QuicServer::bind(&agent, creds)?;
        tasks.push(tokio::spawn(
            server.run(Arc::clone(&agent), std::future::pending::<()>()),
        ));
    }
    Ok(tasks)
}

/// A running `handover-swarm`: the agents of [`SwarmFiles`] in one child
/// process, stopped (killed) on drop.
pub struct Swarm {
    /// The swarm's files.
    pub files: SwarmFiles,
    child: Child,
}

impl Swarm {
    /// Writes the files for `count` agents under `dir` and starts them.
    pub fn start(dir: &Path, count: usize) -> anyhow::Result<Self> {
        let files = SwarmFiles::write(dir, count)?;
        let list = dir.join("agents.list");
        let lines: Vec<String> = files
            .agents
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        std::fs::write(&list, lines.join("\n"))?;
        let mut child = Command::new(bin("handover-swarm"))
            .arg(&list)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("swarm.log"))?)
            .spawn()
            .context("starting handover-swarm")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut swarm = Swarm { files, child };
        swarm.wait_ready(stdout, dir)?;
        Ok(swarm)
    }

    fn wait_ready(&mut self, stdout: ChildStdout, dir: &Path) -> anyhow::Result<()> {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = self.child.kill();
            let log = std::fs::read_to_string(dir.join("swarm.log")).unwrap_or_default();
            bail!("handover-swarm did not start: {line:?} {log}");
        }
        Ok(())
    }

    /// CPU time the agents have used so far (every thread of their process).
    pub fn cpu(&self) -> Duration {
        process_cpu(&format!("/proc/{}", self.child.id()))
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time of every live thread of the process at `proc_dir` (`/proc/self`,
/// `/proc/PID`), summed from each thread's `schedstat` (nanoseconds).
pub fn process_cpu(proc_dir: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("{proc_dir}/task")) else {
        return Duration::ZERO;
    };
    let nanos: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|text| text.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

/// The machine a benchmark ran on, in one line: cores, CPU model, memory and the
/// load average (figures from a loaded machine are read with that in mind).
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "?".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "machine: {cores} cores ({model}), {} MiB memory, load {}",
        mem_kib / 1024,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}
