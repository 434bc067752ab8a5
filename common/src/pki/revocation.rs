//! Revocation: `handover ca revoke NAME` and the CRL agents load (`crl = PATH`).
//!
//! The CA directory keeps two plain ledgers beside `ca.pem`:
//! * `issued.tsv`: one line per certificate ever issued (serial, role, name), so a
//!   revocation finds every certificate a name was given, renewed ones included;
//! * `revoked.tsv`: one line per revoked serial, from which `crl.pem` is signed
//!   anew on every revocation.
//!
//! A CRL rather than a serial deny-list in agent.toml: rustls checks it during the
//! handshake (a revoked coordinator never gets a connection), it is signed by the
//! CA (a host cannot be handed a forged one), and it is one file to copy.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevocationReason,
    RevokedCertParams, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use super::{PkiError, ca_files, identity_of, io_err, leaf_files, rcgen_err, write_public};
use crate::names::HostName;

/// The CRL file inside a CA directory.
pub fn crl_file(dir: &Path) -> PathBuf {
    dir.join("crl.pem")
}

fn issued_file(dir: &Path) -> PathBuf {
    dir.join("issued.tsv")
}

fn revoked_file(dir: &Path) -> PathBuf {
    dir.join("revoked.tsv")
}

/// The serial number of a DER certificate, as lowercase hex.
pub fn serial_of(cert: &CertificateDer<'_>) -> Result<String, PkiError> {
    use x509_parser::prelude::*;
    let (_, parsed) =
        X509Certificate::from_der(cert.as_ref()).map_err(|e| PkiError::Parse(e.to_string()))?;
    Ok(hex(parsed.raw_serial()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn append_line(path: &Path, line: &str) -> Result<(), PkiError> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    writeln!(file, "{line}").map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

/// Lines of a ledger, split on tabs; a missing ledger is empty.
fn read_ledger(path: &Path) -> Result<Vec<Vec<String>>, PkiError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.split('\t').map(str::to_owned).collect())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(PkiError::Io {
            path: path.to_owned(),
            error,
        }),
    }
}

/// Notes a newly issued certificate (PEM) in the ledger.
pub(super) fn record_issued(dir: &Path, cert_pem: &str) -> Result<(), PkiError> {
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| PkiError::Parse(e.to_string()))?;
    let identity = identity_of(&der)?;
    let line = format!("{}\t{}\t{}", serial_of(&der)?, identity.role, identity.name);
    append_line(&issued_file(dir), &line)
}

/// What `revoke` did.
#[derive(Debug, Clone)]
pub struct Revoked {
    /// Serials revoked by this call.
    pub newly: Vec<String>,
    /// Serials of this name that were revoked before.
    pub already: Vec<String>,
    /// The CRL written, to copy to every agent.
    pub crl: PathBuf,
}

/// `handover ca revoke NAME`: revokes every certificate ever issued to `name` by
/// the CA in `dir` (the current `NAME.pem` included, even one issued before the
/// ledger existed) and writes a new `crl.pem`.
pub fn revoke(dir: &Path, name: &HostName) -> Result<Revoked, PkiError> {
    let mut serials: Vec<String> = read_ledger(&issued_file(dir))?
        .into_iter()
        .filter(|fields| fields.get(2).map(String::as_str) == Some(name.as_str()))
        .filter_map(|fields| fields.into_iter().next())
        .collect();
    let current = leaf_files(dir, name).cert;
    if current.exists() {
        let chain = super::read_cert_chain(&current)?;
        serials.push(serial_of(&chain[0])?);
    }
    serials.sort();
    serials.dedup();
    if serials.is_empty() {
        return Err(PkiError::Invalid(format!(
            "the CA in {} issued no certificate to {name:?} (no {} and no line for it in {}): check the name",
            dir.display(),
            current.display(),
            issued_file(dir).display()
        )));
    }
    let revoked: Vec<String> = read_ledger(&revoked_file(dir))?
        .into_iter()
        .filter_map(|fields| fields.into_iter().next())
        .collect();
    let (already, newly): (Vec<String>, Vec<String>) =
        serials.into_iter().partition(|s| revoked.contains(s));
    let now = OffsetDateTime::now_utc().unix_timestamp();
    for serial in &newly {
        append_line(&revoked_file(dir), &format!("{serial}\t{name}\t{now}"))?;
    }
    let crl = write_crl(dir)?;
    Ok(Revoked {
        newly,
        already,
        crl,
    })
}

