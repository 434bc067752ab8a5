//! rustls + quinn configuration for both sides, one function per side.
//!
//! Mutual TLS 1.3 against the private CA only, ALPN `handover/1`. On top of webpki's
//! chain, validity and key-usage checks, our verifiers read the Handover identity
//! from the peer's certificate *during the handshake*, so a wrong peer never gets
//! a connection:
//! * an agent accepts only a `coordinator` certificate;
//! * a coordinator accepts only an `agent` certificate whose name is the host it
//!   dialled (webpki also matches that name against the DNS SANs).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};

use crate::names::Role;
use crate::pki::{self, Identity, PkiError};

/// The ALPN protocol both sides must speak.
pub const ALPN: &[u8] = b"handover/1";

/// How often an agent looks at its `crl` file for a new revocation list.
pub const CRL_RELOAD_SECS: u64 = 10;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file problem.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A private key file that cannot be read or parsed.
    #[error(
        "{path}: cannot read a private key: {why} (expected the PEM key written by `handover ca issue`)"
    )]
    Key {
        /// The key file.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// Our own certificate has the wrong role for this side.
    #[error(
        "{path} is a certificate for {found}, but this side needs a {expected} certificate: issue one with `handover ca issue --role {expected}`"
    )]
    WrongOwnRole {
        /// The certificate file.
        path: String,
        /// The role it carries.
        found: Identity,
        /// The role this side needs.
        expected: Role,
    },
    /// rustls refused the configuration (key does not match certificate, ...).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The CA file cannot serve as a trust anchor.
    #[error("{path}: not a usable CA certificate: {why}")]
    BadCa {
        /// The CA file.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// quinn refused the rustls configuration.
    #[error("QUIC configuration: {0}")]
    Quic(String),
    /// The revocation list cannot be used.
    #[error("{path}: not a usable revocation list: {why}")]
    BadCrl {
        /// The CRL file.
        path: String,
        /// What went wrong, and the fix.
        why: String,
    },
}

/// Installs ring as rustls' process-wide crypto provider. Idempotent; call once at
/// start (rustls' builders panic without a provider).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The files one side presents and trusts.
#[derive(Debug, Clone)]
pub struct CredentialFiles<'a> {
    /// The private CA certificate (trust anchor).
    pub ca: &'a Path,
    /// Our certificate.
    pub cert: &'a Path,
    /// Our private key.
    pub key: &'a Path,
}

/// Loaded credentials: trust anchors, our chain and key, and who we are.
#[derive(Debug)]
pub struct Credentials {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    /// The serials our revocation list revokes (empty without one).
    pub revoked: RevokedSerials,
    /// Who our own certificate says we are.
    pub identity: Identity,
}

impl Credentials {
    /// Loads and checks the files: key mode 0600, a Handover identity with the
    /// expected role in our certificate.
    pub fn load(files: &CredentialFiles<'_>, expected: Role) -> Result<Self, TlsError> {
        use rustls::pki_types::pem::PemObject;

        let ca_certs = pki::read_cert_chain(files.ca)?;
        let mut roots = RootCertStore::empty();
        for cert in ca_certs {
            roots.add(cert).map_err(|e| TlsError::BadCa {
                path: files.ca.display().to_string(),
                why: e.to_string(),
            })?;
        }
        let chain = pki::read_cert_chain(files.cert)?;
        let identity = pki::identity_of(&chain[0]).map_err(|e| match e {
            PkiError::NoIdentity => PkiError::Parse(format!(
                "{}: no Handover identity in it: issue it with `handover ca issue`",
                files.cert.display()
            )),
            other => other,
        })?;
        if identity.role != expected {
            return Err(TlsError::WrongOwnRole {
                path: files.cert.display().to_string(),
                found: identity,
                expected,
            });
        }
        pki::check_private_key_mode(files.key)?;
        let key = PrivateKeyDer::from_pem_file(files.key).map_err(|e| TlsError::Key {
            path: files.key.display().to_string(),
            why: e.to_string(),
        })?;
        Ok(Credentials {
            roots: Arc::new(roots),
            chain,
            key,
            crls: Vec::new(),
            revoked: RevokedSerials::new(),
            identity,
        })
    }

