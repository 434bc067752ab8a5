//! A real HAProxy 2.6 (Debian's `haproxy`) load balancer on loopback.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::ports::free_tcp_port;
use crate::process::{ChildGuard, log_tail};
use crate::workdir::Workdir;

/// The HAProxy binary.
pub const HAPROXY: &str = "/usr/sbin/haproxy";
/// How long to wait for a fresh HAProxy's admin socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin socket I/O timeout: a command that hangs is a harness bug.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(5);

/// One backend of the generated config.
#[derive(Debug, Clone)]
pub struct BackendSpec {
    /// Backend name, e.g. `be_app`.
    pub name: String,
    /// Number of `server-template slot 1-N ...` slots ([`SLOT_SERVER`]); 0 for
    /// a backend filled only by runtime `add server` (no persistence in 2.6).
    pub slots: usize,
    /// Servers declared in the config (`server NAME ADDR check`), enabled.
    pub servers: Vec<(String, SocketAddr)>,
}

impl BackendSpec {
    /// A backend with `slots` template slots.
    pub fn slots(name: &str, slots: usize) -> Self {
        Self {
            name: name.to_owned(),
            slots,
            servers: Vec::new(),
        }
    }

    /// An empty backend for dynamic (`add server`) servers.
    pub fn dynamic(name: &str) -> Self {
        Self::slots(name, 0)
    }
}

/// How to start an HAProxy.
#[derive(Debug, Clone)]
pub struct HaproxyOptions {
    /// Frontend address; each backend gets its own frontend on a free port there.
    pub ip: Ipv4Addr,
    /// Backends, in order; the first is the "main" one ([`Haproxy::frontend`]).
    pub backends: Vec<BackendSpec>,
    /// `dynamic-cookie-key`.
    pub cookie_key: String,
    /// `retries 3` + `option redispatch`. Off by default so tests *see* failures
    /// when a server is cut instead of HAProxy silently hiding them.
    pub redispatch: bool,
    /// `hard-stop-after`: bounds how long an old process lingers after a reload
    /// while clients hold connections.
    pub hard_stop_after: Duration,
    /// Create HAProxy's own directory under this parent (see
    /// [`crate::apache::ApacheOptions::parent`]).
    pub parent: Option<PathBuf>,
    /// Lines appended verbatim to the `defaults` section.
    pub extra_defaults: Vec<String>,
    /// What follows `server-template slot 1-N` in slot backends. See
    /// [`SLOT_SERVER`] for why the default is not `0.0.0.0:0 check disabled`.
    pub slot_server: String,
}

/// Default slot declaration: survives reloads.
///
/// Tried on 2.6.12 with `-sf` reloads and the server-state-file:
/// * `0.0.0.0:0 check disabled` (DESIGN.md): the state file restores port and admin
///   state but *not* the IP (slots come back as `0.0.0.0:PORT`, enabled ones go
///   DOWN), because the saved address is only applied through `init-addr last`,
///   which only acts on servers declared with a host name.
/// * `localhost:0 ... init-addr last,libc,none`: addresses, cookies and states come
///   back and read UP, yet every request gets 503 and the old process lingers
///   until `hard-stop-after`; port 0 puts the server in port-mapping mode (`+0`).
/// * `localhost:1 ... init-addr last,libc,none`: everything survives and traffic
///   flows. Unattached slots read `127.0.0.1:1` (disabled, so never used).
pub const SLOT_SERVER: &str = "localhost:1 check disabled init-addr last,libc,none";

/// The slot declaration DESIGN.md describes; loses slot IPs on reload (see
/// [`SLOT_SERVER`]). Kept so a test can pin that behaviour down.
pub const SLOT_SERVER_IP_ONLY: &str = "0.0.0.0:0 check disabled";

impl Default for HaproxyOptions {
    fn default() -> Self {
        Self {
            ip: crate::ports::host_ip(100),
            backends: vec![BackendSpec::slots("be_app", 8)],
            cookie_key: "handover-tests-key".to_owned(),
            redispatch: false,
            hard_stop_after: Duration::from_secs(5),
            parent: None,
            extra_defaults: Vec::new(),
            slot_server: SLOT_SERVER.to_owned(),
        }
    }
}

