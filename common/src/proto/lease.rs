//! Leases: an agent works for one rollout at a time, so two operators cannot
//! upgrade the same hosts at once. A lease belongs to one coordinator *process*
//! (a random token it made at start and keeps to itself), so a second process
//! running the same rollout id — `handover resume` beside a live `rollout` — is
//! refused too. A lease expires unless renewed, so a crashed coordinator does not
//! lock a host forever.

use serde::{Deserialize, Serialize};

/// Lease requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LeaseRequest {
    /// Take (or renew) the lease for `rollout`. Refused while an unexpired lease
    /// is held by another rollout, or by the same rollout in another coordinator
    /// process (another token), unless `break_existing`.
    Acquire {
        /// The rollout id.
        rollout: String,
        /// Who runs it, for messages.
        holder: LeaseHolder,
        /// The coordinator process's secret: only the process that took the lease
        /// renews or releases it.
        token: String,
        /// Seconds until it expires unless renewed.
        ttl_secs: u64,
        /// Take it even from its current holder (`--break-lease`, or a holder the
        /// coordinator proved gone).
        break_existing: bool,
    },
    /// Give it back (only the process holding it can).
    Release {
        /// The rollout id.
        rollout: String,
        /// The holding process's token.
        token: String,
    },
    /// Who holds it.
    Show,
}

impl LeaseRequest {
    /// Refuses strings an agent should not keep in its state_dir or print in its
    /// refusals (issue 13: lease owner and rollout strings were unchecked).
    pub fn check(&self) -> Result<(), String> {
        let (rollout, token, holder) = match self {
            LeaseRequest::Acquire {
                rollout,
                token,
                holder,
                ..
            } => (rollout, token, Some(holder)),
            LeaseRequest::Release { rollout, token } => (rollout, token, None),
            LeaseRequest::Show => return Ok(()),
        };
        crate::names::RolloutId::new(rollout.as_str()).map_err(|e| e.to_string())?;
        if !(16..=128).contains(&token.len()) || !token.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err("invalid lease token: 16 to 128 hex digits".into());
        }
        if let Some(h) = holder {
            let texts = [
                ("name", Some(&h.name)),
                ("host", Some(&h.host)),
                ("user", h.user.as_ref()),
            ];
            for (what, text) in texts {
                if let Some(t) = text {
                    crate::names::check_lease_owner(t)
                        .map_err(|e| format!("invalid lease holder {what}: {e}"))?;
                }
            }
        }
        Ok(())
    }
}

/// Lease replies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LeaseReply {
    /// The caller holds it now.
    Held(LeaseInfo),
    /// Someone else holds it; nothing was changed.
    Refused {
        /// The current holder.
        lease: LeaseInfo,
        /// The agent's clock when it answered (Unix seconds), so ages are measured
        /// on one clock.
        now_unix: u64,
    },
    /// Released (or was not held by the caller's process).
    Released,
    /// The current holder, if any.
    Current(Option<LeaseInfo>),
}

/// The coordinator process that holds a lease, as people know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseHolder {
    /// The coordinator certificate's name.
    pub name: String,
    /// The operator (login name), when known.
    pub user: Option<String>,
    /// The bastion's host name.
    pub host: String,
    /// The coordinator's process id on that host.
    pub pid: u32,
}

impl std::fmt::Display for LeaseHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.user {
            Some(user) => write!(
                f,
                "{} ({user} on {}, pid {})",
                self.name, self.host, self.pid
            ),
            None => write!(f, "{} (on {}, pid {})", self.name, self.host, self.pid),
        }
    }
}

/// A lease as the agent keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// The rollout id.
    pub rollout: String,
    /// The process that holds it.
    pub holder: LeaseHolder,
    /// When it was first taken (Unix seconds).
    pub acquired_unix: u64,
    /// When it was last renewed (Unix seconds).
    pub renewed_unix: u64,
    /// When it expires unless renewed (Unix seconds).
    pub expires_unix: u64,
}

impl LeaseInfo {
    /// "rollout R, run by ops (alice on bastion-1, pid 42): taken 40s ago, renewed
    /// 3s ago, expires in 57s" — ages on the agent's clock `now_unix`. Worded once,
    /// for the agent's refusals and the coordinator's.
    pub fn describe(&self, now_unix: u64) -> String {
        format!(
            "rollout {}, run by {}: taken {}s ago, renewed {}s ago, expires in {}s",
            self.rollout,
            self.holder,
            now_unix.saturating_sub(self.acquired_unix),
            now_unix.saturating_sub(self.renewed_unix),
            self.expires_unix.saturating_sub(now_unix)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_requests_carry_only_plain_names() {
        let holder = LeaseHolder {
            name: "ops".into(),
            user: Some("alice".into()),
            host: "bastion".into(),
            pid: 1,
        };
        let acquire = |rollout: &str, token: &str, holder: LeaseHolder| LeaseRequest::Acquire {
            rollout: rollout.into(),
            holder,
            token: token.into(),
            ttl_secs: 60,
            break_existing: false,
        };
        let token = "00112233445566778899aabbccddeeff";
        assert!(
            acquire("r-20261203-120000-ab12", token, holder.clone())
                .check()
                .is_ok()
        );
        assert!(acquire("../x", token, holder.clone()).check().is_err());
        assert!(acquire("-r", token, holder.clone()).check().is_err());
        assert!(acquire("r-1", "zz", holder.clone()).check().is_err());
        let mut bad = holder;
        bad.user = Some("a\u{1b}[31mred".into());
        assert!(acquire("r-1", token, bad).check().is_err());
    }

    #[test]
    fn a_lease_names_its_process_and_its_ages() {
        let lease = LeaseInfo {
            rollout: "r-1".into(),
            holder: LeaseHolder {
                name: "ops".into(),
                user: None,
                host: "bastion".into(),
                pid: 42,
            },
            acquired_unix: 100,
            renewed_unix: 137,
            expires_unix: 197,
        };
        assert_eq!(
            lease.describe(140),
            "rollout r-1, run by ops (on bastion, pid 42): taken 40s ago, renewed 3s ago, expires in 57s"
        );
    }
}
