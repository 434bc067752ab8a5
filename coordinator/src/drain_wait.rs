//! Runbook step 13, "wait for sessions to end", judged where the sessions are
//! counted: by every load balancer as well as by the host (DESIGN.md, "Sessions
//! are counted where they are").
//!
//! A host is drained and idle when, at the same moment:
//! - its agent saw no *direct* connection (one not from an LB's source address)
//!   for the quiet period: the agent's own wait, with the LBs' addresses passed as
//!   [`DrainWait::exempt`] because HAProxy keeps idle server connections pooled
//!   and those carry no session;
//! - every LB reads scur 0 and qcur 0 for the host's servers: no request in flight;
//! - the servers' stot has not risen for the quiet period: HAProxy's scur reads 0
//!   between two requests of a client pinned by the persistence cookie, so a
//!   rising stot is the only sign that such clients are still coming.
//!
//! An LB that cannot be read is "not known to be idle", never zero. The decision
//! is [`host_is_idle`] over [`IdleEvidence`]; [`what_holds`] says why not. The
//! CLI (`handover drain --wait`) and the rollout engine both call
//! [`wait_for_sessions_to_end`].
//!
//! The agent's wait ends when the host looks idle, but the LBs may still see
//! pinned clients arriving; their requests come over pooled LB connections the
//! agent is told to ignore. Then the coordinator keeps polling the LBs and, once
//! they are idle, asks the agent for one more quiet period, so that both verdicts
//! hold together rather than one after the other.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use handover_common::duration;
use handover_common::names::{HostName, HostRole};
use handover_common::proto::drain::{DrainProgress, DrainReply, DrainRequest, DrainWait, Holder};
use handover_common::proto::{FailureKind, Progress, Reply, Request};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{CoordinatorConfig, HostEntry};
use crate::fleet::{Fleet, FleetError};
use crate::lb::{LbView, lb_view};

/// How often the LBs' `show stat` is read during a wait.
pub const LB_POLL: Duration = Duration::from_millis(200);
/// How long past the agent's own timeout the coordinator waits for its answer.
const ANSWER_GRACE: Duration = Duration::from_secs(15);
/// The agents' default `[app] quiet_period`, used for the LBs' stot until the
/// agent says which quiet period it waits for.
const DEFAULT_QUIET: Duration = Duration::from_millis(300);

/// How a wait is bounded.
#[derive(Debug, Clone, Copy)]
pub struct WaitOptions {
    /// Give up after this long (hosts stay drained).
    pub timeout: Duration,
    /// Idle = nothing for this long; `None` takes each agent's `quiet_period`.
    pub quiet: Option<Duration>,
}

/// Why a wait could not start. Nothing was sent to any host.
#[derive(Debug, thiserror::Error)]
pub enum DrainWaitError {
    /// An LB's source address is unknown, so its pooled connections would hold
    /// every drain.
    #[error(
        "cannot tell which address load balancer {lb} connects to app servers from: {why}; set `source = [\"ADDR\"]` in its [[hosts]] entry"
    )]
    LbSource {
        /// The LB.
        lb: HostName,
        /// What failed.
        why: String,
    },
    /// A zero timeout cannot be waited on.
    #[error("a drain wait needs a timeout above zero (e.g. --timeout 5m)")]
    ZeroTimeout,
    /// A timeout past the clock's range.
    #[error(transparent)]
    BeyondClock(#[from] duration::BeyondClock),
}

/// One of the host's servers in one LB, as watched during the wait.
#[derive(Debug, Clone, PartialEq)]
pub struct LbServer {
    /// The LB.
    pub lb: HostName,
    /// The backend.
    pub backend: String,
    /// HAProxy's server (`slot3`, or the host name for dynamic servers).
    pub server: String,
    /// HAProxy's status text (NOLB while drained by the health check).
    pub status: String,
    /// Requests in flight.
    pub scur: u64,
    /// Requests queued.
    pub qcur: u64,
    /// Sessions so far.
    pub stot: u64,
    /// New sessions since the wait first read this server.
    pub arrived: u64,
    /// How long stot has not changed (since the first read, if it never did).
    pub steady_for: Duration,
}

