//! Enrollment with a join token: what `handover-agent join` and `handover enroll`
//! must agree on.
//!
//! The shape is kubeadm's bootstrap token with a CA hash, turned around so that the
//! coordinator still dials the agent (agents never call the coordinator):
//!
//! 1. The new host makes its own key and listens with a throw-away self-signed
//!    certificate for that key, ALPN [`JOIN_ALPN`]. It knows the CA only by the
//!    SHA-256 of the CA's public key ([`CaHash`], given on its command line).
//! 2. The coordinator dials it and presents its coordinator certificate *and the CA
//!    certificate*. The host accepts the handshake only if that CA's key hashes to
//!    the pin and the coordinator certificate chains to it: an impostor gets
//!    nothing, not even the proof.
//! 3. The host answers with [`proof`]: an HMAC keyed by SHA-256 of the token's secret
//!    over its own public key. The secret never crosses the wire, and the proof
//!    names the key the TLS handshake proved the host holds, so it cannot be
//!    replayed by anyone holding another key.
//! 4. The coordinator redeems the token (single use, expiry) and signs a certificate
//!    for that public key, with the name and address it knows the host by; the host
//!    checks it is for its own key and its own name, writes it and the CA, and
//!    serves normally.

use std::path::Path;
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};

use crate::names::{HostName, Role};
use crate::pki::tokens::TokenId;
use crate::pki::{self, PkiError};
use crate::tls::TlsError;

/// The ALPN a joining agent speaks; never `handover/1`, so a joining host cannot
/// be mistaken for an enrolled one.
pub const JOIN_ALPN: &[u8] = b"handover-join/1";

/// The name in a joining host's throw-away certificate (nobody checks it).
pub const JOIN_SERVER_NAME: &str = "handover-join";

/// The largest join message: a certificate and the CA, as PEM.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// SHA-256 of a CA certificate's SubjectPublicKeyInfo, written `sha256:<hex>`
/// (kubeadm's `--discovery-token-ca-cert-hash`). Pins the CA without copying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaHash([u8; 32]);

impl CaHash {
    /// The hash of a DER certificate's public key.
    pub fn of_cert(cert: &CertificateDer<'_>) -> Result<Self, PkiError> {
        use x509_parser::prelude::*;
        let (_, parsed) =
            X509Certificate::from_der(cert.as_ref()).map_err(|e| PkiError::Parse(e.to_string()))?;
        Ok(CaHash(sha256(parsed.public_key().raw)))
    }

    /// The hash of the CA in a CA directory (`DIR/ca.pem`).
    pub fn of_ca_dir(dir: &Path) -> Result<Self, PkiError> {
        let chain = pki::read_cert_chain(&pki::ca_files(dir).cert)?;
        Self::of_cert(&chain[0])
    }
}

impl std::fmt::Display for CaHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::str::FromStr for CaHash {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{text:?} is not a CA hash: expected sha256: and 64 hex digits, as printed by `handover ca token create`"
            )
        };
        let hex = text.strip_prefix("sha256:").ok_or_else(bad)?;
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = hex
                .get(2 * i..2 * i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(bad)?;
        }
        Ok(CaHash(out))
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The host's proof of the token: HMAC-SHA256 keyed by SHA-256 of the secret
/// ([`crate::pki::tokens::JoinToken::proof_key`]) over the token ID and the host's
/// SubjectPublicKeyInfo.
pub fn proof(key: &[u8; 32], id: &TokenId, spki_der: &[u8]) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::sign(&key, &proof_message(id, spki_der))
        .as_ref()
        .to_vec()
}

/// Whether `proof` is right for `key`, `id` and `spki_der` (constant time).
pub fn verify_proof(key: &[u8; 32], id: &TokenId, spki_der: &[u8], proof: &[u8]) -> bool {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::verify(&key, &proof_message(id, spki_der), proof).is_ok()
}

