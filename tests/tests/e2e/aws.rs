//! Issue 15: `handover-provider-aws` against moto's server mode on loopback —
//! launch copies the like-instance, terminate keeps to the fleet, the array is
//! held still and given back exactly as it was, a new template version becomes
//! the group's, and throttled calls are retried.

use std::collections::BTreeMap;

use handover_tests::aws::{self, FLEET, Moto, Seeded, Throttler};
use handover_tests::workdir::Workdir;

fn start() -> (Workdir, Moto, Seeded) {
    let dir = Workdir::new().expect("workdir");
    let moto = Moto::start(&dir.path().join("moto.log")).expect("moto_server starts");
    let seeded = moto.seed().expect("seeded");
    (dir, moto, seeded)
}

fn text(out: &std::process::Output) -> String {
    format!(
        "exit {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn tags(i: &aws_sdk_ec2::types::Instance) -> BTreeMap<String, String> {
    i.tags()
        .iter()
        .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
        .collect()
}

const TOKENS: [&str; 2] = ["abc123.0123456789abcdef", "def456.fedcba9876543210"];

#[test]
fn launch_clones_the_like_instance_with_its_ami_type_subnet_groups_and_tags() {
    let (_dir, moto, seeded) = start();
    let ca = format!("sha256:{}", "ab".repeat(32));
    let request = serde_json::json!({
        "like": "web-1",
        "count": 2,
        "inputs": {"APP_ENV": "production"},
        "join": {"ca_hash": ca, "tokens": TOKENS},
    });
    let out = aws::provider(
        &moto.settings(),
        Some("v2"),
        &["launch"],
        &request.to_string(),
        &[],
    )
    .expect("runs");
    assert!(out.status.success(), "{}", text(&out));
    let servers: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON list");
    assert_eq!(servers.len(), 2, "{}", text(&out));
    let like = moto.instance(&seeded.web1).expect("web-1");
    let mut names = Vec::new();
    for (server, token) in servers.iter().zip(TOKENS) {
        let name = server["name"].as_str().expect("name");
        assert!(name.starts_with("shop-"), "{name}");
        names.push(name.to_owned());
        let found = moto.by_name(name).expect("describe");
        assert_eq!(found.len(), 1, "one instance named {name}");
        let clone = &found[0];
        let ip = clone.private_ip_address().expect("private address");
        assert_eq!(server["address"], format!("{ip}:7443"));
        assert_eq!(server["app"], format!("{ip}:8080"));
        assert_eq!(clone.image_id(), Some(seeded.ami.as_str()));
        assert_eq!(clone.image_id(), like.image_id());
        assert_eq!(clone.instance_type().map(|t| t.as_str()), Some("t3.small"));
        assert_eq!(clone.subnet_id(), Some(seeded.subnet.as_str()));
        assert_eq!(clone.key_name(), Some("ops"));
        let mut groups: Vec<&str> = clone
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id())
            .collect();
        groups.sort();
        let mut want: Vec<&str> = seeded.groups.iter().map(String::as_str).collect();
        want.sort();
        assert_eq!(groups, want);
        let t = tags(clone);
        assert_eq!(t.get("team").map(String::as_str), Some("shop"), "{t:?}");
        assert_eq!(t.get("Name").map(String::as_str), Some(name));
        assert_eq!(t.get("handover:fleet").map(String::as_str), Some(FLEET));
        assert_eq!(t.get("handover:role").map(String::as_str), Some("app"));
        assert_eq!(t.get("handover:rollout").map(String::as_str), Some("v2"));
        // Launched from the like-instance's launch template.
        assert_eq!(
            t.get("aws:ec2launchtemplate:id").map(String::as_str),
            Some(seeded.template.as_str())
        );
        let user_data = moto
            .user_data(clone.instance_id().expect("id"))
            .expect("user data");
        assert!(
            user_data.contains(&format!(
                "HANDOVER_JOIN_TOKEN={token} nohup handover-agent join"
            )) && user_data.contains(&format!("--ca-hash {ca}"))
                && user_data.contains(&format!("name = \"{name}\"")),
            "{user_data}"
        );
    }
    assert_ne!(names[0], names[1]);

    // The plan's AMI replaces the like-instance's.
    let mut settings = moto.settings();
    settings.ami = Some(serde_json::from_value(serde_json::json!(seeded.other_ami)).expect("ami"));
    let request = serde_json::json!({"like": "web-1", "count": 1, "inputs": {}});
    let out = aws::provider(&settings, None, &["launch"], &request.to_string(), &[]).expect("runs");
    assert!(out.status.success(), "{}", text(&out));
    let servers: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON list");
    let found = moto
        .by_name(servers[0]["name"].as_str().expect("name"))
        .expect("describe");
    assert_eq!(found[0].image_id(), Some(seeded.other_ami.as_str()));

    // A like server that is not there: a clear error, and nothing launched.
    let count = || {
        let out = moto
            .block_on(moto.ec2.describe_instances().send())
            .expect("describe");
        out.reservations()
            .iter()
            .map(|r| r.instances().len())
            .sum::<usize>()
    };
    let before = count();
    let request = serde_json::json!({"like": "web-9", "count": 1, "inputs": {}});
    let out = aws::provider(
        &moto.settings(),
        None,
        &["launch"],
        &request.to_string(),
        &[],
    )
    .expect("runs");
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot clone web-9: found no instance tagged Name=web-9")
            && stderr.contains("[aws] instances"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    assert_eq!(count(), before, "nothing launched");
}

#[test]
fn terminate_refuses_an_instance_outside_the_fleet_and_terminates_nothing() {
    let (_dir, moto, seeded) = start();
    let out = aws::provider(
        &moto.settings(),
        None,
        &["terminate", "web-1", "db-1"],
        "",
        &[],
    )
    .expect("runs");
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("terminated nothing")
            && stderr.contains(&seeded.db1)
            && stderr.contains("handover:fleet=shop"),
        "{stderr}"
    );
    let state = |id: &str| {
        moto.instance(id)
            .expect("describe")
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_owned())
    };
    assert_eq!(
        state(&seeded.web1).as_deref(),
        Some("running"),
        "web-1 untouched"
    );
    assert_eq!(
        state(&seeded.db1).as_deref(),
        Some("running"),
        "db-1 untouched"
    );

    let out =
        aws::provider(&moto.settings(), None, &["terminate", "web-1"], "", &[]).expect("runs");
    assert!(out.status.success(), "{}", text(&out));
    assert_ne!(
        state(&seeded.web1).as_deref(),
        Some("running"),
        "web-1 terminated"
    );
    assert_eq!(
        state(&seeded.db1).as_deref(),
        Some("running"),
        "db-1 untouched"
    );
    // Again (a resumed rollout): already gone is fine.
    let out =
        aws::provider(&moto.settings(), None, &["terminate", "web-1"], "", &[]).expect("runs");
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn disable_suspends_the_scaling_processes_and_enable_restores_exactly_the_earlier_set() {
    let (_dir, moto, _seeded) = start();
    assert_eq!(moto.suspended().expect("group"), ["AZRebalance"]);
    let all = [
        "AZRebalance",
        "AlarmNotification",
        "HealthCheck",
        "Launch",
        "ReplaceUnhealthy",
        "ScheduledActions",
        "Terminate",
    ];
    for _ in 0..2 {
        // Twice: a resumed rollout disables again.
        let out =
            aws::provider(&moto.settings(), None, &["array", "disable"], "", &[]).expect("runs");
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(moto.suspended().expect("group"), all);
    }
    let out = aws::provider(&moto.settings(), None, &["array", "enable"], "", &[]).expect("runs");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        moto.suspended().expect("group"),
        ["AZRebalance"],
        "the operator's own suspension stays"
    );
    let group = moto.group().expect("group");
    assert!(
        group
            .tags()
            .iter()
            .all(|t| t.key() != Some("handover:suspended")),
        "the record is gone once enabled"
    );
}