/// What the LBs said about one host at the last poll.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LbEvidence {
    /// Its servers, in every LB that answered.
    pub servers: Vec<LbServer>,
    /// LBs that could not be read, and why.
    pub unreadable: Vec<(HostName, String)>,
}

/// Everything known about one host's remaining sessions, for [`host_is_idle`].
#[derive(Debug, Clone, Copy)]
pub struct IdleEvidence<'a> {
    /// The agent saw no blocking session for its quiet period and said so.
    pub agent_idle: bool,
    /// The agent's last sample, if any.
    pub last: Option<&'a DrainProgress>,
    /// Addresses whose connections are the LBs' (reported, not blocking).
    pub exempt: &'a [IpAddr],
    /// The LBs' figures for this host.
    pub lbs: &'a LbEvidence,
    /// The quiet period the LBs' stot must stay still for.
    pub quiet: Duration,
}

/// One reason a host is not idle yet.
#[derive(Debug, Clone, PartialEq)]
pub enum Hold {
    /// Connections on the host that do not come from an LB.
    Direct {
        /// By remote address.
        holders: Vec<Holder>,
        /// How many.
        count: u32,
    },
    /// No direct connection, but not yet for the quiet period (or no sample yet).
    HostNotQuiet {
        /// How long there has been none.
        quiet_for: Duration,
        /// The quiet period.
        quiet: Duration,
    },
    /// Requests still arriving through an LB: stot rose within the quiet period.
    Arriving(LbServer),
    /// Requests in flight or queued in an LB.
    InFlight(LbServer),
    /// The health-check file is back (undrained during the wait): HAProxy sends
    /// new clients again.
    Undrained,
    /// An LB could not be read: not known to be idle.
    LbUnknown {
        /// The LB.
        lb: HostName,
        /// Why.
        why: String,
    },
}

