//! Servers a provider launches get their agent certificates with single-use
//! join tokens (`[surge] enroll = true`, handover.toml `[enroll] ca_dir`).
//!
//! - Before the launch ([`tokens_for_launch`]): one token per server, role agent,
//!   single use, living as long as the launch and the boot may take, stored
//!   hashed in the CA directory with a note naming the rollout and batch. The
//!   secrets go on the provider's stdin (`join`) and nowhere else: the journal
//!   keeps the IDs.
//! - Right after the launch, before the agents are waited for
//!   ([`enroll_new_servers`]): each launched server is dialled as a joining
//!   agent, proves its token over its own public key, and gets a certificate for
//!   the name and address the provider reported — only for a token of its
//!   batch. A server that already serves with its certificate (a resumed
//!   rollout) is simply reached.
//! - When the step ends, well or not, and when the new servers are terminated,
//!   every token of the batch that no server redeemed is revoked
//!   ([`revoke_unused`]): a token outlives its launch nowhere.

use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use handover_common::join::CaHash;
use handover_common::names::{HostName, Role};
use handover_common::pki::tokens::{self, StoredToken, TokenId};
use handover_common::tls::CredentialFiles;

use super::ops::{self, Ctx, Outputs};
use crate::config::HostEntry;
use crate::enroll::{EnrollConfig, EnrollRequest, enroll};
use crate::fleet::{Fleet, calls};
use crate::provider::command::LaunchJoin;

/// How long a server whose certificate was issued may take to serve with it
/// (it writes the files and restarts its endpoint: seconds).
pub const SWITCH_GRACE: Duration = Duration::from_secs(60);

/// The note on the tokens of `batch` of rollout `rollout`.
pub fn note(rollout: &str, batch: usize) -> String {
    format!("rollout {rollout} batch {}", batch + 1)
}

/// How long a launch's tokens live: the launch call, the boot, a minute to
/// spare; never past the longest a token may live.
pub fn token_ttl(launch_timeout: Duration, boot_wait: Duration) -> Duration {
    (launch_timeout + boot_wait + Duration::from_secs(60)).min(tokens::MAX_TTL)
}

/// The tokens of one launch: the `join` field for the provider (secrets) and
/// their IDs (for the journal).
#[derive(Debug)]
pub struct LaunchTokens {
    /// For `launch`'s stdin.
    pub join: LaunchJoin,
    /// What the journal keeps.
    pub ids: Vec<TokenId>,
}

/// Makes `count` single-use agent tokens for `batch`'s launch. Tokens an
/// interrupted earlier launch of the same batch made (and never journaled) are
/// revoked first.
pub fn tokens_for_launch(
    e: &EnrollConfig,
    rollout: &str,
    batch: usize,
    count: usize,
    launch_timeout: Duration,
) -> anyhow::Result<LaunchTokens> {
    revoke_unused(e, rollout, Some(batch))?;
    let ca_hash = CaHash::of_ca_dir(&e.ca_dir)
        .with_context(|| format!("reading the CA in {}", e.ca_dir.display()))?;
    let ttl = token_ttl(launch_timeout, e.wait);
    let mut secrets = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..count {
        let made = tokens::create_noted(
            &e.ca_dir,
            ttl,
            1,
            Role::Agent,
            SystemTime::now(),
            Some(note(rollout, batch)),
        );
        match made {
            Ok((token, stored)) => {
                secrets.push(token.reveal());
                ids.push(stored.id);
            }
            Err(err) => {
                let _ = revoke_unused(e, rollout, Some(batch));
                return Err(err)
                    .with_context(|| format!("cannot make join tokens in {}", e.ca_dir.display()));
            }
        }
    }
    Ok(LaunchTokens {
        join: LaunchJoin {
            ca_hash: ca_hash.to_string(),
            tokens: secrets,
        },
        ids,
    })
}

/// Whether `token` is one of this rollout's (of `batch`, or of any batch).
fn made_for(token: &StoredToken, rollout: &str, batch: Option<usize>) -> bool {
    let Some(n) = token.note.as_deref() else {
        return false;
    };
    match batch {
        Some(b) => n == note(rollout, b),
        None => n.starts_with(&format!("rollout {rollout} batch ")),
    }
}

