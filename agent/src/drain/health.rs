//! The health-check file: remove it to drain, put it back to undrain.
//!
//! HAProxy's `http-check disable-on-404` stops sending new sessions to a server
//! whose check answers 404 and keeps the existing ones; so draining a host is
//! making the configured file disappear, and undraining is making the very same
//! bytes reappear.
//!
//! Scheme: drain *renames* the file into `state_dir/drain/health-file.saved`
//! (atomic, and it keeps content, mode, owner and mtime because it is the same
//! inode); undrain renames it back. The saved copy is the drain state on disk, so a
//! restarted agent knows it is drained. When `state_dir` is on another filesystem
//! than the file, rename fails with `EXDEV` and both directions copy instead: to a
//! temporary name in the destination's directory, fsync, then rename into place.
//!
//! Only the configured path (and, for that cross-filesystem case, one temporary
//! name beside it) is ever touched; a lock serialises concurrent drain/undrain calls
//! inside the agent.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Serialises drain and undrain inside one agent process.
static LOCK: Mutex<()> = Mutex::new(());

/// What a drain or undrain did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The file moved.
    Done,
    /// It was already in the asked-for state; nothing was touched.
    Already,
}

/// Why the health-check file could not be moved.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// Neither the file nor a saved copy exists: there is nothing to drain.
    #[error(
        "the health-check file {file} does not exist and no drain saved it (no {saved}): \
         create it with the content HAProxy's check expects, then drain"
    )]
    NothingToDrain {
        /// The configured file.
        file: PathBuf,
        /// Where a drain would have saved it.
        saved: PathBuf,
    },
    /// Undrain with no saved copy and no file.
    #[error(
        "cannot restore the health-check file {file}: it is missing and no drain saved it \
         (no {saved}); create it by hand with the content HAProxy's check expects"
    )]
    NothingToRestore {
        /// The configured file.
        file: PathBuf,
        /// Where a drain would have saved it.
        saved: PathBuf,
    },
    /// The configured path is a directory, symlink or device.
    #[error(
        "{0} is not a regular file: point `[health] file` at the plain file HAProxy's check fetches"
    )]
    NotARegularFile(PathBuf),
    /// A file operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> HealthError + 'a {
    move |source| HealthError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// The configured health-check file and its saved copy.
#[derive(Debug, Clone)]
pub struct HealthFile {
    file: PathBuf,
    saved: PathBuf,
}

impl HealthFile {
    /// The file at `file`, saved under `state_dir` while drained.
    pub fn new(file: &Path, state_dir: &Path) -> Self {
        HealthFile {
            file: file.to_owned(),
            saved: state_dir.join("drain").join("health-file.saved"),
        }
    }

    /// The configured file.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// Where the file is kept while the host is drained.
    pub fn saved_path(&self) -> &Path {
        &self.saved
    }

    /// Whether the host is drained: the file is absent (HAProxy's check gets 404).
    pub fn is_drained(&self) -> Result<bool, HealthError> {
        Ok(!exists(&self.file)?)
    }

    /// Removes the file, keeping it under `state_dir`. Idempotent.
    pub fn drain(&self) -> Result<Change, HealthError> {
        let _guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let file_there = exists(&self.file)?;
        let saved_there = exists(&self.saved)?;
        match (file_there, saved_there) {
            (false, true) => return Ok(Change::Already),
            (false, false) => {
                return Err(HealthError::NothingToDrain {
                    file: self.file.clone(),
                    saved: self.saved.clone(),
                });
            }
            (true, _) => {}
        }
        // The file is there (again, if someone recreated it while drained): what is
        // there now is what undrain must bring back.
        self.check_regular()?;
        let dir = self.saved.parent().unwrap_or(Path::new("."));
        create_private_dir(dir)?;
        move_file(&self.file, &self.saved)?;
        sync_dir(dir)?;
        if let Some(parent) = self.file.parent() {
            sync_dir(parent)?;
        }
        Ok(Change::Done)
    }

    /// Puts the saved file back in place, byte for byte. Idempotent.
    pub fn undrain(&self) -> Result<Change, HealthError> {
        let _guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let file_there = exists(&self.file)?;
        let saved_there = exists(&self.saved)?;
        match (file_there, saved_there) {
            (true, false) => Ok(Change::Already),
            (false, false) => Err(HealthError::NothingToRestore {
                file: self.file.clone(),
                saved: self.saved.clone(),
            }),
            (true, true) => {
                // Someone put a file back by hand while drained: theirs is newer, and
                // the host already answers the check. Drop our copy.
                tracing::warn!(
                    file = %self.file.display(),
                    "health-check file was recreated while drained; keeping it and discarding the saved copy"
                );
                fs::remove_file(&self.saved).map_err(io_err("remove", &self.saved))?;
                Ok(Change::Already)
            }
            (false, true) => {
                move_file(&self.saved, &self.file)?;
                if let Some(parent) = self.file.parent() {
                    sync_dir(parent)?;
                }
                Ok(Change::Done)
            }
        }
    }

