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

use crate::names::{DnsName, HostName, Role};

pub mod revocation;
pub mod tokens;

/// Prefix of the URI SAN that carries role and name.
const IDENTITY_URI_PREFIX: &str = "urn:handover:";

/// Default validity of a coordinator certificate: 30 days. A coordinator
/// certificate may drain, detach and deploy every host, so a lost one must stop
/// working soon even if nobody revokes it; a month is long enough that renewing
/// (`handover ca issue --renew`) is a monthly chore rather than a daily one, and
/// short enough that a laptop lost today is harmless before the next quarter.
pub const DEFAULT_COORDINATOR_DAYS: u32 = 30;
/// The longest a coordinator certificate may be valid: a year.
pub const MAX_COORDINATOR_DAYS: u32 = 365;
/// Default validity of an agent certificate: a year. An agent certificate only
/// lets its holder answer as that host; it cannot command anything.
pub const DEFAULT_AGENT_DAYS: u32 = 365;
/// The longest an agent certificate may be valid: ten years.
pub const MAX_AGENT_DAYS: u32 = 3650;
/// Default validity of a `web` certificate (the page's HTTPS server): a year, as
/// an agent's: it only lets its holder serve the read-only page.
pub const DEFAULT_WEB_DAYS: u32 = 365;
/// The longest a `web` certificate may be valid: about 27 months, the most
/// browsers accept for a server certificate (a private CA's too, in Safari).
pub const MAX_WEB_DAYS: u32 = 825;
/// Default validity of a `viewer` certificate (a browser reading the page): 90
/// days. It reads the fleet's state and nothing else, but it sits in a browser
/// profile, so it should lapse on its own.
pub const DEFAULT_VIEWER_DAYS: u32 = 90;
/// The longest a `viewer` certificate may be valid: a year.
pub const MAX_VIEWER_DAYS: u32 = 365;
/// Default validity of the CA: ten years.
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// The longest the CA may be valid: thirty years.
pub const MAX_CA_DAYS: u32 = 10950;

/// Leaf names whose files would be the CA's own (`ca.pem`, `ca.key`) or the CRL
/// (`crl.pem`): `ca issue --name ca` once replaced the CA with a leaf (issue 13).
const RESERVED_NAMES: &[&str] = &["ca", "crl"];

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
    /// A certificate for this name was issued already.
    #[error(
        "{0} already exists: pass --renew to give it a new certificate and key with the same role and names, or --force to replace it with this one"
    )]
    LeafExists(PathBuf),
    /// The name is one the CA's own files use.
    #[error(
        "{0:?} cannot be a certificate name: its files would replace the CA's own (ca.pem, ca.key, crl.pem); choose another name"
    )]
    ReservedName(String),
    /// `--renew` for a name that has no certificate yet.
    #[error("{0} does not exist: nothing to renew (issue it first, without --renew)")]
    NothingToRenew(PathBuf),
}

/// The validity `days` from now, refused outside `1..=max` days.
pub fn validity(
    what: &str,
    days: u32,
    max: u32,
) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    if days == 0 || days > max {
        return Err(PkiError::Invalid(format!(
            "--days {days}: a {what} must be valid for 1 to {max} days"
        )));
    }
    let now = OffsetDateTime::now_utc();
    let not_after = now
        .checked_add(Duration::days(i64::from(days)))
        .ok_or_else(|| PkiError::Invalid(format!("--days {days} is past the year 9999")))?;
    Ok((now - Duration::minutes(1), not_after))
}

/// The longest validity a certificate of `role` may have, in days.
pub fn max_days(role: Role) -> u32 {
    match role {
        Role::Agent => MAX_AGENT_DAYS,
        Role::Coordinator => MAX_COORDINATOR_DAYS,
        Role::Web => MAX_WEB_DAYS,
        Role::Viewer => MAX_VIEWER_DAYS,
    }
}

