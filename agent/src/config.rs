//! `/etc/handover/agent.toml`: who this agent is, where it listens, and what it
//! manages on its host. Unknown keys are errors: a typo must not silently turn a
//! feature off.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use handover_common::names::HostName;
use handover_common::tls::{CredentialFiles, Credentials};
use serde::Deserialize;

/// Default config path.
pub const DEFAULT_CONFIG: &str = "/etc/handover/agent.toml";
/// Default local control socket.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/handover-agent/control.sock";

/// The agent's config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This host's name: must equal the name in `cert`.
    pub name: HostName,
    /// UDP address to listen on (default `0.0.0.0:7443`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The private CA certificate.
    pub ca: PathBuf,
    /// This agent's certificate (role `agent`).
    pub cert: PathBuf,
    /// This agent's private key (mode 0600).
    pub key: PathBuf,
    /// The CA's revocation list (`handover ca revoke` writes it): coordinators it
    /// lists are refused. Re-read when the file changes.
    pub crl: Option<PathBuf>,
    /// Where the agent keeps what must survive a restart.
    pub state_dir: PathBuf,
    /// Local socket for `handover-agent drain|status|...` (mode 0600).
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
    /// Health-check file (drain / undrain).
    pub health: Option<crate::drain::HealthConfig>,
    /// The app server whose sessions are counted.
    pub app: Option<crate::drain::AppConfig>,
    /// HAProxy runtime API, on `lb` hosts.
    pub haproxy: Option<crate::haproxy::HaproxyConfig>,
    /// Releases, on app hosts.
    pub deploy: Option<crate::deploy::DeployConfig>,
    /// Named commands the coordinator may cause to run: the only ones.
    #[serde(default)]
    pub hooks: std::collections::BTreeMap<String, String>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], handover_common::DEFAULT_PORT))
}

fn default_control_socket() -> PathBuf {
    PathBuf::from(DEFAULT_CONTROL_SOCKET)
}

impl AgentConfig {
    /// Reads and validates the config at `path`; relative paths in it are taken
    /// relative to the file's directory.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read agent config {}: create it (see packaging/agent/agent.toml) or pass --config",
                path.display()
            )
        })?;
        let mut config: AgentConfig = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}", handover_common::toml_error::describe(&text, &e)))
            .with_context(|| format!("invalid agent config {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        if let Some(h) = &config.haproxy {
            h.validate()
                .with_context(|| format!("invalid agent config {}", path.display()))?;
        }
        for name in config.hooks.keys() {
            handover_common::names::HookName::new(name.clone())
                .with_context(|| format!("{}: [hooks]", path.display()))?;
        }
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        for p in [
            &mut self.ca,
            &mut self.cert,
            &mut self.key,
            &mut self.state_dir,
            &mut self.control_socket,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(p) = &mut self.crl
            && p.is_relative()
        {
            *p = base.join(&*p);
        }
        if let Some(h) = &mut self.health {
            h.resolve_paths(base);
        }
        if let Some(h) = &mut self.haproxy {
            h.resolve_paths(base);
        }
        if let Some(d) = &mut self.deploy {
            d.resolve_paths(base);
        }
    }

    /// Loads the TLS credentials and checks that the certificate is an agent
    /// certificate for exactly this agent's `name`.
    pub fn credentials(&self) -> anyhow::Result<Credentials> {
        let creds = Credentials::load(
            &CredentialFiles {
                ca: &self.ca,
                cert: &self.cert,
                key: &self.key,
            },
            handover_common::names::Role::Agent,
        )
        .context("loading this agent's TLS files (check `ca`, `cert` and `key` in its config)")?;
        let creds = match &self.crl {
            Some(crl) => creds
                .with_crl(crl)
                .context("loading this agent's revocation list (check `crl` in its config)")?,
            None => creds,
        };
        if creds.identity.name != self.name {
            bail!(
                "{} is the certificate of {:?}, but this agent's name is {:?}: set `name = {:?}` or issue a certificate with `handover ca issue --role agent --name {}`",
                self.cert.display(),
                creds.identity.name.as_str(),
                self.name.as_str(),
                creds.identity.name.as_str(),
                self.name
            );
        }
        Ok(creds)
    }

    /// Creates `state_dir` (0700) if it is missing.
    pub fn ensure_state_dir(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.state_dir)
            .with_context(|| format!("cannot create state_dir {}", self.state_dir.display()))
    }
}
