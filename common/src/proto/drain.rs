//! Drain: the health-check file and live session counts (runbook steps 12–13).
//!
//! Draining a host removes its health-check file so HAProxy's
//! `http-check disable-on-404` stops sending it new sessions while existing ones
//! carry on; the agent then counts what is still there (established TCP on the app
//! port, Apache's workers) and, when asked to wait, pushes that count on the open
//! stream until it has been zero for a quiet period.
//!
//! Remaining sessions are keyed by the *remote address* ([`Holder`]) so a caller
//! can tell a client from a load balancer's pooled connection and judge the latter
//! by the load balancer's own figures.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Drain requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DrainRequest {
    /// Remove the health-check file (idempotent); with `wait`, stay on the stream
    /// pushing [`DrainProgress`] until the host has no sessions left.
    Drain {
        /// Wait for the sessions to end, and how.
        wait: Option<DrainWait>,
    },
    /// Put the health-check file back, byte for byte (idempotent).
    Undrain,
    /// Read the drain state and session figures without changing anything.
    Sessions,
}

/// How a drain is waited on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainWait {
    /// Give up after this long; the host stays drained.
    pub timeout: Duration,
    /// "Done" means zero sessions for this long; `None` takes the agent's
    /// `[app] quiet_period`.
    pub quiet: Option<Duration>,
    /// Connections from these remote addresses are reported but do not keep the
    /// drain open: a load balancer's pooled idle connections, which the caller
    /// judges by that load balancer's own figures instead.
    pub exempt: Vec<IpAddr>,
}

/// Who holds the remaining sessions: one remote address and its connections.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Holder {
    /// The peer's address (IPv4-mapped IPv6 addresses are shown as IPv4).
    pub remote: IpAddr,
    /// Established connections from it to the app port.
    pub connections: u32,
}

/// Sessions on the app port at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCount {
    /// Established connections to `[app] listen`.
    pub total: u32,
    /// The same, per remote address, most connections first.
    pub holders: Vec<Holder>,
    /// How they were counted: "netlink" or "/proc/net/tcp".
    pub source: String,
}

/// The Apache figures the drain display needs, from mod_status `?auto`.
/// Fields Apache did not report stay `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApacheFigures {
    /// Workers serving a request (includes the one answering mod_status).
    pub busy_workers: Option<u32>,
    /// Workers waiting for a request.
    pub idle_workers: Option<u32>,
    /// Workers finishing after a graceful restart.
    pub graceful_workers: Option<u32>,
    /// Connections Apache holds (event MPM).
    pub conns_total: Option<u32>,
    /// Idle keep-alive connections parked by the event MPM.
    pub conns_keep_alive: Option<u32>,
    /// Total requests served since start (needs `ExtendedStatus On`).
    pub total_accesses: Option<u64>,
}

/// Apache's status as the agent could read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ApacheReading {
    /// mod_status answered and parsed.
    Figures(ApacheFigures),
    /// It could not be read or parsed; the text says why.
    Unavailable(String),
}

/// One sample while a drain is waited on (pushed every ≤200 ms).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainProgress {
    /// Established connections on the app port, with their holders.
    pub sessions: SessionCount,
    /// Of those, connections that keep the drain open (not from an exempt address).
    pub blocking: u32,
    /// Apache's workers, when `[app] status_url` is set (refreshed about once a second).
    pub apache: Option<ApacheReading>,
    /// Time since the wait began.
    pub elapsed: Duration,
    /// How long the blocking count has been zero.
    pub quiet_for: Duration,
    /// The quiet period being waited for.
    pub quiet: Duration,
    /// Whether the health-check file is removed.
    pub drained: bool,
}

/// Drain replies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DrainReply {
    /// The health-check file is removed (and, if waited on, the host is idle).
    Drained {
        /// Whether it was already removed before this call.
        already: bool,
        /// How long the wait took, if there was one.
        waited: Option<Duration>,
        /// The state after the call.
        status: DrainStatus,
    },
    /// The health-check file is back.
    Undrained {
        /// Whether it was already in place before this call.
        already: bool,
        /// The state after the call.
        status: DrainStatus,
    },
    /// Answer to [`DrainRequest::Sessions`].
    Sessions(DrainStatus),
}

