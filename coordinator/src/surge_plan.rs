//! The surge strategy's plan sections (`[surge]`, `[provider]`, `[db]`, `[bake]`,
//! `[inputs]`; DESIGN's key names, a fixed contract), typed when the plan is
//! read, and the hosts a surge rollout touches, resolved against the inventory.
//!
//! A surge plan replaces the servers named by `hosts`/`roles` (the *old* ones)
//! with as many new ones (or `[surge] count`): standby hosts from the inventory
//! (`provider = "standby"`), or servers an external command launches
//! (`provider = "command"`).

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use handover_common::duration::{serde_human_opt, serde_human_positive};
use handover_common::names::{HookName, HostName, HostRole, InputKey};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use crate::config::{CoordinatorConfig, HostEntry};

/// Where the new servers come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Hosts marked `standby = true` in the inventory; "terminate" hands the old
    /// servers back to the pool (drained, detached, still running).
    Standby,
    /// External executables with the JSON contract (`[provider]`).
    Command,
    /// `handover-provider-aws` with the plan's `[aws]` section: resolved into a
    /// command provider whose executables are its subcommands (see
    /// [`crate::provider::aws`]), so the engine runs it as it runs any command.
    Aws,
}

/// `[surge]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SurgeSpec {
    /// `standby` or `command`.
    #[serde(default = "default_provider")]
    pub provider: ProviderKind,
    /// New servers to bring up (default: as many as the old ones).
    #[serde(default, deserialize_with = "count")]
    pub count: Option<NonZeroUsize>,
    /// New servers launched and verified at once.
    #[serde(default = "one", deserialize_with = "batch")]
    pub batch: NonZeroUsize,
    /// Old servers are terminated once detached with zero sessions, or this long
    /// after they were detached (their TTL), whichever comes first.
    #[serde(default, with = "serde_human_opt")]
    pub terminate_after: Option<Duration>,
    /// Runbook step 4: hooks from each new server's agent config, run in order
    /// (systems-level changes).
    #[serde(default)]
    pub system: Vec<HookName>,
    /// The launched servers get their agent certificates with single-use join
    /// tokens: the launch call carries one per server (`join` on its stdin), and
    /// the coordinator enrolls each before it waits for its agent. Needs a
    /// launching provider and `[enroll] ca_dir` in handover.toml.
    #[serde(default)]
    pub enroll: bool,
}

fn default_provider() -> ProviderKind {
    ProviderKind::Standby
}
fn one() -> NonZeroUsize {
    NonZeroUsize::MIN
}

fn positive<'de, D: Deserializer<'de>>(d: D, why: &str) -> Result<NonZeroUsize, D::Error> {
    let n = i64::deserialize(d)?;
    usize::try_from(n)
        .ok()
        .and_then(NonZeroUsize::new)
        .ok_or_else(|| D::Error::custom(why))
}

fn count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NonZeroUsize>, D::Error> {
    positive(
        d,
        "0 new servers would leave nothing to hand traffic to: give count = 1 or more, or leave it out (as many as the old ones)",
    )
    .map(Some)
}

fn batch<'de, D: Deserializer<'de>>(d: D) -> Result<NonZeroUsize, D::Error> {
    positive(
        d,
        "batch is the number of new servers launched at once: give 1 or more",
    )
}

impl Default for SurgeSpec {
    fn default() -> Self {
        SurgeSpec {
            provider: default_provider(),
            count: None,
            batch: one(),
            terminate_after: None,
            system: Vec::new(),
            enroll: false,
        }
    }
}

/// An executable named in the plan: an absolute path, run without a shell;
/// with leading arguments and environment when the coordinator made it (the
/// subcommands of `handover-provider-aws` and its settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executable {
    path: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Executable {
    /// The path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Arguments before the call's own.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Environment variables it is run with.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// This executable with leading `args` and `env`.
    pub fn with(&self, args: &[&str], env: Vec<(String, String)>) -> Self {
        Executable {
            path: self.path.clone(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env,
        }
    }

    /// An absolute path found by the coordinator (not from the plan).
    pub fn found(path: PathBuf) -> Self {
        Executable {
            path,
            args: Vec::new(),
            env: Vec::new(),
        }
    }
}

impl<'de> Deserialize<'de> for Executable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if !text.starts_with('/') || text.contains('\0') || text.split('/').any(|p| p == "..") {
            return Err(D::Error::custom(format!(
                "{text:?} is not an absolute path: give the executable's full path, e.g. \"/usr/local/lib/handover/launch\" (it is run directly, never through a shell)"
            )));
        }
        Ok(Executable::found(PathBuf::from(text)))
    }
}

