//! The local control socket: an operator on the host talks to the running daemon
//! (`handover-agent drain --wait`), with the same messages a coordinator sends.
//! Access is the socket file's mode (0600, owner only): whoever may open it is
//! already the agent's user on this host.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use handover_common::proto::{Failure, Progress, Reply, Request, RequestFrame, Response};
use handover_common::wire;
use tokio::net::{UnixListener, UnixStream};

use crate::Agent;
use crate::dispatch::{Caller, serve_exchange};

/// A bound control socket; removes its file when dropped.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Binds `path` (mode 0600). A stale socket left by a killed agent is replaced;
    /// a live one means another agent runs, and is an error.
    pub async fn bind(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        if path.exists() {
            if UnixStream::connect(path).await.is_ok() {
                bail!(
                    "another handover-agent is already serving {}: stop it first",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("cannot bind control socket {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot chmod 600 {}", path.display()))?;
        Ok(ControlSocket {
            listener,
            path: path.to_owned(),
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
                        tokio::spawn(async move {
                            let (mut recv, mut send) = stream.into_split();
                            let _ = serve_exchange(&agent, &Caller::Local, &mut recv, &mut send, std::future::pending()).await;
                        });
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
