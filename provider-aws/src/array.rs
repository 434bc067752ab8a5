//! `array disable|update|enable` on the Auto Scaling group (runbook steps 10,
//! 15, 16).
//!
//! - disable: suspend the processes that launch, terminate or replace
//!   instances. Those that were suspended already are remembered first, in the
//!   group's `handover:suspended` tag (durable: a crashed coordinator's resume
//!   finds it), as the ones *we* suspended.
//! - enable: resume exactly the processes the tag names, then drop the tag; the
//!   operator's own suspensions stay.
//! - update: a new version of the group's launch template, from its current
//!   version, carrying the revision and the inputs as instance tags (and the
//!   plan's AMI), made the group's version.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use aws_sdk_autoscaling::types::{AutoScalingGroup, LaunchTemplateSpecification, Tag as AsgTag};
use aws_sdk_ec2::types::{
    LaunchTemplateTagSpecification, LaunchTemplateTagSpecificationRequest, LaunchTemplateVersion,
    RequestLaunchTemplateData, ResourceType, Tag,
};
use handover_common::aws::AmiId;

use crate::clients::Aws;
use crate::errors::failed;
use crate::tags::{self, Pair};

/// The processes that launch, terminate or replace instances.
pub const PROCESSES: [&str; 7] = [
    "Launch",
    "Terminate",
    "HealthCheck",
    "ReplaceUnhealthy",
    "AZRebalance",
    "AlarmNotification",
    "ScheduledActions",
];

/// The processes `disable` suspends and `enable` will resume: those not
/// suspended already.
pub fn ours_to_suspend(already: &[String]) -> Vec<String> {
    PROCESSES
        .iter()
        .filter(|p| !already.iter().any(|a| a == *p))
        .map(|p| p.to_string())
        .collect()
}

/// The tag's value for the processes we suspended.
pub fn encode(ours: &[String]) -> String {
    if ours.is_empty() {
        "none".into()
    } else {
        ours.join(",")
    }
}

/// The processes to resume, from the tag; anything but our processes is refused
/// (an edited tag must not resume what the operator suspended).
pub fn to_resume(tag: &str) -> anyhow::Result<Vec<String>> {
    if tag == "none" {
        return Ok(Vec::new());
    }
    tag.split(',')
        .map(|p| {
            let p = p.trim();
            if PROCESSES.contains(&p) {
                Ok(p.to_owned())
            } else {
                bail!(
                    "the group's {} tag names {p:?}, which `array disable` never suspends: fix or delete the tag, then resume processes by hand",
                    tags::SUSPENDED
                )
            }
        })
        .collect()
}

/// The deployment inputs from `HANDOVER_INPUT_*` as tags.
pub fn input_tags(env: impl Iterator<Item = (String, String)>) -> Vec<Pair> {
    let inputs: BTreeMap<String, String> = env
        .filter_map(|(k, v)| Some((k.strip_prefix("HANDOVER_INPUT_")?.to_owned(), v)))
        .collect();
    inputs
        .into_iter()
        .map(|(k, v)| (format!("{}{k}", tags::INPUT_PREFIX), v))
        .collect()
}

/// The new version's instance tags: the current version's, without the inputs
/// of an earlier update, with ours over them.
pub fn version_tags(
    current: &[Pair],
    fleet: &str,
    revision: Option<&str>,
    inputs: &[Pair],
) -> Vec<Pair> {
    let kept: Vec<Pair> = current
        .iter()
        .filter(|(k, _)| !k.starts_with(tags::INPUT_PREFIX))
        .cloned()
        .collect();
    let mut ours = vec![(tags::FLEET.to_owned(), fleet.to_owned())];
    if let Some(r) = revision {
        ours.push((tags::ROLLOUT.to_owned(), r.to_owned()));
    }
    ours.extend(inputs.iter().cloned());
    tags::merged(&kept, &ours)
}

/// The group, as described now.
async fn group(aws: &Aws) -> anyhow::Result<(String, AutoScalingGroup)> {
    let name = aws
        .settings
        .group
        .as_ref()
        .context(
            "no Auto Scaling group: set [aws] group = \"NAME\" in the plan (the server array)",
        )?
        .to_string();
    let out = aws
        .asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(&name)
        .send()
        .await
        .map_err(|e| failed("autoscaling:DescribeAutoScalingGroups", e))?;
    let group = out
        .auto_scaling_groups()
        .first()
        .cloned()
        .with_context(|| {
            format!(
                "no Auto Scaling group {name:?} in this region: check [aws] group and [aws] region"
            )
        })?;
    Ok((name, group))
}

fn group_tag<'a>(g: &'a AutoScalingGroup, key: &str) -> Option<&'a str> {
    g.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

