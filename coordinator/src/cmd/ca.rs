//! `handover ca init|issue|revoke`: the private CA.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use handover_common::names::{DnsName, HostName, Role};
use handover_common::pki::{self, Existing, LeafSpec};

/// `handover ca ...`
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a private CA: DIR/ca.pem, DIR/ca.key (mode 0600) and an empty DIR/crl.pem.
    Init {
        /// Where the CA files go.
        #[arg(long)]
        dir: PathBuf,
        /// Replace an existing CA (every certificate it issued stops working).
        #[arg(long)]
        force: bool,
        /// Validity in days (1 to 10950).
        #[arg(long, default_value_t = pki::DEFAULT_CA_DAYS)]
        days: u32,
    },
    /// Issue a certificate for an agent, a coordinator, the page or a viewer: DIR/NAME.pem, DIR/NAME.key.
    Issue {
        /// The directory holding the CA (ca.pem, ca.key); the new files go there too.
        #[arg(long)]
        dir: PathBuf,
        /// `agent` (a host), `coordinator` (an operator), `web` (the HTTPS server of
        /// `handover web`: give it the bastion's --dns/--ip) or `viewer` (a browser
        /// reading that page); with --renew, taken from the current certificate.
        #[arg(long, required_unless_present = "renew")]
        role: Option<Role>,
        /// The host's inventory name (agents) or the operator's name (coordinators).
        #[arg(long)]
        name: HostName,
        /// An extra DNS name for the certificate (exact, no wildcards).
        #[arg(long = "dns", conflicts_with = "renew")]
        dns: Vec<DnsName>,
        /// An IP address for the certificate.
        #[arg(long = "ip", conflicts_with = "renew")]
        ips: Vec<IpAddr>,
        /// Validity in days [default: 30 for a coordinator (at most 365), 365 for an
        /// agent (at most 3650) and for web (at most 825), 90 for a viewer (at most 365)].
        #[arg(long)]
        days: Option<u32>,
        /// Replace an existing certificate for NAME with this one.
        #[arg(long, conflicts_with = "renew")]
        force: bool,
        /// Give NAME a new key and certificate with the role and names of its
        /// current one, valid for --days from now (the old one stays valid until
        /// it expires: revoke it if its key may be lost).
        #[arg(long)]
        renew: bool,
        /// Also print which files to copy where (and the config lines that name them).
        #[arg(long)]
        print_install: bool,
    },
    /// Revoke every certificate issued to NAME and write DIR/crl.pem, which agents
    /// load through `crl` in agent.toml: they then refuse that certificate.
    Revoke {
        /// The directory holding the CA.
        #[arg(long)]
        dir: PathBuf,
        /// The name whose certificates to revoke.
        #[arg(long)]
        name: HostName,
    },
    /// Join tokens for new hosts: create, list, revoke.
    #[command(subcommand)]
    Token(super::token::TokenCommand),
}

/// Runs a `ca` subcommand.
pub fn run(command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Init { dir, force, days } => {
            let files = pki::init_ca(&dir, force, days)
                .with_context(|| format!("cannot create a CA in {}", dir.display()))?;
            println!("CA certificate: {}", files.cert.display());
            println!(
                "CA key:         {} (keep it off the hosts)",
                files.key.display()
            );
            println!(
                "CRL:            {} (revokes nothing yet)",
                pki::revocation::crl_file(&dir).display()
            );
            Ok(())
        }
        CaCommand::Issue {
            dir,
            role,
            name,
            dns,
            ips,
            days,
            force,
            renew,
            print_install,
        } => {
            let request = IssueRequest {
                role,
                name,
                dns,
                ips,
                days,
                force,
                renew,
            };
            issue(&dir, request, print_install)
        }
        CaCommand::Revoke { dir, name } => {
            let revoked = pki::revocation::revoke(&dir, &name).with_context(|| {
                format!("cannot revoke {name} with the CA in {}", dir.display())
            })?;
            for serial in &revoked.newly {
                println!("revoked {name} serial {serial}");
            }
            for serial in &revoked.already {
                println!("already revoked: {name} serial {serial}");
            }
            print!("{}", crl_hint(&revoked.crl));
            Ok(())
        }
        CaCommand::Token(command) => super::token::run(command),
    }
}

/// What `ca issue` was asked for.
struct IssueRequest {
    role: Option<Role>,
    name: HostName,
    dns: Vec<DnsName>,
    ips: Vec<std::net::IpAddr>,
    days: Option<u32>,
    force: bool,
    renew: bool,
}

