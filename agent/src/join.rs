//! `handover-agent join --token ID.SECRET --ca-hash sha256:...`: a new host gets its
//! certificate without a private key ever travelling (see `handover_common::join`
//! for the protocol and why it is safe).
//!
//! The host makes its key (kept in `key` from agent.toml, so a restart during the
//! wait keeps it), listens on its usual address with ALPN `handover-join/1`, and
//! waits for a coordinator of the pinned CA to dial it (`handover enroll`, or the
//! surge engine for a host it launched). Once it holds a certificate for its own
//! key and name, it writes `cert` and `ca` and returns; the caller then serves
//! normally.

use std::path::Path;

use anyhow::Context;
use handover_common::join::{self, Answer, CaHash, Offer, Outcome, Stored};
use handover_common::pki;
use handover_common::pki::tokens::JoinToken;

use crate::config::AgentConfig;

/// Whether this host already holds a certificate (then `join` only serves).
pub fn enrolled(config: &AgentConfig) -> bool {
    config.cert.exists() && config.key.exists() && config.ca.exists()
}

/// Waits until a coordinator enrolls this host, then writes its certificate and
/// the CA. Returns once both are on disk and the join endpoint is closed.
pub async fn join(config: &AgentConfig, token: &JoinToken, pin: CaHash) -> anyhow::Result<()> {
    let key_pem = own_key(&config.key)?;
    let (server, spki) =
        join::join_server_config(&key_pem, pin).context("preparing the join endpoint")?;
    let endpoint = quinn::Endpoint::server(server, config.listen)
        .with_context(|| format!("listening on {} to be enrolled", config.listen))?;
    tracing::info!(
        name = %config.name,
        listen = %config.listen,
        token = %token.id,
        ca = %pin,
        "waiting to be enrolled: run `handover enroll {} --address ADDRESS --dir CA_DIR` on the coordinator",
        config.name
    );
    while let Some(incoming) = endpoint.accept().await {
        // One coordinator at a time, each with a deadline: a peer that connects
        // and says nothing must not keep the host from being enrolled.
        let attempt = enroll_once(config, token, pin, &spki, incoming);
        let result = tokio::time::timeout(std::time::Duration::from_secs(30), attempt)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the coordinator went quiet for 30 s")));
        match result {
            Ok(()) => {
                tracing::info!(cert = %config.cert.display(), "enrolled");
                endpoint.close(0u32.into(), b"enrolled");
                endpoint.wait_idle().await;
                drop(endpoint);
                wait_for_port(config.listen).await;
                return Ok(());
            }
            Err(why) => tracing::warn!("enrollment attempt refused: {why:#}"),
        }
    }
    anyhow::bail!("the join endpoint closed before a coordinator enrolled this host")
}

/// Waits (up to 5 s) until quinn's driver has let go of the join socket, so the
/// daemon can bind the same address next.
async fn wait_for_port(listen: std::net::SocketAddr) {
    for _ in 0..100 {
        if std::net::UdpSocket::bind(listen).is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The key in `path`, made now (0600) if there is none yet.
fn own_key(path: &Path) -> anyhow::Result<String> {
    if path.exists() {
        pki::check_private_key_mode(path)?;
        return std::fs::read_to_string(path)
            .with_context(|| format!("reading this host's key {}", path.display()));
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let pem = pki::new_private_key_pem()?;
    pki::write_private(path, pem.as_bytes())?;
    Ok(pem)
}

/// One coordinator's attempt: offer → proof → certificate → stored.
async fn enroll_once(
    config: &AgentConfig,
    token: &JoinToken,
    pin: CaHash,
    spki: &[u8],
    incoming: quinn::Incoming,
) -> anyhow::Result<()> {
    let conn = incoming.await.context("a coordinator's handshake failed")?;
    let (mut send, mut recv) = conn.accept_bi().await.context("waiting for the offer")?;
    let offer: Offer = join::receive(&mut recv).await.map_err(anyhow::Error::msg)?;
    if offer.name != config.name {
        let why = format!(
            "this host is {} (name in its agent.toml), not {}: enroll it by that name",
            config.name, offer.name
        );
        join::send(&mut send, &Answer::Refused(why.clone()))
            .await
            .map_err(anyhow::Error::msg)?;
        anyhow::bail!(why);
    }
    let proof = join::proof(&token.proof_key(), &token.id, spki);
    join::send(
        &mut send,
        &Answer::Proof {
            id: token.id.clone(),
            proof,
        },
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let (mut send, mut recv) = conn
        .accept_bi()
        .await
        .context("waiting for the certificate")?;
    let outcome: Outcome = join::receive(&mut recv).await.map_err(anyhow::Error::msg)?;
    let (cert_pem, ca_pem) = match outcome {
        Outcome::Issued { cert_pem, ca_pem } => (cert_pem, ca_pem),
        Outcome::Refused(why) => anyhow::bail!("the coordinator refused: {why}"),
    };
    if let Err(why) = join::check_issued(&cert_pem, &ca_pem, pin, spki, &config.name) {
        let _ = join::send(&mut send, &Stored::Refused(why.clone())).await;
        anyhow::bail!(why);
    }
    write_files(config, &cert_pem, &ca_pem)?;
    join::send(&mut send, &Stored::Yes)
        .await
        .map_err(anyhow::Error::msg)?;
    // The coordinator closes once it has read the answer.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn.closed()).await;
    Ok(())
}

fn write_files(config: &AgentConfig, cert_pem: &str, ca_pem: &str) -> anyhow::Result<()> {
    for path in [&config.ca, &config.cert] {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
    }
    pki::write_public(&config.ca, ca_pem.as_bytes())?;
    pki::write_public(&config.cert, cert_pem.as_bytes())?;
    Ok(())
}
