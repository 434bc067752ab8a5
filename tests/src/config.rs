//! Config files and plans for tests, built as typed values and rendered to TOML
//! here, in one place: agent configs ([`AgentConfig`], [`AgentSections`]), the
//! coordinator's ([`CoordinatorConfig`]) and in-place plans ([`Plan`]).
//!
//! These mirror the real files' keys (the agent and the coordinator refuse
//! unknown keys, so a wrong name here fails the first test that starts with it).
//! They are not the daemons' own config types: those only deserialize, and this
//! crate drives the binaries, not their libraries. Tests that feed a malformed
//! file on purpose keep writing it as text.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Serialize;

/// Renders `value` as TOML; the types here always render.
fn render(value: &impl Serialize) -> String {
    toml::to_string(value).unwrap_or_else(|e| panic!("test config renders as TOML: {e}"))
}

/// The top of an agent config: who it is and where it listens
/// ([`crate::agents::AgentProcess::start`] writes it).
#[derive(Debug, Clone, Serialize)]
pub struct AgentConfig {
    /// Host name (equal to its certificate's).
    pub name: String,
    /// QUIC address.
    pub listen: SocketAddr,
    /// The CA certificate.
    pub ca: PathBuf,
    /// The agent's certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// Its state_dir.
    pub state_dir: PathBuf,
    /// Its control socket.
    pub control_socket: PathBuf,
}

impl AgentConfig {
    /// The config's top-level keys as TOML (feature sections follow it).
    pub fn render(&self) -> String {
        render(self)
    }
}

/// The feature sections of an agent config (what [`crate::agents::AgentSpec`]'s
/// `extra` holds), rendered by [`AgentSections::render`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct AgentSections {
    /// `crl`: the CA's revocation list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crl: Option<PathBuf>,
    /// `[health]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// `[app]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<App>,
    /// `[haproxy]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub haproxy: Option<Lb>,
    /// `[deploy]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deploy: Option<Deploy>,
    /// `[hooks]`: name → command.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub hooks: BTreeMap<String, String>,
    /// Any other sections (`[db]`...), as TOML tables.
    #[serde(flatten)]
    pub other: toml::Table,
}

impl AgentSections {
    /// The sections as TOML, starting on a fresh line.
    pub fn render(&self) -> String {
        format!("\n{}", render(self))
    }

    /// Adds `lines`, TOML text meant to follow `[deploy]`'s keys (a scenario's
    /// `deploy_extra`): its keys join `[deploy]`, and a section it opens
    /// (`[hooks]`, `[db]`, `[deploy.release_hooks]`) becomes that section, as if
    /// the text had been appended to the file. Panics on text that is not TOML.
    pub fn add_deploy_lines(&mut self, lines: &str) {
        let table: toml::Table = lines
            .parse()
            .unwrap_or_else(|e| panic!("[deploy] lines {lines:?} are not TOML: {e}"));
        for (key, value) in table {
            match (key.as_str(), value) {
                ("hooks", toml::Value::Table(hooks)) => {
                    for (name, command) in hooks {
                        let command = command.as_str().map(str::to_owned);
                        let command = command
                            .unwrap_or_else(|| panic!("hook {name} in {lines:?} is not a string"));
                        self.hooks.insert(name, command);
                    }
                }
                ("deploy", toml::Value::Table(keys)) => {
                    if let Some(deploy) = self.deploy.as_mut() {
                        deploy.extra.extend(keys);
                    }
                }
                (_, toml::Value::Table(section)) if key != "release_hooks" => {
                    self.other.insert(key, toml::Value::Table(section));
                }
                (_, value) => {
                    if let Some(deploy) = self.deploy.as_mut() {
                        deploy.extra.insert(key, value);
                    }
                }
            }
        }
    }
}

/// `[health]`.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    /// The health-check file.
    pub file: PathBuf,
}

/// `[app]`: the app server whose sessions are counted.
#[derive(Debug, Clone, Serialize)]
pub struct App {
    /// Its address.
    pub listen: SocketAddr,
    /// Its mod_status URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_url: Option<String>,
    /// How long nothing may change before a drain is done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quiet_period: Option<String>,
}

