//! The `[aws]` section of a surge plan with `[surge] provider = "aws"` (issue 15):
//! what the coordinator validates when it reads the plan and what
//! `handover-provider-aws` is handed (as JSON in [`SETTINGS_ENV`]), one type for
//! both so the two can never disagree on a key or a rule.
//!
//! Nothing here talks to AWS; the SDK lives only in the provider's crate.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

use crate::names::HostName;

/// The environment variable that carries [`ProviderSettings`] as JSON from the
/// coordinator to `handover-provider-aws`.
pub const SETTINGS_ENV: &str = "HANDOVER_AWS_SETTINGS";

/// What the provider executable gets: the plan's `[aws]` and the revision it
/// deploys (tagged on the instances it launches and on the template version
/// `array update` makes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    /// `[aws]`.
    pub aws: AwsSettings,
    /// The plan's `[revision] ref`.
    #[serde(default)]
    pub revision: Option<String>,
}

/// `[aws]`: where the fleet lives and how its servers are told apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSettings {
    /// The value of the `handover:fleet` tag: launched servers carry it, and
    /// `terminate` refuses any instance without it.
    pub fleet: Fleet,
    /// The region (default: the standard chain, `AWS_REGION` or the profile's).
    #[serde(default)]
    pub region: Option<Region>,
    /// An endpoint URL for every service (default: AWS's; `AWS_ENDPOINT_URL` is
    /// honoured too), e.g. a moto_server on loopback.
    #[serde(default)]
    pub endpoint: Option<Endpoint>,
    /// The Auto Scaling group that is the server array (runbook steps 10, 15,
    /// 16). Without it the array steps are skipped.
    #[serde(default)]
    pub group: Option<GroupName>,
    /// The agent's UDP port on a launched server.
    #[serde(default = "default_agent_port")]
    pub agent_port: u16,
    /// The app server's port on a launched server, as the load balancers reach it.
    #[serde(default = "default_app_port")]
    pub app_port: u16,
    /// An AMI for the clones instead of the like-instance's (a new image is a
    /// common "system change"); also set in the template version of `array update`.
    #[serde(default)]
    pub ami: Option<AmiId>,
    /// Inventory name → EC2 instance id, for servers whose `Name` tag is not their
    /// inventory name (otherwise the like-instance is found by its `Name` tag).
    #[serde(default)]
    pub instances: BTreeMap<HostName, InstanceId>,
    /// How long `launch` waits for a new instance to be running with an address.
    #[serde(
        default = "default_ready_timeout",
        with = "crate::duration::serde_human_positive"
    )]
    pub ready_timeout: Duration,
    /// Attempts per API call (throttling and transient errors are retried with
    /// exponential backoff in between).
    #[serde(default = "default_max_attempts", deserialize_with = "attempts")]
    pub max_attempts: u32,
}

fn default_agent_port() -> u16 {
    7443
}
fn default_app_port() -> u16 {
    80
}
fn default_ready_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_max_attempts() -> u32 {
    10
}

fn attempts<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = i64::deserialize(d)?;
    u32::try_from(n)
        .ok()
        .filter(|n| (1..=50).contains(n))
        .ok_or_else(|| {
            D::Error::custom(format!(
                "max_attempts = {n}: give 1 to 50 (1 = no retries; throttled calls need a few)"
            ))
        })
}

/// Checks `text` against a rule and says what was expected.
fn checked<'de, D: Deserializer<'de>>(
    d: D,
    what: &str,
    ok: impl Fn(&str) -> bool,
    example: &str,
) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    if ok(&text) {
        Ok(text)
    } else {
        Err(D::Error::custom(format!(
            "{text:?} is not {what}: expected e.g. {example:?}"
        )))
    }
}

