//! The rollout lease: this agent works for one rollout at a time, run by one
//! coordinator process (the token it made). Kept in state_dir so a restarted agent
//! still knows who holds it; it expires unless that process renews it, so a crashed
//! coordinator does not lock the host forever.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use handover_common::proto::lease::{LeaseHolder, LeaseInfo, LeaseReply, LeaseRequest};
use handover_common::proto::{Failure, FailureKind};
use serde::{Deserialize, Serialize};

use crate::caller::Caller;

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The lease as kept on disk: what everyone may see, and the holder's token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Held {
    #[serde(flatten)]
    info: LeaseInfo,
    token: String,
}

/// The lease file and its current holder.
pub struct Lease {
    path: PathBuf,
    held: Option<Held>,
}

/// What an acquire request leads to, decided from the lease held now.
#[derive(Debug, PartialEq, Eq)]
enum Acquire {
    /// Grant it, keeping this first-taken time.
    Grant { acquired_unix: u64 },
    /// Refuse: someone else holds it.
    Refuse,
}

/// The rule: a live lease is renewed only by the process that took it (same
/// rollout, same token); anyone else is refused unless breaking it.
fn decide(
    live: Option<&Held>,
    rollout: &str,
    token: &str,
    break_existing: bool,
    now: u64,
) -> Acquire {
    match live {
        None => Acquire::Grant { acquired_unix: now },
        Some(h) if h.info.rollout == rollout && h.token == token => Acquire::Grant {
            acquired_unix: h.info.acquired_unix,
        },
        Some(_) if break_existing => Acquire::Grant { acquired_unix: now },
        Some(_) => Acquire::Refuse,
    }
}

