//! Issue 16: what the monitoring side needs in tests — agents with `[metrics]`,
//! a real Prometheus (Debian's package) scraping them, and `promtool`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::agents::AgentProcess;
use crate::ports::free_tcp_port;
use crate::process::ChildGuard;

/// Debian's Prometheus server.
pub const PROMETHEUS: &str = "/usr/bin/prometheus";
/// Debian's promtool (from the `prometheus` package).
pub const PROMTOOL: &str = "/usr/bin/promtool";

/// Appends `[metrics] listen` on a free port of the agent's own address to its
/// config and restarts it; returns the metrics address.
pub fn enable_metrics(agent: &mut AgentProcess) -> anyhow::Result<SocketAddr> {
    let std::net::IpAddr::V4(ip) = agent.addr.ip() else {
        bail!("agent {} is not on IPv4 loopback", agent.name);
    };
    let addr = SocketAddr::from((ip, free_tcp_port(ip)?));
    let mut text = std::fs::read_to_string(&agent.config)?;
    text.push_str(&format!("\n[metrics]\nlisten = \"{addr}\"\n"));
    std::fs::write(&agent.config, text)?;
    agent.stop()?;
    agent.spawn()?;
    Ok(addr)
}

/// `GET /metrics` from `addr` as `curl` gets it (no Accept header).
pub fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let response = crate::http::get(addr, "/metrics", None)?;
    anyhow::ensure!(
        response.status == 200,
        "GET http://{addr}/metrics answered {}: {}",
        response.status,
        response.body
    );
    Ok(response.body)
}

/// Runs `promtool ARGS` with `stdin` on its standard input; returns its output,
/// or an error with it when promtool fails.
pub fn promtool(args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    use std::io::Write as _;
    let mut child = Command::new(PROMTOOL)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("run {PROMTOOL} (scripts/install-deps.sh installs it)"))?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.unwrap_or("").as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(out.status.success(), "promtool {args:?} failed: {text}");
    Ok(text)
}

/// A Prometheus server on loopback scraping the given targets every 500 ms;
/// stopped on drop.
pub struct Prometheus {
    addr: SocketAddr,
    log: PathBuf,
    _child: ChildGuard,
}

