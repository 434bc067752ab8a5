//! One test per bug fixed from now on, each named after what it guards and
//! carrying, in its doc comment, the issue that found it. Write the test first, see
//! it fail, then fix the code.

#[allow(unused_imports)]
use handover_tests::fleet;

// --- plan ---

/// Issue 11: `[health] path = "/a b/../x"` passed `handover plan`, then failed the
/// rollout at VerifyHealth, after its wave had been drained and detached (and every
/// `resume` repeated it). Both `plan` and `rollout` now refuse it at load, naming
/// the line and the key, and nothing is journaled.
#[test]
fn a_health_path_that_cannot_be_fetched_is_refused_by_plan_and_nothing_is_journaled() {
    use handover_tests::agents::{Coordinator, HostSpec, Pki, output_text};

    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::init(&dir.path().join("pki")).expect("ca");
    let mut hosts: Vec<HostSpec> = (1..=3u8)
        .map(|n| HostSpec {
            name: format!("web-{n}"),
            address: format!("127.0.1.{n}:7443").parse().expect("addr"),
            roles: vec!["app".into()],
            app: Some(format!("127.0.1.{n}:8080").parse().expect("addr")),
            extra: String::new(),
        })
        .collect();
    hosts.push(HostSpec {
        name: "lb-1".into(),
        address: "127.0.1.100:7443".parse().expect("addr"),
        roles: vec!["lb".into()],
        app: None,
        extra: String::new(),
    });
    let ops = dir.path().join("ops");
    let c = Coordinator::write(&ops, &pki, "ops", &hosts).expect("config");
    let good = "strategy = \"in-place\"\nroles = [\"app\"]\n[revision]\nrepo = \"file:///srv/git/shop.git\"\nref = \"v2\"\n[rollout]\nmin_healthy = 2\n[health]\npath = \"/health.html\"\n";
    let plan = dir.path().join("plan.toml");
    std::fs::write(&plan, good).expect("write");
    let plan = plan.display().to_string();
    let out = c.run(&["plan", &plan]);
    assert!(out.status.success(), "{}", output_text(&out));

    std::fs::write(&plan, good.replace("/health.html", "/a b/../x")).expect("write");
    for args in [vec!["plan", &plan], vec!["rollout", &plan, "--yes"]] {
        let out = c.run(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            output_text(&out)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("line 9 (path = \"/a b/../x\"): [health] path"),
            "{args:?} should name the line and the key: {err}"
        );
    }
    assert!(
        !ops.join("state").join("journal.redb").exists(),
        "a refused plan must leave no journal entry"
    );
}
