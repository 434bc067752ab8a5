//! Prometheus metrics (`[metrics] listen`, off unless configured): what the agent
//! already knows, in the text format monitoring expects.
//!
//! Two kinds of figures. Those that describe the host now (sessions, drained, the
//! current release, Apache's workers, HAProxy's servers) are read on each scrape
//! from the same [`crate::status::report`] the `status` request answers with, so a
//! scrape and `handover status` never disagree. Those that count what happened
//! (QUIC connections, requests, deploy and hook durations) are [`Counters`],
//! bumped where it happens: the QUIC accept path and [`crate::exchange`].
//!
//! Names follow Prometheus' conventions: a `handover_` prefix, base units
//! (seconds) in the name, `_total` on counters (added by the encoder).

mod counters;
mod scrape;
pub mod serve;
pub mod textformat;

use std::net::SocketAddr;

use serde::Deserialize;

pub use counters::{ConnectionResult, Counters, RequestKind};
pub use scrape::encode;

/// `[metrics]` in the agent config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// TCP address of the HTTP endpoint serving `GET /metrics`, e.g.
    /// `127.0.0.1:9464`. It carries no authentication: keep it on loopback or a
    /// monitoring network.
    pub listen: SocketAddr,
}

/// The content type of what [`encode`] writes (OpenMetrics text, which
/// Prometheus negotiates and reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