fn asg_tag(group: &str, key: &str, value: &str) -> AsgTag {
    AsgTag::builder()
        .resource_id(group)
        .resource_type("auto-scaling-group")
        .key(key)
        .value(value)
        .propagate_at_launch(false)
        .build()
}

/// Runbook step 10.
pub async fn disable(aws: &Aws) -> anyhow::Result<()> {
    let (name, g) = group(aws).await?;
    let already: Vec<String> = g
        .suspended_processes()
        .iter()
        .filter_map(|p| p.process_name().map(str::to_owned))
        .collect();
    if let Some(tag) = group_tag(&g, tags::SUSPENDED) {
        // Disabled before (a resumed rollout): the tag already tells ours apart.
        to_resume(tag)?;
        eprintln!("{name}: disabled before ({} = {tag})", tags::SUSPENDED);
    } else {
        let ours = ours_to_suspend(&already);
        aws.asg
            .create_or_update_tags()
            .tags(asg_tag(&name, tags::SUSPENDED, &encode(&ours)))
            .send()
            .await
            .map_err(|e| failed("autoscaling:CreateOrUpdateTags", e))?;
        eprintln!(
            "{name}: suspending {} (already suspended: {})",
            encode(&ours),
            if already.is_empty() {
                "none".into()
            } else {
                already.join(",")
            }
        );
    }
    aws.asg
        .suspend_processes()
        .auto_scaling_group_name(&name)
        .set_scaling_processes(Some(PROCESSES.map(String::from).to_vec()))
        .send()
        .await
        .map_err(|e| failed("autoscaling:SuspendProcesses", e))?;
    Ok(())
}

/// Runbook step 16.
pub async fn enable(aws: &Aws) -> anyhow::Result<()> {
    let (name, g) = group(aws).await?;
    let Some(tag) = group_tag(&g, tags::SUSPENDED) else {
        eprintln!(
            "{name}: not disabled by handover (no {} tag): nothing to resume",
            tags::SUSPENDED
        );
        return Ok(());
    };
    let ours = to_resume(tag)?;
    if !ours.is_empty() {
        aws.asg
            .resume_processes()
            .auto_scaling_group_name(&name)
            .set_scaling_processes(Some(ours.clone()))
            .send()
            .await
            .map_err(|e| failed("autoscaling:ResumeProcesses", e))?;
    }
    aws.asg
        .delete_tags()
        .tags(asg_tag(&name, tags::SUSPENDED, tag))
        .send()
        .await
        .map_err(|e| failed("autoscaling:DeleteTags", e))?;
    eprintln!("{name}: resumed {}", encode(&ours));
    Ok(())
}

/// Runbook step 15.
pub async fn update(aws: &Aws, revision: Option<&str>) -> anyhow::Result<()> {
    let (name, g) = group(aws).await?;
    let current = current_version(aws, &name, &g).await?;
    let template_id = current
        .launch_template_id()
        .context("ec2:DescribeLaunchTemplateVersions answered without a template id")?
        .to_owned();
    let number = current.version_number().unwrap_or_default();
    let specs = current
        .launch_template_data()
        .map(|d| d.tag_specifications())
        .unwrap_or_default();
    let instance_tags: Vec<Pair> = specs
        .iter()
        .filter(|s| s.resource_type() == Some(&ResourceType::Instance))
        .flat_map(|s| s.tags())
        .filter_map(|t| {
            Some((
                t.key()?.to_owned(),
                t.value().unwrap_or_default().to_owned(),
            ))
        })
        .collect();
    let tags = version_tags(
        &instance_tags,
        aws.settings.fleet.as_str(),
        revision,
        &input_tags(std::env::vars()),
    );
    tags::check(&tags)?;
    let created = aws
        .ec2
        .create_launch_template_version()
        .launch_template_id(&template_id)
        .source_version(number.to_string())
        .version_description(format!("handover: revision {}", revision.unwrap_or("-")))
        .launch_template_data(new_version_data(specs, &tags, aws.settings.ami.as_ref()))
        .send()
        .await
        .map_err(|e| failed("ec2:CreateLaunchTemplateVersion", e))?;
    let new_version = created
        .launch_template_version()
        .and_then(|v| v.version_number())
        .context("ec2:CreateLaunchTemplateVersion answered without a version number")?;
    aws.asg
        .update_auto_scaling_group()
        .auto_scaling_group_name(&name)
        .launch_template(
            LaunchTemplateSpecification::builder()
                .launch_template_id(&template_id)
                .version(new_version.to_string())
                .build(),
        )
        .send()
        .await
        .map_err(|e| failed("autoscaling:UpdateAutoScalingGroup", e))?;
    eprintln!(
        "{name}: launch template {template_id} version {new_version} (from {number}) is the group's"
    );
    Ok(())
}

