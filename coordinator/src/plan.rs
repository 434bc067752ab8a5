//! The rollout plan: a TOML file an operator writes, validated against the
//! inventory into a [`Plan`] before anything is sent to any host.
//!
//! Every error names the key at fault and the fix, because a plan is written by
//! hand under pressure.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use handover_common::duration::{serde_human, serde_human_opt};
use handover_common::names::{HostName, HostRole, RepoUrl, Revision};
use serde::{Deserialize, Serialize};

use crate::config::{CoordinatorConfig, HostEntry};

/// How new code reaches the servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Waves of existing servers: drain → detach → apply → verify → attach.
    InPlace,
    /// New servers beside the old, then hand traffic over (the runbook's own order).
    Surge,
}

/// The plan file as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    /// `in-place` or `surge`.
    pub strategy: Strategy,
    /// The servers to upgrade, by inventory name...
    #[serde(default)]
    pub hosts: Vec<String>,
    /// ...or by role.
    #[serde(default)]
    pub roles: Vec<HostRole>,
    /// What to deploy.
    pub revision: RevisionSpec,
    /// Pace and safety limits.
    #[serde(default)]
    pub rollout: RolloutSpec,
    /// How a server proves it is healthy before it is attached.
    #[serde(default)]
    pub health: HealthSpec,
    /// Surge strategy: new servers beside the old (DESIGN's key names; the strategy
    /// itself comes with a later release).
    #[serde(default)]
    pub surge: Option<SurgeSpec>,
    /// Surge with `provider = "command"`: the external executables.
    #[serde(default)]
    pub provider: Option<ProviderSpec>,
    /// Database hooks (runbook steps 1, 2, 7), names from the db host's agent config.
    #[serde(default)]
    pub db: Option<DbSpec>,
    /// Watching the site after the hand-over (runbook step 17).
    #[serde(default)]
    pub bake: Option<BakeSpec>,
    /// Deployment inputs (runbook steps 5–6), versioned in the journal.
    #[serde(default)]
    pub inputs: std::collections::BTreeMap<String, String>,
}

/// `[surge]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SurgeSpec {
    /// `standby` (inventory hosts marked `standby = true`) or `command`.
    pub provider: String,
    /// New servers launched and verified at a time.
    #[serde(default = "default_surge_batch")]
    pub batch: usize,
    /// When old servers are terminated after they are detached.
    #[serde(default, with = "serde_human_opt")]
    pub terminate_after: Option<Duration>,
}

fn default_surge_batch() -> usize {
    1
}

/// `[provider]`: executables with the JSON contract.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// `launch --like HOST`.
    pub launch: Option<std::path::PathBuf>,
    /// `terminate HOST`.
    pub terminate: Option<std::path::PathBuf>,
    /// `array disable | enable | update`.
    pub array: Option<std::path::PathBuf>,
}

/// `[db]`: hook names in the db host's agent config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbSpec {
    /// Snapshot before changing anything.
    pub backup: Option<String>,
    /// Pre-upgrade migrations, once per rollout.
    pub migrate: Option<String>,
    /// Run on each new app host: can it reach the database?
    pub check: Option<String>,
}

/// `[bake]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BakeSpec {
    /// How long to watch.
    #[serde(with = "serde_human")]
    pub duration: Duration,
    /// Roll back past this share of 5xx answers.
    pub max_5xx_ratio: f64,
}

/// `[revision]`: repository URL and branch, tag or commit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevisionSpec {
    /// Repository URL; must be in each agent's `allowed_repos`.
    pub repo: String,
    /// Branch, tag or commit.
    #[serde(rename = "ref")]
    pub reference: String,
}

/// Hosts per wave: a count, or a share of the hosts being upgraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// This many hosts.
    Count(usize),
    /// This percentage of the hosts (rounded up, at least one).
    Percent(u8),
}

impl Batch {
    /// The wave size for `hosts` hosts.
    pub fn size(self, hosts: usize) -> usize {
        match self {
            Batch::Count(n) => n,
            Batch::Percent(p) => (hosts * usize::from(p)).div_ceil(100).max(1),
        }
    }
}

