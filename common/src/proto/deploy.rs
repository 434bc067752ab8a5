//! Deploy: code revisions, releases and hooks (runbook steps 4, 6, 7).
//! Filled in by the deploy issue.

use serde::{Deserialize, Serialize};

/// Deploy requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DeployRequest {}

/// Deploy progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DeployProgress {}

/// Deploy replies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DeployReply {}

/// Deploy part of the status report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseStatus {}

impl DeployRequest {
    /// Whether this request changes the host (see [`super::Request::changes_host`]).
    pub fn changes_host(&self) -> bool {
        match *self {}
    }
}
