//! `launch`: runbook step 3, "clone an existing app server". The like-instance
//! is read, each clone is run with its AMI (or the plan's), instance type,
//! subnet, security groups, instance profile, key, tags and launch template,
//! one RunInstances per server (each gets its own join token in its user data),
//! and the answer waits until describe shows every clone running with an address.
//!
//! A launch that fails half-way terminates the clones it made: the coordinator
//! only knows servers this command printed.

use std::time::Duration;

use anyhow::{Context, bail};
use aws_sdk_ec2::types::{
    IamInstanceProfileSpecification, Instance, InstanceType, LaunchTemplateSpecification,
    ResourceType, Tag, TagSpecification,
};
use handover_common::join::CaHash;
use handover_common::names::HostName;
use handover_common::pki::tokens::JoinToken;
use serde::{Deserialize, Deserializer, Serialize};

use crate::clients::Aws;
use crate::errors::failed;
use crate::instances::{self, Lookup};
use crate::tags::{self, Pair};

/// `launch`'s stdin. Unknown keys are ignored: a newer coordinator may send more,
/// and the inputs are read from the environment (`HANDOVER_INPUT_*`) where needed.
#[derive(Debug, Deserialize)]
pub struct LaunchRequest {
    /// The old server to clone (an inventory name).
    pub like: HostName,
    /// How many.
    pub count: usize,
    /// Join tokens, one per server, and the CA's hash they pin.
    #[serde(default)]
    pub join: Option<Join>,
}

/// `"join": {"ca_hash": "sha256:...", "tokens": ["ID.SECRET", ...]}`.
#[derive(Debug, Deserialize)]
pub struct Join {
    /// The CA's hash.
    #[serde(deserialize_with = "from_str")]
    pub ca_hash: CaHash,
    /// One single-use token per server.
    #[serde(deserialize_with = "tokens")]
    pub tokens: Vec<JoinToken>,
}

fn from_str<'de, D: Deserializer<'de>>(d: D) -> Result<CaHash, D::Error> {
    String::deserialize(d)?
        .parse()
        .map_err(serde::de::Error::custom)
}

fn tokens<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<JoinToken>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|t| t.parse().map_err(serde::de::Error::custom))
        .collect()
}

impl LaunchRequest {
    /// Parses stdin and checks it is a request this provider can carry out.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let req: LaunchRequest = serde_json::from_str(text.trim()).context(
            "stdin is not a launch request {\"like\": HOST, \"count\": N, \"inputs\": {...}, \"join\": {...}}",
        )?;
        if req.count == 0 || req.count > 100 {
            bail!("count = {}: give 1 to 100 servers", req.count);
        }
        if let Some(join) = &req.join
            && join.tokens.len() != req.count
        {
            bail!(
                "{} join token(s) for {} server(s): each server needs its own",
                join.tokens.len(),
                req.count
            );
        }
        Ok(req)
    }
}

/// One server on `launch`'s stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Launched {
    /// Its name (its `Name` tag and its agent's name).
    pub name: HostName,
    /// Its agent: private address and agent port.
    pub address: String,
    /// Its app server: private address and app port.
    pub app: String,
}

/// What a clone is made of, read from the like-instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneSpec {
    /// The like-instance's id.
    pub like: String,
    /// Its AMI, or the plan's.
    pub image: String,
    /// Its instance type.
    pub instance_type: Option<String>,
    /// Its subnet.
    pub subnet: Option<String>,
    /// Its security groups' ids.
    pub security_groups: Vec<String>,
    /// Its instance profile's ARN.
    pub profile: Option<String>,
    /// Its key pair.
    pub key_name: Option<String>,
    /// The launch template (id, version) it was launched from.
    pub template: Option<(String, String)>,
    /// Its tags that a clone carries.
    pub tags: Vec<Pair>,
}

impl CloneSpec {
    /// Reads `like`; `ami` overrides its image.
    pub fn of(like: &Instance, ami: Option<&str>) -> anyhow::Result<Self> {
        let id = instances::id(like).to_owned();
        let image = ami
            .or(like.image_id())
            .with_context(|| format!("instance {id} shows no AMI: set [aws] ami in the plan"))?;
        let template = match (
            instances::tag(like, tags::TEMPLATE_ID),
            instances::tag(like, tags::TEMPLATE_VERSION),
        ) {
            (Some(t), Some(v)) => Some((t.to_owned(), v.to_owned())),
            _ => None,
        };
        Ok(CloneSpec {
            like: id,
            image: image.to_owned(),
            instance_type: like.instance_type().map(|t| t.as_str().to_owned()),
            subnet: like.subnet_id().map(str::to_owned),
            security_groups: like
                .security_groups()
                .iter()
                .filter_map(|g| g.group_id().map(str::to_owned))
                .collect(),
            profile: like
                .iam_instance_profile()
                .and_then(|p| p.arn())
                .map(str::to_owned),
            key_name: like.key_name().map(str::to_owned),
            template,
            tags: tags::copied(&instances::tag_pairs(like)),
        })
    }
}