/// Revokes the tokens of `rollout` (of `batch`, or all) that could still enroll
/// a host; returns their IDs.
pub fn revoke_unused(
    e: &EnrollConfig,
    rollout: &str,
    batch: Option<usize>,
) -> anyhow::Result<Vec<TokenId>> {
    tokens::revoke_usable(&e.ca_dir, SystemTime::now(), |t| {
        made_for(t, rollout, batch)
    })
    .with_context(|| {
        format!(
            "cannot revoke the unused join tokens of rollout {rollout} in {}",
            e.ca_dir.display()
        )
    })
}

/// What a launched server looks like from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Its agent answers with its certificate.
    Serving,
    /// A certificate for its name is in the CA directory, but it does not
    /// answer with it (yet).
    Issued,
    /// No certificate for its name: it is booting or waits to be enrolled.
    Waiting,
}

/// What to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Enrolled (now or by an earlier run): its agent is reached as any other.
    Done,
    /// Dial it as a joining agent and enroll it.
    Enroll,
    /// Look again shortly.
    Retry,
    /// Stop: it never served with the certificate issued for its name.
    GiveUp,
}

/// The decision for one launched server (pure): `issued_for` is how long it has
/// been seen [`Seen::Issued`].
pub fn next(seen: Seen, issued_for: Duration) -> Next {
    match seen {
        Seen::Serving => Next::Done,
        Seen::Waiting => Next::Enroll,
        Seen::Issued if issued_for < SWITCH_GRACE => Next::Retry,
        Seen::Issued => Next::GiveUp,
    }
}

