//! Issue 16, second part: `handover web` over HTTPS, read with a real TLS client
//! (Debian's curl, with --cacert / --cert / --key), and the page's drain facts.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::agents::Coordinator;
use crate::ports::free_tcp_port;
use crate::process::ChildGuard;

/// Debian's curl.
pub const CURL: &str = "/usr/bin/curl";

/// `handover web` serving HTTPS on a free port of `ip`; stopped on drop.
pub struct SecurePage {
    /// Where it serves.
    pub addr: SocketAddr,
    log: PathBuf,
    _child: ChildGuard,
}

impl SecurePage {
    /// Starts `handover web --listen IP:PORT --tls-cert CERT --tls-key KEY
    /// EXTRA...` and waits until it says it serves.
    pub fn start(
        coordinator: &Coordinator,
        ip: Ipv4Addr,
        dir: &Path,
        (cert, key): (&Path, &Path),
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let addr = SocketAddr::from((ip, free_tcp_port(ip)?));
        let log = dir.join(format!("web-{}.log", addr.port()));
        let mut args = vec![
            "web".to_owned(),
            "--listen".into(),
            addr.to_string(),
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = ChildGuard::spawn("handover web", coordinator.command(&args), &log)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("serving https://") {
                return Ok(SecurePage {
                    addr,
                    log,
                    _child: child,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "handover web on {addr} did not start: {}",
            crate::process::log_tail(&log, 20)
        )
    }

    /// `https://ADDR/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        crate::process::log_tail(&self.log, 20_000)
    }
}

/// What curl got.
#[derive(Debug)]
pub struct Fetched {
    /// The HTTP status, or `None` when no HTTP answer came (TLS refused).
    pub status: Option<u16>,
    /// The response headers and body.
    pub text: String,
    /// curl's own complaint.
    pub error: String,
}

/// `curl ARGS URL` with the response headers included; a run cut short by
/// `--max-time` (a stream) keeps what arrived.
pub fn curl(args: &[&str], url: &str) -> anyhow::Result<Fetched> {
    let out = Command::new(CURL)
        .args(["-sS", "-i", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .with_context(|| format!("run {CURL} (apt-get install curl)"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let (text, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    Ok(Fetched {
        status: code.trim().parse().ok().filter(|c| *c != 0),
        text: text.to_owned(),
        error: String::from_utf8_lossy(&out.stderr).to_string(),
    })
}

/// curl's flags for a client certificate and its key.
pub fn with_cert<'a>(cert: &'a Path, key: &'a Path) -> Vec<String> {
    vec![
        "--cert".into(),
        cert.display().to_string(),
        "--key".into(),
        key.display().to_string(),
    ]
}

/// The base64 SHA-256 of a certificate's public key (SPKI), as Chromium's
/// `--ignore-certificate-errors-spki-list` takes it: the browser then trusts
/// that one server key, as if the operator had imported the CA.
pub fn spki_sha256(cert: &Path) -> anyhow::Result<String> {
    let script = format!(
        "openssl x509 -in {:?} -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
        cert.display().to_string()
    );
    let out = Command::new("sh").args(["-c", &script]).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