fn proof_message(id: &TokenId, spki_der: &[u8]) -> Vec<u8> {
    let mut msg = b"handover-join/1 proof\0".to_vec();
    msg.extend_from_slice(id.as_str().as_bytes());
    msg.push(0);
    msg.extend_from_slice(spki_der);
    msg
}

/// The SubjectPublicKeyInfo of a DER certificate.
pub fn spki_of(cert: &CertificateDer<'_>) -> Result<Vec<u8>, PkiError> {
    use x509_parser::prelude::*;
    let (_, parsed) =
        X509Certificate::from_der(cert.as_ref()).map_err(|e| PkiError::Parse(e.to_string()))?;
    Ok(parsed.public_key().raw.to_vec())
}

/// Coordinator → host, first stream: who the host will be.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Offer {
    /// The name the certificate will carry (the inventory name).
    pub name: HostName,
    /// The address the coordinator reaches the host on (an IP SAN).
    pub address: std::net::IpAddr,
}

/// Host → coordinator, first stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Answer {
    /// The token's proof over the host's key.
    Proof {
        /// The token's ID.
        id: TokenId,
        /// [`proof`].
        proof: Vec<u8>,
    },
    /// The host will not take this offer (another name configured).
    Refused(String),
}

/// Coordinator → host, second stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Outcome {
    /// The certificate for the host's key, and the CA.
    Issued {
        /// The host's certificate, PEM.
        cert_pem: String,
        /// The CA certificate, PEM.
        ca_pem: String,
    },
    /// Refused, and why (token unknown, used, expired, wrong secret...).
    Refused(String),
}

/// Host → coordinator, second stream: whether it stored what it was given.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Stored {
    /// Written; the host now serves `handover/1`.
    Yes,
    /// Not written, and why.
    Refused(String),
}

/// The joining host's side: a throw-away self-signed certificate for `key_der`
/// (PKCS#8), and only a coordinator whose CA hashes to `pin` may connect.
pub fn join_server_config(
    key_pem: &str,
    pin: CaHash,
) -> Result<(quinn::ServerConfig, Vec<u8>), TlsError> {
    use rustls::pki_types::pem::PemObject;
    let rcgen_err = |e: rcgen::Error| TlsError::Quic(format!("join certificate: {e}"));
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(rcgen_err)?;
    let cert = rcgen::CertificateParams::new(vec![JOIN_SERVER_NAME.to_owned()])
        .map_err(rcgen_err)?
        .self_signed(&key)
        .map_err(rcgen_err)?;
    let spki = spki_of(cert.der()).map_err(TlsError::Pki)?;
    let private = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Key {
        path: "join key".into(),
        why: e.to_string(),
    })?;
    let verifier = Arc::new(PinnedCoordinator { pin });
    let mut tls = rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert.der().clone()], private)?;
    tls.alpn_protocols = vec![JOIN_ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    Ok((quinn::ServerConfig::with_crypto(Arc::new(quic)), spki))
}

