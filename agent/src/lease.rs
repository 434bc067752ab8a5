//! The rollout lease: this agent works for one rollout at a time. Kept in
//! state_dir so a restarted agent still knows who holds it; it expires unless the
//! coordinator renews it, so a crashed coordinator does not lock the host forever.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use handover_common::proto::lease::{LeaseInfo, LeaseReply, LeaseRequest};
use handover_common::proto::{Failure, FailureKind};

use crate::caller::Caller;

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The lease file and its current holder.
pub struct Lease {
    path: PathBuf,
    held: Option<LeaseInfo>,
}

impl Lease {
    /// Loads the lease kept in `state_dir` (a missing or unreadable file means none).
    pub fn load(state_dir: &std::path::Path) -> Self {
        let path = state_dir.join("lease.json");
        let held = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<LeaseInfo>(&bytes).ok());
        Lease { path, held }
    }

    /// The holder, if its lease has not expired.
    pub fn holder(&self) -> Option<&LeaseInfo> {
        self.held.as_ref().filter(|l| l.expires_unix > now_unix())
    }

    fn save(&self) -> Result<(), Failure> {
        let result = match &self.held {
            Some(info) => serde_json::to_vec_pretty(info)
                .map_err(std::io::Error::other)
                .and_then(|bytes| {
                    let tmp = self.path.with_extension("json.tmp");
                    std::fs::write(&tmp, bytes)?;
                    std::fs::rename(&tmp, &self.path)
                }),
            None => match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        };
        result.map_err(|e| {
            Failure::new(
                FailureKind::Internal,
                format!("cannot write {}: {e}", self.path.display()),
            )
        })
    }

    /// Refuses a host-changing call that does not belong to the lease holder.
    pub fn admit(&self, rollout: Option<&str>, caller: &Caller) -> Result<(), Failure> {
        let Some(holder) = self.holder() else {
            return Ok(());
        };
        if rollout == Some(holder.rollout.as_str()) {
            return Ok(());
        }
        let age = now_unix().saturating_sub(holder.acquired_unix);
        Err(Failure::new(
            FailureKind::Leased,
            format!(
                "this host is held by rollout {} of {} (for {}s, expires in {}s); {caller} must wait for it to finish, or break a stale lease with --break-lease",
                holder.rollout,
                holder.owner,
                age,
                holder.expires_unix.saturating_sub(now_unix())
            ),
        ))
    }

    /// Runs a lease request.
    pub fn handle(&mut self, request: LeaseRequest) -> Result<LeaseReply, Failure> {
        match request {
            LeaseRequest::Show => Ok(LeaseReply::Current(self.holder().cloned())),
            LeaseRequest::Acquire {
                rollout,
                owner,
                ttl_secs,
                break_existing,
            } => {
                let now = now_unix();
                let acquired_unix = match self.holder() {
                    Some(h) if h.rollout == rollout => h.acquired_unix,
                    Some(h) if !break_existing => {
                        return Err(Failure::new(
                            FailureKind::Leased,
                            format!(
                                "this host is held by rollout {} of {} (for {}s, expires in {}s): wait for it, or pass --break-lease if it is stale",
                                h.rollout,
                                h.owner,
                                now.saturating_sub(h.acquired_unix),
                                h.expires_unix.saturating_sub(now)
                            ),
                        ));
                    }
                    Some(h) => {
                        tracing::warn!(old = %h.rollout, new = %rollout, "lease broken");
                        now
                    }
                    None => now,
                };
                let info = LeaseInfo {
                    rollout,
                    owner,
                    acquired_unix,
                    expires_unix: now.saturating_add(ttl_secs.clamp(1, 24 * 3600)),
                };
                self.held = Some(info.clone());
                self.save()?;
                Ok(LeaseReply::Held(info))
            }
            LeaseRequest::Release { rollout } => {
                if self.held.as_ref().is_some_and(|h| h.rollout == rollout) {
                    self.held = None;
                    self.save()?;
                }
                Ok(LeaseReply::Released)
            }
        }
    }
}
