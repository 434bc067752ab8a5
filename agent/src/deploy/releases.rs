//! The release tree under `[deploy] root`:
//!
//! ```text
//! root/
//!   current -> releases/20261126T050301Z-1a2b3c4   (a relative symlink)
//!   releases/
//!     20261126T050301Z-1a2b3c4/                     complete releases
//!     .partial-20261126T060000Z-5d6e7f8/            being exported (removed at start)
//!   shared/                                         linked into every release
//! ```
//!
//! `current` only ever changes by renaming a fully written symlink over it, so a
//! reader (Apache, a crash, a restart) sees the old release or the new one, never a
//! missing or half-made link. A release is exported under a `.partial-` name and
//! renamed into place only once it is complete.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use handover_common::names::ReleaseName;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag, fstatat};

use super::config::SharedPath;

/// Prefix of releases still being exported.
const PARTIAL_PREFIX: &str = ".partial-";
/// Prefix of `current` links being written.
const CURRENT_TMP_PREFIX: &str = ".current.tmp-";

/// The paths of one release tree.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The tree under `root`.
    pub fn new(root: &Path) -> Self {
        Layout {
            root: root.to_owned(),
        }
    }

    /// `root/releases`.
    pub fn releases_dir(&self) -> PathBuf {
        self.root.join("releases")
    }

    /// `root/shared`.
    pub fn shared_dir(&self) -> PathBuf {
        self.root.join("shared")
    }

    /// `root/current`.
    pub fn current_link(&self) -> PathBuf {
        self.root.join("current")
    }

    /// `root/releases/NAME`.
    pub fn release_dir(&self, name: &ReleaseName) -> PathBuf {
        self.releases_dir().join(name.as_str())
    }

    /// Where `name` is exported before it is complete.
    pub fn partial_dir(&self, name: &ReleaseName) -> PathBuf {
        self.releases_dir()
            .join(format!("{PARTIAL_PREFIX}{}", name.as_str()))
    }

    /// Creates `root`, `releases/` and `shared/` if missing.
    pub fn ensure(&self) -> io::Result<()> {
        std::fs::create_dir_all(self.releases_dir())?;
        std::fs::create_dir_all(self.shared_dir())
    }

    /// The release `current` points at; `None` before the first switch.
    pub fn current(&self) -> io::Result<Option<ReleaseName>> {
        let target = match std::fs::read_link(self.current_link()) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let name = target
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| ReleaseName::new(n).ok())
            .ok_or_else(|| {
                io::Error::other(format!(
                    "{} points at {}, which is not a release: point it at a directory in releases/ or remove it",
                    self.current_link().display(),
                    target.display()
                ))
            })?;
        Ok(Some(name))
    }

    /// Points `current` at `name` atomically: a new symlink, renamed over the old.
    pub fn switch_to(&self, name: &ReleaseName) -> io::Result<()> {
        if !self.release_dir(name).is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("release {name} is not in {}", self.releases_dir().display()),
            ));
        }
        let tmp = self
            .root
            .join(format!("{CURRENT_TMP_PREFIX}{}", std::process::id()));
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::os::unix::fs::symlink(Path::new("releases").join(name.as_str()), &tmp)?;
        std::fs::rename(&tmp, self.current_link())?;
        sync_dir(&self.root)
    }

    /// Removes `current` (switching back after a first deploy that failed).
    pub fn clear_current(&self) -> io::Result<()> {
        match std::fs::remove_file(self.current_link()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => sync_dir(&self.root),
        }
    }

    /// Completed releases on disk, oldest first (names start with the UTC time).
    pub fn on_disk(&self) -> io::Result<Vec<ReleaseName>> {
        let mut names = Vec::new();
        let entries = match std::fs::read_dir(self.releases_dir()) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(names),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            if let Some(name) = entry
                .file_name()
                .to_str()
                .and_then(|n| ReleaseName::new(n).ok())
            {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Deletes a release directory (or a partial one).
    pub fn remove_dir(path: &Path) -> io::Result<()> {
        match std::fs::remove_dir_all(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes what a killed agent left behind: `.partial-*` releases and
    /// `.current.tmp-*` links. Returns what it removed.
    pub fn remove_leftovers(&self) -> io::Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        for (dir, prefix) in [
            (self.releases_dir(), PARTIAL_PREFIX),
            (self.root.clone(), CURRENT_TMP_PREFIX),
        ] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let entry = entry?;
                if !entry.file_name().to_string_lossy().starts_with(prefix) {
                    continue;
                }
                let path = entry.path();
                if entry.file_type()?.is_dir() {
                    std::fs::remove_dir_all(&path)?;
                } else {
                    std::fs::remove_file(&path)?;
                }
                removed.push(path);
            }
        }
        Ok(removed)
    }

    /// Replaces each shared path in `release` with a symlink to `shared/<path>`.
    /// A shared path missing from `shared/` is seeded from the release's own copy
    /// (or created as an empty directory), so the first deploy sets it up.
    ///
    /// Every directory on the way, in the release and in `shared/`, must be a real
    /// directory (issue 13, hole 7): a release could ship `config` as a symlink to
    /// `/etc`, and linking `config/app.env` would then have moved, removed and
    /// replaced files there as root. The directories are opened one component at a
    /// time with `O_NOFOLLOW` (created when missing) and the last steps work on
    /// those handles, so a link swapped in meanwhile (the app may write `shared/`)
    /// is refused, never followed.
    pub fn link_shared(&self, release: &Path, shared: &[SharedPath]) -> io::Result<()> {
        for path in shared {
            let in_shared = self.shared_dir().join(path.as_path());
            let (Some(leaf), parent) = (path.as_path().file_name(), path.as_path().parent()) else {
                continue;
            };
            let parent = parent.unwrap_or(Path::new(""));
            let release_dir = open_dirs_beneath(release, parent)?;
            let shared_dir = open_dirs_beneath(&self.shared_dir(), parent)?;
            let in_release_meta = stat_at(&release_dir, leaf)?;
            // A symlink shipped in the release is not content to seed shared/ with:
            // moving it there would make shared/ point wherever the link does.
            let seedable = in_release_meta.is_some_and(|m| !is_link(&m));
            if stat_at(&shared_dir, leaf)?.is_none() {
                if seedable {
                    nix::fcntl::renameat(&release_dir, leaf, &shared_dir, leaf)?;
                } else {
                    mkdir_at(&shared_dir, leaf)?;
                }
            }
            // Whatever the release still has there (not moved to shared/) gives way.
            if let Some(meta) = stat_at(&release_dir, leaf)? {
                if is_dir(&meta) {
                    // The release is the agent's own tree, nobody else writes it yet;
                    // remove_dir_all does not follow links inside it.
                    std::fs::remove_dir_all(release.join(path.as_path()))?;
                } else {
                    nix::unistd::unlinkat(
                        &release_dir,
                        leaf,
                        nix::unistd::UnlinkatFlags::NoRemoveDir,
                    )?;
                }
            }
            nix::unistd::symlinkat(&in_shared, &release_dir, leaf)?;
        }
        Ok(())
    }
}

