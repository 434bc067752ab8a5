//! Drain: the health-check file and live session counts (runbook steps 12–13).
//! Filled in by the drain issue.

use serde::{Deserialize, Serialize};

/// Drain requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DrainRequest {}

/// Drain progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DrainProgress {}

/// Drain replies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DrainReply {}

/// Drain part of the status report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainStatus {}

impl DrainRequest {
    /// Whether this request changes the host (see [`super::Request::changes_host`]).
    pub fn changes_host(&self) -> bool {
        match *self {}
    }
}