/// One row of `show stat`, the fields tests and the product rely on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStat {
    /// Proxy (frontend/backend) name.
    pub pxname: String,
    /// Server name, or `FRONTEND` / `BACKEND`.
    pub svname: String,
    /// `UP`, `UP 1/2`, `DOWN`, `NOLB`, `DRAIN`, `MAINT`, `no check`, `OPEN`...
    pub status: String,
    /// Current sessions (requests in flight, not idle keep-alive connections).
    pub scur: u64,
    /// Queued requests.
    pub qcur: u64,
    /// Total sessions.
    pub stot: u64,
    /// Last check result, e.g. `L7OK`, `L7STS`, `L4CON`, `* L7OK` while checking.
    pub check_status: String,
    /// Responses with 5xx status.
    pub hrsp_5xx: u64,
    /// `ip:port` of the server (empty for frontend/backend rows).
    pub addr: String,
    /// The server's persistence cookie value.
    pub cookie: String,
}

impl ServerStat {
    /// A real server row (not the FRONTEND / BACKEND aggregate).
    pub fn is_server(&self) -> bool {
        self.svname != "FRONTEND" && self.svname != "BACKEND"
    }

    /// Whether HAProxy would give this server new traffic: `UP` or `UP x/y`
    /// (going down but still up). `NOLB`, `DRAIN`, `MAINT`, `DOWN` are not up.
    pub fn is_up(&self) -> bool {
        is_up_status(&self.status)
    }
}

/// See [`ServerStat::is_up`].
pub fn is_up_status(status: &str) -> bool {
    status == "UP" || status.starts_with("UP ")
}

/// Parses `show stat` CSV by header name (column order differs across versions).
pub fn parse_show_stat(csv: &str) -> anyhow::Result<Vec<ServerStat>> {
    let mut lines = csv.lines();
    let header = lines
        .find(|l| l.starts_with('#'))
        .with_context(|| format!("no header in show stat output: {csv:?}"))?;
    let cols: HashMap<&str, usize> = header
        .trim_start_matches('#')
        .trim()
        .split(',')
        .enumerate()
        .map(|(i, n)| (n.trim(), i))
        .collect();
    let idx = |n: &str| {
        cols.get(n)
            .copied()
            .with_context(|| format!("show stat has no column {n}"))
    };
    let (px, sv, st, scur, qcur, stot, chk, h5, addr, cookie) = (
        idx("pxname")?,
        idx("svname")?,
        idx("status")?,
        idx("scur")?,
        idx("qcur")?,
        idx("stot")?,
        idx("check_status")?,
        idx("hrsp_5xx")?,
        idx("addr")?,
        idx("cookie")?,
    );
    let mut out = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
        let f: Vec<&str> = line.split(',').collect();
        let s = |i: usize| f.get(i).copied().unwrap_or("").to_owned();
        let n = |i: usize| f.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
        out.push(ServerStat {
            pxname: s(px),
            svname: s(sv),
            status: s(st),
            scur: n(scur),
            qcur: n(qcur),
            stot: n(stot),
            check_status: s(chk),
            hrsp_5xx: n(h5),
            addr: s(addr),
            cookie: s(cookie),
        });
    }
    Ok(out)
}