/// Opens each directory of `rel` beneath `base`, creating missing ones, without
/// following a link at any step; a symlink (or a file) on the way is an error
/// naming it.
fn open_dirs_beneath(base: &Path, rel: &Path) -> io::Result<OwnedFd> {
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut fd = nix::fcntl::open(base, dir_flags, Mode::empty())?;
    let mut at = base.to_path_buf();
    for part in rel.components() {
        let name = part.as_os_str();
        at.push(name);
        let opened =
            match nix::fcntl::openat(&fd, name, dir_flags | OFlag::O_NOFOLLOW, Mode::empty()) {
                Err(Errno::ENOENT) => {
                    mkdir_at(&fd, name)?;
                    nix::fcntl::openat(&fd, name, dir_flags | OFlag::O_NOFOLLOW, Mode::empty())
                }
                other => other,
            };
        fd = match opened {
            Ok(next) => next,
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                let link = stat_at(&fd, name)?.is_some_and(|m| is_link(&m));
                return Err(io::Error::other(if link {
                    format!(
                        "{} is a symbolic link: a shared path's directories must be real directories (links are not followed out of the deploy root)",
                        at.display()
                    )
                } else {
                    format!(
                        "{} is not a directory, but a shared path goes through it",
                        at.display()
                    )
                }));
            }
            Err(e) => return Err(e.into()),
        };
    }
    Ok(fd)
}

