//! `CheckHealth`: the release on this host answers its health path, `rise` times
//! in a row, on the app's own address (`[app] listen`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use handover_common::proto::health::{HealthCheck, HealthReport};
use handover_common::proto::{Failure, FailureKind};

use crate::Agent;

/// Runs the check; fails with the last answer seen when it does not pass in time.
pub async fn check_health(agent: &Arc<Agent>, check: HealthCheck) -> Result<HealthReport, Failure> {
    let app = agent.config.app.as_ref().ok_or_else(|| {
        Failure::new(
            FailureKind::NotConfigured,
            format!(
                "{} has no [app] section: add `[app] listen = \"ADDR:PORT\"` (the app server's socket) to its agent config",
                agent.config.name
            ),
        )
    })?;
    // A server listening on every address is reached on loopback.
    let ip = match app.listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let host = ip.to_string();
    let port = app.listen.port();
    let rise = check.rise.max(1);
    let deadline = tokio::time::Instant::now() + check.timeout;
    let mut passed = 0;
    let mut checks = 0;
    let mut last;
    loop {
        checks += 1;
        let per_check = check.interval.max(std::time::Duration::from_millis(500));
        match crate::http::get(&host, port, check.path.as_str(), per_check).await {
            Ok(answer) if answer.status == check.expect => {
                passed += 1;
                last = answer.status_line;
            }
            Ok(answer) => {
                passed = 0;
                last = answer.status_line;
            }
            Err(e) => {
                passed = 0;
                last = e;
            }
        }
        if passed >= rise {
            return Ok(HealthReport { checks, last });
        }
        if tokio::time::Instant::now() + check.interval > deadline {
            return Err(Failure::new(
                FailureKind::Failed,
                format!(
                    "GET http://{}{} did not answer {} {rise} times in a row within {} ({checks} checks; last: {last})",
                    app.listen,
                    check.path.as_str(),
                    check.expect,
                    handover_common::duration::format(check.timeout)
                ),
            ));
        }
        tokio::time::sleep(check.interval).await;
    }
}
