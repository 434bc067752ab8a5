//! Issue 15: a surge rollout whose provider launches servers that enroll with
//! single-use join tokens (`[surge] enroll = true`, handover.toml `[enroll]`):
//! the test provider boots each as a cloud would with join user data
//! (`handover-agent join`, no certificate), the coordinator enrolls it right
//! after the launch, and the rollout hands over with nobody noticing. A token
//! used again afterwards is refused; a server pinning a wrong CA hash stops the
//! rollout before any traffic moves, and nothing launched is left running.

use std::path::Path;

use handover_tests::agents::{Coordinator, HostSpec, output_text};
use handover_tests::enroll::{
    FOREIGN_TOKEN, JoinAgent, WRONG_CA_HASH, enable_enroll, join_misbehaves, user_data_token,
};
use handover_tests::ports::host_ip;
use handover_tests::surge::{
    LaunchedHost, ProviderKind, SurgeFleet, SurgeLoad, SurgeOptions, assert_nobody_noticed,
};

/// Three old servers, no standby pool (the provider launches the new ones),
/// and the coordinator holding the CA directory as `[enroll] ca_dir`.
fn fleet_with_enroll() -> SurgeFleet {
    let fleet = SurgeFleet::start(SurgeOptions {
        standby: 0,
        ..SurgeOptions::default()
    })
    .expect("fleet");
    enable_enroll(&fleet.coordinator, &fleet.pki.dir, "60s").expect("[enroll]");
    fleet
}

/// The command-provider surge plan with `[surge] enroll = true`.
fn enroll_plan(fleet: &SurgeFleet) -> String {
    let text = fleet
        .surge_plan(ProviderKind::Command, "v2", "")
        .replace("[surge]\n", "[surge]\nenroll = true\n");
    assert!(text.contains("enroll = true"), "{text}");
    let path = fleet.write_plan("surge-enroll.toml", &text).expect("plan");
    path.display().to_string()
}

