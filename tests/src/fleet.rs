//! One import for fleet tests, and the lock that keeps them from overlapping.
//!
//! Fleet tests start real processes on shared loopback addresses (127.0.1.N per
//! host) and compare connection counts per address, so two of them at once would
//! disturb each other. Cargo runs tests as threads of one process and test binaries
//! may run at once, hence [`serial`] takes an exclusive `flock` on a file under
//! `/tmp/handover-tests-ips/` (a flock is per open file, so it also keeps threads of
//! one process apart).
//!
//! The lock is taken in one place: every process the harness starts
//! ([`crate::process::ChildGuard`] for Apache and HAProxy,
//! [`crate::agents::AgentProcess`]) holds a [`SerialGuard`], and the fleet builders
//! ([`crate::scenario::Scenario`], [`crate::agents::OneHost`]) take it before their
//! first step. A test never calls [`serial`] itself, so none can forget it. The
//! lock is re-entrant within a thread: the test that holds it starts as many
//! processes as it likes, and it is released when the last of them is dropped.

use std::fs::File;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::ThreadId;

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

/// The parts every hand-built fleet shares: the fleet lock (taken first, before
/// any address or port is chosen), a directory others can enter, a private CA;
/// agents and a coordinator config made from them. [`crate::scenario::Scenario`]
/// is the whole fleet ready for a rollout; this is for tests that need fewer or
/// other parts (one agent, an LB without app agents...).
pub struct Fleet {
    /// The fleet's CA (`pki/` in [`Fleet::path`]).
    pub pki: crate::agents::Pki,
    dir: Workdir,
    _serial: SerialGuard,
}

impl Fleet {
    /// Takes the fleet lock, makes the directory and the CA.
    pub fn new() -> anyhow::Result<Self> {
        let serial = serial();
        let dir = Workdir::new()?;
        let pki = crate::agents::Pki::init(&dir.path().join("pki"))?;
        Ok(Fleet {
            pki,
            dir,
            _serial: serial,
        })
    }

    /// The fleet's directory.
    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Starts agent `name` on `ip` with `sections` (under `name/` here).
    pub fn agent(
        &self,
        name: &str,
        ip: std::net::Ipv4Addr,
        sections: &crate::config::AgentSections,
    ) -> anyhow::Result<crate::agents::AgentProcess> {
        crate::agents::AgentProcess::start(
            self.path(),
            &self.pki,
            crate::agents::AgentSpec {
                name,
                ip,
                extra: sections.render(),
            },
        )
    }

    /// A coordinator config `ops/handover.toml` for `hosts`, with its own
    /// certificate `ops`.
    pub fn coordinator(
        &self,
        hosts: &[crate::agents::HostSpec],
    ) -> anyhow::Result<crate::agents::Coordinator> {
        crate::agents::Coordinator::write(&self.path().join("ops"), &self.pki, "ops", hosts)
    }
}

/// One agent (`web-1`, no app) and a coordinator config naming it: for tests of
/// the agent's own surface (QUIC, certificates, config errors).
pub struct OneAgent {
    /// The agent.
    pub agent: crate::agents::AgentProcess,
    /// The coordinator config.
    pub coordinator: crate::agents::Coordinator,
    /// Its directory and CA.
    pub fleet: Fleet,
}

impl OneAgent {
    /// Starts `web-1` on `ip` with `sections`.
    pub fn start(
        ip: std::net::Ipv4Addr,
        sections: &crate::config::AgentSections,
    ) -> anyhow::Result<Self> {
        let fleet = Fleet::new()?;
        let agent = fleet.agent("web-1", ip, sections)?;
        let coordinator = fleet.coordinator(&[crate::agents::HostSpec::of(&agent, &["app"])])?;
        Ok(OneAgent {
            agent,
            coordinator,
            fleet,
        })
    }
}

/// Directory of the cross-process lock file.
pub const LOCK_DIR: &str = "/tmp/handover-tests-ips";

/// The lock as this process holds it: the flock, shared by every guard.
#[derive(Debug)]
struct Held {
    flock: Option<Flock<File>>,
}

/// Which threads of this process hold the lock (the test's own thread, and any
/// thread it handed its guard to with [`SerialGuard::share_with_current_thread`]).
struct Owner {
    threads: Vec<ThreadId>,
    held: Weak<Held>,
}

