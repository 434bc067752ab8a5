//! A real etcd (Debian's etcd-server) for the tests of the coordinator's etcd
//! backend (issue 17): a single member on free loopback ports with its data dir
//! under the test's directory, stopped with the test.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::ports::free_tcp_port;
use crate::process::ChildGuard;

/// One etcd member.
pub struct Etcd {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    dir: std::path::PathBuf,
    args: Vec<String>,
    client: u16,
    process: ChildGuard,
}

impl Etcd {
    /// Starts a single-member etcd with its data and log under `dir`, and waits
    /// until it answers.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ip = Ipv4Addr::LOCALHOST;
        let (client, peer) = (free_tcp_port(ip)?, free_tcp_port(ip)?);
        let endpoint = format!("http://{ip}:{client}");
        let peer_url = format!("http://{ip}:{peer}");
        let args: Vec<String> = [
            "--name",
            "e2e",
            "--listen-client-urls",
            &endpoint,
            "--advertise-client-urls",
            &endpoint,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("e2e={peer_url}"),
        ]
        .map(str::to_owned)
        .to_vec();
        let process = Self::spawn(dir, &args)?;
        let etcd = Etcd {
            endpoint,
            dir: dir.to_owned(),
            args,
            client,
            process,
        };
        etcd.wait_ready(ip, client)?;
        Ok(etcd)
    }

    fn spawn(dir: &Path, args: &[String]) -> anyhow::Result<ChildGuard> {
        let mut cmd = Command::new("etcd");
        cmd.arg("--data-dir").arg(dir.join("data")).args(args);
        ChildGuard::spawn("etcd", cmd, &dir.join("etcd.log"))
            .context("etcd runs (scripts/install-deps.sh installs etcd-server)")
    }

    /// Starts it again after [`Etcd::stop`], on the same ports and data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.process.stop();
        self.process = Self::spawn(&self.dir, &self.args)?;
        self.wait_ready(Ipv4Addr::LOCALHOST, self.client)
    }

    fn wait_ready(&self, ip: Ipv4Addr, port: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let ok = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &format!("{ip}:{port}"), "endpoint", "health"])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("etcd at {} did not become healthy", self.endpoint)
    }

    /// The `[state]` section that keeps a coordinator's journal here under `prefix`.
    pub fn state_section(&self, prefix: &str) -> String {
        format!(
            "\n[state]\nbackend = \"etcd\"\nendpoints = [\"{}\"]\nprefix = \"{prefix}\"\n",
            self.endpoint
        )
    }

    /// Stops it (SIGTERM, then SIGKILL).
    pub fn stop(&mut self) {
        self.process.stop();
    }
}

/// A three-member etcd cluster, each member on its own 127.0.2.N.
pub struct Cluster {
    /// The members, in order.
    pub members: Vec<Etcd>,
}

impl Cluster {
    /// Starts three members with their data and logs under `dir`, and waits until
    /// each answers.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let ips: Vec<Ipv4Addr> = (1..=3).map(|n| Ipv4Addr::new(127, 0, 2, n)).collect();
        let mut ports = Vec::new();
        for ip in &ips {
            ports.push((free_tcp_port(*ip)?, free_tcp_port(*ip)?));
        }
        let initial: Vec<String> = ips
            .iter()
            .zip(&ports)
            .enumerate()
            .map(|(i, (ip, (_, peer)))| format!("m{}=http://{ip}:{peer}", i + 1))
            .collect();
        let mut procs = Vec::new();
        for (i, (ip, (client, peer))) in ips.iter().zip(&ports).enumerate() {
            let member_dir = dir.join(format!("m{}", i + 1));
            std::fs::create_dir_all(&member_dir)?;
            let endpoint = format!("http://{ip}:{client}");
            let peer_url = format!("http://{ip}:{peer}");
            let args: Vec<String> = [
                "--name",
                &format!("m{}", i + 1),
                "--listen-client-urls",
                &endpoint,
                "--advertise-client-urls",
                &endpoint,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-state",
                "new",
            ]
            .map(str::to_owned)
            .to_vec();
            let process = Etcd::spawn(&member_dir, &args)?;
            procs.push(Etcd {
                endpoint,
                dir: member_dir,
                args,
                client: *client,
                process,
            });
        }
        for (m, ip) in procs.iter().zip(&ips) {
            m.wait_ready(*ip, m.client)?;
        }
        Ok(Cluster { members: procs })
    }

    /// The `[state]` section naming every member.
    pub fn state_section(&self, prefix: &str) -> String {
        let endpoints: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{:?}", m.endpoint))
            .collect();
        format!(
            "\n[state]\nbackend = \"etcd\"\nendpoints = [{}]\nprefix = \"{prefix}\"\n",
            endpoints.join(", ")
        )
    }

    /// The index of the member that is the leader now, as etcd reports it.
    pub fn leader(&self) -> anyhow::Result<usize> {
        for (i, m) in self.members.iter().enumerate() {
            let out = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args([
                    "--endpoints",
                    &m.endpoint,
                    "endpoint",
                    "status",
                    "-w",
                    "json",
                ])
                .output()?;
            let status: serde_json::Value = serde_json::from_slice(&out.stdout)
                .with_context(|| format!("etcdctl endpoint status: {out:?}"))?;
            let s = &status[0]["Status"];
            if s["leader"].as_u64().is_some() && s["leader"] == s["header"]["member_id"] {
                return Ok(i);
            }
        }
        bail!("no member says it is the leader")
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        let _ = self.members[i]
            .process
            .signal(nix::sys::signal::Signal::SIGKILL);
        self.members[i].process.stop();
    }
}
