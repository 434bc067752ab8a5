//! Runbook step 13, "wait for sessions to end", judged where the sessions are
//! counted: by every load balancer as well as by the host (DESIGN.md, "Sessions
//! are counted where they are").
//!
//! A host is drained and idle when, over one window of the quiet period:
//! - its agent saw no *direct* connection (one not from an LB's source address):
//!   the LBs' addresses are passed as [`DrainWait::exempt`] because HAProxy
//!   keeps idle server connections pooled and those carry no session;
//! - every LB reads scur 0 and qcur 0 for the host's servers: no request in flight;
//! - the servers' stot did not rise: HAProxy's scur reads 0 between two requests
//!   of a client pinned by the persistence cookie, so a rising stot is the only
//!   sign that such clients are still coming.
//!
//! An LB that cannot be read is "not known to be idle", never zero. The decision
//! is the per-host state machine in [`machine`] ([`on_event`]); this module is
//! the loop around it, which only gathers observations (agent samples and
//! answers, LB polls, the clock) and sleeps. The CLI (`handover drain --wait`)
//! and the rollout engine both call [`wait_for_sessions_to_end`]; neither this
//! module nor the machine prints anything or gives advice.

pub mod eta;
pub mod hold;
pub mod machine;

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use handover_common::duration;
use handover_common::names::{HostName, HostRole};
use handover_common::proto::drain::{
    DrainProgress, DrainWait, STAYS_DRAINED, UNDRAINED_DURING_WAIT, ZERO_TIMEOUT,
};
use handover_common::proto::{FailureKind, Progress};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{CoordinatorConfig, HostEntry};
use crate::fleet::{Fleet, FleetError, calls};
use crate::lb::{LbView, lb_view};
pub use eta::Decay;
pub use hold::{Hold, LbEvidence, source_hint};
pub use machine::{
    AgentEnd, FailCause, HostResult, HostState, Observation, RoundAsk, WaitSettings, on_event,
};

