//! Running a child process with a time limit and its output captured.
//!
//! Two kinds of command run here: git, with an argument vector built from validated
//! names (never through a shell), and the operator's own commands from the agent's
//! config or a release's `handover.toml` (hooks, reload, verify), through `sh -c`
//! because that is how operators write them. Nothing from a request reaches a shell
//! as code: a request's values (a git ref may hold `$ ; | & ( )`) reach a hook only
//! as `HANDOVER_*` environment variables, which `sh` never parses again.
//!
//! A shell command is contained (issue 13, holes 9 and 11):
//! * its environment is cleared and rebuilt from an allow-list ([`PASSED_THROUGH`])
//!   plus the caller's `HANDOVER_*` values, so the agent's own variables
//!   (`NOTIFY_SOCKET` under systemd, `RUST_LOG`, credentials) never reach it;
//! * it runs in its own process group, which is killed as a whole when the command
//!   ends or times out, so background children do not outlive it;
//! * it is started through `setpriv --pdeathsig KILL` (util-linux) where present, so
//!   the kernel kills it if the agent dies (`#![forbid(unsafe_code)]` rules out
//!   setting it between fork and exec ourselves; the signal is tied to the thread
//!   that spawned it, a tokio worker, which lives as long as the agent's runtime);
//!   its group is recorded in
//!   [`RunningGroups`] while it runs, so an agent restarted after `kill -9` ends what
//!   is left of it before recovering the release tree.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Gid, Pid, Uid, User};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

/// How many output lines are kept (and sent back to the caller).
pub const TAIL_LINES: usize = 20;

/// Longest output line kept; the rest of a longer line is dropped.
pub const MAX_LINE_BYTES: usize = 2048;

/// The agent's environment variables a shell command may see; everything else is
/// dropped. `PATH` gets a standard value when the agent has none.
pub const PASSED_THROUGH: &[&str] = &[
    "PATH",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_COLLATE",
    "LC_MESSAGES",
    "LC_MONETARY",
    "LC_NUMERIC",
    "LC_TIME",
    "TZ",
];

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How a command ended.
#[derive(Debug)]
pub struct Finished {
    /// Its exit status; `None` when it was killed for running too long.
    pub status: Option<ExitStatus>,
    /// The last [`TAIL_LINES`] lines of stdout and stderr, interleaved.
    pub tail: Vec<String>,
    /// All of stdout, when asked for (git's answers).
    pub stdout: Vec<u8>,
    /// The last non-empty line of stdout (cut at [`MAX_LINE_BYTES`]), which a
    /// hook may use to report what it made (see `deploy::artifact`).
    pub last_stdout_line: Option<String>,
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

/// An unprivileged user a command runs as, looked up when the config is loaded.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct RunAs {
    name: String,
    uid: Uid,
    gid: Gid,
    home: PathBuf,
}

impl RunAs {
    /// The user's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The user's id.
    pub fn uid(&self) -> Uid {
        self.uid
    }

    /// The user's primary group.
    pub fn gid(&self) -> Gid {
        self.gid
    }
}

impl TryFrom<String> for RunAs {
    type Error = String;
    fn try_from(name: String) -> Result<Self, Self::Error> {
        match User::from_name(&name) {
            Ok(Some(user)) => Ok(RunAs {
                name,
                uid: user.uid,
                gid: user.gid,
                home: user.dir,
            }),
            Ok(None) => Err(format!(
                "unknown user {name:?}: create it (e.g. `useradd --system {name}`) or name an existing user"
            )),
            Err(e) => Err(format!("cannot look up user {name:?}: {e}")),
        }
    }
}

/// An operator's command for `sh -c`, and everything it runs with.
#[derive(Debug, Clone, Copy)]
pub struct Shell<'a> {
    /// The command line, as the operator wrote it.
    pub command: &'a str,
    /// Its working directory.
    pub dir: &'a Path,
    /// The `HANDOVER_*` values it gets on top of [`PASSED_THROUGH`].
    pub env: &'a [(&'a str, &'a OsStr)],
    /// Whom it runs as; the agent's own user (root) when `None`.
    pub run_as: Option<&'a RunAs>,
    /// Its time limit.
    pub timeout: Duration,
    /// Where its process group is recorded while it runs.
    pub groups: Option<&'a RunningGroups>,
}