impl Serialize for Batch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Batch::Count(n) => s.serialize_u64(*n as u64),
            Batch::Percent(p) => s.serialize_str(&format!("{p}%")),
        }
    }
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(i64),
            Text(String),
        }
        let bad = || {
            serde::de::Error::custom(
                "batch must be a number of hosts (batch = 2) or a percentage (batch = \"25%\")",
            )
        };
        match Raw::deserialize(d)? {
            Raw::Count(n) if n >= 1 => Ok(Batch::Count(usize::try_from(n).map_err(|_| bad())?)),
            Raw::Count(_) => Err(bad()),
            Raw::Text(t) => {
                let p: u8 = t
                    .trim()
                    .strip_suffix('%')
                    .and_then(|n| n.trim().parse().ok())
                    .ok_or_else(bad)?;
                if p == 0 || p > 100 {
                    return Err(bad());
                }
                Ok(Batch::Percent(p))
            }
        }
    }
}

/// What to do when sessions outlast `drain_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDrainTimeout {
    /// Stop the rollout; the host is put back as it was.
    Abort,
    /// Detach anyway: the remaining sessions are cut.
    Proceed,
}

/// `[rollout]`: pace and safety limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// Hosts per wave.
    #[serde(default = "default_batch")]
    pub batch: Batch,
    /// Servers UP in every LB at every instant.
    #[serde(default = "default_min_healthy")]
    pub min_healthy: usize,
    /// How long to wait for sessions to end on a draining host.
    #[serde(default = "default_drain_timeout", with = "serde_human")]
    pub drain_timeout: Duration,
    /// What to do when that time passes.
    #[serde(default = "default_on_drain_timeout")]
    pub on_drain_timeout: OnDrainTimeout,
    /// How long a host must stay idle to count as drained.
    #[serde(default = "default_quiet", with = "serde_human")]
    pub quiet: Duration,
    /// Hosts in the first wave (a canary), if set.
    #[serde(default)]
    pub canary: Option<usize>,
    /// Pause after the canary wave.
    #[serde(default, with = "serde_human_opt")]
    pub pause: Option<Duration>,
    /// Put upgraded hosts back on their previous release when a wave fails health.
    #[serde(default = "default_true")]
    pub auto_rollback: bool,
    /// How long to wait for every LB to report an attached server UP.
    #[serde(default = "default_attach_timeout", with = "serde_human")]
    pub attach_timeout: Duration,
}

fn default_batch() -> Batch {
    Batch::Count(1)
}
fn default_min_healthy() -> usize {
    1
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_on_drain_timeout() -> OnDrainTimeout {
    OnDrainTimeout::Abort
}
fn default_quiet() -> Duration {
    Duration::from_secs(2)
}
fn default_true() -> bool {
    true
}
fn default_attach_timeout() -> Duration {
    Duration::from_secs(60)
}

impl Default for RolloutSpec {
    fn default() -> Self {
        RolloutSpec {
            batch: default_batch(),
            min_healthy: default_min_healthy(),
            drain_timeout: default_drain_timeout(),
            on_drain_timeout: default_on_drain_timeout(),
            quiet: default_quiet(),
            canary: None,
            pause: None,
            auto_rollback: true,
            attach_timeout: default_attach_timeout(),
        }
    }
}

/// `[health]`: the check a host must pass on its own before it is attached.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    /// Path fetched from the host's app address.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// Expected HTTP status.
    #[serde(default = "default_expect")]
    pub expect: u16,
    /// Consecutive passing checks required.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Time between checks.
    #[serde(default = "default_interval", with = "serde_human")]
    pub interval: Duration,
    /// Give up after this long.
    #[serde(default = "default_health_timeout", with = "serde_human")]
    pub timeout: Duration,
}

fn default_health_path() -> String {
    "/health.html".into()
}
fn default_expect() -> u16 {
    200
}
fn default_rise() -> u32 {
    2
}
fn default_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(60)
}

impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec {
            path: default_health_path(),
            expect: default_expect(),
            rise: default_rise(),
            interval: default_interval(),
            timeout: default_health_timeout(),
        }
    }
}

/// A validated plan: hosts resolved against the inventory, waves cut.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What the operator wrote (kept verbatim in the journal).
    pub file: PlanFile,
    /// The hosts being upgraded, in rollout order.
    pub hosts: Vec<HostEntry>,
    /// The load balancers every wave checks and changes.
    pub lbs: Vec<HostEntry>,
    /// Hosts per wave, in order.
    pub waves: Vec<Vec<HostName>>,
    /// App servers behind the LBs before the rollout (the capacity baseline).
    pub servers_in_lb: usize,
}