    /// Adds the revocation list at `path` (from `handover ca revoke`): peers whose
    /// certificate it lists are refused during the handshake. The list must be
    /// signed by our CA; one from another CA would make every peer's status
    /// unknown, and so refuse everyone.
    pub fn with_crl(mut self, path: &Path) -> Result<Self, TlsError> {
        (self.crls, self.revoked) = read_crl(path, &self.roots)?;
        Ok(self)
    }
}

/// The serial numbers a CRL revokes (lowercase hex, no leading zeros), to close
/// connections that were opened before the revocation.
pub type RevokedSerials = std::collections::BTreeSet<String>;

/// Normalises a hex serial for comparison (DER may carry a leading zero byte).
pub fn normal_serial(hex: &str) -> String {
    hex.trim_start_matches('0').to_ascii_lowercase()
}

/// Reads a PEM CRL and checks it was issued by one of `roots`.
pub fn read_crl(
    path: &Path,
    roots: &RootCertStore,
) -> Result<(Vec<CertificateRevocationListDer<'static>>, RevokedSerials), TlsError> {
    use rustls::pki_types::pem::PemObject;
    use x509_parser::prelude::*;
    let bad = |why: String| TlsError::BadCrl {
        path: path.display().to_string(),
        why,
    };
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            bad(format!(
                "{e} (expected the crl.pem written by `handover ca revoke`)"
            ))
        })?;
    if crls.is_empty() {
        return Err(bad(
            "no PEM CRL in it (expected the crl.pem written by `handover ca revoke`)".into(),
        ));
    }
    let mut serials = RevokedSerials::new();
    for der in &crls {
        let (_, crl) = parse_x509_crl(der.as_ref()).map_err(|e| bad(e.to_string()))?;
        let issuer = crl.issuer().as_raw();
        if !roots
            .roots
            .iter()
            .any(|r| r.subject.as_ref() == strip_sequence(issuer))
        {
            return Err(bad(format!(
                "it was issued by {}, not by this agent's CA: copy the crl.pem from the CA directory that issued this host's certificates",
                crl.issuer()
            )));
        }
        serials.extend(
            crl.iter_revoked_certificates()
                .map(|r| normal_serial(&hex(r.raw_serial()))),
        );
    }
    Ok((crls, serials))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// webpki keeps a trust anchor's subject without its outer SEQUENCE header.
fn strip_sequence(der: &[u8]) -> &[u8] {
    match der {
        [0x30, len, rest @ ..] if *len < 0x80 => rest,
        [0x30, 0x81, _, rest @ ..] => rest,
        [0x30, 0x82, _, _, rest @ ..] => rest,
        other => other,
    }
}

/// The serial number of the peer's certificate on an established connection.
pub fn peer_serial(conn: &quinn::Connection) -> Option<String> {
    let any = conn.peer_identity()?;
    let chain = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    pki::revocation::serial_of(chain.first()?)
        .ok()
        .map(|s| normal_serial(&s))
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    // Drain waits hold a stream open for as long as sessions last: keep the
    // connection alive, and notice a vanished peer within half a minute.
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    if let Ok(idle) = Duration::from_secs(30).try_into() {
        transport.max_idle_timeout(Some(idle));
    }
    transport.max_concurrent_bidi_streams(64u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    Arc::new(transport)
}

/// The agent's QUIC endpoint settings: its stateless-reset key and the key its
/// connection ids are checked with are derived from its private key, so they are
/// the same after a restart. A coordinator still holding a connection to the
/// agent's previous process then gets a stateless reset it can verify on its next
/// packet (a keep-alive comes every 5 s) and redials at once, instead of talking
/// to the void until the 30 s idle timeout. (With random keys, the new process
/// drops the old connection's packets as "invalid CID" and answers nothing.)
pub fn agent_endpoint_config(creds: &Credentials) -> quinn::EndpointConfig {
    use ring::hmac;
    let derive = hmac::Key::new(hmac::HMAC_SHA256, creds.key.secret_der());
    let reset = hmac::sign(&derive, b"handover/1 QUIC stateless reset key");
    let cid = hmac::sign(&derive, b"handover/1 QUIC connection id key");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cid.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config =
        quinn::EndpointConfig::new(Arc::new(hmac::Key::new(hmac::HMAC_SHA256, reset.as_ref())));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    config
}

/// The agent side: accepts only coordinators from our CA.
pub fn agent_server_config(creds: Credentials) -> Result<quinn::ServerConfig, TlsError> {
    let inner = WebPkiClientVerifier::builder(creds.roots.clone())
        .with_crls(creds.crls.clone())
        .only_check_end_entity_revocation()
        .build()
        .map_err(|e| TlsError::BadCa {
            path: "CA".into(),
            why: e.to_string(),
        })?;
    let verifier = Arc::new(RequireRole {
        inner,
        role: Role::Coordinator,
    });
    let mut tls = rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.chain, creds.key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport());
    Ok(config)
}