/// The environment a shell command gets: the allow-listed part of the agent's own,
/// `HOME`/`USER`/`LOGNAME` of whom it runs as, then `extra`.
pub fn shell_env(run_as: Option<&RunAs>, extra: &[(&str, &OsStr)]) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = PASSED_THROUGH
        .iter()
        .filter_map(|k| std::env::var_os(k).map(|v| (OsString::from(k), v)))
        .collect();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    let (home, user) = match run_as {
        Some(u) => (u.home.clone().into_os_string(), OsString::from(&u.name)),
        None => (
            std::env::var_os("HOME").unwrap_or_else(|| "/root".into()),
            "root".into(),
        ),
    };
    env.push(("HOME".into(), home));
    env.push(("USER".into(), user.clone()));
    env.push(("LOGNAME".into(), user));
    env.extend(
        extra
            .iter()
            .map(|(k, v)| (OsString::from(k), v.to_os_string())),
    );
    env
}

/// `setpriv`, when installed: it sets the parent-death signal and execs the command.
fn setpriv() -> Option<&'static Path> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let found = ["/usr/bin/setpriv", "/bin/setpriv", "/usr/sbin/setpriv"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file());
            if found.is_none() {
                tracing::warn!("setpriv (util-linux) not found: hooks will not die with the agent; a restarted agent still ends what they left");
            }
            found
        })
        .as_deref()
}

/// Runs the operator's command with `sh -c`, contained as the module says.
pub async fn run_shell(shell: &Shell<'_>) -> std::io::Result<Finished> {
    let mut cmd = match setpriv() {
        // PDEATHSIG is set by setpriv itself, after the uid change (which would
        // clear it), and survives its exec of sh.
        Some(setpriv) => {
            let mut cmd = Command::new(setpriv);
            cmd.args(["--pdeathsig", "KILL", "--", "sh", "-c"]);
            cmd
        }
        None => {
            let mut cmd = Command::new("sh");
            cmd.arg("-c");
            cmd
        }
    };
    cmd.arg(shell.command)
        .current_dir(shell.dir)
        .stdin(Stdio::null())
        .env_clear()
        .envs(shell_env(shell.run_as, shell.env));
    if let Some(user) = shell.run_as {
        // std drops supplementary groups when root changes uid.
        cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    run_recorded(cmd, shell.timeout, false, shell.groups).await
}

/// Runs `cmd` (stdout and stderr captured; stdin as the caller set it) in its own process group,
/// which is killed as a whole when `timeout` passes, so a hook's children do not
/// outlive it. `keep_stdout` keeps the whole of stdout as well as the tail.
pub async fn run(cmd: Command, timeout: Duration, keep_stdout: bool) -> std::io::Result<Finished> {
    run_recorded(cmd, timeout, keep_stdout, None).await
}

async fn run_recorded(
    mut cmd: Command,
    timeout: Duration,
    keep_stdout: bool,
    groups: Option<&RunningGroups>,
) -> std::io::Result<Finished> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    // Ends the group however this function is left, cancellation included.
    let mut group = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(|id| GroupGuard::new(Pid::from_raw(id), groups));
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out_task = tokio::spawn(collect(stdout, tail.clone(), keep_stdout));
    let err_task = tokio::spawn(collect(stderr, tail.clone(), false));
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => Some(status?),
        Err(_) => {
            let _ = child.kill().await;
            drop(group.take());
            None
        }
    };
    // Output first, then the group. A daemon started by the hook (`apache2 -k
    // start`, daemon(3)) leaves the group with setsid and only then lets go of
    // our pipes, so their end says it is safe; ending the group the instant the
    // hook returned killed such a daemon before its setsid. A grandchild still
    // holding the pipes (`sleep 300 &`) is waited for no longer than
    // OUTPUT_GRACE, then ends with the group.
    let deadline = tokio::time::Instant::now() + OUTPUT_GRACE;
    let (stdout, last_stdout_line) = match tokio::time::timeout_at(deadline, out_task).await {
        Ok(Ok(collected)) => collected,
        _ => (Vec::new(), None),
    };
    let _ = tokio::time::timeout_at(deadline, err_task).await;
    drop(group);
    let tail = tail
        .lock()
        .map(|t| t.iter().cloned().collect())
        .unwrap_or_default();
    Ok(Finished {
        status,
        tail,
        stdout,
        last_stdout_line,
    })
}

