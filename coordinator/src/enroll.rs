//! Enrolling a host that waits with a join token (`handover-agent join`): dial it,
//! check its token proof, redeem the token, sign a certificate for the key it
//! holds, with the name and address we know it by.
//!
//! `handover enroll HOST --address ADDR --dir CA_DIR` calls [`enroll`]; so can the
//! surge engine for a host a provider just launched (the provider reports name and
//! address; the host's user data runs `handover-agent join`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use handover_common::join::{self, Answer, CaHash, Offer, Outcome, Stored};
use handover_common::names::{HostName, Role};
use handover_common::pki::tokens::{self, TokenError};
use handover_common::pki::{self, Existing, LeafSpec};
use handover_common::tls::CredentialFiles;
use serde::Deserialize;

/// `[enroll]` in handover.toml: the CA directory this bastion holds, so that the
/// servers a surge rollout launches (`[surge] enroll = true`) get their agent
/// certificates with single-use join tokens (see `rollout::surge_enroll`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollConfig {
    /// The CA directory (`handover ca init`): ca.pem, ca.key and the token store.
    pub ca_dir: PathBuf,
    /// How long a launched server may take to boot and answer as a joining
    /// agent before the rollout gives up on it.
    #[serde(
        default = "default_enroll_wait",
        with = "handover_common::duration::serde_human_positive"
    )]
    pub wait: Duration,
}

fn default_enroll_wait() -> Duration {
    Duration::from_secs(600)
}

impl EnrollConfig {
    /// Checks, once at load, that `ca_dir` holds a CA with its key, and that it
    /// is the CA of this coordinator's certificate (`ca` in handover.toml).
    pub fn check(&self, config_ca: &Path) -> Result<CaHash, EnrollError> {
        let key = pki::ca_files(&self.ca_dir).key;
        if !key.exists() {
            return Err(pki::PkiError::Invalid(format!(
                "[enroll] ca_dir = {:?} holds no CA ({} is missing): give the directory of `handover ca init`, on this bastion",
                self.ca_dir.display(),
                key.display()
            ))
            .into());
        }
        same_ca(config_ca, &self.ca_dir)?;
        Ok(CaHash::of_ca_dir(&self.ca_dir)?)
    }
}

/// What to enroll.
#[derive(Debug, Clone)]
pub struct EnrollRequest {
    /// The CA directory (`handover ca init`), holding the token store.
    pub ca_dir: PathBuf,
    /// The host's inventory name: its certificate's name.
    pub name: HostName,
    /// Where its agent listens (its address goes into the certificate too).
    pub address: SocketAddr,
    /// How long to keep dialling a host that is not listening yet (booting).
    pub wait: Duration,
    /// The only tokens this host may prove (the ones made for its launch);
    /// empty: any token of the CA directory.
    pub only: Vec<tokens::TokenId>,
}

/// Why a host was not enrolled. Nothing was issued in any of these cases except
/// [`EnrollError::NotStored`].
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// A certificate, CA or token-store problem.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// The token was refused (unknown, revoked, expired, used, wrong secret).
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Our own TLS files cannot be used.
    #[error(transparent)]
    Tls(#[from] handover_common::tls::TlsError),
    /// The coordinator config names another CA than the CA directory.
    #[error(
        "the coordinator's CA ({config}) is not the CA in {dir} ({dir_hash} vs {config_hash}): enroll with the CA directory that issued this coordinator's certificate"
    )]
    OtherCa {
        /// The config's CA file.
        config: String,
        /// The CA directory.
        dir: String,
        /// Hash of the directory's CA.
        dir_hash: CaHash,
        /// Hash of the config's CA.
        config_hash: CaHash,
    },
    /// Nobody answered as a joining host in time.
    #[error(
        "no joining agent answered at {address} within {waited:?}: {last} (is `handover-agent join` running there, and UDP {port} open from here?)"
    )]
    Unreachable {
        /// Where we dialled.
        address: SocketAddr,
        /// How long we tried.
        waited: Duration,
        /// The last failure.
        last: String,
        /// The port.
        port: u16,
    },
    /// The host refused the offer or the exchange broke.
    #[error("{address}: {why}")]
    Exchange {
        /// Where we dialled.
        address: SocketAddr,
        /// What happened.
        why: String,
    },
    /// The certificate was issued but the host did not store it.
    #[error(
        "{name}: a certificate was issued but the host refused it: {why} (revoke it with `handover ca revoke --name {name}`)"
    )]
    NotStored {
        /// The host.
        name: HostName,
        /// What the host said.
        why: String,
    },
}