fn alnum_dash(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

macro_rules! checked_string {
    ($(#[$doc:meta])* $ty:ident, $what:literal, $example:literal, $ok:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $ty(String);

        impl $ty {
            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                checked(d, $what, $ok, $example).map($ty)
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

checked_string!(
    /// The `handover:fleet` tag's value. Launched servers are named
    /// `FLEET-XXXXXXXX`, so it must make a valid host name with that suffix.
    Fleet,
    "a fleet name (1-40 letters, digits and '-', starting with a letter or digit)",
    "shop",
    |t: &str| (1..=40).contains(&t.len())
        && alnum_dash(t)
        && t.as_bytes()[0].is_ascii_alphanumeric()
        && HostName::new(format!("{t}-0a1b2c3d")).is_ok()
);

checked_string!(
    /// An AWS region name.
    Region,
    "an AWS region",
    "eu-west-1",
    |t: &str| (1..=32).contains(&t.len()) && alnum_dash(t)
);

checked_string!(
    /// An endpoint URL.
    Endpoint,
    "an endpoint URL (http:// or https://, no spaces)",
    "http://127.0.0.1:5000",
    |t: &str| (t.starts_with("http://") || t.starts_with("https://"))
        && t.len() > "https://".len()
        && !t.chars().any(|c| c.is_whitespace() || c.is_control())
);

checked_string!(
    /// An Auto Scaling group's name.
    GroupName,
    "an Auto Scaling group name (1-255 characters, no ':' or control characters)",
    "shop-web",
    |t: &str| (1..=255).contains(&t.len()) && !t.contains(':') && !t.chars().any(char::is_control)
);

checked_string!(
    /// An AMI id.
    AmiId,
    "an AMI id",
    "ami-0123456789abcdef0",
    |t: &str| t
        .strip_prefix("ami-")
        .is_some_and(|h| (8..=17).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_hexdigit()))
);

checked_string!(
    /// An EC2 instance id.
    InstanceId,
    "an EC2 instance id",
    "i-0123456789abcdef0",
    is_instance_id
);

fn is_instance_id(t: &str) -> bool {
    t.strip_prefix("i-")
        .is_some_and(|h| (8..=17).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl InstanceId {
    /// `text` if it is an instance id (a host may be named by its id).
    pub fn parse(text: &str) -> Option<Self> {
        is_instance_id(text).then(|| InstanceId(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AwsSettings, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_full_section_parses_into_typed_values_with_defaults_for_the_rest() {
        let s = parse(
            r#"fleet = "shop"
region = "eu-west-1"
endpoint = "http://127.0.0.1:5000"
group = "shop-web"
ami = "ami-0123456789abcdef0"
instances = { web-1 = "i-0123456789abcdef0" }
"#,
        )
        .expect("valid");
        assert_eq!(s.fleet.as_str(), "shop");
        assert_eq!(s.agent_port, 7443);
        assert_eq!(s.app_port, 80);
        assert_eq!(s.max_attempts, 10);
        assert_eq!(s.ready_timeout, Duration::from_secs(300));
        let web1 = HostName::new("web-1").expect("name");
        assert_eq!(
            s.instances.get(&web1).map(InstanceId::as_str),
            Some("i-0123456789abcdef0")
        );
        let json = serde_json::to_string(&ProviderSettings {
            aws: s.clone(),
            revision: Some("v2".into()),
        })
        .expect("json");
        let back: ProviderSettings = serde_json::from_str(&json).expect("round trip");
        assert_eq!(back.aws, s);
    }

    #[test]
    fn each_bad_value_is_refused_naming_what_was_expected() {
        for (text, says) in [
            ("region = \"x\"", "missing field `fleet`"),
            ("fleet = \"shop fleet\"", "not a fleet name"),
            ("fleet = \"-shop\"", "not a fleet name"),
            (
                "fleet = \"shop\"\nendpoint = \"127.0.0.1:5000\"",
                "not an endpoint URL",
            ),
            ("fleet = \"shop\"\nami = \"ubuntu\"", "not an AMI id"),
            (
                "fleet = \"shop\"\ninstances = { web-1 = \"web-1\" }",
                "not an EC2 instance id",
            ),
            ("fleet = \"shop\"\nmax_attempts = 0", "give 1 to 50"),
            ("fleet = \"shop\"\nready_timeout = \"0s\"", "ready_timeout"),
            ("fleet = \"shop\"\nsurprise = 1", "unknown field `surprise`"),
            ("fleet = \"shop\"\ngroup = \"a:b\"", "Auto Scaling group"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(says), "{text}: should say {says}: {err}");
        }
    }

    #[test]
    fn instance_ids_are_told_from_host_names() {
        assert!(InstanceId::parse("i-0123456789abcdef0").is_some());
        assert!(InstanceId::parse("i-01234567").is_some());
        assert!(InstanceId::parse("web-1").is_none());
        assert!(InstanceId::parse("i-web").is_none());
    }
}
