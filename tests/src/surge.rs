//! A fleet for the surge strategy (issue 12), as the runbook finds it: three app
//! servers attached to HAProxy and serving v1, three spare app hosts marked
//! `standby = true` in the inventory (running, on v1, not attached), one `db` host
//! whose agent has the runbook's database hooks, and a command provider (the
//! `handover-test-provider` executable) that launches more app hosts like them.
//!
//! Every app host is built by [`start_app_host`] from one [`HostKit`], which the
//! fixture also writes to the provider's state directory: a host the provider
//! launches is made exactly like the fixture's own.
//!
//! The database is one sqlite file on the `db` host:
//! * `backup`: sqlite3's online `.backup` into `backups/`, then the artifact report
//!   (`{"path", "size", "sha256"}`) as its last stdout line;
//! * `migrate`: idempotent `CREATE TABLE IF NOT EXISTS`, plus one row in
//!   `migration_runs` per run, so a test can count runs ([`SurgeFleet::migrate_runs`]);
//! * `dbcheck` (on every app host): opens the database; fails on a host switched
//!   off with [`SurgeFleet::fail_dbcheck_on`].
//!
//! Apache on every app host reads `.htaccess` in its docroot, so
//! [`SurgeFleet::break_app`] can make a host answer 500 (a 5xx burst for the bake)
//! while its health file keeps it UP.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::agents::{AgentProcess, AgentSpec, Coordinator, HostSpec, Pki, output_text};
use crate::apache::{Apache, ApacheOptions};
use crate::fleet::SerialGuard;
use crate::haproxy::{BackendSpec, Haproxy};
use crate::monitor::{UpMonitor, UpReport};
use crate::ports::{free_tcp_port, host_ip};
use crate::scenario::{AppHost, BACKEND, Capacity};
use crate::workdir::{Workdir, write_public};

/// The `db` host's inventory name.
pub const DB_HOST: &str = "db-1";
/// The load balancer's inventory name.
pub const LB_HOST: &str = "lb-1";
/// Hook names, as the plan's `[db]` section names them.
pub const BACKUP_HOOK: &str = "backup";
/// See [`BACKUP_HOOK`].
pub const MIGRATE_HOOK: &str = "migrate";
/// See [`BACKUP_HOOK`]; configured on every app host.
pub const DBCHECK_HOOK: &str = "dbcheck";
/// The revision every app host starts on.
pub const START_REVISION: &str = "v1";
/// First last octet the test provider gives a launched host (`127.0.1.20`...).
pub const PROVIDER_FIRST_IP: u8 = 20;
/// Last one it may use.
pub const PROVIDER_LAST_IP: u8 = 99;

/// What every app host is built from; the fixture writes it as
/// `<provider dir>/kit.json` for the test provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostKit {
    /// The private CA's directory (`handover ca init`).
    pub pki: PathBuf,
    /// file:// URL of the repository (tags v1, v2, v3-broken).
    pub repo: String,
    /// The database file `dbcheck` opens.
    pub db: PathBuf,
    /// The hook scripts.
    pub hooks: PathBuf,
    /// A file here named like a host makes `dbcheck` fail there.
    pub dbcheck_fail: PathBuf,
    /// Where the fixture's own app hosts live: servers of the same cloud, so the
    /// test provider terminates them too (runbook 18 after a handover).
    #[serde(default)]
    pub fleet_hosts: Option<PathBuf>,
}

impl HostKit {
    /// The kit the fixture wrote into `provider_dir`.
    pub fn load(provider_dir: &Path) -> anyhow::Result<Self> {
        let path = provider_dir.join("kit.json");
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
    }

    fn save(&self, provider_dir: &Path) -> anyhow::Result<()> {
        std::fs::write(
            provider_dir.join("kit.json"),
            serde_json::to_string_pretty(self)?,
        )?;
        Ok(())
    }
}

