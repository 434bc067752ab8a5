//! One test per bug fixed from now on, each named after what it guards and
//! carrying, in its doc comment, the issue that found it. Write the test first, see
//! it fail, then fix the code.

// --- agentcore ---

mod agentcore {
    use std::io::{Read as _, Write as _};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use handover_tests::agents::{AgentProcess, Coordinator, HostSpec, output_text};
    use handover_tests::fleet::Fleet;
    use handover_tests::haproxy::{BackendSpec, Haproxy, HaproxyOptions};
    use handover_tests::ports;

    /// An HTTP server on `[::1]`: answers 200 to every request, one per connection.
    /// The Apache harness binds IPv4 only; HAProxy's health check needs nothing more
    /// than a real listener that answers.
    struct Ipv6App {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Ipv6App {
        fn start() -> Self {
            let listener =
                TcpListener::bind("[::1]:0").expect("bind [::1]:0 (is IPv6 loopback up?)");
            let addr = listener.local_addr().expect("local addr");
            let stop = Arc::new(AtomicBool::new(false));
            let stopped = stop.clone();
            let thread = std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stopped.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(mut conn) = conn else { continue };
                    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(2)));
                    let mut buf = [0u8; 4096];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
                    );
                }
            });
            Ipv6App {
                addr,
                stop,
                thread: Some(thread),
            }
        }
    }

    impl Drop for Ipv6App {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(self.addr);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    struct V6Fleet {
        _fleet: Fleet,
        app: Ipv6App,
        haproxy: Haproxy,
        lb: AgentProcess,
        coordinator: Coordinator,
    }

    /// HAProxy with a dynamic backend, an lb agent, and app host `web-6` at `[::1]`.
    fn v6_fleet() -> V6Fleet {
        let fleet = Fleet::new().expect("fleet directory and CA");
        let app = Ipv6App::start();
        let haproxy = Haproxy::start(HaproxyOptions {
            backends: vec![BackendSpec::dynamic("be_dyn")],
            parent: Some(fleet.path().to_owned()),
            ..Default::default()
        })
        .expect("haproxy starts");
        let sections = handover_tests::config::AgentSections {
            haproxy: Some(handover_tests::config::Lb {
                backend: Some("be_dyn".into()),
                ..handover_tests::config::Lb::fast(haproxy.admin_socket().to_owned(), &[])
            }),
            ..Default::default()
        };
        let lb = fleet
            .agent("lb-1", ports::host_ip(60), &sections)
            .expect("lb agent starts");
        let mut web = HostSpec::of(&lb, &["app"]);
        web.name = "web-6".into();
        web.app = Some(app.addr);
        let hosts = [HostSpec::of(&lb, &["lb"]), web];
        let coordinator = fleet.coordinator(&hosts).expect("coordinator config");
        V6Fleet {
            _fleet: fleet,
            app,
            haproxy,
            lb,
            coordinator,
        }
    }

    /// Issue 13, hole 12: an app host with an IPv6 address could not be attached as
    /// a dynamic server (the agent refused to send `[::1]:PORT`).
    #[test]
    fn an_ipv6_app_address_is_attached_as_a_dynamic_server_and_detached() {
        let f = v6_fleet();
        let out = f.coordinator.run(&["attach", "web-6"]);
        let text = output_text(&out);
        assert!(
            out.status.success(),
            "attach failed: {text}\n{}",
            f.lb.log_text()
        );
        let row = f
            .haproxy
            .server("be_dyn", "web-6")
            .expect("web-6 in show stat");
        assert_eq!(row.status, "UP", "{row:?}");
        assert_eq!(row.addr, f.app.addr.to_string(), "{row:?}");

        let out = f.coordinator.run(&["detach", "web-6"]);
        assert!(out.status.success(), "detach failed: {}", output_text(&out));
        assert!(
            f.haproxy.server("be_dyn", "web-6").is_err(),
            "the dynamic server is deleted"
        );
    }

    /// Issue 18 (polish): `handover-agent status` on an LB host said nothing about
    /// HAProxy, and the agent's log carried ANSI colour codes into files and journald.
    #[test]
    fn agent_status_on_an_lb_shows_haproxy_servers_and_its_log_has_no_colour() {
        let f = v6_fleet();
        let out = f.coordinator.run(&["attach", "web-6"]);
        assert!(out.status.success(), "attach failed: {}", output_text(&out));

        let out = f.lb.cli(&["status"]);
        let text = output_text(&out);
        assert!(out.status.success(), "status failed: {text}");
        assert!(text.contains("haproxy   2.6"), "HAProxy's version: {text}");
        let row = text
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|w| w.first() == Some(&"be_dyn") && w.get(1) == Some(&"web-6"))
            .unwrap_or_else(|| panic!("no be_dyn/web-6 row: {text}"));
        // BACKEND SERVER HOST STATUS CHECK SCUR QCUR ADDR
        assert_eq!(row[2], "web-6", "{text}");
        assert_eq!(row[3], "UP", "{text}");
        assert_eq!((row[5], row[6]), ("0", "0"), "{text}");

        let log = f.lb.log_text();
        assert!(log.contains("lb request"), "the log is read: {log}");
        assert!(
            !log.contains('\u{1b}'),
            "no ANSI escapes in a log file: {log:?}"
        );
    }
}

// --- hardening ---

mod hardening {
    use std::path::{Path, PathBuf};

    use handover_tests::agents::{AgentProcess, Coordinator, HostSpec, output_text};
    use handover_tests::fleet::Fleet;
    use handover_tests::git::{Revision, bare_repo};
    use handover_tests::ports::host_ip;

    /// A tag whose name a shell would run: `$( )`, `;`, `|`, `&` are all valid in
    /// a git ref name and in a Handover revision.
    const SHELLY_TAG: &str = "rel$(touch${IFS}pwned);x|y&z";

    const HOOKS: &str = "[hooks]\nafter_activate = \"printf '%s' \\\"$HANDOVER_REV\\\" > \\\"$HANDOVER_RELEASE_DIR/rev.txt\\\"; echo unquoted $HANDOVER_REV; id -u > \\\"$HANDOVER_RELEASE_DIR/uid.txt\\\"\"\n";