/// `handover ca token list --json` of the fixture's CA.
fn tokens(fleet: &SurgeFleet) -> Vec<serde_json::Value> {
    let out = fleet.coordinator.run(&[
        "ca",
        "token",
        "list",
        "--dir",
        &fleet.pki.dir.to_string_lossy(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    list.as_array().expect("array").clone()
}

/// Nothing was issued to `name`: no certificate file, no line in the ledger.
fn assert_nothing_issued(pki_dir: &Path, name: &str) {
    assert!(
        !pki_dir.join(format!("{name}.pem")).exists(),
        "a certificate was written for {name}"
    );
    let ledger = std::fs::read_to_string(pki_dir.join("issued.tsv")).unwrap_or_default();
    assert!(
        !ledger.contains(&format!("\t{name}\n")),
        "{name} is in the ledger: {ledger}"
    );
}

/// Every file under `dir` (the coordinator's journal), for a search by content.
fn bytes_under(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(bytes_under(&path));
        } else {
            out.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The servers the provider launched, each still running.
fn running(launched: &[LaunchedHost]) -> Vec<&LaunchedHost> {
    launched.iter().filter(|h| !h.terminated).collect()
}

/// Surge 3 → 3 under traffic with a provider whose servers enroll with join
/// tokens: each launched agent gets its certificate right after the launch (one
/// token each, secrets only on the provider's stdin, IDs in the journal), the
/// new servers serve `handover status` and v2, nobody noticed; afterwards a
/// fresh `handover-agent join` replaying one of the tokens is refused and
/// nothing is issued to it.
#[test]
fn launched_servers_enroll_with_join_tokens_and_a_replayed_token_is_refused() {
    let fleet = fleet_with_enroll();
    let plan = enroll_plan(&fleet);
    let out = fleet.coordinator.run(&["plan", &plan, "--offline"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        shown.contains("launched servers enroll with single-use join tokens"),
        "{shown}"
    );
    assert!(
        shown.contains("enroll 1 new server(s) with their join tokens"),
        "{shown}"
    );

    let load = SurgeLoad::start(&fleet).expect("load starts");
    let out = fleet
        .coordinator
        .run(&["rollout", &plan, "--yes", "--json"]);
    let (report, sessions) = load.stop();
    assert!(out.status.success(), "{}", output_text(&out));
    assert_nobody_noticed(&report, &sessions);
    fleet.check_capacity().expect("3 UP at every sample");
    let progress = output_text(&out);
    assert!(progress.contains("runbook 3: enroll"), "{progress}");

    // Three servers launched, each with one token (the provider logs how many
    // it got, never the tokens), each enrolled, on v2, serving.
    let launched = fleet.launched().expect("launched");
    let names: Vec<&str> = launched.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["web-20", "web-21", "web-22"]);
    let calls = fleet.provider_calls();
    let launches: Vec<&String> = calls.iter().filter(|c| c.starts_with("launch")).collect();
    assert_eq!(launches.len(), 3, "{calls:?}");
    assert!(launches.iter().all(|c| c.ends_with(" join=1")), "{calls:?}");
    assert_eq!(
        calls.last().map(String::as_str),
        Some("terminate web-1 web-2 web-3"),
        "the old servers went last: {calls:?}"
    );
    let specs: Vec<HostSpec> = launched
        .iter()
        .map(|h| HostSpec {
            name: h.name.clone(),
            address: h.address.parse().expect("address"),
            roles: vec!["app".into()],
            app: Some(h.app),
            extra: String::new(),
        })
        .collect();
    let viewer = Coordinator::write(&fleet.dir().join("viewer"), &fleet.pki, "viewer", &specs)
        .expect("viewer config");
    let (ok, status) = viewer.status_json(&names).expect("status");
    assert!(ok, "the new servers serve `handover status`: {status}");
    for h in &launched {
        assert!(!h.terminated, "{} runs", h.name);
        assert!(fleet.pki.dir.join(format!("{}.pem", h.name)).exists());
        let version = std::fs::read_to_string(h.dir.join("www/current/VERSION")).expect("v");
        assert_eq!(version.trim(), "v2", "{}", h.name);
        let log = std::fs::read_to_string(h.dir.join("agent.log")).unwrap_or_default();
        assert!(log.contains("enrolled"), "{}: {log}", h.name);
    }
    let up = fleet.up_addresses().expect("stats");
    for h in &launched {
        assert!(up.contains(&h.app.to_string()), "{} UP: {up:?}", h.name);
    }

    // Each token used once, none left usable; no secret in the coordinator's
    // output or journal.
    let list = tokens(&fleet);
    assert_eq!(list.len(), 3, "{list:?}");
    for t in &list {
        assert_eq!(t["state"], "used", "{t}");
        assert!(t["note"].as_str().unwrap_or("").contains("rollout"), "{t}");
    }
    let token = user_data_token(&launched[0].dir).expect("token");
    let secret = token.split_once('.').expect("ID.SECRET").1.to_owned();
    let state = bytes_under(&fleet.coordinator.config.with_file_name("state"));
    assert!(!state.is_empty(), "the journal is there");
    assert!(
        !contains(&state, &secret),
        "a token secret is in the journal"
    );
    assert!(!progress.contains(&secret), "a token secret was printed");

    // The same token again, from a fresh host.
    let ca_hash = std::fs::read_to_string(launched[0].dir.join("user-data"))
        .expect("user data")
        .lines()
        .find_map(|l| l.strip_prefix("CA_HASH=").map(str::to_owned))
        .expect("CA_HASH");
    let replay = JoinAgent::start(
        &fleet.dir().join("replay/web-77"),
        "web-77",
        host_ip(77),
        &token,
        &ca_hash,
        "",
    )
    .expect("replaying agent");
    let out = fleet.coordinator.run(&[
        "enroll",
        "web-77",
        "--address",
        &replay.addr.to_string(),
        "--dir",
        &fleet.pki.dir.to_string_lossy(),
        "--wait",
        "20s",
    ]);
    assert!(
        !out.status.success(),
        "replay accepted: {}",
        output_text(&out)
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("already used"), "{text}");
    assert_nothing_issued(&fleet.pki.dir, "web-77");
    assert!(!replay.has_certificate(), "{}", replay.log_text());
}

/// A launched server pinning a wrong CA hash: it refuses the coordinator, the
/// enroll step fails saying so before any traffic moves, every launched server
/// is terminated (no process left), the batch's tokens are revoked, nothing
/// was issued, and the old servers never stopped serving.
#[test]
fn a_launched_server_pinning_a_wrong_ca_hash_stops_the_surge_before_traffic_moves() {
    let fleet = fleet_with_enroll();
    join_misbehaves(&fleet.provider_dir, WRONG_CA_HASH).expect("switch");
    let plan = enroll_plan(&fleet);
    let load = SurgeLoad::start(&fleet).expect("load starts");
    let out = fleet.coordinator.run(&["rollout", &plan, "--yes"]);
    let (report, sessions) = load.stop();
    let all = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "aborted: {all}");
    assert!(
        all.contains("web-20") && all.contains("refused this coordinator"),
        "{all}"
    );
    assert_nobody_noticed(&report, &sessions);
    fleet.check_capacity().expect("3 UP at every sample");

    let launched = fleet.launched().expect("launched");
    let names: Vec<&str> = launched.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["web-20"], "one batch launched, then it stopped");
    assert!(running(&launched).is_empty(), "{launched:?}");
    let strays = handover_tests::workdir::stray_processes(&launched[0].dir).expect("pgrep");
    assert!(strays.is_empty(), "left running: {strays:?}");
    let log = std::fs::read_to_string(launched[0].dir.join("agent.log")).unwrap_or_default();
    assert!(log.contains("not the pinned"), "the server says why: {log}");
    assert_nothing_issued(&fleet.pki.dir, "web-20");

    let calls = fleet.provider_calls();
    assert!(calls.iter().any(|c| c == "terminate web-20"), "{calls:?}");
    assert!(
        !calls.iter().any(|c| c == "array disable"),
        "nothing moved: {calls:?}"
    );
    let up = fleet.up_addresses().expect("stats");
    assert_eq!(up.len(), 3, "only the old servers serve: {up:?}");
    for h in &fleet.apps {
        assert!(
            up.contains(&h.apache.addr().to_string()),
            "{} serves",
            h.name
        );
        assert!(h.health_file_present(), "{} untouched", h.name);
    }
    let list = tokens(&fleet);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["state"], "revoked", "{list:?}");
    assert_eq!(list[0]["used"], 0, "{list:?}");
}

/// A launched server holding a valid token of the CA that its launch did not
/// carry (one an operator made by hand): the coordinator refuses it before
/// redeeming it, nothing is issued, that token stays unspent, the launch's own
/// token is revoked, and the launched server is terminated.
#[test]
fn a_launched_server_with_a_token_its_launch_did_not_carry_is_refused() {
    let fleet = fleet_with_enroll();
    join_misbehaves(&fleet.provider_dir, FOREIGN_TOKEN).expect("switch");
    let plan = enroll_plan(&fleet);
    let out = fleet.coordinator.run(&["rollout", &plan, "--yes"]);
    let all = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "aborted: {all}");
    assert!(all.contains("was not made for its launch"), "{all}");
    assert_nothing_issued(&fleet.pki.dir, "web-20");
    let launched = fleet.launched().expect("launched");
    assert!(running(&launched).is_empty(), "{launched:?}");
    let list = tokens(&fleet);
    let state = |launch: bool| -> Vec<(String, u64)> {
        list.iter()
            .filter(|t| t["note"].is_string() == launch)
            .map(|t| {
                (
                    t["state"].as_str().unwrap_or("").to_owned(),
                    t["used"].as_u64().unwrap_or(99),
                )
            })
            .collect()
    };
    assert_eq!(state(true), [("revoked".to_owned(), 0)], "{list:?}");
    assert_eq!(state(false), [("usable".to_owned(), 0)], "{list:?}");
    let up = fleet.up_addresses().expect("stats");
    assert_eq!(up.len(), 3, "only the old servers serve: {up:?}");
}