/// Starts one app host under `parent/<name>`: an agent (health file, `[app]` with
/// its error log, `[deploy]` of the kit's repository, the `dbcheck` hook), v1
/// deployed through the agent's local CLI, then Apache serving `current` with
/// `.htaccess` allowed.
pub fn start_app_host(
    kit: &HostKit,
    parent: &Path,
    name: &str,
    ip: Ipv4Addr,
) -> anyhow::Result<AppHost> {
    let host = AppHostFiles::prepare(kit, parent, name, ip)?;
    let pki = Pki {
        dir: kit.pki.clone(),
    };
    let agent = AgentProcess::start(
        parent,
        &pki,
        AgentSpec {
            name,
            ip,
            extra: host.agent_sections.clone(),
        },
    )?;
    let out = agent.cli(&["deploy", "--repo", &kit.repo, "--ref", START_REVISION]);
    if !out.status.success() {
        bail!(
            "{name}: deploying {START_REVISION} failed: {}",
            output_text(&out)
        );
    }
    let apache = host.start_apache()?;
    Ok(AppHost {
        name: name.to_owned(),
        apache,
        agent,
        root: host.root,
    })
}

/// What an app host is made of before anything runs on it: its directory, the
/// agent's feature sections and where Apache will serve from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppHostFiles {
    /// Inventory name.
    pub name: String,
    /// `parent/<name>`.
    pub home: PathBuf,
    /// The `[deploy] root` (Apache serves `root/current`).
    pub root: PathBuf,
    /// The health file.
    pub health: PathBuf,
    /// Apache's port.
    pub port: u16,
    /// Its address.
    pub ip: Ipv4Addr,
    /// A link to Apache's error log (the agent's `[app] error_log`).
    pub error_log: PathBuf,
    /// The agent config's feature sections.
    pub agent_sections: String,
}

impl AppHostFiles {
    /// Makes the directory, the health file and the agent's sections.
    pub fn prepare(kit: &HostKit, parent: &Path, name: &str, ip: Ipv4Addr) -> anyhow::Result<Self> {
        let home = parent.join(name);
        std::fs::create_dir_all(&home)?;
        let root = home.join("www");
        let health = home.join("health").join("health.html");
        std::fs::create_dir_all(health.parent().context("health dir")?)?;
        write_public(&health, &format!("OK {name}\n"))?;
        let port = free_tcp_port(ip)?;
        // A link to Apache's own log, made once Apache runs (it picks its directory).
        let error_log = home.join("apache-error.log");
        let dbcheck = format!(
            "sh {} {name} {} {}",
            kit.hooks.join("dbcheck.sh").display(),
            kit.db.display(),
            kit.dbcheck_fail.display()
        );
        let agent_sections = format!(
            "\n[health]\nfile = {health:?}\n\n[app]\nlisten = \"{ip}:{port}\"\nstatus_url = \"http://{ip}:{port}/server-status?auto\"\nquiet_period = \"300ms\"\nerror_log = {error_log:?}\n\n[deploy]\nroot = {root:?}\nallowed_repos = [{repo:?}]\nverify = \"! grep -q broken VERSION\"\n\n[hooks]\n{DBCHECK_HOOK} = {dbcheck:?}\n",
            health = health.display().to_string(),
            error_log = error_log.display().to_string(),
            root = root.display().to_string(),
            repo = kit.repo,
        );
        Ok(AppHostFiles {
            name: name.to_owned(),
            home,
            root,
            health,
            port,
            ip,
            error_log,
            agent_sections,
        })
    }

    /// Starts Apache serving `root/current` (which may not exist yet: it
    /// serves once a release is deployed), with `.htaccess` allowed.
    pub fn start_apache(&self) -> anyhow::Result<Apache> {
        let apache = Apache::start_with(
            self.ip,
            ApacheOptions {
                name: Some(self.name.clone()),
                docroot: Some(self.root.join("current")),
                health_file: Some(self.health.clone()),
                parent: Some(self.home.clone()),
                port: Some(self.port),
            },
        )?;
        std::os::unix::fs::symlink(apache.error_log(), &self.error_log)
            .with_context(|| format!("link {}", self.error_log.display()))?;
        allow_htaccess(&apache)?;
        Ok(apache)
    }
}

