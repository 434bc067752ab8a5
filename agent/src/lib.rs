//! The Handover agent: the local authority on one host.
//!
//! It listens for coordinators over mutually authenticated QUIC ([`server`]) and for
//! operators on a local socket ([`control`]); both serve each stream with
//! [`exchange`], which hands the decoded request to [`dispatch`], which routes it
//! to one of the agent's built-in actions. The agent never calls anyone:
//! coordinators dial it, as SSH clients dial sshd.
//!
//! Imports run one way: `server`/`control` → `exchange` → `dispatch` → the
//! features (`deploy`, `drain`, `haproxy`, `probe`, `status`, `lease`), which share
//! only leaf modules such as [`caller`]; no feature imports the dispatcher.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod applog;
pub mod caller;
pub mod config;
pub mod control;
pub mod deploy;
pub mod dispatch;
pub mod drain;
pub mod exchange;
pub mod haproxy;
pub mod hoststats;
pub mod http;
pub mod join;
pub mod lease;
pub mod metrics;
pub mod probe;
pub mod server;
pub mod status;

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Mutex;

pub use config::AgentConfig;

/// Everything a running agent shares between its connections.
pub struct Agent {
    /// The validated config.
    pub config: AgentConfig,
    /// When the daemon started (for `status`).
    pub started: Instant,
    /// CPU and memory sampler (CPU use is measured between two refreshes).
    pub host: Mutex<hoststats::HostSampler>,
    /// Held by every deploy action that changes the host, so two never interleave.
    pub deploy_lock: Mutex<()>,
    /// HAProxy membership and what the reconciler saw (on `lb` hosts).
    pub lb: haproxy::LbState,
    /// Which rollout may change this host now.
    pub lease: Mutex<lease::Lease>,
    /// What happened since start, for `[metrics]` (counted whether or not it is on).
    pub metrics: metrics::Counters,
}

impl Agent {
    /// An agent for `config`.
    pub fn new(config: AgentConfig) -> Arc<Self> {
        Arc::new(Agent {
            started: Instant::now(),
            host: Mutex::new(hoststats::HostSampler::new()),
            lease: Mutex::new(lease::Lease::load(&config.state_dir)),
            config,
            lb: haproxy::LbState::default(),
            deploy_lock: Mutex::new(()),
            metrics: metrics::Counters::default(),
        })
    }
}