impl Hold {
    /// A label that stays the same while the hold does (no changing figures):
    /// what plain-line output prints a new line for.
    pub fn label(&self) -> String {
        match self {
            Hold::Direct { holders, .. } => format!(
                "direct {}",
                holders
                    .iter()
                    .map(|h| h.remote.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Hold::HostNotQuiet { .. } => "host-quiet".into(),
            Hold::Undrained => "undrained".into(),
            Hold::Arriving(s) => format!("arriving {}:{}/{}", s.lb, s.backend, s.server),
            Hold::InFlight(s) => format!("in-flight {}:{}/{}", s.lb, s.backend, s.server),
            Hold::LbUnknown { lb, .. } => format!("unknown {lb}"),
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hold::Direct { holders, count } => {
                let plural = if *count == 1 { "" } else { "s" };
                let who: Vec<String> = holders.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "{count} direct connection{plural} (not through a load balancer) from {}",
                    who.join(", ")
                )
            }
            Hold::HostNotQuiet { quiet_for, quiet } => write!(
                f,
                "no direct connection, but only for {} of the {} quiet period",
                secs(*quiet_for),
                secs(*quiet)
            ),
            Hold::Arriving(s) if s.arrived == 0 => write!(
                f,
                "{} at {}/{} watched for {} only, not yet a quiet period",
                s.lb,
                s.backend,
                s.server,
                secs(s.steady_for)
            ),
            Hold::Arriving(s) => write!(
                f,
                "requests still arriving through {} at {}/{} ({}): {} new session{} during the wait, the last {} ago — clients pinned by the persistence cookie keep coming to a draining server",
                s.lb,
                s.backend,
                s.server,
                s.status,
                s.arrived,
                if s.arrived == 1 { "" } else { "s" },
                secs(s.steady_for)
            ),
            Hold::InFlight(s) => write!(
                f,
                "{} request{} in flight and {} queued through {} at {}/{}",
                s.scur,
                if s.scur == 1 { "" } else { "s" },
                s.qcur,
                s.lb,
                s.backend,
                s.server
            ),
            Hold::Undrained => f.write_str(
                "the health-check file is back (undrained during the wait): HAProxy sends it new clients again",
            ),
            Hold::LbUnknown { lb, why } => write!(
                f,
                "load balancer {lb} could not be read, so it is not known to be idle: {why}"
            ),
        }
    }
}

/// Why the host is not idle; empty when it is.
pub fn what_holds(e: &IdleEvidence<'_>) -> Vec<Hold> {
    let mut holds = Vec::new();
    match e.last {
        Some(p) if p.blocking > 0 => holds.push(Hold::Direct {
            holders: direct_holders(p, e.exempt),
            count: p.blocking,
        }),
        Some(p) if !e.agent_idle => holds.push(Hold::HostNotQuiet {
            quiet_for: p.quiet_for,
            quiet: p.quiet,
        }),
        None if !e.agent_idle => holds.push(Hold::HostNotQuiet {
            quiet_for: Duration::ZERO,
            quiet: e.quiet,
        }),
        _ => {}
    }
    if e.last.is_some_and(|p| !p.drained) {
        holds.push(Hold::Undrained);
    }
    for (lb, why) in &e.lbs.unreadable {
        holds.push(Hold::LbUnknown {
            lb: lb.clone(),
            why: why.clone(),
        });
    }
    for s in &e.lbs.servers {
        if s.scur > 0 || s.qcur > 0 {
            holds.push(Hold::InFlight(s.clone()));
        }
        if s.steady_for < e.quiet {
            holds.push(Hold::Arriving(s.clone()));
        }
    }
    holds
}

/// The one decision "this host is drained and idle".
pub fn host_is_idle(evidence: &IdleEvidence<'_>) -> bool {
    evidence.agent_idle && what_holds(evidence).is_empty()
}

/// The holders of a sample that are not LBs.
pub fn direct_holders(p: &DrainProgress, exempt: &[IpAddr]) -> Vec<Holder> {
    p.sessions
        .holders
        .iter()
        .filter(|h| !exempt.iter().any(|e| e.to_canonical() == h.remote))
        .cloned()
        .collect()
}

/// The addresses the LBs connect to app servers from: each `lb` host's `source`,
/// or the IP of its `address`.
pub async fn exempt_addresses(config: &CoordinatorConfig) -> Result<Vec<IpAddr>, DrainWaitError> {
    let mut all = Vec::new();
    for lb in config.with_role(HostRole::Lb) {
        if !lb.source.is_empty() {
            all.extend(lb.source.iter().map(IpAddr::to_canonical));
            continue;
        }
        all.extend(address_ips(&lb).await?);
    }
    all.sort();
    all.dedup();
    Ok(all)
}

async fn address_ips(lb: &HostEntry) -> Result<Vec<IpAddr>, DrainWaitError> {
    if let Ok(addr) = lb.address.parse::<SocketAddr>() {
        return Ok(vec![addr.ip().to_canonical()]);
    }
    if let Ok(ip) = lb.address.parse::<IpAddr>() {
        return Ok(vec![ip.to_canonical()]);
    }
    let target = if lb.address.contains(':') {
        lb.address.clone()
    } else {
        format!("{}:{}", lb.address, handover_common::DEFAULT_PORT)
    };
    let ips: Vec<IpAddr> = tokio::net::lookup_host(&target)
        .await
        .map_err(|e| DrainWaitError::LbSource {
            lb: lb.name.clone(),
            why: format!("address {:?} does not resolve ({e})", lb.address),
        })?
        .map(|a| a.ip().to_canonical())
        .collect();
    if ips.is_empty() {
        return Err(DrainWaitError::LbSource {
            lb: lb.name.clone(),
            why: format!("address {:?} resolves to nothing", lb.address),
        });
    }
    Ok(ips)
}

/// Shown to the caller after every agent sample and every LB poll.
#[derive(Debug)]
pub struct HostProgress<'a> {
    /// The host.
    pub host: &'a HostName,
    /// The agent's last sample.
    pub agent: Option<&'a DrainProgress>,
    /// The LBs' last figures.
    pub lbs: &'a LbEvidence,
    /// What still holds it.
    pub holds: &'a [Hold],
    /// Time since the wait began.
    pub elapsed: Duration,
}

