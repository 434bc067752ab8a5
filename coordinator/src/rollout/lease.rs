//! One rollout, one coordinator process. Two guards keep it so:
//!
//! - on the bastion, the running process holds an exclusive lock (flock) on
//!   `state_dir/locks/ID.lock`, so a second `handover` there is refused at once;
//!   the kernel drops the lock when the process dies, however it dies;
//! - on every host the rollout touches, the agent's lease, taken with a random
//!   token made by this process and renewed by it: the same rollout id from another
//!   process (another bastion, a copied journal) is refused, naming the holder.
//!
//! A coordinator killed mid-way leaves leases that expire by themselves. Its own
//! bastion can prove it gone at once — its lock is free and its pid is not running —
//! so a plain `resume` there takes the leases straight over. Elsewhere, `--takeover`
//! waits for the leases to expire and `--break-lease` breaks them.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use handover_common::proto::lease::{LeaseHolder, LeaseInfo, LeaseReply, LeaseRequest};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::HostEntry;
use crate::fleet::{Call, Fleet, calls};

/// How long a lease lives without renewal.
const TTL: Duration = Duration::from_secs(60);
/// How often it is renewed.
const RENEW_EVERY: Duration = Duration::from_secs(15);
/// `--takeover` waits at most this long for a holder's leases to expire; a holder
/// that renews for longer than this is alive.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(2 * 60 + 15);

/// What to do when another process holds the rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeover {
    /// Refuse, naming the holder (the default).
    Refuse,
    /// Wait until the holder is provably gone (`--takeover`).
    Wait,
    /// Break its leases now (`--break-lease`).
    Break,
}

/// The bastion's host name, as lease holders are named.
pub fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Who runs this process: the user sudo or the login named, else the name of
/// the process's uid in /etc/passwd (a cron job or a service has no `USER`).
pub fn operator() -> String {
    let named = ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|u| !u.is_empty() && !u.chars().any(char::is_control));
    named.unwrap_or_else(user_of_uid)
}

/// "alice@bastion-1": who runs this process, as journals and locks name them.
pub fn who() -> String {
    format!("{}@{}", operator(), this_host())
}

/// This process's user name from /etc/passwd, or `uid N`.
fn user_of_uid() -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return "unknown".into();
    };
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                (fields.nth(1)? == uid.to_string()).then(|| name.to_owned())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// Whether process `pid` runs on this host.
fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// This coordinator process as a lease holder, with its secret token.
#[derive(Clone)]
pub struct Process {
    /// How agents and other coordinators see it.
    pub holder: LeaseHolder,
    token: String,
}

impl Process {
    /// This process, running with certificate `name`.
    pub fn this(name: &str) -> anyhow::Result<Self> {
        let user = Some(operator());
        let mut bytes = [0u8; 16];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .context("cannot read /dev/urandom for the lease token")?;
        Ok(Process {
            holder: LeaseHolder {
                name: name.to_owned(),
                user,
                host: this_host(),
                pid: std::process::id(),
            },
            token: bytes.iter().map(|b| format!("{b:02x}")).collect(),
        })
    }

    /// "ops (alice@bastion-1)": who ran a rollout, for the journal.
    pub fn owner(&self) -> String {
        let h = &self.holder;
        match &h.user {
            Some(user) => format!("{} ({user}@{})", h.name, h.host),
            None => format!("{} ({})", h.name, h.host),
        }
    }

    /// Whether `lease` is this rollout's, held by a process of this bastion that
    /// no longer runs. Only asked while this process holds the rollout's local
    /// lock, so no live process of this bastion can be running it.
    fn proves_gone(&self, rollout: &str, lease: &LeaseInfo) -> bool {
        lease.rollout == rollout
            && lease.holder.host == self.holder.host
            && lease.holder.pid != self.holder.pid
            && !pid_alive(lease.holder.pid)
    }
}

/// The bastion-local guard: held by the one process running a rollout.
pub struct RolloutLock {
    _file: File,
}

/// Another process of this bastion holds the rollout.
#[derive(Debug, thiserror::Error)]
#[error(
    "rollout {rollout} is running in another handover process on this bastion (pid {pid}, lock {}): wait for it, or `handover resume --takeover {rollout}` to carry on once it exits",
    path.display()
)]
pub struct LockHeld {
    /// The rollout.
    pub rollout: String,
    /// The holding process, as it wrote itself into the lock file.
    pub pid: String,
    /// The lock file.
    pub path: PathBuf,
}

