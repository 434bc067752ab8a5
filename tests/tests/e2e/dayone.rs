//! Day one, as the README tells it (issue 18): "Setting up a fleet" followed to the
//! letter on loopback, so the docs cannot drift from what works.
//!
//! Every config file is the text of a code block in the docs — the haproxy.cfg in
//! docs/haproxy.md; the agent.toml files, the Apache vhost, handover.toml and the
//! plan in the README — found by its first line (`# /etc/haproxy/haproxy.cfg`, ...),
//! with only addresses, ports and paths changed, each change listed in
//! [`Host::paths`] or beside it and each required to match (a block that no longer
//! holds what is replaced fails the test, naming it). The `handover ...` lines of
//! the section's `sh` blocks run in order, from the bastion directory; the
//! `scp` lines `--print-install` prints are carried out as copies into each host's
//! directory. What the README asks a person to do by hand is done here by the test
//! and named where it happens: create the health file, enable the Apache site
//! (here: include it in a minimal apache2.conf), start HAProxy, start the agents.
//! Differences forced by one machine: addresses 10.0.0.N become 127.0.1.N, ports
//! are free ones, `/etc`, `/srv`, `/var` and `/run` live under each host's
//! directory, each agent gets its own `control_socket`, the `reload` hook runs
//! `apache2 -f CONF -k graceful` instead of `systemctl reload-or-restart apache2`
//! (both start Apache when it is not running), and the rollout is given `--yes`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use handover_tests::agents::{bin, output_text};
use handover_tests::fleet::{
    Traffic, TrafficOptions, Workdir, free_tcp_port, free_udp_port, get, host_ip, parse_show_stat,
    runtime_at,
};
use handover_tests::git::versions_repo;
use handover_tests::process::{ChildGuard, log_tail};

const README: &str = include_str!("../../../README.md");
const HAPROXY_MD: &str = include_str!("../../../docs/haproxy.md");
/// The repository URL the docs use.
const DOCS_REPO: &str = "https://git.example.com/shop.git";
/// The backend the docs name, in haproxy.cfg and in lb-1's agent.toml.
const DOCS_BACKEND: &str = "be_app";

/// The text between `## title` and the next `## ` heading.
fn section<'a>(doc: &'a str, title: &str) -> &'a str {
    let start = doc
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("no section `## {title}` in the docs"));
    let rest = &doc[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |e| e + 4);
    &rest[..end]
}

/// Fenced code blocks of `text` as (info string, body), indentation removed.
fn code_blocks(text: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, usize, String)> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match open.take() {
            None if trimmed.starts_with("```") => {
                open = Some((trimmed[3..].trim().to_string(), indent, String::new()));
            }
            None => {}
            Some((info, _, body)) if trimmed == "```" => blocks.push((info, body)),
            Some((info, ind, mut body)) => {
                body.push_str(line.get(ind..).unwrap_or(trimmed));
                body.push('\n');
                open = Some((info, ind, body));
            }
        }
    }
    blocks
}

/// The code block whose first line is `first_line`.
fn block(doc: &str, first_line: &str) -> String {
    code_blocks(doc)
        .into_iter()
        .map(|(_, body)| body)
        .find(|body| body.lines().next() == Some(first_line))
        .unwrap_or_else(|| panic!("no code block starting with `{first_line}` in the docs"))
}

/// `text` with each (from, to) replaced in order; each must occur.
fn substitute(what: &str, text: &str, changes: &[(String, String)]) -> String {
    let mut text = text.to_string();
    for (from, to) in changes {
        assert!(
            text.contains(from.as_str()),
            "{what} in the docs no longer contains `{from}`: update the docs and \
             tests/tests/e2e/dayone.rs together\n{text}"
        );
        text = text.replace(from.as_str(), to);
    }
    text
}

fn pair(from: &str, to: impl ToString) -> (String, String) {
    (from.to_string(), to.to_string())
}