/// The coordinator's side of a join: presents its certificate followed by the CA
/// (the host pins the CA by hash), and accepts any server key whose possession the
/// handshake proves: the token proof decides who the host is.
pub fn join_client_config(
    files: &crate::tls::CredentialFiles<'_>,
) -> Result<quinn::ClientConfig, TlsError> {
    use rustls::pki_types::pem::PemObject;
    // Load through the normal path for its checks (key mode, role coordinator).
    crate::tls::Credentials::load(files, Role::Coordinator)?;
    let mut chain = pki::read_cert_chain(files.cert)?;
    chain.truncate(1);
    chain.extend(pki::read_cert_chain(files.ca)?);
    let key = PrivateKeyDer::from_pem_file(files.key).map_err(|e| TlsError::Key {
        path: files.key.display().to_string(),
        why: e.to_string(),
    })?;
    let mut tls = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(KeyProvenByHandshake))
        .with_client_auth_cert(chain, key)?;
    tls.alpn_protocols = vec![JOIN_ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

fn algorithms() -> rustls::crypto::WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// A joining host accepts a coordinator whose chain ends in the pinned CA.
#[derive(Debug)]
struct PinnedCoordinator {
    pin: CaHash,
}

impl ClientCertVerifier for PinnedCoordinator {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let refuse = |why: String| rustls::Error::General(why);
        let ca = intermediates.last().ok_or_else(|| {
            refuse(
                "the coordinator sent no CA certificate with its own (handover-join/1 needs both)"
                    .into(),
            )
        })?;
        let hash = CaHash::of_cert(ca).map_err(|e| refuse(e.to_string()))?;
        if hash != self.pin {
            return Err(refuse(format!(
                "the coordinator's CA is {hash}, not the pinned {}: check --ca-hash (printed by `handover ca token create` on the CA's host)",
                self.pin
            )));
        }
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| refuse(format!("the coordinator's CA is unusable: {e}")))?;
        let inner = WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .map_err(|e| refuse(e.to_string()))?;
        let verified = inner.verify_client_cert(end_entity, &[], now)?;
        let identity = pki::identity_of(end_entity).map_err(|e| refuse(e.to_string()))?;
        if identity.role != Role::Coordinator {
            return Err(refuse(format!(
                "{identity} is not a coordinator: only a coordinator may enroll this host"
            )));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// The coordinator accepts the joining host's self-signed certificate; TLS 1.3's
/// CertificateVerify still proves the host holds its key, and the token proof is
/// made over exactly that key.
#[derive(Debug)]
struct KeyProvenByHandshake;

impl ServerCertVerifier for KeyProvenByHandshake {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// What the joining host checks before it writes what the coordinator sent: the CA
/// is the pinned one, the certificate is the CA's, for this host's own key, with
/// the agent role and the name the host expects.
pub fn check_issued(
    cert_pem: &str,
    ca_pem: &str,
    pin: CaHash,
    own_spki: &[u8],
    own_name: &HostName,
) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| format!("the CA sent is not PEM: {e}"))?;
    let hash = CaHash::of_cert(&ca).map_err(|e| e.to_string())?;
    if hash != pin {
        return Err(format!("the CA sent is {hash}, not the pinned {pin}"));
    }
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| format!("the certificate sent is not PEM: {e}"))?;
    let mut roots = RootCertStore::empty();
    roots
        .add(ca)
        .map_err(|e| format!("the CA sent is unusable: {e}"))?;
    let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| e.to_string())?;
    let server_name = ServerName::try_from(own_name.as_str().to_owned())
        .map_err(|e| format!("{own_name} is not a server name: {e}"))?;
    verifier
        .verify_server_cert(&cert, &[], &server_name, &[], UnixTime::now())
        .map_err(|e| {
            format!(
                "the certificate sent does not verify against the pinned CA for {own_name}: {e}"
            )
        })?;
    if spki_of(&cert).map_err(|e| e.to_string())? != own_spki {
        return Err("the certificate sent is for another key than this host's".into());
    }
    let identity = pki::identity_of(&cert).map_err(|e| e.to_string())?;
    if identity.role != Role::Agent || &identity.name != own_name {
        return Err(format!(
            "the certificate sent is for {identity}, not agent {own_name}"
        ));
    }
    Ok(())
}

/// Writes `msg` on `send` as one frame and finishes the stream.
pub async fn send<T: Serialize>(send: &mut quinn::SendStream, msg: &T) -> Result<(), String> {
    let frame = crate::wire::encode(msg).map_err(|e| e.to_string())?;
    send.write_all(&frame).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())
}