impl Plan {
    /// Reads `path` and validates it against `config`.
    pub fn load(path: &Path, config: &CoordinatorConfig) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read plan {}", path.display()))?;
        Self::parse(&text, config).with_context(|| format!("invalid plan {}", path.display()))
    }

    /// Parses and validates plan text.
    pub fn parse(text: &str, config: &CoordinatorConfig) -> anyhow::Result<Self> {
        let file: PlanFile = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("{}", handover_common::toml_error::describe(text, &e)))?;
        Self::validate(file, config)
    }

    /// Checks `file` against the inventory and the capacity rule.
    pub fn validate(file: PlanFile, config: &CoordinatorConfig) -> anyhow::Result<Self> {
        if file.strategy == Strategy::Surge {
            bail!(
                "strategy = \"surge\" is not available in this version: use strategy = \"in-place\""
            );
        }
        for (section, present) in [
            ("[surge]", file.surge.is_some()),
            ("[provider]", file.provider.is_some()),
            ("[db]", file.db.is_some()),
            ("[bake]", file.bake.is_some()),
            ("[inputs]", !file.inputs.is_empty()),
        ] {
            if present {
                bail!(
                    "{section} belongs to the surge strategy, which this version does not run: remove it from an in-place plan"
                );
            }
        }
        Revision::new(file.revision.reference.clone())
            .map_err(|e| anyhow::anyhow!("[revision] ref: {e}"))?;
        RepoUrl::new(file.revision.repo.clone())
            .map_err(|e| anyhow::anyhow!("[revision] repo: {e}"))?;
        let hosts = match (file.hosts.is_empty(), file.roles.is_empty()) {
            (false, true) => {
                let mut seen = std::collections::BTreeSet::new();
                let mut hosts = Vec::new();
                for name in &file.hosts {
                    let host = config.host(name).with_context(|| "hosts".to_string())?;
                    if !seen.insert(name) {
                        bail!("hosts: {name} is listed twice: list each host once");
                    }
                    if !host.roles.contains(&HostRole::App) {
                        bail!(
                            "hosts: {name} has no `app` role in the inventory: only app servers are upgraded in place"
                        );
                    }
                    hosts.push(host.clone());
                }
                hosts
            }
            (true, false) => config
                .hosts
                .iter()
                .filter(|h| !h.standby && file.roles.iter().any(|r| h.roles.contains(r)))
                .cloned()
                .collect(),
            (true, true) => {
                bail!("name the servers to upgrade: hosts = [\"web-1\", ...] or roles = [\"app\"]")
            }
            (false, false) => bail!("give either hosts or roles, not both"),
        };
        if hosts.is_empty() {
            bail!("roles: no inventory host has these roles: add hosts to [[hosts]] or fix roles");
        }
        for host in &hosts {
            if host.app.is_none() {
                bail!(
                    "host {} has no `app = \"ADDR:PORT\"` in the inventory: the load balancers need it to attach the server",
                    host.name
                );
            }
        }
        let lbs = config.with_role(HostRole::Lb);
        if lbs.is_empty() {
            bail!(
                "the inventory has no host with role \"lb\": an in-place rollout needs the load balancers' agents"
            );
        }
        let servers_in_lb = config
            .hosts
            .iter()
            .filter(|h| h.roles.contains(&HostRole::App) && !h.standby)
            .count();
        let waves = cut_waves(&hosts, &file.rollout);
        let widest = waves.iter().map(Vec::len).max().unwrap_or(0);
        let spec = &file.rollout;
        if spec.min_healthy == 0 {
            bail!("[rollout] min_healthy = 0 would allow an outage: set it to at least 1");
        }
        if servers_in_lb < spec.min_healthy + widest {
            bail!(
                "[rollout] min_healthy = {} with waves of {} host(s) needs {} servers UP, but the load balancers have {}: lower batch or min_healthy, or add servers",
                spec.min_healthy,
                widest,
                spec.min_healthy + widest,
                servers_in_lb
            );
        }
        if spec.pause.is_some() && spec.canary.is_none() {
            bail!("[rollout] pause needs canary = N (the pause follows the canary wave)");
        }
        if file.health.rise == 0 {
            bail!("[health] rise must be at least 1");
        }
        if !file.health.path.starts_with('/') {
            bail!("[health] path must start with '/': path = \"/health.html\"");
        }
        Ok(Plan {
            file,
            hosts,
            lbs,
            waves,
            servers_in_lb,
        })
    }

    /// The revision, validated.
    pub fn revision(&self) -> anyhow::Result<(RepoUrl, Revision)> {
        Ok((
            RepoUrl::new(self.file.revision.repo.clone())?,
            Revision::new(self.file.revision.reference.clone())?,
        ))
    }

    /// The inventory entry of a host being upgraded.
    pub fn host(&self, name: &HostName) -> anyhow::Result<&HostEntry> {
        self.hosts
            .iter()
            .find(|h| &h.name == name)
            .ok_or_else(|| anyhow::anyhow!("{name} is not part of this rollout"))
    }

    /// Whether wave `index` is the canary wave.
    pub fn is_canary(&self, index: usize) -> bool {
        index == 0 && self.file.rollout.canary.is_some()
    }
}

