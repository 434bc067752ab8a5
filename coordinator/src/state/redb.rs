//! The default store: `journal.redb` in the coordinator's state_dir, one redb
//! table per collection, and a lock file per rollout (`locks/ID.lock`).
//!
//! The database is opened for each transaction and closed after it, so `handover
//! history` works while a rollout runs in another process.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use futures::FutureExt;
use futures::future::BoxFuture;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::watch;

use super::{DeployLock, Holder, LockHeld, Store};
use crate::rollout::lease::RolloutLock;

/// The journal and locks under one state_dir.
pub struct RedbStore {
    state_dir: PathBuf,
    path: PathBuf,
}

impl RedbStore {
    /// The store in `state_dir` (created on first write).
    pub fn new(state_dir: &Path) -> Self {
        RedbStore {
            state_dir: state_dir.to_owned(),
            path: state_dir.join("journal.redb"),
        }
    }

    fn open(&self) -> anyhow::Result<Database> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.state_dir)
            .with_context(|| format!("cannot create state_dir {}", self.state_dir.display()))?;
        // Another handover process may hold it for a moment: retry briefly.
        let mut last = None;
        for _ in 0..200 {
            match Database::create(&self.path) {
                Ok(db) => return Ok(db),
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                    last = Some(redb::DatabaseError::DatabaseAlreadyOpen);
                    std::thread::sleep(Duration::from_millis(25));
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot open the journal {}", self.path.display())
                    });
                }
            }
        }
        Err(anyhow::anyhow!("{last:?}")).with_context(|| {
            format!(
                "the journal {} stays locked by another handover process",
                self.path.display()
            )
        })
    }

    /// Reads `collection` with `f`, or nothing when it was never written.
    fn read<T: Default>(
        &self,
        collection: &str,
        f: impl FnOnce(redb::ReadOnlyTable<&str, &[u8]>) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        if !self.path.exists() {
            return Ok(T::default());
        }
        let db = self.open()?;
        let txn = db.begin_read()?;
        match txn.open_table(TableDefinition::<&str, &[u8]>::new(collection)) {
            Ok(t) => f(t),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(T::default()),
            Err(e) => Err(e.into()),
        }
    }

    fn lock_held(held: crate::rollout::lease::LockHeld) -> LockHeld {
        LockHeld {
            holder: format!("pid {}", held.pid),
            message: held.to_string(),
        }
    }
}

/// A local lock never lapses while its process runs: its `lost` never fires.
fn local(lock: RolloutLock) -> DeployLock {
    let (tx, rx) = watch::channel(None);
    DeployLock::new(Box::new((lock, tx)), rx)
}

impl Store for RedbStore {
    fn describe(&self) -> String {
        format!("journal {}", self.path.display())
    }

    fn put(&self, collection: &str, key: &str, value: &[u8]) -> anyhow::Result<()> {
        let db = self.open()?;
        let txn = db.begin_write()?;
        {
            let mut t = txn.open_table(TableDefinition::<&str, &[u8]>::new(collection))?;
            t.insert(key, value)?;
        }
        txn.commit()?;
        Ok(())
    }

    fn create(&self, collection: &str, key: &str, value: &[u8]) -> anyhow::Result<bool> {
        let db = self.open()?;
        let txn = db.begin_write()?;
        let written = {
            let mut t = txn.open_table(TableDefinition::<&str, &[u8]>::new(collection))?;
            if t.get(key)?.is_some() {
                false
            } else {
                t.insert(key, value)?;
                true
            }
        };
        txn.commit()?;
        Ok(written)
    }

    fn get(&self, collection: &str, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        self.read(collection, |t| Ok(t.get(key)?.map(|v| v.value().to_vec())))
    }

    fn scan(&self, collection: &str, prefix: &str) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        self.read(collection, |t| {
            let mut out = Vec::new();
            for entry in t.range(prefix..)? {
                let (k, v) = entry?;
                if !k.value().starts_with(prefix) {
                    break;
                }
                out.push((k.value().to_owned(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    fn try_lock(&self, holder: &Holder) -> anyhow::Result<Result<DeployLock, LockHeld>> {
        Ok(RolloutLock::try_take(&self.state_dir, &holder.rollout)?
            .map(local)
            .map_err(Self::lock_held))
    }

    fn wait_lock<'a>(&'a self, holder: &'a Holder) -> BoxFuture<'a, anyhow::Result<DeployLock>> {
        async move {
            Ok(local(
                RolloutLock::wait(&self.state_dir, &holder.rollout).await?,
            ))
        }
        .boxed()
    }

    fn break_lock(&self, holder: &Holder) -> anyhow::Result<DeployLock> {
        // A local lock is the kernel's: only its process's exit frees it.
        self.try_lock(holder)?.map_err(anyhow::Error::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_numbered_record_is_created_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::new(dir.path());
        assert!(
            store
                .create("inputs", "000000000001", b"a")
                .expect("creates")
        );
        assert!(!store.create("inputs", "000000000001", b"b").expect("asks"));
        assert_eq!(
            store
                .get("inputs", "000000000001")
                .expect("reads")
                .as_deref(),
            Some(&b"a"[..])
        );
    }
}