impl std::fmt::Display for Executable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.path.display())?;
        self.args.iter().try_for_each(|a| write!(f, " {a}"))
    }
}

/// `[provider]`: the executables of `provider = "command"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// Launches servers like an old one (stdin `{"like", "count", "inputs"}`,
    /// stdout a JSON list of `{"name", "address", "app"}`).
    pub launch: Option<Executable>,
    /// Terminates servers (names as arguments and on stdin).
    pub terminate: Option<Executable>,
    /// The server array: called with `disable`, `enable` or `update`.
    pub array: Option<Executable>,
    /// `provider = "aws"`: where `handover-provider-aws` is (default: on PATH).
    #[serde(default)]
    pub aws: Option<Executable>,
    /// How long one call may run before it is killed and the step fails.
    #[serde(default = "default_provider_timeout", with = "serde_human_positive")]
    pub timeout: Duration,
}

pub(crate) fn default_provider_timeout() -> Duration {
    Duration::from_secs(300)
}

/// `[db]`: hook names from the db host's agent config (and `check` from each
/// new app host's).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbSpec {
    /// The db host (default: the inventory's only host with role `db`).
    pub host: Option<HostName>,
    /// Runbook step 1: snapshot the database; its artifact line is journaled.
    pub backup: Option<HookName>,
    /// Runbook step 2: pre-upgrade migrations, once per rollout.
    pub migrate: Option<HookName>,
    /// Runbook step 7: run on each new app host (DB connectivity).
    pub check: Option<HookName>,
}

/// `[bake]`: how long to watch the new servers after the handover, and when to
/// roll back.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BakeSpec {
    /// How long to watch.
    #[serde(default = "default_bake", with = "serde_human_opt")]
    pub duration: Option<Duration>,
    /// Roll back when a new server's 5xx answers over its requests, during the
    /// bake, exceed this (0 to 1).
    #[serde(default = "default_ratio", deserialize_with = "ratio")]
    pub max_5xx_ratio: f64,
    /// Roll back when a new server's `[app] error_log` gains more error lines
    /// than this during the bake (unset: the lines are counted and journaled).
    #[serde(default)]
    pub max_error_lines: Option<u64>,
}

fn default_bake() -> Option<Duration> {
    Some(Duration::from_secs(30))
}
fn default_ratio() -> f64 {
    0.01
}

fn ratio<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let r = f64::deserialize(d)?;
    if !(0.0..=1.0).contains(&r) {
        return Err(D::Error::custom(format!(
            "{r} is not a ratio: give a number from 0 to 1 (0.01 = one 5xx answer in a hundred)"
        )));
    }
    Ok(r)
}

impl Default for BakeSpec {
    fn default() -> Self {
        BakeSpec {
            duration: default_bake(),
            max_5xx_ratio: default_ratio(),
            max_error_lines: None,
        }
    }
}

/// `[inputs]`: deployment inputs, passed to hooks and providers as
/// `HANDOVER_INPUT_<KEY>` (as data, never through a shell).
pub type Inputs = BTreeMap<InputKey, String>;

/// A surge plan's hosts, resolved against the inventory.
#[derive(Debug, Clone)]
pub struct SurgePlan {
    /// Where new servers come from: `Standby` or `Command` (also for `aws`,
    /// whose subcommands are the command provider's executables; the plan's
    /// `[surge] provider` still says `aws`).
    pub provider: ProviderKind,
    /// New servers to bring up.
    pub count: usize,
    /// New servers per batch.
    pub batch: usize,
    /// With the standby provider: the standby hosts that become the new servers.
    pub standby: Vec<HostEntry>,
    /// The db host, when `[db]` names a hook to run on it.
    pub db: Option<HostEntry>,
    /// Servers a command provider launched (filled in while the rollout runs,
    /// from the journal's facts; empty when the plan is read).
    pub launched: Vec<HostEntry>,
    /// `[surge] enroll = true`: the CA directory (handover.toml `[enroll]`) the
    /// launched servers enroll with.
    pub enroll: Option<crate::enroll::EnrollConfig>,
}

