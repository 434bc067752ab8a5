//! Issue 5: code revisions on each host, driven as an operator would — through
//! `handover deploy|activate|releases|hook|status` over QUIC to real agents that
//! fetch from a real bare repository over file://.

use std::path::{Path, PathBuf};

use handover_tests::agents::{AgentProcess, Coordinator, HostSpec, output_text};
use handover_tests::config::{AgentSections, Deploy};
use handover_tests::ports::host_ip;

/// A bare repository with tags v1 and v2 (and v3-broken) whose VERSION file says so.
fn bare_repo(dir: &Path) -> String {
    handover_tests::git::versions_repo(dir).expect("test repository")
}

struct Fleet {
    base: handover_tests::fleet::Fleet,
    repo: String,
    agents: Vec<AgentProcess>,
    coordinator: Coordinator,
}

impl Fleet {
    fn new(hosts: u8) -> Fleet {
        let base = handover_tests::fleet::Fleet::new().expect("fleet directory and CA");
        let repo = bare_repo(base.path());
        let agents: Vec<AgentProcess> = (1..=hosts)
            .map(|n| {
                let name = format!("web-{n}");
                let root = base.path().join(&name).join("www");
                let sections = AgentSections {
                    deploy: Some(Deploy {
                        reload: Some("echo reloaded".into()),
                        verify: Some("test -f VERSION".into()),
                        ..Deploy::new(root, &repo)
                    }),
                    hooks: [("warm".into(), "echo warmed $(cat VERSION)".into())].into(),
                    ..AgentSections::default()
                };
                base.agent(&name, host_ip(40 + n), &sections)
                    .expect("agent starts")
            })
            .collect();
        let specs: Vec<HostSpec> = agents.iter().map(|a| HostSpec::of(a, &["app"])).collect();
        let coordinator = base.coordinator(&specs).expect("config");
        Fleet {
            base,
            repo,
            agents,
            coordinator,
        }
    }

    fn root(&self, i: usize) -> PathBuf {
        self.agents[i]
            .config
            .parent()
            .expect("agent home")
            .join("www")
    }

    fn version(&self, i: usize) -> String {
        std::fs::read_to_string(self.root(i).join("current/VERSION"))
            .expect("current/VERSION")
            .trim()
            .to_string()
    }

    fn releases(&self, i: usize) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.root(i).join("releases"))
            .map(|d| {
                d.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn handover_ok(&self, args: &[&str]) -> String {
        let out = self.coordinator.run(args);
        assert!(out.status.success(), "{args:?}: {}", output_text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn deploy_v1_then_v2_then_activate_previous_from_the_coordinator() {
    let f = Fleet::new(1);
    let out = f.handover_ok(&["deploy", "web-1", "--repo", &f.repo, "--ref", "v1"]);
    assert!(out.contains("web-1  switch"), "{out}");
    assert_eq!(f.version(0), "v1");
    f.handover_ok(&["deploy", "web-1", "--repo", &f.repo, "--ref", "v2"]);
    assert_eq!(f.version(0), "v2");

    let (ok, status) = f.coordinator.status_json(&["web-1"]).expect("status");
    assert!(ok, "{status}");
    let current = &status[0]["report"]["release"]["current"];
    assert_eq!(current["rev"], "v2", "{status}");
    let table = f.handover_ok(&["status"]);
    assert!(
        table.contains("RELEASE") && table.contains("v2 "),
        "{table}"
    );

    f.handover_ok(&["activate", "web-1", "--previous"]);
    assert_eq!(f.version(0), "v1");

    let list: serde_json::Value =
        serde_json::from_str(&f.handover_ok(&["releases", "web-1", "--json"])).expect("json");
    assert_eq!(list["releases"].as_array().map(Vec::len), Some(2), "{list}");
    assert_eq!(list["current"], list["releases"][1]["name"], "{list}");
    assert_eq!(list["previous"], list["releases"][0]["name"], "{list}");

    let hook = f.handover_ok(&["hook", "web-1", "warm"]);
    assert!(hook.contains("warmed v1"), "{hook}");
}

#[test]
fn bad_refs_and_foreign_repos_fail_and_change_nothing() {
    let f = Fleet::new(1);
    f.handover_ok(&["deploy", "web-1", "--repo", &f.repo, "--ref", "v1"]);
    let releases = f.releases(0);
    let marker = f.base.path().join("pwned");
    let upload_pack = format!("--upload-pack=touch {}", marker.display());

    for bad in [
        upload_pack.as_str(),
        "-h",
        "--output=x",
        "a..b",
        "a b",
        "../x",
    ] {
        for args in [
            vec!["deploy", "web-1", "--repo", &f.repo, "--ref", bad],
            vec![
                "deploy",
                "web-1",
                "--repo",
                &f.repo,
                &format!("--ref={bad}"),
            ],
        ] {
            let out = f.coordinator.run(&args);
            assert!(!out.status.success(), "{bad:?}: {}", output_text(&out));
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("invalid revision"),
                "{bad:?}: {}",
                output_text(&out)
            );
        }
    }
    assert!(!marker.exists(), "a ref reached git as an option");

    let foreign = format!("{}-elsewhere", f.repo);
    let out = f
        .coordinator
        .run(&["deploy", "web-1", "--repo", &foreign, "--ref", "v2"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("allowed_repos"),
        "{}",
        output_text(&out)
    );

    let out = f.coordinator.run(&["hook", "web-1", "not-configured"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{}",
        output_text(&out)
    );

    assert_eq!(f.version(0), "v1");
    assert_eq!(f.releases(0), releases);
}

#[test]
fn deploy_to_several_hosts_reports_each_one() {
    let f = Fleet::new(2);
    let out = f.handover_ok(&[
        "deploy", "web-1", "web-2", "--repo", &f.repo, "--ref", "v2", "--json",
    ]);
    let json_start = out
        .find("[\n")
        .expect("a JSON array after the progress lines");
    let results: serde_json::Value = serde_json::from_str(&out[json_start..]).expect("json");
    assert_eq!(results[0]["host"], "web-1", "{results}");
    assert_eq!(results[1]["host"], "web-2", "{results}");
    for i in 0..2 {
        assert_eq!(results[i]["ok"], true, "{results}");
        assert_eq!(results[i]["release"]["rev"], "v2", "{results}");
        assert_eq!(f.version(i), "v2");
    }
    // Progress lines are prefixed by their host.
    assert!(
        out.contains("web-1  fetch") && out.contains("web-2  fetch"),
        "{out}"
    );
}
