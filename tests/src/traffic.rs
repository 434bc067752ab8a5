//! Background HTTP clients that count what a rollout does to real users.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::http::{Conn, Response};

/// How many failure reasons are kept; the first few are enough to diagnose.
const KEEP_FAILURES: usize = 10;

/// How the clients behave.
#[derive(Debug, Clone)]
pub struct TrafficOptions {
    /// Number of concurrent clients (one thread each).
    pub clients: usize,
    /// Keep the `SERVERID` cookie HAProxy sets and send it back, like a browser
    /// with a session.
    pub pinned: bool,
    /// Reuse one connection per client; otherwise a new connection per request.
    pub keep_alive: bool,
    /// Pause between a client's requests.
    pub pause: Duration,
    /// Path requested.
    pub path: String,
    /// Hard cap: clients stop after this long even if nobody calls `stop`.
    pub max_duration: Duration,
    /// Hard cap on requests per client.
    pub max_requests: u64,
}

impl Default for TrafficOptions {
    fn default() -> Self {
        Self {
            clients: 2,
            pinned: false,
            keep_alive: true,
            pause: Duration::from_millis(20),
            path: "/".to_owned(),
            max_duration: Duration::from_secs(30),
            max_requests: 100_000,
        }
    }
}

/// Counts so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrafficReport {
    /// 2xx responses.
    pub ok: u64,
    /// Connect errors, resets, timeouts and non-2xx responses.
    pub failed: u64,
    /// The first few failures, as text.
    pub failures: Vec<String>,
    /// Successful responses per server (see [`Response::served_by`]).
    pub by_server: BTreeMap<String, u64>,
    /// The same per client, in client order.
    pub per_client: Vec<BTreeMap<String, u64>>,
    /// Per client, the server of each successful response in order (capped at 10 000).
    pub sequence: Vec<Vec<String>>,
}

impl TrafficReport {
    /// Servers that answered at least once.
    pub fn servers(&self) -> Vec<String> {
        self.by_server.keys().cloned().collect()
    }

    /// Per client, servers seen after the first `skip[i]` successful responses of
    /// client `i` (to look at what happened after some event).
    pub fn servers_since(&self, skip: &[usize]) -> Vec<Vec<String>> {
        self.sequence
            .iter()
            .enumerate()
            .map(|(i, seq)| {
                let from = skip.get(i).copied().unwrap_or(0).min(seq.len());
                let mut v: Vec<String> = seq[from..].to_vec();
                v.sort();
                v.dedup();
                v
            })
            .collect()
    }
}

/// Running clients; stopped and joined on [`Traffic::stop`] or drop.
#[derive(Debug)]
pub struct Traffic {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<TrafficReport>>,
    threads: Vec<JoinHandle<()>>,
}

impl Traffic {
    /// Starts `opts.clients` client threads against `frontend` (loopback only).
    pub fn start(frontend: SocketAddr, opts: TrafficOptions) -> anyhow::Result<Self> {
        anyhow::ensure!(
            frontend.ip().is_loopback(),
            "traffic may only go to loopback, not {frontend}"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(TrafficReport {
            per_client: vec![BTreeMap::new(); opts.clients],
            sequence: vec![Vec::new(); opts.clients],
            ..TrafficReport::default()
        }));
        let mut threads = Vec::new();
        for i in 0..opts.clients {
            let (stop, report, opts) = (stop.clone(), report.clone(), opts.clone());
            let t = std::thread::Builder::new()
                .name(format!("traffic-{i}"))
                .spawn(move || client_loop(i, frontend, &opts, &stop, &report))
                .context("spawn traffic thread")?;
            threads.push(t);
        }
        Ok(Self {
            stop,
            report,
            threads,
        })
    }