    struct Host {
        dir: Fleet,
        repo: String,
        _agent: AgentProcess,
        coordinator: Coordinator,
    }

    impl Host {
        /// One agent on 127.0.1.91 with `[deploy]`, and `[deploy.release_hooks]`
        /// running them as `run_as` if given.
        fn new(run_as: Option<&str>) -> Host {
            let dir = Fleet::new().expect("fleet directory and CA");
            let repo = bare_repo(
                dir.path(),
                &[
                    Revision {
                        tag: "v1",
                        files: vec![("VERSION", "v1\n".into())],
                    },
                    Revision {
                        tag: SHELLY_TAG,
                        files: vec![("VERSION", "v2\n".into()), ("handover.toml", HOOKS.into())],
                    },
                ],
            )
            .expect("repository");
            let root = dir.path().join("web-1").join("www");
            let sections = handover_tests::config::AgentSections {
                deploy: Some(handover_tests::config::Deploy {
                    release_hooks: run_as.map(|user| handover_tests::config::ReleaseHooks {
                        run_as: user.to_owned(),
                    }),
                    ..handover_tests::config::Deploy::new(root, &repo)
                }),
                ..Default::default()
            };
            let agent = dir
                .agent("web-1", host_ip(91), &sections)
                .expect("agent starts");
            let coordinator = dir
                .coordinator(&[HostSpec::of(&agent, &["app"])])
                .expect("config");
            Host {
                dir,
                repo,
                _agent: agent,
                coordinator,
            }
        }

        fn root(&self) -> PathBuf {
            self.dir.path().join("web-1").join("www")
        }

        fn deploy(&self, rev: &str) -> std::process::Output {
            self.coordinator
                .run(&["deploy", "web-1", "--repo", &self.repo, "--ref", rev])
        }

        fn current_version(&self) -> String {
            std::fs::read_to_string(self.root().join("current/VERSION"))
                .expect("current/VERSION")
                .trim()
                .to_string()
        }
    }

    fn no_file_named(dir: &Path, name: &str) -> bool {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .all(|e| {
                e.file_name() != name
                    && (!e.path().is_dir()
                        || e.path().is_symlink()
                        || no_file_named(&e.path(), name))
            })
    }

    /// Issue 13, hole 3: a release's own hooks ran as root for any ref of an
    /// allowed repository. Through the coordinator, an agent without
    /// `[deploy.release_hooks]` refuses such a release; nothing runs or switches.
    #[test]
    fn a_release_with_hooks_is_refused_by_an_agent_that_does_not_run_them() {
        let host = Host::new(None);
        let out = host.deploy("v1");
        assert!(out.status.success(), "{}", output_text(&out));

        let out = host.deploy(SHELLY_TAG);
        assert!(!out.status.success(), "{}", output_text(&out));
        let said = output_text(&out);
        assert!(said.contains("[deploy.release_hooks]"), "{said}");
        assert_eq!(host.current_version(), "v1");
        assert!(no_file_named(&host.root(), "uid.txt"), "a release hook ran");
    }

    /// Issue 13, holes 3 and 11: with `run_as`, a release's hook runs as that
    /// user, and a ref holding `$( ) ; | &` reaches it as data (quoted or not),
    /// never as shell code.
    #[test]
    fn release_hooks_run_as_the_configured_user_and_get_refs_as_data() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: only a root agent can run hooks as another user");
            return;
        }
        let nobody = nix::unistd::User::from_name("nobody")
            .ok()
            .flatten()
            .expect("user nobody");
        let host = Host::new(Some("nobody"));
        let out = host.deploy(SHELLY_TAG);
        assert!(out.status.success(), "{}", output_text(&out));
        assert_eq!(host.current_version(), "v2");
        let release = host.root().join("current");
        assert_eq!(
            std::fs::read_to_string(release.join("rev.txt")).expect("rev.txt"),
            SHELLY_TAG
        );
        assert_eq!(
            std::fs::read_to_string(release.join("uid.txt"))
                .expect("uid.txt")
                .trim(),
            nobody.uid.to_string()
        );
        assert!(
            no_file_named(host.dir.path(), "pwned"),
            "the ref ran as shell code"
        );
    }
}

// --- releases ---

mod releases {
    use handover_tests::agents::output_text;
    use handover_tests::run::{history, releases_json};
    use handover_tests::scenario::{Capacity, Scenario, ScenarioOptions};

    fn two_hosts() -> Scenario {
        Scenario::start(ScenarioOptions {
            apps: 2,
            // The plans here keep one of the two UP.
            capacity: Capacity::MinHealthy(1),
            ..ScenarioOptions::default()
        })
        .expect("fleet starts")
    }

    /// Tags `tag` in the scenario's repository: VERSION says `tag`, and the page
    /// the plan's health check asks for (`/index.html`) is gone, so the agent's
    /// own verify passes and the coordinator's health gate fails.
    fn tag_release_without_page(s: &Scenario, tag: &str) {
        s.commit_and_tag(tag, &[("VERSION", &format!("{tag}\n"))], &["index.html"])
            .expect("tag a release without its page");
    }