/// `ca issue`: a new leaf, or (`--renew`) a new key for an existing one.
fn issue(dir: &Path, request: IssueRequest, print_install: bool) -> anyhow::Result<()> {
    let IssueRequest {
        role,
        name,
        dns,
        ips,
        days,
        force,
        renew,
    } = request;
    let context = || {
        format!(
            "cannot issue a certificate from the CA in {}",
            dir.display()
        )
    };
    let (files, spec) = if renew {
        let (files, spec) = pki::renew(dir, &name, days).with_context(context)?;
        if let Some(role) = role
            && role != spec.role
        {
            anyhow::bail!(
                "{name} holds a {} certificate, not a {role} one: --renew keeps the role; issue a new name for another role",
                spec.role
            );
        }
        (files, spec)
    } else {
        let role = role.context("--role is required (agent, coordinator, web or viewer)")?;
        let days = days.unwrap_or_else(|| pki::default_days(role));
        pki::validity(&format!("{role} certificate"), days, pki::max_days(role))
            .with_context(context)?;
        let mut spec = LeafSpec::new(role, name, days);
        spec.dns = dns.into_iter().map(String::from).collect();
        spec.ips = ips;
        let existing = if force {
            Existing::Replace
        } else {
            Existing::Refuse
        };
        let files = pki::issue(dir, &spec, existing).with_context(context)?;
        (files, spec)
    };
    let role = spec.role;
    println!("{role} certificate: {}", files.cert.display());
    println!("{role} key:         {}", files.key.display());
    println!(
        "valid until:         {} (renew with `handover ca issue --renew --name {}`)",
        spec.not_after.date(),
        spec.name
    );
    if print_install {
        let ca = pki::ca_files(dir).cert;
        print!("\n{}", install_hint(role, &spec.name, &ca, &files));
    }
    Ok(())
}

/// Where the CRL goes on every agent host.
pub const AGENT_CRL: &str = "/etc/handover/crl.pem";

/// What to do with a new CRL: it protects only the agents that have it.
pub fn crl_hint(crl: &Path) -> String {
    format!(
        "CRL: {crl}\n         Copy it to every agent host, and name it in each agent.toml (once):\n         \x20 scp {crl} root@HOST:{AGENT_CRL}\n         \x20 crl = \"{AGENT_CRL}\"\n         Agents re-read it within {secs} s; an agent with an older copy still accepts the revoked certificate.\n",
        crl = crl.display(),
        secs = handover_common::tls::CRL_RELOAD_SECS,
    )
}

/// Where an agent's files go on its host: fixed names, so the packaged unit can
/// check for them (`ConditionPathExists=`) and the packaged agent.toml names them.
pub(crate) const AGENT_CA: &str = "/etc/handover/ca.pem";
/// See [`AGENT_CA`].
pub(crate) const AGENT_CERT: &str = "/etc/handover/agent.pem";
/// See [`AGENT_CA`].
pub(crate) const AGENT_KEY: &str = "/etc/handover/agent.key";