/// What enrolling produced.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// The certificate written to the CA directory (`NAME.pem`).
    pub cert: PathBuf,
    /// The token used.
    pub token: tokens::TokenId,
}

/// Enrolls the joining host at `request.address` as `request.name`.
pub async fn enroll(
    files: &CredentialFiles<'_>,
    request: &EnrollRequest,
) -> Result<Enrolled, EnrollError> {
    handover_common::tls::install_crypto_provider();
    same_ca(files.ca, &request.ca_dir)?;
    let spec = leaf_spec(request);
    // Refuse an existing name before dialling: the token must not be spent on it.
    let cert_path = pki::check_leaf(&request.ca_dir, &spec, Existing::Refuse)?.cert;
    let client = join::join_client_config(files)?;
    let bind = match request.address {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    };
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| exchange(request, e))?;
    endpoint.set_default_client_config(client);
    let conn = dial(&endpoint, request).await?;
    let result = exchange_on(&conn, request, &spec).await;
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    let token = result?;
    Ok(Enrolled {
        cert: cert_path,
        token,
    })
}

fn leaf_spec(request: &EnrollRequest) -> LeafSpec {
    let mut spec = LeafSpec::new(Role::Agent, request.name.clone(), pki::DEFAULT_AGENT_DAYS);
    spec.ips.push(request.address.ip());
    spec
}

fn exchange(request: &EnrollRequest, why: impl std::fmt::Display) -> EnrollError {
    EnrollError::Exchange {
        address: request.address,
        why: why.to_string(),
    }
}

fn same_ca(config_ca: &Path, dir: &Path) -> Result<(), EnrollError> {
    let dir_hash = CaHash::of_ca_dir(dir)?;
    let chain = pki::read_cert_chain(config_ca)?;
    let config_hash = CaHash::of_cert(&chain[0])?;
    if dir_hash != config_hash {
        return Err(EnrollError::OtherCa {
            config: config_ca.display().to_string(),
            dir: dir.display().to_string(),
            dir_hash,
            config_hash,
        });
    }
    Ok(())
}

