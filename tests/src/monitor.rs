//! Watches HAProxy's own view of capacity while a test changes the fleet.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::haproxy::{Haproxy, parse_show_stat, runtime_at};

/// Poll interval: fast enough to catch a check-interval-long dip (200 ms).
const POLL: Duration = Duration::from_millis(100);
/// Hard cap so a forgotten monitor cannot run forever (a scenario's monitor runs
/// for the whole test, so this is longer than any test).
const MAX_RUN: Duration = Duration::from_secs(1800);

/// One sample where a backend had fewer UP servers than the threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Sample number (0-based).
    pub sample: usize,
    /// Backend name.
    pub backend: String,
    /// UP servers seen.
    pub up: usize,
    /// `server=status` of every server of the backend in that sample.
    pub statuses: Vec<String>,
}

/// What an [`UpMonitor`] saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpReport {
    /// Successful samples.
    pub samples: usize,
    /// Minimum number of UP servers per watched backend over all samples.
    pub min_up: BTreeMap<String, usize>,
    /// Samples below the threshold.
    pub violations: Vec<Violation>,
    /// Failed polls (e.g. the socket during a reload), first 10 kept.
    pub errors: Vec<String>,
    /// Number of failed polls.
    pub error_count: usize,
}

/// Polls `show stat` every 100 ms in a background thread and records the minimum
/// number of UP servers per backend, so tests can assert the capacity invariant
/// as HAProxy reports it, not as the engine assumes it.
#[derive(Debug)]
pub struct UpMonitor {
    stop: Arc<AtomicBool>,
    min_up: Arc<AtomicUsize>,
    report: Arc<Mutex<UpReport>>,
    thread: Option<JoinHandle<()>>,
}

impl UpMonitor {
    /// Watches `backends` of `haproxy`; a sample with fewer than `min_up` UP servers
    /// in any of them is recorded as a [`Violation`]. Follows reloads (it uses the
    /// socket path, which a reloaded HAProxy takes over).
    pub fn start(haproxy: &Haproxy, backends: &[&str], min_up: usize) -> anyhow::Result<Self> {
        let socket: PathBuf = haproxy.admin_socket().to_path_buf();
        let backends: Vec<String> = backends.iter().map(|s| (*s).to_owned()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(UpReport::default()));
        let threshold = Arc::new(AtomicUsize::new(min_up));
        let (s2, r2, t2) = (stop.clone(), report.clone(), threshold.clone());
        let thread = std::thread::Builder::new()
            .name("up-monitor".to_owned())
            .spawn(move || {
                let end = Instant::now() + MAX_RUN;
                while !s2.load(Ordering::SeqCst) && Instant::now() < end {
                    let sample = runtime_at(&socket, "show stat").and_then(|t| parse_show_stat(&t));
                    let mut r = r2.lock().unwrap_or_else(PoisonError::into_inner);
                    match sample {
                        Ok(rows) => {
                            let n = r.samples;
                            r.samples += 1;
                            for b in &backends {
                                let servers: Vec<_> = rows
                                    .iter()
                                    .filter(|s| &s.pxname == b && s.is_server())
                                    .collect();
                                let up = servers.iter().filter(|s| s.is_up()).count();
                                let m = r.min_up.entry(b.clone()).or_insert(up);
                                *m = (*m).min(up);
                                if up < t2.load(Ordering::SeqCst) {
                                    r.violations.push(Violation {
                                        sample: n,
                                        backend: b.clone(),
                                        up,
                                        statuses: servers
                                            .iter()
                                            .map(|s| format!("{}={}", s.svname, s.status))
                                            .collect(),
                                    });
                                }
                            }
                        }
                        Err(e) => {
                            r.error_count += 1;
                            if r.errors.len() < 10 {
                                r.errors.push(format!("{e:#}"));
                            }
                        }
                    }
                    drop(r);
                    std::thread::sleep(POLL);
                }
            })
            .context("spawn monitor thread")?;
        Ok(Self {
            stop,
            min_up: threshold,
            report,
            thread: Some(thread),
        })
    }

    /// From the next sample on, fewer than `min_up` UP servers is a violation (a
    /// test that moves to a plan with another `min_healthy`).
    pub fn set_min_up(&self, min_up: usize) {
        self.min_up.store(min_up, Ordering::SeqCst);
    }

    /// The report so far.
    pub fn snapshot(&self) -> UpReport {
        self.report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops polling and returns the report.
    pub fn stop(mut self) -> UpReport {
        self.halt();
        self.snapshot()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for UpMonitor {
    fn drop(&mut self) {
        self.halt();
    }
}