static OWNER: Mutex<Option<Owner>> = Mutex::new(None);

/// Set in a helper process that a fleet test starts while it holds the lock (the
/// test provider, which the coordinator runs to launch hosts): that process works
/// for the holder, so taking the flock again would wait for itself forever.
static HELD_BY_PARENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Declares this process a helper of a test that already holds the fleet lock
/// (see [`HELD_BY_PARENT`]): [`serial`] then returns at once.
pub fn lock_held_by_parent() {
    HELD_BY_PARENT.store(true, std::sync::atomic::Ordering::SeqCst);
}
static RELEASED: Condvar = Condvar::new();

/// Held while a fleet test runs; the lock is free again once every clone of it
/// (one per running process, one per builder) is dropped.
#[derive(Debug, Clone)]
pub struct SerialGuard {
    held: Arc<Held>,
}

/// Blocks until no other fleet test (in this process or another test binary) runs;
/// returns at once when this thread already holds the lock.
///
/// A test that panicked poisons nothing here: its processes were killed by the
/// drops during unwinding, which released the lock. If the lock file cannot be used
/// (read-only /tmp), only the in-process lock is taken.
pub fn serial() -> SerialGuard {
    if HELD_BY_PARENT.load(std::sync::atomic::Ordering::SeqCst) {
        return SerialGuard {
            held: Arc::new(Held { flock: None }),
        };
    }
    let me = std::thread::current().id();
    let mut owner = lock_owner();
    // No `Arc<Held>` may be dropped in this loop: dropping the last one takes
    // OWNER, which this thread holds here.
    loop {
        let busy = match owner.as_ref() {
            Some(o) if o.held.strong_count() > 0 => {
                if o.threads.contains(&me)
                    && let Some(held) = o.held.upgrade()
                {
                    return SerialGuard { held };
                }
                true
            }
            _ => false,
        };
        if !busy {
            break;
        }
        owner = RELEASED.wait(owner).unwrap_or_else(PoisonError::into_inner);
    }
    // Free in this process: wait for other processes (the flock blocks).
    let held = Arc::new(Held {
        flock: lock_file().ok(),
    });
    *owner = Some(Owner {
        threads: vec![me],
        held: Arc::downgrade(&held),
    });
    SerialGuard { held }
}

impl SerialGuard {
    /// Lets the current thread (one a test spawned) start fleet processes under
    /// this guard; without it, such a thread would wait for the test to end.
    pub fn share_with_current_thread(&self) {
        let mut owner = lock_owner();
        if let Some(o) = owner.as_mut()
            && Weak::ptr_eq(&o.held, &Arc::downgrade(&self.held))
        {
            o.threads.push(std::thread::current().id());
        }
    }
}

impl Drop for Held {
    /// Releases the flock first (a thread of this process may be blocked on it
    /// while holding [`OWNER`]), then wakes the threads waiting in [`serial`].
    fn drop(&mut self) {
        drop(self.flock.take());
        let mut owner = lock_owner();
        if owner.as_ref().is_some_and(|o| o.held.strong_count() == 0) {
            *owner = None;
        }
        RELEASED.notify_all();
    }
}

fn lock_owner() -> MutexGuard<'static, Option<Owner>> {
    OWNER.lock().unwrap_or_else(PoisonError::into_inner)
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::serial;

    /// The thread that holds the lock takes it again at once (a fleet builder and
    /// each process it starts); another thread gets it only once every guard of
    /// the first is gone, and the first's last drop does not deadlock.
    #[test]
    fn the_lock_is_reentrant_in_its_thread_and_exclusive_across_threads() {
        let order = Mutex::new(Vec::new());
        let first = serial();
        let again = serial();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let _mine = serial();
                order.lock().expect("order").push("other thread has it");
            });
            std::thread::sleep(std::time::Duration::from_millis(100));
            order.lock().expect("order").push("first releases it");
            drop(first);
            drop(again);
        });
        assert_eq!(
            *order.lock().expect("order"),
            ["first releases it", "other thread has it"]
        );
        // Free again: this thread takes it anew.
        drop(serial());
    }
}