/// Lets `.htaccess` in the docroot change the site (see [`SurgeFleet::break_app`]).
fn allow_htaccess(apache: &Apache) -> anyhow::Result<()> {
    let mut config = std::fs::read_to_string(apache.config())?;
    config.push_str(&format!(
        "\n# Surge fixture: a 5xx burst is a broken .htaccess.\n<Directory \"{}\">\n    AllowOverride All\n</Directory>\n",
        apache.docroot().display()
    ));
    std::fs::write(apache.config(), config)?;
    apache.graceful()
}

/// Makes the app host whose deploy root is `root` answer 500 to every page (its
/// health file, outside the docroot, still answers): a broken `.htaccess` in the
/// current release.
pub fn break_app_at(root: &Path) -> anyhow::Result<()> {
    write_public(
        &root.join("current/.htaccess"),
        "# handover-tests: a 5xx burst\nThisIsNotAnApacheDirective on\n",
    )
}

/// Undoes [`break_app_at`].
pub fn repair_app_at(root: &Path) -> anyhow::Result<()> {
    let file = root.join("current/.htaccess");
    match std::fs::remove_file(&file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove {}", file.display()))
        }
        _ => Ok(()),
    }
}

/// Stops every process whose command line mentions `dir` (agents, Apaches and
/// their workers started under it): SIGTERM, then SIGKILL after 5 s.
pub fn stop_processes_under(dir: &Path) -> anyhow::Result<()> {
    use nix::sys::signal::{Signal, kill};
    let pids = |_: ()| -> anyhow::Result<Vec<i32>> {
        Ok(crate::workdir::stray_processes(dir)?
            .iter()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect())
    };
    for pid in pids(())? {
        let _ = kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = pids(())?;
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            for pid in left {
                let _ = kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `db` host: an agent with the database hooks, no web server.
pub struct DbHost {
    /// Its agent.
    pub agent: AgentProcess,
    /// The database file.
    pub db: PathBuf,
    /// Where `backup` writes its snapshots.
    pub backups: PathBuf,
}

/// How to build the surge fleet.
pub struct SurgeOptions {
    /// App servers attached at the start (`web-1`...).
    pub apps: u8,
    /// Standby hosts (`web-<apps+1>`...), running and not attached.
    pub standby: u8,
    /// The capacity invariant the whole test keeps.
    pub capacity: Capacity,
    /// The app servers are plain `server web-N ADDR check` lines in haproxy.cfg
    /// (a fleet as Handover first finds it: no slots, nothing attached by
    /// Handover) instead of slots the fixture attaches them to.
    pub plain_config: bool,
}

impl Default for SurgeOptions {
    fn default() -> Self {
        SurgeOptions {
            apps: 3,
            standby: 3,
            // A surge never has fewer servers UP than the old fleet.
            capacity: Capacity::MinHealthy(3),
            plain_config: false,
        }
    }
}

/// Which provider a surge plan names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// The built-in `standby` provider (hosts marked `standby = true`).
    Standby,
    /// `provider = "command"` with the test provider's executables.
    Command,
}

/// How the test provider misbehaves on one operation, when asked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehave {
    /// Sleeps for an hour (the caller's timeout must end it).
    Hang,
    /// Exits 3 with a message on stderr.
    Fail,
    /// Prints something that is not the JSON asked for, and exits 0.
    Garbage,
}

impl Misbehave {
    /// Its name in the provider's switch file.
    pub fn as_str(self) -> &'static str {
        match self {
            Misbehave::Hang => "hang",
            Misbehave::Fail => "fail",
            Misbehave::Garbage => "garbage",
        }
    }
}