/// How one host's wait ended.
#[derive(Debug, Clone)]
pub enum HostResult {
    /// Drained and idle by the host and every LB.
    Idle {
        /// The health-check file was already removed before this wait.
        already: bool,
        /// How long it took.
        waited: Duration,
    },
    /// The timeout ran out; the host stays drained.
    TimedOut {
        /// What held it at the end.
        holds: Vec<Hold>,
        /// The agent's own account, when its wait was the one that ran out
        /// (names the direct connections and Apache's busy workers).
        agent_message: Option<String>,
    },
    /// Anything else (agent unreachable, no `[health]`...).
    Failed(String),
}

/// One host after the wait.
#[derive(Debug, Clone)]
pub struct HostDrained {
    /// The host.
    pub host: HostEntry,
    /// How it ended.
    pub result: HostResult,
    /// The agent's last sample.
    pub last: Option<DrainProgress>,
    /// The LBs' last figures.
    pub lbs: LbEvidence,
}

impl HostDrained {
    /// Whether it is drained and idle.
    pub fn is_idle(&self) -> bool {
        matches!(self.result, HostResult::Idle { .. })
    }

    /// What a timeout says: every hold (LBs by name and server, direct
    /// connections by address, Apache's busy workers) and that the host stays
    /// drained.
    pub fn timeout_text(&self, timeout: Duration) -> Option<String> {
        let HostResult::TimedOut {
            holds,
            agent_message,
        } = &self.result
        else {
            return None;
        };
        let name = &self.host.name;
        let mut parts: Vec<String> = holds
            .iter()
            .filter(|h| {
                // The agent's message already names the direct connections.
                agent_message.is_none()
                    || !matches!(h, Hold::Direct { .. } | Hold::HostNotQuiet { .. })
            })
            .map(ToString::to_string)
            .collect();
        if let Some(m) = agent_message {
            parts.push(m.clone());
            return Some(format!(
                "{name} is still in use after {}: {}",
                duration::format(timeout),
                parts.join("; ")
            ));
        }
        if parts.is_empty() {
            parts.push("the load balancers went idle just as the time ran out".into());
        }
        if let Some(busy) = self
            .last
            .as_ref()
            .and_then(|p| p.apache.as_ref())
            .and_then(|a| a.figures())
            .and_then(|f| f.busy_workers)
        {
            parts.push(format!("Apache busy workers: {busy}"));
        }
        Some(format!(
            "{name} is still in use after {}: {}. The host stays drained (health-check file removed): wait again with a longer --timeout, or put it back in service with `undrain`",
            duration::format(timeout),
            parts.join("; ")
        ))
    }
}

/// Every host's end.
#[derive(Debug, Clone)]
pub struct DrainOutcome {
    /// In the order asked.
    pub hosts: Vec<HostDrained>,
}

impl DrainOutcome {
    /// Whether every host is drained and idle.
    pub fn all_idle(&self) -> bool {
        self.hosts.iter().all(HostDrained::is_idle)
    }
}

/// Where one host's wait stands.
struct HostWait {
    host: HostEntry,
    last: Option<DrainProgress>,
    lbs: LbEvidence,
    /// The last agent round ended with the host idle.
    agent_idle: bool,
    /// An agent round is running.
    running: bool,
    already: Option<bool>,
    result: Option<HostResult>,
}

/// stot as first seen, as last seen, and when it last changed.
struct StotTrack {
    first: u64,
    last: u64,
    changed_at: Instant,
}

type RoundFuture<'a> = Pin<Box<dyn Future<Output = (usize, Result<Reply, FleetError>)> + 'a>>;

