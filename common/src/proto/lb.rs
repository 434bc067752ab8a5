//! Load balancers: HAProxy runtime API on `lb` hosts (runbook steps 11, 13, 14).
//!
//! Servers are always named by the app host's [`HostName`], whichever HAProxy
//! server carries them (a `server-template` slot such as `slot3`, or a dynamic
//! server named after the host). The agent keeps that map; callers never see or
//! name HAProxy's own server names, so they cannot touch a server they did not
//! attach.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::names::{BackendName, HostName};

/// Lb requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LbRequest {
    /// Put `server` into rotation at `app` and wait until HAProxy reports it UP
    /// after a health check that ran after the change (runbook step 11).
    Attach {
        /// The app host.
        server: HostName,
        /// The app server as this LB reaches it.
        app: SocketAddr,
        /// One backend, or every backend the agent manages when `None`.
        backend: Option<BackendName>,
        /// How long to wait for UP; the agent's `attach_timeout` when `None`.
        timeout: Option<Duration>,
    },
    /// Take `server` out of every managed backend (runbook step 14). Without
    /// `force` it waits up to `timeout` for its sessions to end and refuses,
    /// changing nothing, if they do not; with `force` it cuts them.
    Detach {
        /// The app host.
        server: HostName,
        /// Cut remaining sessions instead of refusing.
        force: bool,
        /// How long to wait for sessions to end; the agent's default when `None`.
        timeout: Option<Duration>,
    },
    /// Set an attached server's admin state.
    SetState {
        /// The app host.
        server: HostName,
        /// The state wanted.
        state: ServerState,
        /// For `ready` from maintenance: how long to wait for a fresh UP.
        timeout: Option<Duration>,
    },
    /// Stats of these servers (every attached server when empty).
    Stats {
        /// The app hosts asked about.
        servers: Vec<HostName>,
    },
}

/// The admin states an operator can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    /// In rotation.
    Ready,
    /// No new clients; cookie-pinned clients are still served.
    Drain,
    /// Out of rotation; in-flight requests finish.
    Maint,
}

impl ServerState {
    /// The runtime API word.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Ready => "ready",
            ServerState::Drain => "drain",
            ServerState::Maint => "maint",
        }
    }
}

impl std::fmt::Display for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ServerState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ready" => Ok(ServerState::Ready),
            "drain" => Ok(ServerState::Drain),
            "maint" => Ok(ServerState::Maint),
            _ => Err(format!(
                "invalid server state {s:?}: use ready, drain or maint"
            )),
        }
    }
}

/// Lb progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LbProgress {
    /// An attached server is not UP yet (reported when its status changes).
    WaitingForUp(ServerStats),
    /// A server being detached still has sessions.
    WaitingForSessions(ServerStats),
}

/// Lb replies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LbReply {
    /// The servers as HAProxy reports them after the action.
    Servers(Vec<ServerStats>),
    /// What detach removed.
    Detached(Vec<Removed>),
}

/// One server removed by a detach.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Removed {
    /// The backend.
    pub backend: BackendName,
    /// The app host.
    pub server: HostName,
    /// The HAProxy server that carried it (slot freed, or dynamic server deleted).
    pub haproxy_name: String,
    /// Sessions cut by `force` (0 without it).
    pub sessions_cut: u64,
}

/// How a server came to be in a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    /// A `server-template` slot the agent filled (cookie persistence works).
    Slot,
    /// A server the agent added with `add server` (no cookie persistence in 2.6).
    Dynamic,
    /// A server the agent does not manage (declared in the HAProxy config).
    Other,
    /// A plain `server` line of haproxy.cfg that the agent adopted for the host of
    /// its name or address (an existing fleet): drained and detached by state,
    /// never removed from the config.
    Config,
}

/// One server in one backend, from `show stat` (read by header name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStats {
    /// The backend.
    pub backend: String,
    /// The app host it carries, when the agent manages it.
    pub host: Option<HostName>,
    /// HAProxy's server name (`slot3`, or the host name for dynamic servers).
    pub haproxy_name: String,
    /// Slot, dynamic, or not ours.
    pub kind: ServerKind,
    /// "ADDR:PORT" as HAProxy has it.
    pub addr: String,
    /// HAProxy's status text: UP, DOWN, NOLB, DRAIN, MAINT, `UP 1/3`, `no check`...
    pub status: String,
    /// Requests in flight.
    pub scur: u64,
    /// Requests queued.
    pub qcur: u64,
    /// Sessions so far.
    pub stot: u64,
    /// Last health check result (L7OK, L7STS, L4CON, INI...).
    pub check_status: String,
    /// HTTP 5xx answers so far.
    pub hrsp_5xx: u64,
    /// In the answer to an attach: how long the LB agent waited for HAProxy's
    /// fresh checks to pass (`rise` checks `inter` apart, a wait the LB's own
    /// config asks for; capped at `rise` × `inter` when the agent's `[haproxy]`
    /// says both). `None` elsewhere.
    pub fresh_check: Option<Duration>,
}

