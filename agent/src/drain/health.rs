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
//! fresh temporary name in the destination's directory, fsync, then rename into
//! place.
//!
//! The agent runs as root, and the directory holding the health file is usually
//! writable by the web server's user, so everything in it is treated as hostile
//! (issue 13, hole 1): both directories are opened once and every step works on
//! those handles (`openat`, `renameat`, `unlinkat`), never through a path that a
//! planted symlink could redirect. Files are opened with `O_NOFOLLOW` and checked
//! *after* opening (a regular file, not a link, FIFO or device); a temporary name is
//! created with `O_CREAT | O_EXCL`, so it is always a new file of ours; and a drain
//! checks what it moved only once it sits in the agent's private (0700) directory,
//! where nobody else can swap it, instead of checking and then moving.
//!
//! Only the configured path (and, for the cross-filesystem case, one temporary
//! name beside it) is ever touched; a lock serialises concurrent drain/undrain calls
//! inside the agent.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::fcntl::{OFlag, RenameFlags, openat, renameat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};

/// Serialises drain and undrain inside one agent process.
static LOCK: Mutex<()> = Mutex::new(());

/// The name of the saved copy inside `state_dir/drain`.
const SAVED_NAME: &str = "health-file.saved";

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
    /// The configured path (or the saved copy) is a directory, symlink or device.
    #[error(
        "{0} is not a regular file (a symlink, directory or device sits there): nothing was \
         moved; remove it and put the plain file HAProxy's check fetches at `[health] file`"
    )]
    NotARegularFile(PathBuf),
    /// The file was replaced while a cross-filesystem drain copied it.
    #[error("{0} was replaced while it was being drained; nothing was drained, drain again")]
    ChangedDuringDrain(PathBuf),
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

fn nix_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> HealthError + 'a {
    move |errno| HealthError::Io {
        action,
        path: path.to_owned(),
        source: io::Error::from(errno),
    }
}

/// The configured health-check file and its saved copy.
#[derive(Debug, Clone)]
pub struct HealthFile {
    file: PathBuf,
    saved: PathBuf,
    /// Copy even when a rename would work: the seam that lets a test take the
    /// cross-filesystem path where it cannot mount a second filesystem.
    copy_always: bool,
}