/// How often the LBs' `show stat` is read during a wait.
pub const LB_POLL: Duration = Duration::from_millis(200);
/// How long past the agent's own timeout the coordinator waits for its answer.
const ANSWER_GRACE: Duration = Duration::from_secs(15);

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
    #[error("{ZERO_TIMEOUT}")]
    ZeroTimeout,
    /// A timeout past the clock's range.
    #[error(transparent)]
    BeyondClock(#[from] duration::BeyondClock),
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

/// Every LB's `address` IPs (those that resolve), by LB.
async fn lb_addresses(config: &CoordinatorConfig) -> Vec<(IpAddr, HostName)> {
    let mut all = Vec::new();
    for lb in config.with_role(HostRole::Lb) {
        if let Ok(ips) = address_ips(&lb).await {
            all.extend(ips.into_iter().map(|ip| (ip, lb.name.clone())));
        }
    }
    all
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
    /// When the host's direct sessions should be gone, from their recent decay.
    pub eta: Option<Duration>,
    /// How long the host and every LB have been quiet together.
    pub quiet_for: Duration,
    /// The quiet period it is judged by.
    pub quiet: Duration,
    /// Whether what holds the host (or who) changed since the last progress:
    /// what a line-per-change display prints on.
    pub changed: bool,
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

    /// Why it is not idle, as facts (no advice): every hold (LBs by name and
    /// server, direct connections by address, Apache's busy workers) and that
    /// the host stays drained; `None` when it is idle.
    pub fn timeout_text(&self, timeout: Duration) -> Option<String> {
        let name = &self.host.name;
        let (holds, agent_message) = match &self.result {
            HostResult::Idle { .. } => return None,
            HostResult::Failed(_, message) => return Some(format!("{name}: {message}")),
            HostResult::TimedOut {
                holds,
                agent_message,
            } => (holds, agent_message),
        };
        let mut parts: Vec<String> = holds
            .iter()
            // The agent's message already names what is on the host.
            .filter(|h| agent_message.is_none() || !h.is_on_the_host())
            .map(ToString::to_string)
            .collect();
        if let Some(m) = agent_message {
            parts.push(m.clone());
            // The agent knows nothing of LBs: the `source` hint is ours to add.
            for h in holds {
                if let Hold::Direct { at_lb_address, .. } = h {
                    parts.extend(at_lb_address.iter().map(|(ip, lb)| source_hint(*ip, lb)));
                }
            }
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
            "{name} is still in use after {}: {}. {STAYS_DRAINED}",
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

type RoundFuture<'a> = Pin<Box<dyn Future<Output = (usize, AgentEnd)> + 'a>>;

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
    let lb_addresses = lb_addresses(config).await;
    let started = Instant::now();
    let settings = Arc::new(WaitSettings {
        started,
        deadline: started
            .checked_add(options.timeout)
            .ok_or(duration::BeyondClock::new("drain wait", options.timeout))?,
        quiet: options.quiet,
        exempt,
        lb_addresses,
        lbs: config
            .with_role(HostRole::Lb)
            .into_iter()
            .map(|lb| lb.name)
            .collect(),
    });
    let names: Vec<HostName> = hosts.iter().map(|h| h.name.clone()).collect();
    let mut waits = Waits::new(hosts, &settings);
    let (sample_tx, mut samples) = mpsc::unbounded_channel::<(usize, DrainProgress)>();
    let mut rounds: FuturesUnordered<RoundFuture<'_>> = FuturesUnordered::new();
    let (view_tx, mut views) = mpsc::channel::<LbView>(1);
    let poller = poll_lbs(fleet, config, &names, view_tx, !settings.lbs.is_empty());
    tokio::pin!(poller);
    let mut deadline_passed = false;
    while waits.any_waiting() {
        let now = Instant::now();
        for (i, ask) in waits.rounds_wanted(now) {
            rounds.push(round(
                fleet,
                &hosts[i],
                i,
                ask,
                &settings.exempt,
                &sample_tx,
            ));
            waits.observe(i, Observation::AgentAsked { at: now }, on_progress);
        }
        tokio::select! {
            Some((i, sample)) = samples.recv() => {
                waits.observe(i, Observation::AgentSample { at: Instant::now(), sample }, on_progress);
            }
            Some((i, end)) = rounds.next(), if !rounds.is_empty() => {
                // Samples sent before the answer come first.
                while let Ok((j, sample)) = samples.try_recv() {
                    waits.observe(j, Observation::AgentSample { at: Instant::now(), sample }, on_progress);
                }
                waits.observe(i, Observation::AgentEnded { at: Instant::now(), end }, on_progress);
            }
            Some(view) = views.recv() => waits.observe_view(&view, Instant::now(), on_progress),
            () = tokio::time::sleep_until(settings.deadline), if !deadline_passed => {
                deadline_passed = true;
                waits.observe_all(Instant::now(), on_progress);
            }
            () = &mut poller => {}
        }
    }
    Ok(waits.outcome(hosts))
}

/// Polls every LB every [`LB_POLL`] (once, empty, when there is none).
async fn poll_lbs(
    fleet: &Fleet,
    config: &CoordinatorConfig,
    names: &[HostName],
    views: mpsc::Sender<LbView>,
    any_lb: bool,
) {
    if !any_lb {
        // Nothing to judge by but the hosts.
        let _ = views.send(LbView::default()).await;
        return std::future::pending::<()>().await;
    }
    loop {
        let view = lb_view(fleet, config, names).await;
        if views.send(view).await.is_err() {
            return std::future::pending::<()>().await;
        }
        tokio::time::sleep(LB_POLL).await;
    }
}

/// One agent round: drain (idempotent) and wait as `ask` says, its samples
/// forwarded to `samples`.
fn round<'a>(
    fleet: &'a Fleet,
    host: &'a HostEntry,
    i: usize,
    ask: RoundAsk,
    exempt: &[IpAddr],
    samples: &mpsc::UnboundedSender<(usize, DrainProgress)>,
) -> RoundFuture<'a> {
    let request = calls::drain(Some(DrainWait {
        timeout: ask.timeout,
        quiet: ask.quiet,
        exempt: exempt.to_vec(),
    }));
    let tx = samples.clone();
    Box::pin(async move {
        let call = fleet.ask(host, request, move |p| {
            if let Progress::Drain(p) = p {
                let _ = tx.send((i, p));
            }
        });
        let limit = ask.timeout + ANSWER_GRACE;
        let end = match tokio::time::timeout(limit, call).await {
            Ok(Ok(calls::Drained {
                already,
                waited: Some(_),
                ..
            })) => AgentEnd::Idle { already },
            Ok(Ok(calls::Drained { waited: None, .. })) => AgentEnd::Failed(
                FailCause::Other,
                "the agent drained the host without waiting for its sessions: is its handover-agent the same version as this coordinator?".into(),
            ),
            Ok(Err(FleetError::Agent(f))) if f.kind == FailureKind::Timeout => {
                AgentEnd::TimedOut(f.message)
            }
            Ok(Err(e)) => AgentEnd::Failed(fail_cause(&e), e.to_string()),
            Err(_) => AgentEnd::Failed(
                FailCause::Unreachable,
                format!(
                    "no answer within {} (the agent's timeout plus {})",
                    duration::format(limit),
                    duration::format(ANSWER_GRACE)
                ),
            ),
        };
        (i, end)
    })
}

/// Why a drain call failed: the agent did not answer, the host was undrained
/// under the wait (the agent's contract text), or anything else.
fn fail_cause(e: &FleetError) -> FailCause {
    match e {
        FleetError::Agent(f) if f.message == UNDRAINED_DURING_WAIT => FailCause::Undrained,
        e if e.is_unreachable() => FailCause::Unreachable,
        _ => FailCause::Other,
    }
}

/// Every host's state machine, and what was last shown of it.
struct Waits<'h> {
    hosts: &'h [HostEntry],
    states: Vec<Option<HostState>>,
    decay: Vec<Decay>,
    shown: Vec<String>,
}

