//! The coordinator's side of the wire: one QUIC endpoint, a connection per agent
//! (dialled on first use, reused after), one stream per call, and bounded fan-out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::Stream;
use futures::StreamExt;
use handover_common::names::{HostName, Role};
use handover_common::proto::{Failure, Progress, Reply, Request, RequestFrame, Response};
use handover_common::tls::{self, CredentialFiles, Credentials};
use handover_common::wire::{self, WireError};
use tokio::sync::{Mutex, Semaphore};

use crate::config::{CoordinatorConfig, HostEntry};

pub mod calls;
pub mod deadline;
pub mod dial;
pub mod socket;

pub use calls::Call;

/// How long an agent has to complete the handshake, retries included, unless a
/// command says otherwise (`status --timeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether this process has already said its receive buffer was capped.
static CAPPED_SAID: AtomicBool = AtomicBool::new(false);

/// Why a call to an agent failed. The text is what `status` shows as the reason.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The address does not resolve.
    #[error("cannot resolve address {address:?}: {why}")]
    Resolve {
        /// The inventory address.
        address: String,
        /// What the resolver said.
        why: String,
    },
    /// Nothing answered.
    #[error(
        "no answer from {address} within {} ({attempts} handshakes tried): is handover-agent running there and UDP reachable?",
        handover_common::duration::format(*waited)
    )]
    Timeout {
        /// The address dialled.
        address: SocketAddr,
        /// How long the attempts took together.
        waited: Duration,
        /// How many handshakes were started.
        attempts: u32,
    },
    /// The handshake or the connection failed; the text says which side refused.
    #[error("{0}")]
    Connection(String),
    /// The agent refused or failed the action.
    #[error("{0}")]
    Agent(Failure),
    /// The exchange broke.
    #[error("protocol error: {0}")]
    Wire(#[from] WireError),
    /// The agent ended the stream without a final answer.
    #[error("the agent closed the stream without an answer (see its log)")]
    NoAnswer,
    /// The agent stayed silent past the call's deadline.
    #[error(
        "{host} did not answer within {} while {doing}: the agent may be stuck (see its log); the call was abandoned",
        handover_common::duration::format(*limit)
    )]
    Deadline {
        /// The host called.
        host: HostName,
        /// What the call asked of it.
        doing: String,
        /// The silence allowed.
        limit: Duration,
    },
    /// The agent answered with another kind of answer than the request names.
    #[error(
        "{host} answered {what} with something else ({answer}): is its handover-agent the same version as this coordinator?"
    )]
    UnexpectedAnswer {
        /// The host called.
        host: HostName,
        /// What was asked.
        what: &'static str,
        /// The answer, as debug text.
        answer: String,
    },
}

impl FleetError {
    /// The agent's own failure, if it answered with one.
    pub fn agent_failure(&self) -> Option<&Failure> {
        match self {
            FleetError::Agent(f) => Some(f),
            _ => None,
        }
    }

    /// Whether the host did not answer (no handshake, connection lost, stream
    /// broken, silent past the call's deadline): not the release's fault, so a
    /// rollout halts for `resume` rather than rolling back — a rollback would
    /// need the same silent agent. A killed agent's old connection ends either
    /// way, by QUIC's idle timeout or by the deadline, whichever comes first.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            FleetError::Timeout { .. }
                | FleetError::Connection(_)
                | FleetError::Wire(_)
                | FleetError::NoAnswer
                | FleetError::Deadline { .. }
        )
    }
}

/// The text of a refusal by our own certificate checks (`tls::refuse`), which
/// quinn wraps as `...invalid peer certificate: Other(OtherError(TEXT))`.
fn our_refusal(text: &str) -> Option<&str> {
    const WRAP: &str = "invalid peer certificate: Other(OtherError(";
    let start = text.find(WRAP)? + WRAP.len();
    text.get(start..)?.strip_suffix("))")
}