impl HealthFile {
    /// The file at `file`, saved under `state_dir` while drained.
    pub fn new(file: &Path, state_dir: &Path) -> Self {
        HealthFile {
            file: file.to_owned(),
            saved: state_dir.join("drain").join(SAVED_NAME),
            copy_always: false,
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
        let (docroot, name) = self.file_dir()?;
        let file_there = docroot.stat(name)?;
        let saved_there = exists(&self.saved)?;
        let found = match (file_there, saved_there) {
            (None, true) => return Ok(Change::Already),
            (None, false) => {
                return Err(HealthError::NothingToDrain {
                    file: self.file.clone(),
                    saved: self.saved.clone(),
                });
            }
            (Some(found), _) => found,
        };
        // The file is there (again, if someone recreated it while drained): what is
        // there now is what undrain must bring back.
        if !is_regular(&found) {
            return Err(HealthError::NotARegularFile(self.file.clone()));
        }
        let private = self.saved_dir(true)?;
        self.move_out(&docroot, name, &private)?;
        private.sync()?;
        docroot.sync()?;
        Ok(Change::Done)
    }

    /// Puts the saved file back in place, byte for byte. Idempotent.
    pub fn undrain(&self) -> Result<Change, HealthError> {
        let _guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (docroot, name) = self.file_dir()?;
        let file_there = docroot.stat(name)?;
        let saved_there = exists(&self.saved)?;
        match (file_there, saved_there) {
            (Some(_), false) => Ok(Change::Already),
            (None, false) => Err(HealthError::NothingToRestore {
                file: self.file.clone(),
                saved: self.saved.clone(),
            }),
            (Some(found), true) if !is_regular(&found) => {
                // A link planted where the file belongs: keep our copy, touch nothing.
                Err(HealthError::NotARegularFile(self.file.clone()))
            }
            (Some(_), true) => {
                // Someone put a file back by hand while drained: theirs is newer, and
                // the host already answers the check. Drop our copy.
                tracing::warn!(
                    file = %self.file.display(),
                    "health-check file was recreated while drained; keeping it and discarding the saved copy"
                );
                fs::remove_file(&self.saved).map_err(io_err("remove", &self.saved))?;
                Ok(Change::Already)
            }
            (None, true) => {
                let private = self.saved_dir(false)?;
                self.move_in(&private, &docroot, name)?;
                docroot.sync()?;
                private.sync()?;
                Ok(Change::Done)
            }
        }
    }

    /// The directory holding the configured file, opened, and the file's name in it.
    fn file_dir(&self) -> Result<(Dir, &OsStr), HealthError> {
        let (Some(parent), Some(name)) = (self.file.parent(), self.file.file_name()) else {
            return Err(HealthError::NotARegularFile(self.file.clone()));
        };
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        Ok((Dir::open(parent, OFlag::empty())?, name))
    }

    /// The agent's private directory for the saved copy, created 0700 if asked.
    fn saved_dir(&self, create: bool) -> Result<Dir, HealthError> {
        let dir = self.saved.parent().unwrap_or(Path::new("."));
        if create {
            create_private_dir(dir)?;
        }
        // Only its last component could be swapped, and only by root: refuse a link.
        Dir::open(dir, OFlag::O_NOFOLLOW)
    }

    /// Drain's move: rename into the private directory, then check what arrived
    /// there (a rename moves a link as a link; checking after the move leaves no
    /// window to swap it). Across filesystems, copy from a no-follow handle.
    fn move_out(&self, docroot: &Dir, name: &OsStr, private: &Dir) -> Result<(), HealthError> {
        if !self.copy_always {
            match renameat2(
                &docroot.fd,
                name,
                &private.fd,
                SAVED_NAME,
                RenameFlags::RENAME_NOREPLACE,
            ) {
                Ok(()) => {
                    return match private.stat(OsStr::new(SAVED_NAME))? {
                        Some(moved) if is_regular(&moved) => Ok(()),
                        _ => {
                            // Swapped between the check and the rename: put it back.
                            let back = renameat2(
                                &private.fd,
                                SAVED_NAME,
                                &docroot.fd,
                                name,
                                RenameFlags::RENAME_NOREPLACE,
                            )
                            .or_else(|_| {
                                unlinkat(&private.fd, SAVED_NAME, UnlinkatFlags::NoRemoveDir)
                            });
                            if let Err(e) = back {
                                tracing::warn!(error = %e, "could not put back a non-file that was swapped in during drain");
                            }
                            Err(HealthError::NotARegularFile(self.file.clone()))
                        }
                    };
                }
                Err(Errno::EXDEV) => {}
                Err(e) => return Err(nix_err("rename", &self.file)(e)),
            }
        }
        let (source, copied) = docroot.open_regular(name, &self.file)?;
        copy_into(
            &source,
            &copied,
            private,
            OsStr::new(SAVED_NAME),
            &self.saved,
        )?;
        // Remove the source only if it is still the file that was copied.
        match docroot.stat(name)? {
            Some(now) if now.st_dev == copied.st_dev && now.st_ino == copied.st_ino => {
                unlinkat(&docroot.fd, name, UnlinkatFlags::NoRemoveDir)
                    .map_err(nix_err("remove", &self.file))
            }
            _ => {
                let _ = unlinkat(&private.fd, SAVED_NAME, UnlinkatFlags::NoRemoveDir);
                Err(HealthError::ChangedDuringDrain(self.file.clone()))
            }
        }
    }

    /// Undrain's move: rename back (a rename never follows a link at the target, it
    /// replaces it); across filesystems, copy to a fresh `O_EXCL` name beside the
    /// file and rename that into place.
    fn move_in(&self, private: &Dir, docroot: &Dir, name: &OsStr) -> Result<(), HealthError> {
        if !self.copy_always {
            match renameat2(
                &private.fd,
                SAVED_NAME,
                &docroot.fd,
                name,
                RenameFlags::empty(),
            ) {
                Ok(()) => return Ok(()),
                Err(Errno::EXDEV) => {}
                Err(e) => return Err(nix_err("rename into place", &self.file)(e)),
            }
        }
        let (source, saved) = private.open_regular(OsStr::new(SAVED_NAME), &self.saved)?;
        copy_into(&source, &saved, docroot, name, &self.file)?;
        unlinkat(&private.fd, SAVED_NAME, UnlinkatFlags::NoRemoveDir)
            .map_err(nix_err("remove", &self.saved))
    }
}

/// A directory opened once; names below it are resolved against this handle, so
/// replacing a path component afterwards changes nothing for us.
struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl Dir {
    fn open(path: &Path, extra: OFlag) -> Result<Dir, HealthError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | extra;
        let fd = nix::fcntl::open(path, flags, Mode::empty()).map_err(|errno| match errno {
            Errno::ELOOP | Errno::ENOTDIR => HealthError::NotARegularFile(path.to_owned()),
            other => nix_err("open directory", path)(other),
        })?;
        Ok(Dir {
            fd,
            path: path.to_owned(),
        })
    }

