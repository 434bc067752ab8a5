//! The QUIC side: accept coordinators (mutual TLS against the private CA; the
//! handshake itself refuses anyone else), one exchange per bidirectional stream.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use handover_common::tls::{self, Credentials};
use tokio::sync::Semaphore;

use crate::Agent;
use crate::{caller::Caller, exchange::serve_exchange};

/// At most this many coordinator connections at once.
const MAX_CONNECTIONS: usize = 64;

/// A bound QUIC endpoint, ready to serve.
pub struct QuicServer {
    endpoint: quinn::Endpoint,
}

impl QuicServer {
    /// Binds the agent's `listen` address.
    pub fn bind(agent: &Agent, creds: Credentials) -> anyhow::Result<Self> {
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
        Ok(QuicServer { endpoint })
    }

    /// The bound address (useful when `listen` used port 0).
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Serves until `shutdown` resolves, then closes connections politely.
    pub async fn run(self, agent: Arc<Agent>, shutdown: impl std::future::Future<Output = ()>) {
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        tracing::warn!(remote = %incoming.remote_address(), "too many connections; refusing");
                        incoming.refuse();
                        continue;
                    };
                    let agent = agent.clone();
                    tokio::spawn(async move {
                        serve_connection(agent, incoming).await;
                        drop(permit);
                    });
                }
                () = &mut shutdown => break,
            }
        }
        self.endpoint.close(0u32.into(), b"agent shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

async fn serve_connection(agent: Arc<Agent>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(%remote, error = %e, "refused a connection");
            return;
        }
    };
    let Some(identity) = tls::peer_identity(&conn) else {
        // Not reachable with our verifier; kept so a verifier bug fails closed.
        tracing::warn!(%remote, "connection without a Handover identity; closing");
        conn.close(1u32.into(), b"no identity");
        return;
    };
    let caller = Caller::Coordinator(identity.name.to_string());
    tracing::info!(%remote, %caller, "coordinator connected");
    loop {
        match conn.accept_bi().await {
            Ok((mut send, mut recv)) => {
                let agent = agent.clone();
                let caller = caller.clone();
                tokio::spawn(async move {
                    match serve_exchange(&agent, &caller, &mut recv, &mut send).await {
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
            Err(e) => {
                tracing::debug!(%remote, %caller, reason = %e, "connection ended");
                break;
            }
        }
    }
}
