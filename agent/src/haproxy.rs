//! HAProxy runtime API on `lb` hosts (runbook steps 11, 13, 14).
//! Filled in by the HAProxy issue.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use handover_common::proto::Failure;
use handover_common::proto::lb::{LbReply, LbRequest, LbStatus};
use serde::Deserialize;

use crate::Agent;
use crate::dispatch::{Caller, Reporter};

/// `[haproxy]`: the runtime API socket and the backends this agent manages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaproxyConfig {
    /// The admin socket path.
    pub socket: PathBuf,
}

impl HaproxyConfig {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if self.socket.is_relative() {
            self.socket = base.join(&self.socket);
        }
    }
}

/// Runs an HAProxy request.
pub async fn handle(
    _agent: &Arc<Agent>,
    _caller: &Caller,
    req: LbRequest,
    _reporter: &Reporter,
) -> Result<LbReply, Failure> {
    match req {}
}

/// The load-balancer part of `status`.
pub async fn status(_agent: &Arc<Agent>) -> Option<LbStatus> {
    None
}
