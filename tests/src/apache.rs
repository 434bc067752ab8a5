//! A real Apache 2.4 (Debian's `apache2`, mpm_event) per simulated host.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::http;
use crate::ports::free_tcp_port;
use crate::process::{ChildGuard, log_tail};
use crate::workdir::{Workdir, write_public};

/// The Apache binary; called directly (not via apache2ctl) so no `APACHE_*`
/// environment is involved and the config is self-contained.
pub const APACHE2: &str = "/usr/sbin/apache2";
const MODULES: &str = "/usr/lib/apache2/modules";
/// How long to wait for a fresh Apache to answer.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How to start an Apache.
#[derive(Debug, Clone, Default)]
pub struct ApacheOptions {
    /// Name the pages report (`index.html` = `<name>\n`, `health.html` =
    /// `OK <name>\n`); defaults to the IP address.
    pub name: Option<String>,
    /// Serve this directory instead of a generated one (e.g. `<deploy_root>/current`);
    /// the caller makes it readable by www-data. The harness then writes no
    /// `index.html`.
    pub docroot: Option<PathBuf>,
    /// Where `/health.html` is served from. Defaults to `<workdir>/health/health.html`.
    /// It is always mapped with an `Alias`, i.e. it lives outside the docroot (as the
    /// product expects: the health file must survive a release switch).
    pub health_file: Option<PathBuf>,
    /// Create the Apache's own directory under this parent (e.g. a test's
    /// [`Workdir`]) so `pgrep -f <parent>` finds everything the test started.
    pub parent: Option<PathBuf>,
    /// Port to listen on; default: a free one.
    pub port: Option<u16>,
}

/// A running Apache; stopped (SIGTERM, then SIGKILL of its process group) on drop.
#[derive(Debug)]
pub struct Apache {
    child: ChildGuard,
    name: String,
    addr: SocketAddr,
    config: PathBuf,
    docroot: PathBuf,
    health_file: PathBuf,
    error_log: PathBuf,
    access_log: PathBuf,
    stderr_log: PathBuf,
    // Last: removed after the child is gone.
    dir: Workdir,
}

impl Apache {
    /// Starts an Apache on `ip` and a free port, with generated pages.
    pub fn start(ip: Ipv4Addr) -> anyhow::Result<Self> {
        Self::start_with(ip, ApacheOptions::default())
    }

