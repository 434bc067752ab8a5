//! `status`: what an agent knows about its host right now.

use serde::{Deserialize, Serialize};

use super::{deploy, drain, lb};

/// Answer to [`super::Request::Status`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The agent's name (equal to its certificate's).
    pub name: String,
    /// The agent's version.
    pub version: String,
    /// Seconds since the agent started.
    pub uptime_secs: u64,
    /// Host figures.
    pub host: HostStats,
    /// Health file, sessions, Apache — when `[health]`/`[app]` are configured.
    pub drain: Option<drain::DrainStatus>,
    /// The current release — when `[deploy]` is configured.
    pub release: Option<deploy::ReleaseStatus>,
    /// Backends and servers — when `[haproxy]` is configured.
    pub lb: Option<lb::LbStatus>,
}

/// Load, CPU and memory, read with sysinfo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostStats {
    /// Host uptime in seconds.
    pub host_uptime_secs: u64,
    /// 1, 5 and 15 minute load averages.
    pub load: [f64; 3],
    /// Global CPU use in percent.
    pub cpu_percent: f32,
    /// Number of logical CPUs.
    pub cpus: u32,
    /// Total memory in bytes.
    pub memory_total: u64,
    /// Used memory in bytes.
    pub memory_used: u64,
    /// The agent's own resident set size in bytes.
    pub agent_rss: u64,
}