/// `handover web` over HTTPS (HTTP/1.1): its `web` certificate, and a client
/// verifier that accepts only `viewer` certificates of our CA. With
/// `viewer_optional` (the page also takes a bearer token) a client may come
/// without a certificate and must then show the token; a client that does
/// present one still has it checked in the handshake, so an agent's or a
/// coordinator's certificate is refused either way.
pub fn web_server_config(
    creds: Credentials,
    viewer_optional: bool,
) -> Result<rustls::ServerConfig, TlsError> {
    let builder = WebPkiClientVerifier::builder(creds.roots.clone())
        .with_crls(creds.crls.clone())
        .only_check_end_entity_revocation();
    let builder = if viewer_optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    let inner = builder.build().map_err(|e| TlsError::BadCa {
        path: "CA".into(),
        why: e.to_string(),
    })?;
    let verifier = Arc::new(RequireRole {
        inner,
        role: Role::Viewer,
    });
    let mut tls = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.chain, creds.key)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// Who a verified client certificate says its holder is (`handover web` reads
/// the viewer's name from it).
pub fn identity_of_chain(chain: &[CertificateDer<'_>]) -> Option<Identity> {
    pki::identity_of(chain.first()?).ok()
}

/// The coordinator side: accepts only an agent certificate named as the host dialled.
pub fn coordinator_client_config(creds: Credentials) -> Result<quinn::ClientConfig, TlsError> {
    let inner = WebPkiServerVerifier::builder(creds.roots.clone())
        .build()
        .map_err(|e| TlsError::BadCa {
            path: "CA".into(),
            why: e.to_string(),
        })?;
    let verifier = Arc::new(RequireAgentNamed { inner });
    let mut tls = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(creds.chain, creds.key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport());
    Ok(config)
}

/// The identity of the peer on an established connection.
pub fn peer_identity(conn: &quinn::Connection) -> Option<Identity> {
    let any = conn.peer_identity()?;
    let chain = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    pki::identity_of(chain.first()?).ok()
}

fn refuse(why: String) -> rustls::Error {
    /// Debug prints the message as it is: quinn shows a handshake error with
    /// `{:?}`, and the coordinator lifts our text out of it (fleet::describe).
    struct Refused(String);
    impl std::fmt::Debug for Refused {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::fmt::Display for Refused {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for Refused {}
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Refused(why)))))
}

fn identity_with_role(cert: &CertificateDer<'_>, role: Role) -> Result<Identity, rustls::Error> {
    let identity = pki::identity_of(cert).map_err(|e| refuse(e.to_string()))?;
    if identity.role != role {
        return Err(refuse(format!(
            "peer presented a certificate for {identity}, but only a {role} may connect here"
        )));
    }
    Ok(identity)
}

/// The coordinator dialled `dialled` and an agent of our CA answered with a
/// certificate for `holder`: say which, and both ways to fix it (issue 18: the
/// raw rustls text named neither).
pub fn name_mismatch(dialled: &str, holder: &str) -> String {
    format!(
        "dialled host {dialled:?} but its agent certificate is for {holder:?}: if that host is {holder}, set `name = \"{holder}\"` in its [[hosts]] entry; if it is {dialled}, issue it a certificate with `handover ca issue --role agent --name {dialled}`"
    )
}

/// Client verifier for agents: webpki's checks, then role = coordinator.
#[derive(Debug)]
struct RequireRole {
    inner: Arc<dyn ClientCertVerifier>,
    role: Role,
}