/// Removes each host's health-check file (if not yet removed) and waits until
/// the host and every LB say it is idle, or `options.timeout` runs out (hosts
/// stay drained either way). `on_progress` sees every agent sample and LB poll.
///
/// Errors only when the wait cannot start (nothing was sent); per-host failures
/// and timeouts are in the [`DrainOutcome`].
pub async fn wait_for_sessions_to_end(
    fleet: &Fleet,
    config: &CoordinatorConfig,
    hosts: &[HostEntry],
    options: WaitOptions,
    on_progress: &mut dyn FnMut(&HostProgress<'_>),
) -> Result<DrainOutcome, DrainWaitError> {
    if options.timeout.is_zero() {
        return Err(DrainWaitError::ZeroTimeout);
    }
    let exempt = exempt_addresses(config).await?;
    let lbs = config.with_role(HostRole::Lb);
    let started = Instant::now();
    let deadline = started
        .checked_add(options.timeout)
        .ok_or(duration::BeyondClock::new("drain wait", options.timeout))?;
    let names: Vec<HostName> = hosts.iter().map(|h| h.name.clone()).collect();
    let mut waits: Vec<HostWait> = hosts
        .iter()
        .map(|h| HostWait {
            host: h.clone(),
            last: None,
            lbs: LbEvidence {
                servers: Vec::new(),
                unreadable: lbs
                    .iter()
                    .map(|lb| (lb.name.clone(), "no answer yet".to_string()))
                    .collect(),
            },
            agent_idle: false,
            running: false,
            already: None,
            result: None,
        })
        .collect();

    let (progress_tx, mut progress_rx) = mpsc::unbounded_channel::<(usize, DrainProgress)>();
    let round = |i: usize, remaining: Duration| -> RoundFuture<'_> {
        let host = &hosts[i];
        let tx = progress_tx.clone();
        let request = Request::Drain(DrainRequest::Drain {
            wait: Some(DrainWait {
                timeout: remaining,
                quiet: options.quiet,
                exempt: exempt.clone(),
            }),
        });
        Box::pin(async move {
            let call = fleet.call(host, request, move |p| {
                if let Progress::Drain(p) = p {
                    let _ = tx.send((i, p));
                }
            });
            let limit = remaining + ANSWER_GRACE;
            let result = tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
                Err(FleetError::Connection(format!(
                    "no answer within {} (the agent's timeout plus {})",
                    duration::format(limit),
                    duration::format(ANSWER_GRACE)
                )))
            });
            (i, result)
        })
    };
    let mut rounds: FuturesUnordered<RoundFuture<'_>> = FuturesUnordered::new();
    for (i, w) in waits.iter_mut().enumerate() {
        w.running = true;
        rounds.push(round(i, options.timeout));
    }

    let (view_tx, mut view_rx) = mpsc::channel::<LbView>(1);
    let poller = async {
        if lbs.is_empty() {
            // Nothing to judge by but the hosts.
            let _ = view_tx.send(LbView::default()).await;
            return std::future::pending::<()>().await;
        }
        loop {
            let view = lb_view(fleet, config, &names).await;
            if view_tx.send(view).await.is_err() {
                return std::future::pending::<()>().await;
            }
            tokio::time::sleep(LB_POLL).await;
        }
    };
    tokio::pin!(poller);
    let mut tracks: BTreeMap<(HostName, HostName, String, String), StotTrack> = BTreeMap::new();
    let mut deadline_passed = false;

    let quiet_of = |w: &HostWait| {
        options
            .quiet
            .or(w.last.as_ref().map(|p| p.quiet))
            .unwrap_or(DEFAULT_QUIET)
    };
    let evidence = |w: &'_ HostWait, exempt: &'_ [IpAddr]| -> Vec<Hold> {
        what_holds(&IdleEvidence {
            agent_idle: w.agent_idle,
            last: w.last.as_ref(),
            exempt,
            lbs: &w.lbs,
            quiet: quiet_of(w),
        })
    };
    let show = |w: &HostWait, on_progress: &mut dyn FnMut(&HostProgress<'_>), holds: &[Hold]| {
        on_progress(&HostProgress {
            host: &w.host.name,
            agent: w.last.as_ref(),
            lbs: &w.lbs,
            holds,
            elapsed: started.elapsed(),
        });
    };

    while waits.iter().any(|w| w.result.is_none()) {
        tokio::select! {
            Some((i, p)) = progress_rx.recv() => {
                if let Some(w) = waits.get_mut(i) {
                    w.last = Some(p);
                    let holds = evidence(w, &exempt);
                    show(w, on_progress, &holds);
                }
            }
            Some((i, result)) = rounds.next(), if !rounds.is_empty() => {
                // Samples sent before the answer come first.
                while let Ok((j, p)) = progress_rx.try_recv() {
                    if let Some(w) = waits.get_mut(j) {
                        w.last = Some(p);
                    }
                }
                let Some(w) = waits.get_mut(i) else { continue };
                w.running = false;
                match result {
                    Ok(Reply::Drain(DrainReply::Drained { already, waited: Some(_), .. })) => {
                        w.already.get_or_insert(already);
                        w.agent_idle = true;
                        if evidence(w, &exempt).is_empty() {
                            w.result = Some(HostResult::Idle {
                                already: w.already.unwrap_or(already),
                                waited: started.elapsed(),
                            });
                        } else if deadline_passed {
                            w.result = Some(HostResult::TimedOut {
                                holds: evidence(w, &exempt),
                                agent_message: None,
                            });
                        }
                        // Otherwise the next LB poll decides whether to ask again.
                    }
                    Ok(other) => {
                        w.result = Some(HostResult::Failed(format!("unexpected answer to drain: {other:?}")));
                    }
                    Err(FleetError::Agent(f)) if f.kind == FailureKind::Timeout => {
                        w.agent_idle = false;
                        w.result = Some(HostResult::TimedOut {
                            holds: evidence(w, &exempt),
                            agent_message: Some(f.message),
                        });
                    }
                    Err(e) => w.result = Some(HostResult::Failed(e.to_string())),
                }
            }
            Some(view) = view_rx.recv() => {
                let now = Instant::now();
                for (i, w) in waits.iter_mut().enumerate() {
                    if w.result.is_some() {
                        continue;
                    }
                    w.lbs = judge_view(&view, &w.host.name, &mut tracks, now);
                    let holds = evidence(w, &exempt);
                    show(w, on_progress, &holds);
                    if w.agent_idle && !w.running {
                        let lbs_idle = holds.is_empty();
                        let remaining = deadline.saturating_duration_since(now);
                        if lbs_idle && !remaining.is_zero() {
                            // The LBs went idle after the agent did: one more
                            // quiet period on the host, so both hold together.
                            w.agent_idle = false;
                            w.running = true;
                            rounds.push(round(i, remaining));
                        } else if remaining.is_zero() {
                            w.result = Some(HostResult::TimedOut { holds, agent_message: None });
                        }
                    }
                }
            }
            () = tokio::time::sleep_until(deadline), if !deadline_passed => {
                deadline_passed = true;
                for w in waits.iter_mut().filter(|w| w.result.is_none() && !w.running) {
                    w.result = Some(HostResult::TimedOut {
                        holds: evidence(w, &exempt),
                        agent_message: None,
                    });
                }
            }
            () = &mut poller => {}
        }
    }
    Ok(DrainOutcome {
        hosts: waits
            .into_iter()
            .map(|w| HostDrained {
                host: w.host,
                result: w.result.unwrap_or_else(|| {
                    HostResult::Failed("the wait ended without a result".into())
                }),
                last: w.last,
                lbs: w.lbs,
            })
            .collect(),
    })
}