/// One simulated host: its address, its ports and the directory standing for `/`.
struct Host {
    name: &'static str,
    docs_ip: &'static str,
    ip: Ipv4Addr,
    agent_port: u16,
    http_port: u16,
    root: PathBuf,
}

impl Host {
    fn new(work: &Workdir, name: &'static str, docs_ip: &'static str, n: u8) -> Self {
        let ip = host_ip(n);
        let root = work.subdir(name).expect("host dir");
        std::fs::create_dir_all(root.join("var/log")).expect("mkdir /var/log");
        Host {
            name,
            docs_ip,
            ip,
            agent_port: free_udp_port(ip).expect("free UDP port"),
            http_port: free_tcp_port(ip).expect("free TCP port"),
            root,
        }
    }

    /// A path of this host, as the docs write it.
    fn path(&self, docs_path: &str) -> PathBuf {
        self.root.join(docs_path.trim_start_matches('/'))
    }

    /// The system paths the docs name, moved under this host's directory.
    fn paths(&self, docs_paths: &[&str]) -> Vec<(String, String)> {
        docs_paths
            .iter()
            .map(|p| pair(p, self.path(p).display()))
            .collect()
    }

    fn agent_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.agent_port))
    }

    fn http_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.http_port))
    }

    /// `agent.toml` from the docs block for this host, for this machine.
    fn agent_toml(&self, docs: &str, mut changes: Vec<(String, String)>) -> PathBuf {
        let control = self.path("/run/handover-agent/control.sock");
        changes.extend([
            pair(&format!("{}:7443", self.docs_ip), self.agent_addr()),
            // Three agents on one machine: each its own control socket.
            pair(
                "state_dir = \"/var/lib/handover-agent\"\n",
                format!(
                    "state_dir = \"/var/lib/handover-agent\"\ncontrol_socket = {:?}\n",
                    control.display().to_string()
                ),
            ),
        ]);
        changes.extend(self.paths(&["/etc/handover", "/var/lib/handover-agent"]));
        let text = substitute(&format!("{}'s agent.toml", self.name), docs, &changes);
        let config = self.path("/etc/handover/agent.toml");
        std::fs::write(&config, text).expect("write agent.toml");
        config
    }
}

/// A process started outside a [`ChildGuard`]: Apache as the `reload` hook started
/// it (daemonized), stopped with `apache2 -k stop` on drop.
struct DaemonApache {
    config: PathBuf,
}

