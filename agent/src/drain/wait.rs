//! Waiting for a drained host's sessions to end (runbook step 13), pushing every
//! sample to the caller on the open stream.
//!
//! The host is idle once the connections that count ("blocking": all except those
//! from exempt addresses such as a load balancer's pool) have been zero for the
//! quiet period. Sessions are sampled every [`SAMPLE_EVERY`]; Apache, which costs
//! an HTTP request and is only for display, about once a second.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use handover_common::proto::Progress;
use handover_common::proto::drain::{ApacheReading, DrainProgress, SessionCount};

use super::apache::{self, StatusUrl};
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

/// Samples until the host is idle, the timeout passes, or the caller leaves.
pub async fn wait_for_sessions_to_end(plan: &WaitPlan, reporter: &Reporter) -> WaitEnd {
    let started = Instant::now();
    let mut ticker = tokio::time::interval(SAMPLE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut quiet_since: Option<Instant> = None;
    let mut apache: Option<ApacheReading> = None;
    let mut apache_read_at: Option<Instant> = None;
    loop {
        // The tick's scheduled instant, not "now": quiet periods then come out as
        // whole numbers of ticks instead of needing one more tick for a few µs.
        let tick = ticker.tick().await.into_std();
        if reporter.is_closed() {
            return WaitEnd::CallerGone;
        }
        let sessions = match count_sessions(plan.listen).await {
            Ok(count) => count,
            Err(e) => return WaitEnd::CannotCount(e),
        };
        let now = tick;
        let blocking = blocking_connections(&sessions, &plan.exempt);
        if blocking == 0 {
            quiet_since.get_or_insert(now);
        } else {
            quiet_since = None;
        }
        // Apache after the count: our own mod_status connection is closed by then,
        // so it never shows up as a session.
        if let Some(url) = &plan.status_url
            && apache_read_at.is_none_or(|at| now.duration_since(at) >= APACHE_EVERY)
        {
            apache = Some(read_apache(url).await);
            apache_read_at = Some(now);
        }
        let quiet_for = quiet_since.map_or(Duration::ZERO, |since| now.duration_since(since));
        let progress = DrainProgress {
            sessions,
            blocking,
            apache: apache.clone(),
            elapsed: now.duration_since(started),
            quiet_for,
            quiet: plan.quiet,
            drained: true,
        };
        if quiet_since.is_some() && quiet_for >= plan.quiet {
            // The last sample shows the zero the caller is waiting for.
            if !reporter.progress(Progress::Drain(progress)).await {
                return WaitEnd::CallerGone;
            }
            return WaitEnd::Idle {
                waited: now.duration_since(started),
            };
        }
        if progress.elapsed >= plan.timeout {
            return WaitEnd::TimedOut(Box::new(progress));
        }
        if !reporter.progress(Progress::Drain(progress)).await {
            return WaitEnd::CallerGone;
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
