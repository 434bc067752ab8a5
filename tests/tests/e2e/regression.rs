//! One test per bug fixed from now on, each named after what it guards and
//! carrying, in its doc comment, the issue that found it. Write the test first, see
//! it fail, then fix the code.

#[allow(unused_imports)]
use handover_tests::fleet;

// --- lease ---

mod lease {
    use std::process::{Child, Stdio};
    use std::time::Duration;

    use handover_tests::agents::{Coordinator, StdoutLines, output_text, spawn_lines};
    use handover_tests::scenario::{Scenario, ScenarioOptions};

    fn scenario(apps: u8) -> Scenario {
        Scenario::start(ScenarioOptions {
            apps,
            ..ScenarioOptions::default()
        })
        .expect("fleet starts")
    }

    /// Starts `handover ARGS --json` with `coordinator`'s config.
    fn spawn_json(coordinator: &Coordinator, args: &[&str]) -> (Child, StdoutLines) {
        let mut cmd = coordinator.command(args);
        cmd.arg("--json");
        spawn_lines(cmd, Stdio::null()).expect("spawn handover")
    }

    /// Reads JSON events until a step whose title starts with `prefix` starts;
    /// returns the rollout id seen in the phase event.
    fn wait_for_step(lines: &mut StdoutLines, prefix: &str) -> String {
        let mut id = String::new();
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if event["event"] == "phase" {
                id = event["rollout"].as_str().unwrap_or("").to_string();
            }
            if event["event"] == "step-started"
                && event["title"].as_str().unwrap_or("").starts_with(prefix)
            {
                return id;
            }
        }
        panic!("the rollout never reached a step starting with {prefix:?}");
    }

    /// The same coordinator on "another bastion": its own state_dir holding a copy
    /// of the journal, so it knows the rollout but not the first process's lock.
    fn second_bastion(s: &Scenario) -> Coordinator {
        let text = std::fs::read_to_string(&s.coordinator.config).expect("config");
        let ops = s.coordinator.config.parent().expect("config dir");
        let dir = s.dir().join("bastion-2");
        let state = dir.join("state");
        std::fs::create_dir_all(&state).expect("state dir");
        std::fs::copy(ops.join("state/journal.redb"), state.join("journal.redb"))
            .expect("copy the journal");
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("state_dir") {
                    format!("state_dir = {:?}", state.display().to_string())
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let config = dir.join("handover.toml");
        std::fs::write(&config, text).expect("write config");
        Coordinator { config }
    }

    /// Releases of `rev` on `host`, as its agent lists them.
    fn releases_of(s: &Scenario, host: &str, rev: &str) -> usize {
        let out = s.coordinator.run(&["releases", host, "--json"]);
        assert!(out.status.success(), "{}", output_text(&out));
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("releases");
        list["releases"]
            .as_array()
            .expect("releases array")
            .iter()
            .filter(|r| r["rev"] == rev)
            .count()
    }

    /// Issue 18, safety 1: a bare `handover resume` beside a live `rollout` took the
    /// rollout over and ran its steps a second time (two new releases per host).
    /// Now the running process holds the rollout: a second process on the same
    /// bastion is refused by the local lock, one on another bastion by the lease,
    /// each naming the holder, and every host gets exactly one new release.
    #[test]
    fn a_bare_resume_beside_a_live_rollout_is_refused_and_each_host_gets_one_release() {
        let s = scenario(2);
        // A client on web-1 keeps the rollout in its first drain wait until dropped.
        let held = handover_tests::traffic::hold_connection(
            s.app("web-1").apache.addr(),
            "/",
            None,
            Duration::from_secs(60),
        )
        .expect("hold a connection to web-1");
        let plan_text = s
            .in_place_plan("v2", 1, 1)
            .replace("drain_timeout = \"20s\"", "drain_timeout = \"60s\"");
        let plan = s.write_plan("plan.toml", &plan_text).expect("plan");
        let (mut first, mut lines) = spawn_json(
            &s.coordinator,
            &["rollout", &plan.display().to_string(), "--yes"],
        );
        let id = wait_for_step(&mut lines, "wait for sessions");
        assert!(!id.is_empty(), "the rollout never named itself");
        let pid = first.id().to_string();

        // Same bastion: refused at once by the local lock.
        let out = s.coordinator.run(&["resume"]);
        assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&id) && err.contains(&pid),
            "names the holder: {err}"
        );
        let out = s.coordinator.run(&["resume", &id]);
        assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));

        // Another bastion that knows the rollout: refused by the agents' lease.
        let other = second_bastion(&s);
        let out = other.run(&["resume"]);
        assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&id) && err.contains(&format!("pid {pid}")),
            "names the holder process: {err}"
        );
        assert!(err.contains("nothing was changed"), "{err}");

        // The first rollout carries on alone once the client leaves.
        drop(held);
        for line in lines.by_ref() {
            if line.is_err() {
                break;
            }
        }
        let status = first.wait().expect("wait");
        assert!(status.success(), "the first rollout must succeed");
        for host in ["web-1", "web-2"] {
            assert_eq!(s.app(host).version(), "v2");
            assert_eq!(releases_of(&s, host, "v2"), 1, "{host}: one new release");
        }
    }

    /// Every app host on `version`, its health file in place.
    fn assert_all_on(s: &Scenario, version: &str) {
        for app in &s.apps {
            assert_eq!(
                app.version(),
                version,
                "{} runs the wrong release",
                app.name
            );
            assert!(app.health_file_present(), "{} was left drained", app.name);
        }
    }

    fn history(s: &Scenario) -> serde_json::Value {
        let out = s.coordinator.run(&["history", "--json"]);
        assert!(out.status.success(), "{}", output_text(&out));
        serde_json::from_slice(&out.stdout).expect("history --json")
    }

    /// Issue 18, safety 4: Ctrl-C during the canary pause left the canary on the
    /// new release (the README says the wave goes back), `resume ID` restarted at
    /// the pause, a bare `resume` said "no unfinished rollout", and a refused
    /// rollout printed an id and a resume hint for a rollout `history` never lists.
    #[test]
    fn ctrl_c_at_the_canary_pause_puts_the_canary_back_and_resume_id_redoes_it() {
        let s = scenario(3);
        let plan_text = s
            .in_place_plan("v2", 1, 2)
            .replace("batch = 1", "batch = 1\ncanary = 1\npause = \"60s\"");
        let plan = s.write_plan("plan.toml", &plan_text).expect("plan");
        let plan_arg = plan.display().to_string();
        let err_path = s.dir().join("first.stderr");
        let mut cmd = s
            .coordinator
            .command(&["rollout", &plan_arg, "--yes", "--json"]);
        cmd.stdin(Stdio::null());
        let stderr = std::fs::File::create(&err_path).expect("stderr file");
        let (mut first, mut lines) = spawn_lines(cmd, Stdio::from(stderr)).expect("spawn");
        let id = wait_for_step(&mut lines, "pause");
        assert_eq!(
            s.app("web-1").version(),
            "v2",
            "the canary runs v2 in its pause"
        );

        // A rollout refused by the lease names no rollout of its own.
        let out = s.coordinator.run(&["rollout", &plan_arg, "--yes"]);
        assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("held by") && err.contains(&id), "{err}");
        assert!(!err.contains("handover resume r-"), "no resume hint: {err}");

        let pid = nix::unistd::Pid::from_raw(i32::try_from(first.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
        for line in lines.by_ref() {
            if line.is_err() {
                break;
            }
        }
        let status = first.wait().expect("wait");
        assert_eq!(status.code(), Some(1), "an interrupted rollout exits 1");
        let err = std::fs::read_to_string(&err_path).expect("stderr");
        assert!(
            err.contains(&format!("handover resume {id}")),
            "the Ctrl-C message names the id: {err}"
        );
        assert_all_on(&s, "v1");
        let h = history(&s);
        assert_eq!(
            h.as_array().map(Vec::len),
            Some(1),
            "the refused rollout is not in history: {h}"
        );
        assert_eq!(h[0]["state"], "aborted", "{h}");

        // A bare resume lists the stopped rollout instead of saying nothing is left.
        let out = s.coordinator.run(&["resume"]);
        assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&id) && err.contains("aborted"), "{err}");

        // `resume ID` redoes the canary wave from its first step.
        let (mut again, mut lines) = spawn_json(&s.coordinator, &["resume", &id]);
        let mut phase = serde_json::Value::Null;
        let mut first_step = serde_json::Value::Null;
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if event["event"] == "phase" && phase.is_null() {
                phase = event.clone();
            }
            if event["event"] == "step-started" && first_step.is_null() {
                first_step = event.clone();
            }
        }
        assert!(
            again.wait().expect("wait").success(),
            "resume must finish the rollout"
        );
        assert_eq!(phase["phase"], "forward", "{phase}");
        assert_eq!(phase["done"], 0, "the canary wave is redone: {phase}");
        assert_eq!(first_step["number"], 1, "{first_step}");
        assert_all_on(&s, "v2");
        assert_eq!(history(&s)[0]["state"], "succeeded");
    }

    /// Issue 13, faults: a rollout halted because an agent stopped answering was
    /// recorded as finished, and a plain `resume` said "nothing to resume". Now it
    /// is `halted`, nothing is rolled back for a host that cannot answer, and a
    /// plain `resume` carries on once the agent is back.
    #[test]
    fn a_rollout_halted_by_an_unreachable_agent_is_continued_by_a_plain_resume() {
        let mut s = scenario(3);
        let plan = s
            .write_plan("plan.toml", &s.in_place_plan("v2", 1, 2))
            .expect("plan");
        let (mut child, mut lines) = spawn_json(
            &s.coordinator,
            &["rollout", &plan.display().to_string(), "--yes"],
        );
        let _ = wait_for_step(&mut lines, "attach");
        s.apps[1].agent.kill();
        let mut last = serde_json::Value::Null;
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            last = serde_json::from_str(&line).unwrap_or_default();
        }
        let status = child.wait().expect("wait");
        assert_eq!(status.code(), Some(2), "a halted rollout exits 2: {last}");
        let h = history(&s);
        assert_eq!(h[0]["state"], "halted", "{h}");
        assert_eq!(s.app("web-1").version(), "v2");
        assert_eq!(s.app("web-3").version(), "v1");

        s.apps[1].agent.spawn().expect("restart web-2's agent");
        let out = s.coordinator.run(&["resume"]);
        assert!(out.status.success(), "{}", output_text(&out));
        assert_all_on(&s, "v2");
        let h = history(&s);
        assert_eq!(h.as_array().map(Vec::len), Some(1), "{h}");
        assert_eq!(h[0]["state"], "succeeded", "{h}");
    }

    /// Issue 18, safety 1: `resume --takeover` beside a live rollout waits until
    /// its process is provably gone, says how it knows, and finishes the rollout
    /// with one new release per host.
    #[test]
    fn resume_takeover_waits_for_the_running_process_to_be_gone_then_finishes() {
        let s = scenario(2);
        let held = handover_tests::traffic::hold_connection(
            s.app("web-1").apache.addr(),
            "/",
            None,
            Duration::from_secs(60),
        )
        .expect("hold a connection to web-1");
        let plan_text = s
            .in_place_plan("v2", 1, 1)
            .replace("drain_timeout = \"20s\"", "drain_timeout = \"60s\"");
        let plan = s.write_plan("plan.toml", &plan_text).expect("plan");
        let (mut first, mut lines) = spawn_json(
            &s.coordinator,
            &["rollout", &plan.display().to_string(), "--yes"],
        );
        let id = wait_for_step(&mut lines, "wait for sessions");
        let pid = first.id();

        let err_path = s.dir().join("takeover.stderr");
        let stderr = std::fs::File::create(&err_path).expect("stderr file");
        let mut takeover = s
            .coordinator
            .command(&["resume", "--takeover", &id])
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn resume --takeover");
        let waiting = format!("waiting for pid {pid}");
        let mut seen = false;
        for _ in 0..200 {
            if std::fs::read_to_string(&err_path)
                .unwrap_or_default()
                .contains(&waiting)
            {
                seen = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(seen, "--takeover must wait for the live process");
        assert_eq!(
            takeover.try_wait().expect("poll"),
            None,
            "it waits, it does not run"
        );

        let _ = first.kill();
        let _ = first.wait();
        drop(lines);
        drop(held);
        let status = takeover.wait().expect("wait");
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        assert!(status.success(), "the takeover finishes the rollout: {err}");
        assert!(
            err.contains(&format!("pid {pid} is gone")),
            "says how it knows: {err}"
        );
        assert!(
            err.contains("taking over the lease"),
            "says what it did with the lease: {err}"
        );
        for host in ["web-1", "web-2"] {
            assert_eq!(s.app(host).version(), "v2");
            assert_eq!(releases_of(&s, host, "v2"), 1, "{host}: one new release");
        }
    }
}