/// The operator's next steps after `ca issue`: which files to copy to which host,
/// where they go, and the config lines that name them. The CA key is never listed.
pub(crate) fn install_hint(
    role: Role,
    name: &HostName,
    ca: &Path,
    files: &pki::PemFiles,
) -> String {
    let crl = ca.with_file_name("crl.pem");
    let crl = crl.display();
    let (ca, cert, key) = (ca.display(), files.cert.display(), files.key.display());
    match role {
        Role::Agent => format!(
            "Install on host {name} (the handover-agent package expects these paths):\n\
             \x20 scp {ca} root@{name}:{AGENT_CA}\n\
             \x20 scp {cert} root@{name}:{AGENT_CERT}\n\
             \x20 scp {key} root@{name}:{AGENT_KEY}\n\
             \x20 scp {crl} root@{name}:{AGENT_CRL}\n\
             \x20 ssh root@{name} 'chmod 0600 {AGENT_KEY} && \
             sed -i \"s/^name = .*/name = \\\"{name}\\\"/\" /etc/handover/agent.toml && \
             systemctl restart handover-agent'\n\
             That sets these lines in {name}:/etc/handover/agent.toml (the packaged file has the last three):\n\
             \x20 name = \"{name}\"\n\
             \x20 ca = \"{AGENT_CA}\"\n\
             \x20 cert = \"{AGENT_CERT}\"\n\
             \x20 key = \"{AGENT_KEY}\"\n\
             Add this line too, so `handover ca revoke` reaches the host (the agent re-reads the file):\n\
             \x20 crl = \"{AGENT_CRL}\"\n\
             Keep ca.key off the hosts.\n"
        ),
        Role::Coordinator => format!(
            "Keep these on the bastion, readable only by the operator {name}:\n\
             \x20 chmod 0600 {key}\n\
             In handover.toml (paths as issued here; relative ones are taken from the config's directory):\n\
             \x20 ca = \"{ca}\"\n\
             \x20 cert = \"{cert}\"\n\
             \x20 key = \"{key}\"\n"
        ),
        Role::Web => format!(
            "Serve the page over HTTPS with it, on the bastion (browsers must reach it by one of its names):\n\
             \x20 chmod 0600 {key}\n\
             \x20 handover web --listen 0.0.0.0:8443 --tls-cert {cert} --tls-key {key}\n\
             Browsers trust it once {ca} is imported as an authority. Readers need a viewer certificate\n\
             (`handover ca issue --role viewer --name NAME`) or the token of --token-file.\n"
        ),
        Role::Viewer => format!(
            "For a browser, bundle it with its key (openssl asks for an export password):\n\
             \x20 openssl pkcs12 -export -in {cert} -inkey {key} -certfile {ca} -name {name} -out {name}.p12\n\
             Import {name}.p12 in the browser (Settings, Privacy and security, Certificates: Your certificates)\n\
             and {ca} as a trusted authority. For curl:\n\
             \x20 curl --cacert {ca} --cert {cert} --key {key} https://BASTION:8443/api/state\n"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_hint_names_every_file_and_its_place_but_not_the_ca_key() {
        let name = HostName::new("web-1".to_string()).expect("valid name");
        let dir = Path::new("/srv/pki");
        let hint = install_hint(
            Role::Agent,
            &name,
            &pki::ca_files(dir).cert,
            &pki::leaf_files(dir, &name),
        );
        assert!(
            hint.contains("scp /srv/pki/ca.pem root@web-1:/etc/handover/ca.pem"),
            "{hint}"
        );
        assert!(
            hint.contains("scp /srv/pki/web-1.pem root@web-1:/etc/handover/agent.pem"),
            "{hint}"
        );
        assert!(
            hint.contains("scp /srv/pki/web-1.key root@web-1:/etc/handover/agent.key"),
            "{hint}"
        );
        assert!(hint.contains("name = \"web-1\""), "{hint}");
        assert!(
            !hint.contains("ca.key root@"),
            "the CA key must never be copied: {hint}"
        );
    }

    #[test]
    fn the_hinted_remote_command_sets_the_name_in_the_packaged_agent_toml() {
        let name = HostName::new("web-1.dc-2".to_string()).expect("valid name");
        let dir = Path::new("pki");
        let hint = install_hint(
            Role::Agent,
            &name,
            &pki::ca_files(dir).cert,
            &pki::leaf_files(dir, &name),
        );
        let remote = hint
            .lines()
            .find_map(|l| l.trim().strip_prefix("ssh root@web-1.dc-2 '"))
            .and_then(|l| l.strip_suffix('\''))
            .unwrap_or_else(|| panic!("no ssh line in\n{hint}"));
        // Run it here, on a copy of the packaged config, without chmod and systemctl.
        let tmp = tempfile::tempdir().expect("tempdir");
        let config = tmp.path().join("agent.toml");
        std::fs::copy("../packaging/agent/agent.toml", &config)
            .expect("copy packaging/agent/agent.toml");
        let edit = remote
            .split(" && ")
            .find(|step| step.starts_with("sed "))
            .expect("a sed step")
            .replace(
                "/etc/handover/agent.toml",
                config.to_str().expect("UTF-8 path"),
            );
        let status = std::process::Command::new("sh")
            .args(["-c", &edit])
            .status()
            .expect("run sh");
        assert!(status.success(), "{edit}");
        let edited = std::fs::read_to_string(&config).expect("read edited config");
        let names: Vec<&str> = edited.lines().filter(|l| l.starts_with("name =")).collect();
        assert_eq!(names, ["name = \"web-1.dc-2\""]);
    }

    /// Issue 16: a viewer's hint bundles it for a browser and a web one says how
    /// to serve with it; neither ever names the CA key.
    #[test]
    fn web_and_viewer_hints_say_how_to_use_them() {
        let dir = Path::new("/srv/pki");
        let ca = pki::ca_files(dir).cert;
        let alice = HostName::new("alice".to_string()).expect("name");
        let hint = install_hint(Role::Viewer, &alice, &ca, &pki::leaf_files(dir, &alice));
        assert!(
            hint.contains("openssl pkcs12 -export -in /srv/pki/alice.pem -inkey /srv/pki/alice.key -certfile /srv/pki/ca.pem"),
            "{hint}"
        );
        let bastion = HostName::new("bastion".to_string()).expect("name");
        let hint = install_hint(Role::Web, &bastion, &ca, &pki::leaf_files(dir, &bastion));
        assert!(
            hint.contains("--tls-cert /srv/pki/bastion.pem --tls-key /srv/pki/bastion.key"),
            "{hint}"
        );
        for role in [Role::Web, Role::Viewer] {
            let hint = install_hint(role, &alice, &ca, &pki::leaf_files(dir, &alice));
            assert!(!hint.contains("ca.key"), "{hint}");
        }
    }

    #[test]
    fn packaged_agent_config_names_the_paths_the_hint_installs() {
        let packaged = include_str!("../../../packaging/agent/agent.toml");
        for line in [
            format!("ca = \"{AGENT_CA}\""),
            format!("cert = \"{AGENT_CERT}\""),
            format!("key = \"{AGENT_KEY}\""),
        ] {
            assert!(
                packaged.lines().any(|l| l == line),
                "packaging/agent/agent.toml lacks `{line}`"
            );
        }
    }
}
