//! Waiting for a drained host's sessions to end (runbook step 13), pushing every
//! sample to the caller on the open stream.
//!
//! The host is idle once the connections that count ("blocking": all except those
//! from exempt addresses such as a load balancer's pool) have been zero for the
//! quiet period. Sessions are sampled every [`SAMPLE_EVERY`]; Apache, which costs
//! an HTTP request and is only for display, about once a second. Each sample
//! also checks that the health-check file is still removed: an undrain during
//! the wait ends it, since HAProxy then sends the host new clients again.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use handover_common::proto::Progress;
use handover_common::proto::drain::{ApacheReading, DrainProgress, SessionCount};

use super::apache::{self, StatusUrl};
use super::health::HealthFile;
use super::sessions;
use crate::caller::Reporter;

/// How often sessions are counted while a drain is waited on (the issue asks ≤200 ms).
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// How often Apache's mod_status is read during a wait.
const APACHE_EVERY: Duration = Duration::from_secs(1);
/// How long one mod_status read may take.
pub const APACHE_TIMEOUT: Duration = Duration::from_secs(1);

/// What to watch and for how long.
pub struct WaitPlan {
    /// `[app] listen`.
    pub listen: SocketAddr,
    /// `[app] status_url`.
    pub status_url: Option<StatusUrl>,
    /// Give up after this long.
    pub timeout: Duration,
    /// Zero blocking sessions for this long means idle.
    pub quiet: Duration,
    /// Remote addresses whose connections do not block.
    pub exempt: Vec<IpAddr>,
    /// The health-check file, checked at every sample: an undrain during the
    /// wait ends it (`None`: not checked).
    pub health: Option<HealthFile>,
}

/// How a wait ended.
#[derive(Debug)]
pub enum WaitEnd {
    /// No blocking session for the quiet period.
    Idle {
        /// Time from the start of the wait.
        waited: Duration,
    },
    /// The timeout passed with sessions still there; the last sample says which.
    TimedOut(Box<DrainProgress>),
    /// The health-check file came back: HAProxy sends new clients again.
    Undrained,
    /// The caller went away; nobody is listening, so the wait stopped.
    CallerGone,
    /// Sessions could not be counted.
    CannotCount(String),
}

/// Reads Apache's figures as the drain display shows them.
pub async fn read_apache(url: &StatusUrl) -> ApacheReading {
    match apache::fetch(url, APACHE_TIMEOUT).await {
        Ok(status) => ApacheReading::Figures(status.figures()),
        Err(e) => ApacheReading::Unavailable(e.to_string()),
    }
}

/// Counts sessions on a blocking thread.
pub async fn count_sessions(listen: SocketAddr) -> Result<SessionCount, String> {
    match tokio::task::spawn_blocking(move || sessions::count(listen)).await {
        Ok(Ok(count)) => Ok(count),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("the counting task failed: {e}")),
    }
}

/// What the samples so far say: since when no blocking session, and Apache's
/// last figures.
struct Sampler<'p> {
    plan: &'p WaitPlan,
    started: Instant,
    quiet_since: Option<Instant>,
    apache: Option<ApacheReading>,
    apache_read_at: Option<Instant>,
}

impl Sampler<'_> {
    /// One sample at `now`.
    async fn sample(&mut self, now: Instant) -> Result<DrainProgress, String> {
        let sessions = count_sessions(self.plan.listen).await?;
        let blocking = blocking_connections(&sessions, &self.plan.exempt);
        // A file that cannot be inspected is not known to be back: still drained.
        let drained = self
            .plan
            .health
            .as_ref()
            .is_none_or(|h| h.is_drained().unwrap_or(true));
        if blocking == 0 && drained {
            self.quiet_since.get_or_insert(now);
        } else {
            self.quiet_since = None;
        }
        // Apache after the count: our own mod_status connection is closed by then,
        // so it never shows up as a session.
        if let Some(url) = &self.plan.status_url
            && self
                .apache_read_at
                .is_none_or(|at| now.duration_since(at) >= APACHE_EVERY)
        {
            self.apache = Some(read_apache(url).await);
            self.apache_read_at = Some(now);
        }
        let quiet_for = self
            .quiet_since
            .map_or(Duration::ZERO, |since| now.duration_since(since));
        Ok(DrainProgress {
            sessions,
            blocking,
            apache: self.apache.clone(),
            elapsed: now.duration_since(self.started),
            quiet_for,
            quiet: self.plan.quiet,
            drained,
        })
    }

    fn is_quiet(&self, p: &DrainProgress) -> bool {
        self.quiet_since.is_some() && p.quiet_for >= self.plan.quiet
    }
}

