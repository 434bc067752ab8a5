//! The rollout plan: a TOML file an operator writes, parsed into typed values
//! and checked against the inventory into a [`Plan`] before anything is sent to
//! any host.
//!
//! Parse, don't validate: every value the plan holds is typed when the file is
//! read (a [`HealthPath`], a [`Revision`], durations bounded and non-zero where
//! zero would spin or never end, counts that cannot be 0), so `handover plan`
//! refuses all that `handover rollout` would, and nothing later can fail on a
//! value loading accepted. Every error names the line and key at fault and the
//! fix, because a plan is written by hand under pressure.

use std::collections::BTreeSet;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use handover_common::duration::{self, serde_human_opt, serde_human_positive};
use handover_common::names::{HostName, HostRole, RepoUrl, Revision};
use handover_common::proto::health::{HealthCheck, HealthPath, HttpStatus, MIN_INTERVAL};
use handover_common::toml_error;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use crate::config::{CoordinatorConfig, HostEntry};
use crate::surge_plan::{BakeSpec, DbSpec, Inputs, ProviderSpec, SurgePlan, SurgeSpec};

/// How new code reaches the servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Waves of existing servers: drain → detach → apply → verify → attach.
    InPlace,
    /// New servers beside the old, then hand traffic over (the runbook's own order).
    Surge,
}

/// The plan file as written, every value typed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    /// `in-place` or `surge`.
    pub strategy: Strategy,
    /// The servers to upgrade, by inventory name, in rollout order...
    #[serde(default)]
    pub hosts: Vec<HostName>,
    /// ...or by role.
    #[serde(default)]
    pub roles: BTreeSet<HostRole>,
    /// What to deploy.
    pub revision: RevisionSpec,
    /// Pace and safety limits.
    #[serde(default)]
    pub rollout: RolloutSpec,
    /// How a server proves it is healthy before it is attached.
    #[serde(default)]
    pub health: HealthSpec,
    /// `[surge]`: where new servers come from, how many, how fast.
    #[serde(default)]
    pub surge: Option<SurgeSpec>,
    /// `[provider]`: the executables of `[surge] provider = "command"`.
    #[serde(default)]
    pub provider: Option<ProviderSpec>,
    /// `[aws]`: the settings of `[surge] provider = "aws"`.
    #[serde(default)]
    pub aws: Option<handover_common::aws::AwsSettings>,
    /// `[db]`: backup, migrate and check hooks.
    #[serde(default)]
    pub db: Option<DbSpec>,
    /// `[bake]`: the watch after the handover.
    #[serde(default)]
    pub bake: Option<BakeSpec>,
    /// `[inputs]`: deployment inputs.
    #[serde(default)]
    pub inputs: Option<Inputs>,
}

/// `[revision]`: repository URL and branch, tag or commit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevisionSpec {
    /// Repository URL; must be in each agent's `allowed_repos`.
    pub repo: RepoUrl,
    /// Branch, tag or commit.
    #[serde(rename = "ref")]
    pub reference: Revision,
}

/// Hosts per wave: a count, or a share of the hosts being upgraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// This many hosts.
    Count(NonZeroUsize),
    /// This percentage of the hosts (rounded up, at least one), 1–100.
    Percent(u8),
}