/// The validity a certificate of `role` gets when `--days` is not given.
pub fn default_days(role: Role) -> u32 {
    match role {
        Role::Agent => DEFAULT_AGENT_DAYS,
        Role::Coordinator => DEFAULT_COORDINATOR_DAYS,
        Role::Web => DEFAULT_WEB_DAYS,
        Role::Viewer => DEFAULT_VIEWER_DAYS,
    }
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
    /// A certificate valid from a minute ago for `days` days (saturating at the
    /// end of year 9999; [`issue`] refuses what the role or the CA does not allow).
    pub fn new(role: Role, name: HostName, days: u32) -> Self {
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            role,
            name,
            dns: Vec::new(),
            ips: Vec::new(),
            not_before: now - Duration::minutes(1),
            not_after: now
                .checked_add(Duration::days(i64::from(days)))
                .unwrap_or_else(|| time::Date::MAX.midnight().assume_utc()),
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
    validity("CA", days, MAX_CA_DAYS)?;
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
    (params.not_before, params.not_after) = validity("CA", days, MAX_CA_DAYS)?;
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
    let key = KeyPair::generate().map_err(rcgen_err("generating a key"))?;
    let cert = sign_leaf(ca_cert_pem, ca_key_pem, spec, &key)?;
    Ok((cert, key.serialize_pem()))
}

/// A new private key (ECDSA P-256) as PEM, for a host that makes its own.
pub fn new_private_key_pem() -> Result<String, PkiError> {
    let key = KeyPair::generate().map_err(rcgen_err("generating a key"))?;
    Ok(key.serialize_pem())
}

/// A new leaf certificate for a public key the holder generated itself (join
/// tokens: the private key never leaves the new host), signed by the CA given as
/// PEM text. `spki_der` is the holder's SubjectPublicKeyInfo.
pub fn new_leaf_for_key(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    spec: &LeafSpec,
    spki_der: &[u8],
) -> Result<String, PkiError> {
    let key = rcgen::SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(rcgen_err("reading the holder's public key"))?;
    sign_leaf(ca_cert_pem, ca_key_pem, spec, &key)
}

fn sign_leaf(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    spec: &LeafSpec,
    key: &impl rcgen::PublicKeyData,
) -> Result<String, PkiError> {
    if spec.not_after <= spec.not_before {
        return Err(PkiError::Invalid(
            "the certificate would expire before it starts: give a positive --days".into(),
        ));
    }
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(rcgen_err("reading the CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key)
        .map_err(rcgen_err("reading the CA certificate"))?;
    let params = leaf_params(spec)?;
    let cert = params
        .signed_by(key, &issuer)
        .map_err(rcgen_err("signing the certificate"))?;
    Ok(cert.pem())
}

fn leaf_params(spec: &LeafSpec) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, spec.name.as_str());
    dn.push(DnType::OrganizationName, "Handover");
    dn.push(DnType::OrganizationalUnitName, spec.role.as_str());
    params.distinguished_name = dn;
    params.not_before = spec.not_before;
    params.not_after = spec.not_after;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Servers (agents, the page) are servers only and clients (coordinators,
    // browsers) clients only; the identity URI then tells the two of each apart.
    params.extended_key_usages = vec![match spec.role {
        Role::Agent | Role::Web => ExtendedKeyUsagePurpose::ServerAuth,
        Role::Coordinator | Role::Viewer => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    let mut sans = vec![dns_san(spec.name.as_str())?];
    for dns in &spec.dns {
        let dns = DnsName::new(dns.as_str()).map_err(|e| PkiError::Invalid(e.to_string()))?;
        if dns.as_str() != spec.name.as_str() {
            sans.push(dns_san(dns.as_str())?);
        }
    }
    sans.extend(spec.ips.iter().map(|ip| SanType::IpAddress(*ip)));
    let uri = format!("{IDENTITY_URI_PREFIX}{}:{}", spec.role, spec.name);
    sans.push(SanType::URI(
        uri.try_into()
            .map_err(rcgen_err("encoding the identity URI"))?,
    ));
    params.subject_alt_names = sans;
    Ok(params)
}

fn dns_san(name: &str) -> Result<SanType, PkiError> {
    Ok(SanType::DnsName(name.try_into().map_err(rcgen_err(
        format!("{name:?} is not a DNS name"),
    ))?))
}

/// `handover ca init`: writes `DIR/ca.pem` and `DIR/ca.key` (0600).
pub fn init_ca(dir: &Path, force: bool, days: u32) -> Result<PemFiles, PkiError> {
    validity("CA", days, MAX_CA_DAYS)?;
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
    // A new CA revokes nothing yet: start both ledgers afresh and publish an empty
    // CRL, so agents can name `crl` from day one.
    for ledger in ["issued.tsv", "revoked.tsv"] {
        match fs::remove_file(dir.join(ledger)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(PkiError::Io {
                    path: dir.join(ledger),
                    error: e,
                });
            }
            _ => {}
        }
    }
    revocation::write_crl(dir)?;
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

/// Whether `issue` may replace an existing certificate for the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Refuse (the default: a silent overwrite lost the CA once).
    Refuse,
    /// Replace it (`--force`, or `--renew`).
    Replace,
}

/// `handover ca issue`: signs a leaf with the CA in `dir` and writes
/// `DIR/NAME.pem` and `DIR/NAME.key` (0600), and records its serial in the CA's
/// ledger so `ca revoke NAME` can find every certificate the name was given.
pub fn issue(dir: &Path, spec: &LeafSpec, existing: Existing) -> Result<PemFiles, PkiError> {
    let files = check_leaf(dir, spec, existing)?;
    let (ca_cert, ca_key, spec) = read_ca_for(dir, spec)?;
    let (cert, key) = new_leaf(&ca_cert, &ca_key, &spec)?;
    revocation::record_issued(dir, &cert)?;
    write_private(&files.key, key.as_bytes())?;
    write_public(&files.cert, cert.as_bytes())?;
    Ok(files)
}

/// Join tokens: signs a leaf for the public key a new host made itself, records it
/// in the CA's ledger (so `ca revoke NAME` finds it) and writes `DIR/NAME.pem`
/// (no key file: the CA never sees the key). Refused like [`issue`] when `NAME`
/// has a certificate already. Returns the certificate as PEM.
pub fn issue_for_public_key(
    dir: &Path,
    spec: &LeafSpec,
    spki_der: &[u8],
) -> Result<String, PkiError> {
    let files = check_leaf(dir, spec, Existing::Refuse)?;
    let (ca_cert, ca_key, spec) = read_ca_for(dir, spec)?;
    let cert = new_leaf_for_key(&ca_cert, &ca_key, &spec, spki_der)?;
    revocation::record_issued(dir, &cert)?;
    write_public(&files.cert, cert.as_bytes())?;
    Ok(cert)
}

/// What [`issue`] refuses before it reads the CA: a reserved name, a validity
/// longer than the role allows, an existing certificate (unless replacing).
pub fn check_leaf(dir: &Path, spec: &LeafSpec, existing: Existing) -> Result<PemFiles, PkiError> {
    if RESERVED_NAMES
        .iter()
        .any(|r| r.eq_ignore_ascii_case(spec.name.as_str()))
    {
        return Err(PkiError::ReservedName(spec.name.to_string()));
    }
    let days = (spec.not_after - spec.not_before).whole_days();
    let max = max_days(spec.role);
    if days > i64::from(max) {
        return Err(PkiError::Invalid(format!(
            "--days {days}: a {} certificate may be valid for at most {max} days (renew it with `handover ca issue --renew`)",
            spec.role
        )));
    }
    let files = leaf_files(dir, &spec.name);
    if existing == Existing::Refuse {
        for path in [&files.cert, &files.key] {
            if path.exists() {
                return Err(PkiError::LeafExists(path.clone()));
            }
        }
    }
    Ok(files)
}

/// The CA's certificate and key as PEM, and `spec` cut to end with the CA.
fn read_ca_for(dir: &Path, spec: &LeafSpec) -> Result<(String, String, LeafSpec), PkiError> {
    let ca = ca_files(dir);
    check_private_key_mode(&ca.key)?;
    let ca_cert = fs::read_to_string(&ca.cert).map_err(io_err(&ca.cert))?;
    let ca_key = fs::read_to_string(&ca.key).map_err(io_err(&ca.key))?;
    let mut spec = spec.clone();
    spec.not_after = within_ca(&ca, &ca_cert, &spec)?;
    Ok((ca_cert, ca_key, spec))
}

/// `handover ca issue --renew`: a new key and certificate for `name`, with the
/// role and names of its current certificate, valid for `days` from now (the
/// role's default when `None`). The old certificate stays valid until it expires;
/// revoke it (`ca revoke`) if its key may be lost.
pub fn renew(
    dir: &Path,
    name: &HostName,
    days: Option<u32>,
) -> Result<(PemFiles, LeafSpec), PkiError> {
    let files = leaf_files(dir, name);
    if !files.cert.exists() {
        return Err(PkiError::NothingToRenew(files.cert));
    }
    let chain = read_cert_chain(&files.cert)?;
    let identity = identity_of(&chain[0])?;
    if &identity.name != name {
        return Err(PkiError::Invalid(format!(
            "{} is the certificate of {}, not {name}: renew it by its own name",
            files.cert.display(),
            identity
        )));
    }
    let days = days.unwrap_or_else(|| default_days(identity.role));
    let (not_before, not_after) = validity(
        &format!("{} certificate", identity.role),
        days,
        max_days(identity.role),
    )?;
    let (dns, ips) = alt_names(&chain[0])?;
    let spec = LeafSpec {
        role: identity.role,
        dns: dns.into_iter().filter(|d| d != name.as_str()).collect(),
        name: identity.name,
        ips,
        not_before,
        not_after,
    };
    let files = issue(dir, &spec, Existing::Replace)?;
    Ok((files, spec))
}

/// The DNS and IP names a certificate lists.
fn alt_names(cert: &CertificateDer<'_>) -> Result<(Vec<String>, Vec<IpAddr>), PkiError> {
    use x509_parser::prelude::*;
    let (_, parsed) =
        X509Certificate::from_der(cert.as_ref()).map_err(|e| PkiError::Parse(e.to_string()))?;
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    if let Some(san) = parsed
        .subject_alternative_name()
        .map_err(|e| PkiError::Parse(e.to_string()))?
    {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())),
                    16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok((dns, ips))
}

/// Refuses a leaf that would outlive the CA that signs it by more than a day; a
/// leaf that would end within a day after the CA ends with it instead (the same
/// `--days` for both must work).
fn within_ca(
    ca: &PemFiles,
    ca_cert_pem: &str,
    spec: &LeafSpec,
) -> Result<OffsetDateTime, PkiError> {
    use rustls_pki_types::pem::PemObject;
    use x509_parser::prelude::*;
    let der = CertificateDer::from_pem_slice(ca_cert_pem.as_bytes())
        .map_err(|e| PkiError::Parse(format!("{}: {e}", ca.cert.display())))?;
    let (_, parsed) =
        X509Certificate::from_der(der.as_ref()).map_err(|e| PkiError::Parse(e.to_string()))?;
    let ca_end = parsed.validity().not_after.to_datetime();
    if spec.not_after > ca_end + Duration::days(1) {
        let left = (ca_end - OffsetDateTime::now_utc()).whole_days().max(0);
        return Err(PkiError::Invalid(format!(
            "the CA in {} expires on {}: a certificate cannot outlive it; give --days {left} or less, or make a new CA",
            ca.cert.display(),
            ca_end.date()
        )));
    }
    Ok(spec.not_after.min(ca_end))
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

/// Writes `bytes` to a new file anyone may read, replacing any old one by rename.
pub fn write_public(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
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
        let files = issue(dir.path(), &spec, Existing::Refuse).expect("issue");
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
        let err = issue(
            dir.path(),
            &LeafSpec::new(Role::Agent, name("web-1"), 1),
            Existing::Refuse,
        )
        .expect_err("must refuse");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        assert!(!dir.path().join("web-1.pem").exists());
    }

    /// Issue 13, hole 5: `ca issue --name ca` replaced the CA's own files with a
    /// leaf (the CA key was lost). Refused always, --force or not.
    #[test]
    fn a_leaf_never_takes_the_ca_files_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        init_ca(dir.path(), false, 30).expect("init");
        let ca_before = fs::read(dir.path().join("ca.key")).expect("read");
        for reserved in ["ca", "CA", "crl"] {
            for existing in [Existing::Refuse, Existing::Replace] {
                let err = issue(
                    dir.path(),
                    &LeafSpec::new(Role::Coordinator, name(reserved), 1),
                    existing,
                )
                .expect_err("must refuse");
                assert!(matches!(err, PkiError::ReservedName(_)), "{err}");
            }
        }
        assert_eq!(
            ca_before,
            fs::read(dir.path().join("ca.key")).expect("read")
        );
    }

    /// Issue 13, hole 5: `issue` overwrote an existing leaf silently.
    #[test]
    fn issuing_a_name_again_needs_force_or_renew() {
        let dir = tempfile::tempdir().expect("tempdir");
        init_ca(dir.path(), false, 30).expect("init");
        let spec = LeafSpec::new(Role::Agent, name("web-1"), 10);
        let files = issue(dir.path(), &spec, Existing::Refuse).expect("issue");
        let before = fs::read(&files.key).expect("read");
        let err = issue(dir.path(), &spec, Existing::Refuse).expect_err("must refuse");
        assert!(err.to_string().contains("--renew"), "{err}");
        assert_eq!(before, fs::read(&files.key).expect("read"));
        issue(dir.path(), &spec, Existing::Replace).expect("forced");
        assert_ne!(before, fs::read(&files.key).expect("read"));
    }

    /// Issue 13, hole 12: huge --days panicked, --days 0 made a useless CA.
    #[test]
    fn validity_is_bounded_without_panicking() {
        let dir = tempfile::tempdir().expect("tempdir");
        for days in [0, MAX_CA_DAYS + 1, u32::MAX] {
            let err = init_ca(dir.path(), false, days).expect_err("must refuse");
            assert!(err.to_string().contains("valid for 1 to"), "{err}");
            assert!(!dir.path().join("ca.pem").exists());
        }
        init_ca(dir.path(), false, 100).expect("init");
        for (role, days) in [
            (Role::Coordinator, MAX_COORDINATOR_DAYS + 1),
            (Role::Agent, u32::MAX),
            (Role::Agent, 102),
        ] {
            let err = issue(
                dir.path(),
                &LeafSpec::new(role, name("web-1"), days),
                Existing::Refuse,
            )
            .expect_err("must refuse");
            let text = err.to_string();
            assert!(
                text.contains("at most") || text.contains("cannot outlive"),
                "{text}"
            );
        }
        assert!(!dir.path().join("web-1.pem").exists());
    }

    #[test]
    fn renewal_keeps_role_and_names_with_a_new_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        init_ca(dir.path(), false, 400).expect("init");
        let mut spec = LeafSpec::new(Role::Agent, name("web-1"), 10);
        spec.dns.push("web-1.example.com".into());
        spec.ips.push("127.0.1.1".parse().expect("ip"));
        let files = issue(dir.path(), &spec, Existing::Refuse).expect("issue");
        let key_before = fs::read(&files.key).expect("read");
        let (_, renewed) = renew(dir.path(), &name("web-1"), None).expect("renew");
        assert_eq!(renewed.role, Role::Agent);
        assert_eq!(renewed.dns, ["web-1.example.com"]);
        assert_eq!(renewed.ips, spec.ips);
        assert!(
            renewed.not_after > spec.not_after,
            "default agent validity is longer"
        );
        assert_ne!(key_before, fs::read(&files.key).expect("read"));
        let err = renew(dir.path(), &name("web-2"), None).expect_err("nothing to renew");
        assert!(err.to_string().contains("nothing to renew"), "{err}");
    }
}