/// Samples until the host is idle, the timeout passes, the host is undrained
/// or the caller leaves.
pub async fn wait_for_sessions_to_end(plan: &WaitPlan, reporter: &Reporter) -> WaitEnd {
    let mut sampler = Sampler {
        plan,
        started: Instant::now(),
        quiet_since: None,
        apache: None,
        apache_read_at: None,
    };
    let mut ticker = tokio::time::interval(SAMPLE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // The tick's scheduled instant, not "now": quiet periods then come out as
        // whole numbers of ticks instead of needing one more tick for a few µs.
        let now = ticker.tick().await.into_std();
        if reporter.is_closed() {
            return WaitEnd::CallerGone;
        }
        let progress = match sampler.sample(now).await {
            Ok(p) => p,
            Err(e) => return WaitEnd::CannotCount(e),
        };
        let end = if !progress.drained {
            Some(WaitEnd::Undrained)
        } else if sampler.is_quiet(&progress) {
            Some(WaitEnd::Idle {
                waited: progress.elapsed,
            })
        } else {
            None
        };
        if end.is_none() && progress.elapsed >= plan.timeout {
            return WaitEnd::TimedOut(Box::new(progress));
        }
        // The last sample shows what the caller is waiting for (or why it ends).
        if !reporter.progress(Progress::Drain(progress)).await {
            return WaitEnd::CallerGone;
        }
        if let Some(end) = end {
            return end;
        }
    }
}

/// Connections that keep the drain open: all but those from `exempt` addresses.
pub fn blocking_connections(sessions: &SessionCount, exempt: &[IpAddr]) -> u32 {
    sessions
        .holders
        .iter()
        .filter(|h| !exempt.iter().any(|e| e.to_canonical() == h.remote))
        .map(|h| h.connections)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use handover_common::proto::drain::Holder;

    fn plan(listen: SocketAddr, timeout: Duration) -> WaitPlan {
        WaitPlan {
            listen,
            status_url: None,
            timeout,
            quiet: Duration::from_millis(200),
            exempt: Vec::new(),
            health: None,
        }
    }

    #[tokio::test]
    async fn a_wait_stops_when_the_caller_goes_away() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let listen = listener.local_addr().expect("addr");
        let _client = std::net::TcpStream::connect(listen).expect("connect");
        let _server = listener.accept().expect("accept");
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        drop(rx);
        let end =
            wait_for_sessions_to_end(&plan(listen, Duration::from_secs(600)), &Reporter::new(tx))
                .await;
        assert!(matches!(end, WaitEnd::CallerGone), "{end:?}");
    }

    #[tokio::test]
    async fn a_timed_out_wait_reports_who_holds_the_sessions() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let listen = listener.local_addr().expect("addr");
        let client = std::net::TcpStream::connect(listen).expect("connect");
        let _server = listener.accept().expect("accept");
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let drain_rx = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let end = wait_for_sessions_to_end(
            &plan(listen, Duration::from_millis(300)),
            &Reporter::new(tx),
        )
        .await;
        let WaitEnd::TimedOut(last) = end else {
            panic!("expected a timeout, got {end:?}");
        };
        assert_eq!(last.blocking, 1);
        let local = client.local_addr().expect("client addr");
        assert_eq!(last.sessions.holders[0].remote, local.ip());
        drain_rx.abort();
    }

    #[tokio::test]
    async fn an_undrain_during_the_wait_ends_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("health.html");
        std::fs::write(&file, "ok").expect("write health file");
        let health = HealthFile::new(&file, &dir.path().join("state"));
        health.drain().expect("drain");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let listen = listener.local_addr().expect("addr");
        // A held connection keeps the wait going until the undrain.
        let _client = std::net::TcpStream::connect(listen).expect("connect");
        let _server = listener.accept().expect("accept");
        let mut plan = plan(listen, Duration::from_secs(600));
        plan.health = Some(health.clone());
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let samples = tokio::spawn(async move {
            let mut drained = Vec::new();
            while let Some(handover_common::proto::Response::Progress(Progress::Drain(p))) =
                rx.recv().await
            {
                drained.push(p.drained);
                if drained.len() == 2 {
                    health.undrain().expect("undrain");
                }
            }
            drained
        });
        let end = wait_for_sessions_to_end(&plan, &Reporter::new(tx)).await;
        assert!(matches!(end, WaitEnd::Undrained), "{end:?}");
        let drained = samples.await.expect("samples");
        assert_eq!(
            drained.last(),
            Some(&false),
            "the last sample shows why: {drained:?}"
        );
        assert!(drained.iter().filter(|d| **d).count() >= 2, "{drained:?}");
    }

    #[test]
    fn exempt_addresses_do_not_block() {
        let sessions = SessionCount {
            total: 5,
            holders: vec![
                Holder {
                    remote: "10.0.0.2".parse().expect("ip"),
                    connections: 4,
                },
                Holder {
                    remote: "10.0.0.9".parse().expect("ip"),
                    connections: 1,
                },
            ],
            source: "test".into(),
        };
        assert_eq!(blocking_connections(&sessions, &[]), 5);
        let lb: IpAddr = "::ffff:10.0.0.2".parse().expect("ip");
        assert_eq!(blocking_connections(&sessions, &[lb]), 1);
    }
}