    /// A copy of the counts so far, while clients keep running.
    pub fn snapshot(&self) -> TrafficReport {
        self.report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops the clients (each finishes its current request) and returns the counts.
    pub fn stop(mut self) -> TrafficReport {
        self.halt();
        self.snapshot()
    }

    /// Waits until every client reached its cap (`max_requests` or `max_duration`)
    /// and returns the counts; for tests that want an exact number of requests.
    pub fn wait(mut self) -> TrafficReport {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.snapshot()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.halt();
    }
}

fn client_loop(
    i: usize,
    frontend: SocketAddr,
    opts: &TrafficOptions,
    stop: &AtomicBool,
    report: &Mutex<TrafficReport>,
) {
    let deadline = Instant::now() + opts.max_duration;
    let mut conn: Option<Conn> = None;
    let mut cookie: Option<String> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline && n < opts.max_requests {
        n += 1;
        let result = (|| -> anyhow::Result<Response> {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => conn.insert(Conn::connect(frontend)?),
            };
            c.get(&opts.path, cookie.as_deref(), opts.keep_alive)
        })();
        let mut r = report.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(resp) => {
                if !opts.keep_alive || resp.close {
                    conn = None;
                }
                if opts.pinned
                    && let Some(c) = resp.server_cookie()
                {
                    cookie = Some(c);
                }
                if resp.is_success() {
                    let who = resp.served_by();
                    r.ok += 1;
                    *r.by_server.entry(who.clone()).or_default() += 1;
                    *r.per_client[i].entry(who.clone()).or_default() += 1;
                    if r.sequence[i].len() < 10_000 {
                        r.sequence[i].push(who);
                    }
                } else {
                    r.failed += 1;
                    if r.failures.len() < KEEP_FAILURES {
                        r.failures.push(format!(
                            "client {i} request {n}: HTTP {} {}",
                            resp.status,
                            resp.body.trim()
                        ));
                    }
                }
            }
            Err(e) => {
                conn = None;
                r.failed += 1;
                if r.failures.len() < KEEP_FAILURES {
                    r.failures.push(format!("client {i} request {n}: {e:#}"));
                }
            }
        }
        drop(r);
        if !opts.pause.is_zero() {
            std::thread::sleep(opts.pause);
        }
    }
}

/// A keep-alive connection that made one request and is held open, for drain
/// tests ("an existing session must not be cut"). Closed on drop, or after the
/// duration given to [`hold_connection`], whichever comes first.
#[derive(Debug)]
pub struct HeldConnection {
    conn: Arc<Mutex<Option<Conn>>>,
    first: Response,
    close_tx: Option<mpsc::Sender<()>>,
    closer: Option<JoinHandle<()>>,
}

/// Opens a keep-alive connection to `addr`, sends `GET path` (with `cookie` if
/// given) and keeps the socket open for at most `duration`.
pub fn hold_connection(
    addr: SocketAddr,
    path: &str,
    cookie: Option<&str>,
    duration: Duration,
) -> anyhow::Result<HeldConnection> {
    let mut c = Conn::connect(addr)?;
    let first = c.get(path, cookie, true)?;
    let conn = Arc::new(Mutex::new(Some(c)));
    let (tx, rx) = mpsc::channel::<()>();
    let held = conn.clone();
    let closer = std::thread::Builder::new()
        .name("held-connection".to_owned())
        .spawn(move || {
            let _ = rx.recv_timeout(duration);
            held.lock().unwrap_or_else(PoisonError::into_inner).take();
        })
        .context("spawn closer thread")?;
    Ok(HeldConnection {
        conn,
        first,
        close_tx: Some(tx),
        closer: Some(closer),
    })
}

impl HeldConnection {
    /// The response to the first request.
    pub fn first_response(&self) -> &Response {
        &self.first
    }

    /// Another request on the same connection (fails if it was closed by either side).
    pub fn get(&self, path: &str, cookie: Option<&str>) -> anyhow::Result<Response> {
        let mut g = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let c = g.as_mut().context("held connection already closed")?;
        c.get(path, cookie, true)
    }

    /// Local address of the held socket.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        let g = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        g.as_ref()
            .context("held connection already closed")?
            .local_addr()
    }

    /// Whether the harness still holds the socket (the peer may have closed it).
    pub fn is_held(&self) -> bool {
        self.conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }
}

impl Drop for HeldConnection {
    fn drop(&mut self) {
        if let Some(tx) = self.close_tx.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.closer.take() {
            let _ = t.join();
        }
    }
}