impl ServerStats {
    /// What [`Self::status`] says, parsed.
    pub fn status_kind(&self) -> StatusKind {
        StatusKind::parse(&self.status)
    }
}

/// HAProxy's status column, parsed. The transitional forms (`UP 1/3`, `DOWN 1/2`)
/// are told apart from the settled ones: `UP 1/3` is going down, not UP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StatusKind {
    /// Settled UP: in rotation.
    Up,
    /// UP but failing checks (`UP 1/3`).
    GoingDown,
    /// Settled DOWN.
    Down,
    /// DOWN but passing checks (`DOWN 1/2`).
    GoingUp,
    /// Soft-stopped by `disable-on-404`: pinned clients only.
    Nolb,
    /// Admin drain.
    Drain,
    /// Admin maintenance (including `MAINT (via ...)` and `MAINT (resolution)`).
    Maint,
    /// Checks disabled: in rotation without proof.
    NoCheck,
    /// Anything else.
    Other,
}

impl StatusKind {
    /// Parses the `status` column.
    pub fn parse(status: &str) -> Self {
        let s = status.trim();
        let mut words = s.split_whitespace();
        let first = words.next().unwrap_or("");
        let transitional = words.next().is_some_and(|w| w.contains('/'));
        match first {
            "UP" if transitional => StatusKind::GoingDown,
            "UP" => StatusKind::Up,
            "DOWN" if transitional => StatusKind::GoingUp,
            "DOWN" => StatusKind::Down,
            "NOLB" => StatusKind::Nolb,
            "DRAIN" => StatusKind::Drain,
            "MAINT" => StatusKind::Maint,
            "no" if s == "no check" => StatusKind::NoCheck,
            _ => StatusKind::Other,
        }
    }
}

/// Lb part of the status report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LbStatus {
    /// The runtime API endpoint.
    pub socket: String,
    /// HAProxy's version, pid and uptime, when it answered.
    pub haproxy: Option<HaproxyInfo>,
    /// Why HAProxy could not be read, when it could not.
    pub error: Option<String>,
    /// Every server of every managed backend.
    pub servers: Vec<ServerStats>,
    /// Reloads the agent noticed and re-applied membership after.
    pub reloads_seen: u64,
}

/// From `show info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HaproxyInfo {
    /// HAProxy's version.
    pub version: String,
    /// The serving process.
    pub pid: u32,
    /// Seconds since that process started.
    pub uptime_secs: u64,
}

impl LbRequest {
    /// Whether this request changes the host (see [`super::Request::changes_host`]).
    pub fn changes_host(&self) -> bool {
        !matches!(self, LbRequest::Stats { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_forms_are_told_apart() {
        let cases = [
            ("UP", StatusKind::Up),
            ("UP 1/3", StatusKind::GoingDown),
            ("DOWN", StatusKind::Down),
            ("DOWN 1/2", StatusKind::GoingUp),
            ("NOLB", StatusKind::Nolb),
            ("NOLB 1/2", StatusKind::Nolb),
            ("DRAIN", StatusKind::Drain),
            ("DRAIN 1/3", StatusKind::Drain),
            ("MAINT", StatusKind::Maint),
            ("MAINT (via web/slot1)", StatusKind::Maint),
            ("MAINT (resolution)", StatusKind::Maint),
            ("no check", StatusKind::NoCheck),
            ("", StatusKind::Other),
            ("OPEN", StatusKind::Other),
        ];
        for (text, kind) in cases {
            assert_eq!(StatusKind::parse(text), kind, "{text:?}");
        }
    }

    #[test]
    fn server_states_parse_and_refuse() {
        assert_eq!("drain".parse::<ServerState>(), Ok(ServerState::Drain));
        let err = "up".parse::<ServerState>().expect_err("up is not a state");
        assert!(err.contains("ready, drain or maint"), "{err}");
    }
}