/// The LBs' figures for `host` from one poll, with stot tracked across polls.
fn judge_view(
    view: &LbView,
    host: &HostName,
    tracks: &mut BTreeMap<(HostName, HostName, String, String), StotTrack>,
    now: Instant,
) -> LbEvidence {
    let mut evidence = LbEvidence::default();
    let Some(by_lb) = view.hosts.get(host) else {
        return evidence;
    };
    for (lb, reading) in by_lb {
        let servers = match reading {
            Ok(servers) => servers,
            Err(why) => {
                evidence.unreadable.push((lb.clone(), why.clone()));
                continue;
            }
        };
        for s in servers {
            let key = (
                host.clone(),
                lb.clone(),
                s.backend.clone(),
                s.haproxy_name.clone(),
            );
            let track = tracks.entry(key).or_insert(StotTrack {
                first: s.stot,
                last: s.stot,
                changed_at: now,
            });
            if track.last != s.stot {
                track.last = s.stot;
                track.changed_at = now;
            }
            evidence.servers.push(LbServer {
                lb: lb.clone(),
                backend: s.backend.clone(),
                server: s.haproxy_name.clone(),
                status: s.status.clone(),
                scur: s.scur,
                qcur: s.qcur,
                stot: s.stot,
                arrived: s.stot.saturating_sub(track.first),
                steady_for: now.saturating_duration_since(track.changed_at),
            });
        }
    }
    evidence
}

