//! One test per bug fixed from now on, each named after what it guards and
//! carrying, in its doc comment, the issue that found it. Write the test first, see
//! it fail, then fix the code.

#[allow(unused_imports)]
use handover_tests::fleet;

// --- releases ---

mod releases {
    use handover_tests::agents::output_text;
    use handover_tests::scenario::{Scenario, ScenarioOptions};

    fn two_hosts() -> Scenario {
        Scenario::start(ScenarioOptions {
            apps: 2,
            ..ScenarioOptions::default()
        })
        .expect("fleet starts")
    }

    /// Tags `tag` in the scenario's repository: VERSION says `tag`, and the page
    /// the plan's health check asks for (`/index.html`) is gone, so the agent's
    /// own verify passes and the coordinator's health gate fails.
    fn tag_release_without_page(s: &Scenario, tag: &str) {
        let git_dir = s.dir().join("git");
        let work = git_dir.join("app-work");
        let git = |args: &[&str]| handover_tests::git::git(&work, args).expect("git");
        git(&["rm", "-q", "index.html"]);
        std::fs::write(work.join("VERSION"), format!("{tag}\n")).expect("write");
        git(&["add", "-A"]);
        git(&["commit", "-q", "-m", tag]);
        git(&["tag", tag]);
        let bare = git_dir.join("app.git").display().to_string();
        git(&["push", "-q", &bare, tag]);
    }

    fn releases_json(s: &Scenario, host: &str) -> serde_json::Value {
        let out = s.coordinator.run(&["releases", host, "--json"]);
        assert!(out.status.success(), "{}", output_text(&out));
        serde_json::from_slice(&out.stdout).expect("releases --json")
    }

    fn history(s: &Scenario) -> serde_json::Value {
        let out = s.coordinator.run(&["history", "--json"]);
        assert!(out.status.success(), "{}", output_text(&out));
        serde_json::from_slice(&out.stdout).expect("history --json")
    }

