//! A whole fleet as an operator runs it: app servers (real Apache serving
//! `<deploy root>/current`, the health file outside the release) each with an
//! agent, one HAProxy with its agent, a git repository, a private CA and a
//! coordinator config — every app host on v1 and attached, ready to be upgraded.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::agents::{AgentProcess, AgentSpec, Coordinator, HostSpec, Pki, output_text};
use crate::apache::{Apache, ApacheOptions};
use crate::config::{self, AgentSections, App, Deploy, Lb, Plan, PlanHealth, PlanRollout};
use crate::fleet::SerialGuard;
use crate::haproxy::{BackendSpec, Haproxy, HaproxyOptions};
use crate::monitor::{UpMonitor, UpReport};
use crate::ports::{free_tcp_port, host_ip};
use crate::workdir::{Workdir, write_public};

/// The backend the app servers serve in.
pub const BACKEND: &str = "be_app";

/// One app server: Apache, its agent, its deploy root.
pub struct AppHost {
    /// Inventory name (`web-N`).
    pub name: String,
    /// Its Apache (serving `root/current`).
    pub apache: Apache,
    /// Its agent.
    pub agent: AgentProcess,
    /// Its `[deploy] root`.
    pub root: PathBuf,
}

impl AppHost {
    /// `current/VERSION` on this host.
    pub fn version(&self) -> String {
        std::fs::read_to_string(self.root.join("current/VERSION"))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|e| format!("<unreadable: {e}>"))
    }

    /// Whether the health file is in place (not drained).
    pub fn health_file_present(&self) -> bool {
        self.apache.health_file().exists()
    }
}

/// What the capacity monitor holds the fleet to, from the moment every app host
/// is attached until the scenario is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capacity {
    /// At least this many app servers UP in HAProxy at every 100 ms sample: the
    /// `min_healthy` of the plans the test runs.
    MinHealthy(usize),
    /// Not checked, and why (a test that drains every host on purpose).
    Unchecked(&'static str),
}

/// How to build the fleet.
pub struct ScenarioOptions {
    /// App servers.
    pub apps: u8,
    /// Extra TOML for every app agent, read as if appended right after its
    /// `[deploy]` keys (see [`AgentSections::add_deploy_lines`]).
    pub deploy_extra: String,
    /// The capacity invariant the whole test keeps (see [`Scenario::check_capacity`]).
    pub capacity: Capacity,
}

impl Default for ScenarioOptions {
    fn default() -> Self {
        ScenarioOptions {
            apps: 3,
            // A release whose VERSION says "broken" fails verification.
            deploy_extra: "verify = \"! grep -q broken VERSION\"\n".into(),
            // The `min_healthy` of `in_place_plan(.., 1, 2)` on three hosts.
            capacity: Capacity::MinHealthy(2),
        }
    }
}

/// The running fleet; everything stops on drop.
pub struct Scenario {
    /// App servers, `web-1`...
    pub apps: Vec<AppHost>,
    /// The load balancer.
    pub haproxy: Haproxy,
    /// The load balancer's agent (`lb-1`).
    pub lb_agent: AgentProcess,
    /// The coordinator config.
    pub coordinator: Coordinator,
    /// file:// URL of the repository (tags v1, v2, v3-broken).
    pub repo: String,
    /// The private CA.
    pub pki: Pki,
    /// The scenario's directory.
    pub work: Workdir,
    /// Polls HAProxy every 100 ms for the whole test (see [`Capacity`]).
    monitor: Option<UpMonitor>,
    /// Why a test stopped checking capacity, if it did.
    unchecked: Option<&'static str>,
    _serial: SerialGuard,
}