/// Signs `crl.pem` listing every serial in `revoked.tsv` (none after `ca init`).
pub fn write_crl(dir: &Path) -> Result<PathBuf, PkiError> {
    let ca = ca_files(dir);
    super::check_private_key_mode(&ca.key)?;
    let ca_cert = fs::read_to_string(&ca.cert).map_err(io_err(&ca.cert))?;
    let ca_key = fs::read_to_string(&ca.key).map_err(io_err(&ca.key))?;
    let key = KeyPair::from_pem(&ca_key).map_err(rcgen_err("reading the CA key"))?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca_cert, key).map_err(rcgen_err("reading the CA certificate"))?;
    let now = OffsetDateTime::now_utc();
    let mut revoked_certs = Vec::new();
    for fields in read_ledger(&revoked_file(dir))? {
        let (Some(serial), Some(when)) = (fields.first(), fields.get(2)) else {
            continue;
        };
        let bytes = unhex(serial).ok_or_else(|| {
            PkiError::Parse(format!(
                "{}: {serial:?} is not a hex serial number",
                revoked_file(dir).display()
            ))
        })?;
        let revocation_time = when
            .parse::<i64>()
            .ok()
            .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
            .unwrap_or(now);
        revoked_certs.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&bytes),
            revocation_time,
            reason_code: Some(RevocationReason::Unspecified),
            invalidity_date: None,
        });
    }
    // Agents do not enforce next_update (a CRL is copied by hand, and an expired
    // list must not lock every coordinator out); it says when to re-sign at latest.
    let params = CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(1),
        next_update: now + time::Duration::days(365),
        // Increases with every CRL, as RFC 5280 asks.
        crl_number: SerialNumber::from(u64::try_from(now.unix_timestamp()).unwrap_or(0)),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params
        .signed_by(&issuer)
        .map_err(rcgen_err("signing the CRL"))?;
    let pem = crl.pem().map_err(rcgen_err("encoding the CRL"))?;
    let path = crl_file(dir);
    write_public(&path, pem.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::Role;
    use crate::pki::{Existing, LeafSpec, init_ca, issue, read_cert_chain, renew};

    fn name(s: &str) -> HostName {
        HostName::new(s).expect("valid name")
    }

    fn crl_serials(dir: &Path) -> Vec<String> {
        use rustls_pki_types::CertificateRevocationListDer;
        use rustls_pki_types::pem::PemObject;
        use x509_parser::prelude::*;
        let der = CertificateRevocationListDer::from_pem_file(crl_file(dir)).expect("crl pem");
        let (_, crl) = parse_x509_crl(der.as_ref()).expect("crl der");
        crl.iter_revoked_certificates()
            .map(|r| hex(r.raw_serial()))
            .collect()
    }

    #[test]
    fn revoking_a_name_lists_every_certificate_it_was_given() {
        let dir = tempfile::tempdir().expect("tempdir");
        init_ca(dir.path(), false, 30).expect("init");
        assert!(
            crl_serials(dir.path()).is_empty(),
            "ca init writes an empty CRL"
        );
        let spec = LeafSpec::new(Role::Coordinator, name("ops"), 10);
        let first = issue(dir.path(), &spec, Existing::Refuse).expect("issue");
        let first = serial_of(&read_cert_chain(&first.cert).expect("read")[0]).expect("serial");
        let (renewed, _) = renew(dir.path(), &name("ops"), None).expect("renew");
        let second = serial_of(&read_cert_chain(&renewed.cert).expect("read")[0]).expect("serial");
        assert_ne!(first, second);
        issue(
            dir.path(),
            &LeafSpec::new(Role::Coordinator, name("other"), 10),
            Existing::Refuse,
        )
        .expect("issue other");

        let revoked = revoke(dir.path(), &name("ops")).expect("revoke");
        let mut expected = vec![first.clone(), second.clone()];
        expected.sort();
        assert_eq!(revoked.newly, expected);
        let mut listed = crl_serials(dir.path());
        listed.sort();
        // The DER integer may carry a leading zero byte; compare as numbers.
        let trim = |s: &String| s.trim_start_matches('0').to_owned();
        assert_eq!(
            listed.iter().map(trim).collect::<Vec<_>>(),
            expected.iter().map(trim).collect::<Vec<_>>()
        );

        let again = revoke(dir.path(), &name("ops")).expect("revoke again");
        assert!(again.newly.is_empty());
        assert_eq!(again.already.len(), 2);
    }

    #[test]
    fn revoking_an_unknown_name_says_so_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        init_ca(dir.path(), false, 30).expect("init");
        let before = fs::read(crl_file(dir.path())).expect("crl");
        let err = revoke(dir.path(), &name("nobody")).expect_err("unknown");
        assert!(err.to_string().contains("issued no certificate"), "{err}");
        assert_eq!(before, fs::read(crl_file(dir.path())).expect("crl"));
        assert!(!revoked_file(dir.path()).exists());
    }
}