impl ClientCertVerifier for RequireRole {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        identity_with_role(end_entity, self.role)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Server verifier for coordinators: webpki's checks (chain, validity, serverAuth,
/// DNS name), then role = agent and identity name = the name dialled.
#[derive(Debug)]
struct RequireAgentNamed {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for RequireAgentNamed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let dialled = server_name.to_str();
        let verified = match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            // webpki checks the name only once the chain is good, so the
            // certificate's own identity is trustworthy enough to name.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {
                let identity = identity_with_role(end_entity, Role::Agent)?;
                return Err(refuse(name_mismatch(&dialled, identity.name.as_str())));
            }
            other => other?,
        };
        let identity = identity_with_role(end_entity, Role::Agent)?;
        if identity.name.as_str() != dialled {
            return Err(refuse(name_mismatch(&dialled, identity.name.as_str())));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::HostName;
    use crate::pki::{Existing, LeafSpec};

    /// A CA with one certificate of each role, named after it.
    fn ca_with_every_role() -> tempfile::TempDir {
        install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        pki::init_ca(dir.path(), false, 30).expect("init");
        for role in [Role::Agent, Role::Coordinator, Role::Web, Role::Viewer] {
            let name = HostName::new(role.as_str()).expect("name");
            pki::issue(dir.path(), &LeafSpec::new(role, name, 10), Existing::Refuse)
                .expect("issue");
        }
        dir
    }

    fn leaf(dir: &Path, role: Role) -> CertificateDer<'static> {
        pki::read_cert_chain(&dir.join(format!("{role}.pem"))).expect("read")[0].clone()
    }

    fn roots(dir: &Path) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        for c in pki::read_cert_chain(&dir.join("ca.pem")).expect("ca") {
            roots.add(c).expect("root");
        }
        Arc::new(roots)
    }

    fn client_verifier(dir: &Path, role: Role, optional: bool) -> RequireRole {
        let builder = WebPkiClientVerifier::builder(roots(dir));
        let builder = if optional {
            builder.allow_unauthenticated()
        } else {
            builder
        };
        RequireRole {
            inner: builder.build().expect("verifier"),
            role,
        }
    }

    /// Issue 16: the page takes only viewer certificates, agents only
    /// coordinator ones, so a browser's certificate commands nothing and an
    /// operator's or a host's certificate does not open the page. (Agent and web
    /// certificates are server-only: webpki refuses them as clients already.)
    #[test]
    fn each_side_accepts_only_its_client_role() {
        let dir = ca_with_every_role();
        let now = UnixTime::now();
        let page = client_verifier(dir.path(), Role::Viewer, true);
        let agent = client_verifier(dir.path(), Role::Coordinator, false);
        for role in [Role::Agent, Role::Coordinator, Role::Web, Role::Viewer] {
            let cert = leaf(dir.path(), role);
            let by_page = page.verify_client_cert(&cert, &[], now).is_ok();
            let by_agent = agent.verify_client_cert(&cert, &[], now).is_ok();
            assert_eq!(by_page, role == Role::Viewer, "the page and a {role}");
            assert_eq!(by_agent, role == Role::Coordinator, "an agent and a {role}");
        }
        assert!(
            !page.client_auth_mandatory(),
            "the token path lets clients in without one"
        );
        assert!(agent.client_auth_mandatory());
    }

    /// A web certificate cannot stand in for an agent: the coordinator wants the
    /// agent role even when the name matches.
    #[test]
    fn a_web_certificate_is_not_an_agent() {
        let dir = ca_with_every_role();
        let verifier = RequireAgentNamed {
            inner: WebPkiServerVerifier::builder(roots(dir.path()))
                .build()
                .expect("verifier"),
        };
        let name = ServerName::try_from("web").expect("name");
        let err = verifier
            .verify_server_cert(
                &leaf(dir.path(), Role::Web),
                &[],
                &name,
                &[],
                UnixTime::now(),
            )
            .expect_err("refused");
        assert!(err.to_string().contains("certificate for web web"), "{err}");
        let creds = Credentials::load(
            &CredentialFiles {
                ca: &dir.path().join("ca.pem"),
                cert: &dir.path().join("agent.pem"),
                key: &dir.path().join("agent.key"),
            },
            Role::Web,
        )
        .expect_err("an agent certificate does not serve the page");
        assert!(creds.to_string().contains("--role web"), "{creds}");
    }
}
