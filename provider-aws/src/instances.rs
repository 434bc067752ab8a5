//! Finding instances: by id, or by `Name` tag (an inventory name), as EC2's
//! eventually consistent describe shows them.

use aws_sdk_ec2::operation::describe_instances::builders::DescribeInstancesFluentBuilder;
use aws_sdk_ec2::types::{Filter, Instance, InstanceStateName};
use handover_common::aws::InstanceId;

use crate::clients::Aws;
use crate::errors::failed;
use crate::tags::Pair;

/// How a server is found: the plan's `[aws] instances` entry, the name itself
/// when it is an instance id, else its `Name` tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// By instance id.
    Id(String),
    /// By `Name` tag.
    NameTag(String),
}

impl Lookup {
    /// How `name` is found with these settings.
    pub fn of(aws: &handover_common::aws::AwsSettings, name: &str) -> Lookup {
        let mapped = handover_common::names::HostName::new(name)
            .ok()
            .and_then(|h| aws.instances.get(&h).cloned());
        match mapped.or_else(|| InstanceId::parse(name)) {
            Some(id) => Lookup::Id(id.to_string()),
            None => Lookup::NameTag(name.to_owned()),
        }
    }
}

impl std::fmt::Display for Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lookup::Id(id) => write!(f, "instance {id}"),
            Lookup::NameTag(n) => write!(f, "instance tagged Name={n}"),
        }
    }
}

/// The instances `lookup` finds, terminated ones left out.
pub async fn find(aws: &Aws, lookup: &Lookup) -> anyhow::Result<Vec<Instance>> {
    let alive = Filter::builder()
        .name("instance-state-name")
        .set_values(Some(
            ["pending", "running", "stopping", "stopped"]
                .map(String::from)
                .to_vec(),
        ))
        .build();
    let mut call = aws.ec2.describe_instances().filters(alive);
    call = match lookup {
        Lookup::Id(id) => call.instance_ids(id),
        Lookup::NameTag(name) => {
            call.filters(Filter::builder().name("tag:Name").values(name).build())
        }
    };
    send_describe(call).await
}

/// The instances with these ids as describe shows them now (those it does not
/// show yet are missing from the answer).
pub async fn describe(aws: &Aws, ids: &[String]) -> anyhow::Result<Vec<Instance>> {
    send_describe(
        aws.ec2
            .describe_instances()
            .set_instance_ids(Some(ids.to_vec())),
    )
    .await
}

/// Sends a DescribeInstances call and lists the instances it shows. An id EC2
/// does not know is nothing found, not an error: gone, or just launched and not
/// visible yet (EC2 is eventually consistent).
async fn send_describe(call: DescribeInstancesFluentBuilder) -> anyhow::Result<Vec<Instance>> {
    match call.send().await {
        Ok(out) => Ok(out
            .reservations()
            .iter()
            .flat_map(|r| r.instances().iter().cloned())
            .collect()),
        Err(e) if crate::errors::code(&e) == Some("InvalidInstanceID.NotFound") => Ok(Vec::new()),
        Err(e) => Err(failed("ec2:DescribeInstances", e)),
    }
}

/// An instance's tags as pairs.
pub fn tag_pairs(i: &Instance) -> Vec<Pair> {
    i.tags()
        .iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_owned(),
                t.value().unwrap_or_default().to_owned(),
            ))
        })
        .collect()
}

/// The value of tag `key` on `i`.
pub fn tag<'a>(i: &'a Instance, key: &str) -> Option<&'a str> {
    i.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// Its id, or "?" (EC2 always sends one).
pub fn id(i: &Instance) -> &str {
    i.instance_id().unwrap_or("?")
}

/// Its state's name ("pending", "running", ...).
pub fn state(i: &Instance) -> &str {
    i.state()
        .and_then(|s| s.name())
        .map_or("unknown", InstanceStateName::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_is_found_by_the_plans_id_its_own_id_or_its_name_tag() {
        let aws: handover_common::aws::AwsSettings =
            toml::from_str("fleet = \"shop\"\ninstances = { web-1 = \"i-0123456789abcdef0\" }")
                .expect("settings");
        assert_eq!(
            Lookup::of(&aws, "web-1"),
            Lookup::Id("i-0123456789abcdef0".into())
        );
        assert_eq!(
            Lookup::of(&aws, "i-00aa11bb"),
            Lookup::Id("i-00aa11bb".into())
        );
        assert_eq!(Lookup::of(&aws, "web-2"), Lookup::NameTag("web-2".into()));
    }
}
