//! `handover ca token create|list|revoke`: join tokens for new hosts.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Subcommand;
use handover_common::join::CaHash;
use handover_common::names::Role;
use handover_common::pki::tokens::{self, TokenId};

/// `handover ca token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a join token: prints ID.SECRET (shown only now; the CA directory keeps
    /// a hash) and the CA hash a new host pins (`handover-agent join`).
    Create {
        /// The CA directory.
        #[arg(long)]
        dir: PathBuf,
        /// How long the token may be used (at most 24h).
        #[arg(long, default_value = "30m", value_parser = handover_common::duration::parse)]
        ttl: Duration,
        /// How many hosts it may enroll.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// The role of the certificates it enrolls (agent only).
        #[arg(long, default_value = "agent")]
        role: Role,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the tokens of a CA directory (IDs, state, uses; never secrets).
    List {
        /// The CA directory.
        #[arg(long)]
        dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: it enrolls nothing more.
    Revoke {
        /// The CA directory.
        #[arg(long)]
        dir: PathBuf,
        /// The token's ID (the part before the dot).
        id: TokenId,
    },
}

/// Runs a `ca token` subcommand.
pub fn run(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create {
            dir,
            ttl,
            uses,
            role,
            json,
        } => create(&dir, ttl, uses, role, json),
        TokenCommand::List { dir, json } => list(&dir, json),
        TokenCommand::Revoke { dir, id } => {
            tokens::revoke(&dir, &id)
                .with_context(|| format!("cannot revoke join token {id} in {}", dir.display()))?;
            println!("revoked join token {id}");
            Ok(())
        }
    }
}

/// `ca token create`: the secret is printed once, here, and never again.
fn create(dir: &Path, ttl: Duration, uses: u32, role: Role, json: bool) -> anyhow::Result<()> {
    let (token, stored) = tokens::create(dir, ttl, uses, role, SystemTime::now())
        .with_context(|| format!("cannot create a join token in {}", dir.display()))?;
    let ca_hash = CaHash::of_ca_dir(dir)?;
    if json {
        let out = serde_json::json!({
            "token": token.reveal(),
            "id": token.id.as_str(),
            "ca_hash": ca_hash.to_string(),
            "expires": stored.expires_at(),
            "uses": stored.uses,
        });
        println!("{out}");
    } else {
        println!("token    {}", token.reveal());
        println!("ca-hash  {ca_hash}");
        println!("expires  {}", stored.expires_at());
        println!("uses     {}", stored.uses);
        println!(
            "on the new host: HANDOVER_JOIN_TOKEN={} handover-agent join --ca-hash {ca_hash}",
            token.reveal()
        );
    }
    Ok(())
}

/// `ca token list`: ids, states and notes, never a secret.
fn list(dir: &Path, json: bool) -> anyhow::Result<()> {
    let list = tokens::list(dir)
        .with_context(|| format!("cannot read the join tokens in {}", dir.display()))?;
    let now = SystemTime::now();
    if json {
        let rows: Vec<_> = list
            .iter()
            .map(|t| {
                serde_json::json!({
                    "id": t.id.as_str(),
                    "state": t.state(now),
                    "role": t.role.as_str(),
                    "expires": t.expires_at(),
                    "uses": t.uses,
                    "used": t.used,
                    "note": t.note,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
    } else {
        println!(
            "{:<8} {:<8} {:<6} {:<10} EXPIRES",
            "ID", "STATE", "ROLE", "USED"
        );
        for t in &list {
            let used = format!("{}/{}", t.used, t.uses);
            println!(
                "{:<8} {:<8} {:<6} {:<10} {}{}",
                t.id.as_str(),
                t.state(now),
                t.role.as_str(),
                used,
                t.expires_at(),
                t.note
                    .as_ref()
                    .map(|n| format!("  ({n})"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}
