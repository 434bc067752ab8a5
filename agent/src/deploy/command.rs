//! Running a child process with a time limit and its output captured.
//!
//! Two kinds of command run here: git, with an argument vector built from validated
//! names (never through a shell), and the operator's own commands from the agent's
//! config or a release's `handover.toml` (hooks, reload, verify), through `sh -c`
//! because that is how operators write them. Nothing from a request reaches a shell.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

/// How many output lines are kept (and sent back to the caller).
pub const TAIL_LINES: usize = 20;

/// How a command ended.
#[derive(Debug)]
pub struct Finished {
    /// Its exit status; `None` when it was killed for running too long.
    pub status: Option<ExitStatus>,
    /// The last [`TAIL_LINES`] lines of stdout and stderr, interleaved.
    pub tail: Vec<String>,
    /// All of stdout, when asked for (git's answers).
    pub stdout: Vec<u8>,
}

impl Finished {
    /// Exit status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// "exit status 3", "killed by signal 9" or "timed out after 10s".
    pub fn describe(&self, timeout: Duration) -> String {
        match self.status {
            None => format!(
                "timed out after {} and was killed",
                handover_common::duration::format(timeout)
            ),
            Some(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                (Some(code), _) => format!("exit status {code}"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                _ => s.to_string(),
            },
        }
    }
}

/// Runs the operator's `command` with `sh -c` in `dir`, with `env` added.
pub async fn run_shell(
    command: &str,
    dir: &Path,
    env: &[(&str, &OsStr)],
    timeout: Duration,
) -> std::io::Result<Finished> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(cmd, timeout, false).await
}

/// Runs `cmd` (stdout and stderr captured; stdin as the caller set it) in its own process group,
/// which is killed as a whole when `timeout` passes, so a hook's children do not
/// outlive it. `keep_stdout` keeps the whole of stdout as well as the tail.
pub async fn run(
    mut cmd: Command,
    timeout: Duration,
    keep_stdout: bool,
) -> std::io::Result<Finished> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out_task = tokio::spawn(collect(stdout, tail.clone(), keep_stdout));
    let err_task = tokio::spawn(collect(stderr, tail.clone(), false));
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => Some(status?),
        Err(_) => {
            if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.kill().await;
            None
        }
    };
    // A grandchild still holding the pipes must not keep us here past the limit.
    let stdout = match tokio::time::timeout(Duration::from_secs(2), out_task).await {
        Ok(Ok(bytes)) => bytes,
        _ => Vec::new(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), err_task).await;
    let tail = tail
        .lock()
        .map(|t| t.iter().cloned().collect())
        .unwrap_or_default();
    Ok(Finished {
        status,
        tail,
        stdout,
    })
}

async fn collect(
    stream: Option<impl AsyncRead + Unpin>,
    tail: Arc<Mutex<VecDeque<String>>>,
    keep: bool,
) -> Vec<u8> {
    let Some(stream) = stream else {
        return Vec::new();
    };
    let mut reader = BufReader::new(stream);
    let mut all = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if keep {
                    all.extend_from_slice(&line);
                }
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                if let Ok(mut t) = tail.lock() {
                    if t.len() == TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(text);
                }
            }
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_the_last_lines_of_both_streams() {
        let dir = std::env::temp_dir();
        let done = run_shell(
            "for i in $(seq 1 30); do echo out$i; done; echo err >&2; exit 3",
            &dir,
            &[],
            Duration::from_secs(30),
        )
        .await
        .expect("sh runs");
        assert!(!done.success());
        assert_eq!(done.status.and_then(|s| s.code()), Some(3));
        assert_eq!(done.tail.len(), TAIL_LINES);
        assert!(done.tail.contains(&"out30".to_string()));
        assert!(done.tail.contains(&"err".to_string()));
        assert!(!done.tail.contains(&"out1".to_string()));
    }

    #[tokio::test]
    async fn a_command_past_its_limit_is_killed() {
        let dir = std::env::temp_dir();
        let done = run_shell("sleep 30", &dir, &[], Duration::from_millis(200))
            .await
            .expect("sh runs");
        assert!(done.status.is_none());
        assert!(
            done.describe(Duration::from_millis(200))
                .contains("timed out")
        );
    }
}
