//! The private CA behind `handover ca`, and certificate issuance.
//!
//! Every leaf certificate says who its holder is in two places the other side checks
//! during the handshake:
//! * its extended key usage: an agent's certificate is for TLS servers only, a
//!   coordinator's for TLS clients only, so webpki itself refuses one used as the
//!   other;
//! * a URI SAN `urn:handover:<role>:<name>`, which our verifiers in [`crate::tls`]
//!   read, because webpki ignores URI SANs when matching names.
//!
//! The host name is also the certificate's common name and a DNS SAN, so the
//! coordinator can let webpki match the name it dialled.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

use crate::names::{HostName, Role};

/// Prefix of the URI SAN that carries role and name.
const IDENTITY_URI_PREFIX: &str = "urn:handover:";

/// Everything that can go wrong making or reading certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A CA already exists where `ca init` would write one.
    #[error(
        "{0} already exists: a CA is already there (pass --force to replace it, which invalidates every certificate it issued)"
    )]
    CaExists(PathBuf),
    /// Reading or writing a file failed.
    // Not a `source`: the OS error is part of this message, and an error chain
    // printed with `{:#}` would otherwise say it twice.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// rcgen refused the parameters or the key.
    #[error("{context}: {source}")]
    Rcgen {
        /// What we were doing.
        context: String,
        /// What rcgen said.
        source: rcgen::Error,
    },
    /// A private key file others may read.
    #[error("{path} is readable by other users (mode {mode:o}): run `chmod 600 {path}`")]
    KeyTooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The certificate carries no Handover identity.
    #[error(
        "certificate has no Handover identity (urn:handover:<role>:<name> SAN): issue it with `handover ca issue`"
    )]
    NoIdentity,
    /// The certificate could not be parsed.
    #[error("certificate cannot be parsed: {0}")]
    Parse(String),
    /// A bad argument (validity, name).
    #[error("{0}")]
    Invalid(String),
}

/// Who a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Agent or coordinator.
    pub role: Role,
    /// The host or operator name.
    pub name: HostName,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.role, self.name)
    }
}

/// The two files of a CA, or of one issued certificate.
#[derive(Debug, Clone)]
pub struct PemFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// The private key (PEM, mode 0600).
    pub key: PathBuf,
}

/// What to put in a new leaf certificate.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    /// Agent or coordinator.
    pub role: Role,
    /// The holder's name (common name, DNS SAN, identity URI).
    pub name: HostName,
    /// Extra DNS names the holder answers to.
    pub dns: Vec<String>,
    /// IP addresses the holder answers on.
    pub ips: Vec<IpAddr>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl LeafSpec {
    /// A certificate valid from a minute ago for `days` days.
    pub fn new(role: Role, name: HostName, days: u32) -> Self {
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            role,
            name,
            dns: Vec::new(),
            ips: Vec::new(),
            not_before: now - Duration::minutes(1),
            not_after: now + Duration::days(i64::from(days)),
        }
    }
}

/// The CA file paths inside `dir`.
pub fn ca_files(dir: &Path) -> PemFiles {
    PemFiles {
        cert: dir.join("ca.pem"),
        key: dir.join("ca.key"),
    }
}

/// The paths `issue` writes for `name` inside `dir`.
pub fn leaf_files(dir: &Path, name: &HostName) -> PemFiles {
    PemFiles {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    }
}

fn rcgen_err(context: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let context = context.into();
    move |source| PkiError::Rcgen { context, source }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |error| PkiError::Io {
        path: path.to_owned(),
        error,
    }
}

