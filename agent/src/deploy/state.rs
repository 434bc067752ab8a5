//! The agent's record of releases, in `state_dir/deploy/releases.json`: which
//! revision each release came from, how its apply ended, and which release was
//! current before the last switch (what `activate --previous` goes back to).
//!
//! Written whole to a temporary file and renamed over the old one, so a crash
//! leaves either the old record or the new one.

use std::io::Write;
use std::path::{Path, PathBuf};

use handover_common::names::ReleaseName;
use handover_common::proto::deploy::ReleaseRecord;
use serde::{Deserialize, Serialize};

/// Records of releases no longer on disk are kept up to this many, for history.
const MAX_RECORDS: usize = 100;

/// Everything the agent remembers about releases.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct DeployState {
    /// Every release built, oldest first.
    pub releases: Vec<ReleaseRecord>,
    /// The release that was current before the last switch.
    pub previous: Option<ReleaseName>,
}

impl DeployState {
    /// The record of `name`.
    pub fn record(&self, name: &ReleaseName) -> Option<&ReleaseRecord> {
        self.releases.iter().rev().find(|r| &r.name == name)
    }

    /// The record of `name`, to change it.
    pub fn record_mut(&mut self, name: &ReleaseName) -> Option<&mut ReleaseRecord> {
        self.releases.iter_mut().rev().find(|r| &r.name == name)
    }

    /// Drops the oldest records beyond [`MAX_RECORDS`] whose release is gone.
    pub fn trim(&mut self, on_disk: &[ReleaseName]) {
        while self.releases.len() > MAX_RECORDS {
            let Some(i) = self
                .releases
                .iter()
                .position(|r| !on_disk.contains(&r.name))
            else {
                break;
            };
            self.releases.remove(i);
        }
    }
}

/// Where [`DeployState`] is kept.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// `deploy_state_dir/releases.json`.
    pub fn new(deploy_state_dir: &Path) -> Self {
        StateFile {
            path: deploy_state_dir.join("releases.json"),
        }
    }

    /// Reads the state; a missing file is an empty state, a damaged one an error
    /// (silently starting over would forget which release is the previous one).
    pub fn load(&self) -> anyhow::Result<DeployState> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(DeployState::default());
            }
            Err(e) => {
                return Err(anyhow::anyhow!("cannot read {}: {e}", self.path.display()));
            }
        };
        serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{} is damaged ({e}): fix it or move it away (the releases on disk stay)",
                self.path.display()
            )
        })
    }

    /// Writes the state durably (temporary file, fsync, rename).
    pub fn save(&self, state: &DeployState) -> anyhow::Result<()> {
        let dir = self
            .path
            .parent()
            .ok_or_else(|| anyhow::anyhow!("{} has no parent", self.path.display()))?;
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(state)?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            super::releases::sync_dir(dir)
        };
        write().map_err(|e| anyhow::anyhow!("cannot write {}: {e}", self.path.display()))
    }
}