/// A name for a new server: `FLEET-` and 8 random hex digits. It is chosen
/// before the launch so that it can be the `Name` tag, the user data's agent
/// name and RunInstances' idempotency token at once.
pub fn fresh_name(fleet: &str) -> anyhow::Result<HostName> {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    let suffix = h.finish() as u32;
    HostName::new(format!("{fleet}-{suffix:08x}"))
        .with_context(|| format!("fleet {fleet:?} does not make a host name"))
}

/// Runs the launch and returns the servers for stdout.
pub async fn launch(
    aws: &Aws,
    req: &LaunchRequest,
    revision: Option<&str>,
) -> anyhow::Result<Vec<Launched>> {
    let like = find_like(aws, &req.like).await?;
    let spec = CloneSpec::of(&like, aws.settings.ami.as_ref().map(|a| a.as_str()))?;
    eprintln!(
        "launching {} clone(s) of {} ({}): AMI {}, type {}, subnet {}{}",
        req.count,
        req.like,
        spec.like,
        spec.image,
        spec.instance_type.as_deref().unwrap_or("?"),
        spec.subnet.as_deref().unwrap_or("default"),
        spec.template
            .as_ref()
            .map_or(String::new(), |(t, v)| format!(
                ", launch template {t} version {v}"
            ))
    );
    let mut launched: Vec<(HostName, String)> = Vec::new();
    let result = async {
        for i in 0..req.count {
            let name = fresh_name(aws.settings.fleet.as_str())?;
            let user_data = req.join.as_ref().and_then(|j| {
                j.tokens
                    .get(i)
                    .map(|t| crate::userdata::render(&name, t, &j.ca_hash))
            });
            let id = run_one(aws, &spec, &name, user_data.as_deref(), revision).await?;
            eprintln!("launched {id} as {name}");
            launched.push((name, id));
        }
        wait_until_running(aws, &launched).await
    }
    .await;
    if result.is_err() && !launched.is_empty() {
        let ids: Vec<String> = launched.iter().map(|(_, id)| id.clone()).collect();
        match aws
            .ec2
            .terminate_instances()
            .set_instance_ids(Some(ids.clone()))
            .send()
            .await
        {
            Ok(_) => eprintln!(
                "terminated the clones this failed launch made: {}",
                ids.join(", ")
            ),
            Err(e) => eprintln!(
                "could not terminate the clones this failed launch made ({}): {:#}; terminate them by hand",
                ids.join(", "),
                failed("ec2:TerminateInstances", e)
            ),
        }
    }
    result
}

/// The like-instance: exactly one.
async fn find_like(aws: &Aws, like: &HostName) -> anyhow::Result<Instance> {
    let lookup = Lookup::of(&aws.settings, like.as_str());
    let found = instances::find(aws, &lookup).await?;
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "cannot clone {like}: found no {lookup} (not terminated) in this region; tag the server Name={like}, or map it in [aws] instances = {{ {like} = \"i-...\" }}"
        ),
        many => bail!(
            "cannot clone {like}: {lookup} matches {} instances ({}); map it to one in [aws] instances = {{ {like} = \"i-...\" }}",
            many.len(),
            many.iter()
                .map(instances::id)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn ec2_tag((k, v): &Pair) -> Tag {
    Tag::builder().key(k).value(v).build()
}

/// One RunInstances for one server; returns its instance id.
async fn run_one(
    aws: &Aws,
    spec: &CloneSpec,
    name: &HostName,
    user_data: Option<&str>,
    revision: Option<&str>,
) -> anyhow::Result<String> {
    let all = tags::merged(
        &spec.tags,
        &tags::ours(name.as_str(), aws.settings.fleet.as_str(), revision),
    );
    tags::check(&all)?;
    let mut call = aws
        .ec2
        .run_instances()
        .image_id(&spec.image)
        .min_count(1)
        .max_count(1)
        // Retries of this call (throttling) cannot launch a second server.
        .client_token(name.as_str())
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .set_tags(Some(all.iter().map(ec2_tag).collect()))
                .build(),
        )
        .set_instance_type(spec.instance_type.as_deref().map(InstanceType::from))
        .set_subnet_id(spec.subnet.clone())
        .set_key_name(spec.key_name.clone())
        .set_user_data(user_data.map(aws_smithy_types::base64::encode));
    if !spec.security_groups.is_empty() {
        call = call.set_security_group_ids(Some(spec.security_groups.clone()));
    }
    if let Some(arn) = &spec.profile {
        call =
            call.iam_instance_profile(IamInstanceProfileSpecification::builder().arn(arn).build());
    }
    if let Some((id, version)) = &spec.template {
        call = call.launch_template(
            LaunchTemplateSpecification::builder()
                .launch_template_id(id)
                .version(version)
                .build(),
        );
    }
    let out = call
        .send()
        .await
        .map_err(|e| failed("ec2:RunInstances", e))?;
    out.instances()
        .first()
        .and_then(|i| i.instance_id())
        .map(str::to_owned)
        .context("ec2:RunInstances answered without an instance id")
}

