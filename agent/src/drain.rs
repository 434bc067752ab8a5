//! Drain: the health-check file and live session counts (runbook steps 12–13).
//! Filled in by the drain issue.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use handover_common::proto::Failure;
use handover_common::proto::drain::{DrainReply, DrainRequest, DrainStatus};
use serde::Deserialize;

use crate::Agent;
use crate::dispatch::{Caller, Reporter};

/// `[health]`: the file HAProxy's health check fetches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// The health-check file.
    pub file: PathBuf,
}

impl HealthConfig {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if self.file.is_relative() {
            self.file = base.join(&self.file);
        }
    }
}

/// `[app]`: the app server whose sessions are counted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// The app server's socket, "ADDR:PORT".
    pub listen: String,
}

/// Runs a drain request.
pub async fn handle(
    _agent: &Arc<Agent>,
    _caller: &Caller,
    req: DrainRequest,
    _reporter: &Reporter,
) -> Result<DrainReply, Failure> {
    match req {}
}

/// The drain part of `status`.
pub async fn status(_agent: &Arc<Agent>) -> Option<DrainStatus> {
    None
}