    /// Issue 18 (safety 2): after an automatic rollback the failed release was
    /// "previous", and `activate --previous` put it live on an attached, serving
    /// host. Now the release is marked failed, `--previous` skips it, and a switch
    /// of a host in service is refused without `--force`, changing nothing.
    #[test]
    fn activate_previous_after_an_automatic_rollback_does_not_put_the_failed_release_live() {
        let s = two_hosts();
        tag_release_without_page(&s, "v4-no-page");
        let mut plan = s.plan("v4-no-page", 1, 1);
        if let Some(health) = plan.health.as_mut() {
            health.path = "/index.html".into();
            health.timeout = Some("2s".into());
        }
        let plan_text = plan.render();
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
                {
                    let mut plan = s.plan("v2", 1, 1);
                    plan.revision.repo = "file:///srv/git/other.git".into();
                    plan.render()
                },
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
    // No agents run here: the good plan is checked without asking them.
    let out = c.run(&["plan", "--offline", &plan]);
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

// --- drainwait ---

mod drainwait {
    use std::net::Ipv4Addr;
    use std::process::Stdio;
    use std::time::Duration;

    use handover_tests::agents::{OneHost, next_event, output_text, spawn_lines};
    use handover_tests::fleet::hold_connection;

    /// Issue 18: `status` showed DRAINED=yes for a health-check file that never
    /// existed, and then `undrain` failed ("missing and no drain saved it").
    #[test]
    fn a_health_file_that_never_existed_reads_missing_not_drained() {
        let h = OneHost::start(Ipv4Addr::new(127, 0, 1, 36)).expect("one host");
        std::fs::remove_file(h.apache.health_file()).expect("remove the health file");

        let (_, json) = h.coordinator.status_json(&["web-1"]).expect("status");
        assert_eq!(json[0]["report"]["drain"]["missing"], true, "{json}");
        let table = h.coordinator.run(&["status"]);
        let table = String::from_utf8_lossy(&table.stdout);
        assert!(table.contains("missing (never drained)"), "{table}");

        let local = h.agent.cli(&["status"]);
        let text = output_text(&local);
        assert!(
            text.contains("health file missing (never drained)"),
            "{text}"
        );
    }

    /// Issue 18: `handover-agent drain --wait` printed a line per sample while
    /// the quiet period counted up, and the "drained:" line was followed by
    /// another; now a line per change, and the drained line last.
    #[test]
    fn local_drain_progress_is_a_line_per_change_and_ends_with_the_drained_line() {
        let h = OneHost::start(Ipv4Addr::new(127, 0, 1, 38)).expect("one host");
        let out = h
            .agent
            .cli(&["drain", "--wait", "--quiet", "1s", "--timeout", "30s"]);
        let text = output_text(&out);
        assert!(out.status.success(), "{text}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        assert!(
            lines
                .last()
                .is_some_and(|l| l.starts_with("drained: ") && l.contains("no session left")),
            "{stdout}"
        );
        // Ten samples over the 1 s quiet period, nothing changing: one line
        // (two or three if a leftover connection closed meanwhile).
        assert!(lines.len() <= 4, "a line per sample: {stdout}");
    }

    /// Issue 11: an undrain during `drain --wait` left the wait running until its
    /// timeout while HAProxy sent the host new clients again; it ends the wait.
    #[test]
    fn an_undrain_during_a_drain_wait_ends_the_wait() {
        let h = OneHost::start(Ipv4Addr::new(127, 0, 1, 37)).expect("one host");
        let held = hold_connection(
            h.apache.addr(),
            "/index.html",
            None,
            Duration::from_secs(120),
        )
        .expect("hold a connection");
        let (mut child, mut lines) = spawn_lines(
            h.coordinator
                .command(&["drain", "web-1", "--wait", "--timeout", "120s", "--json"]),
            Stdio::piped(),
        )
        .expect("spawn drain --wait");
        let mut seen = Vec::new();
        next_event(&mut lines, &mut seen, |e| {
            e["event"] == "progress" && e["sessions"] == 1
        });
        let out = h.coordinator.run(&["undrain", "web-1"]);
        assert!(out.status.success(), "{}", output_text(&out));

        let end = next_event(&mut lines, &mut seen, |e| e["event"] != "progress");
        let status = child.wait().expect("wait for drain");
        assert_eq!(end["event"], "failed", "{end}");
        assert!(
            end["message"]
                .as_str()
                .is_some_and(|m| m.contains("undrained during the wait")),
            "{end}"
        );
        assert_eq!(status.code(), Some(1), "{end}");
        assert!(held.is_held(), "nothing was cut");
    }
}

// --- quic ---

mod quic {
    use std::net::{IpAddr, Ipv4Addr};
    use std::path::PathBuf;

    use handover_tests::agents::{Coordinator, HostSpec, output_text};
    use handover_tests::config::AgentSections;
    use handover_tests::fleet::OneAgent;
    use handover_tests::{flood, rawquic};

    /// One agent (no app) and a coordinator config naming it `web-1`; with `crl`,
    /// the agent loads the CA's revocation list (`ca init` writes one).
    fn one_agent(ip: Ipv4Addr, crl: bool) -> OneAgent {
        let sections = AgentSections {
            crl: crl.then(|| PathBuf::from("../pki/crl.pem")),
            ..AgentSections::default()
        };
        OneAgent::start(ip, &sections).expect("agent and coordinator config")
    }

    fn attacker(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 3, n))
    }

    /// Issue 13, hole 2: anyone could lock coordinators out without a certificate.
    /// Bare ClientHellos (spoofable: the sender never reads an answer) and
    /// handshakes that stall after proving their address each took one of the 64
    /// connection slots for the 30 s idle timeout; about 100 of them refused every
    /// new `handover status`, with an empty reason. Now unvalidated addresses get a
    /// Retry and hold nothing, stalled handshakes are bounded per source, and only
    /// authenticated connections count against the connection limit.
    #[test]
    fn a_handshake_flood_does_not_lock_coordinators_out() {
        let f = one_agent(Ipv4Addr::new(127, 0, 1, 41), false);
        let (ok, json) = f.coordinator.status_json(&[]).expect("status");
        assert!(ok, "status before the flood: {json}");

        let config = rawquic::client_config(&f.fleet.pki.ca(), None).expect("client config");
        let spoofed: Vec<IpAddr> = (1..=10).map(attacker).collect();
        flood::bare_hellos(&config, &spoofed, f.agent.addr, "web-1", 300).expect("bare hellos");
        let answered = flood::stalled_handshakes(&config, attacker(20), f.agent.addr, "web-1", 40)
            .expect("stalled handshakes");
        assert!(answered > 0, "the agent answered no handshake at all");

        let (ok, json) = f.coordinator.status_json(&[]).expect("status");
        assert!(ok, "status during the flood: {json}");
        assert_eq!(json[0]["reachable"], true, "{json}");

        // The per-source limit refused the excess, and the log says why.
        let log = f.agent.log_text();
        assert!(
            log.contains("handshakes pending from 127.0.3.20"),
            "no refusal with a reason in the agent log:\n{log}"
        );
    }