/// Waits until describe shows every server running with a private address
/// (eventual consistency: a fresh id may be unknown to describe for a while).
async fn wait_until_running(
    aws: &Aws,
    launched: &[(HostName, String)],
) -> anyhow::Result<Vec<Launched>> {
    let ids: Vec<String> = launched.iter().map(|(_, id)| id.clone()).collect();
    let deadline = tokio::time::Instant::now() + aws.settings.ready_timeout;
    loop {
        let seen = instances::describe(aws, &ids).await?;
        match readiness(
            launched,
            &seen,
            aws.settings.agent_port,
            aws.settings.app_port,
        ) {
            Readiness::Ready(servers) => return Ok(servers),
            Readiness::Failed(why) => bail!(why),
            Readiness::Waiting(why) if tokio::time::Instant::now() >= deadline => bail!(
                "the new servers were not running within {}: {why}; raise [aws] ready_timeout if they need longer",
                handover_common::duration::format(aws.settings.ready_timeout)
            ),
            Readiness::Waiting(_) => tokio::time::sleep(Duration::from_secs(2)).await,
        }
    }
}

/// Where the launched servers stand.
#[derive(Debug, PartialEq, Eq)]
pub enum Readiness {
    /// All running with an address.
    Ready(Vec<Launched>),
    /// Not yet; why.
    Waiting(String),
    /// One will never run.
    Failed(String),
}