/// How long a finished command's leftover children may hold its output pipes
/// before its process group is ended.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// A running command's process group: killed, and its record removed, on drop.
struct GroupGuard {
    pgid: Pid,
    record: Option<PathBuf>,
}

impl GroupGuard {
    fn new(pgid: Pid, groups: Option<&RunningGroups>) -> Self {
        GroupGuard {
            pgid,
            record: groups.and_then(|g| g.record(pgid)),
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let _ = killpg(self.pgid, Signal::SIGKILL);
        if let Some(record) = &self.record {
            let _ = std::fs::remove_file(record);
        }
    }
}

/// The process groups of shell commands running now, one file per group in
/// `state_dir/hooks-running/<pgid>` holding the boot id: an agent killed with
/// `kill -9` leaves them behind, and the next start ends those groups
/// ([`RunningGroups::end_leftovers`]) before it recovers the release tree.
#[derive(Debug, Clone)]
pub struct RunningGroups {
    dir: PathBuf,
}

impl RunningGroups {
    /// The records under `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        RunningGroups {
            dir: state_dir.join("hooks-running"),
        }
    }

    fn record(&self, pgid: Pid) -> Option<PathBuf> {
        let path = self.dir.join(pgid.to_string());
        let written = std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&path, boot_id().unwrap_or_default()));
        match written {
            Ok(()) => Some(path),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot record a hook's process group; a restarted agent will not find it");
                None
            }
        }
    }

    /// Ends every recorded group still alive from this boot (SIGTERM, then SIGKILL
    /// after `grace`), waits until none of its processes runs, and removes the
    /// records. Returns the groups that had to be ended.
    pub fn end_leftovers(&self, grace: Duration) -> std::io::Result<Vec<i32>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let boot = boot_id().unwrap_or_default();
        let mut ended = Vec::new();
        for entry in entries {
            let path = entry?.path();
            let pgid = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<i32>().ok())
                .filter(|&n| n > 1);
            let same_boot = std::fs::read_to_string(&path).is_ok_and(|b| b == boot);
            if let Some(pgid) = pgid
                && same_boot
                && group_is_running(pgid)
            {
                end_group(Pid::from_raw(pgid), grace);
                ended.push(pgid);
            }
            std::fs::remove_file(&path)?;
        }
        Ok(ended)
    }
}

/// SIGTERM to the group, SIGKILL after `grace`, then wait until nothing in it runs.
fn end_group(pgid: Pid, grace: Duration) {
    let _ = killpg(pgid, Signal::SIGTERM);
    let step = Duration::from_millis(50);
    let mut waited = Duration::ZERO;
    while group_is_running(pgid.as_raw()) {
        if waited >= grace {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        if waited >= grace.saturating_mul(2).max(Duration::from_secs(5)) {
            tracing::error!(
                pgid = pgid.as_raw(),
                "a hook's process group survived SIGKILL"
            );
            return;
        }
        std::thread::sleep(step);
        waited += step;
    }
}

/// Whether any process of group `pgid` runs (zombies waiting for a reaper do not).
pub fn group_is_running(pgid: i32) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.filter_map(|e| e.ok()).any(|e| {
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
        let Some((_, after)) = stat.rsplit_once(')') else {
            return false;
        };
        let mut fields = after.split_whitespace();
        let state = fields.next().unwrap_or("Z");
        let pgrp = fields.nth(1).and_then(|p| p.parse::<i32>().ok());
        pgrp == Some(pgid) && state != "Z" && state != "X"
    })
}