#[cfg(test)]
mod tests {
    use super::*;
    use handover_common::proto::drain::SessionCount;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn name(s: &str) -> HostName {
        HostName::new(s.to_owned()).expect("valid name")
    }

    fn sample(holders: &[(&str, u32)], blocking: u32) -> DrainProgress {
        DrainProgress {
            sessions: SessionCount {
                total: holders.iter().map(|h| h.1).sum(),
                holders: holders
                    .iter()
                    .map(|(ip, n)| Holder {
                        remote: ip.parse().expect("literal address"),
                        connections: *n,
                    })
                    .collect(),
                source: "test".into(),
            },
            blocking,
            apache: None,
            elapsed: ms(400),
            quiet_for: ms(300),
            quiet: ms(300),
            drained: true,
        }
    }

    fn server(scur: u64, arrived: u64, steady_for: Duration) -> LbServer {
        LbServer {
            lb: name("lb-1"),
            backend: "be_app".into(),
            server: "slot1".into(),
            status: "NOLB".into(),
            scur,
            qcur: 0,
            stot: 100 + arrived,
            arrived,
            steady_for,
        }
    }

    fn judge(agent_idle: bool, last: &DrainProgress, lbs: &LbEvidence) -> Vec<Hold> {
        let exempt: Vec<IpAddr> = vec!["10.0.0.2".parse().expect("literal")];
        what_holds(&IdleEvidence {
            agent_idle,
            last: Some(last),
            exempt: &exempt,
            lbs,
            quiet: ms(300),
        })
    }

    #[test]
    fn idle_needs_the_host_and_every_lb() {
        let quiet = LbEvidence {
            servers: vec![server(0, 5, ms(400))],
            unreadable: vec![],
        };
        // Pooled LB connections are reported but do not hold.
        let pooled = sample(&[("10.0.0.2", 4)], 0);
        assert!(judge(true, &pooled, &quiet).is_empty());
        let exempt: Vec<IpAddr> = vec!["10.0.0.2".parse().expect("literal")];
        assert!(host_is_idle(&IdleEvidence {
            agent_idle: true,
            last: Some(&pooled),
            exempt: &exempt,
            lbs: &quiet,
            quiet: ms(300),
        }));
        // The agent has not said so yet.
        assert!(matches!(
            judge(false, &pooled, &quiet)[..],
            [Hold::HostNotQuiet { .. }]
        ));
    }

    #[test]
    fn a_direct_connection_holds_and_is_named_by_address() {
        let lbs = LbEvidence::default();
        let p = sample(&[("10.0.0.2", 3), ("192.0.2.7", 1)], 1);
        let holds = judge(false, &p, &lbs);
        assert_eq!(holds.len(), 1, "{holds:?}");
        let text = holds[0].to_string();
        assert!(text.contains("192.0.2.7 (1 connection)"), "{text}");
        assert!(
            !text.contains("10.0.0.2"),
            "LB connections are not direct: {text}"
        );
    }

