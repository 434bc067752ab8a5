//! One host's wait for its sessions to end, as a state machine: [`on_event`]
//! takes the state and one observation (an agent sample, the agent's answer,
//! every LB's figures, the clock) and returns the next state. Nothing here does
//! I/O or reads a clock, so every decision is tested without sockets.
//!
//! The host is drained and idle once the agent's evidence and every LB's agree
//! over ONE window of the quiet period: the agent's samples show no direct
//! connection, the LBs show scur 0 and qcur 0, and no LB's stot rose, all from
//! the window's start (the latest of those quiet starts) to its end (the earlier
//! of the agent's last sample and the LBs' last poll). When the agent's own round
//! ends before the LBs are quiet, it is asked only for the rest of that window,
//! not for a new quiet period (issue 14: waits used to cost two).
//!
//! Between two agent rounds there is a gap of one round trip with no sample; a
//! round that starts with no direct connection continues the quiet stretch.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use handover_common::names::HostName;
use handover_common::proto::drain::{DrainProgress, Holder, UNDRAINED_DURING_WAIT, millis};
use tokio::time::Instant;

use super::hold::{Hold, LbEvidence, LbServer};
use crate::lb::LbReading;

/// The agents' default `[app] quiet_period`, used until the agent says which
/// quiet period it waits for.
pub const DEFAULT_QUIET: Duration = Duration::from_millis(300);

/// What every host's wait shares.
#[derive(Debug, Clone)]
pub struct WaitSettings {
    /// When the wait began.
    pub started: Instant,
    /// When it gives up (hosts stay drained).
    pub deadline: Instant,
    /// Idle = nothing for this long; `None` takes each agent's `quiet_period`.
    pub quiet: Option<Duration>,
    /// Addresses whose connections are the LBs' (reported, not blocking).
    pub exempt: Vec<IpAddr>,
    /// Every LB's `[[hosts]] address`, to hint at `source` when a direct
    /// holder turns out to be one.
    pub lb_addresses: Vec<(IpAddr, HostName)>,
    /// The LBs whose figures must agree.
    pub lbs: Vec<HostName>,
}

/// How one agent round (one drain-and-wait call) ended.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEnd {
    /// The agent saw no direct connection for the quiet period it was asked for.
    Idle {
        /// The health-check file was already removed before this call.
        already: bool,
    },
    /// The agent's own timeout ran out; its account names the holders.
    TimedOut(String),
    /// Anything else (agent unreachable, no `[health]`...).
    Failed(FailCause, String),
}

/// Why a wait failed, so a rollout can tell a host that did not answer (halt and
/// resume later) from one an operator took back (stop the wave) and the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailCause {
    /// The agent did not answer: no connection, a broken stream, or silence past
    /// the call's limit.
    Unreachable,
    /// The health-check file came back during the wait: someone undrained the host.
    Undrained,
    /// Anything else (no `[health]` section, an unexpected answer...).
    Other,
}

/// One thing the loop learned about one host, and when.
#[derive(Debug, Clone)]
pub enum Observation {
    /// An agent round was asked for (see [`Watch::round_wanted`]).
    AgentAsked {
        /// When.
        at: Instant,
    },
    /// A sample the agent pushed during its round.
    AgentSample {
        /// When it arrived.
        at: Instant,
        /// The sample.
        sample: DrainProgress,
    },
    /// The agent's round ended.
    AgentEnded {
        /// When.
        at: Instant,
        /// How.
        end: AgentEnd,
    },
    /// Every LB's figures for this host, from one poll.
    Lbs {
        /// When the poll answered.
        at: Instant,
        /// By LB.
        readings: BTreeMap<HostName, LbReading>,
    },
    /// Time passed (the deadline may have).
    Tick {
        /// Now.
        at: Instant,
    },
}

impl Observation {
    fn at(&self) -> Instant {
        match self {
            Observation::AgentAsked { at }
            | Observation::AgentSample { at, .. }
            | Observation::AgentEnded { at, .. }
            | Observation::Lbs { at, .. }
            | Observation::Tick { at } => *at,
        }
    }
}

