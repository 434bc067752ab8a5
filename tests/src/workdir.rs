//! Temporary directories that other users (Apache's www-data workers) can enter.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// Prefix of every directory the harness creates, so stray processes can be found
/// with `pgrep -f` on the directory's path.
pub const PREFIX: &str = "handover-fleet-";

/// A temporary directory removed on drop.
///
/// Created with mode 0755 (tempfile uses 0700) because Apache drops privileges to
/// www-data and must traverse it to read the docroot and health file.
#[derive(Debug)]
pub struct Workdir {
    dir: tempfile::TempDir,
}

impl Workdir {
    /// A new directory under the system temp dir.
    pub fn new() -> anyhow::Result<Self> {
        Self::new_in(&std::env::temp_dir(), "")
    }

    /// A new directory under `parent`, named `handover-fleet-<label>-XXXX`.
    pub fn new_in(parent: &Path, label: &str) -> anyhow::Result<Self> {
        let prefix = if label.is_empty() {
            PREFIX.to_owned()
        } else {
            format!("{PREFIX}{label}-")
        };
        let dir = tempfile::Builder::new()
            .prefix(&prefix)
            .tempdir_in(parent)
            .with_context(|| format!("create temp dir in {}", parent.display()))?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", dir.path().display()))?;
        Ok(Self { dir })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Creates (mode 0755) and returns `self/name`.
    pub fn subdir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).with_context(|| format!("mkdir {}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", p.display()))?;
        Ok(p)
    }

    /// Command lines of processes still running whose command line mentions this
    /// directory; a clean teardown leaves none.
    pub fn stray_processes(&self) -> anyhow::Result<Vec<String>> {
        stray_processes(self.path())
    }
}

/// Command lines of processes whose command line mentions `path` (via `pgrep -af`),
/// excluding pgrep itself.
pub fn stray_processes(path: &Path) -> anyhow::Result<Vec<String>> {
    let out = std::process::Command::new("pgrep")
        .arg("-af")
        .arg(path)
        .output()
        .context("run pgrep")?;
    let me = std::process::id().to_string();
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains("pgrep") && l.split_whitespace().next() != Some(me.as_str()))
        .map(str::to_owned)
        .collect())
}

/// Writes `contents` to `path` with mode 0644, so www-data can read it.
pub fn write_public(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("chmod {}", path.display()))
}
