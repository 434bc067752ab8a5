//! `terminate NAME...`: runbook step 18 (and a failed new server). Only
//! instances that carry this fleet's tag and are named in the call are
//! terminated; if any named server cannot be, nothing is, and the refusal names
//! each instance id.

use anyhow::bail;
use aws_sdk_ec2::types::Instance;
use handover_common::names::HostName;

use crate::clients::Aws;
use crate::errors::failed;
use crate::instances::{self, Lookup};

/// What one name found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The name from the call.
    pub name: String,
    /// How it was looked up.
    pub lookup: Lookup,
    /// (instance id, its handover:fleet tag) of each instance found.
    pub instances: Vec<(String, Option<String>)>,
}

/// The decision: the ids to terminate, and the names already gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Instances to terminate.
    pub terminate: Vec<String>,
    /// Names with no instance left (terminated before: a resumed rollout).
    pub gone: Vec<String>,
}

/// Decides what to terminate, or refuses with every reason at once.
pub fn decide(fleet: &str, found: &[Found]) -> anyhow::Result<Decision> {
    let mut refusals = Vec::new();
    let mut decision = Decision {
        terminate: Vec::new(),
        gone: Vec::new(),
    };
    for f in found {
        match f.instances.as_slice() {
            [] => decision.gone.push(f.name.clone()),
            [(id, tag)] if tag.as_deref() == Some(fleet) => decision.terminate.push(id.clone()),
            [(id, tag)] => refusals.push(format!(
                "{} is instance {id}, which {}",
                f.name,
                match tag {
                    Some(other) =>
                        format!("belongs to fleet {other:?} (handover:fleet), not {fleet:?}"),
                    None => format!("does not carry the tag handover:fleet={fleet}"),
                }
            )),
            many => refusals.push(format!(
                "{} ({}) matches {} instances: {}",
                f.name,
                f.lookup,
                many.len(),
                many.iter()
                    .map(|(id, _)| id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
    if !refusals.is_empty() {
        bail!(
            "terminated nothing: {}. Only instances tagged handover:fleet={fleet} and named in the call are terminated; tag the server, or terminate it yourself",
            refusals.join("; ")
        );
    }
    Ok(decision)
}

/// Looks every name up, decides, terminates.
pub async fn terminate(aws: &Aws, names: &[HostName]) -> anyhow::Result<()> {
    let mut found = Vec::new();
    for name in names {
        let lookup = Lookup::of(&aws.settings, name.as_str());
        let instances: Vec<Instance> = instances::find(aws, &lookup).await?;
        found.push(Found {
            name: name.to_string(),
            instances: instances
                .iter()
                .map(|i| {
                    (
                        instances::id(i).to_owned(),
                        instances::tag(i, crate::tags::FLEET).map(str::to_owned),
                    )
                })
                .collect(),
            lookup,
        });
    }
    let decision = decide(aws.settings.fleet.as_str(), &found)?;
    for name in &decision.gone {
        eprintln!("{name}: no instance left (terminated before)");
    }
    if decision.terminate.is_empty() {
        return Ok(());
    }
    aws.ec2
        .terminate_instances()
        .set_instance_ids(Some(decision.terminate.clone()))
        .send()
        .await
        .map_err(|e| failed("ec2:TerminateInstances", e))?;
    eprintln!("terminating {}", decision.terminate.join(", "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(name: &str, instances: &[(&str, Option<&str>)]) -> Found {
        Found {
            name: name.into(),
            lookup: Lookup::NameTag(name.into()),
            instances: instances
                .iter()
                .map(|(id, t)| (id.to_string(), t.map(str::to_owned)))
                .collect(),
        }
    }

    #[test]
    fn only_named_instances_of_the_fleet_are_terminated_and_a_gone_one_is_fine() {
        let d = decide(
            "shop",
            &[
                found("web-1", &[("i-1", Some("shop"))]),
                found("web-2", &[]),
            ],
        )
        .expect("decided");
        assert_eq!(d.terminate, ["i-1"]);
        assert_eq!(d.gone, ["web-2"]);
    }

    #[test]
    fn one_instance_outside_the_fleet_refuses_the_whole_call_naming_its_id() {
        let err = decide(
            "shop",
            &[
                found("web-1", &[("i-1", Some("shop"))]),
                found("db-1", &[("i-2", None)]),
                found("web-3", &[("i-3", Some("blog"))]),
                found("web-4", &[("i-4", Some("shop")), ("i-5", Some("shop"))]),
            ],
        )
        .expect_err("refused")
        .to_string();
        assert!(err.starts_with("terminated nothing"), "{err}");
        for part in ["i-2", "does not carry", "i-3", "\"blog\"", "i-4, i-5"] {
            assert!(err.contains(part), "should say {part}: {err}");
        }
        assert!(!err.contains("i-1"), "{err}");
    }
}