/// This boot's id: a recorded group from an earlier boot is long gone, and its
/// number may belong to someone else now.
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// Reads `stream` to its end, keeping the last [`TAIL_LINES`] lines, each cut at
/// [`MAX_LINE_BYTES`]: a hook printing one endless line must not fill the agent's
/// memory, nor the failure message that goes back to the coordinator. Returns all
/// of the stream when `keep`, and its last non-empty line.
async fn collect(
    stream: Option<impl AsyncRead + Unpin>,
    tail: Arc<Mutex<VecDeque<String>>>,
    keep: bool,
) -> (Vec<u8>, Option<String>) {
    let Some(stream) = stream else {
        return (Vec::new(), None);
    };
    let mut last = None;
    let mut push = |line: &[u8], cut: bool| {
        let mut text = String::from_utf8_lossy(line).trim_end().to_string();
        if cut {
            text.push_str(" [line cut]");
        }
        if !text.is_empty() {
            last = Some(text.clone());
        }
        if let Ok(mut t) = tail.lock() {
            if t.len() == TAIL_LINES {
                t.pop_front();
            }
            t.push_back(text);
        }
    };
    let mut reader = BufReader::new(stream);
    let mut all = Vec::new();
    let mut line = Vec::new();
    let mut cut = false;
    loop {
        let buf = match reader.fill_buf().await {
            Ok(buf) if !buf.is_empty() => buf,
            _ => break,
        };
        let (chunk, ends_line) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let taken = chunk.len();
        if keep {
            all.extend_from_slice(chunk);
        }
        let room = MAX_LINE_BYTES.saturating_sub(line.len());
        cut |= taken > room && !(ends_line && taken == room + 1);
        line.extend_from_slice(&chunk[..taken.min(room)]);
        reader.consume(taken);
        if ends_line {
            push(&line, cut);
            line.clear();
            cut = false;
        }
    }
    if !line.is_empty() {
        push(&line, cut);
    }
    (all, last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell<'a>(command: &'a str, dir: &'a Path, timeout: Duration) -> Shell<'a> {
        Shell {
            command,
            dir,
            env: &[],
            run_as: None,
            timeout,
            groups: None,
        }
    }

    #[tokio::test]
    async fn keeps_the_last_lines_of_both_streams() {
        let dir = std::env::temp_dir();
        let done = run_shell(&shell(
            "for i in $(seq 1 30); do echo out$i; done; echo err >&2; exit 3",
            &dir,
            Duration::from_secs(30),
        ))
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
        let done = run_shell(&shell("sleep 30", &dir, Duration::from_millis(200)))
            .await
            .expect("sh runs");
        assert!(done.status.is_none());
        assert!(
            done.describe(Duration::from_millis(200))
                .contains("timed out")
        );
    }

    /// A hook printing one endless line kept all of it in memory and sent it back.
    #[tokio::test]
    async fn an_endless_output_line_is_cut() {
        let dir = std::env::temp_dir();
        let done = run_shell(&shell(
            "head -c 5000000 /dev/zero | tr '\\0' x; echo; echo after",
            &dir,
            Duration::from_secs(30),
        ))
        .await
        .expect("sh runs");
        assert!(done.success());
        assert_eq!(
            done.tail.len(),
            2,
            "{:?}",
            done.tail.iter().map(String::len).collect::<Vec<_>>()
        );
        assert!(done.tail[0].len() <= MAX_LINE_BYTES + 20);
        assert!(done.tail[0].ends_with("[line cut]"));
        assert_eq!(done.tail[1], "after");
    }

    fn pgid_of(done: &Finished) -> i32 {
        done.tail
            .iter()
            .find_map(|l| l.strip_prefix("group ").and_then(|p| p.parse().ok()))
            .expect("the hook printed its group")
    }

    /// Issue 13, hole 9: a successful hook's background children survived it
    /// (and the agent); its process group is now ended when it ends.
    #[tokio::test]
    async fn a_hooks_background_children_end_with_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let groups = RunningGroups::new(dir.path());
        let mut sh = shell(
            "sleep 300 & sleep 301 & echo group $$; exit 0",
            dir.path(),
            Duration::from_secs(30),
        );
        sh.groups = Some(&groups);
        let done = run_shell(&sh).await.expect("sh runs");
        assert!(done.success());
        let pgid = pgid_of(&done);
        // SIGKILL is sent when the hook ends; the kernel takes a moment to end
        // the processes (seen under load): wait for that, boundedly.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while group_is_running(pgid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!group_is_running(pgid), "the hook's children outlived it");
        assert_eq!(
            std::fs::read_dir(dir.path().join("hooks-running"))
                .expect("records")
                .count(),
            0,
            "the running record stays behind"
        );
    }

    /// Issue 13, hole 9: what a killed agent's hook left running is found from its
    /// record and ended at the next start, which waits until it is gone.
    #[test]
    fn a_recorded_group_left_behind_is_ended_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        use std::os::unix::process::CommandExt;
        let mut orphan = std::process::Command::new("sh")
            .args(["-c", "sleep 300 & sleep 301"])
            .process_group(0)
            .spawn()
            .expect("sh runs");
        let pgid = i32::try_from(orphan.id()).expect("pid");
        let groups = RunningGroups::new(dir.path());
        let record = groups.record(Pid::from_raw(pgid)).expect("recorded");
        assert!(group_is_running(pgid));

        let ended = groups
            .end_leftovers(Duration::from_secs(5))
            .expect("end leftovers");
        let _ = orphan.wait();
        assert_eq!(ended, vec![pgid]);
        assert!(!group_is_running(pgid), "the left-over group still runs");
        assert!(!record.exists());
        assert!(
            groups
                .end_leftovers(Duration::from_secs(5))
                .expect("again")
                .is_empty()
        );
    }

    /// Issue 13, hole 11: hooks inherited the agent's whole environment
    /// (`NOTIFY_SOCKET` under systemd, here cargo's variables); they now see the
    /// allow-list, their user and the `HANDOVER_*` values only.
    #[tokio::test]
    async fn a_hook_sees_only_the_allowed_environment() {
        let dir = std::env::temp_dir();
        let env: [(&str, &OsStr); 1] = [("HANDOVER_REV", OsStr::new("main"))];
        let mut sh = shell("env", &dir, Duration::from_secs(30));
        sh.env = &env;
        let done = run_shell(&sh).await.expect("sh runs");
        let names: Vec<&str> = done
            .tail
            .iter()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .collect();
        let allowed = |k: &&str| {
            PASSED_THROUGH.contains(k)
                || k.starts_with("HANDOVER_")
                || ["HOME", "USER", "LOGNAME", "PWD", "SHLVL", "_", "OLDPWD"].contains(k)
        };
        let leaked: Vec<&&str> = names.iter().filter(|k| !allowed(k)).collect();
        assert!(leaked.is_empty(), "leaked into the hook: {leaked:?}");
        assert!(
            names.contains(&"PATH") && names.contains(&"HANDOVER_REV"),
            "{names:?}"
        );
    }

    /// Issue 13, hole 11: a git ref may hold `$ ; | & ( )` and quotes; as a
    /// `HANDOVER_*` variable it reaches the hook as data, never as shell code,
    /// quoted or not.
    #[tokio::test]
    async fn a_ref_with_shell_characters_reaches_the_hook_as_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pwned = dir.path().join("pwned");
        let rev = format!(
            "x$(touch {p});touch${{IFS}}{p}|a&b'\"`touch {p}`",
            p = pwned.display()
        );
        let env: [(&str, &OsStr); 1] = [("HANDOVER_REV", OsStr::new(&rev))];
        let mut sh = shell(
            r#"printf 'quoted=%s\n' "$HANDOVER_REV"; echo unquoted=$HANDOVER_REV"#,
            dir.path(),
            Duration::from_secs(30),
        );
        sh.env = &env;
        let done = run_shell(&sh).await.expect("sh runs");
        assert!(done.success(), "{:?}", done.tail);
        assert!(
            done.tail.contains(&format!("quoted={rev}")),
            "{:?}",
            done.tail
        );
        assert!(!pwned.exists(), "the ref ran as shell code");
    }

    /// Issue 13, hole 3: a release's hooks run as the configured user.
    #[tokio::test]
    async fn a_command_runs_as_its_run_as_user() {
        if !Uid::effective().is_root() {
            eprintln!("skipped: only root can run a command as another user");
            return;
        }
        let nobody = RunAs::try_from("nobody".to_string()).expect("nobody exists");
        let dir = std::env::temp_dir();
        let mut sh = shell(
            "id -u; echo home=$HOME user=$USER",
            &dir,
            Duration::from_secs(30),
        );
        sh.run_as = Some(&nobody);
        let done = run_shell(&sh).await.expect("sh runs");
        assert_eq!(
            done.tail.first(),
            Some(&nobody.uid().to_string()),
            "{:?}",
            done.tail
        );
        assert!(
            done.tail.iter().any(|l| l.ends_with("user=nobody")),
            "{:?}",
            done.tail
        );
    }

    #[test]
    fn an_unknown_run_as_user_is_refused_with_the_fix() {
        let err = RunAs::try_from("no-such-user-here".to_string()).expect_err("unknown");
        assert!(err.contains("useradd"), "{err}");
    }
}
