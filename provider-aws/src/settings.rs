//! Where the provider's settings come from: the coordinator hands them over as
//! JSON in `HANDOVER_AWS_SETTINGS` (the plan's `[aws]` and its revision); by hand,
//! `--plan FILE` reads the same `[aws]` section from a surge plan.

use std::path::Path;

use anyhow::Context;
use handover_common::aws::{AwsSettings, ProviderSettings, SETTINGS_ENV};
use serde::Deserialize;

/// The settings from `--plan FILE`, else from the environment.
pub fn load(plan: Option<&Path>) -> anyhow::Result<ProviderSettings> {
    if let Some(path) = plan {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the plan {}", path.display()))?;
        return from_plan(&text).with_context(|| format!("plan {}", path.display()));
    }
    match std::env::var(SETTINGS_ENV) {
        Ok(json) => from_env(&json),
        Err(_) => anyhow::bail!(
            "no settings: run me through `handover rollout` with [surge] provider = \"aws\", or give --plan PLAN.toml (a surge plan with an [aws] section)"
        ),
    }
}

/// `HANDOVER_AWS_SETTINGS`.
pub fn from_env(json: &str) -> anyhow::Result<ProviderSettings> {
    serde_json::from_str(json).with_context(|| {
        format!(
            "{SETTINGS_ENV} is not the settings the coordinator writes (the plan's [aws] as JSON)"
        )
    })
}

/// A surge plan's `[aws]` and `[revision] ref`; its other sections are the
/// coordinator's business.
pub fn from_plan(text: &str) -> anyhow::Result<ProviderSettings> {
    #[derive(Deserialize)]
    struct Revision {
        #[serde(rename = "ref")]
        reference: Option<String>,
    }
    #[derive(Deserialize)]
    struct Plan {
        aws: Option<AwsSettings>,
        revision: Option<Revision>,
    }
    let plan: Plan = toml::from_str(text).context("not a valid plan")?;
    let aws = plan
        .aws
        .context("no [aws] section: add one with at least fleet = \"NAME\" (docs/aws.md)")?;
    Ok(ProviderSettings {
        aws,
        revision: plan.revision.and_then(|r| r.reference),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_gives_its_aws_section_and_revision_and_the_env_the_same_as_json() {
        let plan = "strategy = \"surge\"\n[revision]\nrepo = \"file:///x\"\nref = \"v2\"\n[surge]\nprovider = \"aws\"\n[aws]\nfleet = \"shop\"\ngroup = \"shop-web\"\n";
        let s = from_plan(plan).expect("settings");
        assert_eq!(s.aws.fleet.as_str(), "shop");
        assert_eq!(s.revision.as_deref(), Some("v2"));
        let json = serde_json::to_string(&s).expect("json");
        assert_eq!(from_env(&json).expect("env"), s);
        let err = format!(
            "{:#}",
            from_plan("strategy = \"surge\"\n").expect_err("no aws")
        );
        assert!(err.contains("no [aws] section"), "{err}");
        let err = format!("{:#}", from_env("{\"aws\": {}}").expect_err("no fleet"));
        assert!(err.contains("fleet"), "{err}");
    }
}