/// Explains a QUIC connection error in the operator's terms.
fn describe(host: &HostName, err: &quinn::ConnectionError) -> String {
    use quinn::ConnectionError as E;
    let text = err.to_string();
    let hint = if text.contains("UnknownIssuer")
        || text.contains("BadSignature")
        || text.contains("error 48")
    {
        " — the certificates are not from the same CA: check `ca` in both configs"
    } else if text.contains("error 44") || text.contains("Revoked") {
        " — this coordinator's certificate has been revoked: get a new one (`handover ca issue --renew --name NAME` on the CA host)"
    } else if text.contains("Expired") || text.contains("expired") {
        " — a certificate has expired: issue a new one with `handover ca issue`"
    } else if text.contains("dialled host") {
        // tls::name_mismatch already says which name the certificate has, and the fix.
        ""
    } else if text.contains("only a coordinator") || text.contains("only a agent") {
        " — use a certificate of the right role (`handover ca issue --role ...`)"
    } else {
        ""
    };
    if let Some(why) = our_refusal(&text) {
        return format!("{host}: {why}{hint}");
    }
    match err {
        E::TimedOut => format!("connection to {host} timed out (agent unreachable?)"),
        E::ConnectionClosed(c) if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED => {
            format!(
                "the agent on {host} refused the connection: too many handshakes pending or coordinators connected (its log says which); try again shortly"
            )
        }
        // The agent's reset key survives a restart, so this is what a restarted
        // agent answers to the connection its previous process held.
        E::Reset => format!(
            "the connection to {host} was reset: its agent restarted (the next call dials it again)"
        ),
        E::ConnectionClosed(c) => format!(
            "the agent closed the connection: {}{hint}",
            String::from_utf8_lossy(&c.reason)
        ),
        E::ApplicationClosed(c) => format!(
            "the agent closed the connection: {}",
            String::from_utf8_lossy(&c.reason)
        ),
        _ => format!("{text}{hint}"),
    }
}

/// One host's connection, behind its own lock so that two calls to the same host
/// at once share one handshake instead of dialling twice.
type Slot = Arc<Mutex<SlotState>>;

/// What the last dial of one host gave.
#[derive(Default)]
struct SlotState {
    /// The connection, while it lives.
    conn: Option<quinn::Connection>,
    /// When the last dial failed, and why: calls that waited for that dial share
    /// its failure rather than each spending the connect timeout again in turn.
    failed: Option<(Instant, String)>,
}

/// Connections to the agents of one inventory.
pub struct Fleet {
    endpoint: quinn::Endpoint,
    connections: std::sync::Mutex<HashMap<HostName, Slot>>,
    /// Handshakes in progress at once ([`dial::MAX_HANDSHAKES`]).
    handshakes: Semaphore,
    /// When the next handshake may start.
    pacer: std::sync::Mutex<dial::Pacer>,
    /// How long a host has to complete a handshake, retries included.
    connect_timeout: Duration,
    /// The longest silence a host is allowed on a call, when a command bounds
    /// it below the call's own deadline (`status --timeout`).
    host_deadline: Option<Duration>,
    /// How many agents to talk to at once.
    pub concurrency: usize,
    /// Who this coordinator is (its certificate), for lease owners and logs.
    pub identity: handover_common::pki::Identity,
    /// The rollout every call belongs to, when a rollout runs (see [`Fleet::set_rollout`]).
    rollout: Option<String>,
}

impl Fleet {
    /// Loads the coordinator's credentials and opens a client endpoint.
    pub fn new(config: &CoordinatorConfig) -> anyhow::Result<Self> {
        tls::install_crypto_provider();
        let creds = Credentials::load(
            &CredentialFiles {
                ca: &config.ca,
                cert: &config.cert,
                key: &config.key,
            },
            Role::Coordinator,
        )
        .context(
            "loading this coordinator's TLS files (check `ca`, `cert` and `key` in its config)",
        )?;
        let identity = creds.identity.clone();
        let client = tls::coordinator_client_config(creds)?;
        let mut endpoint = Self::endpoint()?;
        endpoint.set_default_client_config(client);
        Ok(Fleet {
            endpoint,
            connections: std::sync::Mutex::new(HashMap::new()),
            handshakes: Semaphore::new(dial::MAX_HANDSHAKES),
            pacer: std::sync::Mutex::new(dial::Pacer::new(dial::HANDSHAKE_SPACING)),
            connect_timeout: CONNECT_TIMEOUT,
            host_deadline: None,
            concurrency: config.concurrency.get(),
            identity,
            rollout: None,
        })
    }

