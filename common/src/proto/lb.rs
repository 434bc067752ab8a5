//! Load balancers: HAProxy runtime API on `lb` hosts (runbook steps 11, 13, 14).
//! Filled in by the HAProxy issue.

use serde::{Deserialize, Serialize};

/// Lb requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LbRequest {}

/// Lb progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LbProgress {}

/// Lb replies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LbReply {}

/// Lb part of the status report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LbStatus {}

impl LbRequest {
    /// Whether this request changes the host (see [`super::Request::changes_host`]).
    pub fn changes_host(&self) -> bool {
        match *self {}
    }
}