    fn check_regular(&self) -> Result<(), HealthError> {
        let meta = fs::symlink_metadata(&self.file).map_err(io_err("inspect", &self.file))?;
        if meta.file_type().is_file() {
            Ok(())
        } else {
            Err(HealthError::NotARegularFile(self.file.clone()))
        }
    }
}

fn exists(path: &Path) -> Result<bool, HealthError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(HealthError::Io {
            action: "inspect",
            path: path.to_owned(),
            source: e,
        }),
    }
}

fn create_private_dir(dir: &Path) -> Result<(), HealthError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("create directory", dir))
}

/// Renames `from` to `to`; across filesystems, copies to a temporary name beside
/// `to`, fsyncs, renames that into place, then removes `from`.
fn move_file(from: &Path, to: &Path) -> Result<(), HealthError> {
    match fs::rename(from, to) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {}
        Err(e) => {
            return Err(HealthError::Io {
                action: "rename",
                path: from.to_owned(),
                source: e,
            });
        }
    }
    let name = to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = to.with_file_name(format!(".{name}.handover-tmp"));
    // fs::copy keeps the permission bits.
    fs::copy(from, &tmp).map_err(io_err("copy to", &tmp))?;
    fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io_err("fsync", &tmp))?;
    fs::rename(&tmp, to).map_err(io_err("rename into place", to))?;
    fs::remove_file(from).map_err(io_err("remove", from))
}

fn sync_dir(dir: &Path) -> Result<(), HealthError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn setup() -> (tempfile::TempDir, HealthFile, Vec<u8>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let docroot = dir.path().join("www");
        fs::create_dir(&docroot).expect("docroot");
        let file = docroot.join("health.html");
        let content = b"OK\r\n\x00binary \xff bytes\n".to_vec();
        fs::write(&file, &content).expect("write health file");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).expect("chmod");
        let health = HealthFile::new(&file, &dir.path().join("state"));
        (dir, health, content)
    }

    #[test]
    fn drain_removes_and_undrain_restores_byte_for_byte() {
        let (_dir, health, content) = setup();
        assert!(!health.is_drained().expect("state"));
        assert_eq!(health.drain().expect("drain"), Change::Done);
        assert!(health.is_drained().expect("state"));
        assert!(!health.path().exists());
        assert_eq!(health.drain().expect("second drain"), Change::Already);

        assert_eq!(health.undrain().expect("undrain"), Change::Done);
        assert_eq!(fs::read(health.path()).expect("read back"), content);
        let mode = fs::metadata(health.path())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
        assert!(!health.saved_path().exists());
        assert_eq!(health.undrain().expect("second undrain"), Change::Already);
    }

    #[test]
    fn a_new_handle_on_the_same_state_dir_knows_it_is_drained() {
        let (dir, health, content) = setup();
        health.drain().expect("drain");
        let after_restart = HealthFile::new(health.path(), &dir.path().join("state"));
        assert!(after_restart.is_drained().expect("state"));
        after_restart.undrain().expect("undrain");
        assert_eq!(fs::read(health.path()).expect("read back"), content);
    }

    #[test]
    fn missing_file_is_a_clear_error_that_changes_nothing() {
        let (dir, health, _) = setup();
        fs::remove_file(health.path()).expect("remove");
        let err = health.drain().expect_err("nothing to drain");
        assert!(err.to_string().contains("does not exist"), "{err}");
        let err = health.undrain().expect_err("nothing to restore");
        assert!(err.to_string().contains("cannot restore"), "{err}");
        assert!(!dir.path().join("state").exists());
    }

    #[test]
    fn a_directory_at_the_configured_path_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let not_a_file = dir.path().join("health.html");
        fs::create_dir(&not_a_file).expect("mkdir");
        let health = HealthFile::new(&not_a_file, &dir.path().join("state"));
        let err = health.drain().expect_err("directory");
        assert!(matches!(err, HealthError::NotARegularFile(_)), "{err}");
        assert!(not_a_file.is_dir());
    }

    #[test]
    fn a_file_recreated_while_drained_wins_on_undrain() {
        let (_dir, health, _) = setup();
        health.drain().expect("drain");
        fs::write(health.path(), b"hand made").expect("recreate");
        assert!(!health.is_drained().expect("state"));
        assert_eq!(health.undrain().expect("undrain"), Change::Already);
        assert_eq!(fs::read(health.path()).expect("read"), b"hand made");
        assert!(!health.saved_path().exists());
    }
}