/// How one host's wait ended.
#[derive(Debug, Clone, PartialEq)]
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
    /// Anything else (agent unreachable, no `[health]`...): why, and its text.
    Failed(FailCause, String),
}

/// Where one host's wait stands.
#[derive(Debug, Clone)]
pub enum HostState {
    /// Still waiting; the evidence so far.
    Waiting(Box<Watch>),
    /// Ended; the evidence at the end.
    Ended(Box<Watch>, HostResult),
}

/// What the agent is asked for in its next round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundAsk {
    /// The quiet period the agent waits for (`None`: its own `quiet_period`).
    pub quiet: Option<Duration>,
    /// Its timeout: what is left of the wait.
    pub timeout: Duration,
}

/// Everything known about one host's remaining sessions.
#[derive(Debug, Clone)]
pub struct Watch {
    settings: Arc<WaitSettings>,
    /// The time of the last observation.
    now: Instant,
    agent: AgentEvidence,
    lbs: LbTracks,
}

#[derive(Debug, Clone, Default)]
struct AgentEvidence {
    /// A round is running.
    running: bool,
    /// Rounds asked for so far.
    rounds: u32,
    last: Option<DrainProgress>,
    /// The agent's own quiet period, from its first sample.
    quiet: Option<Duration>,
    /// Since when (on our clock) no direct connection, while drained.
    quiet_since: Option<Instant>,
    /// The last sample that still showed none.
    seen_until: Option<Instant>,
    /// From the first round's answer.
    already: Option<bool>,
}

#[derive(Debug, Clone, Default)]
struct LbTracks {
    polled_at: Option<Instant>,
    stot: BTreeMap<(HostName, String, String), StotTrack>,
    evidence: LbEvidence,
}

/// stot as first seen, as last seen, and when it last changed.
#[derive(Debug, Clone, Copy)]
struct StotTrack {
    first: u64,
    last: u64,
    changed_at: Instant,
}

impl HostState {
    /// A wait that has just begun.
    pub fn new(settings: Arc<WaitSettings>) -> Self {
        let unreadable = settings
            .lbs
            .iter()
            .map(|lb| (lb.clone(), "no answer yet".to_string()))
            .collect();
        HostState::Waiting(Box::new(Watch {
            now: settings.started,
            settings,
            agent: AgentEvidence::default(),
            lbs: LbTracks {
                evidence: LbEvidence {
                    servers: Vec::new(),
                    unreadable,
                },
                ..LbTracks::default()
            },
        }))
    }

    /// The evidence, waiting or ended.
    #[cfg(test)]
    pub fn watch(&self) -> &Watch {
        match self {
            HostState::Waiting(w) | HostState::Ended(w, _) => w,
        }
    }

    /// How it ended, once it has.
    #[cfg(test)]
    pub fn result(&self) -> Option<&HostResult> {
        match self {
            HostState::Waiting(_) => None,
            HostState::Ended(_, r) => Some(r),
        }
    }
}

/// The one transition: the next state of a host's wait after `observation`.
pub fn on_event(state: HostState, observation: Observation) -> HostState {
    let HostState::Waiting(mut w) = state else {
        return state;
    };
    let at = observation.at();
    w.now = w.now.max(at);
    match observation {
        Observation::AgentAsked { .. } => {
            w.agent.running = true;
            w.agent.rounds += 1;
        }
        Observation::AgentSample { sample, .. } => {
            if !sample.drained {
                // Someone undrained the host: HAProxy sends it new clients, so
                // waiting on could only end in the timeout.
                w.agent.last = Some(sample);
                return HostState::Ended(
                    w,
                    HostResult::Failed(FailCause::Undrained, UNDRAINED_DURING_WAIT.into()),
                );
            }
            w.observe_sample(at, sample);
        }
        Observation::AgentEnded { end, .. } => {
            w.agent.running = false;
            match end {
                AgentEnd::Idle { already } => {
                    w.agent.already.get_or_insert(already);
                }
                AgentEnd::TimedOut(message) => {
                    let holds = w.holds();
                    return HostState::Ended(
                        w,
                        HostResult::TimedOut {
                            holds,
                            agent_message: Some(message),
                        },
                    );
                }
                AgentEnd::Failed(cause, message) => {
                    return HostState::Ended(w, HostResult::Failed(cause, message));
                }
            }
        }
        Observation::Lbs { readings, .. } => w.observe_lbs(at, readings),
        Observation::Tick { .. } => {}
    }
    w.decide(at)
}

