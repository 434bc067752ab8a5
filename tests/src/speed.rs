//! Measuring a running process from outside, for the issue-14 benchmarks: its
//! resident memory and CPU time from `/proc`, and finding an agent's process
//! by the config file it was started with.

use std::path::Path;
use std::time::Duration;

/// The pid of the process whose command line names `config` (an agent started
/// with `run --config CONFIG`), if one runs.
pub fn pid_of_config(config: &Path) -> Option<u32> {
    let wanted = config.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let e = e.ok()?;
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == wanted)
            .then_some(pid)
    })
}

/// `VmRSS` of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// User + system CPU time `pid` has used so far (all its threads).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields start after its closing ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based), 12 and 13 after ')'.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(100);
    Some(Duration::from_micros(ticks * 1_000_000 / hz))
}

/// Memory and CPU of one process over a window.
#[derive(Debug, Clone, Copy)]
pub struct Footprint {
    /// `VmRSS` at the end, KiB.
    pub rss_kib: u64,
    /// CPU time used during the window.
    pub cpu: Duration,
    /// The window.
    pub window: Duration,
}

/// Watches `pid` for `window` (sleeping), sampling RSS each second; returns the
/// median RSS and the CPU time used.
pub fn watch(pid: u32, window: Duration) -> Option<Footprint> {
    let cpu0 = cpu_time(pid)?;
    let mut rss = Vec::new();
    let step = Duration::from_secs(1).min(window);
    let start = std::time::Instant::now();
    while start.elapsed() < window {
        std::thread::sleep(step);
        rss.push(rss_kib(pid)?);
    }
    rss.sort_unstable();
    Some(Footprint {
        rss_kib: rss.get(rss.len() / 2).copied().unwrap_or_default(),
        cpu: cpu_time(pid)?.saturating_sub(cpu0),
        window: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_found_measured_and_uses_cpu() {
        let me = std::process::id();
        assert!(rss_kib(me).is_some_and(|k| k > 0));
        let before = cpu_time(me).expect("cpu time");
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert!(cpu_time(me).expect("cpu time") > before);
    }
}
