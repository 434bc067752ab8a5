//! An existing fleet as Handover finds it (issue 12, "Existing fleets"): app
//! servers declared as plain `server web-N ADDR check` lines in haproxy.cfg, no
//! `server-template` slots, nothing attached by Handover. Otherwise as
//! [`crate::scenario`]: real Apache serving `<deploy root>/current` on v1, an agent
//! on every host, one HAProxy with its agent, a coordinator config.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::agents::{AgentProcess, AgentSpec, Coordinator, HostSpec, Pki, output_text};
use crate::apache::{Apache, ApacheOptions};
use crate::fleet::SerialGuard;
use crate::haproxy::{BackendSpec, Haproxy};
use crate::ports::{free_tcp_port, host_ip};
use crate::scenario::{AppHost, BACKEND, start_lb_host};
use crate::workdir::{Workdir, write_public};

/// The running plain-config fleet; everything stops on drop.
pub struct PlainFleet {
    /// App servers `web-1`...: each is `server web-N` in haproxy.cfg.
    pub apps: Vec<AppHost>,
    /// The load balancer.
    pub haproxy: Haproxy,
    /// Its agent (`lb-1`).
    pub lb_agent: AgentProcess,
    /// The coordinator config.
    pub coordinator: Coordinator,
    /// file:// URL of the repository (tags v1, v2, v3-broken).
    pub repo: String,
    /// The scenario's directory.
    pub work: Workdir,
    _serial: SerialGuard,
}

impl PlainFleet {
    /// Starts `apps` app hosts on v1, each a plain server line of HAProxy's
    /// [`BACKEND`] named after its host, and waits until HAProxy reports every one UP.
    pub fn start(apps: u8) -> anyhow::Result<Self> {
        Self::start_named(apps, |n| format!("web-{n}"))
    }

    /// As [`Self::start`], host `web-N`'s server line named `server_name(N)`.
    pub fn start_named(apps: u8, server_name: impl Fn(u8) -> String) -> anyhow::Result<Self> {
        let serial = crate::fleet::serial();
        let work = Workdir::new()?;
        let repo = crate::git::versions_repo(&work.subdir("git")?)?;
        let pki = Pki::init(&work.subdir("pki")?)?;
        let agents_dir = work.subdir("agents")?;

        let mut planned = Vec::new();
        for n in 1..=apps {
            let ip = host_ip(n);
            let port = free_tcp_port(ip)?;
            let name = format!("web-{n}");
            let home = work.subdir(&name)?;
            let root = home.join("www");
            let health = home.join("health").join("health.html");
            std::fs::create_dir_all(health.parent().context("health dir")?)?;
            write_public(&health, &format!("OK {name}\n"))?;
            let extra = format!(
                "\n[health]\nfile = {health:?}\n\n[app]\nlisten = \"{ip}:{port}\"\nstatus_url = \"http://{ip}:{port}/server-status?auto\"\nquiet_period = \"300ms\"\n\n[deploy]\nroot = {root:?}\nallowed_repos = [{repo:?}]\n",
                health = health.display().to_string(),
                root = root.display().to_string(),
            );
            let agent = AgentProcess::start(
                &agents_dir,
                &pki,
                AgentSpec {
                    name: &name,
                    ip,
                    extra,
                },
            )?;
            let app = SocketAddr::new(IpAddr::V4(ip), port);
            planned.push((name, app, root, health, agent, server_name(n)));
        }

        let backend = BackendSpec {
            name: BACKEND.to_owned(),
            slots: 0,
            servers: planned.iter().map(|p| (p.5.clone(), p.1)).collect(),
        };
        let (haproxy, lb_agent) = start_lb_host(work.path(), &agents_dir, &pki, "lb-1", backend)?;

        let mut hosts: Vec<HostSpec> = planned
            .iter()
            .map(|(_, app, _, _, agent, _)| {
                let mut spec = HostSpec::of(agent, &["app"]);
                spec.app = Some(*app);
                spec
            })
            .collect();
        hosts.push(HostSpec::of(&lb_agent, &["lb"]));
        let coordinator = Coordinator::write(&work.subdir("ops")?, &pki, "ops", &hosts)?;

        let names: Vec<String> = planned.iter().map(|p| p.0.clone()).collect();
        let mut args = vec!["deploy"];
        args.extend(names.iter().map(String::as_str));
        args.extend(["--repo", &repo, "--ref", "v1"]);
        let out = coordinator.run(&args);
        if !out.status.success() {
            bail!("initial deploy of v1 failed: {}", output_text(&out));
        }

        let lines: Vec<String> = planned.iter().map(|p| p.5.clone()).collect();
        let mut started = Vec::new();
        for (name, app, root, health, agent, _) in planned {
            let IpAddr::V4(ip) = app.ip() else {
                bail!("app hosts are on IPv4 loopback");
            };
            let apache = Apache::start_with(
                ip,
                ApacheOptions {
                    name: Some(name.clone()),
                    docroot: Some(root.join("current")),
                    health_file: Some(health),
                    parent: Some(work.path().to_owned()),
                    port: Some(app.port()),
                },
            )?;
            started.push(AppHost {
                name,
                apache,
                agent,
                root,
            });
        }
        let fleet = PlainFleet {
            apps: started,
            haproxy,
            lb_agent,
            coordinator,
            repo,
            work,
            _serial: serial,
        };
        fleet.wait_up(&lines)?;
        Ok(fleet)
    }

    /// Waits (up to 20 s) until each of `servers` reads UP in HAProxy.
    pub fn wait_up(&self, servers: &[String]) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let stats = self.haproxy.show_stat()?;
            let up = |name: &String| {
                stats
                    .iter()
                    .any(|r| r.pxname == BACKEND && &r.svname == name && r.is_up())
            };
            if servers.iter().all(up) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("not every one of {servers:?} is UP: {stats:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Writes an in-place plan over every app host for `reference` and returns
    /// its path (the same plan as [`crate::scenario::Scenario::in_place_plan`]).
    pub fn in_place_plan(&self, reference: &str, min_healthy: usize) -> anyhow::Result<PathBuf> {
        let text = format!(
            "strategy = \"in-place\"\nroles = [\"app\"]\n\n[revision]\nrepo = {:?}\nref = {reference:?}\n\n[rollout]\nbatch = 1\nmin_healthy = {min_healthy}\ndrain_timeout = \"20s\"\nquiet = \"500ms\"\nattach_timeout = \"20s\"\n\n[health]\npath = \"/VERSION\"\nexpect = 200\nrise = 2\ninterval = \"200ms\"\ntimeout = \"10s\"\n",
            self.repo
        );
        let path = self.work.path().join("plan.toml");
        std::fs::write(&path, text)?;
        Ok(path)
    }
}
