//! `handover.toml`: the coordinator's credentials and the inventory of hosts.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use anyhow::Context;
use handover_common::names::{HostName, HostRole};
use serde::{Deserialize, Deserializer, Serialize, de::Error as _};

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
    /// How many agents to talk to at once (at least 1).
    #[serde(default = "default_concurrency", deserialize_with = "concurrency")]
    pub concurrency: NonZeroUsize,
    /// The inventory: each host once.
    #[serde(default)]
    pub hosts: Inventory,
    /// Where the journal and the deploy lock live (`[state]`; default: state_dir).
    #[serde(default)]
    pub state: crate::state::Backend,
    /// `[enroll]`: the CA directory that enrolls launched servers with join
    /// tokens (`[surge] enroll = true`).
    #[serde(default)]
    pub enroll: Option<crate::enroll::EnrollConfig>,
}

fn default_concurrency() -> NonZeroUsize {
    NonZeroUsize::new(32).unwrap_or(NonZeroUsize::MIN)
}

fn concurrency<'de, D: Deserializer<'de>>(d: D) -> Result<NonZeroUsize, D::Error> {
    let n = u64::deserialize(d)?;
    usize::try_from(n)
        .ok()
        .and_then(NonZeroUsize::new)
        .ok_or_else(|| D::Error::custom("0 would talk to no agent: set it to at least 1"))
}

/// The `[[hosts]]` of the config, each name once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inventory(Vec<HostEntry>);

impl Inventory {
    /// The hosts, in the config's order.
    pub fn iter(&self) -> std::slice::Iter<'_, HostEntry> {
        self.0.iter()
    }

    /// Sets each host's `standby` flag to what `f` says (`None`: unchanged).
    pub(crate) fn set_standby(&mut self, f: impl Fn(&HostEntry) -> Option<bool>) {
        for h in &mut self.0 {
            if let Some(standby) = f(h) {
                h.standby = standby;
            }
        }
    }

    /// Adds a host a provider launched (it is not in the config file).
    pub(crate) fn add(&mut self, host: HostEntry) {
        if !self.0.iter().any(|h| h.name == host.name) {
            self.0.push(host);
        }
    }

    /// Every host, in the config's order.
    pub(crate) fn to_vec(&self) -> Vec<HostEntry> {
        self.0.clone()
    }
}

impl<'a> IntoIterator for &'a Inventory {
    type Item = &'a HostEntry;
    type IntoIter = std::slice::Iter<'a, HostEntry>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<'de> Deserialize<'de> for Inventory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let hosts = Vec::<HostEntry>::deserialize(d)?;
        let mut seen = BTreeSet::new();
        for host in &hosts {
            if !seen.insert(&host.name) {
                return Err(D::Error::custom(format!(
                    "host {} is listed twice in [[hosts]]: keep one entry per host",
                    host.name
                )));
            }
        }
        Ok(Inventory(hosts))
    }
}

/// One host of the inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    /// The host's name: must equal the name in its agent's certificate.
    pub name: HostName,
    /// The agent's UDP address, "HOST:PORT" (port defaults to 7443); checked
    /// for its form at load, resolved when dialled.
    #[serde(deserialize_with = "agent_address")]
    pub address: String,
    /// What the host does.
    #[serde(default)]
    pub roles: BTreeSet<HostRole>,
    /// The app server as the load balancers reach it, "ADDR:PORT".
    #[serde(default)]
    pub app: Option<SocketAddr>,
    /// A spare app host (surge strategy's `standby` provider).
    #[serde(default)]
    pub standby: bool,
    /// For `lb` hosts: the addresses its HAProxy connects to app servers from.
    /// Connections from them are judged by that LB's own figures, not counted as
    /// sessions on the app host. Default: the IP of `address`.
    #[serde(default)]
    pub source: Vec<std::net::IpAddr>,
}

/// "HOST", "HOST:PORT", "IP", "IP:PORT" or "[IPv6]:PORT": a name or address and
/// an optional port from 1 to 65535, nothing a resolver would choke on later.
fn agent_address<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    check_agent_address(&text).map_err(|why| {
        D::Error::custom(format!(
            "{text:?} {why}: write it like \"10.0.0.5:7443\" or \"web-1.internal\""
        ))
    })?;
    Ok(text)
}