/// Drain part of the status report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainStatus {
    /// Whether the health-check file is absent (HAProxy's check gets 404);
    /// `None` without `[health]`.
    pub drained: Option<bool>,
    /// The file is absent and no drain saved it: the host was never drained,
    /// and `undrain` cannot bring it back.
    #[serde(default)]
    pub missing: bool,
    /// The configured health-check file.
    pub health_file: Option<String>,
    /// Sessions on the app port; `None` without `[app]`.
    pub sessions: Option<SessionReading>,
    /// Apache's workers; `None` without `[app] status_url`.
    pub apache: Option<ApacheReading>,
}

/// Sessions as the agent could count them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SessionReading {
    /// Counted.
    Counted(SessionCount),
    /// Neither netlink nor /proc could be read; the text says why.
    Unavailable(String),
}

impl SessionReading {
    /// The count, when there is one.
    pub fn count(&self) -> Option<&SessionCount> {
        match self {
            SessionReading::Counted(c) => Some(c),
            SessionReading::Unavailable(_) => None,
        }
    }
}

impl ApacheReading {
    /// The figures, when there are some.
    pub fn figures(&self) -> Option<&ApacheFigures> {
        match self {
            ApacheReading::Figures(f) => Some(f),
            ApacheReading::Unavailable(_) => None,
        }
    }
}

/// What a drain wait leaves behind when it ends without the host idle.
pub const STAYS_DRAINED: &str = "The host stays drained (health-check file removed)";

/// Why a wait with a zero timeout is refused (nothing changed).
pub const ZERO_TIMEOUT: &str = "a drain wait needs a timeout above zero (e.g. --timeout 5m)";

/// Why a wait stopped when the health-check file came back.
pub const UNDRAINED_DURING_WAIT: &str = "the health-check file is back (the host was undrained during the wait): \
     HAProxy sends it new clients again, so the wait stopped";

/// What to do after a wait timed out; `undrain` is the command for this host.
pub fn after_timeout(undrain: &str) -> String {
    format!("wait again with a longer --timeout, or put it back in service with `{undrain}`")
}

/// The line that ends a drain: "drained: …" (with how long the wait took).
pub fn drained_text(already: bool, waited: Option<Duration>) -> String {
    let mut text = if already {
        "already drained (the health-check file was removed)".to_string()
    } else {
        "drained: health-check file removed, HAProxy sends no new sessions".to_string()
    };
    if let Some(waited) = waited {
        text.push_str(&format!(
            "; no session left after {:.1}s",
            waited.as_secs_f64()
        ));
    }
    text
}

/// The line that ends an undrain.
pub fn undrained_text(already: bool) -> &'static str {
    if already {
        "already in service (health-check file in place)"
    } else {
        "undrained: health-check file restored, HAProxy will send sessions again"
    }
}

/// What a JSON line of a drain command is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrainEventKind {
    /// A sample during `--wait`.
    Progress,
    /// The host is drained (and, after `--wait`, idle).
    Drained,
    /// The health-check file is back.
    Undrained,
    /// `--wait` ran out of time; the host stays drained.
    Timeout,
    /// The command failed for this host.
    Failed,
}