impl Batch {
    /// The wave size for `hosts` hosts, at least 1.
    pub fn size(self, hosts: usize) -> usize {
        match self {
            Batch::Count(n) => n.get(),
            Batch::Percent(p) => (hosts * usize::from(p)).div_ceil(100).max(1),
        }
    }
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(i64),
            Text(String),
        }
        let bad = || {
            D::Error::custom(
                "batch must be a number of hosts (batch = 2) or a percentage (batch = \"25%\")",
            )
        };
        match Raw::deserialize(d)? {
            Raw::Count(n) => usize::try_from(n)
                .ok()
                .and_then(NonZeroUsize::new)
                .map(Batch::Count)
                .ok_or_else(bad),
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDrainTimeout {
    /// Stop the rollout; the host is put back as it was.
    Abort,
    /// Detach anyway: the remaining sessions are cut.
    Proceed,
}

/// `[rollout]`: pace and safety limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// Hosts per wave.
    #[serde(default = "default_batch")]
    pub batch: Batch,
    /// Servers UP in every LB at every instant.
    #[serde(default = "one", deserialize_with = "min_healthy")]
    pub min_healthy: NonZeroUsize,
    /// How long to wait for sessions to end on a draining host.
    #[serde(default = "default_drain_timeout", with = "serde_human_positive")]
    pub drain_timeout: Duration,
    /// What to do when that time passes.
    #[serde(default = "default_on_drain_timeout")]
    pub on_drain_timeout: OnDrainTimeout,
    /// How long a host must stay idle to count as drained (never zero).
    #[serde(default = "default_quiet", deserialize_with = "quiet")]
    pub quiet: Duration,
    /// Hosts in the first wave (a canary), if set.
    #[serde(default, deserialize_with = "canary")]
    pub canary: Option<NonZeroUsize>,
    /// Pause after the canary wave.
    #[serde(default, with = "serde_human_opt")]
    pub pause: Option<Duration>,
    /// Put upgraded hosts back on their previous release when a wave fails health.
    #[serde(default = "default_true")]
    pub auto_rollback: bool,
    /// How long to wait for every LB to report an attached server UP.
    #[serde(default = "default_attach_timeout", with = "serde_human_positive")]
    pub attach_timeout: Duration,
}

fn one() -> NonZeroUsize {
    NonZeroUsize::MIN
}
fn default_batch() -> Batch {
    Batch::Count(NonZeroUsize::MIN)
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

/// A count that must be at least 1; `why` says what 0 would do and the fix.
fn nonzero<'de, D: Deserializer<'de>>(d: D, why: &str) -> Result<NonZeroUsize, D::Error> {
    let n = u64::deserialize(d)?;
    usize::try_from(n)
        .ok()
        .and_then(NonZeroUsize::new)
        .ok_or_else(|| D::Error::custom(why))
}

fn min_healthy<'de, D: Deserializer<'de>>(d: D) -> Result<NonZeroUsize, D::Error> {
    nonzero(d, "0 would allow an outage: set it to at least 1")
}

/// `canary = 0` once became a canary of 1 without a word.
fn canary<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NonZeroUsize>, D::Error> {
    nonzero(
        d,
        "0 hosts make no canary wave: give canary = 1 or more, or leave canary out",
    )
    .map(Some)
}

/// `quiet = "0s"` once cut every pinned session: a pinned client between two
/// requests reads as idle, and only a quiet period shows it is still there.
fn quiet<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    let q = duration::parse(&text).map_err(D::Error::custom)?;
    if q.is_zero() {
        return Err(D::Error::custom(
            "0s calls a host drained while pinned clients sit between two requests, and cuts their sessions: give at least the clients' think time, e.g. \"2s\"",
        ));
    }
    Ok(q)
}