impl Prometheus {
    /// Starts it under `dir` with one job, `handover`, whose targets are labelled
    /// with `host` (the agent's name).
    pub fn start(dir: &Path, ip: Ipv4Addr, targets: &[(&str, SocketAddr)]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut config = String::from(
            "global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\nscrape_configs:\n  - job_name: handover\n    static_configs:\n",
        );
        for (host, addr) in targets {
            config.push_str(&format!(
                "      - targets: [\"{addr}\"]\n        labels:\n          host: \"{host}\"\n"
            ));
        }
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let addr = SocketAddr::from((ip, free_tcp_port(ip)?));
        let log = dir.join("prometheus.log");
        let mut cmd = Command::new(PROMETHEUS);
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"));
        let child = ChildGuard::spawn("prometheus", cmd, &log)?;
        let prometheus = Prometheus {
            addr,
            log,
            _child: child,
        };
        prometheus.wait_ready()?;
        Ok(prometheus)
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if crate::http::get(self.addr, "/-/ready", None).is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "prometheus on {} not ready after 30s: {}",
            self.addr,
            crate::process::log_tail(&self.log, 20)
        )
    }

    /// The instant vector of `query` as (labels, value) pairs.
    pub fn query(&self, query: &str) -> anyhow::Result<Vec<(serde_json::Value, f64)>> {
        let path = format!("/api/v1/query?query={}", percent_encode(query));
        let response = crate::http::get(self.addr, &path, None)?;
        let json: serde_json::Value = serde_json::from_str(&response.body)
            .with_context(|| format!("prometheus answered {}", response.body))?;
        anyhow::ensure!(json["status"] == "success", "query {query}: {json}");
        let samples = json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        samples
            .into_iter()
            .map(|s| {
                let value = s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .with_context(|| format!("no value in {s}"))?;
                Ok((s["metric"].clone(), value))
            })
            .collect()
    }

    /// Polls `query` until its single sample satisfies `want`, for at most `limit`.
    pub fn wait_for(
        &self,
        query: &str,
        limit: Duration,
        want: impl Fn(f64) -> bool,
    ) -> anyhow::Result<f64> {
        let deadline = Instant::now() + limit;
        let mut last = None;
        while Instant::now() < deadline {
            if let Ok(samples) = self.query(query)
                && let [(_, value)] = samples.as_slice()
            {
                if want(*value) {
                    return Ok(*value);
                }
                last = Some(*value);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("{query} never reached the wanted value in {limit:?} (last {last:?})")
    }
}

/// RFC 3986 percent-encoding of everything but unreserved characters.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `handover web` for a coordinator config, on a free port of `ip`; stopped on drop.
pub struct WebPage {
    /// Where it serves.
    pub addr: SocketAddr,
    log: PathBuf,
    _child: ChildGuard,
}

impl WebPage {
    /// Starts `handover --config CONFIG web --listen IP:PORT` and waits until it answers.
    pub fn start(
        coordinator: &crate::agents::Coordinator,
        ip: Ipv4Addr,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let addr = SocketAddr::from((ip, free_tcp_port(ip)?));
        let log = dir.join("web.log");
        let cmd = coordinator.command(&["web", "--listen", &addr.to_string()]);
        let child = ChildGuard::spawn("handover web", cmd, &log)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if crate::http::get(addr, "/api/state", None).is_ok_and(|r| r.status == 200) {
                return Ok(WebPage {
                    addr,
                    log,
                    _child: child,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "handover web on {addr} did not answer: {}",
            crate::process::log_tail(&log, 20)
        )
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        crate::process::log_tail(&self.log, 50)
    }

    /// The snapshot it serves now.
    pub fn state(&self) -> anyhow::Result<serde_json::Value> {
        let response = crate::http::get(self.addr, "/api/state", None)?;
        serde_json::from_str(&response.body).context("the page's state is not JSON")
    }
}

/// Sends `METHOD /path` with an empty body; returns the status code.
pub fn status_of(addr: SocketAddr, method: &str, path: &str) -> anyhow::Result<u16> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    let text = String::from_utf8_lossy(&head);
    text.get(9..12)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status line in {text:?}"))
}

/// Debian's chromedriver.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Debian's chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Headless Chromium driven through chromedriver on a free loopback port; both
/// stop on drop (the session is closed by [`Browser::close`]).
pub struct Browser {
    /// The WebDriver session.
    pub client: fantoccini::Client,
    _profile: tempfile::TempDir,
    _driver: ChildGuard,
}

impl Browser {
    /// Starts chromedriver and a fresh headless Chromium of `width`×`height`.
    pub async fn start(dir: &Path, width: u32, height: u32) -> anyhow::Result<Self> {
        Self::start_with(dir, width, height, &[]).await
    }

    /// [`Browser::start`] with more Chromium flags.
    pub async fn start_with(
        dir: &Path,
        width: u32,
        height: u32,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let ip = Ipv4Addr::LOCALHOST;
        let port = free_tcp_port(ip)?;
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"));
        let driver = ChildGuard::spawn("chromedriver", cmd, &dir.join("chromedriver.log"))?;
        let profile = tempfile::tempdir()?;
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ]
        .into_iter()
        .map(String::from)
        .chain([
            format!("--user-data-dir={}", profile.path().display()),
            format!("--window-size={width},{height}"),
        ])
        .chain(extra.iter().cloned())
        .collect::<Vec<_>>();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": CHROMIUM, "args": args }),
        );
        let url = format!("http://{ip}:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match fantoccini::ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(e) if Instant::now() > deadline => {
                    bail!("chromedriver on {url} gave no session: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        Ok(Browser {
            client,
            _profile: profile,
            _driver: driver,
        })
    }

    /// Saves a PNG of the window as `target/web-screenshots/NAME.png` (for people
    /// to look at) and returns its path.
    pub async fn screenshot(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/web-screenshots");
        std::fs::create_dir_all(&dir)?;
        let png = self.client.screenshot().await?;
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png)?;
        Ok(path)
    }

    /// Runs `script` in the page and returns its value.
    pub async fn eval(&self, script: &str) -> anyhow::Result<serde_json::Value> {
        Ok(self.client.execute(script, vec![]).await?)
    }

    /// Ends the session (Chromium exits).
    pub async fn close(self) -> anyhow::Result<()> {
        self.client.close().await?;
        Ok(())
    }
}