/// The running surge fleet; everything (provider-launched hosts included) stops
/// on drop.
pub struct SurgeFleet {
    /// The attached app servers, `web-1`...
    pub apps: Vec<AppHost>,
    /// The standby hosts (inventory `standby = true`), not attached.
    pub standby: Vec<AppHost>,
    /// The database host.
    pub db: DbHost,
    /// The load balancer (slots, cookie persistence).
    pub haproxy: Haproxy,
    /// The load balancer's agent.
    pub lb_agent: AgentProcess,
    /// The coordinator config (apps, standbys, db, lb).
    pub coordinator: Coordinator,
    /// file:// URL of the repository (tags v1, v2, v3-broken).
    pub repo: String,
    /// The private CA.
    pub pki: Pki,
    /// What every app host is made of.
    pub kit: HostKit,
    /// The test provider's state: kit, launched hosts, recorded calls, switches.
    pub provider_dir: PathBuf,
    /// The fixture's directory.
    pub work: Workdir,
    monitor: Option<UpMonitor>,
    unchecked: Option<&'static str>,
    _serial: SerialGuard,
}

impl SurgeFleet {
    /// Starts the fleet: db host, app hosts on v1 (attached), standby hosts on v1
    /// (not attached), HAProxy and its agent, the coordinator config and the test
    /// provider's files.
    pub fn start(options: SurgeOptions) -> anyhow::Result<Self> {
        let serial = crate::fleet::serial();
        let work = Workdir::new()?;
        let repo = crate::git::versions_repo(&work.subdir("git")?)?;
        let pki = Pki::init(&work.subdir("pki")?)?;
        let hosts_dir = work.subdir("hosts")?;
        let provider_dir = work.subdir("provider")?;
        let hooks = work.subdir("hooks")?;
        write_hook_scripts(&hooks)?;
        let db = start_db_host(&work, &pki, &hooks)?;
        let kit = HostKit {
            pki: pki.dir.clone(),
            repo: repo.clone(),
            db: db.db.clone(),
            hooks: hooks.clone(),
            dbcheck_fail: work.subdir("dbcheck-fail")?,
            fleet_hosts: Some(hosts_dir.clone()),
        };
        kit.save(&provider_dir)?;
        write_provider_executables(&provider_dir)?;

        let mut apps = Vec::new();
        let mut standby = Vec::new();
        for n in 1..=options.apps + options.standby {
            let host = start_app_host(&kit, &hosts_dir, &format!("web-{n}"), host_ip(n))?;
            if n <= options.apps {
                apps.push(host);
            } else {
                standby.push(host);
            }
        }
        let backend = if options.plain_config {
            BackendSpec {
                name: BACKEND.to_owned(),
                slots: 0,
                servers: apps
                    .iter()
                    .map(|h| (h.name.clone(), h.apache.addr()))
                    .collect(),
            }
        } else {
            BackendSpec::slots(BACKEND, 16)
        };
        let (haproxy, lb_agent) =
            crate::scenario::start_lb_host(work.path(), &hosts_dir, &pki, LB_HOST, backend)?;
        let mut specs: Vec<HostSpec> = Vec::new();
        for (host, is_standby) in apps
            .iter()
            .map(|h| (h, false))
            .chain(standby.iter().map(|h| (h, true)))
        {
            let mut spec = HostSpec::of(&host.agent, &["app"]);
            spec.app = Some(host.apache.addr());
            if is_standby {
                spec.extra = "standby = true\n".into();
            }
            specs.push(spec);
        }
        specs.push(HostSpec::of(&db.agent, &["db"]));
        specs.push(HostSpec::of(&lb_agent, &["lb"]));
        let coordinator = Coordinator::write(&work.subdir("ops")?, &pki, "ops", &specs)?;

        if !options.plain_config {
            let mut args = vec!["attach"];
            args.extend(apps.iter().map(|h| h.name.as_str()));
            let out = coordinator.run(&args);
            if !out.status.success() {
                bail!("initial attach failed: {}", output_text(&out));
            }
        }
        let (monitor, unchecked) = match options.capacity {
            Capacity::MinHealthy(n) => {
                wait_up(&haproxy, apps.len())?;
                if options.plain_config {
                    wait_checked(&haproxy)?;
                }
                (Some(UpMonitor::start(&haproxy, &[BACKEND], n)?), None)
            }
            Capacity::Unchecked(why) => (None, Some(why)),
        };
        Ok(SurgeFleet {
            apps,
            standby,
            db,
            haproxy,
            lb_agent,
            coordinator,
            repo,
            pki,
            kit,
            provider_dir,
            work,
            monitor,
            unchecked,
            _serial: serial,
        })
    }