/// Cuts `hosts` into waves: the canary first (if any), then `batch` at a time.
pub fn cut_waves(hosts: &[HostEntry], spec: &RolloutSpec) -> Vec<Vec<HostName>> {
    let names: Vec<HostName> = hosts.iter().map(|h| h.name.clone()).collect();
    let mut waves = Vec::new();
    let mut rest: &[HostName] = &names;
    if let Some(canary) = spec.canary {
        let n = canary.clamp(1, rest.len());
        waves.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    let size = spec.batch.size(names.len()).max(1);
    for chunk in rest.chunks(size) {
        waves.push(chunk.to_vec());
    }
    waves
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory(n: usize) -> CoordinatorConfig {
        let mut text =
            String::from("ca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"c.key\"\nstate_dir = \"s\"\n");
        for i in 1..=n {
            text.push_str(&format!(
                "[[hosts]]\nname = \"web-{i}\"\naddress = \"127.0.1.{i}:7443\"\nroles = [\"app\"]\napp = \"127.0.1.{i}:80\"\n"
            ));
        }
        text.push_str(
            "[[hosts]]\nname = \"lb-1\"\naddress = \"127.0.1.100:7443\"\nroles = [\"lb\"]\n",
        );
        toml::from_str(&text).expect("inventory")
    }

    const PLAN: &str = r#"
strategy = "in-place"
hosts = ["web-1", "web-2", "web-3", "web-4"]
[revision]
repo = "file:///srv/git/shop.git"
ref = "v2"
[rollout]
batch = 2
min_healthy = 2
"#;

    #[test]
    fn cuts_waves_by_batch_and_canary() {
        let config = inventory(4);
        let plan = Plan::parse(PLAN, &config).expect("valid");
        assert_eq!(plan.waves.len(), 2);
        assert_eq!(plan.waves[0].len(), 2);
        let canary = PLAN.replace("batch = 2", "batch = 2\ncanary = 1\npause = \"1s\"");
        let plan = Plan::parse(&canary, &config).expect("valid");
        let sizes: Vec<usize> = plan.waves.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1, 2, 1]);
        let percent = PLAN.replace("batch = 2", "batch = \"25%\"");
        let plan = Plan::parse(&percent, &config).expect("valid");
        assert_eq!(plan.waves.len(), 4);
    }

    #[test]
    fn refuses_a_plan_that_would_break_min_healthy() {
        let config = inventory(4);
        let err = Plan::parse(&PLAN.replace("min_healthy = 2", "min_healthy = 3"), &config)
            .expect_err("4 servers, waves of 2, min 3");
        assert!(err.to_string().contains("min_healthy = 3"), "{err}");
    }

    #[test]
    fn names_unknown_hosts_bad_refs_and_unknown_keys() {
        let config = inventory(4);
        let err = Plan::parse(&PLAN.replace("web-4", "web-9"), &config).expect_err("unknown");
        assert!(
            format!("{err:#}").contains("unknown host \"web-9\""),
            "{err:#}"
        );
        let err = Plan::parse(&PLAN.replace("\"v2\"", "\"--upload-pack=x\""), &config)
            .expect_err("bad ref");
        assert!(err.to_string().contains("[revision] ref"), "{err}");
        let err = Plan::parse(&PLAN.replace("batch = 2", "batch = 2\nbacth = 3"), &config)
            .expect_err("typo");
        assert!(err.to_string().contains("bacth"), "{err}");
        let err =
            Plan::parse(&PLAN.replace("batch = 2", "batch = \"0%\""), &config).expect_err("zero");
        assert!(err.to_string().contains("percentage"), "{err}");
    }
}
