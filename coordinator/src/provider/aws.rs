//! `[surge] provider = "aws"`: `handover-provider-aws` (its own crate, so the
//! coordinator does not carry the AWS SDK), run through the command provider's
//! machinery (timeouts, stderr kept, a non-zero exit fails the step).
//!
//! Reading the plan turns `[aws]` into the executables of a command provider:
//! `handover-provider-aws launch`, `terminate`, `array` (when `[aws] group` names
//! the server array), each with the settings as JSON in `HANDOVER_AWS_SETTINGS`.
//! `[provider]` may name the executable (`aws = "/path"`) and the `timeout`;
//! otherwise it is looked up on PATH when the plan is read.

use std::path::PathBuf;

use handover_common::aws::{AwsSettings, ProviderSettings, SETTINGS_ENV};

use crate::plan::{Plan, PlanFile};
use crate::surge_plan::{Executable, ProviderKind, ProviderSpec, Refusal};

/// The executable's name on PATH.
pub const EXECUTABLE: &str = "handover-provider-aws";

/// The plan's `[provider]` as the engine runs it: for `aws`, made from `[aws]`;
/// otherwise the file's, after refusing an `[aws]` that nothing would read.
pub fn command_spec(file: &PlanFile, kind: ProviderKind) -> Result<Option<ProviderSpec>, Refusal> {
    if kind != ProviderKind::Aws {
        if file.aws.is_some() {
            return Err((
                vec!["aws"],
                "[aws] is for [surge] provider = \"aws\": set it, or remove [aws]".into(),
            ));
        }
        return Ok(file.provider.clone());
    }
    let aws = file.aws.clone().ok_or_else(|| {
        (
            vec!["surge", "provider"],
            "[surge] provider = \"aws\" needs an [aws] section with at least fleet = \"NAME\" (the handover:fleet tag; docs/aws.md)".to_string(),
        )
    })?;
    let given = file.provider.as_ref();
    if given.is_some_and(|p| p.launch.is_some() || p.terminate.is_some() || p.array.is_some()) {
        return Err((
            vec!["provider"],
            "with [surge] provider = \"aws\", launch, terminate and array are handover-provider-aws's subcommands: remove them from [provider] (it takes aws = \"/path\" and timeout)".into(),
        ));
    }
    let exe = match given.and_then(|p| p.aws.clone()) {
        Some(exe) => exe,
        None => on_path(EXECUTABLE, std::env::var_os("PATH").as_deref()).map(Executable::found).ok_or_else(|| {
            (
                vec!["provider", "aws"],
                format!("{EXECUTABLE} is not on PATH: install it (its own package), or set [provider] aws = \"/path/to/{EXECUTABLE}\""),
            )
        })?,
    };
    let settings = ProviderSettings {
        aws: aws.clone(),
        revision: Some(file.revision.reference.to_string()),
    };
    let json = serde_json::to_string(&settings)
        .map_err(|e| (vec!["aws"], format!("[aws] cannot be passed on: {e}")))?;
    let env = vec![(SETTINGS_ENV.to_string(), json)];
    Ok(Some(ProviderSpec {
        launch: Some(exe.with(&["launch"], env.clone())),
        terminate: Some(exe.with(&["terminate"], env.clone())),
        array: aws
            .group
            .is_some()
            .then(|| exe.with(&["array"], env.clone())),
        aws: Some(exe),
        timeout: given.map_or_else(crate::surge_plan::default_provider_timeout, |p| p.timeout),
    }))
}

/// `name` in the directories of `path` (PATH), as an absolute path.
fn on_path(name: &str, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path?)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The `[aws]` settings of an aws plan.
pub fn settings(plan: &Plan) -> Option<&AwsSettings> {
    let aws = plan.file.surge.as_ref()?.provider == ProviderKind::Aws;
    aws.then_some(plan.file.aws.as_ref()).flatten()
}

