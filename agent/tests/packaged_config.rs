//! The agent.toml the handover-agent package installs as /etc/handover/agent.toml
//! must load as it ships: a conffile the agent rejects would greet every new host
//! with a config error instead of the "copy your certificates" hint.

use std::path::Path;

use handover_agent::config::AgentConfig;

#[test]
fn the_packaged_agent_toml_loads_and_names_the_packaged_paths() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/agent/agent.toml");
    let config = AgentConfig::load(&path).expect("packaging/agent/agent.toml must load");
    assert_eq!(config.name.as_str(), "change-me");
    assert_eq!(config.listen.port(), handover_common::DEFAULT_PORT);
    // The unit's ConditionPathExists=, StateDirectory= and RuntimeDirectory= name these.
    assert_eq!(config.ca, Path::new("/etc/handover/ca.pem"));
    assert_eq!(config.cert, Path::new("/etc/handover/agent.pem"));
    assert_eq!(config.key, Path::new("/etc/handover/agent.key"));
    assert_eq!(config.state_dir, Path::new("/var/lib/handover-agent"));
    assert_eq!(
        config.control_socket,
        Path::new("/run/handover-agent/control.sock")
    );
    assert!(
        config.health.is_none()
            && config.app.is_none()
            && config.haproxy.is_none()
            && config.deploy.is_none()
    );
    assert!(
        config.hooks.is_empty(),
        "feature sections ship commented out"
    );
}

#[test]
fn the_unit_checks_for_the_files_the_packaged_config_names() {
    let unit = include_str!("../../packaging/agent/handover-agent.service");
    for line in [
        "ConditionPathExists=/etc/handover/agent.toml",
        "ConditionPathExists=/etc/handover/ca.pem",
        "ConditionPathExists=/etc/handover/agent.pem",
        "ConditionPathExists=/etc/handover/agent.key",
        "ExecStart=/usr/bin/handover-agent run --config /etc/handover/agent.toml",
        "StateDirectory=handover-agent",
        "RuntimeDirectory=handover-agent",
        "Type=notify",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "handover-agent.service lacks `{line}`"
        );
    }
}

/// Every commented-out example setting in the packaged file, uncommented, is a
/// valid setting of today's agent: the examples cannot drift from the config
/// structs as features add and rename keys.
#[test]
fn every_commented_example_in_the_packaged_agent_toml_is_a_valid_setting() {
    let shipped = include_str!("../../packaging/agent/agent.toml");
    let mut uncommented = 0;
    let text: String = shipped
        .lines()
        .map(|line| match line.strip_prefix('#') {
            // `#[section]` and `#key = value` are examples; `# text` explains.
            Some(rest)
                if rest.starts_with('[')
                    || rest
                        .split_once(" = ")
                        .is_some_and(|(k, _)| !k.contains(' ')) =>
            {
                uncommented += 1;
                format!("{rest}\n")
            }
            _ => format!("{line}\n"),
        })
        .collect();
    assert!(uncommented > 20, "found only {uncommented} example lines");
    // The example's `run_as` user is one the operator creates for it; this machine
    // may not have it, so stand in the user running the test.
    let me = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .expect("the test user has a name");
    assert!(
        text.contains("run_as = \"deploy\""),
        "[deploy.release_hooks]"
    );
    let text = text.replace("run_as = \"deploy\"", &format!("run_as = {:?}", me.name));
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("agent.toml");
    std::fs::write(&path, &text).expect("write the uncommented config");
    let config = AgentConfig::load(&path).unwrap_or_else(|e| {
        panic!("{e:#}\n--- uncommented packaging/agent/agent.toml ---\n{text}")
    });
    assert!(config.health.is_some(), "[health]");
    assert!(
        config.app.as_ref().is_some_and(|a| a.status_url.is_some()),
        "[app]"
    );
    assert!(
        config
            .haproxy
            .as_ref()
            .is_some_and(|h| h.managed_backends().len() == 2),
        "[haproxy]"
    );
    assert!(
        config
            .deploy
            .as_ref()
            .is_some_and(|d| d.reload.is_some() && d.verify.is_some() && d.release_hooks.is_some()),
        "[deploy]"
    );
    assert_eq!(config.hooks.len(), 3, "[hooks]");
}
