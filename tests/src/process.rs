//! Child processes that cannot outlive the test that started them.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// How long a child gets after SIGTERM before its whole process group is SIGKILLed.
///
/// Long enough for Apache to reap its workers, short enough that a broken test does
/// not hang the suite.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// A spawned child in its own process group.
///
/// The own group matters because Apache forks workers (running as www-data) and
/// HAProxy may leave helpers: on drop we signal the leader gently, then kill the
/// whole group so nothing survives even if the leader died uncleanly.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    name: String,
    /// The fleet lock, held for as long as the process may run.
    _serial: crate::fleet::SerialGuard,
}

impl ChildGuard {
    /// Spawns `cmd` in a new process group with stdout and stderr appended to `log`.
    /// Takes the fleet lock first (see [`crate::fleet`]).
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt as _;
        let serial = crate::fleet::serial();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        let err = out.try_clone().context("dup log file")?;
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {name}: {cmd:?}"))?;
        Ok(Self {
            child,
            name: name.to_owned(),
            _serial: serial,
        })
    }

    /// The child's pid (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn nix_pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX))
    }

    /// `Some(status)` once the child has exited; never blocks.
    pub fn exited(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("wait for {}", self.name))
    }

    /// Waits up to `timeout` for the child to exit on its own.
    pub fn wait_exit(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.exited()? {
                return Ok(Some(st));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` to the leader only.
    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        kill(self.nix_pid(), sig).with_context(|| format!("kill -{sig} {}", self.name))
    }

    /// SIGTERM, wait, then SIGKILL the whole group. Idempotent.
    pub fn stop(&mut self) {
        if matches!(self.exited(), Ok(None)) {
            let _ = kill(self.nix_pid(), Signal::SIGTERM);
            let _ = self.wait_exit(TERM_GRACE);
        }
        // Mop up the group even if the leader is gone: workers may linger.
        let _ = killpg(self.nix_pid(), Signal::SIGKILL);
        if matches!(self.exited(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `max` bytes of a log file, for error messages.
pub fn log_tail(path: &Path, max: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(max);
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// The command lines (arguments joined by spaces) of the processes on this
/// machine whose command line contains `needle`: what a test started that is
/// still running, found by a path only it uses.
pub fn command_lines_containing(needle: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            e.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(needle).then_some(cmdline)
        })
        .collect()
}
