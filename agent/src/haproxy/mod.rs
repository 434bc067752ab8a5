//! HAProxy runtime API on `lb` hosts (runbook steps 11, 13, 14).
//!
//! * [`runtime`]: one command per connection, answers checked.
//! * [`stats`]: `show stat` / `show info` read by header name.
//! * [`membership`]: which app host sits on which HAProxy server, kept in state_dir.
//! * [`attach`]: attach (UP only after a fresh check), detach, set state, stats.
//! * [`reconcile`]: re-applies the membership after HAProxy reloads.

pub mod attach;
pub mod membership;
pub mod reconcile;
pub mod runtime;
pub mod stats;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use handover_common::names::{BackendName, check_simple};
use handover_common::proto::lb::{LbReply, LbRequest, LbStatus};
use handover_common::proto::{Failure, FailureKind};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::Agent;
use crate::caller::{Caller, Reporter};
use membership::Membership;
use runtime::{Endpoint, Runtime};

/// `[haproxy]`: the runtime API socket and the backends this agent manages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaproxyConfig {
    /// The admin socket: a path, or `ipv4@ADDR:PORT`.
    pub socket: String,
    /// The backend app servers are attached to.
    pub backend: Option<BackendName>,
    /// Several backends (every attach goes to all of them unless one is named).
    #[serde(default)]
    pub backends: Vec<BackendName>,
    /// Servers named PREFIX + number are `server-template` slots (default `slot`).
    #[serde(default = "default_slot_prefix")]
    pub slot_prefix: String,
    /// How long attach waits for UP.
    #[serde(
        default = "default_timeout",
        with = "handover_common::duration::serde_human"
    )]
    pub attach_timeout: Duration,
    /// How long detach waits for sessions to end.
    #[serde(
        default = "default_timeout",
        with = "handover_common::duration::serde_human"
    )]
    pub detach_timeout: Duration,
    /// How often the agent looks for an HAProxy reload.
    #[serde(
        default = "default_reconcile",
        with = "handover_common::duration::serde_human"
    )]
    pub reconcile_interval: Duration,
    /// Check interval for dynamic servers (they do not inherit `default-server`).
    #[serde(default, with = "handover_common::duration::serde_human_opt")]
    pub check_inter: Option<Duration>,
    /// `rise` for dynamic servers.
    pub check_rise: Option<u32>,
    /// `fall` for dynamic servers.
    pub check_fall: Option<u32>,
}

fn default_slot_prefix() -> String {
    "slot".into()
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_reconcile() -> Duration {
    Duration::from_secs(1)
}

impl HaproxyConfig {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if let Ok(Endpoint::Unix(p)) = Endpoint::parse(&self.socket)
            && p.is_relative()
        {
            self.socket = base.join(p).display().to_string();
        }
    }

    /// Checks what serde cannot: a backend is named, the socket and prefix parse.
    pub fn validate(&self) -> anyhow::Result<()> {
        Endpoint::parse(&self.socket).map_err(|e| anyhow::anyhow!("[haproxy] socket: {e}"))?;
        if self.managed_backends().is_empty() {
            anyhow::bail!(
                "[haproxy]: name the backend app servers go into: `backend = \"web\"` or `backends = [\"web\", \"api\"]`"
            );
        }
        check_simple("slot prefix", &self.slot_prefix, 32)
            .map_err(|e| anyhow::anyhow!("[haproxy] slot_prefix: {e}"))?;
        if self.reconcile_interval < Duration::from_millis(100) {
            anyhow::bail!("[haproxy] reconcile_interval: use at least 100ms");
        }
        Ok(())
    }

    /// `backend` and `backends`, in that order, without repeats.
    pub fn managed_backends(&self) -> Vec<BackendName> {
        let mut all: Vec<BackendName> = self.backend.iter().cloned().collect();
        for b in &self.backends {
            if !all.contains(b) {
                all.push(b.clone());
            }
        }
        all
    }

    /// The runtime API client.
    pub fn runtime(&self) -> Runtime {
        // `validate` ran at load; a bad socket here still yields an honest error.
        Runtime::new(
            Endpoint::parse(&self.socket)
                .unwrap_or_else(|_| Endpoint::Unix(PathBuf::from(&self.socket))),
        )
    }
}

/// The agent's load-balancer state: the membership (loaded on first use) behind a
/// lock that every change takes, and what the reconciler has seen.
#[derive(Default)]
pub struct LbState {
    membership: Mutex<Option<Membership>>,
    reloads_seen: AtomicU64,
}