fn stat_at(dir: &OwnedFd, name: &std::ffi::OsStr) -> io::Result<Option<FileStat>> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(meta) => Ok(Some(meta)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn mkdir_at(dir: &OwnedFd, name: &std::ffi::OsStr) -> io::Result<()> {
    match nix::sys::stat::mkdirat(dir, name, Mode::from_bits_truncate(0o755)) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn is_link(meta: &FileStat) -> bool {
    SFlag::from_bits_truncate(meta.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK
}

fn is_dir(meta: &FileStat) -> bool {
    SFlag::from_bits_truncate(meta.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

/// A release name for commit `sha` built at `now`: `20261126T050301Z-1a2b3c4`,
/// with `-2`, `-3`… when that name is already taken.
pub fn new_release_name(
    now: SystemTime,
    sha: &str,
    taken: impl Fn(&ReleaseName) -> bool,
) -> io::Result<ReleaseName> {
    let stamp: String = humantime::format_rfc3339_seconds(now)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    let short = sha.get(..7).unwrap_or(sha);
    let base = format!("{stamp}-{short}");
    for n in 1..100 {
        let text = if n == 1 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        let name = ReleaseName::new(text).map_err(io::Error::other)?;
        if !taken(&name) {
            return Ok(name);
        }
    }
    Err(io::Error::other(format!(
        "too many releases named {base}*: wait a second and retry"
    )))
}

/// Makes a rename in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ReleaseName {
        ReleaseName::new(s).expect("valid release name")
    }

    fn layout() -> (tempfile::TempDir, Layout) {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path());
        layout.ensure().expect("layout");
        (dir, layout)
    }

    #[test]
    fn switching_replaces_current_and_leaves_no_temporary_link() {
        let (_dir, layout) = layout();
        for n in ["20260101T000000Z-aaaaaaa", "20260102T000000Z-bbbbbbb"] {
            std::fs::create_dir(layout.release_dir(&name(n))).expect("mkdir");
        }
        assert_eq!(layout.current().expect("read"), None);
        layout
            .switch_to(&name("20260101T000000Z-aaaaaaa"))
            .expect("switch");
        layout
            .switch_to(&name("20260102T000000Z-bbbbbbb"))
            .expect("switch");
        assert_eq!(
            layout.current().expect("read"),
            Some(name("20260102T000000Z-bbbbbbb"))
        );
        let link = std::fs::read_link(layout.current_link()).expect("symlink");
        assert_eq!(link, Path::new("releases/20260102T000000Z-bbbbbbb"));
        assert!(layout.remove_leftovers().expect("scan").is_empty());
    }

    #[test]
    fn switching_to_a_missing_release_changes_nothing() {
        let (_dir, layout) = layout();
        std::fs::create_dir(layout.release_dir(&name("20260101T000000Z-aaaaaaa"))).expect("mkdir");
        layout
            .switch_to(&name("20260101T000000Z-aaaaaaa"))
            .expect("switch");
        assert!(layout.switch_to(&name("20990101T000000Z-fffffff")).is_err());
        assert_eq!(
            layout.current().expect("read"),
            Some(name("20260101T000000Z-aaaaaaa"))
        );
    }

    #[test]
    fn leftovers_of_a_killed_agent_are_removed_and_complete_releases_kept() {
        let (_dir, layout) = layout();
        let done = name("20260101T000000Z-aaaaaaa");
        std::fs::create_dir(layout.release_dir(&done)).expect("mkdir");
        let partial = layout.partial_dir(&name("20260102T000000Z-bbbbbbb"));
        std::fs::create_dir_all(partial.join("sub")).expect("mkdir");
        std::os::unix::fs::symlink(
            "releases/x",
            layout.current_link().with_file_name(".current.tmp-99"),
        )
        .expect("symlink");
        let removed = layout.remove_leftovers().expect("clean");
        assert_eq!(removed.len(), 2);
        assert!(!partial.exists());
        assert_eq!(layout.on_disk().expect("list"), vec![done]);
    }

    #[test]
    fn shared_paths_are_seeded_once_then_linked() {
        let (_dir, layout) = layout();
        let shared = vec![
            SharedPath::try_from("storage".to_string()).expect("valid"),
            SharedPath::try_from("config/app.env".to_string()).expect("valid"),
        ];
        let first = layout.release_dir(&name("20260101T000000Z-aaaaaaa"));
        std::fs::create_dir_all(first.join("config")).expect("mkdir");
        std::fs::write(first.join("config/app.env"), "SEED=1\n").expect("write");
        layout.link_shared(&first, &shared).expect("link");
        std::fs::write(first.join("storage/upload.txt"), "kept").expect("write through link");

        let second = layout.release_dir(&name("20260102T000000Z-bbbbbbb"));
        std::fs::create_dir_all(second.join("config")).expect("mkdir");
        std::fs::write(second.join("config/app.env"), "FROM_REPO=1\n").expect("write");
        layout.link_shared(&second, &shared).expect("link");
        assert_eq!(
            std::fs::read_to_string(second.join("storage/upload.txt")).expect("read"),
            "kept"
        );
        assert_eq!(
            std::fs::read_to_string(second.join("config/app.env")).expect("read"),
            "SEED=1\n"
        );
    }

    #[test]
    fn a_symlink_in_the_release_is_replaced_not_moved_into_shared() {
        let (_dir, layout) = layout();
        let shared = vec![SharedPath::try_from("storage".to_string()).expect("valid")];
        let release = layout.release_dir(&name("20260101T000000Z-aaaaaaa"));
        std::fs::create_dir_all(&release).expect("mkdir");
        std::os::unix::fs::symlink("/etc", release.join("storage")).expect("symlink");
        layout.link_shared(&release, &shared).expect("link");
        let in_shared = layout.shared_dir().join("storage");
        assert!(
            in_shared.symlink_metadata().expect("created").is_dir(),
            "shared/storage must be a real directory"
        );
        assert_eq!(
            std::fs::read_link(release.join("storage")).expect("link"),
            in_shared
        );
    }

    /// Issue 13, hole 7: linking `config/app.env` followed a release's `config`
    /// symlink out of the deploy root, moving and replacing files there as root.
    #[test]
    fn a_symlinked_parent_directory_is_refused_not_followed() {
        let (dir, layout) = layout();
        let outside = dir.path().join("etc");
        std::fs::create_dir(&outside).expect("outside");
        std::fs::write(outside.join("app.env"), b"root's file").expect("victim");
        let shared = vec![SharedPath::try_from("config/app.env".to_string()).expect("valid")];
        let release = layout.release_dir(&name("20260101T000000Z-aaaaaaa"));
        std::fs::create_dir_all(&release).expect("mkdir");
        std::os::unix::fs::symlink(&outside, release.join("config")).expect("symlink");
        let err = layout
            .link_shared(&release, &shared)
            .expect_err("a link on the way");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let victim = outside.join("app.env");
        assert!(
            victim.symlink_metadata().expect("kept").is_file(),
            "replaced outside the root"
        );
        assert_eq!(std::fs::read(&victim).expect("victim"), b"root's file");
        assert!(!layout.shared_dir().join("config/app.env").exists());

        // The same through a symlinked directory in shared/.
        std::fs::remove_file(release.join("config")).expect("rm");
        std::fs::create_dir_all(layout.shared_dir()).expect("shared");
        std::os::unix::fs::symlink(&outside, layout.shared_dir().join("config")).expect("symlink");
        let err = layout
            .link_shared(&release, &shared)
            .expect_err("a link in shared/");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"root's file");
    }

    #[test]
    fn release_names_carry_time_and_short_sha_and_avoid_taken_ones() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
        let sha = "1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d";
        let first = new_release_name(t, sha, |_| false).expect("name");
        assert!(first.as_str().ends_with("Z-1a2b3c4"), "{first}");
        let second = new_release_name(t, sha, |n| *n == first).expect("name");
        assert_eq!(second.as_str(), format!("{first}-2"));
    }
}