    /// Starts an Apache with `opts`; returns once `/health.html` (or, when the health
    /// file does not exist, any HTTP response) is served.
    pub fn start_with(ip: Ipv4Addr, opts: ApacheOptions) -> anyhow::Result<Self> {
        let mut last_err = None;
        // A free port can be taken between our probe and Apache's bind: retry.
        for _ in 0..3 {
            match Self::try_start(ip, &opts) {
                Ok(a) => return Ok(a),
                Err(e) if opts.port.is_none() && format!("{e:#}").contains("in use") => {
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("apache start failed")))
    }

    fn try_start(ip: Ipv4Addr, opts: &ApacheOptions) -> anyhow::Result<Self> {
        let parent = opts.parent.clone().unwrap_or_else(std::env::temp_dir);
        let dir = Workdir::new_in(&parent, &format!("apache-{ip}"))?;
        let name = opts.name.clone().unwrap_or_else(|| ip.to_string());
        let port = match opts.port {
            Some(p) => p,
            None => free_tcp_port(ip)?,
        };
        let addr = SocketAddr::V4(SocketAddrV4::new(ip, port));
        let logs = dir.subdir("logs")?;
        let run = dir.subdir("run")?;
        let docroot = match &opts.docroot {
            Some(d) => d.clone(),
            None => {
                let d = dir.subdir("htdocs")?;
                write_public(&d.join("index.html"), &format!("{name}\n"))?;
                d
            }
        };
        let health_file = match &opts.health_file {
            Some(f) => f.clone(),
            None => {
                let h = dir.subdir("health")?.join("health.html");
                write_public(&h, &format!("OK {name}\n"))?;
                h
            }
        };
        let health_dir = health_file
            .parent()
            .context("health file has no parent directory")?
            .to_path_buf();
        let error_log = logs.join("error.log");
        let access_log = logs.join("access.log");
        let stderr_log = logs.join("stderr.log");
        let config = dir.path().join("apache2.conf");
        let cfg = render_config(&ConfigParts {
            server_root: dir.path(),
            run: &run,
            addr,
            name: &name,
            docroot: &docroot,
            health_file: &health_file,
            health_dir: &health_dir,
            error_log: &error_log,
            access_log: &access_log,
        });
        std::fs::write(&config, cfg).with_context(|| format!("write {}", config.display()))?;

        let mut cmd = Command::new(APACHE2);
        cmd.arg("-f").arg(&config).arg("-DFOREGROUND");
        let mut child = ChildGuard::spawn(&format!("apache2 {addr}"), cmd, &stderr_log)?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(st) = child.exited()? {
                bail!(
                    "apache2 on {addr} exited at start ({st}): {}{}",
                    log_tail(&stderr_log, 2000),
                    log_tail(&error_log, 2000)
                );
            }
            if http::get(addr, "/health.html", None).is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                child.stop();
                bail!(
                    "apache2 on {addr} did not answer within {START_TIMEOUT:?}: {}{}",
                    log_tail(&stderr_log, 2000),
                    log_tail(&error_log, 2000)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self {
            child,
            name,
            addr,
            config,
            docroot,
            health_file,
            error_log,
            access_log,
            stderr_log,
            dir,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The name its pages report (see [`ApacheOptions::name`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The health-check file HAProxy probes as `/health.html`; remove it to drain.
    pub fn health_file(&self) -> &Path {
        &self.health_file
    }

    /// Removes the health file (HAProxy with `disable-on-404` then drains the server).
    pub fn remove_health(&self) -> anyhow::Result<()> {
        std::fs::remove_file(&self.health_file)
            .with_context(|| format!("remove {}", self.health_file.display()))
    }

    /// Restores the health file.
    pub fn restore_health(&self) -> anyhow::Result<()> {
        write_public(&self.health_file, &format!("OK {}\n", self.name))
    }

    /// `http://ip:port/server-status?auto`, machine-readable mod_status.
    pub fn status_url(&self) -> String {
        format!("http://{}/server-status?auto", self.addr)
    }

    /// Fetches and returns the `?auto` status text.
    pub fn status(&self) -> anyhow::Result<String> {
        let r = http::get(self.addr, "/server-status?auto", None)?;
        anyhow::ensure!(r.is_success(), "server-status answered {}", r.status);
        Ok(r.body)
    }

    /// The document root served at `/`.
    pub fn docroot(&self) -> &Path {
        &self.docroot
    }

    /// Apache's error log.
    pub fn error_log(&self) -> &Path {
        &self.error_log
    }

    /// Apache's access log: client, request line, status and the Cookie header
    /// (shows which pinned sessions still arrive).
    pub fn access_log(&self) -> &Path {
        &self.access_log
    }

    /// The generated config file.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// This Apache's own directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Pid of the Apache parent process.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// `apache2 -k graceful` with the same config: the product reloads Apache this
    /// way after switching releases, keeping established connections.
    pub fn graceful(&self) -> anyhow::Result<()> {
        let out = Command::new(APACHE2)
            .arg("-f")
            .arg(&self.config)
            .args(["-k", "graceful"])
            .output()
            .context("run apache2 -k graceful")?;
        anyhow::ensure!(
            out.status.success(),
            "apache2 -k graceful failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Stops it now (also done on drop).
    pub fn stop(&mut self) {
        self.child.stop();
    }

    /// Tail of stderr and error log, for assertion messages.
    pub fn logs(&self) -> String {
        format!(
            "{}{}",
            log_tail(&self.stderr_log, 2000),
            log_tail(&self.error_log, 2000)
        )
    }
}

struct ConfigParts<'a> {
    server_root: &'a Path,
    run: &'a Path,
    addr: SocketAddr,
    name: &'a str,
    docroot: &'a Path,
    health_file: &'a Path,
    health_dir: &'a Path,
    error_log: &'a Path,
    access_log: &'a Path,
}

/// A self-contained config: every path lives in the Apache's own directory.
/// `log_config` and `unixd` are compiled in (`apache2 -l`), so not loaded.
fn render_config(p: &ConfigParts<'_>) -> String {
    let root = p.server_root.display();
    format!(
        r#"# Generated by handover-tests.
ServerRoot "{root}"
DefaultRuntimeDir "{run}"
PidFile "{run}/apache2.pid"
ServerName {name}
Listen {addr}

LoadModule mpm_event_module {MODULES}/mod_mpm_event.so
LoadModule authz_core_module {MODULES}/mod_authz_core.so
LoadModule authz_host_module {MODULES}/mod_authz_host.so
LoadModule mime_module {MODULES}/mod_mime.so
LoadModule dir_module {MODULES}/mod_dir.so
LoadModule alias_module {MODULES}/mod_alias.so
LoadModule status_module {MODULES}/mod_status.so

# Apache refuses to serve as root; workers drop to www-data.
User www-data
Group www-data

# Small, so a few instances fit on a 2-core test machine.
StartServers 1
ServerLimit 4
ThreadsPerChild 16
MaxRequestWorkers 64
MinSpareThreads 8
MaxSpareThreads 32

# Long keep-alive so tests can hold idle connections open across a drain.
KeepAlive On
KeepAliveTimeout 60
MaxKeepAliveRequests 0
Timeout 30

ErrorLog "{error_log}"
LogLevel warn
LogFormat "%h %l %u %t \"%r\" %>s %b \"%{{Cookie}}i\"" harness
CustomLog "{access_log}" harness

TypesConfig /etc/mime.types
DirectoryIndex index.html
ExtendedStatus On

<Directory />
    AllowOverride None
    Require all denied
</Directory>

DocumentRoot "{docroot}"
<Directory "{docroot}">
    Options FollowSymLinks
    Require all granted
</Directory>

# The health file lives outside the docroot (and outside any release).
Alias /health.html "{health_file}"
<Directory "{health_dir}">
    Require all granted
</Directory>

<Location /server-status>
    SetHandler server-status
    Require ip 127.0.0.0/8
</Location>
"#,
        run = p.run.display(),
        name = p.name,
        addr = p.addr,
        error_log = p.error_log.display(),
        access_log = p.access_log.display(),
        docroot = p.docroot.display(),
        health_file = p.health_file.display(),
        health_dir = p.health_dir.display(),
    )
}