    /// A surge plan over the `app` hosts for `reference`, with the db hooks, a
    /// short bake and the given provider; `extra` is appended (more sections or
    /// keys of the last one, `[inputs]`).
    pub fn surge_plan(&self, provider: ProviderKind, reference: &str, extra: &str) -> String {
        let provider_section = match provider {
            ProviderKind::Standby => "provider = \"standby\"\n".to_owned(),
            ProviderKind::Command => {
                let exe = |n: &str| self.provider_dir.join(n).display().to_string();
                format!(
                    "provider = \"command\"\n\n[provider]\nlaunch = {:?}\nterminate = {:?}\narray = {:?}\n",
                    exe("launch"),
                    exe("terminate"),
                    exe("array")
                )
            }
        };
        format!(
            "strategy = \"surge\"\nroles = [\"app\"]\n\n[revision]\nrepo = {repo:?}\nref = {reference:?}\n\n[rollout]\nmin_healthy = 3\ndrain_timeout = \"20s\"\nquiet = \"500ms\"\nattach_timeout = \"20s\"\n\n[health]\npath = \"/VERSION\"\nexpect = 200\nrise = 2\ninterval = \"200ms\"\ntimeout = \"10s\"\n\n[db]\nbackup = {BACKUP_HOOK:?}\nmigrate = {MIGRATE_HOOK:?}\ncheck = {DBCHECK_HOOK:?}\n\n[bake]\nduration = \"3s\"\nmax_5xx_ratio = 0.01\n\n[inputs]\nAPP_ENV = \"test\"\n\n[surge]\nbatch = 1\nterminate_after = \"30m\"\n{provider_section}{extra}",
            repo = self.repo,
        )
    }

    /// Writes [`Self::surge_plan`] to `surge.toml` in the fixture's directory
    /// and returns its path, as the command line takes it.
    pub fn write_surge_plan(
        &self,
        provider: ProviderKind,
        reference: &str,
        extra: &str,
    ) -> anyhow::Result<String> {
        let path = self.write_plan("surge.toml", &self.surge_plan(provider, reference, extra))?;
        Ok(path.display().to_string())
    }