impl Drop for DaemonApache {
    fn drop(&mut self) {
        let _ = Command::new("/usr/sbin/apache2")
            .arg("-f")
            .arg(&self.config)
            .args(["-k", "stop"])
            .output();
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// apache2.conf for `host`: what Debian's apache2.conf, ports.conf and
/// mods-enabled provide, then the docs' vhost (sites-enabled/shop.conf).
fn apache_config(host: &Host, vhost_docs: &str) -> PathBuf {
    let vhost = substitute(
        "the Apache vhost",
        &vhost_docs.replace("web-1", host.name),
        &[
            pair(
                "<VirtualHost *:80>",
                format!("<VirtualHost {}>", host.http_addr()),
            ),
            pair("/srv/shop", host.path("/srv/shop").display()),
            pair("/var/www/health", host.path("/var/www/health").display()),
        ],
    );
    let dir = host.path("/etc/apache2");
    let run = host.path("/run/apache2");
    let logs = host.path("/var/log/apache2");
    for d in [&dir, &run, &logs] {
        std::fs::create_dir_all(d).expect("apache dirs");
    }
    let modules = "/usr/lib/apache2/modules";
    let mods: String = [
        "mpm_event",
        "authz_core",
        "authz_host",
        "mime",
        "dir",
        "alias",
        "status",
    ]
    .iter()
    .map(|m| format!("LoadModule {m}_module {modules}/mod_{m}.so\n"))
    .collect();
    let text = format!(
        "ServerRoot {dir:?}\nDefaultRuntimeDir {run:?}\nPidFile \"{run}/apache2.pid\"\n\
         ServerName {name}\nListen {addr}\n{mods}User www-data\nGroup www-data\n\
         StartServers 1\nServerLimit 4\nThreadsPerChild 16\nMaxRequestWorkers 64\n\
         ErrorLog \"{logs}/error.log\"\nTypesConfig /etc/mime.types\n\
         DirectoryIndex index.html\nExtendedStatus On\n\
         <Directory />\n    AllowOverride None\n    Require all denied\n</Directory>\n\n{vhost}",
        dir = dir.display().to_string(),
        run = run.display(),
        name = host.name,
        addr = host.http_addr(),
        logs = logs.display(),
    );
    let config = dir.join("apache2.conf");
    std::fs::write(&config, text).expect("write apache2.conf");
    config
}

/// `handover ARGS` from the bastion directory, as the README runs it.
fn handover(fleet: &Path, line: &str) -> Output {
    let args: Vec<&str> = line.split_whitespace().skip(1).collect();
    Command::new(bin("handover"))
        .args(&args)
        .current_dir(fleet)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{line}`: {e}"))
}

fn assert_ok(line: &str, out: &Output) {
    assert!(
        out.status.success(),
        "`{line}` failed:\n{}",
        output_text(out)
    );
}

/// Carries out the `scp SRC root@HOST:DEST` lines of `--print-install` output.
fn install_files(printed: &str, fleet: &Path, hosts: &[&Host]) -> usize {
    let mut copied = 0;
    for line in printed.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("scp ") else {
            continue;
        };
        let (src, dest) = rest.split_once(" root@").expect("scp SRC root@HOST:DEST");
        let (name, dest) = dest.split_once(':').expect("HOST:DEST");
        let host = hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("--print-install names unknown host {name}"));
        let to = host.path(dest);
        std::fs::create_dir_all(to.parent().expect("a parent")).expect("mkdir");
        std::fs::copy(fleet.join(src), &to).unwrap_or_else(|e| panic!("copy {src}: {e}"));
        copied += 1;
    }
    copied
}

fn start_agent(host: &Host, config: &Path) -> ChildGuard {
    let mut cmd = Command::new(bin("handover-agent"));
    cmd.args(["run", "--config"]).arg(config);
    let log = host.path("/var/log/handover-agent.log");
    let agent = ChildGuard::spawn(&format!("agent {}", host.name), cmd, &log).expect("agent");
    let socket = host.path("/run/handover-agent/control.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "agent {} did not start: {}",
            host.name,
            log_tail(&log, 3000)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    agent
}

/// HAProxy with the docs' haproxy.cfg, on `lb`'s address.
fn start_haproxy(lb: &Host) -> (ChildGuard, PathBuf) {
    let mut changes = lb.paths(&["/run/haproxy", "/var/lib/haproxy"]);
    changes.push(pair("bind :80", format!("bind {}", lb.http_addr())));
    changes.push(pair(
        &format!("source {}", lb.docs_ip),
        format!("source {}", lb.ip),
    ));
    let text = substitute(
        "haproxy.cfg",
        &block(HAPROXY_MD, "# /etc/haproxy/haproxy.cfg"),
        &changes,
    );
    for d in ["/run/haproxy", "/var/lib/haproxy", "/etc/haproxy"] {
        std::fs::create_dir_all(lb.path(d)).expect("haproxy dirs");
    }
    let config = lb.path("/etc/haproxy/haproxy.cfg");
    std::fs::write(&config, text).expect("write haproxy.cfg");
    let mut cmd = Command::new("/usr/sbin/haproxy");
    cmd.arg("-f").arg(&config).arg("-db");
    let log = lb.path("/var/log/haproxy.log");
    let guard = ChildGuard::spawn("haproxy", cmd, &log).expect("haproxy");
    let socket = lb.path("/run/haproxy/admin.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while runtime_at(&socket, "show info").is_err() {
        assert!(
            Instant::now() < deadline,
            "haproxy did not start with the docs' config: {}",
            log_tail(&log, 3000)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (guard, socket)
}

/// Servers UP in the docs' backend, as HAProxy reports them.
fn up_servers(socket: &Path) -> Vec<String> {
    let stat = runtime_at(socket, "show stat").expect("show stat");
    parse_show_stat(&stat)
        .expect("parse show stat")
        .into_iter()
        .filter(|s| s.pxname == DOCS_BACKEND && s.is_server() && s.is_up())
        .map(|s| s.addr)
        .collect()
}

/// `body`, once the server listens: the first deploy's reload hook starts Apache,
/// which daemonizes and binds a moment after the hook returns (seen under load).
fn body_once_listening(addr: SocketAddr, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    body(addr, path)
}

fn body(addr: SocketAddr, path: &str) -> String {
    match get(addr, path, None) {
        Ok(r) if r.is_success() => r.body,
        Ok(r) => panic!("GET {addr}{path} answered {}: {}", r.status, r.body),
        Err(e) => panic!("GET {addr}{path}: {e:#}"),
    }
}

#[test]
fn the_readme_fleet_setup_works_as_written_through_a_rollout_under_traffic() {
    // The one test that takes the fleet lock itself: it builds its fleet from the
    // README's commands, not with the harness's builders, and chooses addresses
    // and ports (and its reload hook starts Apache) outside any process the
    // harness starts, so the lock must be held from the first line.
    let _fleet = handover_tests::fleet::serial();
    let work = Workdir::new().expect("workdir");
    let repo = versions_repo(&work.subdir("git").expect("git dir")).expect("repository");
    let fleet = work.subdir("fleet").expect("bastion dir");
    let web1 = Host::new(&work, "web-1", "10.0.0.11", 11);
    let web2 = Host::new(&work, "web-2", "10.0.0.12", 12);
    let lb = Host::new(&work, "lb-1", "10.0.0.2", 2);
    let hosts = [&web1, &web2, &lb];

    let setup = section(README, "Setting up a fleet");
    let docs_ips: Vec<(String, String)> = hosts.iter().map(|h| pair(h.docs_ip, h.ip)).collect();
    let commands: Vec<String> = code_blocks(setup)
        .into_iter()
        .filter(|(info, _)| info == "sh")
        .flat_map(|(_, body)| body.lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|l| l.starts_with("handover "))
        .map(|l| l.replace(DOCS_REPO, &repo))
        .collect();
    let (ca, rest): (Vec<&String>, Vec<&String>) =
        commands.iter().partition(|l| l.starts_with("handover ca "));
    assert!(
        ca.len() >= 5 && !rest.is_empty(),
        "the README's commands: {commands:?}"
    );

    // 1. Certificates, and the files --print-install says to copy.
    let mut copied = 0;
    for line in ca {
        let line = docs_ips.iter().fold(line.clone(), |l, (from, to)| {
            l.replace(&format!("--ip {from} "), &format!("--ip {to} "))
        });
        assert!(
            !line.contains("10.0.0."),
            "an address left unchanged in `{line}`"
        );
        let out = handover(&fleet, &line);
        assert_ok(&line, &out);
        copied += install_files(&String::from_utf8_lossy(&out.stdout), &fleet, &hosts);
    }
    assert_eq!(
        copied, 12,
        "--print-install names four files (CA, certificate, key, CRL) for each of three hosts"
    );

    // 2. Agents (app hosts: health file, Apache site), HAProxy on lb-1.
    let app_docs = block(setup, "# /etc/handover/agent.toml on web-1");
    let vhost_docs = block(setup, "# /etc/apache2/sites-available/shop.conf on web-1");
    let mut processes = Vec::new();
    let mut apaches = Vec::new();
    for host in [&web1, &web2] {
        let health = host.path("/var/www/health/health.html");
        std::fs::create_dir_all(health.parent().expect("dir")).expect("mkdir health");
        std::fs::write(&health, "OK\n").expect("health file");
        std::fs::create_dir_all(host.path("/srv/shop")).expect("mkdir /srv/shop");
        let apache = apache_config(host, &vhost_docs);
        let docs = app_docs
            .replace("web-1", host.name)
            .replace(web1.docs_ip, host.docs_ip);
        let mut changes = vec![
            pair(&format!("{}:80", host.docs_ip), host.http_addr()),
            pair("http://127.0.0.1/", format!("http://{}/", host.http_addr())),
            pair(DOCS_REPO, &repo),
            pair(
                "systemctl reload-or-restart apache2",
                format!("/usr/sbin/apache2 -f {} -k graceful", apache.display()),
            ),
        ];
        changes.extend(host.paths(&["/var/www/health", "/srv/shop"]));
        let config = host.agent_toml(&docs, changes);
        processes.push(start_agent(host, &config));
        apaches.push(DaemonApache { config: apache });
    }
    let (haproxy, socket) = start_haproxy(&lb);
    let lb_docs = block(setup, "# /etc/handover/agent.toml on lb-1");
    let config = lb.agent_toml(&lb_docs, lb.paths(&["/run/haproxy"]));
    processes.push(start_agent(&lb, &config));
    assert!(
        lb_docs.contains(&format!("backend = \"{DOCS_BACKEND}\"")),
        "lb-1's agent.toml must name the backend of docs/haproxy.md"
    );

    // 3. The coordinator's handover.toml.
    let mut changes: Vec<(String, String)> = hosts
        .iter()
        .map(|h| pair(&format!("{}:7443", h.docs_ip), h.agent_addr()))
        .collect();
    changes.extend(
        [&web1, &web2]
            .iter()
            .map(|h| pair(&format!("{}:80", h.docs_ip), h.http_addr())),
    );
    let toml = substitute(
        "handover.toml",
        &block(setup, "# ~/fleet/handover.toml"),
        &changes,
    );
    std::fs::write(fleet.join("handover.toml"), toml).expect("write handover.toml");
    let plan = substitute(
        "plan.toml",
        &block(setup, "# ~/fleet/plan.toml"),
        &[pair(DOCS_REPO, &repo)],
    );
    std::fs::write(fleet.join("plan.toml"), plan).expect("write plan.toml");

    // 4.–6. Status, deploy v1 (its reload starts Apache), attach, then a rollout.
    let mut traffic = None;
    for line in rest {
        if line.starts_with("handover attach") {
            for host in [&web1, &web2] {
                assert!(
                    body_once_listening(host.http_addr(), "/").contains("shop v1"),
                    "{}: the first deploy's reload must have started Apache on v1",
                    host.name
                );
            }
        }
        let line = if line.starts_with("handover rollout") {
            assert_eq!(
                up_servers(&socket).len(),
                2,
                "both attached before the rollout"
            );
            assert!(body(lb.http_addr(), "/").contains("shop v1"));
            traffic = Some(
                Traffic::start(
                    lb.http_addr(),
                    TrafficOptions {
                        clients: 3,
                        pause: Duration::from_millis(25),
                        max_duration: Duration::from_secs(300),
                        ..TrafficOptions::default()
                    },
                )
                .expect("traffic"),
            );
            format!("{line} --yes")
        } else {
            line.clone()
        };
        let out = handover(&fleet, &line);
        assert_ok(&line, &out);
    }

    let report = traffic.expect("the README ends with a rollout").stop();
    assert_eq!(
        report.failed, 0,
        "requests failed during the rollout: {:?}",
        report.failures
    );
    assert!(report.ok > 0, "no request was served: {report:?}");
    for host in [&web1, &web2] {
        let version = std::fs::read_to_string(host.path("/srv/shop/current/VERSION"))
            .expect("current/VERSION");
        assert_eq!(version.trim(), "v2", "{} after the rollout", host.name);
    }
    assert_eq!(
        up_servers(&socket).len(),
        2,
        "both attached after the rollout"
    );
    assert!(body(lb.http_addr(), "/").contains("shop v2"));
    drop(processes);
    drop(apaches);
    drop(haproxy);
}