impl Watch {
    /// The agent's last sample.
    pub fn last(&self) -> Option<&DrainProgress> {
        self.agent.last.as_ref()
    }

    /// Time from the start of the wait to the last observation.
    pub fn elapsed(&self) -> Duration {
        self.now.saturating_duration_since(self.settings.started)
    }

    /// The LBs' last figures.
    pub fn lbs(&self) -> &LbEvidence {
        &self.lbs.evidence
    }

    /// The quiet period this host is judged by.
    pub fn quiet(&self) -> Duration {
        self.settings
            .quiet
            .or(self.agent.quiet)
            .unwrap_or(DEFAULT_QUIET)
    }

    /// The agent round to start now, if one is due: the first, or after a
    /// round that ended idle while the window is not yet complete — then only
    /// for the rest of the window.
    pub fn round_wanted(&self, now: Instant) -> Option<RoundAsk> {
        if self.agent.running {
            return None;
        }
        let timeout = self.settings.deadline.saturating_duration_since(now);
        if timeout.is_zero() {
            return None;
        }
        if self.agent.rounds == 0 {
            return Some(RoundAsk {
                quiet: self.settings.quiet,
                timeout,
            });
        }
        let quiet = self.quiet();
        let rest = match self.quiet_window() {
            Some((start, _)) => (start + quiet).saturating_duration_since(now),
            None => quiet,
        };
        Some(RoundAsk {
            quiet: Some(rest.min(quiet)),
            timeout,
        })
    }

    fn observe_sample(&mut self, at: Instant, p: DrainProgress) {
        let a = &mut self.agent;
        if a.quiet.is_none() {
            a.quiet = Some(p.quiet);
        }
        if p.blocking == 0 {
            if a.quiet_since.is_none() {
                a.quiet_since = Some(at.checked_sub(p.quiet_for).unwrap_or(at));
            }
            a.seen_until = Some(at);
        } else {
            a.quiet_since = None;
            a.seen_until = None;
        }
        a.last = Some(p);
    }

    fn observe_lbs(&mut self, at: Instant, readings: BTreeMap<HostName, LbReading>) {
        let mut evidence = LbEvidence::default();
        for lb in &self.settings.lbs {
            if !readings.contains_key(lb) {
                evidence
                    .unreadable
                    .push((lb.clone(), "it did not answer".into()));
            }
        }
        for (lb, reading) in readings {
            let servers = match reading {
                Ok(servers) => servers,
                Err(why) => {
                    evidence.unreadable.push((lb, why));
                    continue;
                }
            };
            for s in servers {
                let key = (lb.clone(), s.backend.clone(), s.haproxy_name.clone());
                let track = self.lbs.stot.entry(key).or_insert(StotTrack {
                    first: s.stot,
                    last: s.stot,
                    changed_at: at,
                });
                if track.last != s.stot {
                    track.last = s.stot;
                    track.changed_at = at;
                }
                evidence.servers.push(LbServer {
                    lb: lb.to_string(),
                    backend: s.backend,
                    server: s.haproxy_name,
                    status: s.status,
                    scur: s.scur,
                    qcur: s.qcur,
                    stot: s.stot,
                    arrived: s.stot.saturating_sub(track.first),
                    steady_ms: millis(at.saturating_duration_since(track.changed_at)),
                });
            }
        }
        self.lbs.evidence = evidence;
        self.lbs.polled_at = Some(at);
    }