/// Everything an action needs: config, client, where the membership lives.
pub struct Lb<'a> {
    /// `[haproxy]`.
    pub config: &'a HaproxyConfig,
    /// The runtime API.
    pub runtime: Runtime,
    /// The membership file.
    pub path: PathBuf,
    state: &'a LbState,
}

impl<'a> Lb<'a> {
    /// The context for `agent`, or `NotConfigured`.
    pub fn of(agent: &'a Agent) -> Result<Self, Failure> {
        let config = agent.config.haproxy.as_ref().ok_or_else(|| {
            Failure::new(
                FailureKind::NotConfigured,
                format!(
                    "{} has no [haproxy] section: it is not a load balancer (add `[haproxy] socket = ... backend = ...` to its agent.toml)",
                    agent.config.name
                ),
            )
        })?;
        Ok(Lb {
            config,
            runtime: config.runtime(),
            path: Membership::path(&agent.config.state_dir),
            state: &agent.lb,
        })
    }

    /// Locks the membership, loading it on first use.
    pub async fn lock(&self) -> Result<MembershipGuard<'_>, Failure> {
        let mut guard = self.state.membership.lock().await;
        if guard.is_none() {
            let loaded = Membership::load(&self.path)
                .map_err(|e| Failure::new(FailureKind::Internal, e.to_string()))?;
            *guard = Some(loaded);
        }
        Ok(MembershipGuard {
            guard,
            path: &self.path,
        })
    }
}

/// The locked membership; [`MembershipGuard::save`] writes it to disk.
pub struct MembershipGuard<'a> {
    guard: tokio::sync::MutexGuard<'a, Option<Membership>>,
    path: &'a Path,
}

impl MembershipGuard<'_> {
    /// The membership.
    pub fn get(&mut self) -> &mut Membership {
        self.guard.get_or_insert_with(Membership::default)
    }

    /// Writes it (atomically) to state_dir.
    pub fn save(&mut self) -> Result<(), Failure> {
        let path = self.path.to_owned();
        self.get().save(&path).map_err(|e| {
            Failure::new(
                FailureKind::Internal,
                format!("cannot record the membership: {e}"),
            )
        })
    }
}

/// Runs an HAProxy request.
pub async fn handle(
    agent: &Arc<Agent>,
    caller: &Caller,
    req: LbRequest,
    reporter: &Reporter,
) -> Result<LbReply, Failure> {
    let lb = Lb::of(agent)?;
    tracing::info!(%caller, ?req, "lb request");
    match req {
        LbRequest::Attach {
            server,
            app,
            backend,
            timeout,
        } => attach::attach(&lb, &server, app, backend.as_ref(), timeout, reporter).await,
        LbRequest::Detach {
            server,
            force,
            timeout,
        } => attach::detach(&lb, &server, force, timeout, reporter).await,
        LbRequest::SetState {
            server,
            state,
            timeout,
        } => attach::set_state(&lb, &server, state, timeout, reporter).await,
        LbRequest::Stats { servers } => attach::stats(&lb, &servers).await,
    }
}

/// The load-balancer part of `status`.
pub async fn status(agent: &Arc<Agent>) -> Option<LbStatus> {
    let lb = Lb::of(agent).ok()?;
    let reloads_seen = agent.lb.reloads_seen.load(Ordering::Relaxed);
    let mut status = LbStatus {
        socket: lb.runtime.endpoint().to_string(),
        haproxy: None,
        error: None,
        servers: Vec::new(),
        reloads_seen,
    };
    match reconcile::read_info(&lb.runtime).await {
        Ok((_, info)) => status.haproxy = Some(info),
        Err(e) => {
            status.error = Some(e.to_string());
            return Some(status);
        }
    }
    match attach::all_servers(&lb).await {
        Ok(servers) => status.servers = servers,
        Err(e) => status.error = Some(e.message),
    }
    Some(status)
}

/// Starts the reconcile loop when `[haproxy]` is configured.
pub fn spawn_reconciler(agent: &Arc<Agent>) {
    if agent.config.haproxy.is_some() {
        tokio::spawn(reconcile::run(agent.clone()));
    }
}

fn runtime_failure(e: runtime::RuntimeError) -> Failure {
    Failure::new(FailureKind::Failed, e.to_string())
}

impl Lb<'_> {
    fn count_reload(&self) {
        self.state.reloads_seen.fetch_add(1, Ordering::Relaxed);
    }
}