/// Dials until a joining host answers or `request.wait` passes. A handshake the
/// host refuses (wrong CA pin) is final: retrying cannot change it.
async fn dial(
    endpoint: &quinn::Endpoint,
    request: &EnrollRequest,
) -> Result<quinn::Connection, EnrollError> {
    let start = Instant::now();
    loop {
        let attempt = endpoint
            .connect(request.address, join::JOIN_SERVER_NAME)
            .map_err(|e| exchange(request, e))?;
        let last = match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(quinn::ConnectionError::ConnectionClosed(close))) => {
                return Err(exchange(
                    request,
                    format!(
                        "the host refused this coordinator: {} (a joining host pins its CA by --ca-hash; an enrolled one speaks only handover/1)",
                        String::from_utf8_lossy(&close.reason)
                    ),
                ));
            }
            Ok(Err(quinn::ConnectionError::TransportError(e))) => {
                return Err(exchange(
                    request,
                    format!(
                        "the host refused this coordinator: {e} (a joining host pins its CA by --ca-hash; an enrolled one speaks only handover/1)"
                    ),
                ));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer".to_owned(),
        };
        if start.elapsed() >= request.wait {
            return Err(EnrollError::Unreachable {
                address: request.address,
                waited: request.wait,
                last,
                port: request.address.port(),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Offer → proof → redeem + issue → stored.
async fn exchange_on(
    conn: &quinn::Connection,
    request: &EnrollRequest,
    spec: &LeafSpec,
) -> Result<tokens::TokenId, EnrollError> {
    let spki = peer_spki(conn).map_err(|e| exchange(request, e))?;
    // TLS 1.3 finishes on our side before the host has checked our certificate
    // against its pin: a refusal shows up on the first stream.
    let refused = |e: String| {
        exchange(
            request,
            format!(
                "the host refused this coordinator or went away: {e} (a joining host accepts only a coordinator of the CA its --ca-hash pins; see its log)"
            ),
        )
    };
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| refused(e.to_string()))?;
    let offer = Offer {
        name: request.name.clone(),
        address: request.address.ip(),
    };
    join::send(&mut send, &offer).await.map_err(refused)?;
    let answer: Answer = join::receive(&mut recv).await.map_err(refused)?;
    let (id, proof) = match answer {
        Answer::Proof { id, proof } => (id, proof),
        Answer::Refused(why) => return Err(exchange(request, why)),
    };
    if !request.only.is_empty() && !request.only.contains(&id) {
        let why = format!(
            "the host holds join token {id}, which was not made for its launch (expected one of {}): nothing was issued",
            request
                .only
                .iter()
                .map(tokens::TokenId::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Ok((mut send, _)) = conn.open_bi().await {
            let _ = join::send(&mut send, &Outcome::Refused(why.clone())).await;
        }
        return Err(exchange(request, why));
    }
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| exchange(request, e))?;
    let issued = tokens::redeem(&request.ca_dir, &id, SystemTime::now(), |key| {
        join::verify_proof(key, &id, &spki, &proof)
    })
    .map_err(EnrollError::from)
    .and_then(|_| Ok(pki::issue_for_public_key(&request.ca_dir, spec, &spki)?));
    let cert_pem = match issued {
        Ok(cert) => cert,
        Err(e) => {
            let _ = join::send(&mut send, &Outcome::Refused(e.to_string())).await;
            return Err(e);
        }
    };
    let ca_pem = std::fs::read_to_string(pki::ca_files(&request.ca_dir).cert).map_err(|e| {
        pki::PkiError::Io {
            path: pki::ca_files(&request.ca_dir).cert,
            error: e,
        }
    })?;
    join::send(&mut send, &Outcome::Issued { cert_pem, ca_pem })
        .await
        .map_err(|e| exchange(request, e))?;
    match join::receive::<Stored>(&mut recv).await {
        Ok(Stored::Yes) => Ok(id),
        Ok(Stored::Refused(why)) | Err(why) => Err(EnrollError::NotStored {
            name: request.name.clone(),
            why,
        }),
    }
}

fn peer_spki(conn: &quinn::Connection) -> Result<Vec<u8>, String> {
    let chain = conn
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or("the host presented no certificate")?;
    let leaf = chain.first().ok_or("the host presented no certificate")?;
    join::spki_of(leaf).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(ca_dir: &Path) -> EnrollConfig {
        EnrollConfig {
            ca_dir: ca_dir.to_owned(),
            wait: default_enroll_wait(),
        }
    }

    /// `[enroll] ca_dir` is checked at load: a directory without a CA key, or
    /// the CA of another coordinator, is refused naming the fix.
    #[test]
    fn the_enroll_ca_directory_must_hold_this_coordinators_ca_with_its_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ours = dir.path().join("pki");
        let other = dir.path().join("other");
        let ca = pki::init_ca(&ours, false, 30).expect("ca").cert;
        pki::init_ca(&other, false, 30).expect("other ca");

        let hash = settings(&ours).check(&ca).expect("our CA");
        assert_eq!(hash, CaHash::of_ca_dir(&ours).expect("hash"));

        let err = settings(&other).check(&ca).expect_err("another CA");
        assert!(
            err.to_string()
                .contains("the CA directory that issued this coordinator's certificate"),
            "{err}"
        );
        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty).expect("dir");
        let err = settings(&empty).check(&ca).expect_err("no CA");
        assert!(
            err.to_string().contains("[enroll] ca_dir") && err.to_string().contains("ca init"),
            "{err}"
        );
        let parsed: EnrollConfig = toml::from_str("ca_dir = \"/pki\"").expect("defaults");
        assert_eq!(parsed.wait, Duration::from_secs(600));
        let err = toml::from_str::<EnrollConfig>("ca_dir = \"/pki\"\nwait = \"0s\"")
            .expect_err("zero wait");
        assert!(err.to_string().contains("wait"), "{err}");
    }
}