    /// Writes a plan file into the fixture's directory and returns its path.
    pub fn write_plan(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.work.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Waits until no `migrate` hook runs on the db host, as an operator does
    /// before checking the database after a coordinator died: the agent carries
    /// on a hook it started even when the coordinator that asked for it is gone,
    /// and a request already on its way when the coordinator was killed starts the
    /// hook within milliseconds (hence the half second first).
    pub fn wait_until_no_migration_runs(&self) -> anyhow::Result<()> {
        std::thread::sleep(Duration::from_millis(500));
        let script = self.kit.hooks.join("migrate.sh").display().to_string();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !crate::process::command_lines_containing(&script).is_empty() {
            if Instant::now() > deadline {
                bail!("{script} still runs after 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// How many times `migrate` ran (rows of `migration_runs`; 0 before the first).
    pub fn migrate_runs(&self) -> anyhow::Result<u64> {
        let out = sqlite(
            &self.db.db,
            "SELECT count(*) FROM sqlite_master WHERE name = 'migration_runs';",
        )?;
        if out.trim() == "0" {
            return Ok(0);
        }
        let n = sqlite(&self.db.db, "SELECT count(*) FROM migration_runs;")?;
        n.trim()
            .parse()
            .with_context(|| format!("count of migration_runs: {n:?}"))
    }

    /// The snapshots `backup` made, oldest first.
    pub fn backups(&self) -> anyhow::Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.db.backups)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        Ok(files)
    }

    /// Makes `dbcheck` fail on `host` from now on.
    pub fn fail_dbcheck_on(&self, host: &str) -> anyhow::Result<()> {
        std::fs::write(self.kit.dbcheck_fail.join(host), "")?;
        Ok(())
    }

    /// Makes `dbcheck` pass on `host` again.
    pub fn clear_dbcheck_failure(&self, host: &str) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(self.kit.dbcheck_fail.join(host));
        Ok(())
    }

    /// Makes `host` (a fixture host or one the provider launched) answer 500 to
    /// every page while its health file keeps it UP (see [`break_app_at`]).
    pub fn break_app(&self, host: &str) -> anyhow::Result<()> {
        break_app_at(&self.deploy_root(host)?)
    }

    /// Undoes [`Self::break_app`].
    pub fn repair_app(&self, host: &str) -> anyhow::Result<()> {
        repair_app_at(&self.deploy_root(host)?)
    }

    /// The `[deploy] root` of a fixture host or a launched one.
    pub fn deploy_root(&self, host: &str) -> anyhow::Result<PathBuf> {
        if let Some(h) = self
            .apps
            .iter()
            .chain(&self.standby)
            .find(|h| h.name == host)
        {
            return Ok(h.root.clone());
        }
        let launched = self.provider_dir.join("hosts").join(host).join("www");
        if launched.is_dir() {
            return Ok(launched);
        }
        bail!("no app host {host} in the fixture or among the provider's")
    }

    /// Makes the test provider's `op` (`launch`, `terminate` or `array`)
    /// misbehave from now on; `None` makes it behave again.
    pub fn provider_misbehaves(&self, op: &str, how: Option<Misbehave>) -> anyhow::Result<()> {
        let dir = self.provider_dir.join("misbehave");
        std::fs::create_dir_all(&dir)?;
        match how {
            Some(how) => std::fs::write(dir.join(op), how.as_str())?,
            None => {
                let _ = std::fs::remove_file(dir.join(op));
            }
        }
        Ok(())
    }

    /// Every call the test provider got, in order, one line each:
    /// `launch like=web-1 count=3 inputs=APP_ENV`, `terminate web-20 web-21`,
    /// `array disable`.
    pub fn provider_calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.provider_dir.join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The hosts the test provider launched, and whether each still runs.
    pub fn launched(&self) -> anyhow::Result<Vec<LaunchedHost>> {
        LaunchedHost::load_all(&self.provider_dir)
    }

    /// The coordinator's view of HAProxy: names of the servers UP in the backend
    /// (slot names map to hosts through their addresses).
    pub fn up_addresses(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .haproxy
            .show_stat()?
            .into_iter()
            .filter(|r| r.pxname == BACKEND && r.is_server() && r.is_up())
            .map(|r| r.addr)
            .collect())
    }

    /// The main frontend (through HAProxy).
    pub fn frontend(&self) -> SocketAddr {
        self.haproxy.frontend()
    }

    /// What the capacity monitor saw so far, or an error naming every sample with
    /// fewer UP servers than asked for. Dropping the fleet makes the same check.
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

    /// Stops checking capacity for the rest of the test, for `reason`.
    pub fn stop_checking_capacity(&mut self, reason: &'static str) -> anyhow::Result<UpReport> {
        let report = self.check_capacity();
        if let Some(m) = self.monitor.take() {
            drop(m.stop());
        }
        self.unchecked = Some(reason);
        report
    }

    /// The fixture's directory.
    pub fn dir(&self) -> &Path {
        self.work.path()
    }
}

impl Drop for SurgeFleet {
    fn drop(&mut self) {
        // The verdict first: stopping the launched hosts below takes servers
        // that may serve by now (after a command-provider handover) out of
        // HAProxy, which is the teardown, not the rollout.
        let verdict = self.monitor.as_ref().map(|_| self.check_capacity());
        if let Some(m) = self.monitor.take() {
            drop(m.stop());
        }
        // Hosts the provider launched are nobody's children: stop them here.
        let _ = stop_processes_under(&self.provider_dir);
        if let Some(Err(e)) = verdict
            && !std::thread::panicking()
        {
            panic!("capacity invariant broken: {e:#}");
        }
    }
}

/// One host the test provider launched (`<provider dir>/launched.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchedHost {
    /// Its name (= its agent certificate's).
    pub name: String,
    /// Its agent's QUIC address.
    pub address: String,
    /// Its Apache.
    pub app: SocketAddr,
    /// Its directory.
    pub dir: PathBuf,
    /// `terminate` stopped it.
    pub terminated: bool,
}

