//! The local control socket: an operator on the host talks to the running daemon
//! (`handover-agent drain --wait`), with the same messages a coordinator sends.
//!
//! Access (issue 13, hole 10): the socket lives in a directory of the agent's own
//! that nobody else may write (created 0700; 0710 when `control_group` is set), so
//! nobody can swap what sits at the path; the socket is 0600 (0660 for the group);
//! and every connection's peer is checked with `SO_PEERCRED`: root, the agent's own
//! user, or a member of `control_group`. A stale socket left by a killed agent is
//! removed only when it *is* a socket nobody serves; anything else at the path is
//! an error, never deleted.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use handover_common::proto::{
    Failure, FailureKind, Progress, Reply, Request, RequestFrame, Response,
};
use handover_common::wire;
use nix::unistd::{Gid, Group, Uid, User};
use serde::Deserialize;
use tokio::net::{UnixListener, UnixStream};

use crate::Agent;
use crate::{caller::Caller, exchange::serve_exchange};

/// `control_group` in the agent's config: a group whose members may use the
/// control socket besides root, looked up when the config is loaded.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ControlGroup {
    name: String,
    gid: Gid,
}

impl TryFrom<String> for ControlGroup {
    type Error = String;
    fn try_from(name: String) -> Result<Self, Self::Error> {
        match Group::from_name(&name) {
            Ok(Some(group)) => Ok(ControlGroup {
                name,
                gid: group.gid,
            }),
            Ok(None) => Err(format!(
                "unknown group {name:?}: create it (`groupadd --system {name}`) or name an existing group"
            )),
            Err(e) => Err(format!("cannot look up group {name:?}: {e}")),
        }
    }
}

/// Who may talk to the control socket.
#[derive(Debug, Clone)]
pub struct Access {
    owner: Uid,
    group: Option<ControlGroup>,
}

impl Access {
    /// Root, the agent's own user, and members of `group`.
    pub fn new(group: Option<ControlGroup>) -> Self {
        Access {
            owner: Uid::effective(),
            group,
        }
    }

    /// Whether a peer with these credentials may send requests.
    pub fn allows(&self, uid: u32, gid: u32) -> bool {
        let uid = Uid::from_raw(uid);
        if uid.is_root() || uid == self.owner {
            return true;
        }
        let Some(group) = &self.group else {
            return false;
        };
        if Gid::from_raw(gid) == group.gid {
            return true;
        }
        // Supplementary membership, from the group database (SO_PEERCRED carries
        // the primary group only).
        let name = User::from_uid(uid).ok().flatten().map(|u| u.name);
        let members = Group::from_gid(group.gid).ok().flatten().map(|g| g.mem);
        matches!((name, members), (Some(n), Some(m)) if m.contains(&n))
    }

    fn refusal(&self, uid: u32) -> Failure {
        let how = match &self.group {
            Some(g) => format!("run it as root or as a member of group {}", g.name),
            None => "run it as root (or set control_group in agent.toml)".to_string(),
        };
        Failure::new(
            FailureKind::Refused,
            format!("uid {uid} may not use this agent's control socket: {how}"),
        )
    }
}

/// A bound control socket; removes its file when dropped.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    access: Access,
}

impl ControlSocket {
    /// Binds `path` (mode 0600, 0660 with a group) inside a private directory. A
    /// stale socket left by a killed agent is replaced; a live one means another
    /// agent runs, and anything else at the path is an error.
    pub async fn bind(path: &Path, access: Access) -> anyhow::Result<Self> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        private_dir(dir, &access)?;
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
            Ok(meta) if !meta.file_type().is_socket() => bail!(
                "{} exists and is not a socket: nothing was removed; move it away or set another control_socket",
                path.display()
            ),
            Ok(_) => {
                if UnixStream::connect(path).await.is_ok() {
                    bail!(
                        "another handover-agent is already serving {}: stop it first",
                        path.display()
                    );
                }
                std::fs::remove_file(path)
                    .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
            }
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("cannot bind control socket {}", path.display()))?;
        let mode = match &access.group {
            Some(group) => {
                std::os::unix::fs::chown(path, None, Some(group.gid.as_raw())).with_context(
                    || format!("cannot give {} to group {}", path.display(), group.name),
                )?;
                0o660
            }
            None => 0o600,
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot chmod {mode:o} {}", path.display()))?;
        Ok(ControlSocket {
            listener,
            path: path.to_owned(),
            access,
        })
    }

    /// Serves local operators until `shutdown` resolves.
    pub async fn run(self, agent: Arc<Agent>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let agent = agent.clone();
                        let access = self.access.clone();
                        tokio::spawn(async move { serve_local(&agent, &access, stream).await });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                },
                () = &mut shutdown => break,
            }
        }
    }
}