    /// A client endpoint on a socket with a large receive buffer; says once per
    /// process when the OS capped it.
    fn endpoint() -> anyhow::Result<quinn::Endpoint> {
        let cannot = "cannot open a UDP socket for QUIC";
        let bound = socket::bind(SocketAddr::from(([0, 0, 0, 0], 0))).context(cannot)?;
        if let Some(warning) = bound.capped
            && !CAPPED_SAID.swap(true, Ordering::Relaxed)
        {
            eprintln!("handover: warning: {warning}");
        }
        let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
        quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            bound.socket,
            runtime,
        )
        .context(cannot)
    }

    /// Gives each host `limit` to complete its handshake (retries included) and
    /// `limit` to answer each call; time spent waiting behind other hosts is not
    /// the host's, so it does not count.
    pub fn set_host_deadline(&mut self, limit: Duration) {
        self.connect_timeout = limit;
        self.host_deadline = Some(limit);
    }

    /// The address to dial for `host` (a name is looked up; the port defaults).
    pub(crate) async fn resolve(host: &HostEntry) -> Result<SocketAddr, FleetError> {
        if let Ok(addr) = host.address.parse::<SocketAddr>() {
            return Ok(addr);
        }
        if let Ok(ip) = host.address.parse::<std::net::IpAddr>() {
            return Ok(SocketAddr::new(ip, handover_common::DEFAULT_PORT));
        }
        let target = if host.address.contains(':') {
            host.address.clone()
        } else {
            format!("{}:{}", host.address, handover_common::DEFAULT_PORT)
        };
        let mut addrs =
            tokio::net::lookup_host(&target)
                .await
                .map_err(|e| FleetError::Resolve {
                    address: host.address.clone(),
                    why: e.to_string(),
                })?;
        addrs.find(SocketAddr::is_ipv4).ok_or(FleetError::Resolve {
            address: host.address.clone(),
            why: "no IPv4 address".into(),
        })
    }

    /// The rollout every call carries, if any.
    pub fn rollout(&self) -> Option<&str> {
        self.rollout.as_deref()
    }

    /// Makes every later call carry `rollout`, so the
    /// agents' lease lets it through and refuses everyone else's.
    pub fn set_rollout(&mut self, rollout: Option<String>) {
        self.rollout = rollout;
    }

    /// The connection to `host`, dialling it if there is none alive. Calls to
    /// the same host wait for one handshake rather than each starting its own.
    pub async fn connection(&self, host: &HostEntry) -> Result<quinn::Connection, FleetError> {
        let slot = {
            let mut map = self
                .connections
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(map.entry(host.name.clone()).or_default())
        };
        let asked = Instant::now();
        let mut slot = slot.lock().await;
        if let Some(conn) = slot.conn.as_ref()
            && conn.close_reason().is_none()
        {
            return Ok(conn.clone());
        }
        if let Some((at, why)) = &slot.failed
            && *at >= asked
        {
            return Err(FleetError::Connection(why.clone()));
        }
        let addr = Self::resolve(host).await?;
        match self.dial(host, addr).await {
            Ok(conn) => {
                *slot = SlotState {
                    conn: Some(conn.clone()),
                    failed: None,
                };
                Ok(conn)
            }
            Err(e) => {
                slot.failed = Some((Instant::now(), e.to_string()));
                Err(e)
            }
        }
    }

    /// Handshakes with `host` at `addr`: paced, bounded in number, and tried
    /// again after a loss (see [`dial`]) within the host's connect timeout. The
    /// host is charged for its handshakes and the pauses between them, never for
    /// the time its handshake waited behind other hosts' (issue 14: at
    /// concurrency 1,000 that queue alone made healthy agents "unreachable").
    async fn dial(
        &self,
        host: &HostEntry,
        addr: SocketAddr,
    ) -> Result<quinn::Connection, FleetError> {
        let mut spent = Duration::ZERO;
        let mut attempt = 0;
        loop {
            let limit = dial::attempt_limit(self.connect_timeout.saturating_sub(spent), attempt);
            attempt += 1;
            let permit = self.handshake_slot().await?;
            let began = Instant::now();
            let result = self.handshake(host, addr, limit).await;
            drop(permit);
            spent += began.elapsed();
            let (failure, error) = match result {
                Ok(conn) => return Ok(conn),
                Err(failed) => failed,
            };
            match dial::retry_after(attempt, failure) {
                Some(pause) if spent + pause < self.connect_timeout => {
                    tokio::time::sleep(pause).await;
                    spent += pause;
                }
                _ => {
                    return Err(error.unwrap_or(FleetError::Timeout {
                        address: addr,
                        waited: spent,
                        attempts: attempt,
                    }));
                }
            }
        }
    }

    /// Waits for room among the handshakes in progress and for the pace.
    async fn handshake_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, FleetError> {
        let permit = self
            .handshakes
            .acquire()
            .await
            .map_err(|_| FleetError::Connection("the fleet is closing".into()))?;
        let start = self
            .pacer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .slot(Instant::now());
        tokio::time::sleep_until(start.into()).await;
        Ok(permit)
    }

    /// One handshake within `limit`; a failure says whether it is worth another
    /// try, and why (no error: it timed out).
    async fn handshake(
        &self,
        host: &HostEntry,
        addr: SocketAddr,
        limit: Duration,
    ) -> Result<quinn::Connection, (dial::DialFailure, Option<FleetError>)> {
        use dial::DialFailure::{Busy, Final, TimedOut};
        let connecting = self
            .endpoint
            .connect(addr, host.name.as_str())
            .map_err(|e| {
                let why = format!("cannot dial {}: {e}", host.name);
                (Final, Some(FleetError::Connection(why)))
            })?;
        match tokio::time::timeout(limit, connecting).await {
            Err(_) => Err((TimedOut, None)),
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => {
                let why = Some(FleetError::Connection(describe(&host.name, &e)));
                Err((if is_busy(&e) { Busy } else { Final }, why))
            }
        }
    }

    /// Sends `call` to `host`, passes progress to `on_progress`, returns the answer
    /// the call names (any other is [`FleetError::UnexpectedAnswer`]).
    pub async fn ask<A>(
        &self,
        host: &HostEntry,
        call: Call<A>,
        on_progress: impl FnMut(Progress),
    ) -> Result<A, FleetError> {
        let Call {
            request,
            what,
            answer,
        } = call;
        let reply = self.call(host, request, on_progress).await?;
        answer(reply).map_err(|other| FleetError::UnexpectedAnswer {
            host: host.name.clone(),
            what,
            answer: format!("{other:?}"),
        })
    }

    /// Sends `request` to `host`, passes progress to `on_progress`, returns the reply.
    async fn call(
        &self,
        host: &HostEntry,
        request: Request,
        mut on_progress: impl FnMut(Progress),
    ) -> Result<Reply, FleetError> {
        let conn = self.connection(host).await?;
        let deadline::Deadline { limit, doing } = deadline::deadline(&request);
        let limit = self.host_deadline.map_or(limit, |bound| limit.min(bound));
        let late = || FleetError::Deadline {
            host: host.name.clone(),
            doing: doing.clone(),
            limit,
        };
        let lost = |e: quinn::ConnectionError| FleetError::Connection(describe(&host.name, &e));
        let mut frame = RequestFrame::new(request);
        frame.rollout = self.rollout.clone();
        let (mut send, mut recv) = tokio::time::timeout(limit, async {
            let (mut send, recv) = conn.open_bi().await.map_err(lost)?;
            wire::write_frame(&mut send, &frame)
                .await
                .map_err(|e| self.explain_stream_error(&conn, host, e))?;
            Ok::<_, FleetError>((send, recv))
        })
        .await
        .map_err(|_| late())??;
        let _ = send.finish();
        loop {
            // Every frame from the agent (progress included) restarts the deadline.
            let response = tokio::time::timeout(limit, wire::read_frame::<_, Response>(&mut recv))
                .await
                .map_err(|_| late())?
                .map_err(|e| self.explain_stream_error(&conn, host, e))?;
            match response {
                Some(Response::Progress(p)) => on_progress(p),
                Some(Response::Done(reply)) => return Ok(reply),
                Some(Response::Failed(f)) => return Err(FleetError::Agent(f)),
                None => {
                    return Err(match conn.close_reason() {
                        Some(e) => lost(e),
                        None => FleetError::NoAnswer,
                    });
                }
            }
        }
    }

    /// A stream error on a connection the agent closed is really the connection's
    /// error (a refused client certificate surfaces here, after `connect` succeeded).
    fn explain_stream_error(
        &self,
        conn: &quinn::Connection,
        host: &HostEntry,
        err: WireError,
    ) -> FleetError {
        match conn.close_reason() {
            Some(reason) => FleetError::Connection(describe(&host.name, &reason)),
            None => FleetError::Wire(err),
        }
    }

    /// Asks every host in `hosts` the call `make` builds for it, at most
    /// `concurrency` at a time; results come back in `hosts` order.
    pub async fn ask_each<A, F>(
        &self,
        hosts: &[HostEntry],
        make: F,
    ) -> Vec<(HostEntry, Result<A, FleetError>)>
    where
        F: Fn(&HostEntry) -> Call<A>,
    {
        let mut results: Vec<_> = self.ask_each_as_answered(hosts, make).collect().await;
        results.sort_by_key(|(i, _)| *i);
        results
            .into_iter()
            .map(|(i, r)| (hosts[i].clone(), r))
            .collect()
    }

    /// Like [`Fleet::ask_each`], but each result comes as soon as its host has
    /// answered (with the host's index in `hosts`): a slow host never holds back
    /// the others.
    pub fn ask_each_as_answered<'a, A: 'a, F>(
        &'a self,
        hosts: &'a [HostEntry],
        make: F,
    ) -> impl Stream<Item = (usize, Result<A, FleetError>)> + 'a
    where
        F: Fn(&HostEntry) -> Call<A> + 'a,
    {
        let calls = hosts.iter().enumerate().map(move |(i, host)| {
            let call = make(host);
            async move { (i, self.ask(host, call, |_| {}).await) }
        });
        futures::stream::iter(calls).buffer_unordered(self.concurrency)
    }

    /// Closes every connection, and waits only until each has sent its close
    /// (so agents free the connection at once), not for QUIC's drain period
    /// (~3 round trips plus ack delays: 95 ms on loopback, issue 14).
    pub async fn close(&self) {
        let open: Vec<(quinn::Connection, u64)> = {
            let map = self
                .connections
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            map.values()
                .filter_map(|slot| slot.try_lock().ok()?.conn.clone())
                .filter(|c| c.close_reason().is_none())
                .map(|c| {
                    let sent = c.stats().udp_tx.datagrams;
                    (c, sent)
                })
                .collect()
        };
        self.endpoint.close(0u32.into(), b"done");
        // A closed connection sends nothing but its CONNECTION_CLOSE, so one more
        // datagram sent means the agent has been told.
        let told = || {
            open.iter()
                .all(|(c, before)| c.stats().udp_tx.datagrams > *before)
        };
        let _ = tokio::time::timeout(CLOSE_SEND, async {
            while !told() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
    }
}

/// The longest wait for close frames to leave (a loaded runtime may take a few
/// milliseconds to run every connection's driver once).
const CLOSE_SEND: Duration = Duration::from_millis(200);

/// Whether the agent refused the handshake for lack of room (it says so with
/// QUIC's CONNECTION_REFUSED): worth trying again shortly.
fn is_busy(err: &quinn::ConnectionError) -> bool {
    matches!(err, quinn::ConnectionError::ConnectionClosed(c)
        if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A killed agent's connection ended by our deadline (30 s) or by QUIC's idle
    /// timeout (30 s), whichever came first: the rollout halted in one run and
    /// rolled back — needing the same dead agent — in the other.
    #[test]
    fn an_agent_silent_past_its_deadline_is_unreachable() {
        let host = HostName::new("web-2".to_string()).expect("host");
        let late = FleetError::Deadline {
            host,
            doing: "removing the health-check file".into(),
            limit: Duration::from_secs(30),
        };
        assert!(late.is_unreachable());
        assert!(FleetError::NoAnswer.is_unreachable());
        let refused = FleetError::Agent(Failure::new(
            handover_common::proto::FailureKind::Failed,
            "no",
        ));
        assert!(!refused.is_unreachable());
    }

    #[test]
    fn our_certificate_refusals_are_lifted_out_of_quinns_wrapping() {
        let text = "the cryptographic handshake failed: error 46: invalid peer certificate: Other(OtherError(dialled host \"web-9\" but its agent certificate is for \"web-1\": fix))";
        assert_eq!(
            our_refusal(text),
            Some("dialled host \"web-9\" but its agent certificate is for \"web-1\": fix")
        );
        assert_eq!(our_refusal("error 48: UnknownIssuer"), None);
    }
}