    /// What sits at `name`, without following a link; `None` when nothing does.
    fn stat(&self, name: &OsStr) -> Result<Option<FileStat>, HealthError> {
        match fstatat(&self.fd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(found) => Ok(Some(found)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(nix_err("inspect", &self.path.join(name))(e)),
        }
    }

    /// Opens `name` for reading without following a link (`O_NONBLOCK` so a FIFO
    /// cannot hang us) and checks the opened file itself is a regular file.
    fn open_regular(
        &self,
        name: &OsStr,
        shown: &Path,
    ) -> Result<(fs::File, FileStat), HealthError> {
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = openat(&self.fd, name, flags, Mode::empty()).map_err(|errno| match errno {
            Errno::ELOOP => HealthError::NotARegularFile(shown.to_owned()),
            other => nix_err("open", shown)(other),
        })?;
        let opened = fstat(&fd).map_err(nix_err("inspect", shown))?;
        if !is_regular(&opened) {
            return Err(HealthError::NotARegularFile(shown.to_owned()));
        }
        Ok((fs::File::from(fd), opened))
    }

    /// Creates a new temporary file beside `name`: `O_CREAT | O_EXCL | O_NOFOLLOW`,
    /// so whatever sits at a name already (a planted link included) is never opened;
    /// a taken name is skipped for another.
    fn create_temp(&self, name: &OsStr) -> Result<(OsString, fs::File), HealthError> {
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut last = Errno::EEXIST;
        for attempt in 0..16u32 {
            let temp = temp_name(name, attempt);
            match openat(
                &self.fd,
                temp.as_os_str(),
                flags,
                Mode::from_bits_truncate(0o600),
            ) {
                Ok(fd) => return Ok((temp, fs::File::from(fd))),
                Err(Errno::EEXIST) => last = Errno::EEXIST,
                Err(e) => {
                    last = e;
                    break;
                }
            }
        }
        Err(nix_err("create a temporary file in", &self.path)(last))
    }

    fn sync(&self) -> Result<(), HealthError> {
        nix::unistd::fsync(&self.fd).map_err(nix_err("fsync directory", &self.path))
    }
}

/// `.<name>.handover-tmp.<pid>.<nanos><attempt>`: unlikely to be taken, and when it
/// is, `O_EXCL` refuses it and the next attempt picks another.
fn temp_name(name: &OsStr, attempt: u32) -> OsString {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut temp = OsString::from(".");
    temp.push(name);
    temp.push(format!(
        ".handover-tmp.{}.{nanos:x}{attempt}",
        std::process::id()
    ));
    temp
}

/// Copies `source` (already opened and checked) to `name` in `dir` through a fresh
/// temporary file with the source's mode bits and owner, fsynced, then renamed into
/// place. The temporary file is removed on any failure.
fn copy_into(
    source: &fs::File,
    from: &FileStat,
    dir: &Dir,
    name: &OsStr,
    shown: &Path,
) -> Result<(), HealthError> {
    let (temp, mut out) = dir.create_temp(name)?;
    let temp_path = dir.path.join(&temp);
    let written = (|| {
        let mut reader = source;
        io::copy(&mut reader, &mut out).map_err(io_err("copy to", &temp_path))?;
        match fchown(
            out.as_fd(),
            Some(Uid::from_raw(from.st_uid)),
            Some(Gid::from_raw(from.st_gid)),
        ) {
            // Not root: the copy is ours, which is all an unprivileged agent can do.
            Ok(()) | Err(Errno::EPERM) => {}
            Err(e) => return Err(nix_err("set the owner of", &temp_path)(e)),
        }
        let mode = Mode::from_bits_truncate(from.st_mode & 0o777);
        fchmod(out.as_fd(), mode).map_err(nix_err("set the mode of", &temp_path))?;
        out.sync_all().map_err(io_err("fsync", &temp_path))?;
        nix::fcntl::renameat(&dir.fd, temp.as_os_str(), &dir.fd, name)
            .map_err(nix_err("rename into place", shown))
    })();
    if written.is_err() {
        let _ = unlinkat(&dir.fd, temp.as_os_str(), UnlinkatFlags::NoRemoveDir);
    }
    written
}

fn is_regular(stat: &FileStat) -> bool {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
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

    /// A tmpfs mounted on a directory for one test, unmounted on drop.
    struct Tmpfs(PathBuf);

    impl Tmpfs {
        /// `None` where this process may not mount (not root, no CAP_SYS_ADMIN).
        fn mount(at: &Path) -> Option<Tmpfs> {
            fs::create_dir_all(at).expect("mount point");
            let status = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "handover-test"])
                .arg(at)
                .stderr(std::process::Stdio::null())
                .status();
            matches!(status, Ok(s) if s.success()).then(|| Tmpfs(at.to_owned()))
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }

