//! Leases: an agent works for one rollout at a time, so two operators cannot
//! upgrade the same hosts at once. A lease expires unless renewed, so a crashed
//! coordinator does not lock a host forever.

use serde::{Deserialize, Serialize};

/// Lease requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LeaseRequest {
    /// Take (or renew) the lease for `rollout`. Refused while another unexpired
    /// rollout holds it, unless `break_existing`.
    Acquire {
        /// The rollout id.
        rollout: String,
        /// Who runs it (coordinator certificate name and operator), for messages.
        owner: String,
        /// Seconds until it expires unless renewed.
        ttl_secs: u64,
        /// Take it even from another rollout (`--break-lease`).
        break_existing: bool,
    },
    /// Give it back (only the holder can).
    Release {
        /// The rollout id.
        rollout: String,
    },
    /// Who holds it.
    Show,
}

/// Lease replies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LeaseReply {
    /// The caller holds it now.
    Held(LeaseInfo),
    /// Released (or was not held by the caller's rollout).
    Released,
    /// The current holder, if any.
    Current(Option<LeaseInfo>),
}

/// A lease as the agent keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// The rollout id.
    pub rollout: String,
    /// Who runs it.
    pub owner: String,
    /// When it was first taken (Unix seconds).
    pub acquired_unix: u64,
    /// When it expires unless renewed (Unix seconds).
    pub expires_unix: u64,
}
