//! [`Balancer`]: the one owner of this host's HAProxy — its runtime socket and the
//! membership (which app host sits on which HAProxy server, kept in state_dir).
//! The request modules ([`super::attach`], [`super::detach`], [`super::state`],
//! [`super::stats`]) and the reconciler ask it; it is the only code that sends
//! runtime API commands or touches the membership file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use handover_common::names::{BackendName, HostName};
use handover_common::proto::lb::{HaproxyInfo, ServerKind, ServerState, ServerStats};
use handover_common::proto::{Failure, FailureKind};
use tokio::sync::Mutex;

use super::config::HaproxyConfig;
use super::membership::{Member, Membership};
use super::runtime::{Command, Runtime, RuntimeError, cmd};
use super::show::{ProcessId, Stat, parse_info, parse_stat};
use crate::Agent;

/// How often waits read `show stat`.
pub const POLL: Duration = Duration::from_millis(100);

/// What the agent keeps about its load balancer between requests: the membership
/// (loaded on first use) behind the lock every change takes, and how many reloads
/// the reconciler has seen.
#[derive(Default)]
pub struct LbState {
    membership: Mutex<Option<Membership>>,
    reloads_seen: AtomicU64,
}

impl LbState {
    /// Reloads the agent noticed and re-applied the membership after.
    pub fn reloads_seen(&self) -> u64 {
        self.reloads_seen.load(Ordering::Relaxed)
    }
}

/// This host's HAProxy, as one request or the reconciler sees it.
pub struct Balancer<'a> {
    /// `[haproxy]`.
    pub config: &'a HaproxyConfig,
    runtime: Runtime,
    path: PathBuf,
    state: &'a LbState,
}