    /// The health file in a docroot and `state_dir` on another filesystem: a real
    /// tmpfs when the test may mount one, else the copy path forced through the seam.
    fn across_filesystems() -> (tempfile::TempDir, HealthFile, Vec<u8>, Option<Tmpfs>) {
        let (dir, mut health, content) = setup();
        let mounted = Tmpfs::mount(&dir.path().join("state"));
        if mounted.is_none() {
            health.copy_always = true;
        }
        (dir, health, content, mounted)
    }

    fn victim(dir: &Path, name: &str) -> PathBuf {
        let victim = dir.join(name);
        fs::write(&victim, b"root's secret\n").expect("victim");
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).expect("chmod victim");
        victim
    }

    fn assert_untouched(victim: &Path) {
        assert_eq!(fs::read(victim).expect("victim"), b"root's secret\n");
        let mode = fs::metadata(victim).expect("victim").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the victim's mode changed");
    }

    /// Issue 13, hole 1: with state_dir on another filesystem, undrain copied the
    /// saved file through `.<name>.handover-tmp` beside it following a planted
    /// symlink, overwrote a root-owned file and chmodded it 0644, and accepted a
    /// symlink at the health path as "recreated by hand".
    #[test]
    fn undrain_across_filesystems_never_follows_a_planted_symlink() {
        let (dir, health, content, mounted) = across_filesystems();
        let docroot = health.path().parent().expect("docroot").to_owned();
        assert_eq!(
            health.drain().expect("drain across filesystems"),
            Change::Done
        );
        assert_eq!(fs::read(health.saved_path()).expect("saved copy"), content);
        if mounted.is_some() {
            use std::os::unix::fs::MetadataExt;
            let saved_dev = fs::metadata(health.saved_path()).expect("saved").dev();
            assert_ne!(
                saved_dev,
                fs::metadata(&docroot).expect("docroot").dev(),
                "not across filesystems"
            );
        }

        // The web server's user plants links at the old temporary name and at the
        // health path itself, both pointing at root-owned files.
        let at_temp = victim(dir.path(), "shadow");
        let at_file = victim(dir.path(), "passwd");
        let planted_temp = docroot.join(".health.html.handover-tmp");
        std::os::unix::fs::symlink(&at_temp, &planted_temp).expect("plant temp link");
        std::os::unix::fs::symlink(&at_file, health.path()).expect("plant file link");

        let err = health.undrain().expect_err("a link at the health path");
        assert!(matches!(err, HealthError::NotARegularFile(_)), "{err}");
        assert!(err.to_string().contains("remove it"), "{err}");
        assert_eq!(
            fs::read(health.saved_path()).expect("saved copy kept"),
            content
        );
        assert_untouched(&at_file);

        // The operator removes the planted health link; the temp link stays.
        fs::remove_file(health.path()).expect("remove planted link");
        assert_eq!(
            health.undrain().expect("undrain across filesystems"),
            Change::Done
        );
        let restored = fs::symlink_metadata(health.path()).expect("restored");
        assert!(
            restored.file_type().is_file(),
            "the health file is not a plain file"
        );
        assert_eq!(restored.permissions().mode() & 0o777, 0o640);
        assert_eq!(fs::read(health.path()).expect("read back"), content);
        assert!(!health.saved_path().exists());
        assert_untouched(&at_temp);
        assert_untouched(&at_file);
        assert!(
            fs::symlink_metadata(&planted_temp)
                .expect("planted")
                .file_type()
                .is_symlink()
        );
        let leftovers: Vec<_> = fs::read_dir(&docroot)
            .expect("docroot")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            leftovers.len(),
            2,
            "temporary files left behind: {leftovers:?}"
        );

        // And the host drains again, which the left-behind link used to block.
        assert_eq!(health.drain().expect("drain again"), Change::Done);
        drop(mounted);
    }

    /// Issue 13, hole 1: drain checked "regular file" and then moved or copied it by
    /// path; a symlink planted at the health path must be refused in both the
    /// rename and the copy path, moving nothing.
    #[test]
    fn drain_refuses_a_symlink_at_the_health_path_on_both_paths() {
        for copy_always in [false, true] {
            let (dir, mut health, _) = setup();
            health.copy_always = copy_always;
            let target = victim(dir.path(), "passwd");
            fs::remove_file(health.path()).expect("remove");
            std::os::unix::fs::symlink(&target, health.path()).expect("plant link");
            let err = health.drain().expect_err("a link at the health path");
            assert!(matches!(err, HealthError::NotARegularFile(_)), "{err}");
            assert!(!health.saved_path().exists());
            assert!(
                fs::symlink_metadata(health.path())
                    .expect("link")
                    .file_type()
                    .is_symlink()
            );
            assert_untouched(&target);
        }
    }

    /// Issue 13, hole 1: what a drain moved is checked where nobody else can swap it;
    /// a link that won the race between the check and the move is put back and the
    /// drain refused, on both the rename and the copy path.
    #[test]
    fn a_link_swapped_in_after_the_check_is_put_back_not_saved() {
        for copy_always in [false, true] {
            let (dir, mut health, _) = setup();
            health.copy_always = copy_always;
            let target = victim(dir.path(), "passwd");
            fs::remove_file(health.path()).expect("remove");
            std::os::unix::fs::symlink(&target, health.path()).expect("swap in a link");
            // Straight to the move, as if the check had passed on the plain file.
            let (docroot, name) = health.file_dir().expect("docroot");
            let private = health.saved_dir(true).expect("private dir");
            let err = health
                .move_out(&docroot, name, &private)
                .expect_err("a link");
            assert!(matches!(err, HealthError::NotARegularFile(_)), "{err}");
            assert!(!health.saved_path().exists(), "copy_always={copy_always}");
            assert!(
                fs::symlink_metadata(health.path())
                    .expect("link")
                    .file_type()
                    .is_symlink()
            );
            assert_untouched(&target);
        }
    }

    #[test]
    fn drain_and_undrain_across_filesystems_keep_bytes_and_mode() {
        let (_dir, health, content, mounted) = across_filesystems();
        health.drain().expect("drain");
        assert!(!health.path().exists());
        health.undrain().expect("undrain");
        assert_eq!(fs::read(health.path()).expect("read back"), content);
        let mode = fs::metadata(health.path())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
        drop(mounted);
    }
}
