//! `/etc/handover/agent.toml`: who this agent is, where it listens, and what it
//! manages on its host. Unknown keys are errors: a typo must not silently turn a
//! feature off.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use std::collections::BTreeMap;

use handover_common::names::{HookName, HostName};
use handover_common::tls::{CredentialFiles, Credentials};
use serde::{Deserialize, Deserializer, de::Error as _};

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
    /// A group whose members may use the control socket besides root.
    #[serde(default)]
    pub control_group: Option<crate::control::ControlGroup>,
    /// Health-check file (drain / undrain).
    pub health: Option<crate::drain::HealthConfig>,
    /// The app server whose sessions are counted.
    pub app: Option<crate::drain::AppConfig>,
    /// HAProxy runtime API, on `lb` hosts.
    pub haproxy: Option<crate::haproxy::HaproxyConfig>,
    /// Releases, on app hosts.
    pub deploy: Option<crate::deploy::DeployConfig>,
    /// Named commands the coordinator may cause to run: the only ones. Names are
    /// [`HookName`]s and commands are not blank, checked at load.
    #[serde(default, deserialize_with = "hooks")]
    pub hooks: BTreeMap<HookName, String>,
    /// Prometheus metrics over HTTP; off unless configured.
    pub metrics: Option<crate::metrics::MetricsConfig>,
}

fn hooks<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<HookName, String>, D::Error> {
    let hooks = BTreeMap::<HookName, String>::deserialize(d)?;
    if let Some((name, _)) = hooks.iter().find(|(_, command)| command.trim().is_empty()) {
        return Err(D::Error::custom(format!(
            "hook {name} has an empty command: give the command to run, or remove the hook"
        )));
    }
    Ok(hooks)
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], handover_common::DEFAULT_PORT))
}

fn default_control_socket() -> PathBuf {
    PathBuf::from(DEFAULT_CONTROL_SOCKET)
}

/// The absolute directory holding the config file at `path` (relative paths in
/// the config are taken from it; issue 13, hole 12).
fn config_dir(path: &Path) -> std::io::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    Ok(absolute
        .parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf))
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
        // `--config agent.toml` has an empty parent: paths must still come out
        // absolute (the daemon and hooks run elsewhere), so anchor them here.
        let base = config_dir(path)
            .with_context(|| format!("cannot tell the directory of {}", path.display()))?;
        config.resolve_paths(&base);
        if let Some(h) = &config.haproxy {
            h.validate()
                .with_context(|| format!("invalid agent config {}", path.display()))?;
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
        if let Some(a) = &mut self.app {
            a.resolve_paths(base);
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

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str =
        "name = \"web-1\"\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"c.key\"\nstate_dir = \"s\"\n";

    fn refused(text: &str) -> String {
        let err = toml::from_str::<AgentConfig>(text).expect_err("refused");
        handover_common::toml_error::describe(text, &err)
    }

    /// Hook names and commands are typed at load (issue 11), each with its line.
    #[test]
    fn refuses_bad_hook_names_and_blank_commands_naming_the_line() {
        let err = refused(&format!("{BASE}[hooks]\n\"-rf\" = \"true\"\n"));
        assert!(err.starts_with("line "), "{err}");
        assert!(err.contains("invalid hook name"), "{err}");
        let err = refused(&format!("{BASE}[hooks]\nwarm = \"  \"\n"));
        assert!(err.contains("hook warm has an empty command"), "{err}");
        let ok: AgentConfig =
            toml::from_str(&format!("{BASE}[hooks]\nwarm = \"/bin/true\"\n")).expect("valid");
        let warm = HookName::new("warm").expect("valid");
        assert_eq!(ok.hooks.get(&warm).map(String::as_str), Some("/bin/true"));
    }

    /// Issue 13, hole 12: a relative `--config` left every relative path in it
    /// relative (to whatever directory the agent ran in).
    #[test]
    fn a_relative_config_path_gives_absolute_paths() {
        for relative in ["agent.toml", "etc/agent.toml", "./agent.toml"] {
            let dir = config_dir(Path::new(relative)).expect("cwd");
            assert!(dir.is_absolute(), "{relative}: {}", dir.display());
            let cwd = std::env::current_dir().expect("cwd");
            assert!(dir.starts_with(&cwd), "{relative}: {}", dir.display());
        }
        let text = "name = \"web-1\"\nca = \"pki/ca.pem\"\ncert = \"c.pem\"\nkey = \"k.key\"\nstate_dir = \"state\"\n";
        let mut config: AgentConfig = toml::from_str(text).expect("valid");
        config.resolve_paths(&config_dir(Path::new("agent.toml")).expect("cwd"));
        for p in [
            &config.ca,
            &config.cert,
            &config.key,
            &config.state_dir,
            &config.control_socket,
        ] {
            assert!(p.is_absolute(), "{}", p.display());
        }
    }

    /// Issue 12: the error log a bake watches defaults to Apache's, its patterns
    /// to Apache's error levels, and a relative path is taken from the config's
    /// directory like every other path.
    #[test]
    fn the_app_error_log_has_apaches_defaults_and_resolves_relative_paths() {
        let app = |extra: &str| {
            let text = format!("{BASE}[app]\nlisten = \"127.0.0.1:80\"\n{extra}");
            let mut config: AgentConfig = toml::from_str(&text).expect("valid");
            config.resolve_paths(Path::new("/etc/handover"));
            config.app.expect("[app]")
        };
        let defaults = app("");
        assert_eq!(defaults.error_log, Path::new("/var/log/apache2/error.log"));
        assert!(defaults.error_patterns.iter().any(|p| p == ":crit]"));
        let custom = app("error_log = \"logs/error.log\"\nerror_patterns = [\"Fatal\"]\n");
        assert_eq!(custom.error_log, Path::new("/etc/handover/logs/error.log"));
        assert_eq!(custom.error_patterns, vec!["Fatal".to_string()]);
    }
}
