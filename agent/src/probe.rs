//! `CheckHealth`: the release on this host answers its health path, `rise` times
//! in a row, on the app's own address (`[app] listen`).
//!
//! The request comes over the wire, so its numbers are checked here as well as in
//! the coordinator's plan: a zero interval would spin, a huge timeout would
//! overflow the deadline. The probe stops as soon as its caller goes away.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use handover_common::duration::{self, BeyondClock};
use handover_common::proto::health::{HealthCheck, HealthReport, MIN_INTERVAL};
use handover_common::proto::{Failure, FailureKind};
use tokio::time::Instant;

use crate::Agent;
use crate::caller::Reporter;

/// Runs the check; fails with the last answer seen when it does not pass in time,
/// and stops when `reporter`'s caller goes away.
pub async fn check_health(
    agent: &Arc<Agent>,
    check: HealthCheck,
    reporter: &Reporter,
) -> Result<HealthReport, Failure> {
    let app = agent.config.app.as_ref().ok_or_else(|| {
        Failure::new(
            FailureKind::NotConfigured,
            format!(
                "{} has no [app] section: add `[app] listen = \"ADDR:PORT\"` (the app server's socket) to its agent config",
                agent.config.name
            ),
        )
    })?;
    let deadline = refuse_unusable(&check)?;
    tokio::select! {
        result = probe(app.listen, &check, deadline) => result,
        () = reporter.closed() => Err(Failure::new(
            FailureKind::Failed,
            "the caller went away: health check stopped",
        )),
    }
}

/// The deadline of a check whose numbers can be met, or `BadRequest`.
fn refuse_unusable(check: &HealthCheck) -> Result<Instant, Failure> {
    let bad = |why: String| Failure::new(FailureKind::BadRequest, why);
    if check.rise == 0 {
        return Err(bad("rise = 0 can never pass: ask for at least 1".into()));
    }
    if check.interval < MIN_INTERVAL {
        return Err(bad(format!(
            "interval {} would check in a busy loop: ask for at least {}",
            duration::format(check.interval),
            duration::format(MIN_INTERVAL)
        )));
    }
    if check.timeout > duration::MAX {
        return Err(bad(
            BeyondClock::new("health check", check.timeout).to_string()
        ));
    }
    Instant::now()
        .checked_add(check.timeout)
        .ok_or_else(|| bad(BeyondClock::new("health check", check.timeout).to_string()))
}

