//! `handover.toml`: the coordinator's credentials and the inventory of hosts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use handover_common::names::{HostName, HostRole};
use serde::{Deserialize, Serialize};

/// Default config file name, looked up in the current directory.
pub const DEFAULT_CONFIG: &str = "handover.toml";

/// The coordinator's config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// The private CA certificate.
    pub ca: PathBuf,
    /// This coordinator's certificate (role `coordinator`).
    pub cert: PathBuf,
    /// Its private key (mode 0600).
    pub key: PathBuf,
    /// Where the journal lives.
    pub state_dir: PathBuf,
    /// How many agents to talk to at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// The inventory.
    #[serde(default)]
    pub hosts: Vec<HostEntry>,
}

fn default_concurrency() -> usize {
    32
}

/// One host of the inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    /// The host's name: must equal the name in its agent's certificate.
    pub name: HostName,
    /// The agent's UDP address, "HOST:PORT" (port defaults to 7443).
    pub address: String,
    /// What the host does.
    #[serde(default)]
    pub roles: BTreeSet<HostRole>,
    /// The app server as the load balancers reach it, "ADDR:PORT".
    #[serde(default)]
    pub app: Option<String>,
    /// A spare app host (surge strategy's `standby` provider).
    #[serde(default)]
    pub standby: bool,
    /// For `lb` hosts: the addresses its HAProxy connects to app servers from.
    /// Connections from them are judged by that LB's own figures, not counted as
    /// sessions on the app host. Default: the IP of `address`.
    #[serde(default)]
    pub source: Vec<std::net::IpAddr>,
}

impl HostEntry {
    /// "app,lb" style list for tables.
    pub fn roles_text(&self) -> String {
        let roles: Vec<String> = self.roles.iter().map(|r| r.to_string()).collect();
        if roles.is_empty() {
            "-".into()
        } else {
            roles.join(",")
        }
    }
}

impl CoordinatorConfig {
    /// Reads and validates `path`; relative paths in it are relative to its directory.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read coordinator config {}: create it (see the README's config reference) or pass --config FILE",
                path.display()
            )
        })?;
        let mut config: CoordinatorConfig = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}", handover_common::toml_error::describe(&text, &e)))
            .with_context(|| format!("invalid coordinator config {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.ca,
            &mut config.cert,
            &mut config.key,
            &mut config.state_dir,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if config.concurrency == 0 {
            bail!("{}: concurrency must be at least 1", path.display());
        }
        let mut seen = BTreeSet::new();
        for host in &config.hosts {
            if !seen.insert(&host.name) {
                bail!(
                    "{}: host {} is listed twice in [[hosts]]: keep one entry per host",
                    path.display(),
                    host.name
                );
            }
        }
        Ok(config)
    }

    /// The inventory entry for `name`, or an error listing the known hosts.
    pub fn host(&self, name: &str) -> anyhow::Result<&HostEntry> {
        self.hosts
            .iter()
            .find(|h| h.name.as_str() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self.hosts.iter().map(|h| h.name.as_str()).collect();
                anyhow::anyhow!(
                    "unknown host {name:?}: add it to [[hosts]] in the config, or use one of: {}",
                    if known.is_empty() {
                        "(none)".to_string()
                    } else {
                        known.join(", ")
                    }
                )
            })
    }

    /// The named hosts (all of them when `names` is empty), checked before anything
    /// is sent to any of them.
    pub fn select(&self, names: &[String]) -> anyhow::Result<Vec<HostEntry>> {
        if names.is_empty() {
            return Ok(self.hosts.clone());
        }
        names.iter().map(|n| self.host(n).cloned()).collect()
    }

    /// Hosts with `role`.
    pub fn with_role(&self, role: HostRole) -> Vec<HostEntry> {
        self.hosts
            .iter()
            .filter(|h| h.roles.contains(&role))
            .cloned()
            .collect()
    }
}
