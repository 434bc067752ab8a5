//! The coordinator's side of the wire: one QUIC endpoint, a connection per agent
//! (dialled on first use, reused after), one stream per call, and bounded fan-out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use handover_common::names::{HostName, Role};
use handover_common::proto::{Failure, Progress, Reply, Request, RequestFrame, Response};
use handover_common::tls::{self, CredentialFiles, Credentials};
use handover_common::wire::{self, WireError};
use tokio::sync::Mutex;

use crate::config::{CoordinatorConfig, HostEntry};

pub mod calls;
pub mod deadline;

pub use calls::Call;

/// How long to wait for an agent to complete the handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
    #[error("no answer from {address} within {}s: is handover-agent running there and UDP reachable?", CONNECT_TIMEOUT.as_secs())]
    Timeout {
        /// The address dialled.
        address: SocketAddr,
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

/// Connections to the agents of one inventory.
pub struct Fleet {
    endpoint: quinn::Endpoint,
    connections: Mutex<HashMap<HostName, quinn::Connection>>,
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
        let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))
            .context("cannot open a UDP socket for QUIC")?;
        endpoint.set_default_client_config(client);
        Ok(Fleet {
            endpoint,
            connections: Mutex::new(HashMap::new()),
            concurrency: config.concurrency.get(),
            identity,
            rollout: None,
        })
    }

    async fn resolve(host: &HostEntry) -> Result<SocketAddr, FleetError> {
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

    /// Makes every later call carry `rollout`, so the
    /// agents' lease lets it through and refuses everyone else's.
    pub fn set_rollout(&mut self, rollout: Option<String>) {
        self.rollout = rollout;
    }

    /// The connection to `host`, dialling it if there is none alive.
    pub async fn connection(&self, host: &HostEntry) -> Result<quinn::Connection, FleetError> {
        if let Some(conn) = self.connections.lock().await.get(&host.name)
            && conn.close_reason().is_none()
        {
            return Ok(conn.clone());
        }
        let addr = Self::resolve(host).await?;
        let connecting = self
            .endpoint
            .connect(addr, host.name.as_str())
            .map_err(|e| FleetError::Connection(format!("cannot dial {}: {e}", host.name)))?;
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Err(_) => return Err(FleetError::Timeout { address: addr }),
            Ok(Err(e)) => return Err(FleetError::Connection(describe(&host.name, &e))),
            Ok(Ok(conn)) => conn,
        };
        self.connections
            .lock()
            .await
            .insert(host.name.clone(), conn.clone());
        Ok(conn)
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
        let calls = hosts.iter().enumerate().map(|(i, host)| {
            let call = make(host);
            async move { (i, host.clone(), self.ask(host, call, |_| {}).await) }
        });
        let mut results: Vec<_> = futures::stream::iter(calls)
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        results.sort_by_key(|(i, _, _)| *i);
        results.into_iter().map(|(_, h, r)| (h, r)).collect()
    }

    /// Closes every connection politely.
    pub async fn close(&self) {
        self.endpoint.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
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