impl LaunchedHost {
    /// All hosts ever launched under `provider_dir`.
    pub fn load_all(provider_dir: &Path) -> anyhow::Result<Vec<Self>> {
        let path = provider_dir.join("launched.json");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
        }
    }

    /// Writes the list back.
    pub fn save_all(provider_dir: &Path, hosts: &[Self]) -> anyhow::Result<()> {
        let path = provider_dir.join("launched.json");
        let tmp = provider_dir.join("launched.json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(hosts)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }
}

/// `sqlite3 DB SQL`, its stdout.
fn sqlite(db: &Path, sql: &str) -> anyhow::Result<String> {
    let out = Command::new("sqlite3")
        .args(["-cmd", ".timeout 5000"])
        .arg(db)
        .arg(sql)
        .output()
        .context("run sqlite3 (scripts/install-deps.sh installs it)")?;
    if !out.status.success() {
        bail!("sqlite3 {} {sql:?}: {}", db.display(), output_text(&out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The db host: a database with a table and a row, and an agent whose hooks are
/// `backup` and `migrate`.
fn start_db_host(work: &Workdir, pki: &Pki, hooks: &Path) -> anyhow::Result<DbHost> {
    let dir = work.subdir("db")?;
    let db = dir.join("app.sqlite3");
    let backups = dir.join("backups");
    sqlite(
        &db,
        "CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO users (name) VALUES ('alice');",
    )?;
    let backup = format!(
        "sh {} {} {}",
        hooks.join("backup.sh").display(),
        db.display(),
        backups.display()
    );
    let migrate = format!("sh {} {}", hooks.join("migrate.sh").display(), db.display());
    let agent = AgentProcess::start(
        &work.subdir("hosts")?,
        pki,
        AgentSpec {
            name: DB_HOST,
            ip: host_ip(50),
            extra: format!("\n[hooks]\n{BACKUP_HOOK} = {backup:?}\n{MIGRATE_HOOK} = {migrate:?}\n"),
        },
    )?;
    Ok(DbHost { agent, db, backups })
}

/// The database hooks, as an operator would write them.
fn write_hook_scripts(dir: &Path) -> anyhow::Result<()> {
    let files = [
        (
            "backup.sh",
            r#"# Runbook step 1: an online snapshot of the database, then the report the
# agent checks (its last stdout line).
set -eu
db="$1"; dir="$2"
mkdir -p "$dir"
file="$dir/app-$(date -u +%Y%m%dT%H%M%S%N).sqlite3"
sqlite3 -cmd '.timeout 5000' "$db" ".backup '$file'"
size=$(stat -c %s "$file")
sum=$(sha256sum "$file" | cut -d' ' -f1)
echo "backed up $db"
printf '{"path": "%s", "size": %s, "sha256": "%s"}\n' "$file" "$size" "$sum"
"#,
        ),
        (
            "migrate.sh",
            r#"# Runbook step 2: idempotent schema changes; each run is counted.
set -eu
db="$1"
sqlite3 -cmd '.timeout 5000' "$db" "CREATE TABLE IF NOT EXISTS sessions_v2 (id INTEGER PRIMARY KEY, data TEXT);
CREATE TABLE IF NOT EXISTS migration_runs (id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL);
INSERT INTO migration_runs (at) VALUES (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));"
echo "migrated for ${HANDOVER_INPUT_APP_ENV:-no APP_ENV} (run $(sqlite3 -cmd '.timeout 5000' "$db" 'SELECT count(*) FROM migration_runs;'))"
"#,
        ),
        (
            "dbcheck.sh",
            r#"# Runbook step 7: can this app host reach the database?
set -eu
host="$1"; db="$2"; switch="$3"
if [ -e "$switch/$host" ]; then
  echo "dbcheck: $host cannot reach the database (fixture switch $switch/$host)" >&2
  exit 1
fi
sqlite3 -cmd '.timeout 5000' "$db" 'SELECT count(*) FROM sqlite_master;' >/dev/null
echo "dbcheck: $host reaches the database"
"#,
        ),
    ];
    for (name, text) in files {
        write_public(&dir.join(name), text)?;
    }
    Ok(())
}

/// `launch`, `terminate` and `array` in `provider_dir`: each runs the test
/// provider with its operation and this state directory (a plan names plain
/// executables, run without a shell and without arguments of its own).
fn write_provider_executables(provider_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let bin = crate::agents::bin("handover-test-provider");
    for op in ["launch", "terminate", "array"] {
        let path = provider_dir.join(op);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\nexec {:?} --state {:?} {op} \"$@\"\n",
                bin.display().to_string(),
                provider_dir.display().to_string()
            ),
        )?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// Waits (up to 20 s) until `n` servers of [`BACKEND`] are UP.
fn wait_up(haproxy: &Haproxy, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = haproxy.show_stat()?;
        let up = stats
            .iter()
            .filter(|r| r.pxname == BACKEND && r.is_server() && r.is_up())
            .count();
        if up >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {up} of {n} app servers UP after the initial attach: {stats:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every server of [`BACKEND`] has passed a health check (`UP`,
/// no `INI`) and reads the same in two samples 200 ms apart. Plain `server`
/// lines start as "UP 1/2" before any check, and a session pinned in those first
/// milliseconds was moved to another server by HAProxy itself (seen in 4 of 10
/// runs, with no rollout at all).
fn wait_checked(haproxy: &Haproxy) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let sample = || -> anyhow::Result<Vec<(String, String, String, String)>> {
        Ok(haproxy
            .show_stat()?
            .into_iter()
            .filter(|r| r.pxname == BACKEND && r.is_server())
            .map(|r| (r.svname, r.status, r.check_status, r.cookie))
            .collect())
    };
    let settled = |s: &[(String, String, String, String)]| {
        s.iter()
            .all(|(_, status, check, _)| status == "UP" && check.trim_start_matches("* ") == "L7OK")
    };
    let mut last = sample()?;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = sample()?;
        if settled(&now) && now == last {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the plain servers did not settle: {now:?}");
        }
        last = now;
    }
}

/// Load through HAProxy plus long-lived sessions pinned to the old servers: what
/// a surge must hand over without anyone noticing.
pub struct SurgeLoad {
    traffic: crate::traffic::Traffic,
    sessions: crate::sessions::PinnedSessions,
}

impl SurgeLoad {
    /// Three clients through the frontend and three cookie-pinned sessions,
    /// given half a second to settle.
    pub fn start(fleet: &SurgeFleet) -> anyhow::Result<SurgeLoad> {
        let traffic = crate::traffic::Traffic::start(
            fleet.frontend(),
            crate::traffic::TrafficOptions {
                clients: 3,
                pause: Duration::from_millis(25),
                max_duration: Duration::from_secs(300),
                ..crate::traffic::TrafficOptions::default()
            },
        )
        .context("traffic starts")?;
        let sessions = crate::sessions::PinnedSessions::start(
            fleet.frontend(),
            fleet.haproxy.admin_socket(),
            crate::sessions::SessionOptions {
                sessions: 3,
                pause: Duration::from_millis(200),
                // Served ~2 s more once their server drains, then the users leave.
                after_drain: 10,
                max_duration: Duration::from_secs(300),
                backend: BACKEND.to_owned(),
            },
        )
        .context("sessions start")?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(SurgeLoad { traffic, sessions })
    }

    /// Stops both and reports them.
    pub fn stop(
        self,
    ) -> (
        crate::traffic::TrafficReport,
        Vec<crate::sessions::SessionReport>,
    ) {
        let sessions = self.sessions.stop();
        (self.traffic.stop(), sessions)
    }
}

/// Asserts no request failed and no session was cut.
pub fn assert_nobody_noticed(
    report: &crate::traffic::TrafficReport,
    sessions: &[crate::sessions::SessionReport],
) {
    assert!(report.ok > 0, "traffic ran");
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
    for s in sessions {
        assert_eq!(s.failed, 0, "session {s:?}");
        assert!(s.cut.is_none(), "session cut: {s:?}");
    }
}
