//! One test per bug fixed from now on, each named after what it guards and
//! carrying, in its doc comment, the issue that found it. Write the test first, see
//! it fail, then fix the code.

#[allow(unused_imports)]
use handover_tests::fleet;

// --- agentcore ---

mod agentcore {
    use std::io::{Read as _, Write as _};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use handover_tests::agents::{
        AgentProcess, AgentSpec, Coordinator, HostSpec, Pki, output_text,
    };
    use handover_tests::fleet;
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
        _dir: tempfile::TempDir,
        app: Ipv6App,
        haproxy: Haproxy,
        lb: AgentProcess,
        coordinator: Coordinator,
    }

    /// HAProxy with a dynamic backend, an lb agent, and app host `web-6` at `[::1]`.
    fn v6_fleet() -> V6Fleet {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = Ipv6App::start();
        let haproxy = Haproxy::start(HaproxyOptions {
            backends: vec![BackendSpec::dynamic("be_dyn")],
            parent: Some(dir.path().to_owned()),
            ..Default::default()
        })
        .expect("haproxy starts");
        let pki = Pki::init(&dir.path().join("pki")).expect("ca init");
        let extra = format!(
            "[haproxy]\nsocket = {:?}\nbackend = \"be_dyn\"\ncheck_inter = \"200ms\"\ncheck_rise = 2\ncheck_fall = 2\nattach_timeout = \"15s\"\n",
            haproxy.admin_socket().display().to_string()
        );
        let lb = AgentProcess::start(
            dir.path(),
            &pki,
            AgentSpec {
                name: "lb-1",
                ip: ports::host_ip(60),
                extra,
            },
        )
        .expect("lb agent starts");
        let mut web = HostSpec::of(&lb, &["app"]);
        web.name = "web-6".into();
        web.app = Some(app.addr);
        let hosts = [HostSpec::of(&lb, &["lb"]), web];
        let coordinator = Coordinator::write(&dir.path().join("ops"), &pki, "ops", &hosts)
            .expect("coordinator config");
        V6Fleet {
            _dir: dir,
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
        let _serial = fleet::serial();
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
        let _serial = fleet::serial();
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

    use handover_tests::agents::{
        AgentProcess, AgentSpec, Coordinator, HostSpec, Pki, output_text,
    };
    use handover_tests::git::{Revision, bare_repo};
    use handover_tests::ports::host_ip;

    /// A tag whose name a shell would run: `$( )`, `;`, `|`, `&` are all valid in
    /// a git ref name and in a Handover revision.
    const SHELLY_TAG: &str = "rel$(touch${IFS}pwned);x|y&z";

    const HOOKS: &str = "[hooks]\nafter_activate = \"printf '%s' \\\"$HANDOVER_REV\\\" > \\\"$HANDOVER_RELEASE_DIR/rev.txt\\\"; echo unquoted $HANDOVER_REV; id -u > \\\"$HANDOVER_RELEASE_DIR/uid.txt\\\"\"\n";

    struct Host {
        _serial: handover_tests::fleet::SerialGuard,
        dir: tempfile::TempDir,
        repo: String,
        _agent: AgentProcess,
        coordinator: Coordinator,
    }

    impl Host {
        /// One agent on 127.0.1.91 with `[deploy]` plus `release_hooks` (TOML).
        fn new(release_hooks: &str) -> Host {
            let serial = handover_tests::fleet::serial();
            let dir = tempfile::tempdir().expect("tempdir");
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
            let pki = Pki::init(&dir.path().join("pki")).expect("ca init");
            let root = dir.path().join("web-1").join("www");
            let extra = format!(
                "\n[deploy]\nroot = {root:?}\nallowed_repos = [{repo:?}]\n{release_hooks}\n",
                root = root.display().to_string(),
            );
            let agent = AgentProcess::start(
                dir.path(),
                &pki,
                AgentSpec {
                    name: "web-1",
                    ip: host_ip(91),
                    extra,
                },
            )
            .expect("agent starts");
            let specs = [HostSpec::of(&agent, &["app"])];
            let coordinator =
                Coordinator::write(&dir.path().join("ops"), &pki, "ops", &specs).expect("config");
            Host {
                _serial: serial,
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
        let host = Host::new("");
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
        let host = Host::new("[deploy.release_hooks]\nrun_as = \"nobody\"\n");
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