/// One JSON line of `handover drain|undrain --json` and `handover-agent
/// drain|undrain --json`: the same shape from both binaries (README, "Draining
/// a host"). Durations are whole milliseconds; absent fields are unknown or do
/// not apply (the agent knows nothing of load balancers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainEvent {
    /// The host.
    pub host: String,
    /// What this line is about.
    pub event: DrainEventKind,
    /// Whether the health-check file is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained: Option<bool>,
    /// Whether it already was (before this command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub already: Option<bool>,
    /// Connections that keep the drain open (not from a load balancer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<u32>,
    /// Every connection on the app port, by remote address (LBs' included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holders: Option<Vec<Holder>>,
    /// Since the wait began (or how long it took, on the last line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_ms: Option<u64>,
    /// How long nothing held the host (host and load balancers together).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_for_ms: Option<u64>,
    /// The quiet period waited for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_ms: Option<u64>,
    /// When the direct sessions should be gone, from their recent decay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_ms: Option<u64>,
    /// Apache's busy workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apache_busy: Option<u32>,
    /// Apache's idle workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apache_idle: Option<u32>,
    /// The host's servers in every load balancer that answered (coordinator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lbs: Option<Vec<DrainLbServer>>,
    /// Load balancers that could not be read, and why (coordinator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb_errors: Option<Vec<DrainLbError>>,
    /// What still holds the host, as text; empty once idle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holding: Option<Vec<String>>,
    /// The whole story, on a timeout or failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One of the host's servers in one load balancer, in a [`DrainEvent`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainLbServer {
    /// The load balancer.
    pub lb: String,
    /// The backend.
    pub backend: String,
    /// HAProxy's server name.
    pub server: String,
    /// HAProxy's status (NOLB while drained).
    pub status: String,
    /// Requests in flight.
    pub scur: u64,
    /// Requests queued.
    pub qcur: u64,
    /// Sessions so far.
    pub stot: u64,
    /// New sessions since the wait began.
    pub arrived: u64,
    /// How long stot has not changed.
    pub steady_ms: u64,
}

impl DrainLbServer {
    /// How long stot has not changed.
    pub fn steady_for(&self) -> Duration {
        Duration::from_millis(self.steady_ms)
    }
}

/// A load balancer that could not be read, in a [`DrainEvent`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainLbError {
    /// The load balancer.
    pub lb: String,
    /// Why.
    pub error: String,
}

/// Whole milliseconds, for JSON.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl DrainEvent {
    /// A line with only the host and the event.
    pub fn new(host: impl Into<String>, event: DrainEventKind) -> Self {
        DrainEvent {
            host: host.into(),
            event,
            drained: None,
            already: None,
            sessions: None,
            holders: None,
            elapsed_ms: None,
            quiet_for_ms: None,
            quiet_ms: None,
            eta_ms: None,
            apache_busy: None,
            apache_idle: None,
            lbs: None,
            lb_errors: None,
            holding: None,
            message: None,
        }
    }

    /// Adds what an agent sample says about the host.
    pub fn with_sample(mut self, p: &DrainProgress) -> Self {
        let figures = p.apache.as_ref().and_then(|a| a.figures());
        self.drained = Some(p.drained);
        self.sessions = Some(p.blocking);
        self.holders = Some(p.sessions.holders.clone());
        self.elapsed_ms = Some(millis(p.elapsed));
        self.quiet_for_ms = Some(millis(p.quiet_for));
        self.quiet_ms = Some(millis(p.quiet));
        self.apache_busy = figures.and_then(|f| f.busy_workers);
        self.apache_idle = figures.and_then(|f| f.idle_workers);
        self
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plural = if self.connections == 1 { "" } else { "s" };
        write!(
            f,
            "{} ({} connection{plural})",
            self.remote, self.connections
        )
    }
}

impl DrainRequest {
    /// Whether this request changes the host (see [`super::Request::changes_host`]).
    pub fn changes_host(&self) -> bool {
        !matches!(self, DrainRequest::Sessions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Progress, Response};

    #[test]
    fn progress_survives_the_wire_encoding() {
        let progress = Response::Progress(Progress::Drain(DrainProgress {
            sessions: SessionCount {
                total: 3,
                holders: vec![Holder {
                    remote: "::1".parse().expect("literal address"),
                    connections: 3,
                }],
                source: "netlink".into(),
            },
            blocking: 3,
            apache: Some(ApacheReading::Figures(ApacheFigures {
                busy_workers: Some(1),
                idle_workers: None,
                graceful_workers: None,
                conns_total: Some(3),
                conns_keep_alive: Some(2),
                total_accesses: None,
            })),
            elapsed: Duration::from_millis(1500),
            quiet_for: Duration::ZERO,
            quiet: Duration::from_millis(300),
            drained: true,
        }));
        let mut buf = Vec::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            crate::wire::write_frame(&mut buf, &progress)
                .await
                .expect("encode");
            let back: Option<Response> = crate::wire::read_frame(&mut buf.as_slice())
                .await
                .expect("decode");
            assert_eq!(back, Some(progress));
        });
    }
}