impl SurgePlan {
    /// The batches of new servers: with the standby provider their names, with
    /// a command provider their count (names are known once launched).
    pub fn batches(&self) -> Vec<usize> {
        let mut left = self.count;
        let mut out = Vec::new();
        while left > 0 {
            let n = left.min(self.batch);
            out.push(n);
            left -= n;
        }
        out
    }
}

/// A refused surge plan: the key at fault and the message.
pub type Refusal = (Vec<&'static str>, String);

/// Resolves a surge plan against the inventory: enough standby hosts, a db host
/// for `[db]` hooks, executables for the command provider.
pub fn resolve(
    surge: &SurgeSpec,
    provider: Option<&ProviderSpec>,
    db: Option<&DbSpec>,
    old: &[HostEntry],
    config: &CoordinatorConfig,
) -> Result<SurgePlan, Refusal> {
    let count = surge.count.map_or(old.len(), NonZeroUsize::get);
    let standby = match surge.provider {
        ProviderKind::Standby => standby_hosts(provider, count, config)?,
        ProviderKind::Command | ProviderKind::Aws => {
            check_command_provider(surge.provider, provider)?;
            Vec::new()
        }
    };
    let db = resolve_db(db, config)?;
    let enroll = resolve_enroll(surge, config)?;
    Ok(SurgePlan {
        // Resolved, `aws` is a command provider (its executables were made from
        // [aws] before this).
        provider: match surge.provider {
            ProviderKind::Aws => ProviderKind::Command,
            other => other,
        },
        count,
        batch: surge.batch.get(),
        standby,
        db,
        launched: Vec::new(),
        enroll,
    })
}

/// `provider = "standby"`: the first `count` standby app hosts of the inventory.
fn standby_hosts(
    provider: Option<&ProviderSpec>,
    count: usize,
    config: &CoordinatorConfig,
) -> Result<Vec<HostEntry>, Refusal> {
    let standby: Vec<HostEntry> = config
        .hosts
        .iter()
        .filter(|h| h.standby && h.roles.contains(&HostRole::App))
        .cloned()
        .collect();
    if provider.is_some() {
        return Err((
            vec!["provider"],
            "[provider] is for provider = \"command\": remove it, or set [surge] provider = \"command\"".into(),
        ));
    }
    if standby.len() < count {
        return Err((
            vec!["surge", "provider"],
            format!(
                "[surge] provider = \"standby\" needs {count} standby host(s), the inventory has {}: mark app hosts `standby = true` in [[hosts]], or lower [surge] count",
                standby.len()
            ),
        ));
    }
    if let Some(h) = standby.iter().take(count).find(|h| h.app.is_none()) {
        return Err((
            vec!["surge", "provider"],
            format!(
                "standby host {} has no `app = \"ADDR:PORT\"` in the inventory: the load balancers need it to attach the server",
                h.name
            ),
        ));
    }
    Ok(standby.into_iter().take(count).collect())
}

/// `provider = "command"` (or `"aws"`, made into one): a `[provider]` section
/// with launch and terminate.
fn check_command_provider(
    kind: ProviderKind,
    provider: Option<&ProviderSpec>,
) -> Result<(), Refusal> {
    if kind == ProviderKind::Command && provider.is_some_and(|p| p.aws.is_some()) {
        return Err((
            vec!["provider", "aws"],
            "[provider] aws is for provider = \"aws\": remove it, or set [surge] provider = \"aws\"".into(),
        ));
    }
    let p = provider.ok_or_else(|| {
        (
            vec!["surge", "provider"],
            "[surge] provider = \"command\" needs a [provider] section with launch and terminate executables".to_string(),
        )
    })?;
    if p.launch.is_none() || p.terminate.is_none() {
        return Err((
            vec!["provider"],
            "[provider] needs both launch = \"/path\" and terminate = \"/path\"".into(),
        ));
    }
    Ok(())
}

/// `[surge] enroll = true`: servers a provider launches, and a CA directory on
/// this bastion to enroll them with.
fn resolve_enroll(
    surge: &SurgeSpec,
    config: &CoordinatorConfig,
) -> Result<Option<crate::enroll::EnrollConfig>, Refusal> {
    if !surge.enroll {
        return Ok(None);
    }
    if surge.provider == ProviderKind::Standby {
        return Err((
            vec!["surge", "enroll"],
            "[surge] enroll is for servers a provider launches: standby hosts are in the inventory and hold their certificates already; remove enroll, or set provider = \"command\"".into(),
        ));
    }
    match &config.enroll {
        Some(e) => Ok(Some(e.clone())),
        None => Err((
            vec!["surge", "enroll"],
            "[surge] enroll = true needs the CA directory in handover.toml: add [enroll] ca_dir = \"/path/to/pki\" (the directory of `handover ca init`, on this bastion)".into(),
        )),
    }
}

/// The db host: `[db] host`, or the inventory's only `db` host; needed only when
/// a hook runs on it.
fn resolve_db(
    db: Option<&DbSpec>,
    config: &CoordinatorConfig,
) -> Result<Option<HostEntry>, Refusal> {
    let Some(db) = db else { return Ok(None) };
    if db.backup.is_none() && db.migrate.is_none() {
        return Ok(None);
    }
    if let Some(name) = &db.host {
        return config
            .host(name.as_str())
            .map(|h| Some(h.clone()))
            .map_err(|e| (vec!["db", "host"], format!("[db] host: {e}")));
    }
    let dbs = config.with_role(HostRole::Db);
    match dbs.as_slice() {
        [one] => Ok(Some(one.clone())),
        [] => Err((
            vec!["db"],
            "[db] backup/migrate run on the agent of a host with role \"db\", and the inventory has none: add roles = [\"db\"] to the database host in [[hosts]]".into(),
        )),
        _ => Err((
            vec!["db"],
            "the inventory has several hosts with role \"db\": name the one to use with [db] host = \"NAME\"".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::plan::Plan;

    fn inventory(standby: usize, dbs: usize) -> crate::config::CoordinatorConfig {
        let mut text = String::from("ca = \"a\"\ncert = \"b\"\nkey = \"c\"\nstate_dir = \"d\"\n");
        for i in 1..=3 + standby {
            text.push_str(&format!(
                "[[hosts]]\nname = \"web-{i}\"\naddress = \"127.0.1.{i}:7443\"\nroles = [\"app\"]\napp = \"127.0.1.{i}:80\"\nstandby = {}\n",
                i > 3
            ));
        }
        for i in 1..=dbs {
            text.push_str(&format!(
                "[[hosts]]\nname = \"db-{i}\"\naddress = \"127.0.1.{}:7443\"\nroles = [\"db\"]\n",
                50 + i
            ));
        }
        text.push_str(
            "[[hosts]]\nname = \"lb-1\"\naddress = \"127.0.1.99:7443\"\nroles = [\"lb\"]\n",
        );
        toml::from_str(&text).expect("inventory")
    }

    const PLAN: &str = r#"strategy = "surge"
roles = ["app"]
[revision]
repo = "file:///srv/git/shop.git"
ref = "v2"
[surge]
provider = "standby"
batch = 1
terminate_after = "30m"
[db]
backup = "backup"
migrate = "migrate"
check = "dbcheck"
[bake]
duration = "30s"
max_5xx_ratio = 0.01
[inputs]
APP_ENV = "production"
"#;

    #[test]
    fn the_design_example_parses_into_typed_values() {
        let plan = Plan::parse(PLAN, &inventory(3, 1)).expect("valid");
        let surge = plan.surge.as_ref().expect("surge");
        assert_eq!(surge.count, 3);
        assert_eq!(surge.batches(), [1, 1, 1]);
        let standby: Vec<&str> = surge.standby.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(standby, ["web-4", "web-5", "web-6"]);
        assert_eq!(surge.db.as_ref().map(|h| h.name.as_str()), Some("db-1"));
        let old: Vec<&str> = plan.hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(
            old,
            ["web-1", "web-2", "web-3"],
            "standby hosts are not old servers"
        );
        let inputs = plan.file.inputs.as_ref().expect("inputs");
        assert_eq!(
            inputs.values().next().map(String::as_str),
            Some("production")
        );
        let command = format!(
            "{}[provider]\nlaunch = \"/usr/local/lib/handover/launch\"\nterminate = \"/usr/local/lib/handover/terminate\"\narray = \"/usr/local/lib/handover/array\"\n",
            PLAN.replace(
                "provider = \"standby\"",
                "provider = \"command\"\ncount = 2"
            )
        );
        let plan = Plan::parse(&command, &inventory(0, 1)).expect("valid");
        assert_eq!(plan.surge.as_ref().map(|s| s.count), Some(2));
    }

    #[test]
    fn enroll_takes_the_ca_directory_from_handover_toml() {
        let mut config = inventory(0, 1);
        config.enroll = Some(crate::enroll::EnrollConfig {
            ca_dir: "/etc/handover/pki".into(),
            wait: std::time::Duration::from_secs(120),
        });
        let text = format!(
            "{}[provider]\nlaunch = \"/l\"\nterminate = \"/t\"\n",
            PLAN.replace("\"standby\"", "\"command\"\nenroll = true")
        );
        let plan = Plan::parse(&text, &config).expect("valid");
        let enroll = plan.surge.as_ref().and_then(|s| s.enroll.as_ref());
        assert_eq!(
            enroll.map(|e| e.ca_dir.display().to_string()),
            Some("/etc/handover/pki".to_string())
        );
        let without = PLAN.replace("\"standby\"", "\"command\"");
        let plan = Plan::parse(
            &format!("{without}[provider]\nlaunch = \"/l\"\nterminate = \"/t\"\n"),
            &config,
        )
        .expect("valid");
        assert!(
            plan.surge.as_ref().is_some_and(|s| s.enroll.is_none()),
            "[enroll] in handover.toml alone enrolls nothing: the plan asks"
        );
    }

    /// Each surge value `handover plan` must refuse, with its key and the fix.
    #[test]
    fn refuses_each_surge_value_that_cannot_work_naming_its_key_and_fix() {
        let config = inventory(3, 1);
        let cases: Vec<(String, crate::config::CoordinatorConfig, &str, &str)> = vec![
            (
                PLAN.replace("batch = 1", "batch = 0"),
                config.clone(),
                "[surge] batch",
                "1 or more",
            ),
            (
                PLAN.replace("batch = 1", "batch = 1\ncount = 0"),
                config.clone(),
                "[surge] count",
                "count = 1 or more",
            ),
            (
                PLAN.replace("batch = 1", "batch = 1\ncount = 4"),
                config.clone(),
                "provider",
                "mark app hosts `standby = true`",
            ),
            (
                PLAN.to_string(),
                inventory(2, 1),
                "provider",
                "needs 3 standby host(s)",
            ),
            (
                PLAN.replace("\"standby\"", "\"cloud\""),
                config.clone(),
                "[surge] provider",
                "standby",
            ),
            (
                PLAN.replace("\"standby\"", "\"command\""),
                config.clone(),
                "provider",
                "needs a [provider] section",
            ),
            (
                format!(
                    "{}[provider]\nlaunch = \"launch.sh\"\n",
                    PLAN.replace("\"standby\"", "\"command\"")
                ),
                config.clone(),
                "[provider] launch",
                "absolute path",
            ),
            (
                PLAN.replace("0.01", "1.5"),
                config.clone(),
                "[bake] max_5xx_ratio",
                "from 0 to 1",
            ),
            (
                PLAN.replace("APP_ENV", "app_env"),
                config.clone(),
                "inputs: invalid input key \"app_env\"",
                "upper-case",
            ),
            (PLAN.to_string(), inventory(3, 0), "[db]", "role \"db\""),
            (
                PLAN.to_string(),
                inventory(3, 2),
                "[db]",
                "[db] host = \"NAME\"",
            ),
            (
                PLAN.replace("check = \"dbcheck\"", "check = \"db check\""),
                config.clone(),
                "[db] check",
                "hook name",
            ),
            (
                PLAN.replace("batch = 1", "batch = 1\nsurprise = 1"),
                config.clone(),
                "surprise",
                "unknown field",
            ),
            (
                PLAN.replace("batch = 1", "batch = 1\nenroll = true"),
                config.clone(),
                "[surge] enroll",
                "provider = \"command\"",
            ),
            (
                format!(
                    "{}[provider]\nlaunch = \"/l\"\nterminate = \"/t\"\n",
                    PLAN.replace("\"standby\"", "\"command\"\nenroll = true")
                ),
                config.clone(),
                "[surge] enroll",
                "[enroll] ca_dir",
            ),
            (
                PLAN.replace("batch = 1", "batch = 1\nenroll = \"yes\""),
                config.clone(),
                "[surge] enroll",
                "a boolean",
            ),
        ];
        for (text, config, key, fix) in cases {
            let err = format!("{:#}", Plan::parse(&text, &config).expect_err(key));
            assert!(err.contains(key), "should name {key}: {err}");
            assert!(err.contains(fix), "should say {fix}: {err}");
        }
    }
}