impl Default for RolloutSpec {
    fn default() -> Self {
        RolloutSpec {
            batch: default_batch(),
            min_healthy: one(),
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    /// Path fetched from the host's app address.
    #[serde(default = "default_health_path")]
    pub path: HealthPath,
    /// Expected HTTP status.
    #[serde(default = "default_expect")]
    pub expect: HttpStatus,
    /// Consecutive passing checks required.
    #[serde(default = "default_rise", deserialize_with = "rise")]
    pub rise: NonZeroU32,
    /// Time between checks, at least [`MIN_INTERVAL`].
    #[serde(default = "default_interval", deserialize_with = "interval")]
    pub interval: Duration,
    /// Give up after this long.
    #[serde(default = "default_health_timeout", with = "serde_human_positive")]
    pub timeout: Duration,
}

fn default_health_path() -> HealthPath {
    HealthPath::new("/health.html").unwrap_or_else(|_| unreachable!("a valid literal"))
}
fn default_expect() -> HttpStatus {
    HttpStatus::OK
}
fn default_rise() -> NonZeroU32 {
    NonZeroU32::MIN.saturating_add(1)
}
fn default_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(60)
}

/// `expect = 0` or `rise = 0` can never pass.
fn rise<'de, D: Deserializer<'de>>(d: D) -> Result<NonZeroU32, D::Error> {
    let n = u64::deserialize(d)?;
    u32::try_from(n)
        .ok()
        .and_then(NonZeroU32::new)
        .ok_or_else(|| D::Error::custom("give the passes in a row needed, at least 1 (e.g. 2)"))
}

fn interval<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    duration::parse_at_least(&text, MIN_INTERVAL)
        .map_err(|e| D::Error::custom(format!("{e}: a shorter interval checks in a busy loop")))
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
    /// What the operator wrote, typed (the text itself is kept in the journal).
    pub file: PlanFile,
    /// The hosts being upgraded, in rollout order.
    pub hosts: Vec<HostEntry>,
    /// The load balancers every wave checks and changes.
    pub lbs: Vec<HostEntry>,
    /// Hosts per wave, in order.
    pub waves: Vec<Vec<HostName>>,
    /// App servers behind the LBs before the rollout (the capacity baseline).
    pub servers_in_lb: usize,
    /// A surge plan's new servers and db host (`None` for in-place).
    pub surge: Option<SurgePlan>,
}

/// A plan refused by a check across keys or against the inventory: the key it
/// points at (for the line) and the message.
struct Fault {
    key: Vec<String>,
    message: String,
}

fn fault(key: &[&str], message: impl Into<String>) -> Fault {
    Fault {
        key: key.iter().map(|k| k.to_string()).collect(),
        message: message.into(),
    }
}

impl Plan {
    /// Reads `path` and validates it against `config`.
    pub fn load(path: &Path, config: &CoordinatorConfig) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read plan {}", path.display()))?;
        Self::parse(&text, config).with_context(|| format!("invalid plan {}", path.display()))
    }

    /// Parses plan text and checks it against the inventory.
    pub fn parse(text: &str, config: &CoordinatorConfig) -> anyhow::Result<Self> {
        let file: PlanFile = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("{}", toml_error::describe(text, &e)))?;
        Self::check(file, config).map_err(|f| {
            let key: Vec<&str> = f.key.iter().map(String::as_str).collect();
            anyhow::anyhow!("{}", toml_error::describe_at(text, &key, &f.message))
        })
    }

    /// Checks `file` against the inventory and the capacity rule.
    fn check(file: PlanFile, config: &CoordinatorConfig) -> Result<Self, Fault> {
        check_strategy(&file)?;
        let hosts = select_hosts(&file, config)?;
        check_health_timeout(&file.health)?;
        let lbs = config.with_role(HostRole::Lb);
        if lbs.is_empty() {
            return Err(fault(
                &[],
                "the inventory has no host with role \"lb\": an in-place rollout needs the load balancers' agents",
            ));
        }
        let servers_in_lb = config
            .hosts
            .iter()
            .filter(|h| h.roles.contains(&HostRole::App) && !h.standby)
            .count();
        let spec = &file.rollout;
        if let Some(canary) = spec.canary
            && canary.get() >= hosts.len()
        {
            return Err(fault(
                &["rollout", "canary"],
                format!(
                    "[rollout] canary = {canary} covers all {} host(s) being upgraded: a canary wave must leave hosts for later waves; lower canary or leave it out",
                    hosts.len()
                ),
            ));
        }
        if spec.pause.is_some() && spec.canary.is_none() {
            return Err(fault(
                &["rollout", "pause"],
                "[rollout] pause needs canary = N (the pause follows the canary wave)",
            ));
        }
        if file.strategy == Strategy::Surge {
            return check_surge(file, config, hosts, lbs, servers_in_lb);
        }
        let waves = cut_waves(&hosts, spec);
        let widest = waves.iter().map(Vec::len).max().unwrap_or(0);
        let needed = spec.min_healthy.get().saturating_add(widest);
        if servers_in_lb < needed {
            return Err(fault(
                &["rollout", "min_healthy"],
                format!(
                    "[rollout] min_healthy = {} with waves of {widest} host(s) needs {needed} servers UP, but the load balancers have {servers_in_lb}: lower batch or min_healthy, or add servers",
                    spec.min_healthy
                ),
            ));
        }
        Ok(Plan {
            file,
            hosts,
            lbs,
            waves,
            servers_in_lb,
            surge: None,
        })
    }

    /// The repository and revision to deploy.
    pub fn revision(&self) -> (RepoUrl, Revision) {
        (
            self.file.revision.repo.clone(),
            self.file.revision.reference.clone(),
        )
    }

    /// The health check every upgraded host must pass before it is attached.
    pub fn health_check(&self) -> HealthCheck {
        let h = &self.file.health;
        HealthCheck {
            path: h.path.clone(),
            expect: h.expect,
            rise: h.rise.get(),
            interval: h.interval,
            timeout: h.timeout,
        }
    }

    /// The inventory entry of a host being upgraded (or, in a surge plan, of a
    /// standby host becoming a new server, or of the db host).
    pub fn host(&self, name: &HostName) -> anyhow::Result<&HostEntry> {
        let surge = self
            .surge
            .iter()
            .flat_map(|s| s.standby.iter().chain(&s.db).chain(&s.launched));
        self.hosts
            .iter()
            .chain(surge)
            .find(|h| &h.name == name)
            .ok_or_else(|| anyhow::anyhow!("{name} is not part of this rollout"))
    }

    /// Whether wave `index` is the canary wave.
    pub fn is_canary(&self, index: usize) -> bool {
        index == 0 && self.file.rollout.canary.is_some()
    }
}

