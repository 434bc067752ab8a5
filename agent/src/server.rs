//! The QUIC side: accept coordinators (mutual TLS against the private CA; the
//! handshake itself refuses anyone else), one exchange per bidirectional stream.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use handover_common::tls::{self, Credentials, RevokedSerials};
use tokio::sync::watch;

use crate::Agent;
use crate::metrics::ConnectionResult;
use crate::{caller::Caller, exchange::serve_exchange};

pub mod admission;

use admission::{Admit, Gate, Limits, Refusal};

/// Close code for a connection refused for lack of room (the reason says which).
const CLOSE_BUSY: u32 = 2;
/// Close code for a connection whose coordinator certificate was revoked.
const CLOSE_REVOKED: u32 = 3;

/// A bound QUIC endpoint, ready to serve.
pub struct QuicServer {
    endpoint: quinn::Endpoint,
    revoked: watch::Sender<RevokedSerials>,
}

impl QuicServer {
    /// Binds the agent's `listen` address.
    pub fn bind(agent: &Agent, creds: Credentials) -> anyhow::Result<Self> {
        let (revoked, _) = watch::channel(creds.revoked.clone());
        let endpoint_config = tls::agent_endpoint_config(&creds);
        let config = tls::agent_server_config(creds)?;
        let cannot_listen = || {
            format!(
                "cannot listen on UDP {}: is another agent running, or is `listen` wrong?",
                agent.config.listen
            )
        };
        let socket = std::net::UdpSocket::bind(agent.config.listen).with_context(cannot_listen)?;
        let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
        let endpoint = quinn::Endpoint::new(endpoint_config, Some(config), socket, runtime)
            .with_context(cannot_listen)?;
        Ok(QuicServer { endpoint, revoked })
    }

    /// The bound address (useful when `listen` used port 0).
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Serves until `shutdown` resolves, then closes connections politely.
    pub async fn run(self, agent: Arc<Agent>, shutdown: impl std::future::Future<Output = ()>) {
        let gate = Arc::new(Gate::new(Limits::default()));
        let refusals = Arc::new(RefusalLog::default());
        let mut crl_seen = crl_fingerprint(&agent);
        let mut crl_tick = tokio::time::interval(Duration::from_secs(tls::CRL_RELOAD_SECS));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let revoked = self.revoked.subscribe();
                    admit(&agent, &gate, &refusals, incoming, revoked);
                }
                _ = crl_tick.tick(), if agent.config.crl.is_some() => {
                    let now = crl_fingerprint(&agent);
                    if now != crl_seen {
                        crl_seen = now;
                        self.reload_credentials(&agent);
                    }
                }
                () = &mut shutdown => break,
            }
        }
        self.endpoint.close(0u32.into(), b"agent shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

impl QuicServer {
    /// Reloads the agent's TLS files after its `crl` changed: new handshakes check
    /// the new list at once, and open connections of a coordinator it revokes are
    /// closed. A list that cannot be used is logged and the previous one kept.
    fn reload_credentials(&self, agent: &Agent) {
        let crl = agent
            .config
            .crl
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let reloaded = agent.config.credentials().and_then(|creds| {
            let revoked = creds.revoked.clone();
            Ok((tls::agent_server_config(creds)?, revoked))
        });
        match reloaded {
            Ok((config, revoked)) => {
                self.endpoint.set_server_config(Some(config));
                tracing::info!(
                    "revocation list {crl} loaded: {} certificate(s) revoked",
                    revoked.len()
                );
                self.revoked.send_replace(revoked);
            }
            Err(e) => tracing::error!(
                "cannot reload the revocation list {crl}: {e:#}; still using the previous one"
            ),
        }
    }
}

/// What identifies one version of the `crl` file (inode, size, modification time).
fn crl_fingerprint(agent: &Agent) -> Option<(u64, u64, Option<std::time::SystemTime>)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(agent.config.crl.as_ref()?).ok()?;
    Some((meta.ino(), meta.len(), meta.modified().ok()))
}

