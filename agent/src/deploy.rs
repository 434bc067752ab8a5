//! Code revisions: releases/, atomic `current` switch, hooks, rollback (runbook steps 4, 6, 7).
//! Filled in by the deploy issue.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use handover_common::proto::Failure;
use handover_common::proto::deploy::{DeployReply, DeployRequest, ReleaseStatus};
use serde::Deserialize;

use crate::Agent;
use crate::dispatch::{Caller, Reporter};

/// `[deploy]`: where releases live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployConfig {
    /// Holds releases/, shared/ and current.
    pub root: PathBuf,
}

impl DeployConfig {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if self.root.is_relative() {
            self.root = base.join(&self.root);
        }
    }
}

/// Runs a deploy request.
pub async fn handle(
    _agent: &Arc<Agent>,
    _caller: &Caller,
    req: DeployRequest,
    _reporter: &Reporter,
) -> Result<DeployReply, Failure> {
    match req {}
}

/// The release part of `status`.
pub async fn status(_agent: &Arc<Agent>) -> Option<ReleaseStatus> {
    None
}