    /// The stretch over which the host and every LB have all been quiet, up to
    /// the latest evidence of each; `None` while something holds.
    fn quiet_window(&self) -> Option<(Instant, Instant)> {
        let a = &self.agent;
        let mut start = a.quiet_since?;
        let mut end = a.seen_until?;
        if self.settings.lbs.is_empty() {
            return Some((start, end));
        }
        let l = &self.lbs;
        let polled = l.polled_at?;
        if !l.evidence.unreadable.is_empty() {
            return None;
        }
        for s in &l.evidence.servers {
            if s.scur > 0 || s.qcur > 0 {
                return None;
            }
            start = start.max(polled.checked_sub(s.steady_for()).unwrap_or(polled));
        }
        end = end.min(polled);
        Some((start, end))
    }

    /// How long the host and every LB have been quiet together.
    pub fn quiet_for(&self) -> Duration {
        self.quiet_window().map_or(Duration::ZERO, |(start, end)| {
            end.saturating_duration_since(start)
        })
    }

    fn is_idle(&self) -> bool {
        self.quiet_for() >= self.quiet()
    }

    fn decide(self: Box<Self>, at: Instant) -> HostState {
        if self.is_idle()
            && let Some(already) = self.agent.already
        {
            let waited = at.saturating_duration_since(self.settings.started);
            return HostState::Ended(self, HostResult::Idle { already, waited });
        }
        if at >= self.settings.deadline && !self.agent.running {
            let holds = self.holds();
            return HostState::Ended(
                self,
                HostResult::TimedOut {
                    holds,
                    agent_message: None,
                },
            );
        }
        HostState::Waiting(self)
    }

    /// Why the host is not idle yet; empty when it is.
    pub fn holds(&self) -> Vec<Hold> {
        let mut holds = Vec::new();
        if let Some(p) = &self.agent.last
            && p.blocking > 0
        {
            holds.push(self.direct(p));
        }
        for (lb, why) in &self.lbs.evidence.unreadable {
            holds.push(Hold::LbUnknown {
                lb: lb.clone(),
                why: why.clone(),
            });
        }
        let quiet = self.quiet();
        for s in &self.lbs.evidence.servers {
            if s.scur > 0 || s.qcur > 0 {
                holds.push(Hold::InFlight(s.clone()));
            } else if s.arrived > 0 && s.steady_for() < quiet {
                holds.push(Hold::Arriving(s.clone()));
            }
        }
        if holds.is_empty() && !self.is_idle() {
            holds.push(Hold::NotYetQuiet {
                quiet_for: self.quiet_for(),
                quiet,
            });
        }
        holds
    }