/// Serves one local connection if its peer may use the socket; else answers why not.
async fn serve_local(agent: &Arc<Agent>, access: &Access, stream: UnixStream) {
    let allowed = match stream.peer_cred() {
        Ok(cred) if access.allows(cred.uid(), cred.gid()) => Ok(()),
        Ok(cred) => Err(access.refusal(cred.uid())),
        Err(e) => Err(Failure::new(
            FailureKind::Refused,
            format!("cannot tell who is calling (SO_PEERCRED: {e})"),
        )),
    };
    let (mut recv, mut send) = stream.into_split();
    match allowed {
        Ok(()) => {
            let _ = serve_exchange(
                agent,
                &Caller::Local,
                &mut recv,
                &mut send,
                std::future::pending(),
            )
            .await;
        }
        Err(failure) => {
            tracing::warn!(reason = %failure.message, "refused a control socket connection");
            // Take (and drop, unread by anything) the caller's request first, so
            // it is not cut off mid-write and sees why it was refused.
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                wire::read_frame::<_, RequestFrame>(&mut recv),
            )
            .await;
            let _ = wire::write_frame(&mut send, &Response::Failed(failure)).await;
        }
    }
}

/// Creates `dir` 0700 (0710 and the group's when a group may connect), or checks an
/// existing one: a real directory of the agent's user that nobody else may write,
/// so nobody else can replace what sits in it.
fn private_dir(dir: &Path, access: &Access) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let mode = if access.group.is_some() { 0o710 } else { 0o700 };
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {
            if let Some(group) = &access.group {
                std::os::unix::fs::chown(dir, None, Some(group.gid.as_raw())).with_context(
                    || format!("cannot give {} to group {}", dir.display(), group.name),
                )?;
            }
            // The umask may have narrowed the mode; set it exactly.
            return std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("cannot chmod {mode:o} {}", dir.display()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            return private_dir(dir, access);
        }
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
    let meta = std::fs::symlink_metadata(dir)
        .with_context(|| format!("cannot inspect {}", dir.display()))?;
    let unsafe_dir =
        !meta.is_dir() || meta.uid() != access.owner.as_raw() || meta.mode() & 0o022 != 0;
    if unsafe_dir {
        bail!(
            "the control socket's directory {} must be a directory of this agent's user that only it may write \
             (it is {}, owner uid {}, mode {:o}): put control_socket in a private directory such as /run/handover-agent/",
            dir.display(),
            if meta.file_type().is_symlink() {
                "a symlink"
            } else if meta.is_dir() {
                "a directory"
            } else {
                "not a directory"
            },
            meta.uid(),
            meta.mode() & 0o7777
        );
    }
    Ok(())
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Why a local call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The daemon is not there.
    #[error(
        "cannot reach the agent at {path}: {error} — is handover-agent running? (systemctl status handover-agent)"
    )]
    NotRunning {
        /// The socket path.
        path: PathBuf,
        /// What connect said (not a `source`: the message already includes it,
        /// and a source would print it twice in `{:#}`).
        error: std::io::Error,
    },
    /// The agent answered with a failure.
    #[error("{0}")]
    Failed(Failure),
    /// The exchange broke.
    #[error("talking to the agent: {0}")]
    Wire(#[from] wire::WireError),
    /// The agent closed the socket without a final answer.
    #[error("the agent closed the connection without an answer (see its log)")]
    NoAnswer,
}