/// Surge's sections belong to surge plans: in an in-place plan they are refused,
/// not ignored.
fn check_strategy(file: &PlanFile) -> Result<(), Fault> {
    if file.strategy == Strategy::Surge {
        return Ok(());
    }
    for (section, present) in [
        ("surge", file.surge.is_some()),
        ("provider", file.provider.is_some()),
        ("aws", file.aws.is_some()),
        ("db", file.db.is_some()),
        ("bake", file.bake.is_some()),
        ("inputs", file.inputs.is_some()),
    ] {
        if present {
            return Err(fault(
                &[section],
                format!(
                    "[{section}] belongs to the surge strategy: set strategy = \"surge\", or remove it from an in-place plan"
                ),
            ));
        }
    }
    Ok(())
}

/// A surge plan: the old servers form one "wave" (they are drained and detached
/// together), the new ones come from the provider; capacity never falls below
/// the old count until the new servers are UP, so only the new count is checked
/// against `min_healthy`.
fn check_surge(
    file: PlanFile,
    config: &CoordinatorConfig,
    hosts: Vec<HostEntry>,
    lbs: Vec<HostEntry>,
    servers_in_lb: usize,
) -> Result<Plan, Fault> {
    if file.rollout.canary.is_some() {
        return Err(fault(
            &["rollout", "canary"],
            "[rollout] canary is for in-place plans: a surge plan verifies each new server before any traffic moves; remove canary (and pause)",
        ));
    }
    let spec = file.surge.clone().unwrap_or_default();
    let mut file = file;
    file.provider = crate::provider::aws::command_spec(&file, spec.provider)
        .map_err(|(key, message)| fault(&key, message))?;
    let surge = crate::surge_plan::resolve(
        &spec,
        file.provider.as_ref(),
        file.db.as_ref(),
        &hosts,
        config,
    )
    .map_err(|(key, message)| fault(&key, message))?;
    if surge.count < file.rollout.min_healthy.get() {
        return Err(fault(
            &["rollout", "min_healthy"],
            format!(
                "[rollout] min_healthy = {} but only {} new server(s) take over: raise [surge] count or lower min_healthy",
                file.rollout.min_healthy, surge.count
            ),
        ));
    }
    let waves = vec![hosts.iter().map(|h| h.name.clone()).collect()];
    Ok(Plan {
        file,
        hosts,
        lbs,
        waves,
        servers_in_lb,
        surge: Some(surge),
    })
}

