//! `[surge] provider = "standby"`: new servers are pre-provisioned hosts marked
//! `standby = true` in the inventory, and "terminate" hands the old servers back
//! to the pool — drained, detached, still running. Blue and green trade places on
//! every rollout, so which hosts are in service now is state, not config: it is a
//! record in the journal's store (written when a surge rollout succeeds), so every
//! bastion sharing an etcd store sees the pool the last rollout left, and it is
//! laid over the inventory's `standby` flags whenever a plan is read.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use handover_common::names::{HostName, HostRole};
use serde::{Deserialize, Serialize};

use crate::config::CoordinatorConfig;
use crate::journal::{FORMAT, Journal, STANDBY};

/// Which app hosts are standby now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// The standby hosts; every other app host is in service.
    pub standby: BTreeSet<HostName>,
}

/// The pool as the journal keeps it.
#[derive(Debug, Serialize, Deserialize)]
struct PoolRecord {
    format: u32,
    standby: BTreeSet<HostName>,
}

/// The pool's key in [`STANDBY`].
const KEY: &str = "pool";

/// Where versions before the pool moved into the journal kept it: read while the
/// journal has no pool yet, removed once it has.
fn legacy_path(state_dir: &Path) -> PathBuf {
    state_dir.join("standby.json")
}

impl Pool {
    /// The pool as the last surge rollout left it, if one did.
    pub fn load(journal: &Journal, state_dir: &Path) -> anyhow::Result<Option<Pool>> {
        if let Some(bytes) = journal.read(STANDBY, KEY)? {
            let record: PoolRecord = journal.decode(&format!("{STANDBY}/{KEY}"), &bytes)?;
            return Ok(Some(Pool {
                standby: record.standby,
            }));
        }
        Self::load_legacy(state_dir)
    }

    fn load_legacy(state_dir: &Path) -> anyhow::Result<Option<Pool>> {
        let path = legacy_path(state_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let pool = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a standby pool: restore it from a backup, or remove it to start again from the inventory's `standby = true` flags",
                path.display()
            )
        })?;
        Ok(Some(pool))
    }

    /// Writes the pool into the journal (one transaction: a crash leaves the old
    /// or the new one), then removes a pool file an older version left.
    pub fn save(&self, journal: &Journal, state_dir: &Path) -> anyhow::Result<()> {
        let record = PoolRecord {
            format: FORMAT,
            standby: self.standby.clone(),
        };
        journal.write(STANDBY, KEY, &serde_json::to_vec(&record)?)?;
        let legacy = legacy_path(state_dir);
        match std::fs::remove_file(&legacy) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", legacy.display()))
            }
            _ => Ok(()),
        }
    }

    /// The pool after a handover: the new servers left it, the old ones joined it.
    pub fn after_handover(config: &CoordinatorConfig, old: &[HostName], new: &[HostName]) -> Pool {
        let mut standby: BTreeSet<HostName> = config
            .hosts
            .iter()
            .filter(|h| h.standby)
            .map(|h| h.name.clone())
            .collect();
        for h in new {
            standby.remove(h);
        }
        standby.extend(old.iter().cloned());
        Pool { standby }
    }

    /// Lays the pool over the inventory: app hosts in it are standby, the others
    /// in service. Hosts the pool names but the inventory lost are ignored.
    pub fn apply(&self, config: &mut CoordinatorConfig) {
        config.hosts.set_standby(|h| {
            h.roles
                .contains(&HostRole::App)
                .then(|| self.standby.contains(&h.name))
        });
    }
}

/// `config` with the standby pool from its journal laid over it.
pub fn current(mut config: CoordinatorConfig) -> anyhow::Result<CoordinatorConfig> {
    let journal = Journal::open(&config)?;
    if let Some(pool) = Pool::load(&journal, &config.state_dir)? {
        pool.apply(&mut config);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CoordinatorConfig {
        let mut text = String::from("ca = \"a\"\ncert = \"b\"\nkey = \"c\"\nstate_dir = \"d\"\n");
        for (i, standby) in [(1, false), (2, false), (3, true), (4, true)] {
            text.push_str(&format!(
                "[[hosts]]\nname = \"web-{i}\"\naddress = \"127.0.1.{i}:7443\"\nroles = [\"app\"]\napp = \"127.0.1.{i}:80\"\nstandby = {standby}\n"
            ));
        }
        toml::from_str(&text).expect("inventory")
    }

    fn names(v: &[&str]) -> Vec<HostName> {
        v.iter()
            .map(|n| HostName::new(n.to_string()).expect("name"))
            .collect()
    }

    #[test]
    fn blue_and_green_trade_places_and_the_pool_survives_a_restart() {
        let mut config = config();
        let pool = Pool::after_handover(
            &config,
            &names(&["web-1", "web-2"]),
            &names(&["web-3", "web-4"]),
        );
        assert_eq!(
            pool.standby,
            names(&["web-1", "web-2"]).into_iter().collect()
        );
        let dir = tempfile::tempdir().expect("dir");
        let journal = Journal::new(dir.path());
        pool.save(&journal, dir.path()).expect("save");
        let loaded = Pool::load(&journal, dir.path())
            .expect("load")
            .expect("some");
        assert_eq!(loaded, pool);
        loaded.apply(&mut config);
        let standby: Vec<&str> = config
            .hosts
            .iter()
            .filter(|h| h.standby)
            .map(|h| h.name.as_str())
            .collect();
        assert_eq!(standby, ["web-1", "web-2"]);
        // The next rollout swaps them back.
        let back = Pool::after_handover(
            &config,
            &names(&["web-3", "web-4"]),
            &names(&["web-1", "web-2"]),
        );
        assert_eq!(
            back.standby,
            names(&["web-3", "web-4"]).into_iter().collect()
        );
    }

    #[test]
    fn a_pool_file_an_older_version_left_is_read_until_the_journal_has_the_pool() {
        let dir = tempfile::tempdir().expect("dir");
        let journal = Journal::new(dir.path());
        let file = dir.path().join("standby.json");
        std::fs::write(&file, r#"{"standby":["web-1"]}"#).expect("write");
        let old = Pool::load(&journal, dir.path())
            .expect("load")
            .expect("some");
        assert_eq!(old.standby, names(&["web-1"]).into_iter().collect());
        let new = Pool {
            standby: names(&["web-2"]).into_iter().collect(),
        };
        new.save(&journal, dir.path()).expect("save");
        assert!(
            !file.exists(),
            "the old file is gone once the journal has the pool"
        );
        let loaded = Pool::load(&journal, dir.path()).expect("load");
        assert_eq!(loaded, Some(new));
    }

    #[test]
    fn a_damaged_pool_file_is_named_with_the_fix() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("standby.json"), "{").expect("write");
        let journal = Journal::new(dir.path());
        let err = format!(
            "{:#}",
            Pool::load(&journal, dir.path()).expect_err("refused")
        );
        assert!(
            err.contains("standby.json") && err.contains("remove it"),
            "{err}"
        );
    }
}
