//! `handover ca init|issue`: the private CA.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use handover_common::names::{HostName, Role};
use handover_common::pki::{self, LeafSpec};

/// `handover ca ...`
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a private CA: DIR/ca.pem and DIR/ca.key (mode 0600).
    Init {
        /// Where the CA files go.
        #[arg(long)]
        dir: PathBuf,
        /// Replace an existing CA (every certificate it issued stops working).
        #[arg(long)]
        force: bool,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a certificate for an agent or a coordinator: DIR/NAME.pem, DIR/NAME.key.
    Issue {
        /// The directory holding the CA (ca.pem, ca.key); the new files go there too.
        #[arg(long)]
        dir: PathBuf,
        /// `agent` (a host) or `coordinator` (an operator).
        #[arg(long)]
        role: Role,
        /// The host's inventory name (agents) or the operator's name (coordinators).
        #[arg(long)]
        name: HostName,
        /// An extra DNS name for the certificate.
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// An IP address for the certificate.
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
        /// Validity in days.
        #[arg(long, default_value_t = 825)]
        days: u32,
        /// Also print which files to copy where (and the config lines that name them).
        #[arg(long)]
        print_install: bool,
    },
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
            Ok(())
        }
        CaCommand::Issue {
            dir,
            role,
            name,
            dns,
            ips,
            days,
            print_install,
        } => {
            if days == 0 {
                anyhow::bail!("--days must be at least 1");
            }
            let mut spec = LeafSpec::new(role, name, days);
            spec.dns = dns;
            spec.ips = ips;
            let files = pki::issue(&dir, &spec).with_context(|| {
                format!(
                    "cannot issue a certificate from the CA in {}",
                    dir.display()
                )
            })?;
            println!("{role} certificate: {}", files.cert.display());
            println!("{role} key:         {}", files.key.display());
            if print_install {
                let ca = pki::ca_files(&dir).cert;
                print!("\n{}", install_hint(role, &spec.name, &ca, &files));
            }
            Ok(())
        }
    }
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
    let (ca, cert, key) = (ca.display(), files.cert.display(), files.key.display());
    match role {
        Role::Agent => format!(
            "Install on host {name} (the handover-agent package expects these paths):\n\
             \x20 scp {ca} root@{name}:{AGENT_CA}\n\
             \x20 scp {cert} root@{name}:{AGENT_CERT}\n\
             \x20 scp {key} root@{name}:{AGENT_KEY}\n\
             \x20 ssh root@{name} 'chmod 0600 {AGENT_KEY} && \
             sed -i \"s/^name = .*/name = \\\"{name}\\\"/\" /etc/handover/agent.toml && \
             systemctl restart handover-agent'\n\
             That sets these lines in {name}:/etc/handover/agent.toml (the packaged file has the last three):\n\
             \x20 name = \"{name}\"\n\
             \x20 ca = \"{AGENT_CA}\"\n\
             \x20 cert = \"{AGENT_CERT}\"\n\
             \x20 key = \"{AGENT_KEY}\"\n\
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
