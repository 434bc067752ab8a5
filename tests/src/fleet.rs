//! One import for fleet tests, and the lock that keeps them from overlapping.
//!
//! Fleet tests start real processes on shared loopback addresses (127.0.1.N per
//! host) and compare connection counts per address, so two of them at once would
//! disturb each other. Cargo runs tests as threads of one process and test binaries
//! may run at once, hence [`serial`] takes both a process-wide mutex and an
//! exclusive `flock` on a file under `/tmp/handover-tests-ips/`.

use std::fs::File;
use std::sync::{Mutex, MutexGuard, PoisonError};

use anyhow::Context as _;
use nix::fcntl::{Flock, FlockArg};

pub use crate::apache::{Apache, ApacheOptions};
pub use crate::haproxy::{
    BackendSpec, Haproxy, HaproxyOptions, SLOT_SERVER, SLOT_SERVER_IP_ONLY, ServerStat,
    is_up_status, parse_show_stat, runtime_at,
};
pub use crate::http::{Conn, Response, get};
pub use crate::monitor::{UpMonitor, UpReport, Violation};
pub use crate::ports::{established_connections, free_tcp_port, free_udp_port, host_ip};
pub use crate::traffic::{HeldConnection, Traffic, TrafficOptions, TrafficReport, hold_connection};
pub use crate::workdir::{Workdir, stray_processes};

/// Directory of the cross-process lock file.
pub const LOCK_DIR: &str = "/tmp/handover-tests-ips";

static SERIAL: Mutex<()> = Mutex::new(());

/// Held while a fleet test runs; dropping it lets the next one start.
#[derive(Debug)]
pub struct SerialGuard {
    _flock: Option<Flock<File>>,
    _guard: MutexGuard<'static, ()>,
}

/// Blocks until no other fleet test (in this process or another test binary) runs.
///
/// A test that panicked poisons the mutex; that is ignored on purpose, since its
/// processes were killed by the drops during unwinding. If the lock file cannot be
/// used (read-only /tmp), only the in-process mutex is taken.
pub fn serial() -> SerialGuard {
    let guard = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let flock = lock_file().ok();
    SerialGuard {
        _flock: flock,
        _guard: guard,
    }
}

fn lock_file() -> anyhow::Result<Flock<File>> {
    std::fs::create_dir_all(LOCK_DIR).with_context(|| format!("mkdir {LOCK_DIR}"))?;
    let path = format!("{LOCK_DIR}/fleet.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {path}"))?;
    Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| anyhow::anyhow!("flock {path}: {e}"))
}
