//! Long-lived user sessions pinned to one server by HAProxy's persistence cookie,
//! the kind the runbook promises to keep: "existing sessions preserved".
//!
//! Each session is one keep-alive client. Its first request gets a `SERVERID`
//! cookie from HAProxy; every later request sends it back. The session is *cut*
//! if a request fails or HAProxy hands it another server (a new, different
//! cookie) while it lives. A session lives until its server has been draining
//! (not UP in HAProxy: the health-check file removed) for `after_drain` more
//! requests, or until `max_duration` — so it proves it was served while its
//! server drained, then ends like a user leaving, and the drain can finish.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::haproxy::{parse_show_stat, runtime_at};
use crate::http::Conn;

/// How the sessions behave.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// How many sessions.
    pub sessions: usize,
    /// Pause between a session's requests.
    pub pause: Duration,
    /// Requests a session still sends once its server is no longer UP.
    pub after_drain: u32,
    /// A session ends after this long whatever happens.
    pub max_duration: Duration,
    /// The backend the sessions' servers are in.
    pub backend: String,
}

/// What one session saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionReport {
    /// The cookie (server) it was pinned to.
    pub cookie: String,
    /// The server's address in HAProxy, if it was found.
    pub server: String,
    /// Requests answered 2xx.
    pub ok: u64,
    /// Requests that failed (errors or non-2xx).
    pub failed: u64,
    /// Requests answered while its server was draining.
    pub while_draining: u64,
    /// Why it was cut, if it was.
    pub cut: Option<String>,
}

/// Running sessions.
pub struct PinnedSessions {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<SessionReport>>,
}

impl PinnedSessions {
    /// Starts `options.sessions` sessions through `frontend`, reading server states
    /// from the HAProxy admin socket `admin`.
    pub fn start(
        frontend: SocketAddr,
        admin: &Path,
        options: SessionOptions,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            frontend.ip().is_loopback(),
            "sessions may only go to loopback, not {frontend}"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for i in 0..options.sessions {
            let (stop, options, admin) = (stop.clone(), options.clone(), admin.to_owned());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("session-{i}"))
                    .spawn(move || session(frontend, &admin, &options, &stop))
                    .context("spawn session thread")?,
            );
        }
        Ok(PinnedSessions { stop, threads })
    }

    /// Waits until every session ended on its own.
    pub fn wait(mut self) -> Vec<SessionReport> {
        self.threads
            .drain(..)
            .map(|t| {
                t.join().unwrap_or_else(|_| SessionReport {
                    cut: Some("the session's thread panicked".into()),
                    ..SessionReport::default()
                })
            })
            .collect()
    }

    /// Ends every session now.
    pub fn stop(self) -> Vec<SessionReport> {
        self.stop.store(true, Ordering::SeqCst);
        self.wait()
    }
}

impl Drop for PinnedSessions {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Whether the server with `cookie` is UP in `backend`, and its address.
fn server_state(admin: &Path, backend: &str, cookie: &str) -> Option<(bool, String)> {
    let stats = parse_show_stat(&runtime_at(admin, "show stat").ok()?).ok()?;
    stats
        .into_iter()
        .find(|s| s.pxname == backend && s.cookie == cookie)
        .map(|s| (s.is_up(), s.addr))
}

fn session(
    frontend: SocketAddr,
    admin: &Path,
    options: &SessionOptions,
    stop: &AtomicBool,
) -> SessionReport {
    let deadline = Instant::now() + options.max_duration;
    let mut report = SessionReport::default();
    let mut conn: Option<Conn> = None;
    let mut left_after_drain = options.after_drain;
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        n += 1;
        let cookie = (!report.cookie.is_empty()).then_some(report.cookie.as_str());
        let result = (|| -> anyhow::Result<crate::http::Response> {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => conn.insert(Conn::connect(frontend)?),
            };
            c.get("/", cookie, true)
        })();
        let response = match result {
            Ok(r) if r.is_success() => r,
            Ok(r) => {
                report.failed += 1;
                report.cut = Some(format!("request {n}: HTTP {}", r.status));
                return report;
            }
            Err(e) => {
                report.failed += 1;
                report.cut = Some(format!("request {n}: {e:#}"));
                return report;
            }
        };
        report.ok += 1;
        if response.close {
            conn = None;
        }
        match (response.server_cookie(), report.cookie.is_empty()) {
            (Some(c), true) => report.cookie = c,
            (None, true) => {
                report.cut = Some("HAProxy set no persistence cookie".into());
                return report;
            }
            (Some(c), false) if c != report.cookie => {
                report.cut = Some(format!(
                    "request {n}: moved from server cookie {} to {c}",
                    report.cookie
                ));
                return report;
            }
            _ => {}
        }
        if let Some((up, addr)) = server_state(admin, &options.backend, &report.cookie) {
            report.server = addr;
            if !up {
                report.while_draining += 1;
                left_after_drain = left_after_drain.saturating_sub(1);
                if left_after_drain == 0 {
                    return report;
                }
            }
        }
        std::thread::sleep(options.pause);
    }
    report
}