/// A new self-signed CA certificate and key, as PEM text.
pub fn new_ca(common_name: &str, days: u32) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(rcgen_err("generating the CA key"))?;
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Handover");
    params.distinguished_name = dn;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(1);
    params.not_after = now + Duration::days(i64::from(days));
    let cert = params
        .self_signed(&key)
        .map_err(rcgen_err("signing the CA certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A new leaf certificate and key signed by the CA given as PEM text.
pub fn new_leaf(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    spec: &LeafSpec,
) -> Result<(String, String), PkiError> {
    if spec.not_after <= spec.not_before {
        return Err(PkiError::Invalid(
            "the certificate would expire before it starts: give a positive --days".into(),
        ));
    }
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(rcgen_err("reading the CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key)
        .map_err(rcgen_err("reading the CA certificate"))?;

    let key = KeyPair::generate().map_err(rcgen_err("generating a key"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, spec.name.as_str());
    dn.push(DnType::OrganizationName, "Handover");
    dn.push(DnType::OrganizationalUnitName, spec.role.as_str());
    params.distinguished_name = dn;
    params.not_before = spec.not_before;
    params.not_after = spec.not_after;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![match spec.role {
        Role::Agent => ExtendedKeyUsagePurpose::ServerAuth,
        Role::Coordinator => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    let mut sans = vec![dns_san(spec.name.as_str())?];
    for dns in &spec.dns {
        if dns != spec.name.as_str() {
            sans.push(dns_san(dns)?);
        }
    }
    sans.extend(spec.ips.iter().map(|ip| SanType::IpAddress(*ip)));
    let uri = format!("{IDENTITY_URI_PREFIX}{}:{}", spec.role, spec.name);
    sans.push(SanType::URI(
        uri.try_into()
            .map_err(rcgen_err("encoding the identity URI"))?,
    ));
    params.subject_alt_names = sans;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(rcgen_err("signing the certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn dns_san(name: &str) -> Result<SanType, PkiError> {
    Ok(SanType::DnsName(name.try_into().map_err(rcgen_err(
        format!("{name:?} is not a DNS name"),
    ))?))
}

/// `handover ca init`: writes `DIR/ca.pem` and `DIR/ca.key` (0600).
pub fn init_ca(dir: &Path, force: bool, days: u32) -> Result<PemFiles, PkiError> {
    let files = ca_files(dir);
    if !force {
        for path in [&files.cert, &files.key] {
            if path.exists() {
                return Err(PkiError::CaExists(path.clone()));
            }
        }
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    // A distinct name per CA, so a certificate from another Handover CA reads as
    // "unknown issuer" rather than as a bad signature from this one.
    let id: u32 = rand_id();
    let (cert, key) = new_ca(&format!("Handover private CA {id:08x}"), days)?;
    write_private(&files.key, key.as_bytes())?;
    write_public(&files.cert, cert.as_bytes())?;
    Ok(files)
}

fn rand_id() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish() as u32
}

/// `handover ca issue`: signs a leaf with the CA in `dir` and writes
/// `DIR/NAME.pem` and `DIR/NAME.key` (0600).
pub fn issue(dir: &Path, spec: &LeafSpec) -> Result<PemFiles, PkiError> {
    let ca = ca_files(dir);
    check_private_key_mode(&ca.key)?;
    let ca_cert = fs::read_to_string(&ca.cert).map_err(io_err(&ca.cert))?;
    let ca_key = fs::read_to_string(&ca.key).map_err(io_err(&ca.key))?;
    let (cert, key) = new_leaf(&ca_cert, &ca_key, spec)?;
    let files = leaf_files(dir, &spec.name);
    write_private(&files.key, key.as_bytes())?;
    write_public(&files.cert, cert.as_bytes())?;
    Ok(files)
}

/// Refuses a private key that group or others can read.
pub fn check_private_key_mode(path: &Path) -> Result<(), PkiError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(PkiError::KeyTooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Writes `bytes` to a new file readable by its owner only, replacing any old one
/// by rename so a reader never sees half a key.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    write_atomically(path, bytes, 0o600)
}

fn write_public(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    write_atomically(path, bytes, 0o644)
}

fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp~");
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(bytes).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// Reads the Handover identity from a DER certificate.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, PkiError> {
    use x509_parser::prelude::*;
    let (_, parsed) =
        X509Certificate::from_der(cert.as_ref()).map_err(|e| PkiError::Parse(e.to_string()))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| PkiError::Parse(e.to_string()))?
        .ok_or(PkiError::NoIdentity)?;
    let mut found = None;
    for name in &san.value.general_names {
        if let GeneralName::URI(uri) = name
            && let Some(rest) = uri.strip_prefix(IDENTITY_URI_PREFIX)
        {
            if found.is_some() {
                return Err(PkiError::Parse(
                    "certificate carries two Handover identities".into(),
                ));
            }
            found = Some(rest.to_owned());
        }
    }
    let rest = found.ok_or(PkiError::NoIdentity)?;
    let (role, name) = rest.split_once(':').ok_or(PkiError::NoIdentity)?;
    let role = role
        .parse::<Role>()
        .map_err(|e| PkiError::Parse(e.to_string()))?;
    let name = HostName::new(name).map_err(|e| PkiError::Parse(e.to_string()))?;
    Ok(Identity { role, name })
}

/// Reads the first certificate of a PEM file as DER.
pub fn read_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    use rustls_pki_types::pem::PemObject;
    let bytes = fs::read(path).map_err(io_err(path))?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
    let certs = certs.map_err(|e| PkiError::Parse(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(PkiError::Parse(format!(
            "{}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> HostName {
        HostName::new(s).expect("valid name")
    }

    #[test]
    fn issued_certificates_carry_role_and_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        init_ca(dir.path(), false, 30).expect("init");
        let mut spec = LeafSpec::new(Role::Agent, name("web-1"), 30);
        spec.ips.push("127.0.1.1".parse().expect("ip"));
        let files = issue(dir.path(), &spec).expect("issue");
        let chain = read_cert_chain(&files.cert).expect("read");
        let id = identity_of(&chain[0]).expect("identity");
        assert_eq!(id.role, Role::Agent);
        assert_eq!(id.name, name("web-1"));
        let mode = fs::metadata(&files.key).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn init_refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        init_ca(dir.path(), false, 30).expect("init");
        let before = fs::read(dir.path().join("ca.pem")).expect("read");
        assert!(matches!(
            init_ca(dir.path(), false, 30),
            Err(PkiError::CaExists(_))
        ));
        assert_eq!(before, fs::read(dir.path().join("ca.pem")).expect("read"));
        init_ca(dir.path(), true, 30).expect("forced");
        assert_ne!(before, fs::read(dir.path().join("ca.pem")).expect("read"));
    }

    #[test]
    fn issue_refuses_a_world_readable_ca_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = init_ca(dir.path(), false, 30).expect("init");
        fs::set_permissions(&ca.key, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = issue(dir.path(), &LeafSpec::new(Role::Agent, name("web-1"), 1))
            .expect_err("must refuse");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        assert!(!dir.path().join("web-1.pem").exists());
    }
}