    /// Issue 13, hole 2: a refusal says why. With every coordinator slot taken by
    /// authenticated connections, the next coordinator is closed with a reason that
    /// names the limit (it used to get an empty one), and the agent logs it.
    #[test]
    fn a_coordinator_over_the_connection_limit_is_told_why() {
        let f = one_agent(Ipv4Addr::new(127, 0, 1, 42), false);
        let cert = f.fleet.pki.dir.join("ops.pem");
        let key = f.fleet.pki.dir.join("ops.key");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let reason = rt.block_on(async {
            let config = rawquic::client_config(&f.fleet.pki.ca(), Some((&cert, &key)))?;
            let mut held = Vec::new();
            for _ in 0..64 {
                let (ep, conn) = rawquic::connect(config.clone(), f.agent.addr, "web-1").await?;
                // A request proves the connection was admitted, not just handshaken.
                rawquic::request(&conn, handover_common::proto::Request::Status).await?;
                held.push((ep, conn));
            }
            let (_ep, conn) = rawquic::connect(config, f.agent.addr, "web-1").await?;
            let reason = conn.closed().await.to_string();
            // Close politely, so the agent frees the slots now, not at idle timeout.
            for (ep, conn) in held {
                conn.close(0u32.into(), b"done");
                ep.wait_idle().await;
            }
            anyhow::Ok(reason)
        });
        let reason = reason.expect("64 connections");
        assert!(
            reason.contains("coordinator connections are already open"),
            "the 65th coordinator was not told why: {reason}"
        );
        let log = f.agent.log_text();
        assert!(
            log.contains("coordinator connections are already open"),
            "{log}"
        );
        drop(rt);
        let (ok, json) = f.coordinator.status_json(&[]).expect("status");
        assert!(ok, "status once the connections are gone: {json}");
    }