/// Runbook step 3, for a launch with join tokens: enrolls each server `batch`
/// launched, then revokes the batch's tokens that no server redeemed (whether
/// or not every server enrolled).
pub async fn enroll_new_servers(
    ctx: &Ctx<'_>,
    batch: usize,
    servers: &[HostEntry],
    ids: &[TokenId],
) -> anyhow::Result<Outputs> {
    let e = enroll_config(ctx)?;
    let rollout = rollout_id(ctx.fleet)?;
    let names: Vec<HostName> = servers.iter().map(|s| s.name.clone()).collect();
    let result = ops::on_each(&names, |h| async move {
        let server = servers
            .iter()
            .find(|s| &s.name == h)
            .context("a launched server went missing")?;
        let how = enroll_one(ctx, e, server, ids).await?;
        Ok(Outputs::from([(format!("enroll/{h}"), how)]))
    })
    .await;
    let revoked = revoke_unused(e, rollout, Some(batch));
    let mut out = result?;
    let revoked = revoked?;
    out.insert(
        "tokens/revoked-unused".into(),
        if revoked.is_empty() {
            "none".into()
        } else {
            revoked
                .iter()
                .map(TokenId::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
    Ok(out)
}

/// The plan's `[enroll]` (checked when the plan was read).
pub fn enroll_config<'a>(ctx: &'a Ctx<'_>) -> anyhow::Result<&'a EnrollConfig> {
    ctx.plan
        .surge
        .as_ref()
        .and_then(|s| s.enroll.as_ref())
        .context("[surge] enroll = true without [enroll] in handover.toml")
}

/// The running rollout's id (the note on its tokens).
pub fn rollout_id(fleet: &Fleet) -> anyhow::Result<&str> {
    fleet
        .rollout()
        .context("enrolling launched servers needs a running rollout")
}

/// Enrolls one launched server, or finds it enrolled; says which.
async fn enroll_one(
    ctx: &Ctx<'_>,
    e: &EnrollConfig,
    server: &HostEntry,
    ids: &[TokenId],
) -> anyhow::Result<String> {
    let name = &server.name;
    let address = Fleet::resolve(server)
        .await
        .map_err(|err| anyhow::anyhow!("new server {name}: {err}"))?;
    let started = Instant::now();
    let mut issued_since: Option<Instant> = None;
    loop {
        let seen = look_at(ctx, e, name).await;
        let issued_for = match seen {
            Seen::Issued => issued_since.get_or_insert_with(Instant::now).elapsed(),
            _ => Duration::ZERO,
        };
        match next(seen, issued_for) {
            Next::Done => return Ok("serves with its certificate".into()),
            Next::Retry => tokio::time::sleep(Duration::from_millis(500)).await,
            Next::GiveUp => anyhow::bail!(
                "new server {name}: a certificate for it is in {} but it did not answer with it within {}: if that certificate belongs to an earlier server of the same name, revoke it (`handover ca revoke --name {name}`) and start again",
                e.ca_dir.display(),
                handover_common::duration::format(SWITCH_GRACE)
            ),
            Next::Enroll => {
                ctx.progress(name, format!("enrolling at {address} (join token)"));
                let files = CredentialFiles {
                    ca: &ctx.config.ca,
                    cert: &ctx.config.cert,
                    key: &ctx.config.key,
                };
                let request = EnrollRequest {
                    ca_dir: e.ca_dir.clone(),
                    name: name.clone(),
                    address,
                    wait: e.wait.saturating_sub(started.elapsed()),
                    only: ids.to_vec(),
                };
                let enrolled = enroll(&files, &request).await.map_err(|err| {
                    anyhow::anyhow!("new server {name} at {address} was not enrolled: {err}")
                })?;
                return Ok(format!("enrolled with join token {}", enrolled.token));
            }
        }
    }
}

/// Whether `name` serves with a certificate, has one issued, or has none.
async fn look_at(ctx: &Ctx<'_>, e: &EnrollConfig, name: &HostName) -> Seen {
    if ops::ask(ctx, name, calls::status()).await.is_ok() {
        return Seen::Serving;
    }
    let cert = handover_common::pki::leaf_files(&e.ca_dir, name).cert;
    if cert.exists() {
        Seen::Issued
    } else {
        Seen::Waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_is_enrolled_once_and_one_that_never_serves_its_certificate_stops_the_step() {
        assert_eq!(next(Seen::Waiting, Duration::ZERO), Next::Enroll);
        assert_eq!(next(Seen::Serving, Duration::ZERO), Next::Done);
        assert_eq!(next(Seen::Serving, SWITCH_GRACE * 2), Next::Done);
        // Issued (by an earlier run, or just now) and switching to it: wait,
        // never enroll again (its token is spent, and a second certificate for
        // the same name would be a certificate issued wrongly).
        assert_eq!(next(Seen::Issued, Duration::from_secs(1)), Next::Retry);
        assert_eq!(next(Seen::Issued, SWITCH_GRACE), Next::GiveUp);
    }

    #[test]
    fn tokens_live_through_the_launch_and_the_boot_and_never_past_a_day() {
        assert_eq!(
            token_ttl(Duration::from_secs(300), Duration::from_secs(600)),
            Duration::from_secs(960)
        );
        assert_eq!(
            token_ttl(
                Duration::from_secs(20 * 3600),
                Duration::from_secs(10 * 3600)
            ),
            tokens::MAX_TTL
        );
    }

    fn stored(note: Option<&str>) -> StoredToken {
        StoredToken {
            id: "abc123".parse().expect("id"),
            secret_sha256: String::new(),
            role: Role::Agent,
            created: 0,
            expires: 1,
            uses: 1,
            used: 0,
            revoked: false,
            note: note.map(str::to_owned),
        }
    }

    #[test]
    fn only_this_rollouts_tokens_are_revoked() {
        let id = "20261203T170000Z-abcd";
        let mine = stored(Some(&note(id, 0)));
        let later = stored(Some(&note(id, 1)));
        let other = stored(Some(&note("20261203T170000Z-ffff", 0)));
        let by_hand = stored(None);
        assert!(made_for(&mine, id, Some(0)));
        assert!(!made_for(&later, id, Some(0)));
        assert!(made_for(&later, id, None));
        assert!(!made_for(&other, id, None));
        assert!(!made_for(&by_hand, id, None));
        // Batch 1 and batch 11 are not confused.
        assert!(!made_for(&stored(Some(&note(id, 10))), id, Some(1)));
    }
}