/// Reads one frame (at most [`MAX_MESSAGE`]) to the end of `recv`.
pub async fn receive<T: serde::de::DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<T, String> {
    let bytes = recv
        .read_to_end(MAX_MESSAGE)
        .await
        .map_err(|e| e.to_string())?;
    crate::wire::decode_frame(&bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::tokens::JoinToken;

    #[test]
    fn the_proof_is_bound_to_the_key_and_the_secret() {
        let token: JoinToken = "abc123.0123456789abcdef".parse().expect("token");
        let other: JoinToken = "abc123.0123456789abcdee".parse().expect("token");
        let key_a = rcgen::PublicKeyData::subject_public_key_info(
            &rcgen::KeyPair::generate().expect("key"),
        );
        let key_b = rcgen::PublicKeyData::subject_public_key_info(
            &rcgen::KeyPair::generate().expect("key"),
        );
        let p = proof(&token.proof_key(), &token.id, &key_a);
        assert!(verify_proof(&token.proof_key(), &token.id, &key_a, &p));
        assert!(
            !verify_proof(&token.proof_key(), &token.id, &key_b, &p),
            "replayed for another key"
        );
        assert!(
            !verify_proof(&other.proof_key(), &other.id, &key_a, &p),
            "accepted under another secret"
        );
        let other_id = TokenId::try_from("abc124".to_owned()).expect("id");
        assert!(!verify_proof(&token.proof_key(), &other_id, &key_a, &p));
        assert!(!p.windows(16).any(|w| w == b"0123456789abcdef"));
    }

    /// The host accepts only a certificate of the pinned CA, for its own key and
    /// name; the CA directory records it and refuses the name a second time.
    #[test]
    fn an_issued_certificate_is_checked_against_pin_key_and_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        pki::init_ca(dir.path(), false, 30).expect("init");
        let pin = CaHash::of_ca_dir(dir.path()).expect("hash");
        let name = HostName::new("web-3").expect("name");
        let own = rcgen::PublicKeyData::subject_public_key_info(
            &rcgen::KeyPair::generate().expect("key"),
        );
        let other = rcgen::PublicKeyData::subject_public_key_info(
            &rcgen::KeyPair::generate().expect("key"),
        );
        let spec = pki::LeafSpec::new(Role::Agent, name.clone(), 30);
        let cert = pki::issue_for_public_key(dir.path(), &spec, &own).expect("issue");
        let ca = std::fs::read_to_string(dir.path().join("ca.pem")).expect("ca");
        check_issued(&cert, &ca, pin, &own, &name).expect("accepted");
        let err = check_issued(&cert, &ca, pin, &other, &name).expect_err("other key");
        assert!(err.contains("another key"), "{err}");
        let err = check_issued(
            &cert,
            &ca,
            pin,
            &own,
            &HostName::new("web-4").expect("name"),
        )
        .expect_err("other name");
        assert!(err.contains("web-4"), "{err}");
        let other_ca = tempfile::tempdir().expect("tempdir");
        pki::init_ca(other_ca.path(), false, 30).expect("init");
        let wrong_pin = CaHash::of_ca_dir(other_ca.path()).expect("hash");
        let err = check_issued(&cert, &ca, wrong_pin, &own, &name).expect_err("pin");
        assert!(err.contains("not the pinned"), "{err}");
        assert!(
            !dir.path().join("web-3.key").exists(),
            "the CA never holds the key"
        );
        let ledger = std::fs::read_to_string(dir.path().join("issued.tsv")).expect("ledger");
        assert!(ledger.contains("\tagent\tweb-3"), "{ledger}");
        let again = pki::issue_for_public_key(dir.path(), &spec, &own).expect_err("again");
        assert!(matches!(again, PkiError::LeafExists(_)), "{again}");
    }

    #[test]
    fn ca_hashes_round_trip_and_refuse_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        pki::init_ca(dir.path(), false, 30).expect("init");
        let hash = CaHash::of_ca_dir(dir.path()).expect("hash");
        let text = hash.to_string();
        assert!(text.starts_with("sha256:") && text.len() == 71, "{text}");
        assert_eq!(text.parse::<CaHash>().expect("parse"), hash);
        for bad in [
            "",
            "sha256:",
            "md5:00",
            &text[..70],
            &text.replace("sha256", "sha1"),
        ] {
            assert!(bad.parse::<CaHash>().is_err(), "{bad:?} accepted");
        }
    }
}