impl App {
    /// The `[app]` of an Apache on `listen`, with its mod_status.
    pub fn apache(listen: SocketAddr) -> Self {
        App {
            listen,
            status_url: Some(format!("http://{listen}/server-status?auto")),
            quiet_period: None,
        }
    }
}

/// `[deploy]`.
#[derive(Debug, Clone, Serialize)]
pub struct Deploy {
    /// The deploy root.
    pub root: PathBuf,
    /// Repositories it fetches from.
    pub allowed_repos: Vec<String>,
    /// Releases kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_releases: Option<usize>,
    /// Paths shared between releases.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shared: Vec<String>,
    /// Runs after the switch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reload: Option<String>,
    /// Must pass before the switch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<String>,
    /// A hook's time limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook_timeout: Option<String>,
    /// Any other keys, as TOML lines (e.g. a scenario's `deploy_extra`).
    #[serde(flatten)]
    pub extra: toml::Table,
    /// `[deploy.release_hooks]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_hooks: Option<ReleaseHooks>,
}

impl Deploy {
    /// Releases under `root` from `repo` only; nothing else set.
    pub fn new(root: PathBuf, repo: &str) -> Self {
        Deploy {
            root,
            allowed_repos: vec![repo.to_owned()],
            keep_releases: None,
            shared: Vec::new(),
            reload: None,
            verify: None,
            hook_timeout: None,
            extra: toml::Table::new(),
            release_hooks: None,
        }
    }

    /// Adds `lines` (TOML keys of `[deploy]`); panics on a line that is not TOML.
    pub fn with_lines(mut self, lines: &str) -> Self {
        let more: toml::Table = lines
            .parse()
            .unwrap_or_else(|e| panic!("[deploy] lines {lines:?} are not TOML: {e}"));
        self.extra.extend(more);
        self
    }
}

/// `[deploy.release_hooks]`.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseHooks {
    /// The user a release's own hooks run as.
    pub run_as: String,
}

/// `[haproxy]`, on `lb` hosts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Lb {
    /// HAProxy's admin socket.
    pub socket: PathBuf,
    /// The one backend it manages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The backends it manages.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<String>,
    /// Health-check interval of attached servers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check_inter: Option<String>,
    /// Checks to go UP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check_rise: Option<u32>,
    /// Checks to go DOWN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check_fall: Option<u32>,
    /// How long an attach may wait for UP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attach_timeout: Option<String>,
}

impl Lb {
    /// `backends` behind the socket, with fast checks (200 ms, rise 2, fall 2)
    /// and a 15 s attach timeout.
    pub fn fast(socket: PathBuf, backends: &[&str]) -> Self {
        Lb {
            socket,
            backends: backends.iter().map(|b| (*b).to_owned()).collect(),
            check_inter: Some("200ms".into()),
            check_rise: Some(2),
            check_fall: Some(2),
            attach_timeout: Some("15s".into()),
            ..Lb::default()
        }
    }
}

/// A coordinator config ([`crate::agents::Coordinator::write_with`] writes it).
#[derive(Debug, Clone, Serialize)]
pub struct CoordinatorConfig {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The coordinator's certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// Its state_dir (journal).
    pub state_dir: PathBuf,
    /// The inventory.
    pub hosts: Vec<HostEntry>,
}

/// One `[[hosts]]` entry.
#[derive(Debug, Clone, Serialize)]
pub struct HostEntry {
    /// Inventory name.
    pub name: String,
    /// Its agent's QUIC address.
    pub address: SocketAddr,
    /// Its roles.
    pub roles: Vec<String>,
    /// Its app server as the LBs reach it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<SocketAddr>,
    /// Any other keys of the entry.
    #[serde(flatten)]
    pub extra: toml::Table,
}

impl CoordinatorConfig {
    /// The config as TOML.
    pub fn render(&self) -> String {
        render(self)
    }
}

/// An in-place plan ([`crate::scenario::Scenario::plan`] makes the usual one).
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// `in-place`.
    pub strategy: String,
    /// The roles it upgrades.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Or the hosts it upgrades.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// `[revision]`.
    pub revision: PlanRevision,
    /// `[rollout]`.
    pub rollout: PlanRollout,
    /// `[health]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<PlanHealth>,
}

/// `[revision]` of a plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlanRevision {
    /// The repository.
    pub repo: String,
    /// Branch, tag or commit.
    #[serde(rename = "ref")]
    pub reference: String,
}