/// `handover plan`'s words for the clones an aws plan launches: of which
/// server, found how, with which image.
pub fn clones(plan: &Plan, how_many: &str) -> Option<String> {
    let aws = settings(plan)?;
    let like = plan.hosts.first()?;
    let found = match aws.instances.get(&like.name) {
        Some(id) => format!("instance {id}"),
        None => format!("Name={}", like.name),
    };
    let image = match &aws.ami {
        Some(ami) => format!("AMI {ami} (plan)"),
        None => "its AMI".to_string(),
    };
    Some(format!(
        "launch {how_many}: EC2 clones of {} ({found}, {image}){}, wait for their agents",
        like.name,
        aws.region
            .as_ref()
            .map_or(String::new(), |r| format!(" in {r}")),
    ))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn inventory() -> crate::config::CoordinatorConfig {
        let mut text = String::from("ca = \"a\"\ncert = \"b\"\nkey = \"c\"\nstate_dir = \"d\"\n");
        for i in 1..=2 {
            text.push_str(&format!(
                "[[hosts]]\nname = \"web-{i}\"\naddress = \"127.0.1.{i}:7443\"\nroles = [\"app\"]\napp = \"127.0.1.{i}:80\"\n"
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
provider = "aws"
[provider]
aws = "/usr/bin/handover-provider-aws"
timeout = "10m"
[aws]
fleet = "shop"
region = "eu-west-1"
group = "shop-web"
ami = "ami-0123456789abcdef0"
"#;

    #[test]
    fn an_aws_plan_becomes_a_command_provider_of_subcommands_with_the_settings() {
        let plan = Plan::parse(PLAN, &inventory()).expect("valid");
        let surge = plan.surge.as_ref().expect("surge");
        assert_eq!(surge.provider, ProviderKind::Command);
        assert_eq!(surge.count, 2);
        let p = plan.file.provider.as_ref().expect("provider");
        let launch = p.launch.as_ref().expect("launch");
        assert_eq!(
            launch.path(),
            std::path::Path::new("/usr/bin/handover-provider-aws")
        );
        assert_eq!(launch.args(), ["launch"]);
        assert_eq!(
            p.terminate.as_ref().map(|e| e.args().to_vec()),
            Some(vec!["terminate".to_string()])
        );
        assert_eq!(
            p.array.as_ref().map(ToString::to_string).as_deref(),
            Some("/usr/bin/handover-provider-aws array")
        );
        assert_eq!(p.timeout, std::time::Duration::from_secs(600));
        let (key, json) = &launch.env()[0];
        assert_eq!(key, SETTINGS_ENV);
        let settings: ProviderSettings = serde_json::from_str(json).expect("settings");
        assert_eq!(settings.aws.fleet.as_str(), "shop");
        assert_eq!(settings.revision.as_deref(), Some("v2"));
        // `handover plan` shows the clones it would launch.
        let steps = crate::rollout::surge::forward(&plan);
        let text = crate::rollout::surge::render(&plan, &steps);
        assert!(
            text.contains("launch 1 new server(s): EC2 clones of web-1 (Name=web-1, AMI ami-0123456789abcdef0 (plan)) in eu-west-1, wait for their agents"),
            "{text}"
        );
        assert!(
            text.contains(
                "disable the server array (/usr/bin/handover-provider-aws array disable)"
            ),
            "{text}"
        );
        // Without a group there is no array to hold still.
        let plan =
            Plan::parse(&PLAN.replace("group = \"shop-web\"\n", ""), &inventory()).expect("valid");
        assert!(
            plan.file
                .provider
                .as_ref()
                .is_some_and(|p| p.array.is_none())
        );
    }

    #[test]
    fn refuses_each_aws_plan_that_cannot_work_naming_its_key_and_fix() {
        let without_aws = PLAN.split("[aws]").next().unwrap_or_default();
        let cases = [
            (without_aws.to_string(), "needs an [aws] section"),
            (
                PLAN.replace("provider = \"aws\"", "provider = \"standby\""),
                "[aws] is for [surge] provider = \"aws\"",
            ),
            (
                without_aws
                    .replace("provider = \"aws\"", "provider = \"command\"")
                    .replace(
                        "aws = \"/usr",
                        "launch = \"/bin/true\"\nterminate = \"/bin/true\"\naws = \"/usr",
                    ),
                "[provider] aws is for provider = \"aws\"",
            ),
            (
                PLAN.replace("timeout = \"10m\"", "launch = \"/bin/true\""),
                "subcommands",
            ),
            (
                PLAN.replace(
                    "aws = \"/usr/bin/handover-provider-aws\"",
                    "aws = \"handover-provider-aws\"",
                ),
                "absolute path",
            ),
            (
                PLAN.replace("fleet = \"shop\"", "fleet = \"shop fleet\""),
                "not a fleet name",
            ),
            (
                PLAN.replace("group = ", "surprise = 1\ngroup = "),
                "unknown field `surprise`",
            ),
            (
                PLAN.replace("strategy = \"surge\"", "strategy = \"in-place\"")
                    .replace("[surge]\nprovider = \"aws\"\n", "")
                    .replace(
                        "[provider]\naws = \"/usr/bin/handover-provider-aws\"\ntimeout = \"10m\"\n",
                        "",
                    ),
                "[aws] belongs to the surge strategy",
            ),
        ];
        for (text, says) in cases {
            let err = format!("{:#}", Plan::parse(&text, &inventory()).expect_err(says));
            assert!(err.contains(says), "should say {says}: {err}");
        }
    }

    #[test]
    fn the_executable_is_found_on_path_only_when_it_is_an_executable_file() {
        let dir = tempfile::tempdir().expect("dir");
        let exe = dir.path().join(EXECUTABLE);
        std::fs::write(&exe, "#!/bin/sh\n").expect("write");
        assert_eq!(
            on_path(EXECUTABLE, Some(dir.path().as_os_str())),
            None,
            "not executable"
        );
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(on_path(EXECUTABLE, Some(dir.path().as_os_str())), Some(exe));
        assert_eq!(on_path(EXECUTABLE, None), None);
        assert_eq!(
            on_path(EXECUTABLE, Some(std::ffi::OsStr::new("relative/dir"))),
            None
        );
    }
}