#[test]
fn update_makes_a_new_launch_template_version_with_the_revision_and_inputs_the_groups() {
    let (_dir, moto, seeded) = start();
    let out = aws::provider(
        &moto.settings(),
        Some("v2"),
        &["array", "update"],
        "",
        &[("HANDOVER_INPUT_APP_ENV", "production")],
    )
    .expect("runs");
    assert!(out.status.success(), "{}", text(&out));
    let group = moto.group().expect("group");
    let spec = group.launch_template().expect("template");
    assert_eq!(spec.launch_template_id(), Some(seeded.template.as_str()));
    assert_eq!(spec.version(), Some("2"), "the new version is the group's");
    let version = moto
        .block_on(
            moto.ec2
                .describe_launch_template_versions()
                .launch_template_id(&seeded.template)
                .versions("2")
                .send(),
        )
        .expect("version 2");
    let data = version.launch_template_versions()[0]
        .launch_template_data()
        .expect("data");
    let tags: BTreeMap<&str, &str> = data
        .tag_specifications()
        .iter()
        .flat_map(|s| s.tags())
        .filter_map(|t| Some((t.key()?, t.value()?)))
        .collect();
    assert_eq!(tags.get("handover:rollout"), Some(&"v2"), "{tags:?}");
    assert_eq!(
        tags.get("handover:input:APP_ENV"),
        Some(&"production"),
        "{tags:?}"
    );
    assert_eq!(
        tags.get("team"),
        Some(&"shop"),
        "the template's own tags stay: {tags:?}"
    );
}

#[test]
fn throttled_calls_are_retried_with_backoff_and_then_succeed() {
    let (_dir, moto, seeded) = start();
    let proxy = Throttler::start(&moto.url, 3).expect("proxy");
    let mut settings = moto.settings();
    settings.endpoint = Some(serde_json::from_value(serde_json::json!(proxy.url)).expect("url"));
    // Auto Scaling's Throttling.
    let out = aws::provider(&settings, None, &["array", "disable"], "", &[]).expect("runs");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        proxy.throttled(),
        3,
        "every throttled answer was followed by a retry"
    );
    assert!(proxy.forwarded() >= 1);
    assert_eq!(moto.suspended().expect("group").len(), 7);

    // EC2's RequestLimitExceeded, past the attempts allowed: the error names the
    // call and the fix, and nothing was done.
    let proxy = Throttler::start(&moto.url, 5).expect("proxy");
    settings.endpoint = Some(serde_json::from_value(serde_json::json!(proxy.url)).expect("url"));
    settings.max_attempts = 2;
    let out = aws::provider(&settings, None, &["terminate", "web-1"], "", &[]).expect("runs");
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ec2:DescribeInstances failed: RequestLimitExceeded")
            && stderr.contains("max_attempts"),
        "{stderr}"
    );
    assert_eq!(proxy.throttled(), 2, "two attempts, no more");
    let web1 = moto.instance(&seeded.web1).expect("web-1");
    assert_eq!(
        web1.state().and_then(|s| s.name()).map(|n| n.as_str()),
        Some("running")
    );
}