impl Lease {
    /// Loads the lease kept in `state_dir` (a missing or unreadable file means none).
    pub fn load(state_dir: &std::path::Path) -> Self {
        let path = state_dir.join("lease.json");
        let held = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Held>(&bytes)
                .inspect_err(|e| {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable lease file (written by another version?)");
                })
                .ok(),
            Err(_) => None,
        };
        Lease { path, held }
    }

    fn live(&self, now: u64) -> Option<&Held> {
        self.held.as_ref().filter(|l| l.info.expires_unix > now)
    }

    /// The holder, if its lease has not expired.
    pub fn holder(&self) -> Option<&LeaseInfo> {
        self.live(now_unix()).map(|h| &h.info)
    }

    fn save(&self) -> Result<(), Failure> {
        let result = match &self.held {
            Some(held) => serde_json::to_vec_pretty(held)
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
        let now = now_unix();
        let Some(held) = self.live(now) else {
            return Ok(());
        };
        if rollout == Some(held.info.rollout.as_str()) {
            return Ok(());
        }
        Err(Failure::new(
            FailureKind::Leased,
            format!(
                "this host is held by {}; {caller} must wait until that rollout ends (a lease its coordinator stops renewing expires by itself)",
                held.info.describe(now)
            ),
        ))
    }

    /// Runs a lease request.
    pub fn handle(&mut self, request: LeaseRequest) -> Result<LeaseReply, Failure> {
        request
            .check()
            .map_err(|e| Failure::new(FailureKind::BadRequest, e))?;
        match request {
            LeaseRequest::Show => Ok(LeaseReply::Current(self.holder().cloned())),
            LeaseRequest::Acquire {
                rollout,
                holder,
                token,
                ttl_secs,
                break_existing,
            } => self.acquire(rollout, holder, token, ttl_secs, break_existing),
            LeaseRequest::Release { rollout, token } => {
                if self
                    .held
                    .as_ref()
                    .is_some_and(|h| h.info.rollout == rollout && h.token == token)
                {
                    self.held = None;
                    self.save()?;
                }
                Ok(LeaseReply::Released)
            }
        }
    }

    fn acquire(
        &mut self,
        rollout: String,
        holder: LeaseHolder,
        token: String,
        ttl_secs: u64,
        break_existing: bool,
    ) -> Result<LeaseReply, Failure> {
        let now = now_unix();
        let live = self.live(now);
        let acquired_unix = match decide(live, &rollout, &token, break_existing, now) {
            Acquire::Refuse => {
                let lease = live.map(|h| h.info.clone()).ok_or_else(|| {
                    Failure::new(FailureKind::Internal, "lease refused without a holder")
                })?;
                return Ok(LeaseReply::Refused {
                    lease,
                    now_unix: now,
                });
            }
            Acquire::Grant { acquired_unix } => acquired_unix,
        };
        if let Some(old) = live
            && old.token != token
        {
            tracing::warn!(old = %old.info.describe(now), new = %rollout, by = %holder, "lease broken");
        }
        let info = LeaseInfo {
            rollout,
            holder,
            acquired_unix,
            renewed_unix: now,
            expires_unix: now.saturating_add(ttl_secs.clamp(1, 24 * 3600)),
        };
        self.held = Some(Held {
            info: info.clone(),
            token,
        });
        self.save()?;
        Ok(LeaseReply::Held(info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(rollout: &str, token: &str, acquired_unix: u64) -> Held {
        Held {
            info: LeaseInfo {
                rollout: rollout.into(),
                holder: LeaseHolder {
                    name: "ops".into(),
                    user: None,
                    host: "bastion".into(),
                    pid: 7,
                },
                acquired_unix,
                renewed_unix: acquired_unix,
                expires_unix: acquired_unix + 60,
            },
            token: token.into(),
        }
    }

    #[test]
    fn only_the_process_that_took_the_lease_renews_it() {
        let h = held("r-1", "tok-a", 100);
        assert_eq!(
            decide(Some(&h), "r-1", "tok-a", false, 130),
            Acquire::Grant { acquired_unix: 100 }
        );
        // The same rollout from another process (a `resume` beside it): refused.
        assert_eq!(
            decide(Some(&h), "r-1", "tok-b", false, 130),
            Acquire::Refuse
        );
        // Another rollout: refused.
        assert_eq!(
            decide(Some(&h), "r-2", "tok-a", false, 130),
            Acquire::Refuse
        );
        // Broken on purpose: granted as new.
        assert_eq!(
            decide(Some(&h), "r-1", "tok-b", true, 130),
            Acquire::Grant { acquired_unix: 130 }
        );
        assert_eq!(
            decide(None, "r-1", "tok-b", false, 130),
            Acquire::Grant { acquired_unix: 130 }
        );
    }

    fn acquire(rollout: &str, token: &str, break_existing: bool) -> LeaseRequest {
        LeaseRequest::Acquire {
            rollout: rollout.into(),
            holder: LeaseHolder {
                name: "ops".into(),
                user: Some("alice".into()),
                host: "bastion".into(),
                pid: 42,
            },
            token: format!("{token:0>32}"),
            ttl_secs: 60,
            break_existing,
        }
    }

    #[test]
    fn a_refusal_names_the_holder_and_a_release_needs_the_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut lease = Lease::load(dir.path());
        assert!(matches!(
            lease.handle(acquire("r-1", "a", false)),
            Ok(LeaseReply::Held(_))
        ));
        match lease.handle(acquire("r-1", "b", false)) {
            Ok(LeaseReply::Refused { lease, .. }) => {
                assert_eq!(lease.holder.pid, 42);
                assert_eq!(lease.rollout, "r-1");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Another process cannot give it back.
        let release = |token: &str| LeaseRequest::Release {
            rollout: "r-1".into(),
            token: format!("{token:0>32}"),
        };
        lease.handle(release("b")).expect("release");
        assert!(lease.holder().is_some());
        // It survives a restart of the agent, token and all.
        let mut lease = Lease::load(dir.path());
        assert!(matches!(
            lease.handle(acquire("r-1", "a", false)),
            Ok(LeaseReply::Held(_))
        ));
        lease.handle(release("a")).expect("release");
        assert!(lease.holder().is_none());
    }

    #[test]
    fn the_refusal_of_a_host_change_does_not_offer_a_flag_the_caller_lacks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut lease = Lease::load(dir.path());
        lease.handle(acquire("r-1", "a", false)).expect("acquire");
        let err = lease
            .admit(None, &Caller::Local)
            .expect_err("a drain outside the rollout is refused");
        assert!(
            err.message.contains("r-1") && err.message.contains("pid 42"),
            "{err:?}"
        );
        assert!(!err.message.contains("--break-lease"), "{err:?}");
        assert!(lease.admit(Some("r-1"), &Caller::Local).is_ok());
    }
}