    fn handover_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
        std::process::Command::new(handover_tests::agents::bin("handover"))
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run handover")
    }

    /// A refusal is an exit with a message, never a panic (exit code 101).
    fn assert_refused(out: &std::process::Output, says: &str) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && out.status.code() != Some(101),
            "expected a clean refusal: {}",
            output_text(out)
        );
        assert!(
            stderr.contains(says),
            "expected {says:?} in: {}",
            output_text(out)
        );
        assert!(!stderr.contains("panicked"), "{}", output_text(out));
    }

    /// Issue 13, hole 5: `handover ca issue --name ca` replaced the CA's own files
    /// with a leaf (the CA key was lost), and `issue` overwrote leaves silently.
    #[test]
    fn ca_issue_never_replaces_the_ca_and_replaces_a_leaf_only_when_told() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let out = handover_in(dir, &["ca", "init", "--dir", "pki"]);
        assert!(out.status.success(), "{}", output_text(&out));
        let ca_key = std::fs::read(dir.join("pki/ca.key")).expect("ca key");
        let ca_pem = std::fs::read(dir.join("pki/ca.pem")).expect("ca cert");
        for force in [false, true] {
            let mut args = vec![
                "ca",
                "issue",
                "--dir",
                "pki",
                "--role",
                "coordinator",
                "--name",
                "ca",
            ];
            if force {
                args.push("--force");
            }
            assert_refused(&handover_in(dir, &args), "would replace the CA's own");
        }
        assert_eq!(
            ca_key,
            std::fs::read(dir.join("pki/ca.key")).expect("ca key")
        );
        assert_eq!(
            ca_pem,
            std::fs::read(dir.join("pki/ca.pem")).expect("ca cert")
        );

        let issue = [
            "ca", "issue", "--dir", "pki", "--role", "agent", "--name", "web-1",
        ];
        assert!(handover_in(dir, &issue).status.success());
        let key = std::fs::read(dir.join("pki/web-1.key")).expect("key");
        assert_refused(&handover_in(dir, &issue), "--renew");
        assert_eq!(key, std::fs::read(dir.join("pki/web-1.key")).expect("key"));
        let mut forced = issue.to_vec();
        forced.push("--force");
        assert!(handover_in(dir, &forced).status.success());
        assert_ne!(key, std::fs::read(dir.join("pki/web-1.key")).expect("key"));
    }

    /// Issue 13, hole 12: `ca init`/`ca issue --days 4294967295` panicked, and
    /// `ca init --days 0` and `--dns '*.evil'` were accepted.
    #[test]
    fn ca_arguments_out_of_range_are_refused_without_a_panic() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        for days in ["0", "4294967295"] {
            assert_refused(
                &handover_in(dir, &["ca", "init", "--dir", "pki", "--days", days]),
                "must be valid for 1 to",
            );
            assert!(!dir.join("pki/ca.pem").exists());
        }
        assert!(
            handover_in(dir, &["ca", "init", "--dir", "pki"])
                .status
                .success()
        );
        let issue = [
            "ca",
            "issue",
            "--dir",
            "pki",
            "--role",
            "coordinator",
            "--name",
            "ops",
        ];
        for days in ["0", "366", "4294967295"] {
            let mut args = issue.to_vec();
            args.extend(["--days", days]);
            assert_refused(&handover_in(dir, &args), "--days");
        }
        let mut args = issue.to_vec();
        args.extend(["--dns", "*.evil"]);
        assert_refused(&handover_in(dir, &args), "wildcards are not allowed");
        let mut args = issue.to_vec();
        args[7] = "10";
        assert_refused(&handover_in(dir, &args), "DNS name");
        assert!(!dir.join("pki/ops.pem").exists() && !dir.join("pki/10.pem").exists());
    }

    /// Issue 13, hole 4: there was no revocation; a lost coordinator certificate
    /// could command every agent for 825 days. Now `ca revoke` writes a CRL that
    /// agents load (`crl`) and re-read: the revoked certificate is refused at the
    /// handshake, its open connections are closed, others still work, and a
    /// renewed certificate works again.
    #[test]
    fn a_revoked_coordinator_certificate_is_refused_by_the_agent() {
        let f = one_agent(Ipv4Addr::new(127, 0, 1, 43), true);
        let pki = &f.fleet.pki;
        let other = Coordinator::write(
            &f.agent.config.parent().expect("home").join("ops2"),
            pki,
            "ops2",
            &[HostSpec::of(&f.agent, &["app"])],
        )
        .expect("second coordinator");
        let (ok, json) = f.coordinator.status_json(&[]).expect("status");
        assert!(ok, "before revocation: {json}");

        // A connection opened before the revocation, kept open.
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let cert = pki.dir.join("ops.pem");
        let key = pki.dir.join("ops.key");
        let (_ep, open) = rt
            .block_on(async {
                let config = rawquic::client_config(&pki.ca(), Some((&cert, &key)))?;
                let (ep, conn) = rawquic::connect(config, f.agent.addr, "web-1").await?;
                rawquic::request(&conn, handover_common::proto::Request::Status).await?;
                anyhow::Ok((ep, conn))
            })
            .expect("connection before revocation");

        let out = handover_in(&pki.dir, &["ca", "revoke", "--dir", ".", "--name", "ops"]);
        assert!(out.status.success(), "{}", output_text(&out));
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(printed.contains("revoked ops serial"), "{printed}");
        assert!(
            printed.contains("crl = "),
            "the hint names the config line: {printed}"
        );

        // The agent re-reads its crl every few seconds: poll, bounded.
        let mut refused = None;
        for _ in 0..40 {
            let (ok, json) = f.coordinator.status_json(&[]).expect("status");
            if !ok {
                refused = Some(json);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        let json = refused.expect("the agent never refused the revoked certificate");
        let error = json[0]["error"].as_str().unwrap_or_default().to_string();
        assert!(
            error.contains("revoked"),
            "the refusal does not say why: {error}"
        );
        let closed = rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(10), open.closed()).await
        });
        let closed = closed.expect("the open connection of the revoked certificate stayed open");
        assert!(closed.to_string().contains("revoked"), "{closed}");
        let log = f.agent.log_text();
        assert!(log.contains("revocation list"), "{log}");

        // Another coordinator is unaffected; a renewed certificate works again.
        let (ok, json) = other.status_json(&[]).expect("status");
        assert!(ok, "a coordinator that was not revoked: {json}");
        let out = handover_in(
            &pki.dir,
            &["ca", "issue", "--dir", ".", "--renew", "--name", "ops"],
        );
        assert!(out.status.success(), "{}", output_text(&out));
        let (ok, json) = f.coordinator.status_json(&[]).expect("status");
        assert!(ok, "after renewal: {json}");
    }

    /// Issue 18 (polish): an inventory name that does not match the agent's
    /// certificate gave rustls' raw text (CertNotValidForName). Now the error says
    /// which name the certificate has, and both fixes.
    #[test]
    fn a_misnamed_host_is_told_which_name_its_certificate_has() {
        let f = one_agent(Ipv4Addr::new(127, 0, 1, 44), false);
        let mut host = HostSpec::of(&f.agent, &["app"]);
        host.name = "web-9".into();
        let c = Coordinator::write(
            &f.fleet.pki.dir.join("ops-9"),
            &f.fleet.pki,
            "ops9",
            &[host],
        )
        .expect("config");
        let (ok, json) = c.status_json(&[]).expect("status");
        assert!(!ok);
        let error = json[0]["error"].as_str().unwrap_or_default();
        for says in [
            "certificate is for \"web-1\"",
            "name = \"web-1\"",
            "handover ca issue --role agent --name web-9",
        ] {
            assert!(error.contains(says), "{says:?} missing from: {error}");
        }
        assert!(
            !error.contains("NotValidForName"),
            "raw rustls text: {error}"
        );
    }

    /// Issue 13, hole 12: lease owner and rollout strings reached the agent
    /// unchecked (its log, its lease file, other operators' messages). A frame
    /// carrying a forged log line or a terminal escape is refused, nothing kept.
    #[test]
    fn lease_strings_that_are_not_plain_text_are_refused_on_the_wire() {
        use handover_common::proto::lease::LeaseRequest;
        use handover_common::proto::{FailureKind, Request, Response};
        let f = one_agent(Ipv4Addr::new(127, 0, 1, 45), false);
        let cert = f.fleet.pki.dir.join("ops.pem");
        let key = f.fleet.pki.dir.join("ops.key");
        let acquire = |rollout: &str, owner: &str| {
            Request::Lease(LeaseRequest::Acquire {
                rollout: rollout.into(),
                holder: handover_common::proto::lease::LeaseHolder {
                    name: owner.into(),
                    user: None,
                    host: "bastion".into(),
                    pid: 1,
                },
                token: "00112233445566778899aabbccddeeff".into(),
                ttl_secs: 60,
                break_existing: false,
            })
        };
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let answers = rt
            .block_on(async {
                let config = rawquic::client_config(&f.fleet.pki.ca(), Some((&cert, &key)))?;
                let (_ep, conn) = rawquic::connect(config, f.agent.addr, "web-1").await?;
                let mut answers = Vec::new();
                for request in [
                    acquire("r-1\nWARN forged log line", "ops"),
                    acquire("r-1", "ops\u{1b}[2J"),
                    acquire("-r", "ops"),
                ] {
                    answers.push(rawquic::request(&conn, request).await?);
                }
                anyhow::Ok(answers)
            })
            .expect("exchanges");
        for responses in &answers {
            assert!(
                matches!(responses.as_slice(), [Response::Failed(f)] if f.kind == FailureKind::BadRequest),
                "expected one BadRequest, got {responses:?}"
            );
        }
        assert!(
            !f.agent.state_dir.join("lease.json").exists(),
            "a refused lease request left a lease behind"
        );
        assert!(!f.agent.log_text().contains("forged log line"));
    }
}

// --- lease ---

mod lease {
    use std::process::Stdio;
    use std::time::Duration;