fn check_agent_address(text: &str) -> Result<(), &'static str> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return match addr.port() {
            0 => Err("has no port from 1 to 65535 after ':'"),
            _ => Ok(()),
        };
    }
    if text.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    };
    if let Some(port) = port
        && !port.parse::<u16>().is_ok_and(|p| p != 0)
    {
        return Err("has no port from 1 to 65535 after ':'");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if host.len() > 253 || !host.split('.').all(label_ok) {
        return Err("is not a host name or IP address");
    }
    Ok(())
}

impl HostEntry {
    /// "app,lb" style list for tables.
    pub(crate) fn roles_text(&self) -> String {
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
        config.state.resolve_paths(base);
        if let Some(enroll) = config.enroll.as_mut() {
            if enroll.ca_dir.is_relative() {
                enroll.ca_dir = base.join(&enroll.ca_dir);
            }
            enroll
                .check(&config.ca)
                .with_context(|| format!("invalid coordinator config {}", path.display()))?;
        }
        Ok(config)
    }

    /// The inventory entry for `name`, or an error listing the known hosts.
    pub(crate) fn host(&self, name: &str) -> anyhow::Result<&HostEntry> {
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
    pub(crate) fn select(&self, names: &[String]) -> anyhow::Result<Vec<HostEntry>> {
        if names.is_empty() {
            return Ok(self.hosts.to_vec());
        }
        names.iter().map(|n| self.host(n).cloned()).collect()
    }

    /// Hosts with `role`.
    pub(crate) fn with_role(&self, role: HostRole) -> Vec<HostEntry> {
        self.hosts
            .iter()
            .filter(|h| h.roles.contains(&role))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use handover_common::toml_error::describe;

    const BASE: &str = "ca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"c.key\"\nstate_dir = \"s\"\n";

    fn host(name: &str, address: &str) -> String {
        format!("[[hosts]]\nname = \"{name}\"\naddress = \"{address}\"\nroles = [\"app\"]\n")
    }

    fn refused(text: &str) -> String {
        let err = toml::from_str::<CoordinatorConfig>(text).expect_err("refused");
        describe(text, &err)
    }

    /// A regression test per field (issue 11): each refused at load with its line.
    #[test]
    fn refuses_each_value_that_cannot_work_naming_its_line() {
        let twice = format!(
            "{BASE}{}{}",
            host("web-1", "127.0.1.1"),
            host("web-1", "127.0.1.2")
        );
        let cases = [
            (twice, "listed twice"),
            (format!("{BASE}concurrency = 0\n"), "at least 1"),
            (format!("{BASE}{}", host("web-1", "10.0.0.1:0")), "no port"),
            (
                format!("{BASE}{}", host("web-1", "web 1:7443")),
                "not a host name",
            ),
            (
                format!("{BASE}{}", host("web-1", "-oX:7443")),
                "not a host name",
            ),
            (
                format!("{BASE}{}app = \"web-1\"\n", host("web-1", "127.0.1.1")),
                "invalid socket address",
            ),
        ];
        for (text, fix) in cases {
            let err = refused(&text);
            assert!(err.starts_with("line "), "no line in {err}");
            assert!(err.contains(fix), "should say {fix}: {err}");
        }
    }

    #[test]
    fn accepts_the_address_forms_the_readme_shows() {
        for address in [
            "127.0.1.1",
            "127.0.1.1:7443",
            "[::1]:7443",
            "::1",
            "web-1.internal",
            "web-1:7443",
        ] {
            assert!(check_agent_address(address).is_ok(), "{address}");
        }
        let text = format!(
            "{BASE}{}app = \"127.0.1.1:80\"\n",
            host("web-1", "127.0.1.1")
        );
        let config: CoordinatorConfig = toml::from_str(&text).expect("valid");
        assert_eq!(config.concurrency.get(), 32);
        assert_eq!(config.hosts.iter().count(), 1);
    }
}