/// Decides from one describe answer.
pub fn readiness(
    launched: &[(HostName, String)],
    seen: &[Instance],
    agent_port: u16,
    app_port: u16,
) -> Readiness {
    let mut ready = Vec::new();
    for (name, id) in launched {
        let Some(i) = seen.iter().find(|i| i.instance_id() == Some(id)) else {
            return Readiness::Waiting(format!("{id} ({name}) is not visible to describe yet"));
        };
        match instances::state(i) {
            "running" => {}
            s @ ("shutting-down" | "terminated" | "stopping" | "stopped") => {
                let reason = i
                    .state_reason()
                    .and_then(|r| r.message())
                    .unwrap_or("no reason given");
                return Readiness::Failed(format!(
                    "new server {name} ({id}) went to {s} instead of running: {reason}"
                ));
            }
            s => return Readiness::Waiting(format!("{id} ({name}) is {s}")),
        }
        let Some(ip) = i.private_ip_address() else {
            return Readiness::Waiting(format!("{id} ({name}) has no private address yet"));
        };
        ready.push(Launched {
            name: name.clone(),
            address: format!("{ip}:{agent_port}"),
            app: format!("{ip}:{app_port}"),
        });
    }
    Readiness::Ready(ready)
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::types::{
        GroupIdentifier, IamInstanceProfile, InstanceState, InstanceStateName,
    };

    use super::*;

    fn like() -> Instance {
        Instance::builder()
            .instance_id("i-0like")
            .image_id("ami-11111111")
            .instance_type(InstanceType::T3Small)
            .subnet_id("subnet-1")
            .security_groups(GroupIdentifier::builder().group_id("sg-1").build())
            .security_groups(GroupIdentifier::builder().group_id("sg-2").build())
            .iam_instance_profile(
                IamInstanceProfile::builder()
                    .arn("arn:aws:iam::1:instance-profile/web")
                    .build(),
            )
            .key_name("ops")
            .tags(Tag::builder().key("Name").value("web-1").build())
            .tags(Tag::builder().key("team").value("shop").build())
            .tags(Tag::builder().key(tags::TEMPLATE_ID).value("lt-1").build())
            .tags(
                Tag::builder()
                    .key(tags::TEMPLATE_VERSION)
                    .value("3")
                    .build(),
            )
            .build()
    }

    #[test]
    fn a_clone_takes_everything_from_the_like_instance_but_its_name() {
        let spec = CloneSpec::of(&like(), None).expect("spec");
        assert_eq!(spec.image, "ami-11111111");
        assert_eq!(spec.instance_type.as_deref(), Some("t3.small"));
        assert_eq!(spec.subnet.as_deref(), Some("subnet-1"));
        assert_eq!(spec.security_groups, ["sg-1", "sg-2"]);
        assert_eq!(
            spec.profile.as_deref(),
            Some("arn:aws:iam::1:instance-profile/web")
        );
        assert_eq!(spec.key_name.as_deref(), Some("ops"));
        assert_eq!(spec.template, Some(("lt-1".into(), "3".into())));
        assert_eq!(spec.tags, [("team".to_string(), "shop".to_string())]);
        let spec = CloneSpec::of(&like(), Some("ami-22222222")).expect("spec");
        assert_eq!(spec.image, "ami-22222222", "the plan's AMI wins");
    }

    #[test]
    fn fresh_names_are_host_names_and_differ() {
        let a = fresh_name("shop").expect("name");
        let b = fresh_name("shop").expect("name");
        assert!(
            a.as_str().starts_with("shop-") && a.as_str().len() == 13,
            "{a}"
        );
        assert_ne!(a, b);
    }

    #[test]
    fn a_request_with_the_wrong_number_of_tokens_or_servers_is_refused() {
        let token = "abc123.0123456789abcdef";
        let hash = format!("sha256:{}", "ab".repeat(32));
        let ok = format!(
            r#"{{"like":"web-1","count":1,"inputs":{{}},"join":{{"ca_hash":"{hash}","tokens":["{token}"]}},"later":1}}"#
        );
        let req = LaunchRequest::parse(&ok).expect("valid");
        assert_eq!(req.join.map(|j| j.tokens.len()), Some(1));
        let two = ok.replace("\"count\":1", "\"count\":2");
        let err = LaunchRequest::parse(&two).expect_err("short").to_string();
        assert!(err.contains("1 join token(s) for 2 server(s)"), "{err}");
        let zero = r#"{"like":"web-1","count":0}"#;
        assert!(LaunchRequest::parse(zero).is_err());
        let bad = ok.replace(token, "not-a-token");
        assert!(LaunchRequest::parse(&bad).is_err());
        let plain = LaunchRequest::parse(r#"{"like":"web-1","count":2,"inputs":{"A":"b"}}"#)
            .expect("no join");
        assert!(plain.join.is_none());
    }

    fn instance(id: &str, state: InstanceStateName, ip: Option<&str>) -> Instance {
        Instance::builder()
            .instance_id(id)
            .state(InstanceState::builder().name(state).build())
            .set_private_ip_address(ip.map(str::to_owned))
            .build()
    }

    #[test]
    fn the_wait_ends_when_all_run_with_addresses_and_fails_on_a_dead_one() {
        let name = |n: &str| HostName::new(n).expect("name");
        let launched = [
            (name("shop-a"), "i-a".to_string()),
            (name("shop-b"), "i-b".to_string()),
        ];
        let r = |seen: &[Instance]| readiness(&launched, seen, 7443, 8080);
        assert!(matches!(r(&[]), Readiness::Waiting(w) if w.contains("not visible")));
        let a = instance("i-a", InstanceStateName::Running, Some("10.0.0.5"));
        let pending = instance("i-b", InstanceStateName::Pending, None);
        assert!(matches!(r(&[a.clone(), pending]), Readiness::Waiting(w) if w.contains("pending")));
        let dead = instance("i-b", InstanceStateName::Terminated, None);
        assert!(matches!(r(&[a.clone(), dead]), Readiness::Failed(w) if w.contains("shop-b")));
        let b = instance("i-b", InstanceStateName::Running, Some("10.0.0.6"));
        let Readiness::Ready(servers) = r(&[b, a]) else {
            panic!("ready");
        };
        assert_eq!(servers[0].address, "10.0.0.5:7443");
        assert_eq!(servers[1].app, "10.0.0.6:8080");
    }
}