/// `[rollout]` of a plan.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PlanRollout {
    /// Hosts per wave.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    /// UP servers kept at every step.
    pub min_healthy: usize,
    /// How long a drain may wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<String>,
    /// `fail` (default) or `proceed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_drain_timeout: Option<String>,
    /// The drain's quiet period.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quiet: Option<String>,
    /// How long an attach may wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attach_timeout: Option<String>,
    /// Hosts in the canary wave.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<usize>,
    /// The pause after the canary wave.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause: Option<String>,
}

/// `[health]` of a plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlanHealth {
    /// The path fetched from each host.
    pub path: String,
    /// The status expected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect: Option<u16>,
    /// Passes in a row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rise: Option<u32>,
    /// Between checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// How long a host may take to pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

impl Plan {
    /// An in-place plan of `roles` to `reference` of `repo`, keeping
    /// `min_healthy` UP; nothing else set.
    pub fn in_place(repo: &str, reference: &str, min_healthy: usize) -> Self {
        Plan {
            strategy: "in-place".into(),
            roles: vec!["app".into()],
            hosts: Vec::new(),
            revision: PlanRevision {
                repo: repo.to_owned(),
                reference: reference.to_owned(),
            },
            rollout: PlanRollout {
                min_healthy,
                ..PlanRollout::default()
            },
            health: None,
        }
    }

    /// The plan as TOML.
    pub fn render(&self) -> String {
        render(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys other tests edit by text (`drain_timeout = "20s"`) stay as they were.
    #[test]
    fn a_plan_renders_one_key_a_line_in_its_section() {
        let mut plan = Plan::in_place("file:///r.git", "v2", 2);
        plan.rollout.batch = Some(1);
        plan.rollout.drain_timeout = Some("20s".into());
        plan.health = Some(PlanHealth {
            path: "/VERSION".into(),
            expect: Some(200),
            rise: None,
            interval: None,
            timeout: Some("10s".into()),
        });
        assert_eq!(
            plan.render(),
            "strategy = \"in-place\"\nroles = [\"app\"]\n\n[revision]\nrepo = \"file:///r.git\"\nref = \"v2\"\n\n[rollout]\nbatch = 1\nmin_healthy = 2\ndrain_timeout = \"20s\"\n\n[health]\npath = \"/VERSION\"\nexpect = 200\ntimeout = \"10s\"\n"
        );
    }

    /// A scenario's `deploy_extra` was raw text appended after `[deploy]`'s keys;
    /// a section it opened stays a section of its own.
    #[test]
    fn deploy_lines_that_open_a_section_keep_it_a_section() {
        let mut sections = AgentSections {
            deploy: Some(Deploy::new("/srv/www".into(), "file:///r.git")),
            hooks: [("warm".into(), "true".into())].into(),
            ..AgentSections::default()
        };
        sections
            .add_deploy_lines("verify = \"true\"\n[hooks]\nmigrate = \"m\"\n[db]\nname = \"x\"\n");
        let text = sections.render();
        let parsed: toml::Table = text.parse().expect("valid TOML");
        assert_eq!(parsed["deploy"]["verify"].as_str(), Some("true"), "{text}");
        assert_eq!(parsed["hooks"]["warm"].as_str(), Some("true"), "{text}");
        assert_eq!(parsed["hooks"]["migrate"].as_str(), Some("m"), "{text}");
        assert_eq!(parsed["db"]["name"].as_str(), Some("x"), "{text}");
        assert!(parsed["deploy"].get("hooks").is_none(), "{text}");
    }

    #[test]
    fn deploy_lines_join_the_deploy_table_before_its_subtable() {
        let sections = AgentSections {
            deploy: Some(Deploy {
                release_hooks: Some(ReleaseHooks {
                    run_as: "nobody".into(),
                }),
                ..Deploy::new("/srv/www".into(), "file:///r.git").with_lines("reload = \"true\"")
            }),
            ..AgentSections::default()
        };
        let text = sections.render();
        let parsed: toml::Table = text.parse().expect("valid TOML");
        assert_eq!(parsed["deploy"]["reload"].as_str(), Some("true"), "{text}");
        assert_eq!(
            parsed["deploy"]["release_hooks"]["run_as"].as_str(),
            Some("nobody"),
            "{text}"
        );
    }
}