/// Applies the gate's decision to one incoming connection: Retry, refuse, or
/// start its handshake on a task of its own.
fn admit(
    agent: &Arc<Agent>,
    gate: &Arc<Gate>,
    refusals: &Arc<RefusalLog>,
    incoming: quinn::Incoming,
    revoked: watch::Receiver<RevokedSerials>,
) {
    let remote = incoming.remote_address();
    match gate.admit(remote.ip(), incoming.remote_address_validated()) {
        Admit::Retry => {
            if let Err(e) = incoming.retry() {
                // Only when the peer already answered a Retry, which made it validated.
                e.into_incoming().refuse();
            }
        }
        // QUIC carries no reason text before the handshake: the peer sees
        // CONNECTION_REFUSED, the log says why.
        Admit::Refuse(why) => {
            agent.metrics.connection(ConnectionResult::refused);
            refusals.note(remote, &why);
            incoming.refuse();
        }
        Admit::Handshake(slot) => {
            let (agent, gate, refusals) = (agent.clone(), gate.clone(), refusals.clone());
            tokio::spawn(async move {
                let Some(conn) =
                    handshake(incoming, gate.limits.handshake_timeout, &refusals).await
                else {
                    agent.metrics.connection(ConnectionResult::handshake_failed);
                    return;
                };
                drop(slot);
                let _permit = match gate.connected() {
                    Ok(permit) => permit,
                    Err(why) => {
                        agent.metrics.connection(ConnectionResult::refused);
                        refusals.note(remote, &why);
                        conn.close(CLOSE_BUSY.into(), why.to_string().as_bytes());
                        return;
                    }
                };
                agent.metrics.connection(ConnectionResult::accepted);
                let _open = agent.metrics.open_connection();
                serve_connection(agent, conn, revoked).await;
            });
        }
    }
}

/// Runs the handshake, giving up after `timeout` (dropping it closes the connection).
async fn handshake(
    incoming: quinn::Incoming,
    timeout: Duration,
    refusals: &RefusalLog,
) -> Option<quinn::Connection> {
    let remote = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(e) => {
            tracing::warn!(%remote, error = %e, "refused a connection");
            return None;
        }
    };
    match tokio::time::timeout(timeout, connecting).await {
        Err(_) => {
            refusals.note(remote, &Refusal::Stalled { timeout });
            None
        }
        Ok(Err(e)) => {
            tracing::warn!(%remote, error = %e, "refused a connection");
            None
        }
        Ok(Ok(conn)) => Some(conn),
    }
}

/// Logs refusals without letting a flood fill the log: the first at once, then at
/// most one a second, each saying how many were not logged since the last.
#[derive(Default)]
struct RefusalLog {
    state: Mutex<(Option<Instant>, u64)>,
}

impl RefusalLog {
    fn note(&self, remote: SocketAddr, why: &Refusal) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (last, unlogged) = &mut *state;
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            *unlogged += 1;
            return;
        }
        *last = Some(Instant::now());
        let skipped = std::mem::take(unlogged);
        if skipped > 0 {
            tracing::warn!(
                "refused a connection from {remote}: {why} ({skipped} more refused since the last message)"
            );
        } else {
            tracing::warn!("refused a connection from {remote}: {why}");
        }
    }
}

async fn serve_connection(
    agent: Arc<Agent>,
    conn: quinn::Connection,
    mut revoked: watch::Receiver<RevokedSerials>,
) {
    let remote = conn.remote_address();
    let Some(identity) = tls::peer_identity(&conn) else {
        // Not reachable with our verifier; kept so a verifier bug fails closed.
        tracing::warn!(%remote, "connection without a Handover identity; closing");
        conn.close(1u32.into(), b"no identity");
        return;
    };
    let caller = Caller::Coordinator(identity.name.to_string());
    tracing::info!(%remote, %caller, "coordinator connected");
    let serial = tls::peer_serial(&conn).unwrap_or_default();
    let mut watching = true;
    loop {
        if revoked.borrow_and_update().contains(&serial) {
            tracing::warn!(%remote, %caller, "closing the connection: its certificate (serial {serial}) is revoked");
            agent.metrics.connection(ConnectionResult::revoked);
            conn.close(
                CLOSE_REVOKED.into(),
                b"this coordinator's certificate has been revoked",
            );
            break;
        }
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => serve_stream(&agent, &caller, &conn, send, recv),
                Err(e) => {
                    tracing::debug!(%remote, %caller, reason = %e, "connection ended");
                    break;
                }
            },
            changed = revoked.changed(), if watching => watching = changed.is_ok(),
        }
    }
}

/// Runs one exchange on its own task, so a long drain wait blocks nothing else.
fn serve_stream(
    agent: &Arc<Agent>,
    caller: &Caller,
    conn: &quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let agent = agent.clone();
    let caller = caller.clone();
    let conn = conn.clone();
    tokio::spawn(async move {
        // The exchange ends when the caller's connection closes, so its waits stop.
        let gone = async move {
            conn.closed().await;
        };
        match serve_exchange(&agent, &caller, &mut recv, &mut send, gone).await {
            Ok(()) => {
                let _ = send.finish();
            }
            Err(_) => {
                let _ = recv.stop(1u32.into());
                let _ = send.finish();
            }
        }
    });
}