/// Sends `request` to the daemon behind `socket`, passing progress to
/// `on_progress`, and returns the final reply.
pub async fn call(
    socket: &Path,
    request: Request,
    mut on_progress: impl FnMut(Progress),
) -> Result<Reply, CallError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|error| CallError::NotRunning {
            path: socket.to_owned(),
            error,
        })?;
    let (mut recv, mut send) = stream.into_split();
    wire::write_frame(&mut send, &RequestFrame::new(request)).await?;
    loop {
        match wire::read_frame::<_, Response>(&mut recv).await? {
            Some(Response::Progress(p)) => on_progress(p),
            Some(Response::Done(reply)) => return Ok(reply),
            Some(Response::Failed(f)) => return Err(CallError::Failed(f)),
            None => return Err(CallError::NoAnswer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private_tempdir() -> tempfile::TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    /// Issue 13, hole 10: stale-socket cleanup deleted whatever file sat at the
    /// path; now only a socket nobody serves is removed.
    #[tokio::test]
    async fn only_a_stale_socket_is_removed_never_a_file_or_link() {
        let dir = private_tempdir();
        let path = dir.path().join("control.sock");
        std::fs::write(&path, b"precious").expect("a file");
        let err = ControlSocket::bind(&path, Access::new(None))
            .await
            .err()
            .expect("a file at the path");
        assert!(format!("{err:#}").contains("not a socket"), "{err:#}");
        assert_eq!(std::fs::read(&path).expect("still there"), b"precious");

        std::fs::remove_file(&path).expect("rm");
        let target = dir.path().join("target");
        std::fs::write(&target, b"precious").expect("target");
        std::os::unix::fs::symlink(&target, &path).expect("link");
        assert!(ControlSocket::bind(&path, Access::new(None)).await.is_err());
        assert!(
            std::fs::symlink_metadata(&path)
                .expect("link kept")
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read(&target).expect("target"), b"precious");

        std::fs::remove_file(&path).expect("rm");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("a stale socket"));
        let bound = ControlSocket::bind(&path, Access::new(None))
            .await
            .expect("stale socket replaced");
        let mode = std::fs::metadata(&path)
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(bound);
    }

    /// Issue 13, hole 10: the socket is made inside a directory only the agent
    /// may write; a directory others may write is refused.
    #[tokio::test]
    async fn the_socket_lives_in_a_private_directory() {
        let dir = private_tempdir();
        let path = dir.path().join("run").join("control.sock");
        let bound = ControlSocket::bind(&path, Access::new(None))
            .await
            .expect("bind");
        let mode = std::fs::metadata(dir.path().join("run"))
            .expect("dir")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        drop(bound);

        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).expect("mkdir");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = ControlSocket::bind(&shared.join("control.sock"), Access::new(None))
            .await
            .err()
            .expect("world-writable directory");
        assert!(format!("{err:#}").contains("private directory"), "{err:#}");
        assert!(!shared.join("control.sock").exists());
    }

    /// Issue 13, hole 10: a connecting peer is checked with SO_PEERCRED.
    #[test]
    fn peers_are_root_the_agent_or_the_control_group() {
        let access = Access::new(None);
        assert!(access.allows(0, 0));
        assert!(access.allows(Uid::effective().as_raw(), 12345));
        let stranger = if Uid::effective().as_raw() == 54321 {
            54322
        } else {
            54321
        };
        assert!(!access.allows(stranger, 54321));
        assert!(access.refusal(stranger).message.contains("control_group"));

        let root_group = ControlGroup::try_from("root".to_string()).expect("group root");
        let access = Access::new(Some(root_group));
        assert!(
            access.allows(stranger, 0),
            "primary group is the control group"
        );
        assert!(!access.allows(stranger, 54321));
        assert!(ControlGroup::try_from("no-such-group-here".to_string()).is_err());
    }
}