    /// Issue 18 (safety 2): after an automatic rollback the failed release was
    /// "previous", and `activate --previous` put it live on an attached, serving
    /// host. Now the release is marked failed, `--previous` skips it, and a switch
    /// of a host in service is refused without `--force`, changing nothing.
    #[test]
    fn activate_previous_after_an_automatic_rollback_does_not_put_the_failed_release_live() {
        let s = two_hosts();
        tag_release_without_page(&s, "v4-no-page");
        let plan_text = s
            .in_place_plan("v4-no-page", 1, 1)
            .replace("path = \"/VERSION\"", "path = \"/index.html\"")
            .replace("timeout = \"10s\"", "timeout = \"2s\"");
        let plan = s.write_plan("plan.toml", &plan_text).expect("plan");
        let out = s
            .coordinator
            .run(&["rollout", &plan.display().to_string(), "--yes"]);
        assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
        assert_eq!(history(&s)[0]["state"], "rolled-back");
        let web1 = s.app("web-1");
        assert_eq!(web1.version(), "v1");

        let list = releases_json(&s, "web-1");
        let failed = list["releases"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["rev"] == "v4-no-page"))
            .unwrap_or_else(|| panic!("the failed release is listed: {list}"));
        assert!(
            failed["outcome"]["Unhealthy"]
                .as_str()
                .is_some_and(|why| why.contains("health check failed")),
            "{list}"
        );
        assert_ne!(list["previous"], failed["name"], "{list}");
        let table = s.coordinator.run(&["releases", "web-1"]);
        let table = String::from_utf8_lossy(&table.stdout);
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("failed") && l.contains("v4-no-page")),
            "{table}"
        );

        // web-1 is attached and serving: an ad-hoc switch is refused, naming the
        // safe path, and changes nothing.
        for args in [
            vec!["activate", "web-1", "--previous"],
            vec!["deploy", "web-1", "--repo", &s.repo, "--ref", "v2"],
        ] {
            let out = s.coordinator.run(&args);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{args:?}: {}",
                output_text(&out)
            );
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("in service")
                    && err.contains("--drain")
                    && err.contains("handover drain web-1 --wait")
                    && err.contains("--force"),
                "{args:?}: {err}"
            );
            assert_eq!(web1.version(), "v1");
            assert!(web1.health_file_present());
            assert_eq!(
                releases_json(&s, "web-1"),
                list,
                "{args:?} changed releases"
            );
        }

        // Forced, `--previous` still never picks the release that failed.
        let out = s
            .coordinator
            .run(&["activate", "web-1", "--previous", "--force"]);
        assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        let failed_name = failed["name"].as_str().expect("name");
        assert!(
            err.contains("no good previous release") && err.contains(failed_name),
            "{err}"
        );
        assert_eq!(web1.version(), "v1");

        // The safe path the refusal offers: drain and wait, switch, undrain.
        let out = s.coordinator.run(&[
            "deploy", "web-1", "--repo", &s.repo, "--ref", "v2", "--drain",
        ]);
        assert!(out.status.success(), "{}", output_text(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        let at = |what: &str| {
            text.find(what)
                .unwrap_or_else(|| panic!("no {what:?} in: {text}"))
        };
        assert!(
            at("web-1  drained") < at("web-1  switch")
                && at("web-1  switch") < at("web-1  undrained"),
            "{text}"
        );
        assert_eq!(web1.version(), "v2");
        assert!(web1.health_file_present(), "web-1 was left drained");
    }

    /// Issue 18 (safety 3): `plan` accepted a ref that does not exist and a repo
    /// missing from the agents' `allowed_repos`; the rollout then drained and
    /// detached the first host before failing at apply. Both are now refused by
    /// `plan` and by `rollout`, with no host touched and nothing journaled.
    #[test]
    fn a_plan_with_a_missing_ref_or_a_foreign_repo_is_refused_with_no_host_touched() {
        let s = two_hosts();
        let releases_before: Vec<serde_json::Value> = ["web-1", "web-2"]
            .iter()
            .map(|h| releases_json(&s, h))
            .collect();
        let cases = [
            (
                s.in_place_plan("v9", 1, 1),
                "\"v9\" is not a branch, tag or commit",
            ),
            (
                s.in_place_plan("v2", 1, 1)
                    .replace(&s.repo, "file:///srv/git/other.git"),
                "allowed_repos",
            ),
        ];
        for (text, reason) in cases {
            let plan = s.write_plan("plan.toml", &text).expect("plan");
            let plan = plan.display().to_string();
            for args in [vec!["plan", &plan], vec!["rollout", &plan, "--yes"]] {
                let out = s.coordinator.run(&args);
                assert_eq!(
                    out.status.code(),
                    Some(2),
                    "{args:?}: {}",
                    output_text(&out)
                );
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(
                    err.contains("web-1: ") && err.contains("web-2: ") && err.contains(reason),
                    "{args:?} should name each host and {reason:?}: {err}"
                );
                assert!(err.contains("nothing was changed"), "{err}");
            }
        }
        for (app, before) in s.apps.iter().zip(&releases_before) {
            assert!(app.health_file_present(), "{} was drained", app.name);
            assert_eq!(app.version(), "v1");
            assert_eq!(&releases_json(&s, &app.name), before, "{}", app.name);
        }
        assert_eq!(history(&s), serde_json::json!([]), "nothing journaled");

        // A good plan shows the commit each host resolved.
        let work = s.dir().join("git").join("app-work");
        let sha = handover_tests::git::git(&work, &["rev-parse", "v2^{commit}"]).expect("sha");
        let plan = s
            .write_plan("plan.toml", &s.in_place_plan("v2", 1, 1))
            .expect("plan");
        let out = s.coordinator.run(&["plan", &plan.display().to_string()]);
        assert!(out.status.success(), "{}", output_text(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        for host in ["web-1", "web-2"] {
            assert!(text.contains(&format!("{host}  v2 = {sha}")), "{text}");
        }
    }
}
