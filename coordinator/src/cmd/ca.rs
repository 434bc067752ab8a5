//! `handover ca init|issue`: the private CA.

use std::net::IpAddr;
use std::path::PathBuf;

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
            Ok(())
        }
    }
}