impl RolloutLock {
    fn open(state_dir: &Path, rollout: &str) -> anyhow::Result<(File, PathBuf)> {
        let dir = state_dir.join("locks");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(format!("{rollout}.lock"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok((file, path))
    }

    fn hold(mut file: File) -> anyhow::Result<Self> {
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        Ok(RolloutLock { _file: file })
    }

    /// Takes the lock for `rollout`, or says which process holds it.
    pub fn try_take(state_dir: &Path, rollout: &str) -> anyhow::Result<Result<Self, LockHeld>> {
        let (mut file, path) = Self::open(state_dir, rollout)?;
        match file.try_lock() {
            Ok(()) => Ok(Ok(Self::hold(file)?)),
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                Ok(Err(LockHeld {
                    rollout: rollout.to_owned(),
                    pid: pid.trim().to_string(),
                    path,
                }))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
    }

    /// Waits until the process holding the lock for `rollout` exits, then takes it.
    pub async fn wait(state_dir: &Path, rollout: &str) -> anyhow::Result<Self> {
        let (file, path) = Self::open(state_dir, rollout)?;
        let file = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
            .await
            .context("waiting for the rollout lock")?
            .with_context(|| format!("cannot lock {}", path.display()))?;
        Self::hold(file)
    }
}

/// Leases held on a set of hosts; renewed in the background until released.
pub struct Leases {
    fleet: Arc<Fleet>,
    hosts: Vec<HostEntry>,
    rollout: String,
    process: Process,
    renewer: JoinHandle<()>,
    lost: watch::Receiver<Option<String>>,
}

fn acquire(rollout: &str, process: &Process, break_existing: bool) -> Call<LeaseReply> {
    calls::lease(LeaseRequest::Acquire {
        rollout: rollout.to_owned(),
        holder: process.holder.clone(),
        token: process.token.clone(),
        ttl_secs: TTL.as_secs(),
        break_existing,
    })
}

/// One round of acquire calls, sorted by answer.
#[derive(Default)]
struct Round {
    held: Vec<HostEntry>,
    /// Hosts whose lease someone else holds: the holder, and the agent's clock.
    refused: Vec<(HostEntry, LeaseInfo, u64)>,
    failed: Vec<String>,
}

async fn round(fleet: &Fleet, hosts: &[HostEntry], rollout: &str, p: &Process, brk: bool) -> Round {
    let mut r = Round::default();
    for (host, result) in fleet
        .ask_each(hosts, |_: &HostEntry| acquire(rollout, p, brk))
        .await
    {
        match result {
            Ok(LeaseReply::Held(_)) => r.held.push(host),
            Ok(LeaseReply::Refused { lease, now_unix }) => {
                r.refused.push((host, lease, now_unix));
            }
            Ok(other) => r
                .failed
                .push(format!("{}: unexpected answer {other:?}", host.name)),
            Err(e) => r.failed.push(format!("{}: {e}", host.name)),
        }
    }
    r
}

/// Renews every lease, one host after the other (a background task: no hurry);
/// returns the holders if another process has taken any over.
async fn renew(fleet: &Fleet, hosts: &[HostEntry], rollout: &str, p: &Process) -> Option<String> {
    let mut refused = Vec::new();
    for host in hosts {
        match fleet.ask(host, acquire(rollout, p, false), |_| {}).await {
            Ok(LeaseReply::Held(_)) => {}
            Ok(LeaseReply::Refused { lease, now_unix }) => {
                refused.push((host.clone(), lease, now_unix));
            }
            Ok(other) => {
                tracing::warn!(host = %host.name, answer = ?other, "lease renewal: unexpected answer")
            }
            Err(e) => tracing::warn!(host = %host.name, error = %e, "lease renewal failed"),
        }
    }
    (!refused.is_empty()).then(|| refusals(&refused))
}

/// "web-1, web-2: held by rollout R, run by ...; web-3: held by ...": the hosts
/// one holder holds named together (a whole fleet is usually held by one
/// rollout), each holder with its lease that expires last.
fn refusals(refused: &[(HostEntry, LeaseInfo, u64)]) -> String {
    let mut groups: Vec<(Vec<&str>, &LeaseInfo, u64)> = Vec::new();
    for (host, lease, now) in refused {
        let same = |g: &&mut (Vec<&str>, &LeaseInfo, u64)| {
            g.1.rollout == lease.rollout && g.1.holder == lease.holder
        };
        match groups.iter_mut().find(same) {
            Some(group) => {
                group.0.push(host.name.as_str());
                if lease.expires_unix.saturating_sub(*now)
                    > group.1.expires_unix.saturating_sub(group.2)
                {
                    (group.1, group.2) = (lease, *now);
                }
            }
            None => groups.push((vec![host.name.as_str()], lease, *now)),
        }
    }
    groups
        .iter()
        .map(|(hosts, lease, now)| {
            format!("{}: held by {}", hosts.join(", "), lease.describe(*now))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl Leases {
    /// Takes the lease on every host, or none: on a refusal that `takeover` does
    /// not resolve, the leases already taken are given back and the holders named.
    /// `notice` hears how a holder was dealt with (proved gone, waited for, broken).
    pub async fn take(
        fleet: Arc<Fleet>,
        hosts: Vec<HostEntry>,
        rollout: &str,
        process: Process,
        takeover: Takeover,
        notice: &(dyn Fn(&str) + Sync),
    ) -> anyhow::Result<Self> {
        let waited_since = tokio::time::Instant::now();
        let mut brk = false;
        loop {
            let r = round(&fleet, &hosts, rollout, &process, brk).await;
            if !r.failed.is_empty() || (brk && !r.refused.is_empty()) {
                release_on(&fleet, &r.held, rollout, &process).await;
                let mut why = r.failed;
                if !r.refused.is_empty() {
                    why.push(refusals(&r.refused));
                }
                bail!(
                    "cannot take the rollout lease, nothing was changed: {}",
                    why.join("; ")
                );
            }
            if r.refused.is_empty() {
                return Ok(Self::hold(fleet, hosts, rollout, process));
            }
            let holders = refusals(&r.refused);
            if r.refused
                .iter()
                .all(|(_, l, _)| process.proves_gone(rollout, l))
            {
                notice(&format!(
                    "taking over the lease: its process is gone from this bastion ({holders})"
                ));
                brk = true;
                continue;
            }
            match takeover {
                Takeover::Break => {
                    notice(&format!("breaking the lease (--break-lease): {holders}"));
                    brk = true;
                }
                Takeover::Wait if waited_since.elapsed() < TAKEOVER_LIMIT => {
                    notice(&format!(
                        "waiting for the lease to expire (its process renews it while it runs): {holders}"
                    ));
                    let expires = r
                        .refused
                        .iter()
                        .map(|(_, l, now)| l.expires_unix.saturating_sub(*now));
                    let wait = expires.max().unwrap_or(1).clamp(1, 5);
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                }
                Takeover::Wait => {
                    release_on(&fleet, &r.held, rollout, &process).await;
                    bail!(
                        "cannot take the rollout lease, nothing was changed: still renewed after {}s, so its process runs: {holders}; stop it first, or pass --break-lease",
                        TAKEOVER_LIMIT.as_secs()
                    );
                }
                Takeover::Refuse => {
                    release_on(&fleet, &r.held, rollout, &process).await;
                    let hint = if r.refused.iter().any(|(_, l, _)| l.rollout == rollout) {
                        "the rollout is running in another coordinator process: let it finish, or `handover resume --takeover` waits until that process is gone"
                    } else {
                        "another rollout runs on these hosts: wait for it to end, or pass --break-lease if its coordinator is gone"
                    };
                    bail!("cannot take the rollout lease, nothing was changed: {holders} ({hint})");
                }
            }
        }
    }

    fn hold(fleet: Arc<Fleet>, hosts: Vec<HostEntry>, rollout: &str, process: Process) -> Self {
        let (lost_tx, lost) = watch::channel(None);
        let renewer = {
            let fleet = fleet.clone();
            let hosts = hosts.clone();
            let rollout = rollout.to_owned();
            let process = process.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(RENEW_EVERY).await;
                    if let Some(holders) = renew(&fleet, &hosts, &rollout, &process).await {
                        let _ = lost_tx.send(Some(format!(
                            "another coordinator process took its lease over ({holders}); this one touches nothing more, the new holder carries on"
                        )));
                        return;
                    }
                }
            })
        };
        Leases {
            fleet,
            hosts,
            rollout: rollout.to_owned(),
            process,
            renewer,
            lost,
        }
    }

    /// Resolves with why (naming the new holders) if another process takes a lease over.
    pub fn lost(&self) -> watch::Receiver<Option<String>> {
        self.lost.clone()
    }

    /// Stops renewing and gives every lease back.
    pub async fn release(self) {
        self.renewer.abort();
        release_on(&self.fleet, &self.hosts, &self.rollout, &self.process).await;
    }
}

async fn release_on(fleet: &Fleet, hosts: &[HostEntry], rollout: &str, process: &Process) {
    let results = fleet
        .ask_each(hosts, |_| {
            calls::lease(LeaseRequest::Release {
                rollout: rollout.to_owned(),
                token: process.token.clone(),
            })
        })
        .await;
    for (host, result) in results {
        if let Err(e) = result {
            tracing::warn!(host = %host.name, error = %e, "lease release failed; it expires by itself");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(rollout: &str, host: &str, pid: u32) -> LeaseInfo {
        LeaseInfo {
            rollout: rollout.into(),
            holder: LeaseHolder {
                name: "ops".into(),
                user: None,
                host: host.into(),
                pid,
            },
            acquired_unix: 0,
            renewed_unix: 0,
            expires_unix: 60,
        }
    }

    fn entry(name: &str) -> HostEntry {
        let text = format!(
            "ca = \"a\"\ncert = \"b\"\nkey = \"c\"\nstate_dir = \"d\"\n[[hosts]]\nname = \"{name}\"\naddress = \"127.0.1.1:7443\"\nroles = [\"app\"]\n"
        );
        let config: crate::config::CoordinatorConfig = toml::from_str(&text).expect("inventory");
        config.hosts.iter().next().expect("a host").clone()
    }

    #[test]
    fn a_refusal_names_the_hosts_of_one_holder_together() {
        let mut later = lease("r-1", "bastion-1", 42);
        later.expires_unix = 90;
        let refused = [
            (entry("web-1"), lease("r-1", "bastion-1", 42), 10),
            (entry("web-2"), later, 10),
            (entry("db-1"), lease("r-2", "bastion-2", 7), 10),
        ];
        assert_eq!(
            refusals(&refused),
            "web-1, web-2: held by rollout r-1, run by ops (on bastion-1, pid 42): taken 10s ago, renewed 10s ago, expires in 80s; \
             db-1: held by rollout r-2, run by ops (on bastion-2, pid 7): taken 10s ago, renewed 10s ago, expires in 50s"
        );
    }

    #[test]
    fn only_a_dead_process_of_this_bastion_on_the_same_rollout_is_proved_gone() {
        let me = Process::this("ops").expect("process");
        let host = me.holder.host.clone();
        // A pid that cannot run: above the kernel's pid_max limit.
        let dead = 4_194_305;
        assert!(me.proves_gone("r-1", &lease("r-1", &host, dead)));
        // Alive (this very test's parent shell is not needed: pid 1 always runs).
        assert!(!me.proves_gone("r-1", &lease("r-1", &host, 1)));
        // Another bastion: its pids mean nothing here.
        assert!(!me.proves_gone("r-1", &lease("r-1", "elsewhere", dead)));
        // Another rollout is never ours to take.
        assert!(!me.proves_gone("r-1", &lease("r-2", &host, dead)));
    }

    #[test]
    fn a_second_process_is_refused_the_lock_and_names_the_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = RolloutLock::try_take(dir.path(), "r-1")
            .expect("lock")
            .expect("free");
        let held = RolloutLock::try_take(dir.path(), "r-1")
            .expect("lock")
            .err()
            .expect("held");
        assert_eq!(held.pid, std::process::id().to_string());
        assert!(held.to_string().contains("--takeover r-1"), "{held}");
        drop(first);
        assert!(
            RolloutLock::try_take(dir.path(), "r-1")
                .expect("lock")
                .is_ok()
        );
    }
}
