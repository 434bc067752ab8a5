//! Drain (runbook steps 12–13): take this host out of HAProxy's rotation by
//! removing its health-check file, then watch its sessions end.
//!
//! One job per module: [`health`] moves the file, [`sessions`] counts established
//! connections on the app port, [`apache`] reads mod_status, [`wait`] samples
//! them until the host is idle and pushes each sample to the caller. This module
//! holds the config sections and turns requests into those steps.

pub mod apache;
pub mod cli;
pub mod health;
pub mod sessions;
pub mod wait;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use handover_common::proto::drain::{
    DrainProgress, DrainReply, DrainRequest, DrainStatus, DrainWait, STAYS_DRAINED, SessionReading,
    UNDRAINED_DURING_WAIT, ZERO_TIMEOUT,
};
use handover_common::proto::{Failure, FailureKind};
use serde::Deserialize;

use crate::Agent;
use crate::caller::{Caller, Reporter};
use health::{Change, HealthFile};

/// `[health]`: the file HAProxy's health check fetches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// The health-check file, e.g. `/var/www/html/health.html`.
    pub file: PathBuf,
}

impl HealthConfig {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if self.file.is_relative() {
            self.file = base.join(&self.file);
        }
    }
}

/// `[app]`: the app server whose sessions are counted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// The app server's socket, "ADDR:PORT" (`0.0.0.0:80` = port 80 on any address).
    pub listen: SocketAddr,
    /// Apache mod_status, e.g. `http://127.0.0.1/server-status?auto`.
    pub status_url: Option<apache::StatusUrl>,
    /// A drain is done after this long with no session (default 300ms).
    #[serde(
        default = "default_quiet_period",
        with = "handover_common::duration::serde_human"
    )]
    pub quiet_period: Duration,
    /// The app server's error log, watched during a bake (see [`crate::applog`]).
    #[serde(default = "crate::applog::default_error_log")]
    pub error_log: PathBuf,
    /// A line of `error_log` holding one of these (plain substrings) is an error;
    /// by default Apache's error levels.
    #[serde(default = "crate::applog::default_error_patterns")]
    pub error_patterns: Vec<String>,
}

impl AppConfig {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if self.error_log.is_relative() {
            self.error_log = base.join(&self.error_log);
        }
    }
}

fn default_quiet_period() -> Duration {
    Duration::from_millis(300)
}

fn health_file(agent: &Agent) -> Result<HealthFile, Failure> {
    let config = agent.config.health.as_ref().ok_or_else(|| {
        Failure::new(
            FailureKind::NotConfigured,
            format!(
                "{} has no [health] section: add `[health] file = \"/var/www/html/health.html\"` \
                 (the file HAProxy's check fetches) to its agent config",
                agent.config.name
            ),
        )
    })?;
    Ok(HealthFile::new(&config.file, &agent.config.state_dir))
}

fn app_config(agent: &Agent) -> Result<&AppConfig, Failure> {
    agent.config.app.as_ref().ok_or_else(|| {
        Failure::new(
            FailureKind::NotConfigured,
            format!(
                "{} has no [app] section, so its sessions cannot be counted: add \
                 `[app] listen = \"ADDR:PORT\"` (the app server's socket) to its agent config",
                agent.config.name
            ),
        )
    })
}

fn failed(e: impl std::fmt::Display) -> Failure {
    Failure::new(FailureKind::Failed, e.to_string())
}

/// Runs a drain request.
pub async fn handle(
    agent: &Arc<Agent>,
    caller: &Caller,
    req: DrainRequest,
    reporter: &Reporter,
) -> Result<DrainReply, Failure> {
    match req {
        DrainRequest::Drain { wait } => {
            let health = health_file(agent)?;
            // Check everything the wait needs before touching the file.
            let plan = match &wait {
                Some(w) => Some(wait_plan(app_config(agent)?, w, &health)?),
                None => None,
            };
            let already = remove_health_check_file(&health, caller)?;
            let waited = match plan {
                None => None,
                Some(plan) => Some(wait_until_idle(agent, &plan, reporter).await?),
            };
            Ok(DrainReply::Drained {
                already,
                waited,
                status: status_report(agent).await,
            })
        }
        DrainRequest::Undrain => {
            let health = health_file(agent)?;
            let change = health.undrain().map_err(failed)?;
            if change == Change::Done {
                tracing::info!(%caller, file = %health.path().display(), "health-check file restored: host back in rotation");
            }
            Ok(DrainReply::Undrained {
                already: change == Change::Already,
                status: status_report(agent).await,
            })
        }
        DrainRequest::Sessions => Ok(DrainReply::Sessions(status_report(agent).await)),
    }
}

