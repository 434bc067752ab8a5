//! A QUIC client with none of the coordinator's own checks, to prove that the
//! *agent* refuses what it must: no client certificate, a certificate of the wrong
//! role, raw bytes that are not a valid frame.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use handover_common::proto::{Request, RequestFrame, Response};
use handover_common::wire;
use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A client config trusting `ca`, presenting `identity` (cert, key) if given.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> anyhow::Result<quinn::ClientConfig> {
    handover_common::tls::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let builder = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_root_certificates(roots);
    let mut tls = match identity {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(cert)?.collect::<Result<_, _>>()?;
            let key = PrivateKeyDer::from_pem_file(key)?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![handover_common::tls::ALPN.to_vec()];
    Ok(quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(tls)?,
    )))
}

/// Dials `addr` expecting the agent named `name`.
pub async fn connect(
    config: quinn::ClientConfig,
    addr: std::net::SocketAddr,
    name: &str,
) -> anyhow::Result<(quinn::Endpoint, quinn::Connection)> {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(config);
    let conn = endpoint.connect(addr, name)?.await.context("handshake")?;
    Ok((endpoint, conn))
}

/// Sends `bytes` as-is on a new stream and reads every response frame until the
/// agent ends the stream.
pub async fn send_raw(conn: &quinn::Connection, bytes: &[u8]) -> anyhow::Result<Vec<Response>> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(bytes).await?;
    send.finish()?;
    let mut responses = Vec::new();
    while let Some(response) = wire::read_frame::<_, Response>(&mut recv).await? {
        responses.push(response);
    }
    Ok(responses)
}

/// Sends one well-formed request and returns the responses.
pub async fn request(conn: &quinn::Connection, request: Request) -> anyhow::Result<Vec<Response>> {
    let frame = wire::encode(&RequestFrame::new(request))?;
    send_raw(conn, &frame).await
}