/// The hosts being upgraded, from `hosts` (each once, each an app server) or
/// `roles`, each with the `app` address the load balancers need.
fn select_hosts(file: &PlanFile, config: &CoordinatorConfig) -> Result<Vec<HostEntry>, Fault> {
    let hosts = match (file.hosts.is_empty(), file.roles.is_empty()) {
        (false, true) => {
            let mut seen = BTreeSet::new();
            let mut hosts = Vec::new();
            for (i, name) in file.hosts.iter().enumerate() {
                let at = ["hosts".to_string(), i.to_string()];
                let at: Vec<&str> = at.iter().map(String::as_str).collect();
                let host = config
                    .host(name.as_str())
                    .map_err(|e| fault(&at, format!("hosts: {e}")))?;
                if !seen.insert(name) {
                    return Err(fault(
                        &at,
                        format!("hosts: {name} is listed twice: list each host once"),
                    ));
                }
                if !host.roles.contains(&HostRole::App) {
                    return Err(fault(
                        &at,
                        format!(
                            "hosts: {name} has no `app` role in the inventory: only app servers are upgraded in place"
                        ),
                    ));
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
            return Err(fault(
                &[],
                "name the servers to upgrade: hosts = [\"web-1\", ...] or roles = [\"app\"]",
            ));
        }
        (false, false) => return Err(fault(&["roles"], "give either hosts or roles, not both")),
    };
    if hosts.is_empty() {
        return Err(fault(
            &["roles"],
            "roles: no inventory host has these roles: add hosts to [[hosts]] or fix roles",
        ));
    }
    if let Some(host) = hosts.iter().find(|h| h.app.is_none()) {
        return Err(fault(
            &[],
            format!(
                "host {} has no `app = \"ADDR:PORT\"` in the inventory: the load balancers need it to attach the server",
                host.name
            ),
        ));
    }
    Ok(hosts)
}

/// The agent gives up when the next check would start after `timeout`, so `rise`
/// passes `interval` apart need more than `(rise - 1) × interval`.
fn check_health_timeout(h: &HealthSpec) -> Result<(), Fault> {
    let gaps = h.rise.get() - 1;
    let least = h.interval.checked_mul(gaps).unwrap_or(Duration::MAX);
    if h.timeout <= least {
        return Err(fault(
            &["health", "timeout"],
            format!(
                "[health] timeout = \"{}\" ends before rise = {} checks {} apart can pass: make timeout longer than {}, or lower rise or interval",
                duration::format(h.timeout),
                h.rise,
                duration::format(h.interval),
                duration::format(least)
            ),
        ));
    }
    Ok(())
}

/// Cuts `hosts` into waves: the canary first (if any), then `batch` at a time.
pub fn cut_waves(hosts: &[HostEntry], spec: &RolloutSpec) -> Vec<Vec<HostName>> {
    let names: Vec<HostName> = hosts.iter().map(|h| h.name.clone()).collect();
    let mut waves = Vec::new();
    let mut rest: &[HostName] = &names;
    if let Some(canary) = spec.canary {
        let n = canary.get().min(rest.len());
        waves.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    let size = spec.batch.size(names.len());
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

    /// Each value `handover plan` must refuse, with the key it names and the fix:
    /// a regression test per field (issues 11, 13 hole 6, 14).
    #[test]
    fn refuses_each_value_that_cannot_work_naming_its_line_and_key() {
        let config = inventory(4);
        let health = |body: &str| format!("{PLAN}[health]\n{body}\n");
        let cases: Vec<(String, &str, &str)> = vec![
            (health("path = \"/a b/../x\""), "[health] path", "no spaces"),
            (
                health("path = \"/a/../x\""),
                "[health] path",
                "'..' segments",
            ),
            (
                health("path = \"health\""),
                "[health] path",
                "start with '/'",
            ),
            (health("expect = 0"), "[health] expect", "100 to 599"),
            (health("rise = 0"), "[health] rise", "at least 1"),
            (
                health("interval = \"0s\""),
                "[health] interval",
                "busy loop",
            ),
            (
                health("timeout = \"500000000000y\""),
                "[health] timeout",
                "30days",
            ),
            (health("timeout = \"0s\""), "[health] timeout", "too short"),
            (
                health("rise = 3\ninterval = \"1s\"\ntimeout = \"2s\""),
                "[health] timeout",
                "longer than 2s",
            ),
            (
                PLAN.replace("batch = 2", "batch = 2\nquiet = \"0s\""),
                "[rollout] quiet",
                "pinned clients",
            ),
            (
                PLAN.replace("batch = 2", "batch = 2\ncanary = 0"),
                "[rollout] canary",
                "no canary wave",
            ),
            (
                PLAN.replace("batch = 2", "batch = 2\ncanary = 4"),
                "[rollout] canary",
                "covers all 4",
            ),
            (
                PLAN.replace("min_healthy = 2", "min_healthy = 0"),
                "[rollout] min_healthy",
                "outage",
            ),
            (
                PLAN.replace("batch = 2", "batch = 0"),
                "[rollout] batch",
                "number of hosts",
            ),
            (
                PLAN.replace("batch = 2", "batch = 2\ndrain_timeout = \"0s\""),
                "[rollout] drain_timeout",
                "too short",
            ),
            (
                PLAN.replace("batch = 2", "batch = 2\nattach_timeout = \"500000000000y\""),
                "[rollout] attach_timeout",
                "30days",
            ),
            (
                PLAN.replace("batch = 2", "batch = 2\npause = \"1s\""),
                "[rollout] pause",
                "needs canary",
            ),
            (
                PLAN.replace("\"file:///srv/git/shop.git\"", "\"-oProxyCommand=x\""),
                "[revision] repo",
                "must not start with '-'",
            ),
            (
                PLAN.replace("\"web-4\"", "\"web 4\""),
                "hosts",
                "invalid host name",
            ),
            (
                PLAN.replace("\"web-4\"", "\"web-1\""),
                "hosts: web-1 is listed twice",
                "list each host once",
            ),
            (
                format!("{PLAN}[db]\nbackup = \"backup\"\n"),
                "line 10 ([db])",
                "belongs to the surge strategy",
            ),
        ];
        for (text, key, fix) in cases {
            let err = Plan::parse(&text, &config).expect_err(key).to_string();
            assert!(err.starts_with("line "), "{key}: no line in {err}");
            assert!(err.contains(key), "should name {key}: {err}");
            assert!(err.contains(fix), "should say {fix}: {err}");
        }
    }

    #[test]
    fn a_check_across_keys_points_at_the_line_of_its_key() {
        let config = inventory(4);
        let err = Plan::parse(&PLAN.replace("min_healthy = 2", "min_healthy = 3"), &config)
            .expect_err("capacity");
        assert!(
            err.to_string().starts_with("line 9 (min_healthy = 3)"),
            "{err}"
        );
        let err = Plan::parse(&PLAN.replace("web-4", "web-9"), &config).expect_err("unknown");
        assert!(err.to_string().starts_with("line 3 (hosts = "), "{err}");
    }

    #[test]
    fn the_plan_hands_over_typed_values() {
        let config = inventory(4);
        let text = format!(
            "{PLAN}[health]\npath = \"/VERSION\"\nexpect = 204\nrise = 3\ninterval = \"200ms\"\ntimeout = \"10s\"\n"
        );
        let plan = Plan::parse(&text, &config).expect("valid");
        let check = plan.health_check();
        assert_eq!(check.path.as_str(), "/VERSION");
        assert_eq!(check.expect.get(), 204);
        assert_eq!(check.rise, 3);
        assert_eq!(check.interval, Duration::from_millis(200));
        let (repo, rev) = plan.revision();
        assert_eq!(
            (repo.as_str(), rev.as_str()),
            ("file:///srv/git/shop.git", "v2")
        );
        let plan = Plan::parse(PLAN, &config).expect("defaults");
        assert_eq!(plan.health_check().path.as_str(), "/health.html");
        assert_eq!(plan.file.rollout.quiet, Duration::from_secs(2));
    }
}