/// Step 12: HAProxy's check now gets 404 and sends no new sessions.
fn remove_health_check_file(health: &HealthFile, caller: &Caller) -> Result<bool, Failure> {
    let change = health.drain().map_err(failed)?;
    if change == Change::Done {
        tracing::info!(%caller, file = %health.path().display(), saved = %health.saved_path().display(), "health-check file removed: host drained");
    }
    Ok(change == Change::Already)
}

fn wait_plan(
    app: &AppConfig,
    wait: &DrainWait,
    health: &HealthFile,
) -> Result<wait::WaitPlan, Failure> {
    if wait.timeout.is_zero() {
        return Err(Failure::new(FailureKind::BadRequest, ZERO_TIMEOUT));
    }
    Ok(wait::WaitPlan {
        listen: app.listen,
        status_url: app.status_url.clone(),
        timeout: wait.timeout,
        quiet: wait.quiet.unwrap_or(app.quiet_period),
        exempt: wait.exempt.clone(),
        health: Some(health.clone()),
    })
}

/// Step 13: returns how long it took, or a Timeout failure naming every holder.
async fn wait_until_idle(
    agent: &Agent,
    plan: &wait::WaitPlan,
    reporter: &Reporter,
) -> Result<Duration, Failure> {
    match wait::wait_for_sessions_to_end(plan, reporter).await {
        wait::WaitEnd::Idle { waited } => Ok(waited),
        wait::WaitEnd::TimedOut(last) => Err(Failure::new(
            FailureKind::Timeout,
            describe_timeout(agent.config.name.as_str(), plan, &last),
        )),
        wait::WaitEnd::Undrained => Err(Failure::new(FailureKind::Failed, UNDRAINED_DURING_WAIT)),
        wait::WaitEnd::CallerGone => Err(Failure::new(
            FailureKind::Failed,
            "the caller went away; stopped waiting (the host stays drained)",
        )),
        wait::WaitEnd::CannotCount(e) => Err(Failure::new(
            FailureKind::Failed,
            format!("{e}. {STAYS_DRAINED}"),
        )),
    }
}

/// "web-1 still has 1 session after 2s, held by 127.0.0.1 (1 connection); …"
pub fn describe_timeout(host: &str, plan: &wait::WaitPlan, last: &DrainProgress) -> String {
    let after = handover_common::duration::format(plan.timeout);
    let mut text = if last.blocking == 0 {
        format!(
            "{host} had no session left but not yet for the quiet period ({} of {}) when {after} ran out",
            handover_common::duration::format(last.quiet_for),
            handover_common::duration::format(last.quiet),
        )
    } else {
        let plural = if last.blocking == 1 { "" } else { "s" };
        let holders: Vec<String> = last
            .sessions
            .holders
            .iter()
            .filter(|h| !plan.exempt.iter().any(|e| e.to_canonical() == h.remote))
            .map(|h| h.to_string())
            .collect();
        format!(
            "{host} still has {} session{plural} on {} after {after}, held by {}",
            last.blocking,
            plan.listen,
            holders.join(", ")
        )
    };
    if let Some(busy) = last
        .apache
        .as_ref()
        .and_then(|a| a.figures())
        .and_then(|f| f.busy_workers)
    {
        text.push_str(&format!("; Apache busy workers: {busy}"));
    }
    text.push_str(". ");
    text.push_str(STAYS_DRAINED);
    text
}

async fn status_report(agent: &Agent) -> DrainStatus {
    let (drained, missing, health_file) = match health_file(agent) {
        Ok(h) => {
            let drained = h.is_drained().ok();
            (
                drained,
                drained == Some(true) && never_saved(&h),
                Some(h.path().display().to_string()),
            )
        }
        Err(_) => (None, false, None),
    };
    let (sessions, apache) = match &agent.config.app {
        None => (None, None),
        Some(app) => {
            let sessions = match wait::count_sessions(app.listen).await {
                Ok(count) => SessionReading::Counted(count),
                Err(e) => SessionReading::Unavailable(e),
            };
            let apache = match &app.status_url {
                Some(url) => Some(wait::read_apache(url).await),
                None => None,
            };
            (Some(sessions), apache)
        }
    };
    DrainStatus {
        drained,
        missing,
        health_file,
        sessions,
        apache,
    }
}

/// The file is absent but no drain saved it: it never existed, or someone
/// removed it by hand. `undrain` cannot bring it back, so it is not "drained".
fn never_saved(health: &HealthFile) -> bool {
    matches!(
        std::fs::symlink_metadata(health.saved_path()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound
    )
}

/// The drain part of `status`: `None` when neither `[health]` nor `[app]` is set.
pub async fn status(agent: &Arc<Agent>) -> Option<DrainStatus> {
    if agent.config.health.is_none() && agent.config.app.is_none() {
        return None;
    }
    Some(status_report(agent).await)
}