impl<'h> Waits<'h> {
    fn new(hosts: &'h [HostEntry], settings: &Arc<WaitSettings>) -> Self {
        Waits {
            hosts,
            states: hosts
                .iter()
                .map(|_| Some(HostState::new(settings.clone())))
                .collect(),
            decay: vec![Decay::default(); hosts.len()],
            shown: vec![String::new(); hosts.len()],
        }
    }

    fn any_waiting(&self) -> bool {
        self.states
            .iter()
            .any(|s| matches!(s, Some(HostState::Waiting(_))))
    }

    fn rounds_wanted(&self, now: Instant) -> Vec<(usize, RoundAsk)> {
        self.states
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Some(HostState::Waiting(w)) => w.round_wanted(now).map(|ask| (i, ask)),
                _ => None,
            })
            .collect()
    }

    /// Feeds one observation to host `i`'s machine and shows where it stands.
    fn observe(
        &mut self,
        i: usize,
        observation: Observation,
        on_progress: &mut dyn FnMut(&HostProgress<'_>),
    ) {
        let Some(slot) = self.states.get_mut(i) else {
            return;
        };
        let Some(state) = slot.take() else {
            return;
        };
        let show = !matches!(observation, Observation::AgentAsked { .. })
            && matches!(state, HostState::Waiting(_));
        let state = on_event(state, observation);
        if show && let (HostState::Waiting(w), Some(host)) = (&state, self.hosts.get(i)) {
            let elapsed = w.elapsed();
            if let Some(p) = w.last() {
                self.decay[i].record(p.elapsed, p.blocking);
            }
            let holds = w.holds();
            let key = change_key(w.last(), &holds);
            let changed = self.shown[i] != key;
            on_progress(&HostProgress {
                host: &host.name,
                agent: w.last(),
                lbs: w.lbs(),
                holds: &holds,
                elapsed,
                eta: self.decay[i].eta(),
                quiet_for: w.quiet_for(),
                quiet: w.quiet(),
                changed,
            });
            self.shown[i] = key;
        }
        *slot = Some(state);
    }

    /// One LB poll, for every host still waiting.
    fn observe_view(
        &mut self,
        view: &LbView,
        at: Instant,
        on_progress: &mut dyn FnMut(&HostProgress<'_>),
    ) {
        for i in 0..self.hosts.len() {
            let readings = view
                .hosts
                .get(&self.hosts[i].name)
                .cloned()
                .unwrap_or_default();
            self.observe(i, Observation::Lbs { at, readings }, on_progress);
        }
    }

    /// The clock, for every host (the deadline passed).
    fn observe_all(&mut self, at: Instant, on_progress: &mut dyn FnMut(&HostProgress<'_>)) {
        for i in 0..self.hosts.len() {
            self.observe(i, Observation::Tick { at }, on_progress);
        }
    }

    fn outcome(self, hosts: &[HostEntry]) -> DrainOutcome {
        let hosts = hosts
            .iter()
            .zip(self.states)
            .map(|(host, state)| {
                let (result, last, lbs) = match state {
                    Some(HostState::Ended(w, result)) => {
                        (result, w.last().cloned(), w.lbs().clone())
                    }
                    Some(HostState::Waiting(w)) => (
                        HostResult::Failed(
                            FailCause::Other,
                            "the wait ended without a result".into(),
                        ),
                        w.last().cloned(),
                        w.lbs().clone(),
                    ),
                    None => (
                        HostResult::Failed(
                            FailCause::Other,
                            "the wait ended without a result".into(),
                        ),
                        None,
                        LbEvidence::default(),
                    ),
                };
                HostDrained {
                    host: host.clone(),
                    result,
                    last,
                    lbs,
                }
            })
            .collect();
        DrainOutcome { hosts }
    }
}

/// What a line-per-change display compares: who holds the host, not the
/// figures that tick.
fn change_key(agent: Option<&DrainProgress>, holds: &[Hold]) -> String {
    let holders = agent
        .map(|p| {
            p.sessions
                .holders
                .iter()
                .map(|h| h.remote.to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let labels: Vec<String> = holds.iter().map(Hold::label).collect();
    format!(
        "{} {holders} | {}",
        agent.map_or(0, |p| p.blocking),
        labels.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let addresses = rt.block_on(lb_addresses(&config));
        assert!(
            addresses.contains(&(
                "10.0.0.3".parse().expect("literal"),
                HostName::new("lb-2").expect("name")
            )),
            "an LB with a source still has its address, for the hint: {addresses:?}"
        );
    }
}