impl<'a> Balancer<'a> {
    /// The load balancer `agent` manages, or `NotConfigured`.
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
        Ok(Balancer {
            config,
            runtime: config.runtime(),
            path: Membership::path(&agent.config.state_dir),
            state: &agent.lb,
        })
    }

    /// The runtime API endpoint, for reports.
    pub fn endpoint(&self) -> String {
        self.runtime.endpoint().to_string()
    }

    /// Counts a reload the reconciler re-applied the membership after.
    pub fn count_reload(&self) {
        self.state.reloads_seen.fetch_add(1, Ordering::Relaxed);
    }

    /// Locks the membership, loading it on first use. Every change holds this lock
    /// from reading HAProxy to recording the result.
    pub async fn members(&self) -> Result<Members<'_>, Failure> {
        let mut guard = self.state.membership.lock().await;
        if guard.is_none() {
            let loaded = Membership::load(&self.path)
                .map_err(|e| Failure::new(FailureKind::Internal, e.to_string()))?;
            *guard = Some(loaded);
        }
        Ok(Members {
            guard,
            path: &self.path,
        })
    }

    /// Reads `show stat`.
    pub async fn read_stat(&self) -> Result<Stat, Failure> {
        let text = self.send(cmd::show_stat()).await?;
        parse_stat(&text).map_err(|e| Failure::new(FailureKind::Failed, e.to_string()))
    }

    /// Reads `show info`: which process serves, and its version.
    pub async fn read_info(&self) -> Result<(ProcessId, HaproxyInfo), Failure> {
        let text = self.send(cmd::show_info()).await?;
        parse_info(&text).map_err(|e| Failure::new(FailureKind::Failed, e.to_string()))
    }

    /// The stats of `host`'s servers in every backend it is a member of.
    pub async fn stats_of_host(&self, host: &HostName) -> Result<Vec<ServerStats>, Failure> {
        let mut members = self.members().await?;
        let stat = self.read_stat().await?;
        Ok(members.get().stats_of_host(&stat, host))
    }

    /// Makes HAProxy carry `member` in `backend` as recorded: a slot pointed at the
    /// app's address, a dynamic server added unless `present`, then the admin state
    /// (ready only through a fresh check).
    pub async fn apply(
        &self,
        backend: &str,
        member: &Member,
        present: bool,
    ) -> Result<(), Failure> {
        let bs = server_path(backend, &member.haproxy_name);
        match (member.kind, present) {
            // A config line keeps its own address and check settings.
            (ServerKind::Config, _) | (ServerKind::Dynamic, true) => {}
            (ServerKind::Dynamic, false) => {
                let args = self.config.check_args();
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                self.send(cmd::add_server(&bs, member.app, &args)).await?;
                self.send(cmd::enable_health(&bs)).await?;
            }
            _ => {
                self.send(cmd::set_addr(&bs, member.app.ip(), member.app.port()))
                    .await?;
                self.send(cmd::enable_health(&bs)).await?;
            }
        }
        match member.state {
            ServerState::Ready => self.make_check_fresh(&bs).await,
            other => self.set_admin_state(&bs, other).await,
        }
    }

    /// Adopts `host`'s plain config server in every managed backend where it is
    /// not a member yet ([`super::adopt`]), recording it before anything else
    /// happens to it. HAProxy is not changed.
    pub fn adopt(
        &self,
        members: &mut Members<'_>,
        stat: &Stat,
        host: &HostName,
        app: Option<std::net::SocketAddr>,
    ) -> Result<(), Failure> {
        for backend in self.config.managed_backends() {
            let backend = backend.as_str();
            if let Some(member) =
                super::adopt::find(self.config, stat, members.get(), backend, host, app)?
            {
                tracing::info!(%host, backend, haproxy_name = %member.haproxy_name, app = %member.app, state = member.state.as_str(), "adopted a server of haproxy.cfg");
                members.get().insert(backend, host.clone(), member);
                members.save()?;
            }
        }
        Ok(())
    }

    /// `set server B/S state ...` as it is: from maintenance, `ready` reads UP at
    /// once without a check (use [`Self::make_check_fresh`] for that).
    pub async fn set_admin_state(&self, bs: &str, state: ServerState) -> Result<(), Failure> {
        self.send(cmd::set_state(bs, state.as_str()))
            .await
            .map(drop)
    }

    /// Drain, `health down`, ready: the server reads DOWN until checks that ran
    /// after this change pass (see "UP must mean a fresh health check passed").
    pub async fn make_check_fresh(&self, bs: &str) -> Result<(), Failure> {
        for command in cmd::fresh_check(bs).map_err(runtime_failure)? {
            self.run(&command).await?;
        }
        Ok(())
    }

    /// `shutdown sessions server B/S`.
    pub async fn cut_sessions(&self, bs: &str) -> Result<(), Failure> {
        self.send(cmd::shutdown_sessions(bs)).await.map(drop)
    }

    /// `del server`, retried until HAProxy lets go of the server's connections or
    /// `deadline` passes. A server already gone counts as deleted.
    pub async fn delete_when_idle(
        &self,
        bs: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(), Failure> {
        let command = cmd::del_server(bs).map_err(runtime_failure)?;
        loop {
            match self.runtime.run(&command).await {
                Ok(_) => return Ok(()),
                Err(e) if e.answer().is_some_and(|a| a.contains("No such server")) => {
                    return Ok(());
                }
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(Failure::new(
                        FailureKind::Timeout,
                        format!(
                            "{bs} is in maintenance but could not be deleted: {e}; it serves no new requests — run detach again later"
                        ),
                    ));
                }
                Err(_) => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// The backends a request is about: the named one (which must be managed) or all.
    pub fn target_backends(
        &self,
        backend: Option<&BackendName>,
    ) -> Result<Vec<BackendName>, Failure> {
        let managed = self.config.managed_backends();
        match backend {
            None => Ok(managed),
            Some(b) if managed.contains(b) => Ok(vec![b.clone()]),
            Some(b) => Err(Failure::new(
                FailureKind::BadRequest,
                format!(
                    "backend {b} is not managed by this agent (managed: {}): name one of those, or add it to `[haproxy] backends`",
                    managed
                        .iter()
                        .map(BackendName::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    async fn send(&self, command: Result<Command, RuntimeError>) -> Result<String, Failure> {
        self.run(&command.map_err(runtime_failure)?).await
    }

    async fn run(&self, command: &Command) -> Result<String, Failure> {
        self.runtime.run(command).await.map_err(runtime_failure)
    }
}

/// The locked membership; [`Members::save`] writes it to disk.
pub struct Members<'a> {
    guard: tokio::sync::MutexGuard<'a, Option<Membership>>,
    path: &'a Path,
}

impl Members<'_> {
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

/// `backend/server`, as the runtime API names a server.
pub fn server_path(backend: &str, server: &str) -> String {
    format!("{backend}/{server}")
}

fn runtime_failure(e: RuntimeError) -> Failure {
    Failure::new(FailureKind::Failed, e.to_string())
}