/// GET the path every `interval` until `rise` passes in a row or `deadline`.
async fn probe(
    listen: SocketAddr,
    check: &HealthCheck,
    deadline: Instant,
) -> Result<HealthReport, Failure> {
    // A server listening on every address is reached on loopback.
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let host = ip.to_string();
    let per_check = check.interval.max(Duration::from_millis(500));
    let mut passed = 0;
    let mut checks = 0;
    loop {
        checks += 1;
        let last =
            match crate::http::get(&host, listen.port(), check.path.as_str(), per_check).await {
                Ok(answer) if answer.status == check.expect.get() => {
                    passed += 1;
                    answer.status_line
                }
                Ok(answer) => {
                    passed = 0;
                    answer.status_line
                }
                Err(e) => {
                    passed = 0;
                    e
                }
            };
        if passed >= check.rise {
            return Ok(HealthReport { checks, last });
        }
        if deadline.saturating_duration_since(Instant::now()) < check.interval {
            return Err(Failure::new(
                FailureKind::Failed,
                format!(
                    "GET http://{listen}{} did not answer {} {} times in a row within {} ({checks} checks; last: {last})",
                    check.path,
                    check.expect,
                    check.rise,
                    duration::format(check.timeout)
                ),
            ));
        }
        tokio::time::sleep(check.interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use handover_common::proto::health::{HealthPath, HttpStatus};

    fn check(interval: Duration, timeout: Duration, rise: u32) -> HealthCheck {
        HealthCheck {
            path: HealthPath::new("/health.html").expect("valid"),
            expect: HttpStatus::OK,
            rise,
            interval,
            timeout,
        }
    }

    #[test]
    fn refuses_a_check_that_would_spin_overflow_or_never_pass() {
        let second = Duration::from_secs(1);
        let refused = |c: HealthCheck| refuse_unusable(&c).expect_err("refused");
        let f = refused(check(Duration::ZERO, second, 2));
        assert_eq!(f.kind, FailureKind::BadRequest);
        assert!(f.message.contains("busy loop"), "{}", f.message);
        let f = refused(check(second, Duration::MAX, 2));
        assert!(
            f.message.contains("beyond this clock's range"),
            "{}",
            f.message
        );
        let f = refused(check(second, second, 0));
        assert!(f.message.contains("rise = 0"), "{}", f.message);
        assert!(refuse_unusable(&check(second, Duration::from_secs(60), 2)).is_ok());
    }

    /// An app on loopback that answers every request 503 and signals after its
    /// `n`th request.
    async fn failing_app(n: usize) -> (SocketAddr, tokio::sync::oneshot::Receiver<()>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let app = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let listen = app.local_addr().expect("addr");
        let (nth, seen) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut nth = Some(nth);
            let mut count = 0;
            while let Ok((mut stream, _)) = app.accept().await {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                    .await;
                count += 1;
                if count >= n {
                    nth.take().map(|t| t.send(()));
                }
            }
        });
        (listen, seen)
    }

    fn agent_with_app(listen: SocketAddr, state_dir: &std::path::Path) -> Arc<Agent> {
        let text = format!(
            "name = \"web-1\"\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"c.key\"\nstate_dir = {:?}\n[app]\nlisten = \"{listen}\"\n",
            state_dir.display().to_string()
        );
        Agent::new(toml::from_str(&text).expect("config"))
    }

    fn never_passing() -> HealthCheck {
        check(Duration::from_millis(10), Duration::from_secs(60), 2)
    }

    /// Issue 13 hole 6: a probe went on checking after its caller left. Here the
    /// app always answers 503 and the caller leaves after the third request: the
    /// probe must end then, not at its 60 s timeout.
    #[tokio::test]
    async fn a_probe_stops_when_its_caller_goes_away() {
        let (listen, third) = failing_app(3).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = agent_with_app(listen, dir.path());
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let reporter = Reporter::new(tx);
        tokio::spawn(async move {
            let _ = third.await;
            drop(rx);
        });
        let f = check_health(&agent, never_passing(), &reporter)
            .await
            .expect_err("never passes");
        assert!(f.message.contains("caller went away"), "{}", f.message);
    }

    /// The other half of the same bug: over QUIC the caller's going shows only
    /// as its connection closing. `serve_exchange` must then end, so the probe's
    /// reporter reads closed (above); without `gone` it waited for the probe's
    /// 60 s timeout.
    #[tokio::test]
    async fn an_exchange_ends_when_its_callers_connection_closes() {
        use handover_common::proto::{Request, RequestFrame};

        let (listen, first) = failing_app(1).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = agent_with_app(listen, dir.path());
        let (mut caller_side, agent_side) = tokio::io::duplex(64 * 1024);
        let request = RequestFrame::new(Request::CheckHealth(never_passing()));
        handover_common::wire::write_frame(&mut caller_side, &request)
            .await
            .expect("request sent");
        let (mut recv, mut send) = tokio::io::split(agent_side);
        let gone = async move {
            let _ = first.await;
        };
        let caller = crate::caller::Caller::Coordinator("ops".into());
        crate::exchange::serve_exchange(&agent, &caller, &mut recv, &mut send, gone)
            .await
            .expect("ends cleanly");
        // It ended because the caller went, not because the probe answered.
        drop((recv, send));
        let answer = handover_common::wire::read_frame::<_, handover_common::proto::Response>(
            &mut caller_side,
        )
        .await
        .expect("a clean end");
        assert!(answer.is_none(), "the probe answered: {answer:?}");
    }
}