    use handover_tests::agents::{Coordinator, output_text, spawn_lines};
    use handover_tests::run::{
        assert_all_on, history, releases_of_rev as releases_of, spawn_json, wait_for_step,
    };
    use handover_tests::scenario::{Capacity, Scenario, ScenarioOptions};

    /// `apps` hosts; the plans here keep all but one UP (`in_place_plan(.., 1, apps - 1)`).
    fn scenario(apps: u8) -> Scenario {
        Scenario::start(ScenarioOptions {
            apps,
            capacity: Capacity::MinHealthy(usize::from(apps).saturating_sub(1).max(1)),
            ..ScenarioOptions::default()
        })
        .expect("fleet starts")
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

    /// Issue 18, safety 1: a bare `handover resume` beside a live `rollout` took the
    /// rollout over and ran its steps a second time (two new releases per host).
    /// Now the running process holds the rollout: a second process on the same
    /// bastion is refused by the local lock, one on another bastion by the lease,
    /// each naming the holder, and every host gets exactly one new release.
    #[test]
    fn a_bare_resume_beside_a_live_rollout_is_refused_and_each_host_gets_one_release() {
        let s = scenario(2);
        // A client on web-1 keeps the rollout in its first drain wait until dropped.
        let held = handover_tests::run::hold_direct_client(&s, "web-1", 60);
        let mut plan = s.plan("v2", 1, 1);
        plan.rollout.drain_timeout = Some("60s".into());
        let plan_text = plan.render();
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

    /// Issue 18, safety 4: Ctrl-C during the canary pause left the canary on the
    /// new release (the README says the wave goes back), `resume ID` restarted at
    /// the pause, a bare `resume` said "no unfinished rollout", and a refused
    /// rollout printed an id and a resume hint for a rollout `history` never lists.
    #[test]
    fn ctrl_c_at_the_canary_pause_puts_the_canary_back_and_resume_id_redoes_it() {
        let s = scenario(3);
        let mut plan = s.plan("v2", 1, 2);
        plan.rollout.canary = Some(1);
        plan.rollout.pause = Some("60s".into());
        let plan_text = plan.render();
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
        // Only the staging step (issue 14: the release staged on every host
        // before the first wave) stays done; the canary wave starts again.
        assert_eq!(phase["done"], 1, "the canary wave is redone: {phase}");
        assert_eq!(first_step["number"], 2, "{first_step}");
        assert!(
            !first_step["title"]
                .as_str()
                .unwrap_or("stage")
                .starts_with("stage"),
            "{first_step}"
        );
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
        let held = handover_tests::run::hold_direct_client(&s, "web-1", 60);
        let mut plan = s.plan("v2", 1, 1);
        plan.rollout.drain_timeout = Some("60s".into());
        let plan_text = plan.render();
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

// --- faults ---

mod faults {
    use std::time::Duration;

    use handover_tests::run::{
        Run, assert_no_failed_request, assert_on_one_release, assert_settled, restart_after,
        traffic,
    };

    use crate::faults::scenario;

    /// Issue 13 (faults with traffic running): web-1's agent is SIGKILLed while the
    /// coordinator waits for web-1's sessions to end, and is back 0.5 s later (as
    /// systemd restarts it). Seen first: the coordinator kept using the dead QUIC
    /// connection, the wait failed only after 35 s ("no answer"), the rollback's
    /// first call (restore the health-check file) failed on the same dead
    /// connection, and the rollout ended `failed` with web-1 left drained. Fixed on
    /// the agent side (its QUIC reset and connection-id keys survive a restart, so
    /// the old connection is reset at once), then the rollout was rolled back
    /// within seconds. Now the engine tries a step whose host did not answer again
    /// (3 times, 3 s apart) and the rollout succeeds.
    #[test]
    fn a_rollout_survives_an_agent_restarted_during_the_drain_wait() {
        let mut s = scenario("");
        let held = handover_tests::run::hold_direct_client(&s, "web-1", 60);
        let plan = s
            .write_plan("plan.toml", &s.in_place_plan("v2", 1, 2))
            .expect("plan");
        let load = traffic(&s);
        let mut run = Run::start(&s, &["rollout", &plan.display().to_string(), "--yes"]);
        run.wait_step("wait for sessions", 1);
        std::thread::sleep(Duration::from_millis(500));
        s.apps[0].agent.kill();
        restart_after(&mut s.apps[0].agent, Duration::from_millis(500));
        std::thread::sleep(Duration::from_secs(1));
        drop(held);
        let done = run.finish();
        for app in &s.apps {
            assert_on_one_release(app);
        }
        assert_eq!(done.state(), "succeeded", "{}", done.describe());
        assert_settled(&s, "v2");
        assert_no_failed_request(&load.stop());
        s.check_capacity().expect("capacity kept");
    }
}

// --- engine2 ---

mod engine2 {
    use handover_tests::run::Run;
    use handover_tests::scenario::{BACKEND, Scenario, ScenarioOptions};

    /// Engine review after issue 11's rewrite: with `on_drain_timeout = "proceed"`
    /// the rollout treated every wait that did not end idle as a timeout, so a host
    /// an operator undrained during its wait was recorded as `cut/web-1`, detached
    /// with force (cutting its clients) and upgraded. Only a timeout may proceed:
    /// the wave stops before detach, and the held client is never cut.
    #[test]
    fn proceed_does_not_detach_a_host_undrained_during_its_wait() {
        let s = Scenario::start(ScenarioOptions {
            apps: 3,
            ..ScenarioOptions::default()
        })
        .expect("fleet starts");
        // A direct client keeps web-1's wait going until the operator steps in.
        let held = handover_tests::run::hold_direct_client(&s, "web-1", 120);
        let mut plan = s.plan("v2", 1, 2);
        plan.rollout.drain_timeout = Some("90s".into());
        plan.rollout.on_drain_timeout = Some("proceed".into());
        let text = plan.render();
        let plan = s.write_plan("plan.toml", &text).expect("plan");
        let mut run = Run::start(&s, &["rollout", &plan.display().to_string(), "--yes"]);
        run.wait_for_step("wait for sessions");
        assert!(held.is_held(), "the direct client holds web-1's wait");
        // The operator puts the health-check file back by hand (`handover undrain`
        // is refused while the rollout holds the lease).
        std::fs::write(s.app("web-1").apache.health_file(), "OK\n").expect("restore");
        let done = run.finish();
        let events = done.events;

        assert_ne!(done.code, Some(0), "the rollout must stop: {events:?}");
        let forward = events
            .iter()
            .take_while(|e| e["event"] != "step-failed" && e["event"] != "finished");
        let detached = forward.clone().any(|e| {
            e["event"] == "step-started"
                && e["wave"] == 1
                && e["title"].as_str().unwrap_or("").starts_with("detach")
        });
        assert!(!detached, "web-1 must not be detached: {events:?}");
        assert!(
            !forward.clone().any(|e| e.to_string().contains("cut/web-1")),
            "no session may be recorded as cut: {events:?}"
        );
        assert!(held.is_held(), "the client on web-1 must not be cut");
        let failed = events
            .iter()
            .find(|e| e["event"] == "step-failed")
            .unwrap_or_else(|| panic!("a failed step: {events:?}"));
        // The agent's next round finds the file back (or sees it in a sample):
        // either way the wait itself failed, and that stops the wave.
        assert!(
            failed["title"]
                .as_str()
                .unwrap_or("")
                .starts_with("wait for sessions"),
            "the wait is what failed: {failed}"
        );
        assert_eq!(s.app("web-1").version(), "v1");
        let stats = s.haproxy.show_stat().expect("show stat");
        let web1 = s.app("web-1").apache.addr().to_string();
        assert!(
            stats
                .iter()
                .any(|r| r.pxname == BACKEND && r.is_server() && r.addr == web1),
            "web-1 stays in HAProxy: {stats:?}"
        );
        drop(held);
    }
}

// --- hooks ---

mod hooks {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use handover_tests::agents::{HostSpec, output_text};
    use handover_tests::config::{AgentSections, Deploy};
    use handover_tests::fleet::Fleet;
    use handover_tests::git::{Revision, bare_repo};
    use handover_tests::ports::host_ip;

    /// A daemon the way Apache's `-k start` and glibc's daemon(3) make one: fork,
    /// the parent exits at once, the child calls setsid only a moment later (a busy
    /// machine), then points stdio at /dev/null and writes its pid file.
    fn slow_daemon(pidfile: &Path) -> String {
        format!(
            "perl -MPOSIX -e 'exit 0 if fork; select(undef, undef, undef, 0.5); \
             POSIX::setsid(); open STDIN, \"</dev/null\"; open STDOUT, \">/dev/null\"; \
             open STDERR, \">/dev/null\"; open my $f, \">\", \"{}\"; print $f $$; close $f; sleep 120'",
            pidfile.display()
        )
    }

    /// CI, the README walk-through: the first deploy's reload hook
    /// (`apache2 -k graceful`) starts Apache, and the agent ended the hook's
    /// process group the instant the hook returned, killing Apache's daemon child
    /// before it had left the group (its setsid came a moment later under load):
    /// nothing listened afterwards. A daemon that detaches as daemon(3) does must
    /// outlive the hook that started it.
    #[test]
    fn a_daemon_started_by_a_reload_hook_survives_a_slow_setsid() {
        let dir = Fleet::new().expect("fleet directory and CA");
        let repo = bare_repo(
            dir.path(),
            &[Revision {
                tag: "v1",
                files: vec![("VERSION", "v1\n".into())],
            }],
        )
        .expect("repository");
        let pidfile = dir.path().join("daemon.pid");
        let sections = AgentSections {
            deploy: Some(Deploy {
                reload: Some(slow_daemon(&pidfile)),
                ..Deploy::new(dir.path().join("web-1").join("www"), &repo)
            }),
            ..Default::default()
        };
        let agent = dir
            .agent("web-1", host_ip(92), &sections)
            .expect("agent starts");
        let coordinator = dir
            .coordinator(&[HostSpec::of(&agent, &["app"])])
            .expect("config");
        let out = coordinator.run(&["deploy", "web-1", "--repo", &repo, "--ref", "v1"]);
        assert!(out.status.success(), "{}", output_text(&out));

        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = loop {
            if let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                break Some(pid);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let pid = pid.expect("the daemon wrote its pid file: it was killed before setsid");
        let alive = Path::new(&format!("/proc/{pid}")).exists();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        assert!(alive, "the daemon the reload hook started was killed");
    }
}

// --- web2 ---
mod web2 {

    use handover_tests::agents::{Coordinator, Pki, output_text};
    use handover_tests::etcd::Etcd;
    use handover_tests::ports::host_ip;
    use handover_tests::web::WebPage;

    /// Issue 16: `handover web` read the journal in state_dir only, so with
    /// `[state] backend = "etcd"` (the journal every bastion shares) the page
    /// showed no rollout at all, nor the samples the rollout journals there.
    #[test]
    fn the_page_reads_the_journal_where_the_config_keeps_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let etcd = Etcd::start(&dir.path().join("etcd")).expect("etcd starts");
        let pki = Pki::init(&dir.path().join("pki")).expect("CA");
        let coordinator =
            Coordinator::with_one_quiet_host(dir.path(), &pki, host_ip(176)).expect("config");
        let mut text = std::fs::read_to_string(&coordinator.config).expect("config");
        text.push_str(&etcd.state_section("/handover/web2"));
        std::fs::write(&coordinator.config, text).expect("write config");
        let id = "r-20261203-000000-abcd";
        let record = serde_json::json!({
            "format": 2, "id": id, "kind": "rollout", "owner": "ops (test)",
            "plan_path": "plan.toml", "plan_text": "", "state": "succeeded",
            "phase": "forward", "created_ms": 1_000, "updated_ms": 2_000,
            "error": null, "facts": {}
        });
        let export = dir.path().join("journal.jsonl");
        let line = serde_json::json!({ "collection": "rollouts", "key": id, "record": record });
        std::fs::write(&export, format!("{{\"handover_journal\":1}}\n{line}\n"))
            .expect("write export");
        let out = coordinator.run(&["journal", "import", &export.display().to_string()]);
        assert!(out.status.success(), "import: {}", output_text(&out));

        let page = WebPage::start(&coordinator, host_ip(176), dir.path()).expect("page starts");
        let mut seen = serde_json::Value::Null;
        for _ in 0..50 {
            seen = page.state().expect("state");
            if !seen["rollout"].is_null() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        assert_eq!(seen["rollout"]["id"], id, "{seen}\n{}", page.log_text());
    }
}

// --- bastions ---
/// Issue 17, "rollouts from any bastion": state that stayed on one bastion when
/// the journal and the deploy lock moved to etcd.
mod bastions {
    use std::path::Path;

    use handover_tests::agents::{Coordinator, Pki, output_text};
    use handover_tests::etcd::Etcd;
    use handover_tests::ports::host_ip;
    use handover_tests::run::Run;
    use handover_tests::surge::{
        ProviderKind, SurgeFleet, SurgeLoad, SurgeOptions, assert_nobody_noticed,
    };

    /// Two bastions' configs for one inventory, both on `etcd` under `prefix`.
    fn two_bastions(first: &Coordinator, dir: &Path, etcd: &Etcd) -> (Coordinator, Coordinator) {
        let state = etcd.state_section("/handover/bastions");
        let make = |name: &str| {
            first
                .another_bastion(&dir.join(name), Some(&state))
                .expect("a bastion's config")
        };
        (make("bastion-a"), make("bastion-b"))
    }

    /// `handover inputs` wrote and read the redb journal in state_dir whatever
    /// `[state]` said: inputs set on one bastion were not seen from another, nor
    /// by the rollouts, which record their inputs in etcd.
    #[test]
    fn inputs_set_on_one_bastion_are_the_inputs_every_bastion_sees() {
        let dir = tempfile::tempdir().expect("tempdir");
        let etcd = Etcd::start(&dir.path().join("etcd")).expect("etcd starts");
        let pki = Pki::init(&dir.path().join("pki")).expect("CA");
        let first =
            Coordinator::with_one_quiet_host(dir.path(), &pki, host_ip(177)).expect("config");
        let (a, b) = two_bastions(&first, dir.path(), &etcd);

        let out = a.run(&["inputs", "set", "APP_ENV=production"]);
        assert!(out.status.success(), "{}", output_text(&out));
        let out = b.run(&["inputs", "export", "--csv"]);
        assert!(out.status.success(), "{}", output_text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n"),
            "key,value\nAPP_ENV,production\n",
            "bastion B sees what A set"
        );
        assert!(
            !dir.path().join("bastion-a/state/journal.redb").exists(),
            "nothing was written on bastion A's disk"
        );
    }

    /// A surge with the standby provider, started on bastion A, SIGKILLed after
    /// the migration and finished from bastion B (issue 17's "migrate not run
    /// twice", on the runbook itself). Then bastion A must see the pool as B left
    /// it: the standby pool was kept in the state_dir of the bastion that ran
    /// step 18, so A's next plan would have taken the servers now in service as
    /// its "new" ones. And `handover rollback` read the surge's steps from redb,
    /// so on etcd it could not see step 18 was done and did not say that going
    /// back is now a new rollout.
    #[test]
    fn a_surge_finished_from_another_bastion_leaves_one_pool_for_every_bastion() {
        let fleet = SurgeFleet::start(SurgeOptions::default()).expect("fleet");
        let etcd = Etcd::start(&fleet.dir().join("etcd")).expect("etcd starts");
        let (a, b) = two_bastions(&fleet.coordinator, fleet.dir(), &etcd);
        let plan = fleet
            .write_surge_plan(ProviderKind::Standby, "v2", "")
            .expect("plan");
        let load = SurgeLoad::start(&fleet).expect("load starts");

        let mut run = Run::start_with(&a, &["rollout", &plan, "--yes"]);
        let past_migration = run.wait_for(handover_tests::run::BOUND, |e| {
            e["event"] == "step-done" && e["number"] == 3
        });
        assert!(past_migration, "{:#?}", run.last_events());
        let killed = run.kill();
        assert!(killed.landed, "A was still running when killed");
        let out = b.run(&["resume"]);
        let (report, sessions) = load.stop();
        assert!(out.status.success(), "resume on B: {}", output_text(&out));
        assert_nobody_noticed(&report, &sessions);
        assert_eq!(fleet.migrate_runs().expect("db"), 1, "migrated once");

        let out = a.run(&["plan", &plan, "--offline"]);
        assert!(out.status.success(), "{}", output_text(&out));
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(
            shown.contains("replace web-4, web-5, web-6"),
            "A's next surge replaces the servers B put in service: {shown}"
        );
        let out = a.run(&["rollback", "--yes"]);
        assert!(!out.status.success(), "{}", output_text(&out));
        assert!(
            output_text(&out).contains("new rollout of the previous revision"),
            "{}",
            output_text(&out)
        );
    }
}

// --- logs ---
/// The coordinator's log lines carried ANSI colour codes when stderr was a pipe
/// or a file (the agent had been fixed in issue 18, the coordinator not): a
/// takeover warning read `[33m WARN[0m` in a terminal log or CI output.
#[test]
fn the_coordinators_log_has_no_colour_off_a_terminal() {
    use handover_tests::agents::{Coordinator, Pki};
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::init(&dir.path().join("pki")).expect("CA");
    let c = Coordinator::with_one_quiet_host(dir.path(), &pki, handover_tests::ports::host_ip(178))
        .expect("config");
    let out = c
        .command(&["status", "web-1"])
        .env("HANDOVER_LOG", "debug")
        .env_remove("NO_COLOR")
        .output()
        .expect("handover runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DEBUG"), "a log line was written: {err}");
    assert!(
        !err.contains('\u{1b}'),
        "no escape codes in a piped log: {err:?}"
    );
}
