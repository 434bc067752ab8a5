//! Where the journal's records and the deploy lock live: one interface
//! ([`Store`]), two backends. The embedded redb in the bastion's state_dir is the
//! default; etcd (`[state] backend = "etcd"`) is shared by every bastion with the
//! same config, so a rollout started on one can be resumed from another, and two
//! bastions cannot run rollouts of one fleet at once (issue 17).
//!
//! The store knows records, not rollouts: a record is a key in a named
//! collection (`rollouts`, `steps`, ...), written whole and read back by key or by
//! key prefix. The journal ([`crate::journal`]) gives them their meaning.

pub mod config;
pub mod etcd;
pub mod redb;

use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use config::{Backend, EtcdConfig};

/// A place for records and the deploy lock.
pub trait Store: Send + Sync {
    /// Where the records are, for messages ("journal /var/lib/handover/journal.redb").
    fn describe(&self) -> String;

    /// Writes record `key` of `collection`, creating or replacing it, as one
    /// transaction: after a failure the store holds what it held before.
    fn put(&self, collection: &str, key: &str, value: &[u8]) -> anyhow::Result<()>;

    /// Writes record `key` of `collection` only if there is none yet, as one
    /// transaction, and says whether it did. Needs no deploy lock: numbered
    /// records (inputs versions) are appended this way from any command, and two
    /// writers can never both create the same key.
    fn create(&self, collection: &str, key: &str, value: &[u8]) -> anyhow::Result<bool>;

    /// Record `key` of `collection`.
    fn get(&self, collection: &str, key: &str) -> anyhow::Result<Option<Vec<u8>>>;

    /// The records of `collection` whose key starts with `prefix`, in key order.
    fn scan(&self, collection: &str, prefix: &str) -> anyhow::Result<Vec<(String, Vec<u8>)>>;

    /// Takes the deploy lock for `holder.rollout`, or says who holds it. A holder
    /// this bastion can prove gone (same rollout, its pid no longer running) is
    /// taken over at once.
    fn try_lock(&self, holder: &Holder) -> anyhow::Result<Result<DeployLock, LockHeld>>;

    /// Waits until the lock's holder is gone (`--takeover`), then takes it.
    fn wait_lock<'a>(&'a self, holder: &'a Holder) -> BoxFuture<'a, anyhow::Result<DeployLock>>;

    /// Takes the lock from its holder now (`--break-lease`).
    fn break_lock(&self, holder: &Holder) -> anyhow::Result<DeployLock>;
}

/// The store `backend` names (redb in `state_dir` by default).
pub fn open(backend: &Backend, state_dir: &Path) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match backend {
        Backend::Redb => Arc::new(redb::RedbStore::new(state_dir)),
        Backend::Etcd(config) => etcd::EtcdStore::shared(config)?,
    })
}

/// Who holds (or asks for) the deploy lock: written into the lock where others
/// can read it, so a refusal names the holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The rollout it runs.
    pub rollout: String,
    /// Who ran it ("ops (alice@bastion-1)").
    pub owner: String,
    /// The bastion's host name.
    pub host: String,
    /// The coordinator process.
    pub pid: u32,
    /// Since when (ms since epoch).
    pub since_ms: u64,
}

impl Holder {
    /// This process, asking for `rollout`'s lock on behalf of `owner`.
    pub fn this(rollout: &str, owner: &str) -> Self {
        Holder {
            rollout: rollout.to_owned(),
            owner: owner.to_owned(),
            host: crate::rollout::lease::this_host(),
            pid: std::process::id(),
            since_ms: crate::journal::now_ms(),
        }
    }

    /// "rollout R, run by OWNER on HOST (pid N) since TIME".
    pub fn describe(&self) -> String {
        format!(
            "rollout {}, run by {} on {} (pid {}) since {}",
            self.rollout,
            self.owner,
            self.host,
            self.pid,
            crate::journal::format_ms(self.since_ms)
        )
    }

    /// Whether `other` is this rollout's holder, a process of this bastion that no
    /// longer runs.
    pub(crate) fn proves_gone(&self, other: &Holder) -> bool {
        other.rollout == self.rollout
            && other.host == self.host
            && other.pid != self.pid
            && !Path::new("/proc").join(other.pid.to_string()).exists()
    }
}

/// The lock is held by someone else.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct LockHeld {
    /// Who, in a few words ("pid 123" on this bastion; on etcd, the whole holder).
    pub holder: String,
    /// The whole refusal, with what to do.
    pub message: String,
}

/// The deploy lock, held until dropped. `lost` says why, if the lock lapses while
/// held (etcd's lease expired): the engine then stops before its next step.
pub struct DeployLock {
    _guard: Box<dyn Send + Sync>,
    lost: watch::Receiver<Option<String>>,
}

impl DeployLock {
    /// A lock kept by `guard` (released when it drops), `lost` telling if it lapses.
    pub fn new(guard: Box<dyn Send + Sync>, lost: watch::Receiver<Option<String>>) -> Self {
        DeployLock {
            _guard: guard,
            lost,
        }
    }

    /// Resolves with the reason once the lock has lapsed.
    pub fn lost(&self) -> watch::Receiver<Option<String>> {
        self.lost.clone()
    }
}

/// The first reason either receiver gives: the deploy lock's and the agents'
/// leases' losses, as one signal for the engine.
pub fn either_lost(
    mut a: watch::Receiver<Option<String>>,
    mut b: watch::Receiver<Option<String>>,
) -> (watch::Receiver<Option<String>>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(async move {
        use futures::FutureExt;
        let fa = a
            .wait_for(Option::is_some)
            .map(|r| r.ok().and_then(|v| v.clone()));
        let fb = b
            .wait_for(Option::is_some)
            .map(|r| r.ok().and_then(|v| v.clone()));
        // A side that closes without news is dropped; the other still counts.
        tokio::select! {
            Some(why) = fa => { let _ = tx.send(Some(why)); }
            Some(why) = fb => { let _ = tx.send(Some(why)); }
            else => {}
        }
    });
    (rx, task)
}