impl Scenario {
    /// Starts the fleet, deploys v1 everywhere and attaches every app host.
    pub fn start(options: ScenarioOptions) -> anyhow::Result<Self> {
        let serial = crate::fleet::serial();
        let work = Workdir::new()?;
        let repo = crate::git::versions_repo(&work.subdir("git")?)?;
        let pki = Pki::init(&work.subdir("pki")?)?;
        let agents_dir = work.subdir("agents")?;

        let mut planned = Vec::new();
        for n in 1..=options.apps {
            let ip = host_ip(n);
            let port = free_tcp_port(ip)?;
            let name = format!("web-{n}");
            let home = work.subdir(&name)?;
            let root = home.join("www");
            let health = home.join("health").join("health.html");
            std::fs::create_dir_all(health.parent().context("health dir")?)?;
            write_public(&health, &format!("OK {name}\n"))?;
            let mut sections = AgentSections {
                health: Some(config::Health {
                    file: health.clone(),
                }),
                app: Some(App {
                    quiet_period: Some("300ms".into()),
                    ..App::apache(SocketAddr::new(IpAddr::V4(ip), port))
                }),
                deploy: Some(Deploy::new(root.clone(), &repo)),
                ..AgentSections::default()
            };
            sections.add_deploy_lines(&options.deploy_extra);
            let extra = sections.render();
            let agent = AgentProcess::start(
                &agents_dir,
                &pki,
                AgentSpec {
                    name: &name,
                    ip,
                    extra,
                },
            )?;
            planned.push((name, ip, port, root, health, agent));
        }

        // A slot for every app host (the rollout bench runs 10).
        let backend = BackendSpec::slots(BACKEND, usize::from(options.apps).max(8));
        let (haproxy, lb_agent) = start_lb_host(work.path(), &agents_dir, &pki, "lb-1", backend)?;

        let mut hosts: Vec<HostSpec> = planned
            .iter()
            .map(|(_, ip, port, _, _, agent)| {
                let mut spec = HostSpec::of(agent, &["app"]);
                spec.app = Some(SocketAddr::new(IpAddr::V4(*ip), *port));
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

        let mut apps = Vec::new();
        for (name, ip, port, root, health, agent) in planned {
            let apache = Apache::start_with(
                ip,
                ApacheOptions {
                    name: Some(name.clone()),
                    docroot: Some(root.join("current")),
                    health_file: Some(health),
                    parent: Some(work.path().to_owned()),
                    port: Some(port),
                },
            )?;
            apps.push(AppHost {
                name,
                apache,
                agent,
                root,
            });
        }

        let mut args = vec!["attach"];
        args.extend(names.iter().map(String::as_str));
        let out = coordinator.run(&args);
        if !out.status.success() {
            bail!("initial attach failed: {}", output_text(&out));
        }

        let (monitor, unchecked) = match options.capacity {
            Capacity::MinHealthy(n) => {
                wait_all_up(&haproxy, apps.len())?;
                (Some(UpMonitor::start(&haproxy, &[BACKEND], n)?), None)
            }
            Capacity::Unchecked(why) => (None, Some(why)),
        };

        Ok(Scenario {
            apps,
            haproxy,
            lb_agent,
            coordinator,
            repo,
            pki,
            work,
            monitor,
            unchecked,
            _serial: serial,
        })
    }

    /// What the capacity monitor saw so far, or an error naming every sample with
    /// fewer UP servers than the scenario's `min_healthy`. Dropping the scenario
    /// makes the same check and fails the test.
    pub fn check_capacity(&self) -> anyhow::Result<UpReport> {
        let Some(monitor) = &self.monitor else {
            bail!(
                "capacity is not checked in this test: {}",
                self.unchecked.unwrap_or("no monitor")
            );
        };
        let report = monitor.snapshot();
        if !report.violations.is_empty() {
            bail!(
                "HAProxy had fewer UP servers than min_healthy in {} of {} samples: {:?}",
                report.violations.len(),
                report.samples,
                report.violations
            );
        }
        Ok(report)
    }

    /// From now on, hold the fleet to `min_healthy` UP servers instead.
    pub fn expect_min_healthy(&self, min_healthy: usize) {
        if let Some(m) = &self.monitor {
            m.set_min_up(min_healthy);
        }
    }

    /// Stops checking capacity for the rest of the test, for `reason` (e.g. the test
    /// drains every host on purpose). What was seen until now is still checked.
    pub fn stop_checking_capacity(&mut self, reason: &'static str) -> anyhow::Result<UpReport> {
        let report = self.check_capacity();
        if let Some(m) = self.monitor.take() {
            drop(m.stop());
        }
        self.unchecked = Some(reason);
        report
    }

    /// Writes a plan file into the scenario's directory and returns its path.
    pub fn write_plan(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.work.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// An in-place plan over every app host for `reference`: 20 s drain and
    /// attach timeouts, a 500 ms quiet period, `/VERSION` checked on each host.
    pub fn plan(&self, reference: &str, batch: usize, min_healthy: usize) -> Plan {
        let mut plan = Plan::in_place(&self.repo, reference, min_healthy);
        plan.rollout = PlanRollout {
            batch: Some(batch),
            min_healthy,
            drain_timeout: Some("20s".into()),
            quiet: Some("500ms".into()),
            attach_timeout: Some("20s".into()),
            ..PlanRollout::default()
        };
        plan.health = Some(PlanHealth {
            path: "/VERSION".into(),
            expect: Some(200),
            rise: Some(2),
            interval: Some("200ms".into()),
            timeout: Some("10s".into()),
        });
        plan
    }

    /// [`Scenario::plan`] as TOML.
    pub fn in_place_plan(&self, reference: &str, batch: usize, min_healthy: usize) -> String {
        self.plan(reference, batch, min_healthy).render()
    }

    /// How many app servers HAProxy reports UP in [`BACKEND`] now.
    pub fn up_count(&self) -> usize {
        up_count(&self.haproxy).unwrap_or_else(|e| panic!("show stat: {e:#}"))
    }

    /// Commits and tags a revision `tag` (VERSION and page say so) in the
    /// scenario's repository: a release no host has had yet.
    pub fn tag_revision(&self, tag: &str) -> anyhow::Result<()> {
        let page = format!("<html><body>shop {tag}</body></html>\n");
        self.commit_and_tag(
            tag,
            &[("VERSION", &format!("{tag}\n")), ("index.html", &page)],
            &[],
        )
    }

    /// Commits `files` (path, contents) and the removal of `removed`, tags the
    /// commit `tag` and pushes the tag to the scenario's repository.
    pub fn commit_and_tag(
        &self,
        tag: &str,
        files: &[(&str, &str)],
        removed: &[&str],
    ) -> anyhow::Result<()> {
        use crate::git::git;
        let git_dir = self.work.path().join("git");
        let work = git_dir.join("app-work");
        for path in removed {
            git(&work, &["rm", "-q", path])?;
        }
        for (path, text) in files {
            std::fs::write(work.join(path), text)?;
        }
        git(&work, &["add", "-A"])?;
        git(&work, &["commit", "-q", "-m", tag])?;
        git(&work, &["tag", tag])?;
        let bare = git_dir.join("app.git").display().to_string();
        git(&work, &["push", "-q", &bare, tag])?;
        Ok(())
    }

    /// The main frontend (through HAProxy).
    pub fn frontend(&self) -> SocketAddr {
        self.haproxy.frontend()
    }

    /// The app host named `name`.
    pub fn app(&self, name: &str) -> &AppHost {
        self.apps
            .iter()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("no app host {name}"))
    }

    /// The scenario directory.
    pub fn dir(&self) -> &Path {
        self.work.path()
    }
}

impl Drop for Scenario {
    /// Fails the test if HAProxy ever had fewer UP servers than `min_healthy`
    /// (unless the test is already failing: a second panic would abort).
    fn drop(&mut self) {
        if self.monitor.is_none() {
            return;
        }
        let verdict = self.check_capacity();
        if let Some(m) = self.monitor.take() {
            drop(m.stop());
        }
        if let Err(e) = verdict
            && !std::thread::panicking()
        {
            panic!("capacity invariant broken: {e:#}");
        }
    }
}

/// Waits (up to 20 s) until HAProxy reports `n` servers of [`BACKEND`] UP: the
/// monitor starts from a fleet at full capacity.
fn wait_all_up(haproxy: &Haproxy, n: usize) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let up = up_count(haproxy)?;
        if up >= n {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "only {up} of {n} app servers UP after the initial attach: {:?}",
                haproxy.show_stat()?
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// How many servers of [`BACKEND`] `haproxy` reports UP.
fn up_count(haproxy: &Haproxy) -> anyhow::Result<usize> {
    Ok(haproxy
        .show_stat()?
        .iter()
        .filter(|r| r.pxname == BACKEND && r.is_server() && r.is_up())
        .count())
}

/// Loopback address `127.0.1.n` (re-exported for scenario users).
pub fn ip(n: u8) -> Ipv4Addr {
    host_ip(n)
}

/// The load balancer host every fleet has: HAProxy on 127.0.1.100 with `backend`,
/// and its agent `name` driving it through the admin socket. HAProxy reaches the
/// app servers from the LB host's own address, as on a real network: the drain
/// wait tells its pooled connections apart. A keep-alive client is answered
/// across a reload, as docs/haproxy.md recommends (without it, an idle connection
/// closed at the reload instant fails the request sent on it then).
pub fn start_lb_host(
    parent: &Path,
    agents_dir: &Path,
    pki: &Pki,
    name: &str,
    backend: BackendSpec,
) -> anyhow::Result<(Haproxy, AgentProcess)> {
    let haproxy = Haproxy::start(HaproxyOptions {
        ip: host_ip(100),
        backends: vec![backend],
        parent: Some(parent.to_owned()),
        extra_defaults: vec![
            format!("source {}", host_ip(100)),
            "option idle-close-on-response".to_owned(),
        ],
        ..HaproxyOptions::default()
    })?;
    let agent = AgentProcess::start(
        agents_dir,
        pki,
        AgentSpec {
            name,
            ip: host_ip(100),
            extra: AgentSections {
                haproxy: Some(Lb {
                    socket: haproxy.admin_socket().to_owned(),
                    backend: Some(BACKEND.to_owned()),
                    ..Lb::default()
                }),
                ..AgentSections::default()
            }
            .render(),
        },
    )?;
    Ok((haproxy, agent))
}