/// Sends one command to an HAProxy admin socket and returns the whole answer.
///
/// The CLI in non-interactive mode answers one line and closes, so reading to EOF
/// delimits the answer.
pub fn runtime_at(socket: &Path, cmd: &str) -> anyhow::Result<String> {
    let mut s =
        UnixStream::connect(socket).with_context(|| format!("connect {}", socket.display()))?;
    s.set_read_timeout(Some(SOCKET_TIMEOUT))
        .context("set_read_timeout")?;
    s.set_write_timeout(Some(SOCKET_TIMEOUT))
        .context("set_write_timeout")?;
    s.write_all(format!("{cmd}\n").as_bytes())
        .with_context(|| format!("send {cmd:?}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .with_context(|| format!("read answer to {cmd:?}"))?;
    Ok(out)
}

/// A running HAProxy; it and every process a reload started are killed on drop.
#[derive(Debug)]
pub struct Haproxy {
    /// Current process last; older ones (still draining after `-sf`) before it.
    procs: Vec<ChildGuard>,
    frontends: Vec<(String, SocketAddr)>,
    config: PathBuf,
    socket: PathBuf,
    state_file: PathBuf,
    log: PathBuf,
    hard_stop_after: Duration,
    dir: Workdir,
}

impl Haproxy {
    /// Writes the config, checks it with `haproxy -c`, starts `haproxy -f cfg -db`
    /// and waits until the admin socket answers with the new pid.
    pub fn start(opts: HaproxyOptions) -> anyhow::Result<Self> {
        anyhow::ensure!(!opts.backends.is_empty(), "no backends");
        let parent = opts.parent.clone().unwrap_or_else(std::env::temp_dir);
        let dir = Workdir::new_in(&parent, "haproxy")?;
        let socket = dir.path().join("admin.sock");
        let state_file = dir.path().join("server-state");
        let config = dir.path().join("haproxy.cfg");
        let log = dir.path().join("haproxy.log");
        let mut frontends = Vec::new();
        for b in &opts.backends {
            let port = free_tcp_port(opts.ip)?;
            frontends.push((
                b.name.clone(),
                SocketAddr::V4(SocketAddrV4::new(opts.ip, port)),
            ));
        }
        let cfg = render_config(&opts, &frontends, &socket, &state_file);
        std::fs::write(&config, cfg).with_context(|| format!("write {}", config.display()))?;
        let check = Command::new(HAPROXY)
            .arg("-c")
            .arg("-f")
            .arg(&config)
            .output()
            .context("run haproxy -c")?;
        anyhow::ensure!(
            check.status.success(),
            "haproxy -c rejected the config: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let mut me = Self {
            procs: Vec::new(),
            frontends,
            config,
            socket,
            state_file,
            log,
            hard_stop_after: opts.hard_stop_after,
            dir,
        };
        me.spawn(None)?;
        Ok(me)
    }

    fn spawn(&mut self, old_pid: Option<u32>) -> anyhow::Result<()> {
        let mut cmd = Command::new(HAPROXY);
        cmd.arg("-f").arg(&self.config).arg("-db");
        if let Some(pid) = old_pid {
            // -x: take the listening sockets over from the old process (seamless
            // reload, no refused connections); -sf: old one finishes its sessions.
            cmd.arg("-x")
                .arg(&self.socket)
                .arg("-sf")
                .arg(pid.to_string());
        }
        let mut child = ChildGuard::spawn("haproxy", cmd, &self.log)?;
        let pid = child.pid();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(st) = child.exited()? {
                bail!(
                    "haproxy exited at start ({st}): {}",
                    log_tail(&self.log, 3000)
                );
            }
            if let Ok(info) = self.runtime("show info")
                && info.lines().any(|l| l.trim() == format!("Pid: {pid}"))
            {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "haproxy pid {pid} did not answer on {} within {START_TIMEOUT:?}: {}",
                    self.socket.display(),
                    log_tail(&self.log, 3000)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.procs.push(child);
        Ok(())
    }

    /// Reloads the way the product's environment does ("HAProxy reloaded (`-sf`)"):
    /// saves `show servers state` to the server-state-file, starts a new process with
    /// `-x <socket> -sf <old pid>`, waits until the new one answers on the admin
    /// socket and the old one has exited (bounded by `hard-stop-after`).
    pub fn reload(&mut self) -> anyhow::Result<()> {
        self.save_state()?;
        let old_pid = self.pid().context("no running haproxy")?;
        self.spawn(Some(old_pid))?;
        let wait = self.hard_stop_after + Duration::from_secs(3);
        let n = self.procs.len();
        for old in &mut self.procs[..n - 1] {
            if old.wait_exit(wait)?.is_none() {
                bail!(
                    "old haproxy {} still running {wait:?} after reload",
                    old.pid()
                );
            }
        }
        self.procs.drain(..n - 1);
        Ok(())
    }

    /// Writes `show servers state` to the server-state-file (what a reload loads).
    pub fn save_state(&self) -> anyhow::Result<()> {
        let state = self.runtime("show servers state")?;
        anyhow::ensure!(
            state.starts_with('1'),
            "unexpected show servers state: {state:?}"
        );
        std::fs::write(&self.state_file, state)
            .with_context(|| format!("write {}", self.state_file.display()))
    }

    /// Pid of the current process.
    pub fn pid(&self) -> Option<u32> {
        self.procs.last().map(ChildGuard::pid)
    }

    /// Frontend of the first backend.
    pub fn frontend(&self) -> SocketAddr {
        self.frontends[0].1
    }

    /// Frontend that routes to `backend`.
    pub fn frontend_for(&self, backend: &str) -> Option<SocketAddr> {
        self.frontends
            .iter()
            .find(|(b, _)| b == backend)
            .map(|(_, a)| *a)
    }

    /// The admin socket (level admin, `expose-fd listeners`).
    pub fn admin_socket(&self) -> &Path {
        &self.socket
    }

    /// The generated config.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// The server-state-file.
    pub fn state_file(&self) -> &Path {
        &self.state_file
    }

    /// HAProxy's own directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Tail of HAProxy's stdout/stderr.
    pub fn logs(&self) -> String {
        log_tail(&self.log, 3000)
    }

    /// One runtime API command; returns HAProxy's answer verbatim (errors from
    /// HAProxy are text in the answer, not `Err`).
    pub fn runtime(&self, cmd: &str) -> anyhow::Result<String> {
        runtime_at(&self.socket, cmd)
    }

    /// Parsed `show stat` (all rows, including FRONTEND/BACKEND aggregates).
    pub fn show_stat(&self) -> anyhow::Result<Vec<ServerStat>> {
        parse_show_stat(&self.runtime("show stat")?)
    }

    /// The `show stat` row of `backend/server`.
    pub fn server(&self, backend: &str, server: &str) -> anyhow::Result<ServerStat> {
        self.show_stat()?
            .into_iter()
            .find(|s| s.pxname == backend && s.svname == server)
            .with_context(|| format!("no server {backend}/{server} in show stat"))
    }

    /// Attaches a slot the way the product does: `set server B/S addr A port P`,
    /// then `enable server B/S`. Fails if HAProxy answers with an error.
    pub fn attach_slot(&self, backend: &str, slot: &str, addr: SocketAddr) -> anyhow::Result<()> {
        let a = self.runtime(&format!(
            "set server {backend}/{slot} addr {} port {}",
            addr.ip(),
            addr.port()
        ))?;
        anyhow::ensure!(
            !a.to_ascii_lowercase().contains("error") && !a.contains("No such"),
            "set server addr: {a:?}"
        );
        let e = self.runtime(&format!("enable server {backend}/{slot}"))?;
        anyhow::ensure!(e.trim().is_empty(), "enable server: {e:?}");
        Ok(())
    }

    /// Polls `show stat` every 50 ms until `pred` holds for `backend/server`, or
    /// fails after `timeout` with the last row seen.
    pub fn wait_server(
        &self,
        backend: &str,
        server: &str,
        timeout: Duration,
        pred: impl Fn(&ServerStat) -> bool,
    ) -> anyhow::Result<ServerStat> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.server(backend, server) {
                Ok(s) if pred(&s) => return Ok(s),
                Ok(s) => format!("{s:?}"),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!("{backend}/{server}: condition not met within {timeout:?}; last: {last}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// [`Self::wait_server`] for a status equal to `status` (e.g. `UP`, `NOLB`).
    pub fn wait_status(
        &self,
        backend: &str,
        server: &str,
        status: &str,
        timeout: Duration,
    ) -> anyhow::Result<ServerStat> {
        self.wait_server(backend, server, timeout, |s| s.status == status)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        // Newest first: an old process may be waiting for connections the new one
        // keeps; ChildGuard's own Drop does the killing.
        while let Some(mut p) = self.procs.pop() {
            p.stop();
        }
    }
}

fn render_config(
    opts: &HaproxyOptions,
    frontends: &[(String, SocketAddr)],
    socket: &Path,
    state_file: &Path,
) -> String {
    let mut c = String::new();
    c.push_str(&format!(
        "# Generated by handover-tests.
global
    stats socket {socket} mode 600 level admin expose-fd listeners
    stats timeout 10s
    server-state-file {state}
    hard-stop-after {hsa}ms

defaults
    mode http
    log global
    timeout connect 2s
    timeout client 60s
    timeout server 30s
    timeout http-keep-alive 60s
    timeout queue 5s
    load-server-state-from-file global
    default-server inter 200ms fastinter 200ms downinter 200ms rise 2 fall 2
",
        socket = socket.display(),
        state = state_file.display(),
        hsa = opts.hard_stop_after.as_millis(),
    ));
    if opts.redispatch {
        c.push_str("    retries 3\n    option redispatch\n");
    }
    for l in &opts.extra_defaults {
        c.push_str(&format!("    {l}\n"));
    }
    for (backend, addr) in frontends {
        c.push_str(&format!(
            "\nfrontend fe_{backend}\n    bind {addr}\n    default_backend {backend}\n"
        ));
    }
    for b in &opts.backends {
        c.push_str(&format!(
            "
backend {name}
    balance roundrobin
    option httpchk
    http-check send meth GET uri /health.html
    http-check disable-on-404
    cookie SERVERID insert indirect nocache dynamic
    dynamic-cookie-key {key}
",
            name = b.name,
            key = opts.cookie_key,
        ));
        if b.slots > 0 {
            c.push_str(&format!(
                "    server-template slot 1-{} {}\n",
                b.slots, opts.slot_server
            ));
        }
        for (name, addr) in &b.servers {
            c.push_str(&format!("    server {name} {addr} check\n"));
        }
    }
    c
}