/// The launch template version the group launches with now.
async fn current_version(
    aws: &Aws,
    name: &str,
    g: &AutoScalingGroup,
) -> anyhow::Result<LaunchTemplateVersion> {
    let spec = g
        .launch_template()
        .or_else(|| {
            g.mixed_instances_policy()
                .and_then(|m| m.launch_template())
                .and_then(|l| l.launch_template_specification())
        })
        .with_context(|| format!("group {name} has no launch template (a launch configuration?): move it to a launch template, which `array update` versions"))?;
    let version = spec.version().unwrap_or("$Default").to_owned();
    let mut describe = aws
        .ec2
        .describe_launch_template_versions()
        .versions(&version);
    describe = match (spec.launch_template_id(), spec.launch_template_name()) {
        (Some(id), _) => describe.launch_template_id(id),
        (None, Some(n)) => describe.launch_template_name(n),
        (None, None) => bail!("group {name}'s launch template has neither id nor name"),
    };
    let out = describe
        .send()
        .await
        .map_err(|e| failed("ec2:DescribeLaunchTemplateVersions", e))?;
    out.launch_template_versions()
        .first()
        .cloned()
        .with_context(|| format!("group {name}'s launch template version {version} does not exist"))
}

/// The new version's data: the instance tags `tags`, the other resource types'
/// tags as they were (TagSpecifications replace the source version's whole
/// list), and the plan's AMI when it has one; the rest comes from the source
/// version.
fn new_version_data(
    current: &[LaunchTemplateTagSpecification],
    tags: &[Pair],
    ami: Option<&AmiId>,
) -> RequestLaunchTemplateData {
    let mut specs: Vec<LaunchTemplateTagSpecificationRequest> = current
        .iter()
        .filter(|s| s.resource_type() != Some(&ResourceType::Instance))
        .map(|s| {
            LaunchTemplateTagSpecificationRequest::builder()
                .set_resource_type(s.resource_type().cloned())
                .set_tags(Some(s.tags().to_vec()))
                .build()
        })
        .collect();
    specs.push(
        LaunchTemplateTagSpecificationRequest::builder()
            .resource_type(ResourceType::Instance)
            .set_tags(Some(
                tags.iter()
                    .map(|(k, v)| Tag::builder().key(k).value(v).build())
                    .collect(),
            ))
            .build(),
    );
    RequestLaunchTemplateData::builder()
        .set_tag_specifications(Some(specs))
        .set_image_id(ami.map(ToString::to_string))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn disable_remembers_only_what_was_not_suspended_and_enable_resumes_exactly_that() {
        let already = strings(&["AZRebalance", "AddToLoadBalancer"]);
        let ours = ours_to_suspend(&already);
        assert_eq!(
            ours,
            strings(&[
                "Launch",
                "Terminate",
                "HealthCheck",
                "ReplaceUnhealthy",
                "AlarmNotification",
                "ScheduledActions"
            ])
        );
        assert_eq!(to_resume(&encode(&ours)).expect("tag"), ours);
        let all = strings(&PROCESSES);
        assert_eq!(encode(&ours_to_suspend(&all)), "none");
        assert!(to_resume("none").expect("none").is_empty());
    }

    #[test]
    fn an_edited_tag_never_resumes_a_process_we_do_not_suspend() {
        let err = to_resume("Launch,AddToLoadBalancer")
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains("AddToLoadBalancer") && err.contains("handover:suspended"),
            "{err}"
        );
    }

    #[test]
    fn a_new_version_carries_the_revision_and_the_inputs_of_this_update_only() {
        let env = [
            (
                "HANDOVER_INPUT_APP_ENV".to_string(),
                "production".to_string(),
            ),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let inputs = input_tags(env.into_iter());
        assert_eq!(
            inputs,
            [(
                "handover:input:APP_ENV".to_string(),
                "production".to_string()
            )]
        );
        let current = vec![
            ("team".to_string(), "shop".to_string()),
            ("handover:input:OLD".to_string(), "x".to_string()),
            ("handover:rollout".to_string(), "v1".to_string()),
        ];
        let tags = version_tags(&current, "shop", Some("v2"), &inputs);
        assert_eq!(
            tags,
            [
                ("team".to_string(), "shop".to_string()),
                ("handover:fleet".to_string(), "shop".to_string()),
                ("handover:rollout".to_string(), "v2".to_string()),
                (
                    "handover:input:APP_ENV".to_string(),
                    "production".to_string()
                ),
            ]
        );
    }
}