    #[test]
    fn pinned_clients_arriving_or_requests_in_flight_hold() {
        let p = sample(&[], 0);
        let arriving = LbEvidence {
            servers: vec![server(0, 12, ms(100))],
            unreadable: vec![],
        };
        let holds = judge(true, &p, &arriving);
        assert!(matches!(holds[..], [Hold::Arriving(_)]), "{holds:?}");
        let text = holds[0].to_string();
        assert!(text.contains("lb-1 at be_app/slot1"), "{text}");
        assert!(text.contains("12 new sessions"), "{text}");

        let in_flight = LbEvidence {
            servers: vec![server(2, 0, ms(5000))],
            unreadable: vec![],
        };
        let holds = judge(true, &p, &in_flight);
        assert!(matches!(holds[..], [Hold::InFlight(_)]), "{holds:?}");
        assert!(holds[0].to_string().contains("2 requests in flight"));
    }

    #[test]
    fn an_lb_that_cannot_be_read_is_not_idle_and_is_named() {
        let p = sample(&[], 0);
        let unknown = LbEvidence {
            servers: vec![],
            unreadable: vec![(name("lb-2"), "no answer".into())],
        };
        let holds = judge(true, &p, &unknown);
        assert_eq!(holds.len(), 1);
        assert!(holds[0].to_string().contains("lb-2"), "{holds:?}");
    }

    #[test]
    fn stot_is_tracked_across_polls() {
        use handover_common::proto::lb::{ServerKind, ServerStats};
        let web = name("web-1");
        let lb = name("lb-1");
        let stats = |stot| ServerStats {
            backend: "be_app".into(),
            host: Some(web.clone()),
            haproxy_name: "slot1".into(),
            kind: ServerKind::Slot,
            addr: "10.0.0.5:80".into(),
            status: "NOLB".into(),
            scur: 0,
            qcur: 0,
            stot,
            check_status: "L7STS".into(),
            hrsp_5xx: 0,
        };
        let view = |stot| {
            let mut v = LbView::default();
            v.hosts
                .entry(web.clone())
                .or_default()
                .insert(lb.clone(), Ok(vec![stats(stot)]));
            v
        };
        let mut tracks = BTreeMap::new();
        let t0 = Instant::now();
        let e = judge_view(&view(10), &web, &mut tracks, t0);
        assert_eq!((e.servers[0].arrived, e.servers[0].steady_for), (0, ms(0)));
        let e = judge_view(&view(12), &web, &mut tracks, t0 + ms(200));
        assert_eq!((e.servers[0].arrived, e.servers[0].steady_for), (2, ms(0)));
        let e = judge_view(&view(12), &web, &mut tracks, t0 + ms(700));
        assert_eq!(
            (e.servers[0].arrived, e.servers[0].steady_for),
            (2, ms(500))
        );
    }

    #[test]
    fn lb_source_addresses_default_to_the_ip_of_their_address() {
        let toml = r#"
            ca = "ca.pem"
            cert = "ops.pem"
            key = "ops.key"
            state_dir = "state"
            [[hosts]]
            name = "lb-1"
            address = "10.0.0.2:7443"
            roles = ["lb"]
            [[hosts]]
            name = "lb-2"
            address = "10.0.0.3"
            roles = ["lb"]
            source = ["192.0.2.10", "::ffff:192.0.2.11"]
            [[hosts]]
            name = "web-1"
            address = "10.0.0.5:7443"
            roles = ["app"]
        "#;
        let config: CoordinatorConfig = toml::from_str(toml).expect("config parses");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let exempt = rt.block_on(exempt_addresses(&config)).expect("addresses");
        let want: Vec<IpAddr> = ["10.0.0.2", "192.0.2.10", "192.0.2.11"]
            .iter()
            .map(|a| a.parse().expect("literal"))
            .collect();
        assert_eq!(
            exempt, want,
            "app hosts are never exempt; sources replace the address"
        );
    }
}
