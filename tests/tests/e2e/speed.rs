//! Issue 14: a rollout as fast as its unavoidable waits. The release is staged
//! on every host before the first wave takes any host out, and each wave's
//! apply then only switches to it. Counts and ordering only, never timings.

use std::collections::BTreeMap;

use handover_tests::run::{Run, assert_settled, history, releases_of, traffic};
use handover_tests::scenario::{Scenario, ScenarioOptions};

/// Every event's `outputs` of the step-done events whose title starts with
/// `prefix`, merged.
fn outputs_of(events: &[serde_json::Value], prefix: &str) -> BTreeMap<String, String> {
    events
        .iter()
        .filter(|e| e["event"] == "step-done")
        .filter(|e| e["title"].as_str().unwrap_or("").starts_with(prefix))
        .filter_map(|e| e["outputs"].as_object())
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect()
}

/// Where the first event satisfying `pred` is.
fn position(events: &[serde_json::Value], pred: impl Fn(&serde_json::Value) -> bool) -> usize {
    events
        .iter()
        .position(pred)
        .unwrap_or_else(|| panic!("no such event among {events:#?}"))
}

/// A 4-host in-place rollout under client traffic: one staging step ends
/// (staged on every host) before the first health-check file is removed; each
/// host's apply then switches to exactly the release staged for it, so every
/// host has one new release; no request failed.
#[test]
fn a_rollout_stages_every_host_before_the_first_drain_and_applies_the_staged_release() {
    let s = Scenario::start(ScenarioOptions {
        apps: 4,
        ..ScenarioOptions::default()
    })
    .expect("fleet starts");
    let plan = s
        .write_plan("plan.toml", &s.in_place_plan("v2", 1, 3))
        .expect("plan");
    let before: BTreeMap<String, usize> = s
        .apps
        .iter()
        .map(|a| (a.name.clone(), releases_of(a).len()))
        .collect();
    let load = traffic(&s);
    let run = Run::start(&s, &["rollout", &plan.display().to_string(), "--yes"]);
    let done = run.finish();
    let report = load.stop();
    assert_eq!(done.code, Some(0), "{}", done.describe());
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
    assert!(report.ok > 0, "no traffic went through");

    let events = &done.events;
    let staged_done = position(events, |e| {
        e["event"] == "step-done" && e["title"].as_str().unwrap_or("").starts_with("stage ")
    });
    let first_drain = position(events, |e| {
        e["event"] == "step-started"
            && e["title"]
                .as_str()
                .unwrap_or("")
                .starts_with("remove the health-check file")
    });
    assert!(
        staged_done < first_drain,
        "staging ended at event {staged_done}, the first drain began at {first_drain}"
    );
    let stagings = events
        .iter()
        .filter(|e| {
            e["event"] == "step-started" && e["title"].as_str().unwrap_or("").starts_with("stage ")
        })
        .count();
    assert_eq!(stagings, 1, "one staging step for every host");

    let staged = outputs_of(events, "stage ");
    let applied = outputs_of(events, "apply ");
    for app in &s.apps {
        let name = &app.name;
        let staged = staged
            .get(&format!("staged/{name}"))
            .unwrap_or_else(|| panic!("{name} was not staged: {staged:?}"));
        assert_eq!(
            applied.get(&format!("release/{name}")),
            Some(staged),
            "{name} switched to the release staged for it"
        );
        assert_eq!(
            releases_of(app).len(),
            before[name] + 1,
            "{name}: one new release, built once"
        );
    }
    assert_settled(&s, "v2");
    let h = history(&s);
    assert_eq!(h[0]["state"], "succeeded", "{h}");
}

/// A host that cannot stage (its `shared/var` became a symbolic link, which the
/// agent refuses to follow when it links the release's shared paths; fetching
/// and resolving still work there, so `rollout`'s pre-check passes) stops the
/// rollout before any host leaves service: `aborted`, the error names the host
/// and the link, no drain began, every host still on v1 and UP. Once the link is
/// a directory again, `resume ID` stages again and finishes the rollout.
#[test]
fn a_host_that_cannot_stage_stops_the_rollout_before_any_drain_and_resume_finishes_it() {
    let s = Scenario::start(ScenarioOptions {
        deploy_extra: format!(
            "{}shared = [\"var/storage\"]\n",
            ScenarioOptions::default().deploy_extra
        ),
        ..ScenarioOptions::default()
    })
    .expect("fleet starts");
    let plan = s
        .write_plan("plan.toml", &s.in_place_plan("v2", 1, 2))
        .expect("plan");
    let var = s.app("web-2").root.join("shared").join("var");
    let aside = s.app("web-2").root.join("var-aside");
    std::fs::rename(&var, &aside).expect("move shared/var aside");
    std::os::unix::fs::symlink(&aside, &var).expect("link shared/var");

    let load = traffic(&s);
    let done = Run::start(&s, &["rollout", &plan.display().to_string(), "--yes"]).finish();
    assert_ne!(done.code, Some(0), "{}", done.describe());
    assert_eq!(done.state(), "aborted", "{}", done.describe());
    let error = done
        .finished
        .as_ref()
        .and_then(|f| f["error"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("web-2") && error.contains("symbolic link"),
        "the error names the host and why: {error}"
    );
    assert!(
        !done.events.iter().any(|e| e["event"] == "step-started"
            && e["title"]
                .as_str()
                .unwrap_or("")
                .starts_with("remove the health-check file")),
        "no host left service: {}",
        done.describe()
    );
    for app in &s.apps {
        assert_eq!(app.version(), "v1", "{}", app.name);
        assert!(app.health_file_present(), "{} drained", app.name);
    }
    assert_eq!(s.up_count(), s.apps.len());

    std::fs::remove_file(&var).expect("remove the link");
    std::fs::rename(&aside, &var).expect("shared/var back");
    let id = handover_tests::run::rollout_id(&done.events).expect("a phase event names it");
    let resumed = Run::start(&s, &["resume", &id]).finish();
    let report = load.stop();
    assert_eq!(resumed.code, Some(0), "{}", resumed.describe());
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
    assert_settled(&s, "v2");
}