    fn direct(&self, p: &DrainProgress) -> Hold {
        let holders = direct_holders(p, &self.settings.exempt);
        let at_lb_address = holders
            .iter()
            .flat_map(|h| {
                self.settings
                    .lb_addresses
                    .iter()
                    .filter(move |(ip, _)| *ip == h.remote)
                    .cloned()
            })
            .collect();
        Hold::Direct {
            holders,
            count: p.blocking,
            at_lb_address,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use handover_common::proto::drain::SessionCount;
    use handover_common::proto::lb::{ServerKind, ServerStats};

    const TICK: Duration = Duration::from_millis(100);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn name(s: &str) -> HostName {
        HostName::new(s.to_owned()).expect("valid name")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("literal address")
    }

    /// A wait judged by one LB (lb-1, pooling from 10.0.0.2) with `quiet`.
    fn start(t0: Instant, quiet: Duration, timeout: Duration) -> HostState {
        HostState::new(Arc::new(WaitSettings {
            started: t0,
            deadline: t0 + timeout,
            quiet: Some(quiet),
            exempt: vec![ip("10.0.0.2")],
            lb_addresses: vec![
                (ip("10.0.0.2"), name("lb-1")),
                (ip("10.0.0.9"), name("lb-2")),
            ],
            lbs: vec![name("lb-1")],
        }))
    }

    fn sample(holders: &[(&str, u32)], blocking: u32, quiet_for: Duration) -> DrainProgress {
        DrainProgress {
            sessions: SessionCount {
                total: holders.iter().map(|h| h.1).sum(),
                holders: holders
                    .iter()
                    .map(|(a, n)| Holder {
                        remote: ip(a),
                        connections: *n,
                    })
                    .collect(),
                source: "test".into(),
            },
            blocking,
            apache: None,
            elapsed: ms(0),
            quiet_for,
            quiet: ms(1000),
            drained: true,
        }
    }

    fn idle_sample(quiet_for: Duration) -> Observation {
        // Only the LB's pooled connections: reported, not blocking.
        Observation::AgentSample {
            at: Instant::now(),
            sample: sample(&[("10.0.0.2", 4)], 0, quiet_for),
        }
    }

    fn lb(at: Instant, stot: u64, scur: u64) -> Observation {
        lb_reading(at, stot, scur, "lb-1")
    }

    fn lb_reading(at: Instant, stot: u64, scur: u64, lb: &str) -> Observation {
        let stats = ServerStats {
            backend: "be_app".into(),
            host: Some(name("web-1")),
            haproxy_name: "slot1".into(),
            kind: ServerKind::Slot,
            addr: "10.0.0.5:80".into(),
            status: "NOLB".into(),
            scur,
            qcur: 0,
            stot,
            check_status: "L7STS".into(),
            hrsp_5xx: 0,
            fresh_check: None,
        };
        Observation::Lbs {
            at,
            readings: BTreeMap::from([(name(lb), Ok(vec![stats]))]),
        }
    }

    fn at(obs: Observation, when: Instant) -> Observation {
        match obs {
            Observation::AgentSample { sample, .. } => {
                Observation::AgentSample { at: when, sample }
            }
            other => other,
        }
    }

    /// Feeds observations in order.
    fn feed(mut state: HostState, events: Vec<Observation>) -> HostState {
        for e in events {
            state = on_event(state, e);
        }
        state
    }

    fn ended_idle(s: &HostState) -> bool {
        matches!(s.result(), Some(HostResult::Idle { .. }))
    }

    fn holds(s: &HostState) -> Vec<Hold> {
        s.watch().holds()
    }

    #[test]
    fn drained_once_host_and_every_lb_are_quiet_for_one_window() {
        let t0 = Instant::now();
        let s = start(t0, ms(1000), ms(60_000));
        let s = feed(
            s,
            vec![
                Observation::AgentAsked { at: t0 },
                at(idle_sample(ms(0)), t0 + ms(100)),
                lb(t0 + ms(100), 50, 0),
                at(idle_sample(ms(900)), t0 + ms(1000)),
                lb(t0 + ms(1000), 50, 0),
            ],
        );
        assert!(!ended_idle(&s), "0.9 s of a 1 s quiet period is not enough");
        assert!(
            matches!(holds(&s)[..], [Hold::NotYetQuiet { quiet_for, .. }] if quiet_for == ms(900)),
            "{:?}",
            holds(&s)
        );
        let s = feed(
            s,
            vec![
                at(idle_sample(ms(1000)), t0 + ms(1100)),
                lb(t0 + ms(1100), 50, 0),
            ],
        );
        assert!(
            !ended_idle(&s),
            "not before the agent's answer says whether it was already drained"
        );
        let s = on_event(
            s,
            Observation::AgentEnded {
                at: t0 + ms(1110),
                end: AgentEnd::Idle { already: true },
            },
        );
        assert_eq!(
            s.result(),
            Some(&HostResult::Idle {
                already: true,
                waited: ms(1110)
            })
        );
        assert!(holds(&s).is_empty());
    }

    #[test]
    fn pinned_clients_still_arriving_or_requests_in_flight_keep_it_waiting() {
        let t0 = Instant::now();
        let mut s = feed(
            start(t0, ms(1000), ms(60_000)),
            vec![Observation::AgentAsked { at: t0 }, lb(t0, 100, 0)],
        );
        // Ten seconds of a host that looks idle while stot keeps rising.
        for n in 1..=50u32 {
            let when = t0 + TICK * 2 * n;
            s = feed(
                s,
                vec![
                    at(idle_sample(TICK * 2 * n), when),
                    lb(when, 100 + u64::from(n), 0),
                ],
            );
            if n == 10 {
                s = on_event(
                    s,
                    Observation::AgentEnded {
                        at: when,
                        end: AgentEnd::Idle { already: false },
                    },
                );
            }
        }
        assert!(s.result().is_none(), "{:?}", s.result());
        let h = holds(&s);
        assert!(
            matches!(&h[..], [Hold::Arriving(srv)] if srv.arrived == 50),
            "{h:?}"
        );
        let text = h[0].to_string();
        assert!(
            text.contains("lb-1 at be_app/slot1") && text.contains("50 new sessions"),
            "{text}"
        );

        // A request in flight holds too, even with stot steady.
        let later = t0 + ms(20_000);
        let s = feed(
            s,
            vec![at(idle_sample(ms(19_000)), later), lb(later, 150, 2)],
        );
        let h = holds(&s);
        assert!(matches!(&h[..], [Hold::InFlight(_)]), "{h:?}");
        assert!(h[0].to_string().contains("2 requests in flight"));
    }

    #[test]
    fn a_direct_connection_holds_and_one_at_an_lb_address_gets_the_source_hint() {
        let t0 = Instant::now();
        let s = feed(
            start(t0, ms(300), ms(60_000)),
            vec![
                Observation::AgentSample {
                    at: t0,
                    sample: sample(
                        &[("10.0.0.2", 3), ("192.0.2.7", 1), ("10.0.0.9", 2)],
                        3,
                        ms(0),
                    ),
                },
                lb(t0, 5, 0),
            ],
        );
        let h = holds(&s);
        assert_eq!(h.len(), 1, "{h:?}");
        let text = h[0].to_string();
        assert!(text.contains("192.0.2.7 (1 connection)"), "{text}");
        assert!(
            !text.contains("10.0.0.2 ("),
            "LB connections are not direct: {text}"
        );
        assert!(
            text.contains("10.0.0.9 is load balancer lb-2's address") && text.contains("source"),
            "a holder at an LB's address names the `source` fix: {text}"
        );
    }

    #[test]
    fn the_timeout_ends_the_wait_with_what_holds_or_with_the_agents_account() {
        let t0 = Instant::now();
        let s = feed(
            start(t0, ms(1000), ms(2000)),
            vec![
                Observation::AgentAsked { at: t0 },
                at(idle_sample(ms(0)), t0 + ms(100)),
                lb(t0 + ms(100), 10, 0),
                lb(t0 + ms(1900), 11, 0),
                Observation::Tick { at: t0 + ms(2000) },
            ],
        );
        assert!(
            s.result().is_none(),
            "the agent's round runs: its answer names the holders"
        );
        assert_eq!(s.watch().round_wanted(t0 + ms(2000)), None);
        let ended = on_event(
            s.clone(),
            Observation::AgentEnded {
                at: t0 + ms(2001),
                end: AgentEnd::Idle { already: false },
            },
        );
        match ended.result() {
            Some(HostResult::TimedOut {
                holds,
                agent_message: None,
            }) => assert!(matches!(holds[..], [Hold::Arriving(_)]), "{holds:?}"),
            other => panic!("expected a timeout, got {other:?}"),
        }
        let by_agent = on_event(
            s,
            Observation::AgentEnded {
                at: t0 + ms(2001),
                end: AgentEnd::TimedOut("web-1 still has 1 session".into()),
            },
        );
        assert!(
            matches!(by_agent.result(), Some(HostResult::TimedOut { agent_message: Some(m), .. }) if m.contains("1 session")),
            "{:?}",
            by_agent.result()
        );
    }

    #[test]
    fn an_agent_that_fails_ends_the_wait_as_failed() {
        let t0 = Instant::now();
        let s = feed(
            start(t0, ms(300), ms(60_000)),
            vec![
                Observation::AgentAsked { at: t0 },
                Observation::AgentEnded {
                    at: t0 + ms(5),
                    end: AgentEnd::Failed(FailCause::Other, "web-1 has no [health] section".into()),
                },
            ],
        );
        assert!(
            matches!(s.result(), Some(HostResult::Failed(FailCause::Other, m)) if m.contains("[health]"))
        );
        // An ended wait ignores whatever comes after.
        let s = on_event(s, lb(t0 + ms(10), 1, 0));
        assert!(matches!(s.result(), Some(HostResult::Failed(..))));
    }

    #[test]
    fn undrain_during_a_wait_ends_it() {
        let t0 = Instant::now();
        let mut undrained = sample(&[], 0, ms(500));
        undrained.drained = false;
        let s = feed(
            start(t0, ms(1000), ms(60_000)),
            vec![
                Observation::AgentAsked { at: t0 },
                at(idle_sample(ms(500)), t0 + ms(500)),
                Observation::AgentSample {
                    at: t0 + ms(600),
                    sample: undrained,
                },
            ],
        );
        assert!(
            matches!(s.result(), Some(HostResult::Failed(FailCause::Undrained, m)) if m == UNDRAINED_DURING_WAIT),
            "{:?}",
            s.result()
        );
    }

    #[test]
    fn an_lb_that_stops_answering_holds_and_its_steady_stot_counts_once_it_is_back() {
        let t0 = Instant::now();
        let gone = |when| Observation::Lbs {
            at: when,
            readings: BTreeMap::from([(name("lb-1"), Err("no answer".to_string()))]),
        };
        let s = feed(
            start(t0, ms(1000), ms(60_000)),
            vec![
                Observation::AgentAsked { at: t0 },
                at(idle_sample(ms(0)), t0),
                lb(t0, 7, 0),
                gone(t0 + ms(200)),
                at(idle_sample(ms(1200)), t0 + ms(1200)),
                Observation::AgentEnded {
                    at: t0 + ms(1200),
                    end: AgentEnd::Idle { already: false },
                },
                gone(t0 + ms(1200)),
            ],
        );
        assert!(s.result().is_none(), "unknown is not idle");
        let h = holds(&s);
        assert!(
            matches!(&h[..], [Hold::LbUnknown { lb, .. }] if lb.as_str() == "lb-1"),
            "{h:?}"
        );
        assert!(h[0].to_string().contains("lb-1 could not be read"), "{h:?}");
        // Not answering at all (absent from the poll) is the same.
        let silent = on_event(
            s.clone(),
            Observation::Lbs {
                at: t0 + ms(1300),
                readings: BTreeMap::new(),
            },
        );
        assert!(matches!(&holds(&silent)[..], [Hold::LbUnknown { .. }]));
        // Back with the same stot: nothing arrived meanwhile, so the window holds.
        let s = feed(
            s,
            vec![
                at(idle_sample(ms(1300)), t0 + ms(1300)),
                lb(t0 + ms(1300), 7, 0),
            ],
        );
        assert!(ended_idle(&s), "{:?}", holds(&s));
    }

    #[test]
    fn the_window_starts_at_the_latest_arrival_on_any_lb() {
        let t0 = Instant::now();
        let mut settings = match start(t0, ms(1000), ms(60_000)) {
            HostState::Waiting(w) => (*w.settings).clone(),
            HostState::Ended(..) => unreachable!("a new wait is waiting"),
        };
        settings.lbs.push(name("lb-2"));
        let two = |when, stot1: u64, stot2: u64| {
            let mut readings = BTreeMap::new();
            for (lb, stot) in [("lb-1", stot1), ("lb-2", stot2)] {
                let Observation::Lbs { readings: r, .. } = lb_reading(when, stot, 0, lb) else {
                    unreachable!("lb_reading makes an Lbs observation")
                };
                readings.extend(r);
            }
            Observation::Lbs { at: when, readings }
        };
        let s = feed(
            HostState::new(Arc::new(settings)),
            vec![
                Observation::AgentAsked { at: t0 },
                at(idle_sample(ms(0)), t0),
                two(t0, 10, 20),
                // lb-2 still sees a pinned client at 0.5 s; lb-1 is quiet.
                two(t0 + ms(500), 10, 21),
                at(idle_sample(ms(1000)), t0 + ms(1000)),
                Observation::AgentEnded {
                    at: t0 + ms(1000),
                    end: AgentEnd::Idle { already: false },
                },
                two(t0 + ms(1000), 10, 21),
            ],
        );
        assert!(
            s.result().is_none(),
            "lb-2's arrival at 0.5 s restarts the window"
        );
        assert_eq!(s.watch().quiet_for(), ms(500));
        // Only the rest of the window is asked of the agent, not a whole period.
        let ask = s.watch().round_wanted(t0 + ms(1000));
        assert_eq!(ask.map(|a| a.quiet), Some(Some(ms(500))));
        let s = feed(
            s,
            vec![
                Observation::AgentAsked { at: t0 + ms(1000) },
                at(idle_sample(ms(0)), t0 + ms(1100)),
                at(idle_sample(ms(400)), t0 + ms(1500)),
                two(t0 + ms(1500), 10, 21),
            ],
        );
        assert!(ended_idle(&s), "{:?}", holds(&s));
    }

    /// A scripted fleet on a simulated clock of 100 ms ticks: the agent as
    /// agent/src/drain/wait.rs behaves (a sample a tick from the tick after it
    /// was asked; its round ends once its own quiet period is met), one LB read
    /// every other tick, and a pinned client whose sessions reach the LB every
    /// tick until `last_arrival`. Returns the tick the host was drained at.
    fn drained_at_tick(quiet_ticks: u32, last_arrival: u32) -> u32 {
        let t0 = Instant::now();
        let quiet = TICK * quiet_ticks;
        let mut s = start(t0, quiet, ms(600_000));
        // The running agent round: asked at, quiet asked for, first zero sample.
        let mut round: Option<(u32, Duration, Option<u32>)> = None;
        for n in 0..10_000u32 {
            let now = t0 + TICK * n;
            if let Some(ask) = s.watch().round_wanted(now) {
                s = on_event(s, Observation::AgentAsked { at: now });
                round = Some((n, ask.quiet.unwrap_or(quiet), None));
            }
            if let Some((asked, want, first)) = &mut round
                && n > *asked
            {
                let quiet_for = TICK * (n - *first.get_or_insert(n));
                let want = *want;
                s = on_event(s, at(idle_sample(quiet_for), now));
                if quiet_for >= want {
                    round = None;
                    s = on_event(
                        s,
                        Observation::AgentEnded {
                            at: now,
                            end: AgentEnd::Idle { already: false },
                        },
                    );
                }
            }
            if n % 2 == 0 {
                s = on_event(s, lb(now, 100 + u64::from(n.min(last_arrival)), 0));
            }
            if ended_idle(&s) {
                return n;
            }
            assert!(s.result().is_none(), "{:?}", s.result());
        }
        panic!("never drained");
    }

    /// Issue 14: once the sessions are gone the wait ends after ONE quiet
    /// period, never two — however the LB's last arrival falls against the
    /// agent's own quiet period — and never before one.
    #[test]
    fn once_sessions_are_gone_the_wait_ends_after_one_quiet_period_not_two() {
        let quiet = 10; // ticks: a 1 s quiet period
        for last_arrival in 0..=25 {
            let drained = drained_at_tick(quiet, last_arrival);
            // The LB shows the last arrival at its next read (every other tick).
            let seen = last_arrival.next_multiple_of(2);
            let after = drained - seen;
            assert!(
                after >= quiet,
                "drained {after} ticks after the last arrival, before one quiet period"
            );
            assert!(
                after <= quiet + 2,
                "last arrival at tick {last_arrival}: drained {after} ticks later, more than one quiet period (the old wait took ~{})",
                2 * quiet
            );
        }
    }
}
